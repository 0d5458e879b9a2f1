"""Precision policies (with_policy, get_policy) and dynamic loss scaling, against hand-made
references: what each dtype must be, the scale's schedule, float16 gradients that underflow
without scaling, and bfloat16 training that ends near float32 training."""

import importlib.util
import pathlib

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import funcnet as fn
from funcnet.training import TrainState, compose_optimizer, loss_scale_of, train_step

STRICT_DTYPES = False  # optax's Adam is not strict-clean

F32, BF16, F16 = jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16)


def _example(name):
    path = pathlib.Path(__file__).parents[1] / "examples" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"example_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ----------------------------------------------------------------------------- policies


@pytest.mark.parametrize(
    "name, expected",
    [
        ("float32", (F32, F32, F32)),
        ("f32", (F32, F32, F32)),
        ("mixed_bfloat16", (F32, BF16, F32)),
        ("bf16", (F32, BF16, F32)),
        ("mixed_float16", (F32, F16, F32)),
        ("fp16", (F32, F16, F32)),
        ("bfloat16", (BF16, BF16, BF16)),
        ("float16", (F16, F16, F16)),
        ("params=float32,compute=bfloat16,output=float16", (F32, BF16, F16)),
        ("compute=float16", (None, F16, None)),
    ],
)
def test_get_policy_names(name, expected):
    assert tuple(fn.get_policy(name)) == expected


def test_get_policy_errors():
    with pytest.raises(ValueError, match="unknown precision policy 'bf32'"):
        fn.get_policy("bf32")
    with pytest.raises(ValueError, match="`compute` must be a float dtype, got 'int32'"):
        fn.get_policy("compute=int32")
    with pytest.raises(ValueError, match="`param_dtype` must be a float dtype"):
        fn.get_policy(fn.Policy(param_dtype=jnp.int8))
    with pytest.raises(TypeError, match="got int"):
        fn.get_policy(16)
    with pytest.raises(ValueError, match="not None"):
        fn.with_policy(fn.Dense(2), None)
    assert fn.get_policy(None) is None


def test_with_policy_casts_params_inputs_and_outputs(key):
    """mixed_bfloat16: float32 params, the Dense computed on bfloat16-rounded weights and
    inputs (numpy reference), float32 output; bfloat16: bfloat16 params and outputs."""
    x = np.random.default_rng(0).normal(size=(4, 5)).astype(np.float32)
    layer = fn.with_policy(fn.Dense(3), "mixed_bfloat16")
    params, state = layer.init(key, x)
    assert params["w"].dtype == F32
    out, _ = layer.apply(params, state, x)
    assert out.dtype == F32
    bf = lambda a: np.asarray(jnp.asarray(a).astype(BF16).astype(F32))
    expected = bf(bf(x) @ bf(params["w"]) + bf(params["b"]))
    np.testing.assert_allclose(out, expected, rtol=1e-2, atol=1e-2)
    assert not np.allclose(out, x @ params["w"] + params["b"], rtol=1e-5, atol=1e-6)
    pure = fn.with_policy(fn.Dense(3), "bfloat16")
    p16, s16 = pure.init(key, x)
    assert p16["w"].dtype == BF16 and pure.apply(p16, s16, x)[0].dtype == BF16
    assert repr(layer) == "with_policy('mixed_bfloat16')(Dense(3))"


def test_with_policy_gradients_are_float32(key):
    x = jnp.ones((2, 4))
    layer = fn.with_policy(fn.serial(fn.Dense(8), jnp.tanh, fn.Dense(1)), "mixed_bfloat16")
    params, state = layer.init(key, x)
    grads = jax.grad(lambda p: layer.apply(p, state, x)[0].sum())(params)
    assert {g.dtype for g in jax.tree.leaves(grads)} == {F32}


