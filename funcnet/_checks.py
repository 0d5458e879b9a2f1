"""One home for argument checks and the formatting of shapes in messages.

Constructors check their hyperparameters at once (``ValueError`` for values,
``TypeError`` for types) with one wording everywhere, e.g.
``"Dense: `features` must be an int >= 1, got 0."``; layers check their inputs
with :func:`array_of`/:func:`check_floating` and raise :class:`LayerError`.
Every part of funcnet (layers, combinators, data, training, persistence)
uses these instead of writing the checks out.

Examples:
    >>> check_positive_int("Dense", "features", 3)
    3
    >>> check_positive_int("Dense", "features", 0)
    Traceback (most recent call last):
    ...
    ValueError: Dense: `features` must be an int >= 1, got 0.
    >>> fmt_shape((2, 3))
    '(2, 3)'
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from funcnet.core import LayerError, spec_of

__all__ = [
    "array_of",
    "as_tuple",
    "check_bool",
    "check_floating",
    "check_floating_dtype",
    "check_number",
    "check_positive_int",
    "check_rate",
    "compute_dtype",
    "fmt_shape",
    "fmt_spec",
    "is_int",
]


def is_int(value: Any) -> bool:
    """Whether ``value`` is a Python or numpy integer (bools are not).

    Examples:
        >>> is_int(3), is_int(np.int64(3)), is_int(True), is_int(3.0)
        (True, True, False, False)
    """
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def check_positive_int(owner: str, name: str, value: Any, *, allow_zero: bool = False) -> int:
    """``value`` as an ``int`` when it is an integer >= 1 (>= 0 with ``allow_zero``).

    Args:
        owner: who checks, the start of the message (``"Dense"``).
        name: the argument's name.
        value: the value given.
        allow_zero: accept 0 too.

    Returns:
        ``int(value)``.

    Raises:
        ValueError: ``"<owner>: `<name>` must be an int >= <low>, got <value>."``
            for anything else (bools, floats, smaller ints).

    Examples:
        >>> check_positive_int("repeat", "n", np.int32(4))
        4
        >>> check_positive_int("pad", "width", 0, allow_zero=True)
        0
        >>> check_positive_int("repeat", "n", True)
        Traceback (most recent call last):
        ...
        ValueError: repeat: `n` must be an int >= 1, got True.
    """
    low = 0 if allow_zero else 1
    if not is_int(value) or value < low:
        raise ValueError(f"{owner}: `{name}` must be an int >= {low}, got {value!r}.")
    return int(value)


def check_rate(owner: str, name: str, value: Any) -> float:
    """``value`` as a ``float`` when it is a number in ``[0, 1]`` (a dropout rate).

    Raises:
        ValueError: for anything else.

    Examples:
        >>> check_rate("Dropout", "drop_rate", 0.25)
        0.25
        >>> check_rate("Dropout", "drop_rate", 1.5)
        Traceback (most recent call last):
        ...
        ValueError: Dropout: `drop_rate` must be a number in [0, 1], got 1.5.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise ValueError(f"{owner}: `{name}` must be a number in [0, 1], got {value!r}.")
    return float(value)


def check_number(
    owner: str, name: str, value: Any, *, above: float | None = None, finite: bool = False
) -> float:
    """``value`` as a ``float`` when it is a real number (``> above``, finite when asked).

    Args:
        owner, name: as :func:`check_positive_int`.
        value: the value given; Python and numpy ints and floats count, bools do not.
        above: an exclusive lower bound, or ``None``.
        finite: reject infinities and NaN.

    Raises:
        ValueError: ``"<owner>: `<name>` must be a [finite ]number[ > <above>], got <value>."``

    Examples:
        >>> check_number("LayerNorm", "epsilon", 1e-5, above=0, finite=True)
        1e-05
        >>> check_number("RotaryEmbedding", "base", 1, above=1)
        Traceback (most recent call last):
        ...
        ValueError: RotaryEmbedding: `base` must be a number > 1, got 1.
    """
    ok = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(
        value, (bool, np.bool_)
    )
    if ok and finite:
        ok = math.isfinite(value)
    if ok and above is not None:
        ok = value > above
    if not ok:
        what = ("a finite number" if finite else "a number") + (
            f" > {above}" if above is not None else ""
        )
        raise ValueError(f"{owner}: `{name}` must be {what}, got {value!r}.")
    return float(value)


def check_bool(owner: str, name: str, value: Any) -> bool:
    """``value`` as a ``bool`` when it is a Python or numpy bool.

    Raises:
        TypeError: for anything else (also 0 and 1).

    Examples:
        >>> check_bool("RNN", "reverse", np.bool_(True))
        True
        >>> check_bool("RNN", "reverse", 1)
        Traceback (most recent call last):
        ...
        TypeError: RNN: `reverse` must be True or False, got 1.
    """
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{owner}: `{name}` must be True or False, got {value!r}.")
    return bool(value)


