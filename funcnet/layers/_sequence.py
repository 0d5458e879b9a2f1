"""The dict convention of the sequence layers (attention, positional encodings, Transformer).

Layers that take several arrays take them as one dict with fixed keys (see
:mod:`funcnet.layers.attention`); a plain array means ``{"x": array}``.
"""

from __future__ import annotations

from collections.abc import Mapping

import jax.numpy as jnp

from funcnet.core import LayerError
from funcnet.layers._util import array_of, check_floating, fmt_shape

INPUT_KEYS = ("x", "memory", "mask", "memory_mask")


def split_inputs(inputs, allowed=INPUT_KEYS, *, require=("x",)) -> tuple[dict, bool]:
    """``(entries, is_dict)``: a plain array as ``{"x": array}``; ``None`` entries dropped.

    Raises a bare :class:`LayerError` for anything but an array or a dict, for
    keys outside ``allowed`` and for missing ``require``-d keys.
    """
    if isinstance(inputs, Mapping):
        unknown = sorted((str(k) for k in inputs if k not in allowed), key=str)
        if unknown:
            raise LayerError(
                f"unknown input keys {unknown}; this layer accepts a dict with keys "
                f"{list(allowed)} (or a plain array for 'x')."
            )
        entries = {k: v for k, v in inputs.items() if v is not None}
        missing = [k for k in require if k not in entries]
        if missing:
            raise LayerError(
                f"the input dict needs the keys {missing}, got keys {sorted(entries)}; "
                f"accepted keys: {list(allowed)}."
            )
        return entries, True
    if hasattr(inputs, "shape") and hasattr(inputs, "dtype"):
        if "x" not in require or len(require) > 1:
            raise LayerError(
                f"expected a dict with keys {list(require)} (accepted keys: {list(allowed)}), "
                f"got a single array of shape {fmt_shape(inputs.shape)}."
            )
        return {"x": inputs}, False
    raise LayerError(
        f"expected an array (N, T, D) or a dict with keys {list(allowed)}, got "
        f"{type(inputs).__name__}."
    )


def replace_x(inputs, is_dict: bool, y):
    """The output for ``inputs``: ``y`` itself, or the input dict with ``"x"`` replaced."""
    return {**inputs, "x": y} if is_dict else y


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
