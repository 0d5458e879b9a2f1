"""Quantization-aware training: fake quantization with the straight-through estimator.

:func:`fake_quantize` rounds a weight to its quantization grid and back
(exactly the values :func:`~funcnet.compress.dequantize` of
:func:`~funcnet.compress.quantize_array` gives) while its gradient is the
identity inside the clipping range and 0 outside (Bengio et al. 2013; Jacob
et al. 2018). :func:`qat` wraps a model so that its kernels go through
:func:`fake_quantize` on every forward pass: training it (with ``fn.fit`` as
any model) adapts the float weights to the rounding, and afterwards
``quantize(params, bits=bits)`` gives integer weights on which the plain
model computes exactly what the QAT model computed.
"""

from __future__ import annotations

import re
from functools import partial

import jax
import jax.numpy as jnp

from funcnet.compress.prune import KERNELS, _matched
from funcnet.compress.quantize import _check_weight, channel_scale, check_bits, round_to_grid
from funcnet.core import Layer, Params

__all__ = ["fake_quantize", "fake_quantize_params", "qat"]


@partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _round_trip(w32: jax.Array, scale: jax.Array, axis: int, qmax: int) -> jax.Array:
    shape = [1] * w32.ndim
    shape[axis] = w32.shape[axis]
    return round_to_grid(w32, scale, axis, qmax) * scale.reshape(shape)


def _round_trip_fwd(w32, scale, axis, qmax):
    return _round_trip(w32, scale, axis, qmax), (w32, scale)


def _round_trip_bwd(axis, qmax, residuals, g):
    w32, scale = residuals
    shape = [1] * w32.ndim
    shape[axis] = w32.shape[axis]
    # The straight-through estimator: d(round trip)/dw = 1 where the clip does not bite
    # (round is treated as the identity), 0 where it does. Tested on the rounded value,
    # not |w| <= qmax * scale: with scale = max|w| / qmax, qmax * scale can round below
    # max|w|, which would cut the gradient of each channel's largest weight.
    safe = jnp.where(scale > 0, scale, 1.0).reshape(shape)
    inside = jnp.abs(jnp.round(w32 / safe)) <= qmax
    return jnp.where(inside, g, jnp.zeros_like(g)), jnp.zeros_like(scale)


_round_trip.defvjp(_round_trip_fwd, _round_trip_bwd)


def fake_quantize(
    w: jax.typing.ArrayLike,
    *,
    axis: int = -1,
    bits: int = 8,
    scale: jax.typing.ArrayLike | None = None,
) -> jax.Array:
    """``w`` rounded to a symmetric ``bits``-bit grid and back, with a straight-through gradient.

    The forward value is ``clip(round(w / scale), -qmax, qmax) * scale`` with
    ``qmax = 2**(bits - 1) - 1``, bit for bit what ``dequantize`` of
    ``quantize_array(w, axis=axis, bits=bits)`` gives when ``scale`` is ``None``
    (one scale per index of ``axis``, ``max|w| / qmax``, computed from ``w``
    on every call, so nothing is clipped). The gradient with respect to ``w``
    is the identity inside the clipping range, where ``|round(w / scale)| <=
    qmax``, and 0 where the clip bites (only possible with a given ``scale``);
    no gradient flows into the scale.

    Args:
        w: a float array with at least one axis.
        axis: the channel axis (the last: a kernel's output features).
        bits: in ``[2, 8]``.
        scale: optional fixed scales of shape ``(w.shape[axis],)``.

    Returns:
        The fake-quantized ``w``, in ``w``'s dtype.

    Raises:
        TypeError: for a non-floating ``w``.
        ValueError: for a scalar ``w``, ``bits`` outside ``[2, 8]``, a ``scale`` of the wrong shape.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> w = jnp.array([[0.3, -1.0], [1.0, 0.26]])
        >>> fake_quantize(w, bits=2).tolist()  # levels -1, 0, 1 times max|w| per column
        [[0.0, -1.0], [1.0, 0.0]]
        >>> jax.grad(lambda v: fake_quantize(v, bits=2).sum())(w).tolist()  # identity
        [[1.0, 1.0], [1.0, 1.0]]
        >>> jax.grad(lambda v: fake_quantize(v, bits=2, scale=jnp.array([0.5, 0.5])).sum())(w)
        Array([[1., 0.],
               [0., 1.]], dtype=float32)
    """
    qmax = 2 ** (check_bits("fake_quantize", bits) - 1) - 1
    w = jnp.asarray(w)
    _check_weight("fake_quantize", w)
    axis = axis % w.ndim
    w32 = w.astype(jnp.float32)
    if scale is None:
        scale = channel_scale(jax.lax.stop_gradient(w32), axis, qmax)
    else:
        scale = jnp.asarray(scale, jnp.float32)
        if scale.shape != (w.shape[axis],):
            raise ValueError(
                f"fake_quantize: `scale` must have shape ({w.shape[axis]},) (one per index of "
                f"`axis={axis}`), got {scale.shape}."
            )
    return _round_trip(w32, jax.lax.stop_gradient(scale), axis, qmax).astype(w.dtype)


