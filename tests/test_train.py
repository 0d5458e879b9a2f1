"""The pure train step against numpy gradients, its options, and custom GAN / VAE steps."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import funcnet as fn
from funcnet.core import tree_paths
from funcnet.training import TrainState, compose_optimizer, eval_step, predict_step, train_step

STRICT_DTYPES = False  # optax's Adam is not strict-clean


def data(n=16, d=3, k=2, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, d)).astype(np.float32), rng.normal(size=(n, k)).astype(np.float32)


def mse_grads(w, b, x, y):
    """Gradient of mean((x @ w + b - y)**2) over all entries, by hand."""
    r = x @ w + b - y
    scale = 2.0 / r.size
    return scale * x.T @ r, scale * r.sum(0)


def test_sgd_step_matches_numpy_gradient(key):
    x, y = data()
    model = fn.Dense(2)
    ts = TrainState.create(model, optax.sgd(0.1), key, x)
    w, b = np.asarray(ts.params["w"]), np.asarray(ts.params["b"])
    step = jax.jit(train_step(model, "mean_squared_error", optax.sgd(0.1)))
    ts2, logs = step(ts, (x, y))
    gw, gb = mse_grads(w, b, x, y)
    np.testing.assert_allclose(ts2.params["w"], w - 0.1 * gw, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ts2.params["b"], b - 0.1 * gb, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(logs["loss"], np.mean((x @ w + b - y) ** 2), rtol=1e-5)
    assert int(ts2.step) == 1 and sorted(logs) == ["loss"]


@pytest.mark.parametrize("l1, l2", [(0.01, 0.05), (0.01, 0.0), (0.0, 0.05)])
def test_l1_l2_apply_to_kernels_only(key, l1, l2):
    x, y = data()
    model = fn.Dense(2)
    ts = TrainState.create(model, optax.sgd(0.1), key, x)
    w, b = np.asarray(ts.params["w"]), np.asarray(ts.params["b"])
    step = train_step(model, "mse", optax.sgd(0.1), l1=l1, l2=l2)
    ts2, logs = step(ts, (x, y))
    gw, gb = mse_grads(w, b, x, y)
    gw = gw + l1 * np.sign(w) + 2 * l2 * w
    np.testing.assert_allclose(ts2.params["w"], w - 0.1 * gw, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ts2.params["b"], b - 0.1 * gb, rtol=1e-5, atol=1e-6)
    expected = np.mean((x @ w + b - y) ** 2) + l1 * np.abs(w).sum() + l2 * (w**2).sum()
    np.testing.assert_allclose(logs["loss"], expected, rtol=1e-5)


def test_clip_norm(key):
    x, y = data()
    model = fn.Dense(2)
    opt = compose_optimizer(optax.sgd(1.0), clip_norm=0.01)
    ts = TrainState.create(model, opt, key, x)
    w, b = np.asarray(ts.params["w"]), np.asarray(ts.params["b"])
    ts2, _ = train_step(model, "mse", opt)(ts, (x, y))
    gw, gb = mse_grads(w, b, x, y)
    norm = np.sqrt((gw**2).sum() + (gb**2).sum())
    assert norm > 0.01
    np.testing.assert_allclose(ts2.params["w"], w - gw * 0.01 / norm, rtol=1e-5, atol=1e-7)


def test_freeze_by_path(key):
    x, y = data()
    model = fn.serial(fn.Dense(4), jnp.tanh, fn.Dense(2))
    assert tree_paths(TrainState.create(model, optax.adam(1e-2), key, x).params) == [
        "0/b",
        "0/w",
        "2/b",
        "2/w",
    ]
    opt = compose_optimizer(optax.adamw(1e-2, weight_decay=0.1), freeze=r"^0/")
    ts = TrainState.create(model, opt, key, x)
    step = jax.jit(train_step(model, "mse", opt))
    new = ts
    for _ in range(3):
        new, _ = step(new, (x, y))
    np.testing.assert_array_equal(new.params[0]["w"], ts.params[0]["w"])
    np.testing.assert_array_equal(new.params[0]["b"], ts.params[0]["b"])
    assert not np.allclose(new.params[2]["w"], ts.params[2]["w"])


def test_gradient_accumulation_equals_one_big_batch(key):
    x, y = data(n=32)
    model = fn.serial(fn.Dense(8), jnp.tanh, fn.Dense(2))
    opt = optax.sgd(0.1)
    ts = TrainState.create(model, opt, key, x)
    big, logs_big = jax.jit(train_step(model, "mse", opt))(ts, (x, y))
    acc, logs_acc = jax.jit(train_step(model, "mse", opt, accumulate_steps=4))(ts, (x, y))
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), big.params, acc.params
    )
    np.testing.assert_allclose(logs_big["loss"], logs_acc["loss"], rtol=1e-5)
    with pytest.raises(ValueError, match="batch size 32 is not divisible by `accumulate_steps=5`"):
        train_step(model, "mse", opt, accumulate_steps=5)(ts, (x, y))


def test_apply_gradients_matches_numpy_sgd(key):
    x, y = data()
    opt = optax.sgd(0.1)
    ts = TrainState.create(fn.Dense(2), opt, key, x)
    w, b = np.asarray(ts.params["w"]), np.asarray(ts.params["b"])
    gw, gb = mse_grads(w, b, x, y)
    new = ts.apply_gradients(opt, {"w": jnp.asarray(gw), "b": jnp.asarray(gb)})
    np.testing.assert_allclose(new.params["w"], w - 0.1 * gw, rtol=1e-6)
    np.testing.assert_allclose(new.params["b"], b - 0.1 * gb, rtol=1e-6)
    assert int(new.step) == 1 and new.key is ts.key


def test_nan_guard_skips_and_reports(key):
    x, y = data()
    model = fn.serial(fn.Dense(4), fn.BatchNorm(), fn.Dense(2))
    opt = compose_optimizer(optax.adam(1e-2), skip_nonfinite=True)
    ts = TrainState.create(model, opt, key, x)
    step = jax.jit(train_step(model, "mse", opt))
    bad = x.copy()
    bad[3, 1] = np.nan
    new, logs = step(ts, (bad, y))
    assert bool(logs["nonfinite"]) and int(new.step) == 1
    for a, b in zip(
        jax.tree.leaves((new.params, new.state, new.opt_state.inner_state)),
        jax.tree.leaves((ts.params, ts.state, ts.opt_state.inner_state)),
    ):
        np.testing.assert_array_equal(a, b)
    new, logs = step(new, (x, y))
    assert not bool(logs["nonfinite"]) and int(new.step) == 2


def test_nan_guard_report_applies_the_update_and_false_drops_the_log(key):
    x, y = data()
    model = fn.Dense(2)
    opt = optax.sgd(0.1)
    ts = TrainState.create(model, opt, key, x)
    bad = x.copy()
    bad[0, 0] = np.inf
    report = jax.jit(train_step(model, "mse", opt, nan_guard="report"))
    new, logs = report(ts, (bad, y))
    assert bool(logs["nonfinite"]) and not np.all(np.isfinite(new.params["w"]))
    new, logs = report(ts, (x, y))
    assert not bool(logs["nonfinite"])
    _, logs = train_step(model, "mse", opt)(ts, (bad, y))  # default False: no flag
    assert "nonfinite" not in logs
    with pytest.raises(ValueError, match="`nan_guard` must be 'report' or False, got True"):
        train_step(model, "mse", opt, nan_guard=True)
    with pytest.raises(ValueError, match=r"compose_optimizer\(optimizer, skip_nonfinite=True\)"):
        train_step(model, "mse", opt, nan_guard="skip")


def test_mixed_precision_and_loss_scale(key):
    x, y = data()
    model = fn.serial(fn.Dense(8), jax.nn.relu, fn.Dense(2))
    opt = optax.sgd(0.1)
    ts = TrainState.create(model, opt, key, x)
    ref, ref_logs = train_step(model, "mse", opt)(ts, (x, y))
    bf16, logs = jax.jit(train_step(model, "mse", opt, compute_dtype=jnp.bfloat16))(ts, (x, y))
    assert bf16.params[0]["w"].dtype == jnp.float32
    np.testing.assert_allclose(logs["loss"], ref_logs["loss"], rtol=3e-2)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=2e-2), bf16.params, ref.params)
    skip = compose_optimizer(opt, skip_nonfinite=True)
    f16_step = train_step(model, "mse", skip, compute_dtype=jnp.float16, loss_scale=1024.0)
    f16, logs = f16_step(TrainState.create(model, skip, key, x), (x, y))
    assert not bool(logs["nonfinite"])
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-2), f16.params, ref.params)


def test_dropout_keys_differ_per_step_and_runs_are_deterministic(key):
    x, y = data()
    model = fn.serial(fn.Dense(16), fn.Dropout(0.5), fn.Dense(2))
    opt = optax.adam(1e-2)
    step = jax.jit(train_step(model, "mse", opt))

    def run():
        ts = TrainState.create(model, opt, key, x)
        losses = []
        for _ in range(3):
            ts, logs = step(ts, (x, y))
            losses.append(float(logs["loss"]))
        return ts, losses

    (a, la), (b, lb) = run(), run()
    assert la == lb
    for u, v in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params)):
        np.testing.assert_array_equal(u, v)


def test_sample_weights_and_eval_predict(key):
    x, y = data()
    model = fn.Dense(2)
    ts = TrainState.create(model, optax.sgd(0.1), key, x)
    w = np.zeros(16, np.float32)
    w[:4] = 1.0
    _, logs = train_step(model, "mse", optax.sgd(0.1))(ts, (x, y, w))
    full = eval_step(model, "mse")(ts.params, ts.state, (x[:4], y[:4]))
    np.testing.assert_allclose(logs["loss"], full["loss"], rtol=1e-5)
    out = predict_step(model)(ts.params, ts.state, x)
    np.testing.assert_allclose(out, x @ ts.params["w"] + ts.params["b"], rtol=1e-5, atol=1e-6)


def test_argument_errors(key):
    model = fn.Dense(2)
    with pytest.raises(TypeError, match="must be an optax GradientTransformation"):
        train_step(model, "mse", "adam")
    with pytest.raises(ValueError, match="`accumulate_steps` must be an int >= 1"):
        train_step(model, "mse", optax.sgd(0.1), accumulate_steps=0)
    with pytest.raises(ValueError, match="`l1` and `l2` must be >= 0"):
        train_step(model, "mse", optax.sgd(0.1), l2=-1.0)
    with pytest.raises(ValueError, match="`clip_norm` must be > 0"):
        compose_optimizer(optax.sgd(0.1), clip_norm=0.0)
    with pytest.raises(TypeError, match="must be an optax GradientTransformation"):
        compose_optimizer("adam", clip_norm=1.0)
    ts = TrainState.create(model, optax.sgd(0.1), key, jnp.zeros((1, 3)))
    with pytest.raises(TypeError, match=r"expected a batch `\(inputs, targets\)`.*got dict"):
        train_step(model, "mse", optax.sgd(0.1))(ts, {"x": jnp.zeros((1, 3))})


def test_gan_step_with_public_pieces(key):
    """Two models, two optimizers, one pure step: the GAN pattern."""
    gen = fn.serial(fn.Dense(16), jax.nn.relu, fn.Dense(2))
    disc = fn.serial(fn.Dense(16), jax.nn.relu, fn.Dense(1))
    g_opt, d_opt = optax.adam(1e-3), optax.adam(1e-3)
    z0 = jnp.zeros((1, 4))
    g = TrainState.create(gen, g_opt, jax.random.fold_in(key, 0), z0)
    d = TrainState.create(disc, d_opt, jax.random.fold_in(key, 1), jnp.zeros((1, 2)))
    bce = fn.losses.get("binary_cross_entropy_with_logits")

    @jax.jit
    def gan_step(g, d, real):
        z = jax.random.normal(jax.random.fold_in(g.key, g.step), (real.shape[0], 4))

        def d_loss(dp):
            fake, _ = gen.apply(g.params, g.state, z)
            real_logits, _ = disc.apply(dp, d.state, real)
            fake_logits, _ = disc.apply(dp, d.state, jax.lax.stop_gradient(fake))
            ones, zeros = jnp.ones_like(real_logits), jnp.zeros_like(fake_logits)
            return bce(real_logits, ones) + bce(fake_logits, zeros)

        def g_loss(gp):
            fake, _ = gen.apply(gp, g.state, z)
            logits, _ = disc.apply(d.params, d.state, fake)
            return bce(logits, jnp.ones_like(logits))

        dl, dg = jax.value_and_grad(d_loss)(d.params)
        du, d_opt_state = d_opt.update(dg, d.opt_state, d.params)
        d = d._replace(
            step=d.step + 1, params=optax.apply_updates(d.params, du), opt_state=d_opt_state
        )
        gl, gg = jax.value_and_grad(g_loss)(g.params)
        gu, g_opt_state = g_opt.update(gg, g.opt_state, g.params)
        g = g._replace(
            step=g.step + 1, params=optax.apply_updates(g.params, gu), opt_state=g_opt_state
        )
        return g, d, dl, gl

    real = jax.random.normal(key, (256, 2)) * 0.1 + jnp.array([2.0, -1.0])
    target = np.array([2.0, -1.0])
    z = jax.random.normal(key, (512, 4))
    before = np.linalg.norm(np.asarray(gen.apply(g.params, g.state, z)[0]).mean(0) - target)
    for _ in range(300):
        g, d, dl, gl = gan_step(g, d, real[:64])
    assert np.isfinite(float(dl)) and np.isfinite(float(gl))
    after = np.linalg.norm(np.asarray(gen.apply(g.params, g.state, z)[0]).mean(0) - target)
    assert after < 0.5 * before  # the generator moved its mass towards the real data


def test_vae_step_with_public_pieces(key):
    """Encoder to mean/log-variance, reparameterised sample, decoder, ELBO."""
    latent = 2
    encoder = fn.serial(fn.Dense(32), jax.nn.relu, fn.fanout(fn.Dense(latent), fn.Dense(latent)))
    decoder = fn.serial(fn.Dense(32), jax.nn.relu, fn.Dense(8))

    def vae_init(k, x):
        ep, es = encoder.init(jax.random.fold_in(k, 0), x)
        dp, ds = decoder.init(jax.random.fold_in(k, 1), jnp.zeros((*x.shape[:1], latent)))
        return {"enc": ep, "dec": dp}, {"enc": es, "dec": ds}

    def vae_apply(params, state, x, *, key=None, train=False):
        (mean, logvar), _ = encoder.apply(params["enc"], state["enc"], x)
        z = mean + jnp.exp(0.5 * logvar) * jax.random.normal(key, mean.shape) if train else mean
        recon, _ = decoder.apply(params["dec"], state["dec"], z)
        return (recon, mean, logvar), state

    vae = fn.Layer(vae_init, vae_apply, "VAE")

    def elbo_loss(outputs, x):
        recon, mean, logvar = outputs
        rec = jnp.sum((recon - x) ** 2, -1)
        kl = -0.5 * jnp.sum(1 + logvar - mean**2 - jnp.exp(logvar), -1)
        return jnp.mean(rec + kl)

    x = jax.random.normal(key, (128, 8)) @ jax.random.normal(jax.random.key(3), (8, 8)) * 0.3
    opt = optax.adam(3e-3)
    ts = TrainState.create(vae, opt, key, x)
    step = jax.jit(train_step(vae, elbo_loss, opt))
    first = None
    for _ in range(200):
        ts, logs = step(ts, (x, x))
        first = float(logs["loss"]) if first is None else first
    assert float(logs["loss"]) < 0.6 * first


def test_augment_runs_inside_the_step(key):
    from funcnet import augment

    x = np.zeros((8, 4, 4, 1), np.float32)
    y = np.eye(2, dtype=np.float32)[np.arange(8) % 2]

    def spy(outputs, targets):
        return jnp.mean(outputs**2) + 0.0 * jnp.sum(targets)

    model = fn.serial(fn.Flatten(), fn.Dense(2, w_init="ones"))
    opt = optax.sgd(0.0)
    ts = TrainState.create(model, opt, key, x)
    noisy = train_step(model, spy, opt, augment=augment.gaussian_noise(1.0))
    _, logs = noisy(ts, (x, y))
    assert float(logs["loss"]) > 1.0  # zeros + noise: sum of 16 N(0,1) per output
    mixed = train_step(
        model, "categorical_cross_entropy", opt, augment=augment.mixup(0.4), augment_targets=True
    )
    _, logs = jax.jit(mixed)(ts, (x, y))
    assert np.isfinite(float(logs["loss"]))
    with pytest.raises(TypeError, match="call the factory"):
        train_step(model, "mse", opt, augment=3)


@pytest.mark.parametrize(
    "options",
    [{}, {"clip_norm": 0.05}, {"loss_scale": 256.0}, {"clip_norm": 0.05, "loss_scale": 256.0}],
    ids=["plain", "clip", "loss_scale", "clip+loss_scale"],
)
def test_accumulation_with_sample_weights_equals_one_big_batch(key, options):
    # the reported bug: weights [1,1,1,1,1,0,0,0] with 2 micro-batches gave 1.832 instead of 1.618
    x, y = data(n=8)
    w = np.array([1, 1, 1, 1, 1, 0, 0, 0], np.float32)
    model = fn.serial(fn.Dense(8), jnp.tanh, fn.Dense(2))
    opt = compose_optimizer(optax.sgd(0.5), clip_norm=options.get("clip_norm"))
    scale = {"loss_scale": options["loss_scale"]} if "loss_scale" in options else {}
    ts = TrainState.create(model, opt, key, x)
    big, logs_big = jax.jit(train_step(model, "mse", opt, **scale))(ts, (x, y, w))
    step = jax.jit(train_step(model, "mse", opt, accumulate_steps=2, **scale))
    acc, logs_acc = step(ts, (x, y, w))
    np.testing.assert_allclose(logs_acc["loss"], logs_big["loss"], rtol=1e-5)
    chex.assert_trees_all_close(acc.params, big.params, rtol=1e-5, atol=1e-6)
    # the loss of the five weighted rows, by hand
    h = np.tanh(x @ ts.params[0]["w"] + ts.params[0]["b"])
    out = h @ ts.params[2]["w"] + ts.params[2]["b"]
    np.testing.assert_allclose(logs_acc["loss"], np.mean((out[:5] - y[:5]) ** 2), rtol=1e-5)


def test_accumulation_with_all_zero_weights_in_a_micro_batch_stays_finite(key):
    x, y = data(n=8)
    w = np.array([1, 1, 1, 1, 0, 0, 0, 0], np.float32)
    model = fn.Dense(2)
    ts = TrainState.create(model, optax.sgd(0.1), key, x)
    big, _ = train_step(model, "mse", optax.sgd(0.1))(ts, (x, y, w))
    acc, logs = train_step(model, "mse", optax.sgd(0.1), accumulate_steps=2)(ts, (x, y, w))
    assert np.isfinite(float(logs["loss"]))
    chex.assert_trees_all_close(acc.params, big.params, rtol=1e-5, atol=1e-6)


def test_loss_scale_is_undone_before_clipping(key):
    x, y = data()
    model = fn.Dense(2)
    opt = compose_optimizer(optax.sgd(1.0), clip_norm=0.01)
    ts = TrainState.create(model, opt, key, x)
    plain, _ = train_step(model, "mse", opt)(ts, (x, y))
    scaled, _ = train_step(model, "mse", opt, loss_scale=1024.0)(ts, (x, y))
    chex.assert_trees_all_close(scaled.params, plain.params, rtol=1e-5, atol=1e-7)
    moved = np.sqrt(
        sum(
            float(((a - b) ** 2).sum())
            for a, b in zip(jax.tree.leaves(scaled.params), jax.tree.leaves(ts.params))
        )
    )
    np.testing.assert_allclose(moved, 0.01, rtol=1e-4)  # one clipped SGD step of norm 0.01


class _Outputs:
    """A 'metric' whose state is the step's outputs, to look at what the model computed."""

    def init(self):
        return jnp.zeros(())

    def update(self, state, outputs, targets, weights=None):
        del state, targets, weights
        return outputs


