"""fit / evaluate / predict and the callbacks."""

import csv
import json

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import funcnet as fn
from funcnet.training.callbacks import (
    CSVLogger,
    EarlyStopping,
    JSONLogger,
    LambdaCallback,
    LearningRateScheduler,
)

STRICT_DTYPES = False  # optax's Adam is not strict-clean


def blobs(n=200, seed=0, classes=3):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n).astype(np.int32)
    centers = rng.normal(size=(classes, 5)) * 3
    x = (centers[y] + rng.normal(size=(n, 5))).astype(np.float32)
    return x, y


def mlp(classes=3):
    return fn.serial(fn.Dense(32), jax.nn.relu, fn.Dense(classes))


def test_fit_digits_mlp_reaches_accuracy():
    datasets = pytest.importorskip("sklearn.datasets")
    digits = datasets.load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    y = digits.target.astype(np.int32)
    order = np.random.default_rng(0).permutation(len(x))
    tr, te = order[:1400], order[1400:]
    model = fn.serial(fn.Dense(64), jax.nn.relu, fn.Dropout(0.1), fn.Dense(10))
    ts, history = fn.fit(
        model,
        optax.adam(3e-3),
        "sparse_categorical_cross_entropy",
        (x[tr], y[tr]),
        epochs=15,
        batch_size=64,
        metrics=["accuracy"],
        validation_data=(x[te], y[te]),
        steps_per_execution=8,
        verbose=0,
    )
    assert history["val_accuracy"][-1] > 0.95
    assert history["loss"][-1] < history["loss"][0]
    logits = fn.predict(model, ts.params, ts.state, x[te], batch_size=100)
    np.testing.assert_allclose(
        np.mean(np.argmax(logits, -1) == y[te]), history["val_accuracy"][-1], rtol=1e-6
    )


