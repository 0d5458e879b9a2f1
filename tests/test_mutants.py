"""Tests written to kill the survivors of ``tools/mutation.py`` (see ``tools/MUTATION.md``).

Each test pins one behaviour that a surviving mutant changed and no other
test noticed; its docstring names the mutated line. Numbers are checked
against numpy written here, or against the same computation done another way
(a single model vs. a stack, an explicit argument vs. its default).
"""

import dataclasses
import inspect
import threading
import time
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import funcnet as fn
from funcnet import augment, data
from funcnet.augment import random_rotation
from funcnet.data import MinMaxScaler, Standardizer, prefetch_to_device
from funcnet.training import stacked

STRICT_DTYPES = False  # optax's sgd with injected hyperparameters is not strict-clean


# ----------------------------------------------------------------------------- augment


def test_rotation_default_fill_is_zero(key):
    """``random_rotation(..., fill_value=0.0)``: the default fill of pixels from outside is 0."""
    x = jnp.ones((8, 9, 9, 1))
    rotate = jax.jit(random_rotation(45.0))
    y = np.asarray(rotate(key, x))
    explicit = np.asarray(jax.jit(random_rotation(45.0, fill_value=0.0))(key, x))
    np.testing.assert_array_equal(y, explicit)
    # a 9x9 corner lies 5.66 px from the center: turned by more than a few degrees it samples
    # outside the image, so a ones image gets values below 1 there (blended with the 0 fill)
    assert y.min() >= 0.0 and (y[:, 0, 0, 0] < 0.9).any()
    np.testing.assert_allclose(y[:, 4, 4, 0], 1.0)  # the center stays
    filled = np.asarray(jax.jit(random_rotation(45.0, fill_value=1.0))(key, x))
    np.testing.assert_allclose(filled, 1.0, rtol=1e-6)  # ones everywhere, inside or out


def test_rotation_limit_is_180_degrees(key):
    """``max_degrees > 180`` is refused, however little above 180; 180 itself is accepted."""
    for degrees in (180.5, 181):
        with pytest.raises(ValueError, match=rf"`max_degrees` must be at most 180, got {degrees}"):
            random_rotation(degrees)
    x = jnp.ones((2, 5, 5, 1))
    assert random_rotation(180)(key, x).shape == x.shape


def test_on_inputs_needs_exactly_a_pair(key):
    """``not isinstance(pair, (tuple, list)) or len(pair) != 2``: a triple (inputs, targets,
    weights) and a 2-row array are refused, not silently read as a pair."""
    lifted = augment.on_inputs(lambda k, x: x + 1.0)
    x, y = jnp.zeros((2, 3)), jnp.arange(2)
    got_x, got_y = lifted(key, [x, y])  # a list is a pair too
    np.testing.assert_array_equal(got_x, np.ones((2, 3)))
    np.testing.assert_array_equal(got_y, [0, 1])
    for bad, name in (((x, y, y), "tuple"), (x, "ArrayImpl")):
        message = rf"on_inputs: expected a pair `\(inputs, targets\)`, got {name}"
        with pytest.raises(TypeError, match=message):
            lifted(key, bad)


# ----------------------------------------------------------------------------- normalize


def test_standardizer_statistics_of_data_with_a_large_mean():
    """``std <= 10 * eps * |mean|`` marks only constant features: a feature with a large (or
    exactly zero) mean and a real spread keeps its standard deviation (numpy's, ddof=0)."""
    rng = np.random.default_rng(0)
    x = rng.normal([50.0, -7.0, 0.0], [3.0, 0.5, 2.0], size=(64, 3))
    zero_mean = np.tile([-3.0, 3.0], 32)[:, None]  # mean exactly 0, std 3
    x = np.concatenate([x, np.full((64, 1), 4.0), zero_mean], axis=1).astype(np.float32)
    norm = Standardizer.fit(x)
    x64 = x.astype(np.float64)
    want_std = x64.std(axis=0, keepdims=True)
    want_std[0, 3] = 1.0  # a constant feature gets std 1 (it maps to 0)
    np.testing.assert_array_equal(want_std[0, 4], 3.0)
    np.testing.assert_allclose(norm.mean, x64.mean(axis=0, keepdims=True), rtol=1e-6)
    np.testing.assert_allclose(norm.std, want_std, rtol=1e-6)
    z = np.asarray(norm.apply(x), np.float64)
    np.testing.assert_allclose(z.mean(axis=0), 0.0, atol=1e-4)
    np.testing.assert_allclose(z.std(axis=0), [1.0, 1.0, 1.0, 0.0, 1.0], atol=1e-4)


def test_normalizers_accept_every_negative_axis():
    """``-x.ndim <= axis < x.ndim``: ``axis=-x.ndim`` is the first axis, not out of range."""
    rng = np.random.default_rng(1)
    x = rng.normal(2.0, 3.0, size=(10, 4)).astype(np.float32)
    for cls in (Standardizer, MinMaxScaler):
        a, b = cls.fit(x, axis=-2), cls.fit(x, axis=0)
        for u, v in zip(a, b):
            np.testing.assert_array_equal(u, v)
    images = rng.normal(size=(5, 3, 3, 2)).astype(np.float32)
    per_channel = Standardizer.fit(images, axis=(-4, -3, -2))
    np.testing.assert_allclose(
        per_channel.mean[0, 0, 0], images.astype(np.float64).mean(axis=(0, 1, 2)), rtol=1e-5
    )
    with pytest.raises(ValueError, match=r"`axis=-3` is out of range for data of shape \(10, 4\)"):
        Standardizer.fit(x, axis=-3)


# ----------------------------------------------------------------------------- split


@pytest.mark.parametrize("name", ["val_size", "test_size"])
def test_split_fraction_one_is_rejected(name):
    """``0.0 <= size < 1.0``: the fraction 1.0 is refused (pass a count for every example)."""
    sizes = {"val_size": 0.2, "test_size": 0.2, name: 1.0}
    with pytest.raises(ValueError, match=rf"`{name}` as a fraction must be in \[0, 1\), got 1.0"):
        data.train_val_test_split(np.arange(10), **sizes)
    other = "test_size" if name == "val_size" else "val_size"
    parts = data.train_val_test_split(np.arange(100), **{name: 0.99, other: 0}, shuffle=False)
    train, val, test = (np.asarray(p) for p in parts)
    assert len(train) == 1 and len(val if name == "val_size" else test) == 99  # just below 1


# ----------------------------------------------------------------------------- prefetch


def test_prefetch_slow_consumer_gets_every_batch():
    """A producer that finds the queue full for longer than its 0.1 s poll keeps waiting
    (``continue``) instead of dropping the batch."""
    items = [np.full((2,), float(i), np.float32) for i in range(4)]
    got: list = []

    def consume():
        for item in prefetch_to_device(iter(items), size=1):
            time.sleep(0.25)  # slower than the producer's 0.1 s poll of a full queue
            got.append(np.asarray(item))

    thread = threading.Thread(target=consume, daemon=True)  # a lost _END would hang it
    thread.start()
    thread.join(timeout=20)
    assert not thread.is_alive(), f"the consumer hung after {len(got)} of 4 batches"
    assert [g.tolist() for g in got] == [i.tolist() for i in items]


# ----------------------------------------------------------------------------- stacked


def _model():
    return fn.serial(fn.Dense(4), jax.nn.relu, fn.Dense(2))


def test_stack_init_from_one_typed_key():
    """``keys.shape[0] >= 1``: an array of one typed key is a stack of one model."""
    x = jnp.asarray(np.random.default_rng(2).normal(size=(6, 3)), jnp.float32)
    keys = jax.random.split(jax.random.key(7), 1)
    ts = fn.stack_init(_model(), optax.sgd(0.1), keys, x)
    assert ts.step.shape == (1,)
    one = fn.TrainState.create(_model(), optax.sgd(0.1), keys[0], x)
    for u, v in zip(jax.tree.leaves(fn.model_at(ts, 0).params), jax.tree.leaves(one.params)):
        np.testing.assert_array_equal(u, v)
    with pytest.raises(TypeError, match=r"`keys` must be a number of models N.*got shape \(0,\)"):
        fn.stack_init(_model(), optax.sgd(0.1), jax.random.split(jax.random.key(7), 0), x)


def _scaled_sgd(learning_rate, scale):
    return optax.chain(optax.scale(scale), optax.sgd(learning_rate))


