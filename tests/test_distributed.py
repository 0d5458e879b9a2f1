"""Many devices and processes: funcnet.distributed, train_step(axis_name=...), fit(mesh=...).

Tests named ``test_mesh4_*`` need 4 devices: in the normal (1-device) run they
are skipped, and ``test_four_virtual_devices`` runs them in a subprocess with
``XLA_FLAGS=--xla_force_host_platform_device_count=4``. The two-process tests
start ``tests/_distributed_worker.py`` twice with ``distributed.launch``.
Data-parallel results are compared with one-device runs under SGD (Adam would
hide a wrong gradient scale).
"""

import functools
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from _mesh4 import run_mesh4_tests
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import funcnet as fn
from funcnet import distributed

sys.path.insert(0, os.path.dirname(__file__))
import _distributed_worker as worker

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
LOSS = worker.LOSS

needs4 = pytest.mark.skipif(
    jax.device_count() < 4,
    reason="needs 4 devices; test_four_virtual_devices runs it in a subprocess",
)


def assert_trees_close(a, b, atol=2e-6):
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(la) == len(lb)
    for x, y in zip(la, lb):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5, atol=atol)


def r2_of_first_output():
    r2 = fn.metrics.r2()

    def update(state, outputs, targets, *, weights=None):
        return r2.update(state, outputs[:, 0], targets.astype(jnp.float32), weights=weights)

    return fn.metrics.Metric(r2.init, update, r2.merge, r2.compute, "r2")


# ----------------------------------------------------------------------------- one device


def test_make_mesh_one_device_and_errors():
    mesh = distributed.make_mesh()
    assert mesh.axis_names == ("data",) and mesh.devices.size == jax.device_count()
    assert distributed.make_mesh(1, axis_types=AxisType.Explicit).axis_types == (AxisType.Explicit,)
    with pytest.raises(ValueError, match=r"asked for 99 devices"):
        distributed.make_mesh(99)
    with pytest.raises(ValueError, match=r"empty list"):
        distributed.make_mesh([])
    with pytest.raises(ValueError, match=r"`fsdp` must be an int >= 1"):
        distributed.make_mesh(fsdp=0)
    with pytest.raises(ValueError, match=r"`axis_types` must be 'auto', 'explicit'"):
        distributed.make_mesh(axis_types="manual")


def test_mesh_checks():
    other = jax.make_mesh((1,), ("model",), axis_types=(AxisType.Auto,))
    with pytest.raises(ValueError, match=r"needs a 'data' axis"):
        distributed.batch_spec(other)
    with pytest.raises(TypeError, match=r"`mesh` must be a jax.sharding.Mesh"):
        distributed.global_batch(np.ones((2, 1)), "data")


def test_fsdp_spec_picks_largest_divisible_dimension():
    assert distributed.fsdp_spec((784, 512), 4) == P("fsdp", None)
    assert distributed.fsdp_spec((10, 512), 4) == P(None, "fsdp")
    assert distributed.fsdp_spec((8, 8), 4) == P("fsdp", None)  # ties: the first
    assert distributed.fsdp_spec((3, 5), 4) == P()
    assert distributed.fsdp_spec((), 4) == P()
    assert distributed.fsdp_spec((2,), 4) == P()
    assert distributed.fsdp_spec((16,), 1) == P()


def test_state_shardings_and_place_copy():
    mesh = distributed.make_mesh()
    tree = {"w": jnp.ones((4, 2)), "key": jax.random.key(0), "n": np.float32(2)}
    shardings = distributed.state_shardings(tree, mesh, "fsdp")
    placed = distributed.place(tree, shardings)
    assert placed["w"] is not tree["w"]
    assert jax.random.key_data(placed["key"]).tolist() == jax.random.key_data(tree["key"]).tolist()
    # donating the placed copy must not delete the original (the device_put aliasing trap)
    jax.jit(lambda t: t, donate_argnums=0)(placed)
    assert float(tree["w"].sum()) == 8.0
    with pytest.raises(ValueError, match=r"`mode` must be 'replicated' or 'fsdp'"):
        distributed.state_shardings(tree, mesh, "zero3")
    assert distributed.per_device_bytes({"a": jnp.zeros(3)}) == 12