def test_steps_per_execution_matches_single_steps(key):
    x, y = blobs()
    kwargs = dict(epochs=2, batch_size=16, key=key, verbose=0)
    model = fn.serial(fn.Dense(16), fn.Dropout(0.2), jax.nn.relu, fn.Dense(3))
    a, ha = fn.fit(model, optax.adam(1e-2), "sparse_categorical_cross_entropy", (x, y), **kwargs)
    b, hb = fn.fit(
        model,
        optax.adam(1e-2),
        "sparse_categorical_cross_entropy",
        (x, y),
        steps_per_execution=5,
        **kwargs,
    )
    assert int(a.step) == int(b.step) == 2 * (200 // 16)
    jax.tree.map(
        lambda u, v: np.testing.assert_allclose(u, v, rtol=1e-5, atol=1e-6), a.params, b.params
    )
    np.testing.assert_allclose(ha["loss"], hb["loss"], rtol=1e-5)


def test_same_key_is_bit_identical_and_resume_equals_uninterrupted(key):
    x, y = blobs()
    args = (mlp(), optax.adam(1e-2), "sparse_categorical_cross_entropy", (x, y))
    a, _ = fn.fit(*args, epochs=3, batch_size=32, key=key, verbose=0)
    b, _ = fn.fit(*args, epochs=3, batch_size=32, key=key, verbose=0)
    half, _ = fn.fit(*args, epochs=1, batch_size=32, key=key, verbose=0)
    resumed, h = fn.fit(*args, epochs=3, batch_size=32, key=key, verbose=0, initial_state=half)
    assert h.epoch == [1, 2]
    leaves = [jax.tree.leaves((t.step, t.params, t.opt_state)) for t in (a, b, resumed)]
    for u, v, r in zip(*leaves):
        np.testing.assert_array_equal(u, v)
        np.testing.assert_array_equal(u, r)


def test_evaluate_streams_metrics_over_uneven_batches(key):
    sk = pytest.importorskip("sklearn.metrics")
    x, y = blobs(n=103)
    model = mlp()
    params, state = model.init(key, x)
    logs = fn.evaluate(
        model,
        params,
        state,
        (x, y),
        loss="sparse_categorical_cross_entropy",
        metrics={"acc": "accuracy", "f1": fn.metrics.f1(3, average="macro")},
        batch_size=10,
    )
    logits = np.asarray(model.apply(params, state, x)[0])
    pred = logits.argmax(-1)
    np.testing.assert_allclose(logs["acc"], sk.accuracy_score(y, pred), rtol=1e-6)
    np.testing.assert_allclose(logs["f1"], sk.f1_score(y, pred, average="macro"), rtol=1e-5)
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    np.testing.assert_allclose(logs["loss"], -logp[np.arange(103), y].mean(), rtol=1e-5)
    batches = [(x[i : i + 40], y[i : i + 40]) for i in range(0, 103, 40)]
    streamed = fn.evaluate(
        model, params, state, batches, loss="sparse_categorical_cross_entropy", metrics=["accuracy"]
    )
    np.testing.assert_allclose(streamed["loss"], logs["loss"], rtol=1e-5)
    np.testing.assert_allclose(streamed["accuracy"], logs["acc"], rtol=1e-6)


def test_fit_on_an_iterable_and_sample_weights(key):
    x, y = blobs()
    batches = [(x[i : i + 50], y[i : i + 50]) for i in range(0, 200, 50)]
    ts, h = fn.fit(
        mlp(),
        optax.adam(1e-2),
        "sparse_categorical_cross_entropy",
        batches,
        epochs=3,
        key=key,
        verbose=0,
        metrics=["accuracy"],
    )
    assert int(ts.step) == 12 and len(h["loss"]) == 3
    gen = (b for b in batches)
    with pytest.raises(ValueError, match="one-shot iterator is used up after one epoch"):
        fn.fit(
            mlp(), optax.adam(1e-2), "sparse_categorical_cross_entropy", gen, epochs=2, verbose=0
        )
    w = np.ones(200, np.float32)
    ts, h = fn.fit(
        mlp(),
        optax.sgd(0.1),
        "sparse_categorical_cross_entropy",
        (x, y, w),
        epochs=1,
        batch_size=20,
        key=key,
        verbose=0,
        validation_split=0.2,
    )
    assert "val_loss" in h.history


def test_bad_data_errors(key):
    x, y = blobs()
    args = (mlp(), optax.adam(1e-2), "sparse_categorical_cross_entropy")
    with pytest.raises(ValueError, match=r"different numbers of examples: .*200.*199"):
        fn.fit(*args, (x, y[:-1]), verbose=0)
    with pytest.raises(ValueError, match="the dataset is empty"):
        fn.fit(*args, (x[:0], y[:0]), verbose=0)
    bad = x.copy()
    bad[7, 2] = np.nan
    with pytest.raises(
        ValueError, match=r"contains NaN or Inf in 1 example\(s\) \(first at index 7"
    ):
        fn.fit(*args, (bad, y), verbose=0)
    with pytest.raises(ValueError, match=r"labels must be in \[0, 3\) .* got labels in \[0, 5\]"):
        fn.fit(*args, (x, np.where(y == 2, 5, y).astype(np.int32)), verbose=0)
    with pytest.raises(ValueError, match="`batch_size=500` is larger than the 200 training"):
        fn.fit(*args, (x, y), batch_size=500, verbose=0)
    with pytest.raises(ValueError, match=r"`validation_split=1\.0` of 200 examples"):
        fn.fit(*args, (x, y), validation_split=1.0, verbose=0)
    with pytest.raises(ValueError, match="not both"):
        fn.fit(*args, (x, y), validation_split=0.1, validation_data=(x, y), verbose=0)
    with pytest.raises(ValueError, match="`epochs` must be an int >= 0"):
        fn.fit(*args, (x, y), epochs=-1, verbose=0)
    with pytest.raises(TypeError, match="expected arrays `\\(x, y\\)`"):
        fn.fit(*args, 3, verbose=0)


def test_every_labelled_input_is_checked(key):
    """Out-of-range labels, string labels and Python lists are named wherever they come in:
    evaluate's arrays and batches, fit's validation data and fit's batches."""
    x, y = blobs(40)
    model, loss = mlp(), "sparse_categorical_cross_entropy"
    params, state = model.init(key, x[:1])
    fit = lambda data, **kw: fn.fit(
        model, optax.sgd(0.1), loss, data, batch_size=8, verbose=0, **kw
    )
    out_of_range = (
        r"{}: labels must be in \[0, 3\) for a model with 3 outputs, got labels in \[{}\]"
    )
    with pytest.raises(ValueError, match=out_of_range.format("evaluate", "10, 12")):
        fn.evaluate(model, params, state, (x, y + 10), loss=loss, metrics=["accuracy"])
    with pytest.raises(ValueError, match=out_of_range.format("evaluate", "-1, 1")):
        fn.evaluate(model, params, state, [(x, y), (x, y - 1)], loss=loss)
    with pytest.raises(ValueError, match=out_of_range.format(r"fit \(validation_data\)", "0, 3")):
        fit((x, y), validation_data=(x, np.where(y == 2, 3, y)))
    with pytest.raises(
        ValueError, match=out_of_range.format(r"fit \(batch 2 of epoch 1\)", "3, 5")
    ):
        fit([(x[:8], y[:8]), (x[8:16], y[8:16] + 3)])
    names = np.array(["cat", "dog", "emu"])[y]
    strings = r"{}: \['y'\] has dtype <U3 .*`funcnet.data.encode_labels\(y\)`"
    with pytest.raises(TypeError, match=strings.format("fit")):
        fit((x, names))
    with pytest.raises(TypeError, match=strings.format("evaluate")):
        fn.evaluate(model, params, state, [(x, names)], loss=loss)
    with pytest.raises(TypeError, match=r"fit: `x` is a Python list of numbers, not an array"):
        fit((x.tolist(), y))
    with pytest.raises(TypeError, match=r"fit: `y` is a Python list .*np.asarray\(y"):
        fit((x, y.tolist()))
    with pytest.raises(TypeError, match=r"fit: `y` is a Python number, not an array"):
        fit((x, 3))
    # a sequence model's classes are its last axis, not its time axis (7 here)
    seq = fn.serial(fn.Dense(3))
    xs = np.ones((4, 7, 5), np.float32)
    p_seq, s_seq = seq.init(key, xs[:1])
    with pytest.raises(ValueError, match=out_of_range.format("evaluate", "0, 5")):
        labels = np.tile(np.arange(7) % 6, (4, 1)).astype(np.int32)
        fn.evaluate(seq, p_seq, s_seq, (xs, labels), loss=loss)
    # in range: accepted, and a multi-input x (a list of arrays) is still arrays
    fn.evaluate(model, params, state, (x, y), loss=loss)
    two = fn.serial(lambda xs: jnp.concatenate(xs, -1), mlp())
    p2, s2 = two.init(key, [x[:1, :2], x[:1, 2:]])
    fn.evaluate(two, p2, s2, ([x[:, :2], x[:, 2:]], y), loss=loss)


def test_nonfinite_step_is_reported(key):
    x, y = blobs()

    def broken_loss(outputs, targets):
        return jnp.log(-jnp.abs(outputs).sum() - 1.0)

    with pytest.raises(FloatingPointError, match=r"NaN/Inf at step 0 \(epoch 1\)"):
        fn.fit(mlp(), optax.sgd(0.1), broken_loss, (x, y), batch_size=50, verbose=0)
    # an iterable of batches, the third one with a NaN: the step is named
    batches = [(x[i : i + 50].copy(), y[i : i + 50]) for i in range(0, 200, 50)]
    batches[2][0][7, 1] = np.nan
    for guard in (False, "report"):
        with pytest.raises(FloatingPointError, match=r"NaN/Inf at step 2 \(epoch 1\)"):
            fn.fit(
                mlp(),
                optax.sgd(0.1),
                "sparse_categorical_cross_entropy",
                batches,
                verbose=0,
                nan_guard=guard,
            )


def test_diverged_model_is_not_checkpointed(tmp_path):
    x, y = blobs()

    def broken_loss(outputs, targets):
        return jnp.log(-jnp.abs(outputs).sum() - 1.0)

    with pytest.raises(FloatingPointError, match=r"NaN/Inf at step 0"):
        fn.fit(
            mlp(),
            optax.sgd(0.1),
            broken_loss,
            (x, y),
            batch_size=50,
            verbose=0,
            checkpoint=str(tmp_path),
            checkpoint_every=1,
        )
    assert fn.CheckpointManager(str(tmp_path)).latest_step() is None


def test_best_metric_that_is_never_logged_fails_before_training(tmp_path):
    x, y = blobs()
    manager = fn.CheckpointManager(str(tmp_path), best_metric="val_accuracy", best_mode="max")
    with pytest.raises(ValueError, match=r"best_metric='val_accuracy'.*\['loss', 'accuracy'\]"):
        fn.fit(
            mlp(),
            optax.sgd(0.1),
            "sparse_categorical_cross_entropy",
            (x, y),
            metrics=["accuracy"],
            checkpoint=manager,
            verbose=0,
        )
    assert manager.latest_step() is None
    fn.fit(
        mlp(),
        optax.sgd(0.1),
        "sparse_categorical_cross_entropy",
        (x, y),
        epochs=1,
        metrics=["accuracy"],
        validation_split=0.2,
        checkpoint=manager,
        verbose=0,
    )
    assert manager.best_step() is not None


def test_callback_returning_something_else_than_a_state_fails_clearly():
    x, y = blobs()
    bad = fn.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs, ts: (ts, logs))
    with pytest.raises(TypeError, match=r"LambdaCallback.on_epoch_end returned tuple"):
        fn.fit(
            mlp(),
            optax.sgd(0.1),
            "sparse_categorical_cross_entropy",
            (x, y),
            epochs=1,
            callbacks=[bad],
            verbose=0,
        )


