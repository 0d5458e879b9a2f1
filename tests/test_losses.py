"""Tests for funcnet.losses: values against numpy, weights/masks, stability, errors, get,
the one logits convention (against numpy and PyTorch) and the model/loss check."""

import functools
import inspect

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import funcnet as fn
from funcnet import losses

B, C = 6, 4
RNG = np.random.default_rng(0)
X = RNG.normal(size=(B, C)).astype(np.float32)  # logits / regression outputs
Y = RNG.normal(size=(B, C)).astype(np.float32)  # regression targets
LABELS = RNG.integers(0, C, size=B).astype(np.int32)
ONE_HOT = np.eye(C, dtype=np.float32)[LABELS]
SOFT = RNG.dirichlet(np.ones(C), size=B).astype(np.float32)
PROBS = RNG.uniform(0.05, 0.95, size=(B, C)).astype(np.float32)
BIN = RNG.integers(0, 2, size=(B, C)).astype(np.float32)


def np_log_softmax(x):
    x = x.astype(np.float64)
    m = x.max(-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


def np_huber(e, d):
    a = np.abs(e)
    return np.where(a <= d, 0.5 * e**2, d * (a - 0.5 * d))


def np_cos(a, b):
    return (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)


def np_smooth(t, alpha):
    return (1 - alpha) * t + alpha / t.shape[-1]


# (name, loss fn, outputs, targets, numpy per-example reference)
CASES = [
    ("mse", losses.mean_squared_error, X, Y, lambda: (X - Y) ** 2),
    ("mae", losses.mean_absolute_error, X, Y, lambda: np.abs(X - Y)),
    (
        "huber",
        functools.partial(losses.huber, delta=0.7),
        X,
        Y,
        lambda: np_huber(X.astype(np.float64) - Y, 0.7),
    ),
    (
        "bce_probs",
        functools.partial(losses.binary_cross_entropy, from_logits=False),
        PROBS,
        BIN,
        lambda: -(BIN * np.log(PROBS) + (1 - BIN) * np.log(1 - PROBS)),
    ),
    (
        "bce_logits",
        losses.binary_cross_entropy_with_logits,
        X,
        BIN,
        lambda: np.maximum(X, 0) - X * BIN + np.log1p(np.exp(-np.abs(X))),
    ),
    (
        "bce_default",
        losses.binary_cross_entropy,
        X,
        SOFT,
        lambda: np.maximum(X, 0) - X * SOFT + np.log1p(np.exp(-np.abs(X))),
    ),
    (
        "cce_logits",
        losses.categorical_cross_entropy,
        X,
        SOFT,
        lambda: -(SOFT * np_log_softmax(X)).sum(-1),
    ),
    (
        "cce_probs",
        functools.partial(losses.categorical_cross_entropy, from_logits=False),
        PROBS / PROBS.sum(-1, keepdims=True),
        ONE_HOT,
        lambda: -(ONE_HOT * np.log(PROBS / PROBS.sum(-1, keepdims=True))).sum(-1),
    ),
    (
        "cce_smooth",
        functools.partial(losses.categorical_cross_entropy, label_smoothing=0.2),
        X,
        ONE_HOT,
        lambda: -(np_smooth(ONE_HOT, 0.2) * np_log_softmax(X)).sum(-1),
    ),
    (
        "sparse",
        losses.sparse_categorical_cross_entropy,
        X,
        LABELS,
        lambda: -np_log_softmax(X)[np.arange(B), LABELS],
    ),
    (
        "sparse_probs",
        functools.partial(losses.sparse_categorical_cross_entropy, from_logits=False),
        PROBS / PROBS.sum(-1, keepdims=True),
        LABELS,
        lambda: -np.log(PROBS / PROBS.sum(-1, keepdims=True))[np.arange(B), LABELS],
    ),
    (
        "kl_logits",
        losses.kl_divergence,
        X,
        SOFT,
        lambda: (SOFT * (np.log(SOFT) - np_log_softmax(X))).sum(-1),
    ),
    (
        "kl_probs",
        functools.partial(losses.kl_divergence, from_logits=False),
        PROBS,
        SOFT,
        lambda: (SOFT * (np.log(SOFT) - np.log(PROBS))).sum(-1),
    ),
    ("cosine_similarity", losses.cosine_similarity, X, Y, lambda: -np_cos(X, Y)),
    ("cosine_distance", losses.cosine_distance, X, Y, lambda: 1 - np_cos(X, Y)),
]
IDS = [c[0] for c in CASES]


@pytest.mark.parametrize(("name", "fn", "outputs", "targets", "ref"), CASES, ids=IDS)
def test_matches_numpy(name, fn, outputs, targets, ref):
    got = jax.jit(fn)(outputs, targets)
    assert got.shape == () and got.dtype == jnp.float32
    np.testing.assert_allclose(got, ref().mean(), rtol=2e-5, atol=1e-6)


@pytest.mark.parametrize(("name", "fn", "outputs", "targets", "ref"), CASES, ids=IDS)
def test_weighted_mean(name, fn, outputs, targets, ref):
    w = np.array([0.5, 2.0, 0.0, 1.0, 3.0, 0.25], np.float32)
    per = ref()
    w_full = w.reshape((B,) + (1,) * (per.ndim - 1)) * np.ones_like(per)
    expected = (w_full * per).sum() / w_full.sum()
    got = jax.jit(fn)(outputs, targets, weights=w)
    np.testing.assert_allclose(got, expected, rtol=2e-5, atol=1e-6)


@pytest.mark.parametrize(("name", "fn", "outputs", "targets", "ref"), CASES, ids=IDS)
def test_mask_of_padded_batch_and_all_zero_mask(name, fn, outputs, targets, ref):
    # Padding with garbage (NaN outputs, labels out of range) must not leak into the loss.
    pad = 3
    out_pad = np.concatenate([outputs, np.full((pad, *outputs.shape[1:]), np.nan, np.float32)])
    if targets.dtype == np.int32:
        tgt_pad = np.concatenate([targets, np.full((pad,), 99, np.int32)])
    else:
        tgt_pad = np.concatenate([targets, np.zeros((pad, *targets.shape[1:]), targets.dtype)])
    mask = np.arange(B + pad) < B
    np.testing.assert_allclose(
        fn(out_pad, tgt_pad, weights=mask), fn(outputs, targets), rtol=1e-6, atol=1e-7
    )
    # An all-zero mask: 0.0, with zero (finite) gradients.
    zeros = np.zeros(B, bool)
    value, grad = jax.value_and_grad(lambda o: fn(o, targets, weights=zeros))(jnp.asarray(outputs))
    assert value == 0.0
    assert np.all(np.asarray(grad) == 0.0)


def test_weights_over_leading_axes_of_sequences():
    logits = RNG.normal(size=(2, 5, 3)).astype(np.float32)
    labels = RNG.integers(0, 3, size=(2, 5)).astype(np.int32)
    mask = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], bool)
    per = -np_log_softmax(logits)[np.arange(2)[:, None], np.arange(5), labels]
    got = losses.sparse_categorical_cross_entropy(logits, labels, weights=mask)
    np.testing.assert_allclose(got, per[mask].mean(), rtol=1e-6)
    # Per-sequence weights (batch,) broadcast over time.
    w = np.array([1.0, 3.0], np.float32)
    got = losses.sparse_categorical_cross_entropy(logits, labels, weights=w)
    np.testing.assert_allclose(got, (per * w[:, None]).sum() / (5 * w.sum()), rtol=1e-6)
    # Element-wise losses: weights (batch,) broadcast over the features.
    got = losses.mean_squared_error(X, Y, weights=np.arange(B))
    expected = ((X - Y) ** 2 * np.arange(B)[:, None]).sum() / (C * np.arange(B).sum())
    np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_sparse_agrees_with_categorical_on_one_hot():
    a = losses.sparse_categorical_cross_entropy(X, LABELS)
    b = losses.categorical_cross_entropy(X, ONE_HOT)
    np.testing.assert_allclose(a, b, rtol=1e-6)


