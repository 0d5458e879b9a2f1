"""Positional information for sequences: rotary (RoPE), sinusoidal and learned.

Inputs are batch-major ``(N, T, D)`` arrays, or the sequence dict of
:mod:`funcnet.combinators` (``"x"`` changed, the other entries passed
through).

**Decoding.** A model that generates one token after another keeps, in its
``state``, where each row of the batch has got to: a :class:`Positions` per
layer that needs it (the positional layers here, and the KV cache of
:func:`~funcnet.layers.attention.MultiHeadAttention`). Such state is made by
:func:`funcnet.init_cache`, which runs the model's ``init`` inside
:func:`requesting_cache`; a layer whose ``init`` sees a :func:`cache_request`
returns its decoding state, and its ``apply``, given that state, reads the
positions of the new tokens from it and advances them.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from funcnet import initializers
from funcnet._checks import (
    array_of,
    check_floating,
    check_number,
    check_positive_int,
    fmt_shape,
)
from funcnet.combinators import replace_x, split_inputs
from funcnet.core import Layer, LayerError, declare, stateless
from funcnet.layers._sequence import at_least_float32, sequence_of

__all__ = [
    "CacheRequest",
    "PositionalEmbedding",
    "Positions",
    "RotaryEmbedding",
    "SinusoidalEncoding",
    "apply_rope",
    "cache_request",
    "requesting_cache",
    "sinusoidal_encoding",
]


# ---------------------------------------------------------------------------------------------
# Decoding: positions per row


class CacheRequest(NamedTuple):
    """What :func:`funcnet.init_cache` asks of the layers: decoding state for ``max_len`` positions.

    Attributes:
        max_len: the number of positions the state must hold (the longest
            prompt plus the tokens to generate).
        dtype: the dtype of cached keys and values; ``None``: each layer's
            computation dtype.
    """

    max_len: int
    dtype: Any = None


_REQUESTS = threading.local()


@contextlib.contextmanager
def requesting_cache(request: CacheRequest) -> Iterator[CacheRequest]:
    """Within this context, the ``init`` of a layer that decodes returns its decoding state.

    Only :func:`funcnet.init_cache` needs this; it traces the model's ``init``
    (with a function object of its own, so no trace cached outside the
    context is reused).

    Examples:
        >>> with requesting_cache(CacheRequest(8)):
        ...     cache_request()
        CacheRequest(max_len=8, dtype=None)
        >>> cache_request() is None
        True
    """
    stack = getattr(_REQUESTS, "stack", None)
    if stack is None:
        stack = _REQUESTS.stack = []
    stack.append(request)
    try:
        yield request
    finally:
        stack.pop()


def cache_request() -> CacheRequest | None:
    """The innermost :func:`requesting_cache` request, or ``None`` outside one."""
    stack = getattr(_REQUESTS, "stack", None)
    return stack[-1] if stack else None


@jax.tree_util.register_pytree_node_class
class Positions:
    """Where each row of a decoding batch has got to: a pytree, part of a layer's ``state``.

    ``index`` ``(N,)`` int32 is the number of tokens each row has seen so far,
    i.e. the position of its next token; ``max_len`` (static, not a leaf) is
    the number of positions the state holds. A layer that receives ``T`` new
    tokens gives them positions ``index[:, None] + arange(T)`` (:meth:`take`)
    and returns ``advance(T)``. Rows are **right-padded**: row ``i``'s tokens
    sit at positions ``0 .. index[i] - 1``, with no gaps, so RoPE and learned
    positions see the same numbers as in a full forward pass.

    Examples:
        >>> import jax.numpy as jnp
        >>> p = Positions(jnp.array([0, 3], jnp.int32), max_len=8)
        >>> p.take(2)
        Array([[0, 1],
               [3, 4]], dtype=int32)
        >>> p.advance(2).index, p.advance(2).max_len
        (Array([2, 5], dtype=int32), 8)
    """

    __slots__ = ("index", "max_len")

    def __init__(self, index: jax.Array, max_len: int):
        self.index = index
        self.max_len = max_len

    def take(self, t: int) -> jax.Array:
        """The positions ``(N, t)`` of ``t`` new tokens."""
        return self.index[..., None] + jnp.arange(t, dtype=jnp.int32)

    def advance(self, t: int) -> Positions:
        """These positions after ``t`` new tokens."""
        return Positions(self.index + jnp.int32(t), self.max_len)

    def tree_flatten(self):
        return (self.index,), self.max_len

    @classmethod
    def tree_unflatten(cls, max_len, leaves):
        return cls(leaves[0], max_len)

    def __repr__(self) -> str:
        return f"Positions(index={self.index!r}, max_len={self.max_len})"

    @classmethod
    def zeros(cls, batch: int, max_len: int) -> Positions:
        """Positions of ``batch`` empty rows."""
        return cls(jnp.zeros((batch,), jnp.int32), max_len)


def _decoding(state: Any, batch: int, t: int) -> Positions | None:
    """``state`` as :class:`Positions` when the layer is decoding (else ``None``), checked."""
    if not isinstance(state, Positions):
        return None
    rows = jnp.shape(state.index)[-1]
    if rows != batch:
        raise LayerError(
            f"the decoding state holds positions for {rows} rows, got inputs of {batch} rows. "
            "Make the state with `funcnet.init_cache` for inputs of this batch size."
        )
    if t > state.max_len:
        raise LayerError(
            f"got {t} new tokens for a decoding state of `max_len={state.max_len}` positions. "
            "Make the state with `funcnet.init_cache` and a larger `max_len`."
        )
    return state


# ---------------------------------------------------------------------------------------------
# Rotary position embeddings


def _check_base(owner: str, base) -> float:
    return check_number(owner, "base", base, above=1)


def apply_rope(
    x: jax.typing.ArrayLike,
    positions: jax.typing.ArrayLike | None = None,
    *,
    base: float = 10000.0,
    max_len: int | None = None,
) -> jax.Array:
    """Rotary position embedding (RoPE, Su et al. 2021) of batch-major ``x`` ``(N, T, ..., D)``.

    The last axis (``D`` even) is split into **two halves** ``[x1, x2]``
    (the "rotate-half" layout of GPT-NeoX and Hugging Face LLaMA, not the
    interleaved pairs of the paper) and pair ``i`` is rotated by the angle
    ``p * base**(-2i/D)`` at position ``p``::

        out = [x1 * cos - x2 * sin,  x2 * cos + x1 * sin]

    Applied to queries and keys, the dot product of a query at position ``m``
    and a key at ``n`` depends only on ``n - m``.

    Args:
        x: ``(N, T, D)`` or ``(N, T, H, D)`` (any axes between time and the
            last are broadcast over).
        positions: ``(T,)`` or ``(N, T)`` positions; default ``0 .. T-1``.
        base: the frequency base.
        max_len: with traced ``positions`` (under ``jit``, e.g. while
            decoding), a bound on them: the angles are then looked up in a
            table of ``max_len`` rows computed in float64, so they equal those
            of static positions exactly (without it they are computed in
            float32 from the traced positions). Positions outside ``[0,
            max_len)`` give NaN.

    Returns:
        An array of ``x``'s shape and dtype (computed in at least float32).

    Examples:
        >>> import jax.numpy as jnp
        >>> x = jnp.ones((1, 3, 2))
        >>> apply_rope(x)[0]  # position 0 unchanged; then rotations by 1 and 2 radians
        Array([[ 1.        ,  1.        ],
               [-0.30116868,  1.3817732 ],
               [-1.3254442 ,  0.49315056]], dtype=float32)
    """
    x = jnp.asarray(x)
    base = _check_base("apply_rope", base)
    if max_len is not None:
        max_len = check_positive_int("apply_rope", "max_len", max_len)
    if x.ndim < 3 or x.shape[-1] % 2:
        raise ValueError(
            f"apply_rope: expected x of shape (N, T, ..., D) with an even D, got shape {x.shape}."
        )
    n, t, d = x.shape[0], x.shape[1], x.shape[-1]
    ct = at_least_float32(x.dtype)
    inv_freq = base ** (-np.arange(d // 2, dtype=np.float64) * 2.0 / d)
    static = positions is None or isinstance(positions, np.ndarray)
    pos = np.arange(t) if positions is None else positions if static else jnp.asarray(positions)
    if pos.ndim not in (1, 2) or pos.shape[-1] != t or (pos.ndim == 2 and pos.shape[0] != n):
        raise ValueError(
            f"apply_rope: expected positions of shape ({t},) or ({n}, {t}), got {pos.shape}."
        )
    if static:  # exact angles, computed in float64 at trace time
        angles = np.asarray(pos, np.float64)[..., None] * inv_freq
        cos, sin = jnp.asarray(np.cos(angles), ct), jnp.asarray(np.sin(angles), ct)
    elif max_len is not None:  # the same exact angles, looked up
        angles = np.arange(max_len, dtype=np.float64)[:, None] * inv_freq
        cos, sin = (
            jnp.take(jnp.asarray(table, ct), pos, axis=0, mode="fill", fill_value=np.nan)
            for table in (np.cos(angles), np.sin(angles))
        )
    else:
        angles = pos.astype(ct)[..., None] * jnp.asarray(inv_freq, ct)
        cos, sin = jnp.cos(angles), jnp.sin(angles)
    if cos.ndim == 2:
        cos, sin = cos[None], sin[None]
    extra = (1,) * (x.ndim - 3)
    cos = cos.reshape(cos.shape[0], t, *extra, d // 2)
    sin = sin.reshape(sin.shape[0], t, *extra, d // 2)
    x1, x2 = jnp.split(x.astype(ct), 2, axis=-1)
    out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return out.astype(x.dtype)


def RotaryEmbedding(*, base: float = 10000.0) -> Layer:
    """:func:`apply_rope` as a layer, for queries/keys in a user-written attention.

    Inputs ``(N, T, ..., D)`` with ``D`` even (or the dict form, ``"x"``
    rotated and the other entries passed through); outputs the same shape.
    No params, state or key. Inside :func:`MultiHeadAttention` pass
    ``rope=True`` instead: RoPE must rotate the projected queries and keys,
    not the layer's input.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> rope = RotaryEmbedding()
        >>> q = jnp.ones((2, 5, 4, 8))  # (N, T, H, K)
        >>> params, state = rope.init(jax.random.key(0), q)
        >>> rope.apply(params, state, q)[0].shape
        (2, 5, 4, 8)
    """
    base = _check_base("RotaryEmbedding", base)

    def check(inputs):
        entries, is_dict = split_inputs(inputs)
        shape, dtype = array_of(entries["x"], "'x'")
        check_floating(dtype, "'x'")
        if len(shape) < 3 or shape[-1] % 2:
            raise LayerError(
                f"expected 'x' of shape (N, T, ..., D) with an even D, got shape "
                f"{fmt_shape(shape)}."
            )
        return entries, is_dict

    def forward(inputs):
        entries, is_dict = check(inputs)
        return replace_x(inputs, is_dict, apply_rope(entries["x"], base=base))

    name = "RotaryEmbedding" if base == 10000.0 else f"RotaryEmbedding({base})"
    return stateless(name, forward, check)


# ---------------------------------------------------------------------------------------------
# Absolute positions: learned and sinusoidal


def _sinusoid_table(length: int, features: int, base: float) -> np.ndarray:
    pos = np.arange(length, dtype=np.float64)[:, None]
    i = np.arange(0, features, 2, dtype=np.float64)  # 2i
    angles = pos / base ** (i / features)
    table = np.zeros((length, features), np.float64)
    table[:, 0::2] = np.sin(angles)
    table[:, 1::2] = np.cos(angles[:, : features // 2])
    return table


def sinusoidal_encoding(
    length: int, features: int, *, base: float = 10000.0, dtype=jnp.float32
) -> jax.Array:
    """The sinusoidal position table of Vaswani et al. (2017), interleaved, ``(length, features)``.

    ``PE[p, 2i] = sin(p / base**(2i/features))`` and
    ``PE[p, 2i+1] = cos(p / base**(2i/features))``: sines on even features,
    cosines on odd ones (the paper's interleaved layout; some libraries
    concatenate all sines, then all cosines). Computed in float64, then cast.

    Examples:
        >>> sinusoidal_encoding(3, 4)
        Array([[ 0.        ,  1.        ,  0.        ,  1.        ],
               [ 0.84147096,  0.5403023 ,  0.00999983,  0.99995   ],
               [ 0.9092974 , -0.41614684,  0.01999867,  0.9998    ]], dtype=float32)
    """
    length = check_positive_int("sinusoidal_encoding", "length", length)
    features = check_positive_int("sinusoidal_encoding", "features", features)
    base = _check_base("sinusoidal_encoding", base)
    return jnp.asarray(_sinusoid_table(length, features, base), dtype)


def _positional_input(inputs, max_len):
    entries, is_dict = split_inputs(inputs)
    shape, dtype = sequence_of(entries["x"])
    if max_len is not None and shape[1] > max_len:
        raise LayerError(
            f"the sequence is longer than `max_len={max_len}`: 'x' has shape "
            f"{fmt_shape(shape)} (T={shape[1]}). Build the layer with a larger `max_len`, or "
            "cut the sequences."
        )
    return entries, is_dict, shape, dtype


def _decoding_state(batch: int, table_len: int | None) -> Positions | tuple:
    """A positional layer's state: ``()``, or :class:`Positions` inside :func:`requesting_cache`."""
    request = cache_request()
    if request is None:
        return ()
    if table_len is not None and request.max_len > table_len:
        raise LayerError(
            f"a decoding state of `max_len={request.max_len}` positions needs positions up to "
            f"{request.max_len - 1}, but the layer has `max_len={table_len}`. Build the model "
            f"with `max_len >= {request.max_len}`, or decode at most {table_len} positions "
            "(prompt plus new tokens)."
        )
    return Positions.zeros(batch, request.max_len)