def test_with_hparams_broadcasts_over_an_array_hyperparameter():
    """``value.reshape((n,) + (1,) * (old.ndim - 1))``: a per-model number fills every element
    of a hyperparameter that is an array (here a per-output-unit gradient scale of a
    ``Dense(2)``), and each
    model then trains as a single run with that array."""
    rng = np.random.default_rng(3)
    x = jnp.asarray(rng.normal(size=(6, 3)), jnp.float32)
    y = jnp.asarray(np.arange(6) % 2, jnp.int32)
    opt = optax.inject_hyperparams(_scaled_sgd)(learning_rate=0.1, scale=jnp.ones((2,)))
    scales = [0.5, 2.0, 3.0]
    ts = fn.stack_init(fn.Dense(2), opt, 3, x, hparams={"scale": scales})
    np.testing.assert_array_equal(
        fn.hparams_of(ts)["scale"], np.repeat(np.asarray(scales)[:, None], 2, axis=1)
    )
    loss = "sparse_categorical_cross_entropy"
    ts, _ = jax.jit(fn.stacked_train_step(fn.Dense(2), loss, opt))(ts, (x, y))
    for i, s in enumerate(scales):
        single = optax.inject_hyperparams(_scaled_sgd)(learning_rate=0.1, scale=jnp.full((2,), s))
        one = fn.TrainState.create(fn.Dense(2), single, jax.random.key(i), x)
        one, _ = jax.jit(fn.train_step(fn.Dense(2), loss, single))(one, (x, y))
        for u, v in zip(jax.tree.leaves(fn.model_at(ts, i).params), jax.tree.leaves(one.params)):
            np.testing.assert_allclose(u, v, rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def two_models():
    """A stack of two ``Dense(2)`` models and a small dataset."""
    rng = np.random.default_rng(4)
    x = rng.normal(size=(7, 3)).astype(np.float32)
    y = (np.arange(7) % 2).astype(np.int32)
    return fn.stack_init(fn.Dense(2), optax.sgd(0.1), 2, x), x, y


@pytest.mark.parametrize("name", ["stacked_evaluate", "stacked_predict", "ensemble_predict"])
def test_stacked_inference_batches_like_evaluate_and_predict(name, two_models):
    """The stacked inference functions default to the batch size of ``fn.evaluate`` and
    ``fn.predict`` (256), so switching to a stack does not change how data is batched; with
    their defaults they give each model's single-model results."""

    def default(f):
        return inspect.signature(f).parameters["batch_size"].default

    assert default(fn.evaluate) == default(fn.predict) == 256
    assert default(getattr(stacked, name)) == 256
    ts, x, y = two_models
    singles = [fn.model_at(ts, i) for i in range(2)]
    outs = [np.asarray(fn.predict(fn.Dense(2), t.params, t.state, x)) for t in singles]
    if name == "stacked_evaluate":
        loss = "sparse_categorical_cross_entropy"
        got = stacked.stacked_evaluate(fn.Dense(2), ts.params, ts.state, (x, y), loss=loss)
        want = [fn.evaluate(fn.Dense(2), t.params, t.state, (x, y), loss=loss) for t in singles]
        np.testing.assert_allclose(got["loss"], [w["loss"] for w in want], rtol=1e-5)
    elif name == "stacked_predict":
        got = stacked.stacked_predict(fn.Dense(2), ts.params, ts.state, x)
        np.testing.assert_allclose(got, np.stack(outs), rtol=1e-5, atol=1e-6)
    else:
        got = stacked.ensemble_predict(fn.Dense(2), ts.params, ts.state, x)
        probs = [np.exp(o - o.max(-1, keepdims=True)) for o in outs]
        want = np.mean([p / p.sum(-1, keepdims=True) for p in probs], axis=0)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_ensemble_vote_counts_a_zero_binary_logit_as_class_0():
    """``votes = outputs[..., 0] > 0``: a binary logit of exactly 0 (probability 0.5) votes for
    class 0, as ``logit > 0`` is documented; with one model at 0, one above and one below, class
    0 wins."""
    ts = fn.stack_init(fn.Dense(1), optax.sgd(0.1), 3, np.ones((1, 2), np.float32))
    params = {"w": jnp.zeros((3, 2, 1)), "b": jnp.array([[0.0], [1.0], [-1.0]])}
    assert jax.tree.structure(params) == jax.tree.structure(ts.params)
    x = np.ones((4, 2), np.float32)
    outputs = np.asarray(stacked.stacked_predict(fn.Dense(1), params, ts.state, x))
    votes = (outputs[..., 0] > 0).astype(int)  # numpy: (models, rows)
    want = (votes.sum(axis=0) > len(votes) / 2).astype(np.int32)  # the majority, ties to 0
    got = stacked.ensemble_predict(fn.Dense(1), params, ts.state, x, combine="vote")
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(got, np.zeros(4, np.int32))
    params = {"w": jnp.zeros((3, 2, 1)), "b": jnp.array([[0.5], [0.5], [-1.0]])}  # 0 < logit < 1
    got = stacked.ensemble_predict(fn.Dense(1), params, ts.state, x, combine="vote")
    np.testing.assert_array_equal(got, np.ones(4, np.int32))


def test_stacked_evaluate_leaves_the_callers_batches_usable(two_models):
    """``donate_argnums=2``: only the accumulator is donated (XLA reuses it for the new one,
    without a "donated buffers were not usable" warning); the batches of an iterable, the
    caller's own device arrays, are still there after an evaluation."""
    ts, x, y = two_models
    batches = [(jnp.asarray(x[:4]), jnp.asarray(y[:4])), (jnp.asarray(x[4:]), jnp.asarray(y[4:]))]
    loss = "sparse_categorical_cross_entropy"
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*donated buffers were not usable")
        first = stacked.stacked_evaluate(fn.Dense(2), ts.params, ts.state, batches, loss=loss)
    np.testing.assert_array_equal(np.asarray(batches[0][0]), x[:4])  # not deleted
    again = stacked.stacked_evaluate(fn.Dense(2), ts.params, ts.state, batches, loss=loss)
    want = stacked.stacked_evaluate(fn.Dense(2), ts.params, ts.state, (x, y), loss=loss)
    np.testing.assert_allclose(first["loss"], want["loss"], rtol=1e-5)
    np.testing.assert_allclose(again["loss"], want["loss"], rtol=1e-5)


# ----------------------------------------------------------------------------- data checks


class _ShapeOnly:
    """Has a ``shape`` but no ``dtype``: not an array."""

    shape = (3,)


def test_leaf_with_a_shape_but_no_dtype_is_refused():
    """``not hasattr(leaf, "shape") or not hasattr(leaf, "dtype")``: a leaf needs both; one
    with only a ``shape`` is refused as not an array, in every function that reads leaves."""
    x = np.zeros((3, 2), np.float32)
    message = r"every leaf must be a numpy or jax array, got _ShapeOnly at \[1\]"
    with pytest.raises(TypeError, match=message):
        data.take((x, _ShapeOnly()), np.arange(2))
    with pytest.raises(TypeError, match=message):
        data.train_val_test_split((x, _ShapeOnly()), val_size=1, test_size=1)


# ----------------------------------------------------------------------------- describe


def test_description_is_frozen_and_prints_a_six_wide_name_column():
    """``@dataclass(frozen=True)`` and ``width = max([6, ...])``: a ``Description`` cannot be
    changed, and its name column is as wide as ``"column"`` (6) for short names, one space
    before ``missing``."""
    d = data.describe(np.array([[1.0, 2.0], [3.0, 4.0]]), names=["a", "bb"])
    with pytest.raises(dataclasses.FrozenInstanceError):
        d.rows = 3
    lines = str(d).splitlines()
    assert lines[1].startswith("column missing ")
    assert lines[2].startswith("a" + " " * 12 + "0 ")  # "a" padded to 6, a space, 7 wide "0"
    assert lines[3].startswith("bb" + " " * 11 + "0 ")
    wide = str(data.describe(np.ones((2, 1)), names=["feature"])).splitlines()
    assert wide[1].startswith("column  missing ") and wide[2].startswith("feature       0 ")


def test_describe_takes_a_one_dimensional_x_as_one_column():
    """``x.ndim == 0 or x.shape[0] == 0``: only a scalar or an empty ``x`` is refused; a 1-D
    ``x`` of N rows is one column."""
    x = np.array([1.0, 2.0, 4.0, np.nan])
    d = data.describe(x)
    assert d.rows == 4 and d.columns == ("0",)
    np.testing.assert_array_equal(d.missing, [1])
    np.testing.assert_allclose(d.mean, [np.mean([1.0, 2.0, 4.0])])
    np.testing.assert_allclose(d.std, [np.std([1.0, 2.0, 4.0])])
    for bad in (np.float64(1.0), np.zeros((0, 2))):
        with pytest.raises(ValueError, match="describe: `x` needs at least one row"):
            data.describe(bad)


# ----------------------------------------------------------------------------- outliers


def test_describe_counts_no_outlier_at_a_fence():
    """``(vals < low) | (vals > high)``: a value exactly at one of Tukey's fences is not an
    outlier. 0..8 has q1 = 2, q3 = 6, so k = 0.5 puts the fences at 0 and 8 and k = 0.25 at
    1 and 7."""
    x = np.arange(9.0)[:, None]
    np.testing.assert_array_equal(np.quantile(x, [0.25, 0.75]), [2.0, 6.0])  # numpy's fences
    np.testing.assert_array_equal(data.describe(x, outlier_threshold=0.5).outliers, [0])
    np.testing.assert_array_equal(data.describe(x, outlier_threshold=0.25).outliers, [2])


def test_outlier_mask_excludes_the_fences():
    """``(x < low) | (x > high)``: a value exactly at a fence is not an outlier, so whatever
    ``apply`` clipped is never masked."""
    rng = np.random.default_rng(5)
    x = np.concatenate([rng.normal(size=(40, 2)), [[9.0, -9.0]]]).astype(np.float32)
    clipper = data.OutlierClipper.fit(x)
    at_fences = np.concatenate([clipper.low, clipper.high])
    np.testing.assert_array_equal(clipper.mask(at_fences), np.zeros((2, 2), bool))
    assert not clipper.mask(clipper.apply(x)).any()
    want = (x < clipper.low) | (x > clipper.high)  # numpy, on the data
    np.testing.assert_array_equal(clipper.mask(x), want)
    assert want[-1].all()


# ----------------------------------------------------------------------------- shards


def test_sharded_arrays_iterate_epoch_0_and_keep_weights(tmp_path):
    """``write_shards``' ``len(arrays) in (2, 3)`` takes ``(x, y, weights)``; iterating a
    ``ShardedArrays`` (``for_epoch(0)``) and ``order()`` (default epoch 0) give epoch 0's
    shuffle, which differs from epoch 1's."""
    x = np.arange(20, dtype=np.float32).reshape(10, 2)
    y, w = np.arange(10), np.linspace(0.1, 1.0, 10).astype(np.float32)
    data.write_shards(tmp_path, (x, y, w), rows_per_shard=4)
    sharded = data.ShardedArrays(tmp_path, batch_size=3, seed=7)
    np.testing.assert_array_equal(sharded.order(), sharded.order(0))
    assert not np.array_equal(sharded.order(0), sharded.order(1))
    batches = list(sharded)
    assert [len(b) for b in batches] == [3] * len(batches)  # (x, y, weights)
    for got, want in zip(batches, sharded.for_epoch(0)):
        for u, v in zip(got, want):
            np.testing.assert_array_equal(u, v)
    rows = np.concatenate([b[1] for b in batches])
    np.testing.assert_array_equal(rows, sharded.order(0))  # y holds the row index
    np.testing.assert_array_equal(np.concatenate([b[2] for b in batches]), w[rows])
    with pytest.raises(TypeError, match=r"`arrays` must be a tuple `\(x, y\)`"):
        data.write_shards(tmp_path / "four", (x, y, w, w), rows_per_shard=4)


# ----------------------------------------------------------------------------- grain


class _Stream:
    """An iterable of batches with no length, slicing or ``get_state``."""

    def __init__(self, batches):
        self.batches = batches

    def __iter__(self):
        return iter(self.batches)


def test_grain_batches_length_is_epoch_0s_and_a_plain_iterable_resumes_by_reading():
    """``len(self.pipeline(0))``: the length is epoch 0's pipeline's; ``isinstance(state, dict)
    and "next_index" in state``: an iterator without Grain's state (``None``) is moved to
    batch ``start`` by reading and dropping."""
    pairs = [(np.full((2, 1), float(i)), np.arange(2)) for i in range(5)]
    asked = []

    def pipeline(epoch):
        asked.append(epoch)
        return pairs[: 3 + epoch]  # epoch e has 3 + e batches

    assert len(data.from_grain(pipeline)) == 3 and asked == [0]
    stream = data.from_grain(_Stream(pairs))
    got = [float(b[0][0, 0]) for b in stream.for_epoch(0, start=2)]
    assert got == [2.0, 3.0, 4.0]


def test_grain_batches_default_to_no_prefetch_and_iterate_epoch_0():
    """``GrainBatches(..., prefetch=0)``: made directly, the batches come as they are (no
    device prefetch thread); iterating (``for_epoch(0)``) builds epoch 0's pipeline."""
    pairs = [(np.full((2, 1), float(i)), np.arange(2)) for i in range(3)]
    asked = []

    def pipeline(epoch):
        asked.append(epoch)
        return pairs

    got = list(iter(data.GrainBatches(pipeline, None)))  # iter: list() would ask for len too
    assert asked == [0]
    assert all(g[0] is p[0] and g[1] is p[1] for g, p in zip(got, pairs))  # the host arrays


def test_grain_batches_take_weighted_triples():
    """``_as_tuple``'s ``len(batch) in (2, 3)``: a batch ``(x, y, weights)`` is a triple; a
    batch of 4 is refused."""
    x, y, w = np.ones((2, 1)), np.arange(2), np.array([0.5, 2.0])
    (batch,) = list(data.from_grain([(x, y, w)]))
    assert len(batch) == 3
    np.testing.assert_array_equal(batch[2], w)
    with pytest.raises(TypeError, match="from_grain: batch 0 is a tuple of length 4"):
        list(data.from_grain([(x, y, w, w)]))


# ----------------------------------------------------------------------------- split


def test_stratified_split_has_the_requested_sizes_when_the_rounding_must_reroute():
    """``augment`` ``return False``: a dead end of the rounding's path search is reported, not
    taken for a path (which would leave a class short in a part): with classes of 7, 3, 2, 3
    and parts of 3, 7, 5 every part has its size and each class its share, rounded."""
    labels = np.repeat([0, 1, 2, 3], [7, 3, 2, 3])
    sizes, parts = np.array([7, 3, 2, 3]), np.array([3, 7, 5])
    split = data.train_val_test_split(
        np.arange(15), val_size=7, test_size=5, stratify=labels, shuffle=False
    )
    got = [np.asarray(p) for p in split]
    assert [len(p) for p in got] == parts.tolist()
    np.testing.assert_array_equal(np.sort(np.concatenate(got)), np.arange(15))
    share = np.outer(sizes, parts) / 15  # class c's exact share of part p
    counts = np.array([[np.sum(labels[p] == c) for p in got] for c in range(4)])
    assert (np.floor(share) <= counts).all() and (counts <= np.ceil(share)).all()
    np.testing.assert_array_equal(counts.sum(axis=1), sizes)


# ----------------------------------------------------------------------------- training


def test_train_step_refuses_a_batch_of_four():
    """``unpack_batch``: ``isinstance(batch, (tuple, list)) and len(batch) in (2, 3)``: a batch
    of four arrays is an error, not ``(x, y, weights)`` with the fourth ignored."""
    x, y = jnp.ones((4, 2)), jnp.zeros((4, 1))
    opt = optax.sgd(0.1)
    ts = fn.TrainState.create(fn.Dense(1), opt, jax.random.key(0), x)
    step = fn.train_step(fn.Dense(1), "mse", opt)
    with pytest.raises(TypeError, match=r"train_step: expected a batch .* got tuple of length 4"):
        step(ts, (x, y, jnp.ones(4), jnp.ones(4)))
    with pytest.raises(TypeError, match=r"got dict\."):
        step(ts, {"x": x, "y": y})


def test_jsonl_logger_thread_is_a_daemon(tmp_path):
    """``threading.Thread(..., daemon=True)``: the writing thread never keeps the interpreter
    alive (a run that never reaches ``on_train_end`` still exits); it ends at ``on_train_end``
    with every line written."""
    from funcnet.training.callbacks import JSONLLogger

    log = JSONLLogger(tmp_path / "log.jsonl")
    log.on_train_begin(None)
    (thread,) = [t for t in threading.enumerate() if t.name == "JSONLLogger"]
    assert thread.daemon
    log.on_epoch_end(0, {"loss": 0.25}, None)
    log.on_train_end(None)
    assert not thread.is_alive()
    assert (tmp_path / "log.jsonl").read_text() == '{"epoch": 0, "loss": 0.25}\n'


def test_tensorboard_histograms_every_third_epoch(tmp_path):
    """``(epoch + 1) % self.histogram_every == 0``: ``histograms=3`` writes after epochs 3, 6,
    ... (one-based), here the third of four; the summary text's parameter table starts with
    its header."""
    pytest.importorskip("tensorboardX")
    accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    from funcnet.training.callbacks import TensorBoard

    ts = fn.TrainState.create(fn.Dense(1), optax.sgd(0.1), jax.random.key(0), jnp.ones((1, 2)))
    board = TensorBoard(tmp_path, histograms=3)
    board.on_train_begin(ts)
    for epoch in range(4):
        board.on_epoch_end(epoch, {"loss": 1.0}, ts)
    board.on_train_end(ts)
    size = {accumulator.HISTOGRAMS: 0}
    acc = accumulator.EventAccumulator(str(tmp_path), size_guidance=size).Reload()
    assert [e.step for e in acc.Histograms("params/w")] == [3]
    # _params_table's ``rows.insert(0, header)``: the header is the table's first line
    (event,) = acc.Tensors("model/summary/text_summary")
    assert event.step == 0  # ``add_text("model/summary", indented, 0)``: before any epoch
    table = [line.split() for line in event.tensor_proto.string_val[0].decode().splitlines()]
    assert table[:3] == [
        ["path", "shape", "dtype", "size"],
        ["b", "(1,)", "float32", "1"],
        ["w", "(2,", "1)", "float32", "2"],
    ]


def test_stacked_fit_best_model_and_epochs_from_the_first_epoch():
    """``batch_size > rows`` (a batch of every row is allowed), ``best_epoch >= 0`` (epoch 0 is
    a best epoch) and ``best_epoch`` starting at ``-1`` (never a finite value): with one epoch
    the best model is the one with the lowest loss; with a NaN validation loss no model has a best
    epoch (and the best model is 0)."""
    rng = np.random.default_rng(6)
    x = rng.normal(size=(8, 3)).astype(np.float32)
    y = (np.arange(8) % 2).astype(np.int32)
    loss = "sparse_categorical_cross_entropy"
    kwargs = dict(keys=[0, 1, 2], epochs=1, batch_size=8)
    _, history = fn.stacked_fit(fn.Dense(2), optax.sgd(0.1), loss, (x, y), **kwargs)
    losses = np.asarray(history["loss"][0])
    assert int(np.argmin(losses)) != 0  # the keys are chosen so
    assert history.best_model == int(np.argmin(losses))
    np.testing.assert_array_equal(history.best_epoch, [0, 0, 0])
    np.testing.assert_allclose(history.best_value, losses)

    def loss_nan_on_sevens(outputs, targets, weights=None):  # finite in training
        mse = jnp.mean((outputs - targets) ** 2)
        return mse + jnp.where(jnp.all(targets == 7.0), jnp.nan, 0.0)

    t = rng.normal(size=(8, 1)).astype(np.float32)
    sevens = (x[:2], np.full((2, 1), 7.0, np.float32))
    _, history = fn.stacked_fit(
        fn.Dense(1), optax.sgd(0.1), loss_nan_on_sevens, (x, t), validation_data=sevens, **kwargs
    )
    assert history.monitor == "val_loss" and np.isnan(history["val_loss"][0]).all()
    np.testing.assert_array_equal(history.best_epoch, [-1, -1, -1])
    np.testing.assert_array_equal(history.best_value, [np.inf] * 3)
    assert history.best_model == 0


def test_stacked_predict_maps_each_models_state():
    """``jax.vmap(predict_step(model), in_axes=(0, 0, None))``: the model state (here batch
    norm's running statistics, different per model) is stacked on axis 0 like the params;
    each model predicts as alone."""
    model = fn.serial(fn.Dense(3), fn.BatchNorm(), fn.Dense(2))
    rng = np.random.default_rng(7)
    x = rng.normal(size=(5, 4)).astype(np.float32)
    ts = fn.stack_init(model, optax.sgd(0.1), 2, x)
    stats = {"mean": rng.normal(size=(2, 3)), "var": rng.uniform(0.5, 2.0, size=(2, 3))}
    state = (ts.state[0], jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), stats), ())
    assert jax.tree.structure(state) == jax.tree.structure(ts.state)
    ts = ts._replace(state=state)  # running statistics that differ per model
    got = stacked.stacked_predict(model, ts.params, ts.state, x)
    for i in range(2):
        one = fn.model_at(ts, i)
        want = fn.predict(model, one.params, one.state, x)
        np.testing.assert_allclose(got[i], want, rtol=1e-5, atol=1e-6)