STABLE = [
    ("cce", losses.categorical_cross_entropy, ONE_HOT),
    ("sparse", losses.sparse_categorical_cross_entropy, LABELS),
    ("bce_logits", losses.binary_cross_entropy_with_logits, BIN),
    ("bce", losses.binary_cross_entropy, BIN),
    ("kl", losses.kl_divergence, ONE_HOT),
    ("cce_smooth", functools.partial(losses.categorical_cross_entropy, label_smoothing=0.1), SOFT),
]


@pytest.mark.parametrize(("name", "fn", "targets"), STABLE, ids=[s[0] for s in STABLE])
@pytest.mark.parametrize("scale", [1e4, -1e4])
def test_extreme_logits_finite_loss_and_gradients(name, fn, targets, scale):
    logits = jnp.asarray(np.sign(X) * scale)  # every logit is +-1e4
    value, grad = jax.jit(jax.value_and_grad(lambda o: fn(o, targets)))(logits)
    assert np.isfinite(value)
    assert np.all(np.isfinite(grad))


@pytest.mark.parametrize(
    ("name", "fn", "targets"),
    [
        ("bce", functools.partial(losses.binary_cross_entropy, from_logits=False), BIN),
        ("cce", functools.partial(losses.categorical_cross_entropy, from_logits=False), ONE_HOT),
        (
            "sparse",
            functools.partial(losses.sparse_categorical_cross_entropy, from_logits=False),
            LABELS,
        ),
        ("kl", functools.partial(losses.kl_divergence, from_logits=False), SOFT),
    ],
)
def test_extreme_probabilities_are_clipped(name, fn, targets):
    probs = jnp.asarray((X > 0).astype(np.float32))  # exact 0s and 1s
    value, grad = jax.value_and_grad(lambda o: fn(o, targets))(probs)
    assert np.isfinite(value)
    assert np.all(np.isfinite(grad))


