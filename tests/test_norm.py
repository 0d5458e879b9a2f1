"""Tests for funcnet.layers.norm: BatchNorm, LayerNorm, GroupNorm, RMSNorm against numpy."""

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from funcnet import Dense, LayerError, output_spec, serial
from funcnet.layers.norm import BatchNorm, GroupNorm, LayerNorm, RMSNorm

RTOL, ATOL = 1e-5, 1e-5


# ---------------------------------------------------------------------------------------------
# Independent numpy references (float64)


def np_batchnorm(x, axis, scale, bias, eps, mean=None, var=None):
    x = np.asarray(x, np.float64)
    axis = axis % x.ndim
    reduce = tuple(a for a in range(x.ndim) if a != axis)
    if mean is None:
        mean, var = x.mean(reduce), x.var(reduce)
    shape = [1] * x.ndim
    shape[axis] = -1
    r = lambda v: np.asarray(v, np.float64).reshape(shape)
    return (x - r(mean)) / np.sqrt(r(var) + eps) * r(scale) + r(bias)


def np_layernorm(x, axes, scale, bias, eps):
    x = np.asarray(x, np.float64)
    axes = tuple(sorted(a % x.ndim for a in axes))
    mean = x.mean(axes, keepdims=True)
    var = x.var(axes, keepdims=True)
    shape = [x.shape[a] if a in axes else 1 for a in range(x.ndim)]
    y = (x - mean) / np.sqrt(var + eps)
    if scale is not None:
        y = y * np.asarray(scale, np.float64).reshape(shape)
    if bias is not None:
        y = y + np.asarray(bias, np.float64).reshape(shape)
    return y


def np_groupnorm(x, groups, scale, bias, eps):
    x = np.asarray(x, np.float64)
    n, c = x.shape[0], x.shape[-1]
    size = c // groups
    out = np.empty_like(x)
    for i in range(n):
        for g in range(groups):
            block = x[i, ..., g * size : (g + 1) * size]
            out[i, ..., g * size : (g + 1) * size] = (block - block.mean()) / np.sqrt(
                block.var() + eps
            )
    return out * np.asarray(scale, np.float64) + np.asarray(bias, np.float64)


def np_rmsnorm(x, axes, scale, eps):
    x = np.asarray(x, np.float64)
    axes = tuple(sorted(a % x.ndim for a in axes))
    shape = [x.shape[a] if a in axes else 1 for a in range(x.ndim)]
    y = x / np.sqrt((x**2).mean(axes, keepdims=True) + eps)
    if scale is None:
        return y
    return y * np.asarray(scale, np.float64).reshape(shape)


# ---------------------------------------------------------------------------------------------
# Helpers


def data(shape, seed=0, loc=1.5, spread=2.0, dtype=np.float32):
    return jnp.asarray(np.random.default_rng(seed).normal(loc, spread, shape).astype(dtype))


def randomize(params, seed=1):
    """Replace scale/bias by random values so the affine part is tested too."""
    rng = np.random.default_rng(seed)
    return jax.tree.map(
        lambda p: jnp.asarray(rng.normal(0.5, 1.0, p.shape), p.dtype),
        params,
    )


def run(layer, params, state, x, jit, **kw):
    fn = functools.partial(layer.apply, **kw)
    if jit:
        fn = jax.jit(fn)
    return fn(params, state, x)


def close(actual, expected, rtol=RTOL, atol=ATOL):
    np.testing.assert_allclose(np.asarray(actual, np.float64), expected, rtol=rtol, atol=atol)


# ---------------------------------------------------------------------------------------------
# BatchNorm


@pytest.mark.parametrize("jit", [False, True])
def test_batchnorm_train_matches_numpy(key, jit):
    bn = BatchNorm(epsilon=1e-3)
    x = data((16, 5))
    params, state = bn.init(key, x)
    params = randomize(params)
    y, new_state = run(bn, params, state, x, jit, train=True)
    assert y.shape == x.shape and y.dtype == jnp.float32
    close(y, np_batchnorm(x, -1, params["scale"], params["bias"], 1e-3))
    xs = np.asarray(x, np.float64)
    close(new_state["mean"], 0.99 * 0 + 0.01 * xs.mean(0))
    close(new_state["var"], 0.99 * 1 + 0.01 * xs.var(0))  # biased variance


