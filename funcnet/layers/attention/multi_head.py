"""MultiHeadAttention: multi-head, grouped-query and multi-query attention, with a KV cache."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from funcnet import initializers
from funcnet._checks import check_positive_int, check_rate, compute_dtype, fmt_shape
from funcnet.combinators import split_inputs
from funcnet.core import Layer, LayerError, declare
from funcnet.layers._sequence import sequence_of
from funcnet.layers.attention.cache import (
    KVCache,
    check_cache,
    decoding_mask,
    requested_cache,
    write,
)
from funcnet.layers.attention.scaled import ATTENTION_KEYS, attend, attention_mask, window_mask
from funcnet.layers.positional import Positions, _check_base, apply_rope

__all__ = ["MultiHeadAttention"]


class _Config(NamedTuple):
    """The checked hyperparameters of a MultiHeadAttention."""

    heads: int
    kv_heads: int | None  # None: as many as query heads
    key_size: int | None
    value_size: int | None
    out_features: int | None
    causal: bool
    window: int | None  # None: no sliding window
    rate: float
    use_bias: bool
    return_weights: bool
    rope: bool
    rope_base: float
    w_init: Any
    b_init: Any
    dtype: Any
    param_dtype: Any
    implementation: str | None  # jax.nn.dot_product_attention's: None/"xla", or "cudnn"


class _Sizes(NamedTuple):
    """Sizes read from the inputs: query heads, kv heads, key, value and output widths."""

    h: int
    g: int
    k: int
    v: int
    d_out: int


_OWNER = "MultiHeadAttention"


def _optional_int(name: str, value) -> int | None:
    return None if value is None else check_positive_int(_OWNER, name, value)


def _check_config(num_heads, num_kv_heads, key_size, value_size, out_features, **rest) -> _Config:
    heads = check_positive_int(_OWNER, "num_heads", num_heads)
    kv_heads = _optional_int("num_kv_heads", num_kv_heads)
    if kv_heads is not None and heads % kv_heads:
        raise ValueError(
            f"{_OWNER}: `num_kv_heads={kv_heads}` must divide `num_heads={heads}` (each key/value "
            f"head serves a group of query heads); use one of "
            f"{[g for g in range(1, heads + 1) if heads % g == 0]}."
        )
    key_size = _optional_int("key_size", key_size)
    window = _optional_int("window", rest["window"])
    if window is not None and not rest["causal"]:
        raise ValueError(
            f"{_OWNER}: `window={window}` is a sliding window of causal attention (each query "
            "sees the last `window` keys, itself included); pass `causal=True` with it."
        )
    if rest["rope"] and key_size is not None and key_size % 2:
        raise ValueError(f"{_OWNER}: `rope=True` needs an even `key_size`, got {key_size}.")
    implementation = rest["implementation"]
    if implementation not in (None, "xla", "cudnn"):
        raise ValueError(
            f"{_OWNER}: `implementation` must be None (XLA), 'xla' or 'cudnn' (cuDNN's fused "
            f"flash attention on NVIDIA GPUs), got {implementation!r}."
        )
    if implementation == "cudnn" and (rest["return_weights"] or rest["drop_rate"]):
        raise ValueError(
            f"{_OWNER}: `implementation='cudnn'` runs a fused kernel that neither returns the "
            "attention weights nor drops them; pass `return_weights=False` and "
            "`drop_rate=0`, or leave `implementation=None`."
        )
    return _Config(
        heads,
        kv_heads,
        key_size,
        _optional_int("value_size", value_size),
        _optional_int("out_features", out_features),
        bool(rest["causal"]),
        window,
        check_rate(_OWNER, "drop_rate", rest["drop_rate"]),
        bool(rest["use_bias"]),
        bool(rest["return_weights"]),
        bool(rest["rope"]),
        _check_base(_OWNER, rest["rope_base"]),
        initializers.get(rest["w_init"]),
        initializers.get(rest["b_init"]),
        rest["dtype"],
        rest["param_dtype"],
        implementation,
    )


def _name(cfg: _Config) -> str:
    args = [str(cfg.heads)] + ([str(cfg.key_size)] if cfg.key_size is not None else [])
    for flag, text in (
        (cfg.kv_heads is not None, f"num_kv_heads={cfg.kv_heads}"),
        (cfg.causal, "causal=True"),
        (cfg.window is not None, f"window={cfg.window}"),
        (cfg.rope, "rope=True"),
        (cfg.rate > 0, f"drop_rate={cfg.rate}"),
        (cfg.return_weights, "return_weights=True"),
        (cfg.implementation is not None, f"implementation={cfg.implementation!r}"),
    ):
        if flag:
            args.append(text)
    return f"{_OWNER}({', '.join(args)})"


# ---------------------------------------------------------------------------------------------
# Steps of init and apply


def _streams(entries: dict):
    """Shapes of ``x`` and of the key/value source (``memory``, default ``x``), and x's dtype."""
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


