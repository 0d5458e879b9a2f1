"""Tests for funcnet.losses: values against numpy, weights/masks, stability, errors, get."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

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
        losses.binary_cross_entropy,
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
        "bce_flag",
        functools.partial(losses.binary_cross_entropy, from_logits=True),
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
        ("bce", losses.binary_cross_entropy, BIN),
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
        losses.binary_cross_entropy(PROBS, BIN, epsilon=0.7)


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
