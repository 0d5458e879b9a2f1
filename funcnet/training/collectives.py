"""Explicit collectives for :func:`~funcnet.training.train_step` under ``shard_map`` / ``pmap``.

With ``axis_name`` the step runs on one device's part of the global batch:
each device differentiates its *share* of the global loss (its batch's weight
over the axis' total), the gradients are summed over the axis, and the metric
states are merged over it. These helpers do that; nothing here runs without
an ``axis_name``.
"""

from __future__ import annotations

from collections.abc import Hashable

import jax
import jax.numpy as jnp

__all__ = ["check_axis_name", "device_share", "merge_over_axis", "varying_params"]


def check_axis_name(axis_name, where: str):
    """``axis_name`` as None, one name, or a tuple of names (several mesh axes)."""
    if axis_name is None:
        return None
    if isinstance(axis_name, (tuple, list)):
        names = tuple(axis_name)
        if names and all(isinstance(a, Hashable) and not isinstance(a, tuple) for a in names):
            return names
    elif isinstance(axis_name, Hashable):
        return axis_name
    raise TypeError(
        f"{where}: `axis_name` must be a mapped axis name (e.g. 'data') or a tuple of names, got "
        f"{axis_name!r}."
    )


def _axes(axis_name) -> tuple:
    return axis_name if isinstance(axis_name, tuple) else (axis_name,)


def _varying(x) -> frozenset:
    """The mapped axes ``x`` varies over (shard_map's ``check_vma`` types; empty elsewhere)."""
    aval = jax.typeof(x)
    kind = getattr(aval, "manual_axis_type", None)
    if kind is not None:
        return frozenset(kind.varying)
    return frozenset(getattr(aval, "vma", ()) or ())


def _to_varying(x, axes: tuple):
    """Mark ``x`` as varying over ``axes`` (a no-op at run time)."""
    missing = tuple(a for a in axes if a not in _varying(x))
    if not missing:
        return x
    if hasattr(jax.lax, "pcast"):
        return jax.lax.pcast(x, missing, to="varying")
    return jax.lax.pvary(x, missing)  # pragma: no cover - older JAX


def varying_params(params, axis_name):
    """``params`` marked as per-device inside ``jax.shard_map(check_vma=True)``.

    There the gradient of a device's loss w.r.t. an *invariant* (replicated)
    input is summed over the devices by JAX itself; marked as varying, the
    gradient is the device's own, which the step then sums once with ``psum``
    (as under ``jax.pmap``, ``check_vma=False`` or ``jax.vmap``, where this is
    a no-op).
    """
    if not set(_axes(axis_name)) & _varying(jax.lax.axis_index(axis_name)):
        return params
    return jax.tree.map(lambda p: _to_varying(p, _axes(axis_name)), params)


def device_share(weights, axis_name):
    """A device's share of the global loss: its batch's total weight over the axis' total.

    Without weights every device has the same share (equal batch sizes).
    """
    weight = (
        jnp.ones((), jnp.float32) if weights is None else jnp.sum(jnp.asarray(weights, jnp.float32))
    )
    total = jax.lax.psum(weight, axis_name)
    return jnp.where(total > 0, weight / jnp.where(total > 0, total, 1.0), 0.0)


def _gather_merge(metric, state, axis_name):
    """``metric.merge`` of the states of every device on the axis (the same on every device).

    The states are gathered with a ``psum`` of one-hot placements (invariant
    under ``shard_map``'s type checks) and merged in device order, so metrics
    whose state is not a sum (R²) merge correctly too.
    """
    n = jax.lax.axis_size(axis_name)
    index = jax.lax.axis_index(axis_name)

    def gather(a):
        slots = jnp.zeros((n, *a.shape), a.dtype).at[index].set(a)
        return jax.lax.psum(slots, axis_name)

    stacked = jax.tree.map(gather, state)
    merged = jax.tree.map(lambda a: a[0], stacked)
    for i in range(1, n):
        merged = metric.merge(merged, jax.tree.map(lambda a, i=i: a[i], stacked))
    return merged


def merge_over_axis(metrics, logs: dict, axis_name) -> dict:
    """The metric states in ``logs`` merged over the whole mapped axis."""
    for name, metric in (metrics or {}).items():
        logs[name] = _gather_merge(metric, logs[name], axis_name)
    return logs