def test_cosine_of_a_zero_vector_is_finite():
    value, grad = jax.value_and_grad(losses.cosine_similarity)(jnp.zeros((2, 3)), jnp.ones((2, 3)))
    assert value == 0.0
    assert np.all(np.isfinite(grad))


def test_half_precision_outputs_give_float32_loss():
    got = losses.categorical_cross_entropy(jnp.asarray(X, jnp.bfloat16), ONE_HOT)
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(got, losses.categorical_cross_entropy(X, ONE_HOT), rtol=2e-2)


@pytest.mark.parametrize("bad", [C, -1])
def test_out_of_range_labels_give_nan(bad):
    labels = LABELS.copy()
    labels[0] = bad
    assert np.isnan(losses.sparse_categorical_cross_entropy(X, labels))
    weights = np.arange(B) != 0
    assert np.isfinite(losses.sparse_categorical_cross_entropy(X, labels, weights=weights))


def test_differentiable_under_jit_and_vmap():
    def loss(o):
        return losses.categorical_cross_entropy(o, SOFT, label_smoothing=0.1)

    g = jax.jit(jax.grad(loss))(jnp.asarray(X))
    np.testing.assert_allclose(g, jax.grad(loss)(jnp.asarray(X)), rtol=1e-5, atol=1e-8)
    per = jax.vmap(losses.sparse_categorical_cross_entropy)(X, LABELS)
    np.testing.assert_allclose(per, -np_log_softmax(X)[np.arange(B), LABELS], rtol=1e-5)


