"""Scratch study: where funcnet's ``train_step`` spends time beyond the pure-JAX step.

Times, interleaved, on the given workloads:

- ``jax``: the pure-JAX reference step (bench/impls.py).
- ``funcnet``: ``fn.train_step`` with its defaults (NaN guard on).
- ``funcnet_noguard``: ``nan_guard=False``.
- ``patched_*``: a copy of funcnet's step for the plain case (no accumulation,
  clipping, freezing, axis) with a different NaN guard, to find a guard that
  costs nothing:

  - ``patched_select``: funcnet's guard as is (per-leaf ``isfinite`` + ``all``,
    then a ``where`` over params, state and opt_state) - must match ``funcnet``.
  - ``patched_cond``: the same ``finite`` flag, but the optimizer update runs
    inside ``lax.cond(finite, update, skip)``: no selects.
  - ``patched_report``: the same ``finite`` flag, logged, but no skip (the
    update is applied; ``fit`` still raises naming the step).
  - ``patched_report_loss``: report only, the flag from the loss alone
    (``isfinite(loss)``; a NaN gradient shows up in the next step's loss).
  - ``patched_bare``: no guard, no step counter, no key (the reference's shape).

Usage: ``python bench/scratch/step_overhead.py [workload ...] [--rounds N]``.
Also prints the number of fusions in each compiled step (XLA:CPU runs each as a
separate kernel, about a microsecond each, which is what tiny models pay).
"""

from __future__ import annotations

import argparse
import itertools
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import jax
import jax.numpy as jnp
import optax

import funcnet as fn
from bench import harness
from bench import impls as impls_lib
from bench.workloads import get


def patched_step(model, loss, optimizer, guard: str):
    """funcnet's train_step for the plain case, with the NaN guard ``guard``."""
    loss_fn = fn.losses.get(loss)

    def forward(params, state, x, y, key):
        outputs, new_state = model.apply(params, state, x, key=key, train=True)
        value = loss_fn(outputs, y)
        return value, (value, new_state)

    grad_fn = jax.grad(forward, has_aux=True)

    def update(grads, params, opt_state):
        updates, new_opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), new_opt_state

    def step(ts, batch):
        x, y = batch
        key = jax.random.fold_in(ts.key, ts.step)
        grads, (total, new_state) = grad_fn(ts.params, ts.state, x, y, key)
        leaves = jax.tree.leaves(grads)
        if guard == "report_loss":
            finite = jnp.isfinite(total)
        else:
            finite = jnp.isfinite(total) & jnp.all(
                jnp.stack([jnp.all(jnp.isfinite(g)) for g in leaves])
            )
        if guard.startswith("report"):
            new_params, new_opt_state = update(grads, ts.params, ts.opt_state)
        elif guard == "cond":

            def apply():
                new_params, new_opt_state = update(grads, ts.params, ts.opt_state)
                return new_params, new_state, new_opt_state

            new_params, new_state, new_opt_state = jax.lax.cond(
                finite, apply, lambda: (ts.params, ts.state, ts.opt_state)
            )
        else:
            new_params, new_opt_state = update(grads, ts.params, ts.opt_state)

            def keep(new, old):
                return jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)

            new_params = keep(new_params, ts.params)
            new_state = keep(new_state, ts.state)
            new_opt_state = keep(new_opt_state, ts.opt_state)
        ts = fn.TrainState(ts.step + 1, new_params, new_state, new_opt_state, ts.key)
        return ts, {"loss": total, "nonfinite": ~finite}

    return step


def bare_step(model, loss, optimizer):
    """No guard, no step counter, no key: ``(params, state, opt_state), batch``."""
    loss_fn = fn.losses.get(loss)

    def step(carry, batch):
        params, state, opt_state = carry
        x, y = batch

        def forward(p):
            outputs, new_state = model.apply(p, state, x, train=True)
            return loss_fn(outputs, y), new_state

        (value, new_state), grads = jax.value_and_grad(forward, has_aux=True)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), new_state, opt_state), value

    return step


