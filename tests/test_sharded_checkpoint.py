"""Sharded checkpoints (each process writes its shards), background saves, cluster detection.

One run of ``tests/_sharded_ckpt_worker.py`` as 2 processes x 2 CPU devices
(gloo) serves several checks: the checkpoint both saved, restored in both on
other shardings (each reading only the saved shards it needs), in this one
process on 1 device, and (``test_mesh4_*``, run in a child with 4 virtual
devices by ``test_four_virtual_devices``) on 4 devices with other shardings;
the async save in which process 1 was killed; corruption of one shard file.
Arrays are compared with the worker's numpy values. The rest runs in this
process: slice assembly against numpy on random shard layouts, the index
checks, the order of background saves, and ``distributed.detect_cluster``.
"""

import json
import os
import re
import shutil
import sys
import threading
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from _mesh4 import run_mesh4_tests
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import funcnet as fn
from funcnet import distributed
from funcnet.checkpoint import (
    CheckpointError,
    CheckpointManager,
    CheckpointWarning,
    load,
    read_metadata,
    save,
    sharded,
)
from funcnet.checkpoint.index import index_digest
from funcnet.checkpoint.sharded_read import ShardReader
from funcnet.checkpoint.shards import assemble, box_of_index, check_tiling

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import _sharded_ckpt_worker as worker  # noqa: E402

STRICT_DTYPES = False  # fit with optax below
RUN_ENV = "FUNCNET_SHARDED_CKPT_RUN"  # the 4-device child reuses the parent's run

needs4 = pytest.mark.skipif(
    jax.device_count() < 4, reason="needs 4 devices; test_four_virtual_devices runs it"
)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """The two-process run: its directory, and the checkpoint directory's listing right after."""
    given = os.environ.get(RUN_ENV)
    if given:
        return {"out": given, "listing": None}
    out = str(tmp_path_factory.mktemp("two_processes"))
    argv = [sys.executable, os.path.join(HERE, "_sharded_ckpt_worker.py"), out]
    with pytest.raises(RuntimeError, match=r"process 1 of 2 exited with code -9"):
        distributed.launch(argv, 2, cpu_devices=2, timeout=240)  # stops process 0 too
    return {"out": out, "listing": sorted(os.listdir(os.path.join(out, "ckpt")))}


def _ckpt(run) -> str:
    return os.path.join(run["out"], "ckpt")


def _result(run, name: str, process: int) -> dict:
    with open(os.path.join(run["out"], f"{name}_{process}.json")) as f:
        return json.load(f)


def _check_values(back) -> None:
    v = worker.values()
    np.testing.assert_array_equal(np.asarray(back["params"]["a"]), v["a"])
    np.testing.assert_array_equal(np.asarray(back["params"]["b"]), v["b"])
    np.testing.assert_array_equal(np.asarray(back["scale"]), v["scale"])
    np.testing.assert_array_equal(np.asarray(jax.random.key_data(back["key"])), v["key"])
    assert back["step"] == 7


# ----------------------------------------------------------------------------- two processes


def test_two_processes_saved_and_restored_only_their_shards(run):
    with open(os.path.join(_ckpt(run), "step_00000001", "index.json")) as f:
        index = json.load(f)["index"]
    assert index["process_count"] == 2
    assert sorted(index["files"]) == ["process_00000.safetensors", "process_00001.safetensors"]
    a_shards = index["arrays"]["params/a"]["shards"]
    # split over all 4 devices: 4 shards, 2 written by each process; "b" (replicated over
    # "model") once per row block, the replicated scalar and key once
    assert sorted(s["index"] for s in a_shards) == [
        [[r, r + 4], [c, c + 3]] for r in (0, 4) for c in (0, 3)
    ]
    assert [s["file"] for s in a_shards].count("process_00001.safetensors") == 2
    assert len(index["arrays"]["params/b"]["shards"]) == 2
    assert len(index["arrays"]["scale"]["shards"]) == len(index["arrays"]["key"]["shards"]) == 1
    read_a = []
    for p in (0, 1):
        result = _result(run, "result", p)
        assert result["count"] == 2 and result["steps"] == [1]
        reads = {(name, k) for name, k in result["reads"]}
        # restored with "a" split by rows over "data" only: half of its saved shards
        mine = sorted(k for name, k in reads if name == "params/a")
        assert len(mine) == 2
        rows = {tuple(a_shards[k]["index"][0]) for k in mine}
        assert len(rows) == 1  # the two column blocks of one row block
        read_a.append(rows.pop())
        assert {("params/b", 0), ("params/b", 1), ("scale", 0), ("key", 0)} <= reads
    assert sorted(read_a) == [(0, 4), (4, 8)]