@pytest.mark.parametrize("jit", [False, True])
def test_batchnorm_eval_uses_running_stats_and_keeps_state(key, jit):
    bn = BatchNorm()
    x = data((6, 4))
    params, _ = bn.init(key, x)
    params = randomize(params)
    state = {"mean": data((4,), seed=2), "var": jnp.abs(data((4,), seed=3)) + 0.1}
    y, new_state = run(bn, params, state, x, jit)
    close(
        y,
        np_batchnorm(
            x, -1, params["scale"], params["bias"], 1e-5, mean=state["mean"], var=state["var"]
        ),
    )
    if not jit:
        assert new_state is state
    for k in ("mean", "var"):
        np.testing.assert_array_equal(new_state[k], state[k])


def test_batchnorm_running_statistics_over_steps(key):
    momentum, eps = 0.9, 1e-5
    bn = BatchNorm(momentum=momentum, epsilon=eps)
    params, state = bn.init(key, jax.ShapeDtypeStruct((8, 3), jnp.float32))
    step = jax.jit(functools.partial(bn.apply, train=True))
    mean, var = np.zeros(3), np.ones(3)
    for i in range(5):
        x = data((8, 3), seed=10 + i, loc=i, spread=1.0 + i)
        _, state = step(params, state, x)
        xs = np.asarray(x, np.float64)
        mean = momentum * mean + (1 - momentum) * xs.mean(0)
        var = momentum * var + (1 - momentum) * xs.var(0)
    close(state["mean"], mean)
    close(state["var"], var)
    x = data((4, 3), seed=99)
    y, _ = bn.apply(params, state, x)
    close(y, np_batchnorm(x, -1, np.ones(3), np.zeros(3), eps, mean=mean, var=var))


@pytest.mark.parametrize("jit", [False, True])
def test_batchnorm_channels_first(key, jit):
    bn = BatchNorm(axis=1)
    assert repr(bn) == "BatchNorm(axis=1)"
    x = data((2, 3, 4, 5))
    params, state = bn.init(key, x)
    assert jax.tree.map(jnp.shape, (params, state)) == (
        {"scale": (3,), "bias": (3,)},
        {"mean": (3,), "var": (3,)},
    )
    params = randomize(params)
    y, new_state = run(bn, params, state, x, jit, train=True)
    close(y, np_batchnorm(x, 1, params["scale"], params["bias"], 1e-5))
    close(new_state["mean"], 0.01 * np.asarray(x, np.float64).mean((0, 2, 3)))
    y, _ = run(bn, params, new_state, x, jit)
    ref = np_batchnorm(
        x, 1, params["scale"], params["bias"], 1e-5, new_state["mean"], new_state["var"]
    )
    close(y, ref)


def test_batchnorm_without_scale_and_bias(key):
    bn = BatchNorm(use_scale=False, use_bias=False)
    x = data((10, 2))
    params, state = bn.init(key, x)
    assert params == ()
    y, _ = bn.apply(params, state, x, train=True)
    close(y, np_batchnorm(x, -1, np.ones(2), np.zeros(2), 1e-5))
    params, _ = BatchNorm(use_bias=False).init(key, x)
    assert set(params) == {"scale"}


def test_batchnorm_axis_name_under_vmap_matches_one_big_batch(key):
    bn = BatchNorm(axis_name="batch", momentum=0.5)
    devices, per_device, c = 4, 3, 5
    x = data((devices, per_device, c))
    params, state = bn.init(key, x[0])
    params = randomize(params)

    def local(p, x):
        return bn.apply(p, state, x, train=True)

    y, new_state = jax.jit(jax.vmap(local, in_axes=(None, 0), axis_name="batch"))(params, x)
    big = x.reshape(devices * per_device, c)
    y_big, state_big = BatchNorm(momentum=0.5).apply(params, state, big, train=True)
    close(y.reshape(big.shape), np.asarray(y_big))
    for k in ("mean", "var"):
        assert new_state[k].shape == (devices, c)
        for d in range(devices):  # every "device" got the global statistics
            close(new_state[k][d], np.asarray(state_big[k]))

    # Gradients through the collective equal the big-batch gradients.
    w = data(x.shape, seed=5)

    def loss_split(p, x):
        y, _ = jax.vmap(local, in_axes=(None, 0), axis_name="batch")(p, x)
        return jnp.sum(y * w)

    def loss_big(p, x):
        y, _ = BatchNorm(momentum=0.5).apply(p, state, x.reshape(big.shape), train=True)
        return jnp.sum(y * w.reshape(big.shape))

    g_split = jax.jit(jax.grad(loss_split, argnums=(0, 1)))(params, x)
    g_big = jax.jit(jax.grad(loss_big, argnums=(0, 1)))(params, x)
    for a, b in zip(jax.tree.leaves(g_split), jax.tree.leaves(g_big), strict=True):
        close(a, np.asarray(b), atol=1e-4, rtol=1e-4)


