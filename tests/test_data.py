"""Tests for funcnet.data: cleaning, labels, normalizers, splits, batching, prefetching."""

import threading
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

from funcnet import data
from funcnet.data import (
    MinMaxScaler,
    Standardizer,
    batches,
    clean,
    decode_labels,
    encode_labels,
    k_fold,
    one_hot,
    prefetch_to_device,
    take,
    train_val_test_split,
)

# --------------------------------------------------------------------------- clean


def _dirty():
    x = np.array([[1.0, 2.0], [np.nan, 4.0], [3.0, np.inf], [5.0, 6.0], [7.0, 8.0]])
    y = np.array([0.0, 1.0, 0.0, np.nan, 1.0])
    return x, y


def test_clean_drop_counts_rows():
    x, y = _dirty()
    xc, yc, report = clean(x, y)
    np.testing.assert_array_equal(xc, [[1.0, 2.0], [7.0, 8.0]])
    np.testing.assert_array_equal(yc, [0.0, 1.0])
    assert report == data.CleanReport(5, 3, 0, 0, None)


def test_clean_without_targets():
    x, _ = _dirty()
    xc, yc, report = clean(x)
    assert yc is None and xc.shape == (3, 2) and report.rows_dropped == 2


@pytest.mark.parametrize(
    ("strategy", "fills"),
    [("mean", [11 / 3, 14 / 3]), ("median", [3.0, 4.0])],
)
def test_clean_impute_statistics_of_kept_rows(strategy, fills):
    x, y = _dirty()
    xc, yc, report = clean(x, y, strategy=strategy)
    # row 3 (NaN target) is dropped before the statistics: col 0 {1, 3, 7}, col 1 {2, 4, 8}
    np.testing.assert_allclose(report.fill_values, fills)
    expected = np.array([[1.0, 2.0], [fills[0], 4.0], [3.0, fills[1]], [7.0, 8.0]])
    np.testing.assert_allclose(xc, expected)
    np.testing.assert_array_equal(yc, [0.0, 1.0, 0.0, 1.0])
    assert (report.rows, report.rows_dropped, report.rows_imputed, report.values_imputed) == (
        5,
        1,
        2,
        2,
    )


def test_clean_constant_scalar_and_per_feature_reuse_on_test():
    x, y = _dirty()
    xc, _, _ = clean(x, y, strategy="constant", fill_value=-1.0)
    np.testing.assert_array_equal(xc[1:3], [[-1.0, 4.0], [3.0, -1.0]])
    _, _, train_report = clean(x, y, strategy="mean")
    x_test = np.array([[np.nan, np.nan]], np.float64)
    xt, _, test_report = clean(x_test, strategy="constant", fill_value=train_report.fill_values)
    np.testing.assert_allclose(xt, [train_report.fill_values])
    assert test_report.values_imputed == 2 and test_report.rows_imputed == 1


def test_clean_keeps_float32_and_images():
    x = np.ones((3, 2, 2, 1), np.float32)
    x[1, 0, 1, 0] = np.nan
    xc, _, report = clean(x, strategy="mean")
    assert xc.dtype == np.float32 and xc.shape == x.shape
    assert report.fill_values.shape == (2, 2, 1) and report.values_imputed == 1
    assert np.isfinite(xc).all()


def test_clean_integer_data_is_unchanged():
    x = np.arange(6).reshape(3, 2)
    xc, _, report = clean(x, strategy="median")
    np.testing.assert_array_equal(xc, x)
    assert report.rows_dropped == report.values_imputed == 0


def test_clean_errors():
    x, y = _dirty()
    with pytest.raises(ValueError, match="`strategy` must be one of"):
        clean(x, strategy="zero")
    with pytest.raises(ValueError, match="needs a `fill_value`"):
        clean(x, strategy="constant")
    with pytest.raises(ValueError, match="`fill_value` is used only with strategy='constant'"):
        clean(x, strategy="mean", fill_value=0.0)
    with pytest.raises(ValueError, match="same number of rows, got 5 and 4"):
        clean(x, y[:4])
    with pytest.raises(ValueError, match="needs a first"):
        clean(np.float64(1.0))
    with pytest.raises(ValueError, match=r"features at \[\(0,\)\] have none"):
        clean(np.array([[np.nan, 1.0], [np.inf, 2.0]]), strategy="median")
    with pytest.raises(ValueError, match=r"one value per feature, shape \(2,\), got shape \(3,\)"):
        clean(x, strategy="constant", fill_value=[0.0, 1.0, 2.0])