def test_killed_mid_async_save_leaves_the_previous_checkpoint(run):
    partial = [n for n in run["listing"] if n.startswith(".step_00000002.")]
    assert len(partial) == 1 and partial[0].endswith(".tmp"), run["listing"]
    assert "step_00000002" not in run["listing"]
    timing = _result(run, "async", 0)
    assert timing["busy_after_save"]  # save returned while its shards were still being written
    manager = CheckpointManager(_ckpt(run))  # removes the dead processes' partial directory
    assert manager.all_steps() == [1] and not any(".tmp" in n for n in os.listdir(_ckpt(run)))
    restored = manager.restore_latest()
    assert restored.step == 1 and restored.skipped == []
    _check_values(restored.tree)
    assert manager.metrics(1) == {"loss": 0.5}


def test_restore_in_one_process_on_one_device(run):
    path = os.path.join(_ckpt(run), "step_00000001")
    _check_values(load(path))
    like = jax.tree.map(jnp.zeros_like, worker.tree(jax.make_mesh((1, 1), ("data", "model"))))
    like["step"] = 0
    back = load(path, like=like)
    _check_values(back)
    assert back["params"]["a"].sharding == like["params"]["a"].sharding
    meta = read_metadata(path)
    assert meta["sharded"] and meta["process_count"] == 2 and meta["step"] == 1
    assert meta["tensors"]["params/a"] == {"dtype": "F32", "shape": [8, 6]}


@needs4
def test_mesh4_restore_on_four_devices(run):
    path = os.path.join(_ckpt(run), "step_00000001")
    v = worker.values()
    line = jax.make_mesh((4,), ("x",), axis_types=(AxisType.Explicit,))
    square = jax.make_mesh((2, 2), ("data", "model"), axis_types=(AxisType.Auto,) * 2)
    for mesh, spec_a, spec_b in [
        (line, P("x"), P("x")),
        (line, P(), P()),
        (square, P(("model", "data")), P("data")),
        (square, P("model", "data"), P(None, "model")),
    ]:
        like = jax.tree.map(jnp.zeros_like, worker.tree(square))
        like["params"]["a"] = jax.device_put(like["params"]["a"], NamedSharding(mesh, spec_a))
        like["params"]["b"] = jax.device_put(like["params"]["b"], NamedSharding(mesh, spec_b))
        like["step"] = 0
        back = load(path, like=like)
        assert back["params"]["a"].sharding.spec == spec_a
        for name in ("a", "b"):
            x = back["params"][name]
            assert len(x.addressable_shards) == 4
            for shard in x.addressable_shards:
                np.testing.assert_array_equal(np.asarray(shard.data), v[name][shard.index])
        _check_values(back)


def test_four_virtual_devices(run, monkeypatch):
    monkeypatch.setenv(RUN_ENV, run["out"])
    run_mesh4_tests("test_sharded_checkpoint.py")


def _flip(path: str, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset, 0 if offset >= 0 else 2)
        byte = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([byte[0] ^ 0x55]))


