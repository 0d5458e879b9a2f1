"""Cleaning (NaN/Inf rows) and label handling: one-hot, label encoding."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from funcnet._checks import check_positive_int

__all__ = ["CleanReport", "clean", "decode_labels", "encode_labels", "one_hot"]


# --------------------------------------------------------------------------- cleaning


class CleanReport(NamedTuple):
    """What :func:`clean` changed.

    Attributes:
        rows: rows in the input.
        rows_dropped: rows removed (NaN/Inf in ``x`` with ``strategy="drop"``,
            or a NaN/Inf target with any strategy).
        rows_imputed: rows kept in which at least one value was replaced.
        values_imputed: values replaced.
        fill_values: the per-feature values used to impute, shape
            ``x.shape[1:]`` (``None`` for ``strategy="drop"``). Impute other
            splits with the training split's values:
            ``clean(x_test, strategy="constant", fill_value=report.fill_values)``.
    """

    rows: int
    rows_dropped: int
    rows_imputed: int
    values_imputed: int
    fill_values: np.ndarray | None


_STRATEGIES = ("drop", "mean", "median", "constant")


def clean(
    x: Any,
    y: Any = None,
    *,
    strategy: str = "drop",
    fill_value: Any = None,
) -> tuple[np.ndarray, np.ndarray | None, CleanReport]:
    """Drop or impute the rows of ``x`` that contain NaN or Inf.

    Rows are along the first axis; a feature is one position in ``x.shape[1:]``.
    Targets are never imputed: a row whose target ``y`` is NaN/Inf is always
    dropped. Mean and median are computed per feature over the finite values of
    the kept rows. Runs on the host (numpy). Finite outliers (a ``1e9`` typed
    for ``1.0``) pass untouched: find them with :func:`describe` and clip or
    drop them with an :class:`OutlierClipper` fitted on the training split.

    Args:
        x: features, shape ``(N, ...)``.
        y: optional targets, first axis ``N`` (``None`` passes through).
        strategy: ``"drop"`` the rows, or impute each non-finite value with
            the feature's ``"mean"``, ``"median"`` or a ``"constant"``.
        fill_value: for ``"constant"``: a scalar, or one value per feature
            (shape ``x.shape[1:]``), e.g. ``report.fill_values`` of the
            training split.

    Returns:
        ``(x, y, report)``: numpy arrays and a :class:`CleanReport`.

    Raises:
        ValueError: for an unknown ``strategy``, a missing or misplaced
            ``fill_value``, mismatched lengths, or a feature with no finite
            value to compute a mean/median from.

    Examples:
        >>> import numpy as np
        >>> x = np.array([[1.0, 2.0], [np.nan, 4.0], [3.0, np.inf], [5.0, 6.0]])
        >>> y = np.array([0.0, 1.0, 0.0, np.nan])
        >>> xc, yc, report = clean(x, y)
        >>> xc, yc, report.rows_dropped
        (array([[1., 2.]]), array([0.]), 3)
        >>> xc, yc, report = clean(x, y, strategy="mean")
        >>> xc
        array([[1., 2.], [2., 4.], [3., 3.]])
        >>> report.rows_imputed, report.values_imputed, report.fill_values
        (2, 2, array([2., 3.]))
    """
    if strategy not in _STRATEGIES:
        raise ValueError(f"clean: `strategy` must be one of {_STRATEGIES}, got {strategy!r}.")
    if strategy == "constant" and fill_value is None:
        raise ValueError(
            "clean: strategy='constant' needs a `fill_value` (a scalar or one value per "
            "feature), e.g. `fill_value=0.0`."
        )
    if strategy != "constant" and fill_value is not None:
        raise ValueError(
            f"clean: `fill_value` is used only with strategy='constant', got "
            f"strategy={strategy!r}; drop `fill_value` or pass strategy='constant'."
        )
    x = np.asarray(x)
    if x.ndim == 0:
        raise ValueError("clean: `x` needs a first (row) axis, got a scalar.")
    n = x.shape[0]
    if y is not None:
        y = np.asarray(y)
        if y.ndim == 0 or y.shape[0] != n:
            raise ValueError(
                f"clean: `x` and `y` need the same number of rows, got {n} and "
                f"{y.shape[0] if y.ndim else 'a scalar'}."
            )

    def bad_rows(a: np.ndarray) -> np.ndarray:
        if not np.issubdtype(a.dtype, np.inexact):
            return np.zeros(a.shape[0], bool)
        return ~np.isfinite(a.reshape(a.shape[0], -1)).all(axis=1)

    keep = ~bad_rows(y) if y is not None else np.ones(n, bool)
    if strategy == "drop":
        keep &= ~bad_rows(x)
        rows_dropped = int(n - keep.sum())
        x, y = x[keep], (y[keep] if y is not None else None)
        return x, y, CleanReport(n, rows_dropped, 0, 0, None)

    rows_dropped = int(n - keep.sum())
    x, y = x[keep], (y[keep] if y is not None else None)
    if not np.issubdtype(x.dtype, np.inexact):
        fills = np.zeros(x.shape[1:], x.dtype) if fill_value is None else fill_value
        return x, y, CleanReport(n, rows_dropped, 0, 0, np.asarray(fills))
    finite = np.isfinite(x)
    if strategy == "constant":
        fills = np.asarray(fill_value, x.dtype)
        if fills.shape not in ((), x.shape[1:]):
            raise ValueError(
                f"clean: `fill_value` must be a scalar or one value per feature, shape "
                f"{x.shape[1:]}, got shape {fills.shape}."
            )
        fills = np.broadcast_to(fills, x.shape[1:]).copy()
    else:
        counts = finite.sum(axis=0)
        if (counts == 0).any():
            empty = [tuple(int(i) for i in idx) for idx in np.argwhere(counts == 0)[:5]]
            raise ValueError(
                f"clean: strategy={strategy!r} needs at least one finite value per feature, "
                f"but features at {empty} have none; drop those features or pass "
                "strategy='constant'."
            )
        masked = np.where(finite, x, np.nan)
        fills = (np.nanmean if strategy == "mean" else np.nanmedian)(masked, axis=0)
        fills = np.asarray(fills, x.dtype)
    values_imputed = int((~finite).sum())
    rows_imputed = int((~finite.reshape(x.shape[0], -1).all(axis=1)).sum())
    x = np.where(finite, x, fills)
    return x, y, CleanReport(n, rows_dropped, rows_imputed, values_imputed, fills)


# --------------------------------------------------------------------------- labels


def one_hot(labels: Any, num_classes: int, *, dtype: Any = jnp.float32) -> Any:
    """One-hot rows for integer class labels: shape ``labels.shape + (num_classes,)``.

    A numpy array (or list) gives a numpy array, checked on the host: labels
    outside ``[0, num_classes)`` raise. A jax array gives a ``jax.Array``
    (this runs inside ``jax.jit``, where out-of-range labels give all-zero
    rows, as :func:`jax.nn.one_hot`).

    Args:
        labels: integer class indices.
        num_classes: the number of classes.
        dtype: the dtype of the result.

    Raises:
        ValueError: for ``num_classes < 1`` or (numpy input) a label out of range.
        TypeError: for labels that are not integers.

    Examples:
        >>> import numpy as np, jax.numpy as jnp
        >>> one_hot(np.array([0, 2]), 3)
        array([[1., 0., 0.], [0., 0., 1.]], dtype=float32)
        >>> one_hot(jnp.array([1]), 2)
        Array([[0., 1.]], dtype=float32)
    """
    num_classes = check_positive_int("one_hot", "num_classes", num_classes)
    if isinstance(labels, jax.Array):
        if not jnp.issubdtype(labels.dtype, jnp.integer):
            raise TypeError(
                f"one_hot: labels must be integers, got dtype {labels.dtype}; cast with "
                "`labels.astype(jnp.int32)`."
            )
        return jax.nn.one_hot(labels, num_classes, dtype=dtype)
    labels = np.asarray(labels)
    if not np.issubdtype(labels.dtype, np.integer):
        raise TypeError(
            f"one_hot: labels must be integers, got dtype {labels.dtype}; cast with "
            "`labels.astype(np.int32)`, or map string classes with `encode_labels`."
        )
    bad = labels[(labels < 0) | (labels >= num_classes)]
    if bad.size:
        raise ValueError(
            f"one_hot: labels must be in [0, {num_classes}), got {np.unique(bad)[:5].tolist()}; "
            "pass the right `num_classes` or encode the labels with `encode_labels`."
        )
    return (labels[..., None] == np.arange(num_classes)).astype(np.dtype(dtype))


def encode_labels(labels: Any, classes: Any = None) -> tuple[np.ndarray, np.ndarray]:
    """Map class labels (strings or numbers) to integer codes ``0 .. len(classes) - 1``.

    Fit on the training labels (``classes=None`` takes the sorted unique
    labels) and encode the other splits with the same ``classes``.

    Args:
        labels: one label per example, shape ``(N,)``.
        classes: the classes in code order; ``None`` uses ``np.unique(labels)``.

    Returns:
        ``(codes, classes)``: int32 codes of shape ``(N,)`` and the classes as a
        numpy array (``classes[codes]`` gives back the labels, see
        :func:`decode_labels`).

    Raises:
        ValueError: for labels that are not 1-D, repeated ``classes``, or
            labels not in ``classes``.

    Examples:
        >>> codes, classes = encode_labels(["cat", "dog", "cat", "bird"])
        >>> codes, classes
        (array([1, 2, 1, 0], dtype=int32), array(['bird', 'cat', 'dog'], dtype='<U4'))
        >>> encode_labels(["dog"], classes)[0]
        array([2], dtype=int32)
    """
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(
            f"encode_labels: expected one label per example, shape (N,), got shape {labels.shape}."
        )
    uniques, inverse = np.unique(labels, return_inverse=True)
    if classes is None:
        return inverse.reshape(-1).astype(np.int32), uniques
    classes = np.asarray(classes)
    index = {c: i for i, c in enumerate(classes.tolist())}
    if len(index) != len(classes):
        raise ValueError(
            f"encode_labels: `classes` must not repeat a class, got {classes.tolist()}."
        )
    unseen = [u for u in uniques.tolist() if u not in index]
    if unseen:
        raise ValueError(
            f"encode_labels: labels {unseen[:5]} are not in `classes` ({classes.tolist()[:10]}); "
            "encode every split with the classes of the training split, and drop or "
            "relabel the unseen classes."
        )
    mapped = np.array([index[u] for u in uniques.tolist()], np.int32)
    return mapped[inverse.reshape(-1)], classes


def decode_labels(codes: Any, classes: Any) -> np.ndarray:
    """The labels of integer ``codes``: ``classes[codes]``, checking the range.

    Examples:
        >>> decode_labels([2, 0], np.array(["bird", "cat", "dog"]))
        array(['dog', 'bird'], dtype='<U4')

    Raises:
        TypeError: for codes that are not integers.
        ValueError: for codes outside ``[0, len(classes))``.
    """
    codes, classes = np.asarray(codes), np.asarray(classes)
    if not np.issubdtype(codes.dtype, np.integer):
        raise TypeError(
            f"decode_labels: codes must be integers, got dtype {codes.dtype}; for "
            "predictions take `np.argmax(logits, axis=-1)` first."
        )
    if ((codes < 0) | (codes >= len(classes))).any():
        raise ValueError(
            f"decode_labels: codes must be in [0, {len(classes)}), got min {codes.min()} and "
            f"max {codes.max()}; pass the `classes` returned by `encode_labels`."
        )
    return classes[codes]
