"""The KV cache of causal self-attention: explicit state, one per attention layer.

Why in the layer's ``state``: ``state`` is the one per-layer tree that every
combinator already threads through (``serial`` by child, ``repeat`` stacked
along its leading axis and scanned, the Transformer blocks as their bodies'),
and ``apply`` already returns it updated. So a model decodes with its usual
``apply(params, state, tokens)`` once its state holds caches, and no
combinator knows about caches. :func:`funcnet.init_cache` makes such a state.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from funcnet._checks import fmt_shape
from funcnet.core import LayerError
from funcnet.layers.positional import Positions, cache_request

__all__ = ["KVCache"]


class KVCache(NamedTuple):
    """The keys and values a causal self-attention layer has seen, per row of the batch.

    Attributes:
        k: ``(N, L, G, K)`` keys (after RoPE), ``L`` = ``positions.max_len``.
        v: ``(N, L, G, V)`` values.
        positions: :class:`~funcnet.layers.positional.Positions`: row ``i``
            holds ``positions.index[i]`` tokens, in slots ``0 ..
            index[i] - 1``; the slots after them are ignored (masked) and
            overwritten by the next tokens.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> import funcnet as fn
        >>> mha = fn.MultiHeadAttention(4, num_kv_heads=2, causal=True)
        >>> x = jnp.ones((3, 5, 16))
        >>> params, _ = mha.init(jax.random.key(0), x)
        >>> cache = fn.init_cache(mha, (), x, max_len=10)
        >>> cache.k.shape, cache.positions.index
        ((3, 10, 2, 4), Array([0, 0, 0], dtype=int32))
        >>> y, cache = mha.apply(params, cache, x)  # the first 5 tokens of each row
        >>> y, cache = mha.apply(params, cache, x[:, :1])  # then one more
        >>> y.shape, cache.positions.index
        ((3, 1, 16), Array([6, 6, 6], dtype=int32))
    """

    k: jax.Array
    v: jax.Array
    positions: Positions


def requested_cache(
    entries: dict, causal: bool, n: int, g: int, sizes: tuple[int, int], dt
) -> KVCache | tuple:
    """An attention layer's state at ``init``: ``()``, or an empty cache when one is requested.

    Cross-attention (``"memory"`` given) keeps no cache (its keys come from the
    memory, recomputed at each call). Self-attention must be causal.
    """
    request = cache_request()
    if request is None or "memory" in entries:
        return ()
    if not causal:
        raise LayerError(
            "a KV cache needs causal self-attention: a new token would change the outputs at "
            "earlier positions. Build the layer with `causal=True` (a decoder), or generate "
            "without the cache (`use_cache=False`)."
        )
    if "mask" in entries:
        raise LayerError(_MASK_WHILE_DECODING)
    dtype = jnp.dtype(dt if request.dtype is None else request.dtype)
    k, v = sizes
    return KVCache(
        jnp.zeros((n, request.max_len, g, k), dtype),
        jnp.zeros((n, request.max_len, g, v), dtype),
        Positions.zeros(n, request.max_len),
    )


_MASK_WHILE_DECODING = (
    "got a `mask` while decoding with a KV cache; the cache masks by position itself "
    "(rows are right-padded: each row's tokens are at positions 0 .. length - 1). Pass the "
    "tokens alone."
)


def check_cache(cache: KVCache, entries: dict, n: int, t: int, g: int, sizes) -> None:
    """Check a cache against the new tokens ``(N, t, ·)`` and the layer's sizes."""
    if "mask" in entries:
        raise LayerError(_MASK_WHILE_DECODING)
    if "memory" in entries:
        raise LayerError(
            "got a KV cache and `memory`: only causal self-attention keeps a cache. Pass the "
            "state made by `funcnet.init_cache` for this model."
        )
    length = cache.positions.max_len
    expected = [(n, length, g, sizes[0]), (n, length, g, sizes[1])]
    got = [tuple(cache.k.shape), tuple(cache.v.shape)]
    if got != expected:
        raise LayerError(
            f"the KV cache has keys/values of shapes {fmt_shape(got[0])}/{fmt_shape(got[1])}, "
            f"expected {fmt_shape(expected[0])}/{fmt_shape(expected[1])} (N, max_len, "
            "kv heads, size) for these inputs and params. Make it with `funcnet.init_cache` "
            "for inputs of this batch size."
        )
    if t > length:
        raise LayerError(
            f"got {t} new tokens for a KV cache of `max_len={length}`. Make the cache with a "
            "larger `max_len`."
        )


def write(cache: KVCache, k: jax.Array, v: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The cached keys and values with ``k``/``v`` ``(N, T, G, ·)`` written at each row's index.

    A row whose ``index + T`` exceeds ``max_len`` is written at ``max_len - T``
    (XLA clamps the offset); :func:`funcnet.generate` rules this out up front.
    """

    def one(buffer, new, start):
        return jax.lax.dynamic_update_slice_in_dim(buffer, new, start, axis=0)

    index = cache.positions.index
    ks = jax.vmap(one)(cache.k, k.astype(cache.k.dtype), index)
    vs = jax.vmap(one)(cache.v, v.astype(cache.v.dtype), index)
    return ks, vs


def decoding_mask(positions: Positions, t: int, window: int | None = None) -> jax.Array:
    """``(N, 1, t, L)``: new token ``i`` of row ``n`` may attend slot ``j <= index[n] + i``.

    With a sliding ``window``, also ``j > index[n] + i - window``.
    """
    slots = jnp.arange(positions.max_len, dtype=jnp.int32)
    at = positions.take(t)[..., None]
    mask = slots <= at
    if window is not None:
        mask = mask & (slots > at - window)
    return mask[:, None]
