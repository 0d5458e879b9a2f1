"""Export: jax.export artifacts that run in a fresh process without the model's code."""

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import funcnet as fn
from funcnet.core import Layer
from funcnet.export import ExportedModel, ExportError, export, load_exported

ROOT = Path(__file__).parent.parent


def Scale() -> Layer:
    """A user-written layer that only this test module knows (the fresh process cannot)."""

    def init(key, x):
        del key
        return {"scale": jnp.linspace(0.5, 1.5, x.shape[-1], dtype=x.dtype)}, ()

    def apply(params, state, x, *, key=None, train=False):
        del key, train
        return x * params["scale"] + 1.0, state

    return Layer(init, apply, "Scale")


def _cnn():
    return fn.serial(
        fn.Conv(4, (3, 3)),
        fn.BatchNorm(),
        jax.nn.relu,
        fn.Flatten(),
        fn.Dense(8),
        Scale(),
        fn.Dropout(0.5),
        fn.Dense(3),
    )


def _init(model, spec, key):
    params, state = model.init(key, spec)
    # non-trivial BatchNorm statistics, so the state matters
    state = jax.tree.map(lambda s: s + 0.25 if s.dtype == jnp.float32 else s, state)
    return params, state


def _expected(model, params, state, x):
    return model.apply(params, state, x)[0]


_FRESH = textwrap.dedent(
    """
    import sys
    import numpy as np
    import jax
    from funcnet.export import load_exported
    assert not any("test_export" in name for name in sys.modules)
    for directory in sys.argv[1:]:
        model = load_exported(directory)
        x = np.load(directory + "/x.npy")
        np.save(directory + "/y.npy", np.asarray(model(x)))
    print("ok")
    """
)


def test_artifact_runs_in_a_fresh_process(tmp_path, key):
    model = _cnn()
    spec = jax.ShapeDtypeStruct((1, 6, 6, 2), jnp.float32)
    params, state = _init(model, spec, key)
    x = np.random.default_rng(0).normal(size=(5, 6, 6, 2)).astype(np.float32)
    dirs = []
    for params_as_args in (False, True):
        path = tmp_path / f"args_{params_as_args}"
        export(model, params, state, spec, path, params_as_args=params_as_args)
        np.save(path / "x.npy", x)
        dirs.append(str(path))
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))
    if jax.config.jax_compilation_cache_dir:  # the tests' persistent cache, as in conftest
        env["JAX_COMPILATION_CACHE_DIR"] = str(jax.config.jax_compilation_cache_dir)
    result = subprocess.run(
        [sys.executable, "-c", _FRESH, *dirs],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    expected = np.asarray(_expected(model, params, state, x))
    for directory in dirs:
        got = np.load(Path(directory) / "y.npy")
        assert got.shape == (5, 3)
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_description_and_in_process_load(tmp_path, key):
    model = _cnn()
    spec = jax.ShapeDtypeStruct((2, 6, 6, 2), jnp.float32)
    params, state = _init(model, spec, key)
    path = export(model, params, state, spec, tmp_path / "e")
    assert sorted(os.listdir(path)) == ["model.jaxexport", "model.json"]
    description = json.loads((Path(path) / "model.json").read_text())
    assert description["inputs"] == [{"path": "", "shape": ["b", 6, 6, 2], "dtype": "float32"}]
    assert description["outputs"] == [{"path": "", "shape": ["b", 3], "dtype": "float32"}]
    assert description["platforms"] == [jax.default_backend()]
    assert description["jax_version"] == jax.__version__
    assert description["param_count"] == sum(a.size for a in jax.tree.leaves(params))
    assert description["model"].startswith("serial(Conv")
    loaded = load_exported(path)
    assert isinstance(loaded, ExportedModel) and "serial" in repr(loaded)
    for n in (1, 3):
        x = jnp.ones((n, 6, 6, 2))
        np.testing.assert_allclose(
            loaded(x), _expected(model, params, state, x), rtol=1e-5, atol=1e-6
        )


def test_pytree_inputs_and_outputs(tmp_path, key):
    model = fn.serial(
        lambda d: jnp.concatenate([d["a"], d["b"]], axis=-1),
        fn.fanout(fn.Dense(2), fn.Dense(3)),
    )
    spec = {"a": jnp.zeros((1, 2)), "b": jnp.zeros((1, 3))}
    params, state = model.init(key, spec)
    loaded = load_exported(export(model, params, state, spec, tmp_path / "e"))
    assert [s["path"] for s in loaded.description["inputs"]] == ["a", "b"]
    assert [s["shape"] for s in loaded.description["outputs"]] == [["b", 2], ["b", 3]]
    x = {"a": jnp.ones((4, 2)), "b": jnp.ones((4, 3))}
    got, want = loaded(x), _expected(model, params, state, x)
    assert isinstance(got, tuple) and len(got) == 2
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)


