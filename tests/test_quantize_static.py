"""compress.quantize_model: static int8 against numpy integer arithmetic and error bounds."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import funcnet as fn
from funcnet import compress


def _np_quantize(x, scale):
    """Reference activation quantization: round half to even, clip to +-127."""
    return np.clip(np.round(np.asarray(x, np.float32) / np.float32(scale)), -127, 127).astype(
        np.int64
    )


def _np_patches(x, kh, kw):
    """SAME-padded, stride-1 patches of an NHWC array: (N, H, W, kh * kw * C)."""
    n, h, w, c = x.shape
    ph, pw = (kh - 1) // 2, (kw - 1) // 2
    padded = np.zeros((n, h + kh - 1, w + kw - 1, c), x.dtype)
    padded[:, ph : ph + h, pw : pw + w] = x
    cols = [padded[:, i : i + h, j : j + w] for i in range(kh) for j in range(kw)]
    return np.concatenate(cols, axis=-1)


def _np_conv(x, w):
    """SAME, stride-1 NHWC x HWIO convolution by patches (integer or float)."""
    kh, kw, c, o = w.shape
    return _np_patches(x, kh, kw) @ w.reshape(kh * kw * c, o)


def _cnn():
    return fn.serial(
        fn.Conv(6, (3, 3), padding="SAME"),
        fn.Relu(),
        fn.MaxPool(2),
        fn.Flatten(),
        fn.Dense(12),
        fn.Relu(),
        fn.Dense(5),
    )


@pytest.fixture(scope="module")
def cnn():
    model = _cnn()
    x = jax.random.normal(jax.random.key(1), (48, 6, 6, 2))
    params, state = model.init(jax.random.key(0), x)
    qmodel, qparams = compress.quantize_model(model, params, state, [x[:24], x[24:]])
    return model, params, state, x, qmodel, qparams


# ------------------------------------------------------------------ numerics


def test_dense_error_within_the_derived_bound():
    """|y - y_q| <= sum_i |x_i| s_w/2 + s_x/2 sum_i |w_q_ij| (no clipping: minmax on x itself)."""
    model = fn.Dense(16)
    x = jax.random.normal(jax.random.key(2), (256, 64))
    params, state = model.init(jax.random.key(3), x)
    qmodel, qparams = compress.quantize_model(model, params, state, [x])
    y = np.asarray(model.apply(params, state, x)[0], np.float64)
    yq = np.asarray(jax.jit(qmodel.apply)(qparams, state, x)[0], np.float64)
    node = qparams["w"]
    s_w, s_x = np.asarray(node["scale"], np.float64), float(node["input_scale"])
    assert s_x == pytest.approx(float(jnp.abs(x).max()) / 127, rel=1e-6)
    w_hat = np.asarray(node["q"], np.float64) * s_w
    xa = np.abs(np.asarray(x, np.float64))
    bound = xa @ np.ones_like(w_hat) * s_w / 2 + s_x / 2 * np.abs(w_hat).sum(0)
    bound += 1e-5 * (xa @ np.abs(w_hat))  # float32 rounding of the two sums
    err = np.abs(y - yq)
    assert (err <= bound).all()
    assert 0.05 < (err / bound).max() < 1  # the bound is attained to within 20x
    # and the integer result is the float product of the rounded operands
    x_hat = _np_quantize(x, s_x) * s_x
    np.testing.assert_allclose(yq, x_hat @ w_hat + np.asarray(params["b"]), rtol=1e-5, atol=1e-6)


def test_conv_error_within_the_derived_bound():
    model = fn.Conv(8, (3, 3), padding="SAME")
    x = jax.random.normal(jax.random.key(4), (16, 7, 7, 3))
    params, state = model.init(jax.random.key(5), x)
    qmodel, qparams = compress.quantize_model(model, params, state, [x])
    y = np.asarray(model.apply(params, state, x)[0], np.float64)
    yq = np.asarray(jax.jit(qmodel.apply)(qparams, state, x)[0], np.float64)
    node = qparams["w"]
    s_w, s_x = np.asarray(node["scale"], np.float64), float(node["input_scale"])
    w_hat = np.asarray(node["q"], np.float64) * s_w
    xa = np.abs(np.asarray(x, np.float64))
    patches_abs = _np_patches(xa, 3, 3).sum(-1, keepdims=True)  # sum of |x| per receptive field
    inside = _np_patches(np.ones_like(xa), 3, 3)  # where the window is not padding
    bound = patches_abs * s_w / 2 + s_x / 2 * (inside @ np.abs(w_hat).reshape(-1, 8))
    bound += 1e-5 * _np_conv(xa, np.abs(w_hat))
    err = np.abs(y - yq)
    assert (err <= bound).all()
    assert 0.05 < (err / bound).max() < 1


def test_cnn_accumulators_equal_numpy_integer_arithmetic(cnn):
    """Each integer op's int32 accumulator equals numpy's int64 one, exactly."""
    model, _, state, x, qmodel, qparams = cnn
    found = compress.int8_accumulators(model, qparams, state, x)
    assert sorted(found) == ["0/w", "4/w", "6/w"]
    q = {k: np.asarray(qparams[int(k[0])]["w"]["q"], np.int64) for k in found}
    for path, [(qx, acc)] in found.items():
        assert qx.dtype == jnp.int8 and acc.dtype == jnp.int32
        ref = _np_conv(np.asarray(qx, np.int64), q[path]) if path == "0/w" else (
            np.asarray(qx, np.int64) @ q[path])  # fmt: skip
        np.testing.assert_array_equal(np.asarray(acc), ref)

    # numpy's own pipeline: quantize, integer op, rescale, bias, relu, pool
    def layer(h, i):
        node, b = qparams[i]["w"], np.asarray(qparams[i]["b"])
        qh = _np_quantize(h, node["input_scale"])
        if i == 0:  # the network input: the same float32 division and rounding
            np.testing.assert_array_equal(qh, np.asarray(found["0/w"][0][0]))
        else:
            got = np.asarray(found[f"{i}/w"][0][0], np.int64)
            assert np.abs(qh - got).max() <= 1 and (qh != got).mean() < 1e-3
        acc = _np_conv(qh, q["0/w"]) if i == 0 else qh @ q[f"{i}/w"]
        rescale = np.float32(node["input_scale"]) * np.asarray(node["scale"])
        return acc.astype(np.float32) * rescale + b

    h = np.maximum(layer(np.asarray(x), 0), 0)
    n, hh, ww, c = h.shape
    h = h.reshape(n, hh // 2, 2, ww // 2, 2, c).max((2, 4)).reshape(n, -1)
    h = layer(np.maximum(layer(h, 4), 0), 6)
    np.testing.assert_allclose(np.asarray(qmodel.apply(qparams, state, x)[0]), h, atol=2e-3)


def test_cnn_matches_torch_fake_quantization(cnn):
    """PyTorch's fake-quant ops with the same scales (symmetric, zero point 0) give our outputs."""
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    _, _, state, x, qmodel, qparams = cnn

    def fq_x(h, node):
        s = float(node["input_scale"])
        return torch.fake_quantize_per_tensor_affine(h, s, 0, -127, 127)

    def fq_w(w, node, axis):
        scale = torch.tensor(np.asarray(node["scale"]), dtype=torch.float32)
        zero = torch.zeros(scale.shape, dtype=torch.int32)
        return torch.fake_quantize_per_channel_affine(w, scale, zero, axis, -127, 127)

    def kernel(i):  # the float kernel whose per-channel rounding gives q exactly
        node = qparams[i]["w"]
        return torch.tensor(np.asarray(node["q"], np.float32) * np.asarray(node["scale"]))

    def bias(i):
        return torch.tensor(np.asarray(qparams[i]["b"]))

    h = torch.tensor(np.asarray(x)).permute(0, 3, 1, 2)  # NCHW
    w0 = fq_w(kernel(0).permute(3, 2, 0, 1), qparams[0]["w"], 0)  # OIHW
    h = F.max_pool2d(F.relu(F.conv2d(fq_x(h, qparams[0]["w"]), w0, bias(0), padding=1)), 2)
    h = h.permute(0, 2, 3, 1).reshape(h.shape[0], -1)  # flatten as NHWC
    for i in (4, 6):
        w = fq_w(kernel(i).T.contiguous(), qparams[i]["w"], 0)
        h = F.linear(fq_x(h, qparams[i]["w"]), w, bias(i))
        h = F.relu(h) if i == 4 else h
    y = np.asarray(jax.jit(qmodel.apply)(qparams, state, x)[0])
    np.testing.assert_allclose(y, h.numpy(), atol=1e-5 * np.abs(y).max())  # seen: 2e-7