def test_dropout_masks_differ_between_steps_and_micro_batches_and_repeat_for_a_key(key):
    x, y = data(n=4, d=64, k=64)
    x = np.concatenate([x, x])  # two identical micro-batches
    y = np.concatenate([y, y])
    scale = fn.Layer(
        lambda k, i: ({"s": jnp.ones(())}, ()),
        lambda p, s, i, *, key=None, train=False: (p["s"] * i, s),
        "Scale",
    )
    model = fn.serial(scale, fn.Dropout(0.5))
    opt = optax.sgd(0.0)
    step = jax.jit(train_step(model, "mse", opt, accumulate_steps=2, metrics={"out": _Outputs()}))
    ts = TrainState.create(model, opt, key, x)
    ts1, logs1 = step(ts, (x, y))
    _, logs2 = step(ts1, (x, y))
    _, again = step(ts, (x, y))
    out1, out2 = np.asarray(logs1["out"]), np.asarray(logs2["out"])
    dropped = out1 == 0
    assert 0.3 < dropped.mean() < 0.7
    assert not np.array_equal(dropped[:4], dropped[4:])  # micro-batches draw their own masks
    assert not np.array_equal(dropped, out2 == 0)  # so do steps
    np.testing.assert_array_equal(out1, np.asarray(again["out"]))  # and a key repeats them
    other = TrainState.create(model, opt, jax.random.key(1), x)
    assert not np.array_equal(dropped, np.asarray(step(other, (x, y))[1]["out"]) == 0)


