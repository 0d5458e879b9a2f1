"""Combinators against hand-composed references."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import funcnet as fn
from funcnet.core import LayerError


def dense_ref(p, x):
    return np.asarray(x) @ np.asarray(p["w"]) + np.asarray(p["b"])


def test_serial_composes_in_order(key):
    model = fn.serial(fn.Dense(5), jnp.tanh, fn.Dense(2))
    x = jax.random.normal(key, (3, 4))
    params, state = model.init(key, x)
    y, _ = model.apply(params, state, x)
    ref = dense_ref(params[2], np.tanh(dense_ref(params[0], x)))
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-6)


def test_serial_named_children(key):
    model = fn.serial(enc=fn.Dense(3), dec=fn.Dense(4))
    params, state = model.init(key, jnp.zeros((1, 4)))
    assert list(params) == ["enc", "dec"] and state == {"enc": (), "dec": ()}
    x = jnp.ones((2, 4))
    y, _ = model.apply(params, state, x)
    np.testing.assert_allclose(y, dense_ref(params["dec"], dense_ref(params["enc"], x)), rtol=1e-5)


def test_serial_argument_errors(key):
    with pytest.raises(TypeError, match="either positionally or by keyword"):
        fn.serial(fn.Dense(2), head=fn.Dense(3))
    with pytest.raises(ValueError, match="needs at least one layer"):
        fn.serial()
    model = fn.serial(fn.Dense(2), fn.Dense(3))
    params, state = model.init(key, jnp.zeros((1, 2)))
    with pytest.raises(LayerError, match=r"^serial: expected params as a tuple of 2 entries"):
        model.apply(params[:1], state, jnp.zeros((1, 2)))
    named = fn.serial(a=fn.Dense(2))
    with pytest.raises(LayerError, match=r"expected state as a dict with keys \['a'\]"):
        named.apply({"a": params[0]}, {"b": ()}, jnp.zeros((1, 2)))


def test_parallel_and_fanout(key):
    model = fn.parallel(fn.Dense(2), jnp.sin)
    xs = (jnp.ones((1, 3)), jnp.ones((1, 4)))
    params, state = model.init(key, xs)
    (a, b), _ = model.apply(params, state, xs)
    np.testing.assert_allclose(a, dense_ref(params[0], xs[0]), rtol=1e-6)
    np.testing.assert_allclose(b, np.sin(1.0) * np.ones((1, 4)), rtol=1e-6)
    with pytest.raises(LayerError, match=r"^parallel: expected a tuple of 2 inputs .* got a tuple"):
        model.init(key, xs[:1])
    with pytest.raises(LayerError, match=r"got ndarray|got ArrayImpl"):
        model.apply(params, state, jnp.ones((1, 3)))

    heads = fn.fanout(fn.Dense(2), jnp.cos)
    params, state = heads.init(key, xs[0])
    (a, b), _ = heads.apply(params, state, xs[0])
    np.testing.assert_allclose(a, dense_ref(params[0], xs[0]), rtol=1e-6)
    np.testing.assert_allclose(b, np.cos(xs[0]), rtol=1e-6)


def test_concat(key):
    model = fn.concat(fn.Dense(2), lambda x: x, axis=-1)
    x = jax.random.normal(key, (3, 4))
    params, state = model.init(key, x)
    y, _ = model.apply(params, state, x)
    np.testing.assert_allclose(y, np.concatenate([dense_ref(params[0], x), x], -1), rtol=1e-5)
    bad = fn.concat(fn.Dense(2), fn.Reshape((2, 2)))
    with pytest.raises(LayerError, match=r"^concat: cannot concatenate the branch outputs"):
        bad.init(key, x)
    with pytest.raises(TypeError, match="`axis` must be an int"):
        fn.concat(fn.Dense(2), axis="last")


def test_residual(key):
    model = fn.residual(fn.Dense(4), jnp.tanh)
    x = jax.random.normal(key, (2, 4))
    params, state = model.init(key, x)
    y, _ = model.apply(params, state, x)
    np.testing.assert_allclose(y, x + np.tanh(dense_ref(params[0], x)), rtol=1e-5, atol=1e-6)
    with pytest.raises(LayerError, match=r"^serial\[1\] residual: the block must keep its input"):
        fn.serial(fn.Dense(4), fn.residual(fn.Dense(3))).init(key, x)


def test_shared_siamese_gradients_add_up(key):
    model = fn.shared(fn.Dense(3), lambda enc: fn.parallel(enc, enc))
    x1, x2 = jnp.ones((2, 4)), 2 * jnp.ones((2, 4))
    params, state = model.init(key, (x1, x2))
    assert params["body"] == ((), ())
    (y1, y2), _ = model.apply(params, state, (x1, x2))
    np.testing.assert_allclose(y1, dense_ref(params["shared"], x1), rtol=1e-6)
    np.testing.assert_allclose(y2, dense_ref(params["shared"], x2), rtol=1e-6)

    def loss(p):
        (a, b), _ = model.apply(p, state, (x1, x2))
        return a.sum() + b.sum()

    g = jax.grad(loss)(params)["shared"]
    # d/dw of sum(x1 @ w) + sum(x2 @ w) = column sums of x1 and x2, added
    np.testing.assert_allclose(g["w"], np.tile((x1 + x2).sum(0)[:, None], (1, 3)), rtol=1e-6)
    np.testing.assert_allclose(g["b"], 4 * np.ones(3), rtol=1e-6)


def test_shared_in_sequence_and_under_jit(key):
    tied = fn.shared(fn.Dense(4), lambda d: fn.serial(d, jnp.tanh, d))
    x = jax.random.normal(key, (2, 4))
    params, state = tied.init(key, x)
    y, _ = jax.jit(tied.apply)(params, state, x)
    p = params["shared"]
    np.testing.assert_allclose(y, dense_ref(p, np.tanh(dense_ref(p, x))), rtol=1e-5, atol=1e-6)


def test_shared_errors(key):
    bad = fn.shared(fn.Dense(4), lambda d: fn.serial(d, fn.Dense(3), d))
    with pytest.raises(LayerError, match=r"shared Dense\(4\): used with inputs float32\[2, 3\]"):
        bad.init(key, jnp.zeros((2, 5)))
    unused = fn.shared(fn.Dense(4), lambda d: fn.Dense(2))
    with pytest.raises(LayerError, match="never uses the shared layer"):
        unused.init(key, jnp.zeros((2, 5)))
    refs = []
    fn.shared(fn.Dense(4), lambda d: refs.append(d) or d)
    with pytest.raises(LayerError, match="only be used inside the model returned by `build`"):
        refs[0].init(key, jnp.zeros((1, 4)))


def test_repeat_matches_a_loop_and_traces_once(key):
    traces = []

    def counted(x):
        traces.append(1)
        return jnp.tanh(x)

    model = fn.repeat(fn.serial(fn.Dense(4), counted), 5)
    x = jax.random.normal(key, (2, 4))
    params, state = model.init(key, x)
    assert params[0]["w"].shape == (5, 4, 4)
    traces.clear()
    y, _ = jax.jit(model.apply)(params, state, x)
    assert len(traces) == 1
    ref = np.asarray(x)
    for i in range(5):
        ref = np.tanh(dense_ref(jax.tree.map(lambda a, i=i: a[i], params[0]), ref))
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-6)
    # copies differ: each got its own init key
    assert not np.allclose(params[0]["w"][0], params[0]["w"][1])


def test_repeat_keys_and_unroll(key):
    model = fn.repeat(fn.Dropout(0.5), 2, unroll=True)
    x = jnp.ones((1, 32))
    y, _ = model.apply((), (), x, key=key, train=True)
    d = fn.Dropout(0.5).apply
    ref = d(
        (),
        (),
        d((), (), x, key=jax.random.fold_in(key, 0), train=True)[0],
        key=jax.random.fold_in(key, 1),
        train=True,
    )[0]
    np.testing.assert_array_equal(y, ref)


def test_repeat_errors(key):
    for n in (0, -1, 2.0, True):
        with pytest.raises(ValueError, match="`n` must be an int >= 1"):
            fn.repeat(fn.Dense(2), n)
    with pytest.raises(LayerError, match=r"^repeat: the block must keep its input's shape"):
        fn.repeat(fn.Dense(3), 2).init(key, jnp.zeros((1, 4)))
    model = fn.repeat(fn.Dense(4), 3)
    params, state = model.init(key, jnp.zeros((1, 4)))
    with pytest.raises(LayerError, match="leading axis of size 3"):
        model.apply(jax.tree.map(lambda a: a[:2], params), state, jnp.zeros((1, 4)))
    with pytest.raises(LayerError, match=r"^repeat Dense\(4\): expected inputs with last dim"):
        model.apply(params, state, jnp.zeros((1, 5)))


def test_gradient_check_on_a_composed_model(key):
    from jax.test_util import check_grads

    model = fn.serial(
        fn.Dense(6),
        jnp.tanh,
        fn.residual(fn.Dense(6), jax.nn.sigmoid),
        fn.concat(fn.Dense(2), jnp.sin),
    )
    x = jax.random.normal(key, (3, 4))
    params, state = model.init(key, x)

    def f(p, x):
        return model.apply(p, state, x)[0]

    check_grads(f, (params, x), order=2, modes=("fwd", "rev"), atol=1e-2, rtol=1e-2)


# ---------------------------------------------------------------------------------------------
# Sequence inputs: one dict convention, read by split_inputs


def test_split_inputs_and_replace_x():
    x = jnp.ones((2, 3, 4))
    assert fn.combinators.INPUT_KEYS == ("x", "mask", "lengths", "carry", "memory", "memory_mask")
    entries, is_dict = fn.combinators.split_inputs(x)
    assert entries["x"] is x and not is_dict
    inputs = {"x": x, "lengths": jnp.array([3, 1]), "carry": None}
    entries, is_dict = fn.combinators.split_inputs(inputs)
    assert sorted(entries) == ["lengths", "x"] and is_dict
    out = fn.combinators.replace_x(inputs, True, 2 * x)
    assert out["lengths"] is inputs["lengths"] and out["carry"] is None
    assert fn.combinators.replace_x(x, False, 1) == 1


def test_split_inputs_errors():
    split = fn.combinators.split_inputs
    x = jnp.ones((2, 3, 4))
    with pytest.raises(
        LayerError,
        match=r"^unknown input keys \['lenghts'\]; the layer accepts a dict with keys \['x', "
        r"'lengths'\] \(or a plain array \(N, T, F\) for 'x'\)\.$",
    ):
        split({"x": x, "lenghts": 1}, ("x", "lengths"), layout="(N, T, F)")
    with pytest.raises(LayerError, match=r"^the input dict needs the keys \['x'\], got keys \[\]"):
        split({"mask": None})
    with pytest.raises(LayerError, match=r"^expected a dict with keys \['x', 'memory'\]"):
        split(x, require=("x", "memory"))
    with pytest.raises(LayerError, match=r"^expected an array \(N, T, D\) or a dict with keys"):
        split([x])


def test_routing_over_the_recurrent_keys(key):
    """on_x, select_keys and positional layers pass `lengths` on to an RNN."""
    x = jnp.ones((2, 5, 4))
    inputs = {"x": x, "lengths": jnp.array([5, 2])}
    model = fn.serial(
        fn.on_x(fn.Dense(6)),
        fn.SinusoidalEncoding(),
        fn.select_keys("x", "lengths"),
        fn.RNN(fn.GRUCell(3), return_sequences=False),
    )
    params, state = model.init(key, {**inputs, "memory": jnp.ones((2, 1, 4))})
    y, _ = model.apply(params, state, inputs)
    assert y.shape == (2, 3)
    # the second sequence stops at its length: padding after it does not change the output
    y2, _ = model.apply(params, state, {**inputs, "x": x.at[1, 3:].set(9.0)})
    np.testing.assert_allclose(y, y2, rtol=1e-6)