# --------------------------------------------------------------------------- labels


def test_one_hot_numpy_and_jax():
    out = one_hot(np.array([2, 0]), 3)
    assert isinstance(out, np.ndarray) and out.dtype == np.float32
    np.testing.assert_array_equal(out, [[0, 0, 1], [1, 0, 0]])
    jitted = jax.jit(one_hot, static_argnums=1)(jnp.array([[1], [0]]), 2)
    assert isinstance(jitted, jax.Array) and jitted.shape == (2, 1, 2)
    np.testing.assert_array_equal(jitted[:, 0], [[0, 1], [1, 0]])
    assert one_hot([1], 2, dtype=jnp.bfloat16).dtype == jnp.bfloat16


def test_one_hot_errors():
    with pytest.raises(ValueError, match="`num_classes` must be an int >= 1"):
        one_hot(np.array([0]), 0)
    with pytest.raises(TypeError, match="labels must be integers, got dtype float32"):
        one_hot(np.array([0.0], np.float32), 2)
    with pytest.raises(TypeError, match="labels must be integers, got dtype float32"):
        one_hot(jnp.array([0.0]), 2)
    with pytest.raises(ValueError, match=r"labels must be in \[0, 3\), got \[-1, 3\]"):
        one_hot(np.array([0, 3, -1, 3]), 3)


def test_encode_decode_round_trip():
    labels = np.array(["dog", "cat", "dog", "bird"])
    codes, classes = encode_labels(labels)
    np.testing.assert_array_equal(codes, [2, 1, 2, 0])
    assert codes.dtype == np.int32
    np.testing.assert_array_equal(classes, ["bird", "cat", "dog"])
    np.testing.assert_array_equal(decode_labels(codes, classes), labels)
    # the training split's classes, in a chosen order, encode another split
    test_codes, _ = encode_labels(["cat", "cat"], ["dog", "cat", "bird"])
    np.testing.assert_array_equal(test_codes, [1, 1])
    numeric, numeric_classes = encode_labels([10, 30, 10])
    np.testing.assert_array_equal(numeric, [0, 1, 0])
    np.testing.assert_array_equal(numeric_classes, [10, 30])


def test_label_errors():
    with pytest.raises(ValueError, match=r"shape \(N,\), got shape \(2, 2\)"):
        encode_labels(np.zeros((2, 2)))
    with pytest.raises(ValueError, match="must not repeat a class"):
        encode_labels(["a"], ["a", "a"])
    with pytest.raises(ValueError, match=r"labels \['fish'\] are not in `classes`"):
        encode_labels(["cat", "fish"], ["cat", "dog"])
    with pytest.raises(TypeError, match="codes must be integers"):
        decode_labels(np.array([0.5]), ["a", "b"])
    with pytest.raises(ValueError, match=r"codes must be in \[0, 2\)"):
        decode_labels([0, 2], ["a", "b"])


# --------------------------------------------------------------------------- normalizers


def test_standardizer_hand_computed():
    x = np.array([[1.0, 4.0], [3.0, 8.0]], np.float32)
    norm = Standardizer.fit(x)
    np.testing.assert_array_equal(norm.mean, [[2.0, 6.0]])
    np.testing.assert_array_equal(norm.std, [[1.0, 2.0]])
    np.testing.assert_array_equal(norm.apply(x), [[-1.0, -1.0], [1.0, 1.0]])
    np.testing.assert_allclose(norm.inverse(norm.apply(x)), x)


def test_standardizer_uses_training_statistics_only():
    rng = np.random.default_rng(0)
    x_train = rng.normal(3.0, 2.0, (200, 4)).astype(np.float32)
    x_test = rng.normal(-5.0, 9.0, (50, 4)).astype(np.float32)
    norm = Standardizer.fit(x_train)
    np.testing.assert_allclose(norm.mean[0], x_train.mean(0), rtol=1e-5)
    np.testing.assert_allclose(norm.std[0], x_train.std(0), rtol=1e-5)
    out = norm.apply(x_test)
    reference = (x_test - x_train.mean(0)) / x_train.std(0)
    np.testing.assert_allclose(out, reference, rtol=1e-4, atol=1e-5)
    # the test data does not change the statistics, nor is it standardized by its own
    assert abs(out.mean()) > 1.0
    x_test[:] = 1e6
    np.testing.assert_allclose(norm.mean[0], x_train.mean(0), rtol=1e-5)


