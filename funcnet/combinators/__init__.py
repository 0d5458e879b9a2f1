"""Combinators: build models out of layers (and plain functions).

Every combinator returns a :class:`~funcnet.core.Layer`. Children's keys are
derived from the parent's with ``jax.random.fold_in(key, child_index)``, so a
model takes one key at the top. Errors raised by a child get the
combinator's part of the path (``serial[3]``) prepended.

**Sequence inputs** follow one convention, shared by the recurrent, attention
and positional layers and the Transformer blocks: a plain array is the
sequence ``x``; several arrays travel as one dict with the sequence under
``"x"`` and optional ``"mask"``, ``"lengths"``, ``"carry"``, ``"memory"`` and
``"memory_mask"`` (:data:`INPUT_KEYS`; each layer documents the ones it
reads). :func:`split_inputs` reads that convention and :func:`replace_x`
writes a layer's output back into it. Three combinators route such a dict
through ordinary layers, which is all a Transformer block needs beyond
:func:`serial` and :func:`residual`:

- :func:`on_x` applies a layer to ``"x"`` only (e.g. a LayerNorm or an MLP);
- :func:`select_keys` keeps some entries of the dict (e.g. the self-attention
  of a decoder sees ``"x"`` and ``"mask"``, not the memory);
- :func:`residual_x` is ``residual`` for the dict: ``x + f(inputs)``.
"""

from funcnet.combinators.basic import concat, fanout, parallel, residual, serial
from funcnet.combinators.precision import POLICIES, Policy, get_policy, with_policy
from funcnet.combinators.remat import REMAT_POLICIES, remat
from funcnet.combinators.reuse import repeat, shared
from funcnet.combinators.routing import (
    INPUT_KEYS,
    on_x,
    replace_x,
    residual_x,
    select_keys,
    split_inputs,
)

__all__ = [
    "INPUT_KEYS",
    "POLICIES",
    "Policy",
    "REMAT_POLICIES",
    "concat",
    "fanout",
    "get_policy",
    "on_x",
    "parallel",
    "remat",
    "repeat",
    "replace_x",
    "residual",
    "residual_x",
    "select_keys",
    "serial",
    "shared",
    "split_inputs",
    "with_policy",
]
