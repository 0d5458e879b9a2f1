"""Weights in and out: PyTorch state_dicts and Hugging Face checkpoints.

- :func:`from_torch` / :func:`to_torch`: a PyTorch ``state_dict`` to funcnet
  ``(params, state)`` and back, layer by layer (``Linear``, ``Conv*``,
  ``ConvTranspose*``, ``BatchNorm*``, ``LayerNorm``, ``GroupNorm``,
  ``RMSNorm``, ``Embedding``, ``LSTM``/``GRU``/``RNN``, ``MultiheadAttention``,
  ``TransformerEncoderLayer``/``TransformerDecoderLayer``), guided by a
  mapping ``{funcnet_path: Entry(kind, torch_name)}`` that
  :func:`torch_mapping` makes and you can print and edit. Every missing,
  unexpected or mis-shaped tensor is reported at once in one
  :class:`InteropError`.
- :mod:`funcnet.interop.hf`: local Hugging Face folders (``config.json``,
  ``model.safetensors`` or sharded ``model.safetensors.index.json``; never the
  network) into the reference architectures of :mod:`funcnet.interop.models`
  (GPT-2, BERT) with :func:`~funcnet.interop.hf.from_pretrained`.

Only numpy is needed: torch is imported by :func:`to_torch` alone, when it
returns tensors.

Examples:
    >>> import numpy as np, jax, jax.numpy as jnp
    >>> import funcnet as fn
    >>> from funcnet import interop
    >>> model = fn.serial(fn.Dense(3), jax.nn.relu, fn.Dense(2))
    >>> mapping = interop.torch_mapping(model, jnp.zeros((1, 4)), rename={"0": "fc1", "2": "fc2"})
    >>> mapping["0"]
    Entry(kind='linear', torch='fc1', suffix='', stack=0, groups=1)
    >>> sd = {"fc1.weight": np.ones((3, 4)), "fc1.bias": np.zeros(3),
    ...       "fc2.weight": np.ones((2, 3)), "fc2.bias": np.zeros(2)}
    >>> params, state = interop.from_torch(model, jnp.zeros((1, 4)), sd, mapping=mapping)
    >>> back = interop.to_torch(model, params, state, mapping=mapping, as_numpy=True)
    >>> sorted(back) == sorted(sd) and all((back[k] == sd[k]).all() for k in sd)
    True
"""

from funcnet.interop import hf, models
from funcnet.interop.kinds import KINDS, Kind, NotRepresentable
from funcnet.interop.mapping import Entry, torch_mapping
from funcnet.interop.pytorch import ConversionReport, InteropError, from_torch, to_torch

for _cls in (ConversionReport, Entry, InteropError, Kind):
    _cls.__module__ = __name__
del _cls

__all__ = [
    "KINDS",
    "ConversionReport",
    "Entry",
    "InteropError",
    "Kind",
    "NotRepresentable",
    "from_torch",
    "hf",
    "models",
    "to_torch",
    "torch_mapping",
]