def fake_quantize_params(params: Params, *, pattern: str = KERNELS, bits: int = 8) -> Params:
    """``params`` with every leaf matching ``pattern`` through :func:`fake_quantize` (last axis).

    Raises:
        ValueError: when ``pattern`` matches no parameter, or a scalar; for bad ``bits``.
        TypeError: when it matches a non-floating parameter.

    Examples:
        >>> import jax.numpy as jnp
        >>> fake_quantize_params({"w": jnp.array([[0.3, -1.0]]), "b": jnp.array([0.3])}, bits=2)
        {'b': Array([0.3], dtype=float32), 'w': Array([[ 0.3, -1. ]], dtype=float32)}
    """
    check_bits("fake_quantize_params", bits)
    matched = _matched("fake_quantize_params", params, pattern)
    leaves, treedef = jax.tree.flatten(params)
    out = [fake_quantize(p, bits=bits) if hit else p for p, hit in zip(leaves, matched)]
    return jax.tree.unflatten(treedef, out)


def qat(model: Layer, *, pattern: str = KERNELS, bits: int = 8) -> Layer:
    """``model`` whose params matching ``pattern`` are fake-quantized on every ``apply``.

    ``init`` is the model's (float params, the same tree); ``apply`` runs the
    model on :func:`fake_quantize_params` of the params, so training the
    returned layer (``fn.fit(qat(model), ...)``) is quantization-aware training
    with the straight-through estimator. The params stay float; after
    training, ``quantize(params, pattern=pattern, bits=bits)`` gives integer
    weights, and ``model.apply(dequantize(qparams), ...)`` equals
    ``qat(model).apply(params, ...)`` exactly.

    Args:
        model: any layer.
        pattern: regex over param paths; default: the kernels ``w``.
        bits: the precision trained for, in ``[2, 8]``.

    Returns:
        A :class:`~funcnet.core.Layer`, shown as ``qat8(<model>)`` (``qat4(...)`` for 4 bits).

    Raises:
        ValueError: for ``bits`` outside ``[2, 8]`` or an invalid ``pattern``;
            at ``apply``, when ``pattern`` matches no parameter.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> import funcnet as fn
        >>> model = fn.serial(fn.Dense(8), jax.nn.relu, fn.Dense(2))
        >>> trained = qat(model, bits=4)
        >>> params, state = trained.init(jax.random.key(0), jnp.zeros((1, 3)))
        >>> x = jnp.ones((5, 3))
        >>> y, _ = trained.apply(params, state, x)
        >>> q = fn.compress.quantize(params, bits=4)
        >>> bool((model.apply(fn.compress.dequantize(q), state, x)[0] == y).all())
        True
    """
    check_bits("qat", bits)
    try:
        re.compile(pattern)
    except (re.error, TypeError) as err:
        raise ValueError(
            f"qat: `pattern` must be a regex over param paths, got {pattern!r}: {err}."
        ) from None

    def apply(params, state, inputs, **kwargs):
        fake = fake_quantize_params(params, pattern=pattern, bits=bits)
        return model.apply(fake, state, inputs, **kwargs)

    return Layer(model.init, apply, f"qat{bits}", (model,))
