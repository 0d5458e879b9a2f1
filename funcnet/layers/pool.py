"""Pooling over 1 to 3 spatial axes, channels last: MaxPool, AvgPool and the global pools."""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax.numpy as jnp
import numpy as np
from jax import lax

from funcnet._checks import array_of, as_tuple, fmt_shape
from funcnet.core import Layer, LayerError, stateless
from funcnet.layers.conv import (
    _check_rank,
    _expand,
    _fmt_arg,
    _name,
    _out_size,
    _pads_of,
    _parse_padding,
    _same_pads,
    _seq_len,
    _spatial_rank,
)

__all__ = ["AvgPool", "GlobalAvgPool", "GlobalMaxPool", "MaxPool"]


def _max_identity(dtype) -> np.ndarray:
    """The value padded positions take in a max: ``-inf``, or the smallest integer."""
    if jnp.issubdtype(dtype, jnp.floating):
        return np.array(-np.inf, dtype)
    if jnp.issubdtype(dtype, jnp.integer):
        return np.array(jnp.iinfo(dtype).min, dtype)
    return np.array(False, dtype)


def _mean_dtype(x_dtype):
    """Means keep a floating dtype; other inputs give float32."""
    return x_dtype if jnp.issubdtype(x_dtype, jnp.floating) else jnp.dtype(jnp.float32)


def _sum_dtype(dt):
    """Sum low-precision floats in float32."""
    return dt if jnp.finfo(dt).bits >= 32 else jnp.dtype(jnp.float32)


class _PoolArgs:
    """The checked hyperparameters of a pooling layer, and its output geometry."""

    def __init__(self, owner, window, strides, padding):
        self.owner = owner
        self.padding, pad_nd = _parse_padding(owner, padding, ("SAME", "VALID"))
        self.nd = _spatial_rank(
            owner,
            {
                "window": _seq_len(window),
                "strides": _seq_len(strides) if strides is not None else None,
                "padding": pad_nd,
            },
        )
        self.window = as_tuple(owner, "window", window, self.nd)
        self.strides = (
            self.window if strides is None else as_tuple(owner, "strides", strides, self.nd)
        )
        if not isinstance(self.padding, str):
            nd = self.nd or 1
            pads = _pads_of(self.padding, nd)
            for w, (lo, hi) in zip(_expand(self.window, nd), pads):
                if lo >= w or hi >= w:
                    raise ValueError(
                        f"{owner}: padding {_fmt_arg(padding)} must be smaller than the window "
                        f"{_fmt_arg(window)} on each side, or some windows would hold only "
                        "padding; use less padding or a larger window."
                    )

    def geometry(self, inputs):
        """Check ``inputs``; return its shape, dtype, window, strides, pads and output size."""
        shape, x_dtype = array_of(inputs)
        nd = _check_rank(shape, self.nd, "window")
        window, strides = _expand(self.window, nd), _expand(self.strides, nd)
        spatial = shape[1:-1]
        if self.padding == "SAME":
            pads = tuple(_same_pads(n, w, s) for n, w, s in zip(spatial, window, strides))
        elif self.padding == "VALID":
            pads = ((0, 0),) * nd
        else:
            pads = _pads_of(self.padding, nd)
        out = tuple(_out_size(n, w, s, *p) for n, w, s, p in zip(spatial, window, strides, pads))
        for axis, size in enumerate(out):
            if size <= 0:
                raise LayerError(
                    f"spatial size {fmt_shape(spatial)} is too small for the window "
                    f"{fmt_shape(window)} with padding {self.padding!r}: the output would be "
                    f"empty along spatial axis {axis}. Use larger inputs, a smaller window, or "
                    "padding='SAME'."
                )
        return shape, x_dtype, window, strides, pads, out


def _blocks(x, window, pads, out, fill):
    """Non-overlapping windows as axes: ``(N, o1, w1, o2, w2, ..., C)`` and the window axes.

    Pads with ``fill`` and crops the remainder that no window covers (as VALID does).
    """
    nd = len(window)
    if any(lo or hi for lo, hi in pads):
        x = jnp.pad(x, ((0, 0), *pads, (0, 0)), constant_values=fill)
    if any(n != o * w for n, o, w in zip(x.shape[1:-1], out, window)):
        x = x[(slice(None), *(slice(0, o * w) for o, w in zip(out, window)))]
    split = [d for o, w in zip(out, window) for d in (o, w)]
    return x.reshape(x.shape[0], *split, x.shape[-1]), tuple(2 + 2 * i for i in range(nd))


