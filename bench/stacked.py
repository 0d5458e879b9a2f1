"""Many models at once: N small models trained as one stack vs N runs one after another.

For each workload and N, the same training steps (Adam 1e-3, the workload's
batch, shared by all models, gathered on the device) run two ways:

- ``sequential``: N separate ``TrainState``\\ s, each trained by the jitted
  K-step runner of one model (``stacked_runner`` around a plain
  ``train_step``): N calls per window;
- ``stacked``: one stacked ``TrainState`` (``stack_init``) trained by the
  runner of ``stacked_train_step`` (``jax.vmap`` over the models): one call;
- ``unroll`` (convolutional workloads): the stacked step with
  ``method="unroll"``, the N models' steps one after another in one program.

Rounds are interleaved (every way and N once per round, the order fixed) and
the reported speed-up is the median over rounds of the per-round time ratio
``sequential / stacked``. Memory is XLA's own accounting of the compiled call
(``memory_analysis()``: the scratch ``temp`` of one call), since a CPU
process has no per-program peak to read; ``temp / N x one`` is the stacked
scratch over N times one model's. ``state MB`` is the bytes of the stacked
``TrainState`` (params, Adam moments, step, key) and, in brackets, its ratio
to the N single states (1.00: no hidden copies).

Workloads: ``mlp``, ``cnn`` and ``tiny_mlp`` of ``bench/workloads`` and the
MNIST-1D CNN and GRU (``examples/mnist1d.py``'s, written out here: nothing
imports the examples). Steps per call: 10 (``lax.scan``) for the dense and
recurrent models, 1 for the CNN and 4 unrolled for the MNIST-1D CNN.

Usage::

    python bench/stacked.py                          # all, N = 1 4 8 16, 3 rounds
    python bench/stacked.py --workloads mlp --models 1 8 --rounds 5
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if __package__ in (None, ""):  # run as a script: make `bench` and `funcnet` importable
    sys.path.insert(0, str(ROOT))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

import funcnet as fn  # noqa: E402

WORKLOADS = ("mlp", "cnn", "mnist1d_cnn", "mnist1d_gru", "tiny_mlp")


@dataclass
class Case:
    """One workload as this benchmark runs it."""

    name: str
    model: fn.Layer
    loss: str
    x: np.ndarray
    y: np.ndarray
    batch: int
    k: int  # steps per compiled call
    conv: bool


def mnist1d_cnn() -> fn.Layer:
    """The MNIST-1D reference CNN: 3 x Conv(25) + ReLU, lengths 40 -> 19 -> 10 -> 5, Dense(10)."""
    return fn.serial(
        fn.Conv(25, 5, strides=2, padding=1),
        fn.Relu(),
        fn.Conv(25, 3, strides=2, padding=1),
        fn.Relu(),
        fn.Conv(25, 3, strides=2, padding=1),
        fn.Relu(),
        fn.Flatten(),
        fn.Dense(10),
    )


def mnist1d_gru() -> fn.Layer:
    """The MNIST-1D reference GRU: bidirectional, hidden 6, all 40 outputs -> Dense(10)."""
    return fn.serial(fn.Bidirectional(fn.RNN(fn.GRUCell(6))), fn.Flatten(), fn.Dense(10))


def make_case(name: str) -> Case:
    rng = np.random.default_rng(0)
    if name.startswith("mnist1d_"):
        conv = name == "mnist1d_cnn"
        k, batch = (4 if conv else 10), 100
        x = rng.standard_normal((k * batch, 40, 1)).astype(np.float32)
        y = rng.integers(0, 10, k * batch).astype(np.int32)
        model = mnist1d_cnn() if conv else mnist1d_gru()
        return Case(name, model, "sparse_categorical_cross_entropy", x, y, batch, k, conv)
    from bench.workloads import get

    w = get(name)
    k = 10 if not w.has_conv else 1
    x, y = w.make_data(rng, k * w.batch)
    loss = "sparse_categorical_cross_entropy" if w.loss == "xent" else "mse"
    return Case(name, w.funcnet(), loss, x, y, w.batch, k, conv=w.has_conv)


class Way:
    """One way of training N models: its compiled runner, its states, one timed window."""

    def __init__(self, case: Case, n: int, kind: str):
        opt = optax.adam(1e-3)
        model, self.kind, self.n, self.k = case.model, kind, n, case.k
        if kind == "sequential":
            step = fn.train_step(model, case.loss, opt)
            self.states = [
                fn.TrainState.create(model, opt, jax.random.key(i), case.x) for i in range(n)
            ]
        else:
            method = "unroll" if kind == "unroll" else "vmap"
            step = fn.stacked_train_step(model, case.loss, opt, method=method)
            self.states = [fn.stack_init(model, opt, n, case.x)]
        self.run = fn.stacked_runner(step, case.batch, unroll=True if case.conv else 1)
        self.data = jax.device_put((case.x, case.y))
        self.order = jnp.arange(len(case.x), dtype=jnp.int32)
        self.state_bytes = sum(a.nbytes for a in jax.tree.leaves((self.states, [])))
        start = time.perf_counter()  # compiling (ahead of time; the first call reuses it)
        lowered = self.run.lower(self.states[0], self.data, self.order, jnp.int32(0), self.k)
        m = lowered.compile().memory_analysis()
        self.compile_s = time.perf_counter() - start
        self.temp = None if m is None else m.temp_size_in_bytes
        self.window(1)

    def window(self, calls: int) -> float:
        """Seconds for ``calls`` calls of K steps of all N models (queued, one wait at the end)."""
        start = time.perf_counter()
        for c in range(calls):
            for i, ts in enumerate(self.states):
                self.states[i], losses = self.run(ts, self.data, self.order, jnp.int32(c), self.k)
        jax.block_until_ready(losses)
        return time.perf_counter() - start


def measure(names, models, rounds: int, window_s: float, log=print) -> list[dict]:
    rows = []
    for name in names:
        case = make_case(name)
        kinds = ("sequential", "stacked", "unroll") if case.conv else ("sequential", "stacked")
        ways = {(n, kind): Way(case, n, kind) for n in models for kind in kinds}
        one = ways[(models[0], "sequential")]
        per_call = one.window(3) / 3 / models[0]
        calls = max(1, round(window_s / per_call))
        times = {key: [] for key in ways}
        for r in range(rounds):
            for key, way in ways.items():
                times[key].append(way.window(calls) / (calls * case.k))
            log(f"  {name}: round {r + 1}/{rounds}")
        rows += _rows(name, models, kinds, ways, times)
    return rows


def _rows(name, models, kinds, ways, times) -> list[dict]:
    rows = []
    single_temp = ways[(models[0], "sequential")].temp
    for n in models:
        seq = times[(n, "sequential")]
        for kind in kinds[1:]:
            way, t = ways[(n, kind)], times[(n, kind)]
            temp = way.temp
            rows.append(
                {
                    "workload": name,
                    "models": n,
                    "way": kind,
                    "sequential_ms": 1e3 * statistics.median(seq),
                    "stacked_ms": 1e3 * statistics.median(t),
                    "speedup": statistics.median(s / u for s, u in zip(seq, t)),
                    "compile_s": way.compile_s,
                    "sequential_compile_s": ways[(n, "sequential")].compile_s,
                    "temp_mb": float("nan") if temp is None else temp / 2**20,
                    "temp_vs_n": temp / (n * single_temp) if temp and single_temp else None,
                    "state_mb": way.state_bytes / 2**20,
                    "state_vs_n": way.state_bytes / ways[(n, "sequential")].state_bytes,
                }
            )
    return rows


def table(rows: list[dict]) -> list[str]:
    lines = [
        "| workload | N | way | sequential ms/step | stacked ms/step | speed-up | compile s "
        "(seq) | temp MB | temp / N x one | state MB (/ N singles) |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        ratio = "-" if r["temp_vs_n"] is None else f"{r['temp_vs_n']:.2f}"
        lines.append(
            f"| {r['workload']} | {r['models']} | {r['way']} | {r['sequential_ms']:.2f} "
            f"| {r['stacked_ms']:.2f} | {r['speedup']:.2f}x | {r['compile_s']:.1f} "
            f"({r['sequential_compile_s']:.1f}) | {r['temp_mb']:.2f} | {ratio} | "
            f"{r['state_mb']:.2f} ({r['state_vs_n']:.2f}) |"
        )
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--workloads", nargs="+", default=list(WORKLOADS), choices=WORKLOADS)
    parser.add_argument("--models", nargs="+", type=int, default=[1, 4, 8, 16])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--window", type=float, default=0.2, help="seconds of one model's steps")
    args = parser.parse_args(argv)
    print(f"jax {jax.__version__}, {jax.devices()[0].platform}, {jax.device_count()} device(s)")
    start = time.perf_counter()
    rows = measure(args.workloads, sorted(set(args.models)), args.rounds, args.window)
    print("\n".join(table(rows)))
    print(f"total {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
