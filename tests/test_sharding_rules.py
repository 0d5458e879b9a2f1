"""Sharding rules: logical axis names on params, rules, and training on a 2-D mesh.

The declarations and every bad-rule error are tested in this process (an
``AbstractMesh`` stands for a 2x4 mesh). Tests named ``test_mesh8_*`` need 8
devices: in the normal (1-device) run they are skipped, and
``test_eight_virtual_devices`` runs them in ONE subprocess with
``XLA_FLAGS=--xla_force_host_platform_device_count=8``. There a 2x4
``("data", "model")`` mesh trains a Transformer LM and an MLP under
tensor-parallel rules with SGD and must reach the one-device params; the
bytes per device are read from the arrays' ``addressable_shards``.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from _mesh4 import run_mesh_tests
from jax.sharding import AbstractMesh, AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import funcnet as fn
from funcnet import distributed as D

F32 = jnp.float32
MESH = AbstractMesh((2, 4), ("data", "model"))  # the shape of the 8-device mesh, no devices
VOCAB, WIDTH, T = 16, 16, 8
LOSS = "sparse_categorical_cross_entropy"

needs8 = pytest.mark.skipif(
    jax.device_count() < 8,
    reason="needs 8 devices; test_eight_virtual_devices runs it in a subprocess",
)


def S(*shape, dtype=F32):
    return jax.ShapeDtypeStruct(shape, dtype)


def is_spec(x):
    return isinstance(x, P)


def lm(num_kv_heads=None):
    """A tiny decoder-only LM as the README builds it: embedding, causal blocks, head."""
    return fn.serial(
        fn.Embedding(VOCAB, WIDTH),
        fn.PositionalEmbedding(T),
        fn.transformer_encoder(2, 4, num_kv_heads=num_kv_heads, causal=True, mlp_ratio=2),
        fn.Dense(VOCAB, axes=("embed", "vocab")),
    )


def mlp():
    """An MLP whose Dense layers alternate column- and row-parallel (no biases: all split)."""
    return fn.serial(
        fn.Dense(32, use_bias=False),
        jax.nn.relu,
        fn.Dense(8, use_bias=False, axes=("mlp", "embed")),
        jax.nn.relu,
        fn.Dense(32, use_bias=False),
        jax.nn.relu,
        fn.Dense(4, use_bias=False, axes=("mlp", None)),
    )


# ----------------------------------------------------------------------------- declarations


def test_transformer_lm_declares_megatron_axes():
    names = D.logical_axes(lm(num_kv_heads=2), S(2, T, dtype=jnp.int32))
    assert names[0]["table"] == P("vocab", "embed")
    assert names[1]["table"] == P("position", "embed")
    blocks = names[2][0]
    attention = blocks["attention"][1]
    assert attention["query"]["w"] == P("layers", "embed", "heads", "kv")
    assert attention["key"]["w"] == P("layers", "embed", "kv_heads", "kv")
    assert attention["value"]["b"] == P("layers", "kv_heads", "kv")
    assert attention["out"]["w"] == P("layers", "heads", "kv", "embed")
    up, down = blocks["mlp"][1], blocks["mlp"][3]
    assert (up["w"], up["b"]) == (P("layers", "embed", "mlp"), P("layers", "mlp"))
    assert (down["w"], down["b"]) == (P("layers", "mlp", "embed"), P("layers", "embed"))
    assert blocks["attention"][0]["scale"] == P("layers", "norm")
    assert names[2][1]["scale"] == P("norm")  # the final norm, outside the stack
    assert names[3]["w"] == P("embed", "vocab")
    # reading the names allocated nothing and left init's params plain
    params, _ = lm().init(jax.random.key(0), jnp.zeros((2, T), jnp.int32))
    assert all(isinstance(a, jax.Array) for a in jax.tree.leaves(params))


def test_glu_mlp_is_column_then_row_parallel():
    names = D.logical_axes(fn.glu_mlp(12, 8), S(2, 8))
    assert names["gate_up"][0][0]["w"] == P("embed", "mlp")
    assert names["gate_up"][1]["w"] == P("embed", "mlp")
    assert names["down"]["w"] == P("mlp", "embed")


def test_user_layer_reads_replicated_and_can_declare():
    def init(key, x):
        return {"scale": jnp.ones(x.shape[-1:]), "m": jnp.ones((x.shape[-1], 4))}, ()

    def apply(params, state, x, *, key=None, train=False):
        return x * params["scale"], state

    plain = fn.Layer(init, apply, "Plain")
    assert D.logical_axes(plain, S(2, 3)) == {"scale": P(None), "m": P(None, None)}
    specs = D.param_specs(plain, S(2, 3), MESH, D.tensor_parallel())
    assert specs == {"scale": P(None), "m": P(None, None)}

    def declared_init(key, x):
        params, state = init(key, x)
        return fn.core.declare(params, {"m": ("embed", "experts")}), state

    mine = fn.Layer(declared_init, apply, "Mine")
    assert D.logical_axes(mine, S(2, 3))["m"] == P("embed", "experts")
    # a name only this model uses is a known name for the rules
    specs = D.param_specs(mine, S(2, 3), MESH, {"experts": "model"})
    assert specs["m"] == P(None, "model")


def test_dense_axes_argument_is_checked():
    assert D.logical_axes(fn.Dense(3, axes=(None, "vocab")), S(2, 4))["w"] == P(None, "vocab")
    with pytest.raises(ValueError, match=r"Dense: `axes` must be 2 logical axis names"):
        fn.Dense(3, axes=("embed",))
    with pytest.raises(ValueError, match=r"Dense: `axes` must be 2 .* got \('embed', 3\)"):
        fn.Dense(3, axes=("embed", 3))


def test_declare_checks_the_number_of_names():
    with (
        fn.core.declaring_axes(),
        pytest.raises(ValueError, match=r"2 axis names .* shape \(3,\); give one name"),
    ):
        fn.core.declare(jnp.zeros(3), ("embed", "mlp"))


# ----------------------------------------------------------------------------- rules


def test_tensor_parallel_specs_of_the_lm():
    specs = D.param_specs(lm(), S(2, T, dtype=jnp.int32), MESH, D.tensor_parallel())
    attention = specs[2][0]["attention"][1]
    assert specs[0]["table"] == P("model", None)
    assert attention["query"]["w"] == P(None, None, "model", None)
    assert attention["out"]["w"] == P(None, "model", None, None)
    assert attention["out"]["b"] == P(None, None)
    assert specs[2][0]["mlp"][1]["w"] == P(None, None, "model")
    assert specs[2][0]["mlp"][3]["w"] == P(None, "model", None)
    assert specs[3]["w"] == P(None, "model")


def test_fsdp_rules_split_each_param_once():
    mesh = AbstractMesh((2, 4), ("data", "fsdp"))
    specs = D.param_specs(mlp(), S(2, 8), mesh, D.fsdp_rules())
    assert [specs[i]["w"] for i in (0, 2, 4, 6)] == [
        P("fsdp", None),
        P(None, "fsdp"),
        P("fsdp", None),
        P(None, None),
    ]
    assert D.fsdp_rules().mesh_axes("batch") == ("data", "fsdp")


def test_overrides_by_path_win():
    rules = D.tensor_parallel() | D.Rules(overrides={r"^3/w$": P("model", None), r"^0/": None})
    specs = D.param_specs(lm(), S(2, T, dtype=jnp.int32), MESH, rules)
    assert specs[3]["w"] == P("model", None)
    assert specs[0]["table"] == P(None, None)
    assert specs[2][0]["mlp"][1]["w"] == P(None, None, "model")  # untouched


def test_optimizer_state_follows_the_params():
    model, x = mlp(), S(2, 8)
    specs = D.param_specs(model, x, MESH, D.tensor_parallel())
    params, _ = fn.init_spec(model, x)
    opt = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(1e-3))
    state = D.opt_state_specs(opt, params, specs)
    adam = state[1][0]
    assert adam.mu == specs and adam.nu == specs
    assert adam.count == P()
    assert jax.tree.structure(state, is_leaf=is_spec) == jax.tree.structure(
        jax.eval_shape(opt.init, params)
    )


def test_error_axis_does_not_divide():
    model = fn.serial(fn.Dense(8), fn.Dense(6, use_bias=False))  # 6 columns over 4 devices
    with pytest.raises(
        ValueError,
        match=r"param '1/w' of shape \(8, 6\): axis 1 \('mlp' -> mesh axes \('model',\), 4 "
        r"devices\) does not divide its size 6\. Map 'mlp' to None, override the path",
    ):
        D.param_specs(model, S(2, 4), MESH, D.tensor_parallel())


def test_error_unknown_logical_name():
    with pytest.raises(ValueError, match=r"unknown logical axis name 'mpl'.*Did you mean 'mlp'\?"):
        D.param_specs(mlp(), S(2, 8), MESH, {"mpl": "model"})


def test_error_mesh_axis_used_twice():
    with pytest.raises(
        ValueError,
        match=r"param '0/w' \(axes \('embed', 'mlp'\)\): mesh axis 'model' is used twice, by "
        r"'embed' and 'mlp'.*Map one of them to None",
    ):
        D.param_specs(mlp(), S(2, 8), MESH, {"embed": "model", "mlp": "model"})


def test_error_mesh_axis_not_in_mesh():
    with pytest.raises(
        ValueError,
        match=r"param '0/w' \(axes \('embed', 'mlp'\)\): 'mlp' maps to mesh axis 'tensor', "
        r"but the mesh has axes \('data', 'model'\)",
    ):
        D.param_specs(mlp(), S(2, 8), MESH, {"mlp": "tensor"})


def test_error_override_too_long():
    with pytest.raises(ValueError, match=r"override for param '0/w' of shape \(8, 32\) has 3"):
        D.param_specs(mlp(), S(2, 8), MESH, D.Rules(overrides={"0/w": P(None, None, "model")}))


def test_error_bad_rules_objects():
    with pytest.raises(TypeError, match=r"Rules: each rule maps a logical name to a mesh axis"):
        D.Rules({"mlp": 4})
    with pytest.raises(TypeError, match=r"override for 'w' must be a PartitionSpec"):
        D.Rules(overrides={"w": ("model",)})
    with pytest.raises(TypeError, match=r"param_specs: sharding rules must be a `distributed"):
        D.param_specs(mlp(), S(2, 8), MESH, ["mlp"])


def test_training_entry_points_check_their_sharding_arguments():
    x, y = np.zeros((8, 8), np.float32), np.zeros(8, np.int32)
    bad = r"fit: `param_sharding` must be 'replicated' or 'fsdp' \(or sharding rules"
    with pytest.raises(ValueError, match=bad):
        fn.fit(mlp(), optax.sgd(0.1), LOSS, (x, y), param_sharding="tensor", verbose=0)
    with pytest.raises(ValueError, match=r"fit: `param_sharding=Rules\(.*needs a `mesh`"):
        fn.fit(mlp(), optax.sgd(0.1), LOSS, (x, y), param_sharding=D.tensor_parallel())
    params, state = mlp().init(jax.random.key(0), x)
    with pytest.raises(ValueError, match=r"evaluate: `param_sharding` needs a `mesh`"):
        fn.evaluate(mlp(), params, state, (x, y), loss=LOSS, param_sharding={"mlp": "model"})
    with pytest.raises(ValueError, match=r"predict: `param_sharding` needs a `mesh`"):
        fn.predict(mlp(), params, state, x, param_sharding={"mlp": "model"})
    with pytest.raises(ValueError, match=r"generate: give `mesh` and `param_sharding` together"):
        fn.generate(mlp(), params, state, np.zeros((1, 2), np.int32), max_new_tokens=1,
                    temperature=0, param_sharding={"mlp": "model"})  # fmt: skip
    with pytest.raises(ValueError, match=r"train_step: `param_sharding` needs a `mesh`"):
        fn.train_step(mlp(), LOSS, optax.sgd(0.1), param_sharding={"mlp": "model"})
    explicit = jax.make_mesh((1, 1), ("data", "model"), axis_types=(AxisType.Explicit,) * 2)
    with pytest.raises(ValueError, match=r"train_step: `mesh` needs Auto axes.*auto_mesh"):
        fn.train_step(mlp(), LOSS, optax.sgd(0.1), mesh=explicit, param_sharding={"mlp": "model"})
    with pytest.raises(ValueError, match=r"state_shardings: `mode` must be 'replicated' or"):
        fn.train_step(mlp(), LOSS, optax.sgd(0.1), mesh=D.auto_mesh(explicit), param_sharding="tp")


# ----------------------------------------------------------------------------- 8 devices


def test_eight_virtual_devices():
    """Runs the ``test_mesh8_*`` tests below in one child process with 8 CPU devices."""
    run_mesh_tests("test_sharding_rules.py", devices=8, timeout=600)


def _lm_data(n=32):
    rng = np.random.default_rng(0)
    x = rng.integers(0, VOCAB, (n, T)).astype(np.int32)
    return x, np.roll(x, -1, axis=1)


def _mlp_data(n=64):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(n, 8)).astype(np.float32)
    return x, (x[:, 0] > 0).astype(np.int32) + 2 * (x[:, 1] > 0).astype(np.int32)


def _mesh():
    return jax.make_mesh((2, 4), ("data", "model"), axis_types=(AxisType.Auto,) * 2)


def _assert_close(a, b, atol):
    jax.tree.map(lambda u, v: np.testing.assert_allclose(u, v, rtol=1e-5, atol=atol), a, b)


def _expected_bytes(params, mesh):
    """Bytes per device from the specs alone: each array's bytes over its split count."""
    total = 0
    for leaf in jax.tree.leaves(params):
        spec = leaf.sharding.spec
        split = np.prod([mesh.shape[a] for part in spec if part for a in np.atleast_1d(part)])
        total += leaf.nbytes // int(split)
    return total


