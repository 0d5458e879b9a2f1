"""Many models at once (funcnet.training.stacked): a stack trains as N independent runs.

Each stacked result is compared with N single runs of ``train_step`` from the
same keys, batches and hyperparameters. Tests named ``test_mesh4_*`` need 4
devices: in the normal run they are skipped, and ``test_four_virtual_devices``
runs them in a subprocess with ``--xla_force_host_platform_device_count=4``.
"""

import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from _mesh4 import run_mesh4_tests
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import funcnet as fn
from funcnet.training import stacked

STRICT_DTYPES = False  # optax.adam is not strict-clean

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
LOSS = "sparse_categorical_cross_entropy"
N = 3

needs4 = pytest.mark.skipif(
    jax.device_count() < 4,
    reason="needs 4 devices; test_four_virtual_devices runs it in a subprocess",
)


def make_model(drop_rate=0.25):
    return fn.serial(fn.Dense(8), jax.nn.relu, fn.Dropout(drop_rate), fn.Dense(3))


def make_data(rows=24):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(rows, 4)).astype(np.float32)
    y = (np.arange(rows) % 3).astype(np.int32)
    return jnp.asarray(x), jnp.asarray(y)


def assert_trees_close(a, b, rtol=1e-5, atol=1e-6):
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(la) == len(lb)
    for u, v in zip(la, lb):
        np.testing.assert_allclose(np.asarray(u), np.asarray(v), rtol=rtol, atol=atol)


def single_runs(model, optimizers, keys, batches_of):
    """N single runs: model ``i`` from ``keys[i]`` with ``optimizers[i]`` on ``batches_of(i)``."""
    out = []
    for i, (opt, key) in enumerate(zip(optimizers, keys)):
        ts = fn.TrainState.create(model, opt, key, make_data()[0])
        step = jax.jit(fn.train_step(model, LOSS, opt))
        for batch in batches_of(i):
            ts, _ = step(ts, batch)
        out.append(ts)
    return out


# ----------------------------------------------------------------------------- the stack


@pytest.mark.parametrize("keys", [N, [5, 0, 9], "split"])
def test_stack_init_equals_single_creates(keys):
    model, opt = make_model(), optax.adam(1e-2)
    x, _ = make_data()
    if keys == "split":
        keys = jax.random.split(jax.random.key(3), N)
        singles = list(keys)
    else:
        seeds = range(keys) if isinstance(keys, int) else keys
        singles = [jax.random.key(s) for s in seeds]
    ts = fn.stack_init(model, opt, keys, x)
    assert ts.step.shape == (N,)
    for i, key in enumerate(singles):
        one = fn.TrainState.create(model, opt, key, x)
        assert_trees_close(fn.model_at(ts, i).params, one.params, rtol=0, atol=0)
        assert_trees_close(fn.model_at(ts, i).opt_state, one.opt_state, rtol=0, atol=0)
        assert (jax.random.key_data(ts.key[i]) == jax.random.key_data(one.key)).all()


def test_stack_models_and_model_at_round_trip():
    trees = [{"w": jnp.full((2,), float(i)), "k": jax.random.key(i)} for i in range(3)]
    stack = fn.stack_models(trees)
    assert stack["w"].shape == (3, 2) and stack["k"].shape == (3,)
    assert fn.model_at(stack, 2)["w"].tolist() == [2.0, 2.0]


@pytest.mark.parametrize("method", ["vmap", "unroll"])
def test_shared_batches_equal_independent_runs(method):
    """Same seeds and batches: the stack's models are the single runs (Dropout keys included)."""
    model, opt = make_model(), optax.adam(1e-2)
    x, y = make_data()
    batches = [(x[i * 8 : (i + 1) * 8], y[i * 8 : (i + 1) * 8]) for i in range(3)] * 2
    ts = fn.stack_init(model, opt, N, x)
    step = jax.jit(fn.stacked_train_step(model, LOSS, opt, method=method), donate_argnums=0)
    for batch in batches:
        ts, logs = step(ts, batch)
    assert logs["loss"].shape == (N,) and ts.step.tolist() == [6] * N
    keys = [jax.random.key(i) for i in range(N)]
    for i, one in enumerate(single_runs(model, [opt] * N, keys, lambda i: batches)):
        assert_trees_close(fn.model_at(ts, i).params, one.params)
        assert_trees_close(fn.model_at(ts, i).opt_state, one.opt_state)


