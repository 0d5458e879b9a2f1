"""Tests written to kill the survivors of ``tools/mutation.py`` (see ``tools/MUTATION.md``).

A second file next to ``tests/test_mutants.py``, in the same style: each test
pins one behaviour that a surviving mutant changed and no other test noticed;
its docstring names the mutated line. Numbers are checked against numpy
written here, or against the same computation done another way.
"""

import json

import jax
import numpy as np
import optax
import pytest

import funcnet as fn
from funcnet.data import (
    OutlierClipper,
    ShardedArrays,
    describe,
    from_grain,
    k_fold,
    write_shards,
)
from funcnet.training.callbacks.tensorboard import _params_table
from funcnet.training.fused import has_conv
from funcnet.training.options import update_was_finite

STRICT_DTYPES = False

# ----------------------------------------------------------------------------- data


def test_from_grain_takes_weighted_triples_and_refuses_quadruples():
    """``len(batch) in (2, 3)`` in ``grain._as_tuple``: an ``(x, y, weights)`` batch is a
    triple used as it is; a 4-tuple is refused."""
    x, y, w = np.ones((2, 3), np.float32), np.zeros(2, np.float32), np.full(2, 0.5, np.float32)
    got = list(from_grain([(x, y, w), [x, y]]))
    assert [len(b) for b in got] == [3, 2]
    np.testing.assert_array_equal(got[0][2], w)
    with pytest.raises(TypeError, match="tuple of length 4"):
        list(from_grain([(x, y, w, w)]))


def test_outlier_mask_bounds_are_inside():
    """``(x < low) | (x > high)`` in ``OutlierClipper.mask``: values equal to a bound are
    inside ``[low, high]``, not outliers (as ``apply`` leaves them unchanged)."""
    clipper = OutlierClipper(np.array([[0.0, -1.0]]), np.array([[1.0, 2.0]]))
    x = np.array([[0.0, 2.0], [1.0, -1.0], [-0.5, 2.5], [0.5, 0.0]])
    expected = (x < clipper.low) | (x > clipper.high)  # numpy, strict on both sides
    np.testing.assert_array_equal(clipper.mask(x), expected)
    assert clipper.mask(x).sum(0).tolist() == [1, 1]  # only the row -0.5, 2.5
    np.testing.assert_array_equal(clipper.apply(x[:2]), x[:2])


def test_from_grain_refuses_an_array_batch_of_two_rows():
    """``isinstance(batch, (tuple, list)) and len(batch) in (2, 3)`` in ``grain._as_tuple``:
    an array with 2 rows is not an ``(x, y)`` pair (only a tuple or list is)."""
    with pytest.raises(TypeError, match="batch 0 is a ndarray; expected a tuple"):
        list(from_grain([np.ones((2, 3), np.float32)]))


def test_outlier_quantile_pair_may_start_at_0():
    """``0.0 <= pair[0] < pair[1] <= 1.0`` in ``_quantile_pair``: a quantile pair from 0 (the
    minimum) or up to 1 (the maximum) is accepted; below 0 or above 1 is refused."""
    x = np.arange(11.0).reshape(11, 1)
    clipper = OutlierClipper.fit(x, method="quantile", threshold=(0.0, 0.9))
    np.testing.assert_allclose(clipper.low, [[0.0]])
    np.testing.assert_allclose(clipper.high, np.quantile(x, 0.9, axis=0, keepdims=True))
    clipper = OutlierClipper.fit(x, method="quantile", threshold=(0.1, 1.0))
    np.testing.assert_allclose(clipper.low, np.quantile(x, 0.1, axis=0, keepdims=True))
    np.testing.assert_allclose(clipper.high, [[10.0]])
    for bad in ((-0.1, 0.9), (0.1, 1.1)):
        with pytest.raises(ValueError, match="0 <= low < high <= 1"):
            OutlierClipper.fit(x, method="quantile", threshold=bad)


