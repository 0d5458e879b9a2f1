"""Losses: ``loss(outputs, targets, *, weights=None) -> scalar mean``.

Every loss computes a per-example (or per-element) loss, wrapping optax's
per-example losses where optax has them, and reduces it to one scalar with a
weighted mean (see :func:`weighted_mean`):

- ``weights=None``: the plain mean over every entry of the per-example loss.
- ``weights`` of shape ``per_example_shape[:k]`` (the leading axes, e.g.
  ``(batch,)`` or ``(batch, time)``): per-example weights or a 0/1 (or bool)
  mask, broadcast over the remaining axes; the result is
  ``sum(w * l) / sum(w)``, so a mask gives the mean over the kept examples
  and a padded last batch gives the same loss as the unpadded one.
  Examples with weight 0 never contribute, even where their loss is NaN or
  infinite (garbage in the padding). An all-zero mask gives ``0.0`` (not
  ``0/0 = NaN``) with zero gradients, so a fully padded step does not poison
  training. Weights should be non-negative.

Shapes are checked at trace time and never broadcast silently: ``(32, 1)``
outputs against ``(32,)`` targets is an error that shows the fix, not a
``(32, 32)`` loss.

Which losses take logits:

- :func:`binary_cross_entropy`: probabilities (``from_logits=False``, as Keras
  and PyTorch's ``BCELoss``), clipped to ``[epsilon, 1 - epsilon]``;
  :func:`binary_cross_entropy_with_logits`: logits.
- :func:`categorical_cross_entropy`, :func:`sparse_categorical_cross_entropy`,
  :func:`kl_divergence`: logits (``from_logits=True``, as optax and PyTorch's
  ``CrossEntropyLoss``).

Funcnet models end in a linear layer, so the multi-class losses take logits by
default; pass ``from_logits=False`` after a softmax. Losses are computed in
float32 (float64 when the outputs are float64), also for bfloat16/float16
outputs.

Examples:
    >>> import jax.numpy as jnp
    >>> from funcnet import losses
    >>> logits = jnp.array([[2.0, 0.0, -1.0], [0.0, 3.0, 0.0]])
    >>> labels = jnp.array([0, 1])
    >>> losses.sparse_categorical_cross_entropy(logits, labels)
    Array(0.1323..., dtype=float32)
    >>> loss_fn = losses.get("sparse_categorical_crossentropy")
    >>> loss_fn(logits, labels, weights=jnp.array([1.0, 0.0]))  # only the first example
    Array(0.1698..., dtype=float32)
"""

from __future__ import annotations

import difflib
import functools
import inspect
from collections.abc import Callable
from typing import Protocol

import jax
import jax.numpy as jnp
import numpy as np
import optax

__all__ = [
    "Loss",
    "binary_cross_entropy",
    "binary_cross_entropy_with_logits",
    "categorical_cross_entropy",
    "cosine_distance",
    "cosine_similarity",
    "get",
    "huber",
    "kl_divergence",
    "mean_absolute_error",
    "mean_squared_error",
    "sparse_categorical_cross_entropy",
    "weighted_mean",
]

_EPSILON = 1e-7


class Loss(Protocol):
    """``loss(outputs, targets, *, weights=None) -> scalar``: the weighted mean loss."""

    def __call__(
        self,
        outputs: jax.typing.ArrayLike,
        targets: jax.typing.ArrayLike,
        *,
        weights: jax.typing.ArrayLike | None = None,
    ) -> jax.Array: ...


# ----------------------------------------------------------------------------- helpers


def _shape(shape) -> str:
    return str(tuple(int(d) for d in shape))


def _float_dtype(dtype) -> np.dtype:
    """The dtype a loss computes in: float32, or float64 for float64 inputs."""
    dtype = jnp.dtype(dtype)
    return dtype if dtype.itemsize >= 4 else jnp.dtype(jnp.float32)


def _outputs(name: str, outputs, *, min_ndim: int = 0) -> jax.Array:
    """``outputs`` as a floating array in the compute dtype; clear errors otherwise."""
    outputs = jnp.asarray(outputs)
    if not jnp.issubdtype(outputs.dtype, jnp.floating):
        raise TypeError(
            f"{name}: `outputs` must be floating point, got dtype {outputs.dtype}; "
            "cast with `outputs.astype(jnp.float32)`."
        )
    if outputs.ndim < min_ndim:
        raise ValueError(
            f"{name}: `outputs` must have a class axis (last axis), got shape "
            f"{_shape(outputs.shape)}; e.g. logits of shape (batch, num_classes)."
        )
    return outputs.astype(_float_dtype(outputs.dtype))