def test_clean_integer_labels_are_never_bad_rows():
    """``bad_rows``: ``np.zeros(a.shape[0], bool)`` for an integer array (no NaN possible):
    1-D integer labels keep every row their ``x`` keeps."""
    x = np.array([[1.0, 2.0], [np.nan, 4.0], [3.0, 5.0]])
    y = np.array([0, 1, 2])
    xc, yc, report = data.clean(x, y)
    np.testing.assert_array_equal(xc, [[1.0, 2.0], [3.0, 5.0]])
    np.testing.assert_array_equal(yc, [0, 2])
    assert report.rows_dropped == 1
    xi, yi, _ = data.clean(np.arange(6).reshape(3, 2), y, strategy="mean")
    np.testing.assert_array_equal(xi, np.arange(6).reshape(3, 2))
    np.testing.assert_array_equal(yi, y)


def test_validation_split_that_rounds_to_no_example_is_refused():
    """``0 < n_val < n``: a ``validation_split`` that leaves no validation example (10 rows *
    0.04 rounds to 0) is an error, as is one that leaves no training example."""
    x, y = np.ones((10, 2), np.float32), np.zeros((10, 1), np.float32)
    for fraction in (0.04, 0.96):
        with pytest.raises(ValueError, match=rf"`validation_split={fraction}` of 10 examples"):
            fn.fit(fn.Dense(1), optax.sgd(0.1), "mse", (x, y), validation_split=fraction)


def test_predict_over_batches_pads_the_last_to_the_first_batchs_rows():
    """``pad = size - n``: a smaller last batch is padded to the first batch's rows, so the
    model is traced for one shape only; the outputs are the unpadded rows."""
    shapes = []

    def spy(x):
        shapes.append(x.shape)  # runs when traced
        return x

    model = fn.serial(spy, fn.Dense(2))
    x = np.random.default_rng(8).normal(size=(11, 3)).astype(np.float32)
    ts = fn.TrainState.create(model, optax.sgd(0.1), jax.random.key(0), x[:1])
    shapes.clear()
    batches = iter([x[:4], x[4:8], x[8:]])  # an iterator of batches (a list is a pytree)
    got = fn.predict(model, ts.params, ts.state, batches)
    assert set(shapes) == {(4, 3)}
    want = x @ np.asarray(ts.params[1]["w"]) + np.asarray(ts.params[1]["b"])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_dynamic_loss_scale_may_start_at_its_minimum():
    """``initial_scale >= min_scale``: starting at the minimum scale is allowed; below it is
    not."""
    opt = fn.dynamic_loss_scale(optax.sgd(0.1), initial_scale=2.0, min_scale=2.0)
    state = opt.init({"w": jnp.zeros(2)})
    assert float(state.scale) == 2.0
    with pytest.raises(ValueError, match="need 0 < min_scale <= initial_scale"):
        fn.dynamic_loss_scale(optax.sgd(0.1), initial_scale=1.0, min_scale=2.0)