def test_batchnorm_axis_name_per_example_vmap(key):
    # vmap over single examples of shape (C,): the collective supplies the batch.
    bn = BatchNorm(axis_name="i")
    x = data((12, 5))
    params, state = bn.init(key, x[0])
    y, new_state = jax.vmap(lambda x: bn.apply(params, state, x, train=True), axis_name="i")(x)
    close(y, np_batchnorm(x, -1, np.ones(5), np.zeros(5), 1e-5))
    close(new_state["mean"][0], 0.01 * np.asarray(x, np.float64).mean(0))


@pytest.mark.parametrize("low", [jnp.bfloat16, jnp.float16])
def test_batchnorm_low_precision_inputs(key, low):
    bn = BatchNorm()
    x32 = data((32, 6), loc=100.0, spread=3.0)  # large mean: stats must not be computed in low
    x = x32.astype(low)
    params, state = bn.init(key, x)
    assert params["scale"].dtype == jnp.float32 and state["mean"].dtype == jnp.float32
    y, new_state = jax.jit(functools.partial(bn.apply, train=True))(params, state, x)
    assert y.dtype == low
    assert new_state["mean"].dtype == new_state["var"].dtype == jnp.float32
    y32, state32 = bn.apply(params, state, x.astype(jnp.float32), train=True)
    close(y, np.asarray(y32), atol=3e-2, rtol=1e-2)
    close(new_state["var"], np.asarray(state32["var"]), rtol=1e-5)
    y, _ = bn.apply(params, new_state, x)
    assert y.dtype == low
    y, _ = BatchNorm(dtype=jnp.float32).apply(params, new_state, x)
    assert y.dtype == jnp.float32


# ---------------------------------------------------------------------------------------------
# LayerNorm, GroupNorm, RMSNorm


@pytest.mark.parametrize("jit", [False, True])
@pytest.mark.parametrize(
    "axis, shape, param_shape",
    [
        (-1, (3, 7), (7,)),
        (-1, (2, 3, 8), (8,)),
        ((-2, -1), (2, 3, 4), (3, 4)),
        ((1, 3), (2, 3, 4, 5), (3, 5)),
        ((-1, 1), (2, 3, 4), (3, 4)),
    ],
)
def test_layernorm_matches_numpy(key, jit, axis, shape, param_shape):
    ln = LayerNorm(axis=axis, epsilon=1e-4)
    x = data(shape)
    params, state = ln.init(key, x)
    assert state == ()
    assert jax.tree.map(jnp.shape, params) == {"scale": param_shape, "bias": param_shape}
    params = randomize(params)
    y, _ = run(ln, params, state, x, jit)
    axes = axis if isinstance(axis, tuple) else (axis,)
    close(y, np_layernorm(x, axes, params["scale"], params["bias"], 1e-4))
    y_train, _ = run(ln, params, state, x, jit, train=True)  # no train/eval difference
    np.testing.assert_array_equal(y, y_train)


def test_layernorm_without_params(key):
    x = data((3, 5))
    ln = LayerNorm(use_scale=False, use_bias=False)
    params, _ = ln.init(key, x)
    assert params == ()
    close(ln.apply(params, (), x)[0], np_layernorm(x, (-1,), None, None, 1e-5))
    params, _ = LayerNorm(use_scale=False).init(key, x)
    assert set(params) == {"bias"}


