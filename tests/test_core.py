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


# ---------------------------------------------------------------------------------------------
# A Layer is a pytree with no leaves, hashed and compared by its functions


def test_layer_is_a_pytree_without_leaves():
    model = fn.serial(enc=fn.Dense(4), head=fn.Dense(2))  # dict children
    assert jax.tree.leaves(model) == []
    assert jax.tree.map(lambda x: x + 1, model) is model
    flat, treedef = jax.tree.flatten(model)
    assert flat == [] and jax.tree.unflatten(treedef, flat) is model


def test_jit_takes_a_model_argument_and_does_not_retrace(key):
    model = fn.serial(fn.Dense(3), jax.nn.relu)
    params, state = model.init(key, jnp.zeros((2, 4)))
    traces = []

    @jax.jit
    def run(model, params, x):
        traces.append(1)
        return model.apply(params, state, x)[0]

    x = jnp.ones((2, 4))
    want = model.apply(params, state, x)[0]
    np.testing.assert_allclose(run(model, params, x), want)
    np.testing.assert_allclose(run(model, params, 2 * x), model.apply(params, state, 2 * x)[0])
    assert len(traces) == 1
    other = fn.serial(fn.Dense(3), jax.nn.relu)  # a different model: traced on its own
    run(other, params, x)
    assert len(traces) == 2
    run(model, params, x)
    assert len(traces) == 2


def test_vmap_and_grad_take_a_model_argument(key):
    model = fn.Dense(3)
    params, state = model.init(key, jnp.zeros((1, 4)))
    xs = jnp.ones((5, 2, 4))
    ys = jax.vmap(lambda m, x: m.apply(params, state, x)[0], in_axes=(None, 0))(model, xs)
    assert ys.shape == (5, 2, 3)
    ys0 = jax.vmap(lambda m, x: m.apply(params, state, x)[0])(model, xs)  # in_axes=0 too
    np.testing.assert_allclose(ys, ys0)

    def loss(p, m):
        return jnp.sum(m.apply(p, state, xs[0])[0] ** 2)

    grads = jax.grad(loss)(params, model)
    assert jax.tree.map(jnp.shape, grads) == {"b": (3,), "w": (4, 3)}


def test_layer_equality_and_hash_follow_its_functions():
    a = fn.serial(x=fn.Dense(2), y=fn.Dropout(0.1))  # unhashable dict of children
    b = fn.serial(x=fn.Dense(2), y=fn.Dropout(0.1))
    assert a == a and hash(a) == hash(a)
    assert (a == b) is False and (a != b) is True
    renamed = Layer(a.init, a.apply, "renamed")
    assert renamed == a and hash(renamed) == hash(a)
    assert {a: 1, b: 2}[renamed] == 1
    assert a != (a.init, a.apply, a.name, a.children)  # not tuple equality
    assert (a.init, a.apply, a.name, a.children) != a
    init, apply = a[:2]  # still a NamedTuple
    assert (init, apply) == (a.init, a.apply) and a._fields == ("init", "apply", "name", "children")


def test_a_model_inside_a_pytree(key):
    model = fn.serial(fn.Dense(2), jnp.tanh)
    params, state = model.init(key, jnp.zeros((1, 3)))
    bundle = {"model": model, "params": params, "extra": (model, 1.0)}
    assert len(jax.tree.leaves(bundle)) == 3  # w, b and 1.0
    doubled = jax.tree.map(lambda v: 2 * v, bundle)
    assert doubled["model"] is model and doubled["extra"][0] is model
    np.testing.assert_allclose(doubled["params"][0]["w"], 2 * params[0]["w"])

    @jax.jit
    def run(bundle, x):
        return bundle["model"].apply(bundle["params"], state, x)[0]

    assert run(bundle, jnp.ones((4, 3))).shape == (4, 2)


def test_equinox_style_filtering(key):
    """Split a pytree into arrays and the rest, jit over the arrays, combine again."""
    model = fn.Dense(2)
    params, state = model.init(key, jnp.zeros((1, 3)))
    tree = {"model": model, "params": params, "name": "run"}

    def is_array(v):
        return isinstance(v, jax.Array)

    dynamic = jax.tree.map(lambda v: v if is_array(v) else None, tree)
    static = jax.tree.map(lambda v: None if is_array(v) else v, tree)
    assert static["model"] is model and dynamic["model"] is model  # no leaves to split

    def combine(a, b):
        return jax.tree.map(lambda x, y: y if x is None else x, a, b, is_leaf=lambda v: v is None)

    whole = combine(dynamic, static)
    assert whole["model"] is model and whole["name"] == "run"
    y = jax.jit(lambda d, x: combine(d, static)["model"].apply(d["params"], state, x)[0])(
        dynamic, jnp.ones((4, 3))
    )
    assert y.shape == (4, 2)


# ---------------------------------------------------------------------------------------------
# Paths, stateless layers, the error family


def test_path_str_and_tree_paths():
    tree = {"encoder": ({"w": 1, "b": 2}, ()), "head": [3]}
    assert fn.core.tree_paths(tree) == ["encoder/0/b", "encoder/0/w", "head/0"]
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    assert fn.core.path_str(flat[0][0]) == "encoder/0/b"
    assert fn.core.path_str(()) == ""


def test_stateless_checks_at_init_and_names_errors(key):
    calls = []

    def check(x):
        calls.append(x.shape)
        if x.ndim != 2:
            raise LayerError(f"expected a matrix, got rank {x.ndim}.")

    layer = fn.stateless("Transpose", lambda x: x.T, check)
    assert layer.init(key, jnp.zeros((2, 3))) == ((), ())
    assert calls == [(2, 3)]
    y, s = layer.apply((), (), jnp.ones((2, 3)), key=key, train=True)
    assert y.shape == (3, 2) and s == ()
    with pytest.raises(LayerError, match=r"^serial\[1\] Transpose: expected a matrix, got rank 1"):
        fn.serial(jnp.tanh, layer).init(key, jnp.zeros(3))
    plain = fn.stateless("Double", lambda x: 2 * x)
    assert plain.init(key, "anything") == ((), ()) and repr(plain) == "Double"


def test_call_with_path_and_prepend_path():
    def bad():
        raise LayerError("broken", path=["Dense(2)"])

    with pytest.raises(LayerError, match=r"^serial\[3\] Dense\(2\): broken$"):
        fn.core.call_with_path("serial[3]", bad)
    err = KeyError("k")
    fn.core.prepend_path(err, "Dense(2)")
    fn.core.prepend_path(err, "serial[0]")
    assert err.__notes__ == ["funcnet: raised inside serial[0] Dense(2)"]


def test_one_error_family():
    from funcnet.checkpoint import CheckpointError
    from funcnet.export import ExportError

    for cls in (LayerError, CheckpointError, ExportError):
        assert issubclass(cls, fn.FuncnetError) and issubclass(cls, ValueError)
    assert fn.FuncnetError is fn.core.FuncnetError and issubclass(fn.FuncnetError, Exception)
    with pytest.raises(fn.FuncnetError, match=r"^Dense\(2\): expected inputs with last"):
        fn.Dense(2).apply({"w": jnp.ones((3, 2)), "b": jnp.ones(2)}, (), jnp.ones((1, 4)))


def test_version_has_one_home():
    from funcnet.version import __version__

    assert fn.__version__ == __version__