def test_stacked_fit_verbose_prints_mean_and_std_per_log(capsys):
    """``_print``: ``if f"{k}_mean" in logs``: with ``verbose=1`` each epoch prints every log's
    mean ± std over the models and how many are active."""
    rng = np.random.default_rng(9)
    x = rng.normal(size=(8, 3)).astype(np.float32)
    y = (np.arange(8) % 2).astype(np.int32)
    loss = "sparse_categorical_cross_entropy"
    _, history = fn.stacked_fit(
        fn.Dense(2), optax.sgd(0.1), loss, (x, y), num_models=2, batch_size=4, verbose=1
    )
    out = capsys.readouterr().out.strip()
    mean, std = history["loss_mean"][0], history["loss_std"][0]
    assert out == f"epoch 1/1  loss {mean:.4g}±{std:.2g}  active 2/2"
    np.testing.assert_allclose(mean, np.mean(history["loss"][0]), rtol=1e-6)


def test_train_step_on_a_one_device_mesh_equals_no_mesh():
    """``_on_mesh``: ``mode = param_sharding or "replicated"`` and ``constrain``'s
    ``ts._replace(step=done[0], ...)``: a step made with a (one-device) mesh and no rules
    trains as the plain step and counts its steps."""
    from funcnet import distributed

    mesh = distributed.make_mesh()
    x = np.random.default_rng(10).normal(size=(8, 3)).astype(np.float32)
    y = (np.arange(8) % 2).astype(np.int32)
    opt, loss = optax.sgd(0.1), "sparse_categorical_cross_entropy"
    ts = fn.TrainState.create(fn.Dense(2), opt, jax.random.key(0), x)
    plain = jax.jit(fn.train_step(fn.Dense(2), loss, opt))
    on_mesh = jax.jit(fn.train_step(fn.Dense(2), loss, opt, mesh=mesh))
    a, _ = plain(ts, (x, y))
    b, _ = on_mesh(ts, (x, y))
    b, _ = on_mesh(b, (x, y))
    a, _ = plain(a, (x, y))
    assert int(a.step) == int(b.step) == 2
    for u, v in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params)):
        np.testing.assert_allclose(u, v, rtol=1e-6, atol=1e-7)


class _Epochs:
    """Batches by ``for_epoch`` only (not iterable itself), as ``iterate`` accepts."""

    def __init__(self, batches):
        self.batches, self.asked = batches, []

    def for_epoch(self, epoch):
        self.asked.append(epoch)
        return iter(self.batches)


def test_predict_takes_an_object_with_only_for_epoch_as_batches():
    """``is_batches``: ``hasattr(x, "for_epoch") or isinstance(x, Iterator)``: an object with
    ``for_epoch`` is batches even when it is not iterable itself."""
    x = np.random.default_rng(11).normal(size=(6, 3)).astype(np.float32)
    ts = fn.TrainState.create(fn.Dense(2), optax.sgd(0.1), jax.random.key(0), x)
    batches = _Epochs([x[:4], x[4:]])
    got = fn.predict(fn.Dense(2), ts.params, ts.state, batches)
    assert batches.asked == [0]  # ``iterate(data, where, epoch=0)``: epoch 0's batches, as iter
    want = x @ np.asarray(ts.params["w"]) + np.asarray(ts.params["b"])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_sharded_arrays_refuse_an_index_of_another_format_or_without_a_key(tmp_path):
    """``_read_index``: ``not isinstance(index, dict) or format != _FORMAT or any(key
    missing)``: each condition alone makes the index invalid."""
    import json

    x, y = np.zeros((4, 2), np.float32), np.arange(4)
    index_path = data.write_shards(tmp_path, (x, y), rows_per_shard=2)
    index = json.loads(index_path.read_text())
    assert len(data.ShardedArrays(tmp_path, batch_size=2)) == 2
    message = "is not a funcnet shard index"
    for bad in ({**index, "format": "other"}, {k: v for k, v in index.items() if k != "dtypes"}):
        index_path.write_text(json.dumps(bad))
        with pytest.raises(ValueError, match=message):
            data.ShardedArrays(tmp_path, batch_size=2)


def test_loss_scale_under_an_axis_name_gives_the_unscaled_gradient():
    """``_global_gradients``: under ``axis_name`` the loss is multiplied by ``share * scale``
    and the gradient divided by ``scale``: a ``loss_scale=4`` step over two parts (``vmap``
    with an axis name, the one-device stand-in for ``pmap``) trains as the plain step."""
    x = np.random.default_rng(12).normal(size=(8, 3)).astype(np.float32)
    y = (np.arange(8) % 2).astype(np.int32)
    opt, loss = optax.sgd(0.1), "sparse_categorical_cross_entropy"
    ts = fn.TrainState.create(fn.Dense(2), opt, jax.random.key(0), x)
    want, want_logs = jax.jit(fn.train_step(fn.Dense(2), loss, opt))(ts, (x, y))
    step = fn.train_step(fn.Dense(2), loss, opt, axis_name="d", loss_scale=4.0)
    split = jax.tree.map(lambda a: a.reshape(2, 4, *a.shape[1:]), (x, y))  # two parts
    got, logs = jax.jit(jax.vmap(step, in_axes=(None, 0), axis_name="d"))(ts, split)
    np.testing.assert_allclose(logs["loss"][0], want_logs["loss"], rtol=1e-6)  # unscaled
    for u, v in zip(jax.tree.leaves(got.params), jax.tree.leaves(want.params)):
        np.testing.assert_allclose(u[0], v, rtol=1e-5, atol=1e-6)


def test_has_conv_finds_a_nested_convolution():
    """``has_conv``'s ``return True``: a convolution anywhere in the model (here inside a
    nested ``serial``) is found, so convolutional models unroll on CPU; a dense model has none."""
    from funcnet.training.fused import has_conv

    assert has_conv(fn.Conv(4, (3, 3)))
    assert has_conv(fn.serial(fn.Dense(2), fn.serial(jax.nn.relu, fn.Conv(4, (3, 3)))))
    assert not has_conv(fn.serial(fn.Dense(2), jax.nn.relu, fn.Dense(1)))


def test_predict_over_weighted_batches_reads_their_inputs():
    """``_batch_inputs``: ``len(batch) in (2, 3)``: a batch ``(x, y, weights)`` of an iterable
    gives its ``x`` to the model."""
    x = np.random.default_rng(13).normal(size=(6, 3)).astype(np.float32)
    ts = fn.TrainState.create(fn.Dense(2), optax.sgd(0.1), jax.random.key(0), x)
    triples = iter([(x[:3], np.zeros(3), np.ones(3)), (x[3:], np.zeros(3), np.ones(3))])
    got = fn.predict(fn.Dense(2), ts.params, ts.state, triples)
    want = x @ np.asarray(ts.params["w"]) + np.asarray(ts.params["b"])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_dynamic_loss_scale_starts_with_the_last_update_finite():
    """``init``'s ``last_finite=jnp.asarray(True)``: before any update nothing was skipped."""
    opt = fn.dynamic_loss_scale(optax.sgd(0.1), initial_scale=8.0)
    state = opt.init({"w": jnp.zeros(2)})
    assert bool(state.last_finite) and int(state.skipped) == 0 and float(state.scale) == 8.0


def test_quantile_clipper_takes_a_low_quantile_of_zero():
    """``_quantile_pair``: ``0.0 <= low < high <= 1.0``: ``threshold=(0.0, 0.75)`` clips below at
    the minimum (nothing) and above at numpy's 0.75 quantile."""
    x = np.arange(9.0, dtype=np.float32)[:, None]
    clipper = data.OutlierClipper.fit(x, method="quantile", threshold=(0.0, 0.75))
    np.testing.assert_allclose(clipper.low, [[0.0]])
    np.testing.assert_allclose(clipper.high, [[np.quantile(np.arange(9.0), 0.75)]])
    np.testing.assert_array_equal(clipper.mask(x)[:, 0], np.arange(9) > 6)
    with pytest.raises(ValueError, match="method='quantile' takes `threshold`"):
        data.OutlierClipper.fit(x, method="quantile", threshold=(-0.1, 0.75))


def test_stratified_k_fold_deals_from_the_first_fold():
    """``k_fold``'s ``offset = 0``: the round-robin over the classes starts at fold 0, so the
    first folds take the extra examples, as without ``stratify`` (``np.array_split``)."""
    labels = np.array([0, 0, 0, 0, 1, 1, 1])
    plain = [len(v) for _, v in data.k_fold(7, 3, shuffle=False)]
    strat = data.k_fold(7, 3, shuffle=False, stratify=labels)
    assert plain == [len(v) for _, v in strat] == [3, 2, 2]
    # class 0 (rows 0-3) to folds 0, 1, 2, 0; class 1 (rows 4-6) goes on: folds 1, 2, 0
    assert [v.tolist() for _, v in strat] == [[0, 3, 6], [1, 4], [2, 5]]


def test_out_of_range_labels_in_a_jax_array_are_refused():
    """``batch_check``: ``isinstance(y, jax.Array) and not y.is_fully_addressable``: only a
    global array of several processes skips the label check; labels given as a (local) jax
    array are checked like numpy ones."""
    x = np.ones((2, 3), np.float32)
    params, state = fn.Dense(2).init(jax.random.key(0), x)
    loss = "sparse_categorical_cross_entropy"
    for y in (np.array([0, 5]), jnp.array([0, 5])):
        with pytest.raises(ValueError, match=r"labels must be in \[0, 2\)"):
            fn.evaluate(fn.Dense(2), params, state, (x, y), loss=loss)


class _GetStateOnly:
    """An iterator with Grain's ``get_state`` but no ``set_state``: it cannot be moved."""

    def __init__(self, batches):
        self.it = iter(batches)

    def __iter__(self):
        return self

    def __next__(self):
        return next(self.it)

    def get_state(self):
        return {"next_index": 0}


def test_grain_iterator_without_set_state_is_read_to_the_start():
    """``hasattr(it, "get_state") and hasattr(it, "set_state")``: an iterator that cannot set
    its state is read and the skipped batches dropped."""
    pairs = [(np.full((2, 1), float(i)), np.arange(2)) for i in range(4)]
    batches = data.from_grain(lambda epoch: _GetStateOnly(pairs))
    assert [float(b[0][0, 0]) for b in batches.for_epoch(0, start=1)] == [1.0, 2.0, 3.0]


def test_outlier_clipper_takes_a_threshold_below_one():
    """``_bounds``: ``not k > 0``: any positive threshold works, 0.5 interquartile ranges too;
    0 does not."""
    x = np.arange(9.0, dtype=np.float32)[:, None]  # q1 = 2, q3 = 6
    clipper = data.OutlierClipper.fit(x, threshold=0.5)
    np.testing.assert_allclose([clipper.low[0, 0], clipper.high[0, 0]], [0.0, 8.0])
    with pytest.raises(ValueError, match="takes a `threshold` > 0"):
        data.OutlierClipper.fit(x, threshold=0.0)