def test_lbfgs_gets_its_extra_arguments_and_solves_least_squares(key):
    x, _ = data(n=32, d=3)
    y = (x @ np.array([[1.0], [-2.0], [0.5]], np.float32) + 0.3).astype(np.float32)
    model = fn.Dense(1)
    opt = optax.lbfgs()
    ts = TrainState.create(model, opt, key, x)
    step = jax.jit(train_step(model, "mse", opt))
    for _ in range(15):
        ts, logs = step(ts, (x, y))
    a = np.concatenate([x, np.ones((32, 1), np.float32)], axis=1)
    solution = np.linalg.lstsq(a, y, rcond=None)[0]
    np.testing.assert_allclose(ts.params["w"], solution[:3], atol=1e-3)
    np.testing.assert_allclose(ts.params["b"], solution[3], atol=1e-3)
    assert float(logs["loss"]) < 1e-5


def test_reduce_on_plateau_gets_the_loss(key):
    x, y = data()
    model = fn.Dense(2)
    plateau = optax.contrib.reduce_on_plateau(patience=1, factor=0.5, accumulation_size=1)
    opt = optax.chain(optax.sgd(0.0), plateau)  # a constant loss: a plateau
    ts = TrainState.create(model, opt, key, x)
    step = jax.jit(train_step(model, "mse", opt))
    for _ in range(6):
        ts, _ = step(ts, (x, y))
    assert float(ts.opt_state[1].scale) < 1.0