def test_corrupt_shard_file_is_detected_and_named(run, tmp_path):
    good = os.path.join(_ckpt(run), "step_00000001")
    copy = str(tmp_path / "step_00000001")
    shutil.copytree(good, copy)
    _flip(os.path.join(copy, "process_00001.safetensors"), -1)  # the last shard: params/b's
    with pytest.raises(CheckpointError, match=r"checksum does not match") as info:
        load(copy)
    assert info.value.corrupt
    assert re.search(r"`params/b` in `process_00001\.safetensors`", str(info.value))
    # a template without `params/b` reads (and checks) only the other shards: it loads
    like = {"params": {"a": np.zeros((8, 6), np.float32)}}
    with pytest.warns(CheckpointWarning, match=r"4 unexpected"):
        part = load(copy, like=like, strict=False)
    np.testing.assert_array_equal(part["params"]["a"], worker.values()["a"])
    # a manager falls back to the intact step, and sets the corrupt one aside
    managed = tmp_path / "managed"
    shutil.copytree(good, managed / "step_00000001")
    shutil.copytree(copy, managed / "step_00000003")
    manager = CheckpointManager(managed)
    with pytest.warns(CheckpointWarning, match=r"step_00000003`: .*checksum does not match"):
        restored = manager.restore_latest()
    assert restored.step == 1 and manager.all_steps() == [1]
    assert (managed / "step_00000003.corrupt").is_dir()
    _check_values(restored.tree)


def test_damaged_shard_files_are_named(run, tmp_path):
    good = os.path.join(_ckpt(run), "step_00000001")

    def grow(path):
        with open(path, "ab") as f:
            f.write(b"x")

    first, second = "process_00000.safetensors", "process_00001.safetensors"
    cases = [
        (first, lambda p: _flip(p, 20), "checksum of its header"),
        (first, grow, "bytes, its index says"),
        (second, os.remove, "process_00001.safetensors` cannot be read .* does not exist"),
        ("index.json", os.remove, "has no `index.json`"),
        ("index.json", lambda p: _flip(p, -5), "checksum of its `index.json`|not valid JSON"),
    ]
    for k, (name, damage, message) in enumerate(cases):
        copy = str(tmp_path / f"c{k}")
        shutil.copytree(good, copy)
        damage(os.path.join(copy, name))
        with pytest.raises(CheckpointError, match=message) as info:
            load(copy)
        assert info.value.corrupt and copy in str(info.value)


# ----------------------------------------------------------------------------- slices


def _guillotine(rng, box, depth=0):
    """A random tiling of ``box``: cut it in two along a random axis, recursively."""
    cuttable = [d for d, (s, e) in enumerate(box) if e - s > 1]
    if not cuttable or depth > 4 or rng.random() < 0.25:
        return [box]
    d = rng.choice(cuttable)
    s, e = box[d]
    at = int(rng.integers(s + 1, e))
    left = tuple((s, at) if i == d else b for i, b in enumerate(box))
    right = tuple((at, e) if i == d else b for i, b in enumerate(box))
    return _guillotine(rng, left, depth + 1) + _guillotine(rng, right, depth + 1)


def _random_box(rng, shape):
    box = []
    for n in shape:
        s = int(rng.integers(0, n + 1))
        box.append((s, int(rng.integers(s, n + 1))))
    return tuple(box)


def _slices(box):
    return tuple(slice(s, e) for s, e in box)


def test_assemble_matches_numpy_on_random_layouts():
    rng = np.random.default_rng(0)
    for _ in range(60):
        shape = tuple(int(n) for n in rng.integers(1, 7, size=rng.integers(0, 4)))
        x = rng.normal(size=shape).astype(np.float32)
        boxes = _guillotine(rng, tuple((0, n) for n in shape))
        assert check_tiling(shape, boxes) is None
        pieces = [(b, x[_slices(b)].copy()) for b in boxes]
        rng.shuffle(pieces)
        for _ in range(4):
            box = _random_box(rng, shape)
            np.testing.assert_array_equal(assemble(box, x.dtype, pieces), x[_slices(box)])
        if len(boxes) > 1:
            assert "cover" in check_tiling(shape, boxes[1:])
            with pytest.raises(ValueError, match=r"cover .* of the .* elements"):
                assemble(tuple((0, n) for n in shape), x.dtype, pieces[1:], name="w")
            assert "overlap" in check_tiling(shape, [*boxes, boxes[0]])