def test_tensorboard_steps_count_from_zero_without_a_train_state(tmp_path):
    """``on_train_begin``: ``int(train_state.step) if train_state is not None else 0``: begun
    without a train state, ``update_every=2`` writes at step 2."""
    pytest.importorskip("tensorboardX")
    accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    from funcnet.training.callbacks import TensorBoard

    opt = optax.inject_hyperparams(optax.sgd)(learning_rate=0.25)
    ts = fn.TrainState.create(fn.Dense(1), opt, jax.random.key(0), jnp.ones((1, 2)))
    board = TensorBoard(tmp_path, update_every=2, summary=False)
    board.on_train_begin(None)
    board.on_steps_end(2, ts)
    board.on_train_end(ts)
    acc = accumulator.EventAccumulator(str(tmp_path)).Reload()
    assert [(e.step, e.value) for e in acc.Scalars("step/learning_rate")] == [(2, 0.25)]


def test_one_batch_spec_of_unstacked_batches_keeps_the_batch_axis():
    """``one_batch_spec``: ``cut = 1 if stacked else 0``: a plain batch's spec is its shape."""
    from funcnet.training.feed import one_batch_spec

    spec = one_batch_spec({"a": np.zeros((4, 2), np.float32)}, False)
    assert spec["a"].shape == (4, 2) and spec["a"].dtype == np.float32
    assert one_batch_spec(np.zeros((3, 4, 2), np.float32), True).shape == (4, 2)


def test_stacked_fit_defaults_to_fits_batch_size():
    """``stacked_fit(..., batch_size=32)``: the default batch size is ``fit``'s, so 64 rows
    make 2 steps per epoch."""
    assert inspect.signature(fn.fit).parameters["batch_size"].default == 32
    x = np.random.default_rng(14).normal(size=(64, 3)).astype(np.float32)
    y = (np.arange(64) % 2).astype(np.int32)
    loss = "sparse_categorical_cross_entropy"
    ts, _ = fn.stacked_fit(fn.Dense(2), optax.sgd(0.1), loss, (x, y), num_models=2)
    np.testing.assert_array_equal(ts.step, [2, 2])


def test_stack_init_refuses_no_seeds_and_an_array_of_ints():
    """``_model_keys``: ``isinstance(keys, (range, list, tuple)) and len(keys) and ...``: an
    empty list and a numpy array of ints are not seeds (an array must hold typed keys)."""
    message = r"`keys` must be a number of models N"
    x = np.ones((1, 2), np.float32)
    for keys in ([], np.array([0, 1])):
        with pytest.raises(TypeError, match=message):
            fn.stack_init(fn.Dense(1), optax.sgd(0.1), keys, x)


def test_ensemble_vote_over_sequence_outputs_counts_per_position():
    """``_combine``: ``jnp.argmax(counts, axis=-1)``: for outputs ``(rows, T, classes)`` the
    vote is taken per row and position over the classes (numpy's majority, ties to the lower
    class)."""
    x = np.random.default_rng(15).normal(size=(4, 2, 5)).astype(np.float32)
    ts = fn.stack_init(fn.Dense(3), optax.sgd(0.1), 5, x)
    outputs = np.asarray(stacked.stacked_predict(fn.Dense(3), ts.params, ts.state, x))
    assert outputs.shape == (5, 4, 2, 3)
    counts = np.eye(3, dtype=int)[outputs.argmax(-1)].sum(axis=0)  # (rows, T, classes)
    got = stacked.ensemble_predict(fn.Dense(3), ts.params, ts.state, x, combine="vote")
    np.testing.assert_array_equal(got, counts.argmax(-1))


def test_from_grain_keys_must_be_a_tuple_or_list_of_two_or_three():
    """``not isinstance(keys, (tuple, list)) or len(keys) not in (2, 3)``: either fault alone
    is refused: four names, or a string of two letters."""
    for keys in (("a", "b", "c", "d"), "xy"):
        with pytest.raises(TypeError, match="from_grain: `keys` must name 2 or 3 entries"):
            data.from_grain([], keys=keys)
    records = [{"x": np.ones((2, 1)), "y": np.arange(2)}]
    (batch,) = list(iter(data.from_grain(records, keys=["x", "y"])))
    np.testing.assert_array_equal(batch[1], [0, 1])


def test_zscore_clipper_over_a_later_axis_keeps_the_statistics_shape():
    """``_bounds``' ``x64.mean(axis=axes, keepdims=True)``: reduced over axis 1 the bounds are
    ``(N, 1)``, numpy's mean -/+ 3 standard deviations of each row."""
    x = np.random.default_rng(16).normal(size=(4, 6)).astype(np.float32)
    clipper = data.OutlierClipper.fit(x, method="zscore", axis=1)
    x64 = x.astype(np.float64)
    mean, std = x64.mean(axis=1, keepdims=True), x64.std(axis=1, keepdims=True)
    assert clipper.low.shape == clipper.high.shape == (4, 1)
    np.testing.assert_allclose(clipper.low, mean - 3 * std, rtol=1e-6)
    np.testing.assert_allclose(clipper.high, mean + 3 * std, rtol=1e-6)


def test_sharded_arrays_read_a_single_shard(tmp_path):
    """``_read``: ``first = self.shards[0][name]``: the dtype and shape come from the first
    shard, so data written as one shard reads back."""
    x, y = np.arange(6, dtype=np.float32).reshape(3, 2), np.arange(3)
    data.write_shards(tmp_path, (x, y), rows_per_shard=10)
    ((bx, by),) = list(data.ShardedArrays(tmp_path, batch_size=3))
    np.testing.assert_array_equal(bx, x)
    np.testing.assert_array_equal(by, y)


def test_tensorboard_update_every_one_and_a_summary_without_flops(tmp_path):
    """``update_every < 1`` is refused, 1 (every step) is not; the model summary is written
    ``flops=False`` (no FLOP column: no extra compilation per layer)."""
    pytest.importorskip("tensorboardX")
    accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    from funcnet.training.callbacks import TensorBoard

    with pytest.raises(ValueError, match="update_every"):
        TensorBoard(tmp_path, update_every=0)
    board = TensorBoard(tmp_path, update_every=1, model=fn.Dense(1), inputs=jnp.ones((4, 2)))
    board.on_train_begin(None)
    board.on_train_end(None)
    (event,) = (
        accumulator.EventAccumulator(str(tmp_path)).Reload().Tensors("model/summary/text_summary")
    )
    text = event.tensor_proto.string_val[0].decode()
    assert "Dense(1)" in text and "FLOPs" not in text


def test_dynamic_loss_scale_halves_down_to_a_minimum_of_one_by_default():
    """``min_scale: float = 1.0``: from ``initial_scale=2`` a non-finite gradient halves the
    scale to 1 (the default minimum), and it stays there."""
    opt = fn.dynamic_loss_scale(optax.sgd(0.1), initial_scale=2.0)
    state = opt.init({"w": jnp.zeros(2)})
    scales = []
    for _ in range(2):
        _, state = opt.update({"w": jnp.array([jnp.inf, 1.0])}, state)
        scales.append(float(state.scale))
    assert scales == [1.0, 1.0]


# ----------------------------------------------------------------------------- more survivors


def test_describe_names_each_column_of_a_continuous_2d_y():
    """``[f"y[{i}]" for i in range(extra.shape[1])]`` in ``describe``: a continuous ``y`` with
    two columns adds the columns ``y[0]`` and ``y[1]`` (one column adds ``y``), with their
    statistics."""
    x = np.arange(12.0).reshape(4, 3)
    y = np.array([[0.5, 1.0], [2.0, 3.0], [4.0, 5.5], [6.0, 7.0]])
    d = data.describe(x, y)
    assert d.columns == ("0", "1", "2", "y[0]", "y[1]")
    np.testing.assert_allclose(d.mean[3:], y.mean(0))
    np.testing.assert_allclose(d.maximum[3:], y.max(0))
    assert data.describe(x, y[:, :1]).columns == ("0", "1", "2", "y")


def test_without_a_mesh_batches_keep_an_odd_batch_size():
    """``self.parts = 1`` in ``Placement.__init__``: without a mesh a batch is split over one
    device, so ``batch_size`` is not rounded up: ``predict(batch_size=3)`` runs the model on
    3 rows at a time and ``fit`` on 9 rows takes 3 steps of 3."""
    shapes = []

    def centered(x):  # each row minus its batch's mean: the batch's rows show
        shapes.append(x.shape)
        return x - x.mean(0)

    x = np.arange(14.0, dtype=np.float32).reshape(7, 2)
    got = fn.predict(centered, (), (), x, batch_size=3)
    assert shapes == [(3, 2)]
    want = np.concatenate([b - b.mean(0) for b in (x[0:3], x[3:6])])
    np.testing.assert_allclose(got[:6], want)
    ones = np.ones((9, 2), np.float32)
    ts, _ = fn.fit(fn.Dense(1), optax.sgd(0.1), "mse", (ones, ones[:, :1]), batch_size=3)
    assert int(ts.step) == 3


def test_evaluate_places_params_by_rules_from_the_first_chunk():
    """``if i == 0 and by_rules:`` in ``make_evaluator.run``: with sharding rules the params
    are placed by them before the first chunk (arrays make one chunk), so rules naming an
    axis the mesh lacks are refused; rules that fit give the loss of the run without a mesh."""
    from funcnet.distributed.rules import Rules

    mesh = jax.make_mesh((1,), ("data",))
    model = fn.Dense(2)
    x = np.arange(12.0, dtype=np.float32).reshape(4, 3)
    y = np.ones((4, 2), np.float32)
    params, state = model.init(jax.random.key(0), x)
    with pytest.raises(ValueError, match="maps to mesh axis 'model', but the mesh has axes"):
        fn.evaluate(
            model,
            params,
            state,
            (x, y),
            loss="mse",
            mesh=mesh,
            param_sharding=Rules({"mlp": "model"}),
        )
    logs = fn.evaluate(
        model, params, state, (x, y), loss="mse", mesh=mesh, param_sharding=Rules({"mlp": "data"})
    )
    want = np.mean((x @ np.asarray(params["w"]) + np.asarray(params["b"]) - y) ** 2)
    np.testing.assert_allclose(logs["loss"], want, rtol=1e-5)


