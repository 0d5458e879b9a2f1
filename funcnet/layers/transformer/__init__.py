"""Transformer blocks, built from the public layers with ``serial`` and ``residual``.

A block takes ``x`` ``(N, T, D)`` and returns an array of the same shape, or
takes the dict form (see :mod:`funcnet.layers.attention`) and returns the same
dict with ``"x"`` replaced and every other entry passed through unchanged, so
that ``repeat(block, n)`` (whose blocks must keep their input's structure)
stacks blocks that share one mask or one memory.

The blocks are built with :func:`~funcnet.serial`, :func:`~funcnet.residual`
and the three routing combinators of :mod:`funcnet.combinators` (re-exported
here): :func:`~funcnet.combinators.on_x` applies a layer to ``"x"`` only,
:func:`~funcnet.combinators.select_keys` keeps some entries of the dict and
:func:`~funcnet.combinators.residual_x` is ``residual`` for the dict. A user
writing their own block can use them the same way.
"""

from funcnet.combinators import on_x, residual_x, select_keys
from funcnet.layers.transformer.blocks import TransformerDecoderBlock, TransformerEncoderBlock
from funcnet.layers.transformer.mlp import glu_mlp
from funcnet.layers.transformer.stacks import BlockStates as BlockStates
from funcnet.layers.transformer.stacks import SplitParams as SplitParams
from funcnet.layers.transformer.stacks import transformer_decoder, transformer_encoder

__all__ = [
    "TransformerDecoderBlock",
    "TransformerEncoderBlock",
    "glu_mlp",
    "on_x",
    "residual_x",
    "select_keys",
    "transformer_decoder",
    "transformer_encoder",
]