def test_fit_with_lbfgs_and_freeze_option(key):
    x, _ = data(n=64, d=3)
    y = (x @ np.array([[1.0], [-2.0], [0.5]], np.float32)).astype(np.float32)
    ts, h = fn.fit(fn.Dense(1), optax.lbfgs(), "mse", (x, y), batch_size=64, epochs=10, verbose=0)
    assert h["loss"][-1] < 1e-5
    model = fn.serial(fn.Dense(4), jnp.tanh, fn.Dense(1))
    start = TrainState.create(model, compose_optimizer(optax.adam(1e-2), freeze=r"^0/"), key, x)
    ts, _ = fn.fit(
        model,
        optax.adam(1e-2),
        "mse",
        (x, y),
        batch_size=16,
        epochs=2,
        verbose=0,
        freeze=r"^0/",
        initial_state=start,
    )
    chex.assert_trees_all_close(ts.params[0], start.params[0], rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"`freeze='\^9/'` matches no parameter path"):
        fn.fit(model, optax.adam(1e-2), "mse", (x, y), batch_size=16, verbose=0, freeze="^9/")


def test_train_step_and_fit_refuse_a_softmax_model_with_a_logits_loss():
    model = fn.serial(fn.Dense(3), jax.nn.softmax)
    x, y = np.ones((8, 2), np.float32), np.zeros(8, np.int32)
    with pytest.raises(ValueError, match=r"train_step: the model's last layer .*softmax"):
        train_step(model, "sparse_categorical_cross_entropy", optax.sgd(0.1))
    with pytest.raises(ValueError, match=r"last layer .*softmax"):
        fn.fit(model, optax.sgd(0.1), "sparse_categorical_cross_entropy", (x, y), verbose=0)
    probs = fn.losses.get("sparse_categorical_cross_entropy", from_logits=False)
    train_step(model, probs, optax.sgd(0.1))  # accepted