def test_global_batch_checks():
    mesh = distributed.make_mesh()
    batch = distributed.global_batch({"x": np.ones((3, 2), np.float32)}, mesh)
    assert batch["x"].sharding.spec == P("data")
    with pytest.raises(ValueError, match=r"same leading \(batch\) size"):
        distributed.global_batch((np.ones((3, 2)), np.ones(4)), mesh)
    with pytest.raises(ValueError, match=r"the batch has no arrays"):
        distributed.global_batch((), mesh)


def test_local_batches_split_every_global_batch():
    x = np.arange(20)
    parts = [
        list(distributed.local_batches(x, 8, process_index=p, process_count=2)) for p in (0, 1)
    ]
    assert [b.tolist() for b in parts[0]] == [[0, 1, 2, 3], [8, 9, 10, 11]]
    assert [b.tolist() for b in parts[1]] == [[4, 5, 6, 7], [12, 13, 14, 15]]
    key = jax.random.key(1)
    order = np.asarray(jax.random.permutation(key, 20))
    local = [
        list(
            distributed.local_batches(x, 8, key=key, shuffle=True, process_index=p, process_count=2)
        )
        for p in (0, 1)
    ]
    global_batches = [np.concatenate(pair).tolist() for pair in zip(*local)]
    assert global_batches == [order[:8].tolist(), order[8:16].tolist()]


def test_local_batches_errors():
    x = np.arange(10)
    with pytest.raises(ValueError, match=r"must be a positive multiple of the 2 processes"):
        list(distributed.local_batches(x, 3, process_index=0, process_count=2))
    with pytest.raises(ValueError, match=r"must be an int"):
        distributed.local_batches(x, 2.0)
    with pytest.raises(ValueError, match=r"`process_index=2` is not in \[0, 2\)"):
        distributed.local_batches(x, 2, process_index=2, process_count=2)
    with pytest.raises(ValueError, match=r"the same length"):
        distributed.local_batches((x, x[:5]), 2)
    with pytest.raises(ValueError, match=r"`shuffle=True` needs a `key`"):
        distributed.local_batches(x, 2, shuffle=True)


def test_per_example_grads_match_a_loop():
    model = fn.serial(fn.Dense(4), fn.relu, fn.Dense(1))
    params, state = model.init(jax.random.key(0), jnp.zeros((1, 3)))

    def loss_fn(p, batch):
        x, y = batch
        return fn.losses.mean_squared_error(model.apply(p, state, x)[0], y)

    rng = np.random.default_rng(0)
    x = rng.normal(size=(5, 3)).astype(np.float32)
    y = rng.normal(size=(5, 1)).astype(np.float32)
    grads = jax.jit(lambda p, b: distributed.per_example_grads(loss_fn, p, b))(params, (x, y))
    for i in range(5):
        one = jax.grad(loss_fn)(params, (x[i : i + 1], y[i : i + 1]))
        assert_trees_close(jax.tree.map(lambda g, i=i: g[i], grads), one)
        flat = jnp.concatenate([g.ravel() for g in jax.tree.leaves(one)])
        np.testing.assert_allclose(
            distributed.per_example_grad_norms(grads)[i], jnp.linalg.norm(flat), rtol=1e-5
        )
    with pytest.raises(TypeError, match=r"`loss_fn` must be a function"):
        distributed.per_example_grads("mse", params, (x, y))
    with pytest.raises(ValueError, match=r"needs a leading batch axis"):
        distributed.per_example_grads(loss_fn, params, (jnp.float32(1.0), y))
    with pytest.raises(ValueError, match=r"`grads` has no arrays"):
        distributed.per_example_grad_norms({})


