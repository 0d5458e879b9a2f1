"""Checkpoints: format, round trips, corrupt files, templates, atomic saves, manager, resume."""

import contextlib
import dataclasses
import errno
import importlib.util
import os
import re
import select
import signal
import socket
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import funcnet as fn
from funcnet import TrainState
from funcnet.checkpoint import (
    CheckpointError,
    CheckpointManager,
    CheckpointWarning,
    LoadReport,
    load,
    read_metadata,
    save,
)
from funcnet.checkpoint import atomic as ckpt_atomic
from funcnet.checkpoint import format as ckpt_format

STRICT_DTYPES = False  # optax's Adam is not strict-promotion clean

HERE = Path(__file__).parent
ROOT = HERE.parent


def _leaves_equal(a, b):
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(la) == len(lb)
    for x, y in zip(la, lb):
        if jax.dtypes.issubdtype(getattr(x, "dtype", np.float32), jax.dtypes.prng_key):
            assert x.dtype == y.dtype
            x, y = jax.random.key_data(x), jax.random.key_data(y)
        assert np.asarray(x).dtype == np.asarray(y).dtype
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _train_state(key, optimizer=None):
    model = fn.serial(fn.Dense(4), fn.BatchNorm(), jax.nn.relu, fn.Dense(2))
    optimizer = optimizer or optax.inject_hyperparams(optax.adamw)(learning_rate=1e-3)
    ts = TrainState.create(model, optimizer, key, jnp.zeros((2, 3)))
    step = jax.jit(fn.train_step(model, "mse", optimizer))
    ts, _ = step(ts, (jnp.ones((2, 3)), jnp.ones((2, 2))))  # non-trivial optimizer state
    return ts


def _env(**extra):
    """A subprocess environment: CPU, this checkout, the tests' persistent compilation cache."""
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))
    # one device, but the other flags kept: the optimization level of conftest.py changes the
    # last bits of the numbers, and the bit-exact tests compare with this process
    flags = os.environ.get("XLA_FLAGS", "").split()
    keep = [f for f in flags if not f.startswith("--xla_force_host_platform_device_count")]
    env["XLA_FLAGS"] = " ".join(keep + extra.pop("XLA_FLAGS", "").split())
    cache = jax.config.jax_compilation_cache_dir
    if cache:
        env.update(
            JAX_COMPILATION_CACHE_DIR=str(cache),
            JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
            JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
        )
    env.update(extra)
    return env


# ----------------------------------------------------------------------------- round trips


@pytest.mark.parametrize(
    "optimizer",
    [
        optax.adam(1e-3),
        optax.chain(optax.clip_by_global_norm(1.0), optax.sgd(0.1, momentum=0.9)),
        optax.inject_hyperparams(optax.adamw)(learning_rate=1e-3),
    ],
    ids=["adam", "chain", "inject_hyperparams"],
)
def test_train_state_round_trip_with_template(tmp_path, key, optimizer):
    ts = _train_state(key, optimizer)
    path = save(tmp_path / "ts.safetensors", ts, metadata={"epoch": 3})
    back = load(path, like=ts)
    assert jax.tree.structure(back) == jax.tree.structure(ts)
    assert isinstance(back, TrainState)
    assert back.key.dtype == ts.key.dtype
    _leaves_equal(back, ts)
    assert read_metadata(path)["metadata"] == {"epoch": 3}


def test_load_without_template_rebuilds_the_structure(tmp_path, key):
    class Pair(NamedTuple):
        first: jax.Array
        second: object

    tree = {
        "bf16": jnp.arange(6, dtype=jnp.bfloat16).reshape(2, 3),
        "ints": [jnp.arange(3), np.arange(4, dtype=np.int16)],
        "scalars": (True, 3, 2.5, np.float32(1.5)),
        "key": jax.random.split(key, 3),
        "pair": Pair(jnp.ones(2), None),
        "empty": ((), {}, []),
        "by_int": {7: jnp.zeros((0, 2)), 3: jnp.ones(1)},
    }
    path = save(tmp_path / "t.safetensors", tree)
    back = load(path)
    assert set(back) == {"bf16", "ints", "scalars", "key", "pair", "empty", "by_int"}
    assert back["bf16"].dtype == jnp.bfloat16 and isinstance(back["bf16"], jax.Array)
    np.testing.assert_array_equal(back["bf16"], tree["bf16"])
    assert isinstance(back["ints"], list) and isinstance(back["ints"][1], np.ndarray)
    assert back["ints"][1].dtype == np.int16
    assert back["scalars"][:3] == (True, 3, 2.5)
    assert [type(v) for v in back["scalars"][:3]] == [bool, int, float]
    assert back["scalars"][3].dtype == np.float32
    assert back["key"].dtype == tree["key"].dtype and back["key"].shape == (3,)
    np.testing.assert_array_equal(
        jax.random.key_data(back["key"]), jax.random.key_data(tree["key"])
    )
    assert back["pair"] == {"first": back["pair"]["first"], "second": None}  # NamedTuple -> dict
    assert back["empty"] == ((), {}, [])
    assert list(back["by_int"]) == [3, 7] and back["by_int"][7].shape == (0, 2)
    assert sorted(read_metadata(path)["tensors"]) == [
        "bf16",
        "by_int/3",
        "by_int/7",
        "ints/0",
        "ints/1",
        "key",
        "pair/first",
        "scalars/0",
        "scalars/1",
        "scalars/2",
        "scalars/3",
    ]


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class _Custom:
    a: jax.Array
    b: tuple


