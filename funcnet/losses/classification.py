"""Classification losses: binary, categorical and sparse cross-entropy, KL divergence,
sigmoid focal loss.

Every one takes **logits** by default (``from_logits=True``); ``from_logits=False``
takes probabilities. See :mod:`funcnet.losses` for how to pick it by name. The
margin losses (hinge) on raw scores are in :mod:`funcnet.losses.margin`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from funcnet.losses._base import (
    _EPSILON,
    _check_range,
    _log_probs,
    _numeric_targets,
    _outputs,
    _same_shape,
    _shape,
    weighted_mean,
)

__all__ = [
    "binary_cross_entropy",
    "binary_cross_entropy_with_logits",
    "categorical_cross_entropy",
    "focal",
    "kl_divergence",
    "log_loss",
    "sparse_categorical_cross_entropy",
]


def _check_flag(name: str, from_logits) -> None:
    """``from_logits`` must be a Python (or numpy) bool: a string like ``"False"`` is truthy."""
    if not isinstance(from_logits, (bool, np.bool_)):
        raise TypeError(
            f"{name}: `from_logits` must be True (logits) or False (probabilities), got "
            f"{from_logits!r}."
        )


# ----------------------------------------------------------------------------- binary


def binary_cross_entropy(
    outputs: jax.typing.ArrayLike,
    targets: jax.typing.ArrayLike,
    *,
    from_logits: bool = True,
    epsilon: float = _EPSILON,
    weights: jax.typing.ArrayLike | None = None,
    reduction: str = "mean",
) -> jax.Array:
    """Binary cross-entropy per element (``optax.losses.sigmoid_binary_cross_entropy``).

    ``outputs`` are **logits** by default (a model ending in ``Dense(1)``, as
    PyTorch's ``BCEWithLogitsLoss`` and optax): exact and stable for any logit.
    With ``from_logits=False`` they are probabilities (after a sigmoid, as
    Keras' default and PyTorch's ``BCELoss``), clipped to ``[epsilon, 1 - epsilon]``
    so that a probability of exactly 0 or 1 gives a finite loss. Pick that with
    ``losses.get("binary_cross_entropy", from_logits=False)`` or
    ``functools.partial(binary_cross_entropy, from_logits=False)``.

    Args:
        outputs: logits (or probabilities), any shape, floating point.
        targets: the same shape; 0/1 labels (bool, int or float) or soft labels
            in ``[0, 1]``.
        from_logits: whether ``outputs`` are logits (``True``, the default) or
            probabilities (``False``).
        epsilon: the clipping of probabilities (unused for logits).
        weights: optional per-example weights or mask (see :func:`weighted_mean`).
        reduction: ``"mean"`` (weighted mean, the default), ``"sum"`` or ``"none"``
            (the weighted per-example losses), see :func:`weighted_mean`.

    Raises:
        ValueError: if the shapes differ (e.g. ``(32, 1)`` outputs and ``(32,)`` targets).
        TypeError: if ``from_logits`` is not a bool.

    Examples:
        >>> binary_cross_entropy(jnp.array([2.0, -1.0]), jnp.array([1, 0]))
        Array(0.2200..., dtype=float32)
        >>> binary_cross_entropy(jnp.array([0.9, 0.2]), jnp.array([1, 0]), from_logits=False)
        Array(0.1642..., dtype=float32)
    """
    name = "binary_cross_entropy"
    _check_flag(name, from_logits)
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
    return weighted_mean(per_element, weights, name=name, reduction=reduction)


def binary_cross_entropy_with_logits(
    outputs: jax.typing.ArrayLike,
    targets: jax.typing.ArrayLike,
    *,
    weights: jax.typing.ArrayLike | None = None,
    reduction: str = "mean",
) -> jax.Array:
    """:func:`binary_cross_entropy` on logits (its default), under PyTorch's and optax's name.

    Examples:
        >>> binary_cross_entropy_with_logits(jnp.array([1e4, -1e4]), jnp.array([1.0, 0.0]))
        Array(0., dtype=float32)
    """
    return binary_cross_entropy(
        outputs, targets, from_logits=True, weights=weights, reduction=reduction
    )


log_loss = binary_cross_entropy
"""scikit-learn's name (``sklearn.metrics.log_loss``) for :func:`binary_cross_entropy`.

The same function, so it takes **logits** by default; scikit-learn's
``log_loss`` takes probabilities, which is ``log_loss(p, y, from_logits=False)``
(or ``losses.get("log_loss", from_logits=False)``).
"""


def focal(
    outputs: jax.typing.ArrayLike,
    targets: jax.typing.ArrayLike,
    *,
    alpha: float | None = 0.25,
    gamma: float = 2.0,
    from_logits: bool = True,
    epsilon: float = _EPSILON,
    weights: jax.typing.ArrayLike | None = None,
    reduction: str = "mean",
) -> jax.Array:
    """Sigmoid focal loss (Lin et al. 2017), per element (``optax.losses.sigmoid_focal_loss``).

    Binary cross-entropy that down-weights easy examples, for dense detection
    and strong class imbalance. With ``p = sigmoid(outputs)``,
    ``p_t = p * t + (1 - p) * (1 - t)`` and ``alpha_t = alpha * t + (1 - alpha) * (1 - t)``::

        focal = alpha_t * (1 - p_t) ** gamma * binary_cross_entropy(outputs, t)

    the formula of ``torchvision.ops.sigmoid_focal_loss`` (whose ``alpha=-1``
    is ``alpha=None`` here: no class weighting), reduced with the weighted mean.
    ``gamma=0, alpha=None`` is :func:`binary_cross_entropy`.

    Args:
        outputs: logits (or probabilities with ``from_logits=False``), any shape.
        targets: the same shape; 0/1 labels (bool, int or float) or soft labels in ``[0, 1]``.
        alpha: the weight of the positive class in ``[0, 1]`` (negatives get
            ``1 - alpha``), or ``None`` for no weighting. Default 0.25, as the paper.
        gamma: the focusing exponent, ``>= 0``. Default 2, as the paper.
        from_logits: whether ``outputs`` are logits (``True``, the default) or
            probabilities (``False``, clipped to ``[epsilon, 1 - epsilon]``).
        epsilon: the clipping of probabilities (unused for logits).
        weights: optional per-example weights or mask (see :func:`weighted_mean`).
        reduction: ``"mean"`` (weighted mean, the default), ``"sum"`` or ``"none"``
            (the weighted per-example losses), see :func:`weighted_mean`.

    Raises:
        ValueError: for ``alpha`` outside ``[0, 1]``, a negative ``gamma``, or
            mismatched shapes.
        TypeError: if ``from_logits`` is not a bool.

    Examples:
        >>> focal(jnp.array([2.0, -1.0]), jnp.array([1, 0]))
        Array(0.0087..., dtype=float32)
        >>> focal(jnp.array([2.0, -1.0]), jnp.array([1, 0]), alpha=None, gamma=0.0)
        Array(0.2200..., dtype=float32)
    """
    name = "focal"
    _check_flag(name, from_logits)
    if alpha is not None:
        _check_range(name, "alpha", alpha, 0.0, 1.0)
    _check_range(name, "gamma", gamma, 0.0, float("inf"))
    outputs = _outputs(name, outputs)
    targets = _numeric_targets(name, targets, outputs.dtype)
    _same_shape(name, outputs, targets)
    if from_logits:
        logits = outputs
    else:
        _check_range(name, "epsilon", epsilon, 0.0, 0.5, open_low=True)
        p = jnp.clip(outputs, epsilon, 1.0 - epsilon)
        logits = jnp.log(p) - jnp.log1p(-p)
    per_element = optax.losses.sigmoid_focal_loss(logits, targets, alpha=alpha, gamma=gamma)
    return weighted_mean(per_element, weights, name=name, reduction=reduction)


# ----------------------------------------------------------------------------- categorical


def categorical_cross_entropy(
    outputs: jax.typing.ArrayLike,
    targets: jax.typing.ArrayLike,
    *,
    from_logits: bool = True,
    label_smoothing: float = 0.0,
    epsilon: float = _EPSILON,
    weights: jax.typing.ArrayLike | None = None,
    reduction: str = "mean",
) -> jax.Array:
    """Cross-entropy against one-hot or probability targets.

    Wraps ``optax.losses.softmax_cross_entropy``.

    ``outputs`` are **logits** by default (as every classification loss here);
    with ``from_logits=False`` they are probabilities (after a softmax),
    clipped to ``[epsilon, 1]`` and renormalised. For integer class labels use
    :func:`sparse_categorical_cross_entropy`.

    Args:
        outputs: logits (or probabilities) of shape ``(..., num_classes)``.
        targets: one-hot or probability targets of the same shape.
        from_logits: whether ``outputs`` are logits (the default) or probabilities.
        label_smoothing: ``alpha`` in ``[0, 1]``: targets become
            ``(1 - alpha) * targets + alpha / num_classes`` (``optax.losses.smooth_labels``).
        epsilon: the clipping of probabilities (unused for logits).
        weights: optional weights over the leading axes of ``outputs.shape[:-1]``.
        reduction: ``"mean"`` (weighted mean, the default), ``"sum"`` or ``"none"``
            (the weighted per-example losses), see :func:`weighted_mean`.

    Returns:
        The weighted mean over examples of ``-sum(targets * log_softmax(outputs))``.

    Raises:
        ValueError: for integer labels (use the sparse loss), a wrong number of
            classes, or a bad ``label_smoothing``.
        TypeError: if ``from_logits`` is not a bool.

    Examples:
        >>> logits = jnp.array([[2.0, 0.0, -1.0]])
        >>> categorical_cross_entropy(logits, jnp.array([[1.0, 0.0, 0.0]]))
        Array(0.1698..., dtype=float32)
        >>> categorical_cross_entropy(logits, jnp.array([[1.0, 0.0, 0.0]]), label_smoothing=0.1)
        Array(0.3365..., dtype=float32)
    """
    name = "categorical_cross_entropy"
    _check_flag(name, from_logits)
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
    return weighted_mean(per_example, weights, name=name, reduction=reduction)


def sparse_categorical_cross_entropy(
    outputs: jax.typing.ArrayLike,
    targets: jax.typing.ArrayLike,
    *,
    from_logits: bool = True,
    label_smoothing: float = 0.0,
    epsilon: float = _EPSILON,
    weights: jax.typing.ArrayLike | None = None,
    reduction: str = "mean",
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
        from_logits: whether ``outputs`` are logits (the default) or probabilities.
        label_smoothing: ``alpha`` in ``[0, 1]``: the one-hot target becomes
            ``(1 - alpha) * one_hot + alpha / num_classes``, as
            :func:`categorical_cross_entropy` and PyTorch's
            ``cross_entropy(..., label_smoothing=alpha)``.
        epsilon: the clipping of probabilities (unused for logits).
        weights: optional weights or mask of shape ``targets.shape[:k]``.
        reduction: ``"mean"`` (weighted mean, the default), ``"sum"`` or ``"none"``
            (the weighted per-example losses), see :func:`weighted_mean`.

    Raises:
        TypeError: for float labels, or a ``from_logits`` that is not a bool.
        ValueError: for labels with a trailing axis of 1, one-hot labels, or a
            bad ``label_smoothing``.

    Examples:
        >>> logits = jnp.array([[2.0, 0.0, -1.0], [0.0, 3.0, 0.0]])
        >>> sparse_categorical_cross_entropy(logits, jnp.array([0, 1]))
        Array(0.1323..., dtype=float32)
        >>> sparse_categorical_cross_entropy(logits, jnp.array([0, 1]), label_smoothing=0.1)
        Array(0.3157..., dtype=float32)
        >>> sparse_categorical_cross_entropy(logits, jnp.array([[0], [1]]))
        Traceback (most recent call last):
        ...
        ValueError: sparse_categorical_cross_entropy: expected integer `targets` of shape ...
    """
    name = "sparse_categorical_cross_entropy"
    _check_flag(name, from_logits)
    _check_range(name, "label_smoothing", label_smoothing, 0.0, 1.0)
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
    if not isinstance(label_smoothing, (int, float)) or label_smoothing != 0:
        # (1 - a) * nll + a * mean over classes of -log p: the smoothed one-hot target.
        uniform = -jnp.mean(jax.nn.log_softmax(logits, axis=-1), axis=-1)
        per_example = (1 - label_smoothing) * per_example + label_smoothing * uniform
    return weighted_mean(per_example, weights, name=name, reduction=reduction)


def kl_divergence(
    outputs: jax.typing.ArrayLike,
    targets: jax.typing.ArrayLike,
    *,
    from_logits: bool = True,
    epsilon: float = _EPSILON,
    weights: jax.typing.ArrayLike | None = None,
    reduction: str = "mean",
) -> jax.Array:
    """KL divergence ``KL(targets || predicted)`` over the last axis.

    Wraps ``optax.losses.kl_divergence``.

    Per example ``sum(t * (log t - log p))`` with ``0 * log 0 = 0``; ``p`` is
    ``softmax(outputs)`` for logits (the default) or ``clip(outputs, epsilon, 1)``
    for probabilities (``from_logits=False``).

    Args:
        outputs: logits (or probabilities) of shape ``(..., num_classes)``.
        targets: probabilities of the same shape.
        from_logits: whether ``outputs`` are logits (the default) or probabilities.
        epsilon: the clipping of probabilities (unused for logits).
        weights: optional weights over the leading axes of ``outputs.shape[:-1]``.
        reduction: ``"mean"`` (weighted mean, the default), ``"sum"`` or ``"none"``
            (the weighted per-example losses), see :func:`weighted_mean`.

    Examples:
        >>> kl_divergence(jnp.log(jnp.array([[0.5, 0.5]])), jnp.array([[0.5, 0.5]]))
        Array(0., dtype=float32)
        >>> kl_divergence(jnp.array([[0.9, 0.1]]), jnp.array([[0.5, 0.5]]), from_logits=False)
        Array(0.5108..., dtype=float32)
    """
    name = "kl_divergence"
    _check_flag(name, from_logits)
    outputs = _outputs(name, outputs, min_ndim=1)
    targets = _numeric_targets(name, targets, outputs.dtype)
    _same_shape(name, outputs, targets)
    log_p = _log_probs(outputs, from_logits, epsilon)
    per_example = optax.losses.kl_divergence(log_p, targets)
    return weighted_mean(per_example, weights, name=name, reduction=reduction)
