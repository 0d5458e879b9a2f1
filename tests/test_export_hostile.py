"""Hostile and broken exports: every one raises ExportError naming the file (issue 14)."""

import dataclasses
import hashlib
import json
import os
import re
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import funcnet as fn
from funcnet import export as export_module
from funcnet.export import ExportError, export, load_exported

EDITED = r"the file was edited or damaged: export the model again\.$"


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """A baked-in export of Dense(2) on (b, 4) and a params_as_args one on dict inputs."""
    root = tmp_path_factory.mktemp("exports")
    model = fn.Dense(2)
    params, state = model.init(jax.random.key(0), jnp.zeros((1, 4)))
    export(model, params, state, jnp.zeros((1, 4)), root / "baked")
    two = fn.serial(lambda d: jnp.concatenate([d["a"], d["b"]], -1), fn.Dense(3))
    spec = {"a": jnp.zeros((1, 3)), "b": jnp.zeros((1, 1))}
    two_params, two_state = two.init(jax.random.key(1), spec)
    export(two, two_params, two_state, spec, root / "args", params_as_args=True)
    return root, (model, params, state), (two, two_params, two_state)


@pytest.fixture
def baked(exports, tmp_path):
    """A fresh copy of the baked-in export."""
    return _copy(exports[0] / "baked", tmp_path / "baked")


@pytest.fixture
def args(exports, tmp_path):
    return _copy(exports[0] / "args", tmp_path / "args")


def _copy(source: Path, target: Path) -> Path:
    target.mkdir()
    for file in source.iterdir():
        (target / file.name).write_bytes(file.read_bytes())
    return target


def _edit(path: Path, **changes) -> None:
    """Rewrite model.json with keys changed (a value of ``...`` deletes the key)."""
    description = json.loads((path / "model.json").read_text())
    for key, value in changes.items():
        if value is ...:
            del description[key]
        else:
            description[key] = value
    (path / "model.json").write_text(json.dumps(description))


def _forge(path: Path, artifact: bytes) -> None:
    """Replace the artifact and recompute its checksum, as a forger would."""
    (path / "model.jaxexport").write_bytes(artifact)
    _edit(path, artifact_sha256=hashlib.sha256(artifact).hexdigest())


def _json(path: Path) -> str:
    return re.escape(str(path / "model.json"))


# --------------------------------------------------------------------------- model.json schema

REQUIRED = [
    "format_version", "funcnet_version", "jax_version", "model", "platforms",
    "calling_convention_version", "batch_polymorphic", "params_as_args", "param_count",
    "inputs", "outputs", "artifact", "artifact_sha256",
]  # fmt: skip


@pytest.mark.parametrize("key", REQUIRED)
def test_missing_key(baked, key):
    _edit(baked, **{key: ...})
    expected = f"it has no {key!r}" if key != "format_version" else "'format_version' must be"
    with pytest.raises(ExportError, match=rf"^load_exported: `{_json(baked)}` is malformed: "):
        load_exported(baked)
    with pytest.raises(ExportError, match=re.escape(expected)):
        load_exported(baked)


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("inputs", "x", "'inputs' must be a list of {\"path\": str"),
        ("inputs", [{"path": "", "shape": ["b", 4.0], "dtype": "float32"}], "'inputs' must be"),
        ("inputs", [{"path": "", "shape": ["b", True], "dtype": "float32"}], "'inputs' must be"),
        ("inputs", [{"path": "", "shape": ["b", -4], "dtype": "float32"}], "'inputs' must be"),
        ("inputs", [{"shape": ["b", 4], "dtype": "float32"}], "'inputs' must be"),
        ("outputs", [[]], "'outputs' must be a list of"),
        ("platforms", "cpu", "'platforms' must be a list of strings, got 'cpu'"),
        ("params_as_args", "yes", "'params_as_args' must be true or false, got 'yes'"),
        ("param_count", -1, "'param_count' must be an integer >= 0, got -1"),
        ("calling_convention_version", "9", "'calling_convention_version' must be an integer"),
        ("artifact", "other.bin", "'artifact' must be 'model.jaxexport', got 'other.bin'"),
        ("artifact_sha256", 5, "'artifact_sha256' must be 64 lowercase hex digits, got 5"),
        ("params_sha256", "ab", "'params_sha256' must be 64 lowercase hex digits, got 'ab'"),
        ("model", None, "'model' must be a string, got None"),
    ],
)
def test_wrong_types(baked, key, value, expected):
    _edit(baked, **{key: value})
    with pytest.raises(ExportError, match=rf"^load_exported: `{_json(baked)}` is malformed: "):
        load_exported(baked)
    with pytest.raises(ExportError, match=re.escape(expected) + ".*" + EDITED):
        load_exported(baked)


