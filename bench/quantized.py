"""Static int8 vs float32 inference on CPU: the jitted ``apply`` of each, interleaved.

For each model (batch 256) three programs are compiled with ``jax.jit``:

- ``float32``: ``model.apply`` on the float params;
- ``int8``: the model of ``fn.compress.quantize_model`` (calibrated on two
  batches): ``int8 x int8 -> int32`` dots and convolutions, activations
  quantized and results rescaled in float32 around them;
- ``weight-only``: ``model.apply`` on ``dequantize(quantize(params))`` inside
  the program (int8 storage, float compute).

Rounds are interleaved (each program once per round, in a fixed order), each
timing a window of calls (``block_until_ready`` after the last); the table
shows medians over rounds of ms per call and the median of the per-round
ratios ``int8 / float32``. It also reads XLA's optimized HLO to say whether
the integer dot/convolution stays in s8 operands or is converted to float.

Models: the digits CNN of ``examples/compress_digits.py`` (8x8x1 inputs,
53k params), an MLP 784-1024-1024-10 (1.8M params), one Dense 1024->1024
(the bare matmul) and one Conv 3x3, 32->64 channels on 16x16 (the bare
convolution).

Usage::

    python bench/quantized.py               # 7 rounds
    python bench/quantized.py --rounds 3 --models mlp
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if __package__ in (None, ""):  # run as a script: make `funcnet` importable
    sys.path.insert(0, str(ROOT))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

import funcnet as fn  # noqa: E402
from funcnet import compress  # noqa: E402

BATCH = 256


def digits_cnn() -> fn.Layer:
    return fn.serial(
        fn.Conv(32, (3, 3), padding="SAME"), fn.Relu(), fn.MaxPool(2),
        fn.Conv(64, (3, 3), padding="SAME"), fn.Relu(), fn.MaxPool(2),
        fn.Flatten(), fn.Dense(128), fn.Relu(), fn.Dense(10),
    )  # fmt: skip


MODELS = {
    "digits_cnn": (digits_cnn, (8, 8, 1)),
    "mlp": (
        lambda: fn.serial(fn.Dense(1024), fn.Relu(), fn.Dense(1024), fn.Relu(), fn.Dense(10)),
        (784,),
    ),
    "dense": (lambda: fn.Dense(1024), (1024,)),
    "conv": (lambda: fn.Conv(64, (3, 3), padding="SAME"), (16, 16, 32)),
}


def programs(name: str) -> dict:
    """``{way: (jitted fn, args)}`` for one model, all computing its outputs on one batch."""
    make, shape = MODELS[name]
    model = make()
    x = jax.random.normal(jax.random.key(1), (BATCH, *shape))
    params, state = model.init(jax.random.key(0), x)
    qmodel, qparams = compress.quantize_model(model, params, state, [x[:128], x[128:]])
    weights = compress.quantize(params)

    def float_apply(p, s, x):
        return model.apply(p, s, x)[0]

    def int8_apply(p, s, x):
        return qmodel.apply(p, s, x)[0]

    def weight_only(q, s, x):
        return model.apply(compress.dequantize(q), s, x)[0]

    return {
        "float32": (jax.jit(float_apply), (params, state, x)),
        "int8": (jax.jit(int8_apply), (qparams, state, x)),
        "weight-only": (jax.jit(weight_only), (weights, state, x)),
    }


def integer_ops(fn_, args) -> str:
    """What XLA's optimized HLO computes the dots/convolutions in: ``op in-types->out-type``."""
    text = fn_.lower(*args).compile().as_text()
    types = dict(re.findall(r"%([\w.\-]+) = (\w+)\[", text))  # instruction -> element type
    kinds = set()
    for out, op, operands in re.findall(r"= (\w+)\[[^\]]*\]\S* (dot|convolution)\(([^)]*)\)", text):
        ins = [types.get(name, "?") for name in re.findall(r"%([\w.\-]+)", operands)]
        kinds.add(f"{op} {'x'.join(ins)}->{out}")
    return ", ".join(sorted(kinds)) or "(no dot/convolution in the HLO)"


def time_window(fn_, args, calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        out = fn_(*args)
    out.block_until_ready()
    return (time.perf_counter() - start) / calls * 1e3


def bench(name: str, rounds: int, window_s: float) -> dict:
    progs = programs(name)
    calls = {}
    for way, (f, args) in progs.items():
        f(*args).block_until_ready()  # compile
        one = time_window(f, args, 3)
        calls[way] = max(1, int(window_s * 1e3 / max(one, 1e-3)))
    samples: dict = {way: [] for way in progs}
    for _ in range(rounds):
        for way, (f, args) in progs.items():
            samples[way].append(time_window(f, args, calls[way]))
    ratio = [i / f for i, f in zip(samples["int8"], samples["float32"])]
    wo = [w / f for w, f in zip(samples["weight-only"], samples["float32"])]
    f0, args0 = progs["float32"]
    f1, args1 = progs["int8"]
    y0, y1 = f0(*args0), f1(*args1)
    return {
        "model": name,
        "ms": {way: statistics.median(v) for way, v in samples.items()},
        "int8/float": statistics.median(ratio),
        "weight-only/float": statistics.median(wo),
        "rel_err": float(jnp.abs(y1 - y0).max() / jnp.abs(y0).max()),
        "hlo": integer_ops(f1, args1),
        "params": fn.param_count(args0[0]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds")
    parser.add_argument("--window", type=float, default=0.3, help="seconds of calls per sample")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS),
                        help="models to run")  # fmt: skip
    args = parser.parse_args()
    print(f"jax {jax.__version__}, {jax.devices()[0].platform}, batch {BATCH}, "
          f"{args.rounds} rounds")  # fmt: skip
    print("\n| model | params | float32 ms | int8 ms | weight-only ms | int8 / float32 "
          "| weight-only / float32 | max rel. error | int8 ops in optimized HLO |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|---:|---:|---|")
    for name in args.models:
        r = bench(name, args.rounds, args.window)
        ms = r["ms"]
        print(
            f"| {name} | {r['params']:,} | {ms['float32']:.3f} | {ms['int8']:.3f} | "
            f"{ms['weight-only']:.3f} | {r['int8/float']:.2f} | {r['weight-only/float']:.2f} | "
            f"{r['rel_err']:.4f} | {r['hlo']} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