def _fit_both(model, data, batch_size, epochs=1):
    kw = dict(epochs=epochs, batch_size=batch_size, verbose=0, shuffle=False)
    one, h1 = fn.fit(model, optax.sgd(0.5), LOSS, data, **kw)
    mesh = _mesh()
    tp, h2 = fn.fit(
        model, optax.sgd(0.5), LOSS, data, mesh=mesh, param_sharding=D.tensor_parallel(), **kw
    )
    return one, tp, mesh, (h1, h2)


@needs8
def test_mesh8_transformer_lm_tensor_parallel_matches_one_device():
    model, data = lm(), _lm_data()
    one, tp, mesh, (h1, h2) = _fit_both(model, data, batch_size=8)
    _assert_close(one.params, tp.params, atol=2e-6)
    np.testing.assert_allclose(h1["loss"], h2["loss"], rtol=1e-5)
    assert tp.params[2][0]["mlp"][1]["w"].sharding.spec == P(None, None, "model")
    # the optimizer's params-shaped state (none for SGD) and the step stay replicated
    assert tp.step.sharding.spec == P()
    measured = D.per_device_bytes(tp.params)  # from the arrays' addressable_shards
    whole = sum(leaf.nbytes for leaf in jax.tree.leaves(one.params))
    assert measured == _expected_bytes(tp.params, mesh)
    split = sum(a.nbytes for a in jax.tree.leaves(tp.params) if any(a.sharding.spec))
    assert measured == split // 4 + (whole - split)  # the split params take a quarter
    assert split / whole > 0.9 and whole / measured > 3.2  # norms, biases, positions: whole
    # evaluate / predict with the rules, from one-device params, equal one device
    ev1 = fn.evaluate(model, one.params, one.state, data, loss=LOSS)
    ev2 = fn.evaluate(
        model, one.params, one.state, data, loss=LOSS, mesh=mesh, param_sharding=D.tensor_parallel()
    )
    np.testing.assert_allclose(ev1["loss"], ev2["loss"], rtol=1e-5)
    p1 = fn.predict(model, one.params, one.state, data[0])
    p2 = fn.predict(
        model, one.params, one.state, data[0], mesh=mesh, param_sharding=D.tensor_parallel()
    )
    np.testing.assert_allclose(p1, p2, rtol=1e-4, atol=1e-5)
    # greedy decoding with a KV cache, params split by the rules: the one-device tokens
    prompts = jnp.asarray(data[0][:2, :4])
    new1 = fn.generate(model, one.params, one.state, prompts, max_new_tokens=3, temperature=0)
    new2 = fn.generate(
        model,
        one.params,
        one.state,
        prompts,
        max_new_tokens=3,
        temperature=0,
        mesh=mesh,
        param_sharding=D.tensor_parallel(),
    )
    np.testing.assert_array_equal(new1, new2)


