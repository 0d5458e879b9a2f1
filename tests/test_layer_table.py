"""One table of every layer and combinator drives the shared checks.

For each entry: the output spec from ``output_spec`` equals the real output;
``jit(apply)`` equals ``apply``; ``vmap`` over the batch axis equals the batched
call; gradients are finite; ``eval_shape(init)`` matches the real ``init``.

Each entry's layer, inputs and params are made once and shared by the checks.
Apart from the eager side of "jit equals eager" the checks run compiled: eager
code compiles every small op on its own, which made up most of their time.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

import funcnet as fn

F32, I32, BOOL = jnp.float32, jnp.int32, jnp.bool_


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
    # Sequence layers: few entries, each covering much, on tiny inputs of one size (batch 2,
    # time 3, width 4), so that the small ops compiled for one entry serve the next ones too.
    (
        "RNN-stack-lengths-mask-carry-state",
        lambda: fn.serial(
            fn.RNN(fn.SimpleRNNCell(3)),
            fn.RNN(fn.GRUCell(3), reverse=True),
            fn.RNN(fn.LSTMCell(3), return_sequences=False, return_state=True),
        ),
        {
            "x": S(2, 3, 4),
            "lengths": S(2, dtype=I32),
            "mask": S(2, 3, dtype=BOOL),
            "carry": S(2, 3),
        },
    ),
    (
        "Bidirectional",
        lambda: fn.Bidirectional(fn.RNN(fn.LSTMCell(3)), fn.RNN(fn.GRUCell(2), reverse=True)),
        {"x": S(2, 3, 4), "lengths": S(2, dtype=I32)},
    ),
    (  # the reference path: weights returned, dropout on them
        "MultiHeadAttention-cross",
        lambda: fn.MultiHeadAttention(
            2, 2, value_size=3, out_features=5, drop_rate=0.3, return_weights=True
        ),
        {
            "x": S(2, 3, 4),
            "memory": S(2, 4, 3),
            "mask": S(2, 3, 4, dtype=BOOL),
            "memory_mask": S(2, 4, dtype=BOOL),
        },
    ),
    (
        "positional-encodings",
        lambda: fn.serial(fn.PositionalEmbedding(5), fn.SinusoidalEncoding(), fn.RotaryEmbedding()),
        S(2, 3, 4),
    ),
    (  # a repeat stack of encoder blocks: masked causal rotary self-attention
        "transformer_encoder",
        lambda: fn.transformer_encoder(2, 2, mlp_ratio=1, drop_rate=0.1, causal=True, rope=True),
        {"x": S(2, 3, 4), "mask": S(2, 3, dtype=BOOL)},
    ),
    (
        "TransformerDecoderBlock-post",
        lambda: fn.TransformerDecoderBlock(2, norm="post", mlp_ratio=1),
        {
            "x": S(2, 3, 4),
            "memory": S(2, 3, 4),
            "mask": S(2, 3, dtype=BOOL),
            "memory_mask": S(2, 3, dtype=BOOL),
        },
    ),
]

IDS = [name for name, *_ in TABLE]


def make_inputs(spec, seed=0):
    leaves, treedef = jax.tree.flatten(spec)
    rng = np.random.default_rng(seed)
    arrays = [
        jnp.asarray(rng.integers(0, 10, s.shape), s.dtype)
        if jnp.issubdtype(s.dtype, jnp.integer)
        else jnp.asarray(rng.random(s.shape) < 0.75)
        if s.dtype == BOOL
        else jnp.asarray(rng.normal(size=s.shape), s.dtype)
        for s in leaves
    ]
    return jax.tree.unflatten(treedef, arrays)


@pytest.fixture(params=TABLE, ids=IDS, scope="module")
def case(request):
    """One layer, inputs, params and state per entry, shared by the checks (layers are pure)."""
    _, make, spec = request.param
    with jax.numpy_dtype_promotion("strict"):  # as every test (conftest.py), also for init
        layer = fn.as_layer(make())
        x = make_inputs(spec)
        params, state = jax.jit(layer.init)(jax.random.key(0), x)
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

    allclose(jax.jit(jax.vmap(one))(x), layer.apply(params, state, x)[0])


def test_gradients_are_finite(case):
    layer, _, x, params, state = case

    def loss(p, x):
        y, _ = layer.apply(p, state, x, key=jax.random.key(1), train=True)
        return sum(jnp.sum(jnp.sin(leaf)) for leaf in jax.tree.leaves(y))

    float_inputs = all(jnp.issubdtype(a.dtype, jnp.floating) for a in jax.tree.leaves(x))
    grads = jax.jit(jax.grad(loss, argnums=(0, 1) if float_inputs else 0))(params, x)
    for g in jax.tree.leaves(grads):
        assert np.isfinite(np.asarray(g)).all()
    if jax.tree.leaves(params):
        assert any(np.abs(np.asarray(g)).sum() > 0 for g in jax.tree.leaves(grads))


def test_eval_shape_init_matches_init(case):
    layer, spec, _, params, state = case
    abstract = jax.eval_shape(layer.init, jax.random.key(0), spec)
    assert abstract == fn.spec_of((params, state))


def _declared_leaves(layer, spec):
    with fn.core.declaring_axes():
        params, _ = jax.eval_shape(layer.init, jax.random.key(0), spec)
    is_declared = lambda d: isinstance(d, fn.core.Declared)
    return jax.tree.leaves(params, is_leaf=is_declared)


@pytest.mark.parametrize("name,make,spec", TABLE, ids=IDS)
def test_every_param_declares_its_axis_names(name, make, spec):
    """Every param of every layer in the table names each of its axes (one name per axis;
    params stacked by ``repeat`` carry one axis more than their names)."""
    layer = fn.as_layer(make())
    stacked = name in ("repeat", "transformer_encoder")  # (some) params stacked by `repeat`
    extras = []
    for leaf in _declared_leaves(layer, spec):
        assert isinstance(leaf, fn.core.Declared), f"undeclared param {leaf}"
        extras.append(leaf.value.ndim - len(leaf.names))
        assert extras[-1] in ((0, 1) if stacked else (0,)), (leaf.names, leaf.value.shape)
        assert all(isinstance(n, str) for n in leaf.names), leaf.names
        assert set(leaf.names) <= set(fn.distributed.LOGICAL_AXES), leaf.names
    assert (1 in extras) == stacked
    names = jax.tree.leaves(
        fn.distributed.logical_axes(layer, spec), is_leaf=lambda x: isinstance(x, P)
    )
    assert [int(n[0] == "layers") for n in names] == extras
    assert all(None not in n for n in names)
    plain, _ = jax.eval_shape(layer.init, jax.random.key(0), spec)  # switch off: plain arrays
    assert not any(isinstance(x, fn.core.Declared) for x in jax.tree.leaves(plain))
