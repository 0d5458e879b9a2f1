"""Generation speed: tokens/s of ``fn.generate`` with and without the KV cache, and vs pure JAX.

The model is the example language model (``examples/transformer_lm.py``,
``make_model``: width 128, 4 pre-LN blocks of 4 heads, MLP 512, learned
positions, here a table of ``prompt + new`` rows and a vocabulary of 96),
randomly initialized: speed does not depend on the weights. A batch of
``--batch`` prompts of ``--prompt`` tokens (default 8 x 32) is continued by
``--new`` tokens (default 256), greedily, by:

- ``funcnet_cached``: ``fn.generate(model, ..., temperature=0)``: prefill,
  then one model call per token with the KV cache in the state;
- ``funcnet_uncached``: the same with ``use_cache=False`` (the whole
  ``prompt + new`` sequence through the model for every token);
- ``jax_cached``: a hand-written pure-JAX cached decoder of the same model
  and weights, as a JAX user would write it: a Python loop over the blocks
  (each block's params indexed out of the model's stacked params), one
  ``(N, L, H, K)`` key and value buffer per block updated with
  ``lax.dynamic_update_slice`` at one shared position (every row has the
  same prompt length), ``jax.nn.dot_product_attention`` over the buffer with
  a position mask, prefill and a ``lax.fori_loop`` over the tokens in one
  ``jax.jit``;
- ``jax_cached_presplit``: the same with the block params split into one
  dict per block before the program. On XLA:CPU, indexing a block out of
  stacked weights inside the token loop copies it at every token (XLA does
  not hoist it out of the loop); ``fn.generate`` takes the params as the
  model holds them (stacked by ``repeat``), so it pays that copy as
  ``jax_cached`` does.

Each is compiled and checked first (the greedy tokens of all three are
compared); then rounds of one call each, in an order rotating by round;
reported: the median time per call, tokens/s (``batch * new / time``), the
spread (interquartile range / median) and the median over rounds of the
per-round ratio to ``funcnet_cached``.

Usage::

    python bench/generation.py                  # 8 x (32 + 256), 7 rounds; prints a table
    python bench/generation.py --rounds 3 --new 64 --json /tmp/generation.json
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if __package__ in (None, ""):  # run as a script: make `funcnet` importable
    sys.path.insert(0, str(ROOT))

import funcnet as fn  # noqa: E402

VOCAB, WIDTH, LAYERS, HEADS, EPS = 96, 128, 4, 4, 1e-5


def example_model(context: int):
    """``make_model`` of ``examples/transformer_lm.py`` (loaded from its file)."""
    spec = importlib.util.spec_from_file_location(
        "transformer_lm", ROOT / "examples" / "transformer_lm.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.make_model(
        VOCAB, width=WIDTH, layers=LAYERS, heads=HEADS, context=context, dropout=0.0
    )


# ---------------------------------------------------------------------------------------------
# The hand-written pure-JAX decoder


def plain_params(params, *, split: bool) -> dict:
    """funcnet's param tree of the example model as plain dicts.

    The blocks' params stay stacked along a leading axis of size ``LAYERS``
    (as the model holds them: the decoder slices them per block inside the
    program) or, with ``split=True``, are split into one dict per block
    before the program (an optimization for which funcnet's ``generate``,
    taking the model's params as they are, has no equivalent).
    """
    emb, pos, (blocks, final_ln), head = params
    (ln1, mha, _), (ln2, dense1, _, dense2, _) = blocks["attention"], blocks["mlp"]
    stacked = {
        "ln1": ln1,
        "q": mha["query"],
        "k": mha["key"],
        "v": mha["value"],
        "o": mha["out"],
        "ln2": ln2,
        "mlp1": dense1,
        "mlp2": dense2,
    }
    if split:
        stacked = [jax.tree.map(lambda a, i=i: a[i], stacked) for i in range(LAYERS)]
    return {
        "emb": emb["table"],
        "pos": pos["table"],
        "blocks": stacked,
        "ln": final_ln,
        "head": head,
    }


def block_params(blocks, i: int) -> dict:
    """Block ``i``'s params: from the list of split ones, or sliced from the stacked ones."""
    return blocks[i] if isinstance(blocks, list) else jax.tree.map(lambda a: a[i], blocks)


def layer_norm(x, p):
    mean = jnp.mean(x, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
    return (x - mean) * jax.lax.rsqrt(var + EPS) * p["scale"] + p["bias"]


def block(p, x, cache, pos):
    """One pre-LN block on new tokens ``x`` ``(N, T, D)`` at positions ``pos .. pos + T - 1``."""
    k_cache, v_cache = cache
    t, length = x.shape[1], k_cache.shape[1]
    h = layer_norm(x, p["ln1"])
    q, k, v = (jnp.einsum("ntd,dhk->nthk", h, p[n]["w"]) + p[n]["b"] for n in "qkv")
    k_cache = jax.lax.dynamic_update_slice_in_dim(k_cache, k, pos, axis=1)
    v_cache = jax.lax.dynamic_update_slice_in_dim(v_cache, v, pos, axis=1)
    mask = jnp.arange(length)[None, :] <= pos + jnp.arange(t)[:, None]  # (T, L)
    o = jax.nn.dot_product_attention(q, k_cache, v_cache, mask=mask[None, None])
    x = x + jnp.einsum("nthk,hkd->ntd", o, p["o"]["w"]) + p["o"]["b"]
    h = layer_norm(x, p["ln2"])
    h = jax.nn.gelu(h @ p["mlp1"]["w"] + p["mlp1"]["b"], approximate=False)
    return x + h @ p["mlp2"]["w"] + p["mlp2"]["b"], (k_cache, v_cache)


def forward(params, tokens, caches, pos):
    """Logits ``(N, T, vocab)`` of new tokens at ``pos ..``, and the updated caches."""
    t = tokens.shape[1]
    x = params["emb"][tokens] + jax.lax.dynamic_slice_in_dim(params["pos"], pos, t)[None]
    new_caches = []
    for i, cache in enumerate(caches):
        x, cache = block(block_params(params["blocks"], i), x, cache, pos)
        new_caches.append(cache)
    x = layer_norm(x, params["ln"])
    return x @ params["head"]["w"] + params["head"]["b"], new_caches


def jax_generate(params, prompts, new: int):
    """Greedy continuation of ``prompts`` ``(N, P)`` (all of length P) by ``new`` tokens."""
    n, p = prompts.shape
    length, kv = p + new - 1, block_params(params["blocks"], 0)["k"]["w"].shape[1:]
    caches = [(jnp.zeros((n, length, *kv)),) * 2 for _ in range(LAYERS)]
    logits, caches = forward(params, prompts, caches, 0)
    token = jnp.argmax(logits[:, -1], axis=-1).astype(prompts.dtype)
    out = jnp.zeros((n, new), prompts.dtype).at[:, 0].set(token)

    def body(i, carry):
        token, caches, out = carry
        logits, caches = forward(params, token[:, None], caches, p + i - 1)
        token = jnp.argmax(logits[:, 0], axis=-1).astype(prompts.dtype)
        return token, caches, out.at[:, i].set(token)

    return jax.lax.fori_loop(1, new, body, (token, caches, out))[-1]


# ---------------------------------------------------------------------------------------------
# Timing


def implementations(batch: int, prompt: int, new: int) -> tuple[dict, np.ndarray]:
    model = example_model(prompt + new)
    prompts = jax.random.randint(jax.random.key(1), (batch, prompt), 0, VOCAB, jnp.int32)
    params, state = jax.jit(model.init)(jax.random.key(0), prompts)
    stacked, split = plain_params(params, split=False), plain_params(params, split=True)
    jax_gen = jax.jit(jax_generate, static_argnums=2)

    def gen(use_cache):
        return lambda: fn.generate(
            model,
            params,
            state,
            prompts,
            max_new_tokens=new,
            temperature=0,
            use_cache=use_cache,
        )

    impls = {
        "funcnet_cached": gen(True),
        "funcnet_uncached": gen(False),
        "jax_cached": lambda: jax_gen(stacked, prompts, new),
        "jax_cached_presplit": lambda: jax_gen(split, prompts, new),
    }
    return impls, np.asarray(prompts)


def _quantile(xs, q):
    return float(np.quantile(np.asarray(xs), q))


def run(batch: int, prompt: int, new: int, rounds: int, uncached: bool = True) -> dict:
    impls, _ = implementations(batch, prompt, new)
    if not uncached:  # ~40x slower than the rest: leave it out of a quick comparison
        del impls["funcnet_uncached"]
    results, tokens = {}, {}
    for name, call in impls.items():
        start = time.perf_counter()
        tokens[name] = np.asarray(call().block_until_ready())
        first = time.perf_counter() - start
        start = time.perf_counter()
        call().block_until_ready()
        results[name] = {"compile_s": first - (time.perf_counter() - start), "times": []}
    reference = tokens["funcnet_cached"]
    agree = {name: float(np.mean(t == reference)) for name, t in tokens.items()}
    names = list(impls)
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            start = time.perf_counter()
            impls[name]().block_until_ready()
            results[name]["times"].append(time.perf_counter() - start)
    base = results["funcnet_cached"]["times"]
    for name, res in results.items():
        times = res["times"]
        med = statistics.median(times)
        res.update(
            seconds=med,
            tokens_per_s=batch * new / med,
            spread=(_quantile(times, 0.75) - _quantile(times, 0.25)) / med,
            vs_funcnet_cached=statistics.median(t / b for t, b in zip(times, base)),
            same_tokens=agree[name],
        )
    return {
        "batch": batch,
        "prompt": prompt,
        "new": new,
        "rounds": rounds,
        "jax": jax.__version__,
        "device": str(jax.devices()[0]),
        "results": results,
    }


def table(report: dict) -> str:
    res = report["results"]
    lines = [
        f"Generation, example LM (width {WIDTH}, {LAYERS} blocks, {HEADS} heads, vocab {VOCAB}): "
        f"batch {report['batch']}, prompt {report['prompt']}, {report['new']} new tokens, greedy; "
        f"median of {report['rounds']} interleaved rounds, jax {report['jax']}, "
        f"{report['device']}",
        "",
        "| impl | compile s | s/call | ± % | tokens/s | time vs funcnet_cached | same tokens |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in res.items():
        lines.append(
            f"| {name} | {r['compile_s']:.2f} | {r['seconds']:.3f} | {100 * r['spread']:.0f} | "
            f"{r['tokens_per_s']:.0f} | {r['vs_funcnet_cached']:.3f} | "
            f"{100 * r['same_tokens']:.0f}% |"
        )
    cached = res["funcnet_cached"]
    lines.append("")
    if "funcnet_uncached" in res:
        speedup = res["funcnet_uncached"]["vs_funcnet_cached"]
        lines.append(f"KV cache speed-up (uncached time / cached time): {speedup:.1f}x.")
    lines += [
        f"funcnet's time / the hand-written pure-JAX decoder's: "
        f"{1 / res['jax_cached']['vs_funcnet_cached']:.3f} "
        f"({cached['tokens_per_s']:.0f} vs {res['jax_cached']['tokens_per_s']:.0f} tokens/s); "
        f"/ the one with pre-split block params: "
        f"{1 / res['jax_cached_presplit']['vs_funcnet_cached']:.3f}.",
    ]
    return "\n".join(lines)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--prompt", type=int, default=32)
    parser.add_argument("--new", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument("--no-uncached", action="store_true", help="skip the uncached decoder")
    args = parser.parse_args(argv)
    report = run(args.batch, args.prompt, args.new, args.rounds, uncached=not args.no_uncached)
    print(table(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