@needs8
def test_mesh8_mlp_tensor_parallel_matches_one_device_and_quarters_the_bytes():
    model, data = mlp(), _mlp_data()
    one, tp, _, _ = _fit_both(model, data, batch_size=16, epochs=2)
    _assert_close(one.params, tp.params, atol=2e-6)
    whole = sum(leaf.nbytes for leaf in jax.tree.leaves(one.params))
    assert D.per_device_bytes(tp.params) * 4 == whole  # every weight split over "model"
    for shard in tp.params[0]["w"].addressable_shards:
        assert shard.data.shape == (8, 8)  # (8, 32) split by columns over 4 devices
    # the FSDP preset on a (data, fsdp) mesh: the batch over all 8, each weight split once
    mesh = jax.make_mesh((2, 4), ("data", "fsdp"), axis_types=(AxisType.Auto,) * 2)
    kw = dict(epochs=2, batch_size=16, verbose=0, shuffle=False)
    fsdp, _ = fn.fit(model, optax.sgd(0.5), LOSS, data, mesh=mesh, param_sharding=D.fsdp_rules(),
                     **kw)  # fmt: skip
    _assert_close(one.params, fsdp.params, atol=2e-6)
    assert fsdp.params[0]["w"].sharding.spec == P("fsdp", None)
    last = 32 * 4 * 4  # the head (32, 4) declares ("mlp", None): no "embed", stays whole
    assert D.per_device_bytes(fsdp.params) == (whole - last) // 4 + last


