"""Running K steps in one compiled call, and the logs accumulated inside it.

``fit`` pays Python dispatch once per ``steps_per_execution`` steps: the
batches are gathered from device-resident data inside the compiled call, and
the step's logs are summed into an accumulator there too (the loss weighted
by the batch's examples, the metric states merged, the first non-finite step
recorded), so nothing is read back per step.

Examples:
    >>> import jax, jax.numpy as jnp, optax
    >>> import funcnet as fn
    >>> model = fn.Dense(1)
    >>> opt = optax.sgd(0.1)
    >>> ts = fn.TrainState.create(model, opt, jax.random.key(0), jnp.zeros((1, 2)))
    >>> run = fused_runner(fn.train_step(model, "mse", opt), {}, batch_size=4)
    >>> data = (jnp.ones((16, 2)), jnp.zeros((16, 1)), None)
    >>> ts, acc = run(ts, logs_init({}), data, jnp.arange(16), jnp.int32(0), 4)
    >>> int(ts.step), sorted(logs_compute({}, acc))
    (4, ['loss'])
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from funcnet.core import Layer
from funcnet.training.step import eval_step

__all__ = [
    "eval_chunk_adder",
    "fused_runner",
    "has_conv",
    "logs_add",
    "logs_compute",
    "logs_init",
]


def logs_init(metrics: dict) -> dict:
    """An empty accumulator: loss total and count, the metrics' states, no non-finite step."""
    return {
        "loss_total": jnp.zeros((), jnp.float32),
        "loss_count": jnp.zeros((), jnp.float32),
        "nonfinite_step": jnp.full((), -1, jnp.int32),
        "nonfinite_count": jnp.zeros((), jnp.int32),
        "metrics": {k: m.init() for k, m in metrics.items()},
    }


def logs_add(metrics: dict, acc: dict, logs: dict, weight, step=None) -> dict:
    """``acc`` plus one batch's ``logs`` (its loss counted ``weight`` times).

    With ``step`` (training), a step whose loss (or ``logs["nonfinite"]``) is
    NaN/Inf adds nothing but its count to ``acc["nonfinite_count"]``, and the
    first such step is recorded in ``acc["nonfinite_step"]``: its update was
    skipped (``nan_guard="skip"``) or ``fit`` stops. Evaluation (no ``step``)
    counts every batch, so a NaN output shows as a NaN loss.
    """
    loss = logs["loss"].astype(jnp.float32)
    weight = jnp.asarray(weight, jnp.float32)
    out = {
        "loss_total": acc["loss_total"] + jnp.where(weight > 0, loss * weight, 0.0),
        "loss_count": acc["loss_count"] + weight,
        "nonfinite_step": acc["nonfinite_step"],
        "nonfinite_count": acc["nonfinite_count"],
        "metrics": {k: m.merge(acc["metrics"][k], logs[k]) for k, m in metrics.items()},
    }
    if step is not None:
        bad = logs["nonfinite"] if "nonfinite" in logs else ~jnp.isfinite(loss)
        first = (acc["nonfinite_step"] < 0) & bad
        kept = jax.tree.map(lambda new, old: jnp.where(bad, old, new), out, acc)
        out = {
            **kept,
            "nonfinite_step": jnp.where(first, step, acc["nonfinite_step"]),
            "nonfinite_count": acc["nonfinite_count"] + bad.astype(jnp.int32),
        }
    return out


def eval_chunk_adder(model: Layer, loss_fn, metrics: dict) -> Callable:
    """``add(params, state, acc, chunk, stacked) -> acc``: a chunk of evaluation batches added.

    A ``lax.scan`` over stacked batches ``(batches, batch, ...)`` (or one batch
    when ``stacked`` is False), every example counted by its weight (0 for
    padding). Not compiled: ``evaluate`` jits it, the stacked evaluator vmaps it
    over the model axis first.
    """
    step = eval_step(model, loss_fn, metrics=metrics)

    def add(params, state, acc, chunk, stacked: bool):
        if not stacked:
            chunk = jax.tree.map(lambda a: a[None], chunk)

        def body(acc, batch):
            logs = step(params, state, batch)
            if loss_fn is None:
                logs["loss"] = jnp.zeros((), jnp.float32)
            return logs_add(metrics, acc, logs, jnp.sum(batch[2].astype(jnp.float32))), None

        return jax.lax.scan(body, acc, chunk)[0]

    return add


def logs_compute(metrics: dict, acc: dict, with_loss: bool = True) -> dict:
    """The accumulated logs as host floats (arrays for non-scalar metrics)."""
    acc = jax.device_get(acc)
    logs = {}
    if with_loss:
        logs["loss"] = float(acc["loss_total"] / max(float(acc["loss_count"]), 1e-30))
    for k, m in metrics.items():
        value = np.asarray(m.compute(acc["metrics"][k]))
        logs[k] = float(value) if value.ndim == 0 else value
    return logs


def has_conv(layer: Layer) -> bool:
    """True when ``layer`` contains a convolution (for the default unrolling on CPU)."""
    if layer.name.startswith(("Conv", "ConvTranspose")):
        return True
    children = layer.children.values() if isinstance(layer.children, Mapping) else layer.children
    return any(has_conv(c) for c in children if isinstance(c, Layer))


def fused_runner(
    step: Callable,
    metrics: dict,
    batch_size: int,
    *,
    unroll: int | bool = 1,
    shardings: tuple | None = None,
) -> Callable:
    """``run(ts, acc, data, perm, begin, k)``: ``k`` steps in one compiled call.

    Step ``i`` trains on the rows ``perm[(begin + i) * batch_size:][:batch_size]``
    of ``data = (x, y, weights_or_None)`` (gathered on the device) and adds its
    logs to ``acc`` (see :func:`logs_add`). The ``k`` steps run as one
    ``lax.scan`` (``unroll`` as there), or as straight-line code when
    ``unroll is True`` or ``k == 1``: XLA:CPU computes convolution gradients
    inside a loop ~10x slower, so convolutional models unroll on CPU.
    ``ts`` and ``acc`` are donated; ``k`` is static.

    Args:
        step: a train step ``(ts, batch) -> (ts, logs)``.
        metrics: the metrics whose states are in the logs.
        batch_size: rows per step.
        unroll: the scan's unrolling (``True``: none, straight-line code).
        shardings: on a mesh, ``(train_state, batch, replicated)`` shardings.
    """

    def run(ts, acc, data, perm, begin, k):
        def body(carry, i):
            ts, acc = carry
            idx = jax.lax.dynamic_slice_in_dim(perm, (begin + i) * batch_size, batch_size)
            x, y, w = jax.tree.map(lambda a: jnp.take(a, idx, axis=0), data)
            if shardings is not None:  # the gathered rows, split over the devices
                x, y, w = jax.lax.with_sharding_constraint((x, y, w), shardings[1])
            ts, logs = step(ts, (x, y) if w is None else (x, y, w))
            return (ts, logs_add(metrics, acc, logs, 1.0, ts.step - 1)), None

        if unroll is True or k == 1:  # straight-line code: no loop at all
            carry = (ts, acc)
            for i in range(k):
                carry, _ = body(carry, jnp.int32(i))
            return carry
        (ts, acc), _ = jax.lax.scan(body, (ts, acc), jnp.arange(k, dtype=jnp.int32), unroll=unroll)
        return ts, acc

    out = None if shardings is None else (shardings[0], shardings[2])
    return jax.jit(run, static_argnums=5, donate_argnums=(0, 1), out_shardings=out)
