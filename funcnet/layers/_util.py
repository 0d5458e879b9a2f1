"""Helpers shared by the layer modules: argument checks and dtype rules."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from funcnet.core import LayerError


def check_positive_int(owner: str, name: str, value, *, allow_zero: bool = False) -> int:
    low = 0 if allow_zero else 1
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(f"{owner}: `{name}` must be an int >= {low}, got {value!r}.")
    return int(value)


def check_rate(owner: str, name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise ValueError(f"{owner}: `{name}` must be a number in [0, 1], got {value!r}.")
    return float(value)


def as_tuple(owner: str, name: str, value, n: int | None, *, allow_zero: bool = False):
    """An int or a sequence of ints as a tuple of length ``n`` (``None``: keep as given)."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        values = (int(value),) * (n or 1)
    elif isinstance(value, Sequence) and not isinstance(value, str):
        values = tuple(value)
        if n is not None and len(values) != n:
            raise ValueError(f"{owner}: `{name}` must have {n} entries, got {value!r}.")
    else:
        raise ValueError(f"{owner}: `{name}` must be an int or a tuple of ints, got {value!r}.")
    for v in values:
        check_positive_int(owner, name, v, allow_zero=allow_zero)
    return tuple(int(v) for v in values)


def array_of(x, what: str = "inputs"):
    """The shape and dtype of an array-like; a clear error for anything else (a tuple, a dict)."""
    if not hasattr(x, "shape") or not hasattr(x, "dtype"):
        raise LayerError(
            f"expected {what} to be a single array, got {type(x).__name__}. Use `parallel`, "
            "`fanout` or a function to route several arrays."
        )
    return tuple(x.shape), jnp.dtype(x.dtype)


def check_floating(x_dtype, what: str = "inputs") -> None:
    if not jnp.issubdtype(x_dtype, jnp.floating):
        raise LayerError(
            f"expected floating-point {what}, got dtype {x_dtype}. Cast with "
            "`x.astype(jnp.float32)`."
        )


def compute_dtype(x_dtype, param_dtype, dtype):
    """The dtype a layer computes in: ``dtype`` if given, else promote(inputs, params)."""
    if dtype is not None:
        return jnp.dtype(dtype)
    if jnp.issubdtype(x_dtype, jnp.floating):
        with jax.numpy_dtype_promotion("standard"):  # the lattice, also under strict mode
            return jnp.promote_types(x_dtype, param_dtype)
    return jnp.dtype(param_dtype)


def fmt_shape(shape) -> str:
    return str(tuple(int(d) for d in shape))
