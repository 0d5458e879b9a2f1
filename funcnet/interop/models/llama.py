"""A Llama-family decoder (Touvron et al., 2023) from funcnet layers, for Hugging Face ``llama``.

The model maps token ids ``(N, T)`` to logits ``(N, T, vocab_size)``::

    embed_tokens: Embedding(vocab_size, D)
    layers:       repeat(block, num_hidden_layers), each block pre-norm:
        attention = residual(RMSNorm, MultiHeadAttention(H, head_dim, num_kv_heads=G,
                                                         causal=True, rope=True, use_bias=False))
        mlp       = residual(RMSNorm, fanout(gate, up), silu(gate) * up, down)   # SwiGLU
    norm:         RMSNorm
    lm_head:      Dense(vocab_size, use_bias=False), or the token table again (tied)

Hugging Face's checkpoints store q and k in the "rotate-half" layout their
``apply_rotary_pos_emb`` expects, which is :func:`funcnet.apply_rope`'s, so
the projections load as they are (no permutation; Meta's original
interleaved checkpoints are permuted by Hugging Face's conversion script,
not here). Grouped-query heads map one to one: key/value head ``g`` serves
query heads ``g * H // G ... (g + 1) * H // G - 1`` in both. Because the
model is built from the standard layers, :func:`funcnet.generate` decodes it
with a KV cache.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from funcnet.combinators import fanout, repeat, residual, serial, shared
from funcnet.core import Layer
from funcnet.interop.kinds import Kind
from funcnet.interop.mapping import Entry
from funcnet.interop.models._common import activation, as_dict
from funcnet.layers import Dense, Embedding, MultiHeadAttention, RMSNorm

__all__ = ["LLAMA_ATTENTION", "llama", "llama_example_inputs", "llama_mapping"]

_PROJ = {"query": "q_proj", "key": "k_proj", "value": "v_proj"}


def _export_attention(p, s, e):
    """funcnet's per-head ``(D, H, K)`` projections -> ``{q,k,v,o}_proj.weight`` ``(out, in)``."""
    del s, e
    out = {}
    for name, proj in _PROJ.items():
        w = np.asarray(p[name]["w"])
        out[f"{proj}.weight"] = w.reshape(w.shape[0], -1).T
        if "b" in p[name]:
            out[f"{proj}.bias"] = np.asarray(p[name]["b"]).reshape(-1)
    wo = np.asarray(p["out"]["w"])
    out["o_proj.weight"] = wo.reshape(-1, wo.shape[-1]).T
    if "b" in p["out"]:
        out["o_proj.bias"] = np.asarray(p["out"]["b"])
    return out


def _load_attention(get, p, s, e):
    """The inverse of :func:`_export_attention`, shaped like the template ``p``."""
    del e
    out = {}
    for name, proj in (*_PROJ.items(), ("out", "o_proj")):
        w = get(f"{proj}.weight").T
        out[name] = {"w": w.reshape(p[name]["w"].shape)}
        if "b" in p[name]:
            out[name]["b"] = get(f"{proj}.bias").reshape(p[name]["b"].shape)
    return out, s


LLAMA_ATTENTION = Kind(_export_attention, _load_attention)
"""The kind of Hugging Face's ``LlamaAttention``: ``q_proj``, ``k_proj``, ``v_proj``, ``o_proj``.

Any numbers of query and key/value heads (grouped-query attention), biases
when the params have them (``attention_bias=True``).
"""


def _rope_base(c: dict) -> float:
    """``rope_theta``, from ``rope_parameters`` (transformers 5) or the top level (4.x)."""
    rope = c.get("rope_parameters") or c.get("rope_scaling") or {}
    kind = rope.get("rope_type", rope.get("type", "default"))
    if kind != "default":
        raise ValueError(
            f"llama: RoPE scaling `rope_type={kind!r}` is not supported (only 'default', "
            "unscaled RoPE)."
        )
    if c.get("partial_rotary_factor", 1.0) != 1.0:
        raise ValueError(
            f"llama: `partial_rotary_factor={c['partial_rotary_factor']}` is not supported "
            "(only 1.0)."
        )
    return float(rope.get("rope_theta", c.get("rope_theta", 10000.0)))


def _swiglu(gate_up):
    gate, up = gate_up
    return jax.nn.silu(gate) * up


def _block(c: dict) -> Layer:
    d, heads = c["hidden_size"], c["num_attention_heads"]
    eps, mlp_bias = c.get("rms_norm_eps", 1e-6), bool(c.get("mlp_bias", False))
    act = activation(c, "hidden_act", "silu")
    if act is not jax.nn.silu:
        raise ValueError(f"llama: `hidden_act={c['hidden_act']!r}` is not supported (only 'silu').")
    attention = MultiHeadAttention(
        heads,
        c.get("head_dim") or d // heads,
        num_kv_heads=c.get("num_key_value_heads") or heads,
        out_features=d,
        causal=True,
        rope=True,
        rope_base=_rope_base(c),
        use_bias=bool(c.get("attention_bias", False)),
    )
    inner = c["intermediate_size"]
    gate_up = fanout(Dense(inner, use_bias=mlp_bias), Dense(inner, use_bias=mlp_bias))
    return serial(
        attention=residual(RMSNorm(epsilon=eps), attention),
        mlp=residual(RMSNorm(epsilon=eps), gate_up, _swiglu, Dense(d, use_bias=mlp_bias)),
    )


