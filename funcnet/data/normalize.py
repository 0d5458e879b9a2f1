"""Normalizers fitted on training data: ``Standardizer`` and ``MinMaxScaler``."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from funcnet._checks import is_int

__all__ = ["MinMaxScaler", "Standardizer"]


# --------------------------------------------------------------------------- normalizers


def _fit_axes(x: np.ndarray, axis: Any, where: str) -> tuple[int, ...]:
    axes = (axis,) if is_int(axis) else tuple(axis) if isinstance(axis, Sequence) else None
    if axes is None or not all(is_int(a) for a in axes) or not axes:
        raise TypeError(
            f"{where}: `axis` must be an int or a tuple of ints (the axes to reduce over), "
            f"got {axis!r}."
        )
    if any(not -x.ndim <= a < x.ndim for a in axes):
        raise ValueError(
            f"{where}: `axis={axis}` is out of range for data of shape {x.shape}; reduce over "
            "the example axis 0 (per feature) or e.g. (0, 1, 2) for per-channel images."
        )
    return tuple(sorted({a % x.ndim for a in axes}))


def _fit_data(x: Any, axis: Any, where: str) -> tuple[np.ndarray, tuple[int, ...], Any]:
    x = np.asarray(x)
    if x.ndim == 0 or x.shape[0] == 0:
        raise ValueError(f"{where}: needs at least one example, got shape {x.shape}.")
    axes = _fit_axes(x, axis, where)
    if np.issubdtype(x.dtype, np.inexact) and not np.isfinite(x).all():
        raise ValueError(
            f"{where}: the data has {int((~np.isfinite(x)).sum())} NaN/Inf values; remove "
            "or impute them first with `funcnet.data.clean`."
        )
    dtype = x.dtype if np.issubdtype(x.dtype, np.floating) else np.dtype(np.float32)
    return x.astype(np.float64), axes, dtype


def _prepare(x: Any, stats: Sequence[Any], where: str) -> tuple[Any, Any, list]:
    """Pick numpy or jax, check shapes and cast data and statistics to one float dtype."""
    use_jax = isinstance(x, jax.Array) or any(isinstance(s, jax.Array) for s in stats)
    xp = jnp if use_jax else np
    x = xp.asarray(x)
    ref = stats[0]
    if len(x.shape) != len(ref.shape) or any(s != 1 and s != d for s, d in zip(ref.shape, x.shape)):
        raise ValueError(
            f"{where}: fitted on data shaped like statistics {tuple(ref.shape)} (1 on the "
            f"reduced axes), got data of shape {tuple(x.shape)}; apply it to data shaped "
            "like the data it was fitted on."
        )
    dtype = x.dtype if xp.issubdtype(x.dtype, xp.floating) else ref.dtype
    return xp, xp.asarray(x, dtype), [xp.asarray(s, dtype) for s in stats]


class Standardizer(NamedTuple):
    """Standardize to zero mean and unit variance: ``(x - mean) / std``.

    A pytree of two arrays (keeping the reduced axes as size 1), so it can be
    saved in a checkpoint and passed to a jitted function. Fit it on the
    training split only (:meth:`fit`, on the host, in float64), then
    :meth:`apply` it to every split and :meth:`inverse` it to map back.

    ``axis`` chooses what gets its own statistics: ``axis=0`` (default) gives
    one mean/std per feature; ``axis=(0, 1, 2)`` on ``(N, H, W, C)`` images one
    per channel; ``axis=None`` is not accepted (pass all axes for one global
    statistic). The standard deviation is the population one (``ddof=0``);
    features that are constant get ``std = 1`` (they map to 0).

    The statistics have the data's floating dtype (float32 for integer data).
    ``apply`` and ``inverse`` keep a floating input's dtype, turn integer input
    (e.g. uint8 pixels) into the statistics' dtype, return numpy for numpy
    input and a ``jax.Array`` for jax input, and run inside ``jax.jit``.

    Examples:
        >>> import numpy as np, jax
        >>> train = np.array([[1.0, 10.0], [3.0, 10.0]], np.float32)
        >>> norm = Standardizer.fit(train)
        >>> norm
        Standardizer(mean=array([[ 2., 10.]], dtype=float32), std=array([[1., 1.]], dtype=float32))
        >>> norm.apply(np.array([[5.0, 11.0]], np.float32))
        array([[3., 1.]], dtype=float32)
        >>> jax.jit(Standardizer.apply)(norm, jax.numpy.asarray(train))
        Array([[-1.,  0.], [ 1.,  0.]], dtype=float32)
        >>> norm.inverse(norm.apply(train))
        array([[ 1., 10.], [ 3., 10.]], dtype=float32)
    """

    mean: Any
    std: Any

    @classmethod
    def fit(cls, x: Any, axis: int | Sequence[int] = 0) -> Standardizer:
        """Compute the mean and standard deviation of ``x`` over ``axis``.

        Raises:
            TypeError: for an ``axis`` that is not an int or tuple of ints.
            ValueError: for an out-of-range ``axis``, empty data or NaN/Inf values.
        """
        x64, axes, dtype = _fit_data(x, axis, "Standardizer.fit")
        mean = x64.mean(axis=axes, keepdims=True)
        std = x64.std(axis=axes, keepdims=True)
        std = np.where(std <= 10 * np.finfo(np.float64).eps * np.abs(mean), 1.0, std)
        return cls(mean.astype(dtype), std.astype(dtype))

    def apply(self, x: Any) -> Any:
        """``(x - mean) / std``.

        Raises:
            ValueError: if ``x`` is not shaped like the data the normalizer was fitted on.
        """
        _, x, (mean, std) = _prepare(x, (self.mean, self.std), "Standardizer.apply")
        return (x - mean) / std

    def inverse(self, x: Any) -> Any:
        """``x * std + mean``, undoing :meth:`apply`."""
        _, x, (mean, std) = _prepare(x, (self.mean, self.std), "Standardizer.inverse")
        return x * std + mean


class MinMaxScaler(NamedTuple):
    """Scale linearly so the training data's range ``[minimum, maximum]`` maps to ``[low, high]``.

    A pytree of four arrays; fit on the training split only with :meth:`fit`
    (``feature_range=(low, high)``, default ``(0, 1)``) and apply to every
    split. Values of other splits outside the training range map outside
    ``[low, high]`` (no clipping). Features that are constant in training map
    to ``low``. ``axis``, dtypes and numpy/jax behave as in :class:`Standardizer`.

    Examples:
        >>> import numpy as np
        >>> scaler = MinMaxScaler.fit(np.array([[0.0], [4.0]], np.float32), feature_range=(-1, 1))
        >>> scaler.apply(np.array([[1.0], [6.0]], np.float32))
        array([[-0.5], [ 2. ]], dtype=float32)
        >>> scaler.inverse(np.array([[-0.5]], np.float32))
        array([[1.]], dtype=float32)
    """

    minimum: Any
    maximum: Any
    low: Any
    high: Any

    @classmethod
    def fit(
        cls,
        x: Any,
        axis: int | Sequence[int] = 0,
        feature_range: tuple[float, float] = (0.0, 1.0),
    ) -> MinMaxScaler:
        """Compute the minimum and maximum of ``x`` over ``axis``.

        Raises:
            TypeError: for an ``axis`` that is not an int or tuple of ints.
            ValueError: for a bad ``axis`` or ``feature_range``, empty data or NaN/Inf values.
        """
        try:
            low, high = (float(v) for v in feature_range)
        except (TypeError, ValueError):
            low = high = math.nan
        if not low < high:
            raise ValueError(
                f"MinMaxScaler.fit: `feature_range` must be (low, high) with low < high, got "
                f"{feature_range!r}."
            )
        x64, axes, dtype = _fit_data(x, axis, "MinMaxScaler.fit")
        minimum = x64.min(axis=axes, keepdims=True).astype(dtype)
        maximum = x64.max(axis=axes, keepdims=True).astype(dtype)
        return cls(minimum, maximum, np.asarray(low, dtype), np.asarray(high, dtype))

    def _range(self, xp: Any, minimum: Any, maximum: Any) -> Any:
        span = maximum - minimum
        return xp.where(span == 0, xp.ones_like(span), span)

    def apply(self, x: Any) -> Any:
        """``(x - minimum) / (maximum - minimum) * (high - low) + low``.

        Raises:
            ValueError: if ``x`` is not shaped like the data the scaler was fitted on.
        """
        stats = (self.minimum, self.maximum, self.low, self.high)
        xp, x, (lo_x, hi_x, low, high) = _prepare(x, stats, "MinMaxScaler.apply")
        return (x - lo_x) / self._range(xp, lo_x, hi_x) * (high - low) + low

    def inverse(self, x: Any) -> Any:
        """Undo :meth:`apply` (constant features map back to their value)."""
        stats = (self.minimum, self.maximum, self.low, self.high)
        xp, x, (lo_x, hi_x, low, high) = _prepare(x, stats, "MinMaxScaler.inverse")
        return (x - low) / (high - low) * self._range(xp, lo_x, hi_x) + lo_x