@pytest.mark.parametrize("bootstrap", [False, True])
def test_per_model_batches_equal_independent_runs(bootstrap):
    """Bagging (bootstrap samples) and per-model data orders: batches with a model axis."""
    model, opt = make_model(), optax.sgd(0.1)
    x, y = make_data()
    orders = fn.model_orders(jax.random.key(1), N, 24, bootstrap=bootstrap)
    assert orders.shape == (N, 24)
    if not bootstrap:
        assert all(sorted(o.tolist()) == list(range(24)) for o in orders)
    assert len({tuple(o.tolist()) for o in orders}) == N  # every model its own order
    step = fn.stacked_train_step(model, LOSS, opt, shared_batch=False)
    run = fn.stacked_runner(step, batch_size=8)
    ts, losses = run(fn.stack_init(model, opt, N, x), (x, y), orders, 0, 5)  # cycles: 5 > 3
    assert losses.shape == (5, N)

    def batches_of(i):
        return [fn.take_batches((x, y), orders[i], s % 3, 8) for s in range(5)]

    keys = [jax.random.key(i) for i in range(N)]
    for i, one in enumerate(single_runs(model, [opt] * N, keys, batches_of)):
        assert_trees_close(fn.model_at(ts, i).params, one.params)


def test_take_batches_shared_and_per_model():
    data = (jnp.arange(6) * 10, jnp.arange(6))
    shared = fn.take_batches(data, jnp.arange(6)[::-1], 1, 2)
    assert shared[0].tolist() == [30, 20] and shared[1].tolist() == [3, 2]
    per_model = fn.take_batches(data, jnp.stack([jnp.arange(6), jnp.arange(6)[::-1]]), 2, 2)
    assert per_model[0].tolist() == [[40, 50], [10, 0]]


@pytest.mark.parametrize("unroll", [1, True])
def test_runner_equals_step_by_step(unroll):
    model, opt = make_model(0.0), optax.adam(1e-2)
    x, y = make_data()
    step = fn.stacked_train_step(model, LOSS, opt)
    ts0 = fn.stack_init(model, opt, N, x)
    ts, losses = fn.stacked_runner(step, 8, unroll=unroll)(ts0, (x, y), jnp.arange(24), 2, 4)
    ref = fn.stack_init(model, opt, N, x)
    jitted = jax.jit(step)
    for s in (2, 0, 1, 2):  # begin 2, cycling through the 3 batches
        ref, logs = jitted(ref, fn.take_batches((x, y), jnp.arange(24), s, 8))
    assert_trees_close(ts.params, ref.params)
    np.testing.assert_allclose(losses[-1], logs["loss"], rtol=1e-6)
    # a plain train_step in the same runner: one model, the stack's model 1
    one = fn.model_at(fn.stack_init(model, opt, N, x), 1)
    plain = fn.stacked_runner(fn.train_step(model, LOSS, opt), 8, unroll=unroll)
    one, one_losses = plain(one, (x, y), jnp.arange(24), 2, 4)
    assert one_losses.shape == (4,)
    assert_trees_close(one.params, fn.model_at(ts, 1).params)


def test_step_options_and_metrics_are_per_model():
    model, opt = make_model(0.0), optax.sgd(0.1)
    x, y = make_data()
    step = fn.stacked_train_step(model, LOSS, opt, metrics={"acc": fn.metrics.get("accuracy")})
    _, logs = jax.jit(step)(fn.stack_init(model, opt, N, x), (x, y))
    assert logs["loss"].shape == (N,)
    assert all(leaf.shape[0] == N for leaf in jax.tree.leaves(logs["acc"]))


# ----------------------------------------------------------------------------- hyperparameters


