"""Data-parallel scaling: time per step of funcnet's sharded step vs the number of devices.

The same global batch (the workload's) is split over a ``("data",)`` mesh of
1, 2, 4, ... devices, exactly as ``fit(..., mesh=make_mesh())`` does it:
params, model state and optimizer state replicated, the batch sharded, the
gradients averaged by the compiler. Each device count runs in its own
process (``--xla_force_host_platform_device_count`` must be set before JAX
starts); the counts are interleaved over rounds and the medians reported.

On a CPU the "devices" are virtual and share the same cores, so this measures
the cost of the data-parallel machinery (partitioned programs, all-reduces)
rather than a speed-up; on a machine with several accelerators the same
command measures real scaling.

Usage::

    python bench/scaling.py                    # mlp and cnn, 1 2 4 devices; prints a table
    python bench/scaling.py --devices 1 2 4 8 --workloads mlp --rounds 5
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if __package__ in (None, ""):  # run as a script: make `bench` and `funcnet` importable
    sys.path.insert(0, str(ROOT))


def worker(workload: str, window_s: float) -> dict:
    """In a process with the device count already set: compile, then time one window."""
    import jax
    import numpy as np
    import optax
    from jax.sharding import NamedSharding, PartitionSpec

    import funcnet as fn
    from bench.workloads import get

    w = get(workload)
    mesh = fn.distributed.make_mesh()
    x, y = w.make_data(np.random.default_rng(0), w.batch)
    loss = "sparse_categorical_cross_entropy" if w.loss == "xent" else "mse"
    optimizer = optax.adam(1e-3)
    model = w.funcnet()
    ts = fn.TrainState.create(model, optimizer, jax.random.key(0), x)
    shardings = fn.distributed.state_shardings(ts, mesh, "replicated")
    ts = fn.distributed.place(ts, shardings)
    batch = fn.distributed.place((x, y), fn.distributed.batch_sharding(mesh))
    step = jax.jit(
        fn.train_step(model, loss, optimizer),
        donate_argnums=0,
        out_shardings=(shardings, NamedSharding(mesh, PartitionSpec())),
    )
    t0 = time.perf_counter()
    ts, logs = step(ts, batch)
    jax.block_until_ready(logs)
    compile_s = time.perf_counter() - t0
    calls, elapsed = 1, 0.0
    while elapsed < window_s:  # a window of at least `window_s`, calls doubling
        t0 = time.perf_counter()
        for _ in range(calls):
            # block on every call: jax 0.10's CPU collectives can deadlock with many steps queued
            ts, logs = step(ts, batch)
            jax.block_until_ready(logs)
        elapsed = time.perf_counter() - t0
        calls *= 2
    return {
        "devices": jax.device_count(),
        "compile_s": compile_s,
        "step_ms": 1e3 * elapsed / (calls // 2),
    }


def run_worker(workload: str, devices: int, window_s: float, timeout: float = 300) -> dict:
    env = dict(os.environ)
    flags = env.get("XLA_FLAGS", "")
    env["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={devices}".strip()
    env["JAX_PLATFORMS"] = env.get("JAX_PLATFORMS", "cpu")
    out = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--worker", workload, str(window_s)],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if out.returncode != 0:
        raise RuntimeError(f"scaling worker ({workload}, {devices} devices) failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure(workloads, devices, rounds: int = 3, window_s: float = 0.5, log=print) -> list[dict]:
    """Median step time per (workload, device count) over interleaved rounds."""
    samples: dict[tuple[str, int], list[dict]] = {}
    for r in range(rounds):
        for name in workloads:
            for n in devices:
                samples.setdefault((name, n), []).append(run_worker(name, n, window_s))
        log(f"  scaling round {r + 1}/{rounds} done")
    rows = []
    for (name, n), runs in samples.items():
        step_ms = statistics.median(s["step_ms"] for s in runs)
        rows.append(
            {
                "workload": name,
                "devices": n,
                "step_ms": step_ms,
                "compile_s": statistics.median(s["compile_s"] for s in runs),
            }
        )
    for row in rows:
        base = next(
            r for r in rows if r["workload"] == row["workload"] and r["devices"] == devices[0]
        )
        row["vs_first"] = row["step_ms"] / base["step_ms"]
    return rows


def markdown(rows: list[dict]) -> list[str]:
    """The report section (a list of lines)."""
    if not rows:
        return []
    lines = [
        "## Data-parallel scaling (virtual CPU devices)",
        "",
        "funcnet's `train_step` under `jax.jit` on a `(\"data\",)` mesh, the workload's global "
        "batch split over the devices (as `fit(mesh=...)` does). One process per device count "
        "(`--xla_force_host_platform_device_count`), interleaved rounds, medians. On a CPU the "
        "devices share the same cores: this is the cost of the data-parallel machinery, not a "
        "speed-up (`python bench/scaling.py`).",
        "",
        "| workload | devices | ms/step | vs 1 device | compile s |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['workload']} | {r['devices']} | {r['step_ms']:.3f} | {r['vs_first']:.2f} "
            f"| {r['compile_s']:.2f} |"
        )
    return [*lines, ""]


def append_results(out_dir: Path, rows: list[dict]) -> None:
    """Add the scaling section to ``RESULTS.md`` and the rows to ``results.json``."""
    from bench.harness import kept_sections

    path = out_dir / "RESULTS.md"
    text = path.read_text()
    kept = kept_sections(text)  # the hand-written sections stay last
    head = text[: len(text) - len(kept)]
    path.write_text(head + "\n" + "\n".join(markdown(rows)) + kept)
    data = json.loads((out_dir / "results.json").read_text())
    data["scaling"] = rows
    (out_dir / "results.json").write_text(json.dumps(data, indent=1) + "\n")


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--worker":
        print(json.dumps(worker(argv[1], float(argv[2]))))
        return 0
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--workloads", nargs="+", default=["mlp", "cnn"])
    parser.add_argument("--devices", nargs="+", type=int, default=[1, 2, 4])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--window", type=float, default=0.5)
    args = parser.parse_args(argv)
    rows = measure(args.workloads, args.devices, args.rounds, args.window)
    print("\n".join(markdown(rows)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
