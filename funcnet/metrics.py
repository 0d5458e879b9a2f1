"""Streaming metrics: pure ``init / update / merge / compute`` over a pytree state.

A :class:`Metric` is a NamedTuple of four pure functions and a name:

- ``init() -> state``: a pytree of arrays with static shapes;
- ``update(state, outputs, targets, *, weights=None) -> state``: add one batch;
- ``merge(state_a, state_b) -> state``: combine partial states (from several
  devices, processes or data shards); associative and commutative;
- ``compute(state) -> value``: the metric over everything added so far.

All four can be ``jax.jit``-ed, ``lax.scan``-ed and carried in a train state.
Precision, recall and F1 are computed from an accumulated confusion matrix,
never as a mean of per-batch ratios, so the result over uneven batches equals
scikit-learn's over the whole dataset.

Weights and masks: ``weights`` has the leading shape of the per-example values
(``(batch,)``, or ``(batch, time)`` for sequences) and is broadcast over the
rest; a 0/1 (or bool) mask drops the padding of a last partial batch. Entries
with weight 0 never contribute, even when they are NaN.

Counts and sums:

- Counting metrics (accuracies, confusion matrix, precision, recall, F1) count
  in **int32** by default: exact up to ``2**31 - 1`` (about 2.1e9) weighted
  examples per counter, after which they wrap. With int32 counts ``weights``
  must be bool or integer (a mask or repeat counts); build the metric with
  ``dtype=jnp.float32`` for fractional weights (then counts are exact up to
  ``2**24`` and rounded, relative error ~1e-7, beyond).
- Value metrics (mean, mean absolute error, R²) keep **float32** sums, one
  addition per batch (each batch is reduced first), so rounding grows with
  the number of batches, not of examples.

No data: a ratio over zero examples (accuracy, mean, MAE, R²) is NaN, as the
value is undefined; precision/recall/F1 divisions by zero give 0 (the default
of scikit-learn, which also warns). Counting metrics' states are sums, so
``jax.lax.psum`` of states also merges them; R²'s state is not (use ``merge``).

Examples:
    >>> import jax, jax.numpy as jnp
    >>> from funcnet import metrics
    >>> acc = metrics.sparse_categorical_accuracy()
    >>> state = acc.init()
    >>> update = jax.jit(acc.update)
    >>> state = update(state, jnp.array([[2.0, 0.0], [0.0, 1.0]]), jnp.array([0, 0]))
    >>> state = update(state, jnp.array([[0.0, 3.0]]), jnp.array([1]))
    >>> acc.compute(state)
    Array(0.6666667, dtype=float32)
"""

from __future__ import annotations

import difflib
import functools
import inspect
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "Metric",
    "accuracy",
    "binary_accuracy",
    "categorical_accuracy",
    "collection",
    "confusion_matrix",
    "f1",
    "get",
    "mean",
    "mean_absolute_error",
    "precision",
    "r2",
    "recall",
    "sparse_categorical_accuracy",
    "top_k_accuracy",
]

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