def test_restore_assembles_random_saved_layouts(tmp_path):
    """Shards of random (non-grid) layouts saved, read back into random boxes."""
    rng = np.random.default_rng(1)
    arrays = {
        "f": rng.normal(size=(7, 5, 3)).astype(np.float32),
        "i": rng.integers(0, 9, size=(6, 4)).astype(np.int16),
        "h": rng.normal(size=(9,)).astype(jnp.bfloat16),
        "z": np.zeros((0, 3), np.float32),
    }
    path = str(tmp_path / "layouts")
    pending = sharded.prepare_sharded(path, arrays)
    pending.shards = [
        (name, box, np.ascontiguousarray(x[_slices(box)]))
        for name, x in arrays.items()
        for box in _guillotine(rng, tuple((0, n) for n in x.shape))
    ]
    pending.run()
    _, kinds = sharded_read_index(path)
    assert set(kinds) == set(arrays)
    with ShardReader(path, sharded_read_index(path)[0]) as reader:
        for name, x in arrays.items():
            for _ in range(5):
                box = _random_box(rng, x.shape)
                np.testing.assert_array_equal(reader.read(name, box), x[_slices(box)])
    back = load(path)
    for name, x in arrays.items():
        np.testing.assert_array_equal(back[name], x)
        assert back[name].dtype == x.dtype


def sharded_read_index(path):
    from funcnet.checkpoint.index import read_index

    return read_index(path)


def test_box_of_index_errors():
    assert box_of_index((slice(1, None),), (4, 2)) == ((1, 4), (0, 2))
    with pytest.raises(ValueError, match=r"has 3 in dimension 0"):
        box_of_index((3,), (4,))
    with pytest.raises(ValueError, match=r"has step 2"):
        box_of_index((slice(0, 4, 2),), (4,))
    with pytest.raises(ValueError, match=r"more entries than the shape"):
        box_of_index((slice(None),) * 2, (4,))
    assert check_tiling((), [(), ()]) == "a 0-d array is stored as one shard, got 2"
    assert "outside the array's shape" in check_tiling((4,), [((0, 5),)])
    assert "has 2 dimensions" in check_tiling((4,), [((0, 4), (0, 1))])


# ----------------------------------------------------------------------------- the index


@pytest.fixture
def saved(tmp_path):
    tree = {"w": jnp.arange(12.0).reshape(4, 3), "n": 3, "k": jax.random.key(1)}
    return save(tmp_path / "ckpt", tree, sharded=True, metadata={"run": "x"}), tree


def _tamper(path, change, rehash: bool = True) -> None:
    with open(os.path.join(path, "index.json")) as f:
        doc = json.load(f)
    change(doc["index"])
    if rehash:  # a forger recomputes the checksum: the checks must still catch it
        doc["sha256"] = index_digest(doc["index"])
    with open(os.path.join(path, "index.json"), "w") as f:
        json.dump(doc, f)


def _shard0(index):
    return index["arrays"]["w"]["shards"][0]