def test_device_share_and_axis_names():
    from funcnet.training.collectives import check_axis_name, device_share

    share = jax.vmap(lambda w: device_share(w, "d"), axis_name="d")
    np.testing.assert_array_equal(share(jnp.zeros((2, 3))), [0.0, 0.0])  # no weight: 0, not NaN
    # a total weight below 1 is still a total: shares 0.25 / 0.5 and 0.25 / 0.5
    np.testing.assert_allclose(share(jnp.array([[0.25, 0.0], [0.25, 0.0]])), [0.5, 0.5])
    np.testing.assert_allclose(share(jnp.array([[1.0, 2.0], [1.0, 0.0]])), [0.75, 0.25])
    assert check_axis_name(["a", "b"], "w") == ("a", "b")
    with pytest.raises(TypeError, match=r"w: `axis_name` must be .* got \('a', \('b',\)\)"):
        check_axis_name(("a", ("b",)), "w")


def test_loss_scale_must_be_positive():
    model = fn.Dense(1)
    for bad in (0.0, -2.0):
        with pytest.raises(ValueError, match="loss_scale"):
            train_step(model, "mse", optax.sgd(0.1), loss_scale=bad)


def test_skip_nonfinite_never_gives_up():
    """optax.apply_if_finite alone applies the update after max_consecutive_errors bad steps;
    compose_optimizer's skipping keeps skipping (here 100 in a row), then updates again."""
    opt = compose_optimizer(optax.sgd(1.0), skip_nonfinite=True)
    params = {"w": jnp.zeros(2)}
    nan = {"w": jnp.full(2, jnp.nan)}

    def bad_step(state, _):
        updates, state = opt.update(nan, state, params)
        return state, updates["w"]

    state, updates = jax.lax.scan(bad_step, opt.init(params), None, length=100)
    np.testing.assert_array_equal(updates, 0.0)  # every non-finite update skipped
    updates, _ = opt.update({"w": jnp.ones(2)}, state, params)
    np.testing.assert_array_equal(updates["w"], [-1.0, -1.0])