def _numeric_targets(name: str, targets, dtype) -> jax.Array:
    """Real-valued ``targets`` (bool, int or float) cast to ``dtype``."""
    targets = jnp.asarray(targets)
    if not (
        jnp.issubdtype(targets.dtype, jnp.floating)
        or jnp.issubdtype(targets.dtype, jnp.integer)
        or targets.dtype == jnp.bool_
    ):
        raise TypeError(f"{name}: `targets` must be real numbers, got dtype {targets.dtype}.")
    return targets.astype(dtype)


def _same_shape(name: str, outputs: jax.Array, targets: jax.Array) -> None:
    if outputs.shape == targets.shape:
        return
    o, t = outputs.shape, targets.shape
    if o == (*t, 1):
        fix = f"add the axis to the targets with `targets[..., None]` (shape {_shape(o)})"
    elif t == (*o, 1):
        fix = f"drop the targets' last axis with `targets[..., 0]` (shape {_shape(o)})"
    else:
        fix = "make them equal; shapes are never broadcast"
    raise ValueError(
        f"{name}: `outputs` and `targets` must have the same shape, got outputs "
        f"{_shape(o)} and targets {_shape(t)}; {fix}."
    )


def _check_range(name: str, arg: str, value, low: float, high: float, *, open_low=False) -> None:
    """Check a hyperparameter when it is a concrete number (traced values pass)."""
    interval = f"{'(' if open_low else '['}{low}, {high}]"
    try:
        v = float(value)
    except jax.errors.ConcretizationTypeError:
        return
    except (TypeError, ValueError):
        raise TypeError(f"{name}: `{arg}` must be a number in {interval}, got {value!r}.") from None
    if not ((low < v if open_low else low <= v) and v <= high):
        raise ValueError(f"{name}: `{arg}` must be in {interval}, got {value!r}.")


def weighted_mean(
    values: jax.typing.ArrayLike, weights: jax.typing.ArrayLike | None = None, *, name: str = "loss"
) -> jax.Array:
    """``sum(w * values) / sum(w)``, with ``weights`` over the leading axes of ``values``.

    The reduction every loss in this module uses; public for custom losses.

    Args:
        values: per-example (or per-element) losses, any shape.
        weights: ``None`` (plain mean) or an array of shape ``values.shape[:k]``
            (bool, int or float), broadcast over the trailing axes.
        name: the loss's name, for error messages.

    Returns:
        A scalar. Entries with weight 0 are left out even when NaN or infinite;
        when every weight is 0 the result is ``0.0`` with zero gradients.

    Raises:
        ValueError: if ``weights`` is not shaped like the leading axes of ``values``.
        TypeError: if ``weights`` is not real-valued.

    Examples:
        >>> weighted_mean(jnp.array([1.0, 2.0, jnp.nan]), jnp.array([1, 1, 0]))
        Array(1.5, dtype=float32)
        >>> weighted_mean(jnp.array([1.0, 2.0]), jnp.zeros(2))
        Array(0., dtype=float32)
    """
    values = jnp.asarray(values)
    if weights is None:
        return jnp.mean(values)
    weights = jnp.asarray(weights)
    if not (
        jnp.issubdtype(weights.dtype, jnp.floating)
        or jnp.issubdtype(weights.dtype, jnp.integer)
        or weights.dtype == jnp.bool_
    ):
        raise TypeError(f"{name}: `weights` must be bool, int or float, got dtype {weights.dtype}.")
    if weights.ndim > values.ndim or weights.shape != values.shape[: weights.ndim]:
        lead = _shape(values.shape[:1]) if values.ndim else "()"
        raise ValueError(
            f"{name}: `weights` must have the leading shape of the per-example losses "
            f"{_shape(values.shape)} (e.g. {lead}), got shape {_shape(weights.shape)}; "
            "weights are per example, not broadcast (squeeze size-1 axes, e.g. `w[:, 0]`)."
        )
    w = weights.astype(values.dtype).reshape(weights.shape + (1,) * (values.ndim - weights.ndim))
    w = jnp.broadcast_to(w, values.shape)
    keep = w != 0
    total = jnp.sum(w)
    num = jnp.sum(jnp.where(keep, w * jnp.where(keep, values, 0), 0))
    nonzero = total != 0
    return jnp.where(nonzero, num / jnp.where(nonzero, total, 1), 0).astype(values.dtype)