def test_initialize_single_process_and_errors(monkeypatch):
    for name in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
        monkeypatch.delenv(name, raising=False)
    assert distributed.initialize() == (0, 1)
    assert distributed.initialize(num_processes=1) == (0, 1)
    assert distributed.is_main_process()
    with pytest.raises(ValueError, match=r"missing coordinator_address"):
        distributed.initialize(num_processes=2, process_id=0)
    with pytest.raises(ValueError, match=r"`process_id=5` must be in \[0, 2\)"):
        distributed.initialize("127.0.0.1:1", 2, 5)
    with pytest.raises(ValueError, match=r"`num_processes` must be >= 1"):
        distributed.initialize(num_processes=0)
    monkeypatch.setenv("JAX_NUM_PROCESSES", "two")
    with pytest.raises(ValueError, match=r"JAX_NUM_PROCESSES='two' is not an integer"):
        distributed.initialize()
    monkeypatch.delenv("JAX_NUM_PROCESSES")
    with pytest.raises(ValueError, match=r"`cpu_devices` must be >= 1"):
        distributed.initialize(cpu_devices=0)
    with pytest.raises(ValueError, match=r"must be set before JAX starts"):
        distributed.initialize(cpu_devices=jax.device_count() + 3)


def test_launch_argument_errors():
    with pytest.raises(ValueError, match=r"`num_processes` must be an int >= 1"):
        distributed.launch([sys.executable, "-c", "pass"], 0)
    with pytest.raises(ValueError, match=r"`argv` is empty"):
        distributed.launch([], 1)


def test_launch_timeout_stops_processes():
    with pytest.raises(TimeoutError, match=r"did not finish within 1.0 s; stopped them"):
        distributed.launch([sys.executable, "-c", "import time; time.sleep(60)"], 2, timeout=1.0)


def test_train_step_axis_name_checks():
    with pytest.raises(TypeError, match=r"`axis_name` must be a mapped axis name"):
        fn.train_step(fn.Dense(1), "mse", optax.sgd(0.1), axis_name=["data", ("a",)])
    with pytest.raises(TypeError, match=r"eval_step: `axis_name` must be"):
        fn.eval_step(fn.Dense(1), "mse", axis_name=[])


def test_train_step_axis_name_under_vmap_matches_whole_batch():
    """vmap with an axis name is the one-device stand-in for pmap: per-part gradients, summed."""
    model = fn.serial(fn.Dense(8), fn.BatchNorm(axis_name="i"), fn.relu, fn.Dense(3))
    plain = fn.serial(fn.Dense(8), fn.BatchNorm(), fn.relu, fn.Dense(3))
    opt = optax.sgd(0.1)
    metrics = {"accuracy": fn.metrics.get("accuracy")}
    x, y = worker.data()
    x, y = x[:16], y[:16] % 3
    ts = fn.TrainState.create(plain, opt, jax.random.key(0), x)
    ref_ts, ref_logs = jax.jit(fn.train_step(plain, LOSS, opt, metrics=metrics))(ts, (x, y))
    step = fn.train_step(model, LOSS, opt, metrics=metrics, axis_name="i")
    split = jax.tree.map(lambda a: a.reshape(4, 4, *a.shape[1:]), (x, y))
    got_ts, logs = jax.jit(jax.vmap(step, in_axes=(None, 0), axis_name="i"))(ts, split)
    assert_trees_close(jax.tree.map(lambda a: a[0], (got_ts.params, got_ts.state)),
                       (ref_ts.params, ref_ts.state))  # fmt: skip
    np.testing.assert_allclose(logs["loss"], ref_logs["loss"], rtol=1e-6)
    assert (logs["accuracy"]["correct"] == ref_logs["accuracy"]["correct"]).all()
    # eval_step: the weighted loss and merged metric states of the whole batch
    w = np.linspace(0.0, 2.0, 16, dtype=np.float32)
    r2 = {"r2": r2_of_first_output()}
    want = fn.eval_step(plain, LOSS, metrics=r2)(ref_ts.params, ref_ts.state, (x, y, w))
    split = jax.tree.map(lambda a: a.reshape(4, 4, *a.shape[1:]), (x, y, w))
    evaluate = fn.eval_step(plain, LOSS, metrics=r2, axis_name="i")
    got = jax.vmap(evaluate, in_axes=(None, None, 0), axis_name="i")(
        ref_ts.params, ref_ts.state, split
    )
    np.testing.assert_allclose(got["loss"][0], want["loss"], rtol=1e-6)
    np.testing.assert_allclose(r2["r2"].compute(jax.tree.map(lambda a: a[2], got["r2"])),
                               r2["r2"].compute(want["r2"]), rtol=1e-5, atol=1e-6)  # fmt: skip


