"""``stacked_fit``: N models trained as one, each compared with its own ``fit`` run.

The reference for model ``i`` is ``fn.fit(..., key=key_i)`` with model ``i``'s
learning rate; early stopping is checked against ``fit`` runs of fewer epochs.
``test_mesh4_*`` needs 4 devices: ``test_four_virtual_devices_fit`` runs it in a
subprocess with ``--xla_force_host_platform_device_count=4``.
"""

import os

import jax
import numpy as np
import optax
import pytest
from _mesh4 import run_mesh4_tests

import funcnet as fn

STRICT_DTYPES = False  # optax.adam is not strict-clean

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
LOSS = "sparse_categorical_cross_entropy"
KEY = jax.random.key(42)
LRS = [0.01, 0.1, 0.03]

needs4 = pytest.mark.skipif(
    jax.device_count() < 4,
    reason="needs 4 devices; test_four_virtual_devices_fit runs it in a subprocess",
)


def make_model():
    return fn.serial(fn.Dense(8), jax.nn.relu, fn.Dropout(0.25), fn.Dense(3))


def make_data(rows=40, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, 4)).astype(np.float32)
    y = (np.argmax(x[:, :3], axis=1)).astype(np.int32)
    return x, y


def adam(lr=1e-2):
    return optax.inject_hyperparams(optax.adam)(learning_rate=lr)


def sgd(lr=0.1):
    return optax.inject_hyperparams(optax.sgd)(learning_rate=lr)


def close(a, b, rtol=1e-5, atol=1e-6):
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(la) == len(lb)
    for u, v in zip(la, lb):
        np.testing.assert_allclose(np.asarray(u), np.asarray(v), rtol=rtol, atol=atol)


def single_fit(opt, key, epochs, **kwargs):
    kwargs = {"batch_size": 8, "verbose": 0, **kwargs}
    return fn.fit(make_model(), opt, LOSS, make_data(), epochs=epochs, key=key, **kwargs)


@pytest.fixture(scope="module")
def per_model_run():
    """3 models, own data orders and learning rates, validation and accuracy; 3 epochs."""
    return fn.stacked_fit(
        make_model(),
        adam(),
        LOSS,
        make_data(),
        num_models=3,
        hparams={"learning_rate": LRS},
        epochs=3,
        batch_size=8,
        validation_data=make_data(24, seed=1),
        metrics=["accuracy"],
        data_order="per_model",
        key=KEY,
        steps_per_execution=2,
    )


# ----------------------------------------------------------------------------- data orders


def test_per_model_order_equals_independent_fits(per_model_run):
    ts, history = per_model_run
    for i, lr in enumerate(LRS):
        ref, ref_history = single_fit(
            adam(lr),
            jax.random.fold_in(KEY, i),
            3,
            validation_data=make_data(24, seed=1),
            metrics=["accuracy"],
        )
        close(fn.model_at(ts.params, i), ref.params)
        assert int(ts.step[i]) == int(ref.step) == 15
        for name in ("loss", "val_loss", "accuracy", "val_accuracy"):
            got = [float(v[i]) for v in history[name]]
            np.testing.assert_allclose(got, ref_history[name], rtol=1e-5, err_msg=name)


def test_shared_order_is_fits_order_for_every_model():
    """Shared batches: the same key gives the same model; model 0 is fit(key=key(0))."""
    ts, _ = fn.stacked_fit(
        make_model(), adam(), LOSS, make_data(), keys=[0, 0, 1], epochs=2, batch_size=8
    )
    close(fn.model_at(ts.params, 0), fn.model_at(ts.params, 1), rtol=0, atol=0)
    assert not np.allclose(ts.params[0]["w"][0], ts.params[0]["w"][2])
    ref, _ = single_fit(adam(), jax.random.key(0), 2)
    close(fn.model_at(ts.params, 0), ref.params)


def test_step_options_and_seed_keys_as_fit():
    """`clip_norm` (composed into the optimizer) and `l2` (the step) as in fit; int seeds."""
    options = dict(clip_norm=0.05, l2=1e-2)
    ts, _ = fn.stacked_fit(
        make_model(),
        adam(),
        LOSS,
        make_data(),
        keys=[3],
        epochs=1,
        batch_size=8,
        data_order="per_model",
        **options,
    )
    ref, _ = single_fit(adam(), jax.random.key(3), 1, **options)
    close(fn.model_at(ts.params, 0), ref.params)
    plain, _ = single_fit(adam(), jax.random.key(3), 1)
    assert not np.allclose(ref.params[0]["w"], plain.params[0]["w"])