def test_per_model_learning_rate_equals_independent_runs():
    model = make_model()
    x, y = make_data()
    lrs = [1e-3, 1e-2, 5e-2]
    opt = optax.inject_hyperparams(optax.adam)(learning_rate=1e-3)
    ts = fn.stack_init(model, opt, N, x, hparams={"learning_rate": lrs})
    np.testing.assert_allclose(fn.hparams_of(ts)["learning_rate"], lrs, rtol=1e-6)
    step = jax.jit(fn.stacked_train_step(model, LOSS, opt))
    batches = [(x[:12], y[:12]), (x[12:], y[12:])] * 3
    for batch in batches:
        ts, _ = step(ts, batch)
    keys = [jax.random.key(i) for i in range(N)]
    injected = [optax.inject_hyperparams(optax.adam)(learning_rate=lr) for lr in lrs]
    for i, one in enumerate(single_runs(model, injected, keys, lambda i: batches)):
        assert_trees_close(fn.model_at(ts, i).params, one.params)
    # plain optax.adam(lr) folds the constant learning rate differently: ~2e-6 apart here
    for i, one in enumerate(
        single_runs(model, [optax.adam(lr) for lr in lrs], keys, lambda i: batches)
    ):
        assert_trees_close(fn.model_at(ts, i).params, one.params, atol=1e-5)


def test_per_model_hparams_really_differ():
    """Same seed for every model: only the hyperparameters tell them apart."""
    model = make_model(0.0)
    x, y = make_data()
    opt = optax.inject_hyperparams(optax.adamw)(learning_rate=1e-2, weight_decay=0.0)
    hparams = {"learning_rate": [1e-2, 1e-2, 1e-1], "weight_decay": [0.0, 0.5, 0.0]}
    ts0 = fn.stack_init(model, opt, [4, 4, 4], x, hparams=hparams)
    ts, _ = jax.jit(fn.stacked_train_step(model, LOSS, opt))(ts0, (x, y))
    w0, w = ts0.params[0]["w"], ts.params[0]["w"]
    assert_trees_close(w0[0], w0[2], rtol=0, atol=0)  # the same start
    moved = [float(jnp.abs(w[i] - w0[i]).mean()) for i in range(N)]
    assert moved[2] > 5 * moved[0]  # 10x the learning rate: Adam's first step is 10x longer
    assert float(jnp.abs(w[1]).sum()) < float(jnp.abs(w[0]).sum())  # decayed toward 0
    one = fn.TrainState.create(model, optax.adamw(1e-2, weight_decay=0.0), jax.random.key(4), x)
    one, _ = jax.jit(fn.train_step(model, LOSS, optax.adamw(1e-2, weight_decay=0.0)))(one, (x, y))
    assert_trees_close(fn.model_at(ts, 0).params, one.params)


def test_hparams_inside_composed_optimizer_and_changed_later():
    model = make_model(0.0)
    x, _ = make_data()
    inner = optax.inject_hyperparams(optax.sgd)(learning_rate=0.1)
    opt = fn.compose_optimizer(inner, clip_norm=1.0, skip_nonfinite=True)
    ts = fn.stack_init(model, opt, N, x, hparams={"learning_rate": [0.1, 0.2, 0.3]})
    ts = fn.with_hparams(ts, {"learning_rate": jnp.array([1.0, 2.0, 3.0])})
    np.testing.assert_allclose(fn.hparams_of(ts)["learning_rate"], [1.0, 2.0, 3.0])


