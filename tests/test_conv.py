"""Conv and ConvTranspose vs loop-based numpy references, adjointness, errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import funcnet as fn
from funcnet import initializers
from funcnet.core import LayerError
from funcnet.layers.conv import Conv, ConvTranspose

RNG = np.random.default_rng(0)


def _normal(*shape):
    return RNG.normal(size=shape).astype(np.float32)


def _tuple(v, nd):
    return (v,) * nd if isinstance(v, int) else tuple(v)


def _same_pads(n, k, s):
    """TF's SAME: ceil(n / s) outputs, the odd padding at the end."""
    out = -(-n // s)
    total = max((out - 1) * s + k - n, 0)
    return total // 2, total - total // 2


def _grouped_matmul(patch, w_j, groups):
    """``patch (N, C) @ w_j (C/G, F)`` within each group."""
    cg, f = w_j.shape
    fg = f // groups
    parts = [patch[:, g * cg : (g + 1) * cg] @ w_j[:, g * fg : (g + 1) * fg] for g in range(groups)]
    return np.concatenate(parts, axis=-1)


def conv_ref(x, w, b, strides, dilation, pads, groups):
    x, w = np.asarray(x, np.float64), np.asarray(w, np.float64)
    nd = x.ndim - 2
    xp = np.pad(x, ((0, 0), *pads, (0, 0)))
    k = w.shape[:nd]
    out_sp = [(xp.shape[1 + i] - (k[i] - 1) * dilation[i] - 1) // strides[i] + 1 for i in range(nd)]
    out = np.zeros((x.shape[0], *out_sp, w.shape[-1]))
    for o in np.ndindex(*out_sp):
        for j in np.ndindex(*k):
            pos = tuple(o[i] * strides[i] + j[i] * dilation[i] for i in range(nd))
            out[(slice(None), *o)] += _grouped_matmul(xp[(slice(None), *pos)], w[j], groups)
    return out if b is None else out + b


def _crop(out, axis, lo, hi):
    """Cut lo/hi positions off ``axis``; negative values append zeros instead."""
    n = out.shape[axis]
    out = np.take(out, range(max(lo, 0), n - max(hi, 0)), axis=axis)
    pad = [(0, 0)] * out.ndim
    pad[axis] = (max(-lo, 0), max(-hi, 0))
    return np.pad(out, pad)


def conv_transpose_ref(x, w, b, strides, dilation, crops, groups):
    """The scatter definition: out[i*s + j*d - crop_lo] += x[i] @ w[j]."""
    x, w = np.asarray(x, np.float64), np.asarray(w, np.float64)
    nd = x.ndim - 2
    k, in_sp = w.shape[:nd], x.shape[1:-1]
    full = [(in_sp[i] - 1) * strides[i] + (k[i] - 1) * dilation[i] + 1 for i in range(nd)]
    out = np.zeros((x.shape[0], *full, w.shape[-1]))
    for i in np.ndindex(*in_sp):
        for j in np.ndindex(*k):
            pos = tuple(i[a] * strides[a] + j[a] * dilation[a] for a in range(nd))
            out[(slice(None), *pos)] += _grouped_matmul(x[(slice(None), *i)], w[j], groups)
    for axis, (lo, hi) in enumerate(crops):
        out = _crop(out, axis + 1, lo, hi)
    return out if b is None else out + b


def _apply(layer, params, x, jit):
    apply = jax.jit(layer.apply) if jit else layer.apply
    y, state = apply(params, (), x)
    assert state == ()
    return y


NORMAL = initializers.normal(1.0)

# (input shape, features, kernel_size, kwargs)
CONV_CASES = [
    ((2, 9, 3), 4, 3, dict(padding="VALID")),
    ((2, 9, 3), 4, 3, dict(strides=2, dilation=2)),
    ((2, 10, 2), 3, (3,), dict(padding="CAUSAL", dilation=2)),
    ((2, 10, 2), 3, 4, dict(padding="causal", strides=2)),
    ((2, 9, 2), 3, 3, dict(padding=2, strides=3)),
    ((2, 9, 2), 3, 2, dict(padding=[(2, 1)], strides=2)),
    ((2, 8, 6), 4, 3, dict(groups=2)),
    ((2, 8, 3), 6, 3, dict(groups=3, padding="VALID")),
    ((2, 7, 6, 4), 5, (3, 2), dict(strides=(2, 1))),
    ((2, 7, 6, 2), 3, (2, 3), dict(padding="VALID", dilation=(2, 1))),
    ((1, 6, 5, 2), 3, 3, dict(padding=((1, 2), (0, 1)), strides=2)),
    ((1, 6, 5, 4), 6, (3, 3), dict(groups=2, padding=1)),
    ((2, 5, 5, 4), 8, 3, dict(groups=4, strides=2, dilation=2)),
    ((1, 5, 4, 6, 2), 3, 2, dict(strides=2)),
    ((1, 5, 5, 4, 2), 2, (3, 2, 2), dict(padding=((1, 0), (0, 1), (1, 1)), dilation=(1, 2, 1))),
    ((1, 4, 5, 4, 4), 4, 2, dict(groups=4, padding="VALID")),
]


def _conv_pads(shape, kernel, kw):
    nd = len(shape) - 2
    k = _tuple(kernel, nd)
    s = _tuple(kw.get("strides", 1), nd)
    d = _tuple(kw.get("dilation", 1), nd)
    eff = [(k[i] - 1) * d[i] + 1 for i in range(nd)]
    padding = kw.get("padding", "SAME")
    if isinstance(padding, int):
        pads = [(padding, padding)] * nd
    elif not isinstance(padding, str):
        pads = list(padding)
    elif padding.upper() == "SAME":
        pads = [_same_pads(shape[1 + i], eff[i], s[i]) for i in range(nd)]
    elif padding.upper() == "VALID":
        pads = [(0, 0)] * nd
    else:  # CAUSAL
        pads = [(eff[0] - 1, 0)]
    return pads, s, d


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
@pytest.mark.parametrize("case", CONV_CASES, ids=lambda c: f"{c[0]}-{c[2]}-{c[3]}")
def test_conv_matches_numpy(case, jit, key):
    shape, features, kernel, kw = case
    layer = Conv(features, kernel, w_init=NORMAL, b_init=NORMAL, **kw)
    x = _normal(*shape)
    params, state = layer.init(key, jax.ShapeDtypeStruct(shape, jnp.float32))
    nd = len(shape) - 2
    groups = kw.get("groups", 1)
    assert params["w"].shape == (*_tuple(kernel, nd), shape[-1] // groups, features)
    assert params["b"].shape == (features,)
    assert state == ()
    y = _apply(layer, params, x, jit)
    pads, s, d = _conv_pads(shape, kernel, kw)
    expected = conv_ref(x, params["w"], params["b"], s, d, pads, groups)
    assert y.shape == expected.shape
    assert y.dtype == jnp.float32
    np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-4)
    assert jax.eval_shape(layer.apply, params, state, x)[0].shape == y.shape


def test_conv_same_and_causal_shapes(key):
    x = jnp.zeros((1, 11, 3))
    for s in (1, 2, 3):
        layer = Conv(2, 4, strides=s)
        params, _ = layer.init(key, x)
        assert layer.apply(params, (), x)[0].shape == (1, -(-11 // s), 2)
    causal = Conv(2, 3, padding="CAUSAL", dilation=3, w_init=NORMAL)
    params, _ = causal.init(key, x)
    x = _normal(1, 11, 3)
    y = causal.apply(params, (), x)[0]
    x2 = x.copy()
    x2[:, 6:] = 0.0  # the future does not leak into the past
    np.testing.assert_allclose(causal.apply(params, (), x2)[0][:, :6], y[:, :6], rtol=1e-6)


def test_conv_no_bias_dtypes_and_names(key):
    layer = Conv(3, (3, 3), use_bias=False)
    params, _ = layer.init(key, jnp.zeros((1, 5, 5, 2)))
    assert set(params) == {"w"}
    xi = jnp.arange(50, dtype=jnp.int32).reshape(1, 5, 5, 2)
    y_int = layer.apply(params, (), xi)[0]
    assert y_int.dtype == jnp.float32
    np.testing.assert_allclose(y_int, layer.apply(params, (), xi.astype(jnp.float32))[0])
    half = Conv(3, 3, dtype=jnp.bfloat16)
    params, _ = half.init(key, jnp.zeros((1, 5, 5, 2)))
    assert params["w"].dtype == jnp.float32
    assert half.apply(params, (), jnp.ones((1, 5, 5, 2)))[0].dtype == jnp.bfloat16
    assert repr(Conv(32, (3, 3))) == "Conv(32, (3, 3))"
    assert repr(Conv(8, 3, strides=2, padding="VALID")) == "Conv(8, 3, strides=2, padding='VALID')"
    assert repr(ConvTranspose(4, [2, 2], groups=2)) == "ConvTranspose(4, (2, 2), groups=2)"


def test_conv_in_serial_infers_shapes(key):
    model = fn.serial(Conv(4, 3), jax.nn.relu, Conv(6, 3, strides=2, groups=2))
    params, state = model.init(key, jnp.zeros((2, 8, 8, 1)))
    assert params[2]["w"].shape == (3, 3, 2, 6)
    assert model.apply(params, state, jnp.ones((2, 8, 8, 1)))[0].shape == (2, 4, 4, 6)


# (input shape, features, kernel_size, kwargs)
CONVT_CASES = [
    ((2, 5, 3), 2, 3, dict(padding="VALID")),
    ((2, 5, 3), 2, 3, dict(padding="VALID", strides=2)),
    ((2, 4, 3), 2, 2, dict(padding="VALID", strides=3)),
    ((2, 5, 2), 3, 3, dict(strides=2)),
    ((2, 5, 2), 3, 4, dict(strides=2)),
    ((2, 4, 2), 3, 2, dict(strides=3)),  # total < 0: zeros appended
    ((2, 4, 2), 3, 1, dict(strides=2, padding="same")),
    ((2, 5, 2), 3, 3, dict(strides=3, dilation=2)),
    ((2, 5, 2), 3, 3, dict(strides=2, padding=1)),
    ((2, 5, 2), 3, (3,), dict(strides=2, padding=[(1, 0)])),  # PyTorch output_padding=1
    ((2, 5, 2), 3, 3, dict(strides=2, padding=((2, -2),))),
    ((2, 4, 4), 6, 3, dict(strides=2, groups=2, padding="VALID")),
    ((2, 4, 4), 4, 3, dict(strides=2, groups=4)),
    ((1, 4, 3, 2), 3, (3, 2), dict(strides=(2, 3))),
    ((1, 3, 4, 2), 2, (2, 3), dict(strides=2, padding="VALID", dilation=(2, 1))),
    ((1, 3, 3, 4), 6, 3, dict(strides=(1, 2), padding=((1, 1), (0, 2)), groups=2)),
    ((1, 3, 2, 3, 2), 2, 2, dict(strides=2)),
    ((1, 2, 3, 2, 2), 3, (2, 3, 2), dict(strides=(2, 1, 3), padding=1)),
]


def _convt_crops(shape, kernel, kw):
    nd = len(shape) - 2
    k = _tuple(kernel, nd)
    s = _tuple(kw.get("strides", 1), nd)
    d = _tuple(kw.get("dilation", 1), nd)
    padding = kw.get("padding", "SAME")
    if isinstance(padding, int):
        crops = [(padding, padding)] * nd
    elif not isinstance(padding, str):
        crops = list(padding)
    elif padding.upper() == "VALID":
        crops = [(0, 0)] * nd
    else:  # SAME, as written in the spec
        crops = []
        for i in range(nd):
            total = (k[i] - 1) * d[i] + 1 - s[i]
            lo = total // 2 if total > 0 else 0
            crops.append((lo, total - lo))
    return crops, s, d


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
@pytest.mark.parametrize("case", CONVT_CASES, ids=lambda c: f"{c[0]}-{c[2]}-{c[3]}")
def test_conv_transpose_matches_numpy(case, jit, key):
    shape, features, kernel, kw = case
    layer = ConvTranspose(features, kernel, w_init=NORMAL, b_init=NORMAL, **kw)
    x = _normal(*shape)
    params, _ = layer.init(key, jax.ShapeDtypeStruct(shape, jnp.float32))
    nd = len(shape) - 2
    groups = kw.get("groups", 1)
    assert params["w"].shape == (*_tuple(kernel, nd), shape[-1] // groups, features)
    y = _apply(layer, params, x, jit)
    crops, s, d = _convt_crops(shape, kernel, kw)
    expected = conv_transpose_ref(x, params["w"], params["b"], s, d, crops, groups)
    assert y.shape == expected.shape
    if kw.get("padding", "SAME") in ("SAME", "same"):
        assert y.shape[1:-1] == tuple(n * si for n, si in zip(shape[1:-1], s))
    np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-4)


def _swap_in_out(w, groups):
    """Conv weights (*k, I/G, O) -> the adjoint ConvTranspose's (*k, O/G, I)."""
    *k, ig, o = w.shape
    og = o // groups
    w = w.reshape(*k, ig, groups, og)
    w = np.moveaxis(w, (-3, -2, -1), (-1, -2, -3))  # (*k, O/G, G, I/G)
    return w.reshape(*k, og, groups * ig)


# (z shape, features, kernel, strides, dilation, padding, groups)
ADJOINT_CASES = [
    ((2, 10, 3), 4, 3, 2, 1, "VALID", 1),
    ((2, 11, 2), 3, 2, 3, 2, "VALID", 1),
    ((1, 7, 8, 2), 3, (3, 2), (2, 3), (1, 2), "VALID", 1),
    ((1, 8, 9, 4), 6, 3, (2, 3), 1, "SAME", 2),
    ((1, 6, 4, 4, 2), 2, 2, (2, 1, 2), 1, "VALID", 2),
]


@pytest.mark.parametrize("case", ADJOINT_CASES, ids=str)
def test_conv_transpose_is_the_adjoint_of_conv(case, key):
    """<Conv_w(z), y> == <z, ConvT_w'(y)> with w' the kernel with its in/out axes swapped."""
    z_shape, features, kernel, strides, dilation, padding, groups = case
    channels = z_shape[-1]
    conv = Conv(
        features,
        kernel,
        strides=strides,
        dilation=dilation,
        padding=padding,
        groups=groups,
        use_bias=False,
        w_init=NORMAL,
    )
    params, _ = conv.init(key, jnp.zeros(z_shape))
    z = _normal(*z_shape)
    conv_z = jax.jit(conv.apply)(params, (), z)[0]
    y = _normal(*conv_z.shape)
    nd = len(z_shape) - 2
    if padding == "VALID":  # extend the transposed output over the remainder Conv ignored
        k, s, d = _tuple(kernel, nd), _tuple(strides, nd), _tuple(dilation, nd)
        full = [(y.shape[1 + i] - 1) * s[i] + (k[i] - 1) * d[i] + 1 for i in range(nd)]
        padding = tuple((0, full[i] - z_shape[1 + i]) for i in range(nd))
    convt = ConvTranspose(
        channels,
        kernel,
        strides=strides,
        dilation=dilation,
        padding=padding,
        groups=groups,
        use_bias=False,
    )
    w_t = _swap_in_out(np.asarray(params["w"]), groups)
    assert jax.eval_shape(convt.init, key, y)[0]["w"].shape == w_t.shape
    convt_y = jax.jit(convt.apply)({"w": w_t}, (), y)[0]
    assert convt_y.shape == z.shape
    lhs = np.vdot(np.asarray(conv_z, np.float64), y)
    rhs = np.vdot(z, np.asarray(convt_y, np.float64))
    np.testing.assert_allclose(lhs, rhs, rtol=1e-4)
    # The same statement as a vector-Jacobian product.
    _, vjp = jax.vjp(lambda z: conv.apply(params, (), z)[0], jnp.asarray(z))
    np.testing.assert_allclose(vjp(jnp.asarray(y))[0], convt_y, rtol=1e-4, atol=1e-4)


def test_conv_matches_torch(key):
    torch = pytest.importorskip("torch")
    f = torch.nn.functional
    x = _normal(2, 9, 8, 4)
    conv = Conv(6, (3, 2), strides=(2, 1), padding=1, dilation=(1, 2), groups=2, b_init=NORMAL)
    params, _ = conv.init(key, x)
    ours = conv.apply(params, (), x)[0]
    weight = torch.from_numpy(np.asarray(params["w"])).permute(3, 2, 0, 1)
    theirs = f.conv2d(
        torch.from_numpy(x).permute(0, 3, 1, 2),
        weight,
        torch.from_numpy(np.asarray(params["b"])),
        stride=(2, 1),
        padding=1,
        dilation=(1, 2),
        groups=2,
    ).permute(0, 2, 3, 1)
    np.testing.assert_allclose(ours, theirs.numpy(), rtol=1e-4, atol=1e-4)


def test_conv_transpose_matches_torch(key):
    torch = pytest.importorskip("torch")
    f = torch.nn.functional
    x = _normal(2, 4, 5, 4)
    groups, features, k = 2, 6, (3, 3)
    convt = ConvTranspose(
        features, k, strides=2, padding=((1, 0), (1, 0)), dilation=1, groups=groups
    )
    params, _ = convt.init(key, x)
    ours = convt.apply(params, (), x)[0]
    w = np.asarray(params["w"])  # (kh, kw, C/G, F) -> torch (C, F/G, kh, kw)
    weight = w.reshape(*k, 2, groups, features // groups).transpose(3, 2, 4, 0, 1)
    theirs = f.conv_transpose2d(
        torch.from_numpy(x).permute(0, 3, 1, 2),
        torch.from_numpy(np.ascontiguousarray(weight.reshape(4, features // groups, *k))),
        torch.from_numpy(np.asarray(params["b"])),
        stride=2,
        padding=1,
        output_padding=1,
        groups=groups,
    ).permute(0, 2, 3, 1)
    np.testing.assert_allclose(ours, theirs.numpy(), rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------------------
# Errors


@pytest.mark.parametrize("make", [Conv, ConvTranspose])
@pytest.mark.parametrize(
    "args, kwargs, match",
    [
        ((0, 3), {}, r"`features` must be an int >= 1, got 0"),
        ((4, 0), {}, r"`kernel_size` must be an int >= 1"),
        ((4, "3"), {}, r"`kernel_size` must be an int or a tuple of ints"),
        ((4, (3, 3)), dict(strides=(1, 1, 1)), r"disagree on the number of spatial axes"),
        ((4, 3), dict(dilation=(1, 2), padding=((0, 0),)), r"`dilation` 2, `padding` 1"),
        ((4, (1, 1, 1, 1)), {}, r"supports 1 to 3 spatial axes, got 4 from `kernel_size`"),
        ((4, 3), dict(strides=0), r"`strides` must be an int >= 1"),
        ((4, 3), dict(dilation=(1, 0)), r"`dilation` must be an int >= 1"),
        ((4, 3), dict(padding="FULL"), r"unknown `padding` 'FULL'; use one of 'SAME', 'VALID'"),
        ((4, 3), dict(padding=-1), r"an int `padding` must be >= 0, got -1"),
        ((4, 3), dict(padding=(1, 2)), r"one \(lo, hi\) pair of ints per spatial axis"),
        ((4, 3), dict(padding=((1, 2, 3),)), r"one \(lo, hi\) pair of ints"),
        ((4, 3), dict(padding=((1.0, 2),)), r"one \(lo, hi\) pair of ints"),
        ((5, 3), dict(groups=2), r"`features` \(5\) must be divisible by `groups` \(2\)"),
        ((4, 3), dict(groups=0), r"`groups` must be an int >= 1"),
    ],
)
def test_bad_hyperparameters(make, args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        make(*args, **kwargs)


def test_bad_conv_padding():
    with pytest.raises(ValueError, match=r"explicit `padding` must be >= 0"):
        Conv(4, 3, padding=((-1, 0),))
    with pytest.raises(ValueError, match=r"padding='CAUSAL' is for 1-D inputs.*`kernel_size`"):
        Conv(4, (3, 3), padding="CAUSAL")
    with pytest.raises(ValueError, match=r"padding='CAUSAL' is for 1-D inputs.*`strides`"):
        Conv(4, 3, strides=(1, 1), padding="CAUSAL")
    with pytest.raises(ValueError, match=r"unknown `padding` 'CAUSAL'"):
        ConvTranspose(4, 3, padding="CAUSAL")
    ConvTranspose(4, 3, padding=((-1, 2),))  # negative crops extend the output


def _init_and_apply_raise(layer, key, good, bad, match):
    """The error is raised at init on ``bad`` and at apply on ``bad`` with params from ``good``."""
    with pytest.raises(LayerError, match=match):
        layer.init(key, bad)
    params, state = layer.init(key, good)
    with pytest.raises(LayerError, match=match):
        layer.apply(params, state, bad)
    with pytest.raises(LayerError, match=match):
        jax.jit(layer.apply)(params, state, bad)


@pytest.mark.parametrize("make", [Conv, ConvTranspose])
def test_wrong_rank(make, key):
    name = make.__name__
    layer = make(4, (3, 3))
    _init_and_apply_raise(
        layer,
        key,
        jnp.zeros((1, 28, 28, 1)),
        jnp.zeros((28, 28)),
        rf"^{name}\(4, \(3, 3\)\): expected inputs of shape \(N, H, W, C\) \(rank 4\), got shape "
        r"\(28, 28\)\. Add the batch and channel axes, e.g. `x\[None, \.\.\., None\]`\.",
    )
    _init_and_apply_raise(
        layer,
        key,
        jnp.zeros((1, 28, 28, 1)),
        jnp.zeros((28, 28, 1)),
        r"\(rank 4\), got shape \(28, 28, 1\)\. Add the batch axis \(`x\[None\]`\) or the channel",
    )
    with pytest.raises(LayerError, match=r"\(N, D, H, W, C\) \(rank 5\), got shape \(1, 2, 3\)"):
        make(4, (3, 3, 3)).init(key, jnp.zeros((1, 2, 3)))
    with pytest.raises(LayerError, match=r"\(N, L, C\) \(rank 3\).*give `kernel_size` one entry"):
        make(4, (3,)).init(key, jnp.zeros((1, 5, 5, 5, 5, 2)))
    inferred = make(4, 3)
    with pytest.raises(LayerError, match=r"with 1 to 3 spatial axes \(rank 3 to 5\), got shape "):
        inferred.init(key, jnp.zeros((28, 28)))
    with pytest.raises(LayerError, match=r"\(rank 3 to 5\), got shape .*Merge spatial axes"):
        inferred.init(key, jnp.zeros((1, 3, 3, 3, 3, 1)))
    params, state = inferred.init(key, jnp.zeros((1, 8, 8, 2)))
    with pytest.raises(LayerError, match=r"\(N, H, W, C\) \(rank 4\) for the kernel of shape"):
        inferred.apply(params, state, jnp.zeros((1, 8, 2)))
    with pytest.raises(LayerError, match=r"expected inputs to be a single array, got tuple"):
        inferred.init(key, (jnp.zeros((1, 8, 2)),))


@pytest.mark.parametrize("make", [Conv, ConvTranspose])
def test_channels(make, key):
    name = make.__name__
    _init_and_apply_raise(
        make(4, 3, groups=2),
        key,
        jnp.zeros((1, 8, 4)),
        jnp.zeros((1, 8, 3)),
        rf"^{name}\(4, 3, groups=2\): expected a number of input channels divisible by `groups` "
        r"\(2\), got shape \(1, 8, 3\) with 3 channels\. Use `groups` that divides 3",
    )
    layer = make(4, 3)
    params, state = layer.init(key, jnp.zeros((1, 8, 3)))
    for apply in (layer.apply, jax.jit(layer.apply)):
        with pytest.raises(
            LayerError,
            match=rf"^{name}\(4, 3\): expected inputs with 3 channels \(last axis\) for the kernel "
            r"of shape \(3, 3, 4\), got shape \(1, 8, 2\)\. Re-run `init`",
        ):
            apply(params, state, jnp.zeros((1, 8, 2)))


def test_output_would_be_empty(key):
    _init_and_apply_raise(
        Conv(4, 3, padding="VALID", dilation=2),
        key,
        jnp.zeros((1, 8, 8, 1)),
        jnp.zeros((1, 8, 4, 1)),
        r"spatial size \(8, 4\) is too small for `kernel_size` \(3, 3\) \(dilated: \(5, 5\)\) "
        r"with padding 'VALID': the output would be empty along spatial axis 1\.",
    )
    _init_and_apply_raise(
        ConvTranspose(4, 2, padding=2),
        key,
        jnp.zeros((1, 8, 1)),
        jnp.zeros((1, 2, 1)),
        r"spatial size \(2,\) is too small for `kernel_size` \(2,\) with crops \(\(2, 2\),\)",
    )


def test_errors_carry_the_path(key):
    model = fn.serial(Conv(4, 3), Conv(4, (3, 3)))
    with pytest.raises(LayerError, match=r"serial\[1\] Conv\(4, \(3, 3\)\): expected inputs of"):
        model.init(key, jnp.zeros((1, 8, 2)))