def test_bootstrap_equals_model_orders_with_stacked_runner():
    """Bagging: each model and epoch draws `model_orders(epoch_key(key, e), bootstrap=True)`."""
    x, y = make_data()
    ts, _ = fn.stacked_fit(
        make_model(),
        adam(),
        LOSS,
        (x, y),
        keys=[0, 0],
        epochs=2,
        batch_size=8,
        data_order="bootstrap",
        key=KEY,
    )
    assert not np.allclose(ts.params[0]["w"][0], ts.params[0]["w"][1])
    ref = fn.stack_init(make_model(), adam(), [0, 0], x[:8])
    step = fn.stacked_train_step(make_model(), LOSS, adam(), shared_batch=False)
    run = fn.stacked_runner(step, batch_size=8)
    for epoch in range(2):
        key = jax.random.fold_in(KEY, 1_000_003 + epoch)  # fit's epoch key
        order = fn.model_orders(key, 2, len(x), bootstrap=True)
        ref, _ = run(ref, (x, y), order, 0, len(x) // 8)
    close(ts.params, ref.params)


# ----------------------------------------------------------------------------- history


def test_history_columns_mean_std(per_model_run):
    _, history = per_model_run
    assert history.epoch == [0, 1, 2]
    for name in ("loss", "accuracy", "val_loss", "val_accuracy"):
        column = history.column(name)
        assert column.shape == (3, 3)
        assert all(np.shape(v) == (3,) for v in history[name])
        np.testing.assert_allclose(history[f"{name}_mean"], column.mean(axis=1), rtol=1e-6)
        np.testing.assert_allclose(history[f"{name}_std"], column.std(axis=1), rtol=1e-6)
        assert all(isinstance(v, float) for v in history[f"{name}_mean"])
    assert history.column("active").all()
    assert history.stopped_epoch.tolist() == [-1, -1, -1]


def test_history_plots_means_and_stds(per_model_run, tmp_path):
    pytest.importorskip("matplotlib")
    _, history = per_model_run
    assert history.plot(str(tmp_path / "history.png")) == str(tmp_path / "history.png")


def test_best_model_is_best_val_loss(per_model_run):
    ts, history = per_model_run
    val_loss = history.column("val_loss")
    assert history.monitor == "val_loss"
    assert history.best_model == int(np.argmin(val_loss.min(axis=0)))
    assert history.best_epoch.tolist() == np.argmin(val_loss, axis=0).tolist()
    np.testing.assert_allclose(history.best_value, val_loss.min(axis=0))
    assert history.best_model != 0  # the smallest learning rate is not the best here
    assert fn.model_at(ts, history.best_model).params[0]["w"].shape == (4, 8)


# ----------------------------------------------------------------------------- early stopping

# mode="max" on val_loss: a model that learns (lr > 0) never "improves" after epoch 0 and
# stops at epoch `patience + 1`; gradient ascent (lr < 0) improves every epoch and goes on.
STOP_LRS = [0.1, -0.05, -0.02]


def stop_run(restore_best, epochs=3, lrs=STOP_LRS):
    return fn.stacked_fit(
        make_model(),
        sgd(),
        LOSS,
        make_data(),
        num_models=3,
        hparams={"learning_rate": lrs},
        epochs=epochs,
        batch_size=8,
        validation_data=make_data(24, seed=1),
        data_order="per_model",
        key=KEY,
        early_stopping=dict(monitor="val_loss", mode="max", patience=0, restore_best=restore_best),
    )


@pytest.mark.parametrize("restore_best", [False, True])
def test_per_model_early_stopping(restore_best):
    ts, history = stop_run(restore_best)
    assert history.stopped_epoch.tolist() == [1, -1, -1]
    assert history.column("active").tolist() == [[1, 1, 1], [1, 1, 1], [0, 1, 1]]
    # the stopped model trained 2 epochs (kept), or its best is epoch 0's (restored)
    ref0, _ = single_fit(sgd(0.1), jax.random.fold_in(KEY, 0), 1 if restore_best else 2)
    close(fn.model_at(ts.params, 0), ref0.params)
    assert int(ts.step[0]) == int(ref0.step)
    assert history.best_epoch.tolist() == [0, 2, 2]
    for i in (1, 2):  # the others trained all 3 epochs (their best is the last)
        ref, _ = single_fit(sgd(STOP_LRS[i]), jax.random.fold_in(KEY, i), 3)
        close(fn.model_at(ts.params, i), ref.params)


def test_run_ends_when_all_models_stopped():
    _, history = stop_run(False, epochs=6, lrs=[0.1, 0.05, 0.02])
    assert history.epoch == [0, 1]
    assert history.stopped_epoch.tolist() == [1, 1, 1]


def test_nonfinite_model_stops_at_last_finite_state():
    with pytest.warns(RuntimeWarning, match=r"model\(s\) \[1\] turned NaN/Inf"):
        ts, history = fn.stacked_fit(
            make_model(),
            sgd(),
            LOSS,
            make_data(),
            num_models=2,
            epochs=2,
            batch_size=8,
            hparams={"learning_rate": [0.1, 1e30]},
        )
    assert all(np.isfinite(np.asarray(leaf)).all() for leaf in jax.tree.leaves(ts.params))
    assert history.stopped_epoch.tolist() == [-1, 0]
    assert int(ts.step[0]) == 10 and int(ts.step[1]) < 5


# ----------------------------------------------------------------------------- checkpoints


def test_checkpoint_resume_equals_uninterrupted(tmp_path):
    """3 epochs, then 4 from the checkpoint == 4 at once, with early stopping's state resumed
    too: model 0 (mode="max", learning) stops in epoch 1 and stays stopped after the restart."""
    run = lambda epochs, checkpoint=None: fn.stacked_fit(
        make_model(),
        sgd(),
        LOSS,
        make_data(),
        num_models=2,
        epochs=epochs,
        batch_size=8,
        data_order="per_model",
        early_stopping=dict(monitor="loss", mode="max", patience=0, restore_best=True),
        hparams={"learning_rate": [0.1, -0.05]},
        checkpoint=checkpoint,
    )
    ref, ref_history = run(4)
    assert ref_history.stopped_epoch.tolist() == [1, -1]
    run(3, str(tmp_path))
    ts, history = run(4, str(tmp_path))
    close(ts.params, ref.params)
    assert ts.step.tolist() == ref.step.tolist() == [5, 20]  # model 0: its best, epoch 0
    assert history.epoch == [3]
    assert history.stopped_epoch.tolist() == [1, -1]
    np.testing.assert_allclose(history.column("loss"), ref_history.column("loss")[3:], rtol=1e-5)
    saved = fn.CheckpointManager(str(tmp_path)).restore()
    assert saved["train_state"]["step"].tolist() == [10, 20]  # model 0 stopped after epoch 1
    close(saved["best_state"]["params"], ref.params)
    assert sorted(saved["tracker"]) == ["active", "best", "best_epoch", "stopped_epoch", "wait"]


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(), r"exactly one of `num_models`.*got neither"),
        (dict(num_models=2, keys=[0, 1]), r"exactly one of `num_models`.*got both"),
        (
            dict(num_models=3, hparams={"learning_rate": [0.1, 0.2]}),
            r"stacked_fit: `hparams\['learning_rate'\]` needs one value per model, shape \(3,\)",
        ),
        (dict(num_models=2, data_order="random"), r"stacked_fit: `data_order` must be one of"),
        (
            dict(num_models=2, early_stopping=dict(monitor="val_loss")),
            r"stacked_fit: `early_stopping` monitors 'val_loss'.*validation_data=",
        ),
        (
            dict(num_models=2, early_stopping=dict(monitor="loss", wait=2)),
            r"stacked_fit: `early_stopping` has unknown keys \['wait'\]",
        ),
        (dict(num_models=2, batch_size=64), r"stacked_fit: `batch_size=64` is larger"),
    ],
)
def test_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        fn.stacked_fit(make_model(), sgd(), LOSS, make_data(), **kwargs)