def test_fit_mesh_argument_errors():
    x, y = worker.data()
    with pytest.raises(ValueError, match=r"`param_sharding='fsdp'` needs a `mesh`"):
        fn.fit(worker.model(), optax.sgd(0.1), LOSS, (x, y), param_sharding="fsdp", verbose=0)
    with pytest.raises(ValueError, match=r"`param_sharding` must be 'replicated' or 'fsdp'"):
        fn.fit(worker.model(), optax.sgd(0.1), LOSS, (x, y), param_sharding="zero", verbose=0)
    with pytest.raises(TypeError, match=r"fit: `mesh` must be a jax.sharding.Mesh"):
        fn.fit(worker.model(), optax.sgd(0.1), LOSS, (x, y), mesh=4, verbose=0)


@pytest.mark.parametrize("axis_types", ["auto", "explicit"])
def test_fit_on_a_one_device_mesh_equals_no_mesh(axis_types):
    """The same code path for one device: fit(mesh=...) with a single device is plain fit."""
    ref = worker.fit_in_memory()
    got = worker.fit_in_memory(distributed.make_mesh(axis_types=axis_types))
    assert_trees_close((got.params, got.state), (ref.params, ref.state))


# ----------------------------------------------------------------------------- 4 devices


def test_four_virtual_devices():
    """Run the ``test_mesh4_*`` tests of this file with 4 virtual CPU devices."""
    run_mesh4_tests("test_distributed.py", timeout=400)


@pytest.fixture(scope="module")
def reference():
    """One-device results of the shared training runs (a 4-device process's first device)."""
    return {"memory": worker.fit_in_memory(), "batches": worker.fit_local_batches()}


def _collective_case():
    def make(axis):
        return fn.serial(fn.Dense(8), fn.BatchNorm(axis_name=axis), fn.relu, fn.Dense(3))

    metrics = {
        "f1": fn.metrics.f1(3, average="macro", dtype=jnp.float32),
        "r2": r2_of_first_output(),  # a state that is not a sum: merged, not psum-ed
    }
    x, y = worker.data()
    x, y = x[:16], y[:16] + (x[:16, 2] > 0.5).astype(np.int32)
    w = np.linspace(0.5, 1.5, 16, dtype=np.float32)
    return make, metrics, x, y, w


@functools.cache
def _one_device_steps(weighted: bool):
    """Two jitted SGD steps on the whole batch: the reference for the collective runs."""
    make, metrics, x, y, w = _collective_case()
    opt = optax.sgd(0.1)
    ts = fn.TrainState.create(make(None), opt, jax.random.key(0), x)
    step = jax.jit(fn.train_step(make(None), LOSS, opt, metrics=metrics, l2=1e-3))
    batch = (x, y, w) if weighted else (x, y)
    for _ in range(2):
        ts, logs = step(ts, batch)
    return ts, logs