def _rows(table: jax.Array, positions: Positions | None, t: int) -> jax.Array:
    """Rows ``0 .. t-1`` of ``table``, or the rows at the decoding positions ``(N, t, D)``."""
    if positions is None:
        return table[:t]
    return jnp.take(table, positions.take(t), axis=0, mode="fill", fill_value=np.nan)


def SinusoidalEncoding(max_len: int | None = None, *, base: float = 10000.0) -> Layer:
    """Add the fixed sinusoidal position table (:func:`sinusoidal_encoding`) to ``x``.

    Inputs ``(N, T, D)`` (or the dict form: ``"x"`` changed, other entries
    passed through); outputs the same shape and dtype, ``x + PE[:T]``. No
    params or key; no state, except while decoding (the :class:`Positions`
    made by :func:`funcnet.init_cache`: new tokens get the rows of their
    positions). ``x`` is not rescaled (the paper multiplies the
    embeddings by ``sqrt(D)`` first; do that in the model if wanted).

    Args:
        max_len: optional longest sequence accepted (``None``: any length).
        base: the frequency base (10000 in the paper).

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> enc = SinusoidalEncoding()
        >>> params, state = enc.init(jax.random.key(0), jnp.zeros((2, 3, 4)))
        >>> params
        ()
        >>> enc.apply(params, state, jnp.zeros((2, 3, 4)))[0][0, 1]
        Array([0.84147096, 0.5403023 , 0.00999983, 0.99995   ], dtype=float32)
    """
    if max_len is not None:
        max_len = check_positive_int("SinusoidalEncoding", "max_len", max_len)
    base = _check_base("SinusoidalEncoding", base)

    def init(key, inputs):
        del key
        _, _, shape, _ = _positional_input(inputs, max_len)
        return (), _decoding_state(shape[0], max_len)

    def apply(params, state, inputs, *, key=None, train=False):
        del params, key, train
        entries, is_dict, (n, t, d), dtype = _positional_input(inputs, max_len)
        positions = _decoding(state, n, t)
        rows = t if positions is None else positions.max_len
        table = jnp.asarray(_sinusoid_table(rows, d, base), dtype)
        y = entries["x"] + _rows(table, positions, t)
        return replace_x(inputs, is_dict, y), state if positions is None else positions.advance(t)

    return Layer(init, apply, "SinusoidalEncoding" + (f"({max_len})" if max_len else ""))