def test_cnn_close_to_float_and_jit_equals_eager(cnn):
    model, params, state, x, qmodel, qparams = cnn
    y = model.apply(params, state, x)[0]
    yq = qmodel.apply(qparams, state, x)[0]
    np.testing.assert_array_equal(jax.jit(qmodel.apply)(qparams, state, x)[0], yq)
    rel = float(jnp.abs(y - yq).max() / jnp.abs(y).max())
    assert 1e-4 < rel < 0.05  # quantized (not float), but close
    assert qmodel.init(jax.random.key(0), x) == (qparams, state)
    assert compress.size_bytes(qparams) < compress.size_bytes(params) / 2.5


def test_the_lowered_program_runs_int8_ops(cnn):
    _, _, state, x, qmodel, qparams = cnn
    text = jax.jit(qmodel.apply).lower(qparams, state, x).as_text()
    assert "stablehlo.convolution" in text and "stablehlo.dot_general" in text
    conv = next(ln for ln in text.splitlines() if "stablehlo.convolution" in ln)
    assert "xi8>, tensor<3x3x2x6xi8>) -> tensor<48x6x6x6xi32>" in conv
    dots = [ln for ln in text.splitlines() if "stablehlo.dot_general" in ln]
    assert len(dots) == 2 and all("xi8>) -> tensor<" in d and "xi32>" in d for d in dots)