ERRORS = [
    (
        losses.sparse_categorical_cross_entropy,
        X,
        LABELS[:, None],
        ValueError,
        r"sparse_categorical_cross_entropy: expected integer `targets` of shape "
        r"outputs.shape\[:-1\] = \(6,\).*got shape \(6, 1\); drop the trailing axis",
    ),
    (
        losses.sparse_categorical_cross_entropy,
        X,
        LABELS.astype(np.float32),
        TypeError,
        r"sparse_categorical_cross_entropy: `targets` must be integer class labels, got dtype "
        r"float32; cast with `targets.astype\(jnp.int32\)`",
    ),
    (
        losses.sparse_categorical_cross_entropy,
        X,
        ONE_HOT,
        ValueError,
        r"look like one-hot targets: use `categorical_cross_entropy`",
    ),
    (
        losses.categorical_cross_entropy,
        X,
        np.eye(C + 1, dtype=np.float32)[LABELS],
        ValueError,
        r"categorical_cross_entropy: `targets` have 5 classes \(last axis\) but `outputs` have 4",
    ),
    (
        losses.categorical_cross_entropy,
        X,
        LABELS,
        ValueError,
        r"got class labels of shape \(6,\).*use `sparse_categorical_cross_entropy`",
    ),
    (
        losses.categorical_cross_entropy,
        X[0, 0],
        ONE_HOT[0, 0],
        ValueError,
        r"categorical_cross_entropy: `outputs` must have a class axis",
    ),
    (
        losses.mean_squared_error,
        X[:, :1],
        Y[:, 0],
        ValueError,
        r"mean_squared_error: `outputs` and `targets` must have the same shape, got outputs "
        r"\(6, 1\) and targets \(6,\); add the axis to the targets with `targets\[\.\.\., None\]`",
    ),
    (
        losses.binary_cross_entropy,
        X[:, 0],
        BIN[:, :1],
        ValueError,
        r"binary_cross_entropy: .*drop the targets' last axis",
    ),
    (
        losses.kl_divergence,
        X,
        SOFT[:, :2],
        ValueError,
        r"kl_divergence: `outputs` and `targets` must have the same shape",
    ),
    (
        losses.binary_cross_entropy,
        LABELS,
        LABELS,
        TypeError,
        r"binary_cross_entropy: `outputs` must be floating point, got dtype int32",
    ),
    (
        losses.mean_absolute_error,
        X,
        Y.astype(np.complex64),
        TypeError,
        r"mean_absolute_error: `targets` must be real numbers",
    ),
]


@pytest.mark.parametrize(("fn", "outputs", "targets", "exc", "match"), ERRORS)
@pytest.mark.parametrize("mode", ["eager", "jit"])
def test_bad_shapes_and_dtypes_raise_at_trace_time(fn, outputs, targets, exc, match, mode):
    call = fn if mode == "eager" else jax.jit(fn)
    with pytest.raises(exc, match=match):
        call(outputs, targets)


def test_bad_weights_and_hyperparameters():
    with pytest.raises(ValueError, match=r"`weights` must have the leading shape .* \(6,\)"):
        losses.sparse_categorical_cross_entropy(X, LABELS, weights=np.ones((B, 1)))
    with pytest.raises(ValueError, match=r"got shape \(5,\)"):
        jax.eval_shape(lambda: losses.mean_squared_error(X, Y, weights=jnp.ones(5)))
    with pytest.raises(TypeError, match=r"`weights` must be bool, int or float"):
        losses.mean_squared_error(X, Y, weights=np.ones(B, np.complex64))
    with pytest.raises(ValueError, match=r"`label_smoothing` must be in \[0.0, 1.0\], got 1.5"):
        losses.categorical_cross_entropy(X, ONE_HOT, label_smoothing=1.5)
    with pytest.raises(ValueError, match=r"huber: `delta` must be in \(0.0, inf\]"):
        losses.huber(X, Y, delta=0.0)
    with pytest.raises(ValueError, match=r"binary_cross_entropy: `epsilon`"):
        losses.binary_cross_entropy(PROBS, BIN, from_logits=False, epsilon=0.7)


def test_weighted_mean_helper():
    v = jnp.array([1.0, 2.0, jnp.inf])
    assert losses.weighted_mean(v, jnp.array([True, True, False])) == 1.5
    assert losses.weighted_mean(jnp.array([1.0, 3.0])) == 2.0


