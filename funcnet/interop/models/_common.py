"""What the reference models share: configs as dicts, activations by name, renaming mappings."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp

from funcnet.interop.mapping import Entry

__all__ = ["ACTIVATIONS", "activation", "as_dict", "translate"]

ACTIVATIONS: dict[str, Callable] = {
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_fast": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
    "tanh": jnp.tanh,
    "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),
}
"""Hugging Face's ``activation_function`` / ``hidden_act`` names, as JAX functions."""


def as_dict(config: Any) -> dict:
    """A Hugging Face config as a dict: ``config.json``'s contents, or a ``PretrainedConfig``."""
    if hasattr(config, "to_dict"):
        config = config.to_dict()
    if not isinstance(config, Mapping):
        raise TypeError(
            f"expected a config dict (the contents of config.json) or a transformers config, got "
            f"{type(config).__name__}."
        )
    return dict(config)


def activation(config: Mapping, key: str, default: str) -> Callable:
    """The activation named by ``config[key]`` (``default`` when absent)."""
    name = config.get(key, default)
    if name not in ACTIVATIONS:
        raise ValueError(
            f"config `{key}={name!r}` is not supported; supported: {sorted(ACTIVATIONS)}."
        )
    return ACTIVATIONS[name]


def translate(
    mapping: Mapping[str, Entry], table: Mapping[str, tuple[str, str]]
) -> dict[str, Entry]:
    """``mapping`` with each entry whose torch name ends in a key of ``table`` rewritten.

    ``table`` maps the last part of a default torch name (``"self_attn"``,
    ``"linear1"``) to ``(kind, new_last_part)``; ``kind`` ``""`` keeps the entry's.

    Examples:
        >>> m = {"0/attention/1": Entry("multihead_attention", "h.{i}.self_attn", stack=2)}
        >>> translate(m, {"self_attn": ("gpt2_attention", "attn")})["0/attention/1"]
        Entry(kind='gpt2_attention', torch='h.{i}.attn', suffix='', stack=2, groups=1)
    """
    out = {}
    for path, entry in mapping.items():
        head, _, last = entry.torch.rpartition(".")
        if last in table:
            kind, name = table[last]
            entry = entry._replace(
                kind=kind or entry.kind, torch=f"{head}.{name}" if head else name
            )
        out[path] = entry
    return out