def test_hparams_errors():
    model = make_model()
    x, _ = make_data()
    with pytest.raises(TypeError, match=r"optax.inject_hyperparams.*this one has none"):
        fn.stack_init(model, optax.adam(1e-3), N, x, hparams={"learning_rate": [1, 2, 3]})
    opt = optax.inject_hyperparams(optax.adam)(learning_rate=1e-3)
    with pytest.raises(ValueError, match=r"no numeric hyperparameter 'lr'; it has \[.*'b1'.*"):
        fn.stack_init(model, opt, N, x, hparams={"lr": [1, 2, 3]})
    with pytest.raises(ValueError, match=r"one value per model, shape \(3,\), got shape \(2,\)"):
        fn.stack_init(model, opt, N, x, hparams={"learning_rate": [1e-3, 1e-2]})
    with pytest.raises(TypeError, match=r"`hparams` must be a dict"):
        fn.stack_init(model, opt, N, x, hparams=[1e-3, 1e-2, 1e-1])
    sched = optax.inject_hyperparams(optax.adam)(learning_rate=optax.linear_schedule(1.0, 0.0, 9))
    with pytest.raises(ValueError, match=r"'learning_rate' is a schedule"):
        fn.stack_init(model, sched, N, x, hparams={"learning_rate": [1e-3, 1e-2, 1e-1]})
    one = fn.TrainState.create(model, opt, jax.random.key(0), x)
    with pytest.raises(ValueError, match=r"with_hparams: expected a stacked pytree"):
        fn.with_hparams(one, {"learning_rate": [1e-3]})


# ----------------------------------------------------------------------------- errors


def test_argument_errors():
    model, opt = make_model(), optax.sgd(0.1)
    x, y = make_data()
    with pytest.raises(TypeError, match=r"stack_init: `keys` must be a number of models"):
        fn.stack_init(model, opt, "three", x)
    with pytest.raises(TypeError, match=r"`keys` must be .* got shape \(2, 2\)"):
        fn.stack_init(model, opt, jnp.zeros((2, 2), jnp.uint32), x)
    with pytest.raises(ValueError, match=r"stack_init: `keys` must be an int >= 1, got 0"):
        fn.stack_init(model, opt, 0, x)
    with pytest.raises(TypeError, match=r"stack_init: `optimizer` must be an optax"):
        fn.stack_init(model, "adam", N, x)
    with pytest.raises(ValueError, match=r"`method` must be one of \('vmap', 'unroll'\)"):
        fn.stacked_train_step(model, LOSS, opt, method="pmap")
    with pytest.raises(ValueError, match=r"stack_models: expected a list of N >= 1"):
        fn.stack_models([])
    ts = fn.stack_init(model, opt, N, x)
    step = fn.stacked_train_step(model, LOSS, opt, shared_batch=False)
    with pytest.raises(ValueError, match=r"leading model axis of size 3, got shape \(24, 4\)"):
        step(ts, (x, y))


def test_runner_errors():
    model, opt = make_model(), optax.sgd(0.1)
    x, y = make_data()
    ts = fn.stack_init(model, opt, N, x)
    shared = fn.stacked_runner(fn.stacked_train_step(model, LOSS, opt), 8)
    orders = fn.model_orders(jax.random.key(0), N, 24)
    with pytest.raises(ValueError, match=r"per-model batches; .*shared_batch=False"):
        shared(ts, (x, y), orders, 0, 1)
    per_model = fn.stacked_runner(fn.stacked_train_step(model, LOSS, opt, shared_batch=False), 8)
    with pytest.raises(ValueError, match=r"shared batches; .*shared_batch=True"):
        per_model(ts, (x, y), jnp.arange(24), 0, 1)
    with pytest.raises(ValueError, match=r"shape \(rows,\) or \(N, rows\), got shape \(1, 3, 24\)"):
        shared(ts, (x, y), jnp.arange(72).reshape(1, 3, 24), 0, 1)
    with pytest.raises(ValueError, match=r"`batch_size=32` is larger than the 24 rows"):
        fn.stacked_runner(fn.stacked_train_step(model, LOSS, opt), 32)(
            ts, (x, y), jnp.arange(24), 0, 1
        )
    with pytest.raises(ValueError, match=r"stacked_runner: `batch_size` must be an int >= 1"):
        fn.stacked_runner(fn.stacked_train_step(model, LOSS, opt), 0)
    with pytest.raises(ValueError, match=r"model_orders: `num_rows` must be an int >= 1, got 0"):
        fn.model_orders(jax.random.key(0), 2, 0)


# ----------------------------------------------------------------------------- inference


