"""Normalization layers: BatchNorm, LayerNorm, GroupNorm and RMSNorm.

Shared conventions:

- No layer here needs a ``key``; all need floating-point inputs.
- Statistics and the normalization are computed in at least float32 (float64
  for float64 inputs), also for bfloat16 or float16 inputs, and the result is
  cast to ``dtype`` — by default the inputs' dtype, so a bfloat16 model stays
  bfloat16 while its statistics do not lose precision.
- Variances are biased (divided by the number of values) and computed in two
  passes, ``mean((x - mean(x))**2)``, which stays accurate for inputs whose mean
  is large compared with their spread.
- ``scale`` multiplies and ``bias`` is added after normalizing; each is left out
  of the params when disabled, and a layer with neither has params ``()``.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from funcnet import initializers
from funcnet._checks import (
    array_of,
    check_floating,
    check_floating_dtype,
    check_number,
    check_positive_int,
    fmt_shape,
    is_int,
)
from funcnet.core import Layer, LayerError, declare

__all__ = ["BatchNorm", "GroupNorm", "LayerNorm", "RMSNorm"]


# ---------------------------------------------------------------------------------------------
# Hyperparameter checks (constructor time: ValueError)


def _check_epsilon(owner: str, value) -> float:
    return check_number(owner, "epsilon", value, above=0, finite=True)


def _check_momentum(owner: str, value) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float, np.floating))
        or not 0 <= value < 1
    ):
        raise ValueError(
            f"{owner}: `momentum` must be a number in [0, 1), got {value!r}. It is the weight "
            "of the old running average (0.99 here == `momentum=0.01` in PyTorch)."
        )
    return float(value)


def _check_axis(owner: str, axis, *, allow_tuple: bool) -> tuple[int, ...]:
    """``axis`` as a non-empty tuple of distinct ints (an int gives a 1-tuple)."""
    if is_int(axis):
        return (int(axis),)
    if allow_tuple and isinstance(axis, Sequence) and not isinstance(axis, str):
        axes = tuple(axis)
        if axes and all(is_int(a) for a in axes) and len(set(axes)) == len(axes):
            return tuple(int(a) for a in axes)
    what = "an int or a non-empty tuple of distinct ints" if allow_tuple else "an int"
    raise ValueError(f"{owner}: `axis` must be {what}, got {axis!r}.")


def _axis_repr(axes: tuple[int, ...]):
    return axes[0] if len(axes) == 1 else axes


# ---------------------------------------------------------------------------------------------
# Shape and dtype helpers (init/apply time: LayerError)


def _floating_input(inputs) -> tuple[tuple[int, ...], jnp.dtype]:
    shape, x_dtype = array_of(inputs)
    check_floating(x_dtype)
    return shape, x_dtype


def _resolve_axes(axes: tuple[int, ...], shape: tuple[int, ...]) -> tuple[int, ...]:
    """``axes`` as sorted non-negative axes of an array of ``shape``; LayerError if impossible."""
    rank = len(shape)
    if any(not -rank <= a < rank for a in axes):
        need = max(max(a + 1, -a) for a in axes)
        raise LayerError(
            f"`axis={_axis_repr(axes)}` needs inputs with at least {need} "
            f"{'axis' if need == 1 else 'axes'}, got shape "
            f"{fmt_shape(shape)}."
        )
    resolved = sorted(a % rank for a in axes)
    if len(set(resolved)) != len(resolved):
        raise LayerError(
            f"`axis={_axis_repr(axes)}` names the same axis twice for inputs of shape "
            f"{fmt_shape(shape)}."
        )
    return tuple(resolved)


def _check_sizes(axes, resolved, shape, expected) -> None:
    """LayerError unless ``shape`` has sizes ``expected`` on the ``resolved`` axes."""
    got = tuple(shape[a] for a in resolved)
    if got != tuple(expected):
        if len(axes) == 1:
            raise LayerError(
                f"expected inputs with {expected[0]} features on axis {axes[0]}, got shape "
                f"{fmt_shape(shape)}."
            )
        raise LayerError(
            f"expected inputs with sizes {fmt_shape(expected)} on axes {axes}, got shape "
            f"{fmt_shape(shape)}."
        )


def _dtypes(x_dtype, dtype):
    """(computation dtype, output dtype): compute in at least float32, output ``dtype`` or x's."""
    out = jnp.dtype(x_dtype if dtype is None else dtype)
    return _at_least_float32(jnp.dtype(x_dtype), out), out


