"""Regression and similarity losses: squared, absolute, Huber, Poisson, cosine."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
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
    "poisson",
]


def mean_squared_error(
    outputs: jax.typing.ArrayLike,
    targets: jax.typing.ArrayLike,
    *,
    weights: jax.typing.ArrayLike | None = None,
    reduction: str = "mean",
) -> jax.Array:
    """Mean of ``(outputs - targets) ** 2`` over every element (``optax.losses.squared_error``).

    Args:
        outputs: predictions, any shape, floating point.
        targets: the same shape as ``outputs``.
        weights: optional per-example weights or mask over the leading axes
            (see :func:`weighted_mean`).
        reduction: ``"mean"`` (weighted mean, the default), ``"sum"`` or ``"none"``
            (the weighted per-example losses), see :func:`weighted_mean`.

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
    return weighted_mean(
        optax.losses.squared_error(outputs, targets), weights, name=name, reduction=reduction
    )


def mean_absolute_error(
    outputs: jax.typing.ArrayLike,
    targets: jax.typing.ArrayLike,
    *,
    weights: jax.typing.ArrayLike | None = None,
    reduction: str = "mean",
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
    return weighted_mean(jnp.abs(outputs - targets), weights, name=name, reduction=reduction)


def huber(
    outputs: jax.typing.ArrayLike,
    targets: jax.typing.ArrayLike,
    *,
    delta: float = 1.0,
    weights: jax.typing.ArrayLike | None = None,
    reduction: str = "mean",
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
    return weighted_mean(
        optax.losses.huber_loss(outputs, targets, delta=delta),
        weights,
        name=name,
        reduction=reduction,
    )


def poisson(
    outputs: jax.typing.ArrayLike,
    targets: jax.typing.ArrayLike,
    *,
    log_input: bool = False,
    epsilon: float = 1e-7,
    weights: jax.typing.ArrayLike | None = None,
    reduction: str = "mean",
) -> jax.Array:
    """Poisson negative log-likelihood per element, for count targets.

    With ``log_input=False`` (the default, Keras' ``poisson``) ``outputs`` are
    the predicted rates (a model ending in e.g. ``jax.nn.softplus``)::

        outputs - targets * log(outputs + epsilon)

    With ``log_input=True`` (PyTorch's ``poisson_nll_loss`` default) they are
    log-rates (a plain linear output), which is stable for any value::

        exp(outputs) - targets * outputs

    Both leave out the constant ``log(targets!)`` (PyTorch's ``full=False``).

    Args:
        outputs: rates (or log-rates), any shape, floating point.
        targets: the same shape; non-negative counts (int or float).
        log_input: whether ``outputs`` are log-rates.
        epsilon: added to rates inside the log (unused for log-rates), ``>= 0``.
        weights: optional per-example weights or mask (see :func:`weighted_mean`).
        reduction: ``"mean"`` (weighted mean, the default), ``"sum"`` or ``"none"``
            (the weighted per-example losses), see :func:`weighted_mean`.

    Raises:
        ValueError: for mismatched shapes or a negative ``epsilon``.
        TypeError: if ``log_input`` is not a bool.

    Examples:
        >>> poisson(jnp.array([2.0, 0.5]), jnp.array([3.0, 0.0]))
        Array(0.2102..., dtype=float32)
        >>> poisson(jnp.log(jnp.array([2.0, 0.5])), jnp.array([3.0, 0.0]), log_input=True)
        Array(0.2102..., dtype=float32)
    """
    name = "poisson"
    if not isinstance(log_input, (bool, np.bool_)):
        raise TypeError(
            f"{name}: `log_input` must be True (log-rates) or False (rates), got {log_input!r}."
        )
    outputs = _outputs(name, outputs)
    targets = _numeric_targets(name, targets, outputs.dtype)
    _same_shape(name, outputs, targets)
    if log_input:
        per_element = jnp.exp(outputs) - targets * outputs
    else:
        _check_range(name, "epsilon", epsilon, 0.0, float("inf"))
        per_element = outputs - targets * jnp.log(outputs + epsilon)
    return weighted_mean(per_element, weights, name=name, reduction=reduction)


def cosine_similarity(
    outputs: jax.typing.ArrayLike,
    targets: jax.typing.ArrayLike,
    *,
    epsilon: float = 1e-12,
    weights: jax.typing.ArrayLike | None = None,
    reduction: str = "mean",
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
        reduction: ``"mean"`` (weighted mean, the default), ``"sum"`` or ``"none"``
            (the weighted per-example losses), see :func:`weighted_mean`.

    Examples:
        >>> round(float(cosine_similarity(jnp.array([[1.0, 1.0]]), jnp.array([[2.0, 2.0]]))), 6)
        -1.0
    """
    name = "cosine_similarity"
    outputs = _outputs(name, outputs, min_ndim=1)
    targets = _numeric_targets(name, targets, outputs.dtype)
    _same_shape(name, outputs, targets)
    cos = optax.losses.cosine_similarity(outputs, targets, epsilon=epsilon)
    return weighted_mean(-cos, weights, name=name, reduction=reduction)


def cosine_distance(
    outputs: jax.typing.ArrayLike,
    targets: jax.typing.ArrayLike,
    *,
    epsilon: float = 1e-12,
    weights: jax.typing.ArrayLike | None = None,
    reduction: str = "mean",
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
    return weighted_mean(per_example, weights, name=name, reduction=reduction)