def _log_probs(outputs: jax.Array, from_logits: bool, epsilon: float) -> jax.Array:
    """Log-probabilities over the last axis: ``log_softmax`` of logits or ``log(clip(p))``."""
    if from_logits:
        return jax.nn.log_softmax(outputs, axis=-1)
    return jnp.log(jnp.clip(outputs, epsilon, 1.0))


# ----------------------------------------------------------------------------- regression


def mean_squared_error(
    outputs: jax.typing.ArrayLike,
    targets: jax.typing.ArrayLike,
    *,
    weights: jax.typing.ArrayLike | None = None,
) -> jax.Array:
    """Mean of ``(outputs - targets) ** 2`` over every element (``optax.losses.squared_error``).

    Args:
        outputs: predictions, any shape, floating point.
        targets: the same shape as ``outputs``.
        weights: optional per-example weights or mask over the leading axes
            (see :func:`weighted_mean`).

    Returns:
        A scalar.

    Raises:
        ValueError: if the shapes differ (they are never broadcast).
        TypeError: if ``outputs`` are not floating point.

    Examples:
        >>> mean_squared_error(jnp.array([1.0, 2.0]), jnp.array([1.0, 4.0]))
        Array(2., dtype=float32)
    """
    name = "mean_squared_error"
    outputs = _outputs(name, outputs)
    targets = _numeric_targets(name, targets, outputs.dtype)
    _same_shape(name, outputs, targets)
    return weighted_mean(optax.losses.squared_error(outputs, targets), weights, name=name)


def mean_absolute_error(
    outputs: jax.typing.ArrayLike,
    targets: jax.typing.ArrayLike,
    *,
    weights: jax.typing.ArrayLike | None = None,
) -> jax.Array:
    """Mean of ``|outputs - targets|`` over every element.

    Arguments, shapes and errors as :func:`mean_squared_error`.

    Examples:
        >>> mean_absolute_error(jnp.array([1.0, 2.0]), jnp.array([1.0, 4.0]))
        Array(1., dtype=float32)
    """
    name = "mean_absolute_error"
    outputs = _outputs(name, outputs)
    targets = _numeric_targets(name, targets, outputs.dtype)
    _same_shape(name, outputs, targets)
    return weighted_mean(jnp.abs(outputs - targets), weights, name=name)


def huber(
    outputs: jax.typing.ArrayLike,
    targets: jax.typing.ArrayLike,
    *,
    delta: float = 1.0,
    weights: jax.typing.ArrayLike | None = None,
) -> jax.Array:
    """Huber loss (``optax.losses.huber_loss``): quadratic below ``delta``, linear above.

    Per element: ``0.5 * e**2`` if ``|e| <= delta`` else ``delta * (|e| - 0.5 * delta)``
    with ``e = outputs - targets`` (the Keras convention).

    Args:
        outputs, targets, weights: as :func:`mean_squared_error`.
        delta: the threshold, ``> 0``.

    Raises:
        ValueError: for a bad ``delta`` or mismatched shapes.

    Examples:
        >>> huber(jnp.array([0.5, 3.0]), jnp.array([0.0, 0.0]))
        Array(1.3125, dtype=float32)
    """
    name = "huber"
    _check_range(name, "delta", delta, 0.0, float("inf"), open_low=True)
    outputs = _outputs(name, outputs)
    targets = _numeric_targets(name, targets, outputs.dtype)
    _same_shape(name, outputs, targets)
    return weighted_mean(optax.losses.huber_loss(outputs, targets, delta=delta), weights, name=name)


# ----------------------------------------------------------------------------- binary