def _at_least_float32(*dtypes):
    """The widest of ``dtypes`` and float32 (``jnp.promote_types`` refuses bfloat16 + float32
    under strict dtype promotion)."""
    wide = max(dtypes, key=lambda d: d.itemsize)
    return wide if wide.itemsize > 4 else jnp.dtype(jnp.float32)


def _broadcast(v, resolved, rank, dt):
    """Reshape ``v``, laid out along the ``resolved`` axes, to broadcast against rank ``rank``."""
    shape = [1] * rank
    for a, n in zip(resolved, v.shape, strict=True):
        shape[a] = n
    return v.astype(dt).reshape(shape)


def _affine_params(key, shape, use_scale, use_bias, scale_init, bias_init, param_dtype):
    if not (use_scale or use_bias):
        return ()
    k_scale, k_bias = jax.random.split(key) if key is not None else (None, None)
    params = {}
    if use_scale:
        params["scale"] = scale_init(k_scale, shape, param_dtype)
    if use_bias:
        params["bias"] = bias_init(k_bias, shape, param_dtype)
    names = ("norm",) * len(shape)
    return declare(params, {"scale": names, "bias": names})


def _param_shape(params, use_scale, use_bias):
    """The shape of ``scale``/``bias`` in ``params`` (None when the layer has neither)."""
    for name, used in (("scale", use_scale), ("bias", use_bias)):
        if used:
            if not isinstance(params, dict) or name not in params:
                raise LayerError(
                    f"expected params with entry {name!r}, got {_describe(params)}. Pass the "
                    "params returned by this layer's `init`."
                )
            return tuple(params[name].shape)
    return None


def _describe(tree) -> str:
    if isinstance(tree, dict):
        return f"a dict with keys {sorted(tree)}"
    return type(tree).__name__


def _affine(y, params, resolved, rank, dt, out_dtype):
    """``y * scale + bias`` (each where present), cast to ``out_dtype``."""
    if params and "scale" in params:
        y = y * _broadcast(params["scale"], resolved, rank, dt)
    if params and "bias" in params:
        y = y + _broadcast(params["bias"], resolved, rank, dt)
    return y.astype(out_dtype)


# ---------------------------------------------------------------------------------------------
# Layers