def test_normalizers_and_custom_nodes(tmp_path, key):
    x = np.random.default_rng(0).normal(size=(10, 3)).astype(np.float32)
    tree = {
        "norm": fn.data.Standardizer.fit(x),
        "custom": _Custom(jnp.ones(2), (jnp.zeros(1), None)),
        "big_endian": np.arange(3, dtype=">f4"),
    }
    path = save(tmp_path / "n.safetensors", tree)
    back = load(path, like=tree)
    assert isinstance(back["norm"], fn.data.Standardizer) and isinstance(back["custom"], _Custom)
    assert isinstance(back["norm"].mean, np.ndarray)
    np.testing.assert_array_equal(back["norm"].apply(x), tree["norm"].apply(x))
    np.testing.assert_array_equal(back["big_endian"], np.arange(3.0))
    plain = load(path)
    assert set(plain["norm"]) == {"mean", "std"}
    assert set(plain["custom"]) == {"a", "b"} and plain["custom"]["b"][1] is None


def test_bfloat16_and_float8_round_trip_with_template(tmp_path):
    tree = {
        "bf": jnp.asarray([1.5, -2.25, 3e38], jnp.bfloat16),
        "f8": jnp.asarray([0.5, 1.0], jnp.float8_e4m3fn),
    }
    back = load(save(tmp_path / "b.safetensors", tree), like=tree)
    _leaves_equal(back, tree)


def test_single_array_and_numpy_template(tmp_path):
    path = save(tmp_path / "a.safetensors", np.arange(5.0))
    back = load(path)
    assert isinstance(back, np.ndarray)
    np.testing.assert_array_equal(back, np.arange(5.0))
    like = {"x": np.zeros(3, np.float32), "n": 0, "s": np.float32(0)}
    path = save(
        tmp_path / "b.safetensors", {"x": np.ones(3, np.float32), "n": 5, "s": np.float32(2)}
    )
    back = load(path, like=like)
    assert isinstance(back["x"], np.ndarray) and back["n"] == 5 and type(back["n"]) is int
    assert isinstance(back["s"], np.float32) and back["s"] == 2


def test_template_may_be_abstract(tmp_path, key):
    ts = _train_state(key)
    path = save(tmp_path / "ts.safetensors", ts)
    back = load(path, like=jax.eval_shape(lambda: ts))
    _leaves_equal(back, ts)


def test_interop_with_the_safetensors_library(tmp_path):
    safetensors_numpy = pytest.importorskip("safetensors.numpy")
    from safetensors import safe_open

    tree = {"w": jnp.ones((2, 3)), "n": jnp.arange(4, dtype=jnp.int32)}
    path = save(tmp_path / "ours.safetensors", tree)
    theirs = safetensors_numpy.load_file(path)
    np.testing.assert_array_equal(theirs["w"], np.ones((2, 3), np.float32))
    with safe_open(path, "np") as f:
        assert f.metadata()["format"] == "funcnet.checkpoint"
    foreign = str(tmp_path / "foreign.safetensors")
    safetensors_numpy.save_file({"a/b": np.arange(3.0)}, foreign, metadata={"by": "other"})
    back = load(foreign)
    assert list(back) == ["a/b"] and isinstance(back["a/b"], jax.Array)
    assert read_metadata(foreign)["metadata"] == {"by": "other"}
    got = load(foreign, like={"a": {"b": np.zeros(3)}})
    np.testing.assert_array_equal(got["a"]["b"], np.arange(3.0))


# ----------------------------------------------------------------------------- save errors