def binary_cross_entropy(
    outputs: jax.typing.ArrayLike,
    targets: jax.typing.ArrayLike,
    *,
    from_logits: bool = False,
    epsilon: float = _EPSILON,
    weights: jax.typing.ArrayLike | None = None,
) -> jax.Array:
    """Binary cross-entropy per element (``optax.losses.sigmoid_binary_cross_entropy``).

    By default ``outputs`` are **probabilities** (after a sigmoid), as in Keras
    and PyTorch's ``BCELoss``: they are clipped to ``[epsilon, 1 - epsilon]``
    and turned into logits, so a probability of exactly 0 or 1 gives a finite
    loss. With ``from_logits=True`` (or :func:`binary_cross_entropy_with_logits`)
    ``outputs`` are logits and the loss is exact and stable for any logit.

    Args:
        outputs: probabilities (or logits), any shape, floating point.
        targets: the same shape; 0/1 labels (bool, int or float) or soft labels
            in ``[0, 1]``.
        from_logits: whether ``outputs`` are logits.
        epsilon: the clipping of probabilities (unused for logits).
        weights: optional per-example weights or mask (see :func:`weighted_mean`).

    Raises:
        ValueError: if the shapes differ (e.g. ``(32, 1)`` outputs and ``(32,)`` targets).

    Examples:
        >>> binary_cross_entropy(jnp.array([0.9, 0.2]), jnp.array([1, 0]))
        Array(0.1642..., dtype=float32)
        >>> binary_cross_entropy(jnp.array([2.0, -1.0]), jnp.array([1, 0]), from_logits=True)
        Array(0.2200..., dtype=float32)
    """
    name = "binary_cross_entropy_with_logits" if from_logits else "binary_cross_entropy"
    outputs = _outputs(name, outputs)
    targets = _numeric_targets(name, targets, outputs.dtype)
    _same_shape(name, outputs, targets)
    if from_logits:
        logits = outputs
    else:
        _check_range(name, "epsilon", epsilon, 0.0, 0.5, open_low=True)
        p = jnp.clip(outputs, epsilon, 1.0 - epsilon)
        logits = jnp.log(p) - jnp.log1p(-p)
    per_element = optax.losses.sigmoid_binary_cross_entropy(logits, targets)
    return weighted_mean(per_element, weights, name=name)


def binary_cross_entropy_with_logits(
    outputs: jax.typing.ArrayLike,
    targets: jax.typing.ArrayLike,
    *,
    weights: jax.typing.ArrayLike | None = None,
) -> jax.Array:
    """:func:`binary_cross_entropy` with ``from_logits=True``: ``outputs`` are logits.

    Examples:
        >>> binary_cross_entropy_with_logits(jnp.array([1e4, -1e4]), jnp.array([1.0, 0.0]))
        Array(0., dtype=float32)
    """
    return binary_cross_entropy(outputs, targets, from_logits=True, weights=weights)


# ----------------------------------------------------------------------------- categorical


