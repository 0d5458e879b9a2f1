"""Run the benchmarks and write ``bench/RESULTS.md`` and ``bench/results.json``.

Usage::

    python bench/run.py                       # everything (< 10 min on 2 CPU cores)
    python bench/run.py --quick               # a smoke run (< 1 min)
    python bench/run.py --workloads mlp cnn --impls jax funcnet torch
    python bench/run.py --out /tmp/bench      # write the results elsewhere

Implementations whose library (or funcnet layer) is missing are reported as
skipped. The same command runs on a GPU (whatever JAX's default backend is).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `bench` and `funcnet` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import harness, scaling
from bench import impls as impls_lib
from bench.workloads import NAMES, get

# --quick: the references, funcnet and PyTorch eager, to stay around a minute
QUICK_IMPLS = ["jax", "jax_fused", "funcnet", "funcnet_fused", "torch"]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="short windows, few rounds (< 1 min)")
    parser.add_argument(
        "--workloads",
        nargs="+",
        default=list(NAMES),
        choices=NAMES,
        metavar="NAME",
        help=f"workloads to run (default all: {' '.join(NAMES)})",
    )
    parser.add_argument(
        "--impls",
        nargs="+",
        default=None,
        choices=list(impls_lib.IMPLS),
        metavar="NAME",
        help=f"implementations (default all; --quick: {' '.join(QUICK_IMPLS)}): "
        + " ".join(impls_lib.IMPLS),
    )
    parser.add_argument(
        "--depths",
        nargs="*",
        type=int,
        default=None,
        help="repeat compile-time depths (default 2 8 32; none with --quick; "
        "'--depths' alone: skip)",
    )
    parser.add_argument(
        "--scaling",
        nargs="*",
        type=int,
        default=None,
        help="device counts of the data-parallel scaling run (default 1 2 4; none with --quick; "
        "'--scaling' alone: skip)",
    )
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds")
    parser.add_argument("--window", type=float, default=None, help="seconds per timing window")
    parser.add_argument(
        "--out",
        type=Path,
        default=Path(__file__).resolve().parent,
        help="where RESULTS.md and results.json go (default: bench/)",
    )
    args = parser.parse_args(argv)

    settings = harness.Settings.make(args.quick)
    if args.rounds:
        settings.rounds = args.rounds
    if args.window:
        settings.window_s = args.window
    impl_names = args.impls or (QUICK_IMPLS if args.quick else list(impls_lib.IMPLS))
    if impls_lib.REFERENCE not in impl_names:
        impl_names = [impls_lib.REFERENCE, *impl_names]
    depths = args.depths if args.depths is not None else ([] if args.quick else [2, 8, 32])

    device_counts = args.scaling if args.scaling is not None else ([] if args.quick else [1, 2, 4])

    start = time.perf_counter()
    info = harness.machine_info()
    print(
        f"{info['cpu']} ({info['cores']} cores), JAX {info['versions']['jax']} on {info['device']}"
    )
    peak = harness.matmul_peak(args.quick)
    print(f"float32 matmul peak: {peak['gflops']} GFLOP/s {peak['per_size']}")

    rows = []
    for name in args.workloads:
        print(f"[{name}] {get(name).description}")
        t0 = time.perf_counter()
        wrows = harness.measure_workload(get(name), impl_names, settings)
        harness.add_peak_fraction(wrows, peak["gflops"])
        for r in wrows:
            if r["status"] == "ok":
                print(
                    f"  {r['impl']:14s} {r['step_ms']:9.4f} ms/step  ±{r['spread_pct']:4.0f}%  "
                    f"vs jax {r.get('vs_jax', float('nan')):6.3f}"
                )
        print(f"  ({time.perf_counter() - t0:.0f}s)")
        rows += wrows

    depth_rows = []
    if depths:
        print(f"[repeat] compile time vs depth {depths}")
        depth_rows = harness.repeat_depth(tuple(depths))

    scaling_rows = []
    if device_counts:
        print(f"[scaling] data-parallel step vs device count {device_counts}")
        names, rounds = (["mlp"], 1) if args.quick else (["mlp", "cnn", "lstm", "transformer"], 3)
        scaling_rows = scaling.measure(names, device_counts, rounds=rounds)

    harness.write_results(args.out, info, peak, rows, depth_rows, settings)
    if scaling_rows:
        scaling.append_results(args.out, scaling_rows)
    print(f"wrote {args.out / 'RESULTS.md'} and results.json in {time.perf_counter() - start:.0f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