@pytest.mark.parametrize("jit", [False, True])
@pytest.mark.parametrize(
    "groups, shape",
    [
        (1, (2, 6, 4)),
        (2, (2, 6, 4)),
        (4, (2, 6, 4)),
        (3, (2, 5, 6)),
        (2, (2, 3, 4, 8)),
        (8, (2, 3, 4, 8)),
        (2, (3, 6)),
    ],
)
def test_groupnorm_matches_numpy(key, jit, groups, shape):
    gn = GroupNorm(groups, epsilon=1e-4)
    x = data(shape)
    params, state = gn.init(key, x)
    assert state == ()
    assert jax.tree.map(jnp.shape, params) == {"scale": shape[-1:], "bias": shape[-1:]}
    params = randomize(params)
    y, _ = run(gn, params, state, x, jit)
    close(y, np_groupnorm(x, groups, params["scale"], params["bias"], 1e-4))


@pytest.mark.parametrize("jit", [False, True])
@pytest.mark.parametrize(
    "axis, shape",
    [(-1, (3, 8)), (-1, (2, 3, 16)), ((-2, -1), (2, 3, 4))],
)
def test_rmsnorm_matches_numpy(key, jit, axis, shape):
    rms = RMSNorm(axis=axis)
    x = data(shape)
    params, state = rms.init(key, x)
    assert set(params) == {"scale"} and state == ()
    params = randomize(params)
    y, _ = run(rms, params, state, x, jit)
    axes = axis if isinstance(axis, tuple) else (axis,)
    close(y, np_rmsnorm(x, axes, params["scale"], 1e-6))
    plain = RMSNorm(axis=axis, use_scale=False)
    params, _ = plain.init(key, x)
    assert params == ()
    close(plain.apply(params, (), x)[0], np_rmsnorm(x, axes, None, 1e-6))


@pytest.mark.parametrize(
    "layer",
    [LayerNorm(), GroupNorm(2), RMSNorm()],
    ids=repr,
)
def test_low_precision_inputs(key, layer):
    x32 = data((4, 3, 8), loc=50.0)
    x = x32.astype(jnp.bfloat16)
    params, state = layer.init(key, x)
    y, _ = jax.jit(layer.apply)(params, state, x)
    assert y.dtype == jnp.bfloat16
    y32, _ = layer.apply(params, state, x.astype(jnp.float32))
    close(y, np.asarray(y32), atol=3e-2, rtol=1e-2)


# ---------------------------------------------------------------------------------------------
# Shared checks over every layer


LAYERS = [
    ("BatchNorm", lambda: BatchNorm(), (4, 5)),
    ("BatchNorm-nchw", lambda: BatchNorm(axis=1), (3, 2, 4, 4)),
    ("LayerNorm", lambda: LayerNorm(), (2, 3, 6)),
    ("LayerNorm-tuple", lambda: LayerNorm(axis=(-2, -1)), (2, 3, 6)),
    ("GroupNorm", lambda: GroupNorm(3), (2, 4, 6)),
    ("RMSNorm", lambda: RMSNorm(), (2, 3, 6)),
]


@pytest.mark.parametrize("name, make, shape", LAYERS, ids=[n for n, *_ in LAYERS])
@pytest.mark.parametrize("train", [False, True])
def test_shared_spec_and_gradients(key, name, make, shape, train):
    layer = make()
    spec = jax.ShapeDtypeStruct(shape, jnp.float32)
    p_spec, s_spec = jax.eval_shape(layer.init, key, spec)
    params, state = layer.init(key, spec)
    assert jax.tree.map(lambda a: (a.shape, a.dtype), (params, state)) == jax.tree.map(
        lambda a: (a.shape, a.dtype), (p_spec, s_spec)
    )
    params = randomize(params)
    x = data(shape)
    y, new_state = jax.jit(functools.partial(layer.apply, train=train))(params, state, x)
    assert output_spec(layer, spec, params, state) == jax.ShapeDtypeStruct(shape, jnp.float32)
    assert y.shape == shape
    assert jax.tree.structure(new_state) == jax.tree.structure(state)
    y_eager, _ = layer.apply(params, state, x, train=train)
    close(y, np.asarray(y_eager))

    w = data(shape, seed=7)

    def loss(p, x):
        y, _ = layer.apply(p, state, x, train=train)
        return jnp.sum(y * w)

    g_params, g_x = jax.jit(jax.grad(loss, argnums=(0, 1)))(params, x)
    assert all(bool(jnp.isfinite(g).all()) for g in jax.tree.leaves((g_params, g_x)))
    assert float(jnp.abs(g_x).sum()) > 0


