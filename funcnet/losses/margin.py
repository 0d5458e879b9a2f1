"""Margin losses on raw scores: hinge and squared hinge (Keras semantics)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from funcnet.losses._base import _numeric_targets, _outputs, _same_shape, weighted_mean

__all__ = ["hinge", "squared_hinge"]


def _signed_labels(name: str, targets: jax.Array, weights) -> jax.Array:
    """Targets in {-1, 1}, converting {0, 1} labels with ``2 * t - 1`` as Keras does.

    Only the entries with a non-zero weight count (padding may hold anything).
    Concrete targets are checked on the host; traced ones are converted when
    every kept entry is 0 or 1 (Keras' ``convert_binary_labels_to_hinge``).
    """
    keep = jnp.ones(targets.shape, bool)
    if weights is not None:
        w = jnp.asarray(weights)
        if w.ndim <= targets.ndim and w.shape == targets.shape[: w.ndim]:
            w = w.reshape(w.shape + (1,) * (targets.ndim - w.ndim))
            keep = jnp.broadcast_to(w.astype(bool), targets.shape)
    try:
        values = np.unique(np.asarray(targets)[np.asarray(keep)]) + 0.0  # no -0.0
    except jax.errors.TracerArrayConversionError:
        values = None
    if values is not None:
        binary, signed = set(values.tolist()) <= {0, 1}, set(values.tolist()) <= {-1, 1}
        if not (binary or signed):
            shown = values[:6].tolist()
            raise ValueError(
                f"{name}: `targets` must be labels in {{-1, 1}} or in {{0, 1}} (converted to "
                f"-1/1), got values {shown}{' ...' if values.size > 6 else ''}; map the two "
                "classes to 0/1 (e.g. `encode_labels`) or to -1/1 with `2 * labels - 1`."
            )
    is_binary = jnp.all(jnp.where(keep, (targets == 0) | (targets == 1), True))
    return jnp.where(is_binary, 2 * targets - 1, targets)


def _margins(name: str, outputs, targets, weights) -> jax.Array:
    outputs = _outputs(name, outputs)
    targets = _numeric_targets(name, targets, outputs.dtype)
    _same_shape(name, outputs, targets)
    return jnp.maximum(1 - _signed_labels(name, targets, weights) * outputs, 0)


def hinge(
    outputs: jax.typing.ArrayLike,
    targets: jax.typing.ArrayLike,
    *,
    weights: jax.typing.ArrayLike | None = None,
    reduction: str = "mean",
) -> jax.Array:
    """Hinge loss per element: ``max(1 - t * outputs, 0)`` (Keras' ``hinge``).

    ``outputs`` are raw scores (a model ending in ``Dense(1)``, no sigmoid), as
    a linear SVM: predict the class with ``sign(outputs)``. ``targets`` are
    labels in ``{-1, 1}``, or in ``{0, 1}``, which are converted to ``-1/1``
    (as Keras does, when every label with a non-zero weight is 0 or 1).
    Unweighted, the result equals Keras' ``hinge`` averaged over the batch.

    Args:
        outputs: scores, any shape, floating point.
        targets: the same shape; labels in ``{-1, 1}`` or ``{0, 1}``.
        weights: optional per-example weights or mask (see :func:`weighted_mean`).
        reduction: ``"mean"`` (weighted mean, the default), ``"sum"`` or ``"none"``
            (the weighted per-example losses), see :func:`weighted_mean`.

    Raises:
        ValueError: for mismatched shapes, or (concrete) targets that are
            neither all in ``{-1, 1}`` nor all in ``{0, 1}``.

    Examples:
        >>> hinge(jnp.array([0.5, -2.0, 0.3]), jnp.array([1, -1, -1]))
        Array(0.6, dtype=float32)
        >>> hinge(jnp.array([0.5, -2.0, 0.3]), jnp.array([1, 0, 0]))  # 0/1 labels
        Array(0.6, dtype=float32)
    """
    name = "hinge"
    return weighted_mean(
        _margins(name, outputs, targets, weights), weights, name=name, reduction=reduction
    )


def squared_hinge(
    outputs: jax.typing.ArrayLike,
    targets: jax.typing.ArrayLike,
    *,
    weights: jax.typing.ArrayLike | None = None,
    reduction: str = "mean",
) -> jax.Array:
    """Squared hinge loss per element: ``max(1 - t * outputs, 0) ** 2`` (Keras' ``squared_hinge``).

    Arguments, labels and errors as :func:`hinge`.

    Examples:
        >>> squared_hinge(jnp.array([0.5, -2.0, 0.3]), jnp.array([1, -1, -1]))
        Array(0.6466..., dtype=float32)
    """
    name = "squared_hinge"
    return weighted_mean(
        jnp.square(_margins(name, outputs, targets, weights)),
        weights,
        name=name,
        reduction=reduction,
    )
