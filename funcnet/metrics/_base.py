"""The Metric type, shared helpers and the weighted mean (see :mod:`funcnet.metrics`)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from funcnet._checks import fmt_shape as _shape

__all__ = ["LABELS", "Metric", "labels_of", "mean"]

MetricState = Any


class Metric(NamedTuple):
    """A streaming metric: four pure functions and a name.

    Attributes:
        init: ``() -> state``, a pytree of arrays.
        update: ``(state, outputs, targets, *, weights=None) -> state``.
        merge: ``(state_a, state_b) -> state``, associative.
        compute: ``(state) -> value``.
        name: a short name, used as the key in logs.

    Examples:
        >>> m = mean()
        >>> s = m.update(m.init(), jnp.array([1.0, 2.0, 3.0]))
        >>> m.compute(m.merge(s, m.update(m.init(), jnp.array(6.0))))
        Array(3., dtype=float32)
        >>> m
        Metric(mean)
    """

    init: Callable[[], MetricState]
    update: Callable[..., MetricState]
    merge: Callable[[MetricState, MetricState], MetricState]
    compute: Callable[[MetricState], Any]
    name: str = "metric"

    def __repr__(self) -> str:
        return f"Metric({self.name})"


# ----------------------------------------------------------------------------- helpers

LABELS = "labels"


def labels_of(name: str, targets: Any) -> Any:
    """The targets a metric compares with: ``targets["labels"]`` for dict targets, else ``targets``.

    Dict targets carry more than labels (distillation's ``{"labels": y,
    "teacher_logits": t}``, for the loss); the built-in metrics read the
    ``"labels"`` entry. A dict without one is an error naming its keys; wrap
    the metric with :func:`select_targets` to read another entry.

    Raises:
        TypeError: for a dict without a ``"labels"`` key.

    Examples:
        >>> labels_of("accuracy", {"labels": [1, 2], "teacher_logits": None})
        [1, 2]
        >>> labels_of("accuracy", [1, 2])
        [1, 2]
    """
    if not isinstance(targets, Mapping):
        return targets
    if LABELS in targets:
        return targets[LABELS]
    raise TypeError(
        f"{name}: dict `targets` need a {LABELS!r} entry for this metric, got keys "
        f"{sorted(map(str, targets))}; metrics read `targets['labels']`. To use another entry, "
        f"pass `fn.metrics.select_targets(metric, key)` (e.g. `select_targets('{name}', "
        f"{str(next(iter(targets), 'y'))!r})`)."
    )


def _is_int(dtype) -> bool:
    return jnp.issubdtype(dtype, jnp.integer) or jnp.dtype(dtype) == jnp.bool_


def _is_real(dtype) -> bool:
    return _is_int(dtype) or jnp.issubdtype(dtype, jnp.floating)


def _count_dtype(name: str, dtype) -> np.dtype:
    try:
        dtype = jnp.dtype(dtype)
    except TypeError:
        raise TypeError(f"{name}: `dtype` must be a numeric dtype, got {dtype!r}.") from None
    if dtype == jnp.bool_ or not _is_real(dtype):
        raise TypeError(
            f"{name}: `dtype` must be an integer or floating dtype (e.g. jnp.int32, "
            f"jnp.float32), got {dtype}."
        )
    return dtype


def _check_int(name: str, arg: str, value, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(f"{name}: `{arg}` must be an int >= {low}, got {value!r}.")
    return int(value)


def _weights(name: str, weights, shape: tuple, dtype) -> jax.Array:
    """``weights`` (shape ``shape[:k]``) broadcast to ``shape`` in ``dtype``; ones for None."""
    if weights is None:
        return jnp.ones(shape, dtype)
    w = jnp.asarray(weights)
    if not _is_real(w.dtype):
        raise TypeError(f"{name}: `weights` must be bool, int or float, got dtype {w.dtype}.")
    if _is_int(dtype) and not _is_int(w.dtype):
        raise TypeError(
            f"{name}: this metric counts in {jnp.dtype(dtype)}, so `weights` must be a bool or "
            f"integer mask, got dtype {w.dtype}; pass `weights.astype(bool)` for a 0/1 mask, "
            "or build the metric with `dtype=jnp.float32` for fractional weights."
        )
    if w.ndim > len(shape) or w.shape != tuple(shape[: w.ndim]):
        lead = _shape(shape[:1]) if shape else "()"
        raise ValueError(
            f"{name}: `weights` must have the leading shape of the per-example values "
            f"{_shape(shape)} (e.g. {lead}), got shape {_shape(w.shape)}; weights are per "
            "example (squeeze size-1 axes, e.g. `w[:, 0]`)."
        )
    w = w.astype(dtype).reshape(w.shape + (1,) * (len(shape) - w.ndim))
    return jnp.broadcast_to(w, shape)


def _class_labels(name: str, targets: jax.Array, fix: str) -> jax.Array:
    """Class labels as int32: integer or bool labels, or floats holding whole numbers.

    Float labels (``0., 1., 2.``, what a binary cross-entropy user has) are
    checked on the host when they are concrete, so ``0.3`` is a ``ValueError``;
    under ``jit`` their values cannot be read without a host sync, so a
    non-integral (NaN, inf) label becomes ``-1``: out of range, counted as wrong
    by the accuracies and not counted by the confusion matrix. ``fix`` ends
    the message of the error raised for other dtypes.
    """
    if _is_int(targets.dtype):
        return targets.astype(jnp.int32)
    if not jnp.issubdtype(targets.dtype, jnp.floating):
        raise TypeError(
            f"{name}: `targets` must be class labels (integers, or floats holding whole "
            f"numbers), got dtype {targets.dtype}; {fix}."
        )
    try:
        host = np.asarray(targets)
    except jax.errors.TracerArrayConversionError:
        host = None  # traced: values unknown until run time
    if host is not None:
        flat = host.reshape(-1)
        bad = np.flatnonzero(~np.isfinite(flat) | (flat != np.round(flat)))
        if bad.size:
            raise ValueError(
                f"{name}: float `targets` must be whole-number class labels (0., 1., 2., ...), "
                f"got {flat[bad[0]]:g} at flat index {bad[0]} ({bad.size} such "
                "value(s)); round probabilities with `targets > 0.5` or `targets.argmax(-1)`."
            )
    whole = jnp.isfinite(targets) & (targets == jnp.round(targets))
    return jnp.where(whole, targets, -1).astype(jnp.int32)


def _safe_div(num: jax.Array, den: jax.Array, empty: float = 0.0) -> jax.Array:
    """``num / den`` where ``den != 0``, else ``empty``."""
    ok = den != 0
    return jnp.where(ok, num / jnp.where(ok, den, 1), empty)


def _add(a, b):
    return jax.tree.map(jnp.add, a, b)


def _floating(name: str, arg: str, x) -> jax.Array:
    x = jnp.asarray(x)
    if not _is_real(x.dtype):
        raise TypeError(f"{name}: `{arg}` must be real numbers, got dtype {x.dtype}.")
    return x.astype(jnp.float32)


def _same_shape(name: str, outputs, targets) -> None:
    o, t = tuple(outputs.shape), tuple(targets.shape)
    if o == t:
        return
    if o == (*t, 1):
        fix = "add the axis to the targets with `targets[..., None]`"
    elif t == (*o, 1):
        fix = "drop the targets' last axis with `targets[..., 0]`"
    else:
        fix = "make them equal; shapes are never broadcast"
    raise ValueError(
        f"{name}: `outputs` and `targets` must have the same shape, got outputs {_shape(o)} "
        f"and targets {_shape(t)}; {fix}."
    )


def _logit_threshold(name: str, threshold: float, from_logits: bool) -> float:
    """The threshold on ``outputs``: ``threshold`` on probabilities, its logit on logits."""
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)):
        raise TypeError(f"{name}: `threshold` must be a number, got {threshold!r}.")
    if not isinstance(from_logits, (bool, np.bool_)):
        raise TypeError(
            f"{name}: `from_logits` must be True (logits) or False (probabilities), got "
            f"{from_logits!r}."
        )
    if not from_logits:
        return float(threshold)
    if not 0 < threshold < 1:
        raise ValueError(
            f"{name}: `threshold` is a probability in (0, 1), compared with logit(threshold) "
            f"on logits (from_logits=True, the default), got {threshold!r}; 0.5 is a logit of 0."
        )
    return float(np.log(threshold) - np.log1p(-threshold))


# ----------------------------------------------------------------------------- mean


def _mean_metric(name: str, values_fn: Callable) -> Metric:
    """A weighted mean of ``values_fn(outputs, targets)`` (per-example float values)."""

    def init():
        return {"total": jnp.zeros((), jnp.float32), "count": jnp.zeros((), jnp.float32)}

    def update(state, outputs, targets=None, *, weights=None):
        values = values_fn(outputs, targets)
        w = _weights(name, weights, values.shape, jnp.float32)
        keep = w != 0
        total = jnp.sum(jnp.where(keep, w * jnp.where(keep, values, 0), 0))
        return _add(state, {"total": total, "count": jnp.sum(w)})

    def compute(state):
        return _safe_div(state["total"], state["count"], jnp.nan)

    return Metric(init, update, _add, compute, name)


def mean(fn: Callable | None = None, *, name: str | None = None) -> Metric:
    """The weighted mean of a value (a loss), or of ``fn(outputs, targets)``.

    Without ``fn``, ``update(state, values, *, weights=None)`` averages
    ``values`` (a scalar, or per-example values with ``weights`` over their
    leading axes); passing targets is an error. With ``fn``,
    ``update(state, outputs, targets, *, weights=None)`` averages the
    per-example values ``fn(outputs, targets)``. Values are summed in float32.

    Args:
        fn: optional ``(outputs, targets) -> per-example values``.
        name: the metric's name (default ``"mean"`` or ``fn.__name__``).

    Returns:
        A :class:`Metric` whose ``compute`` is ``sum(w * v) / sum(w)`` (NaN when
        nothing was added).

    Examples:
        >>> loss = mean(name="loss")
        >>> s = loss.update(loss.init(), jnp.array(2.0))
        >>> s = loss.update(s, jnp.array([4.0, 100.0]), weights=jnp.array([1.0, 0.0]))
        >>> loss.compute(s)
        Array(3., dtype=float32)
    """
    if fn is not None and not callable(fn):
        raise TypeError(f"mean: `fn` must be callable, got {type(fn).__name__}.")
    if name is None:
        name = "mean" if fn is None else getattr(fn, "__name__", "mean")

    def values_fn(outputs, targets):
        if fn is None:
            if targets is not None:
                raise TypeError(
                    f"{name}: `update(state, values, *, weights=None)` averages `values`; it "
                    "got targets too. To average a function of (outputs, targets), build "
                    "the metric with `mean(fn)`."
                )
            return _floating(name, "values", outputs)
        return _floating(name, "fn(outputs, targets)", fn(outputs, targets))

    return _mean_metric(name, values_fn)
