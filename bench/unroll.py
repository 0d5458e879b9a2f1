"""Scan over the blocks or unrolled: a Transformer encoder's training step by depth.

For each depth, three builds of the same encoder (pre-LN blocks, width 128,
4 heads, MLP 512, final LayerNorm, mean-pool, Dense 10; batch 16, length 128,
Adam) as a jitted ``fn.train_step``:

- ``scan``: ``fn.transformer_encoder(depth, 4, unroll=1)``, one rolled
  ``lax.scan`` over the stacked block params;
- ``unrolled``: the same with ``unroll=True`` (the scan unrolled at trace
  time: straight-line code, the params still stacked);
- ``serial``: ``fn.serial`` of ``depth`` separate blocks (what a hand-written
  Python loop over per-block params compiles to).

Builds are interleaved over rounds in one process; the medians and the
per-round ratios to ``unrolled`` are reported, with the compile time (first
call minus one step). ``transformer_encoder``'s default ``unroll=None``
follows these figures (``UNROLL_MAX_BLOCKS`` in
``funcnet/layers/transformer/stacks.py``).

Usage::

    python bench/unroll.py                  # depths 2 3 4 8, prints the table
    python bench/unroll.py --write          # and replaces its section of bench/RESULTS.md
    python bench/unroll.py --depths 2 12 --rounds 9
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if __package__ in (None, ""):  # run as a script: make `bench` and `funcnet` importable
    sys.path.insert(0, str(ROOT))

from bench.sharding import write_section  # noqa: E402

SECTION = "## Scan over the blocks or unrolled (`python bench/unroll.py`"
BUILDS = ("scan", "unrolled", "serial")


def build(kind: str, depth: int):
    """The encoder classifier of ``kind`` (one of ``BUILDS``)."""
    import jax

    import funcnet as fn

    if kind == "serial":
        blocks = [fn.TransformerEncoderBlock(4) for _ in range(depth)]
        encoder = fn.serial(*blocks, fn.on_x(fn.LayerNorm()))
    else:
        encoder = fn.transformer_encoder(depth, 4, unroll=1 if kind == "scan" else True)
    return fn.serial(encoder, lambda h: jax.numpy.mean(h, axis=1), fn.Dense(10))


def prepare(kind: str, depth: int) -> dict:
    import jax
    import jax.numpy as jnp
    import optax

    import funcnet as fn

    x = jax.random.normal(jax.random.key(0), (16, 128, 128))
    batch = (x, jnp.zeros((16,), jnp.int32))
    model, optimizer = build(kind, depth), optax.adam(1e-3)
    ts = fn.TrainState.create(model, optimizer, jax.random.key(0), x)
    step = jax.jit(
        fn.train_step(model, "sparse_categorical_cross_entropy", optimizer), donate_argnums=0
    )
    t0 = time.perf_counter()
    ts, logs = step(ts, batch)
    jax.block_until_ready(logs)
    first = time.perf_counter() - t0
    run = {"kind": kind, "step": step, "ts": ts, "batch": batch, "samples": []}
    run["compile_s"] = first - time_steps(run, 1)
    return run


def time_steps(run: dict, calls: int) -> float:
    """Seconds per step over ``calls`` steps."""
    import jax

    t0 = time.perf_counter()
    for _ in range(calls):
        run["ts"], logs = run["step"](run["ts"], run["batch"])
    jax.block_until_ready(logs)
    return (time.perf_counter() - t0) / calls


def measure(depths, rounds: int = 7, calls: int = 5, log=print) -> list[dict]:
    rows = []
    for depth in depths:
        runs = [prepare(kind, depth) for kind in BUILDS]
        for _ in range(rounds):
            for run in runs:  # interleaved: a slow moment of the machine hits every build
                run["samples"].append(time_steps(run, calls))
        base = runs[BUILDS.index("unrolled")]["samples"]
        for run in runs:
            ratios = [a / b for a, b in zip(run["samples"], base)]
            rows.append(
                {
                    "depth": depth,
                    "build": run["kind"],
                    "step_ms": 1e3 * statistics.median(run["samples"]),
                    "vs_unrolled": statistics.median(ratios),
                    "compile_s": run["compile_s"],
                }
            )
        log(f"  depth {depth} done")
    return rows


def markdown(rows: list[dict]) -> list[str]:
    import jax

    lines = [
        f"{SECTION}, {datetime.date.today().isoformat()}, not written by `run.py`)",
        "",
        "A pre-LN encoder (width 128, 4 heads, MLP 512; batch 16, length 128, Adam) as a "
        "jitted `train_step`: `scan` = `transformer_encoder(depth, 4, unroll=1)`, `unrolled` = "
        "`unroll=True`, `serial` = `fn.serial` of separate blocks. Builds interleaved over "
        f"rounds, medians; `vs unrolled`: median per-round ratio. {jax.devices()[0].platform}, "
        f"jax {jax.__version__}. The default `unroll=None` unrolls up to 3 blocks.",
        "",
        "| depth | build | ms/step | vs unrolled | compile s |",
        "|---:|---|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['depth']} | {r['build']} | {r['step_ms']:.1f} | {r['vs_unrolled']:.3f} | "
            f"{r['compile_s']:.2f} |"
        )
    return [*lines, ""]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--depths", nargs="+", type=int, default=[2, 3, 4, 8], help="depths")
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds")
    parser.add_argument("--calls", type=int, default=5, help="steps timed per build and round")
    parser.add_argument("--write", action="store_true", help="update bench/RESULTS.md's section")
    args = parser.parse_args(argv)
    lines = markdown(measure(args.depths, args.rounds, args.calls))
    print("\n".join(lines))
    if args.write:
        write_section(ROOT / "bench" / "RESULTS.md", lines, SECTION)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