@pytest.mark.parametrize(
    ("name", "fn"),
    [
        ("mse", losses.mean_squared_error),
        ("MSE", losses.mean_squared_error),
        ("mean_absolute_error", losses.mean_absolute_error),
        ("huber_loss", losses.huber),
        ("binary_crossentropy", losses.binary_cross_entropy),
        ("BinaryCrossentropy", losses.binary_cross_entropy),
        ("categorical_crossentropy", losses.categorical_cross_entropy),
        ("sparse_categorical_crossentropy", losses.sparse_categorical_cross_entropy),
        ("sparse_categorical_cross_entropy", losses.sparse_categorical_cross_entropy),
        ("SparseCategoricalCrossentropy", losses.sparse_categorical_cross_entropy),
        ("kld", losses.kl_divergence),
        ("kullback_leibler_divergence", losses.kl_divergence),
        ("cosine_similarity", losses.cosine_similarity),
    ],
)
def test_get_by_name(name, fn):
    assert losses.get(name) is fn


def test_get_options_callables_and_errors():
    loss = losses.get("categorical_crossentropy", from_logits=False)
    probs = PROBS / PROBS.sum(-1, keepdims=True)
    np.testing.assert_allclose(
        loss(probs, ONE_HOT), losses.categorical_cross_entropy(probs, ONE_HOT, from_logits=False)
    )
    custom = lambda o, t, *, weights=None: jnp.mean(o - t)
    assert losses.get(custom) is custom
    with pytest.raises(ValueError, match=r"unknown loss 'sparse_categorical_crossentropyy'; did "):
        losses.get("sparse_categorical_crossentropyy")
    with pytest.raises(ValueError, match=r"unknown loss 'nope'; known losses: mse"):
        losses.get("nope")
    with pytest.raises(ValueError, match=r"loss 'huber' takes no option among \['alpha'\]"):
        losses.get("huber", alpha=1.0)
    with pytest.raises(TypeError, match=r"a loss must be a name or a callable, got int"):
        losses.get(3)


# ----------------------------------------------------------------------------- one convention

# (loss, the activation that turns its logits into the probabilities it takes with
# from_logits=False, targets)
CLASSIFICATION = [
    (losses.binary_cross_entropy, jax.nn.sigmoid, BIN),
    (losses.categorical_cross_entropy, jax.nn.softmax, SOFT),
    (losses.sparse_categorical_cross_entropy, jax.nn.softmax, LABELS),
    (losses.kl_divergence, jax.nn.softmax, SOFT),
]
CLS_IDS = [c[0].__name__ for c in CLASSIFICATION]


@pytest.mark.parametrize(("fn", "activation", "targets"), CLASSIFICATION, ids=CLS_IDS)
def test_every_classification_loss_takes_logits_by_default(fn, activation, targets):
    assert inspect.signature(fn).parameters["from_logits"].default is True
    assert losses.expects_logits(fn) is True
    logits = 3 * X  # confident scores: the two conventions disagree clearly
    probs = activation(jnp.asarray(logits))
    on_logits = fn(logits, targets)
    # The same loss on probabilities, picked both documented ways.
    for on_probs in (
        functools.partial(fn, from_logits=False),
        losses.get(fn.__name__, from_logits=False),
    ):
        assert losses.expects_logits(on_probs) is False
        np.testing.assert_allclose(jax.jit(on_probs)(probs, targets), on_logits, rtol=1e-5)
    # Probabilities fed to the logits default give another, wrong, number (the trap).
    assert abs(float(fn(probs, targets)) - float(on_logits)) > 0.05


def test_softmax_outputs_with_the_logits_default_is_the_reported_trap():
    # A confident, correct model: cross-entropy ~0.1 on its probabilities, but the
    # logits default applied to them (softmax twice) gives a much larger loss.
    logits = np.array([[4.0, 1.0, 0.0], [0.0, 5.0, 1.0]], np.float32)
    labels = np.array([0, 1])
    probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    right = -np.log(probs[np.arange(2), labels]).mean()
    twice = probs - np.log(np.exp(probs).sum(-1, keepdims=True))
    wrong = -twice[np.arange(2), labels].mean()
    np.testing.assert_allclose(
        losses.sparse_categorical_cross_entropy(logits, labels), right, rtol=1e-5
    )
    got = losses.get("sparse_categorical_crossentropy", from_logits=False)(probs, labels)
    np.testing.assert_allclose(got, right, rtol=1e-5)
    np.testing.assert_allclose(
        losses.sparse_categorical_cross_entropy(probs, labels), wrong, rtol=1e-5
    )
    assert right < 0.1 < 0.5 < wrong


