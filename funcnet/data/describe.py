"""``describe``: a per-column summary of a dataset (missing values, outliers, range, classes)."""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from funcnet.data.outliers import _row_keys

__all__ = ["Description", "describe"]

_SHOWN = 20  # columns printed before "... more columns"


@dataclasses.dataclass(frozen=True, repr=False)
class Description:
    """What :func:`describe` found; printing it shows a table.

    Attributes:
        rows: the number of rows (examples).
        columns: the column names (``"0"``, ``"1"``, ... or the ``names`` given;
            a continuous ``y`` is added as ``"y"``).
        missing: per column, the number of NaN values.
        infinite: per column, the number of +-Inf values.
        outliers: per column, the number of finite values outside Tukey's
            fences ``[q1 - k * iqr, q3 + k * iqr]`` (``k = outlier_threshold``).
        minimum, maximum, mean, std: per column, over the finite values (NaN
            for a column with none); ``std`` is the population one (``ddof=0``).
        duplicates: the number of rows that repeat an earlier row (of ``x``
            with its ``y``), as :func:`drop_duplicates` would drop.
        classes, class_counts: the classes of ``y`` and how many rows each
            has (``None`` without ``y`` or for a continuous ``y``).
    """

    rows: int
    columns: tuple[str, ...]
    missing: np.ndarray
    infinite: np.ndarray
    outliers: np.ndarray
    minimum: np.ndarray
    maximum: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    duplicates: int
    classes: np.ndarray | None = None
    class_counts: np.ndarray | None = None

    def __str__(self) -> str:
        head = (
            f"{self.rows} rows, {len(self.columns)} columns, {self.duplicates} duplicate rows, "
            f"{int(self.missing.sum())} missing and {int(self.infinite.sum())} infinite values, "
            f"{int(self.outliers.sum())} outliers"
        )
        width = max([6, *(len(c) for c in self.columns[:_SHOWN])])
        lines = [
            head,
            f"{'column':<{width}} {'missing':>7} {'inf':>5} {'outliers':>8} {'min':>10} "
            f"{'max':>10} {'mean':>10} {'std':>10}",
        ]
        for i, name in enumerate(self.columns[:_SHOWN]):
            lines.append(
                f"{name:<{width}} {self.missing[i]:>7d} {self.infinite[i]:>5d} "
                f"{self.outliers[i]:>8d} {self.minimum[i]:>10.4g} {self.maximum[i]:>10.4g} "
                f"{self.mean[i]:>10.4g} {self.std[i]:>10.4g}"
            )
        if len(self.columns) > _SHOWN:
            lines.append(f"... {len(self.columns) - _SHOWN} more columns")
        if self.classes is not None:
            total = max(int(self.class_counts.sum()), 1)
            lines.append(f"classes of y: {len(self.classes)}")
            shown = max(len(str(c)) for c in self.classes.tolist()) if len(self.classes) else 0
            for c, n in zip(self.classes.tolist(), self.class_counts.tolist()):
                lines.append(f"  {c!s:<{shown}} {n:>8d} ({100 * n / total:.1f}%)")
        return "\n".join(lines)

    __repr__ = __str__