def _window_counts(spatial, window, strides, pads, out) -> np.ndarray:
    """How many real (not padded) inputs each output window covers, shape ``(1, *out, 1)``."""
    counts = np.ones((), np.int64)
    for n, w, s, (lo, _), o in zip(spatial, window, strides, pads, out):
        starts = np.arange(o) * s - lo
        per_axis = np.minimum(starts + w, n) - np.maximum(starts, 0)
        counts = np.multiply.outer(counts, per_axis)
    return counts.reshape(1, *out, 1)


def _pool_name(kind, window, strides, padding, **extras) -> str:
    args = {}
    if strides is not None:
        args["strides"] = strides
    if not (isinstance(padding, str) and padding.upper() == "VALID"):
        args["padding"] = padding
    return _name(kind, _fmt_arg(window), **args, **extras)


def MaxPool(
    window: int | Sequence[int],
    strides: int | Sequence[int] | None = None,
    padding: str | int | Sequence[tuple[int, int]] = "VALID",
) -> Layer:
    """The maximum over each window, per channel, over 1 to 3 spatial axes.

    Inputs ``(N, *spatial, C)``, outputs ``(N, *out_spatial, C)`` of the same
    dtype. No params, state or key.

    Padding: ``"VALID"`` (the default, as Keras and PyTorch) uses only whole
    windows, dropping a remainder that no window covers; ``"SAME"`` gives
    ``ceil(n / strides)`` outputs (TF/Keras); an int ``p`` or one ``(lo, hi)``
    pair per spatial axis pads explicitly. Padded positions never win (they
    count as ``-inf``), and padding must be smaller than the window.

    Speed and ties: when ``strides == window`` (non-overlapping windows, the
    common ``MaxPool(2)``) the windows are cut out with a reshape and reduced
    with ``max``, whose gradient XLA computes much faster on CPU than that of
    ``lax.reduce_window`` (``select_and_scatter``), used otherwise. The two
    differ only at ties: when several inputs of a window share the maximum,
    the reshape path splits the gradient evenly between them, while
    ``reduce_window`` (like PyTorch and TF) gives all of it to one.

    Args:
        window: the window size, an int (the same on every spatial axis; the
            number of spatial axes is then the input rank minus 2) or one int
            per spatial axis.
        strides: an int or one per spatial axis; default: ``window``.
        padding: ``"VALID"``, ``"SAME"`` (case-insensitive), an int, or one
            ``(lo, hi)`` pair per spatial axis.

    Raises:
        ValueError: at construction, for bad hyperparameters.
        LayerError: at ``init`` and ``apply``, for inputs of the wrong rank or
            spatial sizes smaller than the window.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> pool = MaxPool(2)
        >>> params, state = pool.init(jax.random.key(0), jnp.zeros((1, 28, 28, 8)))
        >>> jax.tree.map(jnp.shape, params)
        ()
        >>> pool.apply(params, state, jnp.ones((2, 28, 28, 8)))[0].shape
        (2, 14, 14, 8)
        >>> x = jnp.array([1.0, 5.0, 2.0, 4.0, 3.0]).reshape(1, 5, 1)
        >>> MaxPool(3, strides=2, padding="SAME").apply((), (), x)[0].ravel()
        Array([5., 5., 4.], dtype=float32)
    """
    args = _PoolArgs("MaxPool", window, strides, padding)

    def forward(inputs):
        _, x_dtype, window_, strides_, pads, out = args.geometry(inputs)
        fill = _max_identity(x_dtype)
        if strides_ == window_:
            blocks, axes = _blocks(inputs, window_, pads, out, fill)
            return jnp.max(blocks, axis=axes)
        y = lax.reduce_window(
            inputs,
            fill,
            lax.max,
            (1, *window_, 1),
            (1, *strides_, 1),
            ((0, 0), *pads, (0, 0)),
        )
        return y

    return stateless(_pool_name("MaxPool", window, strides, padding), forward, args.geometry)