def test_standardizer_per_channel_images_integer_input():
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, (6, 5, 5, 3), dtype=np.uint8)
    norm = Standardizer.fit(x, axis=(0, 1, 2))
    assert norm.mean.shape == (1, 1, 1, 3) and norm.mean.dtype == np.float32
    out = norm.apply(x)
    assert out.dtype == np.float32 and out.shape == x.shape
    np.testing.assert_allclose(out.mean(axis=(0, 1, 2)), 0.0, atol=1e-5)
    np.testing.assert_allclose(out.std(axis=(0, 1, 2)), 1.0, atol=1e-5)


def test_normalizers_are_pytrees_and_jit():
    x = np.array([[1.0, 5.0], [3.0, 5.0]], np.float32)
    for norm in (Standardizer.fit(x), MinMaxScaler.fit(x)):
        leaves, treedef = jax.tree.flatten(norm)
        assert all(isinstance(leaf, np.ndarray) for leaf in leaves)
        restored = jax.tree.unflatten(treedef, [jnp.asarray(leaf) for leaf in leaves])
        assert type(restored) is type(norm)
        jitted = jax.jit(type(norm).apply)(restored, jnp.asarray(x))
        assert isinstance(jitted, jax.Array) and jitted.dtype == jnp.float32
        np.testing.assert_allclose(jitted, norm.apply(x), rtol=1e-6)
        back = jax.jit(lambda n, v: n.inverse(n.apply(v)))(norm, jnp.asarray(x))
        np.testing.assert_allclose(back, x, rtol=1e-6)


def test_constant_features():
    x = np.array([[1.0, 7.0], [3.0, 7.0]], np.float32)
    np.testing.assert_array_equal(Standardizer.fit(x).apply(x)[:, 1], [0.0, 0.0])
    scaler = MinMaxScaler.fit(x)
    np.testing.assert_array_equal(scaler.apply(x), [[0.0, 0.0], [1.0, 0.0]])
    np.testing.assert_array_equal(scaler.inverse(scaler.apply(x)), x)


def test_min_max_scaler_hand_computed():
    x_train = np.array([[0.0, -2.0], [10.0, 2.0]], np.float32)
    scaler = MinMaxScaler.fit(x_train, feature_range=(-1, 1))
    out = scaler.apply(np.array([[5.0, 0.0], [20.0, 2.0]], np.float32))
    np.testing.assert_allclose(out, [[0.0, 0.0], [3.0, 1.0]])  # no clipping outside the range
    np.testing.assert_allclose(scaler.inverse(out), [[5.0, 0.0], [20.0, 2.0]])


def test_normalizer_keeps_float_dtype():
    x = np.array([[1.0], [2.0]], np.float32)
    norm = Standardizer.fit(x)
    out = norm.apply(jnp.asarray(x, jnp.bfloat16))
    assert out.dtype == jnp.bfloat16
    assert Standardizer.fit(x.astype(np.float64)).mean.dtype == np.float64


def test_normalizer_errors():
    x = np.ones((4, 3), np.float32)
    with pytest.raises(ValueError, match=r"`axis=2` is out of range for data of shape \(4, 3\)"):
        Standardizer.fit(x, axis=2)
    with pytest.raises(TypeError, match="`axis` must be an int or a tuple of ints"):
        Standardizer.fit(x, axis=None)
    with pytest.raises(ValueError, match="has 1 NaN/Inf values"):
        Standardizer.fit(np.array([[1.0], [np.nan]]))
    with pytest.raises(ValueError, match="needs at least one example"):
        MinMaxScaler.fit(np.zeros((0, 3)))
    with pytest.raises(ValueError, match=r"got data of shape \(4, 2, 2\)"):
        Standardizer.fit(x).apply(np.ones((4, 2, 2), np.float32))
    with pytest.raises(ValueError, match=r"got data of shape \(4, 4\)"):
        MinMaxScaler.fit(x).inverse(np.ones((4, 4), np.float32))
    with pytest.raises(ValueError, match="`feature_range` must be"):
        MinMaxScaler.fit(x, feature_range=(1.0, 0.0))
    with pytest.raises(ValueError, match="`feature_range` must be"):
        MinMaxScaler.fit(x, feature_range="ab")


# --------------------------------------------------------------------------- splits


def _split_indices(n=100, **kwargs):
    index = np.arange(n)
    return train_val_test_split(index, **kwargs)


