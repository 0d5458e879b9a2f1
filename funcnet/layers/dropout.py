"""Dropout."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

from funcnet._checks import array_of, check_rate
from funcnet.core import Layer, LayerError

__all__ = ["Dropout"]


def Dropout(drop_rate: float, *, broadcast_axes: Sequence[int] = ()) -> Layer:
    """Zero a fraction ``drop_rate`` of the inputs in training, scaling the rest by ``1/(1-rate)``.

    ``drop_rate`` is the fraction *dropped* (as in Keras and PyTorch). With
    ``train=False`` (the default) this is the identity. With ``train=True`` it
    needs ``key``; combinators derive it from the key given at the top.
    ``broadcast_axes`` shares one mask along those axes (e.g. ``(1,)`` drops
    whole time steps of ``(N, T, F)`` inputs). No params or state.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> drop = Dropout(0.5)
        >>> x = jnp.ones((2, 4))
        >>> bool((drop.apply((), (), x)[0] == x).all())  # identity when not training
        True
        >>> y, _ = drop.apply((), (), x, key=jax.random.key(0), train=True)
        >>> sorted(set(y.ravel().tolist()))
        [0.0, 2.0]
    """
    rate = check_rate("Dropout", "drop_rate", drop_rate)
    broadcast_axes = tuple(broadcast_axes)

    def init(key, inputs):
        del key
        array_of(inputs)
        return (), ()

    def apply(params, state, inputs, *, key=None, train=False):
        del params
        shape, dtype = array_of(inputs)
        if not train or rate == 0.0:
            return inputs, state
        if key is None:
            raise LayerError(
                "needs a random `key` when `train=True`; call "
                "`model.apply(params, state, x, key=key, train=True)` with one key for the "
                "whole model."
            )
        if rate == 1.0:
            return jnp.zeros_like(inputs), state
        mask_shape = list(shape)
        for axis in broadcast_axes:
            mask_shape[axis] = 1
        keep = jax.random.bernoulli(key, 1.0 - rate, tuple(mask_shape))
        scaled = inputs / jnp.asarray(1.0 - rate, dtype)
        return jnp.where(keep, scaled, jnp.zeros((), dtype)), state

    name = f"Dropout({rate})" if not broadcast_axes else f"Dropout({rate}, {broadcast_axes})"
    return Layer(init, apply, name)
