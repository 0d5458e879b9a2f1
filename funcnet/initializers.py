"""Parameter initializers: factories returning ``init(key, shape, dtype) -> Array``.

Every layer takes ``w_init`` / ``b_init`` as such a function or as its name
(``w_init="he_normal"``). Fan-in and fan-out follow the convention of
``jax.nn.initializers``: the last axis is the output, the one before it the
input, and any leading axes (a convolution's kernel window) multiply both.

Examples:
    >>> import jax
    >>> w = glorot_uniform()(jax.random.key(0), (3, 4))
    >>> w.shape, w.dtype
    ((3, 4), dtype('float32'))
    >>> get("he_normal") is not None
    True
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

__all__ = [
    "Initializer",
    "constant",
    "get",
    "glorot_normal",
    "glorot_uniform",
    "he_normal",
    "he_uniform",
    "kaiming_normal",
    "kaiming_uniform",
    "lecun_normal",
    "lecun_uniform",
    "normal",
    "ones",
    "orthogonal",
    "truncated_normal",
    "uniform",
    "variance_scaling",
    "xavier_normal",
    "xavier_uniform",
    "zeros",
]

Initializer = Callable[..., jax.Array]


def zeros() -> Initializer:
    """All zeros."""
    return jax.nn.initializers.zeros


def ones() -> Initializer:
    """All ones."""
    return jax.nn.initializers.ones


def constant(value: float) -> Initializer:
    """Every entry equal to ``value``.

    Examples:
        >>> constant(0.5)(jax.random.key(0), (2,))
        Array([0.5, 0.5], dtype=float32)
    """
    return jax.nn.initializers.constant(value)


def uniform(minval: float = -0.05, maxval: float = 0.05) -> Initializer:
    """Uniform on ``[minval, maxval)`` (Keras' ``RandomUniform`` defaults).

    Note that ``jax.nn.initializers.uniform(scale)`` draws from ``[0, scale)``;
    this one takes the range explicitly.

    Examples:
        >>> w = uniform(-1.0, 1.0)(jax.random.key(0), (1000,))
        >>> bool((w >= -1).all() and (w < 1).all())
        True
    """
    if not minval < maxval:
        raise ValueError(f"uniform: need `minval < maxval`, got {minval} and {maxval}.")

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, minval, maxval)

    return init


def normal(stddev: float = 0.05, mean: float = 0.0) -> Initializer:
    """Normal with the given ``mean`` and ``stddev`` (Keras' ``RandomNormal`` defaults)."""
    if stddev < 0:
        raise ValueError(f"normal: `stddev` must be >= 0, got {stddev}.")

    def init(key, shape, dtype=jnp.float32):
        return mean + stddev * jax.random.normal(key, shape, dtype)

    return init


def truncated_normal(stddev: float = 0.05) -> Initializer:
    """Normal with ``stddev`` truncated to two standard deviations."""
    return jax.nn.initializers.truncated_normal(stddev)


def variance_scaling(scale: float, mode: str, distribution: str) -> Initializer:
    """Variance ``scale / n`` with ``n`` = fan_in, fan_out or their average (``mode``).

    ``distribution`` is ``"truncated_normal"``, ``"normal"`` or ``"uniform"``.
    """
    return jax.nn.initializers.variance_scaling(scale, mode, distribution)


def glorot_uniform() -> Initializer:
    """Glorot/Xavier uniform: ``U(-l, l)`` with ``l = sqrt(6 / (fan_in + fan_out))``."""
    return jax.nn.initializers.glorot_uniform()


def glorot_normal() -> Initializer:
    """Glorot/Xavier normal (truncated): variance ``2 / (fan_in + fan_out)``."""
    return jax.nn.initializers.glorot_normal()


def he_uniform() -> Initializer:
    """He/Kaiming uniform: ``U(-l, l)`` with ``l = sqrt(6 / fan_in)``; for ReLU networks."""
    return jax.nn.initializers.he_uniform()


def he_normal() -> Initializer:
    """He/Kaiming normal (truncated): variance ``2 / fan_in``; for ReLU networks."""
    return jax.nn.initializers.he_normal()


def lecun_uniform() -> Initializer:
    """LeCun uniform: ``U(-l, l)`` with ``l = sqrt(3 / fan_in)``."""
    return jax.nn.initializers.lecun_uniform()


def lecun_normal() -> Initializer:
    """LeCun normal (truncated): variance ``1 / fan_in``; for SELU networks."""
    return jax.nn.initializers.lecun_normal()


def orthogonal(scale: float = 1.0) -> Initializer:
    """A (semi-)orthogonal matrix times ``scale``, over the last axis; for recurrent weights.

    Half-precision matrices (``bfloat16``, ``float16``) are drawn in float32,
    which has the QR decomposition they lack, then cast.

    Examples:
        >>> w = orthogonal()(jax.random.key(0), (4, 4))
        >>> bool(jnp.allclose(w.T @ w, jnp.eye(4), atol=1e-5))
        True
        >>> orthogonal()(jax.random.key(0), (4, 4), jnp.bfloat16).dtype
        dtype(bfloat16)
    """
    draw = jax.nn.initializers.orthogonal(scale)

    def init(key, shape, dtype=None, out_sharding=None):
        floating = dtype is not None and jnp.issubdtype(dtype, jnp.floating)
        if floating and jnp.dtype(dtype).itemsize < 4:  # no QR below float32
            return draw(key, shape, jnp.float32, out_sharding).astype(dtype)
        return draw(key, shape, dtype, out_sharding)

    return init


xavier_uniform = glorot_uniform
xavier_normal = glorot_normal
kaiming_uniform = he_uniform
kaiming_normal = he_normal

_BY_NAME = {
    name: globals()[name]
    for name in __all__
    if name not in ("Initializer", "get", "constant", "variance_scaling")
}


def get(init: str | Initializer) -> Initializer:
    """Resolve an initializer given by name (``"he_normal"``) or return a callable unchanged.

    Raises:
        ValueError: for an unknown name (the message lists the known ones).
        TypeError: for anything else that is not callable.
    """
    if isinstance(init, str):
        if init not in _BY_NAME:
            raise ValueError(
                f"unknown initializer {init!r}; known names: {sorted(_BY_NAME)}, or pass a "
                "function `(key, shape, dtype) -> array`."
            )
        return _BY_NAME[init]()
    if any(init is factory for factory in _BY_NAME.values()) or init is constant:
        raise TypeError(
            f"got the initializer factory `{init.__name__}`; call it to make the initializer: "
            f"`{init.__name__}()`."
        )
    if not callable(init):
        raise TypeError(
            f"an initializer must be a name or a function `(key, shape, dtype) -> array`, got "
            f"{type(init).__name__}."
        )
    return init