@pytest.mark.parametrize(
    "layer, shape, reduce",
    [
        (LayerNorm(), (3, 6), (1,)),
        (LayerNorm(axis=(1, 2)), (2, 3, 4), (1, 2)),
        (GroupNorm(1), (2, 3, 4), (1, 2)),
        (BatchNorm(), (5, 3), (0,)),
    ],
    ids=repr,
)
def test_gradient_is_shift_invariant(key, layer, shape, reduce):
    # The output does not change when a constant is added over the normalized values,
    # so the input gradient sums to zero over them.
    x = data(shape)
    params, state = layer.init(key, x)
    w = data(shape, seed=3)
    g = jax.grad(lambda x: jnp.sum(layer.apply(params, state, x, train=True)[0] * w))(x)
    close(jnp.sum(g, axis=reduce), 0.0, atol=1e-4)


def test_in_serial_model(key):
    model = serial(Dense(6), BatchNorm(), jax.nn.relu, Dense(4), LayerNorm(), RMSNorm())
    x = data((8, 3))
    params, state = model.init(key, x)
    assert state[1] == {"mean": state[1]["mean"], "var": state[1]["var"]}
    y, new_state = jax.jit(functools.partial(model.apply, train=True))(params, state, x)
    assert y.shape == (8, 4)
    assert not np.allclose(new_state[1]["mean"], state[1]["mean"])
    _, same = model.apply(params, new_state, x)
    np.testing.assert_array_equal(same[1]["var"], new_state[1]["var"])


def test_names():
    assert repr(BatchNorm()) == "BatchNorm"
    assert repr(LayerNorm()) == "LayerNorm"
    assert repr(LayerNorm(axis=(1, 2))) == "LayerNorm(axis=(1, 2))"
    assert repr(GroupNorm(8)) == "GroupNorm(8)"
    assert repr(RMSNorm()) == "RMSNorm"
    assert repr(RMSNorm(axis=-2)) == "RMSNorm(axis=-2)"


# ---------------------------------------------------------------------------------------------
# Errors


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: BatchNorm(momentum=1.0), r"BatchNorm: `momentum` must be a number in \[0, 1\)"),
        (lambda: BatchNorm(momentum=-0.1), r"`momentum` must be a number in \[0, 1\), got -0.1"),
        (lambda: BatchNorm(momentum=True), r"`momentum` must be a number"),
        (lambda: BatchNorm(epsilon=0), r"BatchNorm: `epsilon` must be a finite number > 0"),
        (lambda: LayerNorm(epsilon=-1e-5), r"LayerNorm: `epsilon` must be a finite number > 0"),
        (lambda: RMSNorm(epsilon=float("nan")), r"RMSNorm: `epsilon` must be a finite number"),
        (lambda: GroupNorm(4, epsilon="1e-5"), r"GroupNorm: `epsilon` must be a finite number"),
        (lambda: GroupNorm(0), r"GroupNorm: `num_groups` must be an int >= 1, got 0"),
        (lambda: GroupNorm(2.0), r"GroupNorm: `num_groups` must be an int >= 1"),
        (lambda: BatchNorm(axis=(0, 1)), r"BatchNorm: `axis` must be an int, got \(0, 1\)"),
        (lambda: LayerNorm(axis=()), r"LayerNorm: `axis` must be an int or a non-empty tuple"),
        (lambda: LayerNorm(axis=(1, 1)), r"`axis` must be an int or a non-empty tuple of distin"),
        (lambda: RMSNorm(axis="last"), r"RMSNorm: `axis` must be an int or a non-empty tuple"),
        (lambda: BatchNorm(dtype=jnp.int32), r"BatchNorm: `dtype` must be a floating dtype"),
        (lambda: LayerNorm(dtype=jnp.int8), r"LayerNorm: `dtype` must be a floating dtype"),
        (lambda: GroupNorm(2, dtype=bool), r"GroupNorm: `dtype` must be a floating dtype"),
        (lambda: RMSNorm(dtype=jnp.uint8), r"RMSNorm: `dtype` must be a floating dtype"),
    ],
)
def test_bad_hyperparameters(make, match):
    with pytest.raises(ValueError, match=match):
        make()


