"""How each kind of layer's parameters are laid out in PyTorch, in both directions.

A *kind* (``"linear"``, ``"conv"``, ``"lstm"``, ...) is a pair of functions
over one layer's params and state (plain dicts, numpy arrays):

- ``export(params, state, entry) -> {torch_name: array}``, names relative to
  the torch module (``"weight"``, ``"in_proj_bias"``);
- ``load(get, params, state, entry) -> (params, state)``: ``get(name)`` gives
  the torch tensor of that relative name as a numpy array; ``params`` and
  ``state`` are the funcnet templates (their keys say e.g. whether there is a
  bias).

Every load is the inverse of its export, so the shapes a state_dict must have
are found by exporting the template. :data:`KINDS` holds them all:

- ``linear``: ``w (in, out)``, ``b`` <-> ``weight (out, in)``, ``bias``;
  ``conv1d`` (Hugging Face's ``Conv1D``): ``weight (in, out)``, untransposed.
- ``conv``: ``w (*k, C/G, F)`` <-> ``weight (F, C/G, *k)``;
  ``conv_transpose``: ``w (*k, C/G, F)`` <-> ``weight (C, F/G, *k)``.
- ``batch_norm``: ``scale``, ``bias``, state ``mean``, ``var`` <-> ``weight``,
  ``bias``, ``running_mean``, ``running_var``, ``num_batches_tracked``.
- ``layer_norm``, ``group_norm``, ``rms_norm``: ``scale``, ``bias`` <-> ``weight``, ``bias``.
- ``embedding``: ``table`` <-> ``weight``.
- ``lstm``, ``rnn``: ``wi``, ``wh``, ``b`` <-> ``weight_ih_l0 (G*H, F)``,
  ``weight_hh_l0``, ``bias_ih_l0``, ``bias_hh_l0``; ``gru``: ``wi``, ``wh``,
  ``bi``, ``bh`` (the suffix ``_l0`` comes from the entry).
- ``multihead_attention``: ``query``, ``key``, ``value``, ``out`` (per head)
  <-> ``in_proj_weight (3E, E)``, ``in_proj_bias``, ``out_proj.weight``,
  ``out_proj.bias``; ``gpt2_attention``: <-> ``c_attn.weight (E, 3E)``,
  ``c_attn.bias``, ``c_proj``; ``bert_attention``: <-> ``self.query``,
  ``self.key``, ``self.value``, ``output.dense``.
- ``copy``: any leaves <-> the same names (``.``-joined), arrays unchanged.

Conventions worth knowing:

- ``batch_norm``: ``num_batches_tracked`` is dropped on load and exported as
  0 (funcnet does not count batches). Momentum is the weight of the *old*
  statistics in funcnet (``BatchNorm(momentum=0.9)`` is torch's
  ``momentum=0.1``), and funcnet keeps the biased batch variance in its
  running statistics where torch keeps the unbiased one: the converted
  statistics are used as they are, only further training updates differ.
- ``lstm``/``rnn``: funcnet adds torch's two biases into one; the export puts
  the sum in ``bias_ih`` and zeros in ``bias_hh`` (same outputs; each torch
  bias's gradient equals funcnet's ``b`` gradient).
- ``conv_transpose`` needs ``groups`` (in the mapping entry) to export.
- ``multihead_attention`` needs as many key/value heads as query heads, keys
  and values of one size, and ``out_features`` equal to the width; torch
  stores ``q/k/v_proj_weight`` instead of ``in_proj_weight`` when the memory
  has another width than ``x``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import numpy as np

__all__ = ["KINDS", "Kind", "NotRepresentable"]

Getter = Callable[[str], np.ndarray]


class NotRepresentable(ValueError):
    """funcnet params that the torch layer of this kind cannot hold (e.g. grouped-query heads)."""


class Kind(NamedTuple):
    """One kind of layer: ``export`` to torch names, ``load`` back (see the module docs).

    ``optional`` lists torch names a state_dict may lack (``num_batches_tracked``).
    """

    export: Callable[[Any, Any, Any], dict[str, np.ndarray]]
    load: Callable[[Getter, Any, Any, Any], tuple[Any, Any]]
    optional: tuple[str, ...] = ()


def _has(tree, name: str) -> bool:
    return isinstance(tree, Mapping) and name in tree


# ---------------------------------------------------------------------------------------------
# Dense, convolutions, norms, embeddings


def _export_linear(p, s, e):
    del s, e
    out = {"weight": p["w"].T}
    if _has(p, "b"):
        out["bias"] = p["b"]
    return out


def _load_linear(get, p, s, e):
    del e
    out = {"w": get("weight").T}
    if _has(p, "b"):
        out["b"] = get("bias")
    return out, s


def _export_conv1d(p, s, e):
    del s, e
    return {"weight": p["w"], **({"bias": p["b"]} if _has(p, "b") else {})}


def _load_conv1d(get, p, s, e):
    del e
    return {"w": get("weight"), **({"b": get("bias")} if _has(p, "b") else {})}, s


def _export_conv(p, s, e):
    del s, e
    w = p["w"]
    nd = w.ndim - 2
    out = {"weight": w.transpose(nd + 1, nd, *range(nd))}
    if _has(p, "b"):
        out["bias"] = p["b"]
    return out


def _load_conv(get, p, s, e):
    del e
    w = get("weight")
    nd = w.ndim - 2
    out = {"w": w.transpose(*range(2, 2 + nd), 1, 0)}
    if _has(p, "b"):
        out["b"] = get("bias")
    return out, s


def _export_conv_transpose(p, s, e):
    del s
    w, g = p["w"], e.groups
    nd, (cg, f) = w.ndim - 2, w.shape[-2:]
    if f % g:
        raise NotRepresentable(f"`groups={g}` does not divide the {f} output channels")
    kernel = w.shape[:nd]
    split = w.reshape(*kernel, cg, g, f // g)
    torch_w = split.transpose(nd + 1, nd, nd + 2, *range(nd)).reshape(g * cg, f // g, *kernel)
    out = {"weight": torch_w}
    if _has(p, "b"):
        out["bias"] = p["b"]
    return out


def _load_conv_transpose(get, p, s, e):
    w, g = get("weight"), e.groups
    nd = w.ndim - 2
    c, fg, kernel = w.shape[0], w.shape[1], w.shape[2:]
    split = w.reshape(g, c // g, fg, *kernel)
    out = {"w": split.transpose(*range(3, 3 + nd), 1, 0, 2).reshape(*kernel, c // g, g * fg)}
    if _has(p, "b"):
        out["b"] = get("bias")
    return out, s


def _export_affine(p, names=("weight", "bias")):
    out = {}
    for ours, theirs in zip(("scale", "bias"), names):
        if _has(p, ours):
            out[theirs] = p[ours]
    return out


def _load_affine(get, p):
    if not isinstance(p, Mapping):
        return p
    return {k: get({"scale": "weight", "bias": "bias"}[k]) for k in p}


def _export_norm(p, s, e):
    del s, e
    return _export_affine(p)


def _load_norm(get, p, s, e):
    del e
    return _load_affine(get, p), s


def _export_batch_norm(p, s, e):
    del e
    out = _export_affine(p)
    out["running_mean"], out["running_var"] = s["mean"], s["var"]
    out["num_batches_tracked"] = np.zeros((), np.int64)
    return out


def _load_batch_norm(get, p, s, e):
    del s, e
    return _load_affine(get, p), {"mean": get("running_mean"), "var": get("running_var")}


def _export_embedding(p, s, e):
    del s, e
    return {"weight": p["table"]}


def _load_embedding(get, p, s, e):
    del p, e
    return {"table": get("weight")}, s


# ---------------------------------------------------------------------------------------------
# Recurrent layers: one entry per layer and direction; `entry.suffix` is "_l0", "_l1_reverse"...


def _export_rnn(p, s, e):
    del s
    x = e.suffix
    out = {f"weight_ih{x}": p["wi"].T, f"weight_hh{x}": p["wh"].T}
    if "b" in p:  # LSTM / simple RNN: one bias in funcnet, two in torch
        out[f"bias_ih{x}"], out[f"bias_hh{x}"] = p["b"], np.zeros_like(p["b"])
    else:  # GRU: kept apart
        out[f"bias_ih{x}"], out[f"bias_hh{x}"] = p["bi"], p["bh"]
    return out


def _load_rnn(get, p, s, e):
    x = e.suffix
    out = {"wi": get(f"weight_ih{x}").T, "wh": get(f"weight_hh{x}").T}
    if "b" in p:
        out["b"] = get(f"bias_ih{x}") + get(f"bias_hh{x}")
    else:
        out["bi"], out["bh"] = get(f"bias_ih{x}"), get(f"bias_hh{x}")
    return out, s


# ---------------------------------------------------------------------------------------------
# Attention: funcnet's per-head q/k/v/out <-> one (E, E) matrix per projection, torch's layout


def _matrices(p) -> dict[str, np.ndarray]:
    """The four projections as torch ``(out, in)`` matrices and their biases (flat)."""
    wq, wk, wv, wo = (p[n]["w"] for n in ("query", "key", "value", "out"))
    (d, h, k), (dm, g, _), v = wq.shape, wk.shape, wv.shape[2]
    if g != h or v != k or h * k != d or wo.shape[2] != d:
        raise NotRepresentable(
            f"torch attention needs num_kv_heads == num_heads, value_size == key_size and "
            f"num_heads * key_size == out_features == the width of 'x'; got query {wq.shape}, "
            f"key {wk.shape}, value {wv.shape}, out {wo.shape} (D, H, K)/(H, V, D_out)"
        )
    out = {
        "q": wq.reshape(d, h * k).T,
        "k": wk.reshape(dm, h * k).T,
        "v": wv.reshape(dm, h * k).T,
        "o": wo.reshape(h * k, d).T,
    }
    if _has(p["query"], "b"):
        for n, name in zip("qkv", ("query", "key", "value")):
            out[f"b{n}"] = p[name]["b"].reshape(-1)
        out["bo"] = p["out"]["b"]
    return out


def _heads(mats: Mapping, p) -> dict:
    """The inverse of :func:`_matrices`, shaped like the template ``p``."""
    out = {}
    for n, name in zip("qkv", ("query", "key", "value")):
        w = p[name]["w"]
        out[name] = {"w": mats[n].T.reshape(w.shape)}
        if _has(p[name], "b"):
            out[name]["b"] = mats[f"b{n}"].reshape(p[name]["b"].shape)
    out["out"] = {"w": mats["o"].T.reshape(p["out"]["w"].shape)}
    if _has(p["out"], "b"):
        out["out"]["b"] = mats["bo"]
    return out


def _packed(p) -> bool:
    """Whether torch packs q, k and v in one ``in_proj_weight`` (memory as wide as ``x``)."""
    return p["key"]["w"].shape[0] == p["query"]["w"].shape[0]


def _export_mha(p, s, e):
    del s, e
    m = _matrices(p)
    if _packed(p):
        out = {"in_proj_weight": np.concatenate([m["q"], m["k"], m["v"]])}
    else:
        out = {f"{n}_proj_weight": m[n] for n in "qkv"}
    if "bq" in m:
        out["in_proj_bias"] = np.concatenate([m["bq"], m["bk"], m["bv"]])
    out["out_proj.weight"] = m["o"]
    if "bo" in m:
        out["out_proj.bias"] = m["bo"]
    return out


def _load_mha(get, p, s, e):
    del e
    if _packed(p):
        mats = dict(zip("qkv", np.split(get("in_proj_weight"), 3)))
    else:
        mats = {n: get(f"{n}_proj_weight") for n in "qkv"}
    mats["o"] = get("out_proj.weight")
    if _has(p["query"], "b"):
        mats.update(zip(("bq", "bk", "bv"), np.split(get("in_proj_bias"), 3)))
        mats["bo"] = get("out_proj.bias")
    return _heads(mats, p), s


def _export_gpt2_attention(p, s, e):
    del s, e
    m = _matrices(p)
    out = {"c_attn.weight": np.concatenate([m["q"], m["k"], m["v"]]).T, "c_proj.weight": m["o"].T}
    if "bq" in m:
        out["c_attn.bias"] = np.concatenate([m["bq"], m["bk"], m["bv"]])
        out["c_proj.bias"] = m["bo"]
    return out


def _load_gpt2_attention(get, p, s, e):
    del e
    mats = dict(zip("qkv", np.split(get("c_attn.weight").T, 3)))
    mats["o"] = get("c_proj.weight").T
    if _has(p["query"], "b"):
        mats.update(zip(("bq", "bk", "bv"), np.split(get("c_attn.bias"), 3)))
        mats["bo"] = get("c_proj.bias")
    return _heads(mats, p), s


_BERT_NAMES = {
    "q": "self.query",
    "k": "self.key",
    "v": "self.value",
    "o": "output.dense",
}


def _export_bert_attention(p, s, e):
    del s, e
    m = _matrices(p)
    out = {}
    for n, name in _BERT_NAMES.items():
        out[f"{name}.weight"] = m[n]
        if f"b{n}" in m:
            out[f"{name}.bias"] = m[f"b{n}"]
    return out


def _load_bert_attention(get, p, s, e):
    del e
    mats = {n: get(f"{name}.weight") for n, name in _BERT_NAMES.items()}
    if _has(p["query"], "b"):
        mats.update({f"b{n}": get(f"{name}.bias") for n, name in _BERT_NAMES.items()})
    return _heads(mats, p), s


# ---------------------------------------------------------------------------------------------
# Any layer: the same names, arrays unchanged


def _flat(tree, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, Mapping):
        items = tree.items()
    elif isinstance(tree, (tuple, list)):
        items = enumerate(tree)
    else:
        return {prefix: tree}
    out = {}
    for k, v in items:
        out.update(_flat(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def _unflat(template, get, prefix: str = ""):
    if isinstance(template, Mapping):
        return {
            k: _unflat(v, get, f"{prefix}.{k}" if prefix else str(k)) for k, v in template.items()
        }
    if isinstance(template, (tuple, list)):
        return type(template)(
            _unflat(v, get, f"{prefix}.{i}" if prefix else str(i)) for i, v in enumerate(template)
        )
    return get(prefix)


def _export_copy(p, s, e):
    del e
    return {**_flat(p), **_flat(s)}


def _load_copy(get, p, s, e):
    del e
    return _unflat(p, get), _unflat(s, get)


KINDS: dict[str, Kind] = {
    "linear": Kind(_export_linear, _load_linear),
    "conv1d": Kind(_export_conv1d, _load_conv1d),
    "conv": Kind(_export_conv, _load_conv),
    "conv_transpose": Kind(_export_conv_transpose, _load_conv_transpose),
    "batch_norm": Kind(_export_batch_norm, _load_batch_norm, ("num_batches_tracked",)),
    "layer_norm": Kind(_export_norm, _load_norm),
    "group_norm": Kind(_export_norm, _load_norm),
    "rms_norm": Kind(_export_norm, _load_norm),
    "embedding": Kind(_export_embedding, _load_embedding),
    "lstm": Kind(_export_rnn, _load_rnn),
    "gru": Kind(_export_rnn, _load_rnn),
    "rnn": Kind(_export_rnn, _load_rnn),
    "multihead_attention": Kind(_export_mha, _load_mha),
    "gpt2_attention": Kind(_export_gpt2_attention, _load_gpt2_attention),
    "bert_attention": Kind(_export_bert_attention, _load_bert_attention),
    "copy": Kind(_export_copy, _load_copy),
}
"""Every kind a mapping entry may name, by name (see the module docs for the layouts)."""
