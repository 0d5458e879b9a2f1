"""A BERT encoder (Devlin et al., 2019) from funcnet layers, for Hugging Face ``bert`` weights.

The model is Hugging Face's ``BertModel``::

    embeddings: word + position + token type tables, LayerNorm      # -> {"x": (N, T, D), "mask"}
    encoder:    transformer_encoder(L, H, norm="post", final_norm=False)   # BERT's post-LN blocks
    pooler:     tanh(Dense(D)(x[:, 0]))                              # the [CLS] summary

Inputs: token ids ``(N, T)``, or a dict ``{"x": ids, "mask": (N, T),
"token_type_ids": (N, T)}`` (``"mask"`` True or 1 for real tokens, as
Hugging Face's ``attention_mask``; ``token_type_ids`` default 0). Outputs:
``(last_hidden_state (N, T, D), pooler_output (N, D))``. Dropout is left
out (inference).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

from funcnet._checks import fmt_shape
from funcnet.combinators import serial
from funcnet.core import Layer, LayerError
from funcnet.interop.mapping import Entry, torch_mapping
from funcnet.interop.models._common import activation, as_dict, translate
from funcnet.layers import Dense, Embedding, LayerNorm, transformer_encoder

__all__ = ["bert", "bert_example_inputs", "bert_mapping"]

_NAMES = {  # torch.nn.TransformerEncoderLayer's names -> BERT's
    "self_attn": ("bert_attention", "attention"),
    "norm1": ("", "attention.output.LayerNorm"),
    "linear1": ("", "intermediate.dense"),
    "linear2": ("", "output.dense"),
    "norm2": ("", "output.LayerNorm"),
}
_KEYS = ("x", "mask", "token_type_ids")


def _read(inputs, max_len: int):
    """``(ids, mask or None, token types or None)``, checked."""
    if isinstance(inputs, Mapping):
        unknown = sorted(set(inputs) - set(_KEYS))
        if unknown or "x" not in inputs:
            raise LayerError(
                f"expected token ids or a dict with keys {list(_KEYS)} ('x' required), got keys "
                f"{sorted(inputs)}."
            )
        ids, mask, types = (inputs.get(k) for k in _KEYS)
    else:
        ids, mask, types = inputs, None, None
    if len(ids.shape) != 2 or not jnp.issubdtype(ids.dtype, jnp.integer):
        raise LayerError(f"expected integer token ids (N, T), got {ids.dtype}{list(ids.shape)}.")
    if ids.shape[1] > max_len:
        raise LayerError(
            f"the sequence is longer than `max_position_embeddings={max_len}`: ids of shape "
            f"{fmt_shape(ids.shape)}; cut the sequences."
        )
    for name, a in (("mask", mask), ("token_type_ids", types)):
        if a is not None and tuple(a.shape) != tuple(ids.shape):
            raise LayerError(
                f"expected '{name}' of the ids' shape {fmt_shape(ids.shape)}, got "
                f"{fmt_shape(a.shape)}."
            )
    return ids, mask, types


def _embeddings(c: dict) -> Layer:
    d, max_len = c["hidden_size"], c["max_position_embeddings"]
    children = {
        "word_embeddings": Embedding(c["vocab_size"], d),
        "position_embeddings": Embedding(max_len, d),
        "token_type_embeddings": Embedding(c.get("type_vocab_size", 2), d),
        "LayerNorm": LayerNorm(epsilon=c.get("layer_norm_eps", 1e-12)),
    }

    def init(key, inputs):
        ids, _, _ = _read(inputs, max_len)
        h = jax.ShapeDtypeStruct((*ids.shape, d), jnp.float32)
        args = {"LayerNorm": h}
        return {
            name: layer.init(jax.random.fold_in(key, i), args.get(name, ids))[0]
            for i, (name, layer) in enumerate(children.items())
        }, ()

    def apply(params, state, inputs, *, key=None, train=False):
        del key, train
        ids, mask, types = _read(inputs, max_len)
        if types is None:
            types = jnp.zeros_like(ids)
        h = (
            jnp.take(params["word_embeddings"]["table"], ids, axis=0)
            + params["position_embeddings"]["table"][: ids.shape[1]]
            + jnp.take(params["token_type_embeddings"]["table"], types, axis=0)
        )
        h, _ = children["LayerNorm"].apply(params["LayerNorm"], (), h)
        out = {"x": h} if mask is None else {"x": h, "mask": jnp.asarray(mask).astype(bool)}
        return out, state

    return Layer(init, apply, "BertEmbeddings", children)


def _pooler(d: int) -> Layer:
    dense = Dense(d)

    def init(key, inputs):
        x = inputs["x"]
        return {"dense": dense.init(key, jax.ShapeDtypeStruct((x.shape[0], d), x.dtype))[0]}, ()

    def apply(params, state, inputs, *, key=None, train=False):
        del key, train
        x = inputs["x"]
        pooled, _ = dense.apply(params["dense"], (), x[:, 0])
        return (x, jnp.tanh(pooled)), state

    return Layer(init, apply, "BertPooler", {"dense": dense})


def bert(config: Any, *, pooler: bool = True) -> Layer:
    """Hugging Face's ``BertModel`` of a config (``config.json`` as a dict).

    Reads ``vocab_size``, ``hidden_size``, ``num_hidden_layers``,
    ``num_attention_heads``, ``intermediate_size``, ``max_position_embeddings``,
    ``type_vocab_size``, ``layer_norm_eps`` and ``hidden_act``.

    Args:
        config: the config.
        pooler: end with the pooler (outputs ``(hidden, pooled)``); without it
            the outputs are ``{"x": hidden, "mask": ...}``.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> config = {"vocab_size": 20, "hidden_size": 8, "num_hidden_layers": 2,
        ...           "num_attention_heads": 2, "intermediate_size": 16,
        ...           "max_position_embeddings": 10}
        >>> model = bert(config)
        >>> mask = jnp.arange(6) < jnp.array([[6], [4]])
        >>> inputs = {"x": jnp.ones((2, 6), jnp.int32), "mask": mask}
        >>> params, state = model.init(jax.random.key(0), inputs)
        >>> hidden, pooled = model.apply(params, state, inputs)[0]
        >>> hidden.shape, pooled.shape
        ((2, 6, 8), (2, 8))
    """
    c = as_dict(config)
    if c.get("position_embedding_type", "absolute") != "absolute":
        raise ValueError(
            f"bert: `position_embedding_type={c['position_embedding_type']!r}` is not supported "
            "(only 'absolute')."
        )
    d = c["hidden_size"]
    encoder = transformer_encoder(
        c["num_hidden_layers"],
        c["num_attention_heads"],
        mlp_ratio=c["intermediate_size"] / d,
        norm="post",
        activation=activation(c, "hidden_act", "gelu"),
        epsilon=c.get("layer_norm_eps", 1e-12),
        final_norm=False,
    )
    parts = {"embeddings": _embeddings(c), "encoder": encoder}
    if pooler:
        parts["pooler"] = _pooler(d)
    return serial(**parts)


def bert_example_inputs(config: Any) -> dict:
    """Inputs to make the params' shapes with (one token)."""
    del config
    ids = jax.ShapeDtypeStruct((1, 1), jnp.int32)
    return {"x": ids, "mask": jax.ShapeDtypeStruct((1, 1), jnp.bool_)}