def _sizes(cfg: _Config, x_shape) -> _Sizes:
    d, heads = x_shape[2], cfg.heads
    if cfg.key_size is not None:
        k = cfg.key_size
    elif d % heads:
        raise LayerError(
            f"`num_heads={heads}` does not divide the width {d} of 'x' (shape "
            f"{fmt_shape(x_shape)}); pass `key_size` or use a number of heads in "
            f"{[h for h in range(1, d + 1) if d % h == 0]}."
        )
    else:
        k = d // heads
    if cfg.rope and k % 2:
        raise LayerError(f"`rope=True` needs an even key size, got {k} (= {d} // {heads}).")
    g = cfg.kv_heads or heads
    return _Sizes(heads, g, k, cfg.value_size or k, cfg.out_features or d)


def _init_params(cfg: _Config, key, x_width: int, m_width: int, s: _Sizes) -> dict:
    def projection(key, fan_in, h, size, heads):
        k_w, k_b = jax.random.split(key)
        p = {"w": cfg.w_init(k_w, (fan_in, h * size), cfg.param_dtype).reshape(fan_in, h, size)}
        if cfg.use_bias:
            p["b"] = cfg.b_init(k_b, (h * size,), cfg.param_dtype).reshape(h, size)
        return declare(p, {"w": ("embed", heads, "kv"), "b": (heads, "kv")})

    k_q, k_k, k_v, k_o = jax.random.split(key, 4)
    k_w, k_b = jax.random.split(k_o)
    w_out = cfg.w_init(k_w, (s.h * s.v, s.d_out), cfg.param_dtype)
    out = {"w": w_out.reshape(s.h, s.v, s.d_out)}
    if cfg.use_bias:
        out["b"] = cfg.b_init(k_b, (s.d_out,), cfg.param_dtype)
    return {
        "query": projection(k_q, x_width, s.h, s.k, "heads"),
        "key": projection(k_k, m_width, s.g, s.k, "kv_heads"),
        "value": projection(k_v, m_width, s.g, s.v, "kv_heads"),
        "out": declare(out, {"w": ("heads", "kv", "embed"), "b": ("embed",)}),
    }


def _init(cfg: _Config, key, inputs):
    entries, _ = split_inputs(inputs, ATTENTION_KEYS)
    x_shape, m_shape, x_dtype = _streams(entries)
    s = _sizes(cfg, x_shape)
    attention_mask(entries, x_shape[0], s.h, x_shape[1], m_shape[1], build=False)
    params = _init_params(cfg, key, x_shape[2], m_shape[2], s)
    dt = compute_dtype(x_dtype, cfg.param_dtype, cfg.dtype)
    state = requested_cache(entries, cfg.causal, x_shape[0], s.g, (s.k, s.v), dt)
    return params, state