def AvgPool(
    window: int | Sequence[int],
    strides: int | Sequence[int] | None = None,
    padding: str | int | Sequence[tuple[int, int]] = "VALID",
    *,
    count_include_pad: bool = False,
) -> Layer:
    """The mean over each window, per channel, over 1 to 3 spatial axes.

    Inputs ``(N, *spatial, C)``, outputs ``(N, *out_spatial, C)``, floating
    (integer inputs give float32). No params, state or key.

    Padding as in :func:`MaxPool`. With padding, a window that overlaps it is
    divided by the number of real inputs it covers (TF/Keras ``"same"``,
    PyTorch ``count_include_pad=False``); with ``count_include_pad=True`` by
    the full window size, i.e. padded positions count as zeros (the PyTorch
    default). Low-precision floats are summed in float32. Non-overlapping
    windows (``strides == window``) are computed with a reshape and a sum
    instead of ``lax.reduce_window``.

    Args:
        window: the window size, an int (the same on every spatial axis; the
            number of spatial axes is then the input rank minus 2) or one int
            per spatial axis.
        strides: an int or one per spatial axis; default: ``window``.
        padding: ``"VALID"``, ``"SAME"`` (case-insensitive), an int, or one
            ``(lo, hi)`` pair per spatial axis.
        count_include_pad: divide by the window size also where it overlaps
            the padding.

    Raises:
        ValueError: at construction, for bad hyperparameters.
        LayerError: at ``init`` and ``apply``, for inputs of the wrong rank or
            spatial sizes smaller than the window.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> pool = AvgPool((2, 2))
        >>> params, state = pool.init(jax.random.key(0), jnp.zeros((1, 6, 6, 3)))
        >>> jax.tree.map(jnp.shape, params)
        ()
        >>> pool.apply(params, state, jnp.ones((2, 6, 6, 3)))[0].shape
        (2, 3, 3, 3)
        >>> x = jnp.array([1.0, 2.0, 3.0, 4.0, 5.0]).reshape(1, 5, 1)
        >>> AvgPool(2, padding="SAME").apply((), (), x)[0].ravel()  # the last window holds 5 only
        Array([1.5, 3.5, 5. ], dtype=float32)
    """
    args = _PoolArgs("AvgPool", window, strides, padding)
    if not isinstance(count_include_pad, bool):
        raise ValueError(
            f"AvgPool: `count_include_pad` must be True or False, got {count_include_pad!r}."
        )

    def forward(inputs):
        shape, x_dtype, window_, strides_, pads, out = args.geometry(inputs)
        dt = _mean_dtype(x_dtype)
        acc = _sum_dtype(dt)
        x = inputs.astype(acc)
        padded = any(lo or hi for lo, hi in pads)
        if strides_ == window_:
            blocks, axes = _blocks(x, window_, pads, out, np.array(0, acc))
            if not padded:
                return jnp.mean(blocks, axis=axes).astype(dt)
            total = jnp.sum(blocks, axis=axes)
        else:
            total = lax.reduce_window(
                x,
                np.array(0, acc),
                lax.add,
                (1, *window_, 1),
                (1, *strides_, 1),
                ((0, 0), *pads, (0, 0)),
            )
        if count_include_pad or not padded:
            count = np.full((1,) * (len(out) + 2), math.prod(window_))
        else:
            count = _window_counts(shape[1:-1], window_, strides_, pads, out)
        return (total / jnp.asarray(count, acc)).astype(dt)

    extras = {"count_include_pad": True} if count_include_pad else {}
    name = _pool_name("AvgPool", window, strides, padding, **extras)
    return stateless(name, forward, args.geometry)


def _global_pool(kind: str, reduce, floating: bool) -> Layer:
    def check(inputs):
        shape, x_dtype = array_of(inputs)
        if len(shape) < 3:
            raise LayerError(
                f"expected inputs of shape (N, *spatial, C) with at least one spatial axis "
                f"(rank >= 3), got shape {fmt_shape(shape)}. Add the missing axes, e.g. "
                "`x[..., None]` for one channel."
            )
        if 0 in shape[1:-1]:
            raise LayerError(
                f"expected non-empty spatial axes, got shape {fmt_shape(shape)}; there is "
                "nothing to pool."
            )
        return shape, x_dtype

    def forward(inputs):
        shape, x_dtype = check(inputs)
        axes = tuple(range(1, len(shape) - 1))
        if not floating:
            return reduce(inputs, axis=axes)
        dt = _mean_dtype(x_dtype)
        acc = _sum_dtype(dt)
        return reduce(inputs.astype(acc), axis=axes).astype(dt)

    return stateless(kind, forward, check)


def GlobalAvgPool() -> Layer:
    """The mean over all spatial axes: ``(N, *spatial, C) -> (N, C)``.

    Any number (>= 1) of spatial axes; integer inputs give float32. No params,
    state or key.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> pool = GlobalAvgPool()
        >>> params, state = pool.init(jax.random.key(0), jnp.zeros((1, 7, 7, 64)))
        >>> jax.tree.map(jnp.shape, params)
        ()
        >>> pool.apply(params, state, jnp.ones((2, 7, 7, 64)))[0].shape
        (2, 64)
    """
    return _global_pool("GlobalAvgPool", jnp.mean, True)


def GlobalMaxPool() -> Layer:
    """The maximum over all spatial axes: ``(N, *spatial, C) -> (N, C)``, of the same dtype.

    Any number (>= 1) of spatial axes. No params, state or key.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> pool = GlobalMaxPool()
        >>> params, state = pool.init(jax.random.key(0), jnp.zeros((1, 10, 16)))
        >>> jax.tree.map(jnp.shape, params)
        ()
        >>> pool.apply(params, state, jnp.ones((2, 10, 16)))[0].shape
        (2, 16)
    """
    return _global_pool("GlobalMaxPool", jnp.max, False)
