"""Step time and memory per device of a Transformer LM on 1x8, 2x4 and 8x1 meshes.

The same model, global batch and optimizer (Adam) run as a jitted
``fn.train_step`` on ``(data, model)`` meshes of 8 devices: ``1x8`` (pure
tensor parallelism: every weight split 8 ways, the batch whole on every
device), ``2x4`` and ``8x1`` (pure data parallelism: params replicated),
under ``distributed.tensor_parallel()`` rules. The meshes are interleaved
over rounds in one process and the medians reported, with the train state's
bytes per device (params and Adam moments, read from the arrays'
``addressable_shards``) and XLA's temporary memory per device for one step
(``compiled.memory_analysis()``).

On a CPU the 8 devices are virtual (``--xla_force_host_platform_device_count=8``,
added to ``XLA_FLAGS`` before JAX starts unless it sets a count) and share the cores,
so the step times measure the cost of the partitioned programs and their
collectives, not a speed-up; the memory columns are real either way. On a
host with 8 accelerators the same command measures real scaling.

Usage::

    python bench/sharding.py                     # prints the table
    python bench/sharding.py --write             # and replaces its section of bench/RESULTS.md
    python bench/sharding.py --rounds 5 --window 1.0
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if __package__ in (None, ""):  # run as a script: make `funcnet` importable
    sys.path.insert(0, str(ROOT))

MESHES = ((1, 8), (2, 4), (8, 1))
SECTION = "## Tensor parallelism and sharding rules (`python bench/sharding.py`"
CONFIG = dict(vocab=512, width=256, heads=8, layers=2, length=64, batch=32)


def build(config: dict):
    """The model (an LM whose every split size divides 8) and one global batch."""
    import numpy as np

    import funcnet as fn

    c = config
    model = fn.serial(
        fn.Embedding(c["vocab"], c["width"]),
        fn.PositionalEmbedding(c["length"]),
        fn.transformer_encoder(c["layers"], c["heads"], causal=True),
        fn.Dense(c["vocab"], axes=("embed", "vocab")),
    )
    rng = np.random.default_rng(0)
    x = rng.integers(0, c["vocab"], (c["batch"], c["length"])).astype(np.int32)
    return model, (x, np.roll(x, -1, axis=1))


def prepare(model, batch, data: int, model_axis: int):
    """A compiled step on a ``(data, model_axis)`` mesh, its placed state and batch, and its
    memory figures."""
    import jax
    import optax
    from jax.sharding import AxisType, NamedSharding
    from jax.sharding import PartitionSpec as P

    import funcnet as fn
    from funcnet import distributed

    devices = jax.devices()[: data * model_axis]
    mesh = jax.make_mesh(
        (data, model_axis), ("data", "model"), axis_types=(AxisType.Auto,) * 2, devices=devices
    )
    rules, optimizer = distributed.tensor_parallel(), optax.adam(1e-3)
    loss = "sparse_categorical_cross_entropy"
    ts = fn.TrainState.create(model, optimizer, jax.random.key(0), batch[0])
    shardings = distributed.train_state_shardings(ts, optimizer, model, batch[0], mesh, rules)
    ts = distributed.place(ts, shardings)
    placed = distributed.place(batch, NamedSharding(mesh, P("data")))
    step = jax.jit(
        fn.train_step(model, loss, optimizer, mesh=mesh, param_sharding=rules),
        donate_argnums=0,
        out_shardings=(shardings, NamedSharding(mesh, P())),
    )
    t0 = time.perf_counter()
    compiled = step.lower(ts, placed).compile()
    compile_s = time.perf_counter() - t0
    memory = compiled.memory_analysis()
    temp = getattr(memory, "temp_size_in_bytes", None) if memory is not None else None
    return {
        "mesh": f"{data}x{model_axis}",
        "step": compiled,
        "ts": ts,
        "batch": placed,
        "compile_s": compile_s,
        "state_bytes": distributed.per_device_bytes((ts.params, ts.opt_state)),
        "param_bytes": distributed.per_device_bytes(ts.params),
        "temp_bytes": temp,
    }


def time_window(run: dict, window_s: float) -> float:
    """ms per step over a window of at least ``window_s`` (calls doubling, each blocked: jax
    0.10's CPU collectives can deadlock with many steps queued)."""
    import jax

    calls, elapsed = 1, 0.0
    while elapsed < window_s:
        t0 = time.perf_counter()
        for _ in range(calls):
            run["ts"], logs = run["step"](run["ts"], run["batch"])
            jax.block_until_ready(logs)
        elapsed = time.perf_counter() - t0
        calls *= 2
    return 1e3 * elapsed / (calls // 2)


def measure(rounds: int = 5, window_s: float = 0.5, config: dict = CONFIG, log=print) -> list:
    import jax

    if jax.device_count() < 8:
        raise SystemExit(
            f"bench/sharding.py needs 8 devices, found {jax.device_count()}; on CPU leave the "
            "device count out of XLA_FLAGS (it adds --xla_force_host_platform_device_count=8)."
        )
    model, batch = build(config)
    runs = [prepare(model, batch, d, m) for d, m in MESHES]
    for run in runs:
        time_window(run, 0.1)  # warm-up
    samples = {run["mesh"]: [] for run in runs}
    for r in range(rounds):
        for run in runs:  # interleaved: a slow moment of the machine hits every mesh
            samples[run["mesh"]].append(time_window(run, window_s))
        log(f"  round {r + 1}/{rounds} done")
    whole = runs[-1]["state_bytes"]  # 8x1: replicated
    rows = []
    load = [round(v, 2) for v in os.getloadavg()] if hasattr(os, "getloadavg") else None
    for run in runs:
        times = samples[run["mesh"]]
        rows.append(
            {
                "mesh": run["mesh"],
                "step_ms": statistics.median(times),
                "spread": (max(times) - min(times)) / statistics.median(times),
                "compile_s": run["compile_s"],
                "param_bytes": run["param_bytes"],
                "state_bytes": run["state_bytes"],
                "state_vs_replicated": run["state_bytes"] / whole,
                "temp_bytes": run["temp_bytes"],
                "load_average": load,
            }
        )
    return rows


def _mb(n) -> str:
    return "?" if n is None else f"{n / 2**20:.2f}"


def markdown(rows: list, config: dict = CONFIG) -> list:
    import jax

    today = datetime.date.today().isoformat()
    device = jax.devices()[0]
    lines = [
        f"{SECTION}, {today}, not written by `run.py`)",
        "",
        f"A causal Transformer LM (vocab {config['vocab']}, width {config['width']}, "
        f"{config['heads']} heads, {config['layers']} blocks, length {config['length']}, "
        f"global batch {config['batch']}, Adam) as a jitted `train_step` on `(data, model)` "
        "meshes of 8 devices under `distributed.tensor_parallel()` rules; meshes interleaved "
        f"over rounds in one process, medians. Devices: 8 x {device.platform} "
        f"({device.device_kind}), jax {jax.__version__}. On CPU the devices are virtual and "
        "share the cores: the times show the cost of the partitioned programs and their "
        "collectives, not a speed-up; the memory columns are what each device holds. "
        f"Load average (1/5/15 min) at the end: {rows[0]['load_average'] if rows else None}.",
        "",
        "| mesh (data x model) | ms/step | spread % | compile s | params MB/device "
        "| params+Adam MB/device | vs replicated | XLA temp MB/device |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['mesh']} | {r['step_ms']:.2f} | {100 * r['spread']:.0f} | "
            f"{r['compile_s']:.2f} | {_mb(r['param_bytes'])} | {_mb(r['state_bytes'])} | "
            f"{r['state_vs_replicated']:.2f} | {_mb(r['temp_bytes'])} |"
        )
    return [*lines, ""]


def write_section(path: Path, lines: list, section: str = SECTION) -> None:
    """Replace the section of ``path`` whose heading starts with ``section`` (or append it):
    other sections untouched."""
    text = path.read_text() if path.exists() else ""
    start = text.find(section)
    block = "\n".join(lines)
    if start < 0:
        text = text.rstrip("\n") + "\n\n" + block
    else:
        end = text.find("\n## ", start + 1)
        text = text[:start] + block + ("" if end < 0 else text[end:])
    path.write_text(text if text.endswith("\n") else text + "\n")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds over the meshes")
    parser.add_argument(
        "--window", type=float, default=0.5, help="seconds timed per mesh and round"
    )
    parser.add_argument("--write", action="store_true", help="update bench/RESULTS.md's section")
    args = parser.parse_args(argv)
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_force_host_platform_device_count" not in flags:  # before JAX starts
        os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count=8".strip()
    rows = measure(args.rounds, args.window)
    lines = markdown(rows)
    print("\n".join(lines))
    if args.write:
        write_section(ROOT / "bench" / "RESULTS.md", lines)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
