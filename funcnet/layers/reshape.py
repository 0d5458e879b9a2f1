"""Layers that only change the layout of their input: Flatten and Reshape."""

from __future__ import annotations

import math

from funcnet._checks import array_of, fmt_shape
from funcnet.core import Layer, LayerError, stateless

__all__ = ["Flatten", "Reshape"]


def Flatten() -> Layer:
    """Flatten every axis but the leading (batch) one: ``(N, d1, d2, ...) -> (N, d1*d2*...)``.

    No params, state or key.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> Flatten().apply((), (), jnp.zeros((2, 7, 7, 64)))[0].shape
        (2, 3136)
    """

    def check(inputs):
        shape, _ = array_of(inputs)
        if len(shape) < 1:
            raise LayerError("expected inputs with a batch axis, got a scalar.")
        return shape

    def forward(inputs):
        shape = check(inputs)
        return inputs.reshape(shape[0], math.prod(shape[1:]))

    return stateless("Flatten", forward, check)


def Reshape(shape: tuple[int, ...]) -> Layer:
    """Reshape every example (all axes but the leading batch one) to ``shape``.

    One entry may be ``-1`` (inferred), as in Keras' ``Reshape``. No params,
    state or key.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> Reshape((7, 7, -1)).apply((), (), jnp.zeros((2, 98)))[0].shape
        (2, 7, 7, 2)
    """
    if isinstance(shape, int):
        shape = (shape,)
    shape = tuple(shape)
    if not all(isinstance(d, int) and (d > 0 or d == -1) for d in shape) or shape.count(-1) > 1:
        raise ValueError(
            f"Reshape: `shape` must be positive ints with at most one -1, got {shape!r}."
        )
    known = math.prod(d for d in shape if d != -1)

    def target(inputs):
        in_shape, _ = array_of(inputs)
        if len(in_shape) < 1:
            raise LayerError("expected inputs with a batch axis, got a scalar.")
        size = math.prod(in_shape[1:])
        if (-1 in shape and size % known) or (-1 not in shape and size != known):
            raise LayerError(
                f"cannot reshape examples of shape {fmt_shape(in_shape[1:])} ({size} values) "
                f"to {shape}."
            )
        return (in_shape[0], *(size // known if d == -1 else d for d in shape))

    def forward(inputs):
        return inputs.reshape(target(inputs))

    return stateless(f"Reshape({shape})", forward, target)