@needs4
@pytest.mark.parametrize(
    ("runner", "weighted"),
    [("shard_map", False), ("shard_map", True), ("shard_map_2d", True),
     ("shard_map_unchecked", True), ("pmap", False)],
)  # fmt: skip
def test_mesh4_shard_map_and_pmap_steps_match_jit(runner, weighted):
    """train_step(axis_name=...) under shard_map / pmap gives the whole-batch update.

    ``shard_map`` (check_vma=True) sums the gradient w.r.t. replicated params
    by itself, ``pmap`` and ``check_vma=False`` do not: the same step is right
    under all of them, with BatchNorm statistics and metrics over all devices.
    """
    make, metrics, x, y, w = _collective_case()
    axis = ("data", "fsdp") if runner == "shard_map_2d" else "data"
    opt = optax.sgd(0.1)
    step = fn.train_step(make(axis), LOSS, opt, metrics=metrics, l2=1e-3, axis_name=axis)
    batch = (x, y, w) if weighted else (x, y)
    ts = fn.TrainState.create(make(None), opt, jax.random.key(0), x)
    if runner == "pmap":
        run = jax.pmap(step, axis_name=axis)
        ts = jax.tree.map(lambda v: jnp.stack([v] * 4), ts)
        batch = jax.tree.map(lambda v: v.reshape(4, 4, *v.shape[1:]), batch)
    else:
        mesh = distributed.make_mesh(fsdp=2 if runner == "shard_map_2d" else 1)
        run = jax.jit(
            jax.shard_map(step, mesh=mesh, in_specs=(P(), P(axis)), out_specs=P(),
                          check_vma=runner != "shard_map_unchecked")
        )  # fmt: skip
    for _ in range(2):
        ts, logs = run(ts, batch)
        jax.block_until_ready(ts)
    if runner == "pmap":  # every device holds the same result
        ts, logs = jax.tree.map(lambda v: v[3], (ts, logs))
    ref, ref_logs = _one_device_steps(weighted)
    assert_trees_close((ts.params, ts.state), (ref.params, ref.state))
    np.testing.assert_allclose(logs["loss"], ref_logs["loss"], rtol=1e-5)
    for name, metric in metrics.items():
        np.testing.assert_allclose(
            metric.compute(logs[name]), metric.compute(ref_logs[name]), rtol=1e-5, atol=1e-6
        )
    if runner == "shard_map_2d":  # eval_step over a tuple of axes
        evaluate = fn.eval_step(make(axis), LOSS, metrics=metrics, axis_name=axis)
        got = jax.jit(
            jax.shard_map(evaluate, mesh=mesh, in_specs=(P(), P(), P(axis)), out_specs=P())
        )(ts.params, ts.state, batch)
        want = fn.eval_step(make(None), LOSS, metrics=metrics)(ts.params, ts.state, batch)
        np.testing.assert_allclose(got["loss"], want["loss"], rtol=1e-5)
        for name, metric in metrics.items():
            np.testing.assert_allclose(
                metric.compute(got[name]), metric.compute(want[name]), rtol=1e-5, atol=1e-6
            )


@needs4
def test_mesh4_accumulation_with_uneven_weights_matches_one_big_batch():
    """Micro-batches and devices are each weighted by their share of the sample weights."""
    model = fn.serial(fn.Dense(8), fn.relu, fn.Dense(3))
    x, y = worker.data()
    x, y = x[:16], y[:16]
    w = np.array([1, 1, 1, 1, 1, 0, 0, 0, 2, 0, 0, 0, 0.5, 0.5, 1, 0], np.float32)
    opt = fn.compose_optimizer(optax.sgd(0.1), clip_norm=0.05)
    ts = fn.TrainState.create(model, opt, jax.random.key(0), x)
    ref, ref_logs = jax.jit(fn.train_step(model, LOSS, opt))(ts, (x, y, w))
    step = fn.train_step(model, LOSS, opt, accumulate_steps=2, axis_name="data")
    mesh = distributed.make_mesh()
    run = jax.jit(jax.shard_map(step, mesh=mesh, in_specs=(P(), P("data")), out_specs=P()))
    got, logs = run(ts, (x, y, w))
    assert_trees_close(got.params, ref.params)
    np.testing.assert_allclose(logs["loss"], ref_logs["loss"], rtol=1e-5)


@needs4
@pytest.mark.parametrize("axis_types", ["auto", "explicit"])
def test_mesh4_fit_matches_one_device(reference, axis_types):
    """Arrays, on-device epochs, 2 fused steps per call, BatchNorm, SGD: the one-device params."""
    mesh = distributed.make_mesh(axis_types=axis_types)
    ts = worker.fit_in_memory(mesh)
    assert_trees_close(
        (ts.params, ts.state), (reference["memory"].params, reference["memory"].state)
    )
    assert ts.params[0]["w"].sharding.mesh.axis_types == mesh.axis_types  # on the caller's mesh
    batches = worker.fit_local_batches(mesh)
    ref = reference["batches"]
    assert_trees_close((batches.params, batches.state), (ref.params, ref.state))


