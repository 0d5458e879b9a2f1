"""Checks shared by the sequence layers (attention, positional encodings, Transformer).

The dict convention of their inputs (:func:`~funcnet.combinators.split_inputs`)
lives in :mod:`funcnet.combinators`.
"""

from __future__ import annotations

import jax.numpy as jnp

from funcnet._checks import array_of, check_floating, fmt_shape
from funcnet.core import LayerError


def sequence_of(x, what: str = "'x'") -> tuple[tuple[int, ...], jnp.dtype]:
    """Shape and dtype of a floating ``(N, T, D)`` array; LayerError otherwise."""
    shape, dtype = array_of(x, what)
    if len(shape) != 3:
        raise LayerError(
            f"expected {what} of shape (N, T, D) (batch, time, features), got shape "
            f"{fmt_shape(shape)}."
        )
    check_floating(dtype, what)
    return shape, dtype


def at_least_float32(dtype) -> jnp.dtype:
    """The dtype to compute softmaxes and angles in: ``dtype``, but at least float32."""
    dtype = jnp.dtype(dtype)
    return dtype if dtype.itemsize > 4 else jnp.dtype(jnp.float32)