def test_callbacks(tmp_path, key, capsys):
    x, y = blobs()
    seen = []
    opt = optax.inject_hyperparams(optax.adam)(learning_rate=1e-2)
    stop = EarlyStopping("val_loss", patience=0, min_delta=10.0, restore_best=True)
    ts, h = fn.fit(
        mlp(),
        opt,
        "sparse_categorical_cross_entropy",
        (x, y),
        epochs=5,
        batch_size=20,
        validation_split=0.2,
        key=key,
        verbose=2,
        callbacks=[
            LearningRateScheduler(lambda epoch, lr: lr * 0.5),
            CSVLogger(tmp_path / "log.csv"),
            JSONLogger(tmp_path / "log.jsonl"),
            LambdaCallback(on_epoch_end=lambda e, logs, ts: seen.append(e)),
            stop,
        ],
    )
    # min_delta=10 means nothing after the first epoch counts as an improvement
    assert stop.best_epoch == 0 and stop.stopped_epoch == 1 and seen == [0, 1]
    np.testing.assert_allclose(h["learning_rate"], [1e-2, 5e-3], rtol=1e-6)  # used in the epoch
    assert int(ts.step) == 8  # restored to the end of epoch 0 (160 examples / 20)
    rows = list(csv.DictReader((tmp_path / "log.csv").read_text().splitlines()))
    assert [int(r["epoch"]) for r in rows] == [0, 1] and "val_loss" in rows[0]
    lines = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert lines[1]["loss"] == pytest.approx(h["loss"][1])
    assert "epoch 2/5" in capsys.readouterr().out
    with pytest.raises(KeyError, match="monitored value 'val_acc' is not in the logs"):
        fn.fit(
            mlp(),
            optax.adam(1e-2),
            "sparse_categorical_cross_entropy",
            (x, y),
            batch_size=50,
            verbose=0,
            callbacks=[EarlyStopping("val_acc")],
        )
    with pytest.raises(TypeError, match="inject_hyperparams"):
        fn.fit(
            mlp(),
            optax.adam(1e-2),
            "sparse_categorical_cross_entropy",
            (x, y),
            batch_size=50,
            verbose=0,
            callbacks=[LearningRateScheduler(lambda e, lr: lr)],
        )