def as_tuple(
    owner: str, name: str, value: Any, n: int | None, *, allow_zero: bool = False
) -> tuple[int, ...]:
    """An int or a sequence of ints as a tuple of ``n`` checked ints (``None``: keep the length).

    Args:
        owner, name: as :func:`check_positive_int`.
        value: an int (repeated ``n`` times; once when ``n`` is None) or a
            sequence of ints.
        n: the length wanted, or ``None``.
        allow_zero: accept zeros.

    Raises:
        ValueError: for a wrong length, a non-int entry or one below the bound.

    Examples:
        >>> as_tuple("Conv", "strides", 2, 3)
        (2, 2, 2)
        >>> as_tuple("Conv", "strides", (1, 2), None)
        (1, 2)
        >>> as_tuple("Conv", "strides", (1, 2), 3)
        Traceback (most recent call last):
        ...
        ValueError: Conv: `strides` must have 3 entries, got (1, 2).
    """
    if is_int(value):
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


def check_floating_dtype(owner: str, dtype: Any) -> jnp.dtype | None:
    """``dtype`` as a numpy dtype when it is floating, or ``None``.

    Raises:
        ValueError: for a non-floating dtype.

    Examples:
        >>> check_floating_dtype("LSTMCell", "bfloat16")
        dtype(bfloat16)
        >>> check_floating_dtype("LSTMCell", jnp.int32)
        Traceback (most recent call last):
        ...
        ValueError: LSTMCell: `dtype` must be a floating dtype or None, got int32.
    """
    if dtype is None:
        return None
    dt = jnp.dtype(dtype)
    if not jnp.issubdtype(dt, jnp.floating):
        raise ValueError(f"{owner}: `dtype` must be a floating dtype or None, got {dt}.")
    return dt


def array_of(x: Any, what: str = "inputs") -> tuple[tuple[int, ...], jnp.dtype]:
    """The shape and dtype of an array-like; a :class:`LayerError` for anything else.

    Examples:
        >>> array_of(jnp.zeros((2, 3)))
        ((2, 3), dtype('float32'))
        >>> array_of((1, 2))
        Traceback (most recent call last):
        ...
        funcnet.core.LayerError: expected inputs to be a single array, got tuple. ...
    """
    if not hasattr(x, "shape") or not hasattr(x, "dtype"):
        raise LayerError(
            f"expected {what} to be a single array, got {type(x).__name__}. Use `parallel`, "
            "`fanout` or a function to route several arrays."
        )
    return tuple(x.shape), jnp.dtype(x.dtype)


def check_floating(x_dtype: Any, what: str = "inputs") -> None:
    """Raise a :class:`LayerError` unless ``x_dtype`` is a floating dtype.

    Examples:
        >>> check_floating(jnp.float32)
        >>> check_floating(jnp.dtype("int32"), "'x'")
        Traceback (most recent call last):
        ...
        funcnet.core.LayerError: expected floating-point 'x', got dtype int32. ...
    """
    if not jnp.issubdtype(x_dtype, jnp.floating):
        raise LayerError(
            f"expected floating-point {what}, got dtype {x_dtype}. Cast with "
            "`x.astype(jnp.float32)`."
        )


def compute_dtype(x_dtype: Any, param_dtype: Any, dtype: Any) -> jnp.dtype:
    """The dtype a layer computes in: ``dtype`` if given, else promote(inputs, params).

    Integer inputs (e.g. token ids) compute in ``param_dtype``.

    Examples:
        >>> compute_dtype(jnp.bfloat16, jnp.float32, None)
        dtype('float32')
        >>> compute_dtype(jnp.int32, jnp.float32, None), compute_dtype(jnp.float32, jnp.float32,
        ...                                                              jnp.bfloat16)
        (dtype('float32'), dtype(bfloat16))
    """
    if dtype is not None:
        return jnp.dtype(dtype)
    if jnp.issubdtype(x_dtype, jnp.floating):
        with jax.numpy_dtype_promotion("standard"):  # the lattice, also under strict mode
            return jnp.promote_types(x_dtype, param_dtype)
    return jnp.dtype(param_dtype)


def fmt_shape(shape: Sequence[int]) -> str:
    """A shape as messages write it: ``(2, 3)`` (numpy ints as plain ints).

    Examples:
        >>> fmt_shape(np.zeros((2, 3)).shape), fmt_shape([np.int64(4)])
        ('(2, 3)', '(4,)')
    """
    return str(tuple(int(d) for d in shape))


def fmt_spec(tree: Any) -> str:
    """The dtypes and shapes of a pytree of arrays or specs: ``float32[2, 3]`` for one array.

    Examples:
        >>> fmt_spec(jnp.zeros((2, 3)))
        'float32[2, 3]'
        >>> fmt_spec({"x": jnp.zeros(2, jnp.int32)})
        "{'x': 'int32[2]'}"
    """
    leaves = jax.tree.leaves(spec_of(tree))
    if len(leaves) == 1 and not isinstance(tree, (tuple, list, dict)):
        return f"{leaves[0].dtype}{list(leaves[0].shape)}"
    return str(jax.tree.map(lambda s: f"{s.dtype}{list(s.shape)}", spec_of(tree)))
