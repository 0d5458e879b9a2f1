"""Hugging Face checkpoints from local folders: ``config.json`` and safetensors, no network.

A folder written by ``transformers``' ``save_pretrained`` holds
``config.json`` and either ``model.safetensors`` or shards listed in
``model.safetensors.index.json`` (``{"weight_map": {tensor: shard file}}``).
:func:`read_weights` reads either into ``{name: array}`` through
:func:`funcnet.checkpoint.load`, which checks each file as untrusted input
and never executes anything (``pytorch_model.bin`` pickles are refused).
:func:`from_pretrained` builds the matching reference model of
:mod:`funcnet.interop.models` from the config and loads the weights into it.
Nothing here downloads: fetch a model once with the tools of your choice
(``huggingface-cli download``), then point these functions at the folder.
"""

from __future__ import annotations

import glob
import json
import os
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np

from funcnet.checkpoint import load as load_safetensors
from funcnet.core import Layer
from funcnet.interop.models import (
    bert,
    bert_example_inputs,
    bert_mapping,
    gpt2,
    gpt2_example_inputs,
    gpt2_mapping,
    llama,
    llama_example_inputs,
    llama_mapping,
)
from funcnet.interop.pytorch import InteropError, from_torch

__all__ = [
    "ARCHITECTURES",
    "Architecture",
    "Pretrained",
    "from_pretrained",
    "read_config",
    "read_weights",
]

INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"


class Architecture(NamedTuple):
    """How to build and load one ``model_type``.

    Attributes:
        build: ``(config, prefix, names) -> (model, mapping, example_inputs)``
            for a checkpoint whose base-model tensors sit under ``prefix`` and
            which holds the tensors ``names`` (e.g. with or without a pooler).
        prefixes: the prefixes checkpoints put before the base model's names,
            tried in order (``"transformer"`` for ``GPT2LMHeadModel``).
        ignore: glob patterns of checkpoint tensors the model does not use.
    """

    build: Callable[[dict, str, set], tuple[Layer, dict, Any]]
    prefixes: tuple[str, ...]
    ignore: tuple[str, ...] = ()


def _build_gpt2(config: dict, prefix: str, names: set) -> tuple[Layer, dict, Any]:
    del names
    return gpt2(config), gpt2_mapping(config, prefix), gpt2_example_inputs(config)


def _build_llama(config: dict, prefix: str, names: set) -> tuple[Layer, dict, Any]:
    del names
    return llama(config), llama_mapping(config, prefix), llama_example_inputs(config)


def _build_bert(config: dict, prefix: str, names: set) -> tuple[Layer, dict, Any]:
    pooler = any(n.endswith("pooler.dense.weight") for n in names)  # task models have none
    model, mapping = bert(config, pooler=pooler), bert_mapping(config, prefix, pooler=pooler)
    return model, mapping, bert_example_inputs(config)


ARCHITECTURES: dict[str, Architecture] = {
    "gpt2": Architecture(
        _build_gpt2,
        ("transformer", ""),
        ("*.attn.bias", "*.attn.masked_bias"),  # causal-mask buffers of older checkpoints
    ),
    "bert": Architecture(_build_bert, ("bert", ""), ("*position_ids",)),  # an old buffer
    "llama": Architecture(_build_llama, ("model", ""), ("*.rotary_emb.inv_freq",)),  # old buffer
}
"""The ``model_type`` s :func:`from_pretrained` builds; add your own entries."""


class Pretrained(NamedTuple):
    """A loaded checkpoint: the funcnet model, its params and state, and the config dict."""

    model: Layer
    params: Any
    state: Any
    config: dict


def _folder(path) -> str:
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise FileNotFoundError(
            f"`{path}` is not a folder; pass the local folder of a Hugging Face checkpoint (with "
            "config.json and model.safetensors), e.g. one written by `save_pretrained`."
        )
    return path