def test_history_plot(tmp_path, key):
    pytest.importorskip("matplotlib")
    x, y = blobs()
    _, h = fn.fit(
        mlp(),
        optax.adam(1e-2),
        "sparse_categorical_cross_entropy",
        (x, y),
        epochs=2,
        batch_size=50,
        validation_split=0.2,
        metrics=["accuracy"],
        verbose=0,
    )
    path = h.plot(str(tmp_path / "curves.png"))
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_wrong_target_shape_and_logged_schedule(key):
    rng = np.random.default_rng(0)
    x, y = rng.random((64, 3), np.float32), rng.random(64, np.float32)
    with pytest.raises(
        ValueError, match=r"must have the same shape, got outputs \(32, 1\) and tar"
    ):
        fn.fit(fn.Dense(1), optax.sgd(0.1), "mse", (x, y), verbose=0)
    schedule = optax.exponential_decay(0.1, transition_steps=2, decay_rate=0.5)
    opt = optax.inject_hyperparams(optax.sgd)(learning_rate=schedule)
    _, h = fn.fit(fn.Dense(1), opt, "mse", (x, y[:, None]), epochs=3, batch_size=32, verbose=0)
    # the value after each epoch's last update (2 steps per epoch)
    np.testing.assert_allclose(h["learning_rate"], [schedule(s) for s in (1, 3, 5)], rtol=1e-5)


# ----------------------------------------------------------------------------- data order


def _rows_seen(n):
    """A metric counting how often each row (its index is the target) was seen."""
    return fn.metrics.Metric(
        init=lambda: jnp.zeros(n, jnp.int32),
        update=lambda s, out, y, weights=None: (
            s
            + jnp.zeros(n, jnp.int32)
            .at[y.astype(jnp.int32)]
            .add(jnp.ones(y.shape, jnp.int32) if weights is None else weights.astype(jnp.int32))
        ),
        merge=lambda a, b: a + b,
        compute=lambda s: s,
        name="seen",
    )


def _first_batch(batch):
    """A metric keeping the targets (row indices) of the first batch it merges."""
    return fn.metrics.Metric(
        init=lambda: (jnp.full(batch, -1.0), jnp.zeros((), bool)),
        update=lambda s, out, y, weights=None: (y.astype(jnp.float32), jnp.ones((), bool)),
        merge=lambda a, b: jax.tree.map(lambda u, v: jnp.where(a[1], u, v), a, b),
        compute=lambda s: s[0],
        name="first",
    )


def _index_data(n):
    x = np.random.default_rng(0).normal(size=(n, 2)).astype(np.float32)
    return x, np.arange(n, dtype=np.float32)