def test_save_errors(tmp_path):
    path = tmp_path / "x.safetensors"
    with pytest.raises(TypeError, match=r"cannot store the leaf at `a`, a str"):
        save(path, {"a": "text"})
    with pytest.raises(TypeError, match=r"cannot store `x` of dtype complex128"):
        save(path, {"x": np.zeros(2, np.complex128)})
    with pytest.raises(TypeError, match=r"dict keys must be str or int, got tuple key"):
        save(path, {(1, 2): jnp.zeros(1)})
    with pytest.raises(ValueError, match=r"several leaves have the same path \['a/b'\]"):
        save(path, {"a/b": jnp.zeros(1), "a": {"b": jnp.zeros(1)}})
    with pytest.raises(TypeError, match=r"keys must be strings to be stored as JSON, got int"):
        save(path, jnp.zeros(1), metadata={1: 2})
    with pytest.raises(
        TypeError, match=r"metadata\['f'\]: values must be JSON data .* got function"
    ):
        save(path, jnp.zeros(1), metadata={"f": lambda: 0})
    assert not os.listdir(tmp_path)  # nothing written, no temp file left


def test_metadata_accepts_numpy_values(tmp_path):
    path = save(
        tmp_path / "m.safetensors",
        jnp.zeros(1),
        metadata={"a": np.float32(0.5), "b": np.arange(3), "c": (1, None, "x"), "d": jnp.ones(())},
    )
    assert read_metadata(path)["metadata"] == {
        "a": 0.5,
        "b": [0, 1, 2],
        "c": [1, None, "x"],
        "d": 1.0,
    }


def test_arrays_on_several_processes(tmp_path, monkeypatch, key):
    # pretend these single-device arrays live on several processes (multi-host)
    x = jnp.arange(3.0)
    monkeypatch.setattr(type(x), "is_fully_addressable", property(lambda self: False))
    # replicated (data-parallel params): saved from the local copy
    path = save(tmp_path / "r.safetensors", {"w": x, "k": key})
    monkeypatch.undo()
    _leaves_equal(load(path), {"w": x, "k": key})
    monkeypatch.setattr(type(x), "is_fully_addressable", property(lambda self: False))
    monkeypatch.setattr(type(x), "is_fully_replicated", property(lambda self: False))
    with pytest.raises(ValueError, match=r"`w` is sharded over several processes"):
        save(tmp_path / "x.safetensors", {"w": x}, sharded=False)  # one file: cannot


# ----------------------------------------------------------------------------- templates


def test_template_mismatch_reports_every_path(tmp_path, key):
    saved = {
        "dense": {"w": jnp.zeros((3, 4)), "b": jnp.zeros(4)},
        "old": jnp.zeros(2),
        "step": jnp.zeros((), jnp.int32),
        "key": key,
    }
    path = save(tmp_path / "s.safetensors", saved)
    like = {
        "dense": {"w": jnp.zeros((5, 4)), "b": jnp.zeros(4, jnp.bfloat16)},
        "new": jnp.zeros(2),
        "step": jnp.zeros((), jnp.int32),
        "key": jnp.zeros(2, jnp.uint32),
    }
    with pytest.raises(CheckpointError, match=r"1 missing, 1 unexpected, 3 mismatched") as info:
        load(path, like=like)
    message = str(info.value)
    for part in [
        "missing (1): new",
        "unexpected (1): old",
        "dense/b: expected bfloat16[4], got float32[4]",
        "dense/w: expected float32[5,4], got float32[3,4]",
        "key: expected uint32[2], got key<threefry2x32> data (2,)",
        "strict=False",
    ]:
        assert part in message, part
    report = info.value.report
    assert report.missing == ["new"] and report.unexpected == ["old"]
    assert len(report.mismatched) == 3


def test_python_scalar_template_leaves_take_only_exact_values(tmp_path):
    saved = {"b": np.bool_(True), "c": np.complex64(1j), "f": jnp.float32(2.5), "i": jnp.int32(3)}
    path = save(tmp_path / "s.safetensors", saved)
    back = load(path, like={"b": False, "c": np.complex64(0), "f": 0.0, "i": 0})
    assert back == {"b": True, "c": 1j, "f": 2.5, "i": 3}
    assert [type(back[k]) for k in "bfi"] == [bool, float, int]
    with pytest.raises(CheckpointError, match=r"3 mismatched") as err:
        load(path, like={"b": True, "c": 0.0, "f": 0, "i": False})
    assert err.value.report.mismatched == [
        "c: expected a scalar (float), got complex64[]",
        "f: expected a scalar (int), got float32[]",
        "i: expected a scalar (bool), got int32[]",
    ]


def test_key_template_mismatch(tmp_path, key):
    path = save(tmp_path / "k.safetensors", {"k": jnp.zeros(2, jnp.uint32)})
    with pytest.raises(
        CheckpointError, match=r"k: expected key<threefry2x32> data \(2,\), got uint32\[2\]"
    ):
        load(path, like={"k": key})
    path = save(tmp_path / "k2.safetensors", {"k": jax.random.split(key, 2)})
    with pytest.raises(CheckpointError, match=r"expected key<threefry2x32> data \(2,\), got key"):
        load(path, like={"k": key})
    path = save(tmp_path / "k3.safetensors", {"k": jnp.zeros(3)})
    with pytest.raises(CheckpointError, match=r"k: expected a scalar \(int\), got float32\[3\]"):
        load(path, like={"k": 0})


