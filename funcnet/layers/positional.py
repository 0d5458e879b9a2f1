"""Positional information for sequences: rotary (RoPE), sinusoidal and learned.

Inputs are batch-major ``(N, T, D)`` arrays, or the sequence dict of
:mod:`funcnet.combinators` (``"x"`` changed, the other entries passed
through).
"""

from __future__ import annotations

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
from funcnet.core import Layer, LayerError, stateless
from funcnet.layers._sequence import at_least_float32, sequence_of

__all__ = [
    "PositionalEmbedding",
    "RotaryEmbedding",
    "SinusoidalEncoding",
    "apply_rope",
    "sinusoidal_encoding",
]


# ---------------------------------------------------------------------------------------------
# Rotary position embeddings


def _check_base(owner: str, base) -> float:
    return check_number(owner, "base", base, above=1)


def apply_rope(
    x: jax.typing.ArrayLike,
    positions: jax.typing.ArrayLike | None = None,
    *,
    base: float = 10000.0,
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


def SinusoidalEncoding(max_len: int | None = None, *, base: float = 10000.0) -> Layer:
    """Add the fixed sinusoidal position table (:func:`sinusoidal_encoding`) to ``x``.

    Inputs ``(N, T, D)`` (or the dict form: ``"x"`` changed, other entries
    passed through); outputs the same shape and dtype, ``x + PE[:T]``. No
    params, state or key. ``x`` is not rescaled (the paper multiplies the
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

    def forward(inputs):
        entries, is_dict, shape, dtype = _positional_input(inputs, max_len)
        table = jnp.asarray(_sinusoid_table(shape[1], shape[2], base), dtype)
        return replace_x(inputs, is_dict, entries["x"] + table)

    def check(inputs):
        _positional_input(inputs, max_len)

    return stateless("SinusoidalEncoding" + (f"({max_len})" if max_len else ""), forward, check)


def PositionalEmbedding(
    max_len: int,
    *,
    w_init: str | initializers.Initializer | None = None,
    param_dtype=jnp.float32,
) -> Layer:
    """Add a learned position table to ``x``: ``x + table[:T]``.

    Inputs ``(N, T, D)`` with ``T <= max_len`` (or the dict form: ``"x"``
    changed, other entries passed through); outputs the same shape and dtype
    (the table is cast to ``x``'s dtype). Params ``{"table": (max_len, D)}``,
    default init normal with stddev 0.02 (as BERT and GPT-2); no state; no key.

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
        return {"table": table_init(key, (max_len, shape[2]), param_dtype)}, ()

    def apply(params, state, inputs, *, key=None, train=False):
        del key, train
        entries, is_dict, shape, dtype = _positional_input(inputs, max_len)
        table = params["table"]
        if table.shape[1] != shape[2]:
            raise LayerError(
                f"expected 'x' with {table.shape[1]} features (the table's width), got shape "
                f"{fmt_shape(shape)}."
            )
        y = entries["x"] + table[: shape[1]].astype(dtype)
        return replace_x(inputs, is_dict, y), state

    return Layer(init, apply, f"PositionalEmbedding({max_len})")
