"""GPT-2 (Radford et al., 2019) from funcnet layers, loading Hugging Face ``gpt2`` checkpoints.

The model maps token ids ``(N, T)`` to logits ``(N, T, vocab_size)``::

    Embedding (wte) -> PositionalEmbedding (wpe)
      -> transformer_encoder(n_layer, n_head, causal=True)   # pre-LN blocks, final LayerNorm
      -> the token table again (tied, the default) or a Dense(vocab_size) lm_head

Each block is a :func:`~funcnet.TransformerEncoderBlock` with GELU's tanh
approximation (Hugging Face's ``gelu_new``) and ``layer_norm_epsilon``; the
checkpoint's ``Conv1D`` weights are ``(in, out)`` already (kind ``conv1d``)
and ``c_attn`` packs q, k and v (kind ``gpt2_attention``). Dropout is left
out (inference; add your own to fine-tune). Because it is built from the
standard layers, :func:`funcnet.generate` decodes it with a KV cache.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from funcnet.combinators import serial, shared
from funcnet.core import Layer
from funcnet.interop.mapping import Entry, torch_mapping
from funcnet.interop.models._common import activation, as_dict, translate
from funcnet.layers import Dense, Embedding, PositionalEmbedding, transformer_encoder

__all__ = ["gpt2", "gpt2_example_inputs", "gpt2_mapping"]

_NAMES = {  # torch.nn.TransformerEncoderLayer's names -> GPT-2's
    "self_attn": ("gpt2_attention", "attn"),
    "norm1": ("", "ln_1"),
    "norm2": ("", "ln_2"),
    "linear1": ("conv1d", "mlp.c_fc"),
    "linear2": ("conv1d", "mlp.c_proj"),
}


def _check(c: dict) -> None:
    for flag, want in (("scale_attn_weights", True), ("scale_attn_by_inverse_layer_idx", False)):
        if c.get(flag, want) != want:
            raise ValueError(f"gpt2: config `{flag}={c[flag]!r}` is not supported (only {want}).")
    if c.get("add_cross_attention"):
        raise ValueError("gpt2: config `add_cross_attention=True` is not supported.")


def gpt2(config: Any) -> Layer:
    """The GPT-2 language model of a Hugging Face config (``config.json`` as a dict).

    Reads ``vocab_size``, ``n_positions``, ``n_embd``, ``n_layer``, ``n_head``,
    ``n_inner`` (default ``4 * n_embd``), ``layer_norm_epsilon``,
    ``activation_function`` and ``tie_word_embeddings`` (default True).

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> config = {"vocab_size": 11, "n_positions": 8, "n_embd": 4, "n_layer": 2, "n_head": 2}
        >>> model = gpt2(config)
        >>> params, state = model.init(jax.random.key(0), jnp.zeros((1, 5), jnp.int32))
        >>> params["shared"]["table"].shape  # the token table, also the output projection
        (11, 4)
        >>> model.apply(params, state, jnp.zeros((3, 5), jnp.int32))[0].shape
        (3, 5, 11)
    """
    c = as_dict(config)
    _check(c)
    d, vocab = c["n_embd"], c["vocab_size"]
    inner = c.get("n_inner") or 4 * d
    blocks = transformer_encoder(
        c["n_layer"],
        c["n_head"],
        mlp_ratio=inner / d,
        activation=activation(c, "activation_function", "gelu_new"),
        epsilon=c.get("layer_norm_epsilon", 1e-5),
        causal=True,
    )
    positions = PositionalEmbedding(c["n_positions"])
    if c.get("tie_word_embeddings", True):
        return shared(Embedding(vocab, d), lambda wte: serial(wte, positions, blocks, wte))
    return serial(Embedding(vocab, d), positions, blocks, Dense(vocab, use_bias=False))


def gpt2_example_inputs(config: Any) -> jax.ShapeDtypeStruct:
    """Inputs to make the params' shapes with (one token)."""
    del config
    return jax.ShapeDtypeStruct((1, 1), jnp.int32)


def gpt2_mapping(config: Any, prefix: str = "transformer") -> dict[str, Entry]:
    """The mapping of :func:`gpt2`'s params to a Hugging Face GPT-2 state_dict.

    ``prefix`` is ``"transformer"`` for ``GPT2LMHeadModel`` checkpoints and
    ``""`` for ``GPT2Model`` ones; an untied ``lm_head`` is always top-level.

    Examples:
        >>> config = {"vocab_size": 11, "n_positions": 8, "n_embd": 4, "n_layer": 2, "n_head": 2}
        >>> for path, e in gpt2_mapping(config).items():
        ...     print(f"{path:22} {e.kind:15} {e.torch}")
        shared                 embedding       transformer.wte
        body/1                 embedding       transformer.wpe
        body/2/0/attention/0   layer_norm      transformer.h.{i}.ln_1
        body/2/0/attention/1   gpt2_attention  transformer.h.{i}.attn
        body/2/0/mlp/0         layer_norm      transformer.h.{i}.ln_2
        body/2/0/mlp/1         conv1d          transformer.h.{i}.mlp.c_fc
        body/2/0/mlp/3         conv1d          transformer.h.{i}.mlp.c_proj
        body/2/1               layer_norm      transformer.ln_f
    """
    c = as_dict(config)
    model = gpt2(c)
    p = f"{prefix}." if prefix else ""
    if c.get("tie_word_embeddings", True):
        rename = {
            "shared": f"{p}wte",
            "body/1": f"{p}wpe",
            "body/2/0": f"{p}h",
            "body/2/1": f"{p}ln_f",
        }
    else:
        rename = {"0": f"{p}wte", "1": f"{p}wpe", "2/0": f"{p}h", "2/1": f"{p}ln_f", "3": "lm_head"}
    mapping = torch_mapping(model, gpt2_example_inputs(c), rename=rename)
    return translate(mapping, _NAMES)