def test_non_strict_loads_what_matches_and_warns(tmp_path):
    path = save(tmp_path / "s.safetensors", {"body": jnp.ones(3), "head": jnp.ones(5)})
    like = {"body": jnp.zeros(3), "head": jnp.zeros(10), "extra": jnp.full(2, 7.0)}
    with pytest.warns(CheckpointWarning, match=r"kept the template's values for 1 missing") as rec:
        back = load(path, like=like, strict=False)
    np.testing.assert_array_equal(back["body"], np.ones(3))
    np.testing.assert_array_equal(back["head"], np.zeros(10))
    np.testing.assert_array_equal(back["extra"], np.full(2, 7.0))
    report = rec[0].message.report
    assert report == LoadReport(["extra"], [], ["head: expected float32[10], got float32[5]"])
    abstract = {"body": jax.ShapeDtypeStruct((3,), jnp.float32), "x": jnp.zeros(1)}
    abstract["extra"] = jax.ShapeDtypeStruct((2,), jnp.float32)
    with pytest.raises(CheckpointError, match=r"no value for \['extra'\]: the file does not"):
        load(path, like=abstract, strict=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load(path, like={"body": jnp.zeros(3), "head": jnp.zeros(5)}, strict=False)  # no warning


def test_template_with_a_non_array_leaf(tmp_path):
    path = save(tmp_path / "s.safetensors", {"a": jnp.ones(3)})
    with pytest.raises(TypeError, match=r"the template leaf at `a` is a str"):
        load(path, like={"a": "x"})


# ----------------------------------------------------------------------------- sharding


def test_sharded_arrays_on_a_one_device_mesh(tmp_path):
    from jax.sharding import NamedSharding, PartitionSpec

    mesh = jax.make_mesh((1,), ("data",), axis_types=(jax.sharding.AxisType.Explicit,))
    sharding = NamedSharding(mesh, PartitionSpec("data"))
    tree = {"w": jax.device_put(jnp.arange(8.0).reshape(4, 2), sharding)}
    path = save(tmp_path / "s.safetensors", tree)
    back = load(path, like=tree)
    assert back["w"].sharding == sharding
    np.testing.assert_array_equal(back["w"], tree["w"])


_SHARDED = textwrap.dedent(
    """
    import sys, jax, jax.numpy as jnp, numpy as np
    from jax.sharding import NamedSharding, PartitionSpec as P
    from funcnet.checkpoint import save, load
    assert jax.device_count() == 2, jax.devices()
    mesh = jax.make_mesh((2,), ("data",), axis_types=(jax.sharding.AxisType.Explicit,))
    row, rep = NamedSharding(mesh, P("data")), NamedSharding(mesh, P())
    x = jnp.arange(24.0).reshape(4, 6)
    keys = jax.device_put(jax.random.split(jax.random.key(1), 4), row)
    tree = {"w": jax.device_put(x, row), "b": jax.device_put(jnp.ones(6), rep), "keys": keys}
    save(sys.argv[1], tree)
    back = load(sys.argv[1], like=tree)
    assert back["w"].sharding == row and back["b"].sharding == rep, back
    assert back["keys"].sharding == keys.sharding, back["keys"].sharding
    assert len(back["w"].addressable_shards) == 2
    np.testing.assert_array_equal(back["w"], x)
    np.testing.assert_array_equal(jax.random.key_data(back["keys"]), jax.random.key_data(keys))
    other = {"w": jax.device_put(jnp.zeros((4, 6)), rep), "b": jnp.zeros(6), "keys": keys}
    again = load(sys.argv[1], like=other)  # restore into a different layout
    assert again["w"].sharding == rep
    np.testing.assert_array_equal(again["w"], x)
    print("ok")
    """
)


def test_sharded_arrays_across_two_devices(tmp_path):
    env = _env(XLA_FLAGS="--xla_force_host_platform_device_count=2")
    result = subprocess.run(
        [sys.executable, "-c", _SHARDED, str(tmp_path / "sharded.safetensors")],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "ok"


_MULTI_HOST = textwrap.dedent(
    """
    import sys
    import jax, numpy as np
    port, pid, directory = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    jax.distributed.initialize(
        coordinator_address=f"127.0.0.1:{port}", num_processes=2, process_id=pid,
        coordinator_bind_address=f"127.0.0.1:{port}", initialization_timeout=60,
    )
    from jax.sharding import NamedSharding, PartitionSpec as P
    from funcnet.checkpoint import CheckpointManager, format as fmt
    writes, write_file = [], fmt.atomic_write
    fmt.atomic_write = lambda path, write: (writes.append(path), write_file(path, write))[1]
    mesh = jax.make_mesh((2,), ("data",), axis_types=(jax.sharding.AxisType.Explicit,))
    rep, row = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
    value = np.arange(12.0, dtype=np.float32).reshape(4, 3)
    x = jax.make_array_from_callback((4, 3), rep, lambda i: value[i])
    assert not x.is_fully_addressable
    manager = CheckpointManager(directory)
    manager.save(1, {"w": x})  # process 0 writes it, both return when it is complete
    back = manager.restore(1, like={"w": x})
    assert back["w"].sharding == rep
    np.testing.assert_array_equal(back["w"].addressable_data(0), value)
    zeros = jax.make_array_from_callback((4, 3), row, lambda i: np.zeros((4, 3), np.float32)[i])
    split = manager.restore(1, like={"w": zeros})
    assert split["w"].sharding == row
    (shard,) = split["w"].addressable_shards
    np.testing.assert_array_equal(shard.data, value[shard.index])
    # sharded over the processes: saved sharded (each process writes its own rows)
    manager.save(2, {"w": split["w"]})
    assert manager.path(2).endswith("step_00000002") and manager.all_steps() == [1, 2]
    again = manager.restore(2, like={"w": zeros})
    (shard,) = again["w"].addressable_shards
    np.testing.assert_array_equal(shard.data, value[shard.index])
    print("ok", pid, len(writes), flush=True)
    """
)


def test_two_processes_save_replicated_and_restore_sharded(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _MULTI_HOST, str(port), str(i), str(tmp_path)],
            env=_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    try:
        outputs = [p.communicate(timeout=120) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(timeout=30)
    for i, (p, (out, err)) in enumerate(zip(procs, outputs)):
        assert p.returncode == 0, err[-3000:]
        # one write, by process 0 (gloo prints its own lines to stdout first)
        assert out.splitlines()[-1].split() == ["ok", str(i), "1" if i == 0 else "0"]
    assert CheckpointManager(tmp_path).all_steps() == [1, 2]


# ----------------------------------------------------------------------------- atomic saves


def test_failed_save_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "c.safetensors"
    save(path, {"w": jnp.zeros(3)})

    def broken(fd):
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", broken)
    with pytest.raises(OSError, match="disk full"):
        save(path, {"w": jnp.ones(3)})
    monkeypatch.undo()
    assert os.listdir(tmp_path) == ["c.safetensors"]  # the temp file was removed
    np.testing.assert_array_equal(load(path)["w"], np.zeros(3))


def _enospc(*filenames):
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), *filenames)


class _FullDisk:
    """A file object whose writes fail as on a full disk."""

    def __init__(self, f):
        self.f = f

    def write(self, data):
        raise _enospc()

    def __getattr__(self, name):
        return getattr(self.f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()


def _raise(error):
    raise error


def _disk_full(where: str, monkeypatch) -> None:
    """Make one step of an atomic save fail with ENOSPC, with the filenames the OS gives."""
    real_fdopen = os.fdopen
    if where == "open":  # creating the temporary file
        monkeypatch.setattr(os, "open", lambda path, *a, **k: _raise(_enospc(path)))
    elif where == "write":
        monkeypatch.setattr(os, "fdopen", lambda fd, *a, **k: _FullDisk(real_fdopen(fd, *a, **k)))
    elif where == "fsync":
        monkeypatch.setattr(os, "fsync", lambda fd: _raise(_enospc()))
    else:  # a failed rename names both files
        monkeypatch.setattr(os, "replace", lambda a, b: _raise(_enospc(a, None, b)))


@pytest.mark.parametrize("where", ["open", "write", "fsync", "replace"])
def test_disk_full_during_a_save_names_the_checkpoint(tmp_path, monkeypatch, where):
    path = tmp_path / "c.safetensors"
    save(path, {"w": jnp.zeros(3)})
    before = path.read_bytes()
    _disk_full(where, monkeypatch)
    if where == "replace":
        name = rf"'.*\.tmp' -> '{re.escape(str(path))}'"
    else:
        name = re.escape(f"'{path}'")
    message = rf"^\[Errno {errno.ENOSPC}\] No space left on device: {name}(\n|$)"
    with pytest.raises(OSError, match=message) as err:
        save(path, {"w": jnp.ones(3)})
    monkeypatch.undo()
    assert type(err.value) is OSError and err.value.errno == errno.ENOSPC
    if sys.version_info >= (3, 11):
        assert f"writing `{path}` failed; the previous file there" in err.value.__notes__[0]
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["c.safetensors"]  # the temp file was removed


_SAVER = textwrap.dedent(
    """
    import sys
    import numpy as np
    from funcnet.checkpoint import save
    path = sys.argv[1]
    big = np.zeros((2, 1024, 1024), np.float32)  # 8 MB
    save(path, {"v": 0, "big": big}, metadata={"version": 0})
    print("ready", flush=True)
    i = 0
    while True:
        i += 1
        big[:] = i
        save(path, {"v": i, "big": big}, metadata={"version": i})
    """
)


def _wait_for_line(proc, text: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 0.1)
        if ready:
            line = proc.stdout.readline()
            if line.strip() == text:
                return
            if not line and proc.poll() is not None:
                break
    raise AssertionError(f"the subprocess did not print {text!r} (returncode {proc.poll()})")


@contextlib.contextmanager
def _killed_at_the_end(proc):
    """SIGKILL ``proc`` when the block ends (also when it fails) and check that it died of it."""
    try:
        yield
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL


def test_killed_during_save_leaves_the_previous_checkpoint(tmp_path):
    path = tmp_path / "big.safetensors"
    proc = subprocess.Popen(
        [sys.executable, "-c", _SAVER, str(path)],
        env=_env(),
        stdout=subprocess.PIPE,
        text=True,
    )
    with _killed_at_the_end(proc):  # in the middle of writing the temp file
        _wait_for_line(proc, "ready", 60)
        time.sleep(0.05)
        deadline = time.monotonic() + 30
        while not any(n.endswith(".tmp") for n in os.listdir(tmp_path)):
            assert time.monotonic() < deadline, "no save in progress was seen"
            assert proc.poll() is None
            time.sleep(0.0005)
    tree = load(path)  # verifies the checksum
    version = read_metadata(path)["metadata"]["version"]
    assert tree["v"] == version
    np.testing.assert_array_equal(tree["big"], np.full((2, 1024, 1024), version, np.float32))
    # the killed process's temp file is removed by the next manager on the directory
    CheckpointManager(tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["big.safetensors"]


# ----------------------------------------------------------------------------- manager


def test_manager_keeps_the_last_and_the_best(tmp_path):
    manager = CheckpointManager(tmp_path, max_to_keep=2, best_metric="val_acc", best_mode="max")
    for step, acc in [(1, 0.5), (2, 0.9), (3, 0.7), (4, 0.8), (5, 0.6)]:
        manager.save(step, {"w": jnp.full(2, float(step))}, metrics={"val_acc": acc, "loss": 1.0})
    assert manager.all_steps() == [2, 4, 5]
    assert manager.latest_step() == 5 and manager.best_step() == 2
    assert manager.metrics(2) == {"val_acc": 0.9, "loss": 1.0}
    np.testing.assert_array_equal(manager.restore(2)["w"], [2.0, 2.0])
    np.testing.assert_array_equal(manager.restore()["w"], [5.0, 5.0])
    assert read_metadata(manager.path(4))["step"] == 4
    manager.save(5, {"w": jnp.zeros(2)}, metadata={"again": True})  # overwrite a step
    np.testing.assert_array_equal(manager.restore(5)["w"], [0.0, 0.0])
    assert manager.all_steps() == [2, 4, 5]
    assert "best_metric='val_acc'" in repr(manager)


def test_manager_min_mode_ties_and_no_metric(tmp_path):
    manager = CheckpointManager(tmp_path / "a", max_to_keep=1, best_metric="loss")
    assert manager.latest_step() is None and manager.best_step() is None
    for step, loss in [(10, 0.3), (20, 0.3), (30, float("nan")), (40, 0.5)]:
        manager.save(step, jnp.zeros(1), metrics={"loss": loss})
    assert manager.best_step() == 10 and manager.all_steps() == [10, 40]
    manager.save(50, jnp.zeros(1))  # mid-epoch saves carry no metrics
    assert manager.all_steps() == [10, 50]
    plain = CheckpointManager(tmp_path / "b", max_to_keep=None)
    for step in range(5):
        plain.save(step, jnp.zeros(1), metrics={"loss": 1.0})
    assert plain.all_steps() == [0, 1, 2, 3, 4] and plain.best_step() is None


def test_manager_survives_a_crash_between_save_and_cleanup(tmp_path):
    # files written but never pruned (the process died after writing), plus foreign files
    for step in (1, 2, 3, 4):
        ckpt_format._save(
            tmp_path / f"step_{step:08d}.safetensors", jnp.full(1, step), None, {"step": step}
        )
    (tmp_path / "notes.txt").write_text("not a checkpoint")
    manager = CheckpointManager(tmp_path, max_to_keep=2)
    assert manager.all_steps() == [1, 2, 3, 4] and manager.latest_step() == 4
    manager.save(5, jnp.full(1, 5))
    assert manager.all_steps() == [4, 5]
    assert (tmp_path / "notes.txt").exists()


def test_manager_errors(tmp_path):
    with pytest.raises(ValueError, match=r"`max_to_keep` must be an int >= 1 or None .* got 0"):
        CheckpointManager(tmp_path, max_to_keep=0)
    with pytest.raises(ValueError, match=r"`best_mode` must be 'min' or 'max', got 'lowest'"):
        CheckpointManager(tmp_path, best_mode="lowest")
    with pytest.raises(TypeError, match=r"`best_metric` must be a metric name \(str\), got int"):
        CheckpointManager(tmp_path, best_metric=3)
    manager = CheckpointManager(tmp_path, best_metric="val_loss")
    with pytest.raises(CheckpointError, match=r"no checkpoints in `.*`; save one first"):
        manager.restore()
    with pytest.raises(ValueError, match=r"`step` must be an int >= 0, got -1"):
        manager.save(-1, jnp.zeros(1))
    with pytest.raises(ValueError, match=r"`best_metric='val_loss'` is not among the metrics"):
        manager.save(1, jnp.zeros(1), metrics={"loss": 0.1})
    manager.save(1, jnp.zeros(1))
    with pytest.raises(CheckpointError, match=r"no checkpoint for step 7 .* saved steps are \[1\]"):
        manager.restore(7)


def _flip_a_data_byte(path) -> None:
    raw = bytearray(Path(path).read_bytes())
    raw[-1] ^= 0x01
    Path(path).write_bytes(raw)


def _three_steps(directory, **kwargs) -> CheckpointManager:
    manager = CheckpointManager(directory, max_to_keep=2, **kwargs)
    for step in (1, 2, 3):
        manager.save(step, {"w": jnp.full(2, float(step))})
    return manager


def test_restore_latest_falls_back_past_corrupt_checkpoints(tmp_path):
    manager = CheckpointManager(tmp_path, max_to_keep=3)
    for step in (1, 2, 3, 4):
        manager.save(step, {"w": jnp.full(2, float(step))})
    newest, truncated = manager.path(4), manager.path(3)
    _flip_a_data_byte(newest)
    Path(truncated).write_bytes(Path(truncated).read_bytes()[:-3])
    skipped = (
        rf"`{re.escape(newest)}`: .*checksum does not match.*\n"
        rf"  `{re.escape(truncated)}`: .*truncated"
    )
    with pytest.warns(
        CheckpointWarning,
        match=rf"resuming from step 2 \(`.*step_00000002\.safetensors`\), the newest intact "
        rf"checkpoint; skipped 2 newer corrupt one\(s\), renamed to `<file>\.corrupt`:\n  "
        rf"{skipped}.*\nTo stop instead of falling back, use `CheckpointManager\(\.\.\., "
        r"on_corrupt='raise'\)`",
    ):
        restored = manager.restore_latest(like={"w": jnp.zeros(2)})
    assert restored.step == 2 and restored.tree["w"].tolist() == [2.0, 2.0]
    assert [path for path, _ in restored.skipped] == [manager.path(4), manager.path(3)]
    assert "checksum does not match" in restored.skipped[0][1]
    # the corrupt files are set aside, so they are not latest and pruning keeps new saves
    assert manager.all_steps() == [2] and manager.latest_step() == 2
    assert sorted(os.listdir(tmp_path)) == [
        "step_00000002.safetensors",
        "step_00000003.safetensors.corrupt",
        "step_00000004.safetensors.corrupt",
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing skipped now: no warning
        again = manager.restore_latest()
    assert again.step == 2 and again.skipped == []
    for step in (3, 4, 5):  # training goes on from step 2
        manager.save(step, {"w": jnp.full(2, 10.0 * step)})
    assert manager.all_steps() == [3, 4, 5] and manager.restore_latest().step == 5


def test_restore_latest_strict_and_errors(tmp_path):
    assert CheckpointManager(tmp_path / "empty").restore_latest() is None
    strict = _three_steps(tmp_path / "strict", on_corrupt="raise")
    _flip_a_data_byte(strict.path(3))
    with pytest.raises(CheckpointError, match=r"step_00000003\.safetensors`: the checksum") as err:
        strict.restore_latest()
    assert err.value.corrupt and strict.all_steps() == [2, 3]  # nothing renamed
    _flip_a_data_byte(strict.path(2))
    strict.on_corrupt = "fallback"
    with pytest.raises(
        CheckpointError, match=r"every checkpoint in `.*strict` is corrupt \(2\):\n"
    ):
        strict.restore_latest()
    assert strict.all_steps() == [2, 3]  # not set aside: the next run says the same
    # intact but unusable: a template the checkpoint does not fit raises, no fallback
    manager = _three_steps(tmp_path / "model")
    manager.save(4, {"w": jnp.zeros(5)})
    with pytest.raises(CheckpointError, match=r"does not fit `like`") as err:
        manager.restore_latest(like={"w": jnp.zeros(2)})
    assert not err.value.corrupt and manager.all_steps() == [3, 4]
    with pytest.raises(ValueError, match=r"`on_corrupt` must be 'fallback' .* or 'raise', got 'x'"):
        CheckpointManager(tmp_path, on_corrupt="x")


def test_restore_latest_skips_a_fifo(tmp_path):
    manager = _three_steps(tmp_path)
    os.mkfifo(manager.path(9))
    with pytest.warns(CheckpointWarning, match=r"step_00000009\.safetensors` is a FIFO"):
        assert manager.restore_latest().step == 3
    assert manager.all_steps() == [2, 3]


def test_stale_temp_files_of_dead_processes_are_removed(tmp_path):
    done = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    dead_pid = int(done.stdout)
    live = ckpt_atomic._temp_name(str(tmp_path / "step_00000001.safetensors"))  # this process's own
    dead = live.replace(f".{os.getpid()}.", f".{dead_pid}.")
    other_host = dead.replace(dead.split(".")[-4], "otherhost")
    for name in (live, dead, other_host):
        Path(name).write_bytes(b"partial")
    CheckpointManager(tmp_path)
    assert sorted(os.listdir(tmp_path)) == sorted(Path(n).name for n in (live, other_host))


# ----------------------------------------------------------------------------- fit resume


def test_fit_resumes_from_a_directory(tmp_path, key):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 3)).astype(np.float32)
    y = x.sum(1, keepdims=True)
    args = (fn.Dense(1), optax.sgd(0.1), "mse", (x, y))
    kw = dict(epochs=2, batch_size=8, key=key, verbose=0, checkpoint=str(tmp_path))
    ts, _ = fn.fit(*args, **kw)
    manager = CheckpointManager(tmp_path)
    assert manager.all_steps() == [4, 8]
    assert set(manager.metrics(8)) == {"loss"}
    again, history2 = fn.fit(*args, **kw)  # everything done: restored, nothing trained
    assert history2.epoch == []
    _leaves_equal(again, ts)


def test_fit_falls_back_past_a_corrupt_latest_checkpoint(tmp_path, key):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 3)).astype(np.float32)
    args = (fn.Dense(1), optax.sgd(0.1), "mse", (x, x.sum(1, keepdims=True)))
    kw = dict(epochs=2, batch_size=8, key=key, verbose=0, checkpoint=str(tmp_path))
    ts, _ = fn.fit(*args, **kw)
    manager = CheckpointManager(tmp_path)
    _flip_a_data_byte(manager.path(8))
    with warnings.catch_warnings(record=True) as caught:  # (a CheckpointError passes through)
        warnings.simplefilter("always")
        again, history = fn.fit(*args, **kw)
    [warning] = [w.message for w in caught if isinstance(w.message, CheckpointWarning)]
    assert re.search(r"from step 4 .*step_00000008\.safetensors`: .*checksum", str(warning), re.S)
    assert history.epoch == [1]  # the second epoch again, from step 4
    _leaves_equal(again, ts)
    assert manager.all_steps() == [4, 8]
    assert os.path.exists(manager.path(8) + ".corrupt")


