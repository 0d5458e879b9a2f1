"""Attention and positional information: MultiHeadAttention, learned, sinusoidal and rotary.

Layers that take several arrays take them as **one dict** with fixed keys
(the convention of :mod:`funcnet.combinators`, shared with the recurrent
layers; an attention layer accepts :data:`ATTENTION_KEYS`):

- ``"x"``: the main stream ``(N, T, D)`` (the queries of an attention layer);
- ``"memory"``: the key/value source of cross-attention ``(N, S, D_m)``
  (default: ``"x"`` itself, i.e. self-attention);
- ``"mask"``: a boolean mask, ``True`` = may attend / valid;
- ``"memory_mask"``: a boolean ``(N, S)`` padding mask of ``"memory"``.

A plain array means ``{"x": array}``. A key that a layer does not know is an
error that lists the keys it accepts; an entry set to ``None`` counts as absent.

Layout is batch-major throughout: sequences ``(N, T, D)``, per-head queries,
keys and values ``(N, T, H, K)`` (as :func:`jax.nn.dot_product_attention`),
attention weights ``(N, H, T_q, T_k)``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from funcnet import initializers
from funcnet._checks import array_of, check_positive_int, check_rate, compute_dtype, fmt_shape
from funcnet.combinators import split_inputs
from funcnet.core import Layer, LayerError
from funcnet.layers._sequence import at_least_float32, sequence_of

# The positional layers live in funcnet.layers.positional; they are exported here as well.
from funcnet.layers.positional import (
    PositionalEmbedding,
    RotaryEmbedding,
    SinusoidalEncoding,
    _check_base,
    apply_rope,
    sinusoidal_encoding,
)

__all__ = [
    "MultiHeadAttention",
    "PositionalEmbedding",
    "RotaryEmbedding",
    "SinusoidalEncoding",
    "apply_rope",
    "dot_product_attention",
    "sinusoidal_encoding",
]

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


def _attention_mask(entries: dict, n: int, h: int, tq: int, tk: int, *, build: bool = True):
    """The combined ``(N|1, H|1, Tq|1, Tk)`` boolean mask from ``mask`` and ``memory_mask``.

    Checks the masks' shapes and dtypes; with ``build=False`` (at init, where
    the masks may be shape specs) only checks.
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


def _causal_mask(tq: int, tk: int) -> np.ndarray:
    """Query ``i`` may attend key ``j <= i`` (aligned at the top left, as jax.nn)."""
    return np.tril(np.ones((tq, tk), bool))