def test_split_sizes_fractions_and_counts():
    train, val, test = _split_indices(100, val_size=0.15, test_size=20)
    assert (len(train), len(val), len(test)) == (65, 15, 20)
    assert sorted(np.concatenate([train, val, test]).tolist()) == list(range(100))
    train, val, test = _split_indices(10, val_size=0, test_size=0.25)  # 2.5 rounds to 3
    assert (len(train), len(val), len(test)) == (7, 0, 3)


def test_split_seed_and_shuffle():
    a, b = _split_indices(seed=1), _split_indices(seed=1)
    for part_a, part_b in zip(a, b):
        np.testing.assert_array_equal(part_a, part_b)
    assert not np.array_equal(_split_indices(seed=2).test, a.test)
    plain = _split_indices(10, val_size=2, test_size=3, shuffle=False)
    assert [p.tolist() for p in plain] == [[0, 1, 2, 3, 4], [5, 6], [7, 8, 9]]


def test_split_pytree_and_jax_leaves():
    x = jnp.arange(20.0).reshape(10, 2)
    y = np.arange(10)
    parts = train_val_test_split({"x": x, "y": y}, val_size=2, test_size=2, seed=0)
    for part in parts:
        assert set(part) == {"x", "y"} and isinstance(part["x"], jax.Array)
        np.testing.assert_array_equal(np.asarray(part["x"])[:, 0], 2 * part["y"])


def test_split_stratified_proportions():
    labels = np.repeat([0, 1, 2], [100, 50, 10])
    x = np.arange(len(labels))
    train, val, test = train_val_test_split(
        (x, labels), val_size=0.1, test_size=0.2, seed=3, stratify=labels
    )
    n = len(labels)
    assert (len(train[0]), len(val[0]), len(test[0])) == (112, 16, 32)
    for part, fraction in ((val, 0.1), (test, 0.2)):
        counts = np.bincount(part[1], minlength=3)
        np.testing.assert_array_less(np.abs(counts - fraction * np.bincount(labels)), 1.0 + 1e-9)
        np.testing.assert_array_equal(labels[part[0]], part[1])
    assert len(np.unique(np.concatenate([train[0], val[0], test[0]]))) == n
    ordered = train_val_test_split(
        x, val_size=0.1, test_size=0.2, stratify=labels, shuffle=False
    ).test
    assert (np.diff(ordered) > 0).all()
    assert np.bincount(labels[ordered]).tolist() == [20, 10, 2]


def test_split_errors():
    x = np.arange(10)
    with pytest.raises(ValueError, match="leaving none for training"):
        train_val_test_split(x, val_size=5, test_size=5)
    with pytest.raises(ValueError, match=r"as a fraction must be in \[0, 1\), got 1.5"):
        train_val_test_split(x, test_size=1.5)
    with pytest.raises(ValueError, match="`val_size` must be >= 0"):
        train_val_test_split(x, val_size=-1)
    with pytest.raises(ValueError, match="gives an empty split"):
        train_val_test_split(x, val_size=0.01)
    with pytest.raises(TypeError, match=r"must be a fraction .* got str"):
        train_val_test_split(x, test_size="10%")
    with pytest.raises(TypeError, match="`seed` must be an int"):
        train_val_test_split(x, seed=jax.random.key(0))
    with pytest.raises(
        ValueError, match=r"`stratify` must be one label per example, shape \(10,\)"
    ):
        train_val_test_split(x, stratify=np.zeros((10, 2)))
    with pytest.raises(ValueError, match=r"same length .* \[0\]: 10, \[1\]: 9"):
        train_val_test_split((x, x[:9]))


def test_k_fold_partitions():
    folds = k_fold(11, 3, seed=0)
    assert len(folds) == 3
    vals = [v for _, v in folds]
    assert sorted(np.concatenate(vals).tolist()) == list(range(11))
    assert sorted(len(v) for v in vals) == [3, 4, 4]
    for train, val in folds:
        assert not set(train) & set(val) and len(train) + len(val) == 11
    assert [v.tolist() for v in vals] == [v.tolist() for _, v in k_fold(11, 3, seed=0)]


def test_k_fold_stratified():
    labels = np.repeat([0, 1], [12, 6])
    folds = k_fold(18, 3, seed=1, stratify=labels)
    for _, val in folds:
        assert np.bincount(labels[val]).tolist() == [4, 2]
    x = np.arange(18) * 10
    _, val = folds[0]
    np.testing.assert_array_equal(take(x, val), val * 10)