def categorical_cross_entropy(
    outputs: jax.typing.ArrayLike,
    targets: jax.typing.ArrayLike,
    *,
    from_logits: bool = True,
    label_smoothing: float = 0.0,
    epsilon: float = _EPSILON,
    weights: jax.typing.ArrayLike | None = None,
) -> jax.Array:
    """Cross-entropy against one-hot or probability targets.

    Wraps ``optax.losses.softmax_cross_entropy``.

    ``outputs`` are **logits** by default; with ``from_logits=False`` they are
    probabilities (after a softmax), clipped to ``[epsilon, 1]`` and
    renormalised. For integer class labels use
    :func:`sparse_categorical_cross_entropy`.

    Args:
        outputs: logits (or probabilities) of shape ``(..., num_classes)``.
        targets: one-hot or probability targets of the same shape.
        from_logits: whether ``outputs`` are logits.
        label_smoothing: ``alpha`` in ``[0, 1]``: targets become
            ``(1 - alpha) * targets + alpha / num_classes`` (``optax.losses.smooth_labels``).
        epsilon: the clipping of probabilities (unused for logits).
        weights: optional weights over the leading axes of ``outputs.shape[:-1]``.

    Returns:
        The weighted mean over examples of ``-sum(targets * log_softmax(outputs))``.

    Raises:
        ValueError: for integer labels (use the sparse loss), a wrong number of
            classes, or a bad ``label_smoothing``.

    Examples:
        >>> logits = jnp.array([[2.0, 0.0, -1.0]])
        >>> categorical_cross_entropy(logits, jnp.array([[1.0, 0.0, 0.0]]))
        Array(0.1698..., dtype=float32)
        >>> categorical_cross_entropy(logits, jnp.array([[1.0, 0.0, 0.0]]), label_smoothing=0.1)
        Array(0.3365..., dtype=float32)
    """
    name = "categorical_cross_entropy"
    _check_range(name, "label_smoothing", label_smoothing, 0.0, 1.0)
    outputs = _outputs(name, outputs, min_ndim=1)
    targets = jnp.asarray(targets)
    num_classes = outputs.shape[-1]
    if targets.shape == outputs.shape[:-1]:
        raise ValueError(
            f"{name}: got class labels of shape {_shape(targets.shape)} for outputs "
            f"{_shape(outputs.shape)}, expected one-hot targets of shape "
            f"{_shape(outputs.shape)}; use `sparse_categorical_cross_entropy`, or one-hot "
            f"the labels with `jax.nn.one_hot(targets, {num_classes})`."
        )
    if (
        targets.ndim == outputs.ndim
        and targets.shape[:-1] == outputs.shape[:-1]
        and targets.shape[-1] != num_classes
    ):
        raise ValueError(
            f"{name}: `targets` have {targets.shape[-1]} classes (last axis) but `outputs` "
            f"have {num_classes}: targets {_shape(targets.shape)}, outputs "
            f"{_shape(outputs.shape)}; one-hot with `jax.nn.one_hot(labels, {num_classes})`."
        )
    targets = _numeric_targets(name, targets, outputs.dtype)
    _same_shape(name, outputs, targets)
    if not isinstance(label_smoothing, (int, float)) or label_smoothing != 0:
        targets = optax.losses.smooth_labels(targets, label_smoothing)
    logits = outputs if from_logits else _log_probs(outputs, False, epsilon)
    per_example = optax.losses.softmax_cross_entropy(logits, targets)
    return weighted_mean(per_example, weights, name=name)


def sparse_categorical_cross_entropy(
    outputs: jax.typing.ArrayLike,
    targets: jax.typing.ArrayLike,
    *,
    from_logits: bool = True,
    epsilon: float = _EPSILON,
    weights: jax.typing.ArrayLike | None = None,
) -> jax.Array:
    """Cross-entropy against integer class labels
    (``optax.losses.softmax_cross_entropy_with_integer_labels``).

    ``outputs`` are **logits** by default (``from_logits=False``: probabilities,
    clipped to ``[epsilon, 1]``). Labels outside ``[0, num_classes)`` (also
    negative ones) give a NaN loss, which the train step's NaN guard reports,
    unless their weight is 0.

    Args:
        outputs: logits (or probabilities) of shape ``(..., num_classes)``.
        targets: integer labels of shape ``outputs.shape[:-1]``.
        from_logits: whether ``outputs`` are logits.
        epsilon: the clipping of probabilities (unused for logits).
        weights: optional weights or mask of shape ``targets.shape[:k]``.

    Raises:
        TypeError: for float labels.
        ValueError: for labels with a trailing axis of 1, or one-hot labels.

    Examples:
        >>> logits = jnp.array([[2.0, 0.0, -1.0], [0.0, 3.0, 0.0]])
        >>> sparse_categorical_cross_entropy(logits, jnp.array([0, 1]))
        Array(0.1323..., dtype=float32)
        >>> sparse_categorical_cross_entropy(logits, jnp.array([[0], [1]]))
        Traceback (most recent call last):
        ...
        ValueError: sparse_categorical_cross_entropy: expected integer `targets` of shape ...
    """
    name = "sparse_categorical_cross_entropy"
    outputs = _outputs(name, outputs, min_ndim=1)
    targets = jnp.asarray(targets)
    batch = outputs.shape[:-1]
    num_classes = outputs.shape[-1]
    if targets.shape != batch:
        if targets.shape == (*batch, 1):
            fix = "drop the trailing axis of 1 with `targets[..., 0]`"
        elif targets.shape == outputs.shape:
            fix = (
                "these look like one-hot targets: use `categorical_cross_entropy`, or "
                "`targets.argmax(-1)`"
            )
        else:
            fix = f"`outputs` must be (..., num_classes) = (..., {num_classes}) scores"
        raise ValueError(
            f"{name}: expected integer `targets` of shape outputs.shape[:-1] = {_shape(batch)}"
            f" for outputs {_shape(outputs.shape)}, got shape {_shape(targets.shape)}; {fix}."
        )
    if not jnp.issubdtype(targets.dtype, jnp.integer):
        raise TypeError(
            f"{name}: `targets` must be integer class labels, got dtype {targets.dtype}; cast "
            "with `targets.astype(jnp.int32)`, or use `categorical_cross_entropy` for "
            "probability targets."
        )
    # Negative labels would index from the end; make them out of range (NaN) instead.
    targets = jnp.where(targets < 0, num_classes, targets)
    logits = outputs if from_logits else _log_probs(outputs, False, epsilon)
    per_example = optax.losses.softmax_cross_entropy_with_integer_labels(logits, targets)
    return weighted_mean(per_example, weights, name=name)