def test_outlier_zscore_threshold_below_one_is_allowed():
    """``if not k > 0 or math.isinf(k)`` in ``outliers._bounds``: any threshold above 0 works,
    also below 1 (mean -/+ 0.5 std); 0 and inf are refused."""
    x = np.random.default_rng(0).normal(size=(50, 2))
    clipper = OutlierClipper.fit(x, "zscore", threshold=0.5)
    np.testing.assert_allclose(clipper.low, [x.mean(0) - 0.5 * x.std(0)], rtol=1e-6)
    np.testing.assert_allclose(clipper.high, [x.mean(0) + 0.5 * x.std(0)], rtol=1e-6)
    for bad in (0.0, float("inf")):
        with pytest.raises(ValueError, match="takes a `threshold` > 0"):
            OutlierClipper.fit(x, "zscore", threshold=bad)


class _StateOnly:
    """Batches whose iterator has Grain's ``get_state`` but no ``set_state``."""

    def __init__(self, batches):
        self.batches = batches

    def __iter__(self):
        return _GetStateIterator(self.batches)


class _GetStateIterator:
    def __init__(self, batches):
        self.it = iter(batches)

    def __iter__(self):
        return self

    def __next__(self):
        return next(self.it)

    def get_state(self):
        return {"next_index": 0}


def test_from_grain_without_set_state_reads_and_drops_to_start():
    """``hasattr(it, "get_state") and hasattr(it, "set_state")`` in ``grain._positioned``: an
    iterator that cannot be moved (no ``set_state``) is read and the batches before ``start``
    dropped."""
    batches = [(np.full((2, 1), float(i), np.float32), np.zeros(2, np.float32)) for i in range(4)]
    got = [float(b[0][0, 0]) for b in from_grain(_StateOnly(batches)).for_epoch(0, start=2)]
    assert got == [2.0, 3.0]


def test_outlier_zscore_over_a_later_axis_keeps_the_shape():
    """``x64.mean(axis=axes, keepdims=True)`` in ``outliers._bounds``: fitted over axis 1 of
    ``(rows, features)``, the bounds are one pair per row, shaped ``(rows, 1)``."""
    x = np.array([[0.0, 1.0, 2.0, 3.0], [10.0, 10.0, 14.0, 14.0], [-1.0, 1.0, -1.0, 1.0]])
    clipper = OutlierClipper.fit(x, "zscore", threshold=2.0, axis=1)
    mean, std = x.mean(1, keepdims=True), x.std(1, keepdims=True)
    assert clipper.low.shape == (3, 1)
    np.testing.assert_allclose(clipper.low, mean - 2.0 * std)
    np.testing.assert_allclose(clipper.high, mean + 2.0 * std)


def test_stratified_k_fold_deals_classes_round_robin_from_fold_0():
    """``offset = 0`` in ``k_fold``: with ``stratify`` the first class is dealt to folds
    0, 1, 2, ... and each next class goes on where the previous stopped."""
    labels = np.array([0, 0, 0, 1, 1, 1, 1])
    folds = k_fold(7, 3, stratify=labels, shuffle=False)
    # class 0 (rows 0-2) -> folds 0, 1, 2; class 1 (rows 3-6) -> folds 0, 1, 2, 0
    assert [v.tolist() for _, v in folds] == [[0, 3, 6], [1, 4], [2, 5]]
    assert [t.tolist() for t, _ in folds] == [[1, 2, 4, 5], [0, 2, 3, 5, 6], [0, 1, 3, 4, 6]]


def test_shard_index_with_a_missing_key_is_refused(tmp_path):
    """``... or index.get("format") != _FORMAT or any(k not in index for k in keys)`` in
    ``shards._read_index``: an index with the right format but without ``"shards"`` is
    refused as not a funcnet shard index (not read until a KeyError)."""
    d = tmp_path / "shards"
    write_shards(d, (np.ones((4, 2), np.float32), np.zeros(4, np.float32)), 2)
    assert len(list(ShardedArrays(d, batch_size=2))) == 2  # the real index is read
    index = json.loads((d / "index.json").read_text())
    del index["shards"]
    (d / "index.json").write_text(json.dumps(index))
    with pytest.raises(ValueError, match="is not a funcnet shard index"):
        ShardedArrays(d, batch_size=2)