def test_params_as_args_takes_other_weights(tmp_path, key):
    model = fn.serial(fn.Dense(4), jax.nn.tanh, fn.Dense(2))
    spec = jax.ShapeDtypeStruct((1, 3), jnp.float32)
    params, state = model.init(key, spec)
    path = export(model, params, state, spec, tmp_path / "e", params_as_args=True)
    assert "params.safetensors" in os.listdir(path)
    loaded = load_exported(path)
    x = jnp.ones((2, 3))
    np.testing.assert_allclose(loaded(x), _expected(model, params, state, x), rtol=1e-6)
    other, _ = model.init(jax.random.key(1), spec)
    np.testing.assert_allclose(
        loaded.apply(other, state, x), _expected(model, other, state, x), rtol=1e-6
    )
    with pytest.raises(ValueError, match=r"expected params and state with 4 arrays in all, got 2"):
        loaded.apply(other[0], (), x)


def test_fixed_shapes_and_input_checks(tmp_path, key):
    model = fn.Dense(2)
    spec = jax.ShapeDtypeStruct((3, 4), jnp.float32)
    params, state = model.init(key, spec)
    loaded = load_exported(
        export(model, params, state, spec, tmp_path / "e", batch_polymorphic=False)
    )
    assert loaded.description["inputs"][0]["shape"] == [3, 4]
    assert loaded(jnp.ones((3, 4))).shape == (3, 2)
    with pytest.raises(ValueError, match=r"expected inputs \['\(root\): float32\[3, 4\]'\] .*got"):
        loaded(jnp.ones((5, 4)))
    poly = load_exported(export(model, params, state, spec, tmp_path / "p"))
    with pytest.raises(ValueError, match=r"float32\['b', 4\].* got \['\(root\): int32\[5, 4\]'\]"):
        poly(jnp.ones((5, 4), jnp.int32))
    with pytest.raises(ValueError, match=r"its parameters are baked in; export with `params_as_"):
        poly.apply(params, state, jnp.ones((5, 4)))


def test_export_errors(tmp_path, key):
    model = fn.Dense(2)
    params, state = model.init(key, jnp.zeros((1, 4)))
    with pytest.raises(
        ValueError, match=r"every input needs a leading batch axis, but \['\(root\)'"
    ):
        export(model, params, state, jax.ShapeDtypeStruct((), jnp.float32), tmp_path / "a")
    with pytest.raises(TypeError, match=r"`input_spec` has no arrays"):
        export(model, params, state, {}, tmp_path / "b")
    # The model needs a concrete batch size: jax's own error, with a note that shows the fix.
    with pytest.raises(
        jax.errors.InconclusiveDimensionOperation,
        match=r"Cannot divide evenly the sizes of shapes \(b, 3\) and \(2, -1\)",
    ) as info:
        export(lambda x: x.reshape(2, -1), (), (), jnp.zeros((4, 3)), tmp_path / "c")
    assert (
        "funcnet.export: exporting with a symbolic batch dimension `b` failed; if the model "
        "needs a concrete batch size, pass `batch_polymorphic=False`."
    ) in info.value.__notes__
    assert not (tmp_path / "c" / "model.json").exists()


def test_load_errors(tmp_path, key):
    model = fn.Dense(2)
    params, state = model.init(key, jnp.zeros((1, 4)))
    path = Path(export(model, params, state, jnp.zeros((1, 4)), tmp_path / "e"))
    with pytest.raises(ValueError, match=r"`.*missing` has no model.json; pass the directory"):
        load_exported(tmp_path / "missing")
    description = (path / "model.json").read_text()
    (path / "model.json").write_text(description[:-10])
    with pytest.raises(ValueError, match=r"model.json` is not valid JSON"):
        load_exported(path)
    (path / "model.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(ValueError, match=r"does not describe a funcnet export"):
        load_exported(path)
    newer = json.loads(description)
    newer["format_version"] = 99
    (path / "model.json").write_text(json.dumps(newer))
    with pytest.raises(ValueError, match=r"format version 99, this funcnet reads up to 1"):
        load_exported(path)
    (path / "model.json").write_text(description)
    raw = bytearray((path / "model.jaxexport").read_bytes())
    raw[len(raw) // 2] ^= 1
    (path / "model.jaxexport").write_bytes(bytes(raw))
    with pytest.raises(ValueError, match=r"model.jaxexport` does not match the checksum"):
        load_exported(path)


def test_export_errors_are_funcnet_errors_naming_the_path(tmp_path, key):
    model = fn.Dense(2)
    params, state = model.init(key, jnp.zeros((1, 4)))
    target = tmp_path / "scalar"
    with pytest.raises(
        ExportError, match=rf"^export to `{re.escape(str(target))}`: with `batch_polymorphic=True`"
    ):
        export(model, params, state, jax.ShapeDtypeStruct((), jnp.float32), target)
    path = Path(export(model, params, state, jnp.zeros((1, 4)), tmp_path / "e"))
    loaded = load_exported(path)
    with pytest.raises(
        fn.FuncnetError, match=rf"^exported model `{re.escape(str(path))}`: expected inputs"
    ):
        loaded(jnp.ones((1, 5)))
    (path / "model.jaxexport").unlink()
    with pytest.raises(
        ExportError,
        match=rf"^load_exported: `{re.escape(str(path / 'model.jaxexport'))}` is missing; the "
        rf"export in `{re.escape(str(path))}` is incomplete",
    ):
        load_exported(path)
    assert issubclass(ExportError, ValueError)