def test_with_policy_leaves_int_inputs_and_state_dtypes(key):
    """Token ids stay integers; BatchNorm's float32 statistics come back float32 after a
    bfloat16 training call, and the statistics are those of the (rounded) batch."""
    ids = jnp.array([[1, 2, 3]])
    emb = fn.with_policy(fn.Embedding(5, 4), "mixed_bfloat16")
    params, state = emb.init(key, ids)
    np.testing.assert_allclose(emb.apply(params, state, ids)[0][0], params["table"][1:4], rtol=1e-2)
    x = np.random.default_rng(1).normal(3.0, 2.0, size=(16, 3)).astype(np.float32)
    bn = fn.with_policy(fn.BatchNorm(momentum=0.0), "mixed_bfloat16")
    params, state = bn.init(key, x)
    _, new_state = bn.apply(params, state, x, train=True)
    for old, new in zip(jax.tree.leaves(state), jax.tree.leaves(new_state)):
        assert new.dtype == old.dtype == F32
    np.testing.assert_allclose(new_state["mean"], x.mean(0), rtol=1e-2)


def test_a_part_of_a_model_under_a_policy(key):
    """A bfloat16 body then a float32 head: the head computes in float32 on the body's
    features; a policy around a model that already holds one is refused."""
    seen = []

    def probe(name):
        return lambda h: (seen.append((name, h.dtype)), h)[1]

    body = fn.with_policy(fn.serial(fn.Dense(4), probe("body")), "bfloat16")
    model = fn.serial(body, probe("head"), fn.Dense(2))
    x = jnp.ones((2, 4))
    params, state = model.init(key, x)
    assert params[0][0]["w"].dtype == BF16 and params[2]["w"].dtype == F32
    seen.clear()
    out, _ = model.apply(params, state, x)
    assert seen == [("body", BF16), ("head", BF16)] and out.dtype == F32
    with pytest.raises(ValueError, match=r"contains with_policy.*do not nest"):
        fn.with_policy(fn.serial(body, fn.Dense(2)), "float32")


def test_train_step_policy_equals_compute_dtype(key):
    x = np.random.default_rng(0).normal(size=(8, 3)).astype(np.float32)
    y = np.random.default_rng(1).normal(size=(8, 2)).astype(np.float32)
    model = fn.serial(fn.Dense(8), jax.nn.relu, fn.Dense(2))
    ts = TrainState.create(model, optax.sgd(0.1), key, x)
    a, la = train_step(model, "mse", optax.sgd(0.1), policy="mixed_bfloat16")(ts, (x, y))
    b, lb = train_step(model, "mse", optax.sgd(0.1), compute_dtype=jnp.bfloat16)(ts, (x, y))
    chex.assert_trees_all_equal(a.params, b.params)
    assert la["loss"] == lb["loss"]
    with pytest.raises(ValueError, match="not both"):
        train_step(model, "mse", optax.sgd(0.1), policy="bf16", compute_dtype=jnp.bfloat16)


# ----------------------------------------------------------------------------- loss scaling


def _reference_schedule(finite, initial, interval, factor, min_scale):
    """The scale before each step and the skipped count, by the GradScaler rule."""
    scale, good, skipped, scales = initial, 0, 0, []
    for ok in finite:
        scales.append(scale)
        if ok:
            good += 1
            if good == interval:
                scale, good = scale * factor, 0
        else:
            scale, good, skipped = max(scale / factor, min_scale), 0, skipped + 1
    return scales, scale, skipped


def test_dynamic_loss_scale_schedule_and_skips():
    finite = [1, 1, 1, 0, 1, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1]
    opt = fn.dynamic_loss_scale(
        optax.adam(0.1), initial_scale=8.0, growth_interval=3, factor=2.0, min_scale=1.0
    )
    params = {"w": jnp.zeros(3)}
    state = opt.init(params)
    seen = []
    for ok in finite:
        seen.append(float(state.scale))
        grad = {"w": jnp.array([0.5, -1.0, jnp.inf if not ok else 2.0])}
        before = state.inner_state
        updates, state = opt.update(grad, state, params)
        assert bool(state.last_finite) == bool(ok)
        if not ok:  # skipped: a zero update, Adam's moments and count untouched
            assert not np.any(np.asarray(updates["w"]))
            chex.assert_trees_all_equal(state.inner_state, before)
        else:
            assert np.all(np.asarray(updates["w"]) != 0)
    scales, final, skipped = _reference_schedule(finite, 8.0, 3, 2.0, 1.0)
    assert seen == scales
    assert float(state.scale) == final and int(state.skipped) == skipped == 5
    assert float(loss_scale_of(state)) == final