def test_describe_names_each_column_of_a_continuous_2d_y():
    """``[f"y[{i}]" for i in range(extra.shape[1])]`` in ``describe``: a continuous ``y`` with
    two columns adds the columns ``y[0]`` and ``y[1]`` (one column adds ``y``), with their
    statistics."""
    x = np.arange(12.0).reshape(4, 3)
    y = np.array([[0.5, 1.0], [2.0, 3.0], [4.0, 5.5], [6.0, 7.0]])
    d = describe(x, y)
    assert d.columns == ("0", "1", "2", "y[0]", "y[1]")
    np.testing.assert_allclose(d.mean[3:], y.mean(0))
    np.testing.assert_allclose(d.maximum[3:], y.max(0))
    assert describe(x, y[:, :1]).columns == ("0", "1", "2", "y")


def test_sharded_arrays_read_a_single_shard(tmp_path):
    """``first = self.shards[0][name]`` in ``ShardedArrays._read``: the batch's shape and
    dtype come from shard 0, the one shard there is when every row fits in it."""
    x = np.arange(10, dtype=np.int16).reshape(5, 2)
    y = np.arange(5, dtype=np.float32)
    write_shards(tmp_path / "one", (x, y), 8)
    batches = list(ShardedArrays(tmp_path / "one", batch_size=2))
    np.testing.assert_array_equal(np.concatenate([b[0] for b in batches]), x)
    np.testing.assert_array_equal(np.concatenate([b[1] for b in batches]), y)
    assert batches[0][0].dtype == np.int16 and batches[0][1].dtype == np.float32


# ----------------------------------------------------------------------------- callbacks


def test_params_table_header_comes_first():
    """``rows.insert(0, ("path", "shape", "dtype", "size"))`` in ``_params_table``: the header
    is the first line of the TensorBoard summary table, above every parameter."""
    params = {"a": np.zeros((3, 1), np.float32), "b": np.zeros((1,), np.float32)}
    lines = _params_table(params).splitlines()
    assert lines[0].split() == ["path", "shape", "dtype", "size"]
    assert [line.split()[-2:] for line in lines[1:3]] == [["float32", "3"], ["float32", "1"]]
    assert "(3, 1)" in lines[1] and "(1,)" in lines[2]
    assert lines[-1] == "params: 4"


# ----------------------------------------------------------------------------- feed


class _ByEpoch:
    """Epoch ``e``'s batches are the inputs times ``e + 1`` (so each epoch is told apart)."""

    def __init__(self, x, y):
        self.x, self.y, self.epochs = x, y, []

    def for_epoch(self, epoch):
        self.epochs.append(epoch)
        return iter([(self.x * (epoch + 1), self.y)])


