"""Scaled dot-product attention (with grouped key/value heads) and the attention masks."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from funcnet._checks import array_of, check_rate, fmt_shape
from funcnet.core import LayerError
from funcnet.layers._sequence import at_least_float32

__all__ = ["ATTENTION_KEYS", "dot_product_attention"]

ATTENTION_KEYS = ("x", "memory", "mask", "memory_mask")
"""The input dict keys an attention layer (and a decoder block) accepts."""


# ---------------------------------------------------------------------------------------------
# Masks


def _check_bool(mask, name: str) -> tuple[int, ...]:
    shape, dtype = array_of(mask, f"`{name}`")
    if dtype != jnp.bool_:
        raise LayerError(
            f"expected a boolean `{name}` (True = may attend), got dtype {dtype}; pass "
            f"`{name}.astype(bool)`."
        )
    return shape


def _fits(shape, expected) -> bool:
    return len(shape) == len(expected) and all(s in (1, e) for s, e in zip(shape, expected))


def attention_mask(entries: dict, n: int, h: int, tq: int, tk: int, *, build: bool = True):
    """The combined ``(N|1, H|1, Tq|1, Tk)`` boolean mask from ``mask`` and ``memory_mask``.

    Checks the masks' shapes and dtypes; with ``build=False`` (at init, where
    the masks may be shape specs) only checks. ``None`` when there is no mask.
    """
    combined = None
    if "mask" in entries:
        mask = entries["mask"]
        shape = _check_bool(mask, "mask")
        forms = {2: (n, tk), 3: (n, tq, tk), 4: (n, h, tq, tk)}
        if len(shape) not in forms or not _fits(shape, forms[len(shape)]):
            raise LayerError(
                f"expected `mask` of shape (N, Tk) = {forms[2]}, (N, Tq, Tk) = {forms[3]} or "
                f"(N, H, Tq, Tk) = {forms[4]} (any axis may be 1 to broadcast), got shape "
                f"{fmt_shape(shape)}."
            )
        if build:
            combined = jnp.reshape(mask, (shape[0], *(1,) * (4 - len(shape)), *shape[1:]))
    if "memory_mask" in entries:
        mask = entries["memory_mask"]
        if "memory" not in entries:
            raise LayerError(
                "got `memory_mask` without `memory`; it is the padding mask of the memory in "
                "cross-attention (for self-attention pass `mask`)."
            )
        shape = _check_bool(mask, "memory_mask")
        if not _fits(shape, (n, tk)):
            raise LayerError(
                f"expected `memory_mask` of shape (N, S) = {(n, tk)} (the memory's padding), "
                f"got shape {fmt_shape(shape)}."
            )
        if build:
            m = jnp.reshape(mask, (shape[0], 1, 1, shape[1]))
            combined = m if combined is None else jnp.logical_and(combined, m)
    return combined


def window_mask(tq: int, tk: int, window: int) -> np.ndarray:
    """Causal sliding window: query ``i`` may attend key ``i - window < j <= i``.

    Examples:
        >>> window_mask(4, 4, 2).astype(int)
        array([[1, 0, 0, 0],
               [1, 1, 0, 0],
               [0, 1, 1, 0],
               [0, 0, 1, 1]])
    """
    i, j = np.arange(tq)[:, None], np.arange(tk)[None, :]
    return (j <= i) & (j > i - window)


def causal_mask(tq: int, tk: int) -> np.ndarray:
    """Query ``i`` may attend key ``j <= i`` (aligned at the top left, as jax.nn)."""
    return np.tril(np.ones((tq, tk), bool))


# ---------------------------------------------------------------------------------------------
# Scaled dot-product attention


def _check_qkv(query, key, value) -> int:
    """Check the shapes of ``dot_product_attention``'s arrays; the query heads per key head."""
    if query.ndim != 4 or key.ndim != 4 or value.ndim != 4:
        raise ValueError(
            "dot_product_attention: expected query, key and value of shape (N, T, H, K), got "
            f"shapes {query.shape}, {key.shape}, {value.shape}."
        )
    n, _, h, k = query.shape
    if key.shape[:3] != value.shape[:3] or key.shape[0] != n or key.shape[-1] != k:
        raise ValueError(
            "dot_product_attention: expected key (N, Tk, G, K) and value (N, Tk, G, V) with "
            f"query (N, Tq, H, K), got shapes {query.shape}, {key.shape}, {value.shape}."
        )
    g = key.shape[2]
    if h % g:
        raise ValueError(
            f"dot_product_attention: the key/value heads G={g} must divide the query heads "
            f"H={h} (grouped-query attention), got shapes {query.shape} and {key.shape}."
        )
    return h // g