def test_stacked_fit_validates_on_an_iterable_every_epoch():
    """``if current is None:`` in ``stacked_fit``'s ``_validator.validate``: validation data
    given as batches (a function returning an iterator) is read afresh each epoch; the last
    val_loss is each final model's mse on those rows (numpy)."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(8, 3)).astype(np.float32)
    y = rng.normal(size=(8, 1)).astype(np.float32)
    xv, yv = x[:5] + 1.0, y[:5]
    calls = []

    def batches():
        calls.append(1)
        return iter([(xv[:3], yv[:3]), (xv[3:], yv[3:])])

    ts, by_batches = fn.stacked_fit(
        fn.Dense(1),
        optax.sgd(0.1),
        "mse",
        (x, y),
        validation_data=batches,
        keys=[0, 1],
        epochs=2,
        batch_size=4,
    )
    assert len(calls) >= 2  # read again for the second epoch
    assert np.isfinite(by_batches["val_loss"]).all()
    w, b = np.asarray(ts.params["w"]), np.asarray(ts.params["b"])  # (2, 3, 1), (2, 1)
    last = [np.mean((xv @ w[i] + b[i] - yv) ** 2) for i in range(2)]
    np.testing.assert_allclose(np.asarray(by_batches["val_loss"])[-1], last, rtol=1e-5)


# ----------------------------------------------------------------------------- open survivors


def test_describe_counts_classes_of_float_labels_with_integer_values():
    """``_classes``: ``(y == np.round(y)).all()``: float labels that are all whole numbers are
    classes (counted), not a continuous target; one fraction makes them continuous."""
    x = np.arange(10.0).reshape(5, 2)
    d = data.describe(x, np.array([0.0, 2.0, 1.0, 2.0, 2.0]))
    np.testing.assert_array_equal(d.classes, [0.0, 1.0, 2.0])
    np.testing.assert_array_equal(d.class_counts, [1, 1, 3])
    assert d.columns == ("0", "1")
    d = data.describe(x, np.array([0.0, 2.0, 1.5, 2.0, 2.0]))
    assert d.classes is None and d.columns == ("0", "1", "y")


def test_describe_counts_a_column_of_binary_labels_as_classes():
    """``_classes``: a ``(N, 1)`` column of 0/1 labels (binary targets) is counted as the
    labels it holds, not read as one-hot rows (``y.shape[1] > 1``), whose argmax would put
    every row in class 0."""
    x = np.arange(10.0).reshape(5, 2)
    labels = np.array([1, 0, 1, 1, 0])
    for y in (labels[:, None], labels[:, None].astype(np.float32)):
        d = data.describe(x, y)
        np.testing.assert_array_equal(d.classes, [0, 1])
        np.testing.assert_array_equal(d.class_counts, [2, 3])
    one_hot = np.eye(2)[labels]  # (5, 2) one-hot rows: the same classes
    np.testing.assert_array_equal(data.describe(x, one_hot).class_counts, [2, 3])
    d = data.describe(x, np.array([[0.5], [1.0], [2.0], [3.0], [4.0]]))  # continuous
    assert d.classes is None and d.columns == ("0", "1", "y")


def test_quantile_clipper_takes_a_high_quantile_of_one():
    """``_quantile_pair``: ``pair[1] <= 1.0``: ``threshold=(0.25, 1.0)`` clips below at numpy's
    0.25 quantile and above at the maximum (nothing)."""
    x = np.arange(9.0, dtype=np.float32)[:, None]
    clipper = data.OutlierClipper.fit(x, method="quantile", threshold=(0.25, 1.0))
    np.testing.assert_allclose(clipper.low, [[np.quantile(np.arange(9.0), 0.25)]])
    np.testing.assert_allclose(clipper.high, [[8.0]])
    np.testing.assert_array_equal(clipper.mask(x)[:, 0], np.arange(9) < 2)
    with pytest.raises(ValueError, match="method='quantile' takes `threshold`"):
        data.OutlierClipper.fit(x, method="quantile", threshold=(0.25, 1.01))


def test_stratified_split_rounds_up_the_largest_remainders_first():
    """``_controlled_round``: ``np.argsort(-remainder[c])``: a class's extra examples go to the
    parts where its exact share has the largest fraction. 7 + 3 examples into parts of 5, 3
    and 2: class 0's shares are 3.5, 2.1 and 1.4, so it gets 4, 2, 1 (not 3, 3, 1); class 1's
    1.5, 0.9, 0.6 then take the parts' remaining places: 1, 1, 1."""
    labels = np.repeat([0, 1], [7, 3])
    split = data.train_val_test_split(
        np.arange(10), val_size=3, test_size=2, stratify=labels, shuffle=False
    )
    counts = [[int(np.sum(labels[np.asarray(p)] == c)) for p in split] for c in (0, 1)]
    assert counts == [[4, 2, 1], [1, 1, 1]]
    # shuffle=False: each class's first examples go to train, then val, then test
    assert [np.asarray(p).tolist() for p in split] == [[0, 1, 2, 3, 7], [4, 5, 8], [6, 9]]


def test_path_mask_of_no_pattern_is_all_false():
    """``path_mask``: ``None`` (and an empty list of patterns) marks no leaf: nothing is
    regularized or frozen."""
    from funcnet.training.options import path_mask

    params = ({"w": jnp.ones(2), "b": jnp.ones(1)}, {"w": jnp.ones(1)})
    for pattern in (None, ()):
        assert jax.tree.leaves(path_mask(params, pattern)) == [False, False, False]
    assert jax.tree.leaves(path_mask(params, r"/w$")) == [False, True, True]


class _DuckArray:
    """An array that is neither numpy nor jax: a shape, a dtype and ``__array__``."""

    def __init__(self, a):
        self.a, self.shape, self.dtype = a, a.shape, a.dtype

    def __array__(self, dtype=None, copy=None):
        return self.a if dtype is None else self.a.astype(dtype)

    def __len__(self):
        return len(self.a)

    def __getitem__(self, i):
        return self.a[i]


def test_fit_reads_duck_typed_arrays_as_arrays():
    """``_is_array``: an object with ``shape``, ``dtype`` and ``__array__`` is an array (as
    numpy reads it), not an iterable of batches: fit on it equals fit on the numpy arrays."""
    rng = np.random.default_rng(21)
    x = rng.normal(size=(12, 3)).astype(np.float32)
    y = (np.arange(12) % 2).astype(np.int32)
    kwargs = dict(epochs=2, batch_size=4, verbose=0, key=jax.random.key(2))
    loss = "sparse_categorical_cross_entropy"
    ref, _ = fn.fit(fn.Dense(2), optax.sgd(0.1), loss, (x, y), **kwargs)
    got, _ = fn.fit(fn.Dense(2), optax.sgd(0.1), loss, (_DuckArray(x), _DuckArray(y)), **kwargs)
    assert int(got.step) == int(ref.step) == 6
    for a, b in zip(jax.tree.leaves(got.params), jax.tree.leaves(ref.params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6)


def test_sparse_labels_of_a_one_dimensional_output_get_the_losss_shape_error():
    """``batch_check``: ``isinstance(out, ShapeDtypeStruct) and out.ndim > 1``: a model whose
    output has no class axis ``(batch,)`` has no class count to check labels against; the
    loss then names the shape mismatch (the label check would call the batch axis 1 class)."""
    model = fn.serial(fn.Dense(1), fn.Reshape(()))
    x = np.ones((2, 3), np.float32)
    params, state = model.init(jax.random.key(0), x)
    assert model.apply(params, state, x)[0].shape == (2,)
    loss = "sparse_categorical_cross_entropy"
    with pytest.raises(ValueError, match=r"expected integer `targets` of shape outputs.shape"):
        fn.evaluate(model, params, state, (x, np.array([0, 5])), loss=loss)


def test_a_nan_loss_at_the_first_step_is_reported():
    """``_check_finite``: ``bad_step >= 0``: a loss that is NaN from step 0 on stops fit with
    the error naming step 0 (not only a NaN that appears later)."""
    x = np.ones((8, 3), np.float32)
    y = np.zeros((8, 1), np.float32)

    def nan_loss(outputs, targets, weights=None):
        return jnp.mean((outputs - targets) ** 2) * jnp.nan

    with pytest.raises(FloatingPointError, match=r"NaN/Inf at step 0 \(epoch 1\)"):
        fn.fit(fn.Dense(1), optax.sgd(0.1), nan_loss, (x, y), epochs=1, batch_size=4, verbose=0)


@pytest.mark.parametrize(
    "monitor, mode, min_delta, lrs",
    [
        ("loss", "auto", 0.02, [0.05, 0.3]),
        ("accuracy", "auto", 0.1, [0.05, 0.3]),
        ("accuracy", "auto", 0, [0.05, 0.3]),
        # learning rate 0: the same accuracy every epoch, an exact tie in either mode
        ("accuracy", "min", 0, [0.0, 0.3]),
    ],
)
def test_stacked_early_stopping_min_delta_as_fits(monitor, mode, min_delta, lrs):
    """``_Tracker.update``: ``values < best - min_delta`` (a loss) and ``values > best +
    min_delta`` (an accuracy): an epoch improves only by more than ``min_delta`` (an equal
    value is no improvement), as with fit's ``EarlyStopping``: each stacked model stops
    when its fit run stops, and keeps the same parameters."""
    x, y = _stop_data()
    stop = dict(monitor=monitor, mode=mode, patience=0, min_delta=min_delta)
    ts, history = fn.stacked_fit(
        fn.Dense(2), optax.inject_hyperparams(optax.sgd)(learning_rate=0.1),
        "sparse_categorical_cross_entropy", (x, y), keys=[0, 0], epochs=6, batch_size=8,
        hparams={"learning_rate": lrs}, early_stopping=stop, metrics=["accuracy"],
    )  # fmt: skip
    stopped = []
    for i, lr in enumerate(lrs):
        callback = fn.callbacks.EarlyStopping(**stop)
        ref, ref_history = fn.fit(
            fn.Dense(2), optax.sgd(lr), "sparse_categorical_cross_entropy", (x, y), epochs=6,
            batch_size=8, key=jax.random.key(0), verbose=0, callbacks=[callback],
            metrics=["accuracy"],
        )  # fmt: skip
        stopped.append(-1 if callback.stopped_epoch is None else callback.stopped_epoch)
        epochs = len(ref_history["loss"])
        np.testing.assert_allclose(
            [float(v[i]) for v in history["loss"][:epochs]], ref_history["loss"], rtol=1e-5
        )
        for a, b in zip(jax.tree.leaves(fn.model_at(ts.params, i)), jax.tree.leaves(ref.params)):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
    assert stopped[0] != -1, "min_delta stops model 0 early (the data are chosen so)"
    np.testing.assert_array_equal(history.stopped_epoch, stopped)


def _stop_data():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(16, 3)).astype(np.float32)
    return x, (x[:, 0] > 0).astype(np.int32)


