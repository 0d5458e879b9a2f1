"""The Transformer encoder and decoder blocks (see :mod:`funcnet.layers.transformer`)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import numpy as np

from funcnet._checks import check_number, check_positive_int, check_rate, fmt_shape
from funcnet.combinators import (
    fanout,
    on_x,
    replace_x,
    residual,
    residual_x,
    select_keys,
    serial,
    split_inputs,
)
from funcnet.combinators import remat as remat_layer
from funcnet.core import Layer, LayerError, call_with_path
from funcnet.layers._sequence import sequence_of
from funcnet.layers.activations import gelu
from funcnet.layers.attention import ATTENTION_KEYS, MultiHeadAttention
from funcnet.layers.dropout import Dropout
from funcnet.layers.norm import LayerNorm, RMSNorm
from funcnet.layers.transformer.mlp import MLP_KINDS, block_mlp

__all__ = ["TransformerDecoderBlock", "TransformerEncoderBlock"]


# ---------------------------------------------------------------------------------------------
# Blocks


class _BlockOptions(NamedTuple):
    """The hyperparameters the encoder and decoder blocks share, checked."""

    heads: int
    kv_heads: int | None
    mlp_ratio: float
    drop_rate: float
    attention_drop_rate: float
    norm: str
    activation: Layer | Callable
    epsilon: float
    mlp: str


def _check_options(
    owner,
    num_heads,
    num_kv_heads,
    mlp_ratio,
    drop_rate,
    attention_drop_rate,
    norm,
    activation,
    epsilon,
    mlp="mlp",
) -> _BlockOptions:
    heads = check_positive_int(owner, "num_heads", num_heads)
    kv_heads = None
    if num_kv_heads is not None:
        kv_heads = check_positive_int(owner, "num_kv_heads", num_kv_heads)
        if heads % kv_heads:
            raise ValueError(
                f"{owner}: `num_kv_heads={kv_heads}` must divide `num_heads={heads}`; use one "
                f"of {[g for g in range(1, heads + 1) if heads % g == 0]}."
            )
    if (
        isinstance(mlp_ratio, bool)
        or not isinstance(mlp_ratio, (int, float, np.integer, np.floating))
        or not mlp_ratio > 0
        or not math.isfinite(mlp_ratio)
    ):
        raise ValueError(f"{owner}: `mlp_ratio` must be a number > 0, got {mlp_ratio!r}.")
    check_rate(owner, "drop_rate", drop_rate)
    check_rate(owner, "attention_drop_rate", attention_drop_rate)
    if norm not in ("pre", "post", "rms"):
        raise ValueError(
            f"{owner}: `norm` must be 'pre' (LayerNorm before each sub-block, the default), "
            "'rms' (RMSNorm before each sub-block, as LLaMA) or 'post' (LayerNorm after each "
            f"residual add, as the original Transformer), got {norm!r}."
        )
    if mlp not in MLP_KINDS:
        raise ValueError(
            f"{owner}: `mlp` must be one of {list(MLP_KINDS)} (the classic MLP, or a gated MLP "
            f"with SiLU or GELU, see `glu_mlp`), got {mlp!r}."
        )
    check_number(owner, "epsilon", epsilon, above=0)
    if not callable(activation):
        raise ValueError(
            f"{owner}: `activation` must be a function or a layer, got {activation!r}."
        )
    return _BlockOptions(
        heads, kv_heads, mlp_ratio, drop_rate, attention_drop_rate, norm, activation, epsilon, mlp
    )


def _block_name(
    owner: str, opts: _BlockOptions, *, causal: bool, rope: bool, window=None, parallel=False
) -> str:
    args = [str(opts.heads)]
    if opts.kv_heads is not None:
        args.append(f"num_kv_heads={opts.kv_heads}")
    if opts.norm != "pre":
        args.append(f"norm={opts.norm!r}")
    if opts.mlp != "mlp":
        args.append(f"mlp={opts.mlp!r}")
    if causal:
        args.append("causal=True")
    if rope:
        args.append("rope=True")
    if window is not None:
        args.append(f"window={window}")
    if parallel:
        args.append("parallel=True")
    if opts.drop_rate:
        args.append(f"drop_rate={opts.drop_rate}")
    if opts.attention_drop_rate:
        args.append(f"attention_drop_rate={opts.attention_drop_rate}")
    return f"{owner}({', '.join(args)})"


def _width(entries, heads: int) -> int:
    shape, _ = sequence_of(entries["x"])
    d = shape[2]
    if d % heads:
        raise LayerError(
            f"`num_heads={heads}` does not divide the model width {d} of 'x' (shape "
            f"{fmt_shape(shape)}); use a number of heads in "
            f"{[h for h in range(1, d + 1) if d % h == 0]}."
        )
    return d


def norm_layer(norm: str, epsilon: float) -> Layer:
    """The normalization of a block with ``norm`` (``"pre"``, ``"post"`` or ``"rms"``)."""
    return RMSNorm(epsilon=epsilon) if norm == "rms" else LayerNorm(epsilon=epsilon)


def _x_of(inputs):
    return split_inputs(inputs)[0]["x"]


def _add_pair(pair):
    return pair[0] + pair[1]


def _body(
    attentions: dict[str, list], width: int, opts: _BlockOptions, parallel: bool = False
) -> Layer:
    """The sub-blocks of a block: one ``residual_x`` per attention branch, then the MLP.

    With ``norm="pre"`` (``"rms"``) each sub-block starts with a LayerNorm
    (RMSNorm) of ``x``; with ``"post"`` a LayerNorm (``"<name>_norm"``)
    follows each residual add. ``parallel``: one residual around the
    attention and the MLP side by side on one shared norm (GPT-J, PaLM).
    """

    def layer_norm():
        return norm_layer(opts.norm, opts.epsilon)

    hidden = max(1, round(opts.mlp_ratio * width))
    mlp = block_mlp(opts.mlp, width, hidden, opts.activation, opts.drop_rate)
    if parallel:
        (branch,) = attentions.values()
        both = fanout(serial(*branch), serial(_x_of, *mlp))
        return serial(parallel=residual_x(on_x(layer_norm()), both, _add_pair))
    parts = {}
    pre = opts.norm != "post"
    for name, branch in attentions.items():
        if pre:
            parts[name] = residual_x(on_x(layer_norm()), *branch)
        else:
            parts[name] = residual_x(*branch)
            parts[f"{name}_norm"] = on_x(layer_norm())
    if pre:
        parts["mlp"] = on_x(residual(layer_norm(), *mlp))
    else:
        parts["mlp"] = on_x(residual(*mlp))
        parts["mlp_norm"] = on_x(layer_norm())
    return serial(**parts)


def _block(
    name: str,
    opts: _BlockOptions,
    attentions: Callable[[], dict[str, list]],
    allowed: tuple[str, ...],
    require: tuple[str, ...],
    parallel: bool = False,
) -> Layer:
    """A block whose body is built at init/apply from the width of ``x``.

    ``attentions()`` gives fresh attention branches (name -> layers) for each build.
    """

    def build(width: int) -> Layer:
        return _body(attentions(), width, opts, parallel)

    build(opts.heads)  # surface errors of the parts' constructors now

    def init(key, inputs):
        entries, _ = split_inputs(inputs, allowed, require=require)
        body = build(_width(entries, opts.heads))
        return call_with_path(name, body.init, key, entries)

    def apply(params, state, inputs, *, key=None, train=False):
        entries, is_dict = split_inputs(inputs, allowed, require=require)
        body = build(_width(entries, opts.heads))
        out, state = call_with_path(name, body.apply, params, state, entries, key=key, train=train)
        return replace_x(inputs, is_dict, out["x"]), state

    return Layer(init, apply, name)


def TransformerEncoderBlock(
    num_heads: int,
    *,
    num_kv_heads: int | None = None,
    mlp_ratio: float = 4,
    drop_rate: float = 0.0,
    attention_drop_rate: float = 0.0,
    norm: str = "pre",
    activation: Layer | Callable = gelu,
    epsilon: float = 1e-5,
    mlp: str = "mlp",
    causal: bool = False,
    rope: bool = False,
    window: int | None = None,
    parallel: bool = False,
    remat: bool | str | Callable = False,
    attention_implementation: str | None = None,
) -> Layer:
    """A Transformer encoder block: self-attention and an MLP, each with a residual.

    The model width ``D`` is read from the inputs ``(N, T, D)`` (``num_heads``
    must divide it; each head has size ``D // num_heads``). With
    ``norm="pre"`` (default; GPT-2, ViT) and ``norm="post"`` (the original
    Transformer, BERT)::

        pre:   x = x + Dropout(MHA(LN(x), mask))       post:  x = LN(x + Dropout(MHA(x, mask)))
               x = x + MLP(LN(x))                             x = LN(x + MLP(x))

        MLP = Dense(mlp_ratio * D), activation, Dense(D), Dropout

    ``Dropout`` uses ``drop_rate``; ``attention_drop_rate`` drops attention
    weights. A pre-LN stack is usually followed by a final LayerNorm
    (:func:`transformer_encoder` adds it). With ``causal=True`` this is the
    block of a decoder-only (GPT-style) language model, and it decodes token by
    token with the KV cache that :func:`funcnet.init_cache` puts in its state
    (see :func:`funcnet.generate`). ``num_kv_heads`` makes the attention
    grouped-query (or multi-query, with 1).

    Inputs: ``x`` ``(N, T, D)`` -> an array of the same shape; or a dict
    ``{"x", "mask"}`` -> the same dict with ``"x"`` replaced (``"mask"`` as in
    :func:`~funcnet.layers.attention.MultiHeadAttention`, e.g. the ``(N, T)``
    padding mask). Needs ``key`` only with ``train=True`` and a dropout rate > 0.
    No state. Built as (pre-LN; the post-LN params have ``"attention"``,
    ``"attention_norm"``, ``"mlp"``, ``"mlp_norm"``)::

        serial(
            attention=residual_x(on_x(LayerNorm()), MultiHeadAttention(h), Dropout(p)),
            mlp=on_x(residual(LayerNorm(), Dense(r * D), activation, Dense(D), Dropout(p))),
        )

    Args:
        num_heads: number of attention heads.
        num_kv_heads: number of key/value heads (grouped-query attention;
            must divide ``num_heads``); default ``num_heads``.
        mlp_ratio: hidden width of the MLP as a multiple of ``D`` (rounded).
        drop_rate: dropout after the attention and after the MLP.
        attention_drop_rate: dropout on the attention weights.
        norm: ``"pre"``, ``"post"`` or ``"rms"`` (pre-norm with RMSNorm).
        activation: the MLP's activation, a function or a layer (default
            exact GELU; unused by the gated MLPs).
        epsilon: LayerNorm (RMSNorm) epsilon.
        mlp: ``"mlp"`` (above), ``"swiglu"`` or ``"geglu"``: the gated MLP
            :func:`~funcnet.layers.transformer.glu_mlp` with hidden width
            ``mlp_ratio * D`` and SiLU or GELU, no biases (LLaMA: ``norm="rms",
            mlp="swiglu"``).
        causal: causal self-attention.
        rope: rotary position embeddings in the attention.
        window: with ``causal=True``, a sliding window of ``window`` keys
            (see :func:`~funcnet.layers.attention.MultiHeadAttention`).
        parallel: the attention and the MLP side by side on one shared norm,
            ``x = x + Dropout(MHA(LN(x))) + MLP(LN(x))`` (GPT-J, PaLM): one
            residual, built as ``serial(parallel=residual_x(on_x(LN),
            fanout(serial(MHA, Dropout), serial(x_of, *MLP)), add))``;
            pre-norm (``"pre"`` or ``"rms"``) only.
        remat: ``True``, a policy name or function: recompute the block in
            the backward pass (:func:`funcnet.remat`); default off.
        attention_implementation: the attention kernel, ``None`` (XLA) or
            ``"cudnn"`` (flash attention on NVIDIA GPUs), see
            :func:`~funcnet.layers.attention.MultiHeadAttention`'s ``implementation``.

    Raises:
        ValueError: in the constructor, for bad hyperparameters (also
            ``parallel=True`` with ``norm="post"``).
        LayerError: for inputs that are not ``(N, T, D)``, ``num_heads`` not
            dividing ``D``, bad masks or unknown dict keys.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> block = TransformerEncoderBlock(4, mlp_ratio=2)
        >>> x = jnp.ones((2, 5, 16))
        >>> params, state = block.init(jax.random.key(0), x)
        >>> jax.tree.map(jnp.shape, params["mlp"])  # doctest: +NORMALIZE_WHITESPACE
        ({'bias': (16,), 'scale': (16,)}, {'b': (32,), 'w': (16, 32)}, (),
         {'b': (16,), 'w': (32, 16)}, ())
        >>> params["attention"][1]["query"]["w"].shape
        (16, 4, 4)
        >>> block.apply(params, state, x)[0].shape
        (2, 5, 16)
        >>> inputs = {"x": x, "mask": jnp.arange(5) < jnp.array([[5], [3]])}
        >>> out, _ = block.apply(params, state, inputs)
        >>> sorted(out), out["x"].shape
        (['mask', 'x'], (2, 5, 16))
    """
    owner = "TransformerEncoderBlock"
    opts = _check_options(
        owner,
        num_heads,
        num_kv_heads,
        mlp_ratio,
        drop_rate,
        attention_drop_rate,
        norm,
        activation,
        epsilon,
        mlp,
    )

    def attentions():
        mha = MultiHeadAttention(
            opts.heads,
            num_kv_heads=opts.kv_heads,
            causal=causal,
            window=window,
            drop_rate=attention_drop_rate,
            rope=rope,
            implementation=attention_implementation,
        )
        return {"attention": [mha, Dropout(drop_rate)]}

    if parallel and opts.norm == "post":
        raise ValueError(
            f"{owner}: `parallel=True` shares one norm before the attention and the MLP, so it "
            "needs `norm='pre'` or `norm='rms'`, got norm='post'."
        )
    name = _block_name(owner, opts, causal=causal, rope=rope, window=window, parallel=parallel)
    block = _block(name, opts, attentions, ("x", "mask"), ("x",), bool(parallel))
    return _with_remat(block, remat)


def TransformerDecoderBlock(
    num_heads: int,
    *,
    num_kv_heads: int | None = None,
    mlp_ratio: float = 4,
    drop_rate: float = 0.0,
    attention_drop_rate: float = 0.0,
    norm: str = "pre",
    activation: Layer | Callable = gelu,
    epsilon: float = 1e-5,
    mlp: str = "mlp",
    rope: bool = False,
    window: int | None = None,
    remat: bool | str | Callable = False,
    attention_implementation: str | None = None,
) -> Layer:
    """A Transformer decoder block: causal self-attention, cross-attention to a memory, an MLP.

    Inputs: a dict ``{"x": (N, T, D), "memory": (N, S, D_m), "mask"?,
    "memory_mask"?}`` -> the same dict with ``"x"`` replaced, so
    ``repeat(block, n)`` stacks blocks over one memory. ``"mask"`` restricts the
    (already causal) self-attention, e.g. the ``(N, T)`` padding of ``x``;
    ``"memory_mask"`` ``(N, S)`` is the padding of the memory. ``D`` is read
    from ``x`` (``num_heads`` must divide it). Needs ``key`` only with
    ``train=True`` and a dropout rate > 0; no state. Pre-LN (default)::

        x = x + Dropout(MHA_causal(LN(x), mask))
        x = x + Dropout(MHA(LN(x), memory, memory_mask))
        x = x + MLP(LN(x))          MLP = Dense(mlp_ratio * D), activation, Dense(D), Dropout

    Post-LN applies each LayerNorm after its residual add instead. Built as
    (pre-LN)::

        serial(
            self_attention=residual_x(on_x(LayerNorm()), select_keys("x", "mask"),
                                      MultiHeadAttention(h, causal=True), Dropout(p)),
            cross_attention=residual_x(on_x(LayerNorm()),
                                       select_keys("x", "memory", "memory_mask"),
                                       MultiHeadAttention(h), Dropout(p)),
            mlp=on_x(residual(LayerNorm(), Dense(r * D), activation, Dense(D), Dropout(p))),
        )

    Under :func:`funcnet.init_cache` the self-attention keeps a KV cache (the
    cross-attention does not: it reads ``"memory"``, passed with every call).

    Args: as :func:`TransformerEncoderBlock` (``rope`` and ``window``, a
    sliding window of the last ``window`` positions, apply to the
    self-attention only).

    Raises:
        ValueError: in the constructor, for bad hyperparameters.
        LayerError: for inputs without ``"memory"``, arrays that are not
            ``(N, T, D)``, ``num_heads`` not dividing ``D``, bad masks or
            unknown dict keys.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> block = TransformerDecoderBlock(2)
        >>> inputs = {"x": jnp.ones((2, 5, 8)), "memory": jnp.ones((2, 7, 6))}
        >>> params, state = block.init(jax.random.key(0), inputs)
        >>> sorted(params)
        ['cross_attention', 'mlp', 'self_attention']
        >>> jax.tree.map(jnp.shape, params["cross_attention"][2]["key"])
        {'b': (2, 4), 'w': (6, 2, 4)}
        >>> out, _ = block.apply(params, state, inputs)
        >>> out["x"].shape, out["memory"] is inputs["memory"]
        ((2, 5, 8), True)
    """
    owner = "TransformerDecoderBlock"
    opts = _check_options(
        owner,
        num_heads,
        num_kv_heads,
        mlp_ratio,
        drop_rate,
        attention_drop_rate,
        norm,
        activation,
        epsilon,
        mlp,
    )

    def attentions():
        self_attention = MultiHeadAttention(
            opts.heads,
            num_kv_heads=opts.kv_heads,
            causal=True,
            window=window,
            drop_rate=attention_drop_rate,
            rope=rope,
            implementation=attention_implementation,
        )
        cross_attention = MultiHeadAttention(
            opts.heads,
            num_kv_heads=opts.kv_heads,
            drop_rate=attention_drop_rate,
            implementation=attention_implementation,
        )
        return {
            "self_attention": [select_keys("x", "mask"), self_attention, Dropout(drop_rate)],
            "cross_attention": [
                select_keys("x", "memory", "memory_mask"),
                cross_attention,
                Dropout(drop_rate),
            ],
        }

    name = _block_name(owner, opts, causal=False, rope=rope, window=window)
    block = _block(name, opts, attentions, allowed=ATTENTION_KEYS, require=("x", "memory"))
    return _with_remat(block, remat)


def _with_remat(block: Layer, policy) -> Layer:
    """``block``, or ``remat(block, policy)`` for ``policy`` other than ``False``/``None``."""
    if policy is False or policy is None:
        return block
    return remat_layer(block, None if policy is True else policy)