def test_dynamic_loss_scale_errors():
    with pytest.raises(ValueError, match="factor > 1"):
        fn.dynamic_loss_scale(optax.sgd(0.1), factor=1.0)
    with pytest.raises(ValueError, match="min_scale <= initial_scale"):
        fn.dynamic_loss_scale(optax.sgd(0.1), initial_scale=0.5)
    with pytest.raises(ValueError, match="growth_interval"):
        fn.dynamic_loss_scale(optax.sgd(0.1), growth_interval=0)
    with pytest.raises(TypeError, match="GradientTransformation"):
        fn.dynamic_loss_scale(lambda g: g)
    with pytest.raises(ValueError, match="'dynamic' or None"):
        compose_optimizer(optax.sgd(0.1), loss_scale="static")


def _tiny_loss_problem(key):
    """A float16 model whose output gradients (~1e-9, under float16's smallest subnormal
    6e-8) flush to zero without a loss scale."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 4)).astype(np.float32)
    y = rng.normal(size=(16, 1)).astype(np.float32)
    model = fn.Dense(1)
    loss = lambda out, t, weights=None: 1e-8 * jnp.mean((out - t) ** 2)
    return model, loss, (x, y)


def test_float16_gradients_underflow_without_scaling_and_match_float32_with_it(key):
    model, loss, batch = _tiny_loss_problem(key)
    sgd = optax.sgd(1e7)
    ref_ts = TrainState.create(model, sgd, key, batch[0])
    ref, _ = train_step(model, loss, sgd)(ref_ts, batch)
    delta_ref = ref.params["w"] - ref_ts.params["w"]
    assert np.abs(delta_ref).min() > 1e-6
    plain, _ = train_step(model, loss, sgd, policy="mixed_float16")(ref_ts, batch)
    np.testing.assert_array_equal(plain.params["w"], ref_ts.params["w"])  # all flushed to zero
    scaled_opt = compose_optimizer(sgd, loss_scale="dynamic")
    ts = TrainState.create(model, scaled_opt, key, batch[0])
    new, logs = train_step(model, loss, scaled_opt, policy="mixed_float16")(ts, batch)
    np.testing.assert_allclose(new.params["w"] - ts.params["w"], delta_ref, rtol=2e-2)
    assert float(logs["loss_scale"]) == 2.0**15 and not bool(logs["nonfinite"])


def test_overflowing_float16_step_is_skipped_and_halves_the_scale(key):
    x = np.random.default_rng(0).normal(size=(8, 4)).astype(np.float32)
    y = np.full((8, 1), 100.0, np.float32)  # output gradients ~25 x 2**24: past float16's max
    model = fn.serial(fn.Dense(4), fn.BatchNorm(momentum=0.5), fn.Dense(1))
    opt = fn.dynamic_loss_scale(optax.sgd(0.1), initial_scale=2.0**24)
    ts = TrainState.create(model, opt, key, x)
    step = jax.jit(train_step(model, "mse", opt, policy="mixed_float16"))
    new, logs = step(ts, (x, y))
    assert bool(logs["nonfinite"]) and float(logs["loss_scale"]) == 2.0**24
    chex.assert_trees_all_equal(new.params, ts.params)
    chex.assert_trees_all_equal(new.state, ts.state)  # BatchNorm statistics kept too
    assert float(loss_scale_of(new.opt_state)) == 2.0**23 and int(new.opt_state.skipped) == 1
    with pytest.raises(ValueError, match="cannot apply too"):
        train_step(model, "mse", opt, loss_scale=4.0)(ts, (x, y))


def test_fit_float16_policy_scales_dynamically_and_counts_skips(key):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 4)).astype(np.float32)
    y = (x @ rng.normal(size=(4, 1))).astype(np.float32)
    model = fn.serial(fn.Dense(16), jax.nn.relu, fn.Dense(1))
    kw = dict(epochs=6, batch_size=16, verbose=0, key=key)
    ts16, h16 = fn.fit(model, optax.adam(1e-2), "mse", (x, y), policy="mixed_float16", **kw)
    _, h32 = fn.fit(model, optax.adam(1e-2), "mse", (x, y), **kw)
    skipped = np.cumsum(h16["skipped_steps"])  # each overflow halved the scale (no growth yet)
    assert skipped[-1] >= 1
    assert h16["loss_scale"] == [2.0**15 / 2 ** int(k) for k in skipped]
    assert "loss_scale" not in h32.history and "skipped_steps" not in h32.history
    # two early overflows at the default scale 2**15 are skipped (so this run is two updates
    # behind the float32 one); then it trains
    assert h16["loss"][-1] < 0.25 * h16["loss"][0] and h32["loss"][-1] < 0.25 * h32["loss"][0]
    assert ts16.params[0]["w"].dtype == F32


# ----------------------------------------------------------------------------- bf16 training


def test_bfloat16_policy_trains_the_digits_cnn_like_float32(key):
    cnn = _example("cnn_digits")
    (x, y), (x_test, y_test) = cnn.load_data(None, 0)
    x, x_test = x[:512] / 8.0 - 1.0, x_test / 8.0 - 1.0
    y = y[:512]
    kw = dict(
        epochs=4,
        batch_size=32,
        verbose=0,
        key=key,
        metrics=["accuracy"],
        validation_data=(x_test, y_test),
    )
    model = cnn.make_model()
    _, h32 = fn.fit(model, optax.adam(1e-3), "sparse_categorical_cross_entropy", (x, y), **kw)
    _, h16 = fn.fit(
        model,
        optax.adam(1e-3),
        "sparse_categorical_cross_entropy",
        (x, y),
        policy="mixed_bfloat16",
        **kw,
    )
    assert h32["val_accuracy"][-1] > 0.8
    assert abs(h16["val_accuracy"][-1] - h32["val_accuracy"][-1]) < 0.03
    np.testing.assert_allclose(h16["loss"], h32["loss"], rtol=0.05)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the example reads typing's docs
def test_bfloat16_policy_trains_the_example_lm_like_float32(key):
    lm = _example("transformer_lm")
    text = "\n\n".join(lm.docstrings())[:20000]
    vocab = lm.Vocabulary(text)
    data = lm.windows(vocab.encode(text), 32, 16)
    model = lm.make_model(len(vocab), width=32, layers=2, heads=4, context=32, dropout=0.0)
    kw = dict(epochs=2, batch_size=32, verbose=0, key=key)
    loss = "sparse_categorical_cross_entropy"
    _, h32 = fn.fit(model, optax.adam(3e-3), loss, data, **kw)
    _, h16 = fn.fit(model, optax.adam(3e-3), loss, data, policy="mixed_bfloat16", **kw)
    assert h32["loss"][-1] < h32["loss"][0] - 0.4  # it learned something
    np.testing.assert_allclose(h16["loss"], h32["loss"], rtol=0.02)


def test_with_policy_around_a_block_with_residuals_inits():
    """init infers shapes with the inputs as given (float32 params and inputs alike): casting
    only the inputs to bfloat16 made a residual's branch float32 on a bfloat16 stream."""
    x = jnp.ones((2, 5, 16))
    block = fn.with_policy(fn.TransformerEncoderBlock(4), "mixed_bfloat16")
    params, state = block.init(jax.random.key(0), x)
    assert {a.dtype for a in jax.tree.leaves(params)} == {jnp.dtype(jnp.float32)}
    assert block.apply(params, state, x)[0].dtype == jnp.float32