@pytest.mark.parametrize("loss", [fn for fn, _, _ in CLASSIFICATION], ids=CLS_IDS)
def test_from_logits_must_be_a_bool(loss):
    with pytest.raises(TypeError, match=r"`from_logits` must be True \(logits\) or False"):
        loss(
            X,
            LABELS if loss is losses.sparse_categorical_cross_entropy else SOFT,
            from_logits="False",
        )


def test_matches_pytorch():
    torch = pytest.importorskip("torch")  # optional cross-check (the `bench` extra)
    F = torch.nn.functional
    t = torch.from_numpy
    close = functools.partial(np.testing.assert_allclose, rtol=1e-5, atol=1e-6)
    close(losses.binary_cross_entropy(X, BIN), F.binary_cross_entropy_with_logits(t(X), t(BIN)))
    close(losses.binary_cross_entropy(X, SOFT), F.binary_cross_entropy_with_logits(t(X), t(SOFT)))
    close(
        losses.binary_cross_entropy(PROBS, BIN, from_logits=False),
        F.binary_cross_entropy(t(PROBS), t(BIN)),
    )
    close(
        losses.sparse_categorical_cross_entropy(X, LABELS), F.cross_entropy(t(X), t(LABELS).long())
    )
    close(losses.categorical_cross_entropy(X, SOFT), F.cross_entropy(t(X), t(SOFT)))
    close(
        losses.categorical_cross_entropy(X, ONE_HOT, label_smoothing=0.2),
        F.cross_entropy(t(X), t(LABELS).long(), label_smoothing=0.2),
    )
    close(
        losses.kl_divergence(X, SOFT),
        F.kl_div(F.log_softmax(t(X), -1), t(SOFT), reduction="batchmean"),
    )
    # Weights: a weighted mean of torch's per-example losses.
    w = RNG.uniform(0.1, 2.0, size=B).astype(np.float32)
    per = F.cross_entropy(t(X), t(LABELS).long(), reduction="none").numpy()
    close(losses.sparse_categorical_cross_entropy(X, LABELS, weights=w), (w * per).sum() / w.sum())


# ----------------------------------------------------------------------------- model/loss check


def _stack(*last):
    return fn.serial(fn.Dense(8), fn.Relu(), *last)