def kl_divergence(
    outputs: jax.typing.ArrayLike,
    targets: jax.typing.ArrayLike,
    *,
    from_logits: bool = True,
    epsilon: float = _EPSILON,
    weights: jax.typing.ArrayLike | None = None,
) -> jax.Array:
    """KL divergence ``KL(targets || predicted)`` over the last axis.

    Wraps ``optax.losses.kl_divergence``.

    Per example ``sum(t * (log t - log p))`` with ``0 * log 0 = 0``; ``p`` is
    ``softmax(outputs)`` for logits (the default) or ``clip(outputs, epsilon, 1)``
    for probabilities (``from_logits=False``).

    Args:
        outputs: logits (or probabilities) of shape ``(..., num_classes)``.
        targets: probabilities of the same shape.
        from_logits: whether ``outputs`` are logits.
        epsilon: the clipping of probabilities (unused for logits).
        weights: optional weights over the leading axes of ``outputs.shape[:-1]``.

    Examples:
        >>> kl_divergence(jnp.log(jnp.array([[0.5, 0.5]])), jnp.array([[0.5, 0.5]]))
        Array(0., dtype=float32)
        >>> kl_divergence(jnp.array([[0.9, 0.1]]), jnp.array([[0.5, 0.5]]), from_logits=False)
        Array(0.5108..., dtype=float32)
    """
    name = "kl_divergence"
    outputs = _outputs(name, outputs, min_ndim=1)
    targets = _numeric_targets(name, targets, outputs.dtype)
    _same_shape(name, outputs, targets)
    log_p = _log_probs(outputs, from_logits, epsilon)
    per_example = optax.losses.kl_divergence(log_p, targets)
    return weighted_mean(per_example, weights, name=name)


def cosine_similarity(
    outputs: jax.typing.ArrayLike,
    targets: jax.typing.ArrayLike,
    *,
    epsilon: float = 1e-12,
    weights: jax.typing.ArrayLike | None = None,
) -> jax.Array:
    """The negative cosine similarity over the last axis (Keras' ``cosine_similarity`` loss).

    ``-cos(outputs, targets)`` per example (``optax.losses.cosine_similarity``):
    ``-1`` for vectors pointing the same way, ``1`` for opposite ones. Squared
    norms are clipped below at ``epsilon``, so a zero vector gives 0 and finite
    gradients. See :func:`cosine_distance` for ``1 - cos``.

    Args:
        outputs: vectors of shape ``(..., dim)``.
        targets: the same shape.
        epsilon: the lower clip of the squared norms.
        weights: optional weights over the leading axes of ``outputs.shape[:-1]``.

    Examples:
        >>> round(float(cosine_similarity(jnp.array([[1.0, 1.0]]), jnp.array([[2.0, 2.0]]))), 6)
        -1.0
    """
    name = "cosine_similarity"
    outputs = _outputs(name, outputs, min_ndim=1)
    targets = _numeric_targets(name, targets, outputs.dtype)
    _same_shape(name, outputs, targets)
    cos = optax.losses.cosine_similarity(outputs, targets, epsilon=epsilon)
    return weighted_mean(-cos, weights, name=name)


