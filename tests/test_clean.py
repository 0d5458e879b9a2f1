"""Tests for funcnet.data's outliers, duplicates, constant columns and describe, against
numpy and scikit-learn computations."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from funcnet import data
from funcnet.data import ConstantColumns, OutlierClipper, clean, describe, drop_duplicates

RNG = np.random.default_rng(7)
TRAIN = RNG.normal(size=(200, 3)).astype(np.float32) * [1.0, 10.0, 0.1] + [0.0, 5.0, -2.0]
TRAIN = TRAIN.astype(np.float32)
TEST = RNG.normal(size=(50, 3)).astype(np.float32) * 4


def _with_typo():
    """The issue's case: one value typed as 1e9, which `clean` lets through."""
    x = TRAIN.copy()
    x[17, 1] = 1e9
    return x


def test_clean_passes_the_1e9_outlier_and_the_clipper_catches_it():
    x = _with_typo()
    xc, _, report = clean(x)
    assert report.rows_dropped == 0 and xc.max() == 1e9  # untouched today
    for method in ("zscore", "iqr", "quantile"):
        clipper = OutlierClipper.fit(x, method=method)
        assert clipper.mask(x)[17, 1], method
        # The z-score's bounds are inflated by the outlier itself (mean + 3 std ~ 2e8);
        # the IQR fences and quantiles are not.
        assert clipper.apply(x).max() < (1e9 if method == "zscore" else 1e3), method
    kept, _ = OutlierClipper.fit(x, method="zscore").drop(x)
    assert 1e9 not in kept
    assert describe(x).outliers[1] >= 1


def test_zscore_bounds_match_numpy():
    x = _with_typo()
    clipper = OutlierClipper.fit(x, method="zscore", threshold=2.5)
    x64 = x.astype(np.float64)
    z = np.abs((x64 - x64.mean(0)) / x64.std(0))
    np.testing.assert_array_equal(clipper.mask(x), z > 2.5)
    np.testing.assert_allclose(clipper.high[0], x64.mean(0) + 2.5 * x64.std(0), rtol=1e-6)
    assert clipper.low.shape == (1, 3) and clipper.low.dtype == np.float32


def test_iqr_fences_match_sklearn_robust_scaler():
    preprocessing = pytest.importorskip("sklearn.preprocessing")
    robust = preprocessing.RobustScaler().fit(TRAIN)  # center_ = median, scale_ = q3 - q1
    q1 = np.percentile(TRAIN.astype(np.float64), 25, axis=0)
    clipper = OutlierClipper.fit(TRAIN)  # iqr, 1.5 by default
    np.testing.assert_allclose(clipper.low[0], q1 - 1.5 * robust.scale_, rtol=1e-5)
    np.testing.assert_allclose(clipper.high[0], q1 + 2.5 * robust.scale_, rtol=1e-5)


@pytest.mark.parametrize("threshold", [0.05, (0.1, 0.8)])
def test_quantile_clipping_fitted_on_train_applied_to_test(threshold):
    q = (threshold, 1 - threshold) if np.ndim(threshold) == 0 else threshold
    clipper = OutlierClipper.fit(TRAIN, method="quantile", threshold=threshold)
    low, high = np.quantile(TRAIN.astype(np.float64), q, axis=0)
    # Other splits are clipped to the training split's quantiles, not their own.
    np.testing.assert_allclose(clipper.apply(TEST), np.clip(TEST, low, high), rtol=1e-6)
    np.testing.assert_array_equal(
        clipper.mask(TEST), (low.astype(np.float32) > TEST) | (high.astype(np.float32) < TEST)
    )
    assert clipper.apply(TEST).dtype == np.float32


def test_clipper_is_a_pytree_and_runs_under_jit():
    clipper = OutlierClipper.fit(TRAIN, method="zscore")
    got = jax.jit(OutlierClipper.apply)(clipper, jnp.asarray(TEST))
    assert isinstance(got, jax.Array)
    np.testing.assert_allclose(got, clipper.apply(TEST), rtol=1e-6)
    np.testing.assert_array_equal(jax.jit(OutlierClipper.mask)(clipper, TEST), clipper.mask(TEST))
    assert len(jax.tree.leaves(clipper)) == 2


def test_per_channel_images():
    images = RNG.normal(size=(20, 4, 4, 2)).astype(np.float32)
    images[3, 1, 1, 0] = 50.0
    clipper = OutlierClipper.fit(images, method="iqr", axis=(0, 1, 2))
    assert clipper.low.shape == (1, 1, 1, 2)
    assert clipper.mask(images)[3, 1, 1, 0]
    x, y = clipper.drop(images, np.arange(20))
    assert 3 not in y and len(x) == len(y)


