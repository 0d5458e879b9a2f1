"""One table of every layer and combinator drives the shared checks.

For each entry: the output spec from ``output_spec`` equals the real output;
``jit(apply)`` equals ``apply``; ``vmap`` over the batch axis equals the batched
call; gradients are finite; ``eval_shape(init)`` matches the real ``init``.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import funcnet as fn

F32, I32 = jnp.float32, jnp.int32


def S(*shape, dtype=F32):
    return jax.ShapeDtypeStruct(shape, dtype)


TABLE = [
    ("Dense", lambda: fn.Dense(5), S(3, 4)),
    ("Dense-3d", lambda: fn.Dense(5, use_bias=False), S(3, 2, 4)),
    ("Embedding", lambda: fn.Embedding(10, 4), S(3, 6, dtype=I32)),
    ("Embedding-attend", lambda: fn.Embedding(10, 4), S(3, 4)),
    ("Conv1D", lambda: fn.Conv(4, 3, strides=2), S(2, 9, 3)),
    ("Conv1D-causal", lambda: fn.Conv(4, 3, padding="CAUSAL", dilation=2), S(2, 9, 3)),
    ("Conv2D", lambda: fn.Conv(4, (3, 3)), S(2, 6, 6, 3)),
    ("Conv2D-grouped", lambda: fn.Conv(4, (3, 3), groups=2, padding="VALID"), S(2, 6, 6, 4)),
    ("Conv2D-depthwise", lambda: fn.Conv(8, (3, 3), groups=4, strides=2), S(2, 7, 7, 4)),
    ("Conv3D", lambda: fn.Conv(2, (2, 2, 2), padding=1), S(2, 4, 4, 4, 3)),
    ("ConvTranspose1D", lambda: fn.ConvTranspose(3, 3, strides=2), S(2, 5, 2)),
    (
        "ConvTranspose2D",
        lambda: fn.ConvTranspose(3, (3, 3), strides=2, padding="VALID"),
        S(2, 4, 4, 2),
    ),
    ("MaxPool", lambda: fn.MaxPool((2, 2)), S(2, 6, 6, 3)),
    ("MaxPool-overlap", lambda: fn.MaxPool((3, 3), strides=(2, 2), padding="SAME"), S(2, 7, 7, 3)),
    ("AvgPool", lambda: fn.AvgPool(2), S(2, 8, 3)),
    ("AvgPool-same", lambda: fn.AvgPool((3, 3), strides=1, padding="SAME"), S(2, 5, 5, 3)),
    ("GlobalAvgPool", lambda: fn.GlobalAvgPool(), S(2, 4, 4, 3)),
    ("GlobalMaxPool", lambda: fn.GlobalMaxPool(), S(2, 4, 3)),
    ("Flatten", lambda: fn.Flatten(), S(2, 3, 4)),
    ("Reshape", lambda: fn.Reshape((2, -1)), S(2, 3, 4)),
    ("Dropout", lambda: fn.Dropout(0.5), S(4, 6)),
    ("BatchNorm", lambda: fn.BatchNorm(), S(8, 5)),
    ("BatchNorm-2d", lambda: fn.BatchNorm(), S(4, 3, 3, 2)),
    ("LayerNorm", lambda: fn.LayerNorm(), S(3, 4, 6)),
    ("GroupNorm", lambda: fn.GroupNorm(2), S(2, 3, 3, 4)),
    ("RMSNorm", lambda: fn.RMSNorm(), S(3, 6)),
    ("Relu", lambda: fn.Relu(), S(3, 4)),
    ("Gelu", lambda: fn.Gelu(), S(3, 4)),
    ("Softmax", lambda: fn.Softmax(), S(3, 4)),
    ("plain-function", lambda: jnp.tanh, S(3, 4)),
    ("serial", lambda: fn.serial(fn.Dense(4), jax.nn.relu, fn.Dense(2)), S(3, 5)),
    ("serial-named", lambda: fn.serial(a=fn.Dense(4), b=fn.Dropout(0.2)), S(3, 5)),
    ("parallel", lambda: fn.parallel(fn.Dense(2), fn.LayerNorm()), (S(3, 4), S(3, 5))),
    ("fanout", lambda: fn.fanout(fn.Dense(2), fn.Relu()), S(3, 4)),
    ("concat", lambda: fn.concat(fn.Dense(2), fn.Dense(3)), S(3, 4)),
    ("residual", lambda: fn.residual(fn.LayerNorm(), fn.Dense(4), fn.Dropout(0.1)), S(3, 4)),
    ("shared", lambda: fn.shared(fn.Dense(4), lambda d: fn.serial(d, jnp.tanh, d)), S(3, 4)),
    (
        "repeat",
        lambda: fn.repeat(fn.serial(fn.Dense(4), fn.BatchNorm(), fn.Dropout(0.3)), 3),
        S(6, 4),
    ),
    (
        "cnn",
        lambda: fn.serial(
            fn.Conv(4, (3, 3)),
            fn.BatchNorm(),
            fn.Relu(),
            fn.MaxPool((2, 2)),
            fn.Flatten(),
            fn.Dense(3),
        ),
        S(2, 6, 6, 1),
    ),
]

IDS = [name for name, *_ in TABLE]


def make_inputs(spec, seed=0):
    leaves, treedef = jax.tree.flatten(spec)
    rng = np.random.default_rng(seed)
    arrays = [
        jnp.asarray(rng.integers(0, 10, s.shape), s.dtype)
        if jnp.issubdtype(s.dtype, jnp.integer)
        else jnp.asarray(rng.normal(size=s.shape), s.dtype)
        for s in leaves
    ]
    return jax.tree.unflatten(treedef, arrays)


@pytest.fixture(params=TABLE, ids=IDS)
def case(request):
    _, make, spec = request.param
    layer = fn.as_layer(make())
    x = make_inputs(spec)
    params, state = layer.init(jax.random.key(0), x)
    return layer, spec, x, params, state


def allclose(a, b):
    jax.tree.map(lambda u, v: np.testing.assert_allclose(u, v, rtol=2e-5, atol=2e-5), a, b)


def test_output_spec_matches_real_output(case):
    layer, spec, x, params, state = case
    for train in (False, True):
        y, new_state = layer.apply(params, state, x, key=jax.random.key(1), train=train)
        assert fn.output_spec(layer, spec, params, state) == fn.spec_of(y)
        assert fn.spec_of(new_state) == fn.spec_of(state)


def test_jit_equals_eager(case):
    layer, _, x, params, state = case
    jitted = jax.jit(layer.apply, static_argnames="train")
    for train in (False, True):
        eager = layer.apply(params, state, x, key=jax.random.key(1), train=train)
        allclose(jitted(params, state, x, key=jax.random.key(1), train=train), eager)


def test_vmap_over_batch_is_consistent(case):
    layer, _, x, params, state = case

    def one(xi):
        y, _ = layer.apply(params, state, jax.tree.map(lambda a: a[None], xi))
        return jax.tree.map(lambda a: a[0], y)

    allclose(jax.vmap(one)(x), layer.apply(params, state, x)[0])


def test_gradients_are_finite(case):
    layer, _, x, params, state = case

    def loss(p, x):
        y, _ = layer.apply(p, state, x, key=jax.random.key(1), train=True)
        return sum(jnp.sum(jnp.sin(leaf)) for leaf in jax.tree.leaves(y))

    float_inputs = all(jnp.issubdtype(a.dtype, jnp.floating) for a in jax.tree.leaves(x))
    grads = jax.grad(loss, argnums=(0, 1) if float_inputs else 0)(params, x)
    for g in jax.tree.leaves(grads):
        assert np.isfinite(np.asarray(g)).all()
    if jax.tree.leaves(params):
        assert any(np.abs(np.asarray(g)).sum() > 0 for g in jax.tree.leaves(grads))


def test_eval_shape_init_matches_init(case):
    layer, spec, _, params, state = case
    abstract = jax.eval_shape(layer.init, jax.random.key(0), spec)
    assert abstract == fn.spec_of((params, state))
