"""funcnet.explain: attributions checked against their axioms and hand computations.

Linear models have exact answers (gradient x input and IG from zero are
``w * x``, occlusion removes ``w * (x - baseline)``); nonlinear models are
checked for completeness, sensitivity and implementation invariance; Grad-CAM
and intermediates against the model split by hand.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import funcnet as fn
from funcnet import explain


def rand(seed, shape):
    return np.asarray(jax.random.normal(jax.random.key(seed), shape), np.float32)


def linear(w, b):
    """A Dense layer with the given weights (features, classes)."""
    return fn.Dense(w.shape[1]), {"w": jnp.asarray(w), "b": jnp.asarray(b)}


def mlp():
    model = fn.serial(fn.Dense(16), jnp.tanh, fn.Dense(8), jax.nn.softplus, fn.Dense(3))
    params, state = model.init(jax.random.key(0), jnp.zeros((1, 5)))
    return model, params, state


def cnn():
    model = fn.serial(
        fn.Conv(3, (3, 3), padding="VALID"),
        fn.Relu(),
        fn.Conv(4, (3, 3), padding="SAME"),
        fn.Relu(),
        fn.Flatten(),
        fn.Dense(5),
    )
    params, state = model.init(jax.random.key(1), jnp.zeros((1, 7, 7, 2)))
    return model, params, state


# --------------------------------------------------------------------------- linear: exact


def linear_case():
    w, b = rand(0, (6, 3)), rand(1, (3,))
    model, params = linear(w, b)
    x = rand(2, (4, 6))
    target = np.array([0, 2, 1, 2], np.int32)
    return model, params, x, target, w[:, target].T  # each example's weights of its class


def test_linear_model_has_exact_gradients_and_occlusion():
    model, params, x, target, wt = linear_case()
    np.testing.assert_allclose(explain.gradients(model, params, (), x, target), wt, rtol=1e-6)
    np.testing.assert_allclose(
        explain.gradient_x_input(model, params, (), x, target), wt * x, rtol=1e-6
    )
    occ = explain.occlusion(model, params, (), x, target, window=1, baseline_value=0.5)
    np.testing.assert_allclose(occ, wt * (x - 0.5), rtol=1e-4, atol=1e-5)
    batched = explain.occlusion(
        model, params, (), x, target, window=1, baseline_value=0.5, batch_size=4
    )
    np.testing.assert_allclose(batched, occ, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("method", explain.IG_METHODS)
def test_linear_model_has_exact_integrated_gradients(method):
    model, params, x, target, wt = linear_case()
    ig = explain.integrated_gradients(model, params, (), x, target, steps=3, method=method)
    np.testing.assert_allclose(ig.attributions, wt * x, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ig.completeness_error, 0, atol=1e-5)
    baseline = rand(3, (6,))
    ig = explain.integrated_gradients(
        model, params, (), x, target, baseline=baseline, steps=3, method=method
    )
    np.testing.assert_allclose(ig.attributions, wt * (x - baseline), rtol=1e-5, atol=1e-6)


def test_occlusion_of_a_linear_image_model_is_the_removed_contribution():
    w = rand(0, (4 * 4 * 2, 3))
    model = fn.serial(fn.Flatten(), fn.Dense(3))
    params = ((), {"w": jnp.asarray(w), "b": jnp.zeros(3)})
    x = rand(1, (2, 4, 4, 2))
    contrib = w[:, 1].reshape(4, 4, 2) * (x - 0.25)  # each element's share of the score
    occ = explain.occlusion(model, params, ((), ()), x, 1, window=(1, 1), baseline_value=0.25)
    per_pixel = contrib.sum(-1, keepdims=True)  # a (1, 1) window covers both channels
    np.testing.assert_allclose(occ, np.broadcast_to(per_pixel, x.shape), rtol=1e-4, atol=1e-5)
    # (2, 2) windows with stride 2 do not overlap: each pixel gets its window's drop
    occ = explain.occlusion(model, params, ((), ()), x, 1, window=2, baseline_value=0.25)
    patches = contrib.reshape(2, 2, 2, 2, 2, 2).sum(axis=(2, 4, 5))  # (N, 2, 2)
    expected = np.repeat(np.repeat(patches, 2, axis=1), 2, axis=2)[..., None]
    np.testing.assert_allclose(occ, np.broadcast_to(expected, x.shape), rtol=1e-4, atol=1e-5)
    # overlapping (3, 3) windows with stride 1: the mean drop over the covering windows
    occ = explain.occlusion(model, params, ((), ()), x, 1, window=(3, 3), strides=1)
    pix = (w[:, 1].reshape(4, 4, 2) * x).sum(-1)  # baseline 0
    ref = np.zeros((2, 4, 4), np.float32)
    count = np.zeros((4, 4), np.float32)
    for i in range(2):
        for j in range(2):
            ref[:, i : i + 3, j : j + 3] += pix[:, i : i + 3, j : j + 3].sum((1, 2))[:, None, None]
            count[i : i + 3, j : j + 3] += 1
    np.testing.assert_allclose(occ[..., 0], ref / count, rtol=1e-4, atol=1e-5)


# --------------------------------------------------------------------------- completeness


@pytest.mark.parametrize("make", [mlp, cnn])
def test_integrated_gradients_are_complete(make):
    model, params, state = make()
    shape = (3, 5) if make is mlp else (3, 7, 7, 2)
    x, baseline = rand(2, shape), rand(3, shape[1:]) * 0.1
    ig = explain.integrated_gradients(
        model, params, state, x, 1, baseline=baseline, steps=256, method="riemann_trapezoid"
    )
    logits = np.asarray(model.apply(params, state, x)[0])[:, 1]
    base = np.broadcast_to(baseline, x.shape)
    logits0 = np.asarray(model.apply(params, state, base)[0])[:, 1]
    total = np.asarray(ig.attributions).reshape(3, -1).sum(1)
    np.testing.assert_allclose(total, logits - logits0, atol=2e-2 * np.abs(logits - logits0).max())
    # the returned error is the measured one
    np.testing.assert_allclose(
        ig.completeness_error, np.abs(total - (logits - logits0)), rtol=1e-3, atol=1e-5
    )


def test_quadrature_converges_and_gauss_legendre_is_most_accurate():
    model, params, state = mlp()
    x = rand(4, (6, 5))
    errors = {
        m: [
            float(
                explain.integrated_gradients(model, params, state, x, 0, steps=n, method=m)[1].max()
            )
            for n in (4, 32)
        ]
        for m in ("riemann_left", "riemann_trapezoid", "gauss_legendre")
    }
    for method, (coarse, fine) in errors.items():
        assert fine < coarse, (method, errors)
    assert errors["gauss_legendre"][1] < 1e-5
    assert errors["gauss_legendre"][0] < min(
        e[0] for m, e in errors.items() if m != "gauss_legendre"
    )


@pytest.mark.parametrize("method", ["riemann_trapezoid", "gauss_legendre"])
def test_tolerance_picks_enough_steps(method):
    model, params, state = mlp()
    x = rand(5, (4, 5)) * 2
    ig = explain.integrated_gradients(
        model, params, state, x, 2, steps=2, method=method, tolerance=1e-3
    )
    assert float(ig.completeness_error.max()) <= 1e-3
    assert ig.steps > 2
    half = explain.integrated_gradients(
        model, params, state, x, 2, steps=ig.steps // 2, method=method
    )
    assert float(half.completeness_error.max()) > 1e-3  # the fewest steps of the doubling
    assert (
        explain.ig_steps_for(model, params, state, x, 2, tolerance=1e-3, method=method, start=2)
        == ig.steps
    )
    with pytest.raises(ValueError, match=r"still .* > tolerance 1e-09 .* `max_steps` 8"):
        explain.ig_steps_for(model, params, state, x, 2, tolerance=1e-9, start=2, max_steps=8)


# --------------------------------------------------------------------------- sensitivity


def test_sensitivity_features_the_model_ignores_get_zero():
    inner = fn.serial(fn.Dense(8), jnp.tanh, fn.Dense(2))
    model = fn.serial(lambda x: x[:, :3], inner)  # features 3 and 4 are ignored
    params, state = model.init(jax.random.key(0), jnp.zeros((1, 5)))
    x = rand(6, (3, 5))
    for attr in (
        explain.integrated_gradients(model, params, state, x, 1).attributions,
        explain.gradients(model, params, state, x, 1),
        explain.smoothgrad(model, params, state, x, 1, key=jax.random.key(0), num_samples=4),
        explain.occlusion(model, params, state, x, 1, window=1),
    ):
        np.testing.assert_array_equal(np.asarray(attr)[:, 3:], 0)
        assert np.all(np.abs(np.asarray(attr)[:, :3]) > 0)


def test_sensitivity_one_feature_that_changes_the_output():
    model, params = linear(np.array([[2.0], [0.0]], np.float32), np.zeros(1, np.float32))
    x = np.array([[1.5, 3.0]], np.float32)
    ig = explain.integrated_gradients(model, params, (), x, 0, baseline=np.array([0.0, 3.0]))
    np.testing.assert_allclose(ig.attributions, [[3.0, 0.0]], rtol=1e-6)


# --------------------------------------------------------------------- implementation invariance


def test_implementation_invariance():
    w1, w2 = rand(0, (5, 7)), rand(1, (7, 3))
    b1, b2 = rand(2, (7,)), rand(3, (3,))
    x = rand(4, (4, 5))
    # a Dense layer against the same map split into two (W = A @ B)
    a, bmat = rand(5, (5, 5)), None
    bmat = np.linalg.solve(a, w1).astype(np.float32)  # a @ bmat == w1
    one = fn.Dense(7)
    two = fn.serial(fn.Dense(5), fn.Dense(7))
    p_one = {"w": jnp.asarray(w1), "b": jnp.asarray(b1)}
    p_two = (
        {"w": jnp.asarray(a), "b": jnp.zeros(5)},
        {"w": jnp.asarray(bmat), "b": jnp.asarray(b1)},
    )
    ig1 = explain.integrated_gradients(one, p_one, (), x, 2).attributions
    ig2 = explain.integrated_gradients(two, p_two, ((), ()), x, 2).attributions
    np.testing.assert_allclose(ig1, ig2, rtol=1e-3, atol=1e-4)
    # a tanh MLP against the same MLP with its hidden units permuted, and with relu(h) - relu(-h)
    mlp_a = fn.serial(fn.Dense(7), jnp.tanh, fn.Dense(3))
    mlp_b = fn.serial(
        fn.Dense(7), lambda h: jax.nn.relu(h) - jax.nn.relu(-h), jnp.tanh, fn.Dense(3)
    )
    perm = np.random.default_rng(0).permutation(7)
    pa = ({"w": w1, "b": b1}, (), {"w": w2, "b": b2})
    pb = ({"w": w1[:, perm], "b": b1[perm]}, (), (), {"w": w2[perm], "b": b2})
    for method in ("riemann_trapezoid", "gauss_legendre"):
        ia = explain.integrated_gradients(mlp_a, pa, ((), (), ()), x, 0, method=method)
        ib = explain.integrated_gradients(mlp_b, pb, ((), (), (), ()), x, 0, method=method)
        np.testing.assert_allclose(ia.attributions, ib.attributions, rtol=1e-4, atol=1e-5)


# --------------------------------------------------------------------------- SmoothGrad


def test_smoothgrad():
    model, params, state = mlp()
    x = rand(7, (3, 5))
    key = jax.random.key(3)
    vanilla = explain.gradients(model, params, state, x, 2)
    zero = explain.smoothgrad(model, params, state, x, 2, key=key, num_samples=3, noise_scale=0.0)
    np.testing.assert_allclose(zero, vanilla, rtol=1e-5, atol=1e-7)
    one = explain.smoothgrad(model, params, state, x, 2, key=key, num_samples=5)
    again = explain.smoothgrad(model, params, state, x, 2, key=key, num_samples=5)
    other = explain.smoothgrad(model, params, state, x, 2, key=jax.random.key(4), num_samples=5)
    np.testing.assert_array_equal(one, again)
    assert not np.allclose(one, other)
    # the mean of the gradients at the documented noisy copies
    sigma = 0.15 * (x.max(1, keepdims=True) - x.min(1, keepdims=True))
    ref = np.mean(
        [
            explain.gradients(
                model, params, state, x + sigma * rand_key(jax.random.fold_in(key, i), x.shape), 2
            )
            for i in range(5)
        ],
        axis=0,
    )
    np.testing.assert_allclose(one, ref, rtol=1e-4, atol=1e-6)


def rand_key(key, shape):
    return np.asarray(jax.random.normal(key, shape, jnp.float32))


# --------------------------------------------------------------------------- Grad-CAM


def test_grad_cam_matches_a_hand_computation():
    model, params, state = cnn()
    x = rand(8, (2, 7, 7, 2))
    target = np.array([4, 1], np.int32)
    head = fn.serial(*model.children[:4])
    tail = fn.serial(*model.children[4:])
    acts, _ = head.apply(params[:4], state[:4], x)

    def score(a):
        return jnp.take_along_axis(
            tail.apply(params[4:], state[4:], a)[0], target[:, None], 1
        ).sum()

    grads = np.asarray(jax.grad(score)(acts))
    acts = np.asarray(acts)
    weights = grads.mean(axis=(1, 2))  # (N, K)
    ref = np.maximum((acts * weights[:, None, None, :]).sum(-1), 0)
    cam = explain.grad_cam(model, params, state, x, target, layer="3", upsample=False)
    assert cam.shape == (2, 5, 5)
    np.testing.assert_allclose(cam, ref, rtol=1e-4, atol=1e-6)
    raw = explain.grad_cam(model, params, state, x, target, layer=3, upsample=False, relu=False)
    np.testing.assert_allclose(
        raw, (acts * weights[:, None, None, :]).sum(-1), rtol=1e-4, atol=1e-6
    )
    assert explain.grad_cam(model, params, state, x, target, layer="3").shape == (2, 7, 7)


def test_grad_cam_in_a_nested_serial():
    flat, params, state = cnn()
    nested = fn.serial(features=fn.serial(*flat.children[:4]), head=fn.serial(*flat.children[4:]))
    p = {"features": params[:4], "head": params[4:]}
    s = {"features": state[:4], "head": state[4:]}
    x = rand(9, (2, 7, 7, 2))
    ref = explain.grad_cam(flat, params, state, x, 0, layer="3", upsample=False)
    for layer in ("features/3", "features"):
        cam = explain.grad_cam(nested, p, s, x, 0, layer=layer, upsample=False)
        np.testing.assert_allclose(cam, ref, rtol=1e-5, atol=1e-7)


def test_grad_cam_errors():
    model, params, state = cnn()
    x = rand(8, (2, 7, 7, 2))
    with pytest.raises(ValueError, match=r"output of layer '5' must be one array \(N, \*spatial"):
        explain.grad_cam(model, params, state, x, 0, layer="5")
    with pytest.raises(ValueError, match=r"no sub-layer at path '9'.*valid paths: \['0', '1'"):
        explain.grad_cam(model, params, state, x, 0, layer="9")
    flat = fn.serial(lambda v: v.reshape(v.shape[0], 7, 7, 2), *model.children)
    with pytest.raises(ValueError, match=r"cannot upsample .* Pass `upsample=False`"):
        explain.grad_cam(flat, ((), *params), ((), *state), x.reshape(2, -1), 0, layer="4")


# --------------------------------------------------------------------------- intermediates


def test_intermediates_equal_the_prefix_run_by_hand():
    model, params, state = cnn()
    x = rand(10, (2, 7, 7, 2))
    out, inner = explain.intermediates(model, params, state, x, ["1", "3", 5])
    np.testing.assert_array_equal(out, model.apply(params, state, x)[0])
    for path, stop in (("1", 2), ("3", 4), ("5", 6)):
        ref, _ = fn.serial(*model.children[:stop]).apply(params[:stop], state[:stop], x)
        np.testing.assert_allclose(inner[path], ref, rtol=1e-6, atol=1e-6)
    assert list(inner) == ["1", "3", "5"]


def test_intermediates_of_nested_and_named_serials():
    block = fn.serial(fn.Dense(6), jnp.tanh, fn.Dense(4))
    model = fn.serial(stem=fn.Dense(5), block=block, out=fn.Dense(2))
    params, state = model.init(jax.random.key(0), jnp.zeros((1, 3)))
    x = rand(11, (4, 3))
    assert explain.layer_paths(model) == [
        "stem",
        "block",
        "block/0",
        "block/1",
        "block/2",
        "out",
    ]
    out, inner = explain.intermediates(model, params, state, x, ["block/1", "block", "stem"])
    np.testing.assert_allclose(out, model.apply(params, state, x)[0], rtol=1e-6)
    h = fn.Dense(5).apply(params["stem"], (), x)[0]
    np.testing.assert_allclose(inner["stem"], h, rtol=1e-6)
    h = np.tanh(fn.Dense(6).apply(params["block"][0], (), h)[0])
    np.testing.assert_allclose(inner["block/1"], h, rtol=1e-5, atol=1e-6)
    h = fn.Dense(4).apply(params["block"][2], (), h)[0]
    np.testing.assert_allclose(inner["block"], h, rtol=1e-5, atol=1e-6)


def test_intermediates_use_the_models_keys_in_training_mode():
    model = fn.serial(fn.Dense(8), fn.serial(fn.Dropout(0.5), fn.Dense(8)), fn.Dropout(0.5))
    params, state = model.init(jax.random.key(0), jnp.zeros((1, 4)))
    x, key = rand(12, (3, 4)), jax.random.key(5)
    out, inner = explain.intermediates(model, params, state, x, "1/0", key=key, train=True)
    np.testing.assert_array_equal(out, model.apply(params, state, x, key=key, train=True)[0])
    assert np.mean(np.asarray(inner["1/0"]) == 0) > 0.2  # dropout ran


def test_intermediates_errors():
    model, params, state = cnn()
    x = rand(10, (2, 7, 7, 2))
    with pytest.raises(
        ValueError, match=r"intermediates: no sub-layer at path 'conv' in serial\(.*valid paths: "
    ):
        explain.intermediates(model, params, state, x, "conv")
    with pytest.raises(ValueError, match=r"no sub-layer at path '1/0'"):
        explain.intermediates(model, params, state, x, ["1/0"])
    with pytest.raises(ValueError, match=r"only in a `serial` model, got Dense\(3\)"):
        explain.intermediates(fn.Dense(3), {}, (), x, "0")
    with pytest.raises(ValueError, match=r"layer_paths: .* `serial` model"):
        explain.layer_paths(fn.residual(fn.Dense(3)))
    with pytest.raises(TypeError, match=r"a layer path must be a str .* got float 1.0"):
        explain.intermediates(model, params, state, x, [1.0])
    with pytest.raises(ValueError, match=r"params do not match the layers \[0, 1, 2, 3, 4, 5\]"):
        explain.intermediates(model, params[:3], state, x, "1")


# --------------------------------------------------------------------------- jit, vmap, errors


def test_jit_and_vmap():
    model, params, state = mlp()
    x = rand(13, (4, 5))
    grads = jax.jit(lambda p, v: explain.gradients(model, p, state, v, 1))(params, x)
    np.testing.assert_allclose(
        grads, explain.gradients(model, params, state, x, 1), rtol=1e-5, atol=1e-6
    )
    ig_jit = jax.jit(
        lambda p, v, t: explain.integrated_gradients(model, p, state, v, t, steps=16)[:2]
    )(params, x, jnp.array([0, 1, 2, 0]))
    ig = explain.integrated_gradients(model, params, state, x, np.array([0, 1, 2, 0]), steps=16)
    np.testing.assert_allclose(ig_jit[0], ig.attributions, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(ig_jit[1], ig.completeness_error, rtol=1e-4, atol=1e-7)
    # one example at a time under vmap gives the batch's attributions
    one = jax.vmap(lambda v: explain.integrated_gradients(model, params, state, v[None], 1)[0][0])
    np.testing.assert_allclose(
        one(x), explain.integrated_gradients(model, params, state, x, 1)[0], rtol=1e-5, atol=1e-6
    )
    occ = jax.jit(lambda v: explain.occlusion(model, params, state, v, 0, window=2))(x)
    np.testing.assert_allclose(
        occ, explain.occlusion(model, params, state, x, 0, window=2), rtol=1e-5, atol=1e-6
    )
    sg = jax.jit(lambda k: explain.smoothgrad(model, params, state, x, 2, key=k, num_samples=3))
    np.testing.assert_allclose(
        sg(jax.random.key(1)),
        explain.smoothgrad(model, params, state, x, 2, key=jax.random.key(1), num_samples=3),
        rtol=1e-5,
        atol=1e-7,
    )
    conv, cparams, cstate = cnn()
    images = rand(15, (2, 7, 7, 2))
    cam = jax.jit(lambda v: explain.grad_cam(conv, cparams, cstate, v, 0, layer="3"))(images)
    np.testing.assert_allclose(
        cam, explain.grad_cam(conv, cparams, cstate, images, 0, layer="3"), rtol=1e-5, atol=1e-7
    )
    with pytest.raises(ValueError, match=r"cannot run under `jit`; call `ig_steps_for"):
        jax.jit(
            lambda v: explain.integrated_gradients(model, params, state, v, 0, tolerance=1e-3)[0]
        )(x)


def test_argument_errors():
    model, params, state = mlp()
    x = rand(14, (2, 5))
    with pytest.raises(ValueError, match=r"gradients: `target` must be a class index in \[0, 3\)"):
        explain.gradients(model, params, state, x, 3)
    with pytest.raises(ValueError, match=r"int array of shape \(2,\) .* got int32 \(3,\)"):
        explain.gradients(model, params, state, x, np.array([0, 1, 2], np.int32))
    with pytest.raises(ValueError, match=r"outputs \(N, classes\) and an int `target`"):
        explain.gradients(model, params, state, x, None)
    scalar = fn.serial(fn.Dense(1), lambda y: y[:, 0])
    p1, s1 = scalar.init(jax.random.key(0), x)
    with pytest.raises(ValueError, match=r"one score per example.*pass `target=None`, got 0"):
        explain.gradients(scalar, p1, s1, x, 0)
    assert explain.gradients(scalar, p1, s1, x, None).shape == x.shape
    with pytest.raises(ValueError, match=r"unknown `method` 'simpson'; choose one of"):
        explain.integrated_gradients(model, params, state, x, 0, method="simpson")
    with pytest.raises(ValueError, match=r"`steps` must be an int >= 1 \(>= 2 for the trapezoid"):
        explain.integrated_gradients(model, params, state, x, 0, steps=1)
    with pytest.raises(
        ValueError, match=r"`baseline` must broadcast to the inputs' shape \(2, 5\)"
    ):
        explain.integrated_gradients(model, params, state, x, 0, baseline=np.zeros(4, np.float32))
    with pytest.raises(ValueError, match=r"`tolerance` must be > 0, got 0"):
        explain.integrated_gradients(model, params, state, x, 0, tolerance=0)
    with pytest.raises(ValueError, match=r"`num_samples` must be an int >= 1, got 0"):
        explain.smoothgrad(model, params, state, x, 0, key=jax.random.key(0), num_samples=0)
    with pytest.raises(ValueError, match=r"`noise_scale` must be >= 0, got -1"):
        explain.smoothgrad(model, params, state, x, 0, key=jax.random.key(0), noise_scale=-1)
    with pytest.raises(ValueError, match=r"occlusion: `window` must be a positive int or a tuple"):
        explain.occlusion(model, params, state, x, 0, window=(1, 1))
    with pytest.raises(ValueError, match=r"`window` \(6,\) is larger than .* \(5,\)"):
        explain.occlusion(model, params, state, x, 0, window=6)