def test_stacked_predict_and_evaluate_equal_single_models():
    model, opt = make_model(), optax.adam(1e-2)
    x, y = make_data(30)
    ts = fn.stack_init(model, opt, N, x)
    ts, _ = jax.jit(fn.stacked_train_step(model, LOSS, opt))(ts, (x, y))
    out = fn.stacked_predict(model, ts.params, ts.state, x, batch_size=8)
    assert out.shape == (N, 30, 3)
    logs = fn.stacked_evaluate(
        model, ts.params, ts.state, (x, y), loss=LOSS, metrics=["accuracy"], batch_size=8
    )
    batches = [(x[:16], y[:16]), (x[16:], y[16:])]
    from_iter = fn.stacked_evaluate(model, ts.params, ts.state, batches, loss=LOSS)
    assert logs["loss"].shape == logs["accuracy"].shape == (N,)
    for i in range(N):
        params, state = fn.model_at((ts.params, ts.state), i)
        np.testing.assert_allclose(out[i], model.apply(params, state, x)[0], rtol=1e-5, atol=1e-6)
        one = fn.evaluate(model, params, state, (x, y), loss=LOSS, metrics=["accuracy"])
        assert logs["loss"][i] == pytest.approx(one["loss"], rel=1e-5)
        assert logs["accuracy"][i] == pytest.approx(one["accuracy"])
        assert from_iter["loss"][i] == pytest.approx(one["loss"], rel=1e-5)


def _softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


