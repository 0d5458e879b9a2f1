"""Background checkpoint saves: how much training time they give back.

A training loop of ``--steps`` jitted SGD steps of an MLP (``--layers``
square layers of width ``--width``, float32: ``layers * width**2 * 4`` bytes
of params; default 16 x 1024 = 64 MiB) saves its params every ``--every``
steps with a :class:`funcnet.checkpoint.CheckpointManager` into a temporary
directory, in three modes, one run each per round, the order rotating by
round:

- ``none``: no checkpoint (the training time alone);
- ``sync``: ``CheckpointManager(...)``: ``save`` writes the files (SHA-256,
  ``fsync``) before training goes on;
- ``async``: ``CheckpointManager(..., async_save=True)``: ``save`` copies the
  params to host memory and returns; a background thread writes them while
  the next steps run (the step donates its params, so the copy is needed).

The loop waits for the params before each save (and every 5 steps), so the
time blocked in ``save`` is the save's alone.
Both checkpointing modes end with ``wait_until_finished()`` inside the timed
loop (the last write counts). Reported: the median wall time of the loop,
the time the loop spent inside ``save`` (blocked), the time checkpointing
added over ``none``, and the share of the sync overhead that async saved.
Add ``--sharded`` for the sharded (directory) format. On 2 CPU cores the
background thread (hashing, writing) competes with XLA's compute threads,
so the overlap is partial; with an accelerator the steps run on the device
and the host is free.

Usage::

    python bench/checkpoint_async.py                # 64 MiB, 40 steps, save every 10, 5 rounds
    python bench/checkpoint_async.py --layers 32 --rounds 3 --sharded
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

from funcnet.checkpoint import CheckpointManager


def make_step(lr: float = 1e-3):
    def loss(params, x):
        for w in params:
            x = jnp.tanh(x @ w)
        return jnp.mean(x**2)

    def step(params, x):
        grads = jax.grad(loss)(params, x)
        return [w - lr * g for w, g in zip(params, grads)]

    return jax.jit(step, donate_argnums=0)


def fresh_params(layers: int, width: int) -> list:
    rng = np.random.default_rng(0)
    scale = 1.0 / np.sqrt(width)
    return [
        jnp.asarray(rng.normal(size=(width, width)).astype(np.float32) * scale)
        for _ in range(layers)
    ]


def run_once(mode: str, args, step, x) -> tuple[float, float]:
    """``(loop seconds, seconds blocked in save)`` of one training run in ``mode``."""
    params = fresh_params(args.layers, args.width)
    jax.block_until_ready(params)
    directory = tempfile.mkdtemp(prefix="ckpt_bench_")
    manager = None
    if mode != "none":
        manager = CheckpointManager(
            directory, max_to_keep=2, async_save=(mode == "async"), sharded=args.sharded
        )
    blocked = 0.0
    start = time.perf_counter()
    for i in range(1, args.steps + 1):
        params = step(params, x)
        if manager is not None and i % args.every == 0:
            jax.block_until_ready(params)  # the step's own time is not the save's
            t = time.perf_counter()
            manager.save(i, {"params": params})
            blocked += time.perf_counter() - t
        if i % 5 == 0:  # keep the queue short (and the timing honest)
            jax.block_until_ready(params)
    jax.block_until_ready(params)
    if manager is not None:
        t = time.perf_counter()
        manager.wait_until_finished()
        blocked += time.perf_counter() - t
    total = time.perf_counter() - start
    shutil.rmtree(directory, ignore_errors=True)
    return total, blocked


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--layers", type=int, default=16)
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--every", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--sharded", action="store_true", help="the sharded (directory) format")
    args = parser.parse_args(argv)

    step = make_step()
    x = jnp.asarray(np.random.default_rng(1).normal(size=(args.batch, args.width)), jnp.float32)
    modes = ["none", "sync", "async"]
    for mode in modes:  # warm-up: compile, and the first file system touches
        run_once(mode, argparse.Namespace(**{**vars(args), "steps": args.every}), step, x)
    times = {m: [] for m in modes}
    blocked = {m: [] for m in modes}
    for r in range(args.rounds):
        for mode in modes[r % 3 :] + modes[: r % 3]:
            total, b = run_once(mode, args, step, x)
            times[mode].append(total)
            blocked[mode].append(b)
    mib = args.layers * args.width**2 * 4 / 2**20
    saves = args.steps // args.every
    fmt = "sharded directory" if args.sharded else "one file (auto)"
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"params {mib:.0f} MiB, {args.steps} steps, {saves} saves ({fmt}), {args.rounds} rounds, "
        f"jax {jax.__version__} on {jax.devices()[0].platform} ({os.cpu_count()} CPUs, load "
        f"average {load:.1f} at the end)"
    )
    base = statistics.median(times["none"])
    print("| mode | loop time (median) | blocked in save | added over `none` |")
    print("|---|---|---|---|")
    for mode in modes:
        t, b = statistics.median(times[mode]), statistics.median(blocked[mode])
        print(f"| `{mode}` | {t:.2f} s | {b:.2f} s | {t - base:+.2f} s |")
    sync_cost = statistics.median(times["sync"]) - base
    async_cost = statistics.median(times["async"]) - base
    if sync_cost > 0:
        saved = 1 - async_cost / sync_cost
        print(f"\nasync saved {saved:.0%} of the sync checkpoint overhead ({sync_cost:.2f} s -> "
              f"{async_cost:.2f} s); per save: {sync_cost / saves:.2f} s -> "
              f"{async_cost / saves:.2f} s")  # fmt: skip


if __name__ == "__main__":
    main()
