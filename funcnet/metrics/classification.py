"""Classification metrics: accuracies, top-k, confusion matrix, precision/recall/F1."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from funcnet.metrics._base import (
    Metric,
    _add,
    _check_int,
    _class_labels,
    _count_dtype,
    _is_int,
    _is_real,
    _logit_threshold,
    _safe_div,
    _same_shape,
    _shape,
    _weights,
    labels_of,
)

__all__ = [
    "accuracy",
    "binary_accuracy",
    "categorical_accuracy",
    "confusion_matrix",
    "f1",
    "precision",
    "recall",
    "sparse_categorical_accuracy",
    "top_k_accuracy",
]


# ----------------------------------------------------------------------------- accuracies


def _ratio_metric(name: str, correct_fn: Callable, dtype) -> Metric:
    """``sum(w * correct) / sum(w)`` of a per-example boolean ``correct_fn(outputs, targets)``."""
    dtype = _count_dtype(name, dtype)

    def init():
        return {"correct": jnp.zeros((), dtype), "total": jnp.zeros((), dtype)}

    def update(state, outputs, targets, *, weights=None):
        correct = correct_fn(jnp.asarray(outputs), jnp.asarray(labels_of(name, targets)))
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
    labels = _class_labels(name, targets, "cast with `targets.astype(jnp.int32)`")
    if outputs.shape[-1] == 1:
        raise ValueError(
            f"{name}: `outputs` have a single class (shape {_shape(outputs.shape)}), so the "
            "argmax is always 0; for one binary score per example use `binary_accuracy` with "
            "targets of the same shape."
        )
    return labels


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
    *, threshold: float = 0.5, from_logits: bool = True, dtype=jnp.int32, name: str = "accuracy"
) -> Metric:
    """Fraction of entries where ``outputs > threshold`` matches the 0/1 ``targets``.

    Every entry counts (multi-label outputs of shape ``(batch, labels)`` give
    the fraction of correct labels); ``weights`` cover the leading axes.

    Args:
        threshold: a probability in ``(0, 1)``; logits (the default, as the
            losses take) are compared with ``logit(threshold)``, 0 for 0.5.
        from_logits: whether ``outputs`` are logits (``True``, as every loss in
            :mod:`funcnet.losses`) or probabilities (``False``, after a sigmoid).
        dtype: the count dtype (int32; float32 for fractional weights).
        name: the metric's name.

    ``targets`` have the shape of ``outputs``: bool, int (nonzero is positive)
    or float (``> 0.5`` is positive).

    Examples:
        >>> m = binary_accuracy()  # on logits: positive when > 0
        >>> m.compute(m.update(m.init(), jnp.array([2.0, -1.0, 0.5]), jnp.array([1, 0, 0])))
        Array(0.6666667, dtype=float32)
        >>> m = binary_accuracy(from_logits=False)  # on probabilities: positive when > 0.5
        >>> m.compute(m.update(m.init(), jnp.array([0.9, 0.2, 0.6]), jnp.array([1., 0., 0.])))
        Array(0.6666667, dtype=float32)
    """
    thr = _logit_threshold(name, threshold, from_logits)

    def correct(outputs, targets):
        return _binary_correct(name, outputs, targets, thr)

    return _ratio_metric(name, correct, dtype)


def accuracy(
    *, threshold: float = 0.5, from_logits: bool = True, dtype=jnp.int32, name: str = "accuracy"
) -> Metric:
    """Accuracy whose kind is read from the shapes at trace time (Keras' ``"accuracy"``).

    - ``targets.shape == outputs.shape`` with a last axis > 1 and at least 2
      axes: one-hot targets, :func:`categorical_accuracy`;
    - ``targets.shape == outputs.shape`` otherwise (``(batch,)`` or
      ``(batch, 1)``): binary, :func:`binary_accuracy` with ``threshold`` and
      ``from_logits`` (logits by default; ``from_logits=False`` after a sigmoid);
    - ``targets.shape == outputs.shape[:-1]``: integer labels,
      :func:`sparse_categorical_accuracy`.

    Multi-label outputs ``(batch, labels)`` would read as one-hot: use
    :func:`binary_accuracy` for them.

    Examples:
        >>> m = accuracy()
        >>> m.compute(m.update(m.init(), jnp.array([1.5, -0.2]), jnp.array([1, 1])))
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
    if (
        jnp.issubdtype(targets.dtype, jnp.floating)
        and targets.ndim >= 2
        and targets.shape == outputs.shape
        and targets.shape[-1] == num_classes
        and jnp.issubdtype(outputs.dtype, jnp.floating)
    ):
        true = jnp.argmax(targets, axis=-1).astype(jnp.int32)  # one-hot
    else:
        true = _class_labels(
            name,
            targets,
            f"give integer labels, or one-hot targets of shape (..., {num_classes}) with class "
            "scores of the same shape",
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
        true, pred = _label_pair(name, outputs, labels_of(name, targets), num_classes, thr)
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
    from_logits: bool = True,
    dtype=jnp.int32,
    name: str = "confusion_matrix",
) -> Metric:
    """The ``(num_classes, num_classes)`` confusion matrix: rows true, columns predicted.

    As scikit-learn's ``confusion_matrix`` with ``labels=range(num_classes)``.

    ``targets``: integer labels (or one-hot targets with class scores of the
    same shape). ``outputs``: class scores ``(*targets.shape, num_classes)``
    (argmax), integer predicted labels of the targets' shape, or, when
    ``num_classes == 2``, one binary score per example, positive when
    ``> logit(threshold)`` on logits (the default), ``> threshold`` on
    probabilities with ``from_logits=False``.
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
    from_logits: bool = True,
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
    from_logits: bool = True,
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
    from_logits: bool = True,
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