def test_predict_and_evaluate_read_epoch_0_of_for_epoch():
    """``def iterate(data, where, epoch: int = 0, ...)``: ``predict`` and ``evaluate`` call
    ``iterate`` without an epoch, so an object with ``for_epoch`` gives epoch 0's batches."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=(5, 3)).astype(np.float32)
    y = rng.normal(size=(5, 2)).astype(np.float32)
    model = fn.Dense(2)
    ts = fn.TrainState.create(model, optax.sgd(0.1), jax.random.key(0), x)
    want = x @ np.asarray(ts.params["w"]) + np.asarray(ts.params["b"])  # epoch 0: x itself
    data = _ByEpoch(x, y)
    got = fn.predict(model, ts.params, ts.state, data)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    logs = fn.evaluate(model, ts.params, ts.state, data, loss="mse")
    np.testing.assert_allclose(logs["loss"], np.mean((want - y) ** 2), rtol=1e-5)
    assert data.epochs == [0, 0]


def test_predict_pads_the_last_batch_to_the_first_batch_size():
    """``np.repeat(a[-1:], pad, 0)`` in ``_predict_batches``: a smaller last batch is padded
    with copies of its last row up to the first batch's rows, so the model is traced for one
    batch shape only; the outputs are those of the real rows."""
    shapes = []

    def model(x):
        shapes.append(x.shape)  # runs at trace time: one entry per compiled shape
        return x * 2.0

    x = np.arange(27, dtype=np.float32).reshape(9, 3)
    for batches in ([x[:4], x[4:8], x[8:]], [x[:4], x[4:7]]):
        shapes.clear()
        got = fn.predict(model, (), (), iter(batches))  # an iterator: batches, not inputs
        n = sum(len(b) for b in batches)
        np.testing.assert_array_equal(got, x[:n] * 2.0)
        assert shapes == [(4, 3)]


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


def test_predict_reads_the_inputs_of_weighted_batches():
    """``len(batch) in (2, 3)`` in ``inference._batch_inputs``: an ``(x, y, weights)`` batch
    of an iterable gives ``predict`` its inputs ``x`` (as an ``(x, y)`` batch does)."""
    x = np.arange(12.0, dtype=np.float32).reshape(4, 3)
    y, w = np.zeros((4, 1), np.float32), np.ones(4, np.float32)
    got = fn.predict(lambda a: a * 2.0, (), (), iter([(x[:2], y[:2], w[:2]), (x[2:], y[2:])]))
    np.testing.assert_array_equal(got, x * 2.0)


def test_has_conv_finds_convolutions_at_any_depth():
    """``return True`` in ``fused.has_conv``: a convolution, alone or inside a combinator, is
    found (it picks the unrolled loop on CPU); a dense model has none."""
    assert has_conv(fn.Conv(4, (3, 3)))
    assert has_conv(fn.serial(fn.Conv(4, (3, 3)), fn.relu, fn.Dense(2)))
    assert not has_conv(fn.serial(fn.Dense(4), fn.relu, fn.Dense(2)))


def test_dynamic_loss_scale_starts_with_last_update_finite():
    """``last_finite=jnp.asarray(True)`` in ``dynamic_loss_scale``'s ``init``: a fresh state
    reports no skipped update, as ``optax.apply_if_finite``'s does."""
    params = {"w": np.zeros(2, np.float32)}
    state = fn.dynamic_loss_scale(optax.sgd(0.1)).init(params)
    assert bool(update_was_finite(state)) is True
    reference = optax.apply_if_finite(optax.sgd(0.1), 3).init(params)
    assert bool(update_was_finite(reference)) is True


# ----------------------------------------------------------------------------- stacked


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


# ----------------------------------------------------------------------------- step