def bert_mapping(config: Any, prefix: str = "", *, pooler: bool = True) -> dict[str, Entry]:
    """The mapping of :func:`bert`'s params to a Hugging Face BERT state_dict.

    ``prefix`` is ``""`` for ``BertModel`` checkpoints and ``"bert"`` for the
    task models (``BertForMaskedLM``, ...).

    Examples:
        >>> config = {"vocab_size": 20, "hidden_size": 8, "num_hidden_layers": 2,
        ...           "num_attention_heads": 2, "intermediate_size": 16,
        ...           "max_position_embeddings": 10}
        >>> m = bert_mapping(config)
        >>> m["encoder/attention/0"].kind, m["encoder/attention/0"].torch
        ('bert_attention', 'encoder.layer.{i}.attention')
        >>> m["encoder/mlp_norm"].torch, m["pooler/dense"].torch
        ('encoder.layer.{i}.output.LayerNorm', 'pooler.dense')
    """
    c = as_dict(config)
    model = bert(c, pooler=pooler)
    p = f"{prefix}." if prefix else ""
    rename = {"embeddings": f"{p}embeddings", "encoder": f"{p}encoder.layer"}
    if pooler:
        rename["pooler"] = f"{p}pooler"
    mapping = torch_mapping(model, bert_example_inputs(c), rename=rename)
    return translate(mapping, _NAMES)