def test_stacked_fit_resumed_with_another_batch_size_continues_as_fit(tmp_path):
    """``_Loop.fit``: ``skip if epoch == start``: a checkpoint resumed with a batch size that
    gives another number of steps per epoch restarts at ``divmod(step, steps)`` and skips only
    in that first epoch, as ``fit`` does: 9 rows, an epoch of 4 steps at batch size 2, then
    3 steps per epoch at 3 (epoch 1 skips 1 step, epoch 2 none)."""
    rng = np.random.default_rng(8)
    x = rng.normal(size=(9, 3)).astype(np.float32)
    y = (np.arange(9) % 2).astype(np.int32)
    loss, opt = "sparse_categorical_cross_entropy", optax.sgd(0.1)
    for batch_size, epochs in ((2, 1), (3, 3)):
        ts, _ = fn.stacked_fit(
            fn.Dense(2), opt, loss, (x, y), keys=[0], epochs=epochs, batch_size=batch_size,
            checkpoint=str(tmp_path / "stacked"),
        )  # fmt: skip
        ref, _ = fn.fit(
            fn.Dense(2), opt, loss, (x, y), epochs=epochs, batch_size=batch_size,
            key=jax.random.key(0), verbose=0, checkpoint=str(tmp_path / "fit"),
        )  # fmt: skip
    assert int(ts.step[0]) == int(ref.step) == 4 + 2 + 3
    for a, b in zip(jax.tree.leaves(fn.model_at(ts.params, 0)), jax.tree.leaves(ref.params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)


def test_clean_integer_features_report_zero_fills():
    """``clean``: ``np.zeros(...) if fill_value is None``: integer features hold no NaN, so
    an imputing strategy fills nothing and reports zeros of their dtype as the fill values."""
    x = np.array([[1, 2], [3, 4], [5, 6]], np.int32)
    out, _, report = data.clean(x, strategy="mean")
    np.testing.assert_array_equal(out, x)
    assert report.fill_values.dtype == np.int32
    np.testing.assert_array_equal(report.fill_values, [0, 0])
    assert report.rows_imputed == report.values_imputed == 0


def test_stacked_evaluate_of_a_stack_of_one_model():
    """``stacked_evaluate``'s ``for name in logs[0]``: a stack of one model (N = 1) gives its
    logs with a models axis of 1, as ``evaluate`` of that model."""
    x = np.random.default_rng(4).normal(size=(6, 3)).astype(np.float32)
    y = (np.arange(6) % 2).astype(np.int32)
    ts = stacked.stack_init(fn.Dense(2), optax.sgd(0.1), 1, jnp.zeros((1, 3)))
    loss = "sparse_categorical_cross_entropy"
    got = stacked.stacked_evaluate(fn.Dense(2), ts.params, ts.state, (x, y), loss=loss)
    params, state = fn.model_at(ts.params, 0), fn.model_at(ts.state, 0)
    want = fn.evaluate(fn.Dense(2), params, state, (x, y), loss=loss)
    assert got["loss"].shape == (1,)
    np.testing.assert_allclose(got["loss"][0], want["loss"], rtol=1e-6)


class _ForEpochOnly:
    """Batches by ``for_epoch(epoch)``, without the ``start`` argument, and a ``len``."""

    def __init__(self, batches):
        self.batches = batches

    def for_epoch(self, epoch):
        return iter(self.batches)

    def __len__(self):
        return len(self.batches)


def test_fit_resumed_over_batches_skips_the_steps_done():
    """A run resumed over an iterable (``step > 0`` in ``_Run._epochs``) counts an epoch's
    batches (``count_steps``: read once when the iterable has no ``len``) to find where to
    restart: at step 1 it skips the first batch, also for an object whose ``for_epoch``
    takes no ``start`` (``iterate``: ``if start and ...``: it is read and the batch dropped);
    at step 5 of 4-batch epochs it goes on in the second epoch, from its second batch. The
    same parameters as the uninterrupted runs."""
    rng = np.random.default_rng(9)
    x = rng.normal(size=(16, 3)).astype(np.float32)
    y = (np.arange(16) % 2).astype(np.int32)
    batches = [(x[i : i + 4], y[i : i + 4]) for i in range(0, 16, 4)]
    run = lambda batches, epochs=1, **kw: fn.fit(
        fn.Dense(2), optax.sgd(0.1), "sparse_categorical_cross_entropy", batches,
        epochs=epochs, verbose=0, **kw,
    )[0]  # fmt: skip

    def same(got, want):
        assert int(got.step) == int(want.step)
        for a, b in zip(jax.tree.leaves(got.params), jax.tree.leaves(want.params)):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)

    one_epoch, two_epochs = run(batches), run(batches, epochs=2)
    one_step = run(batches[:1])
    assert int(one_step.step) == 1
    for resumed in (_ForEpochOnly(batches), lambda: iter(batches)):
        same(run(resumed, initial_state=one_step), one_epoch)
    five_steps = run(batches[:1], epochs=5, initial_state=one_epoch)  # epochs 0-3 done
    assert int(five_steps.step) == 5
    same(run(lambda: iter(batches), epochs=2, initial_state=five_steps), two_epochs)


def test_stacked_runner_takes_an_order_of_one_batch():
    """``_check_order``: ``shape(order)[-1] < batch_size``: an order of exactly one batch is
    allowed (each step trains on every row), as two steps of the step on the whole data."""
    x = np.random.default_rng(12).normal(size=(8, 2)).astype(np.float32)
    y = x.sum(1, keepdims=True)
    opt = optax.sgd(0.1)
    step = stacked.stacked_train_step(fn.Dense(1), "mse", opt)
    ts0 = stacked.stack_init(fn.Dense(1), opt, 2, jnp.zeros((1, 2)))
    run = fn.stacked_runner(step, batch_size=8)
    ts, losses = run(jax.tree.map(jnp.copy, ts0), (x, y), jnp.arange(8), 0, 2)  # donated
    want = ts0
    for i in range(2):
        want, logs = jax.jit(step)(want, (x, y))
        np.testing.assert_allclose(losses[i], logs["loss"], rtol=1e-6)
    np.testing.assert_allclose(ts.params["w"], want.params["w"], rtol=1e-6)


def test_the_label_check_is_for_integer_labels_of_a_sparse_loss():
    """``batch_check``: ``not sparse or not _is_array(y) or not integer``: only integer labels
    of a sparse loss are range-checked against the class count. Integer 0/1 targets of a
    one-output model with a binary loss are not labels of a 1-class model, and float labels
    of a sparse loss get the loss's error, not a range error."""
    x = np.ones((4, 3), np.float32)
    params, state = fn.Dense(1).init(jax.random.key(0), x)
    y = np.array([[0], [1], [1], [0]], np.int32)
    logs = fn.evaluate(fn.Dense(1), params, state, (x, y), loss="binary_cross_entropy")
    assert np.isfinite(logs["loss"])
    params, state = fn.Dense(2).init(jax.random.key(0), x)
    with pytest.raises(TypeError, match="float"):
        fn.evaluate(
            fn.Dense(2), params, state, (x, np.array([0.0, 5.0, 1.0, 0.0], np.float32)),
            loss="sparse_categorical_cross_entropy",
        )  # fmt: skip


def test_evaluate_pads_per_timestep_weights():
    """``_masked_weights``: ``(1,) * (w.ndim - mask.ndim)``: weights with an axis beyond the
    rows (per position) are zeroed on the padded rows of the last batch; the weighted mean
    over 5 rows in batches of 2 is numpy's."""
    rng = np.random.default_rng(13)
    x = rng.normal(size=(5, 3, 2)).astype(np.float32)
    y = rng.normal(size=(5, 3, 1)).astype(np.float32)
    w = rng.uniform(size=(5, 3)).astype(np.float32)
    params, state = fn.Dense(1).init(jax.random.key(0), x)
    out = np.asarray(fn.Dense(1).apply(params, state, x)[0])
    got = fn.evaluate(fn.Dense(1), params, state, (x, y, w), loss="mse", batch_size=2)
    want = np.sum(w * ((out - y) ** 2)[..., 0]) / np.sum(w)
    np.testing.assert_allclose(got["loss"], want, rtol=1e-5)


def test_translation_default_fill_is_zero(key):
    """``random_translation(..., fill_value=0.0)``: pixels shifted in from outside are 0 by
    default, as with an explicit ``fill_value=0.0``."""
    x = jnp.ones((8, 5, 5, 1))
    y = np.asarray(jax.jit(augment.random_translation(2))(key, x))
    explicit = np.asarray(jax.jit(augment.random_translation(2, fill_value=0.0))(key, x))
    np.testing.assert_array_equal(y, explicit)
    assert set(np.unique(y)) == {0.0, 1.0}  # some images moved: zeros came in


def test_evaluate_takes_the_rules_example_from_the_inputs():
    """``make_evaluator``: ``one_batch_spec(chunk[0], ...)``: the params are placed by rules
    for the model's input (a chunk's ``x``), not its targets: a CNN with integer labels
    evaluates on a mesh with rules as without a mesh."""
    from funcnet.distributed.rules import Rules

    model = fn.serial(fn.Conv(2, 3), fn.Flatten(), fn.Dense(2))
    x = np.random.default_rng(15).normal(size=(4, 5, 5, 1)).astype(np.float32)
    y = np.array([0, 1, 1, 0], np.int32)
    params, state = model.init(jax.random.key(0), x)
    loss = "sparse_categorical_cross_entropy"
    want = fn.evaluate(model, params, state, (x, y), loss=loss)
    got = fn.evaluate(
        model, params, state, (x, y), loss=loss, mesh=jax.make_mesh((1,), ("data",)),
        param_sharding=Rules({"mlp": "data"}),
    )  # fmt: skip
    np.testing.assert_allclose(got["loss"], want["loss"], rtol=1e-6)


def test_description_prints_twenty_columns_without_a_more_line():
    """``Description.__str__``: ``len(columns) > _SHOWN``: 20 columns are all printed; the
    21st makes the "... 1 more columns" line."""
    text = str(data.describe(np.zeros((2, 20))))
    assert "more columns" not in text and "\n19 " in text
    text = str(data.describe(np.zeros((2, 21))))
    assert text.splitlines()[-1] == "... 1 more columns" and "\n20 " not in text


def test_bootstrap_orders_draw_every_row():
    """``model_orders(..., bootstrap=True)``: rows drawn with replacement from all of
    ``[0, num_rows)``: over 40 models of 10 rows every row is drawn (the chance that one
    never is: 10 * 0.9**400, below 1e-17), about as often as the others."""
    orders = np.asarray(stacked.model_orders(jax.random.key(1), 40, 10, bootstrap=True))
    counts = np.bincount(orders.ravel(), minlength=10)
    assert orders.min() == 0 and orders.max() == 9 and len(counts) == 10
    assert counts.min() > 15  # 40 expected each; a binomial(400, 0.1) is above 15 but for 1e-8