def test_validation_split_is_the_last_rows_and_disjoint_from_training():
    x, y = _index_data(40)
    model = fn.serial(fn.Dense(1), lambda a: a[:, 0])
    _, h = fn.fit(
        model,
        optax.sgd(0.0),
        "mse",
        (x, y),
        epochs=2,
        batch_size=10,
        validation_split=0.25,
        metrics={"seen": _rows_seen(40)},
        verbose=0,
    )
    expect_train = np.r_[np.ones(30), np.zeros(10)]  # 3 steps of 10 cover the 30 rows once
    for epoch in range(2):
        np.testing.assert_array_equal(h["seen"][epoch], expect_train)
        np.testing.assert_array_equal(h["val_seen"][epoch], 1 - expect_train)


def test_each_epoch_draws_a_new_permutation_and_shuffle_false_keeps_the_order():
    x, y = _index_data(64)
    model = fn.serial(fn.Dense(1), lambda a: a[:, 0])

    def first_batches(**options):
        _, h = fn.fit(model, optax.sgd(0.0), "mse", (x, y), batch_size=16, verbose=0,
                      metrics={"first": _first_batch(16)}, **options)  # fmt: skip
        return [np.asarray(f) for f in h["first"]]

    firsts = first_batches(epochs=3)
    assert all(len(set(f.tolist())) == 16 for f in firsts)  # a batch has distinct rows
    for a, b in [(0, 1), (1, 2), (0, 2)]:
        assert set(firsts[a].tolist()) != set(firsts[b].tolist())
    assert firsts[0].tolist() != list(range(16))
    for f in first_batches(epochs=2, shuffle=False):
        np.testing.assert_array_equal(f, np.arange(16))
    np.testing.assert_array_equal(np.stack(first_batches(epochs=3)), np.stack(firsts))  # same key


# ----------------------------------------------------------------------------- early stopping


@pytest.mark.parametrize(
    "monitor, mode",
    [
        ("val_accuracy", "max"),
        ("acc", "max"),
        ("val_f1_macro", "max"),
        ("val_r2", "max"),
        ("val_auc", "max"),
        ("val_loss", "min"),
        ("loss", "min"),
        ("val_mae", "min"),
    ],
)
def test_early_stopping_auto_mode(monitor, mode):
    assert EarlyStopping(monitor).mode == mode


@pytest.mark.parametrize("patience", [0, 1, 3])
def test_early_stopping_tolerates_patience_epochs_without_improvement(patience):
    values = [3.0, 2.0, 1.0] + [1.5] * 10  # best at epoch 2, then no improvement
    stop = EarlyStopping("val_loss", patience=patience)
    for epoch, v in enumerate(values):
        stop.on_epoch_end(epoch, {"val_loss": v}, None)
        if stop.stop_training:
            break
    assert (stop.best, stop.best_epoch) == (1.0, 2)
    assert stop.stopped_epoch == 2 + patience + 1  # the (patience+1)-th epoch without improvement
    up = EarlyStopping("val_accuracy", patience=patience, min_delta=0.1)
    for epoch, v in enumerate([0.5, 0.7, 0.75, 0.78, 0.79, 0.85, 0.9, 0.92]):
        up.on_epoch_end(epoch, {"val_accuracy": v}, None)
        if up.stop_training:
            break
    # +0.05 steps are below min_delta; only patience 3 waits long enough to reach 0.85
    assert up.best == (0.85 if patience >= 3 else 0.7)


def _watch(stop, values, monitor="val_loss", state=None):
    stop.on_train_begin(state)
    for epoch, v in enumerate(values):
        stop.on_epoch_end(epoch, {monitor: v}, state)
        if stop.stop_training:
            break
    return stop


def test_early_stopping_details():
    with pytest.raises(ValueError, match=r"must be >= 0, got -1 and 0\.0"):
        EarlyStopping(patience=-1)
    with pytest.raises(ValueError, match=r"must be >= 0, got 0 and -0\.5"):
        EarlyStopping(min_delta=-0.5)
    # an equal value is no improvement, nor is NaN (it counts against patience)
    assert _watch(EarlyStopping(), [1.0, 1.0]).stopped_epoch == 1
    stop = _watch(EarlyStopping(patience=1), [np.nan, 1.0, 2.0, 3.0])
    assert (stop.best_epoch, stop.stopped_epoch) == (1, 3)
    # no copy of the state is kept unless restore_best asks for it
    state = {"w": np.ones(3)}
    stop = _watch(EarlyStopping(), [1.0, 0.5], state=state)
    assert stop.best_state is None and stop.on_train_end(state) is None
    stop = _watch(EarlyStopping(restore_best=True), [1.0, 0.5], state=state)
    np.testing.assert_array_equal(stop.on_train_end(state)["w"], state["w"])
    # one instance serves several fits: each starts fresh
    stop = _watch(EarlyStopping(), [1.0, 2.0])
    assert (stop.best, stop.stopped_epoch) == (1.0, 1)
    stop = _watch(stop, [5.0, 4.0, 3.0])
    assert (stop.best, stop.best_epoch, stop.stopped_epoch, stop.stop_training) == (
        3.0, 2, None, False
    )  # fmt: skip