@needs8
def test_mesh8_jitted_train_step_keeps_the_rules_shardings():
    model, (x, y) = mlp(), _mlp_data(16)
    mesh, rules, opt = _mesh(), D.tensor_parallel(), optax.sgd(0.1, momentum=0.9)
    ts = fn.TrainState.create(model, opt, jax.random.key(0), x)
    shardings = D.train_state_shardings(ts, opt, model, x, mesh, rules)
    step = jax.jit(fn.train_step(model, LOSS, opt, mesh=mesh, param_sharding=rules))
    plain = jax.jit(fn.train_step(model, LOSS, opt))
    a, b = D.place(ts, shardings), ts
    batch = jax.device_put((x, y), NamedSharding(mesh, P("data")))
    for _ in range(3):
        a, _ = step(a, batch)
        b, _ = plain(b, (x, y))
    _assert_close(a.params, b.params, atol=1e-5)
    row = NamedSharding(mesh, P("model", None))
    assert a.params[2]["w"].sharding.is_equivalent_to(row, 2)
    assert a.opt_state[0].trace[2]["w"].sharding.is_equivalent_to(row, 2)  # the momentum
    assert a.step.sharding.is_equivalent_to(NamedSharding(mesh, P()), 0)


def test_traces_cached_in_one_mode_never_serve_the_other():
    """JAX caches traces by function: reading the names must not leak wrapped params into a
    later ``jit(init)``/``init_spec``, nor a cached plain trace hide the names."""
    model, x = lm(), jnp.zeros((2, T), jnp.int32)
    jitted = jax.jit(model.init)
    plain_first = jitted(jax.random.key(0), x)[0]
    names = D.logical_axes(model, x)
    assert names[0]["table"] == P("vocab", "embed")
    for params in (jitted(jax.random.key(0), x)[0], fn.init_spec(model, x)[0]):
        assert not any(isinstance(a, fn.core.Declared) for a in jax.tree.leaves(params))
        assert jax.tree.structure(params) == jax.tree.structure(plain_first)
    shared = fn.shared(fn.Dense(4), lambda d: fn.serial(d, d))
    assert D.logical_axes(shared, S(2, 4))["shared"]["w"] == P("embed", "mlp")
    assert fn.init_spec(shared, S(2, 4))[0]["shared"]["w"].shape == (4, 4)