def dot_product_attention(
    query: jax.typing.ArrayLike,
    key: jax.typing.ArrayLike,
    value: jax.typing.ArrayLike,
    mask: jax.typing.ArrayLike | None = None,
    *,
    causal: bool = False,
    scale: float | None = None,
    drop_rate: float = 0.0,
    dropout_key: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
    """Scaled dot-product attention, written out with einsum; also returns the weights.

    ``weights = softmax(q k^T * scale)`` over the keys, with masked positions
    given **exactly zero** weight, then ``out = weights v``. A query row whose
    keys are all masked gets all-zero weights, so its output is zero (never
    NaN). The softmax is computed in at least float32.

    Grouped-query attention: ``key`` and ``value`` may have fewer heads ``G``
    than ``query`` (``H``, a multiple of ``G``); query head ``h`` then attends
    with key/value head ``h // (H // G)`` (as ``torch``'s ``enable_gqa`` and
    :func:`jax.nn.dot_product_attention`). ``G = 1`` is multi-query attention.

    This is the reference implementation behind :func:`MultiHeadAttention`
    (used when it needs the weights or attention dropout); otherwise the layer
    calls :func:`jax.nn.dot_product_attention`, which gives the same numbers.

    Args:
        query: ``(N, Tq, H, K)``.
        key: ``(N, Tk, G, K)``.
        value: ``(N, Tk, G, V)``.
        mask: optional boolean array broadcastable to ``(N, H, Tq, Tk)``;
            ``True`` = may attend.
        causal: also mask key ``j > i`` for query ``i``.
        scale: logits scale; default ``1 / sqrt(K)``.
        drop_rate: fraction of the weights dropped (inverted dropout, the
            rest scaled by ``1 / (1 - drop_rate)``); needs ``dropout_key`` when > 0.
        dropout_key: random key for the dropout.

    Returns:
        ``(out, weights)``: ``out`` ``(N, Tq, H, V)`` in the value dtype and
        ``weights`` ``(N, H, Tq, Tk)``, the probabilities before dropout.

    Examples:
        >>> import jax.numpy as jnp
        >>> q = k = v = jnp.ones((1, 3, 2, 4))
        >>> out, w = dot_product_attention(q, k, v, causal=True)
        >>> out.shape, w.shape
        ((1, 3, 2, 4), (1, 2, 3, 3))
        >>> w[0, 0]
        Array([[1.       , 0.       , 0.       ],
               [0.5      , 0.5      , 0.       ],
               [0.3333333, 0.3333333, 0.3333333]], dtype=float32)
        >>> dot_product_attention(q, k[:, :, :1], v[:, :, :1])[0].shape  # one key/value head
        (1, 3, 2, 4)
    """
    query, key, value = jnp.asarray(query), jnp.asarray(key), jnp.asarray(value)
    r = _check_qkv(query, key, value)
    rate = check_rate("dot_product_attention", "drop_rate", drop_rate)
    if rate > 0 and dropout_key is None:
        raise ValueError("dot_product_attention: `drop_rate > 0` needs a `dropout_key`.")
    (n, tq, h, kd), tk, g = query.shape, key.shape[1], key.shape[2]
    lt = at_least_float32(query.dtype)
    scale = 1.0 / math.sqrt(kd) if scale is None else float(scale)
    grouped = query.reshape(n, tq, g, r, kd)
    logits = jnp.einsum("nqgrk,nsgk->ngrqs", grouped, key, preferred_element_type=lt)
    logits = logits.reshape(n, h, tq, tk) * scale
    allowed = None if mask is None else jnp.asarray(mask, bool)
    if causal:
        c = causal_mask(tq, tk)
        allowed = c if allowed is None else jnp.logical_and(allowed, c)
    if allowed is not None:
        logits = jnp.where(allowed, logits, jnp.asarray(jnp.finfo(lt).min, lt))
    weights = jax.nn.softmax(logits, axis=-1)
    if allowed is not None:  # exact zeros, also in rows where every key is masked
        weights = jnp.where(allowed, weights, jnp.zeros((), lt))
    used = weights
    if rate == 1.0:
        used = jnp.zeros_like(weights)
    elif rate > 0:
        keep = jax.random.bernoulli(dropout_key, 1.0 - rate, weights.shape)
        used = jnp.where(keep, weights / (1.0 - rate), jnp.zeros((), lt))
    used = used.astype(value.dtype).reshape(n, g, r, tq, tk)
    out = jnp.einsum("ngrqs,nsgv->nqgrv", used, value).reshape(n, tq, h, value.shape[-1])
    return out, weights.astype(value.dtype)


def attend(
    q, k, v, mask, *, causal: bool, drop_rate: float, key, need_weights: bool, implementation=None
):
    """Attention of ``q`` ``(N, Tq, H, K)`` over ``k``/``v`` ``(N, Tk, G, ·)``: ``(out, weights)``.

    Calls :func:`jax.nn.dot_product_attention` (``weights`` ``None``) with
    ``implementation`` unless the weights, attention dropout or float64 are
    needed, or the key and value sizes differ; then the reference
    :func:`dot_product_attention` (and a LayerError for ``"cudnn"``, which has
    no such path). Query rows with every key masked give zeros on both paths.
    """
    dt = q.dtype
    fast = (
        not drop_rate
        and not need_weights
        and q.shape[-1] == v.shape[-1]
        and jnp.dtype(dt).itemsize <= 4
    )
    scale = 1.0 / math.sqrt(q.shape[-1])
    if implementation == "cudnn":
        implementation = _cudnn_or_xla(fast, q.dtype)
    if not fast:
        return dot_product_attention(
            q, k, v, mask, causal=causal, scale=scale, drop_rate=drop_rate, dropout_key=key
        )
    with jax.numpy_dtype_promotion("standard"):  # jax.nn promotes bf16 with f32 inside
        o = jax.nn.dot_product_attention(
            q, k, v, mask=mask, is_causal=causal, scale=scale, implementation=implementation
        )
    if mask is not None:  # rows with every key masked: zero, as the reference
        tq, tk = q.shape[1], k.shape[1]
        full = jnp.logical_and(mask, causal_mask(tq, tk)) if causal else mask
        valid = jnp.any(full, axis=-1)  # (N|1, H|1, Tq|1)
        o = o * jnp.transpose(valid, (0, 2, 1))[..., None].astype(dt)
    return o, None


def _cudnn_or_xla(fast: bool, dtype) -> str | None:
    """``"cudnn"`` for half-precision attention on a GPU backend; ``None`` (XLA's kernel) for
    float32, which cuDNN's flash attention does not compute (e.g. the shape inference of
    ``init`` with float32 params, before a precision policy casts them); a LayerError off a
    GPU, or for keys and values of different sizes."""
    backend = jax.default_backend()
    if backend != "gpu":
        raise LayerError(
            f"implementation='cudnn' is cuDNN's flash attention, for NVIDIA GPUs; JAX's backend "
            f"here is {backend!r}. Use implementation=None (XLA) on this machine."
        )
    if jnp.dtype(dtype) not in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16)):
        return None
    if not fast:
        raise LayerError(
            "implementation='cudnn' needs keys and values of the same size; use "
            "implementation=None."
        )
    return "cudnn"