def test_drop_duplicates_matches_numpy_unique():
    x = RNG.integers(0, 3, size=(60, 2)).astype(np.float32)
    got, _, dropped = drop_duplicates(x)
    _, first = np.unique(x, axis=0, return_index=True)
    np.testing.assert_array_equal(got, x[np.sort(first)])
    assert dropped == 60 - len(first)
    # With labels: rows are (x, y) together; conflicting labels are kept.
    y = RNG.integers(0, 2, size=60)
    xy = np.concatenate([x, y[:, None]], axis=1)
    _, first = np.unique(xy, axis=0, return_index=True)
    gx, gy, dropped = drop_duplicates(x, y)
    np.testing.assert_array_equal(gx, x[np.sort(first)])
    np.testing.assert_array_equal(gy, y[np.sort(first)])
    assert dropped == 60 - len(first)
    # -0.0 and 0.0 are one value; string labels work.
    assert drop_duplicates(np.array([[0.0], [-0.0]]))[2] == 1
    assert drop_duplicates(np.zeros((3, 1)), np.array(["a", "b", "a"]))[2] == 1


def test_constant_columns_match_sklearn_variance_threshold():
    feature_selection = pytest.importorskip("sklearn.feature_selection")
    x = np.concatenate([TRAIN, np.full((200, 1), 3.0, np.float32), TRAIN[:, :1]], axis=1)
    x = x[:, [3, 0, 1, 4, 2]]
    selector = feature_selection.VarianceThreshold(0.0).fit(x)
    cols = ConstantColumns.fit(x)
    np.testing.assert_array_equal(cols.keep, np.flatnonzero(selector.get_support()))
    np.testing.assert_array_equal(cols.dropped, [0])
    test = RNG.normal(size=(5, 5)).astype(
        np.float32
    )  # column 0 varies in the test split: dropped all the same
    np.testing.assert_array_equal(cols.apply(test), test[:, cols.keep])
    np.testing.assert_array_equal(jax.jit(ConstantColumns.apply)(cols, test), test[:, cols.keep])
    loose = ConstantColumns.fit(x, tolerance=1.0)  # the 0.1-scaled column has range < 1
    assert 4 in loose.dropped


def test_describe_matches_numpy():
    x = _with_typo().astype(np.float64)
    x[[3, 9], 0] = np.nan
    x[5, 2] = -np.inf
    y = RNG.integers(0, 3, size=200)
    d = describe(x, y)
    finite = np.where(np.isfinite(x), x, np.nan)
    np.testing.assert_array_equal(d.missing, [2, 0, 0])
    np.testing.assert_array_equal(d.infinite, [0, 0, 1])
    np.testing.assert_allclose(d.minimum, np.nanmin(finite, 0))
    np.testing.assert_allclose(d.maximum, np.nanmax(finite, 0))
    np.testing.assert_allclose(d.mean, np.nanmean(finite, 0))
    np.testing.assert_allclose(d.std, np.nanstd(finite, 0))
    q1, q3 = np.nanpercentile(finite, [25, 75], axis=0)
    fences = (finite < q1 - 1.5 * (q3 - q1)) | (finite > q3 + 1.5 * (q3 - q1))
    np.testing.assert_array_equal(d.outliers, fences.sum(0))
    np.testing.assert_array_equal(d.classes, [0, 1, 2])
    np.testing.assert_array_equal(d.class_counts, np.bincount(y))
    assert d.duplicates == 0 and d.rows == 200 and d.columns == ("0", "1", "2")
    text = str(d)
    assert repr(d) == text
    assert text.startswith("200 rows, 3 columns, 0 duplicate rows, 2 missing and 1 infinite")
    assert "classes of y: 3" in text
    assert f"  1 {np.bincount(y)[1]:>8d} ({100 * np.bincount(y)[1] / 200:.1f}%)" in text


def test_describe_targets_and_wide_data():
    x = np.ones((4, 30))
    d = describe(x, np.array([[1, 0], [0, 1], [0, 1], [0, 1]]))  # one-hot rows
    np.testing.assert_array_equal(d.class_counts, [1, 3])
    assert d.duplicates == 2  # (x, y) rows: the three (ones, class 1) rows are one row
    assert "... 10 more columns" in str(d)
    d = describe(np.arange(4.0)[:, None], np.array([0.5, 1.5, 2.0, 3.0]))  # continuous
    assert d.classes is None and d.columns == ("0", "y")
    np.testing.assert_allclose(d.mean, [1.5, 1.75])
    d = describe(np.arange(4.0)[:, None], np.array(["b", "a", "b", "b"]), names=["x"])
    assert d.classes.tolist() == ["a", "b"] and d.columns == ("x",)