def test_k_fold_errors():
    with pytest.raises(ValueError, match="needs 2 <= k <= n, got k=6 and n=5"):
        k_fold(5, 6)
    with pytest.raises(ValueError, match="needs 2 <= k <= n, got k=1"):
        k_fold(5, 1)
    with pytest.raises(TypeError, match="`n` must be an int"):
        k_fold(np.arange(5), 2)
    with pytest.raises(ValueError, match=r"`stratify` must be one label per example, shape \(5,\)"):
        k_fold(5, 2, stratify=[0, 1])


# --------------------------------------------------------------------------- batches


def test_batches_in_order_with_remainder():
    x, y = np.arange(14.0).reshape(7, 2), np.arange(7)
    out = list(batches((x, y), 3))
    assert [b[1].tolist() for b in out] == [[0, 1, 2], [3, 4, 5], [6]]
    np.testing.assert_array_equal(out[1][0], x[3:6])
    assert [b[1].tolist() for b in batches((x, y), 3, drop_remainder=True)] == [
        [0, 1, 2],
        [3, 4, 5],
    ]
    assert list(batches(y, 10, drop_remainder=True)) == []


def test_batches_shuffle_is_the_key_permutation():
    key = jax.random.key(7)
    y = np.arange(10)
    got = np.concatenate([b["y"] for b in batches({"y": y}, 4, key=key, shuffle=True)])
    np.testing.assert_array_equal(got, np.asarray(jax.random.permutation(key, 10)))
    again = np.concatenate([b["y"] for b in batches({"y": y}, 4, key=key, shuffle=True)])
    np.testing.assert_array_equal(got, again)
    other = np.concatenate(list(batches(y, 4, key=jax.random.key(8), shuffle=True)))
    assert not np.array_equal(got, other)
    # the key is ignored without shuffling
    assert np.concatenate(list(batches(y, 4, key=key))).tolist() == list(range(10))


def test_batches_pytree_and_jax_leaves():
    tree = {"image": jnp.ones((5, 2, 2, 1)), "label": np.arange(5), "extra": (np.zeros((5, 3)),)}
    out = list(batches(tree, 2, key=jax.random.key(0), shuffle=True))
    assert [b["label"].shape for b in out] == [(2,), (2,), (1,)]
    assert isinstance(out[0]["image"], jax.Array) and isinstance(out[0]["label"], np.ndarray)
    assert out[0]["extra"][0].shape == (2, 3)


@pytest.mark.parametrize("axis_type", [AxisType.Auto, AxisType.Explicit])
def test_batches_sharding(axis_type):
    mesh = jax.make_mesh((1,), ("data",), axis_types=(axis_type,))
    sharding = NamedSharding(mesh, P("data"))
    x, y = np.arange(12.0).reshape(6, 2).astype(np.float32), np.arange(6)
    out = list(batches((x, y), 3, sharding=sharding))
    assert len(out) == 2
    for xb, yb in out:
        assert isinstance(xb, jax.Array) and xb.sharding == sharding and yb.sharding == sharding
    np.testing.assert_array_equal(out[1][0], x[3:])


def test_batches_errors():
    x = np.arange(6)
    with pytest.raises(ValueError, match="`batch_size` must be an int >= 1, got 0"):
        batches(x, 0)
    with pytest.raises(ValueError, match="`batch_size` must be an int >= 1"):
        batches(x, 2.0)
    with pytest.raises(ValueError, match="`shuffle=True` needs a random `key`"):
        batches(x, 2, shuffle=True)
    with pytest.raises(
        ValueError, match=r"same length .*\['x'\]: 6, \['y'\]\[0\]: 6, \['y'\]\[1\]: 5"
    ):
        batches({"x": x, "y": (x, x[:5])}, 2)
    with pytest.raises(ValueError, match=r"needs a first \(example\) axis, got a scalar at \[1\]"):
        batches((x, np.float32(1.0)), 2)
    with pytest.raises(TypeError, match="must be a numpy or jax array, got int at \\[0\\]"):
        batches([1, 2, 3], 2)
    with pytest.raises(ValueError, match="with no arrays in it"):
        batches((), 2)


# --------------------------------------------------------------------------- prefetch


def _prefetch_threads():
    return [t for t in threading.enumerate() if t.name == "funcnet-prefetch"]


def test_prefetch_yields_everything_on_device():
    x = np.arange(10.0, dtype=np.float32)
    out = list(prefetch_to_device(batches({"x": x}, 3), size=2))
    assert [b["x"].tolist() for b in out] == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9]]
    assert all(isinstance(b["x"], jax.Array) for b in out)
    assert not _prefetch_threads()