def test_error_iterable_and_bad_data():
    x, y = make_data()
    with pytest.raises(ValueError, match=r"stacked_fit: `train_data` must be arrays"):
        fn.stacked_fit(make_model(), sgd(), LOSS, [(x, y)], num_models=2)
    with pytest.raises(ValueError, match=r"stacked_fit: the arrays have different numbers"):
        fn.stacked_fit(make_model(), sgd(), LOSS, (x, y[:-1]), num_models=2)
    with pytest.raises(TypeError, match=r"stacked_fit: `early_stopping` must be a dict"):
        fn.stacked_fit(make_model(), sgd(), LOSS, (x, y), num_models=2, early_stopping="loss")


# ----------------------------------------------------------------------------- 4 devices


def test_four_virtual_devices_fit():
    """Run the ``test_mesh4_*`` tests of this file with 4 virtual CPU devices."""
    run_mesh4_tests("test_stacked_fit.py")


@needs4
def test_mesh4_models_sharded_equal_one_device():
    kwargs = dict(
        num_models=4,
        hparams={"learning_rate": [1e-2, 2e-2, 3e-2, 4e-2]},
        epochs=2,
        batch_size=8,
        validation_data=make_data(24, seed=1),
        data_order="per_model",
        early_stopping=dict(monitor="val_loss", patience=0, restore_best=True),
    )
    ref, ref_history = fn.stacked_fit(make_model(), adam(), LOSS, make_data(), **kwargs)
    mesh = jax.make_mesh((4,), ("models",), axis_types=(jax.sharding.AxisType.Auto,))
    ts, history = fn.stacked_fit(make_model(), adam(), LOSS, make_data(), mesh=mesh, **kwargs)
    close(ts.params, ref.params)
    np.testing.assert_allclose(history.column("val_loss"), ref_history.column("val_loss"), 1e-5)
    assert ts.params[0]["w"].sharding.spec[0] == "models"
    assert len(ts.params[0]["w"].addressable_shards) == 4
