"""Regression and similarity losses: squared, absolute, Huber, cosine."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from funcnet.losses._base import (
    _check_range,
    _numeric_targets,
    _outputs,
    _same_shape,
    weighted_mean,
)

__all__ = [
    "cosine_distance",
    "cosine_similarity",
    "huber",
    "mean_absolute_error",
    "mean_squared_error",
]


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
