"""Outliers, duplicate rows and constant columns, fitted on the training split only."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

from funcnet.data.normalize import _fit_data, _prepare

__all__ = ["ConstantColumns", "OutlierClipper", "drop_duplicates"]

_METHODS = {"zscore": 3.0, "iqr": 1.5, "quantile": 0.01}


def _quantile_pair(threshold: Any) -> tuple[float, float]:
    try:
        pair = (
            (float(threshold), 1.0 - float(threshold))
            if np.ndim(threshold) == 0
            else tuple(float(t) for t in threshold)
        )
    except (TypeError, ValueError):
        pair = (math.nan, math.nan)
    if len(pair) != 2 or not 0.0 <= pair[0] < pair[1] <= 1.0:
        raise ValueError(
            "OutlierClipper.fit: method='quantile' takes `threshold` q in [0, 0.5) (clip to the "
            f"q and 1 - q quantiles) or a pair (low, high) with 0 <= low < high <= 1, got "
            f"{threshold!r}; e.g. `threshold=0.01`."
        )
    return pair


def _bounds(x64: np.ndarray, axes: tuple[int, ...], method: str, threshold: Any):
    if method == "quantile":
        q = _quantile_pair(threshold)
        low, high = np.quantile(x64, q, axis=axes, keepdims=True)
        return low, high
    try:
        k = float(threshold)
    except (TypeError, ValueError):
        k = math.nan
    if not k > 0 or math.isinf(k):
        raise ValueError(
            f"OutlierClipper.fit: method={method!r} takes a `threshold` > 0 (the number of "
            f"{'standard deviations' if method == 'zscore' else 'interquartile ranges'}), got "
            f"{threshold!r}; the default is {_METHODS[method]}."
        )
    if method == "zscore":
        mean = x64.mean(axis=axes, keepdims=True)
        std = x64.std(axis=axes, keepdims=True)
        return mean - k * std, mean + k * std
    q1, q3 = np.quantile(x64, (0.25, 0.75), axis=axes, keepdims=True)
    return q1 - k * (q3 - q1), q3 + k * (q3 - q1)


class OutlierClipper(NamedTuple):
    """Per-feature bounds ``[low, high]`` fitted on training data; values outside are outliers.

    Fit on the training split only (:meth:`fit`, on the host, in float64), then
    on every split :meth:`apply` (clip to the bounds, "winsorize"),
    :meth:`mask` (which values are outliers) or :meth:`drop` (remove the rows
    with any outlier; typically the training split only, as test rows are
    never dropped). A pytree of two arrays, shaped like the statistics of a
    :class:`Standardizer` (1 on the reduced axes), so it is checkpointed and
    passed to ``jax.jit`` like one; ``apply`` and ``mask`` run under ``jit``.

    The bounds, per feature, by ``method``:

    - ``"zscore"``: ``mean -+ threshold * std`` (default ``threshold=3``);
    - ``"iqr"``: ``[q1 - threshold * iqr, q3 + threshold * iqr]`` with
      ``iqr = q3 - q1`` (Tukey's fences, default ``threshold=1.5``; robust to
      the outliers themselves, unlike the z-score);
    - ``"quantile"``: the ``threshold`` and ``1 - threshold`` quantiles
      (default 0.01), or a pair ``(low, high)`` of quantiles.

    Examples:
        >>> import numpy as np
        >>> train = np.array([[1.0], [2.0], [3.0], [4.0], [1e9]])
        >>> clipper = OutlierClipper.fit(train, method="iqr")
        >>> clipper
        OutlierClipper(low=array([[-1.]]), high=array([[7.]]))
        >>> clipper.mask(train)[:, 0]
        array([False, False, False, False,  True])
        >>> clipper.apply(np.array([[2.5], [-50.0]]))
        array([[ 2.5], [-1. ]])
        >>> x, y = clipper.drop(train, np.arange(5))
        >>> x[:, 0], y
        (array([1., 2., 3., 4.]), array([0, 1, 2, 3]))
    """

    low: Any
    high: Any

    @classmethod
    def fit(
        cls,
        x: Any,
        method: str = "iqr",
        threshold: float | Sequence[float] | None = None,
        axis: int | Sequence[int] = 0,
    ) -> OutlierClipper:
        """The bounds of ``x`` per feature (reduced over ``axis``), by ``method``.

        Raises:
            ValueError: for an unknown ``method``, a bad ``threshold`` or
                ``axis``, empty data, or NaN/Inf values (clean them first).
            TypeError: for an ``axis`` that is not an int or tuple of ints.
        """
        if method not in _METHODS:
            raise ValueError(
                f"OutlierClipper.fit: `method` must be one of {tuple(_METHODS)}, got {method!r}."
            )
        x64, axes, dtype = _fit_data(x, axis, "OutlierClipper.fit")
        low, high = _bounds(x64, axes, method, _METHODS[method] if threshold is None else threshold)
        return cls(low.astype(dtype), high.astype(dtype))

    def apply(self, x: Any) -> Any:
        """``x`` clipped to ``[low, high]`` (numpy in, numpy out; jax in, jax out).

        Raises:
            ValueError: if ``x`` is not shaped like the data the clipper was fitted on.
        """
        xp, x, (low, high) = _prepare(x, (self.low, self.high), "OutlierClipper.apply")
        return xp.clip(x, low, high)

    def mask(self, x: Any) -> Any:
        """A bool array shaped like ``x``: ``True`` where a value is outside ``[low, high]``.

        NaN is not an outlier (count missing values with :func:`describe`).
        """
        _, x, (low, high) = _prepare(x, (self.low, self.high), "OutlierClipper.mask")
        return (x < low) | (x > high)

    def drop(self, x: Any, y: Any = None) -> tuple[np.ndarray, np.ndarray | None]:
        """``(x, y)`` without the rows (first axis) that hold any outlier; numpy, on the host.

        Raises:
            ValueError: if ``y`` does not have one row per row of ``x``.
        """
        x = np.asarray(x)
        rows = ~np.asarray(self.mask(x)).reshape(x.shape[0], -1).any(axis=1)
        if y is None:
            return x[rows], None
        y = np.asarray(y)
        if y.ndim == 0 or y.shape[0] != x.shape[0]:
            raise ValueError(
                f"OutlierClipper.drop: `x` and `y` need the same number of rows, got "
                f"{x.shape[0]} and {y.shape[0] if y.ndim else 'a scalar'}."
            )
        return x[rows], y[rows]


def _row_keys(a: np.ndarray) -> list[bytes]:
    a = np.ascontiguousarray(a.reshape(a.shape[0], -1))
    if np.issubdtype(a.dtype, np.floating):
        a = a + a.dtype.type(0)  # -0.0 and 0.0 are the same value
    return [row.tobytes() for row in a]


def drop_duplicates(x: Any, y: Any = None) -> tuple[np.ndarray, np.ndarray | None, int]:
    """Drop repeated rows, keeping each row's first occurrence, in order.

    A row is ``x[i]`` together with ``y[i]`` when ``y`` is given (pandas'
    ``drop_duplicates`` on all columns): the same features with another label
    are kept, as they are not duplicates but conflicting examples. Runs on the
    host (numpy). Drop duplicates **before** splitting, so a copy of a
    training row never lands in the test split.

    Args:
        x: features, shape ``(N, ...)``.
        y: optional targets, first axis ``N``.

    Returns:
        ``(x, y, dropped)``: the unique rows and the number of rows removed.

    Raises:
        ValueError: for a scalar ``x`` or mismatched lengths.

    Examples:
        >>> x = np.array([[1, 2], [3, 4], [1, 2], [1, 2]])
        >>> drop_duplicates(x, np.array([0, 1, 0, 1]))
        (array([[1, 2], [3, 4], [1, 2]]), array([0, 1, 1]), 1)
        >>> drop_duplicates(x)[2]
        2
    """
    x = np.asarray(x)
    if x.ndim == 0:
        raise ValueError("drop_duplicates: `x` needs a first (row) axis, got a scalar.")
    keys = _row_keys(x)
    if y is not None:
        y = np.asarray(y)
        if y.ndim == 0 or y.shape[0] != x.shape[0]:
            raise ValueError(
                f"drop_duplicates: `x` and `y` need the same number of rows, got {x.shape[0]} "
                f"and {y.shape[0] if y.ndim else 'a scalar'}."
            )
        keys = list(zip(keys, _row_keys(y)))
    seen: set = set()
    keep = np.zeros(x.shape[0], bool)
    for i, key in enumerate(keys):
        if key not in seen:
            seen.add(key)
            keep[i] = True
    return x[keep], (y[keep] if y is not None else None), int((~keep).sum())


class ConstantColumns(NamedTuple):
    """The columns of ``(N, F)`` data that vary in training: drop the constant ones.

    :meth:`fit` on the training split finds the columns whose values are all
    equal (or whose range is at most ``tolerance``); :meth:`apply` keeps the
    other columns of every split, so all splits keep the same columns even
    where a column happens to vary in the test split. A pytree of two int
    arrays (``keep`` and ``dropped`` column indices); ``apply`` runs under ``jax.jit``.

    Examples:
        >>> train = np.array([[1.0, 5.0, 0.0], [2.0, 5.0, 0.0]])
        >>> cols = ConstantColumns.fit(train)
        >>> cols
        ConstantColumns(keep=array([0]), dropped=array([1, 2]))
        >>> cols.apply(np.array([[7.0, 6.0, 1.0]]))
        array([[7.]])
    """

    keep: Any
    dropped: Any

    @classmethod
    def fit(cls, x: Any, tolerance: float = 0.0) -> ConstantColumns:
        """Find the constant columns of ``x`` (range ``max - min <= tolerance``).

        Raises:
            ValueError: for data that is not ``(N, F)`` with ``N >= 1``, NaN/Inf
                values, or a negative ``tolerance``.
        """
        x = np.asarray(x)
        if x.ndim != 2:
            raise ValueError(
                f"ConstantColumns.fit: expected rows of columns, shape (N, F), got shape "
                f"{x.shape}; flatten the features with `x.reshape(len(x), -1)`."
            )
        if not tolerance >= 0:
            raise ValueError(f"ConstantColumns.fit: `tolerance` must be >= 0, got {tolerance!r}.")
        x64, _, _ = _fit_data(x, 0, "ConstantColumns.fit")
        constant = (x64.max(axis=0) - x64.min(axis=0)) <= tolerance
        return cls(np.flatnonzero(~constant), np.flatnonzero(constant))

    def apply(self, x: Any) -> Any:
        """``x[:, keep]``: the columns that vary in training.

        Raises:
            ValueError: if ``x`` does not have the number of columns seen in :meth:`fit`.
        """
        width = len(self.keep) + len(self.dropped)
        if len(x.shape) != 2 or x.shape[1] != width:
            raise ValueError(
                f"ConstantColumns.apply: fitted on data with {width} columns, got shape "
                f"{tuple(x.shape)}; apply it to data shaped like the data it was fitted on."
            )
        return x[:, self.keep]