def test_accumulation_with_small_or_zero_total_weight(key):
    """Micro-batch shares are their weight over the total, whatever its size: a total below 1
    is a total (accumulating equals one big batch), and a batch of zero weight is no step."""
    x, y = data()
    model = fn.serial(fn.Dense(4), fn.Dense(2))
    opt = optax.sgd(0.1)
    ts = TrainState.create(model, opt, key, x)
    one = jax.jit(train_step(model, "mse", opt))
    two = jax.jit(train_step(model, "mse", opt, accumulate_steps=2))
    small = np.full(len(x), 0.05, np.float32)
    chex.assert_trees_all_close(
        two(ts, (x, y, small))[0].params, one(ts, (x, y, small))[0].params, rtol=1e-5, atol=1e-6
    )
    zero = np.zeros(len(x), np.float32)
    for step in (one, two):
        new, logs = step(ts, (x, y, zero))
        assert np.isfinite(logs["loss"])
        chex.assert_trees_all_equal(new.params, ts.params)


def test_compose_optimizer_skips_nothing_by_default():
    opt = compose_optimizer(optax.sgd(1.0))
    params = {"w": jnp.zeros(2)}
    updates, _ = opt.update({"w": jnp.full(2, jnp.nan)}, opt.init(params), params)
    assert np.isnan(updates["w"]).all()