def PositionalEmbedding(
    max_len: int,
    *,
    w_init: str | initializers.Initializer | None = None,
    param_dtype=jnp.float32,
) -> Layer:
    """Add a learned position table to ``x``: ``x + table[:T]``.

    Inputs ``(N, T, D)`` with ``T <= max_len`` (or the dict form: ``"x"``
    changed, other entries passed through); outputs the same shape and dtype
    (the table is cast to ``x``'s dtype). Params ``{"table": (max_len, D)}``
    (axes named ``("position", "embed")``),
    default init normal with stddev 0.02 (as BERT and GPT-2); no key; no
    state, except while decoding (the :class:`Positions` made by
    :func:`funcnet.init_cache`, whose ``max_len`` must not exceed this one's:
    new tokens get the rows of their positions).

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> pos = PositionalEmbedding(16)
        >>> params, state = pos.init(jax.random.key(0), jnp.zeros((2, 10, 8)))
        >>> jax.tree.map(jnp.shape, params)
        {'table': (16, 8)}
        >>> pos.apply(params, state, jnp.zeros((2, 10, 8)))[0].shape
        (2, 10, 8)
    """
    max_len = check_positive_int("PositionalEmbedding", "max_len", max_len)
    table_init = initializers.get(
        w_init if w_init is not None else initializers.normal(stddev=0.02)
    )

    def init(key, inputs):
        _, _, shape, _ = _positional_input(inputs, max_len)
        table = table_init(key, (max_len, shape[2]), param_dtype)
        return {"table": declare(table, ("position", "embed"))}, _decoding_state(shape[0], max_len)

    def apply(params, state, inputs, *, key=None, train=False):
        del key, train
        entries, is_dict, shape, dtype = _positional_input(inputs, max_len)
        table = params["table"]
        if table.shape[1] != shape[2]:
            raise LayerError(
                f"expected 'x' with {table.shape[1]} features (the table's width), got shape "
                f"{fmt_shape(shape)}."
            )
        positions = _decoding(state, shape[0], shape[1])
        y = entries["x"] + _rows(table, positions, shape[1]).astype(dtype)
        return replace_x(inputs, is_dict, y), state if positions is None else positions.advance(
            shape[1]
        )

    return Layer(init, apply, f"PositionalEmbedding({max_len})")
