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

Modules: :mod:`~funcnet.layers.attention.scaled` (the attention function and
masks), :mod:`~funcnet.layers.attention.multi_head` (the layer) and
:mod:`~funcnet.layers.attention.cache` (its KV cache for decoding, see
:func:`funcnet.init_cache` and :func:`funcnet.generate`).
"""

# KVCache and ATTENTION_KEYS are importable from here, but not star-exported to `funcnet`.
from funcnet.layers.attention.cache import KVCache as KVCache
from funcnet.layers.attention.multi_head import MultiHeadAttention
from funcnet.layers.attention.scaled import ATTENTION_KEYS as ATTENTION_KEYS
from funcnet.layers.attention.scaled import dot_product_attention

# The positional layers live in funcnet.layers.positional; they are exported here as well.
from funcnet.layers.positional import (
    PositionalEmbedding,
    RotaryEmbedding,
    SinusoidalEncoding,
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
