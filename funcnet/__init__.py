"""funcnet: deep learning for JAX where a model is a pair of pure functions over pytrees.

Examples:
    >>> import jax, jax.numpy as jnp
    >>> import funcnet as fn
    >>> model = fn.serial(fn.Dense(32), jax.nn.relu, fn.Dense(10))
    >>> params, state = model.init(jax.random.key(0), jnp.zeros((1, 64)))
    >>> logits, state = model.apply(params, state, jnp.ones((4, 64)))
    >>> logits.shape
    (4, 10)
"""

from funcnet import initializers
from funcnet.combinators import concat, fanout, parallel, repeat, residual, serial, shared
from funcnet.core import (
    Layer,
    LayerError,
    Params,
    PRNGKey,
    State,
    as_layer,
    init_spec,
    output_spec,
    spec_of,
)
from funcnet.layers import *  # noqa: F403
from funcnet.layers import __all__ as _layers

__version__ = "0.1.0"

__all__ = [
    "Layer",
    "LayerError",
    "PRNGKey",
    "Params",
    "State",
    "__version__",
    "as_layer",
    "concat",
    "fanout",
    "init_spec",
    "initializers",
    "output_spec",
    "parallel",
    "repeat",
    "residual",
    "serial",
    "shared",
    "spec_of",
    *_layers,
]