def read_config(folder: str | os.PathLike) -> dict:
    """The ``config.json`` of a checkpoint folder, as a dict.

    Raises:
        FileNotFoundError: when the folder or its config.json is missing.
        InteropError: when config.json is not a JSON object.

    Examples:
        >>> import json, os, tempfile
        >>> folder = tempfile.mkdtemp()
        >>> with open(os.path.join(folder, "config.json"), "w") as f:
        ...     json.dump({"model_type": "gpt2", "n_embd": 8}, f)
        >>> read_config(folder)["n_embd"]
        8
    """
    path = os.path.join(_folder(folder), "config.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"`{path}` does not exist: the folder has no config.json.")
    try:
        with open(path, encoding="utf-8") as f:
            config = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise InteropError(f"`{path}` is not valid JSON: {err}.") from err
    if not isinstance(config, dict):
        raise InteropError(f"`{path}` must hold a JSON object, got {type(config).__name__}.")
    return config


def _shards(folder: str) -> dict[str, list[str]]:
    """``{shard file: [tensor names]}`` from the index, checked (names inside the folder)."""
    path = os.path.join(folder, INDEX)
    try:
        with open(path, encoding="utf-8") as f:
            index = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise InteropError(f"`{path}` is not valid JSON: {err}.") from err
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in weight_map.items()
    ):
        raise InteropError(f'`{path}` needs a "weight_map" object of tensor name -> shard file.')
    shards: dict[str, list[str]] = {}
    for name, shard in weight_map.items():
        if os.path.basename(shard) != shard or shard in ("", ".", ".."):
            raise InteropError(
                f"`{path}`: shard {shard!r} (of tensor {name!r}) is not a file name in the folder."
            )
        shards.setdefault(shard, []).append(name)
    return shards


def read_weights(folder: str | os.PathLike) -> dict[str, np.ndarray]:
    """Every tensor of a checkpoint folder: ``model.safetensors``, or the shards of its index.

    Returns:
        ``{name: array}`` (numpy arrays in the file's dtypes; bfloat16 as
        ``jnp.bfloat16``).

    Raises:
        FileNotFoundError: for a missing folder, no safetensors weights (the
            message says how to convert a ``pytorch_model.bin``) or a missing shard.
        InteropError: for a malformed index, or a shard that lacks tensors the
            index puts in it (all listed).
        funcnet.checkpoint.CheckpointError: for a malformed or truncated file.

    Examples:
        >>> import os, tempfile, numpy as np
        >>> from funcnet.checkpoint import save
        >>> folder = tempfile.mkdtemp()
        >>> path = os.path.join(folder, "model.safetensors")
        >>> _ = save(path, {"wte": np.ones((3, 2), np.float32)})
        >>> {name: a.shape for name, a in read_weights(folder).items()}
        {'wte': (3, 2)}
    """
    folder = _folder(folder)
    if os.path.isfile(os.path.join(folder, INDEX)):
        out, lost = {}, []
        for shard, names in _shards(folder).items():
            path = os.path.join(folder, shard)
            if not os.path.isfile(path):
                raise FileNotFoundError(f"`{path}` is missing: {INDEX} lists it for {names[:3]}...")
            arrays = {k: np.asarray(v) for k, v in load_safetensors(path).items()}
            lost += [f"{n} (in {shard})" for n in names if n not in arrays]
            out.update(arrays)
        if lost:
            raise InteropError(f"`{folder}`: the index lists tensors its shards lack: {lost}.")
        return out
    path = os.path.join(folder, SINGLE)
    if os.path.isfile(path):
        return {k: np.asarray(v) for k, v in load_safetensors(path).items()}
    pickles = [f for f in os.listdir(folder) if f.endswith((".bin", ".pt", ".pth"))]
    hint = (
        f" It has {pickles}: pickled weights, which funcnet never loads (they can run code); "
        "re-save them once with `model.save_pretrained(folder, safe_serialization=True)`."
        if pickles
        else ""
    )
    raise FileNotFoundError(f"`{folder}` has neither {SINGLE} nor {INDEX}.{hint}")


