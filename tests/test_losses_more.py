"""Tests for the losses of issue 21: hinge, squared hinge, log_loss, Poisson, CTC, focal,
and label smoothing on the sparse cross-entropy; against numpy formulas and PyTorch."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import funcnet as fn
from funcnet import losses

B, C = 6, 4
RNG = np.random.default_rng(21)
X = RNG.normal(size=(B, C)).astype(np.float32)  # scores / logits
SIGNS = RNG.choice([-1.0, 1.0], size=(B, C)).astype(np.float32)
BIN = RNG.integers(0, 2, size=(B, C)).astype(np.float32)
SOFT_BIN = RNG.uniform(size=(B, C)).astype(np.float32)
LABELS = RNG.integers(0, C, size=B).astype(np.int32)
RATES = RNG.uniform(0.1, 3.0, size=(B, C)).astype(np.float32)
COUNTS = RNG.poisson(1.5, size=(B, C)).astype(np.float32)
PROBS = RNG.uniform(0.05, 0.95, size=(B, C)).astype(np.float32)


def np_log_softmax(x):
    x = x.astype(np.float64)
    m = x.max(-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


def np_focal(logits, t, alpha, gamma):
    """torchvision.ops.sigmoid_focal_loss, reduction='none', written out in numpy."""
    x = logits.astype(np.float64)
    p = 1 / (1 + np.exp(-x))
    ce = np.maximum(x, 0) - x * t + np.log1p(np.exp(-np.abs(x)))
    p_t = p * t + (1 - p) * (1 - t)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = (alpha * t + (1 - alpha) * (1 - t)) * loss
    return loss


def np_smoothed_sparse(logits, labels, alpha):
    k = logits.shape[-1]
    target = (1 - alpha) * np.eye(k)[labels] + alpha / k
    return -(target * np_log_softmax(logits)).sum(-1)


# (name, loss fn, outputs, targets, numpy per-example reference)
CASES = [
    ("hinge", losses.hinge, X, SIGNS, lambda: np.maximum(1 - SIGNS * X, 0)),
    ("hinge_01", losses.hinge, X, BIN, lambda: np.maximum(1 - (2 * BIN - 1) * X, 0)),
    ("squared_hinge", losses.squared_hinge, X, SIGNS, lambda: np.maximum(1 - SIGNS * X, 0) ** 2),
    (
        "squared_hinge_01",
        losses.squared_hinge,
        X,
        BIN,
        lambda: np.maximum(1 - (2 * BIN - 1) * X, 0) ** 2,
    ),
    (
        "log_loss",
        functools.partial(losses.log_loss, from_logits=False),
        PROBS,
        BIN,
        lambda: -(BIN * np.log(PROBS) + (1 - BIN) * np.log(1 - PROBS)),
    ),
    (
        "poisson",
        losses.poisson,
        RATES,
        COUNTS,
        lambda: RATES - COUNTS * np.log(RATES.astype(np.float64) + 1e-7),
    ),
    (
        "poisson_log_input",
        functools.partial(losses.poisson, log_input=True),
        X,
        COUNTS,
        lambda: np.exp(X.astype(np.float64)) - COUNTS * X,
    ),
    ("focal", losses.focal, X, BIN, lambda: np_focal(X, BIN, 0.25, 2.0)),
    (
        "focal_soft_no_alpha",
        functools.partial(losses.focal, alpha=None, gamma=1.5),
        X,
        SOFT_BIN,
        lambda: np_focal(X, SOFT_BIN, -1, 1.5),
    ),
    (
        "focal_probs",
        functools.partial(losses.focal, from_logits=False, alpha=0.6),
        PROBS,
        BIN,
        lambda: np_focal(np.log(PROBS) - np.log1p(-PROBS), BIN, 0.6, 2.0),
    ),
    (
        "sparse_smooth",
        functools.partial(losses.sparse_categorical_cross_entropy, label_smoothing=0.2),
        X,
        LABELS,
        lambda: np_smoothed_sparse(X, LABELS, 0.2),
    ),
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
    for call in (fn, jax.jit(fn)):
        np.testing.assert_allclose(call(outputs, targets, weights=w), expected, rtol=2e-5)


@pytest.mark.parametrize(("name", "fn", "outputs", "targets", "ref"), CASES, ids=IDS)
def test_mask_of_padded_batch_and_all_zero_mask(name, fn, outputs, targets, ref):
    pad = 3
    out_pad = np.concatenate([outputs, np.full((pad, *outputs.shape[1:]), np.nan, np.float32)])
    garbage = 99 if targets.dtype == np.int32 else 7.0  # not a valid hinge label either
    tgt_pad = np.concatenate([targets, np.full((pad, *targets.shape[1:]), garbage, targets.dtype)])
    mask = np.arange(B + pad) < B
    np.testing.assert_allclose(
        fn(out_pad, tgt_pad, weights=mask), fn(outputs, targets), rtol=1e-6, atol=1e-7
    )
    zeros = np.zeros(B, bool)
    value, grad = jax.value_and_grad(lambda o: fn(o, targets, weights=zeros))(jnp.asarray(outputs))
    assert value == 0.0
    assert np.all(np.asarray(grad) == 0.0)


@pytest.mark.parametrize(
    ("name", "fn", "targets"),
    [
        ("hinge", losses.hinge, SIGNS),
        ("squared_hinge", losses.squared_hinge, BIN),
        ("focal", losses.focal, BIN),
        ("focal_gamma_half", functools.partial(losses.focal, gamma=0.5, alpha=None), BIN),
        ("poisson_log_input", functools.partial(losses.poisson, log_input=True), COUNTS),
        (
            "sparse_smooth",
            functools.partial(losses.sparse_categorical_cross_entropy, label_smoothing=0.1),
            LABELS,
        ),
    ],
)
@pytest.mark.parametrize("scale", [30.0, -30.0])
def test_large_scores_give_finite_loss_and_gradients(name, fn, targets, scale):
    outputs = jnp.asarray(np.sign(X) * scale)
    value, grad = jax.jit(jax.value_and_grad(lambda o: fn(o, targets)))(outputs)
    assert np.isfinite(value)
    assert np.all(np.isfinite(grad))


def test_hinge_converts_binary_labels_under_jit_and_vmap():
    # Keras converts {0, 1} labels to {-1, 1}; traced labels take the same path.
    a = jax.jit(losses.hinge)(X, BIN)
    b = losses.hinge(X, 2 * BIN - 1)
    np.testing.assert_allclose(a, b, rtol=1e-6)
    per_row = jax.vmap(losses.squared_hinge)(X, SIGNS)
    np.testing.assert_allclose(per_row, (np.maximum(1 - SIGNS * X, 0) ** 2).mean(-1), rtol=1e-6)


def test_focal_reduces_to_binary_cross_entropy():
    np.testing.assert_allclose(
        losses.focal(X, BIN, alpha=None, gamma=0.0), losses.binary_cross_entropy(X, BIN), rtol=1e-6
    )


def test_log_loss_is_binary_cross_entropy_and_matches_sklearn():
    assert losses.log_loss is losses.binary_cross_entropy
    assert losses.get("log_loss") is losses.binary_cross_entropy
    metrics = pytest.importorskip("sklearn.metrics")
    p, y = PROBS[:, 0], BIN[:, 0]
    got = losses.get("log_loss", from_logits=False)(p, y)
    np.testing.assert_allclose(got, metrics.log_loss(y, p), rtol=1e-5)


def test_sparse_label_smoothing_agrees_with_categorical():
    one_hot = np.eye(C, dtype=np.float32)[LABELS]
    for alpha in (0.0, 0.1, 1.0):
        np.testing.assert_allclose(
            losses.sparse_categorical_cross_entropy(X, LABELS, label_smoothing=alpha),
            losses.categorical_cross_entropy(X, one_hot, label_smoothing=alpha),
            rtol=1e-6,
        )
    probs = losses.get("sparse_categorical_crossentropy", from_logits=False, label_smoothing=0.1)
    soft = jax.nn.softmax(jnp.asarray(X))
    np.testing.assert_allclose(
        probs(soft, LABELS),
        losses.sparse_categorical_cross_entropy(X, LABELS, label_smoothing=0.1),
        rtol=1e-5,
    )


# ----------------------------------------------------------------------------- CTC

T, K = 12, 5  # time steps, labels with the blank
CTC_LOGITS = RNG.normal(size=(3, T, K)).astype(np.float32)
CTC_LENGTHS = np.array([12, 9, 10])  # output frames per sequence
CTC_TARGETS = np.array([[1, 2, 2, 3], [4, 1, -1, -1], [3, -1, -1, -1]], np.int32)
CTC_TARGET_LENGTHS = (CTC_TARGETS >= 0).sum(1)
CTC_OUT_PAD = (np.arange(T) >= CTC_LENGTHS[:, None]).astype(np.float32)


def _torch_ctc(blank=0, targets=CTC_TARGETS):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    log_probs = F.log_softmax(torch.from_numpy(CTC_LOGITS).double(), -1).transpose(0, 1)
    return F.ctc_loss(
        log_probs,
        torch.from_numpy(np.where(targets < 0, 0, targets)).long(),
        torch.from_numpy(CTC_LENGTHS),
        torch.from_numpy((targets >= 0).sum(1)),
        blank=blank,
        reduction="none",
    ).numpy()


def test_ctc_matches_pytorch():
    per = _torch_ctc()
    got = jax.jit(losses.ctc)(CTC_LOGITS, CTC_TARGETS, output_paddings=CTC_OUT_PAD)
    np.testing.assert_allclose(got, per.mean(), rtol=1e-5)
    # Explicit target paddings instead of -1; and per-sequence weights.
    tgt_pad = (CTC_TARGETS < 0).astype(np.float32)
    w = np.array([1.0, 0.0, 2.0], np.float32)
    got = losses.ctc(
        CTC_LOGITS,
        np.where(CTC_TARGETS < 0, 0, CTC_TARGETS),
        output_paddings=CTC_OUT_PAD,
        target_paddings=tgt_pad,
        weights=w,
    )
    np.testing.assert_allclose(got, (w * per).sum() / w.sum(), rtol=1e-5)
    # Another blank index (labels then avoid it).
    targets = np.where(CTC_TARGETS == 4, 0, CTC_TARGETS)
    got = losses.get("ctc", blank_id=4)(CTC_LOGITS, targets, output_paddings=CTC_OUT_PAD)
    np.testing.assert_allclose(got, _torch_ctc(blank=4, targets=targets).mean(), rtol=1e-5)


def test_ctc_is_differentiable_and_finite():
    value, grad = jax.jit(jax.value_and_grad(losses.ctc))(jnp.asarray(CTC_LOGITS), CTC_TARGETS)
    assert np.isfinite(value) and np.all(np.isfinite(grad))
    assert np.all(np.abs(np.asarray(grad).sum(-1)) < 1e-5)  # through the log-softmax


def test_matches_pytorch():
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    t = torch.from_numpy
    close = functools.partial(np.testing.assert_allclose, rtol=1e-5, atol=1e-6)
    close(
        losses.poisson(RATES, COUNTS, epsilon=1e-8),
        F.poisson_nll_loss(t(RATES), t(COUNTS), log_input=False, eps=1e-8),
    )
    close(
        losses.poisson(X, COUNTS, log_input=True),
        F.poisson_nll_loss(t(X), t(COUNTS), log_input=True),
    )
    close(
        losses.sparse_categorical_cross_entropy(X, LABELS, label_smoothing=0.3),
        F.cross_entropy(t(X), t(LABELS).long(), label_smoothing=0.3),
    )
    one_hot = np.eye(C, dtype=np.float32)[LABELS]
    close(
        losses.categorical_cross_entropy(X, one_hot, label_smoothing=0.3),
        F.cross_entropy(t(X), t(one_hot), label_smoothing=0.3),
    )
    # Hinge through PyTorch's hinge_embedding_loss: max(0, margin - v) for target -1.
    close(
        losses.hinge(X, SIGNS),
        F.hinge_embedding_loss(t(SIGNS * X), t(-np.ones_like(X)), margin=1.0),
    )


# ----------------------------------------------------------------------------- reduction


def _reduction_cases(F, t):
    """(funcnet loss with its arguments, PyTorch's loss of the same inputs taking `reduction`)."""
    long = t(LABELS).long()
    return [
        (
            functools.partial(losses.binary_cross_entropy, X, BIN),
            lambda r: F.binary_cross_entropy_with_logits(t(X), t(BIN), reduction=r),
        ),
        (
            functools.partial(losses.sparse_categorical_cross_entropy, X, LABELS),
            lambda r: F.cross_entropy(t(X), long, reduction=r),
        ),
        (
            functools.partial(
                losses.categorical_cross_entropy, X, SOFT_BIN / SOFT_BIN.sum(1)[:, None]
            ),
            lambda r: F.cross_entropy(t(X), t(SOFT_BIN / SOFT_BIN.sum(1)[:, None]), reduction=r),
        ),
        (
            functools.partial(losses.mean_squared_error, X, RATES),
            lambda r: F.mse_loss(t(X), t(RATES), reduction=r),
        ),
        (
            functools.partial(losses.mean_absolute_error, X, RATES),
            lambda r: F.l1_loss(t(X), t(RATES), reduction=r),
        ),
        (
            functools.partial(losses.huber, X, RATES, delta=0.5),
            # torch's huber_loss is optax's huber (not divided by delta) for any delta
            lambda r: F.huber_loss(t(X), t(RATES), delta=0.5, reduction=r),
        ),
        (
            functools.partial(losses.poisson, X, COUNTS, log_input=True),
            lambda r: F.poisson_nll_loss(t(X), t(COUNTS), log_input=True, reduction=r),
        ),
        (
            functools.partial(losses.hinge, X, SIGNS),
            lambda r: F.hinge_embedding_loss(t(SIGNS * X), t(-np.ones_like(X)), reduction=r),
        ),
    ]


@pytest.mark.parametrize("reduction", ["sum", "none"])
def test_reduction_matches_pytorch(reduction):
    """`reduction="sum"`/`"none"` of every loss torch has, equal to torch's; with weights,
    "sum" is sum(w * l) and "none" is w * l (torch's per-element losses times the weights)."""
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    w = RNG.uniform(0.1, 2.0, size=B).astype(np.float32)
    w[1] = 0.0
    for ours, theirs in _reduction_cases(F, torch.from_numpy):
        want = theirs(reduction).numpy()
        got = ours(reduction=reduction)
        assert np.shape(got) == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
        per = theirs("none").numpy()
        wb = w.reshape((B,) + (1,) * (per.ndim - 1))
        want_w = (wb * per).sum() if reduction == "sum" else wb * per
        np.testing.assert_allclose(
            ours(weights=w, reduction=reduction), want_w, rtol=1e-5, atol=1e-6
        )
    ctc = losses.ctc(CTC_LOGITS, CTC_TARGETS, output_paddings=CTC_OUT_PAD, reduction=reduction)
    per = _torch_ctc()
    np.testing.assert_allclose(ctc, per.sum() if reduction == "sum" else per, rtol=1e-5)


def test_reduction_none_zeroes_masked_nan_and_get_binds_it():
    values = losses.get("mse", reduction="none")(
        jnp.array([[1.0], [jnp.nan]]), jnp.zeros((2, 1)), weights=jnp.array([1.0, 0.0])
    )
    np.testing.assert_array_equal(values, [[1.0], [0.0]])


@pytest.mark.parametrize("bad", ["sum_over_batch_size", "avg", None])
def test_unknown_reduction_is_refused(bad):
    with pytest.raises(ValueError, match=r"sparse_categorical_cross_entropy: `reduction` must be "):
        losses.sparse_categorical_cross_entropy(X, LABELS, reduction=bad)


# ----------------------------------------------------------------------------- names, errors


@pytest.mark.parametrize(
    ("name", "loss"),
    [
        ("hinge", losses.hinge),
        ("Hinge", losses.hinge),
        ("squared_hinge", losses.squared_hinge),
        ("SquaredHinge", losses.squared_hinge),
        ("log_loss", losses.log_loss),
        ("poisson", losses.poisson),
        ("poisson_nll_loss", losses.poisson),
        ("ctc", losses.ctc),
        ("CTCLoss", losses.ctc),
        ("focal", losses.focal),
        ("sigmoid_focal_loss", losses.focal),
        ("BinaryFocalCrossentropy", losses.focal),
    ],
)
def test_get_by_name(name, loss):
    assert losses.get(name) is loss


def test_focal_takes_part_in_the_model_loss_check():
    assert losses.expects_logits(losses.focal) is True
    model = fn.serial(fn.Dense(1), fn.Sigmoid())
    with pytest.raises(ValueError, match=r"the loss `focal` expects logits.*from_logits=False"):
        losses.check_model_loss(model, "focal", "fit")
    losses.check_model_loss(model, losses.get("focal", from_logits=False), "fit")


ERRORS = [
    (
        losses.hinge,
        X,
        np.full((B, C), 2.0, np.float32),
        ValueError,
        r"^hinge: `targets` must be labels in \{-1, 1\} or in \{0, 1\} \(converted to -1/1\), "
        r"got values \[2.0\]; map the two classes to 0/1 .* `2 \* labels - 1`\.$",
    ),
    (
        losses.squared_hinge,
        X,
        np.where(BIN > 0, 1.0, -1.0) * (np.arange(C) > 0),  # -1, 0 and 1 mixed
        ValueError,
        r"^squared_hinge: `targets` must be labels in \{-1, 1\} or in \{0, 1\}.*"
        r"got values \[-1.0, 0.0, 1.0\]",
    ),
    (
        losses.hinge,
        X[:, :1],
        SIGNS[:, 0],
        ValueError,
        r"hinge: `outputs` and `targets` must have the same shape",
    ),
    (
        losses.ctc,
        CTC_LOGITS[0],
        CTC_TARGETS[:1],
        ValueError,
        r"^ctc: `outputs` must be logits of shape \(batch, time, num_labels\), got shape "
        r"\(12, 5\); add the missing batch axis with `outputs\[None\]`\.$",
    ),
    (
        losses.ctc,
        CTC_LOGITS,
        CTC_TARGETS.astype(np.float32),
        TypeError,
        r"^ctc: `targets` must be integer labels, got dtype float32; cast with",
    ),
    (
        losses.ctc,
        CTC_LOGITS,
        CTC_TARGETS[:2],
        ValueError,
        r"^ctc: `targets` must be labels of shape \(batch, max_label_len\) = \(3, L\) for "
        r"outputs \(3, 12, 5\), got shape \(2, 4\); pad the label sequences",
    ),
]


@pytest.mark.parametrize(("fn", "outputs", "targets", "exc", "match"), ERRORS)
def test_errors(fn, outputs, targets, exc, match):
    with pytest.raises(exc, match=match):
        fn(outputs, targets)


def test_bad_options():
    with pytest.raises(ValueError, match=r"^focal: `alpha` must be in \[0.0, 1.0\], got 1.5\.$"):
        losses.focal(X, BIN, alpha=1.5)
    with pytest.raises(ValueError, match=r"^focal: `gamma` must be in \[0.0, inf\], got -1\.$"):
        losses.focal(X, BIN, gamma=-1)
    with pytest.raises(ValueError, match=r"^focal: `epsilon` must be in \(0.0, 0.5\]"):
        losses.focal(PROBS, BIN, from_logits=False, epsilon=0.0)
    with pytest.raises(TypeError, match=r"^focal: `from_logits` must be True \(logits\) or"):
        losses.focal(X, BIN, from_logits="no")
    with pytest.raises(TypeError, match=r"^poisson: `log_input` must be True \(log-rates\) or "):
        losses.poisson(RATES, COUNTS, log_input=1)
    with pytest.raises(ValueError, match=r"^poisson: `epsilon` must be in \[0.0, inf\], got -1"):
        losses.poisson(RATES, COUNTS, epsilon=-1.0)
    with pytest.raises(ValueError, match=r"sparse_categorical_cross_entropy: `label_smoothing`"):
        losses.sparse_categorical_cross_entropy(X, LABELS, label_smoothing=-0.1)
    with pytest.raises(ValueError, match=r"^ctc: `blank_id` must be in \[0, 5\) \(the last axis"):
        losses.ctc(CTC_LOGITS, CTC_TARGETS, blank_id=5)
    with pytest.raises(TypeError, match=r"^ctc: `blank_id` must be an int, got 0.0\.$"):
        losses.ctc(CTC_LOGITS, CTC_TARGETS, blank_id=0.0)
    with pytest.raises(
        ValueError,
        match=r"^ctc: `output_paddings` must have the shape of `outputs.shape\[:2\]`, \(3, 12\), "
        r"got \(3, 11\); 1.0 marks a padded step",
    ):
        losses.ctc(CTC_LOGITS, CTC_TARGETS, output_paddings=CTC_OUT_PAD[:, 1:])
    with pytest.raises(ValueError, match=r"^ctc: `target_paddings` must have the shape of"):
        losses.ctc(CTC_LOGITS, CTC_TARGETS, target_paddings=np.zeros((3, 5)))