def llama(config: Any) -> Layer:
    """The Llama-family causal language model of a Hugging Face config (``config.json``).

    Reads ``vocab_size``, ``hidden_size``, ``intermediate_size``,
    ``num_hidden_layers``, ``num_attention_heads``, ``num_key_value_heads``
    (default: as many as query heads), ``head_dim`` (default ``hidden_size //
    num_attention_heads``), ``rms_norm_eps``, ``rope_parameters`` /
    ``rope_theta`` (unscaled RoPE only), ``attention_bias``, ``mlp_bias``,
    ``hidden_act`` (``"silu"``) and ``tie_word_embeddings`` (default False).

    Raises:
        ValueError: for a RoPE scaling, a partial rotary factor or an
            activation other than SiLU.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> config = {"vocab_size": 11, "hidden_size": 8, "intermediate_size": 12,
        ...           "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2}
        >>> model = llama(config)
        >>> params, state = model.init(jax.random.key(0), jnp.zeros((1, 5), jnp.int32))
        >>> attention = params["layers"]["attention"][1]  # stacked over the 2 layers
        >>> attention["query"]["w"].shape, attention["key"]["w"].shape
        ((2, 8, 4, 2), (2, 8, 2, 2))
        >>> model.apply(params, state, jnp.zeros((3, 5), jnp.int32))[0].shape
        (3, 5, 11)
    """
    c = as_dict(config)
    d, vocab = c["hidden_size"], c["vocab_size"]
    layers = repeat(_block(c), c["num_hidden_layers"])
    norm = RMSNorm(epsilon=c.get("rms_norm_eps", 1e-6))
    if c.get("tie_word_embeddings", False):
        return shared(
            Embedding(vocab, d),
            lambda table: serial(embed_tokens=table, layers=layers, norm=norm, lm_head=table),
        )
    return serial(
        embed_tokens=Embedding(vocab, d),
        layers=layers,
        norm=norm,
        lm_head=Dense(vocab, use_bias=False),
    )


def llama_example_inputs(config: Any) -> jax.ShapeDtypeStruct:
    """Inputs to make the params' shapes with (one token)."""
    del config
    return jax.ShapeDtypeStruct((1, 1), jnp.int32)


def llama_mapping(config: Any, prefix: str = "model") -> dict[str, Entry]:
    """The mapping of :func:`llama`'s params to a Hugging Face Llama state_dict.

    ``prefix`` is ``"model"`` for ``LlamaForCausalLM`` checkpoints and ``""``
    for ``LlamaModel`` ones; an untied ``lm_head`` is always top-level.

    Examples:
        >>> config = {"vocab_size": 11, "hidden_size": 8, "intermediate_size": 12,
        ...           "num_hidden_layers": 2, "num_attention_heads": 4, "tie_word_embeddings": True}
        >>> for path, e in llama_mapping(config).items():
        ...     print(f"{path:27} {e.torch}")
        shared                      model.embed_tokens
        body/layers/attention/0     model.layers.{i}.input_layernorm
        body/layers/attention/1     model.layers.{i}.self_attn
        body/layers/mlp/0           model.layers.{i}.post_attention_layernorm
        body/layers/mlp/1/0         model.layers.{i}.mlp.gate_proj
        body/layers/mlp/1/1         model.layers.{i}.mlp.up_proj
        body/layers/mlp/3           model.layers.{i}.mlp.down_proj
        body/norm                   model.norm
    """
    c = as_dict(config)
    p, n = f"{prefix}." if prefix else "", c["num_hidden_layers"]
    tied = c.get("tie_word_embeddings", False)
    body = "body/" if tied else ""
    layer = f"{p}layers.{{i}}"
    mapping = {("shared" if tied else "embed_tokens"): Entry("embedding", f"{p}embed_tokens")}
    for path, kind, name in (
        ("attention/0", "rms_norm", "input_layernorm"),
        ("attention/1", LLAMA_ATTENTION, "self_attn"),
        ("mlp/0", "rms_norm", "post_attention_layernorm"),
        ("mlp/1/0", "linear", "mlp.gate_proj"),
        ("mlp/1/1", "linear", "mlp.up_proj"),
        ("mlp/3", "linear", "mlp.down_proj"),
    ):
        mapping[f"{body}layers/{path}"] = Entry(kind, f"{layer}.{name}", stack=n)
    mapping[f"{body}norm"] = Entry("rms_norm", f"{p}norm")
    if not tied:
        mapping["lm_head"] = Entry("linear", "lm_head")
    return mapping