def _prefix(arch: Architecture, config: dict, names: set[str]) -> str:
    """The first of ``arch.prefixes`` under which the checkpoint has the model's tensors."""
    for prefix in arch.prefixes:
        _, mapping, _ = arch.build(config, prefix, names)
        wanted = {e.torch.replace("{i}", "0") for e in mapping.values()}
        if any(n.startswith(w + ".") for w in wanted for n in names):
            return prefix
    return arch.prefixes[0]


def from_pretrained(folder: str | os.PathLike, *, strict_heads: bool = False) -> Pretrained:
    """Build the reference model of a local Hugging Face checkpoint and load its weights.

    The ``model_type`` of ``config.json`` picks the architecture in
    :data:`ARCHITECTURES` (``"gpt2"``, ``"bert"``, ``"llama"``). The base model's tensors
    are loaded; those of task heads a checkpoint adds (``cls.*`` of
    ``BertForMaskedLM``, ``classifier.*``, ...) are skipped unless
    ``strict_heads``.

    Args:
        folder: the checkpoint folder.
        strict_heads: report tensors outside the base model as unexpected
            instead of skipping them.

    Returns:
        :class:`Pretrained` ``(model, params, state, config)``.

    Raises:
        FileNotFoundError, InteropError: see :func:`read_config`,
            :func:`read_weights`; an :class:`InteropError` also for an
            unsupported ``model_type`` and for weights that do not fit the
            config (every tensor listed, see :func:`~funcnet.interop.from_torch`).

    Examples:
        A folder written without torch (funcnet's GPT-2 exported in the
        checkpoint's names), read back:

        >>> import json, os, tempfile, jax, jax.numpy as jnp
        >>> from funcnet.checkpoint import save
        >>> from funcnet.interop import to_torch
        >>> from funcnet.interop.models import gpt2, gpt2_mapping
        >>> config = {"model_type": "gpt2", "vocab_size": 11, "n_positions": 8, "n_embd": 4,
        ...           "n_layer": 2, "n_head": 2}
        >>> model = gpt2(config)
        >>> params, state = model.init(jax.random.key(0), jnp.zeros((1, 3), jnp.int32))
        >>> sd = to_torch(model, params, state, mapping=gpt2_mapping(config), as_numpy=True)
        >>> folder = tempfile.mkdtemp()
        >>> _ = save(os.path.join(folder, "model.safetensors"), sd)
        >>> with open(os.path.join(folder, "config.json"), "w") as f:
        ...     json.dump(config, f)
        >>> loaded = from_pretrained(folder)
        >>> bool((loaded.params["shared"]["table"] == params["shared"]["table"]).all())
        True
    """
    config = read_config(folder)
    model_type = config.get("model_type")
    if model_type not in ARCHITECTURES:
        raise InteropError(
            f"`{os.fspath(folder)}`: model_type {model_type!r} is not supported; supported: "
            f"{sorted(ARCHITECTURES)} (add an `Architecture` to `ARCHITECTURES` for others)."
        )
    arch = ARCHITECTURES[model_type]
    weights = read_weights(folder)
    prefix = _prefix(arch, config, set(weights))
    model, mapping, inputs = arch.build(config, prefix, set(weights))
    ignore = list(arch.ignore)
    if not strict_heads:  # skip what is neither under the prefix nor named by the mapping
        mine = [f"{prefix}."] if prefix else []
        mine += [f"{e.torch.split('.{i}')[0]}." for e in mapping.values()]
        ignore += [glob.escape(n) for n in weights if not n.startswith(tuple(mine))]
    params, state = from_torch(model, inputs, weights, mapping=mapping, ignore=ignore)
    return Pretrained(model, params, state, config)
