"""GPT-style decoder LM training throughput: funcnet, hand-written pure JAX, Flax Linen.

One run, the same math and the same weights in all three: token embedding +
learned positions, ``L`` pre-LN causal blocks (LayerNorm, multi-head
self-attention, LayerNorm, MLP 4x with exact GELU), a final LayerNorm and an
untied Dense head to the vocabulary; next-token cross-entropy; AdamW. Params
are float32; the forward and backward passes compute in bfloat16 (funcnet:
``train_step(..., policy="mixed_bfloat16")``; the others cast the same way:
LayerNorm statistics and the softmax in float32, logits returned as float32).

- ``funcnet``: built as the README teaches, ``fn.serial(fn.Embedding,
  fn.PositionalEmbedding, fn.transformer_encoder(L, H, causal=True),
  fn.Dense(vocab))``, trained by ``jax.jit(fn.train_step(...),
  donate_argnums=0)``, with the README's switch for the attention kernel:
  ``transformer_encoder(..., attention_implementation="cudnn")`` when cuDNN
  can run it (``--attention auto``, the default), else XLA's.
- ``jax``: the same model by hand (params dict, a Python loop over blocks),
  attention ``jax.nn.dot_product_attention(implementation=...)`` as funcnet's.
- ``jax_xla``: ``jax`` with XLA's attention (isolates the attention kernel).
- ``flax_linen``: Linen modules (``dtype=bfloat16``), attention as ``jax``.

Reported per implementation: ms/step (median over interleaved rounds),
tokens/s and model FLOPs utilisation: (6 N + 12 L D T) FLOPs per token (N the
params less the embedding tables, the untied head included; PaLM's count,
attention not halved for the causal mask) over the device's peak bfloat16 FLOP/s
(:data:`PEAK_BF16_TFLOPS` by device kind, or ``--peak-tflops``).

Usage::

    python bench/gpt.py --size 125m                 # on a GPU
    python bench/gpt.py --size tiny                 # a few seconds on CPU (smoke run)
    python bench/gpt.py --size 125m --batch 16 --rounds 7 --out /tmp/gpt.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

if __package__ in (None, ""):  # run as a script: python bench/gpt.py
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax
import numpy as np
import optax

from bench import gpt_models
from bench.harness import Settings, prepare, time_rounds
from bench.impls import Runner
from bench.workloads._base import Skip

__all__ = [
    "CONFIGS",
    "IMPLS",
    "PEAK_BF16_TFLOPS",
    "GPTConfig",
    "flops_per_token",
    "main",
    "peak_tflops",
    "render",
    "run",
]


@dataclass(frozen=True)
class GPTConfig:
    """A GPT size: ``layers`` blocks of width ``width`` with ``heads`` heads, over
    ``seq`` tokens of a ``vocab``-token vocabulary, ``batch`` sequences a step."""

    layers: int
    width: int
    heads: int
    vocab: int
    seq: int
    batch: int
    learning_rate: float = 3e-4
    weight_decay: float = 0.1


CONFIGS = {
    "125m": GPTConfig(layers=12, width=768, heads=12, vocab=50304, seq=1024, batch=16),
    "tiny": GPTConfig(layers=2, width=64, heads=4, vocab=256, seq=64, batch=4),
}

IMPLS = {
    "funcnet": "README model, `jax.jit(fn.train_step(..., policy='mixed_bfloat16'))` (donated)",
    "jax": "hand-written pure JAX, attention cuDNN when available else XLA (as funcnet's)",
    "jax_xla": "hand-written pure JAX, XLA attention",
    "flax_linen": "Flax Linen (`dtype=bfloat16`), attention as `jax`",
}

# Dense bfloat16 peak (no sparsity), TFLOP/s; matched in order against `device_kind`.
PEAK_BF16_TFLOPS = (
    ("GH200", 989.0),
    ("H200", 989.0),
    ("H100 PCIe", 756.0),
    ("H100", 989.0),
    ("H800", 989.0),
    ("B200", 2250.0),
    ("A100", 312.0),
    ("A800", 312.0),
    ("L40S", 362.0),
    ("L4", 121.0),
    ("A10", 125.0),
    ("RTX 4090", 165.0),
    ("V100", 125.0),
    ("TPU v6", 918.0),
    ("TPU v5p", 459.0),
    ("TPU v5", 197.0),
    ("TPU v4", 275.0),
)


def peak_tflops(device_kind: str) -> float | None:
    """The peak dense bfloat16 TFLOP/s of a device kind, or None when unknown (CPUs).

    Examples:
        >>> peak_tflops("NVIDIA H100 80GB HBM3"), peak_tflops("NVIDIA H100 PCIe")
        (989.0, 756.0)
        >>> peak_tflops("cpu") is None
        True
    """
    for name, tflops in PEAK_BF16_TFLOPS:
        if name.lower() in device_kind.lower():
            return tflops
    return None


def flops_per_token(cfg: GPTConfig) -> float:
    """Training FLOPs per token: ``6 N + 12 L D T``, N the params less the embedding tables.

    Examples:
        >>> cfg = CONFIGS["125m"]
        >>> round(flops_per_token(cfg) / 1e9, 3)  # GFLOPs per token
        0.856
    """
    n = gpt_models.param_count(cfg) - (cfg.vocab + cfg.seq) * cfg.width  # lookups: no FLOPs
    return 6.0 * n + 12.0 * cfg.layers * cfg.width * cfg.seq


# ----------------------------------------------------------------------------- runners


def _batches(cfg: GPTConfig, count: int = 4, seed: int = 0):
    tokens = np.random.default_rng(seed).integers(0, cfg.vocab, (count, cfg.batch, cfg.seq + 1))
    tokens = tokens.astype(np.int32)
    return [jax.device_put((t[:, :-1], t[:, 1:])) for t in tokens]


def _optimizer(cfg: GPTConfig):
    return optax.adamw(cfg.learning_rate, b1=0.9, b2=0.95, weight_decay=cfg.weight_decay)


def _cycle_runner(step, state: list, batches, note: str) -> Runner:
    i = [0]

    def call():
        state[:] = step(*state, batches[i[0] % len(batches)])
        i[0] += 1

    return Runner(call, lambda: jax.block_until_ready(state), note=note)


def build(name: str, cfg: GPTConfig, attention: str, batches) -> Runner:
    """The training loop of one implementation, from funcnet's initial weights."""
    import funcnet as fn

    model = gpt_models.funcnet_gpt(cfg, attention)
    opt = _optimizer(cfg)
    ts = fn.TrainState.create(model, opt, jax.random.key(0), batches[0][0])
    if name == "funcnet":
        step = fn.train_step(
            model, "sparse_categorical_cross_entropy", opt, policy="mixed_bfloat16"
        )
        jstep = jax.jit(lambda ts, b: (step(ts, b)[0],), donate_argnums=0)
        return _cycle_runner(jstep, [ts], batches, f"{attention} attention")
    impl = "xla" if name == "jax_xla" else attention
    if name in ("jax", "jax_xla"):
        params = gpt_models.jax_params_from_funcnet(ts.params)
        apply = gpt_models.jax_gpt_apply(cfg, impl)
    elif name == "flax_linen":
        module = gpt_models.linen_gpt(cfg, impl)  # raises Skip without flax
        params = gpt_models.linen_params_from_funcnet(ts.params, cfg)
        apply = gpt_models.linen_apply(module)
    else:
        raise ValueError(f"unknown implementation {name!r}; choose from {', '.join(IMPLS)}.")

    def step(params, opt_state, batch):
        x, y = batch
        grads = jax.grad(lambda p: gpt_models.token_xent(apply(p, x), y))(params)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    jstep = jax.jit(step, donate_argnums=(0, 1))
    return _cycle_runner(jstep, [params, opt.init(params)], batches, f"{impl} attention")