def test_summary_shows_the_placement():
    info = fn.summary(
        mlp(), S(16, 8), flops=False, print_fn=None, mesh=MESH, rules=D.tensor_parallel()
    )
    whole = 4 * (8 * 32 + 32 * 8 + 8 * 32 + 32 * 4)  # float32 weights, no biases
    assert info.param_bytes == whole and info.device_param_bytes == whole // 4
    rows = {r.path: r for r in info.rows}
    assert rows["0"].sharding == "w(·,model)" and rows["0"].device_bytes == 8 * 32
    assert rows["6"].sharding == "w(model,·)" and rows["6"].device_bytes == 32 * 4
    assert "bytes/device" in str(info) and "params per device: 896 B" in str(info)
    lm_info = fn.summary(
        lm(),
        S(2, T, dtype=jnp.int32),
        flops=False,
        print_fn=None,
        mesh=MESH,
        rules=D.tensor_parallel(),
    )
    stack = [r for r in lm_info.rows if r.description.startswith("TransformerEncoderBlock")]
    assert stack and stack[0].device_bytes * 2 < lm_info.rows[0].device_bytes  # one of 2
    with pytest.raises(ValueError, match=r"summary: give `mesh` and `rules` together"):
        fn.summary(mlp(), S(16, 8), flops=False, print_fn=None, mesh=MESH)
