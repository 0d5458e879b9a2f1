"""What ``fit`` costs beyond its compiled steps: shuffling, gathering, progress, logging.

For each workload, ``fn.fit`` runs as the README calls it (the workload's
model, Adam, its loss; ``batch_size`` the workload's, every other option at
its default, so one step per call, shuffled, progress shown) for a few
epochs of ``--steps`` steps on host numpy arrays. A callback stamps the end
of every epoch; a ``jax.monitoring`` listener adds up the tracing and
compiling done meanwhile. The reference is the same compiled step called
``--steps`` times on batches already on the device (the ``funcnet``
implementation of ``bench/run.py``), timed by the callback after each epoch
(interleaved with fit's epochs, outside their time); its median is used.

- ``first epoch overhead``: (first epoch - its tracing and compiling - the
  reference epoch) / the reference epoch.
- ``steady overhead``: (median of the later epochs - the reference epoch) /
  the reference epoch.

Usage::

    python bench/fit_overhead.py                    # mlp cnn lstm transformer
    python bench/fit_overhead.py --write            # and replaces its section of bench/RESULTS.md
    python bench/fit_overhead.py --workloads cnn --steps 40 --epochs 4
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import io
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if __package__ in (None, ""):  # run as a script: make `bench` and `funcnet` importable
    sys.path.insert(0, str(ROOT))

from bench.sharding import write_section  # noqa: E402

SECTION = "## `fit`'s overhead per epoch (`python bench/fit_overhead.py`"


class _Clock:
    """A funcnet callback: each epoch's seconds and the compile seconds in it; after each
    epoch, outside the epoch's time, one ``reference()`` epoch (interleaved with fit's)."""

    def __init__(self, reference):
        self.reference, self.references = reference, []
        self.epochs, self.compile_s, self._start, self._compiling = [], [], 0.0, 0.0

    def on_duration(self, event: str, seconds: float, **_):
        if event.startswith("/jax/core/compile/"):  # tracing, lowering, XLA compiling
            self._compiling += seconds

    def on_train_begin(self, train_state):
        self._start, self._compiling = time.perf_counter(), 0.0

    def on_epoch_end(self, epoch, logs, train_state):
        self.epochs.append(time.perf_counter() - self._start)
        self.compile_s.append(self._compiling)
        self.references.append(self.reference())
        self._start, self._compiling = time.perf_counter(), 0.0


def fit_epochs(name: str, steps: int, epochs: int) -> dict:
    """Epoch times of ``fn.fit`` on workload ``name``, and the reference step's time."""
    import jax
    import numpy as np
    import optax

    import funcnet as fn
    from bench import impls
    from bench.workloads import get

    workload = get(name)
    x, y = workload.make_data(np.random.default_rng(0), steps * workload.batch)
    runner = impls.build_funcnet(workload, impls.Data(workload, workload.fused_steps))
    runner.call()
    runner.sync()

    def reference():
        t0 = time.perf_counter()
        for _ in range(steps):
            runner.call()
        runner.sync()
        return time.perf_counter() - t0

    clock = _Clock(reference)
    jax.monitoring.register_event_duration_secs_listener(clock.on_duration)
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        fn.fit(
            workload.funcnet(),
            optax.adam(impls.LEARNING_RATE),
            impls.funcnet_loss_name(workload),
            (x, y),
            epochs=epochs,
            batch_size=workload.batch,
            callbacks=[clock],
        )
    epochs_s = clock.epochs
    reference = statistics.median(clock.references)
    steady = statistics.median(epochs_s[1:])
    first = epochs_s[0] - clock.compile_s[0]
    return {
        "workload": name,
        "steps": steps,
        "reference_s": reference,
        "first_s": epochs_s[0],
        "first_compile_s": clock.compile_s[0],
        "steady_s": steady,
        "first_extra_ms": 1e3 * (first - reference),
        "steady_extra_ms": 1e3 * (steady - reference),
        "first_overhead": first / reference - 1,
        "steady_overhead": steady / reference - 1,
    }


def markdown(rows: list[dict]) -> list[str]:
    import jax

    lines = [
        f"{SECTION}, {datetime.date.today().isoformat()}, not written by `run.py`)",
        "",
        "`fn.fit` with its defaults (one step per call, shuffled, progress shown; host numpy "
        "arrays) against the same compiled step called on batches already on the device. "
        "First epoch: its time less the tracing and compiling done in it (`jax.monitoring`). "
        f"{jax.devices()[0].platform}, jax {jax.__version__}.",
        "",
        "| workload | steps/epoch | reference epoch s | first epoch s (compile s) | "
        "first overhead ms (%) | later epochs s | steady overhead ms (%) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['workload']} | {r['steps']} | {r['reference_s']:.3f} | "
            f"{r['first_s']:.3f} ({r['first_compile_s']:.2f}) | "
            f"{r['first_extra_ms']:+.0f} ({100 * r['first_overhead']:+.1f}%) | "
            f"{r['steady_s']:.3f} | "
            f"{r['steady_extra_ms']:+.0f} ({100 * r['steady_overhead']:+.1f}%) |"
        )
    return [*lines, ""]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument(
        "--workloads", nargs="+", default=["mlp", "cnn", "lstm", "transformer"], help="workloads"
    )
    parser.add_argument("--steps", type=int, default=100, help="steps per epoch")
    parser.add_argument("--epochs", type=int, default=3, help="epochs per fit")
    parser.add_argument("--write", action="store_true", help="update bench/RESULTS.md's section")
    args = parser.parse_args(argv)
    rows = [fit_epochs(name, args.steps, args.epochs) for name in args.workloads]
    lines = markdown(rows)
    print("\n".join(lines))
    if args.write:
        write_section(ROOT / "bench" / "RESULTS.md", lines, SECTION)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