def test_train_step_axis_name_with_loss_scale_matches_whole_batch():
    """``share * scale`` in ``step._global_gradients``: with an axis name each device
    differentiates its share of the loss times the loss scale, and the gradient is divided
    by the scale again, so a loss-scaled step split over 4 parts (vmap with an axis name, the
    one-device stand-in for pmap) equals the unscaled step on the whole batch."""
    rng = np.random.default_rng(5)
    x = rng.normal(size=(8, 3)).astype(np.float32)
    y = rng.normal(size=(8, 2)).astype(np.float32)
    model, opt = fn.Dense(2), optax.sgd(0.1)
    ts = fn.TrainState.create(model, opt, jax.random.key(0), x)
    ref_ts, ref_logs = jax.jit(fn.train_step(model, "mse", opt))(ts, (x, y))
    step = fn.train_step(model, "mse", opt, loss_scale=8.0, axis_name="i")
    split = jax.tree.map(lambda a: a.reshape(4, 2, *a.shape[1:]), (x, y))
    got_ts, logs = jax.jit(jax.vmap(step, in_axes=(None, 0), axis_name="i"))(ts, split)
    for got, want in zip(jax.tree.leaves(got_ts.params), jax.tree.leaves(ref_ts.params)):
        np.testing.assert_allclose(got[0], want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(logs["loss"][0], ref_logs["loss"], rtol=1e-6)
    # the whole-batch gradient by hand: d mean((xW + b - y)^2) / dW = 2 x^T (xW + b - y) / y.size
    w, b = np.asarray(ts.params["w"]), np.asarray(ts.params["b"])
    grad_w = 2.0 * x.T @ (x @ w + b - y) / y.size
    np.testing.assert_allclose(got_ts.params["w"][0], w - 0.1 * grad_w, rtol=1e-5, atol=1e-6)


def test_stacked_fit_trains_one_epoch_by_default():
    """``epochs: int = 1`` in ``stacked_fit``: without ``epochs`` every model trains one
    epoch (``n // batch_size`` steps) and the history has one row."""
    x = np.ones((8, 2), np.float32)
    ts, history = fn.stacked_fit(
        fn.Dense(1), optax.sgd(0.1), "mse", (x, x[:, :1]), keys=[0, 1], batch_size=4
    )
    np.testing.assert_array_equal(np.asarray(ts.step), [2, 2])
    assert np.asarray(history["loss"]).shape == (1, 2)


def test_label_range_is_checked_for_jax_array_labels():
    """``if isinstance(y, jax.Array) and not y.is_fully_addressable: return`` in
    ``batch_check``: only labels spread over several processes skip the check; labels held
    here as a jax array are checked against the model's outputs like numpy labels."""
    import jax.numpy as jnp

    x = np.ones((4, 3), np.float32)
    model = fn.Dense(3)
    params, state = model.init(jax.random.key(0), x)
    loss = "sparse_categorical_cross_entropy"
    message = r"labels must be in \[0, 3\) .* got labels in \[0, 5\]"
    for y in (np.array([0, 1, 2, 5]), jnp.array([0, 1, 2, 5])):
        with pytest.raises(ValueError, match=message):
            fn.evaluate(model, params, state, (x, y), loss=loss)
    logs = fn.evaluate(model, params, state, (x, jnp.array([0, 1, 2, 2])), loss=loss)
    assert np.isfinite(logs["loss"])


def test_stacked_fit_default_batch_size_is_32():
    """``batch_size: int = 32`` in ``stacked_fit``: 64 rows without ``batch_size`` make 2 steps
    per epoch (64 // 32)."""
    x = np.ones((64, 2), np.float32)
    ts, _ = fn.stacked_fit(fn.Dense(1), optax.sgd(0.1), "mse", (x, x[:, :1]), keys=[0])
    np.testing.assert_array_equal(np.asarray(ts.step), [2])


def test_stacked_fit_keys_list_must_be_nonempty_ints():
    """``isinstance(keys, (range, list, tuple)) and len(keys) and all(is_int(s) ...)`` in
    ``_model_keys``: an empty list or a list of non-ints is refused with the ``keys`` message
    (not handed on to ``jax.random.key``)."""
    x = np.ones((8, 2), np.float32)
    data = (x, x[:, :1])
    for keys in ([], ["a"], [0.5]):
        with pytest.raises(TypeError, match="`keys` must be a number of models N"):
            fn.stacked_fit(fn.Dense(1), optax.sgd(0.1), "mse", data, keys=keys, batch_size=4)


def test_tensorboard_counts_steps_from_0_without_a_train_state(tmp_path):
    """``int(train_state.step) if train_state is not None else 0`` in
    ``TensorBoard.on_train_begin``: begun without a train state, the step count starts at 0,
    so with ``update_every=2`` the learning rate is written at step 2 (then 4, not 3)."""
    pytest.importorskip("tensorboardX")
    event_accumulator = pytest.importorskip(
        "tensorboard.backend.event_processing.event_accumulator"
    )
    from funcnet.training.callbacks import TensorBoard

    opt = optax.inject_hyperparams(optax.sgd)(learning_rate=0.5)
    x = np.ones((2, 3), np.float32)
    ts = fn.TrainState.create(fn.Dense(1), opt, jax.random.key(0), x)
    tb = TensorBoard(tmp_path, update_every=2, summary=False)
    tb.on_train_begin(None)
    for step in (1, 2, 3, 4):
        tb.on_steps_end(step, ts)
    tb.on_train_end(ts)
    acc = event_accumulator.EventAccumulator(str(tmp_path)).Reload()
    events = acc.Scalars("step/learning_rate")
    assert [e.step for e in events] == [2, 4]
    np.testing.assert_allclose([e.value for e in events], [0.5, 0.5])


def test_ensemble_vote_per_position_of_sequence_outputs():
    """``jnp.argmax(counts, axis=-1)`` in ``stacked.infer._combine``: the vote counts each
    class on the last axis, so outputs ``(rows, positions, classes)`` give one voted class
    per row and position (numpy majority vote, ties to the smallest class)."""
    from funcnet.training.stacked import stack_init, stacked_predict

    model = fn.Dense(3)
    ts = stack_init(model, optax.sgd(0.1), 5, np.zeros((1, 4, 2), np.float32))
    x = np.random.default_rng(0).normal(size=(6, 4, 2)).astype(np.float32)
    got = np.asarray(fn.ensemble_predict(model, ts.params, ts.state, x, combine="vote"))
    votes = np.asarray(stacked_predict(model, ts.params, ts.state, x)).argmax(-1)  # (5, 6, 4)
    counts = np.stack([(votes == c).sum(0) for c in range(3)], -1)
    assert got.shape == (6, 4)
    np.testing.assert_array_equal(got, counts.argmax(-1))


def test_tensorboard_model_summary_has_no_flops_and_update_every_1_is_allowed(tmp_path):
    """``summary(self.model, self.inputs, print_fn=None, flops=False)`` in
    ``TensorBoard._summary_text``: the summary text of a given model has no FLOPs column;
    and ``update_every < 1`` in ``__init__``: ``update_every=1`` (every step) is allowed, 0
    is refused."""
    pytest.importorskip("tensorboardX")
    from funcnet.training.callbacks import TensorBoard

    x = np.ones((8, 3), np.float32)
    tb = TensorBoard(tmp_path, model=fn.Dense(1), inputs=x, update_every=1)
    text = tb._summary_text(None)
    assert text.splitlines()[0].split() == ["path", "layer", "output", "params", "state"]
    assert "FLOPs" not in text and "params: 4" in text
    with pytest.raises(ValueError, match="`update_every` must be a number of steps >= 1"):
        TensorBoard(tmp_path, update_every=0)


def test_from_grain_takes_keys_as_a_tuple_or_list():
    """``not isinstance(keys, (tuple, list)) or len(keys) not in (2, 3)`` in ``from_grain``:
    2 or 3 names as a tuple or list are taken; a string is refused."""
    x, y = np.ones((2, 3), np.float32), np.zeros(2, np.float32)
    for keys in (("x", "y"), ["x", "y"]):
        (got,) = list(from_grain([{"x": x, "y": y, "z": y}], keys=keys))
        np.testing.assert_array_equal(got[0], x)
        np.testing.assert_array_equal(got[1], y)
    with pytest.raises(TypeError, match="`keys` must name 2 or 3 entries"):
        from_grain([], keys="xy")


def test_dynamic_loss_scale_floor_defaults_to_1():
    """``min_scale: float = 1.0`` in ``dynamic_loss_scale``: by default the scale halves on
    non-finite updates down to 1, not below; an initial scale of 1 is allowed."""
    params = {"w": np.zeros(2, np.float32)}
    opt = fn.dynamic_loss_scale(optax.sgd(0.1), initial_scale=4.0)
    state = opt.init(params)
    bad = {"w": np.array([np.nan, 0.0], np.float32)}
    scales = []
    for _ in range(4):
        _, state = opt.update(bad, state, params)
        scales.append(float(state.scale))
    assert scales == [2.0, 1.0, 1.0, 1.0]
    assert float(fn.dynamic_loss_scale(optax.sgd(0.1), initial_scale=1.0).init(params).scale) == 1.0
