"""Dense, Embedding, Dropout, Flatten, Reshape, activations and initializers vs numpy."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import special, stats

import funcnet as fn
from funcnet import initializers
from funcnet.core import LayerError


def test_dense_matches_numpy(key):
    x = np.random.default_rng(0).normal(size=(2, 3, 5)).astype(np.float32)
    layer = fn.Dense(4)
    params, state = layer.init(key, x)
    y, _ = jax.jit(layer.apply)(params, state, x)
    np.testing.assert_allclose(y, x @ params["w"] + params["b"], rtol=1e-5, atol=1e-6)
    no_bias = fn.Dense(4, use_bias=False, w_init="ones")
    params, _ = no_bias.init(key, x)
    assert set(params) == {"w"}
    np.testing.assert_allclose(
        no_bias.apply(params, (), x)[0], x.sum(-1, keepdims=True) * np.ones(4), rtol=1e-5
    )


def test_dense_dtypes(key):
    layer = fn.Dense(3, dtype=jnp.bfloat16)
    params, _ = layer.init(key, jnp.zeros((2, 4)))
    assert params["w"].dtype == jnp.float32
    assert layer.apply(params, (), jnp.ones((2, 4)))[0].dtype == jnp.bfloat16
    plain = fn.Dense(3)
    params, _ = plain.init(key, jnp.zeros((2, 4), jnp.int32))
    assert plain.apply(params, (), jnp.ones((2, 4), jnp.int32))[0].dtype == jnp.float32
    half = fn.Dense(3, param_dtype=jnp.bfloat16)
    params, _ = half.init(key, jnp.zeros((2, 4), jnp.bfloat16))
    assert half.apply(params, (), jnp.ones((2, 4), jnp.bfloat16))[0].dtype == jnp.bfloat16


def test_dense_errors(key):
    with pytest.raises(ValueError, match=r"Dense: `features` must be an int >= 1, got 0"):
        fn.Dense(0)
    with pytest.raises(ValueError, match="unknown initializer 'glorot'"):
        fn.Dense(2, w_init="glorot")
    with pytest.raises(TypeError, match=r"call it to make the initializer: `he_normal\(\)`"):
        fn.Dense(2, w_init=initializers.he_normal)
    with pytest.raises(LayerError, match=r"^Dense\(2\): expected inputs with at least one axis"):
        fn.Dense(2).init(key, jnp.zeros(()))
    with pytest.raises(LayerError, match=r"^Dense\(2\): expected inputs to be a single array"):
        fn.Dense(2).init(key, (jnp.zeros((1, 2)), jnp.zeros((1, 2))))


def test_embedding_lookup_and_tied_projection(key):
    emb = fn.Embedding(10, 4)
    ids = jnp.array([[0, 3, 9], [1, 1, 2]])
    params, state = emb.init(key, ids)
    table = np.asarray(params["table"])
    np.testing.assert_allclose(np.std(table), 0.5, rtol=0.5)
    vectors, _ = jax.jit(emb.apply)(params, state, ids)
    np.testing.assert_array_equal(vectors, table[np.asarray(ids)])
    logits, _ = emb.apply(params, state, vectors)
    np.testing.assert_allclose(logits, np.asarray(vectors) @ table.T, rtol=1e-5, atol=1e-6)
    # tying through `shared`: one table, used for the lookup and the output
    lm = fn.shared(emb, lambda e: fn.serial(e, fn.Dense(4), e))
    params, state = lm.init(key, ids)
    assert lm.apply(params, state, ids)[0].shape == (2, 3, 10)


def test_embedding_errors(key):
    emb = fn.Embedding(10, 4)
    with pytest.raises(LayerError, match=r"Embedding\(10, 4\): floating inputs .* need last dim"):
        emb.init(key, jnp.zeros((2, 3)))
    with pytest.raises(LayerError, match="expected integer ids, got dtype bool"):
        emb.init(key, jnp.zeros((2, 3), bool))
    with pytest.raises(ValueError, match="`num_embeddings` must be an int >= 1"):
        fn.Embedding(0, 3)


def test_dropout_statistics_and_scaling(key):
    x = jnp.ones((200, 100))
    y, _ = fn.Dropout(0.3).apply((), (), x, key=key, train=True)
    kept = np.asarray(y) != 0
    assert abs(kept.mean() - 0.7) < 0.01
    np.testing.assert_allclose(np.asarray(y)[kept], 1 / 0.7, rtol=1e-6)
    assert (fn.Dropout(1.0).apply((), (), x, key=key, train=True)[0] == 0).all()
    y, _ = fn.Dropout(0.5, broadcast_axes=(1,)).apply((), (), x, key=key, train=True)
    assert ((y == 0).all(1) | (y != 0).all(1)).all()
    with pytest.raises(ValueError, match=r"`drop_rate` must be a number in \[0, 1\], got 1.5"):
        fn.Dropout(1.5)


def test_flatten_and_reshape(key):
    x = jnp.arange(24.0).reshape(2, 3, 4)
    np.testing.assert_array_equal(fn.Flatten().apply((), (), x)[0], np.arange(24.0).reshape(2, 12))
    np.testing.assert_array_equal(
        fn.Reshape((2, -1)).apply((), (), x)[0], np.arange(24.0).reshape(2, 2, 6)
    )
    with pytest.raises(LayerError, match=r"Reshape\(\(5, -1\)\): cannot reshape examples of shape"):
        fn.Reshape((5, -1)).init(key, x)
    with pytest.raises(ValueError, match="at most one -1"):
        fn.Reshape((-1, -1))
    with pytest.raises(LayerError, match="Flatten: expected inputs with a batch axis"):
        fn.Flatten().init(key, jnp.zeros(()))


ACTIVATIONS = [
    (fn.Relu(), lambda x: np.maximum(x, 0)),
    (fn.LeakyRelu(0.2), lambda x: np.where(x >= 0, x, 0.2 * x)),
    (fn.Elu(), lambda x: np.where(x > 0, x, np.expm1(x))),
    (
        fn.Selu(),
        lambda x: 1.0507009873554805 * np.where(x > 0, x, 1.6732632423543772 * np.expm1(x)),
    ),
    (fn.Gelu(), lambda x: x * stats.norm.cdf(x)),
    (
        fn.Gelu(approximate=True),
        lambda x: 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3))),
    ),
    (fn.Silu(), lambda x: x * special.expit(x)),
    (fn.Sigmoid(), special.expit),
    (fn.Tanh(), np.tanh),
    (fn.Softplus(), lambda x: np.log1p(np.exp(x))),
    (fn.Softmax(), lambda x: special.softmax(x, axis=-1)),
    (fn.LogSoftmax(axis=0), lambda x: special.log_softmax(x, axis=0)),
]


@pytest.mark.parametrize("layer,ref", ACTIVATIONS, ids=[repr(a[0]) for a in ACTIVATIONS])
def test_activation_layers_match_numpy(layer, ref):
    x = np.linspace(-4, 4, 24, dtype=np.float32).reshape(4, 6)
    y, state = jax.jit(layer.apply)((), (), x)
    np.testing.assert_allclose(y, ref(x.astype(np.float64)), rtol=2e-5, atol=2e-6)
    assert state == ()


@pytest.mark.parametrize(
    "name,scale,fan",
    [
        ("glorot_uniform", 2, "avg"),
        ("xavier_normal", 2, "avg"),
        ("he_uniform", 2, "in"),
        ("kaiming_normal", 2, "in"),
        ("lecun_uniform", 1, "in"),
        ("lecun_normal", 1, "in"),
    ],
)
def test_variance_scaling_initializers(name, scale, fan):
    # a conv-like kernel (3, 5, in=30, out=50): the window multiplies both fans
    w = np.asarray(initializers.get(name)(jax.random.key(1), (3, 5, 30, 50)))
    fan_in, fan_out = 15 * 30, 15 * 50
    var = scale / (fan_in if fan == "in" else fan_in + fan_out)
    np.testing.assert_allclose(w.var(), var, rtol=0.04)
    assert abs(w.mean()) < 4 * math.sqrt(var / w.size)


def test_other_initializers():
    k = jax.random.key(2)
    assert (initializers.zeros()(k, (3,)) == 0).all()
    assert (initializers.ones()(k, (3,)) == 1).all()
    w = np.asarray(initializers.uniform(-2.0, 3.0)(k, (100000,)))
    assert w.min() >= -2 and w.max() < 3 and abs(w.mean() - 0.5) < 0.05
    w = np.asarray(initializers.normal(0.1, mean=1.0)(k, (100000,)))
    np.testing.assert_allclose([w.mean(), w.std()], [1.0, 0.1], rtol=0.02)
    q = np.asarray(initializers.orthogonal()(k, (6, 4)))
    np.testing.assert_allclose(q.T @ q, np.eye(4), atol=1e-5)
    with pytest.raises(ValueError, match="need `minval < maxval`"):
        initializers.uniform(1.0, 0.0)
    with pytest.raises(TypeError, match="must be a name or a function"):
        initializers.get(3)