def test_train_step_places_by_rules_from_the_inputs():
    """``_on_mesh``'s ``shardings(train_state, unpack_batch(batch)[0])``: the rules place the
    state by the model's input ``x``, not the targets: a CNN with integer labels trains on a
    (one-device) mesh with rules as without a mesh."""
    from funcnet.distributed.rules import Rules

    model = fn.serial(fn.Conv(2, 3), fn.Flatten(), fn.Dense(2))
    x = np.random.default_rng(16).normal(size=(4, 5, 5, 1)).astype(np.float32)
    y = np.array([0, 1, 1, 0], np.int32)
    opt, loss = optax.sgd(0.1), "sparse_categorical_cross_entropy"
    ts = fn.TrainState.create(model, opt, jax.random.key(0), x)
    mesh = fn.distributed.make_mesh()  # Auto axes, as train_step needs
    rules = Rules({"mlp": "data"})
    a, _ = jax.jit(fn.train_step(model, loss, opt))(ts, (x, y))
    b, _ = jax.jit(fn.train_step(model, loss, opt, mesh=mesh, param_sharding=rules))(ts, (x, y))
    for u, v in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params)):
        np.testing.assert_allclose(u, v, rtol=1e-6, atol=1e-7)


def test_dynamic_loss_scale_steps_as_pytorchs_grad_scaler():
    """``dynamic_loss_scale``'s defaults follow PyTorch's ``GradScaler`` (the rule it
    names): the scale doubles after ``growth_interval=2000`` finite steps in a row (not
    before), GradScaler's growth interval and factor."""
    torch = pytest.importorskip("torch")
    scaler = torch.amp.GradScaler("cpu")
    assert scaler.get_growth_interval() == 2000
    assert scaler.get_growth_factor() == 1 / scaler.get_backoff_factor() == 2.0
    opt = fn.training.dynamic_loss_scale(optax.sgd(0.1))
    params = jnp.zeros(2)
    state = opt.init(params)

    def one(state, _):
        _, state = opt.update(jnp.ones(2), state, params)
        return state, fn.training.loss_scale_of(state)

    _, scales = jax.lax.scan(one, state, None, length=2000)
    first = float(fn.training.loss_scale_of(state))
    assert [scales[1998] / first, scales[1999] / first] == [1.0, 2.0]


def test_stacked_fit_saves_the_mean_metrics_by_name(tmp_path):
    """``_Loop._save``: ``k[: -len("_mean")]``: each checkpoint carries the epoch's mean over
    the models under the metric's own name (``loss``, ``accuracy``), which a manager's
    ``best_metric`` reads."""
    x = np.random.default_rng(17).normal(size=(8, 3)).astype(np.float32)
    y = (np.arange(8) % 2).astype(np.int32)
    _, history = fn.stacked_fit(
        fn.Dense(2), optax.sgd(0.1), "sparse_categorical_cross_entropy", (x, y), keys=[0, 1],
        epochs=2, batch_size=4, metrics=["accuracy"], checkpoint=str(tmp_path),
    )  # fmt: skip
    manager = fn.CheckpointManager(str(tmp_path))
    saved = manager.metrics(manager.latest_step())
    assert sorted(saved) == ["accuracy", "loss"]
    np.testing.assert_allclose(saved["loss"], np.mean(history["loss"][-1]), rtol=1e-6)


def test_evaluate_leaves_out_a_batch_of_zero_weights_whatever_its_outputs():
    """Rows of weight 0 never reach the mean, even when the model's outputs on them are
    infinite, whether they fill a whole batch (``logs_add`` counts it 0 times) or share one
    with weighted rows (the loss's weighted mean leaves them out): numpy's mean of the
    weighted rows."""
    model = fn.serial(fn.Dense(1), lambda z: 1.0 / z)
    x = np.array([[1.0], [2.0], [0.0], [0.0]], np.float32)  # 1 / 0: infinite outputs
    y = np.ones((4, 1), np.float32)
    params, state = model.init(jax.random.key(0), x)
    params = ({"w": jnp.ones((1, 1)), "b": jnp.zeros(1)}, *params[1:])
    out = 1.0 / x[:2, 0]
    for w in ([1.0, 1.0, 0.0, 0.0], [1.0, 0.0, 1.0, 0.0]):  # a whole batch, or in each
        x_w = x if w[1] else x[[0, 2, 1, 3]]
        logs = fn.evaluate(model, params, state, (x_w, y, np.array(w, np.float32)), loss="mse",
                           batch_size=2)  # fmt: skip
        np.testing.assert_allclose(logs["loss"], np.mean((out - 1.0) ** 2), rtol=1e-6)


def test_from_grain_defaults_to_no_prefetch():
    """``from_grain(..., prefetch=0)``: by default the batches come as the pipeline gives them
    (host arrays, no device prefetch thread)."""
    pairs = [(np.full((2, 1), float(i)), np.arange(2)) for i in range(3)]
    got = list(iter(data.from_grain(lambda epoch: pairs)))
    assert all(g[0] is p[0] and g[1] is p[1] for g, p in zip(got, pairs))


def test_fit_runs_one_epoch_over_a_one_shot_iterator():
    """One epoch over a generator (read once) trains on every batch, as over the list: the
    batch fit reads first for the input shapes goes back in front, and a new run (step 0,
    ``step > 0`` in ``_Run._epochs``) does not read the batches to count them."""
    rng = np.random.default_rng(18)
    batches = [(rng.normal(size=(4, 3)).astype(np.float32), np.arange(4) % 2) for _ in range(3)]
    run = lambda data: fn.fit(
        fn.Dense(2), optax.sgd(0.1), "sparse_categorical_cross_entropy", data, epochs=1,
        verbose=0,
    )[0]  # fmt: skip
    want, got = run(batches), run(b for b in batches)
    assert int(got.step) == int(want.step) == 3
    for a, b in zip(jax.tree.leaves(got.params), jax.tree.leaves(want.params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6)


class _SaveRecorder:
    """A checkpoint manager that records ``save`` calls (fit takes any object with ``save``)."""

    best_metric = None

    def __init__(self):
        self.saves = []

    def restore_latest(self, like=None):
        return None

    def save(self, step, tree, metrics=None):
        self.saves.append((step, metrics is not None))


@pytest.mark.parametrize("as_batches", [False, True])
def test_checkpoint_every_at_an_epoch_end_saves_once_with_the_logs(as_batches):
    """The ``last`` step of an epoch (``begin + k == self.steps`` over arrays, ``i + 1 ==
    self.steps`` over a list of batches): a ``checkpoint_every`` step that ends an epoch is
    saved once, by the epoch-end save with the logs; the others mid-epoch without. 4 steps an
    epoch, every 2 steps, 2 epochs."""
    rng = np.random.default_rng(19)
    x = rng.normal(size=(16, 3)).astype(np.float32)
    y = np.arange(16) % 2
    train = [(x[i : i + 4], y[i : i + 4]) for i in range(0, 16, 4)] if as_batches else (x, y)
    manager = _SaveRecorder()
    fn.fit(
        fn.Dense(2), optax.sgd(0.1), "sparse_categorical_cross_entropy", train, epochs=2,
        batch_size=4, verbose=0, checkpoint=manager, checkpoint_every=2,
    )  # fmt: skip
    assert manager.saves == [(2, False), (4, True), (6, False), (8, True)]


def test_stratified_split_of_three_examples_into_three_parts():
    """``_controlled_round``'s ``remainder[c, p] == 0`` (an exact share needs no rounding up):
    2 + 1 examples into parts of 1, 1 and 1 take one each."""
    labels = np.array([0, 0, 1])
    split = data.train_val_test_split(
        np.arange(3), val_size=1, test_size=1, stratify=labels, shuffle=False
    )
    parts = [np.asarray(p).tolist() for p in split]
    assert [len(p) for p in parts] == [1, 1, 1]
    assert sorted(p for part in parts for p in part) == [0, 1, 2]


def test_duplicates_of_tiny_values_and_signed_zeros():
    """``_row_keys``: ``a + 0`` makes -0.0 and 0.0 one value (a duplicate row) and changes no
    other value: rows of 1e-20 and 2e-20 stay distinct."""
    x = np.array([[1e-20], [2e-20], [0.0], [-0.0]])
    assert data.describe(x).duplicates == 1
    kept, _, dropped = data.drop_duplicates(x)
    assert dropped == 1 and kept[:, 0].tolist() == [1e-20, 2e-20, 0.0]


def test_stacked_fit_of_zero_epochs_returns_the_initial_stack():
    """``_check_args``: ``epochs`` may be 0 (``allow_zero=True``), as in ``fit``: nothing is
    trained and the history is empty."""
    x = np.ones((4, 3), np.float32)
    y = np.zeros(4, np.int32)
    ts, history = fn.stacked_fit(
        fn.Dense(2), optax.sgd(0.1), "sparse_categorical_cross_entropy", (x, y), keys=[0, 1],
        epochs=0, batch_size=4,
    )  # fmt: skip
    assert ts.step.tolist() == [0, 0] and history.epoch == []
    one, _ = fn.fit(fn.Dense(2), optax.sgd(0.1), "sparse_categorical_cross_entropy", (x, y),
                    epochs=0, batch_size=4, key=jax.random.key(0), verbose=0)  # fmt: skip
    np.testing.assert_array_equal(fn.model_at(ts.params, 0)["w"], one.params["w"])


def test_evaluate_weights_summing_below_one():
    """``logs_compute``: the loss is the weighted total over the total weight (``max(count,
    1e-30)`` only guards a total of 0): weights of 0.1 each (0.4 in all) give numpy's
    weighted mean."""
    x = np.arange(8.0, dtype=np.float32).reshape(4, 2)
    y = np.zeros((4, 1), np.float32)
    w = np.array([0.1, 0.1, 0.1, 0.1], np.float32)
    params, state = fn.Dense(1).init(jax.random.key(0), x)
    out = x @ np.asarray(params["w"]) + np.asarray(params["b"])
    logs = fn.evaluate(fn.Dense(1), params, state, (x, y, w), loss="mse")
    np.testing.assert_allclose(logs["loss"], np.average(out[:, 0] ** 2, weights=w), rtol=1e-5)


def test_description_of_one_labelled_row_is_all_one_class():
    """``Description.__str__``: ``max(total, 1)`` only guards no rows: one labelled row is
    100% of its class."""
    assert (
        str(data.describe(np.ones((1, 2)), np.array([3]))).splitlines()[-1].endswith("1 (100.0%)")
    )


def test_predict_places_by_rules_from_one_batch():
    """``predict``'s ``one_batch_spec(xb, True)``: with rules the params are placed for one
    batch of the stacked inputs: a CNN predicts on a (one-device) mesh with rules as
    without a mesh."""
    from funcnet.distributed.rules import Rules

    model = fn.serial(fn.Conv(2, 3), fn.Flatten(), fn.Dense(2))
    x = np.random.default_rng(20).normal(size=(5, 5, 5, 1)).astype(np.float32)
    params, state = model.init(jax.random.key(0), x)
    want = fn.predict(model, params, state, x, batch_size=2)
    got = fn.predict(
        model, params, state, x, batch_size=2, mesh=fn.distributed.make_mesh(),
        param_sharding=Rules({"mlp": "data"}),
    )  # fmt: skip
    np.testing.assert_allclose(got, want, rtol=1e-6)
