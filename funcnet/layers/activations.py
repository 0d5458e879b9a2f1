"""Activations, as functions (``relu``) and as parameterless layers (``Relu()``).

The functions are JAX's own (``jax.nn``); any of them, or any other function
``x -> y``, may also be passed directly where a layer is expected.

Examples:
    >>> import jax, jax.numpy as jnp
    >>> relu(jnp.array([-1.0, 2.0]))
    Array([0., 2.], dtype=float32)
    >>> layer = LeakyRelu(0.1)
    >>> layer
    LeakyRelu(0.1)
    >>> layer.apply((), (), jnp.array([-1.0, 2.0]))[0]
    Array([-0.1,  2. ], dtype=float32)
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from funcnet.core import Layer, stateless

__all__ = [
    "Elu",
    "Gelu",
    "LeakyRelu",
    "LogSoftmax",
    "Relu",
    "Selu",
    "Sigmoid",
    "Silu",
    "Softmax",
    "Softplus",
    "Swish",
    "Tanh",
    "elu",
    "gelu",
    "leaky_relu",
    "log_softmax",
    "relu",
    "selu",
    "sigmoid",
    "silu",
    "softmax",
    "softplus",
    "swish",
    "tanh",
]

relu = jax.nn.relu
leaky_relu = jax.nn.leaky_relu
elu = jax.nn.elu
selu = jax.nn.selu
silu = jax.nn.silu
swish = jax.nn.silu
sigmoid = jax.nn.sigmoid
tanh = jnp.tanh
softplus = jax.nn.softplus
softmax = jax.nn.softmax
log_softmax = jax.nn.log_softmax


def gelu(x: jax.Array, approximate: bool = False) -> jax.Array:
    """GELU; exact (erf) by default as in PyTorch and Keras, tanh approximation if asked.

    ``jax.nn.gelu`` defaults to the approximation; this one does not.
    """
    return jax.nn.gelu(x, approximate=approximate)


def _activation(fn, name: str) -> Layer:
    return stateless(name, fn)


def Relu() -> Layer:
    """``max(x, 0)`` as a layer. No params, state or key; any shape."""
    return _activation(relu, "Relu")


def LeakyRelu(negative_slope: float = 0.01) -> Layer:
    """``x if x >= 0 else negative_slope * x`` as a layer (default slope 0.01, as PyTorch)."""
    return _activation(
        functools.partial(leaky_relu, negative_slope=negative_slope), f"LeakyRelu({negative_slope})"
    )


def Elu(alpha: float = 1.0) -> Layer:
    """``x if x > 0 else alpha * (exp(x) - 1)`` as a layer."""
    return _activation(functools.partial(elu, alpha=alpha), f"Elu({alpha})")


def Selu() -> Layer:
    """Scaled ELU (self-normalizing networks; pair with ``lecun_normal``) as a layer."""
    return _activation(selu, "Selu")


def Gelu(approximate: bool = False) -> Layer:
    """GELU as a layer; exact by default (``approximate=True`` for the tanh form)."""
    return _activation(
        functools.partial(gelu, approximate=approximate),
        "Gelu(approximate=True)" if approximate else "Gelu",
    )


def Silu() -> Layer:
    """``x * sigmoid(x)`` (SiLU, also called swish) as a layer."""
    return _activation(silu, "Silu")


Swish = Silu


def Sigmoid() -> Layer:
    """``1 / (1 + exp(-x))`` as a layer."""
    return _activation(sigmoid, "Sigmoid")


def Tanh() -> Layer:
    """``tanh(x)`` as a layer."""
    return _activation(tanh, "Tanh")


def Softplus() -> Layer:
    """``log(1 + exp(x))`` as a layer."""
    return _activation(softplus, "Softplus")


def Softmax(axis: int = -1) -> Layer:
    """Softmax over ``axis`` as a layer (prefer logits + a from-logits loss for training)."""
    return _activation(functools.partial(softmax, axis=axis), f"Softmax(axis={axis})")


def LogSoftmax(axis: int = -1) -> Layer:
    """Log-softmax over ``axis`` as a layer."""
    return _activation(functools.partial(log_softmax, axis=axis), f"LogSoftmax(axis={axis})")
