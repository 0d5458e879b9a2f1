"""Explain a model's predictions: attributions and the outputs of inner layers.

Attributions are pure functions of ``(model, params, state, inputs, target)``
returning an array of the inputs' shape (``inputs`` a batch ``(N, ...)``,
``target`` the explained class): :func:`gradients` (saliency),
:func:`gradient_x_input`, :func:`smoothgrad`, :func:`integrated_gradients`
(with its completeness error, and :func:`ig_steps_for` to meet a tolerance),
:func:`occlusion`, and :func:`grad_cam` for convolutional models, which reads
an inner layer named by path. :func:`intermediates` returns the outputs of
inner layers of a :func:`~funcnet.serial` model (feature extraction), and
:func:`layer_paths` lists the paths.

Examples:
    >>> import jax, jax.numpy as jnp
    >>> import funcnet as fn
    >>> model = fn.serial(fn.Dense(16), jnp.tanh, fn.Dense(3))
    >>> params, state = model.init(jax.random.key(0), jnp.zeros((1, 4)))
    >>> x = jax.random.normal(jax.random.key(1), (8, 4))
    >>> ig = fn.explain.integrated_gradients(model, params, state, x, 2, method="gauss_legendre")
    >>> ig.attributions.shape, bool(ig.completeness_error.max() < 1e-5)
    ((8, 4), True)
"""

from funcnet.explain.attributions import (
    IG_METHODS,
    IntegratedGradients,
    gradient_x_input,
    gradients,
    ig_steps_for,
    integrated_gradients,
    smoothgrad,
)
from funcnet.explain.maps import grad_cam, occlusion
from funcnet.explain.paths import intermediates, layer_paths

__all__ = [
    "IG_METHODS",
    "IntegratedGradients",
    "grad_cam",
    "gradient_x_input",
    "gradients",
    "ig_steps_for",
    "integrated_gradients",
    "intermediates",
    "layer_paths",
    "occlusion",
    "smoothgrad",
]