def _check_params(cfg: _Config, params, x_shape, m_shape) -> _Sizes:
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
    (h, k), g = wq.shape[1:], cfg.kv_heads or cfg.heads
    if (
        h != cfg.heads
        or (cfg.key_size is not None and k != cfg.key_size)
        or wk.shape[1:] != (g, k)
        or wv.shape[1] != g
        or (cfg.value_size is not None and wv.shape[2] != cfg.value_size)
        or wo.shape[:2] != (h, wv.shape[2])
    ):
        raise LayerError(
            f"the params do not fit `num_heads={cfg.heads}`"
            + (f", `num_kv_heads={cfg.kv_heads}`" if cfg.kv_heads else "")
            + (f", `key_size={cfg.key_size}`" if cfg.key_size else "")
            + f": query/key/value/out weights have shapes {wq.shape}, {wk.shape}, "
            f"{wv.shape}, {wo.shape} (expected (D, H, K), (D_m, G, K), (D_m, G, V), "
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
    return _Sizes(h, g, k, wv.shape[2], wo.shape[2])


def _project(a, p, dt, use_bias: bool):
    y = jnp.einsum("ntd,dhk->nthk", a, p["w"].astype(dt))
    return y + p["b"].astype(dt) if use_bias else y


def _qkv(cfg: _Config, params, entries, dt, positions: Positions | None):
    """The projected (and, with RoPE, rotated) queries, keys and values of the new inputs."""
    x = entries["x"].astype(dt)
    memory = entries["memory"].astype(dt) if "memory" in entries else x
    q = _project(x, params["query"], dt, cfg.use_bias)
    k = _project(memory, params["key"], dt, cfg.use_bias)
    v = _project(memory, params["value"], dt, cfg.use_bias)
    if cfg.rope:
        if positions is None:
            q, k = apply_rope(q, base=cfg.rope_base), apply_rope(k, base=cfg.rope_base)
        else:  # decoding: the new tokens' positions, per row
            at, bound = positions.take(q.shape[1]), positions.max_len
            q = apply_rope(q, at, base=cfg.rope_base, max_len=bound)
            k = apply_rope(k, at, base=cfg.rope_base, max_len=bound)
    return q, k, v


def _check_key(cfg: _Config, dropping: bool, key) -> None:
    if dropping and key is None:
        raise LayerError(
            f"needs a random `key` when `train=True` (attention dropout `drop_rate={cfg.rate}`); "
            "call `model.apply(params, state, x, key=key, train=True)` with one key for the "
            "whole model."
        )


def _apply(cfg: _Config, params, state, inputs, *, key=None, train=False):
    entries, _ = split_inputs(inputs, ATTENTION_KEYS)
    x_shape, m_shape, x_dtype = _streams(entries)
    s = _check_params(cfg, params, x_shape, m_shape)
    n, tq, tk = x_shape[0], x_shape[1], m_shape[1]
    dropping = train and cfg.rate > 0
    _check_key(cfg, dropping, key)
    dt = compute_dtype(x_dtype, params["query"]["w"].dtype, cfg.dtype)
    if isinstance(state, KVCache):  # decoding: attend over the cache and the new tokens
        check_cache(state, entries, n, tq, s.g, (s.k, s.v))
        q, k, v = _qkv(cfg, params, entries, dt, state.positions)
        k_all, v_all = write(state, k, v)
        mask, causal = decoding_mask(state.positions, tq, cfg.window), False
        state = KVCache(k_all, v_all, state.positions.advance(tq))
        k, v = k_all.astype(dt), v_all.astype(dt)
    else:
        mask, causal = attention_mask(entries, n, s.h, tq, tk), cfg.causal
        if cfg.window is not None:
            band = jnp.asarray(window_mask(tq, tk, cfg.window))[None, None]
            mask = band if mask is None else jnp.logical_and(mask, band)
        q, k, v = _qkv(cfg, params, entries, dt, None)
    o, weights = attend(
        q,
        k,
        v,
        mask,
        causal=causal,
        drop_rate=cfg.rate if dropping else 0.0,
        key=key,
        need_weights=cfg.return_weights,
        implementation=cfg.implementation,
    )
    y = jnp.einsum("nthv,hvo->nto", o, params["out"]["w"].astype(dt))
    if cfg.use_bias:
        y = y + params["out"]["b"].astype(dt)
    return ((y, weights) if cfg.return_weights else y), state


# ---------------------------------------------------------------------------------------------
# The layer


def MultiHeadAttention(
    num_heads: int,
    key_size: int | None = None,
    *,
    num_kv_heads: int | None = None,
    value_size: int | None = None,
    out_features: int | None = None,
    causal: bool = False,
    window: int | None = None,
    drop_rate: float = 0.0,
    use_bias: bool = True,
    return_weights: bool = False,
    rope: bool = False,
    rope_base: float = 10000.0,
    w_init: str | initializers.Initializer = "glorot_uniform",
    b_init: str | initializers.Initializer = "zeros",
    dtype=None,
    param_dtype=jnp.float32,
    implementation: str | None = None,
) -> Layer:
    """Multi-head scaled dot-product attention with separate q/k/v/output projections.

    Inputs: ``x`` ``(N, T, D)`` (self-attention), or a dict (see the package
    docstring) with ``"x"`` (queries), optional ``"memory"`` ``(N, S, D_m)``
    (keys and values; default ``x``), ``"mask"`` and ``"memory_mask"``::

        q = x @ Wq + bq,  k = memory @ Wk + bk,  v = memory @ Wv + bv   (per head)
        heads = softmax(q k^T / sqrt(K) masked) v
        y = concat(heads) @ Wo + bo                              # (N, T, D_out)

    Grouped-query attention: with ``num_kv_heads=G`` (dividing ``H =
    num_heads``) there are ``G`` key/value heads, each shared by ``H // G``
    consecutive query heads (query head ``h`` uses key/value head ``h // (H //
    G)``, as ``torch``'s ``scaled_dot_product_attention(..., enable_gqa=True)``);
    ``G = 1`` is multi-query attention, ``G = H`` (default) multi-head.

    Params (``"b"`` entries left out with ``use_bias=False``)::

        {"query": {"w": (D, H, K),   "b": (H, K)},
         "key":   {"w": (D_m, G, K), "b": (G, K)},
         "value": {"w": (D_m, G, V), "b": (G, V)},
         "out":   {"w": (H, V, D_out), "b": (D_out,)}}

    Their axes are named (for sharding rules) ``("embed", "heads", "kv")`` for
    the query, ``("embed", "kv_heads", "kv")`` for key and value and
    ``("heads", "kv", "embed")`` for the output: tensor-parallel rules split
    the heads, and the output projection sums the heads' partial outputs.

    No state, except while decoding. Weights are Glorot-uniform over the
    flattened ``(D, H*K)`` and ``(H*V, D_out)`` matrices by default, biases zero.

    Masks (boolean, ``True`` = may attend): ``"mask"`` of shape ``(N, Tk)``
    (key padding; for self-attention ``Tk == T``, so this is the padding mask
    of ``x``), ``(N, Tq, Tk)`` or ``(N, H, Tq, Tk)``; any of these axes may be
    1 to broadcast. ``"memory_mask"`` ``(N, S)`` is the padding of
    ``"memory"`` and is combined with ``"mask"`` (logical and); ``causal=True``
    adds ``j <= i`` (aligned at the top left), and ``window=W`` also ``j > i -
    W``. A masked position gets exactly zero weight. A query row whose keys
    are *all* masked gets all-zero weights, so its output is the output bias
    ``bo`` (never NaN). Outputs at padded *query* positions are computed like
    any other; ignore them downstream.

    Decoding (KV cache): a causal self-attention layer given the state made by
    :func:`funcnet.init_cache` (a :class:`~funcnet.layers.attention.KVCache`)
    takes the *new* tokens ``(N, T, D)`` of each row, at the row's next
    positions, writes their keys and values into the cache and attends over
    everything the row has seen; it returns the outputs of the new tokens and
    the updated cache. The outputs equal those of a full forward pass over the
    whole sequence. Rows are right-padded; no ``"mask"`` is taken then.

    Without attention dropout, weights or float64, the layer calls
    :func:`jax.nn.dot_product_attention` (which may use fused kernels);
    otherwise the einsum reference :func:`dot_product_attention`. Both give
    the same numbers.

    Args:
        num_heads: number of query heads ``H``.
        key_size: size ``K`` of each head's queries and keys; default ``D //
            num_heads`` (``D`` must then be divisible by ``num_heads``).
        num_kv_heads: number ``G`` of key/value heads (must divide
            ``num_heads``); default ``num_heads``.
        value_size: size ``V`` of each head's values; default ``key_size``.
        out_features: ``D_out``; default ``D`` (the queries' width).
        causal: mask keys after the query's position.
        window: with ``causal=True``, a sliding window (Mistral, Longformer):
            query ``i`` sees keys ``i - window < j <= i`` only, also while
            decoding (the cache still holds every position).
        drop_rate: dropout on the attention weights when ``train=True``
            (needs ``key``).
        use_bias: biases in the four projections.
        return_weights: return ``(y, weights)`` with the attention
            probabilities ``(N, H, Tq, Tk)`` (before dropout).
        rope: apply rotary position embeddings (:func:`apply_rope`, positions
            ``0..T-1``, or the decoding positions) to the projected queries and
            keys (``K`` must be even).
        rope_base: the RoPE frequency base.
        w_init, b_init: initializers (functions or names).
        dtype: computation dtype; default: the promotion of the inputs' and the
            params' dtypes. The softmax runs in at least float32.
        param_dtype: dtype of the params.
        implementation: the kernel of :func:`jax.nn.dot_product_attention`:
            ``None`` (its default, XLA's attention, on every backend), ``"xla"``,
            or ``"cudnn"``: cuDNN's fused flash attention on NVIDIA GPUs, as
            Flax's and PyTorch's SDPA backends: for bfloat16/float16
            computation (a precision policy; float32 computation, e.g. the
            shape inference of ``init``, uses XLA's kernel: cuDNN has no
            float32 flash attention) and head sizes cuDNN supports; no
            weights, no attention dropout; an error off a GPU. Chosen per
            layer, not by a global switch, so a compiled function always
            says which kernel it uses.

    Returns:
        A layer giving ``(N, Tq, D_out)``, or ``(y, weights)`` with
        ``return_weights=True``.

    Raises:
        ValueError: in the constructor for bad hyperparameters (e.g.
            ``num_kv_heads`` not dividing ``num_heads``).
        LayerError: for inputs that are not ``(N, T, D)``, memory of another
            batch size, widths that do not fit the params, ``num_heads`` not
            dividing ``D`` (when ``key_size`` is not given), masks of the wrong
            shape or dtype, unknown dict keys, a missing ``key`` when
            attention dropout is active, and a KV cache that does not fit.

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

        Grouped-query attention, 4 query heads sharing 2 key/value heads:

        >>> gqa = MultiHeadAttention(4, num_kv_heads=2, causal=True)
        >>> params, state = gqa.init(jax.random.key(0), x)
        >>> params["query"]["w"].shape, params["key"]["w"].shape
        ((16, 4, 4), (16, 2, 4))

        Cross-attention to a padded memory, returning the weights:

        >>> cross = MultiHeadAttention(2, 4, return_weights=True)
        >>> inputs = {"x": x, "memory": jnp.ones((2, 7, 3)),
        ...           "memory_mask": jnp.arange(7) < jnp.array([[7], [4]])}
        >>> params, state = cross.init(jax.random.key(0), inputs)
        >>> (y, w), _ = cross.apply(params, state, inputs)
        >>> y.shape, w.shape, float(w[1, :, :, 4:].max())
        ((2, 5, 16), (2, 2, 5, 7), 0.0)
    """
    cfg = _check_config(
        num_heads,
        num_kv_heads,
        key_size,
        value_size,
        out_features,
        causal=causal,
        window=window,
        drop_rate=drop_rate,
        use_bias=use_bias,
        return_weights=return_weights,
        rope=rope,
        rope_base=rope_base,
        w_init=w_init,
        b_init=b_init,
        dtype=dtype,
        param_dtype=param_dtype,
        implementation=implementation,
    )

    def init(key, inputs):
        return _init(cfg, key, inputs)

    def apply(params, state, inputs, *, key=None, train=False):
        return _apply(cfg, params, state, inputs, key=key, train=train)

    return Layer(init, apply, _name(cfg))