@needs4
@pytest.mark.parametrize(("fsdp", "axis_types"), [(2, "explicit"), (1, "auto")])
def test_mesh4_fsdp_matches_replicated(reference, fsdp, axis_types):
    mesh = distributed.make_mesh(fsdp=fsdp, axis_types=axis_types)
    x, y = worker.data()
    ts, _ = fn.fit(
        worker.model(), optax.sgd(0.1), LOSS, (x, y), epochs=2, batch_size=16, mesh=mesh,
        param_sharding="fsdp", steps_per_execution=2, verbose=0,
    )  # fmt: skip
    ref = reference["memory"]
    assert_trees_close((ts.params, ts.state), (ref.params, ref.state))
    axis = "fsdp" if fsdp > 1 else "data"
    assert ts.params[0]["w"].sharding.spec == P(None, axis)  # (6, 16): split along the 16
    replicated = distributed.place(ts, NamedSharding(mesh, P()))
    assert distributed.per_device_bytes(ts) < distributed.per_device_bytes(replicated) / 1.5


@needs4
def test_mesh4_evaluate_and_predict_match_one_device(reference):
    mesh = distributed.make_mesh(axis_types="explicit")
    ts = reference["memory"]
    x, y = worker.data()
    x, y = x[:37], y[:37]  # 37 examples: padded batches, masked
    kwargs = dict(loss=LOSS, metrics=["accuracy", fn.metrics.f1(2)], batch_size=10)
    want = fn.evaluate(worker.model(), ts.params, ts.state, (x, y), **kwargs)
    got = fn.evaluate(worker.model(), ts.params, ts.state, (x, y), mesh=mesh, **kwargs)
    batches = list(fn.data.batches((x, y), 10))
    got_batches = fn.evaluate(worker.model(), ts.params, ts.state, batches, mesh=mesh, **kwargs)
    for logs in (got, got_batches):
        assert logs.keys() == want.keys()
        for k in want:
            np.testing.assert_allclose(logs[k], want[k], rtol=1e-5)
    out = fn.predict(worker.model(), ts.params, ts.state, x, batch_size=10, mesh=mesh)
    one = fn.predict(worker.model(), ts.params, ts.state, x)
    np.testing.assert_allclose(np.asarray(out), one, rtol=1e-5, atol=1e-6)
    # params and state committed to one device are moved onto the mesh, next to the batches
    params, state = jax.device_put((ts.params, ts.state), jax.devices()[1])
    out = fn.predict(worker.model(), params, state, x, batch_size=10, mesh=mesh)
    np.testing.assert_allclose(np.asarray(out), one, rtol=1e-5, atol=1e-6)


def _keep_last_rows():
    """A layer whose state is the last training batch's rows (the compiler would split it)."""

    def init(key, x):
        return {}, {"last": jnp.zeros(x.shape, x.dtype)}

    def apply(params, state, x, *, key=None, train=False):
        return x, ({"last": x} if train else state)

    return fn.Layer(init, apply, "KeepLast")


@needs4
def test_mesh4_fit_on_batches_returns_the_state_replicated():
    """``param_sharding="replicated"``: the whole state on every device, even a state of rows."""
    model = fn.serial(_keep_last_rows(), fn.Dense(2))
    x, y = worker.data()
    batches = list(fn.data.batches((x, y), 16))
    ref, _ = fn.fit(model, optax.sgd(0.1), LOSS, batches, verbose=0)
    ts, _ = fn.fit(model, optax.sgd(0.1), LOSS, batches, mesh=distributed.make_mesh(), verbose=0)
    assert_trees_close((ts.params, ts.state), (ref.params, ref.state))
    last = ts.state[0]["last"]
    np.testing.assert_array_equal(np.asarray(last), batches[-1][0])
    assert len(last.sharding.device_set) == 4 and last.sharding.is_fully_replicated
    for shard in last.addressable_shards:
        assert shard.data.shape == (16, 6)


@needs4
def test_mesh4_training_arrays_are_split_over_the_devices():
    """fit's arrays are placed once, padded to a multiple of the mesh: a quarter per device."""
    from funcnet.training.feed import ArrayEpochs, Placement, check_arrays

    x, y = worker.data()
    mesh = distributed.make_mesh(axis_types="explicit")
    feed = ArrayEpochs(check_arrays((x[:37], y[:37]), "fit"), 8, Placement(mesh, "fit"))
    data = jax.tree.leaves(feed.data)
    assert len(data) == 2
    for a, want in zip(data, (x[:37], y[:37])):
        assert a.shape[0] == 40  # 37 rows padded to a multiple of 4
        assert {s.device for s in a.addressable_shards} == set(mesh.devices.flat)
        assert [s.data.shape[0] for s in a.addressable_shards] == [10] * 4
        np.testing.assert_array_equal(np.asarray(a)[:37], want)