INDEX_CASES = {
    "path in a file name": (
        lambda i: i["files"].update({"../evil.safetensors": i["files"].popitem()[1]}),
        r"names the file '\.\./evil\.safetensors', expected process_<n>",
    ),
    "unhashable file": (lambda i: _shard0(i).update(file=["x"]), r"shard 0 names the file"),
    "unknown file": (
        lambda i: _shard0(i).update(file="process_00009.safetensors"),
        r"not among the files",
    ),
    "outside": (lambda i: _shard0(i).update(index=[[0, 5], [0, 3]]), r"outside the array's shape"),
    "gap": (lambda i: _shard0(i).update(index=[[0, 3], [0, 3]]), r"cover 9 of the array's 12"),
    "overlap": (lambda i: i["arrays"]["w"]["shards"].append(dict(_shard0(i))), r"overlap at"),
    "bad box": (lambda i: _shard0(i).update(index=[[0, 4]]), r"expected 2 \[start, stop\]"),
    "dtype": (lambda i: i["arrays"]["w"].update(dtype="F99"), r"unsupported dtype 'F99'"),
    "shape": (lambda i: i["arrays"]["w"].update(shape=[4, -3]), r"non-negative ints"),
    "extra key": (lambda i: i["arrays"]["w"].update(extra=1), r"`w` is malformed"),
    "sha": (lambda i: _shard0(i).update(sha256="00"), r"malformed sha256"),
    "file entry": (
        lambda i: i["files"]["process_00000.safetensors"].update(size="9"),
        r"malformed entry for the file",
    ),
    "tree": (lambda i: i["tree"][1][0][1].__setitem__(1, "v"), r"its tree is malformed at `k`"),
    "no arrays": (lambda i: i.pop("arrays"), r"missing `arrays`"),
    "process count": (lambda i: i.update(process_count=0), r"`process_count` = 0"),
    "arrays type": (lambda i: i.update(arrays=[]), r"`arrays` = an array, expected an object"),
    "step": (lambda i: i.update(step=-1), r"`step` = -1"),
    "tensor": (lambda i: _shard0(i).update(tensor=7), r"names the tensor 7"),
    "wrong tensor": (
        lambda i: _shard0(i).update(tensor="99"),
        r"tensor '99'\) is not F32\[4, 3\] there",
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(INDEX_CASES))
def test_index_is_checked_as_untrusted_input(saved, case):
    path, _ = saved
    change, message = INDEX_CASES[case]
    _tamper(path, change)
    with pytest.raises(CheckpointError, match=message) as info:
        load(path)
    assert info.value.corrupt and path in str(info.value)


def test_index_checksum_version_and_format(saved):
    path, _ = saved
    _tamper(path, lambda i: i.update(step=5), rehash=False)
    with pytest.raises(CheckpointError, match=r"checksum of its `index.json` does not match"):
        load(path)
    _tamper(path, lambda i: i.update(format_version=99, step=None))
    with pytest.raises(CheckpointError, match=r"format version 99, .* Upgrade funcnet") as info:
        load(path)
    assert not info.value.corrupt
    with open(os.path.join(path, "index.json"), "w") as f:
        json.dump({"format": "other", "sha256": "", "index": {}}, f)
    with pytest.raises(CheckpointError, match=r"format marker is 'other'"):
        load(path)
    os.remove(os.path.join(path, "index.json"))
    os.mkdir(os.path.join(path, "index.json"))
    with pytest.raises(CheckpointError, match=r"`index.json` cannot be read \(Is a directory\)"):
        load(path)


def test_save_picks_the_format_and_load_fits_templates(saved, tmp_path):
    path, tree = saved
    assert os.path.isdir(path) and read_metadata(path)["metadata"] == {"run": "x"}
    back = load(path, like=tree)
    np.testing.assert_array_equal(back["w"], tree["w"])
    assert back["n"] == 3 and jax.random.key_data(back["k"]).tolist() == [0, 1]
    with pytest.raises(CheckpointError, match=r"does not fit `like`: 0 missing, 0 unexpected, 1"):
        load(path, like={**tree, "w": jnp.zeros((3, 4))})
    with pytest.warns(CheckpointWarning, match=r"kept the template's values for 1 missing"):
        part = load(path, like={**tree, "extra": jnp.ones(2)}, strict=False)
    assert part["extra"].tolist() == [1.0, 1.0]
    assert os.path.isfile(save(tmp_path / "one.safetensors", tree))  # addressable: one file
    assert not sharded.needs_sharded(tree)


# ----------------------------------------------------------------------------- commit


def test_a_failed_sharded_save_keeps_the_previous_one(tmp_path, monkeypatch):
    path = str(tmp_path / "c")
    save(path, {"w": jnp.zeros(3)}, sharded=True)

    def full(p, k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(sharded, "_write_hook", full)
    with pytest.raises(OSError, match=r"No space left"):
        save(path, {"w": jnp.ones(3)}, sharded=True)
    assert load(path)["w"].tolist() == [0.0, 0.0, 0.0]
    leftover = [n for n in os.listdir(tmp_path) if n != "c"]
    assert len(leftover) == 1 and leftover[0].startswith(".c.")  # hidden, never listed
    monkeypatch.setattr(sharded, "_write_hook", None)
    save(path, {"w": jnp.ones(3)}, sharded=True)  # replaces the old one
    assert load(path)["w"].tolist() == [1.0, 1.0, 1.0]


def test_commit_waits_for_every_process_and_reports_them(tmp_path):
    pending = sharded.prepare_sharded(tmp_path / "c", {"w": jnp.zeros(2)}, timeout=0.2)
    pending.count = 2  # as if a second process never wrote its shards
    with pytest.raises(TimeoutError, match=r"process\(es\) \[1\] did not finish writing"):
        pending.run()
    assert os.path.exists(os.path.join(pending.tmp, sharded.FAILED))
    pending = sharded.prepare_sharded(tmp_path / "d", {"w": jnp.zeros(2)}, timeout=5)
    pending.count = 2
    os.makedirs(pending.tmp)
    sharded._put_manifest(pending.tmp, 1, {"error": "OSError: disk full"})
    with pytest.raises(CheckpointError, match=r"process 1 failed to write its shards .*disk full"):
        pending.run()
    assert not os.path.exists(tmp_path / "d")
    # a process other than 0 waits for process 0's commit, and hears of its failure
    other = sharded.prepare_sharded(tmp_path / "e", {"w": jnp.zeros(2)}, timeout=0.2)
    other.process = 1
    with pytest.raises(TimeoutError, match=r"process 0 did not commit it in time"):
        other.run()
    with open(os.path.join(other.tmp, sharded.FAILED), "w") as f:
        f.write("TimeoutError: slow")
    with pytest.raises(CheckpointError, match=r"process 0 could not commit it \(TimeoutError"):
        other.run()


# ----------------------------------------------------------------------------- the manager


def test_manager_keeps_sharded_steps_and_replaces_formats(tmp_path):
    manager = CheckpointManager(tmp_path, max_to_keep=2, best_metric="loss", sharded=True)
    for step, loss in [(1, 0.1), (2, 0.5), (3, 0.4), (4, 0.3)]:
        manager.save(step, {"w": jnp.full(2, step)}, metrics={"loss": loss})
    assert manager.all_steps() == [1, 3, 4] and manager.best_step() == 1
    assert manager.path(4) == str(tmp_path / "step_00000004") and os.path.isdir(manager.path(4))
    assert sorted(os.listdir(tmp_path)) == ["step_00000001", "step_00000003", "step_00000004"]
    one_file = CheckpointManager(tmp_path, max_to_keep=None, sharded=False)
    one_file.save(4, {"w": jnp.full(2, 40)})  # the same step as one file replaces the directory
    assert manager.path(4).endswith("step_00000004.safetensors")
    assert manager.restore(4)["w"].tolist() == [40, 40] and manager.all_steps() == [1, 3, 4]
    assert "sharded=True, async_save=False" in repr(manager)


def test_manager_argument_errors(tmp_path):
    with pytest.raises(TypeError, match=r"`sharded` must be True, False or None"):
        CheckpointManager(tmp_path, sharded="yes")
    with pytest.raises(TypeError, match=r"`async_save` must be True or False"):
        CheckpointManager(tmp_path, async_save=None)
    with pytest.raises(ValueError, match=r"`timeout` must be a number of seconds > 0"):
        CheckpointManager(tmp_path, timeout=0)


@pytest.mark.parametrize("sharded_format", [True, False])
def test_async_save_copies_then_writes_in_the_background(tmp_path, monkeypatch, sharded_format):
    gate, started = threading.Event(), threading.Event()
    if sharded_format:
        monkeypatch.setattr(sharded, "_write_hook", lambda p, k: (started.set(), gate.wait(10)))
    else:  # the one-file writer: hold it in its first write
        from funcnet.checkpoint import format as fmt

        atomic_write = fmt.atomic_write

        def held(path, write):
            started.set()
            gate.wait(10)
            atomic_write(path, write)

        monkeypatch.setattr(fmt, "atomic_write", held)
    manager = CheckpointManager(tmp_path, async_save=True, sharded=sharded_format)
    x = jnp.arange(6.0) + 1
    manager.save(1, {"w": x})
    assert started.wait(10) and manager._writer.busy
    assert manager.all_steps() == []  # not committed while being written
    x.delete()  # the arrays were copied to the host: the caller may donate them
    gate.set()
    manager.save(2, {"w": jnp.zeros(6)})  # waits for step 1 first
    assert 1 in manager.all_steps()
    manager.wait_until_finished()
    assert manager.all_steps() == [1, 2] and not manager._writer.busy
    assert manager.restore(1)["w"].tolist() == [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]


def test_async_save_errors_surface_at_the_next_save(tmp_path, monkeypatch, capsys):
    def full(p, k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(sharded, "_write_hook", full)
    with CheckpointManager(tmp_path, async_save=True, sharded=True) as manager:
        manager.save(1, {"w": jnp.ones(2)})
        with pytest.raises(OSError, match=r"No space left"):
            manager.save(2, {"w": jnp.ones(2)})
        assert "a background checkpoint write failed: OSError" in capsys.readouterr().err
        manager.wait_until_finished()  # the error was raised once
        monkeypatch.setattr(sharded, "_write_hook", None)
        manager.save(3, {"w": jnp.ones(2)})
    assert manager.all_steps() == [3]  # leaving the block waited for it
    monkeypatch.setattr(sharded, "_write_hook", full)
    manager.save(4, {"w": jnp.ones(2)})
    with pytest.raises(OSError, match=r"No space left"):
        manager.close()
    assert manager.all_steps() == [3]


def test_fit_with_an_async_manager_resumes(tmp_path, key):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 3)).astype(np.float32)
    args = (fn.Dense(1), optax.sgd(0.1), "mse", (x, x.sum(1, keepdims=True)))
    with CheckpointManager(tmp_path, async_save=True) as manager:
        ts, _ = fn.fit(*args, epochs=2, batch_size=8, key=key, verbose=0, checkpoint=manager)
    assert manager.all_steps() == [4, 8]
    again, history = fn.fit(*args, epochs=2, batch_size=8, key=key, verbose=0, checkpoint=manager)
    assert history.epoch == []  # restored step 8: nothing left to train
    for a, b in zip(jax.tree.leaves(again.params), jax.tree.leaves(ts.params)):
        np.testing.assert_array_equal(a, b)


# ----------------------------------------------------------------------------- clusters


SLURM = {
    "SLURM_JOB_ID": "12",
    "SLURM_STEP_NODELIST": "node[1-2]",
    "SLURM_NTASKS": "2",
    "SLURM_PROCID": "1",
    "SLURM_LOCALID": "0",
}


def test_detect_cluster():
    detect = distributed.processes.detect_cluster
    assert detect({}) is None
    assert detect(SLURM) == "slurm"
    assert detect({**SLURM, "SLURM_NTASKS": "1"}) is None  # one task: one process
    assert detect({"SLURM_JOB_ID": "12"}) is None  # a batch script outside a step
    with pytest.raises(
        ValueError, match=r"SLURM job of 2 tasks .* SLURM_STEP_NODELIST, SLURM_PROCID not set.*srun"
    ):
        detect({"SLURM_JOB_ID": "12", "SLURM_NTASKS": "2", "SLURM_LOCALID": "0"})
    ompi = {"OMPI_COMM_WORLD_SIZE": "4", "OMPI_COMM_WORLD_RANK": "0"}
    assert detect({**ompi, "OMPI_MCA_orte_hnp_uri": "1.0;tcp://10.0.0.1:4000"}) == "ompi"
    with pytest.raises(ValueError, match=r"Open MPI job of 4 processes, but OMPI_MCA_orte_hnp_uri"):
        detect(ompi)
    with pytest.raises(ValueError, match=r"OMPI_COMM_WORLD_SIZE='x' is not an integer"):
        detect({"OMPI_COMM_WORLD_SIZE": "x"})
    assert detect({"TPU_WORKER_HOSTNAMES": "h0,h1"}) == "tpu"
    assert detect({"TPU_WORKER_HOSTNAMES": "h0"}) is None
    k8s = {"KUBERNETES_SERVICE_HOST": "10.0.0.1", "JOB_COMPLETION_INDEX": "0"}
    assert detect({"KUBERNETES_SERVICE_HOST": "10.0.0.1"}) is None  # a pod, not an indexed job
    if importlib_util_missing("kubernetes"):
        with pytest.raises(ValueError, match=r"`kubernetes` package .*jax\[k8s\]"):
            detect(k8s)


def importlib_util_missing(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is None


def test_initialize_hands_a_detected_cluster_to_jax(monkeypatch):
    for name in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
        monkeypatch.delenv(name, raising=False)
    for name, value in SLURM.items():
        monkeypatch.setenv(name, value)
    calls = []

    def fake(**kwargs):
        calls.append(kwargs)
        raise RuntimeError("connection refused")

    monkeypatch.setattr(jax.distributed, "initialize", fake)
    with pytest.raises(RuntimeError, match=r"looks like a 'slurm' cluster, .*connection refused"):
        distributed.initialize(initialization_timeout=7)
    assert calls[0]["initialization_timeout"] == 7 and calls[0]["cluster_detection_method"] is None
    monkeypatch.setenv("SLURM_NTASKS", "1")
    assert distributed.initialize() == (0, 1) and len(calls) == 1  # one task: nothing started
    monkeypatch.delenv("SLURM_PROCID")
    monkeypatch.setenv("SLURM_NTASKS", "2")
    with pytest.raises(ValueError, match=r"SLURM_PROCID not set"):
        distributed.initialize()
    with pytest.raises(RuntimeError, match=r"looks like a 'mpi4py' cluster"):
        distributed.initialize(cluster="mpi4py")
    assert calls[-1]["cluster_detection_method"] == "mpi4py"


def test_no_warnings_from_a_plain_sharded_round_trip(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        path = save(tmp_path / "c", {"w": jnp.ones((2, 2))}, sharded=True)
        assert load(path)["w"].tolist() == [[1.0, 1.0], [1.0, 1.0]]


def _nodes(doc, path=()):
    """Every (container, key) position in a JSON document."""
    items = (
        doc.items() if isinstance(doc, dict) else enumerate(doc) if isinstance(doc, list) else []
    )
    for k, v in items:
        yield doc, k
        yield from _nodes(v, (*path, k))


def test_forged_index_mutations_raise_only_checkpoint_errors(tmp_path):
    """Random edits of the index with a recomputed checksum: a CheckpointError or a clean load."""
    tree = {
        "w": jnp.arange(12.0).reshape(4, 3),
        "n": 3,
        "k": jax.random.key(1),
        "b": jnp.ones(2, bool),
    }
    path = save(tmp_path / "ckpt", tree, sharded=True)
    with open(os.path.join(path, "index.json")) as f:
        original = json.load(f)
    rng = np.random.default_rng(0)
    junk = [None, True, -1, 0, 2**70, 1.5, "", "x", "F32", [], [[0, 1]], {}, {"a": 1}]
    outcomes = set()
    for _ in range(150):
        doc = json.loads(json.dumps(original))
        positions = list(_nodes(doc["index"]))
        container, key = positions[rng.integers(len(positions))]
        if rng.random() < 0.2 and isinstance(container, dict):
            del container[key]
        else:
            container[key] = junk[rng.integers(len(junk))]
        doc["sha256"] = index_digest(doc["index"])
        with open(os.path.join(path, "index.json"), "w") as f:
            json.dump(doc, f)
        try:
            load(path)
            outcomes.add("loaded")
        except CheckpointError:
            outcomes.add("error")
    assert "error" in outcomes


def test_every_byte_of_a_shard_file_is_checked(tmp_path):
    path = save(tmp_path / "ckpt", {"w": jnp.arange(12.0), "b": jnp.ones(3, bool)}, sharded=True)
    shard_file = os.path.join(path, "process_00000.safetensors")
    size = os.path.getsize(shard_file)
    rng = np.random.default_rng(0)
    for offset in sorted({0, 8, size - 1, *rng.integers(0, size, 25).tolist()}):
        copy = str(tmp_path / f"c{offset}")
        shutil.copytree(path, copy)
        _flip(os.path.join(copy, "process_00000.safetensors"), offset)
        with pytest.raises(CheckpointError, match=r"process_00000\.safetensors") as info:
            load(copy)
        assert info.value.corrupt
