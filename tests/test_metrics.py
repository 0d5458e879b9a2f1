"""Tests for funcnet.metrics: streaming results over uneven batches equal scikit-learn's."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import sklearn.metrics as sk  # a test dependency: never skipped

from funcnet import metrics

SIZES = (7, 13, 1, 29)  # uneven batches
N, C = sum(SIZES), 4
RNG = np.random.default_rng(0)
LOGITS = RNG.normal(size=(N, C)).astype(np.float32)
LABELS = RNG.integers(0, C, size=N).astype(np.int32)
PRED = LOGITS.argmax(-1)
# Binary problem: probabilities and 0/1 labels.
PROB = RNG.uniform(size=N).astype(np.float32)
YBIN = (RNG.uniform(size=N) < 0.4).astype(np.int32)
# Regression with targets far from 0 (float32 sum-of-squares would cancel).
YREG = (1000.0 + RNG.normal(size=(N, 2))).astype(np.float32)
PREG = (YREG + 0.5 * RNG.normal(size=(N, 2))).astype(np.float32)
SAMPLE_W = RNG.uniform(0.1, 2.0, size=N).astype(np.float32)


def batches(*arrays, sizes=SIZES):
    start = 0
    for size in sizes:
        yield tuple(None if a is None else a[start : start + size] for a in arrays)
        start += size


def run(metric, outputs, targets, weights=None, *, jit=True, sizes=SIZES, state=None):
    update = jax.jit(metric.update) if jit else metric.update
    state = metric.init() if state is None else state
    for o, t, w in batches(outputs, targets, weights, sizes=sizes):
        state = update(state, o, t, weights=w)
    return state


def close(a, b, tol=1e-5):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=tol, atol=tol)


MULTICLASS = metrics.collection(
    {
        "accuracy": metrics.accuracy(),
        "sparse": metrics.sparse_categorical_accuracy(),
        "top_2": metrics.top_k_accuracy(2),
        "top_3": metrics.top_k_accuracy(3),
        "confusion": metrics.confusion_matrix(C),
        **{
            f"{kind.__name__}_{avg}": kind(C, average=avg)
            for kind in (metrics.precision, metrics.recall, metrics.f1)
            for avg in ("micro", "macro", "weighted", None)
        },
    }
)


def sk_multiclass(y, scores, sample_weight=None):
    pred = scores.argmax(-1)
    kw = {"sample_weight": sample_weight}
    out = {
        "accuracy": sk.accuracy_score(y, pred, **kw),
        "sparse": sk.accuracy_score(y, pred, **kw),
        "top_2": sk.top_k_accuracy_score(y, scores, k=2, labels=range(C), **kw),
        "top_3": sk.top_k_accuracy_score(y, scores, k=3, labels=range(C), **kw),
        "confusion": sk.confusion_matrix(y, pred, labels=range(C), **kw),
    }
    for name, fn in [
        ("precision", sk.precision_score),
        ("recall", sk.recall_score),
        ("f1", sk.f1_score),
    ]:
        for avg in ("micro", "macro", "weighted", None):
            out[f"{name}_{avg}"] = fn(y, pred, average=avg, zero_division=0, **kw)
    return out


def assert_matches(got, expected, tol=1e-5):
    assert set(got) == set(expected)
    for k in expected:
        close(got[k], expected[k], tol)


def test_multiclass_over_uneven_jitted_batches_matches_sklearn():
    state = run(MULTICLASS, LOGITS, LABELS, jit=True)
    got = jax.jit(MULTICLASS.compute)(state)
    assert got["confusion"].dtype == jnp.int32
    assert_matches(got, sk_multiclass(LABELS, LOGITS))


def test_padded_last_batch_with_mask_matches_sklearn():
    # Every batch padded to 32 with garbage, the padding masked out.
    state = MULTICLASS.init()
    update = jax.jit(MULTICLASS.update)
    for o, t, _ in batches(LOGITS, LABELS, None):
        pad = 32 - len(t)
        o = np.concatenate([o, RNG.normal(size=(pad, C)).astype(np.float32)])
        t = np.concatenate([t, RNG.integers(0, C, size=pad).astype(np.int32)])
        state = update(state, o, t, weights=np.arange(32) < 32 - pad)
    assert_matches(MULTICLASS.compute(state), sk_multiclass(LABELS, LOGITS))


def test_fractional_sample_weights_with_float_counts_match_sklearn():
    weighted = metrics.collection(
        {
            "accuracy": metrics.accuracy(dtype=jnp.float32),
            "top_2": metrics.top_k_accuracy(2, dtype=jnp.float32),
            "confusion": metrics.confusion_matrix(C, dtype=jnp.float32),
            "f1_macro": metrics.f1(C, average="macro", dtype=jnp.float32),
            "precision_weighted": metrics.precision(C, average="weighted", dtype=jnp.float32),
        }
    )
    got = weighted.compute(run(weighted, LOGITS, LABELS, SAMPLE_W))
    expected = sk_multiclass(LABELS, LOGITS, SAMPLE_W)
    assert_matches(got, {k: expected[k] for k in got})


@pytest.mark.parametrize("from_logits", [False, True])
@pytest.mark.parametrize("pos_label", [1, 0])
def test_binary_matches_sklearn(from_logits, pos_label):
    outputs = np.log(PROB) - np.log1p(-PROB) if from_logits else PROB
    kw = {"pos_label": pos_label, "from_logits": from_logits}
    ms = metrics.collection(
        {
            "precision": metrics.precision(**kw),
            "recall": metrics.recall(**kw),
            "f1": metrics.f1(**kw),
            "confusion": metrics.confusion_matrix(2, from_logits=from_logits),
            "accuracy": metrics.binary_accuracy(from_logits=from_logits),
        }
    )
    got = ms.compute(run(ms, outputs, YBIN))
    pred = (PROB > 0.5).astype(np.int32)
    skw = {"pos_label": pos_label, "zero_division": 0}
    assert_matches(
        got,
        {
            "precision": sk.precision_score(YBIN, pred, **skw),
            "recall": sk.recall_score(YBIN, pred, **skw),
            "f1": sk.f1_score(YBIN, pred, **skw),
            "confusion": sk.confusion_matrix(YBIN, pred),
            "accuracy": sk.accuracy_score(YBIN, pred),
        },
    )


BINARY_LOGITS = np.log(PROB) - np.log1p(-PROB)


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
def test_float_labels_binary_metrics_default_to_logits_match_sklearn(jit):
    # What a binary cross-entropy user has: logits and float 0./1. targets.
    ms = metrics.collection(
        {
            "precision": metrics.precision(),
            "recall": metrics.recall(),
            "f1": metrics.f1(),
            "confusion": metrics.confusion_matrix(2),
            "accuracy": metrics.accuracy(),
            "binary_accuracy": metrics.binary_accuracy(),
        }
    )
    got = ms.compute(run(ms, BINARY_LOGITS, YBIN.astype(np.float32), jit=jit))
    pred = (BINARY_LOGITS > 0).astype(np.int32)
    assert np.any(pred != (BINARY_LOGITS > 0.5))  # a 0.5 threshold on logits would differ
    assert_matches(
        got,
        {
            "precision": sk.precision_score(YBIN, pred),
            "recall": sk.recall_score(YBIN, pred),
            "f1": sk.f1_score(YBIN, pred),
            "confusion": sk.confusion_matrix(YBIN, pred),
            "accuracy": sk.accuracy_score(YBIN, pred),
            "binary_accuracy": sk.accuracy_score(YBIN, pred),
        },
    )


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
def test_float_class_indices_match_sklearn(jit):
    got = MULTICLASS.compute(run(MULTICLASS, LOGITS, LABELS.astype(np.float32), jit=jit))
    assert_matches(got, sk_multiclass(LABELS, LOGITS))
    # Float predicted labels against float labels, binary: as sklearn on the integers.
    m = metrics.f1(from_logits=False)
    y, p = YBIN.astype(np.float64), (PROB > 0.5).astype(np.float64)
    close(m.compute(m.update(m.init(), p, y)), sk.f1_score(YBIN, p.astype(int)))


NON_INTEGRAL = [  # (metric, binary scores?, targets)
    (metrics.sparse_categorical_accuracy(), False, np.array([0.0, 2.0, 0.3], np.float32)),
    (metrics.accuracy(), False, np.array([1.0, 2.5, 3.0], np.float32)),
    (metrics.top_k_accuracy(2), False, np.array([1.0, 2.0, np.nan], np.float32)),
    (metrics.f1(), True, np.array([1.0, 0.0, 0.3], np.float32)),
    (metrics.confusion_matrix(C), False, np.array([1.0, 1.7, 3.0], np.float32)),
]


@pytest.mark.parametrize(("metric", "binary", "targets"), NON_INTEGRAL)
def test_non_integral_float_labels(metric, binary, targets):
    # Outputs that predict every label truncated to an int: a silent cast would score all right.
    truncated = np.nan_to_num(targets).astype(np.int32)
    outputs = np.where(truncated == 1, 1.0, -1.0) if binary else np.eye(C)[truncated]
    outputs = outputs.astype(np.float32)
    bad = np.flatnonzero(targets != np.round(targets))[0]
    match = (
        rf"{metric.name}: float `targets` must be whole-number class labels \(0\., 1\., 2\., "
        rf"\.\.\.\), got {targets[bad]:g} at flat index {bad} \(1 such value\(s\)\); round "
    )
    with pytest.raises(ValueError, match=match):
        metric.update(metric.init(), outputs, targets)
    # Under jit the values cannot be read: the label becomes -1, out of range, so it
    # counts as wrong (accuracies) or is left out (confusion matrix), never as class 0.
    state = jax.jit(metric.update)(metric.init(), outputs, targets)
    expected = metric.update(metric.init(), outputs, np.where(np.arange(3) == bad, -1, truncated))
    jax.tree.map(np.testing.assert_array_equal, state, expected)
    cast = metric.update(metric.init(), outputs, truncated)
    assert any(jax.tree.leaves(jax.tree.map(lambda a, b: bool((a != b).any()), state, cast)))


def test_macro_ignores_classes_absent_from_targets_and_predictions():
    # Five classes declared, only 0..3 ever occur: scikit-learn averages over those.
    ms = metrics.collection({k: getattr(metrics, k)(5, average="macro") for k in ("f1", "recall")})
    got = ms.compute(run(ms, PRED.astype(np.int32), LABELS))  # integer predicted labels
    close(got["f1"], sk.f1_score(LABELS, PRED, average="macro"))
    close(got["recall"], sk.recall_score(LABELS, PRED, average="macro"))


def test_zero_division_gives_zero():
    m = metrics.precision()
    state = m.update(m.init(), -jnp.ones(4), jnp.array([1, 0, 1, 0]))  # nothing predicted
    assert m.compute(state) == 0.0
    assert sk.precision_score([1, 0, 1, 0], [0, 0, 0, 0], zero_division=0) == 0.0


def test_regression_matches_sklearn():
    ms = metrics.collection(
        {
            "mae": metrics.mean_absolute_error(),
            "r2": metrics.r2(2),
            "r2_raw": metrics.r2(2, multioutput="raw_values"),
        }
    )
    got = ms.compute(run(ms, PREG, YREG, jit=True))
    expected = {
        "mae": sk.mean_absolute_error(YREG, PREG),
        "r2": sk.r2_score(YREG, PREG),
        "r2_raw": sk.r2_score(YREG, PREG, multioutput="raw_values"),
    }
    assert_matches(got, expected, tol=2e-4)
    # Single output, weighted, then NaN garbage under a zero weight.
    y, p = YREG[:, 0], PREG[:, 0]
    ms = metrics.collection({"r2": metrics.r2(), "mae": metrics.mean_absolute_error()})
    state = run(ms, p, y, SAMPLE_W)
    expected = {
        "r2": sk.r2_score(y, p, sample_weight=SAMPLE_W),
        "mae": sk.mean_absolute_error(y, p, sample_weight=SAMPLE_W),
    }
    assert_matches(ms.compute(state), expected, tol=2e-4)
    state = ms.update(state, jnp.full(3, jnp.nan), jnp.ones(3), weights=jnp.zeros(3))
    assert_matches(ms.compute(state), expected, tol=2e-4)


def test_r2_edge_cases():
    m = metrics.r2()
    const = jnp.full(5, 3.0)
    assert m.compute(m.update(m.init(), const, const)) == 1.0
    assert m.compute(m.update(m.init(), const + 1, const)) == 0.0
    assert np.isnan(m.compute(m.init()))


@pytest.mark.parametrize(
    "metric",
    [MULTICLASS, metrics.r2(2), metrics.mean_absolute_error()],
    ids=["classification", "r2", "mae"],
)
def test_merge_of_partial_states_equals_one_state(metric):
    outputs, targets = (LOGITS, LABELS) if metric is MULTICLASS else (PREG, YREG)
    whole = run(metric, outputs, targets)
    a = run(metric, outputs[:20], targets[:20], sizes=(7, 13))
    b = run(metric, outputs[20:], targets[20:], sizes=(1, 29))
    for merged in (metric.merge(a, b), metric.merge(b, a)):
        jax.tree.map(lambda x, y: close(x, y, 1e-4), merged, whole)
        jax.tree.map(lambda x, y: close(x, y), metric.compute(merged), metric.compute(whole))


def test_merge_is_associative():
    m = metrics.r2()
    y, p = YREG[:, 0], PREG[:, 0]
    a, b, c = (m.update(m.init(), p[s], y[s]) for s in (slice(0, 5), slice(5, 6), slice(6, N)))
    left = m.merge(m.merge(a, b), c)
    right = m.merge(a, m.merge(b, c))
    jax.tree.map(lambda x, z: close(x, z, 1e-5), left, right)
    merged = jax.jit(m.merge)(m.init(), a)  # init is the identity
    jax.tree.map(lambda x, z: close(x, z, 0), merged, a)


def test_states_are_static_and_scan_friendly():
    m = metrics.collection({"acc": "accuracy", "cm": metrics.confusion_matrix(C)})
    spec = jax.eval_shape(m.init)
    assert spec["acc"]["total"].dtype == jnp.int32
    assert spec["cm"]["matrix"].shape == (C, C)
    xs, ys = LOGITS[:48].reshape(6, 8, C), LABELS[:48].reshape(6, 8)

    def step(state, batch):
        return m.update(state, *batch), None

    state, _ = jax.lax.scan(step, m.init(), (xs, ys))
    close(m.compute(state)["acc"], sk.accuracy_score(LABELS[:48], PRED[:48]))


def test_accuracy_kinds():
    one_hot = np.eye(C, dtype=np.float32)[LABELS]
    for metric, targets in [
        (metrics.accuracy(), one_hot),
        (metrics.categorical_accuracy(), one_hot),
        (metrics.top_k_accuracy(1), one_hot),
    ]:
        close(metric.compute(run(metric, LOGITS, targets)), sk.accuracy_score(LABELS, PRED))
    # Binary: (batch,) and (batch, 1), float or bool targets.
    expected = sk.accuracy_score(YBIN, PROB > 0.5)
    m = metrics.accuracy(from_logits=False)
    close(m.compute(run(m, PROB, YBIN.astype(np.float32))), expected)
    close(m.compute(run(m, PROB[:, None], YBIN[:, None].astype(bool))), expected)
    # Multi-label: every entry counts.
    b = metrics.binary_accuracy(threshold=0.3, from_logits=False)
    got = b.compute(b.update(b.init(), jnp.array([[0.2, 0.4], [0.9, 0.1]]), jnp.ones((2, 2))))
    assert got == 0.5


def test_out_of_range_labels_count_as_wrong():
    labels = np.array([0, 7, -1], np.int32)
    scores = jnp.eye(3)
    for metric in (metrics.sparse_categorical_accuracy(), metrics.top_k_accuracy(3)):
        close(metric.compute(metric.update(metric.init(), scores, labels)), 1 / 3)
    # The confusion matrix cannot place them: they are left out.
    cm = metrics.confusion_matrix(3)
    got = cm.compute(cm.update(cm.init(), np.array([0, 2, 1, 1]), np.array([0, 7, -1, 1])))
    np.testing.assert_array_equal(got, np.diag([1, 1, 0]))


def test_mean_metric():
    m = metrics.mean(name="loss")
    state = m.update(m.init(), jnp.float32(2.0))
    state = jax.jit(m.update)(state, jnp.array([1.0, 9.0, jnp.nan]), weights=jnp.array([1, 0, 0]))
    assert m.compute(state) == 1.5
    assert np.isnan(m.compute(m.init()))
    with pytest.raises(TypeError, match=r"loss: `update\(state, values, \*, weights=None\)`"):
        m.update(m.init(), LOGITS, LABELS)
    sq = metrics.mean(lambda o, t: (o - t) ** 2)
    close(sq.compute(run(sq, PREG, YREG)), sk.mean_squared_error(YREG, PREG), 1e-4)


def test_get_names():
    assert metrics.get("acc").name == "accuracy"
    assert metrics.get("sparse_top_k_categorical_accuracy", k=3).name == "top_3_accuracy"
    assert metrics.get("F1Score", num_classes=3, average="weighted").name == "f1_weighted"
    assert metrics.get("r2_score").name == "r2"
    m = metrics.mean_absolute_error()
    assert metrics.get(m) is m
    with pytest.raises(ValueError, match=r"unknown metric 'precission'; did you mean 'precision'"):
        metrics.get("precission")
    with pytest.raises(ValueError, match=r"metric 'precision': bad options \['classes'\]"):
        metrics.get("precision", classes=3)
    with pytest.raises(TypeError, match=r"a metric must be a name or a Metric, got int"):
        metrics.get(1)
    with pytest.raises(TypeError, match=r"collection: `metrics` must be a dict"):
        metrics.collection([metrics.accuracy()])


def test_bad_constructor_arguments():
    with pytest.raises(ValueError, match=r"average='binary' needs num_classes=2, got num_cl"):
        metrics.precision(3)
    with pytest.raises(ValueError, match=r"recall: `average` must be one of"):
        metrics.recall(3, average="samples")
    with pytest.raises(ValueError, match=r"f1: `num_classes` must be an int >= 2, got 1"):
        metrics.f1(1, average="macro")
    with pytest.raises(ValueError, match=r"confusion_matrix: `num_classes` must be an int >= 2"):
        metrics.confusion_matrix(2.0)
    with pytest.raises(ValueError, match=r"top_k_accuracy: `k` must be an int >= 1, got 0"):
        metrics.top_k_accuracy(0)
    with pytest.raises(ValueError, match=r"`pos_label` must be 0 or 1, got 2"):
        metrics.f1(pos_label=2)
    with pytest.raises(ValueError, match=r"`threshold` is a probability in \(0, 1\), compared "):
        metrics.binary_accuracy(threshold=1.0)
    with pytest.raises(TypeError, match=r"f1: `from_logits` must be True \(logits\) or False"):
        metrics.f1(from_logits="False")
    with pytest.raises(TypeError, match=r"`dtype` must be an integer or floating dtype"):
        metrics.accuracy(dtype=jnp.bool_)
    with pytest.raises(ValueError, match=r"r2: `multioutput` must be"):
        metrics.r2(multioutput="variance_weighted")


UPDATE_ERRORS = [
    (
        metrics.sparse_categorical_accuracy(),
        LOGITS[:5],
        LABELS[:5, None],
        ValueError,
        r"accuracy: expected integer `targets` of shape outputs.shape\[:-1\] = \(5,\) for "
        r"outputs \(5, 4\), got shape \(5, 1\); drop the trailing axis of 1",
    ),
    (
        metrics.sparse_categorical_accuracy(),
        LOGITS[:5],
        LABELS[:5].astype(np.complex64),
        TypeError,
        r"accuracy: `targets` must be class labels \(integers, or floats holding whole numbers\), "
        r"got dtype complex64; cast with `targets.astype\(jnp.int32\)`",
    ),
    (
        metrics.accuracy(),
        PROB[:5, None],
        YBIN[:5],
        ValueError,
        r"accuracy: `outputs` have a single class .* use `binary_accuracy`",
    ),
    (
        metrics.categorical_accuracy(),
        LOGITS[:5],
        LABELS[:5],
        ValueError,
        r"got integer labels of shape \(5,\), expected one-hot .* `sparse_categorical_accuracy`",
    ),
    (
        metrics.confusion_matrix(3),
        LOGITS[:5],
        LABELS[:5],
        ValueError,
        r"confusion_matrix: `outputs` have 4 classes on the last axis \(shape \(5, 4\)\) but "
        r"`num_classes` is 3",
    ),
    (
        metrics.precision(),
        PROB[:5, None],
        YBIN[:5],
        ValueError,
        r"precision: `outputs` have 1 classes .* give outputs of the targets' shape",
    ),
    (
        metrics.f1(),
        PROB[:5],
        YBIN[:5].astype(np.complex64),
        TypeError,
        r"f1: `targets` must be class labels .* got dtype complex64; give integer labels, or "
        r"one-hot targets of shape \(\.\.\., 2\)",
    ),
    (
        metrics.recall(4, average="macro"),
        PROB[:5],
        LABELS[:5],
        ValueError,
        r"recall_macro: float `outputs` .* are binary scores, which need num_classes=2, got "
        r"num_classes=4",
    ),
    (
        metrics.confusion_matrix(4),
        LABELS[:4],
        LABELS[:5],
        ValueError,
        r"integer `outputs` are predicted labels and must have the targets' shape \(5,\)",
    ),
    (
        metrics.mean_absolute_error(),
        PREG[:, :1],
        YREG[:, 0],
        ValueError,
        r"mean_absolute_error: `outputs` and `targets` must have the same shape",
    ),
    (
        metrics.r2(3),
        PREG,
        YREG,
        ValueError,
        r"r2: expected `outputs` of shape \(\.\.\., 3\) for num_outputs=3, got \(50, 2\)",
    ),
    (
        metrics.top_k_accuracy(2),
        LOGITS[:5],
        LABELS[:6],
        ValueError,
        r"top_2_accuracy: expected integer `targets` of shape",
    ),
]


@pytest.mark.parametrize(("metric", "outputs", "targets", "exc", "match"), UPDATE_ERRORS)
def test_bad_inputs_raise_at_trace_time(metric, outputs, targets, exc, match):
    with pytest.raises(exc, match=match):
        jax.jit(metric.update)(metric.init(), outputs, targets)


def test_bad_weights():
    acc = metrics.accuracy()
    with pytest.raises(TypeError, match=r"counts in int32, so `weights` must be a bool or int"):
        acc.update(acc.init(), LOGITS, LABELS, weights=SAMPLE_W)
    with pytest.raises(ValueError, match=r"`weights` must have the leading shape .* \(50,\)"):
        acc.update(acc.init(), LOGITS, LABELS, weights=np.ones((N, 1), bool))
    mae = metrics.mean_absolute_error()
    with pytest.raises(TypeError, match=r"`weights` must be bool, int or float"):
        mae.update(mae.init(), PREG, YREG, weights=np.ones(N, np.complex64))


def _np_ece(probs, labels, bins, weights=None):
    """Guo et al.'s ECE written out: bins (k/B, (k+1)/B] of the top probability."""
    w = np.ones(len(labels)) if weights is None else np.asarray(weights, np.float64)
    conf, pred = probs.max(1), probs.argmax(1)
    total, ece = w.sum(), 0.0
    for k in range(bins):
        inside = (conf > k / bins) & (conf <= (k + 1) / bins)
        if k == 0:
            inside |= conf == 0
        if w[inside].sum() > 0:
            acc = np.sum(w[inside] * (pred[inside] == labels[inside])) / w[inside].sum()
            mean_conf = np.sum(w[inside] * conf[inside]) / w[inside].sum()
            ece += w[inside].sum() / total * abs(acc - mean_conf)
    return ece