def test_errors():
    with pytest.raises(
        ValueError,
        match=r"^OutlierClipper.fit: `method` must be one of \('zscore', 'iqr', 'quantile'\), "
        r"got 'mad'\.$",
    ):
        OutlierClipper.fit(TRAIN, method="mad")
    with pytest.raises(
        ValueError,
        match=r"^OutlierClipper.fit: method='zscore' takes a `threshold` > 0 \(the number of "
        r"standard deviations\), got -1; the default is 3.0\.$",
    ):
        OutlierClipper.fit(TRAIN, method="zscore", threshold=-1)
    with pytest.raises(
        ValueError,
        match=r"method='iqr' takes a `threshold` > 0 \(the number of interquartile ranges\), "
        r"got 'x'",
    ):
        OutlierClipper.fit(TRAIN, threshold="x")
    for bad in (0.5, (0.9, 0.1), (0.1, 0.5, 0.9)):
        with pytest.raises(
            ValueError,
            match=r"^OutlierClipper.fit: method='quantile' takes `threshold` q in \[0, 0.5\)",
        ):
            OutlierClipper.fit(TRAIN, method="quantile", threshold=bad)
    with pytest.raises(
        ValueError,
        match=r"^OutlierClipper.fit: the data has 1 NaN/Inf values; remove or impute them first "
        r"with `funcnet.data.clean`",
    ):
        OutlierClipper.fit(np.array([[1.0], [np.nan]]))
    clipper = OutlierClipper.fit(TRAIN)
    with pytest.raises(
        ValueError, match=r"^OutlierClipper.apply: fitted on data shaped like statistics \(1, 3\)"
    ):
        clipper.apply(TRAIN[:, :2])
    with pytest.raises(ValueError, match=r"^OutlierClipper.mask: fitted on data shaped like"):
        clipper.mask(TRAIN[:, :2])
    with pytest.raises(
        ValueError,
        match=r"^OutlierClipper.drop: `x` and `y` need the same number of rows, got 200 and 3\.$",
    ):
        clipper.drop(TRAIN, np.arange(3))
    with pytest.raises(ValueError, match=r"^drop_duplicates: `x` needs a first \(row\) axis"):
        drop_duplicates(np.float32(1.0))
    with pytest.raises(
        ValueError,
        match=r"^drop_duplicates: `x` and `y` need the same number of rows, got 200 and "
        r"a scalar\.$",
    ):
        drop_duplicates(TRAIN, 1)
    with pytest.raises(
        ValueError,
        match=r"^ConstantColumns.fit: expected rows of columns, shape \(N, F\), got shape "
        r"\(200,\); flatten",
    ):
        ConstantColumns.fit(TRAIN[:, 0])
    with pytest.raises(
        ValueError, match=r"^ConstantColumns.fit: `tolerance` must be >= 0, got -1\.$"
    ):
        ConstantColumns.fit(TRAIN, tolerance=-1)
    with pytest.raises(ValueError, match=r"^ConstantColumns.fit: needs at least one example"):
        ConstantColumns.fit(np.zeros((0, 3)))
    with pytest.raises(
        ValueError,
        match=r"^ConstantColumns.apply: fitted on data with 3 columns, got shape \(200, 2\)",
    ):
        ConstantColumns.fit(TRAIN).apply(TRAIN[:, :2])
    with pytest.raises(
        ValueError, match=r"^describe: `x` needs at least one row, got shape \(0, 2\)\.$"
    ):
        describe(np.zeros((0, 2)))
    with pytest.raises(TypeError, match=r"^describe: `x` must be numeric, got dtype <U1; encode"):
        describe(np.array([["a"], ["b"]]))
    with pytest.raises(ValueError, match=r"^describe: `outlier_threshold` must be > 0, got 0; "):
        describe(TRAIN, outlier_threshold=0)
    with pytest.raises(
        ValueError, match=r"^describe: `names` must name each of the 3 columns, got 2 names\.$"
    ):
        describe(TRAIN, names=["a", "b"])
    with pytest.raises(
        ValueError, match=r"^describe: `x` and `y` need the same number of rows, got 200 and 5\.$"
    ):
        describe(TRAIN, np.arange(5))


def test_exported():
    for name in ("describe", "Description", "drop_duplicates", "OutlierClipper", "ConstantColumns"):
        assert name in data.__all__ and hasattr(data, name)
