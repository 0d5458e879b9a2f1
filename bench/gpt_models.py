"""The GPT of ``bench/gpt.py`` written three times: funcnet, pure JAX, Flax Linen.

All three compute the same function from the same weights (funcnet's params
converted by :func:`jax_params_from_funcnet` / :func:`linen_params_from_funcnet`):
float32 params cast to bfloat16 for compute, LayerNorm statistics in float32,
attention through :func:`jax.nn.dot_product_attention` (softmax in float32),
float32 logits.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import optax

from bench.workloads._base import Skip

__all__ = [
    "EPS",
    "cudnn_attention_works",
    "funcnet_gpt",
    "jax_gpt_apply",
    "jax_params_from_funcnet",
    "linen_apply",
    "linen_gpt",
    "linen_params_from_funcnet",
    "param_count",
    "token_xent",
]

EPS = 1e-5  # funcnet's LayerNorm default, used by all three
BF16 = jnp.bfloat16


def funcnet_gpt(cfg, attention: str = "xla"):
    """The README's language model (``examples/transformer_lm.py``) at ``cfg``'s size, its
    attention kernel ``attention`` (``"xla"`` or ``"cudnn"``, the README's switch).

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> from bench.gpt import CONFIGS
        >>> model = funcnet_gpt(CONFIGS["tiny"])
        >>> out = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 64), int)))
        >>> out[0][3]["w"].shape
        (64, 256)
    """
    import funcnet as fn

    return fn.serial(
        fn.Embedding(cfg.vocab, cfg.width),
        fn.PositionalEmbedding(cfg.seq),
        fn.transformer_encoder(
            cfg.layers,
            num_heads=cfg.heads,
            causal=True,
            attention_implementation=None if attention == "xla" else attention,
        ),
        fn.Dense(cfg.vocab),
    )


def param_count(cfg) -> int:
    """Number of params (embeddings included; the head is not tied to the embedding)."""
    d = cfg.width
    block = 12 * d * d + 13 * d
    return cfg.layers * block + 2 * d + (cfg.vocab + cfg.seq) * d + d * cfg.vocab + cfg.vocab


def token_xent(logits, targets):
    """Mean next-token cross-entropy over every position (float32)."""
    logits = logits.astype(jnp.float32)
    return optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean()


def cudnn_attention_works(cfg) -> bool:
    """Whether ``jax.nn.dot_product_attention(implementation="cudnn")`` compiles here
    for ``cfg``'s causal bfloat16 attention (False on CPU, or without cuDNN)."""
    if jax.default_backend() != "gpu":
        return False
    head = cfg.width // cfg.heads
    spec = jax.ShapeDtypeStruct((1, cfg.seq, cfg.heads, head), BF16)

    def attend(q):
        return jax.nn.dot_product_attention(q, q, q, is_causal=True, implementation="cudnn")

    try:
        jax.jit(jax.grad(lambda q: attend(q).astype(jnp.float32).sum())).lower(spec).compile()
    except Exception:  # no cuDNN, an old one, or a shape it does not support
        return False
    return True


# ----------------------------------------------------------------------------- pure JAX


def jax_params_from_funcnet(params) -> dict:
    """funcnet's ``(embedding, positions, (stacked blocks, norm), head)`` -> a dict with
    one entry per block (the same arrays)."""
    embed, pos, (stacked, norm), head = params
    layers = jax.tree.leaves(stacked)[0].shape[0]
    blocks = []
    for i in range(layers):
        p = jax.tree.map(lambda a, i=i: a[i], stacked)
        ln1, mha, _ = p["attention"]
        ln2, fc, _, proj, _ = p["mlp"]
        blocks.append({"ln1": ln1, "attn": mha, "ln2": ln2, "fc": fc, "proj": proj})
    return {
        "embed": embed["table"],
        "pos": pos["table"],
        "blocks": blocks,
        "norm": norm,
        "head": head,
    }