def initial_losses(cfg: GPTConfig, attention: str = "xla", impls=tuple(IMPLS)) -> dict:
    """Each implementation's loss on the first batch, from the same (funcnet's) weights."""
    import funcnet as fn

    batches = _batches(cfg, 1)
    x, y = batches[0]
    model = gpt_models.funcnet_gpt(cfg, attention)
    params, state = model.init(jax.random.key(0), x)
    policy_model = fn.with_policy(model, "mixed_bfloat16")
    out = {}
    if "funcnet" in impls:
        logits = jax.jit(lambda p: policy_model.apply(p, state, x)[0])(params)
        out["funcnet"] = float(gpt_models.token_xent(logits, y))
    for name in ("jax", "jax_xla"):
        if name in impls:
            apply = gpt_models.jax_gpt_apply(cfg, "xla" if name == "jax_xla" else attention)
            ref = gpt_models.jax_params_from_funcnet(params)
            out[name] = float(jax.jit(lambda p, f=apply: gpt_models.token_xent(f(p, x), y))(ref))
    if "flax_linen" in impls:
        try:
            module = gpt_models.linen_gpt(cfg, attention)
        except Skip:
            pass
        else:
            lp = gpt_models.linen_params_from_funcnet(params, cfg)
            logits = jax.jit(gpt_models.linen_apply(module))(lp, x)
            out["flax_linen"] = float(gpt_models.token_xent(logits, y))
    return out


# ----------------------------------------------------------------------------- the run


def _row_summary(row: dict, cfg: GPTConfig, peak: float | None) -> None:
    samples = row.pop("samples_ms")
    ms = statistics.median(samples)
    tokens_per_s = cfg.batch * cfg.seq / (ms / 1e3)
    model_tflops = flops_per_token(cfg) * tokens_per_s / 1e12
    row.update(
        step_ms=ms,
        samples_ms=samples,
        tokens_per_s=tokens_per_s,
        model_tflops=model_tflops,
        mfu=(model_tflops / peak) if peak else None,
    )


