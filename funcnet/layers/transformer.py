"""Transformer blocks, built from the public layers with ``serial`` and ``residual``.

A block takes ``x`` ``(N, T, D)`` and returns an array of the same shape, or
takes the dict form (see :mod:`funcnet.layers.attention`) and returns the same
dict with ``"x"`` replaced and every other entry passed through unchanged, so
that ``repeat(block, n)`` (whose blocks must keep their input's structure)
stacks blocks that share one mask or one memory.

Three small helpers route the dict through ordinary layers; they are all a
block needs beyond :func:`~funcnet.serial` and :func:`~funcnet.residual`, and a
user writing their own block can use them the same way:

- :func:`on_x` applies a layer to ``"x"`` only (e.g. a LayerNorm or an MLP);
- :func:`select_keys` keeps some entries of the dict (e.g. the self-attention
  of a decoder sees ``"x"`` and ``"mask"``, not the memory);
- :func:`residual_x` is ``residual`` for the dict: ``x + f(inputs)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import numpy as np

from funcnet.combinators import repeat, residual, serial
from funcnet.core import Layer, LayerError, _apply_spec, _prepend_path, as_layer, spec_of
from funcnet.layers._util import check_positive_int, check_rate, fmt_shape
from funcnet.layers.activations import gelu
from funcnet.layers.attention import (
    _INPUT_KEYS,
    MultiHeadAttention,
    _replace_x,
    _sequence_of,
    _split_inputs,
)
from funcnet.layers.dense import Dense
from funcnet.layers.dropout import Dropout
from funcnet.layers.norm import LayerNorm

__all__ = [
    "TransformerDecoderBlock",
    "TransformerEncoderBlock",
    "on_x",
    "residual_x",
    "select_keys",
    "transformer_decoder",
    "transformer_encoder",
]


def _within(part: str, fn: Callable, *args, **kwargs):
    """Call ``fn``; an exception passing through gets ``part`` added to its layer path."""
    try:
        return fn(*args, **kwargs)
    except Exception as err:
        _prepend_path(err, part)
        raise


def _fold(key, i: int):
    return None if key is None else jax.random.fold_in(key, i)


# ---------------------------------------------------------------------------------------------
# Routing helpers for the dict convention


def on_x(layer: Layer | Callable) -> Layer:
    """Apply ``layer`` to ``"x"`` only: a dict keeps its other entries, an array is passed as is.

    Params and state are ``layer``'s own (no extra nesting).

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> from funcnet import LayerNorm
        >>> norm = on_x(LayerNorm())
        >>> inputs = {"x": jnp.ones((2, 3, 4)), "mask": jnp.ones((2, 3), bool)}
        >>> params, state = norm.init(jax.random.key(0), inputs)
        >>> jax.tree.map(jnp.shape, params)
        {'bias': (4,), 'scale': (4,)}
        >>> out, _ = norm.apply(params, state, inputs)
        >>> sorted(out), out["mask"] is inputs["mask"]
        (['mask', 'x'], True)
    """
    layer = as_layer(layer)
    name = f"on_x({layer.name})"

    def init(key, inputs):
        entries, _ = _split_inputs(inputs)
        return _within("on_x", layer.init, key, entries["x"])

    def apply(params, state, inputs, *, key=None, train=False):
        entries, is_dict = _split_inputs(inputs)
        y, state = _within("on_x", layer.apply, params, state, entries["x"], key=key, train=train)
        return _replace_x(inputs, is_dict, y), state

    return Layer(init, apply, name, (layer,))


def select_keys(*keys: str) -> Layer:
    """Keep only the given entries of a dict input (absent ones are skipped).

    An array input is taken as ``{"x": array}``. No params, state or key.

    Examples:
        >>> import jax.numpy as jnp
        >>> pick = select_keys("x", "mask")
        >>> out, _ = pick.apply((), (), {"x": jnp.ones(2), "memory": jnp.ones(3)})
        >>> sorted(out)
        ['x']
    """
    for k in keys:
        if k not in _INPUT_KEYS:
            raise ValueError(f"select_keys: unknown key {k!r}; the keys are {list(_INPUT_KEYS)}.")

    def pick(inputs):
        entries, _ = _split_inputs(inputs)
        return {k: entries[k] for k in keys if k in entries}

    def init(key, inputs):
        del key
        pick(inputs)
        return (), ()

    def apply(params, state, inputs, *, key=None, train=False):
        del params, key, train
        return pick(inputs), state

    return Layer(init, apply, f"select_keys({', '.join(map(repr, keys))})")


def residual_x(*layers: Layer | Callable) -> Layer:
    """``x + serial(*layers)(inputs)``: a skip connection whose branch sees the whole dict.

    The branch gets the inputs (array or dict) and must return an array shaped
    like ``"x"`` (checked at ``init``); the result replaces ``"x"``, other
    entries pass through. Params are a tuple, one entry per layer, as
    :func:`~funcnet.residual`.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> from funcnet import Dropout, LayerNorm
        >>> from funcnet.layers.attention import MultiHeadAttention
        >>> block = residual_x(on_x(LayerNorm()), MultiHeadAttention(2), Dropout(0.1))
        >>> inputs = {"x": jnp.ones((2, 3, 4)), "mask": jnp.ones((2, 3), bool)}
        >>> params, state = block.init(jax.random.key(0), inputs)
        >>> [sorted(p) for p in params]
        [['bias', 'scale'], ['key', 'out', 'query', 'value'], []]
        >>> block.apply(params, state, inputs)[0]["x"].shape
        (2, 3, 4)
    """
    if not layers:
        raise ValueError("residual_x: needs at least one layer, got none.")
    children = tuple(as_layer(layer) for layer in layers)
    n = len(children)

    def run_init(key, inputs):
        params, states, h = [], [], inputs
        for i, layer in enumerate(children):
            part = f"residual_x[{i}]"
            p, s = _within(part, layer.init, _fold(key, i), h)
            params.append(p)
            states.append(s)
            if i < n - 1:
                h = _within(part, _apply_spec, layer, p, s, h)
            else:
                out = _within(part, _apply_spec, layer, p, s, h)
        return tuple(params), tuple(states), out

    def init(key, inputs):
        entries, _ = _split_inputs(inputs)
        params, state, out = run_init(key, inputs)
        want = spec_of(entries["x"])
        if not (hasattr(out, "shape") and out.shape == want.shape and out.dtype == want.dtype):
            raise LayerError(
                f"the branch must return an array shaped like 'x' to be added to it: 'x' "
                f"{want.dtype}{list(want.shape)}, branch output {out}.",
                path=["residual_x"],
            )
        return params, state

    def apply(params, state, inputs, *, key=None, train=False):
        entries, is_dict = _split_inputs(inputs)
        if not isinstance(params, (tuple, list)) or len(params) != n:
            raise LayerError(
                f"expected params as a tuple of {n} entries (one per layer), got "
                f"{type(params).__name__}. Pass the params returned by this layer's `init`.",
                path=["residual_x"],
            )
        states, h = [], inputs
        for i, layer in enumerate(children):
            h, s = _within(
                f"residual_x[{i}]",
                layer.apply,
                params[i],
                state[i],
                h,
                key=_fold(key, i),
                train=train,
            )
            states.append(s)
        return _replace_x(inputs, is_dict, entries["x"] + h), tuple(states)

    return Layer(init, apply, "residual_x", children)


# ---------------------------------------------------------------------------------------------
# Blocks


def _check_common(owner, num_heads, mlp_ratio, drop_rate, attention_drop_rate, norm, epsilon, act):
    heads = check_positive_int(owner, "num_heads", num_heads)
    if (
        isinstance(mlp_ratio, bool)
        or not isinstance(mlp_ratio, (int, float, np.integer, np.floating))
        or not mlp_ratio > 0
        or not math.isfinite(mlp_ratio)
    ):
        raise ValueError(f"{owner}: `mlp_ratio` must be a number > 0, got {mlp_ratio!r}.")
    check_rate(owner, "drop_rate", drop_rate)
    check_rate(owner, "attention_drop_rate", attention_drop_rate)
    if norm not in ("pre", "post"):
        raise ValueError(
            f"{owner}: `norm` must be 'pre' (LayerNorm before each sub-block, the default) or "
            f"'post' (after each residual add, as the original Transformer), got {norm!r}."
        )
    if (
        isinstance(epsilon, bool)
        or not isinstance(epsilon, (int, float, np.floating))
        or not epsilon > 0
    ):
        raise ValueError(f"{owner}: `epsilon` must be a number > 0, got {epsilon!r}.")
    if not callable(act):
        raise ValueError(f"{owner}: `activation` must be a function or a layer, got {act!r}.")
    return heads


def _width(entries, heads: int) -> int:
    shape, _ = _sequence_of(entries["x"])
    d = shape[2]
    if d % heads:
        raise LayerError(
            f"`num_heads={heads}` does not divide the model width {d} of 'x' (shape "
            f"{fmt_shape(shape)}); use a number of heads in "
            f"{[h for h in range(1, d + 1) if d % h == 0]}."
        )
    return d


def _mlp(width, mlp_ratio, activation, drop_rate):
    hidden = max(1, round(mlp_ratio * width))
    return [Dense(hidden), activation, Dense(width), Dropout(drop_rate)]


def _deferred(name: str, allowed, require, heads: int, build: Callable[[int], Layer]) -> Layer:
    """A layer whose body is built at init/apply from the width of ``x`` (``build(width)``)."""

    def init(key, inputs):
        entries, _ = _split_inputs(inputs, allowed, require=require)
        body = build(_width(entries, heads))
        return _within(name, body.init, key, entries)

    def apply(params, state, inputs, *, key=None, train=False):
        entries, is_dict = _split_inputs(inputs, allowed, require=require)
        body = build(_width(entries, heads))
        out, state = _within(name, body.apply, params, state, entries, key=key, train=train)
        return _replace_x(inputs, is_dict, out["x"]), state

    return Layer(init, apply, name)


def _block_name(kind, heads, norm, causal, rope, drop_rate, attention_drop_rate):
    args = [str(heads)]
    if norm != "pre":
        args.append(f"norm={norm!r}")
    if causal:
        args.append("causal=True")
    if rope:
        args.append("rope=True")
    if drop_rate:
        args.append(f"drop_rate={drop_rate}")
    if attention_drop_rate:
        args.append(f"attention_drop_rate={attention_drop_rate}")
    return f"{kind}({', '.join(args)})"


def TransformerEncoderBlock(
    num_heads: int,
    *,
    mlp_ratio: float = 4,
    drop_rate: float = 0.0,
    attention_drop_rate: float = 0.0,
    norm: str = "pre",
    activation: Layer | Callable = gelu,
    epsilon: float = 1e-5,
    causal: bool = False,
    rope: bool = False,
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
    block of a decoder-only (GPT-style) language model.

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
        mlp_ratio: hidden width of the MLP as a multiple of ``D`` (rounded).
        drop_rate: dropout after the attention and after the MLP.
        attention_drop_rate: dropout on the attention weights.
        norm: ``"pre"`` or ``"post"``.
        activation: the MLP's activation, a function or a layer (default
            exact GELU).
        epsilon: LayerNorm epsilon.
        causal: causal self-attention.
        rope: rotary position embeddings in the attention.

    Raises:
        ValueError: in the constructor, for bad hyperparameters.
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
    heads = _check_common(
        owner, num_heads, mlp_ratio, drop_rate, attention_drop_rate, norm, epsilon, activation
    )

    def build(width: int) -> Layer:
        attention = MultiHeadAttention(
            heads, causal=causal, drop_rate=attention_drop_rate, rope=rope
        )
        if norm == "pre":
            return serial(
                attention=residual_x(
                    on_x(LayerNorm(epsilon=epsilon)), attention, Dropout(drop_rate)
                ),
                mlp=on_x(
                    residual(
                        LayerNorm(epsilon=epsilon), *_mlp(width, mlp_ratio, activation, drop_rate)
                    )
                ),
            )
        return serial(
            attention=residual_x(attention, Dropout(drop_rate)),
            attention_norm=on_x(LayerNorm(epsilon=epsilon)),
            mlp=on_x(residual(*_mlp(width, mlp_ratio, activation, drop_rate))),
            mlp_norm=on_x(LayerNorm(epsilon=epsilon)),
        )

    build(heads)  # surface errors of the parts' constructors now
    name = _block_name(owner, heads, norm, causal, rope, drop_rate, attention_drop_rate)
    return _deferred(name, ("x", "mask"), ("x",), heads, build)


def TransformerDecoderBlock(
    num_heads: int,
    *,
    mlp_ratio: float = 4,
    drop_rate: float = 0.0,
    attention_drop_rate: float = 0.0,
    norm: str = "pre",
    activation: Layer | Callable = gelu,
    epsilon: float = 1e-5,
    rope: bool = False,
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

    Args: as :func:`TransformerEncoderBlock` (``rope`` applies to the
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
    heads = _check_common(
        owner, num_heads, mlp_ratio, drop_rate, attention_drop_rate, norm, epsilon, activation
    )

    def build(width: int) -> Layer:
        self_attention = [
            select_keys("x", "mask"),
            MultiHeadAttention(heads, causal=True, drop_rate=attention_drop_rate, rope=rope),
            Dropout(drop_rate),
        ]
        cross_attention = [
            select_keys("x", "memory", "memory_mask"),
            MultiHeadAttention(heads, drop_rate=attention_drop_rate),
            Dropout(drop_rate),
        ]
        mlp = _mlp(width, mlp_ratio, activation, drop_rate)
        if norm == "pre":
            return serial(
                self_attention=residual_x(on_x(LayerNorm(epsilon=epsilon)), *self_attention),
                cross_attention=residual_x(on_x(LayerNorm(epsilon=epsilon)), *cross_attention),
                mlp=on_x(residual(LayerNorm(epsilon=epsilon), *mlp)),
            )
        return serial(
            self_attention=residual_x(*self_attention),
            self_attention_norm=on_x(LayerNorm(epsilon=epsilon)),
            cross_attention=residual_x(*cross_attention),
            cross_attention_norm=on_x(LayerNorm(epsilon=epsilon)),
            mlp=on_x(residual(*mlp)),
            mlp_norm=on_x(LayerNorm(epsilon=epsilon)),
        )

    build(heads)
    name = _block_name(owner, heads, norm, False, rope, drop_rate, attention_drop_rate)
    return _deferred(name, _INPUT_KEYS, ("x", "memory"), heads, build)


# ---------------------------------------------------------------------------------------------
# Stacks


def _stack(block: Layer, num_layers: int, final_norm: bool, epsilon: float, unroll) -> Layer:
    blocks = repeat(block, num_layers, unroll=unroll)
    if not final_norm:
        return blocks
    return serial(blocks, on_x(LayerNorm(epsilon=epsilon)))


def transformer_encoder(
    num_layers: int,
    num_heads: int,
    *,
    final_norm: bool | None = None,
    unroll: int | bool = 1,
    **block_kwargs,
) -> Layer:
    """``num_layers`` :func:`TransformerEncoderBlock` s run with ``repeat`` (one ``lax.scan``).

    Followed by a LayerNorm of ``"x"`` when ``final_norm`` (default: for
    pre-LN blocks, which leave their output un-normalized). Params: the
    stacked block params (leading axis ``num_layers``), then the final norm's:
    ``(blocks, norm)`` with the norm, ``blocks`` alone without. Inputs and
    outputs as the block's.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> enc = transformer_encoder(3, 2, mlp_ratio=2)
        >>> params, state = enc.init(jax.random.key(0), jnp.ones((2, 5, 8)))
        >>> params[0]["mlp"][1]["w"].shape, sorted(params[1])
        ((3, 8, 16), ['bias', 'scale'])
        >>> enc.apply(params, state, jnp.ones((2, 5, 8)))[0].shape
        (2, 5, 8)
    """
    n = check_positive_int("transformer_encoder", "num_layers", num_layers)
    block = TransformerEncoderBlock(num_heads, **block_kwargs)
    if final_norm is None:
        final_norm = block_kwargs.get("norm", "pre") == "pre"
    return _stack(block, n, final_norm, block_kwargs.get("epsilon", 1e-5), unroll)


def transformer_decoder(
    num_layers: int,
    num_heads: int,
    *,
    final_norm: bool | None = None,
    unroll: int | bool = 1,
    **block_kwargs,
) -> Layer:
    """``num_layers`` :func:`TransformerDecoderBlock` s run with ``repeat``, as
    :func:`transformer_encoder` (dict inputs with ``"memory"``; output the dict).

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> dec = transformer_decoder(2, 2)
        >>> inputs = {"x": jnp.ones((2, 5, 8)), "memory": jnp.ones((2, 3, 8))}
        >>> params, state = dec.init(jax.random.key(0), inputs)
        >>> dec.apply(params, state, inputs)[0]["x"].shape
        (2, 5, 8)
    """
    n = check_positive_int("transformer_decoder", "num_layers", num_layers)
    block = TransformerDecoderBlock(num_heads, **block_kwargs)
    if final_norm is None:
        final_norm = block_kwargs.get("norm", "pre") == "pre"
    return _stack(block, n, final_norm, block_kwargs.get("epsilon", 1e-5), unroll)
