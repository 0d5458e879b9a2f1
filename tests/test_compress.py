"""funcnet.compress: pruning masks and transforms, int8 quantization, QAT, distillation."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import funcnet as fn
from funcnet import compress

STRICT_DTYPES = False  # optax Adam is not strict-clean


def _np_masks(arrays, sparsity):
    """Reference: prune the round(s * n) smallest |w| over all arrays (stable order)."""
    flat = np.concatenate([np.abs(a).ravel() for a in arrays])
    k = round(sparsity * flat.size)
    keep = np.ones(flat.size, bool)
    keep[np.argsort(flat, kind="stable")[:k]] = False
    out, start = [], 0
    for a in arrays:
        out.append(keep[start : start + a.size].reshape(a.shape))
        start += a.size
    return out


# ----------------------------------------------------------------------------- pruning


@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.5, 0.9, 1.0])
def test_global_masks_match_numpy(sparsity):
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(4, 5)).astype(np.float32), rng.normal(size=(3, 3, 2, 4))
    params = [{"w": jnp.asarray(a), "b": jnp.ones(5)}, {"w": jnp.asarray(b, jnp.float32)}]
    masks = compress.magnitude_masks(params, sparsity)
    ref = _np_masks([a, b.astype(np.float32)], sparsity)
    np.testing.assert_array_equal(masks[0]["w"], ref[0])
    np.testing.assert_array_equal(masks[1]["w"], ref[1])
    assert bool(masks[0]["b"].all())  # biases are not matched by the default pattern
    jitted = jax.jit(compress.magnitude_masks)(params, sparsity)
    assert jax.tree.all(jax.tree.map(lambda x, y: bool((x == y).all()), jitted, masks))


def test_layer_scope_differs_from_global():
    small = jnp.array([[0.1, 0.2], [0.3, 0.4]])
    large = jnp.array([[1.0, 2.0], [3.0, 4.0]])
    params = {"a": {"w": small}, "b": {"w": large}}
    glob = compress.magnitude_masks(params, 0.5)
    layer = compress.magnitude_masks(params, 0.5, scope="layer")
    assert not bool(glob["a"]["w"].any()) and bool(glob["b"]["w"].all())
    for name, ref in (("a", small), ("b", large)):
        np.testing.assert_array_equal(layer[name]["w"], _np_masks([np.asarray(ref)], 0.5)[0])
        assert int(layer[name]["w"].sum()) == 2


def test_ties_broken_by_position():
    params = {"w": jnp.array([1.0, 1.0, 1.0, 1.0])}
    assert compress.magnitude_masks(params, 0.5)["w"].tolist() == [False, False, True, True]


@pytest.mark.parametrize("scope", ["global", "layer"])
def test_structured_masks_drop_smallest_channels(scope):
    rng = np.random.default_rng(1)
    w = rng.normal(size=(3, 3, 2, 6)).astype(np.float32)
    w[..., 2] *= 0.01
    w[..., 4] *= 0.1
    mask = compress.magnitude_masks({"w": jnp.asarray(w)}, 1 / 3, structured=True, scope=scope)["w"]
    norms = np.sqrt((w.reshape(-1, 6) ** 2).sum(0))
    dropped = np.argsort(norms)[:2]
    assert sorted(dropped.tolist()) == [2, 4]
    kept = np.asarray(mask).reshape(-1, 6)
    assert not kept[:, dropped].any() and kept[:, [0, 1, 3, 5]].all()


def test_apply_masks_and_report():
    params = {"w": jnp.array([[1.0, -0.5], [0.25, 2.0]]), "b": jnp.ones(2)}
    pruned = compress.apply_masks(params, compress.magnitude_masks(params, 0.5))
    assert pruned["w"].tolist() == [[1.0, 0.0], [0.0, 2.0]]
    assert compress.sparsity_report(pruned) == {"w": (2, 4, 0.5), "total": (2, 4, 0.5)}
    full = compress.sparsity_report(pruned, pattern=None)
    assert full["b"] == (0, 2, 0.0) and full["total"] == (2, 6, 2 / 6)


def _tiny_problem():
    model = fn.serial(fn.Dense(16), jax.nn.relu, fn.Dense(3))
    params, state = model.init(jax.random.key(0), jnp.zeros((1, 4)))
    x = jax.random.normal(jax.random.key(1), (64, 4))
    y = (x[:, 0] > 0).astype(jnp.int32) + (x[:, 1] > 0).astype(jnp.int32)
    return model, params, state, x, y


def test_keep_masked_through_adamw_training():
    model, params, _, x, y = _tiny_problem()
    masks = compress.magnitude_masks(params, 0.7)
    params = compress.apply_masks(params, masks)
    opt = optax.chain(optax.adamw(1e-2, weight_decay=1e-2), compress.keep_masked(masks))
    ts = fn.TrainState.create(model, opt, jax.random.key(0), x[:1])
    ts = ts._replace(params=params)
    step = jax.jit(fn.train_step(model, "sparse_categorical_crossentropy", opt))
    for _ in range(100):
        ts, logs = step(ts, (x, y))
    for m, p in zip(jax.tree.leaves(masks), jax.tree.leaves(ts.params)):
        assert bool((p[~m] == 0).all())
    assert float(logs["loss"]) < 0.7  # it did train
    assert compress.sparsity_report(ts.params)["total"][2] == pytest.approx(0.7, abs=0.01)


def test_polynomial_sparsity_matches_formula():
    s = compress.polynomial_sparsity(0.1, 0.9, begin_step=10, end_step=110, power=3)
    for t in [0, 10, 35, 60, 99, 110, 500]:
        tc = min(max(t, 10), 110)
        want = 0.9 + (0.1 - 0.9) * (1 - (tc - 10) / 100) ** 3
        assert float(s(t)) == pytest.approx(want, abs=1e-6)
    assert float(jax.jit(s)(60)) == pytest.approx(0.9 - 0.8 * 0.125, abs=1e-6)


def test_gradual_pruning_reaches_final_sparsity():
    model, _, _, x, y = _tiny_problem()
    schedule = compress.polynomial_sparsity(0.0, 0.8, begin_step=0, end_step=60)
    opt = optax.chain(optax.adam(1e-2), compress.gradual_pruning(schedule, every=10))
    ts = fn.TrainState.create(model, opt, jax.random.key(0), x[:1])
    step = jax.jit(fn.train_step(model, "sparse_categorical_crossentropy", opt))
    seen = []
    for i in range(81):
        ts, _ = step(ts, (x, y))
        if i % 10 == 0:
            seen.append(compress.sparsity_report(ts.params)["total"][2])
    want = [float(schedule(i)) for i in range(0, 81, 10)]
    np.testing.assert_allclose(seen, want, atol=0.01)


def test_gradual_pruning_structured_constant_keeps_zeros_between_prunings():
    w = jnp.array([[1.0, -3.0, 0.5, 2.0], [1.0, 3.0, -0.5, 2.0], [1.0, 3.0, 0.5, -2.0]])
    params = {"w": w, "b": jnp.ones(4)}
    tx = optax.chain(optax.sgd(0.1), compress.gradual_pruning(0.5, every=3, structured=True))
    state = tx.init(params)
    grads = {"w": -jnp.ones((3, 4)), "b": jnp.ones(4)}
    for _ in range(5):
        updates, state = tx.update(grads, state, params)
        params = optax.apply_updates(params, updates)
        assert params["w"][:, [0, 2]].tolist() == [[0.0, 0.0]] * 3  # smallest column norms
    np.testing.assert_allclose(params["w"][:, 1], w[:, 1] + 0.5, rtol=1e-6)
    np.testing.assert_allclose(params["b"], 0.5, rtol=1e-6)  # biases are not pruned


# ----------------------------------------------------------------------------- pruning errors


def test_prune_errors():
    params = {"w": jnp.ones((2, 2)), "b": jnp.ones(2)}
    with pytest.raises(ValueError, match=r"magnitude_masks: `sparsity` must be in \[0, 1\]"):
        compress.magnitude_masks(params, 1.5)
    with pytest.raises(TypeError, match="magnitude_masks: `sparsity` must be a number"):
        compress.magnitude_masks(params, "half")
    with pytest.raises(ValueError, match="`scope` must be 'global' or 'layer'"):
        compress.magnitude_masks(params, 0.5, scope="model")
    with pytest.raises(ValueError, match="matches no parameter path"):
        compress.magnitude_masks(params, 0.5, pattern="kernel")
    with pytest.raises(TypeError, match="is not floating point"):
        compress.magnitude_masks({"w": jnp.ones(2, jnp.int32)}, 0.5)
    with pytest.raises(ValueError, match="is a scalar"):
        compress.magnitude_masks({"w": jnp.ones(())}, 0.5)
    with pytest.raises(ValueError, match="apply_masks: `masks` must have the structure"):
        compress.apply_masks(params, {"w": jnp.ones((2, 2), bool)})
    with pytest.raises(ValueError, match="the mask of 'w' has shape"):
        compress.apply_masks(params, {"w": jnp.ones((2,), bool), "b": jnp.ones(2, bool)})
    with pytest.raises(ValueError, match="keep_masked: `masks` must have the structure"):
        compress.keep_masked({"w": jnp.ones((2, 2), bool)}).init(params)
    with pytest.raises(ValueError, match="need `end_step > begin_step`"):
        compress.polynomial_sparsity(0.0, 0.5, 10, 10)
    with pytest.raises(ValueError, match="polynomial_sparsity: `sparsity` must be in"):
        compress.polynomial_sparsity(0.0, -0.5, 0, 10)
    with pytest.raises(ValueError, match="gradual_pruning: `every` must be an int >= 1"):
        compress.gradual_pruning(0.5, every=0)
    with pytest.raises(ValueError, match="gradual_pruning: `scope`"):
        compress.gradual_pruning(0.5, every=1, scope="all")
    tx = compress.gradual_pruning(0.5, every=1)
    with pytest.raises(ValueError, match="gradual_pruning: `update` needs `params`"):
        tx.update(params, tx.init(params))
    with pytest.raises(ValueError, match="sparsity_report: `pattern="):
        compress.sparsity_report(params, pattern="kernel")


# ----------------------------------------------------------------------------- quantization


def _np_quantize(w):
    w = np.asarray(w, np.float32)
    scale = np.abs(w.reshape(-1, w.shape[-1])).max(0) / 127
    safe = np.where(scale > 0, scale, 1.0)
    return np.clip(np.round(w / safe), -127, 127).astype(np.int8), scale


@pytest.mark.parametrize("shape", [(5, 4), (3, 3, 2, 6), (3, 1, 4), (7,)])
def test_quantize_array_matches_numpy_and_bound(shape):
    w = jax.random.normal(jax.random.key(3), shape) * jnp.linspace(0.01, 3.0, shape[-1])
    qw = compress.quantize_array(w)
    q, scale = _np_quantize(w)
    np.testing.assert_allclose(qw["scale"], scale, rtol=1e-6)
    assert qw["q"].dtype == jnp.int8 and qw["scale"].shape == (shape[-1],)
    assert np.mean(np.asarray(qw["q"]) == q) > 0.999  # a rare half-step may round differently
    assert int(jnp.abs(qw["q"]).max()) == 127
    back = compress.dequantize({"w": qw})["w"]
    err = np.abs(np.asarray(back) - np.asarray(w))
    # the rounding bound scale/2, up to float32 rounding of w/scale and q*scale
    assert (err <= scale / 2 * (1 + 1e-5) + 1e-7).all()


def test_quantize_zero_channel_and_jit():
    w = jnp.array([[0.0, 1.0], [0.0, -3.0]])
    qw = jax.jit(compress.quantize_array)(w)
    assert qw["q"][:, 0].tolist() == [0, 0] and float(qw["scale"][0]) == 0.0
    back = compress.dequantize({"w": qw})["w"]
    assert back[:, 0].tolist() == [0.0, 0.0] and back[1, 1] == -3.0


def test_quantize_leaves_the_rest_and_round_trips():
    params = [{"w": jnp.ones((3, 2)), "b": jnp.ones(2)}, (), {"table": jnp.ones((4, 2))}]
    qparams = compress.quantize(params)
    assert compress.is_quantized(qparams[0]["w"]) and not compress.is_quantized(qparams[0])
    assert qparams[2]["table"].dtype == jnp.float32 and qparams[1] == ()
    back = jax.jit(compress.dequantize)(qparams)
    assert jax.tree.structure(back) == jax.tree.structure(params)
    np.testing.assert_array_equal(back[0]["w"], params[0]["w"])
    assert compress.dequantize(params)[0]["w"] is params[0]["w"]  # nothing quantized


@pytest.fixture(scope="module")
def digits():
    """A tiny conv net trained on sklearn digits (about 5 s)."""
    (xtr, ytr), (xte, yte) = fn.datasets.load_digits()
    xtr, xte = xtr / 16.0, xte / 16.0
    model = fn.serial(
        fn.Conv(8, (3, 3)), jax.nn.relu, fn.Flatten(), fn.Dense(32), jax.nn.relu, fn.Dense(10)
    )
    ts, _ = fn.fit(
        model,
        optax.adam(1e-2),
        "sparse_categorical_crossentropy",
        (xtr, ytr),
        epochs=8,
        batch_size=64,
        verbose=0,
        key=jax.random.key(0),
    )
    return model, ts, (xtr, ytr), (xte, yte)


def _accuracy(model, params, state, x, y):
    return float((fn.predict(model, params, state, x).argmax(-1) == y).mean())


def test_digits_int8_size_and_accuracy(digits):
    model, ts, _, (xte, yte) = digits
    qparams = compress.quantize(ts.params)
    ratio = compress.size_bytes(ts.params) / compress.size_bytes(qparams)
    assert 3.8 < ratio < 4.0  # int8 kernels plus float32 scales and biases
    before = _accuracy(model, ts.params, ts.state, xte, yte)
    after = _accuracy(model, compress.dequantize(qparams), ts.state, xte, yte)
    assert before > 0.95
    assert after >= before - 0.01


def test_int8_dense_within_activation_bound():
    x = jax.random.normal(jax.random.key(0), (6, 20))
    w = jax.random.normal(jax.random.key(1), (20, 5))
    b = jnp.arange(5.0)
    qw = compress.quantize_array(w)
    got = jax.jit(compress.int8_dense)(x, qw, b)
    w_deq = compress.dequantize({"w": qw})["w"]
    want = x @ w_deq + b
    s_x = jnp.abs(x).max(-1, keepdims=True) / 127
    bound = s_x / 2 * jnp.abs(w_deq).sum(0) + 1e-4
    assert bool((jnp.abs(got - want) <= bound).all())
    assert float(jnp.abs(got - (x @ w + b)).max()) < 0.1


def test_quantize_errors():
    with pytest.raises(TypeError, match="quantize_array: `w` must be floating point"):
        compress.quantize_array(jnp.ones(3, jnp.int32))
    with pytest.raises(ValueError, match="quantize_array: `w` must have at least one axis"):
        compress.quantize_array(jnp.ones(()))
    with pytest.raises(ValueError, match="quantize: `pattern='kernel'` matches no parameter"):
        compress.quantize({"w": jnp.ones((2, 2))}, pattern="kernel")
    with pytest.raises(TypeError, match=r"quantize: cannot quantize 'w'.*Narrow `pattern`"):
        compress.quantize({"w": jnp.ones((2, 2), jnp.int32)})
    with pytest.raises(ValueError, match="quantize: cannot quantize 'w'"):
        compress.quantize({"w": jnp.ones(())})
    with pytest.raises(ValueError, match=r"int8_dense: expected inputs \(\.\.\., 3\)"):
        compress.int8_dense(jnp.ones((2, 4)), compress.quantize_array(jnp.ones((3, 2))))


# ----------------------------------------------------------------------------- distillation


def _torch_distill(s, t, y, temperature, alpha):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    s, t, y = torch.tensor(np.asarray(s)), torch.tensor(np.asarray(t)), torch.tensor(np.asarray(y))
    soft = F.kl_div(
        F.log_softmax(s / temperature, -1),
        F.log_softmax(t / temperature, -1),
        reduction="batchmean",
        log_target=True,
    )
    hard = F.cross_entropy(s, y.long())
    return float(alpha * temperature**2 * soft + (1 - alpha) * hard)


def _logits(n=8, c=5):
    s = jax.random.normal(jax.random.key(0), (n, c)) * 3
    t = jax.random.normal(jax.random.key(1), (n, c)) * 3
    y = jax.random.randint(jax.random.key(2), (n,), 0, c)
    return s, t, y


@pytest.mark.parametrize(("temperature", "alpha"), [(1.0, 0.5), (4.0, 0.9), (2.5, 1.0), (8.0, 0.0)])
def test_distillation_matches_torch(temperature, alpha):
    s, t, y = _logits()
    loss = compress.distillation_loss(temperature=temperature, alpha=alpha)
    got = jax.jit(loss)(s, {"labels": y, "teacher_logits": t})
    assert float(got) == pytest.approx(_torch_distill(s, t, y, temperature, alpha), rel=1e-5)


def test_distillation_alpha_zero_is_cross_entropy_and_weights():
    s, t, y = _logits()
    w = jnp.array([1.0, 0.0, 2.0, 1.0, 1.0, 0.0, 1.0, 1.0])
    loss = compress.distillation_loss(temperature=3.0, alpha=0.0)
    want = fn.losses.sparse_categorical_cross_entropy(s, y, weights=w)
    assert float(loss(s, {"labels": y, "teacher_logits": t}, weights=w)) == pytest.approx(
        float(want), rel=1e-6
    )


def test_distillation_temperature_scaling():
    s, t, y = _logits()
    targets = {"labels": y, "teacher_logits": t}
    soft = lambda temp, c=1.0: compress.distillation_loss(temperature=temp, alpha=1.0)(
        c * s, {"labels": y, "teacher_logits": c * t}
    )
    # softmax(c s / (c T)) is unchanged, so only the T**2 factor moves: c**2 times the loss
    assert float(soft(6.0, 3.0)) == pytest.approx(9 * float(soft(2.0)), rel=1e-5)
    # T**2 keeps the soft gradient at alpha * T * (softmax(s/T) - softmax(t/T)) / batch
    temp, alpha = 4.0, 0.7
    grad = jax.grad(
        lambda s_: compress.distillation_loss(temperature=temp, alpha=alpha)(s_, targets)
    )(s)
    hard = (1 - alpha) * (jax.nn.softmax(s) - jax.nn.one_hot(y, 5)) / 8
    want = alpha * temp * (jax.nn.softmax(s / temp) - jax.nn.softmax(t / temp)) / 8 + hard
    np.testing.assert_allclose(grad, want, atol=1e-6)
    assert compress.distillation_loss().from_logits is True


def test_distillation_with_fit_on_dict_targets():
    x = jax.random.normal(jax.random.key(0), (128, 6))
    teacher_logits = x[:, :3] * 4
    y = teacher_logits.argmax(-1)
    student = fn.serial(fn.Dense(3))
    loss = compress.distillation_loss(temperature=4.0, alpha=0.9)
    _, history = fn.fit(
        student,
        optax.adam(5e-2),
        loss,
        (x, {"labels": y, "teacher_logits": teacher_logits}),
        epochs=15,
        batch_size=32,
        verbose=0,
        validation_split=0.25,
        key=jax.random.key(0),
    )
    assert history.history["loss"][-1] < 0.2 * history.history["loss"][0]
    assert "val_loss" in history.history


def test_fit_metrics_read_the_labels_of_dict_targets():
    """``fit(metrics=...)`` on distillation targets: metrics see ``targets["labels"]``."""
    x = jax.random.normal(jax.random.key(0), (96, 6))
    teacher_logits = x[:, :3] * 4
    y = teacher_logits.argmax(-1)
    targets = {"labels": y, "teacher_logits": teacher_logits}
    student = fn.serial(fn.Dense(3))
    ts, history = fn.fit(
        student,
        optax.adam(5e-2),
        compress.distillation_loss(),
        (x, targets),
        epochs=3,
        batch_size=32,
        metrics=["accuracy", fn.metrics.f1(3, average="macro")],
        verbose=0,
        key=jax.random.key(0),
    )
    pred = np.asarray(student.apply(ts.params, ts.state, x)[0]).argmax(-1)
    logs = fn.evaluate(student, ts.params, ts.state, (x, targets), metrics=["accuracy"])
    assert float(logs["accuracy"]) == pytest.approx(np.mean(pred == np.asarray(y)))
    assert "f1_macro" in history.history and len(history.history["accuracy"]) == 3
    # regression metrics too, and mean absolute error against numpy
    mae = fn.metrics.get("mae")
    out, lab = jnp.array([1.0, 2.0]), jnp.array([0.0, 4.0])
    state = mae.update(mae.init(), out, {"labels": lab, "other": out})
    assert float(mae.compute(state)) == pytest.approx(1.5)


def test_select_targets_and_dict_targets_without_labels():
    acc = fn.metrics.get("accuracy")
    scores = jnp.array([[2.0, 0.0], [0.0, 1.0], [3.0, 0.0]])
    with pytest.raises(TypeError, match=r"accuracy: dict `targets` need a 'labels' entry.*'y'"):
        acc.update(acc.init(), scores, {"y": jnp.array([0, 0, 1])})
    picked = fn.metrics.select_targets("accuracy", "y")
    state = picked.update(picked.init(), scores, {"y": jnp.array([0, 0, 1])})
    assert float(picked.compute(state)) == pytest.approx(1 / 3)
    by_fn = fn.metrics.select_targets(acc, lambda t: t[1])
    state = by_fn.update(by_fn.init(), scores, (None, jnp.array([0, 1, 0])))
    assert float(by_fn.compute(state)) == 1.0
    with pytest.raises(TypeError, match=r"needs dict targets with a 'y' entry, got \['z'\]"):
        picked.update(picked.init(), scores, {"z": jnp.array([0, 0, 1])})
    with pytest.raises(TypeError, match="`key` must be a dict key"):
        fn.metrics.select_targets("accuracy", 3)


def test_distillation_errors():
    s, t, y = _logits()
    with pytest.raises(ValueError, match=r"distillation_loss: `temperature` must be in \(0.0"):
        compress.distillation_loss(temperature=0.0)
    with pytest.raises(ValueError, match=r"distillation_loss: `alpha` must be in \[0.0, 1.0\]"):
        compress.distillation_loss(alpha=1.5)
    with pytest.raises(TypeError, match="`temperature` must be a number"):
        compress.distillation_loss(temperature="4")
    loss = compress.distillation_loss()
    with pytest.raises(TypeError, match="`targets` must be a dict with keys 'labels'"):
        loss(s, y)
    with pytest.raises(TypeError, match=r"got \['labels'\]"):
        loss(s, {"labels": y})
    with pytest.raises(TypeError, match="must be floating point"):
        loss(y[:, None], {"labels": y, "teacher_logits": t})
    with pytest.raises(ValueError, match="must have the same shape"):
        loss(s, {"labels": y, "teacher_logits": t[:, :3]})
    with pytest.raises(ValueError, match="`labels` must be integer class ids of shape"):
        loss(s, {"labels": y.astype(jnp.float32), "teacher_logits": t})
    with pytest.raises(ValueError, match="`labels` must be integer class ids of shape"):
        loss(s, {"labels": y[:4], "teacher_logits": t})


# ----------------------------------------------------------------------------- QAT


def _np_round_trip(w, bits, scale=None):
    qmax = 2 ** (bits - 1) - 1
    w = np.asarray(w, np.float32)
    if scale is None:
        scale = np.abs(w.reshape(-1, w.shape[-1])).max(0) / np.float32(qmax)
    safe = np.where(scale > 0, scale, np.float32(1.0)).astype(np.float32)
    return (np.clip(np.round(w / safe), -qmax, qmax) * scale).astype(np.float32)


@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize("shape", [(5, 4), (3, 3, 2, 6), (7,)])
def test_fake_quantize_equals_quantize_dequantize(bits, shape):
    w = jax.random.normal(jax.random.key(4), shape) * jnp.linspace(0.01, 3.0, shape[-1])
    got = jax.jit(compress.fake_quantize, static_argnames="bits")(w, bits=bits)
    want = compress.dequantize({"w": compress.quantize_array(w, bits=bits)})["w"]
    np.testing.assert_array_equal(got, want)  # bit for bit
    np.testing.assert_allclose(got, _np_round_trip(w, bits), rtol=1e-6, atol=1e-7)
    assert len(np.unique(np.asarray(got)[..., -1])) <= 2**bits - 1


def test_fake_quantize_straight_through_gradient_by_hand():
    w = jnp.array([[0.3, -1.0, 0.05], [1.0, 0.26, -0.6]])
    c = jnp.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    # the max-based scale clips nothing: the gradient of sum(c * fq(w)) is c itself
    for bits in (2, 4, 8):
        grad = jax.jit(jax.grad(lambda v, b=bits: jnp.sum(c * compress.fake_quantize(v, bits=b))))(
            w
        )
        np.testing.assert_array_equal(grad, c)
    # every weight, each channel's largest included (qmax * scale may round below max|w|)
    for i in range(20):
        v = jax.random.normal(jax.random.key(i), (16, 8))
        for bits in (2, 4, 8):
            grad = jax.grad(lambda u, b=bits: jnp.sum(compress.fake_quantize(u, bits=b)))(v)
            np.testing.assert_array_equal(grad, jnp.ones((16, 8)))
    # a fixed scale: the grid spans +-qmax * scale = +-0.7 (bits 4, scale 0.1) in every column
    scale = jnp.array([0.1, 0.1, 0.1])
    fq = compress.fake_quantize(w, bits=4, scale=scale)
    np.testing.assert_allclose(fq, [[0.3, -0.7, 0.0], [0.7, 0.3, -0.6]], atol=1e-6)
    grad = jax.grad(lambda v: jnp.sum(c * compress.fake_quantize(v, bits=4, scale=scale)))(w)
    np.testing.assert_array_equal(grad, [[1.0, 0.0, 3.0], [0.0, 5.0, 6.0]])  # 0 where clipped
    # no gradient into the scale
    g_scale = jax.grad(lambda s: jnp.sum(compress.fake_quantize(w, bits=4, scale=s)))(scale)
    np.testing.assert_array_equal(g_scale, jnp.zeros(3))


def test_qat_gradient_is_the_models_gradient_at_the_rounded_weights():
    model, params, state, x, y = _tiny_problem()
    qmodel = compress.qat(model, bits=4)
    loss = lambda m, p: fn.losses.sparse_categorical_cross_entropy(m.apply(p, state, x)[0], y)
    got = jax.jit(jax.grad(lambda p: loss(qmodel, p)))(params)
    rounded = compress.fake_quantize_params(params, bits=4)
    want = jax.grad(lambda p: loss(model, p))(rounded)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    assert compress.fake_quantize_params(params, bits=4)[0]["b"] is params[0]["b"]  # biases stay
    assert repr(qmodel).startswith("qat4(serial(")


@pytest.mark.parametrize("bits", [8, 4])
def test_qat_forward_equals_dequantized_model_exactly(digits, bits):
    model, ts, _, (xte, _) = digits
    qmodel = compress.qat(model, bits=bits)
    forward = jax.jit(lambda m, p, x: m.apply(p, ts.state, x)[0])
    got = forward(qmodel, ts.params, xte)
    qparams = compress.quantize(ts.params, bits=bits)
    np.testing.assert_array_equal(got, forward(model, compress.dequantize(qparams), xte))
    assert not np.array_equal(got, forward(model, ts.params, xte))  # it is quantized


def _fine_tune(model, params, data, *, epochs=3, lr=1e-3):
    opt = optax.adam(lr)
    start = fn.TrainState.create(model, opt, jax.random.key(1), data[0][:1])
    start = start._replace(params=params, opt_state=opt.init(params))
    ts, _ = fn.fit(
        model,
        opt,
        "sparse_categorical_crossentropy",
        data,
        epochs=epochs,
        batch_size=64,
        verbose=0,
        key=jax.random.key(1),
        initial_state=start,
    )
    return ts.params


def test_qat_recovers_accuracy_that_ptq_loses(digits):
    model, ts, train, (xte, yte) = digits
    ptq = lambda p, bits: compress.dequantize(compress.quantize(p, bits=bits))
    floating = _accuracy(model, ts.params, ts.state, xte, yte)
    # On digits int4 post-training quantization loses (almost) nothing; 2 bits (ternary
    # weights, levels -1, 0, 1 times a per-channel scale) loses a lot.
    assert _accuracy(model, ptq(ts.params, 4), ts.state, xte, yte) >= floating - 0.01
    ptq2 = _accuracy(model, ptq(ts.params, 2), ts.state, xte, yte)
    assert ptq2 < floating - 0.05
    # QAT: 3 epochs of fine-tuning through 2-bit fake quantization, then real 2-bit weights.
    tuned = _fine_tune(compress.qat(model, bits=2), ts.params, train)
    qat2 = _accuracy(model, ptq(tuned, 2), ts.state, xte, yte)
    # The control: the same 3 epochs in float, then 2-bit PTQ.
    control = _accuracy(model, ptq(_fine_tune(model, ts.params, train), 2), ts.state, xte, yte)
    print(f"float {floating:.3f}, 2-bit PTQ {ptq2:.3f}, control {control:.3f}, QAT {qat2:.3f}")
    assert qat2 > ptq2 + 0.05 and qat2 > control + 0.03
    assert qat2 > floating - 0.06


def test_size_bytes_packed_bits():
    params = {"w": jnp.ones((64, 10)), "b": jnp.ones(10)}
    q4 = compress.quantize(params, bits=4)
    assert compress.size_bytes(q4) == 64 * 10 + 40 + 40  # int8 storage, scales, bias
    assert compress.size_bytes(q4, bits=4) == 320 + 40 + 40
    assert compress.size_bytes(params, bits=4) == compress.size_bytes(params)  # nothing quantized
    assert (
        compress.size_bytes({"q": compress.quantize_array(jnp.ones(3), bits=4)}, bits=4) == 2 + 12
    )


def test_qat_errors():
    w = jnp.ones((2, 3))
    for call, name in [
        (lambda b: compress.quantize_array(w, bits=b), "quantize_array"),
        (lambda b: compress.quantize({"w": w}, bits=b), "quantize"),
        (lambda b: compress.fake_quantize(w, bits=b), "fake_quantize"),
        (lambda b: compress.fake_quantize_params({"w": w}, bits=b), "fake_quantize_params"),
        (lambda b: compress.qat(fn.Dense(2), bits=b), "qat"),
        (lambda b: compress.size_bytes({"w": w}, bits=b), "size_bytes"),
    ]:
        for bad in (1, 9, 4.0, True):
            with pytest.raises(ValueError, match=rf"{name}: `bits` must be an int in \[2, 8\]"):
                call(bad)
    with pytest.raises(ValueError, match=r"fake_quantize: `scale` must have shape \(3,\)"):
        compress.fake_quantize(w, scale=jnp.ones(2))
    with pytest.raises(TypeError, match="fake_quantize: `w` must be floating point"):
        compress.fake_quantize(jnp.ones(3, jnp.int32))
    with pytest.raises(ValueError, match="fake_quantize: `w` must have at least one axis"):
        compress.fake_quantize(jnp.ones(()))
    with pytest.raises(ValueError, match="qat: `pattern` must be a regex"):
        compress.qat(fn.Dense(2), pattern="(")
    qmodel = compress.qat(fn.Dense(2), pattern="kernel")
    params, state = qmodel.init(jax.random.key(0), jnp.zeros((1, 3)))
    with pytest.raises(ValueError, match="fake_quantize_params: `pattern='kernel'` matches no"):
        qmodel.apply(params, state, jnp.zeros((1, 3)))
