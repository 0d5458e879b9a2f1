"""The Layer contract: wrapping, specs, errors with paths, keys."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import funcnet as fn
from funcnet.core import Layer, LayerError


def test_plain_functions_are_layers(key):
    for f in (jax.nn.relu, jnp.tanh, lambda x: 2 * x):
        layer = fn.as_layer(f)
        assert layer.init(key, jnp.zeros(3)) == ((), ())
        y, s = layer.apply((), (), jnp.array([-1.0, 1.0]))
        np.testing.assert_allclose(y, f(jnp.array([-1.0, 1.0])))
        assert s == ()


def test_as_layer_rejects_non_callables_and_classes():
    with pytest.raises(TypeError, match="expected a Layer or a function"):
        fn.as_layer(3)
    with pytest.raises(TypeError, match=r"got `Relu` itself .* e.g. `Relu\(...\)`"):
        fn.serial(fn.Dense(3), fn.Relu)

    class Block:
        def __call__(self, x):
            return x

    with pytest.raises(TypeError, match="got `Block` itself"):
        fn.as_layer(Block)
    assert fn.as_layer(Block()).apply((), (), 1.0)[0] == 1.0


def test_layer_needs_callables():
    with pytest.raises(TypeError, match="needs two callables"):
        Layer(1, 2)


def test_stax_pairs_are_accepted(key):
    def init(k, x):
        return {"s": jnp.ones(x.shape[-1])}, ()

    def apply(p, s, x, *, key=None, train=False):
        return x * p["s"], s

    model = fn.serial((init, apply), jnp.tanh)
    params, _ = model.init(key, jnp.zeros((2, 3)))
    assert params[0]["s"].shape == (3,)


def test_output_spec_and_init_spec():
    model = fn.serial(fn.Dense(7), jax.nn.relu, fn.Dense(2))
    spec = jax.ShapeDtypeStruct((5, 3), jnp.float32)
    assert fn.output_spec(model, spec) == jax.ShapeDtypeStruct((5, 2), jnp.float32)
    params, state = fn.init_spec(model, spec)
    assert params[0]["w"].shape == (3, 7) and state == ((), (), ())
    real_params, real_state = model.init(jax.random.key(1), jnp.zeros((5, 3)))
    assert fn.output_spec(model, jnp.zeros((5, 3)), real_params, real_state).shape == (5, 2)


def test_eval_shape_init_allocates_nothing():
    model = fn.serial(fn.Dense(4096), fn.Dense(4096))
    params, _ = jax.eval_shape(
        model.init, jax.random.key(0), jax.ShapeDtypeStruct((1, 4096), jnp.float32)
    )
    assert all(isinstance(p, jax.ShapeDtypeStruct) for p in jax.tree.leaves(params))


def test_error_names_the_full_path(key):
    model = fn.serial(fn.Dense(8), jax.nn.relu, fn.Flatten(), fn.Dense(10))
    params, state = model.init(key, jnp.zeros((2, 3136)))
    with pytest.raises(LayerError) as info:
        model.apply(params, state, jnp.zeros((128, 2304)))
    assert str(info.value) == (
        "serial[0] Dense(8): expected inputs with last dimension 3136, got shape (128, 2304)."
    )
    assert info.value.path == ["serial[0]", "Dense(8)"]
    assert isinstance(info.value, ValueError)


def test_nested_paths_and_named_children(key):
    model = fn.serial(encoder=fn.serial(fn.Dense(4), fn.Reshape((3, 3))), head=fn.Dense(2))
    with pytest.raises(LayerError, match=r"^serial\[encoder\] serial\[1\] Reshape\(\(3, 3\)\): "):
        model.init(key, jnp.zeros((2, 5)))


def test_error_under_jit_and_eval_shape_is_the_same_one_line(key):
    model = fn.serial(fn.Dense(3), fn.Dense(2))
    params, state = model.init(key, jnp.zeros((1, 4)))
    with pytest.raises(LayerError, match=r"^serial\[0\] Dense\(3\): expected inputs") as info:
        jax.jit(model.apply)(params, state, jnp.zeros((1, 5)))
    assert "\n" not in str(info.value)
    with pytest.raises(LayerError, match=r"serial\[0\] Dense\(3\)"):
        jax.eval_shape(model.apply, params, state, jax.ShapeDtypeStruct((1, 6), jnp.float32))


def test_foreign_errors_get_a_note_with_the_path(key):
    model = fn.serial(fn.Dense(4), lambda x: x @ jnp.ones((5, 2)))
    params, state = model.init(key, jnp.zeros((2, 3)))
    with pytest.raises(TypeError) as info:
        model.apply(params, state, jnp.zeros((2, 3)))
    assert "funcnet: raised inside serial[1] <lambda>" in info.value.__notes__


def test_dropout_without_key_names_the_layer(key):
    model = fn.serial(fn.Dense(4), fn.serial(fn.Dropout(0.1)))
    params, state = model.init(key, jnp.zeros((2, 3)))
    with pytest.raises(LayerError, match=r"^serial\[1\] serial\[0\] Dropout\(0.1\): needs a"):
        model.apply(params, state, jnp.zeros((2, 3)), train=True)


def test_children_get_distinct_folded_keys(key):
    model = fn.fanout(fn.Dropout(0.5), fn.Dropout(0.5))
    x = jnp.ones((1, 64))
    (a, b), _ = model.apply(((), ()), ((), ()), x, key=key, train=True)
    assert not np.array_equal(a, b)
    np.testing.assert_array_equal(
        a, fn.Dropout(0.5).apply((), (), x, key=jax.random.fold_in(key, 0), train=True)[0]
    )
    # init keys too: two identical Dense children start differently
    params, _ = fn.serial(fn.Dense(4), fn.Dense(4)).init(key, jnp.zeros((1, 4)))
    assert not np.allclose(params[0]["w"], params[1]["w"])


def test_repr_is_readable():
    model = fn.serial(fn.Dense(8), jax.nn.relu, fn.residual(fn.Dense(8)), fn.Dropout(0.2))
    assert repr(model) == "serial(Dense(8), relu, residual(Dense(8)), Dropout(0.2))"


def test_spec_of():
    assert fn.spec_of((jnp.zeros((2,), jnp.int32), 1.0)) == (
        jax.ShapeDtypeStruct((2,), jnp.int32),
        jax.ShapeDtypeStruct((), jnp.float32),
    )


def test_layer_error_prepend():
    err = LayerError("bad", path=["Dense(2)"]).prepend("serial[1]")
    assert str(err) == "serial[1] Dense(2): bad"
    assert LayerError("plain").path == []