def _run_script(directory, output, timeout=180):
    result = subprocess.run(
        [sys.executable, str(HERE / "_resume_script.py"), str(directory), str(output)],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert result.returncode == 0, result.stderr[-3000:]


def _load_script():
    spec = importlib.util.spec_from_file_location("_resume_script", HERE / "_resume_script.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_fit_killed_mid_epoch_resumes_bit_exact(tmp_path):
    """SIGKILL a real ``fit`` in the middle of an epoch, run it again: same params as no kill."""
    ts = _load_script().train(str(tmp_path / "reference"))  # uninterrupted, in this process
    reference = {"params": ts.params, "state": ts.state, "step": int(ts.step)}

    run_dir = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, str(HERE / "_resume_script.py"), str(run_dir), str(tmp_path / "x")],
        env=_env(FUNCNET_TEST_PAUSE_AT="10"),  # sleeps after step 10, its save not yet made
        stdout=subprocess.PIPE,
        text=True,
    )
    with _killed_at_the_end(proc):
        _wait_for_line(proc, "paused", 120)
    steps = CheckpointManager(run_dir, max_to_keep=2).all_steps()
    assert steps == [6, 8]  # killed in epoch 2 (6 steps per epoch), 2 steps after its start
    assert not (tmp_path / "x").exists()

    _run_script(run_dir, tmp_path / "resumed.safetensors")
    resumed = load(tmp_path / "resumed.safetensors")
    assert resumed["step"] == reference["step"] == 18
    for a, b in zip(jax.tree.leaves(reference), jax.tree.leaves(resumed)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