def _layer_norm(x, p):
    x32 = x.astype(jnp.float32)
    mean = jnp.mean(x32, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
    y = (x32 - mean) * jax.lax.rsqrt(var + EPS) * p["scale"] + p["bias"]
    return y.astype(BF16)


def _attention(x, p, implementation: str):
    c = jax.tree.map(lambda a: a.astype(BF16), p)
    q, k, v = (
        jnp.einsum("ntd,dhk->nthk", x, c[n]["w"]) + c[n]["b"] for n in ("query", "key", "value")
    )
    scale = 1.0 / math.sqrt(q.shape[-1])
    with jax.numpy_dtype_promotion("standard"):  # jax.nn promotes bf16 with f32 inside
        o = jax.nn.dot_product_attention(
            q, k, v, is_causal=True, scale=scale, implementation=implementation
        )
    return jnp.einsum("nthk,hkd->ntd", o, c["out"]["w"]) + c["out"]["b"]


def _dense(x, p):
    return x @ p["w"].astype(BF16) + p["b"].astype(BF16)


def jax_gpt_apply(cfg, implementation: str = "xla"):
    """``(params, tokens (N, T)) -> float32 logits (N, T, vocab)``, written by hand."""
    del cfg

    def apply(params, tokens):
        x = params["embed"].astype(BF16)[tokens] + params["pos"].astype(BF16)[: tokens.shape[1]]
        for p in params["blocks"]:
            x = x + _attention(_layer_norm(x, p["ln1"]), p["attn"], implementation)
            h = jax.nn.gelu(_dense(_layer_norm(x, p["ln2"]), p["fc"]), approximate=False)
            x = x + _dense(h, p["proj"])
        return _dense(_layer_norm(x, params["norm"]), params["head"]).astype(jnp.float32)

    return apply


# ----------------------------------------------------------------------------- Flax Linen


def linen_gpt(cfg, implementation: str = "xla"):
    """The GPT as a Linen module (``dtype=bfloat16``, float32 params); Skip without flax."""
    try:
        from flax import linen as nn
    except ImportError as err:
        raise Skip("flax is not installed (pip install -e '.[bench]')") from err

    def attention_fn(query, key, value, bias=None, mask=None, **kwargs):
        del bias, mask, kwargs  # causal only, no dropout
        return jax.nn.dot_product_attention(
            query, key, value, is_causal=True, implementation=implementation
        )

    class Block(nn.Module):
        @nn.compact
        def __call__(self, x):
            h = nn.LayerNorm(epsilon=EPS, dtype=BF16, name="ln1")(x)
            x = x + nn.MultiHeadDotProductAttention(
                num_heads=cfg.heads, dtype=BF16, attention_fn=attention_fn, name="attn"
            )(h)
            h = nn.LayerNorm(epsilon=EPS, dtype=BF16, name="ln2")(x)
            h = nn.gelu(nn.Dense(4 * cfg.width, dtype=BF16, name="fc")(h), approximate=False)
            return x + nn.Dense(cfg.width, dtype=BF16, name="proj")(h)

    class GPT(nn.Module):
        @nn.compact
        def __call__(self, tokens):
            x = nn.Embed(cfg.vocab, cfg.width, dtype=BF16, name="embed")(tokens)
            pos = self.param("pos", nn.initializers.normal(0.02), (cfg.seq, cfg.width))
            x = x + pos[: tokens.shape[1]].astype(BF16)
            for i in range(cfg.layers):
                x = Block(name=f"block_{i}")(x)
            x = nn.LayerNorm(epsilon=EPS, dtype=BF16, name="norm")(x)
            return nn.Dense(cfg.vocab, dtype=BF16, name="head")(x).astype(jnp.float32)

    return GPT()


def linen_apply(module):
    """``(params, tokens) -> logits`` of a Linen module (standard dtype promotion: flax
    mixes bfloat16 and float32 inside, which strict promotion refuses)."""

    def apply(params, tokens):
        with jax.numpy_dtype_promotion("standard"):
            return module.apply({"params": params}, tokens)

    return apply


def _kb(p):
    return {"kernel": p["w"], "bias": p["b"]}


def linen_params_from_funcnet(params, cfg) -> dict:
    """funcnet's params -> the Linen module's ``params`` collection (the same arrays)."""
    del cfg
    ref = jax_params_from_funcnet(params)
    out = {"embed": {"embedding": ref["embed"]}, "pos": ref["pos"], "norm": ref["norm"]}
    for i, b in enumerate(ref["blocks"]):
        out[f"block_{i}"] = {
            "ln1": b["ln1"],
            "attn": {n: _kb(b["attn"][n]) for n in ("query", "key", "value", "out")},
            "ln2": b["ln2"],
            "fc": _kb(b["fc"]),
            "proj": _kb(b["proj"]),
        }
    out["head"] = _kb(ref["head"])
    return out