@pytest.mark.parametrize("classes", [4, 1])
def test_ensemble_against_numpy(classes):
    model, opt = fn.Dense(classes), optax.sgd(0.1)
    x = jax.random.normal(jax.random.key(2), (50, 6))
    ts = fn.stack_init(model, opt, 5, x)
    out = np.asarray(fn.stacked_predict(model, ts.params, ts.state, x))
    probs = fn.ensemble_predict(model, ts.params, ts.state, x, batch_size=16)
    votes = fn.ensemble_predict(model, ts.params, ts.state, x, combine="vote")
    mean = fn.ensemble_predict(model, ts.params, ts.state, x, combine="mean")
    if classes == 1:  # one column: binary logits
        want_probs = (1 / (1 + np.exp(-out))).mean(0)
        labels = (out[..., 0] > 0).astype(int)
    else:
        want_probs = _softmax(out).mean(0)
        labels = out.argmax(-1)
    want_votes = [np.bincount(labels[:, r], minlength=max(classes, 2)).argmax() for r in range(50)]
    np.testing.assert_allclose(probs, want_probs, rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(votes, want_votes)
    np.testing.assert_allclose(mean, out.mean(0), rtol=1e-5, atol=1e-6)
    assert len(set(labels.ravel().tolist())) > 1  # the models disagree somewhere


def test_vote_ties_go_to_the_smallest_class():
    outputs = jnp.array([[[0.0, 1.0, 0.0]], [[0.0, 0.0, 1.0]], [[1.0, 0.0, 0.0]]])
    assert stacked.infer._combine(outputs, "vote").tolist() == [0]
    assert stacked.infer._combine(outputs[1:], "vote").tolist() == [0]
    assert stacked.infer._combine(outputs[:2], "vote").tolist() == [1]


def test_inference_errors():
    model, opt = fn.Dense(2), optax.sgd(0.1)
    x = jnp.ones((4, 3))
    ts = fn.stack_init(model, opt, 2, x)
    with pytest.raises(ValueError, match=r"`combine` must be one of \('mean_probs', 'vote', "):
        fn.ensemble_predict(model, ts.params, ts.state, x, combine="median")
    single, state = model.init(jax.random.key(0), x)
    with pytest.raises(ValueError, match=r"stacked_predict: expected a stacked pytree"):
        fn.stacked_predict(model, (), (), x)
    with pytest.raises(ValueError, match=r"stacked_evaluate: `batch_size` must be an int >= 1"):
        fn.stacked_evaluate(model, ts.params, ts.state, (x, jnp.ones((4, 2))), batch_size=0)
    del single, state


# ----------------------------------------------------------------------------- memory


def _nbytes(tree):
    return sum(leaf.nbytes for leaf in jax.tree.leaves(tree))


def test_memory_n_models_take_n_times_one():
    """Params and optimizer state of N models: exactly N times one model's bytes."""
    model = fn.serial(fn.Dense(64), jax.nn.relu, fn.Dense(10))
    x, opt = jnp.ones((8, 32)), optax.adam(1e-3)
    one = fn.TrainState.create(model, opt, jax.random.key(0), x)
    for n in (1, 4, 8):
        ts = fn.stack_init(model, opt, n, x)
        assert _nbytes(ts.params) == n * _nbytes(one.params)
        assert _nbytes(ts.opt_state) == n * _nbytes(one.opt_state)


def test_memory_of_a_compiled_stacked_step():
    """XLA's own accounting: inputs N times one model's state, scratch about N times one step's."""
    model = fn.serial(fn.Dense(128), jax.nn.relu, fn.Dense(128), jax.nn.relu, fn.Dense(10))
    x, y, opt = jnp.ones((32, 64)), jnp.zeros(32, jnp.int32), optax.adam(1e-3)
    one = fn.TrainState.create(model, opt, jax.random.key(0), x)
    single = jax.jit(fn.train_step(model, LOSS, opt), donate_argnums=0)
    m1 = single.lower(one, (x, y)).compile().memory_analysis()
    if m1 is None:
        pytest.skip("memory_analysis is not available on this backend")
    batch_bytes = x.nbytes + y.nbytes
    n = 4
    ts = fn.stack_init(model, opt, n, x)
    stacked_step = jax.jit(fn.stacked_train_step(model, LOSS, opt), donate_argnums=0)
    mn = stacked_step.lower(ts, (x, y)).compile().memory_analysis()
    assert mn.argument_size_in_bytes - batch_bytes == n * (m1.argument_size_in_bytes - batch_bytes)
    assert mn.temp_size_in_bytes <= n * m1.temp_size_in_bytes + 16 * 1024
    assert mn.alias_size_in_bytes >= n * _nbytes(one.params)  # the donated state is reused


# ----------------------------------------------------------------------------- 4 devices


def test_four_virtual_devices():
    """Run the ``test_mesh4_*`` tests of this file with 4 virtual CPU devices."""
    run_mesh4_tests("test_stacked.py")


@needs4
@pytest.mark.parametrize("axis_types", [AxisType.Auto, AxisType.Explicit])
@pytest.mark.parametrize("axes", [("models",), ("models", "data")])
def test_mesh4_models_sharded_equal_one_device(axes, axis_types):
    """8 models split over 4 devices (or 2 x 2 with the batch split too): same results, and
    each device holds only its models."""
    model, opt = make_model(), optax.adam(1e-2)
    x, y = make_data()
    ts = fn.stack_init(model, opt, 8, x)
    step = jax.jit(fn.stacked_train_step(model, LOSS, opt))
    ref, ref_logs = step(ts, (x, y))
    shape = (4,) if len(axes) == 1 else (2, 2)
    mesh = jax.make_mesh(shape, axes, axis_types=(axis_types,) * len(axes))
    sharded = fn.shard_models(ts, mesh)
    batch = (x, y)
    if "data" in axes:
        batch = fn.distributed.place(batch, NamedSharding(mesh, P("data")))
    with jax.set_mesh(mesh):
        out, logs = step(sharded, batch)
    jax.block_until_ready(out)
    assert_trees_close(out.params, ref.params)
    np.testing.assert_allclose(logs["loss"], ref_logs["loss"], rtol=1e-5)
    assert out.params[0]["w"].sharding.spec[0] == "models"
    per_device = fn.distributed.per_device_bytes(out.params)
    assert per_device * mesh.shape["models"] == _nbytes(ref.params)


@needs4
def test_mesh4_shard_models_errors():
    model, opt = make_model(), optax.sgd(0.1)
    ts = fn.stack_init(model, opt, 6, make_data()[0])
    mesh = jax.make_mesh((4,), ("models",), axis_types=(AxisType.Auto,))
    with pytest.raises(ValueError, match=r"6 models do not split evenly over the 4 devices"):
        fn.shard_models(ts, mesh)
    with pytest.raises(ValueError, match=r"the mesh has no axis 'ensemble'"):
        fn.shard_models(ts, mesh, axis="ensemble")