def run(
    cfg: GPTConfig,
    impls=tuple(IMPLS),
    *,
    rounds: int = 5,
    window_s: float = 1.0,
    attention: str = "auto",
    peak: float | None = None,
    log=print,
) -> dict:
    """Build, compile and time each implementation in interleaved rounds; the report dict.

    ``attention``: ``"auto"`` (cuDNN when it runs here, else XLA), ``"cudnn"`` or
    ``"xla"``, for ``jax`` and ``flax_linen``. ``peak``: TFLOP/s for the MFU
    (default: from :data:`PEAK_BF16_TFLOPS` by device kind; None on CPU).
    """
    device = jax.devices()[0]
    if attention == "auto":
        attention = "cudnn" if gpt_models.cudnn_attention_works(cfg) else "xla"
    peak = peak if peak is not None else peak_tflops(device.device_kind)
    batches = _batches(cfg)
    settings = replace(Settings(), window_s=window_s, rounds=rounds)
    rows, live = [], []
    for name in impls:
        row = {"impl": name, "status": "ok"}
        rows.append(row)
        try:
            runner = build(name, cfg, attention, batches)
            row.update(prepare(name, runner, settings, "gpt"))
        except Skip as err:
            row.update(status="skipped", reason=str(err))
            log(f"  {name:11s} skipped: {err}")
            continue
        live.append((row, runner))
        log(f"  {name:11s} compiled in {row['compile_s']:.1f}s, {row['window_calls']} steps/window")
    time_rounds(live, settings)
    for row, _ in live:
        _row_summary(row, cfg, peak)
    return {
        "config": asdict(cfg),
        "device": device.device_kind,
        "backend": jax.default_backend(),
        "jax": jax.__version__,
        "attention": attention,
        "peak_tflops": peak,
        "flops_per_token": flops_per_token(cfg),
        "params": gpt_models.param_count(cfg),
        "rounds": rounds,
        "rows": rows,
    }


def render(report: dict) -> str:
    """The report as a markdown table."""
    cfg = report["config"]
    peak = report["peak_tflops"]
    lines = [
        f"GPT {cfg['layers']} layers, width {cfg['width']}, {cfg['heads']} heads, vocab "
        f"{cfg['vocab']}, sequence {cfg['seq']}, batch {cfg['batch']}; "
        f"{report['params'] / 1e6:.1f} M params; bfloat16 compute, float32 params, AdamW",
        f"device {report['device']} ({report['backend']}), jax {report['jax']}, attention "
        f"for funcnet/jax/flax: {report['attention']}, peak {peak or 'unknown'} TFLOP/s, "
        f"{report['rounds']} interleaved rounds (median)",
        "",
        "| impl | ms/step | tokens/s | model TFLOP/s | MFU | compile s | note |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in report["rows"]:
        if r["status"] != "ok":
            lines.append(f"| {r['impl']} | {r['status']}: {r.get('reason', '')} | | | | | |")
            continue
        mfu = "-" if r["mfu"] is None else f"{100 * r['mfu']:.1f}%"
        lines.append(
            f"| {r['impl']} | {r['step_ms']:.2f} | {r['tokens_per_s']:,.0f} | "
            f"{r['model_tflops']:.3f} | {mfu} | {r['compile_s']:.1f} | {r['note']} |"
        )
    return "\n".join(lines)


def main(argv=None) -> dict:
    """Command line: ``python bench/gpt.py --size tiny``; prints the table, returns the report."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", choices=list(CONFIGS), default="125m")
    parser.add_argument("--batch", type=int, help="sequences per step (default: the size's)")
    parser.add_argument("--impls", nargs="+", choices=list(IMPLS), default=list(IMPLS))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--window", type=float, default=1.0, help="seconds per timed window")
    parser.add_argument("--attention", choices=("auto", "cudnn", "xla"), default="auto")
    parser.add_argument("--peak-tflops", type=float, help="peak bf16 TFLOP/s for the MFU")
    parser.add_argument("--out", type=Path, help="also write the report as JSON here")
    args = parser.parse_args(argv)
    cfg = CONFIGS[args.size]
    if args.batch:
        cfg = replace(cfg, batch=args.batch)
    t0 = time.perf_counter()
    losses = initial_losses(cfg, "xla", args.impls)
    print("loss at step 0, same weights:", {k: round(v, 4) for k, v in losses.items()})
    report = run(
        cfg,
        args.impls,
        rounds=args.rounds,
        window_s=args.window,
        attention=args.attention,
        peak=args.peak_tflops,
    )
    report["initial_losses"] = losses
    print(render(report))
    print(f"({time.perf_counter() - t0:.0f} s)")
    if args.out:
        args.out.write_text(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