PROB_LOSS = losses.get("binary_cross_entropy", from_logits=False)
MISMATCHES = [
    (
        _stack(fn.Dense(3), fn.Softmax()),
        "categorical_crossentropy",
        r"^train_step: the model's last layer `serial\[3\] Softmax\(axis=-1\)` outputs "
        r"probabilities, but the loss `categorical_cross_entropy` expects logits "
        r"\(from_logits=True, the default\); drop the final Softmax\(axis=-1\) and apply "
        r"`jax.nn.softmax` to predictions, or pass "
        r"`losses.get\('categorical_cross_entropy', from_logits=False\)`\.$",
    ),
    (
        _stack(fn.Dense(1), jax.nn.sigmoid),
        losses.binary_cross_entropy,
        r"last layer `serial\[3\] sigmoid` outputs probabilities, but the loss "
        r"`binary_cross_entropy` expects logits.*`jax.nn.sigmoid`",
    ),
    (
        _stack(fn.Dense(1), fn.Sigmoid()),
        losses.binary_cross_entropy_with_logits,
        r"`binary_cross_entropy_with_logits` expects logits.*"
        r"`losses.get\('binary_cross_entropy', from_logits=False\)`",
    ),
    (
        fn.serial(fn.Dense(4), fn.serial(fn.Dense(3), functools.partial(jax.nn.softmax, axis=-1))),
        losses.sparse_categorical_cross_entropy,
        r"last layer `serial\[1\] serial\[1\] softmax` outputs probabilities",
    ),
    (
        fn.serial(body=fn.Dense(3), head=fn.Softmax()),
        "kld",
        r"last layer `serial\[head\] Softmax\(axis=-1\)`.*`kl_divergence` expects logits",
    ),
    (
        fn.repeat(fn.serial(fn.Dense(3), fn.Sigmoid()), 2),
        "bce",
        r"last layer `repeat\(n=2\) serial\[1\] Sigmoid` outputs probabilities",
    ),
    (jax.nn.softmax, "cross_entropy", r"last layer `softmax` outputs probabilities"),
    (
        _stack(fn.Dense(1)),
        PROB_LOSS,
        r"^fit: the loss `binary_cross_entropy` has from_logits=False and expects probabilities, "
        r"but the model's last layer `serial\[2\] Dense\(1\)` outputs scores, not probabilities; "
        r"drop `from_logits=False` \(losses take logits by default\), or end the model in a "
        r"sigmoid/softmax\.$",
    ),
    (
        _stack(fn.Dense(3), fn.LogSoftmax()),
        functools.partial(losses.sparse_categorical_cross_entropy, from_logits=False),
        r"has from_logits=False .* last layer `serial\[3\] LogSoftmax\(axis=-1\)` outputs scores",
    ),
]


@pytest.mark.parametrize(("model", "loss", "match"), MISMATCHES)
def test_check_model_loss_rejects_mismatches(model, loss, match):
    where = "fit" if match.startswith("^fit") else "train_step"
    with pytest.raises(ValueError, match=match):
        losses.check_model_loss(model, loss, where)


def _declared(value):
    def loss(outputs, targets, *, weights=None):
        return losses.binary_cross_entropy(outputs, targets, from_logits=value, weights=weights)

    loss.from_logits = value
    return loss


@pytest.mark.parametrize(
    ("model", "loss"),
    [
        (_stack(fn.Dense(3)), "sparse_categorical_crossentropy"),
        (_stack(fn.Dense(1)), losses.binary_cross_entropy),
        (_stack(fn.Dense(3), fn.LogSoftmax()), losses.categorical_cross_entropy),
        (_stack(fn.Dense(3), fn.Softmax()), losses.get("cross_entropy", from_logits=False)),
        (_stack(fn.Dense(1), jax.nn.sigmoid), PROB_LOSS),
        (_stack(fn.Dense(1), fn.Tanh()), PROB_LOSS),  # not unambiguous: left alone
        (_stack(fn.Dense(1), fn.Sigmoid()), "mse"),  # regression losses say nothing
        (_stack(fn.Dense(1), fn.Sigmoid()), lambda o, t, *, weights=None: jnp.mean(o - t)),
        (fn.residual(fn.Dense(8), fn.Sigmoid()), losses.binary_cross_entropy),  # not serial
        (_stack(fn.Dense(1), fn.Sigmoid()), _declared(False)),
        (_stack(fn.Dense(1)), _declared(True)),
    ],
)
def test_check_model_loss_accepts_matching_and_unknown_pairs(model, loss):
    assert losses.check_model_loss(model, loss, "train_step") is None


def test_declared_attribute_and_partials_are_read_outside_in():
    assert losses.expects_logits(_declared(False)) is False
    assert losses.expects_logits(_declared(True)) is True
    on_probs = functools.partial(losses.categorical_cross_entropy, from_logits=False)
    assert losses.expects_logits(functools.partial(on_probs, label_smoothing=0.1)) is False
    assert losses.expects_logits(functools.partial(on_probs, from_logits=True)) is True
    assert losses.expects_logits("binary_crossentropy_with_logits") is True
    assert losses.expects_logits(losses.huber) is None
    with pytest.raises(ValueError, match=r"train_step: the model's last layer `serial\[3\] "):
        losses.check_model_loss(_stack(fn.Dense(1), fn.Sigmoid()), _declared(True), "train_step")