@pytest.mark.parametrize("version", ["1", "2", True, 0, -3, 1.0, None, [1]])
def test_malformed_format_version_is_not_a_newer_one(baked, version):
    _edit(baked, format_version=version)
    with pytest.raises(ExportError) as info:
        load_exported(baked)
    message = str(info.value)
    assert message.startswith(f"load_exported: `{baked / 'model.json'}` is malformed: ")
    assert f"'format_version' must be an integer >= 1, got {version!r}" in message
    assert "upgrade" not in message


def test_newer_format_version_says_upgrade(baked):
    _edit(baked, format_version=2)
    with pytest.raises(ExportError, match=r"has format version 2, this funcnet reads up to 1; up"):
        load_exported(baked)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (b'{"format": "funcnet.export", "model": "caf\xe9"}', r"UnicodeDecodeError"),
        (b"[" * 100_000 + b"]" * 100_000, r"RecursionError"),
        (b'{"format": ' + b"1" * 5000 + b"}", r"ValueError: Exceeds the limit"),
        (b'{"format": "funcnet.export",', r"JSONDecodeError"),
    ],
)
def test_model_json_not_json(baked, text, expected):
    (baked / "model.json").write_bytes(text)
    with pytest.raises(ExportError, match=rf"^load_exported: `{_json(baked)}` is not valid JSON "):
        load_exported(baked)
    with pytest.raises(ExportError, match=expected) as info:
        load_exported(baked)
    assert info.value.__cause__ is not None


def test_model_json_too_large(baked, monkeypatch):
    monkeypatch.setattr(export_module, "_MAX_DESCRIPTION", 100)
    with pytest.raises(ExportError, match=rf"`{_json(baked)}` is larger than 100 bytes"):
        load_exported(baked)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_fifo_and_folder_are_refused(baked):
    (baked / "model.json").rename(baked / "saved.json")
    os.mkfifo(baked / "model.json")  # open() would block forever
    with pytest.raises(ExportError, match=rf"`{_json(baked)}` is not a regular file \(a FIFO"):
        load_exported(baked)
    (baked / "model.json").unlink()
    (baked / "saved.json").rename(baked / "model.json")
    (baked / "model.jaxexport").unlink()
    (baked / "model.jaxexport").mkdir()
    with pytest.raises(ExportError, match=r"model.jaxexport` is not a regular file"):
        load_exported(baked)


def test_path_is_a_file(baked):
    with pytest.raises(ExportError, match=r"model.json` has no model.json; pass the directory"):
        load_exported(baked / "model.json")


# --------------------------------------------------------------------------- model.json vs artifact


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("inputs", [{"path": "", "shape": ["b", 5], "dtype": "float32"}]),
        ("inputs", [{"path": "", "shape": [3, 4], "dtype": "float32"}]),
        ("inputs", [{"path": "", "shape": ["b", 4], "dtype": "float16"}]),
        ("outputs", [{"path": "", "shape": ["b", 3], "dtype": "float32"}]),
        ("platforms", ["cpu", "cuda", "tpu"]),
        ("params_as_args", True),
        ("batch_polymorphic", False),
        ("calling_convention_version", 1),
    ],
)
def test_edited_description_disagrees_with_the_artifact(baked, key, value):
    _edit(baked, **{key: value})
    with pytest.raises(
        ExportError,
        match=rf"^load_exported: `{_json(baked)}` disagrees with its artifact: {key!r} is "
        r".*, the artifact's is .*; model.json was edited or belongs to another export",
    ):
        load_exported(baked)


def test_edited_input_shape_never_reaches_jax(baked):
    """The issue's case: [b, 4] edited to [b, 5], then called with 5 features."""
    _edit(baked, inputs=[{"path": "", "shape": ["b", 5], "dtype": "float32"}])
    with pytest.raises(ExportError, match=r"'inputs' is \[\{'path': '', 'shape': \['b', 5\]"):
        load_exported(baked)
    _edit(baked, inputs=[{"path": "", "shape": ["b", 4], "dtype": "float32"}])
    model = load_exported(baked)
    with pytest.raises(
        ExportError,
        match=rf"^exported model `{re.escape(str(baked))}`: expected inputs "
        r".*\(root\): float32\['b', 4\].*got \['\(root\): float32\[2, 5\]'\] "
        r"\(`\(root\)` has 5 where 4 was exported\)",
    ):
        model(np.ones((2, 5), np.float32))


# --------------------------------------------------------------------------- artifact


@pytest.mark.parametrize("cut", [0, 16, 0.5])
def test_forged_truncated_artifact(baked, cut):
    artifact = (baked / "model.jaxexport").read_bytes()
    _forge(baked, artifact[: int(cut * len(artifact)) if isinstance(cut, float) else cut])
    artifact_path = re.escape(str(baked / "model.jaxexport"))
    with pytest.raises(
        ExportError,
        match=rf"^load_exported: `{artifact_path}` cannot be deserialized \(.*\); it matches its "
        r"checksum, so it was written this way",
    ) as info:
        load_exported(baked)
    assert info.value.__cause__ is not None