def _shape(shape) -> str:
    return str(tuple(int(d) for d in shape))


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
    if not from_logits:
        return float(threshold)
    if not 0 < threshold < 1:
        raise ValueError(
            f"{name}: with `from_logits=True`, `threshold` is a probability in (0, 1), got "
            f"{threshold!r}."
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


def mean_absolute_error(*, name: str = "mean_absolute_error") -> Metric:
    """Mean of ``|outputs - targets|`` over every element (scikit-learn's ``mean_absolute_error``).

    ``outputs`` and ``targets`` have the same shape; ``weights`` cover their
    leading axes. Over several outputs this is the uniform average of the
    per-output errors, as scikit-learn's default.

    Examples:
        >>> m = mean_absolute_error()
        >>> m.compute(m.update(m.init(), jnp.array([1.0, 2.0]), jnp.array([2.0, 2.0])))
        Array(0.5, dtype=float32)
    """

    def values_fn(outputs, targets):
        if targets is None:
            raise TypeError(f"{name}: `update` needs `targets`.")
        outputs = _floating(name, "outputs", outputs)
        targets = _floating(name, "targets", targets)
        _same_shape(name, outputs, targets)
        return jnp.abs(outputs - targets)

    return _mean_metric(name, values_fn)


# ----------------------------------------------------------------------------- accuracies


def _ratio_metric(name: str, correct_fn: Callable, dtype) -> Metric:
    """``sum(w * correct) / sum(w)`` of a per-example boolean ``correct_fn(outputs, targets)``."""
    dtype = _count_dtype(name, dtype)

    def init():
        return {"correct": jnp.zeros((), dtype), "total": jnp.zeros((), dtype)}

    def update(state, outputs, targets, *, weights=None):
        correct = correct_fn(jnp.asarray(outputs), jnp.asarray(targets))
        w = _weights(name, weights, correct.shape, dtype)
        return _add(
            state,
            {"correct": jnp.sum(jnp.where(correct, w, 0)), "total": jnp.sum(w)},
        )

    def compute(state):
        return _safe_div(
            state["correct"].astype(jnp.float32), state["total"].astype(jnp.float32), jnp.nan
        )

    return Metric(init, update, _add, compute, name)


def _class_scores(name: str, outputs: jax.Array) -> None:
    if not jnp.issubdtype(outputs.dtype, jnp.floating) or outputs.ndim < 1:
        raise ValueError(
            f"{name}: `outputs` must be floating class scores of shape (..., num_classes), "
            f"got dtype {outputs.dtype} and shape {_shape(outputs.shape)}."
        )


def _sparse_labels(name: str, outputs: jax.Array, targets: jax.Array) -> jax.Array:
    """Check integer labels of shape ``outputs.shape[:-1]``; return them as int32."""
    _class_scores(name, outputs)
    batch = outputs.shape[:-1]
    if targets.shape != batch:
        if targets.shape == (*batch, 1):
            fix = "drop the trailing axis of 1 with `targets[..., 0]`"
        elif targets.shape == outputs.shape:
            fix = "these look like one-hot targets: use `categorical_accuracy`"
        else:
            fix = f"`outputs` must be (..., num_classes) scores for targets {_shape(batch)}"
        raise ValueError(
            f"{name}: expected integer `targets` of shape outputs.shape[:-1] = {_shape(batch)} "
            f"for outputs {_shape(outputs.shape)}, got shape {_shape(targets.shape)}; {fix}."
        )
    if not _is_int(targets.dtype):
        raise TypeError(
            f"{name}: `targets` must be integer class labels, got dtype {targets.dtype}; cast "
            "with `targets.astype(jnp.int32)`."
        )
    if outputs.shape[-1] == 1:
        raise ValueError(
            f"{name}: `outputs` have a single class (shape {_shape(outputs.shape)}), so the "
            "argmax is always 0; for one binary score per example use `binary_accuracy` with "
            "targets of the same shape."
        )
    return targets.astype(jnp.int32)


def _sparse_correct(name: str, outputs: jax.Array, targets: jax.Array) -> jax.Array:
    labels = _sparse_labels(name, outputs, targets)
    return jnp.argmax(outputs, axis=-1) == labels


def _categorical_correct(name: str, outputs: jax.Array, targets: jax.Array) -> jax.Array:
    _class_scores(name, outputs)
    if targets.shape == outputs.shape[:-1] and _is_int(targets.dtype):
        raise ValueError(
            f"{name}: got integer labels of shape {_shape(targets.shape)}, expected one-hot "
            f"targets of shape {_shape(outputs.shape)}; use `sparse_categorical_accuracy`."
        )
    if targets.shape != outputs.shape:
        raise ValueError(
            f"{name}: one-hot `targets` must have the shape of `outputs` "
            f"{_shape(outputs.shape)}, got {_shape(targets.shape)}."
        )
    if not _is_real(targets.dtype):
        raise TypeError(f"{name}: `targets` must be real numbers, got {targets.dtype}.")
    return jnp.argmax(outputs, axis=-1) == jnp.argmax(targets, axis=-1)


def sparse_categorical_accuracy(*, dtype=jnp.int32, name: str = "accuracy") -> Metric:
    """Fraction of examples whose ``argmax(outputs)`` equals the integer label.

    ``outputs``: scores (logits or probabilities) of shape ``(..., num_classes)``;
    ``targets``: integer labels of shape ``outputs.shape[:-1]``. Labels out of
    range count as wrong. Ties in the argmax go to the first class, as numpy.

    Args:
        dtype: the count dtype (int32; float32 for fractional weights).
        name: the metric's name.

    Examples:
        >>> m = sparse_categorical_accuracy()
        >>> m.compute(m.update(m.init(), jnp.array([[0.9, 0.1], [0.8, 0.2]]), jnp.array([0, 1])))
        Array(0.5, dtype=float32)
    """
    return _ratio_metric(name, functools.partial(_sparse_correct, name), dtype)


def categorical_accuracy(*, dtype=jnp.int32, name: str = "accuracy") -> Metric:
    """Fraction of examples whose ``argmax(outputs)`` equals ``argmax(targets)`` (one-hot).

    ``outputs`` and ``targets`` both have shape ``(..., num_classes)``.

    Examples:
        >>> m = categorical_accuracy()
        >>> m.compute(m.update(m.init(), jnp.array([[0.9, 0.1]]), jnp.array([[1.0, 0.0]])))
        Array(1., dtype=float32)
    """
    return _ratio_metric(name, functools.partial(_categorical_correct, name), dtype)


def _binary_correct(name: str, outputs, targets, thr: float) -> jax.Array:
    if not jnp.issubdtype(outputs.dtype, jnp.floating):
        raise TypeError(
            f"{name}: `outputs` must be floating scores (probabilities or logits), got dtype "
            f"{outputs.dtype}."
        )
    _same_shape(name, outputs, targets)
    if jnp.issubdtype(targets.dtype, jnp.floating):
        truth = targets > jnp.asarray(0.5, targets.dtype)
    elif _is_real(targets.dtype):
        truth = targets.astype(bool)
    else:
        raise TypeError(f"{name}: `targets` must be 0/1 labels, got dtype {targets.dtype}.")
    return (outputs > jnp.asarray(thr, outputs.dtype)) == truth


def binary_accuracy(
    *, threshold: float = 0.5, from_logits: bool = False, dtype=jnp.int32, name: str = "accuracy"
) -> Metric:
    """Fraction of entries where ``outputs > threshold`` matches the 0/1 ``targets``.

    Every entry counts (multi-label outputs of shape ``(batch, labels)`` give
    the fraction of correct labels); ``weights`` cover the leading axes.

    Args:
        threshold: on probabilities; with ``from_logits=True`` the outputs are
            logits, compared with ``logit(threshold)`` (0 for 0.5).
        from_logits: whether ``outputs`` are logits.
        dtype: the count dtype (int32; float32 for fractional weights).
        name: the metric's name.

    ``targets`` have the shape of ``outputs``: bool, int (nonzero is positive)
    or float (``> 0.5`` is positive).

    Examples:
        >>> m = binary_accuracy(from_logits=True)
        >>> m.compute(m.update(m.init(), jnp.array([2.0, -1.0, 0.5]), jnp.array([1, 0, 0])))
        Array(0.6666667, dtype=float32)
    """
    thr = _logit_threshold(name, threshold, from_logits)

    def correct(outputs, targets):
        return _binary_correct(name, outputs, targets, thr)

    return _ratio_metric(name, correct, dtype)


def accuracy(
    *, threshold: float = 0.5, from_logits: bool = False, dtype=jnp.int32, name: str = "accuracy"
) -> Metric:
    """Accuracy whose kind is read from the shapes at trace time (Keras' ``"accuracy"``).

    - ``targets.shape == outputs.shape`` with a last axis > 1 and at least 2
      axes: one-hot targets, :func:`categorical_accuracy`;
    - ``targets.shape == outputs.shape`` otherwise (``(batch,)`` or
      ``(batch, 1)``): binary, :func:`binary_accuracy` with ``threshold`` and
      ``from_logits``;
    - ``targets.shape == outputs.shape[:-1]``: integer labels,
      :func:`sparse_categorical_accuracy`.

    Multi-label outputs ``(batch, labels)`` would read as one-hot: use
    :func:`binary_accuracy` for them.

    Examples:
        >>> m = accuracy()
        >>> m.compute(m.update(m.init(), jnp.array([0.9, 0.2]), jnp.array([1, 1])))
        Array(0.5, dtype=float32)
        >>> m.compute(m.update(m.init(), jnp.array([[0.9, 0.1]]), jnp.array([0])))
        Array(1., dtype=float32)
    """
    thr = _logit_threshold(name, threshold, from_logits)

    def correct(outputs, targets):
        if targets.shape == outputs.shape:
            if outputs.ndim >= 2 and outputs.shape[-1] > 1:
                return _categorical_correct(name, outputs, targets)
            return _binary_correct(name, outputs, targets, thr)
        if outputs.ndim >= 1 and targets.shape == outputs.shape[:-1]:
            return _sparse_correct(name, outputs, targets)
        raise ValueError(
            f"{name}: cannot tell the kind of accuracy from outputs {_shape(outputs.shape)} and "
            f"targets {_shape(targets.shape)}; expected targets of the outputs' shape (one-hot "
            "or binary) or of shape outputs.shape[:-1] (integer labels)."
        )

    return _ratio_metric(name, correct, dtype)


# ----------------------------------------------------------------------------- top-k


def top_k_accuracy(k: int = 5, *, dtype=jnp.int32, name: str | None = None) -> Metric:
    """Fraction of examples whose label is among the ``k`` highest scores.

    ``targets`` are integer labels of shape ``outputs.shape[:-1]`` (as
    scikit-learn's ``top_k_accuracy_score``) or one-hot targets of the shape of
    ``outputs``. A label counts as in the top ``k`` when fewer than ``k``
    classes score strictly higher (ties count in its favour); labels out of
    range count as wrong; ``k >= num_classes`` is always right.

    Args:
        k: how many top classes count, ``>= 1``.
        dtype: the count dtype (int32; float32 for fractional weights).
        name: the metric's name (default ``f"top_{k}_accuracy"``).

    Examples:
        >>> m = top_k_accuracy(2)
        >>> scores = jnp.array([[0.5, 0.3, 0.2], [0.1, 0.2, 0.7]])
        >>> m.compute(m.update(m.init(), scores, jnp.array([1, 0])))
        Array(0.5, dtype=float32)
    """
    k = _check_int("top_k_accuracy", "k", k, 1)
    name = f"top_{k}_accuracy" if name is None else name

    def correct(outputs, targets):
        _class_scores(name, outputs)
        if targets.shape == outputs.shape and outputs.ndim >= 2:
            if not _is_real(targets.dtype):
                raise TypeError(f"{name}: `targets` must be real numbers, got {targets.dtype}.")
            labels = jnp.argmax(targets, axis=-1).astype(jnp.int32)
        else:
            labels = _sparse_labels(name, outputs, targets)
        num_classes = outputs.shape[-1]
        valid = (labels >= 0) & (labels < num_classes)
        safe = jnp.where(valid, labels, 0)
        label_score = jnp.take_along_axis(outputs, safe[..., None], axis=-1)
        higher = jnp.sum(outputs > label_score, axis=-1)
        return valid & (higher < k)

    return _ratio_metric(name, correct, dtype)


# ----------------------------------------------------------------------------- confusion


def _label_pair(
    name: str, outputs, targets, num_classes: int, thr: float
) -> tuple[jax.Array, jax.Array]:
    """``(true, predicted)`` int32 labels of the same shape from ``(outputs, targets)``.

    targets: integer/bool labels, or one-hot float targets ``(..., num_classes)``
    (at least 2 axes) with float class scores of the same shape.
    outputs: integer predicted labels of the targets' shape, class scores
    ``(*batch, num_classes)`` (argmax), or, for ``num_classes == 2``, one
    binary score per example (``outputs > threshold``).
    """
    outputs, targets = jnp.asarray(outputs), jnp.asarray(targets)
    if not _is_real(targets.dtype):
        raise TypeError(f"{name}: `targets` must be integer labels, got dtype {targets.dtype}.")
    if _is_int(targets.dtype):
        true = targets.astype(jnp.int32)
    elif (
        targets.ndim >= 2
        and targets.shape == outputs.shape
        and targets.shape[-1] == num_classes
        and jnp.issubdtype(outputs.dtype, jnp.floating)
    ):
        true = jnp.argmax(targets, axis=-1).astype(jnp.int32)
    else:
        raise TypeError(
            f"{name}: `targets` must be integer class labels, got dtype {targets.dtype} with "
            f"shape {_shape(targets.shape)}; cast with `targets.astype(jnp.int32)` (or give "
            f"one-hot targets of shape (..., {num_classes}) with class scores of the same shape)."
        )
    batch = true.shape
    o = outputs.shape
    if not _is_real(outputs.dtype):
        raise TypeError(f"{name}: `outputs` must be real numbers, got dtype {outputs.dtype}.")
    if _is_int(outputs.dtype):
        if o != batch:
            raise ValueError(
                f"{name}: integer `outputs` are predicted labels and must have the targets' "
                f"shape {_shape(batch)}, got {_shape(o)}."
            )
        return true, outputs.astype(jnp.int32)
    if o == (*batch, num_classes):
        return true, jnp.argmax(outputs, axis=-1).astype(jnp.int32)
    if o == batch and num_classes == 2:
        return true, (outputs > jnp.asarray(thr, outputs.dtype)).astype(jnp.int32)
    if len(o) == len(batch) + 1 and o[:-1] == batch:
        hint = (
            "; for one binary score per example give outputs of the targets' shape "
            "(`outputs[..., 0]`)"
            if o[-1] == 1 and num_classes == 2
            else "; check `num_classes`"
        )
        raise ValueError(
            f"{name}: `outputs` have {o[-1]} classes on the last axis (shape {_shape(o)}) but "
            f"`num_classes` is {num_classes}{hint}."
        )
    if o == batch:
        raise ValueError(
            f"{name}: float `outputs` of the targets' shape {_shape(o)} are binary scores, "
            f"which need num_classes=2, got num_classes={num_classes}; give class scores of "
            f"shape {_shape((*batch, num_classes))} or integer predicted labels."
        )
    raise ValueError(
        f"{name}: expected class scores of shape {_shape((*batch, num_classes))}, predicted "
        f"labels of shape {_shape(batch)} (or binary scores when num_classes=2) for targets "
        f"{_shape(batch)}, got outputs {_shape(o)}."
    )


def _confusion_metric(
    name: str,
    num_classes: int,
    compute_fn: Callable[[jax.Array], Any],
    *,
    threshold: float,
    from_logits: bool,
    dtype,
) -> Metric:
    dtype = _count_dtype(name, dtype)
    thr = _logit_threshold(name, threshold, from_logits)

    def init():
        return {"matrix": jnp.zeros((num_classes, num_classes), dtype)}

    def update(state, outputs, targets, *, weights=None):
        true, pred = _label_pair(name, outputs, targets, num_classes, thr)
        w = _weights(name, weights, true.shape, dtype).reshape(-1)
        true, pred = true.reshape(-1), pred.reshape(-1)
        valid = (true >= 0) & (true < num_classes) & (pred >= 0) & (pred < num_classes)
        # A scatter-add into the flat matrix: O(batch), unlike a one-hot matmul's
        # O(batch * num_classes**2); out-of-range pairs go to an index that is dropped.
        cell = jnp.where(valid, true * num_classes + pred, num_classes * num_classes)
        flat = state["matrix"].reshape(-1).at[cell].add(w, mode="drop")
        return {"matrix": flat.reshape(num_classes, num_classes)}

    def compute(state):
        return compute_fn(state["matrix"])

    return Metric(init, update, _add, compute, name)


def confusion_matrix(
    num_classes: int,
    *,
    threshold: float = 0.5,
    from_logits: bool = False,
    dtype=jnp.int32,
    name: str = "confusion_matrix",
) -> Metric:
    """The ``(num_classes, num_classes)`` confusion matrix: rows true, columns predicted.

    As scikit-learn's ``confusion_matrix`` with ``labels=range(num_classes)``.

    ``targets``: integer labels (or one-hot targets with class scores of the
    same shape). ``outputs``: class scores ``(*targets.shape, num_classes)``
    (argmax), integer predicted labels of the targets' shape, or, when
    ``num_classes == 2``, one binary score per example, positive when
    ``> threshold`` (on probabilities; on logits with ``from_logits=True``).
    Labels or predictions outside ``[0, num_classes)`` are not counted.

    Args:
        num_classes: the number of classes, ``>= 2``.
        threshold, from_logits: for binary scores.
        dtype: the count dtype (int32; float32 for fractional weights).
        name: the metric's name.

    Examples:
        >>> m = confusion_matrix(3)
        >>> m.compute(m.update(m.init(), jnp.array([0, 2, 2]), jnp.array([0, 1, 2])))
        Array([[1, 0, 0],
               [0, 0, 1],
               [0, 0, 1]], dtype=int32)
    """
    num_classes = _check_int(name, "num_classes", num_classes, 2)
    return _confusion_metric(
        name,
        num_classes,
        lambda m: m,
        threshold=threshold,
        from_logits=from_logits,
        dtype=dtype,
    )


_AVERAGES = ("binary", "micro", "macro", "weighted", None)


def _prf_metric(
    kind: str,
    num_classes: int,
    average: str | None,
    pos_label: int,
    threshold: float,
    from_logits: bool,
    dtype,
    name: str | None,
) -> Metric:
    num_classes = _check_int(kind, "num_classes", num_classes, 2)
    if average not in _AVERAGES:
        raise ValueError(
            f"{kind}: `average` must be one of 'binary', 'micro', 'macro', 'weighted' or None, "
            f"got {average!r}."
        )
    if average == "binary":
        if num_classes != 2:
            raise ValueError(
                f"{kind}: average='binary' needs num_classes=2, got num_classes={num_classes}; "
                "pick average='micro', 'macro', 'weighted' or None (per class)."
            )
        pos_label = _check_int(kind, "pos_label", pos_label, 0)
        if pos_label >= num_classes:
            raise ValueError(f"{kind}: `pos_label` must be 0 or 1, got {pos_label}.")
    if name is None:
        name = kind if average in ("binary", None) else f"{kind}_{average}"

    def compute(matrix):
        m = matrix.astype(jnp.float32)
        tp = jnp.diagonal(m)
        predicted = jnp.sum(m, axis=0)
        support = jnp.sum(m, axis=1)
        if kind == "precision":
            num, den = tp, predicted
        elif kind == "recall":
            num, den = tp, support
        else:  # f1 = 2 tp / (2 tp + fp + fn)
            num, den = 2 * tp, predicted + support
        if average == "binary":
            return _safe_div(num[pos_label], den[pos_label])
        if average == "micro":
            return _safe_div(jnp.sum(num), jnp.sum(den))
        per_class = _safe_div(num, den)
        if average is None:
            return per_class
        if average == "macro":
            present = ((predicted + support) > 0).astype(jnp.float32)
            return _safe_div(jnp.sum(per_class * present), jnp.sum(present))
        return _safe_div(jnp.sum(per_class * support), jnp.sum(support))  # weighted

    return _confusion_metric(
        name, num_classes, compute, threshold=threshold, from_logits=from_logits, dtype=dtype
    )


_PRF_DOC = """{title}, from an accumulated confusion matrix (see :func:`confusion_matrix`).

    Computed once over everything added (never averaged over batches), as
    scikit-learn's ``{sk}(..., average=average, zero_division=0)``:

    - ``"binary"`` (default; needs ``num_classes=2``): for class ``pos_label``;
    - ``"micro"``: from the total counts over classes;
    - ``"macro"``: the unweighted mean over the classes that occur in the
      targets or the predictions (scikit-learn's default ``labels``);
    - ``"weighted"``: the mean over classes weighted by their support;
    - ``None``: the per-class values, shape ``(num_classes,)`` (0 for classes
      that never occur).

    A division by zero gives 0. ``outputs`` and ``targets`` are as for
    :func:`confusion_matrix`.

    Args:
        num_classes: the number of classes, ``>= 2``.
        average: ``"binary"``, ``"micro"``, ``"macro"``, ``"weighted"`` or ``None``.
        pos_label: the positive class for ``"binary"``.
        threshold, from_logits: for one binary score per example.
        dtype: the count dtype (int32; float32 for fractional weights).
        name: the metric's name (default ``"{kind}"``, or ``"{kind}_macro"`` etc.).

    Raises:
        ValueError: for a bad ``average`` or ``num_classes`` at construction;
            for outputs that do not fit ``num_classes`` at update.

    Examples:
        >>> m = {kind}(3, average="macro")
        >>> s = m.update(m.init(), jnp.array([0, 2, 2, 1]), jnp.array([0, 1, 2, 1]))
        >>> m.compute(s)
        {example}
    """


def precision(
    num_classes: int = 2,
    *,
    average: str | None = "binary",
    pos_label: int = 1,
    threshold: float = 0.5,
    from_logits: bool = False,
    dtype=jnp.int32,
    name: str | None = None,
) -> Metric:
    return _prf_metric(
        "precision", num_classes, average, pos_label, threshold, from_logits, dtype, name
    )


def recall(
    num_classes: int = 2,
    *,
    average: str | None = "binary",
    pos_label: int = 1,
    threshold: float = 0.5,
    from_logits: bool = False,
    dtype=jnp.int32,
    name: str | None = None,
) -> Metric:
    return _prf_metric(
        "recall", num_classes, average, pos_label, threshold, from_logits, dtype, name
    )


def f1(
    num_classes: int = 2,
    *,
    average: str | None = "binary",
    pos_label: int = 1,
    threshold: float = 0.5,
    from_logits: bool = False,
    dtype=jnp.int32,
    name: str | None = None,
) -> Metric:
    return _prf_metric("f1", num_classes, average, pos_label, threshold, from_logits, dtype, name)


precision.__doc__ = _PRF_DOC.format(
    title="Precision ``tp / (tp + fp)``",
    sk="precision_score",
    kind="precision",
    example="Array(0.8333..., dtype=float32)",
)
recall.__doc__ = _PRF_DOC.format(
    title="Recall ``tp / (tp + fn)``",
    sk="recall_score",
    kind="recall",
    example="Array(0.8333..., dtype=float32)",
)
f1.__doc__ = _PRF_DOC.format(
    title="F1 ``2 tp / (2 tp + fp + fn)``",
    sk="f1_score",
    kind="f1",
    example="Array(0.7777..., dtype=float32)",
)


# ----------------------------------------------------------------------------- R²


def r2(
    num_outputs: int | None = None,
    *,
    multioutput: str = "uniform_average",
    name: str = "r2",
) -> Metric:
    """The coefficient of determination R² (scikit-learn's ``r2_score``).

    ``R² = 1 - SS_res / SS_tot`` with ``SS_res = sum w (y - ŷ)²`` and
    ``SS_tot = sum w (y - ȳ)²``. The state holds, per output, the total weight
    ``n``, the running mean of the targets and ``SS_tot`` (merged with Chan's
    parallel formula: stable where ``sum y²`` - ``(sum y)² / n`` in float32
    would cancel catastrophically for targets far from 0) and ``SS_res``.

    As scikit-learn (``force_finite=True``): constant targets give 1.0 if the
    predictions are perfect, else 0.0. No data gives NaN.

    Args:
        num_outputs: ``None``: ``outputs`` and ``targets`` of any equal shape
            are one output (every entry a sample). An int ``d``: shape
            ``(..., d)``, one R² per output.
        multioutput: ``"uniform_average"`` (the mean of the per-output R²) or
            ``"raw_values"`` (shape ``(d,)``).
        name: the metric's name.

    Examples:
        >>> m = r2()
        >>> s = m.update(m.init(), jnp.array([1.0, 2.0, 2.5]), jnp.array([1.0, 2.0, 3.0]))
        >>> m.compute(s)
        Array(0.875, dtype=float32)
    """
    if num_outputs is not None:
        num_outputs = _check_int(name, "num_outputs", num_outputs, 1)
    if multioutput not in ("uniform_average", "raw_values"):
        raise ValueError(
            f"{name}: `multioutput` must be 'uniform_average' or 'raw_values', got {multioutput!r}."
        )
    shape = () if num_outputs is None else (num_outputs,)

    def init():
        zeros = jnp.zeros(shape, jnp.float32)
        return {"n": zeros, "mean": zeros, "ss_tot": zeros, "ss_res": zeros}

    def merge(a, b):
        n = a["n"] + b["n"]
        delta = b["mean"] - a["mean"]
        frac = _safe_div(b["n"], n)
        return {
            "n": n,
            "mean": a["mean"] + delta * frac,
            "ss_tot": a["ss_tot"] + b["ss_tot"] + delta * delta * a["n"] * frac,
            "ss_res": a["ss_res"] + b["ss_res"],
        }

    def update(state, outputs, targets, *, weights=None):
        outputs = _floating(name, "outputs", outputs)
        targets = _floating(name, "targets", targets)
        _same_shape(name, outputs, targets)
        if num_outputs is not None and (outputs.ndim < 1 or outputs.shape[-1] != num_outputs):
            raise ValueError(
                f"{name}: expected `outputs` of shape (..., {num_outputs}) for num_outputs="
                f"{num_outputs}, got {_shape(outputs.shape)}."
            )
        axes = tuple(range(outputs.ndim - len(shape)))
        w = _weights(name, weights, outputs.shape, jnp.float32)
        keep = w != 0
        y = jnp.where(keep, targets, 0)
        res = jnp.where(keep, targets - outputs, 0)
        n = jnp.sum(w, axis=axes)
        mu = _safe_div(jnp.sum(w * y, axis=axes), n)
        batch = {
            "n": n,
            "mean": mu,
            "ss_tot": jnp.sum(w * jnp.where(keep, y - mu, 0) ** 2, axis=axes),
            "ss_res": jnp.sum(w * res * res, axis=axes),
        }
        return merge(state, batch)

    def compute(state):
        ss_tot, ss_res = state["ss_tot"], state["ss_res"]
        score = jnp.where(
            ss_tot != 0,
            1 - _safe_div(ss_res, ss_tot),
            jnp.where(ss_res == 0, 1.0, 0.0),
        )
        score = jnp.where(state["n"] > 0, score, jnp.nan)
        return score if multioutput == "raw_values" else jnp.mean(score)

    return Metric(init, update, merge, compute, name)


# ----------------------------------------------------------------------------- several


def collection(metrics: Mapping[str, Metric | str]) -> Metric:
    """Several metrics as one: a dict of metrics gives a dict of states and of values.

    ``update(states, outputs, targets, *, weights=None)`` feeds every metric
    the same batch (so :func:`mean` without ``fn`` does not fit here). Names
    are resolved with :func:`get`. One ``jax.jit`` of the collection's
    ``update`` compiles all the metrics together.

    Examples:
        >>> ms = collection({"acc": "accuracy", "f1": f1(3, average="macro")})
        >>> s = ms.update(ms.init(), jnp.eye(3), jnp.array([0, 1, 1]))
        >>> {k: round(float(v), 4) for k, v in ms.compute(s).items()}
        {'acc': 0.6667, 'f1': 0.5556}
    """
    if not isinstance(metrics, Mapping):
        raise TypeError(
            f"collection: `metrics` must be a dict of name -> metric, got "
            f"{type(metrics).__name__}; e.g. `collection({{'acc': accuracy()}})`."
        )
    ms = {k: get(m) for k, m in metrics.items()}

    def init():
        return {k: m.init() for k, m in ms.items()}

    def update(states, outputs, targets, *, weights=None):
        return {k: m.update(states[k], outputs, targets, weights=weights) for k, m in ms.items()}

    def merge(a, b):
        return {k: m.merge(a[k], b[k]) for k, m in ms.items()}

    def compute(states):
        return {k: m.compute(states[k]) for k, m in ms.items()}

    return Metric(init, update, merge, compute, "collection")


# ----------------------------------------------------------------------------- lookup


def _key(name: str) -> str:
    return "".join(c for c in name.lower() if c.isalnum())


_NAMES: dict[str, Callable[..., Metric]] = {
    **dict.fromkeys(["accuracy", "acc"], accuracy),
    "binary_accuracy": binary_accuracy,
    "categorical_accuracy": categorical_accuracy,
    "sparse_categorical_accuracy": sparse_categorical_accuracy,
    **dict.fromkeys(
        ["top_k_accuracy", "top_k_categorical_accuracy", "sparse_top_k_categorical_accuracy"],
        top_k_accuracy,
    ),
    "confusion_matrix": confusion_matrix,
    "precision": precision,
    "recall": recall,
    **dict.fromkeys(["f1", "f1_score"], f1),
    **dict.fromkeys(["mae", "mean_absolute_error"], mean_absolute_error),
    **dict.fromkeys(["r2", "r2_score"], r2),
    "mean": mean,
}
_ALIASES = {_key(k): v for k, v in _NAMES.items()}


def get(name: str | Metric, **kwargs) -> Metric:
    """Build a metric from its name (Keras/scikit-learn style), with constructor options.

    Names are matched ignoring case, ``_``, ``-`` and spaces (``"acc"``,
    ``"sparse_categorical_accuracy"``, ``"top_k_categorical_accuracy"``,
    ``"f1_score"``, ``"mae"``, ``"r2_score"``, ...). A :class:`Metric` is
    returned as is.

    Args:
        name: a metric name or a Metric.
        **kwargs: options for the constructor (``num_classes``, ``average``, ``k``, ...).

    Raises:
        ValueError: for an unknown name (with the closest known names) or bad options.
        TypeError: if ``name`` is neither.

    Examples:
        >>> get("f1_score", num_classes=3, average="macro").name
        'f1_macro'
        >>> get("acuracy")
        Traceback (most recent call last):
        ...
        ValueError: unknown metric 'acuracy'; did you mean 'accuracy'? ...
    """
    if isinstance(name, Metric):
        if kwargs:
            raise ValueError(f"get: options {sorted(kwargs)} need a metric name, not a Metric.")
        return name
    if not isinstance(name, str):
        raise TypeError(f"a metric must be a name or a Metric, got {type(name).__name__}.")
    make = _ALIASES.get(_key(name))
    if make is None:
        close = difflib.get_close_matches(name.lower(), list(_NAMES), n=1, cutoff=0.6)
        hint = f"did you mean {close[0]!r}? " if close else ""
        known = ", ".join(_NAMES)
        raise ValueError(f"unknown metric {name!r}; {hint}known metrics: {known}.")
    try:
        inspect.signature(make).bind(**kwargs)
    except TypeError as err:
        raise ValueError(
            f"metric {make.__name__!r}: bad options {sorted(kwargs)}: {err}."
        ) from None
    return make(**kwargs)