def _runner(jstep, state, batches):
    batches = itertools.cycle(batches)

    def call():
        state[0], _ = jstep(state[0], next(batches))

    return impls_lib.Runner(call, lambda: jax.block_until_ready(state))


def fusions(jitted, *args) -> int:
    text = jitted.lower(*args).compile().as_text()
    entry = text[text.index("ENTRY") :]
    return len(re.findall(r" fusion\(", entry)) + len(re.findall(r" dot\(", entry))


def study(name: str, settings, fused: bool = False) -> None:
    w = get(name)
    data = impls_lib.Data(w, 2)
    opt = optax.adam(impls_lib.LEARNING_RATE)
    loss = impls_lib.funcnet_loss_name(w)
    model = w.funcnet()
    ts0 = fn.TrainState.create(model, opt, jax.random.key(0), data.example())
    runners, kernels = {}, {}
    runners["jax"] = impls_lib.build_jax(w, data)
    p = w.jax_init(jax.random.key(0))
    ref = jax.jit(impls_lib.make_jax_step(w.jax_apply, impls_lib.loss_fn(w.loss), opt))
    kernels["jax"] = fusions(ref, p, opt.init(p), *data.batches[0])
    steps = {
        "funcnet": fn.train_step(model, loss, opt),
        "funcnet_noguard": fn.train_step(model, loss, opt, nan_guard=False),
        "patched_select": patched_step(model, loss, opt, "select"),
        "patched_cond": patched_step(model, loss, opt, "cond"),
        "patched_report": patched_step(model, loss, opt, "report"),
        "patched_report_loss": patched_step(model, loss, opt, "report_loss"),
    }
    for label, step in steps.items():
        ts = jax.tree.map(jnp.copy, ts0)
        kernels[label] = fusions(jax.jit(step), ts, data.batches[0])
        runners[label] = _runner(jax.jit(step, donate_argnums=0), [ts], data.batches)
    bare = jax.jit(bare_step(model, loss, opt), donate_argnums=0)
    carry = jax.tree.map(jnp.copy, (ts0.params, ts0.state, ts0.opt_state))
    kernels["patched_bare"] = fusions(jax.jit(bare_step(model, loss, opt)), carry, data.batches[0])
    runners["patched_bare"] = _runner(bare, [carry], data.batches)

    if fused:  # the fused paths: reference, funcnet as is, funcnet without the guard
        k = w.fused_steps
        fdata = impls_lib.Data(w, k)
        runners = {
            "jax_fused": impls_lib.build_jax_fused(w, fdata),
            "funcnet_fused": impls_lib.build_funcnet_fused(w, fdata),
            "funcnet_fused_noguard": impls_lib.build_funcnet_fused(w, fdata, nan_guard=False),
        }
        kernels = dict.fromkeys(runners, -1)
        rows = harness.compare(runners, settings, "jax_fused")
        for r in rows:
            print(
                f"[{name} fused {k}] {r['impl']:22s} {r['step_ms']:9.4f} ms  vs {r['vs_ref']:.3f}"
            )
        return
    rows = harness.compare(runners, settings, "jax")
    print(f"[{name}]  {'variant':18s} {'ms/step':>9s} {'±%':>4s} {'vs jax':>7s} {'kernels':>8s}")
    for r in rows:
        print(
            f"  {'':{len(name)}s}{r['impl']:18s} {r['step_ms']:9.4f} {r['spread_pct']:4.0f} "
            f"{r['vs_ref']:7.3f} {kernels[r['impl']]:8d}"
        )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("workloads", nargs="*", default=["tiny_mlp", "mlp"])
    parser.add_argument("--rounds", type=int, default=11)
    parser.add_argument("--window", type=float, default=0.2)
    parser.add_argument("--fused", action="store_true", help="compare the fused paths instead")
    args = parser.parse_args()
    settings = harness.Settings(rounds=args.rounds, window_s=args.window)
    for name in args.workloads:
        study(name, settings, args.fused)


if __name__ == "__main__":
    main()