# ---------------------------------------------------------------------------------------------
# Scaled dot-product attention


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

    This is the reference implementation behind :func:`MultiHeadAttention`
    (used when it needs the weights or attention dropout); otherwise the layer
    calls :func:`jax.nn.dot_product_attention`, which gives the same numbers.

    Args:
        query: ``(N, Tq, H, K)``.
        key: ``(N, Tk, H, K)``.
        value: ``(N, Tk, H, V)``.
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
    """
    query, key, value = jnp.asarray(query), jnp.asarray(key), jnp.asarray(value)
    if query.ndim != 4 or key.ndim != 4 or value.ndim != 4:
        raise ValueError(
            "dot_product_attention: expected query, key and value of shape (N, T, H, K), got "
            f"shapes {query.shape}, {key.shape}, {value.shape}."
        )
    if key.shape[:3] != value.shape[:3] or query.shape[-1] != key.shape[-1]:
        raise ValueError(
            "dot_product_attention: expected key (N, Tk, H, K) and value (N, Tk, H, V) with "
            f"query (N, Tq, H, K), got shapes {query.shape}, {key.shape}, {value.shape}."
        )
    rate = check_rate("dot_product_attention", "drop_rate", drop_rate)
    if rate > 0 and dropout_key is None:
        raise ValueError("dot_product_attention: `drop_rate > 0` needs a `dropout_key`.")
    tq, tk = query.shape[1], key.shape[1]
    lt = at_least_float32(query.dtype)
    scale = 1.0 / math.sqrt(query.shape[-1]) if scale is None else float(scale)
    logits = jnp.einsum("nqhk,nshk->nhqs", query, key, preferred_element_type=lt) * scale
    allowed = None if mask is None else jnp.asarray(mask, bool)
    if causal:
        c = _causal_mask(tq, tk)
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
    out = jnp.einsum("nhqs,nshv->nqhv", used.astype(value.dtype), value)
    return out, weights.astype(value.dtype)


# ---------------------------------------------------------------------------------------------
# MultiHeadAttention


def _check_optional_int(owner: str, name: str, value):
    return None if value is None else check_positive_int(owner, name, value)


def MultiHeadAttention(
    num_heads: int,
    key_size: int | None = None,
    *,
    value_size: int | None = None,
    out_features: int | None = None,
    causal: bool = False,
    drop_rate: float = 0.0,
    use_bias: bool = True,
    return_weights: bool = False,
    rope: bool = False,
    rope_base: float = 10000.0,
    w_init: str | initializers.Initializer = "glorot_uniform",
    b_init: str | initializers.Initializer = "zeros",
    dtype=None,
    param_dtype=jnp.float32,
) -> Layer:
    """Multi-head scaled dot-product attention with separate q/k/v/output projections.

    Inputs: ``x`` ``(N, T, D)`` (self-attention), or a dict (see the module
    docstring) with ``"x"`` (queries), optional ``"memory"`` ``(N, S, D_m)``
    (keys and values; default ``x``), ``"mask"`` and ``"memory_mask"``::

        q = x @ Wq + bq,  k = memory @ Wk + bk,  v = memory @ Wv + bv   (per head)
        heads = softmax(q k^T / sqrt(K) masked) v
        y = concat(heads) @ Wo + bo                              # (N, T, D_out)

    Params (``"b"`` entries left out with ``use_bias=False``)::

        {"query": {"w": (D, H, K),   "b": (H, K)},
         "key":   {"w": (D_m, H, K), "b": (H, K)},
         "value": {"w": (D_m, H, V), "b": (H, V)},
         "out":   {"w": (H, V, D_out), "b": (D_out,)}}

    No state. Weights are Glorot-uniform over the flattened ``(D, H*K)`` and
    ``(H*V, D_out)`` matrices by default, biases zero.

    Masks (boolean, ``True`` = may attend): ``"mask"`` of shape ``(N, Tk)``
    (key padding; for self-attention ``Tk == T``, so this is the padding mask
    of ``x``), ``(N, Tq, Tk)`` or ``(N, H, Tq, Tk)``; any of these axes may be
    1 to broadcast. ``"memory_mask"`` ``(N, S)`` is the padding of
    ``"memory"`` and is combined with ``"mask"`` (logical and); ``causal=True``
    adds ``j <= i`` (aligned at the top left). A masked position gets exactly
    zero weight. A query row whose keys are *all* masked gets all-zero weights,
    so its output is the output bias ``bo`` (never NaN). Outputs at padded
    *query* positions are computed like any other; ignore them downstream.

    Without attention dropout, weights or float64, the layer calls
    :func:`jax.nn.dot_product_attention` (which may use fused kernels);
    otherwise the einsum reference :func:`dot_product_attention`. Both give
    the same numbers.

    Args:
        num_heads: number of heads ``H``.
        key_size: size ``K`` of each head's queries and keys; default ``D //
            num_heads`` (``D`` must then be divisible by ``num_heads``).
        value_size: size ``V`` of each head's values; default ``key_size``.
        out_features: ``D_out``; default ``D`` (the queries' width).
        causal: mask keys after the query's position.
        drop_rate: dropout on the attention weights when ``train=True``
            (needs ``key``).
        use_bias: biases in the four projections.
        return_weights: return ``(y, weights)`` with the attention
            probabilities ``(N, H, Tq, Tk)`` (before dropout).
        rope: apply rotary position embeddings (:func:`apply_rope`, positions
            ``0..T-1``) to the projected queries and keys (``K`` must be even).
        rope_base: the RoPE frequency base.
        w_init, b_init: initializers (functions or names).
        dtype: computation dtype; default: the promotion of the inputs' and the
            params' dtypes. The softmax runs in at least float32.
        param_dtype: dtype of the params.

    Returns:
        A layer giving ``(N, Tq, D_out)``, or ``(y, weights)`` with
        ``return_weights=True``.

    Raises:
        ValueError: in the constructor for bad hyperparameters.
        LayerError: for inputs that are not ``(N, T, D)``, memory of another
            batch size, widths that do not fit the params, ``num_heads`` not
            dividing ``D`` (when ``key_size`` is not given), masks of the wrong
            shape or dtype, unknown dict keys, and a missing ``key`` when
            attention dropout is active.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> mha = MultiHeadAttention(4, 8)
        >>> x = jnp.ones((2, 5, 16))
        >>> params, state = mha.init(jax.random.key(0), x)
        >>> jax.tree.map(jnp.shape, params)  # doctest: +NORMALIZE_WHITESPACE
        {'key': {'b': (4, 8), 'w': (16, 4, 8)}, 'out': {'b': (16,), 'w': (4, 8, 16)},
         'query': {'b': (4, 8), 'w': (16, 4, 8)}, 'value': {'b': (4, 8), 'w': (16, 4, 8)}}
        >>> mha.apply(params, state, x)[0].shape
        (2, 5, 16)

        Cross-attention to a padded memory, returning the weights:

        >>> cross = MultiHeadAttention(2, 4, return_weights=True)
        >>> inputs = {"x": x, "memory": jnp.ones((2, 7, 3)),
        ...           "memory_mask": jnp.arange(7) < jnp.array([[7], [4]])}
        >>> params, state = cross.init(jax.random.key(0), inputs)
        >>> (y, w), _ = cross.apply(params, state, inputs)
        >>> y.shape, w.shape, float(w[1, :, :, 4:].max())
        ((2, 5, 16), (2, 2, 5, 7), 0.0)
    """
    owner = "MultiHeadAttention"
    heads = check_positive_int(owner, "num_heads", num_heads)
    key_size = _check_optional_int(owner, "key_size", key_size)
    value_size = _check_optional_int(owner, "value_size", value_size)
    out_features = _check_optional_int(owner, "out_features", out_features)
    rate = check_rate(owner, "drop_rate", drop_rate)
    rope_base = _check_base(owner, rope_base)
    if rope and key_size is not None and key_size % 2:
        raise ValueError(f"{owner}: `rope=True` needs an even `key_size`, got {key_size}.")
    w_init, b_init = initializers.get(w_init), initializers.get(b_init)
    causal, use_bias, return_weights, rope = (
        bool(causal),
        bool(use_bias),
        bool(return_weights),
        bool(rope),
    )

    def streams(entries):
        x_shape, x_dtype = sequence_of(entries["x"])
        if "memory" in entries:
            m_shape, _ = sequence_of(entries["memory"], "'memory'")
            if m_shape[0] != x_shape[0]:
                raise LayerError(
                    f"'x' and 'memory' must have the same batch size, got shapes "
                    f"{fmt_shape(x_shape)} and {fmt_shape(m_shape)}."
                )
        else:
            m_shape = x_shape
        return x_shape, m_shape, x_dtype

    def sizes(x_shape):
        d = x_shape[2]
        if key_size is not None:
            k = key_size
        elif d % heads:
            raise LayerError(
                f"`num_heads={heads}` does not divide the width {d} of 'x' (shape "
                f"{fmt_shape(x_shape)}); pass `key_size` or use a number of heads in "
                f"{[h for h in range(1, d + 1) if d % h == 0]}."
            )
        else:
            k = d // heads
        if rope and k % 2:
            raise LayerError(f"`rope=True` needs an even key size, got {k} (= {d} // {heads}).")
        return k, value_size or k, out_features or d

    def projection(key, fan_in, h, size):
        k_w, k_b = jax.random.split(key)
        p = {"w": w_init(k_w, (fan_in, h * size), param_dtype).reshape(fan_in, h, size)}
        if use_bias:
            p["b"] = b_init(k_b, (h * size,), param_dtype).reshape(h, size)
        return p

    def init(key, inputs):
        entries, _ = split_inputs(inputs, ATTENTION_KEYS)
        x_shape, m_shape, _ = streams(entries)
        k, v, d_out = sizes(x_shape)
        _attention_mask(entries, x_shape[0], heads, x_shape[1], m_shape[1], build=False)
        k_q, k_k, k_v, k_o = jax.random.split(key, 4)
        k_w, k_b = jax.random.split(k_o)
        out = {"w": w_init(k_w, (heads * v, d_out), param_dtype).reshape(heads, v, d_out)}
        if use_bias:
            out["b"] = b_init(k_b, (d_out,), param_dtype)
        params = {
            "query": projection(k_q, x_shape[2], heads, k),
            "key": projection(k_k, m_shape[2], heads, k),
            "value": projection(k_v, m_shape[2], heads, v),
            "out": out,
        }
        return params, ()

    def check_params(params, x_shape, m_shape):
        names = ("query", "key", "value", "out")
        if not isinstance(params, Mapping) or any(
            not isinstance(params.get(n), Mapping) or "w" not in params[n] for n in names
        ):
            raise LayerError(
                f"expected params {{'query', 'key', 'value', 'out'}} each with 'w', got "
                f"{type(params).__name__}"
                + (f" with keys {sorted(params)}" if isinstance(params, Mapping) else "")
                + ". Pass the params returned by this layer's `init`."
            )
        wq, wk, wv, wo = (params[n]["w"] for n in names)
        if wq.ndim != 3 or wk.ndim != 3 or wv.ndim != 3 or wo.ndim != 3:
            raise LayerError("expected 3-axis projection weights; pass the params from `init`.")
        h, k = wq.shape[1], wq.shape[2]
        if (
            h != heads
            or (key_size is not None and k != key_size)
            or wk.shape[1:] != (h, k)
            or wv.shape[1] != h
            or (value_size is not None and wv.shape[2] != value_size)
            or wo.shape[:2] != wv.shape[1:]
        ):
            raise LayerError(
                f"the params do not fit `num_heads={heads}`"
                + (f", `key_size={key_size}`" if key_size else "")
                + f": query/key/value/out weights have shapes {wq.shape}, {wk.shape}, "
                f"{wv.shape}, {wo.shape} (expected (D, H, K), (D_m, H, K), (D_m, H, V), "
                "(H, V, D_out)). Pass the params returned by this layer's `init`."
            )
        if x_shape[2] != wq.shape[0]:
            raise LayerError(
                f"expected 'x' with {wq.shape[0]} features (the query projection's input "
                f"width), got shape {fmt_shape(x_shape)}."
            )
        if m_shape[2] != wk.shape[0] or m_shape[2] != wv.shape[0]:
            src = "'memory'" if m_shape is not x_shape else "'x' (as keys and values)"
            raise LayerError(
                f"expected {src} with {wk.shape[0]} features (the key/value projections' input "
                f"width), got shape {fmt_shape(m_shape)}."
            )
        return wq, wk, wv, wo

    def apply(params, state, inputs, *, key=None, train=False):
        entries, _ = split_inputs(inputs, ATTENTION_KEYS)
        x_shape, m_shape, x_dtype = streams(entries)
        wq, _, _, wo = check_params(params, x_shape, m_shape)
        n, tq, tk = x_shape[0], x_shape[1], m_shape[1]
        mask = _attention_mask(entries, n, heads, tq, tk)
        dropping = train and rate > 0
        if dropping and key is None:
            raise LayerError(
                f"needs a random `key` when `train=True` (attention dropout `drop_rate={rate}`); "
                "call `model.apply(params, state, x, key=key, train=True)` with one key for the "
                "whole model."
            )
        dt = compute_dtype(x_dtype, wq.dtype, dtype)
        x = entries["x"].astype(dt)
        memory = entries["memory"].astype(dt) if "memory" in entries else x

        def project(a, p):
            y = jnp.einsum("ntd,dhk->nthk", a, p["w"].astype(dt))
            return y + p["b"].astype(dt) if use_bias else y

        q = project(x, params["query"])
        k = project(memory, params["key"])
        v = project(memory, params["value"])
        if rope:
            q, k = apply_rope(q, base=rope_base), apply_rope(k, base=rope_base)
        scale = 1.0 / math.sqrt(q.shape[-1])
        fast = (
            not dropping
            and not return_weights
            and q.shape[-1] == v.shape[-1]
            and jnp.dtype(dt).itemsize <= 4
        )
        weights = None
        if fast:
            with jax.numpy_dtype_promotion("standard"):  # jax.nn promotes bf16 with f32 inside
                o = jax.nn.dot_product_attention(q, k, v, mask=mask, is_causal=causal, scale=scale)
            if mask is not None:  # rows with every key masked: zero, as the reference
                full = jnp.logical_and(mask, _causal_mask(tq, tk)) if causal else mask
                valid = jnp.any(full, axis=-1)  # (N|1, H|1, Tq|1)
                o = o * jnp.transpose(valid, (0, 2, 1))[..., None].astype(dt)
        else:
            o, weights = dot_product_attention(
                q,
                k,
                v,
                mask,
                causal=causal,
                scale=scale,
                drop_rate=rate if dropping else 0.0,
                dropout_key=key,
            )
        y = jnp.einsum("nthv,hvo->nto", o, wo.astype(dt))
        if use_bias:
            y = y + params["out"]["b"].astype(dt)
        return ((y, weights) if return_weights else y), state

    args = [str(heads)] + ([str(key_size)] if key_size is not None else [])
    for flag, text in (
        (causal, "causal=True"),
        (rope, "rope=True"),
        (rate > 0, f"drop_rate={rate}"),
        (return_weights, "return_weights=True"),
    ):
        if flag:
            args.append(text)
    return Layer(init, apply, f"{owner}({', '.join(args)})")