def test_export_gives_the_same_outputs(cnn, tmp_path):
    _, _, state, x, qmodel, qparams = cnn
    spec = jax.ShapeDtypeStruct((1, 6, 6, 2), jnp.float32)
    for as_args in (False, True):
        path = fn.export.export(qmodel, qparams, state, spec, tmp_path / str(as_args),
                                params_as_args=as_args)  # fmt: skip
        loaded = fn.export.load_exported(path)
        for n in (48, 5):  # any batch size
            np.testing.assert_array_equal(
                np.asarray(loaded(x[:n])), np.asarray(qmodel.apply(qparams, state, x[:n])[0])
            )


# ------------------------------------------------------------------ calibration


def test_minmax_takes_the_largest_value_over_batches():
    model = fn.Dense(3)
    a, b = jnp.full((4, 5), 0.5), jnp.full((4, 5), -2.0).at[1, 2].set(-3.0)
    params, state = model.init(jax.random.key(0), a)
    _, qparams = compress.quantize_model(model, params, state, (a, b), method="minmax")
    assert float(qparams["w"]["input_scale"]) == np.float32(3.0) / np.float32(127)


def test_percentile_clips_an_outlier_like_numpy():
    model = fn.Dense(3)
    x = jax.random.normal(jax.random.key(7), (2000, 8)).at[0, 0].set(1000.0)
    params, state = model.init(jax.random.key(0), x)
    _, q100 = compress.quantize_model(model, params, state, [x])
    _, q99 = compress.quantize_model(
        model, params, state, [x[:1000], x[1000:]], method="percentile", percentile=99.0
    )
    amax = float(q99["w"]["input_scale"]) * 127
    ref = np.percentile(np.abs(np.asarray(x)), 99.0)
    assert ref <= amax * (1 + 1e-6) and amax <= ref + 1000.0 / 2048 + 1e-3
    assert float(q100["w"]["input_scale"]) * 127 == pytest.approx(1000.0)


# ------------------------------------------------------------------ other layers


def test_embedding_is_weight_only_and_attention_projections_integer():
    model = fn.serial(fn.Embedding(20, 8), fn.MultiHeadAttention(2, 4), fn.Dense(3))
    ids = jax.random.randint(jax.random.key(8), (6, 5), 0, 20)
    params, state = model.init(jax.random.key(9), ids)
    qmodel, qparams = compress.quantize_model(model, params, state, [ids])
    assert set(qparams[0]["table"]) == {"q", "scale"}  # a lookup: weight-only
    found = compress.int8_accumulators(model, qparams, state, ids)
    assert sorted(found) == ["1/key/w", "1/out/w", "1/query/w", "1/value/w", "2/w"]
    # the embedding's output is the dequantized table's rows
    table = np.asarray(qparams[0]["table"]["q"], np.float32) * np.asarray(
        qparams[0]["table"]["scale"]
    )
    s_x = float(qparams[1]["query"]["w"]["input_scale"])
    np.testing.assert_array_equal(
        np.asarray(found["1/query/w"][0][0]), _np_quantize(table[np.asarray(ids)], s_x)
    )
    y, yq = model.apply(params, state, ids)[0], jax.jit(qmodel.apply)(qparams, state, ids)[0]
    assert float(jnp.abs(y - yq).max() / jnp.abs(y).max()) < 0.05


# ------------------------------------------------------------------ errors


@pytest.mark.parametrize(
    "kwargs, err, match",
    [
        ({"method": "kl"}, ValueError, "`method` must be one of"),
        ({"method": "percentile", "percentile": 30}, ValueError, r"`percentile` must be in \(50"),
        ({"percentile": "99"}, TypeError, "`percentile` must be a number"),
        ({"bins": 4}, ValueError, "`bins` must be an int >= 16"),
        ({"pattern": "nothing"}, ValueError, "matches no parameter path"),
    ],
)
def test_bad_options(kwargs, err, match):
    model = fn.Dense(2)
    x = jnp.ones((2, 3))
    params, state = model.init(jax.random.key(0), x)
    with pytest.raises(err, match=match):
        compress.quantize_model(model, params, state, [x], **kwargs)


def test_bad_batches_and_misuse():
    model = fn.Dense(2)
    x = jnp.ones((2, 3))
    params, state = model.init(jax.random.key(0), x)
    with pytest.raises(ValueError, match="`calibration_batches` is empty"):
        compress.quantize_model(model, params, state, [])
    with pytest.raises(TypeError, match="must be a list"):
        compress.quantize_model(model, params, state, {"x": x})
    qmodel, qparams = compress.quantize_model(model, params, state, x)  # one array: one batch
    with pytest.raises(ValueError, match="at inference only"):
        qmodel.apply(qparams, state, x, train=True)
    with pytest.raises(ValueError, match="hold no quantized weights"):
        qmodel.apply(params, state, x)
    with pytest.raises(ValueError, match="hold no quantized weights"):
        compress.int8_accumulators(model, params, state, x)