ALL = [BatchNorm(), LayerNorm(), GroupNorm(1), RMSNorm()]


@pytest.mark.parametrize("layer", ALL, ids=repr)
def test_integer_inputs_rejected(key, layer):
    x = jnp.zeros((2, 4), jnp.int32)
    with pytest.raises(
        LayerError, match=rf"^{re.escape(repr(layer))}: expected floating-point inputs, got dtype"
    ):
        layer.init(key, x)
    params, state = layer.init(key, x.astype(jnp.float32))
    with pytest.raises(LayerError, match=r"expected floating-point inputs, got dtype int32"):
        layer.apply(params, state, x)


@pytest.mark.parametrize("layer", ALL, ids=repr)
def test_non_array_inputs_rejected(key, layer):
    with pytest.raises(LayerError, match=r"expected inputs to be a single array, got tuple"):
        layer.init(key, (jnp.zeros((2, 4)), jnp.zeros((2, 4))))


@pytest.mark.parametrize(
    "layer, shape, match",
    [
        (
            BatchNorm(axis=1),
            (4,),
            r"BatchNorm\(axis=1\): `axis=1` needs inputs with at least 2 axes",
        ),
        (
            BatchNorm(),
            (),
            r"BatchNorm: `axis=-1` needs inputs with at least 1 axis, got shape \(\)",
        ),
        (LayerNorm(axis=-2), (4,), r"LayerNorm\(axis=-2\): `axis=-2` needs inputs with at least 2"),
        (LayerNorm(axis=(1, 2)), (2, 3), r"`axis=\(1, 2\)` needs inputs with at least 3 axes"),
        (LayerNorm(axis=(1, -1)), (2, 3), r"`axis=\(1, -1\)` names the same axis twice for inputs"),
        (RMSNorm(axis=(0, 3)), (2, 3), r"RMSNorm\(axis=\(0, 3\)\): `axis=\(0, 3\)` needs inputs"),
        (GroupNorm(1), (4,), r"GroupNorm\(1\): expected channels-last inputs \(N, \*spatial, C\)"),
    ],
)
def test_rank_too_small(key, layer, shape, match):
    with pytest.raises(LayerError, match=match):
        layer.init(key, jax.ShapeDtypeStruct(shape, jnp.float32))


def test_groupnorm_groups_must_divide_channels(key):
    msg = re.escape(
        "GroupNorm(32): `num_groups=32` does not divide the 48 channels of inputs with shape "
        "(2, 5, 48); use a divisor of 48, e.g. `GroupNorm(24)` (divisors: [1, 2, 3, 4, 6, 8, "
        "12, 16, 24, 48])."
    )
    with pytest.raises(LayerError, match=msg):
        GroupNorm().init(key, jnp.zeros((2, 5, 48)))
    with pytest.raises(LayerError, match=r"`num_groups=4` does not divide the 6 channels"):
        GroupNorm(4).init(key, jnp.zeros((2, 6)))
    params, state = GroupNorm(4, use_scale=False, use_bias=False).init(key, jnp.zeros((2, 8)))
    with pytest.raises(LayerError, match=r"e\.g\. `GroupNorm\(3\)`"):
        GroupNorm(4, use_scale=False, use_bias=False).apply(params, state, jnp.zeros((2, 6)))


@pytest.mark.parametrize(
    "layer, init_shape, apply_shape, match",
    [
        (
            BatchNorm(),
            (4, 3),
            (4, 5),
            r"expected inputs with 3 features on axis -1, got shape \(4, 5\)",
        ),
        (
            BatchNorm(axis=1),
            (4, 3, 2),
            (4, 2, 3),
            r"with 3 features on axis 1, got shape \(4, 2, 3\)",
        ),
        (BatchNorm(use_scale=False, use_bias=False), (4, 3), (4, 5), r"with 3 features on axis -1"),
        (LayerNorm(), (2, 6), (2, 5), r"LayerNorm: expected inputs with 6 features on axis -1"),
        (LayerNorm(use_scale=False), (2, 6), (2, 5), r"expected inputs with 6 features on axis -1"),
        (LayerNorm(axis=(-2, -1)), (2, 3, 4), (2, 4, 4), r"sizes \(3, 4\) on axes \(-2, -1\), got"),
        (GroupNorm(2), (2, 3, 6), (2, 3, 4), r"GroupNorm\(2\): expected inputs with 6 features on"),
        (RMSNorm(), (2, 6), (2, 5), r"RMSNorm: expected inputs with 6 features on axis -1, got"),
        (LayerNorm(axis=-2), (3, 2), (2,), r"`axis=-2` needs inputs with at least 2 axes"),
        (GroupNorm(2), (2, 6), (6,), r"expected channels-last inputs"),
    ],
)
def test_feature_mismatch_at_apply(key, layer, init_shape, apply_shape, match):
    params, state = layer.init(key, jax.ShapeDtypeStruct(init_shape, jnp.float32))
    with pytest.raises(LayerError, match=match):
        layer.apply(params, state, jnp.zeros(apply_shape))
    with pytest.raises(LayerError, match=match):
        jax.jit(layer.apply)(params, state, jnp.zeros(apply_shape))