def _column_stats(a: np.ndarray, k: float) -> list[np.ndarray]:
    finite = np.isfinite(a)
    vals = np.where(finite, a, np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns give NaN
        q1, q3 = np.nanquantile(vals, (0.25, 0.75), axis=0)
        stats = [
            np.nanmin(vals, axis=0),
            np.nanmax(vals, axis=0),
            np.nanmean(vals, axis=0),
            np.nanstd(vals, axis=0),
        ]
    low, high = q1 - k * (q3 - q1), q3 + k * (q3 - q1)
    outliers = ((vals < low) | (vals > high)).sum(axis=0)
    return [np.isnan(a).sum(axis=0), np.isinf(a).sum(axis=0), outliers, *stats]


def _classes(y: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """Classes and counts of labels (a column of them too), one-hot rows, or ``None`` for a
    continuous target."""
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]  # (N, 1) labels, as binary targets often come
    elif y.ndim == 2 and y.shape[1] > 1 and np.isin(y, (0, 1)).all():
        y = y.argmax(axis=1)  # one-hot rows
    if y.ndim != 1:
        return None
    if np.issubdtype(y.dtype, np.floating):
        if not (np.isfinite(y).all() and (y == np.round(y)).all()):
            return None
    elif not (np.issubdtype(y.dtype, np.integer) or y.dtype.kind in "bUSO"):
        return None
    return np.unique(y, return_counts=True)


def describe(
    x: Any,
    y: Any = None,
    *,
    names: Sequence[str] | None = None,
    outlier_threshold: float = 1.5,
) -> Description:
    """Summarise the columns of ``x`` (and the classes of ``y``) before cleaning and training.

    Counts, per column, the missing (NaN) and infinite values and the
    outliers by Tukey's fences (the IQR rule of :class:`OutlierClipper`), and
    gives the minimum, maximum, mean and standard deviation of the finite
    values; counts duplicate rows; and, when ``y`` holds class labels
    (integers, strings, bools, integer-valued floats, one column of these,
    or one-hot rows), the
    rows per class, to spot imbalance. A continuous ``y`` is summarised as
    one more column, ``"y"``. Runs on the host (numpy).

    Args:
        x: features, shape ``(N, ...)``; features beyond the first axis are
            flattened to columns.
        y: optional targets, first axis ``N``.
        names: optional column names, one per flattened feature.
        outlier_threshold: Tukey's ``k`` (default 1.5), ``> 0``.

    Returns:
        A :class:`Description`; ``print`` it for a table.

    Raises:
        ValueError: for a scalar or empty ``x``, a ``y`` of another length,
            the wrong number of ``names``, or a bad ``outlier_threshold``.
        TypeError: for ``x`` that is not numeric.

    Examples:
        >>> x = np.array([[1.0, 0.0], [2.0, np.nan], [3.0, 0.0], [4.0, 1e9], [2.0, 0.0]])
        >>> print(describe(x, np.array([0, 1, 0, 0, 1]), names=["age", "income"]))
        5 rows, 2 columns, 0 duplicate rows, 1 missing and 0 infinite values, 1 outliers
        column missing   inf outliers        min        max       mean        std
        age          0     0        0          1          4        2.4      1.02
        income       1     0        1          0      1e+09   2.5e+08  4.33e+08
        classes of y: 2
          0        3 (60.0%)
          1        2 (40.0%)
    """
    x = np.asarray(x)
    if x.ndim == 0 or x.shape[0] == 0:
        raise ValueError(f"describe: `x` needs at least one row, got shape {x.shape}.")
    if not (np.issubdtype(x.dtype, np.number) or x.dtype == np.bool_):
        raise TypeError(
            f"describe: `x` must be numeric, got dtype {x.dtype}; encode string columns first "
            "(e.g. with `encode_labels`)."
        )
    if not outlier_threshold > 0:
        raise ValueError(
            f"describe: `outlier_threshold` must be > 0, got {outlier_threshold!r}; the usual "
            "value is 1.5."
        )
    n = x.shape[0]
    flat = x.reshape(n, -1).astype(np.float64)
    columns = [str(i) for i in range(flat.shape[1])] if names is None else [str(c) for c in names]
    if len(columns) != flat.shape[1]:
        raise ValueError(
            f"describe: `names` must name each of the {flat.shape[1]} columns, got "
            f"{len(columns)} names."
        )
    classes = counts = None
    keys = _row_keys(x)
    if y is not None:
        y = np.asarray(y)
        if y.ndim == 0 or y.shape[0] != n:
            raise ValueError(
                f"describe: `x` and `y` need the same number of rows, got {n} and "
                f"{y.shape[0] if y.ndim else 'a scalar'}."
            )
        keys = list(zip(keys, _row_keys(y)))
        found = _classes(y)
        if found is not None:
            classes, counts = found
        elif np.issubdtype(y.dtype, np.number):
            extra = y.reshape(n, -1).astype(np.float64)
            flat = np.concatenate([flat, extra], axis=1)
            columns += ["y"] if extra.shape[1] == 1 else [f"y[{i}]" for i in range(extra.shape[1])]
    duplicates = n - len(set(keys))
    stats = _column_stats(flat, float(outlier_threshold))
    missing, infinite, outliers = (s.astype(np.int64) for s in stats[:3])
    return Description(
        n, tuple(columns), missing, infinite, outliers, *stats[3:], duplicates, classes, counts
    )