def test_compute_dtype_loss_is_taken_in_float32(key):
    """Outputs computed in bfloat16 are cast to float32 before the loss (a bfloat16 mean over
    the batch would be off by ~1e-3 relative)."""
    x, y = data(n=64, d=8, k=4)
    model = fn.Dense(4)
    ts = TrainState.create(model, optax.sgd(0.0), key, x)
    _, logs = train_step(model, "mse", optax.sgd(0.0), compute_dtype=jnp.bfloat16)(ts, (x, y))
    half = jax.tree.map(lambda a: a.astype(jnp.bfloat16), ts.params)
    out, _ = model.apply(half, ts.state, x.astype(jnp.bfloat16))
    expected = np.mean((np.asarray(out, np.float32) - y) ** 2)
    np.testing.assert_allclose(float(logs["loss"]), expected, rtol=1e-6)


def test_accumulation_with_per_output_weights(key):
    """Weights of shape (batch, outputs) weigh each row by its total under accumulation."""
    x, y = data(n=8, k=2)
    w = np.random.default_rng(1).uniform(0, 2, size=(8, 2)).astype(np.float32)
    model = fn.Dense(2)
    opt = optax.sgd(0.1)
    ts = TrainState.create(model, opt, key, x)
    big, _ = train_step(model, "mse", opt)(ts, (x, y, w))
    acc, _ = train_step(model, "mse", opt, accumulate_steps=2)(ts, (x, y, w))
    chex.assert_trees_all_close(acc.params, big.params, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("scale", [2.0, 0.5])
def test_any_loss_scale_is_undone(key, scale):
    x, y = data()
    model = fn.Dense(2)
    ts = TrainState.create(model, optax.sgd(0.1), key, x)
    plain, _ = train_step(model, "mse", optax.sgd(0.1))(ts, (x, y))
    scaled, _ = train_step(model, "mse", optax.sgd(0.1), loss_scale=scale)(ts, (x, y))
    chex.assert_trees_all_close(scaled.params, plain.params, rtol=1e-6)


def test_accumulated_metrics_see_every_row(key):
    """Metrics under accumulation see the outputs of all micro-batches, row for row."""
    x, y = data(n=16, k=3)
    labels = np.argmax(y, -1).astype(np.int32)
    model = fn.Dense(3)
    opt = optax.sgd(0.0)
    ts = TrainState.create(model, opt, key, x)
    kw = dict(metrics=["accuracy"])
    _, one = train_step(model, "sparse_categorical_cross_entropy", opt, **kw)(ts, (x, labels))
    step = train_step(model, "sparse_categorical_cross_entropy", opt, accumulate_steps=4, **kw)
    _, four = step(ts, (x, labels))
    chex.assert_trees_all_close(four["accuracy"], one["accuracy"])


def test_a_per_example_loss_is_refused_with_the_fix(key):
    """optax's per-example losses return (N,): JAX's own error would be 'Gradient only defined
    for scalar-output functions'; funcnet names the loss, the shape and the fix."""
    x, y = data()
    labels = np.argmax(y, -1).astype(np.int32)
    model = fn.Dense(2)
    ts = TrainState.create(model, optax.sgd(0.1), key, x)
    per_example = optax.softmax_cross_entropy_with_integer_labels
    with pytest.raises(ValueError, match=r"returned shape \(16,\).*one number.*\.mean\(\)"):
        train_step(model, per_example, optax.sgd(0.1))(ts, (x, labels))
    with pytest.raises(ValueError, match=r"`softmax_cross_entropy_with_integer_labels`"):
        fn.fit(model, optax.sgd(0.1), per_example, (x, labels), epochs=1, batch_size=8, verbose=0)
    mean = lambda o, t, weights=None: per_example(o, t).mean()
    train_step(model, mean, optax.sgd(0.1))(ts, (x, labels))