def test_forged_garbage_module_fails_at_compile_with_the_path(baked):
    artifact = bytearray((baked / "model.jaxexport").read_bytes())
    exported = jax.export.deserialize(artifact)
    bad = dataclasses.replace(exported, mlir_module_serialized=b"not a StableHLO module")
    _forge(baked, bytes(bad.serialize()))
    model = load_exported(baked)
    with pytest.raises(
        ExportError,
        match=rf"^exported model `{re.escape(str(baked))}`: compiling its artifact failed \(",
    ) as info:
        model(np.ones((2, 4), np.float32))
    assert info.value.__cause__ is not None


def test_flipped_artifact_byte_fails_the_checksum(baked):
    raw = bytearray((baked / "model.jaxexport").read_bytes())
    raw[len(raw) // 3] ^= 0x10
    (baked / "model.jaxexport").write_bytes(bytes(raw))
    with pytest.raises(ExportError, match=r"model.jaxexport` does not match the checksum in mod"):
        load_exported(baked)


def test_other_platform(exports, tmp_path):
    _, (model, params, state), _ = exports
    other = "cuda" if jax.default_backend() != "cuda" else "cpu"
    path = export(model, params, state, jnp.zeros((1, 4)), tmp_path / "o", platforms=(other,))
    loaded = load_exported(path)
    with pytest.raises(
        ExportError,
        match=rf"was exported for platforms \['{other}'\], this process runs on "
        rf"'{jax.default_backend()}'; export again with `platforms=",
    ):
        loaded(np.ones((2, 4), np.float32))


# --------------------------------------------------------------------------- calls


def test_call_checks_name_the_input(exports):
    loaded = load_exported(exports[0] / "args")
    good = {"a": np.ones((2, 3), np.float32), "b": np.ones((2, 1), np.float32)}
    assert loaded(good).shape == (2, 3)
    cases = [
        ({"a": good["a"], "b": np.ones((3, 1), np.float32)}, "dimension 'b' must be the same"),
        ({"a": np.ones((0, 3), np.float32), "b": np.ones((0, 1), np.float32)}, "size >= 1"),
        ({"a": good["a"], "c": good["b"]}, "found `c` where `b` was exported"),
        ({"a": good["a"]}, "1 arrays instead of 2"),
        ({"a": good["a"], "b": np.array([["x"], ["y"]])}, "`b` differs in dtype or rank"),
        ({"a": good["a"], "b": np.ones((2, 1, 1), np.float32)}, "`b` differs in dtype or rank"),
    ]
    for inputs, reason in cases:
        with pytest.raises(
            ExportError,
            match=rf"^exported model `{re.escape(str(exports[0] / 'args'))}`: expected inputs "
            rf".*\(.*{re.escape(reason)}.*\); pass inputs of the exported shapes",
        ):
            loaded(inputs)


def test_apply_checks_weight_shapes(exports):
    loaded = load_exported(exports[0] / "args")
    _, _, (_, params, state) = exports
    x = {"a": np.ones((2, 3), np.float32), "b": np.ones((2, 1), np.float32)}
    wrong = jax.tree.map(lambda w: jnp.zeros((*w.shape[:-1], w.shape[-1] + 1), w.dtype), params)
    with pytest.raises(
        ExportError, match=r"the params and state passed: array 0 is float32\[4\], the artifact"
    ):
        loaded.apply(wrong, state, x)
    with pytest.raises(ExportError, match=r"array 0 is float16\[3\], the artifact expects float32"):
        loaded.apply(jax.tree.map(lambda w: w.astype(jnp.float16), params), state, x)


# --------------------------------------------------------------------------- params


def test_params_checksum_and_missing_params(args):
    description = json.loads((args / "model.json").read_text())
    assert len(description["params_sha256"]) == 64
    raw = bytearray((args / "params.safetensors").read_bytes())
    raw[-1] ^= 1
    (args / "params.safetensors").write_bytes(bytes(raw))
    with pytest.raises(
        ExportError, match=r"params.safetensors` does not match the checksum in model.json"
    ):
        load_exported(args)
    _edit(args, params_sha256=...)  # an export from before the params checksum
    with pytest.raises(ExportError, match=r"^load_exported: checkpoint `.*params.safetensors`"):
        load_exported(args)  # still caught, by the checkpoint's own checksum
    (args / "params.safetensors").unlink()
    with pytest.raises(ExportError, match=r"params.safetensors` is missing; the export in"):
        load_exported(args)


def test_export_without_params_checksum_still_loads(exports, args):
    _edit(args, params_sha256=...)
    x = {"a": np.ones((2, 3), np.float32), "b": np.ones((2, 1), np.float32)}
    np.testing.assert_array_equal(load_exported(args)(x), load_exported(exports[0] / "args")(x))