def test_learning_rate_scheduler_gets_the_next_epoch():
    opt = optax.inject_hyperparams(optax.sgd)(learning_rate=0.1)
    params = {"w": jnp.ones(2)}
    ts = fn.training.TrainState(jnp.array(0), params, (), opt.init(params), None)
    calls = []
    sched = LearningRateScheduler(lambda epoch, lr: calls.append((epoch, lr)) or lr * 0.5)
    for epoch in range(3):
        ts = sched.on_epoch_end(epoch, {}, ts)
    assert [e for e, _ in calls] == [1, 2, 3]
    np.testing.assert_allclose([lr for _, lr in calls], [0.1, 0.05, 0.025], rtol=1e-6)


@pytest.mark.parametrize("logger", [CSVLogger, JSONLogger])
def test_loggers_rewrite_unless_appending(tmp_path, logger):
    path = tmp_path / "log"
    # the default rewrites: a second run on the same file holds only its own epoch
    for append, expected in ((False, [0]), (False, [0]), (True, [0, 0])):
        log = logger(path, append=append) if append else logger(path)
        log.on_train_begin(None)
        log.on_epoch_end(0, {"loss": np.float32(1.5)}, None)
        text = path.read_text().splitlines()
        epochs = (
            [int(r["epoch"]) for r in csv.DictReader(text)]
            if logger is CSVLogger
            else [json.loads(line)["epoch"] for line in text]
        )
        assert epochs == expected


def test_restore_best_returns_the_best_val_accuracy_epoch_with_patience(key):
    x, y = blobs(300)
    opt = optax.inject_hyperparams(optax.adam)(learning_rate=2e-2)
    seen = {}

    def record(epoch, logs, ts):
        seen[epoch] = jax.device_get(ts.params)

    def sabotage(epoch, logs, ts):  # after epoch 2: random params, no more learning
        if epoch != 2:
            return None
        noisy = jax.tree.map(lambda p: 3.0 * jax.random.normal(key, p.shape), ts.params)
        hyper = {**ts.opt_state.hyperparams, "learning_rate": jnp.zeros(())}
        return ts._replace(params=noisy, opt_state=ts.opt_state._replace(hyperparams=hyper))

    stop = EarlyStopping("val_accuracy", patience=2, restore_best=True)
    ts, h = fn.fit(
        mlp(),
        opt,
        "sparse_categorical_cross_entropy",
        (x, y),
        epochs=20,
        batch_size=30,
        validation_split=0.3,
        metrics=["accuracy"],
        verbose=0,
        callbacks=[
            LambdaCallback(on_epoch_end=record),
            LambdaCallback(on_epoch_end=sabotage),
            stop,
        ],
    )
    acc = h["val_accuracy"]
    best = int(np.argmax(acc))
    assert best <= 2 and max(acc[3:]) < acc[best] and stop.best_epoch == best
    assert stop.stopped_epoch == best + 3 and len(acc) == best + 4
    chex.assert_trees_all_equal(jax.device_get(ts.params), seen[best])


def test_fit_with_sample_weights_takes_the_weighted_gradient(key):
    """One full-batch step of fit on arrays with uneven weights is SGD on the weighted mean."""
    x, y = blobs(40)
    w = np.linspace(0.0, 2.0, 40).astype(np.float32)
    model = mlp()
    loss = "sparse_categorical_cross_entropy"
    ts, _ = fn.fit(model, optax.sgd(0.5), loss, (x, y, w), batch_size=40, key=key, verbose=0)
    params, state = model.init(fn.training.keys.init_key(key), x[:1])

    def weighted(p):
        logits, _ = model.apply(p, state, x)
        return jnp.sum(w * optax.softmax_cross_entropy_with_integer_labels(logits, y)) / w.sum()

    expected = jax.tree.map(lambda p, g: p - 0.5 * g, params, jax.grad(weighted)(params))
    chex.assert_trees_all_close(ts.params, expected, rtol=1e-5, atol=1e-6)


def test_integer_targets_of_other_losses_are_not_class_labels(key):
    """Only a sparse loss reads integer targets as class indices: a one-output model with 0/1
    integer targets and binary cross-entropy is fine (no "labels must be in [0, 1)")."""
    x, y = blobs(40, classes=2)
    model = fn.serial(fn.Dense(8), jax.nn.relu, fn.Dense(1))
    params, state = model.init(key, x[:1])
    logs = fn.evaluate(model, params, state, (x, y[:, None]), loss="binary_cross_entropy")
    assert np.isfinite(logs["loss"])