@pytest.mark.parametrize("bins", [1, 10, 15])
def test_expected_calibration_error_against_numpy(bins):
    rng = np.random.default_rng(bins)
    logits = (rng.normal(size=(300, 5)) * 2).astype(np.float32)
    labels = rng.integers(0, 5, 300).astype(np.int32)
    weights = rng.uniform(0, 2, 300).astype(np.float32)
    probs = np.asarray(jax.nn.softmax(logits, -1), np.float64)
    ece = metrics.get("ece", num_bins=bins)
    s = ece.merge(
        ece.update(ece.init(), logits[:170], labels[:170], weights=weights[:170]),
        jax.jit(ece.update)(ece.init(), logits[170:], labels[170:], weights=weights[170:]),
    )
    np.testing.assert_allclose(ece.compute(s), _np_ece(probs, labels, bins, weights), rtol=1e-4)
    on_probs = metrics.expected_calibration_error(bins, from_logits=False)
    s = on_probs.update(on_probs.init(), probs.astype(np.float32), labels)
    np.testing.assert_allclose(on_probs.compute(s), _np_ece(probs, labels, bins), rtol=1e-4)
    with pytest.raises(ValueError, match="`num_bins` must be an int >= 1"):
        metrics.expected_calibration_error(0)
    with pytest.raises(ValueError, match="expected integer `targets`"):
        ece.update(ece.init(), logits, labels[:, None, None])
