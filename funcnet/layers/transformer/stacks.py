"""Stacks of Transformer blocks: ``transformer_encoder`` and ``transformer_decoder``."""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax

from funcnet._checks import check_positive_int
from funcnet.combinators import on_x, repeat, serial
from funcnet.core import Layer, LayerError, call_with_path
from funcnet.layers.positional import cache_request
from funcnet.layers.transformer.blocks import (
    TransformerDecoderBlock,
    TransformerEncoderBlock,
    _with_remat,
    norm_layer,
)

__all__ = ["BlockStates", "SplitParams", "transformer_decoder", "transformer_encoder"]


# ---------------------------------------------------------------------------------------------
# Stacks


class SplitParams(NamedTuple):
    """A stack's params split into one tree per block (made by :func:`funcnet.generate` once,
    before its token loop, so the loop does not slice the stacked arrays at every token)."""

    blocks: tuple


class BlockStates(NamedTuple):
    """The decoding state of a stack of ``n`` blocks: one state per block, not stacked.

    Made by :func:`funcnet.init_cache` for the stacks of
    :func:`transformer_encoder` and :func:`transformer_decoder`.
    """

    blocks: tuple


def _repeat_blocks(block: Layer, n: int, unroll, remat_policy) -> Layer:
    """``repeat(block, n)``, except while decoding: then one state per block, run in a loop.

    Training and inference run the blocks as one ``lax.scan`` over their
    stacked params and state (:func:`~funcnet.repeat`). While decoding, the
    state holds each block's KV cache; scanned, the stacked caches would be
    sliced out and stacked back (copied) at every token, which made decoding
    ~1.8x slower. So the decoding state (made under
    :func:`funcnet.init_cache`) is a :class:`BlockStates` of one state per
    block, and ``apply`` given one runs the blocks one after the other, each
    with its slice of the params, which are the same in both modes (or, as
    :class:`SplitParams`, already split: :func:`funcnet.generate` splits them
    once before its token loop, since XLA:CPU copies the slices of stacked
    weights at every token otherwise; measured 15% of the decoding time).
    """
    block = _with_remat(block, remat_policy)
    stacked = repeat(block, n, unroll=unroll)

    def init(key, inputs):
        params, state = stacked.init(key, inputs)
        if cache_request() is None:
            return params, state
        per_block = [jax.tree.map(lambda a, i=i: a[i], state) for i in range(n)]
        return params, BlockStates(tuple(per_block))

    def apply(params, state, inputs, *, key=None, train=False):
        if not isinstance(state, BlockStates):
            return stacked.apply(params, state, inputs, key=key, train=train)
        if len(state.blocks) != n:
            raise LayerError(
                f"expected a decoding state of {n} blocks, got {len(state.blocks)}. Make it with "
                "`funcnet.init_cache` for this model.",
                path=["repeat"],
            )
        x, states = inputs, []
        for i, s in enumerate(state.blocks):
            if isinstance(params, SplitParams):
                p = params.blocks[i]
            else:
                p = jax.tree.map(lambda a, i=i: a[i], params)
            k = None if key is None else jax.random.fold_in(key, i)
            x, s = call_with_path("repeat", block.apply, p, s, x, key=k, train=train)
            states.append(s)
        return x, BlockStates(tuple(states))

    return Layer(init, apply, stacked.name, stacked.children)


# Up to this many blocks, ``unroll=None`` unrolls the scan over the blocks fully. Measured on
# XLA:CPU (2 cores, width 128, length 128, batch 16; ``python bench/unroll.py``), one scan's step
# time over the unrolled one: 1.13x at 2 blocks, 1.08x at 3, 1.02x at 4, 0.76x at 8.
UNROLL_MAX_BLOCKS = 3


def _stack(
    block: Layer, num_layers: int, final_norm, unroll, remat_policy, block_kwargs: dict
) -> Layer:
    """``repeat(block)``, then a LayerNorm of ``x`` when ``final_norm`` (default: pre-LN blocks)."""
    norm = block_kwargs.get("norm", "pre")
    if final_norm is None:
        final_norm = norm in ("pre", "rms")
    if unroll is None:
        unroll = True if num_layers <= UNROLL_MAX_BLOCKS else 1
    blocks = _repeat_blocks(block, num_layers, unroll, remat_policy)
    if not final_norm:
        return blocks
    return serial(blocks, on_x(norm_layer(norm, block_kwargs.get("epsilon", 1e-5))))


def transformer_encoder(
    num_layers: int,
    num_heads: int,
    *,
    final_norm: bool | None = None,
    unroll: int | bool | None = None,
    remat: bool | str | Callable = False,
    **block_kwargs,
) -> Layer:
    """``num_layers`` :func:`TransformerEncoderBlock` s run with ``repeat`` (one ``lax.scan``).

    Followed by a LayerNorm of ``"x"`` when ``final_norm`` (default: for
    pre-LN blocks, which leave their output un-normalized). Params: the
    stacked block params (leading axis ``num_layers``), then the final norm's:
    ``(blocks, norm)`` with the norm, ``blocks`` alone without. Inputs and
    outputs as the block's. ``remat`` (``True``, a policy name or function,
    see :func:`funcnet.remat`) recomputes each block in the backward pass:
    same gradients, less memory; decoding with a KV cache works as without.

    ``unroll`` is ``lax.scan``'s: the default ``None`` unrolls the scan fully
    for up to 3 blocks and keeps one rolled loop beyond (``unroll=1``), where
    it runs faster and compiles in a time that does not grow with depth
    (measured on XLA:CPU, see ``bench/unroll.py``). The params are stacked
    either way, so the choice never changes a checkpoint.

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
    return _stack(block, n, final_norm, unroll, remat, block_kwargs)


def transformer_decoder(
    num_layers: int,
    num_heads: int,
    *,
    final_norm: bool | None = None,
    unroll: int | bool | None = None,
    remat: bool | str | Callable = False,
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
    return _stack(block, n, final_norm, unroll, remat, block_kwargs)