def test_errors_name_the_path(key):
    model = serial(Dense(4), BatchNorm())
    params, state = model.init(key, jnp.zeros((2, 3)))
    bad = (params[0], BatchNorm().init(key, jnp.zeros((2, 5)))[0])
    with pytest.raises(LayerError, match=r"^serial\[1\] BatchNorm: expected inputs with 5 feat"):
        model.apply(bad, state, jnp.zeros((2, 3)))


def test_batchnorm_state_and_params_checked(key):
    bn = BatchNorm()
    params, state = bn.init(key, jnp.zeros((4, 3)))
    with pytest.raises(LayerError, match=r"BatchNorm: expected state \{'mean', 'var'\}.*got tuple"):
        bn.apply(params, (), jnp.zeros((4, 3)))
    with pytest.raises(
        LayerError, match=r"expected params with entry 'scale', got a dict with keys"
    ):
        bn.apply({"bias": params["bias"]}, state, jnp.zeros((4, 3)))
    with pytest.raises(
        LayerError, match=r"LayerNorm: expected params with entry 'scale', got tuple"
    ):
        LayerNorm().apply((), (), jnp.zeros((4, 3)))


def test_batchnorm_training_needs_more_than_one_value(key):
    bn = BatchNorm()
    params, state = bn.init(key, jnp.zeros((1, 3)))
    with pytest.raises(
        LayerError, match=r"training needs more than one value per channel.*\(1, 3\)"
    ):
        bn.apply(params, state, jnp.ones((1, 3)), train=True)
    y, _ = bn.apply(params, state, jnp.ones((1, 3)))  # evaluation is fine
    assert y.shape == (1, 3)


# ---------------------------------------------------------------------------------------------
# Optional cross-check against PyTorch


def test_against_torch(key):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    x = np.asarray(data((4, 6, 5, 5)))  # NCHW for torch
    xt = torch.from_numpy(x).double()
    scale = np.random.default_rng(0).normal(size=6).astype(np.float32)
    bias = np.random.default_rng(1).normal(size=6).astype(np.float32)
    st, bt = torch.from_numpy(scale).double(), torch.from_numpy(bias).double()
    params = {"scale": jnp.asarray(scale), "bias": jnp.asarray(bias)}

    bn = BatchNorm(axis=1, momentum=0.9)
    _, state = bn.init(key, x)
    y, new_state = bn.apply(params, state, jnp.asarray(x), train=True)
    rm, rv = torch.zeros(6, dtype=torch.double), torch.ones(6, dtype=torch.double)
    ref = F.batch_norm(xt, rm, rv, st, bt, training=True, momentum=0.1, eps=1e-5)
    close(y, ref.numpy(), atol=1e-4)
    close(new_state["mean"], rm.numpy(), atol=1e-5)  # torch's running var is unbiased: skip it

    x_last = np.moveaxis(x, 1, -1)
    y, _ = GroupNorm(3).apply(params, (), jnp.asarray(x_last))
    ref = F.group_norm(xt, 3, st, bt, eps=1e-5)
    close(y, np.moveaxis(ref.numpy(), 1, -1), atol=1e-4)

    y, _ = LayerNorm().apply(params, (), jnp.asarray(x_last))
    ref = F.layer_norm(torch.from_numpy(x_last).double(), (6,), st, bt, eps=1e-5)
    close(y, ref.numpy(), atol=1e-4)