@pytest.mark.parametrize("verbose", [0, 1, 2])
def test_verbose_levels(capsys, verbose):
    """0: silent; 1: a progress bar (tqdm, on stderr) and a line per epoch; 2: the line only.

    Captured stderr is not a terminal, so no bar is drawn here (see tests/test_progress.py).
    """
    x, y = blobs(40)
    loss = "sparse_categorical_cross_entropy"
    fn.fit(mlp(), optax.sgd(0.1), loss, (x, y), epochs=2, batch_size=8, verbose=verbose)
    out, err = capsys.readouterr()
    assert ("epoch 2/2  loss" in out) == (verbose > 0)
    assert "step" not in err


def test_a_single_out_of_range_label_is_caught(key):
    x, y = blobs(8)
    model = mlp()
    params, state = model.init(key, x[:1])
    loss = "sparse_categorical_cross_entropy"
    with pytest.raises(ValueError, match=r"got labels in \[7, 7\]"):
        fn.evaluate(model, params, state, (x[:1], y[:1] * 0 + 7), loss=loss)


def test_checkpoint_every_saves_mid_epoch_over_an_iterable(tmp_path, key):
    """The first epoch over an iterable does not know its length yet; mid-epoch saves happen
    all the same, and the epoch-end save (with the logs) comes last."""
    x, y = blobs(32)
    batches = [(x[i : i + 8], y[i : i + 8]) for i in range(0, 32, 8)]
    manager = fn.CheckpointManager(tmp_path, max_to_keep=None)
    loss = "sparse_categorical_cross_entropy"
    fn.fit(mlp(), optax.sgd(0.1), loss, batches, checkpoint=manager, checkpoint_every=2, verbose=0)
    assert manager.all_steps() == [2, 4]


def test_nan_guard_skip_skips_and_counts_nonfinite_steps(key):
    """fit(nan_guard="skip"): a NaN batch's update is skipped (with SGD, the params are those of
    training on the other batches), its loss and metrics left out, and the count logged."""
    x, y = blobs(200)
    batches = [(x[i : i + 50].copy(), y[i : i + 50]) for i in range(0, 200, 50)]
    bad = [(b[0].copy(), b[1]) for b in batches]
    bad[2][0][7, 1] = np.nan
    loss = "sparse_categorical_cross_entropy"
    kw = dict(epochs=2, key=key, verbose=0, metrics=["accuracy"])
    ts, h = fn.fit(mlp(), optax.sgd(0.1), loss, bad, nan_guard="skip", **kw)
    good = batches[:2] + batches[3:]
    ref, h_ref = fn.fit(mlp(), optax.sgd(0.1), loss, good, **kw)
    chex.assert_trees_all_close(ts.params, ref.params, rtol=1e-6, atol=1e-7)
    assert h["skipped_steps"] == [1, 1] and "skipped_steps" not in h_ref.history
    np.testing.assert_allclose(h["loss"], h_ref["loss"], rtol=1e-6)
    np.testing.assert_allclose(h["accuracy"], h_ref["accuracy"], rtol=1e-6)


def test_validation_split_of_one_example_and_a_tuple_that_is_not_arrays(key):
    x, y = blobs(20)
    loss = "sparse_categorical_cross_entropy"
    _, h = fn.fit(
        mlp(), optax.sgd(0.1), loss, (x, y), batch_size=8, validation_split=0.05, verbose=0
    )
    assert len(h["val_loss"]) == 1  # round(20 * 0.05) = 1 validation example is enough
    with pytest.raises(TypeError, match=r"expected a batch `\(inputs, targets\)`"):
        fn.fit(mlp(), optax.sgd(0.1), loss, (x, "labels"), verbose=0)


def test_history_repr_shows_the_last_epoch():
    from funcnet.training.history import History

    h = History()
    for epoch, loss in enumerate([2.0, 1.5, 1.25]):
        h.append(epoch, {"loss": loss})
    assert repr(h) == "History(epochs=3, last={'loss': 1.25})"


def test_objects_with_some_array_attributes_are_not_arrays():
    from types import SimpleNamespace

    from funcnet.training.feed import is_arrays

    x = np.zeros((4, 2), np.float32)
    assert is_arrays((x, x))
    for partial in (SimpleNamespace(shape=(4,)), SimpleNamespace(shape=(4,), dtype=np.float32)):
        assert not is_arrays((x, partial))


def test_checkpoint_every_saves_mid_epoch_after_resuming_over_an_iterable(tmp_path, key):
    """A resumed run over an iterable counts its batches first; its epochs then save mid-epoch
    too (the epoch-end save with the logs stays the last of each epoch)."""
    x, y = blobs(32)
    batches = [(x[i : i + 8], y[i : i + 8]) for i in range(0, 32, 8)]
    loss = "sparse_categorical_cross_entropy"
    manager = fn.CheckpointManager(tmp_path, max_to_keep=None)
    kw = dict(checkpoint=manager, checkpoint_every=2, key=key, verbose=0)
    fn.fit(mlp(), optax.sgd(0.1), loss, batches, epochs=1, **kw)
    fn.fit(mlp(), optax.sgd(0.1), loss, batches, epochs=2, **kw)  # resumes at step 4
    assert manager.all_steps() == [2, 4, 6, 8]


