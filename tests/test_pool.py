"""MaxPool, AvgPool, GlobalAvgPool and GlobalMaxPool vs loop-based numpy references, errors."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import funcnet as fn
from funcnet.core import LayerError
from funcnet.layers.pool import AvgPool, GlobalAvgPool, GlobalMaxPool, MaxPool

RNG = np.random.default_rng(0)


def _normal(*shape):
    return RNG.normal(size=shape).astype(np.float32)


def _tuple(v, nd):
    return (v,) * nd if isinstance(v, int) else tuple(v)


def _pads(shape, window, strides, padding):
    nd = len(shape) - 2
    if isinstance(padding, int):
        return [(padding, padding)] * nd
    if not isinstance(padding, str):
        return list(padding)
    if padding.upper() == "VALID":
        return [(0, 0)] * nd
    pads = []  # TF's SAME
    for n, w, s in zip(shape[1:-1], window, strides):
        out = -(-n // s)
        total = max((out - 1) * s + w - n, 0)
        pads.append((total // 2, total - total // 2))
    return pads


def pool_ref(x, window, strides, pads, kind, count_include_pad=False):
    """Padded positions are NaN, so nanmax/nansum/count ignore them."""
    xp = np.pad(np.asarray(x, np.float64), ((0, 0), *pads, (0, 0)), constant_values=np.nan)
    nd = x.ndim - 2
    out_sp = [(xp.shape[1 + i] - window[i]) // strides[i] + 1 for i in range(nd)]
    out = np.zeros((x.shape[0], *out_sp, x.shape[-1]))
    for o in np.ndindex(*out_sp):
        sl = tuple(slice(o[i] * strides[i], o[i] * strides[i] + window[i]) for i in range(nd))
        patch = xp[(slice(None), *sl)].reshape(x.shape[0], -1, x.shape[-1])
        if kind == "max":
            out[(slice(None), *o)] = np.nanmax(patch, axis=1)
        else:
            count = math.prod(window) if count_include_pad else (~np.isnan(patch)).sum(1)
            out[(slice(None), *o)] = np.nansum(patch, axis=1) / count
    return out


# (input shape, window, strides, padding)
POOL_CASES = [
    ((2, 8, 3), 2, None, "VALID"),
    ((2, 7, 3), 2, None, "VALID"),  # remainder cropped
    ((2, 7, 2), 3, 1, "VALID"),
    ((2, 7, 2), 3, 2, "SAME"),
    ((2, 7, 2), 2, None, "SAME"),  # non-overlapping with padding
    ((2, 8, 2), 3, 2, 1),
    ((2, 7, 2), (2,), 2, [(1, 0)]),
    ((2, 6, 7, 3), (2, 2), None, "VALID"),
    ((2, 7, 7, 3), 2, None, "same"),
    ((2, 7, 6, 2), (3, 3), (2, 2), "SAME"),
    ((1, 6, 7, 2), (2, 3), (1, 2), ((1, 1), (0, 2))),
    ((1, 7, 5, 2), (3, 2), (3, 2), "VALID"),  # strides == window, rectangular
    ((1, 5, 4, 6, 2), 2, None, "VALID"),
    ((1, 4, 5, 3, 2), (2, 2, 2), 1, "SAME"),
    ((1, 5, 5, 5, 1), 3, 2, 1),
]


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
@pytest.mark.parametrize("case", POOL_CASES, ids=lambda c: f"{c[0]}-{c[1]}-{c[2]}-{c[3]}")
@pytest.mark.parametrize("kind", ["max", "avg"])
def test_pool_matches_numpy(kind, case, jit, key):
    shape, window, strides, padding = case
    make = MaxPool if kind == "max" else AvgPool
    layer = make(window, strides, padding)
    params, state = layer.init(key, jax.ShapeDtypeStruct(shape, jnp.float32))
    assert (params, state) == ((), ())
    x = _normal(*shape)
    apply = jax.jit(layer.apply) if jit else layer.apply
    y, state = apply(params, state, x)
    assert state == ()
    nd = len(shape) - 2
    w = _tuple(window, nd)
    s = w if strides is None else _tuple(strides, nd)
    expected = pool_ref(x, w, s, _pads(shape, w, s, padding), kind)
    assert y.shape == expected.shape
    assert y.dtype == jnp.float32
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
@pytest.mark.parametrize(
    "shape, window, strides, padding",
    [
        ((2, 7, 3), 3, 2, "SAME"),
        ((2, 7, 3), 2, None, "SAME"),
        ((1, 6, 5, 2), (3, 2), 1, ((1, 1), (0, 1))),
        ((1, 4, 5, 3, 2), 2, 2, 1),
    ],
)
def test_avg_pool_count_include_pad(shape, window, strides, padding, jit):
    layer = AvgPool(window, strides, padding, count_include_pad=True)
    x = _normal(*shape)
    apply = jax.jit(layer.apply) if jit else layer.apply
    y = apply((), (), x)[0]
    nd = len(shape) - 2
    w = _tuple(window, nd)
    s = w if strides is None else _tuple(strides, nd)
    expected = pool_ref(x, w, s, _pads(shape, w, s, padding), "avg", count_include_pad=True)
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-6)


def _reduce_window_max(x, window, strides, pads):
    return lax.reduce_window(
        x, -jnp.inf, lax.max, (1, *window, 1), (1, *strides, 1), ((0, 0), *pads, (0, 0))
    )


@pytest.mark.parametrize(
    "shape, window, padding",
    [((2, 7, 6, 3), (2, 2), "VALID"), ((2, 7, 7, 3), (2, 2), "SAME"), ((2, 9, 4), (3,), "VALID")],
)
def test_fast_max_pool_gradient_equals_reduce_window(shape, window, padding, key):
    """Without ties the reshape path has the gradient of reduce_window (select_and_scatter)."""
    layer = MaxPool(window, padding=padding)
    x = jnp.asarray(_normal(*shape))
    pads = _pads(shape, window, window, padding)
    ours = jax.jit(lambda x: layer.apply((), (), x)[0])
    ref = jax.jit(lambda x: _reduce_window_max(x, window, window, pads))
    cotangent = jnp.asarray(_normal(*ref(x).shape))
    np.testing.assert_array_equal(ours(x), ref(x))
    g_ours = jax.grad(lambda x: jnp.vdot(ours(x), cotangent))(x)
    g_ref = jax.grad(lambda x: jnp.vdot(ref(x), cotangent))(x)
    np.testing.assert_allclose(g_ours, g_ref, rtol=1e-6, atol=1e-7)
    # The reshape path does not use select_and_scatter; overlapping windows do.
    assert "select_and_scatter" not in str(jax.make_jaxpr(jax.grad(lambda x: ours(x).sum()))(x))
    overlapping = MaxPool(window, strides=1)
    jaxpr = jax.make_jaxpr(jax.grad(lambda x: overlapping.apply((), (), x)[0].sum()))(x)
    assert "select_and_scatter_add" in str(jaxpr)


def test_fast_max_pool_splits_the_gradient_between_ties():
    x = jnp.ones((1, 2, 2, 1))
    grad = jax.grad(lambda x: MaxPool(2).apply((), (), x)[0].sum())(x)
    np.testing.assert_allclose(grad, np.full((1, 2, 2, 1), 0.25))


def test_pool_dtypes():
    xi = jnp.arange(2 * 6 * 3, dtype=jnp.int32).reshape(2, 6, 3) % 7
    for window, strides, padding in ((2, None, "VALID"), (3, 2, "SAME")):
        ref_w = (window,)
        ref_s = ref_w if strides is None else (strides,)
        pads = _pads(xi.shape, ref_w, ref_s, padding)
        y = MaxPool(window, strides, padding).apply((), (), xi)[0]
        assert y.dtype == jnp.int32
        np.testing.assert_array_equal(y, pool_ref(np.asarray(xi), ref_w, ref_s, pads, "max"))
        y = AvgPool(window, strides, padding).apply((), (), xi)[0]
        assert y.dtype == jnp.float32
        np.testing.assert_allclose(y, pool_ref(np.asarray(xi), ref_w, ref_s, pads, "avg"))
    xb = jnp.ones((1, 6, 2), jnp.bfloat16)
    assert AvgPool(3, 2, "SAME").apply((), (), xb)[0].dtype == jnp.bfloat16
    assert AvgPool(2).apply((), (), xb)[0].dtype == jnp.bfloat16
    assert MaxPool(3, 1, "SAME").apply((), (), xb)[0].dtype == jnp.bfloat16
    assert GlobalAvgPool().apply((), (), xi)[0].dtype == jnp.float32
    assert GlobalMaxPool().apply((), (), xi)[0].dtype == jnp.int32


def test_pool_names_and_serial(key):
    assert repr(MaxPool(2)) == "MaxPool(2)"
    assert repr(MaxPool((3, 3), strides=2, padding="SAME")) == (
        "MaxPool((3, 3), strides=2, padding='SAME')"
    )
    assert repr(AvgPool(2, count_include_pad=True)) == "AvgPool(2, count_include_pad=True)"
    assert repr(GlobalAvgPool()) == "GlobalAvgPool"
    model = fn.serial(MaxPool(2), AvgPool(3, strides=1, padding="SAME"), GlobalMaxPool())
    params, state = model.init(key, jnp.zeros((2, 8, 8, 3)))
    assert model.apply(params, state, jnp.ones((2, 8, 8, 3)))[0].shape == (2, 3)


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
@pytest.mark.parametrize("shape", [(2, 5, 3), (2, 4, 3, 2), (1, 3, 2, 4, 2)])
def test_global_pools_match_numpy(shape, jit, key):
    x = _normal(*shape)
    axes = tuple(range(1, len(shape) - 1))
    for layer, ref in ((GlobalAvgPool(), np.mean), (GlobalMaxPool(), np.max)):
        assert layer.init(key, x) == ((), ())
        apply = jax.jit(layer.apply) if jit else layer.apply
        y, state = apply((), (), x)
        assert state == ()
        assert y.shape == (shape[0], shape[-1])
        np.testing.assert_allclose(y, ref(x, axis=axes), rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------
# Errors


@pytest.mark.parametrize("make", [MaxPool, AvgPool])
@pytest.mark.parametrize(
    "args, match",
    [
        ((0,), r"`window` must be an int >= 1, got 0"),
        ((2.0,), r"`window` must be an int or a tuple of ints"),
        ((2, 0), r"`strides` must be an int >= 1"),
        (((2, 2), (1, 1, 1)), r"disagree on the number of spatial axes \(`window` 2, `strides` 3"),
        (((2,) * 4,), r"supports 1 to 3 spatial axes, got 4 from `window`"),
        ((2, None, "CAUSAL"), r"unknown `padding` 'CAUSAL'; use one of 'SAME', 'VALID'"),
        ((2, None, -1), r"an int `padding` must be >= 0"),
        ((2, None, ((1, 1), 2)), r"one \(lo, hi\) pair of ints per spatial axis"),
        ((2, None, 2), r"padding 2 must be smaller than the window 2 on each side"),
        (((3, 2), None, ((1, 1), (0, 2))), r"padding \(\(1, 1\), \(0, 2\)\) must be smaller"),
    ],
)
def test_bad_pool_hyperparameters(make, args, match):
    with pytest.raises(ValueError, match=match):
        make(*args)


def test_bad_count_include_pad():
    with pytest.raises(ValueError, match=r"`count_include_pad` must be True or False, got 'yes'"):
        AvgPool(2, count_include_pad="yes")


def _init_and_apply_raise(layer, key, bad, match):
    with pytest.raises(LayerError, match=match):
        layer.init(key, bad)
    with pytest.raises(LayerError, match=match):
        layer.apply((), (), bad)
    with pytest.raises(LayerError, match=match):
        jax.jit(layer.apply)((), (), bad)


@pytest.mark.parametrize("make", [MaxPool, AvgPool])
def test_pool_wrong_rank_or_too_small(make, key):
    name = make.__name__
    _init_and_apply_raise(
        make((2, 2)),
        key,
        jnp.zeros((28, 28)),
        rf"^{name}\(\(2, 2\)\): expected inputs of shape \(N, H, W, C\) \(rank 4\), got shape "
        r"\(28, 28\)\. Add the batch and channel axes, e.g. `x\[None, \.\.\., None\]`\.",
    )
    _init_and_apply_raise(
        make(2),
        key,
        jnp.zeros((1, 2, 3, 4, 5, 6)),
        rf"^{name}\(2\): expected inputs of shape \(N, \*spatial, C\) with 1 to 3 spatial axes "
        r"\(rank 3 to 5\), got shape \(1, 2, 3, 4, 5, 6\)\. Merge spatial axes",
    )
    _init_and_apply_raise(
        make(3, strides=1),
        key,
        jnp.zeros((1, 5, 2, 1)),
        rf"^{name}\(3, strides=1\): spatial size \(5, 2\) is too small for the window \(3, 3\) "
        r"with padding 'VALID': the output would be empty along spatial axis 1\.",
    )


@pytest.mark.parametrize("make", [GlobalAvgPool, GlobalMaxPool])
def test_global_pool_errors(make, key):
    name = make.__name__
    _init_and_apply_raise(
        make(),
        key,
        jnp.zeros((2, 3)),
        rf"^{name}: expected inputs of shape \(N, \*spatial, C\) with at least one spatial axis "
        r"\(rank >= 3\), got shape \(2, 3\)\.",
    )
    _init_and_apply_raise(
        make(), key, jnp.zeros((2, 0, 3)), r"expected non-empty spatial axes, got shape \(2, 0, 3\)"
    )
    with pytest.raises(LayerError, match=r"expected inputs to be a single array, got dict"):
        make().init(key, {"x": jnp.zeros((2, 3, 3))})
