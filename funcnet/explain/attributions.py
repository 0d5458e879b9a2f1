"""Gradient attributions: saliency, gradient x input, SmoothGrad, integrated gradients.

How much each input feature contributes to one class's score.

Every function takes ``(model, params, state, inputs, target)``: ``inputs``
a batch ``(N, ...)``, ``target`` the class whose output (logit) is explained,
an int for the whole batch or an int array ``(N,)``; a model with outputs
``(N,)`` takes ``target=None``. The model runs with ``train=False`` and its
state is read, not updated. Gradients are taken of the sum of the batch's
scores, so each example's attribution is its own as long as the model treats
examples independently (true of every layer in inference mode).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from funcnet.core import Layer, Params, PRNGKey, State

__all__ = [
    "IG_METHODS",
    "IntegratedGradients",
    "gradient_x_input",
    "gradients",
    "ig_steps_for",
    "integrated_gradients",
    "smoothgrad",
]

IG_METHODS = (
    "riemann_left",
    "riemann_right",
    "riemann_middle",
    "riemann_trapezoid",
    "gauss_legendre",
)


def _select(outputs, target, where: str):
    """The explained score of each example: ``outputs[n, target[n]]`` (or ``outputs`` if 1-d)."""
    outputs = jnp.asarray(outputs)
    if outputs.ndim == 1:
        if target is not None:
            raise ValueError(
                f"{where}: the model's outputs have shape {outputs.shape} (one score per "
                f"example), so there is no class to pick; pass `target=None`, got {target!r}."
            )
        return outputs
    if outputs.ndim != 2 or target is None:
        raise ValueError(
            f"{where}: expected model outputs (N, classes) and an int `target`, or outputs (N,) "
            f"and `target=None`; got outputs of shape {outputs.shape} and target {target!r}."
        )
    n, classes = outputs.shape
    if isinstance(target, (int, np.integer)):
        if not 0 <= target < classes:
            raise ValueError(
                f"{where}: `target` must be a class index in [0, {classes}), got {target}."
            )
        return outputs[:, target]
    target = jnp.asarray(target)
    if target.ndim == 0:
        target = jnp.broadcast_to(target, (n,))
    if target.shape != (n,) or not jnp.issubdtype(target.dtype, jnp.integer):
        raise ValueError(
            f"{where}: `target` must be an int or an int array of shape ({n},) (one class per "
            f"example), got {target.dtype} {target.shape}."
        )
    return jnp.take_along_axis(outputs, target[:, None], axis=1)[:, 0]


def _scores(model: Layer, params: Params, state: State, inputs, target, where: str):
    outputs, _ = model.apply(params, state, inputs, train=False)
    return _select(outputs, target, where)


def _grad(model, params, state, inputs, target, where):
    """``d score_n / d inputs_n`` for every example, one backward pass."""
    return jax.grad(lambda x: _scores(model, params, state, x, target, where).sum())(inputs)


def _jit(*static: str) -> Callable[[Callable], Callable]:
    """Jit ``fn(model, params, state, inputs, *, target, ...)`` with ``static`` names static.

    ``target`` is static when it is a Python int or ``None`` (so its range is checked
    against the outputs' shape) and traced when it is an array. Compiled once per model,
    shapes and static arguments; inside a user's ``jit`` it is inlined.
    """

    def wrap(fn: Callable) -> Callable:
        with_int = jax.jit(fn, static_argnames=(*static, "target"))
        with_array = jax.jit(fn, static_argnames=static)

        def call(model, params, state, inputs, *, target, **kwargs):
            if target is None or isinstance(target, (int, np.integer)):
                target = None if target is None else int(target)
                return with_int(model, params, state, inputs, target=target, **kwargs)
            return with_array(model, params, state, inputs, target=target, **kwargs)

        return call

    return wrap


@_jit("where")
def _gradients(model, params, state, x, *, target, where):
    return _grad(model, params, state, x, target, where)


@_jit()
def _gradient_x_input(model, params, state, x, *, target):
    return x * _grad(model, params, state, x, target, "gradient_x_input")


def gradients(model: Layer, params: Params, state: State, inputs, target) -> jax.Array:
    """Vanilla saliency: the gradient of the target score with respect to the inputs.

    Args:
        model, params, state: the model to explain.
        inputs: a batch ``(N, ...)``.
        target: the explained class (int or int array ``(N,)``; ``None`` for outputs ``(N,)``).

    Returns:
        An array of the inputs' shape.

    Raises:
        ValueError: if ``target`` does not fit the outputs.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> import funcnet as fn
        >>> model = fn.Dense(2)
        >>> params = {"w": jnp.array([[1.0, 0.0], [2.0, 0.0], [3.0, 1.0]]), "b": jnp.zeros(2)}
        >>> gradients(model, params, (), jnp.ones((1, 3)), 0)
        Array([[1., 2., 3.]], dtype=float32)
    """
    return _gradients(model, params, state, jnp.asarray(inputs), target=target, where="gradients")


def gradient_x_input(model: Layer, params: Params, state: State, inputs, target) -> jax.Array:
    """The gradient times the input: for a linear score ``w . x + b`` exactly ``w * x``.

    Arguments and result as :func:`gradients`.

    Examples:
        >>> import jax.numpy as jnp
        >>> import funcnet as fn
        >>> params = {"w": jnp.array([[1.0], [2.0], [3.0]]), "b": jnp.array([5.0])}
        >>> gradient_x_input(fn.Dense(1), params, (), jnp.array([[1.0, -1.0, 2.0]]), 0)
        Array([[ 1., -2.,  6.]], dtype=float32)
    """
    return _gradient_x_input(model, params, state, jnp.asarray(inputs), target=target)


def smoothgrad(
    model: Layer,
    params: Params,
    state: State,
    inputs,
    target,
    *,
    key: PRNGKey,
    num_samples: int = 50,
    noise_scale: float = 0.15,
) -> jax.Array:
    """SmoothGrad: the mean gradient over noisy copies of the inputs (Smilkov et al., 2017).

    Each copy adds Gaussian noise with standard deviation ``noise_scale`` times
    the example's range ``max(x) - min(x)`` (the paper's "noise level"). The
    samples run one after another (``lax.fori_loop``), so memory does not grow
    with ``num_samples``. ``noise_scale=0`` gives :func:`gradients`.

    Args:
        model, params, state, inputs, target: as :func:`gradients`.
        key: draws the noise; the result is a function of it.
        num_samples: noisy copies averaged (static).
        noise_scale: the noise's standard deviation relative to each example's range.

    Returns:
        An array of the inputs' shape.

    Raises:
        ValueError: if ``num_samples < 1`` or ``noise_scale < 0``.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> import funcnet as fn
        >>> model = fn.serial(fn.Dense(8), jnp.tanh, fn.Dense(3))
        >>> params, state = model.init(jax.random.key(0), jnp.zeros((2, 4)))
        >>> x = jax.random.normal(jax.random.key(1), (2, 4))
        >>> smoothgrad(model, params, state, x, 1, key=jax.random.key(2), num_samples=8).shape
        (2, 4)
    """
    if not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"smoothgrad: `num_samples` must be an int >= 1, got {num_samples!r}.")
    if not isinstance(noise_scale, jax.Array) and not noise_scale >= 0:
        raise ValueError(f"smoothgrad: `noise_scale` must be >= 0, got {noise_scale!r}.")
    return _smoothgrad(
        model,
        params,
        state,
        jnp.asarray(inputs),
        target=target,
        key=key,
        noise_scale=noise_scale,
        num_samples=num_samples,
    )


@_jit("num_samples")
def _smoothgrad(model, params, state, x, *, target, key, noise_scale, num_samples):
    axes = tuple(range(1, x.ndim))
    spread = x.max(axis=axes, keepdims=True) - x.min(axis=axes, keepdims=True)
    sigma = (jnp.asarray(noise_scale, x.dtype) * spread).astype(x.dtype)

    def body(i, total):
        noise = jax.random.normal(jax.random.fold_in(key, i), x.shape, x.dtype)
        return total + _grad(model, params, state, x + sigma * noise, target, "smoothgrad")

    total = jax.lax.fori_loop(0, num_samples, body, jnp.zeros_like(x))
    return total / jnp.asarray(num_samples, x.dtype)


class IntegratedGradients(NamedTuple):
    """What :func:`integrated_gradients` returns.

    Attributes:
        attributions: an array of the inputs' shape.
        completeness_error: ``|sum(attributions_n) - (f(x_n) - f(baseline_n))|`` per
            example, shape ``(N,)``: how far the path integral's quadrature is from exact.
        steps: the number of gradient evaluations per example (an int).
    """

    attributions: jax.Array
    completeness_error: jax.Array
    steps: int


def _quadrature(method: str, steps: int) -> tuple[np.ndarray, np.ndarray]:
    """Points ``alpha`` in [0, 1] and weights (summing to 1) of an integral over [0, 1]."""
    if method not in IG_METHODS:
        raise ValueError(
            f"integrated_gradients: unknown `method` {method!r}; choose one of {list(IG_METHODS)}."
        )
    if not isinstance(steps, (int, np.integer)) or steps < (2 if "trapezoid" in method else 1):
        raise ValueError(
            f"integrated_gradients: `steps` must be an int >= 1 (>= 2 for the trapezoid rule), "
            f"got {steps!r}."
        )
    n = int(steps)
    if method == "gauss_legendre":
        nodes, weights = np.polynomial.legendre.leggauss(n)
        return (nodes + 1) / 2, weights / 2
    if method == "riemann_trapezoid":
        weights = np.full(n, 1.0 / (n - 1))
        weights[[0, -1]] /= 2
        return np.linspace(0.0, 1.0, n), weights
    offset = {"riemann_left": 0.0, "riemann_right": 1.0, "riemann_middle": 0.5}[method]
    return (np.arange(n) + offset) / n, np.full(n, 1.0 / n)


def _baseline(inputs, baseline, where: str):
    if baseline is None:
        return jnp.zeros_like(inputs)
    baseline = jnp.asarray(baseline, inputs.dtype)
    try:
        return jnp.broadcast_to(baseline, inputs.shape)
    except ValueError:
        raise ValueError(
            f"{where}: `baseline` must broadcast to the inputs' shape {inputs.shape} (e.g. one "
            f"example's shape {inputs.shape[1:]}, or a scalar), got shape {baseline.shape}."
        ) from None


@_jit("steps", "method")
def _integrated_gradients(model, params, state, x, *, target, baseline, steps, method):
    alphas, weights = _quadrature(method, steps)
    where = "integrated_gradients"
    points = jnp.asarray(np.stack([alphas, weights], axis=1), x.dtype)

    def body(total, point):
        alpha, weight = point[0], point[1]
        grad = _grad(model, params, state, baseline + alpha * (x - baseline), target, where)
        return total + weight * grad, None

    total, _ = jax.lax.scan(body, jnp.zeros_like(x), points)
    attributions = (x - baseline) * total
    change = _scores(model, params, state, x, target, where) - _scores(
        model, params, state, baseline, target, where
    )
    axes = tuple(range(1, x.ndim))
    return attributions, jnp.abs(attributions.sum(axis=axes) - change)


def integrated_gradients(
    model: Layer,
    params: Params,
    state: State,
    inputs,
    target,
    *,
    baseline=None,
    steps: int = 50,
    method: str = "riemann_trapezoid",
    tolerance: float | None = None,
    max_steps: int = 4096,
) -> IntegratedGradients:
    """Integrated gradients (Sundararajan et al., 2017), with its completeness error.

    ``attr = (x - baseline) * integral_0^1 grad f(baseline + a (x - baseline)) da``,
    the integral by quadrature with ``steps`` gradient evaluations (run one after
    another with ``lax.scan``, so memory does not grow with ``steps``). By the
    completeness axiom the attributions of an example sum to
    ``f(x) - f(baseline)``; the returned ``completeness_error`` is how far they
    are, the measure of the quadrature's accuracy. For a linear score every
    method is exact (``attr = w * (x - baseline)``).

    Methods (``IG_METHODS``): ``"riemann_left"``, ``"riemann_right"``,
    ``"riemann_middle"``, ``"riemann_trapezoid"`` (the endpoints count half) and
    ``"gauss_legendre"`` (far more accurate for smooth models, e.g. tanh or
    softplus; piecewise-linear ReLU models gain less).

    Choosing ``steps``: with ``tolerance`` set, ``steps`` is only the start;
    it is doubled until the largest completeness error of the batch is at most
    ``tolerance`` (see :func:`ig_steps_for`), so the call runs eagerly (not
    under ``jit``) and returns the steps it used. Without ``tolerance`` the
    function is pure and jittable (``steps`` and ``method`` static).

    Args:
        model, params, state, inputs, target: as :func:`gradients`.
        baseline: the reference input, ``None`` for zeros, or an array broadcasting
            to the inputs (one example's shape, or a scalar).
        steps: gradient evaluations per example (>= 2 for the trapezoid rule).
        method: the quadrature rule, one of ``IG_METHODS``.
        tolerance: if given, an absolute bound on every example's completeness error.
        max_steps: the most steps the doubling may reach.

    Returns:
        :class:`IntegratedGradients` ``(attributions, completeness_error, steps)``.

    Raises:
        ValueError: for an unknown ``method``, bad ``steps``, a ``baseline`` that
            does not broadcast, or a ``tolerance`` not met within ``max_steps``.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> import funcnet as fn
        >>> params = {"w": jnp.array([[1.0], [2.0], [3.0]]), "b": jnp.array([5.0])}
        >>> ig = integrated_gradients(fn.Dense(1), params, (), jnp.array([[1.0, -1.0, 2.0]]), 0)
        >>> ig.attributions, ig.completeness_error
        (Array([[ 1., -2.,  6.]], dtype=float32), Array([0.], dtype=float32))
        >>> model = fn.serial(fn.Dense(16), jnp.tanh, fn.Dense(3))
        >>> params, state = model.init(jax.random.key(0), jnp.zeros((1, 4)))
        >>> x = jax.random.normal(jax.random.key(1), (5, 4))
        >>> ig = integrated_gradients(model, params, state, x, 2, tolerance=1e-4, steps=4)
        >>> bool(ig.completeness_error.max() <= 1e-4), ig.steps
        (True, 32)
    """
    x = jnp.asarray(inputs)
    base = _baseline(x, baseline, "integrated_gradients")
    if tolerance is not None:
        steps = ig_steps_for(
            model,
            params,
            state,
            x,
            target,
            tolerance=tolerance,
            baseline=base,
            method=method,
            start=steps,
            max_steps=max_steps,
        )
    attributions, error = _integrated_gradients(
        model, params, state, x, target=target, baseline=base, steps=steps, method=method
    )
    return IntegratedGradients(attributions, error, int(steps))


def ig_steps_for(
    model: Layer,
    params: Params,
    state: State,
    inputs,
    target,
    *,
    tolerance: float,
    baseline=None,
    method: str = "riemann_trapezoid",
    start: int = 16,
    max_steps: int = 4096,
) -> int:
    """The fewest steps ``start * 2**k`` whose IG completeness error is at most ``tolerance``.

    Runs :func:`integrated_gradients` (jitted once per step count) on the batch,
    doubling the steps until every example's completeness error
    ``|sum(attr) - (f(x) - f(baseline))|`` is at most ``tolerance``. Eager: it
    reads the errors, so it cannot run under ``jit``; call it once on a
    representative batch and pass the result as ``steps`` to a jitted
    :func:`integrated_gradients`.

    Args:
        model, params, state, inputs, target, baseline, method: as :func:`integrated_gradients`.
        tolerance: the absolute bound, > 0.
        start: the first step count tried.
        max_steps: the largest step count tried.

    Returns:
        The step count (an int).

    Raises:
        ValueError: if ``tolerance <= 0``, or it is not met within ``max_steps``
            (the message gives the error reached).

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> import funcnet as fn
        >>> model = fn.serial(fn.Dense(16), jnp.tanh, fn.Dense(3))
        >>> params, state = model.init(jax.random.key(0), jnp.zeros((1, 4)))
        >>> x = jax.random.normal(jax.random.key(1), (5, 4))
        >>> ig_steps_for(
        ...     model, params, state, x, 0, tolerance=1e-4, method="gauss_legendre", start=2
        ... )
        4
    """
    if not tolerance > 0:
        raise ValueError(f"ig_steps_for: `tolerance` must be > 0, got {tolerance!r}.")
    x = jnp.asarray(inputs)
    if isinstance(x, jax.core.Tracer):
        raise ValueError(
            "integrated_gradients: `tolerance` reads the completeness errors, so it cannot run "
            "under `jit`; call `ig_steps_for(...)` outside and pass its result as `steps`."
        )
    base = _baseline(x, baseline, "ig_steps_for")
    steps = max(int(start), 2 if "trapezoid" in method else 1)
    while True:
        _, errors = _integrated_gradients(
            model, params, state, x, target=target, baseline=base, steps=steps, method=method
        )
        error = float(errors.max())
        if error <= tolerance:
            return steps
        if steps * 2 > max_steps:
            raise ValueError(
                f"ig_steps_for: the completeness error is still {error:.3g} > tolerance "
                f"{tolerance:g} at {steps} steps, and doubling would pass `max_steps` "
                f"{max_steps}. Raise `max_steps`, loosen `tolerance`, or try "
                f'`method="gauss_legendre"`.'
            )
        steps *= 2
