"""Attribution maps from occluding windows (occlusion) and from an inner layer (Grad-CAM).

Arguments as in :mod:`funcnet.explain.attributions`: ``(model, params, state,
inputs, target)`` with ``inputs`` a batch and ``target`` the explained class.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from funcnet.core import Layer, Params, State
from funcnet.explain.attributions import _jit, _scores, _select
from funcnet.explain.paths import run_with

__all__ = ["grad_cam", "occlusion"]


def _window(spec, ndim: int, name: str, sizes) -> tuple[int, ...]:
    spec = (spec,) * ndim if isinstance(spec, int) else tuple(spec)
    if not 1 <= len(spec) <= ndim or not all(isinstance(v, int) and v >= 1 for v in spec):
        raise ValueError(
            f"occlusion: `{name}` must be a positive int or a tuple of 1 to {ndim} positive ints "
            f"(one per non-batch axis; missing trailing axes are covered whole), got {spec!r}."
        )
    return spec + tuple(sizes[len(spec) :])


def _occlusion_windows(shape, window, strides) -> tuple[np.ndarray, np.ndarray]:
    """The windows' corners ``(P, ndim)`` and how many windows cover each element.

    The last window of an axis ends at its edge, so every element is covered.
    """
    starts, counts = [], []
    for size, win, stride in zip(shape, window, strides):
        axis = list(range(0, size - win + 1, stride))
        if axis[-1] != size - win:
            axis.append(size - win)
        starts.append(axis)
        count = np.zeros(size)
        for start in axis:
            count[start : start + win] += 1
        counts.append(count)
    corners = np.stack(np.meshgrid(*starts, indexing="ij"), -1).reshape(-1, len(shape))
    coverage = counts[0]
    for count in counts[1:]:  # windows form a grid, so coverage is a product over axes
        coverage = np.multiply.outer(coverage, count)
    return corners.astype(np.int32), coverage


def occlusion(
    model: Layer,
    params: Params,
    state: State,
    inputs,
    target,
    *,
    window,
    strides=None,
    baseline_value: float = 0.0,
    batch_size: int | None = None,
) -> jax.Array:
    """Occlusion (Zeiler & Fergus, 2014): the score's drop when a window is set to a baseline.

    A window slides over the non-batch axes; at each position the covered
    elements are set to ``baseline_value`` and the drop ``f(x) - f(occluded)``
    is credited to them. An element's attribution is the mean drop over the
    windows covering it. For images ``(N, H, W, C)`` a window ``(h, w)``
    covers all channels (every channel gets the same value). With a window of
    one element the attribution is exactly the removed contribution
    (``w * (x - baseline_value)`` for a linear score). The last window of an axis
    is moved back to end at its edge, so every element is covered.

    Args:
        model, params, state, inputs, target: as :func:`gradients`.
        window: the window's size, an int (every non-batch axis) or a tuple for
            the leading non-batch axes (trailing axes covered whole).
        strides: the step between windows, like ``window``; ``None`` for ``window``.
        baseline_value: what occluded elements are set to (e.g. the background).
        batch_size: window positions evaluated together (``lax.map``); ``None`` for one
            at a time.

    Returns:
        An array of the inputs' shape.

    Raises:
        ValueError: for a bad ``window`` or ``strides``.

    Examples:
        >>> import jax.numpy as jnp
        >>> import funcnet as fn
        >>> params = {"w": jnp.array([[1.0], [2.0], [3.0]]), "b": jnp.array([5.0])}
        >>> occlusion(fn.Dense(1), params, (), jnp.array([[1.0, -1.0, 2.0]]), 0, window=1)
        Array([[ 1., -2.,  6.]], dtype=float32)
    """
    x = jnp.asarray(inputs)
    sizes = x.shape[1:]
    window = _window(window, len(sizes), "window", sizes)
    strides = window if strides is None else _window(strides, len(sizes), "strides", window)
    if any(w > s for w, s in zip(window, sizes)):
        raise ValueError(
            f"occlusion: `window` {window} is larger than the inputs' non-batch shape {sizes}."
        )
    corners, coverage = _occlusion_windows(sizes, window, strides)
    return _occlusion(
        model,
        params,
        state,
        x,
        target=target,
        corners=corners,
        coverage=coverage.astype(x.dtype),
        fill=jnp.asarray(baseline_value, x.dtype),
        window=window,
        batch_size=batch_size,
    )


@_jit("window", "batch_size")
def _occlusion(model, params, state, x, *, target, corners, coverage, fill, window, batch_size):
    base_score = _scores(model, params, state, x, target, "occlusion")
    patch = jnp.ones(window, bool)
    empty = jnp.zeros(x.shape[1:], bool)

    def drop(corner):  # masks are built one at a time: memory does not grow with positions
        mask = jax.lax.dynamic_update_slice(empty, patch, tuple(corner))
        occluded = jnp.where(mask[None], fill, x)
        return base_score - _scores(model, params, state, occluded, target, "occlusion")

    drops = jax.lax.map(drop, corners, batch_size=batch_size)  # (P, N)
    shape = (x.shape[0], *window)

    def credit(total, pair):
        corner, d = pair
        start = (0, *tuple(corner))
        region = jax.lax.dynamic_slice(total, start, shape)
        value = region + d.reshape(-1, *([1] * len(window)))
        return jax.lax.dynamic_update_slice(total, value, start), None

    total, _ = jax.lax.scan(credit, jnp.zeros_like(x), (corners, drops))
    return total / coverage[None]


def grad_cam(
    model: Layer,
    params: Params,
    state: State,
    inputs,
    target,
    *,
    layer: str | int,
    upsample: bool = True,
    relu: bool = True,
) -> jax.Array:
    """Grad-CAM (Selvaraju et al., 2017): a class's heat map from a convolution's output.

    With ``A`` the output ``(N, h, w, K)`` of the sub-layer at path ``layer``
    (see :func:`~funcnet.explain.intermediates`) and ``g`` the gradient of the
    target score with respect to ``A``, each channel's weight is the spatial
    mean of its gradient, ``a_k = mean_hw g[..., k]``, and the map is
    ``relu(sum_k a_k A[..., k])``. The gradient is taken by adding a zero to
    ``A`` inside the model run and differentiating with respect to it, so the
    model is run as ``model.apply`` runs it. Any number of spatial axes works
    (``(N, L, K)`` for sequences).

    Args:
        model, params, state, inputs, target: as :func:`gradients`; ``model`` a ``serial``.
        layer: the path of the sub-layer, e.g. ``"3"`` or ``"features/4"``; usually
            the last convolution (or its activation).
        upsample: resize the map to the inputs' spatial shape (``inputs.shape[1:-1]``,
            bilinear); ``False`` keeps the layer's resolution.
        relu: keep only positive evidence (the paper's map); ``False`` returns the raw sum.

    Returns:
        ``(N, *spatial)``: the inputs' spatial shape with ``upsample``, else the layer's.

    Raises:
        ValueError: if ``model`` is not a ``serial``, ``layer`` names no sub-layer,
            or its output is not ``(N, *spatial, channels)``.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> import funcnet as fn
        >>> conv = fn.Conv(4, (3, 3), padding="VALID")
        >>> model = fn.serial(conv, fn.Relu(), fn.Flatten(), fn.Dense(3))
        >>> params, state = model.init(jax.random.key(0), jnp.zeros((1, 6, 6, 1)))
        >>> x = jax.random.normal(jax.random.key(1), (2, 6, 6, 1))
        >>> grad_cam(model, params, state, x, 1, layer="1").shape
        (2, 6, 6)
        >>> grad_cam(model, params, state, x, 1, layer="1", upsample=False).shape
        (2, 4, 4)
    """
    return _grad_cam(
        model,
        params,
        state,
        jnp.asarray(inputs),
        target=target,
        path=str(layer),
        upsample=upsample,
        relu=relu,
    )


@_jit("path", "upsample", "relu")
def _grad_cam(model, params, state, x, *, target, path, upsample, relu):
    spec = jax.eval_shape(
        lambda p, s, v: run_with(model, p, s, v, capture=[path], where="grad_cam")[1][path],
        params,
        state,
        x,
    )
    if not isinstance(spec, jax.ShapeDtypeStruct) or len(spec.shape) < 3:
        raise ValueError(
            f"grad_cam: the output of layer {path!r} must be one array (N, *spatial, channels), "
            f"got {spec}. Pick a convolution's path (see `explain.layer_paths(model)`)."
        )

    def score(delta):
        outputs, inner = run_with(
            model, params, state, x, capture=[path], add={path: delta}, where="grad_cam"
        )
        return _select(outputs, target, "grad_cam").sum(), inner[path]

    grads, acts = jax.grad(score, has_aux=True)(jnp.zeros(spec.shape, spec.dtype))
    spatial = tuple(range(1, acts.ndim - 1))
    weights = grads.mean(axis=spatial, keepdims=True)
    cam = (weights * acts).sum(axis=-1)
    if relu:
        cam = jax.nn.relu(cam)
    if upsample and x.ndim != cam.ndim + 1:
        raise ValueError(
            f"grad_cam: cannot upsample the map {cam.shape} to inputs of shape {x.shape}: "
            "expected inputs (N, *spatial, channels) with as many spatial axes as the layer's "
            "output. Pass `upsample=False`."
        )
    if upsample and cam.shape[1:] != x.shape[1:-1]:
        cam = jax.image.resize(cam, (cam.shape[0], *x.shape[1:-1]), "linear")
    return cam