def test_prefetch_with_sharding():
    mesh = jax.make_mesh((1,), ("data",), axis_types=(AxisType.Explicit,))
    sharding = NamedSharding(mesh, P("data"))
    out = list(prefetch_to_device(batches(np.ones((4, 2), np.float32), 2), sharding=sharding))
    assert len(out) == 2 and all(b.sharding == sharding for b in out)


def test_prefetch_propagates_producer_exceptions():
    def source():
        yield np.zeros(2)
        yield np.ones(2)
        raise RuntimeError("disk on fire")

    seen = []
    with pytest.raises(RuntimeError, match="disk on fire"):
        for item in prefetch_to_device(source()):
            seen.append(item.tolist())
    assert seen == [[0.0, 0.0], [1.0, 1.0]]
    assert not _prefetch_threads()


def test_prefetch_stops_cleanly_when_abandoned():
    taken = []

    def endless():
        i = 0
        while True:
            taken.append(i)
            yield np.full(2, i, np.float32)
            i += 1

    stream = prefetch_to_device(endless(), size=2)
    first = [next(stream).tolist() for _ in range(3)]
    assert first == [[0, 0], [1, 1], [2, 2]]
    stream.close()
    assert not _prefetch_threads()
    count = len(taken)
    assert count <= 3 + 2 + 2  # consumed, queued, and at most one in hand
    time.sleep(0.05)
    assert len(taken) == count  # the source is not touched after closing

    for i, _ in enumerate(prefetch_to_device(endless(), size=1)):
        if i == 2:
            break
    assert not _prefetch_threads()


def test_prefetch_errors():
    with pytest.raises(ValueError, match="`size` must be an int >= 1, got 0"):
        prefetch_to_device(iter([]), size=0)


def test_batches_part_must_index_the_parts():
    y = np.arange(8)
    for bad in ((2, 2), (-1, 2), (0, 3)):
        with pytest.raises(ValueError, match=r"must be \(index, count\) with 0 <= index < count"):
            list(batches(y, 4, part=bad))
    np.testing.assert_array_equal(next(iter(batches(y, 4, part=(1, 2)))), [2, 3])


def test_k_fold_defaults_to_five_folds():
    folds = list(k_fold(10))
    assert len(folds) == 5 and all(len(val) == 2 for _, val in folds)


def test_normalizer_statistics_keep_the_reduced_axes():
    x = np.random.default_rng(0).normal(size=(10, 3, 2))
    norm = Standardizer.fit(x, axis=(0, 1))
    assert norm.mean.shape == norm.std.shape == (1, 1, 2)
    scaler = MinMaxScaler.fit(x, axis=(0, 1))
    assert scaler.minimum.shape == scaler.maximum.shape == (1, 1, 2)


def test_batches_of_no_rows_are_none():
    assert list(batches(np.zeros((0, 2)), 4)) == []
    assert list(batches(np.zeros((0, 2)), 4, key=jax.random.key(0), shuffle=True)) == []


def test_standardizer_constant_and_single_row_data():
    zero = np.zeros((5, 2))  # std 0 and mean 0: divided by 1, not 0
    np.testing.assert_array_equal(Standardizer.fit(zero).apply(zero), zero)
    one = np.array([[1.0, 2.0]])  # one example is enough to fit (std 1 where it is 0)
    np.testing.assert_array_equal(Standardizer.fit(one).apply(one), [[0.0, 0.0]])
    flat = np.array([1.0, 5.0])  # one feature as a 1-D array: mean 3, std 2
    np.testing.assert_allclose(Standardizer.fit(flat).apply(flat), [-1.0, 1.0])


def test_k_fold_shuffles_by_default():
    folds = [val.tolist() for _, val in k_fold(20, 4)]
    assert folds != [list(range(i, i + 5)) for i in range(0, 20, 5)]
    plain = [val.tolist() for _, val in k_fold(20, 4, shuffle=False)]
    assert plain == [list(range(i, i + 5)) for i in range(0, 20, 5)]


def test_more_bad_arguments_of_normalizers_and_splits():
    x = np.ones((4, 3), np.float32)
    for axis in ((), (0.5,)):
        with pytest.raises(TypeError, match="`axis` must be an int or a tuple of ints"):
            Standardizer.fit(x, axis=axis)
    with pytest.raises(ValueError, match="`feature_range` must be \\(low, high\\) with low < high"):
        MinMaxScaler.fit(x, feature_range=(1.0, 1.0))
    with pytest.raises(ValueError, match="val_size"):
        data.train_val_test_split(np.arange(10), val_size=1.0, test_size=0)