def BatchNorm(
    *,
    momentum: float = 0.99,
    epsilon: float = 1e-5,
    axis: int = -1,
    axis_name: Hashable | None = None,
    use_scale: bool = True,
    use_bias: bool = True,
    scale_init: str | initializers.Initializer = "ones",
    bias_init: str | initializers.Initializer = "zeros",
    dtype=None,
    param_dtype=jnp.float32,
) -> Layer:
    """Batch normalization with running statistics kept as ``state``.

    Normalizes each channel (the entries along ``axis``) with statistics taken
    over every other axis: ``y = (x - mean) / sqrt(var + epsilon) * scale +
    bias``. Inputs of any rank with ``C = inputs.shape[axis]`` channels
    (``axis=-1`` for channels-last ``(N, H, W, C)``, ``axis=1`` for
    ``(N, C, H, W)``); outputs have the inputs' shape. No key.

    Params ``{"scale": (C,), "bias": (C,)}`` (an entry is left out when
    ``use_scale``/``use_bias`` is False). State ``{"mean": (C,), "var": (C,)}``,
    initialised to 0 and 1: the running statistics are *state*, not params —
    they are not differentiated and change only when ``apply`` returns them.

    - ``train=True``: normalizes with the statistics of this batch (biased
      variance; gradients flow through them) and returns the updated state
      ``running = momentum * running + (1 - momentum) * batch_stat``, where
      ``batch_stat`` uses the biased variance, as Keras and Flax do (PyTorch
      stores the unbiased one). ``momentum`` is the weight of the *old* value:
      the default 0.99 is PyTorch's ``momentum=0.01``; PyTorch's default 0.1 is
      ``momentum=0.9`` here. Training needs more than one value per channel
      (unless ``axis_name`` is given; then the total is not known here).
    - ``train=False`` (the default): normalizes with the running statistics and
      returns the state unchanged.

    Statistics are computed in at least float32, also for bfloat16/float16
    inputs; the output has ``dtype`` (default: the inputs' dtype) and the
    state is kept in at least float32.

    Data parallelism: with ``axis_name`` the batch mean, and then the mean of
    squared deviations from that global mean, are averaged over the devices
    with ``jax.lax.pmean(..., axis_name)``, so every device normalizes with the
    statistics of the whole global batch (equal per-device batch sizes assumed),
    under ``jax.pmap``, ``jax.shard_map`` or ``jax.vmap(..., axis_name=...)``.
    Without it (the default), under ``jax.jit`` with a sharded batch the
    statistics are already those of the global batch.

    Args:
        momentum: weight of the old running average, in ``[0, 1)``.
        epsilon: added to the variance, > 0.
        axis: the channel axis.
        axis_name: a mapped axis name to average the batch statistics over, or None.
        use_scale, use_bias: learn a per-channel scale / bias.
        scale_init, bias_init: initializers (functions or names).
        dtype: output dtype; default: the inputs' dtype.
        param_dtype: dtype of the params (the state is at least float32).

    Raises:
        ValueError: in the constructor, for ``momentum`` outside ``[0, 1)``,
            ``epsilon <= 0``, a non-int ``axis`` or a non-floating ``dtype``.
        LayerError: for non-floating inputs, inputs without ``axis``, a channel
            count that does not match the params/state, or a training batch with
            a single value per channel.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> bn = BatchNorm()
        >>> params, state = bn.init(jax.random.key(0), jnp.zeros((8, 4)))
        >>> jax.tree.map(jnp.shape, params), jax.tree.map(jnp.shape, state)
        ({'bias': (4,), 'scale': (4,)}, {'mean': (4,), 'var': (4,)})
        >>> x = 3.0 + 2.0 * jax.random.normal(jax.random.key(1), (8, 4))
        >>> y, new_state = bn.apply(params, state, x, train=True)
        >>> y.shape
        (8, 4)
        >>> bool(jnp.allclose(y.mean(0), 0.0, atol=1e-5))
        True
        >>> bool((new_state["mean"] != state["mean"]).all())  # updated only in train mode
        True
        >>> bn.apply(params, new_state, x)[1] is new_state
        True

        Channels-first images:

        >>> bn = BatchNorm(axis=1)
        >>> params, state = bn.init(jax.random.key(0), jnp.zeros((2, 3, 5, 5)))
        >>> state["mean"].shape
        (3,)
    """
    momentum = _check_momentum("BatchNorm", momentum)
    epsilon = _check_epsilon("BatchNorm", epsilon)
    axes = _check_axis("BatchNorm", axis, allow_tuple=False)
    dtype = check_floating_dtype("BatchNorm", dtype)
    scale_init, bias_init = initializers.get(scale_init), initializers.get(bias_init)
    state_dtype = _at_least_float32(jnp.dtype(param_dtype))

    def init(key, inputs):
        shape, _ = _floating_input(inputs)
        (ax,) = _resolve_axes(axes, shape)
        c = shape[ax]
        params = _affine_params(key, (c,), use_scale, use_bias, scale_init, bias_init, param_dtype)
        state = {"mean": jnp.zeros((c,), state_dtype), "var": jnp.ones((c,), state_dtype)}
        return params, state

    def apply(params, state, inputs, *, key=None, train=False):
        del key
        shape, x_dtype = _floating_input(inputs)
        if not isinstance(state, dict) or set(state) != {"mean", "var"}:
            raise LayerError(
                f"expected state {{'mean', 'var'}} (the running statistics), got "
                f"{_describe(state)}. Pass the state returned by `init` or by the last "
                "`apply(..., train=True)`."
            )
        resolved = _resolve_axes(axes, shape)
        (ax,) = resolved
        _check_sizes(axes, resolved, shape, state["mean"].shape)
        p_shape = _param_shape(params, use_scale, use_bias)
        if p_shape is not None:
            _check_sizes(axes, resolved, shape, p_shape)
        dt, out_dtype = _dtypes(x_dtype, dtype)
        rank = len(shape)
        x = inputs.astype(dt)
        if train:
            reduce = tuple(a for a in range(rank) if a != ax)
            if axis_name is None and math.prod(shape[a] for a in reduce) < 2:
                raise LayerError(
                    f"training needs more than one value per channel to compute batch "
                    f"statistics, got shape {fmt_shape(shape)} with channels on axis {axes[0]}. "
                    "Use a larger batch, or `train=False` to use the running statistics."
                )
            mean = jnp.mean(x, axis=reduce, keepdims=True)
            if axis_name is not None:
                mean = jax.lax.pmean(mean, axis_name)
            var = jnp.mean(jnp.square(x - mean), axis=reduce, keepdims=True)
            if axis_name is not None:
                var = jax.lax.pmean(var, axis_name)
            batch_mean = jax.lax.stop_gradient(mean.reshape(-1)).astype(state_dtype)
            batch_var = jax.lax.stop_gradient(var.reshape(-1)).astype(state_dtype)
            state = {
                "mean": momentum * state["mean"] + (1.0 - momentum) * batch_mean,
                "var": momentum * state["var"] + (1.0 - momentum) * batch_var,
            }
        else:
            mean = _broadcast(state["mean"], resolved, rank, dt)
            var = _broadcast(state["var"], resolved, rank, dt)
        y = (x - mean) * jax.lax.rsqrt(var + epsilon)
        return _affine(y, params, resolved, rank, dt, out_dtype), state

    name = "BatchNorm" if axes == (-1,) else f"BatchNorm(axis={axes[0]})"
    return Layer(init, apply, name)