@needs4
def test_mesh4_fit_continues_from_a_state_on_another_device(reference):
    """``initial_state`` committed to one device is placed on the mesh: the second epoch of the
    one-device run."""
    x, y = worker.data()
    kw = dict(batch_size=16, steps_per_execution=2, verbose=0)
    half, _ = fn.fit(worker.model(), optax.sgd(0.1), LOSS, (x, y), epochs=1, **kw)
    half = jax.device_put(half, jax.devices()[1])
    mesh = distributed.make_mesh()
    ts, history = fn.fit(
        worker.model(), optax.sgd(0.1), LOSS, (x, y), epochs=2, initial_state=half, mesh=mesh, **kw
    )
    assert len(history["loss"]) == 1 and int(ts.step) == 12
    ref = reference["memory"]
    assert_trees_close((ts.params, ts.state), (ref.params, ref.state))
    assert ts.params[0]["w"].sharding.mesh == mesh


@needs4
@pytest.mark.parametrize("axis_types", ["auto", "explicit"])
def test_mesh4_fit_restore_best_returns_the_best_state(reference, axis_types):
    """EarlyStopping(restore_best=True) on a mesh: the best epoch's state (here the last),
    which the callback kept on the host, comes back on the caller's mesh."""
    stop = fn.callbacks.EarlyStopping("loss", restore_best=True)
    mesh = distributed.make_mesh(axis_types=axis_types)
    ts, history = fn.fit(
        worker.model(), optax.sgd(0.1), LOSS, worker.data(), epochs=2, batch_size=16,
        steps_per_execution=2, mesh=mesh, callbacks=[stop], verbose=0,
    )  # fmt: skip
    assert stop.best_epoch == 1 and stop.best == history["loss"][1]
    ref = reference["memory"]
    assert_trees_close((ts.params, ts.state), (ref.params, ref.state))
    for leaf in jax.tree.leaves(ts):
        assert leaf.sharding.mesh == mesh and leaf.sharding.is_fully_replicated


@needs4
def test_mesh4_errors():
    mesh = distributed.make_mesh()
    x, y = worker.data()
    with pytest.raises(ValueError, match=r"fit: `batch_size` 10 is not divisible by the 4 devices"):
        fn.fit(worker.model(), optax.sgd(0.1), LOSS, (x, y), batch_size=10, mesh=mesh, verbose=0)
    batches = list(fn.data.batches((x, y), 10))
    with pytest.raises(ValueError, match=r"fit: the global batch size 10 is not divisible"):
        fn.fit(worker.model(), optax.sgd(0.1), LOSS, batches, mesh=mesh, verbose=0)
    with pytest.raises(ValueError, match=r"`fsdp=3` does not divide the 4 devices"):
        distributed.make_mesh(fsdp=3)
    with pytest.raises(ValueError, match=r"global_batch: the global batch size 6"):
        distributed.global_batch(np.ones((6, 2)), mesh)


# ----------------------------------------------------------------------------- 2 processes


def test_two_processes_match_one_process(tmp_path, reference):
    """2 processes x 2 CPU devices (gloo on 127.0.0.1) train as one process does."""
    argv = [sys.executable, os.path.join(HERE, "_distributed_worker.py"), str(tmp_path)]
    results = distributed.launch(argv, 2, cpu_devices=2, timeout=240)
    assert all("done" in r.output for r in results)
    want = worker.param_leaves(reference["memory"]) + worker.param_leaves(reference["batches"])
    for process in (0, 1):
        with np.load(tmp_path / f"params_{process}.npz") as saved:
            got = [saved[f"arr_{i}"] for i in range(len(saved.files))]
        assert len(got) == len(want)
        for a, b in zip(got, want):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=2e-6)


def test_two_processes_one_dies_fails_clearly(tmp_path):
    argv = [sys.executable, os.path.join(HERE, "_distributed_worker.py"), str(tmp_path), "--die"]
    with pytest.raises(RuntimeError, match=r"process 1 of 2 exited with code 3; stopped the other"):
        distributed.launch(argv, 2, cpu_devices=2, timeout=120)