def test_evaluate_over_batches_applies_the_model_to_each_whole_batch(key):
    """An iterable's batches are evaluated as batches (a model that looks across the batch
    sees all its rows), the same as by hand."""
    x, y = blobs(16)
    y = y[:, None].astype(np.float32)
    center = fn.serial(lambda v: v - v.mean(axis=0, keepdims=True), lambda v: v[:, :1])
    batches = [(x[:8], y[:8]), (x[8:], y[8:])]
    params, state = center.init(key, x[:1])
    logs = fn.evaluate(center, params, state, batches, loss="mse")
    by_hand = [np.mean((b[0][:, :1] - b[0][:, :1].mean(0) - b[1]) ** 2) for b in batches]
    np.testing.assert_allclose(logs["loss"], np.mean(by_hand), rtol=1e-5)


def test_list_instead_of_tuple_and_forgotten_labels_name_fit_and_the_fix(key):
    x, y = blobs(40)
    model, loss = mlp(), "sparse_categorical_cross_entropy"
    args = (model, optax.adam(1e-2), loss)
    listed = (
        r"^{}: got a list of {} arrays; a list is read as a sequence of batches, so pass the "
        r"arrays as a tuple `{}` instead of a list: `{}`, or `tuple\(data\)`\.$"
    )
    with pytest.raises(
        TypeError,
        match=listed.format(
            "fit", 2, r"\(x, y\)", r"fit\(model, optimizer, loss, \(x, y\), \.\.\.\)"
        ),
    ):
        fn.fit(*args, [x, y], verbose=0)
    with pytest.raises(TypeError, match=r"^fit: got a list of 3 arrays.*`\(x, y, weights\)`"):
        fn.fit(*args, [x, y, np.ones(40, np.float32)], verbose=0)
    with pytest.raises(TypeError, match=r"^fit: got a list of 2 arrays"):
        fn.fit(*args, [x, y], validation_split=0.2, verbose=0)
    bare = (
        r"^{}: got a single array of shape \(40, 5\) where inputs and targets were expected: "
        r"the targets are missing\. Pass them together as a tuple, e.g\. `{}`; for outputs "
        r"without targets use `predict\(model, params, state, x\)`\.$"
    )
    with pytest.raises(
        TypeError, match=bare.format("fit", r"fit\(model, optimizer, loss, \(x, y\), \.\.\.\)")
    ):
        fn.fit(*args, x, verbose=0)
    with pytest.raises(TypeError, match=r"^fit: got a single array of shape \(40, 5\)"):
        fn.fit(*args, jnp.asarray(x), verbose=0)
    with pytest.raises(
        TypeError,
        match=bare.format(r"fit \(validation_data\)", r"fit\(\.\.\., validation_data=\(x, y\)\)"),
    ):
        fn.fit(*args, (x, y), validation_data=x, verbose=0)
    params, state = model.init(key, x[:1])
    with pytest.raises(
        TypeError,
        match=listed.format(
            "evaluate", 2, r"\(x, y\)", r"evaluate\(model, params, state, \(x, y\), \.\.\.\)"
        ),
    ):
        fn.evaluate(model, params, state, [x, y], loss=loss)
    # A list of batches is still a list of batches.
    _, h = fn.fit(*args, [(x[:20], y[:20]), (x[20:], y[20:])], verbose=0)
    assert len(h.epoch) == 1


def test_steps_end_gets_the_train_states_step_counted_on_the_host(key):
    """``on_steps_end`` gets the step after each call (counted on the host, not read from the
    device): with 3 steps per call over 7 steps an epoch, and from a resumed state."""

    class Steps:
        def __init__(self):
            self.seen = []

        def on_steps_end(self, step, train_state):
            self.seen.append((step, int(train_state.step)))

    x, y = blobs(70)
    kw = dict(batch_size=10, steps_per_execution=3, key=key, verbose=0)
    first, second = Steps(), Steps()
    ts, _ = fn.fit(mlp(), optax.sgd(0.1), "sparse_categorical_cross_entropy", (x, y),
                   epochs=1, callbacks=[first], **kw)  # fmt: skip
    fn.fit(mlp(), optax.sgd(0.1), "sparse_categorical_cross_entropy", (x, y),
           epochs=2, initial_state=ts, callbacks=[second], **kw)  # fmt: skip
    assert first.seen == [(3, 3), (6, 6), (7, 7)]
    assert second.seen == [(10, 10), (13, 13), (14, 14)]