def cosine_distance(
    outputs: jax.typing.ArrayLike,
    targets: jax.typing.ArrayLike,
    *,
    epsilon: float = 1e-12,
    weights: jax.typing.ArrayLike | None = None,
) -> jax.Array:
    """``1 - cos(outputs, targets)`` over the last axis (``optax.losses.cosine_distance``).

    :func:`cosine_similarity` plus one: 0 at best, 2 at worst; same gradients.

    Examples:
        >>> cosine_distance(jnp.array([[1.0, 0.0]]), jnp.array([[0.0, 3.0]]))
        Array(1., dtype=float32)
    """
    name = "cosine_distance"
    outputs = _outputs(name, outputs, min_ndim=1)
    targets = _numeric_targets(name, targets, outputs.dtype)
    _same_shape(name, outputs, targets)
    per_example = optax.losses.cosine_distance(outputs, targets, epsilon=epsilon)
    return weighted_mean(per_example, weights, name=name)


# ----------------------------------------------------------------------------- lookup


def _key(name: str) -> str:
    return "".join(c for c in name.lower() if c.isalnum())


_NAMES: dict[str, Callable] = {
    **dict.fromkeys(["mse", "mean_squared_error"], mean_squared_error),
    **dict.fromkeys(["mae", "mean_absolute_error"], mean_absolute_error),
    **dict.fromkeys(["huber", "huber_loss"], huber),
    **dict.fromkeys(["bce", "binary_crossentropy"], binary_cross_entropy),
    **dict.fromkeys(
        ["binary_crossentropy_with_logits", "sigmoid_binary_cross_entropy"],
        binary_cross_entropy_with_logits,
    ),
    **dict.fromkeys(
        ["categorical_crossentropy", "softmax_cross_entropy", "cross_entropy"],
        categorical_cross_entropy,
    ),
    **dict.fromkeys(
        ["sparse_categorical_crossentropy", "softmax_cross_entropy_with_integer_labels"],
        sparse_categorical_cross_entropy,
    ),
    **dict.fromkeys(["kld", "kl_divergence", "kullback_leibler_divergence"], kl_divergence),
    "cosine_similarity": cosine_similarity,
    "cosine_distance": cosine_distance,
}
_ALIASES = {_key(k): v for k, v in _NAMES.items()}


def get(name: str | Callable, **kwargs) -> Callable:
    """Resolve a loss by name (Keras-style names accepted), optionally with options.

    Names are matched ignoring case, ``_``, ``-`` and spaces, so
    ``"sparse_categorical_crossentropy"``, ``"SparseCategoricalCrossentropy"``
    and ``"sparse_categorical_cross_entropy"`` are the same loss. Short names:
    ``"mse"``, ``"mae"``, ``"bce"``, ``"kld"``. Note that the categorical
    losses take logits by default, unlike Keras: ``get("categorical_crossentropy",
    from_logits=False)`` after a softmax.

    Args:
        name: a loss name, or a callable (returned as is, with ``kwargs`` bound).
        **kwargs: keyword options bound with :func:`functools.partial`
            (``from_logits``, ``delta``, ``label_smoothing``, ...).

    Returns:
        ``loss(outputs, targets, *, weights=None) -> scalar``.

    Raises:
        ValueError: for an unknown name (with the closest known names) or an
            option the loss does not take.
        TypeError: if ``name`` is neither a string nor callable.

    Examples:
        >>> get("mse") is mean_squared_error
        True
        >>> loss = get("CategoricalCrossentropy", label_smoothing=0.1)
        >>> loss(jnp.array([[2.0, 0.0, -1.0]]), jnp.array([[1.0, 0.0, 0.0]]))
        Array(0.3365..., dtype=float32)
        >>> get("msee")
        Traceback (most recent call last):
        ...
        ValueError: unknown loss 'msee'; did you mean 'mse'? ...
    """
    if callable(name):
        fn = name
    elif isinstance(name, str):
        fn = _ALIASES.get(_key(name))
        if fn is None:
            close = difflib.get_close_matches(name.lower(), list(_NAMES), n=1, cutoff=0.6)
            hint = f"did you mean {close[0]!r}? " if close else ""
            known = ", ".join(_NAMES)
            raise ValueError(f"unknown loss {name!r}; {hint}known losses: {known}.")
    else:
        raise TypeError(f"a loss must be a name or a callable, got {type(name).__name__}.")
    if not kwargs:
        return fn
    try:
        inspect.signature(fn).bind_partial(**kwargs)
    except TypeError as err:
        raise ValueError(
            f"loss {getattr(fn, '__name__', fn)!r} takes no option among {sorted(kwargs)}: {err}."
        ) from None
    except ValueError:  # builtins without a signature
        pass
    return functools.partial(fn, **kwargs)