def LayerNorm(
    *,
    axis: int | Sequence[int] = -1,
    epsilon: float = 1e-5,
    use_scale: bool = True,
    use_bias: bool = True,
    scale_init: str | initializers.Initializer = "ones",
    bias_init: str | initializers.Initializer = "zeros",
    dtype=None,
    param_dtype=jnp.float32,
) -> Layer:
    """Layer normalization: each example normalized over ``axis``.

    ``y = (x - mean) / sqrt(var + epsilon) * scale + bias`` with the mean and
    (biased) variance taken over the axes in ``axis`` (an int or a tuple of
    ints), separately for every position along the other axes. Outputs have the
    inputs' shape. Params ``{"scale": S, "bias": S}`` where ``S`` is the shape
    of the normalized axes, in the inputs' order (as PyTorch's
    ``normalized_shape``); no state; no key. Negative axes (the default) keep
    the layer independent of leading batch axes, so it works under ``vmap``.

    Args:
        axis: the axis or axes to normalize over.
        epsilon: added to the variance, > 0.
        use_scale, use_bias: learn an elementwise scale / bias over those axes.
        scale_init, bias_init: initializers (functions or names).
        dtype: output dtype; default: the inputs' dtype (statistics are computed
            in at least float32).
        param_dtype: dtype of the params.

    Raises:
        ValueError: in the constructor, for ``epsilon <= 0``, a bad ``axis`` or
            a non-floating ``dtype``.
        LayerError: for non-floating inputs, inputs without the axes, or sizes
            that do not match the params.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> ln = LayerNorm()
        >>> params, state = ln.init(jax.random.key(0), jnp.zeros((2, 7, 16)))
        >>> jax.tree.map(jnp.shape, params), state
        ({'bias': (16,), 'scale': (16,)}, ())
        >>> ln.apply(params, state, jnp.ones((2, 7, 16)))[0].shape
        (2, 7, 16)
        >>> params, _ = LayerNorm(axis=(-2, -1)).init(jax.random.key(0), jnp.zeros((2, 7, 16)))
        >>> params["scale"].shape
        (7, 16)
    """
    axes = _check_axis("LayerNorm", axis, allow_tuple=True)
    epsilon = _check_epsilon("LayerNorm", epsilon)
    dtype = check_floating_dtype("LayerNorm", dtype)
    scale_init, bias_init = initializers.get(scale_init), initializers.get(bias_init)

    def init(key, inputs):
        shape, _ = _floating_input(inputs)
        resolved = _resolve_axes(axes, shape)
        p_shape = tuple(shape[a] for a in resolved)
        params = _affine_params(
            key, p_shape, use_scale, use_bias, scale_init, bias_init, param_dtype
        )
        return params, ()

    def apply(params, state, inputs, *, key=None, train=False):
        del key, train
        shape, x_dtype = _floating_input(inputs)
        resolved = _resolve_axes(axes, shape)
        p_shape = _param_shape(params, use_scale, use_bias)
        if p_shape is not None:
            _check_sizes(axes, resolved, shape, p_shape)
        dt, out_dtype = _dtypes(x_dtype, dtype)
        x = inputs.astype(dt)
        mean = jnp.mean(x, axis=resolved, keepdims=True)
        var = jnp.mean(jnp.square(x - mean), axis=resolved, keepdims=True)
        y = (x - mean) * jax.lax.rsqrt(var + epsilon)
        return _affine(y, params, resolved, len(shape), dt, out_dtype), state

    name = "LayerNorm" if axes == (-1,) else f"LayerNorm(axis={_axis_repr(axes)})"
    return Layer(init, apply, name)


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def GroupNorm(
    num_groups: int = 32,
    *,
    epsilon: float = 1e-5,
    use_scale: bool = True,
    use_bias: bool = True,
    scale_init: str | initializers.Initializer = "ones",
    bias_init: str | initializers.Initializer = "zeros",
    dtype=None,
    param_dtype=jnp.float32,
) -> Layer:
    """Group normalization of channels-last inputs ``(N, *spatial, C)``.

    The ``C`` channels are split into ``num_groups`` contiguous groups of
    ``C // num_groups``; each example is normalized per group, with the mean
    and (biased) variance over its spatial positions and the group's channels.
    A per-channel ``scale`` and ``bias`` follow. ``num_groups=1`` normalizes
    each example over everything (a LayerNorm over ``(*spatial, C)`` with
    per-channel params); ``num_groups=C`` is instance normalization. Inputs
    need at least two axes, the first being the batch; ``C`` must be divisible
    by ``num_groups``. Outputs have the inputs' shape. Params ``{"scale": (C,),
    "bias": (C,)}``; no state; no key. For channels-first ``(N, C, H, W)``
    data (PyTorch's layout) move the channels last first.

    Args:
        num_groups: number of groups, >= 1 (32 as in the paper and Flax).
        epsilon: added to the variance, > 0.
        use_scale, use_bias: learn a per-channel scale / bias.
        scale_init, bias_init: initializers (functions or names).
        dtype: output dtype; default: the inputs' dtype (statistics are computed
            in at least float32).
        param_dtype: dtype of the params.

    Raises:
        ValueError: in the constructor, for ``num_groups < 1``, ``epsilon <= 0``
            or a non-floating ``dtype``.
        LayerError: for non-floating inputs, inputs with fewer than two axes, a
            channel count not divisible by ``num_groups`` (the message lists
            group counts that work) or not matching the params.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> gn = GroupNorm(4)
        >>> params, state = gn.init(jax.random.key(0), jnp.zeros((2, 8, 8, 16)))
        >>> jax.tree.map(jnp.shape, params), state
        ({'bias': (16,), 'scale': (16,)}, ())
        >>> gn.apply(params, state, jnp.ones((2, 8, 8, 16)))[0].shape
        (2, 8, 8, 16)
    """
    groups = check_positive_int("GroupNorm", "num_groups", num_groups)
    epsilon = _check_epsilon("GroupNorm", epsilon)
    dtype = check_floating_dtype("GroupNorm", dtype)
    scale_init, bias_init = initializers.get(scale_init), initializers.get(bias_init)

    def check_rank(shape):
        if len(shape) < 2:
            raise LayerError(
                f"expected channels-last inputs (N, *spatial, C) with at least 2 axes, got shape "
                f"{fmt_shape(shape)}."
            )

    def check_groups(shape):
        c = shape[-1]
        if c % groups:
            fits = _divisors(c)
            nearest = min(fits, key=lambda d: (abs(d - groups), d))
            raise LayerError(
                f"`num_groups={groups}` does not divide the {c} channels of inputs with shape "
                f"{fmt_shape(shape)}; use a divisor of {c}, e.g. `GroupNorm({nearest})` "
                f"(divisors: {fits})."
            )
        return c

    def init(key, inputs):
        shape, _ = _floating_input(inputs)
        check_rank(shape)
        c = check_groups(shape)
        params = _affine_params(key, (c,), use_scale, use_bias, scale_init, bias_init, param_dtype)
        return params, ()

    def apply(params, state, inputs, *, key=None, train=False):
        del key, train
        shape, x_dtype = _floating_input(inputs)
        check_rank(shape)
        p_shape = _param_shape(params, use_scale, use_bias)
        if p_shape is not None:
            _check_sizes((-1,), (len(shape) - 1,), shape, p_shape)
        c = check_groups(shape)
        dt, out_dtype = _dtypes(x_dtype, dtype)
        rank = len(shape)
        x = inputs.astype(dt).reshape((*shape[:-1], groups, c // groups))
        reduce = (*range(1, rank - 1), rank)  # spatial axes and the channels within a group
        mean = jnp.mean(x, axis=reduce, keepdims=True)
        var = jnp.mean(jnp.square(x - mean), axis=reduce, keepdims=True)
        y = ((x - mean) * jax.lax.rsqrt(var + epsilon)).reshape(shape)
        return _affine(y, params, (rank - 1,), rank, dt, out_dtype), state

    return Layer(init, apply, f"GroupNorm({groups})")


def RMSNorm(
    *,
    axis: int | Sequence[int] = -1,
    epsilon: float = 1e-6,
    use_scale: bool = True,
    scale_init: str | initializers.Initializer = "ones",
    dtype=None,
    param_dtype=jnp.float32,
) -> Layer:
    """Root-mean-square normalization: ``x / sqrt(mean(x**2) + epsilon) * scale``.

    As LayerNorm but without subtracting the mean and without a bias (Zhang &
    Sennrich, 2019; used by LLaMA-style transformers). The mean of squares is
    taken over ``axis`` (an int or a tuple of ints). Outputs have the inputs'
    shape. Params ``{"scale": S}`` with ``S`` the shape of the normalized axes
    (``()`` when ``use_scale=False``); no state; no key.

    Args:
        axis: the axis or axes to normalize over.
        epsilon: added to the mean of squares, > 0.
        use_scale: learn an elementwise scale.
        scale_init: initializer (function or name).
        dtype: output dtype; default: the inputs' dtype (statistics are computed
            in at least float32).
        param_dtype: dtype of the params.

    Raises:
        ValueError: in the constructor, for ``epsilon <= 0``, a bad ``axis`` or
            a non-floating ``dtype``.
        LayerError: for non-floating inputs, inputs without the axes, or sizes
            that do not match the params.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> rms = RMSNorm()
        >>> params, state = rms.init(jax.random.key(0), jnp.zeros((2, 5, 32)))
        >>> jax.tree.map(jnp.shape, params), state
        ({'scale': (32,)}, ())
        >>> rms.apply(params, state, jnp.ones((2, 5, 32)))[0].shape
        (2, 5, 32)
    """
    axes = _check_axis("RMSNorm", axis, allow_tuple=True)
    epsilon = _check_epsilon("RMSNorm", epsilon)
    dtype = check_floating_dtype("RMSNorm", dtype)
    scale_init = initializers.get(scale_init)

    def init(key, inputs):
        shape, _ = _floating_input(inputs)
        resolved = _resolve_axes(axes, shape)
        p_shape = tuple(shape[a] for a in resolved)
        return _affine_params(key, p_shape, use_scale, False, scale_init, None, param_dtype), ()

    def apply(params, state, inputs, *, key=None, train=False):
        del key, train
        shape, x_dtype = _floating_input(inputs)
        resolved = _resolve_axes(axes, shape)
        p_shape = _param_shape(params, use_scale, False)
        if p_shape is not None:
            _check_sizes(axes, resolved, shape, p_shape)
        dt, out_dtype = _dtypes(x_dtype, dtype)
        x = inputs.astype(dt)
        y = x * jax.lax.rsqrt(jnp.mean(jnp.square(x), axis=resolved, keepdims=True) + epsilon)
        return _affine(y, params, resolved, len(shape), dt, out_dtype), state

    name = "RMSNorm" if axes == (-1,) else f"RMSNorm(axis={_axis_repr(axes)})"
    return Layer(init, apply, name)
