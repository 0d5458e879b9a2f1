"""Hostile checkpoint files: corruptions, forged headers and trees, special files, a fuzzer.

Loading a damaged checkpoint must give either the exact data that was saved
or a ``CheckpointError`` naming the file: never another exception, a hang, an
unbounded allocation, or different data. A forger who recomputes the checksum
can make a valid checkpoint of other data; then the structure checks must
still reject anything malformed.

The fuzzer (``tests/_fuzz_checkpoint_worker.py``) runs in a subprocess with a
memory cap and a time limit per case; ``FUNCNET_FUZZ_CASES=10000`` (default
1000, a few seconds) and ``FUNCNET_FUZZ_SEED`` (default 0) run it longer or
differently.
"""

import hashlib
import json
import os
import re
import socket
import struct
import subprocess
import sys
import threading
import tracemalloc
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from funcnet.checkpoint import CheckpointError, load, read_metadata, save

ROOT = Path(__file__).parent.parent
WORKER = Path(__file__).parent / "_fuzz_checkpoint_worker.py"


def _env(**extra):
    """A subprocess environment: CPU, this checkout, the tests' persistent compilation cache."""
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))
    env.pop("XLA_FLAGS", None)
    cache = jax.config.jax_compilation_cache_dir
    if cache:
        env.update(JAX_COMPILATION_CACHE_DIR=str(cache))
    env.update(extra)
    return env


def _valid_file(tmp_path) -> Path:
    path = tmp_path / "good.safetensors"
    save(path, {"w": jnp.arange(12.0).reshape(3, 4), "b": jnp.ones(4)}, metadata={"who": "me"})
    return path


def _header_len(raw: bytes) -> int:
    return struct.unpack("<Q", raw[:8])[0]


def _digest(table: dict, info: str, data: bytes) -> str:
    """The checksum, computed here independently of funcnet (as a forger would)."""
    h = hashlib.sha256(json.dumps(table, sort_keys=True, separators=(",", ":")).encode())
    h.update(b"\n" + info.encode() + b"\n" + data)
    return h.hexdigest()


def _write_raw(path, header, data: bytes = b"", text: str | None = None) -> Path:
    raw = (text if text is not None else json.dumps(header)).encode()
    Path(path).write_bytes(struct.pack("<Q", len(raw)) + raw + data)
    return Path(path)


def _forge(path, table: dict, info, data: bytes) -> Path:
    """A funcnet file of ``table``, ``info`` (a dict or JSON text) and ``data``, checksummed."""
    text = info if isinstance(info, str) else json.dumps(info)
    meta = {"format": "funcnet.checkpoint", "funcnet": text, "sha256": _digest(table, text, data)}
    return _write_raw(path, {**table, "__metadata__": meta}, data)


_X = {"x": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}
_INFO = {"format_version": 1, "funcnet_version": "0", "jax_version": "0", "metadata": {}}


def test_a_forged_file_loads(tmp_path):  # the helpers above write what funcnet reads
    tree = ["dict", [["x", ["array", "x"]]]]
    path = _forge(tmp_path / "f.safetensors", _X, {**_INFO, "tree": tree}, b"\0\0\x80\x3f")
    np.testing.assert_array_equal(load(path)["x"], [1.0])


# ----------------------------------------------------------------------------- damaged files


def _corrupt(kind: str, raw: bytes) -> bytes:
    n = _header_len(raw)
    if kind == "empty":
        return b""
    if kind == "short":
        return raw[:5]
    if kind == "cut_header":
        return raw[: 8 + n // 2]
    if kind == "cut_data":
        return raw[:-7]
    if kind == "trailing":
        return raw + b"\0\0\0\0"
    if kind == "flip_data":
        b = bytearray(raw)
        b[8 + n + 5] ^= 0x10
        return bytes(b)
    if kind == "flip_header":
        b = bytearray(raw)
        b[9] ^= 0xFF
        return bytes(b)
    if kind == "huge_header":
        return struct.pack("<Q", 1 << 40) + raw[8:]
    if kind == "tamper_metadata":  # same length, valid JSON, different content
        return raw.replace(b'\\"who\\":\\"me\\"', b'\\"who\\":\\"it\\"')
    if kind == "tamper_shape":
        return raw.replace(b'"shape":[3,4]', b'"shape":[4,3]')
    if kind == "tamper_version":  # claims a newer format: the checksum still says corrupt
        return raw.replace(b'\\"format_version\\":1', b'\\"format_version\\":7')
    raise AssertionError(kind)


@pytest.mark.parametrize(
    "kind, message",
    [
        ("empty", r"truncated \(0 bytes; a checkpoint has at least 8\)"),
        ("short", r"truncated \(5 bytes"),
        ("cut_header", r"truncated \(\d+ bytes, its header alone needs \d+\)"),
        ("cut_data", r"truncated: its arrays need 64 bytes of data, only 57 are there"),
        ("trailing", r"4 unexpected bytes after its data"),
        ("flip_data", r"checksum does not match: the file is corrupted or was modified"),
        ("flip_header", r"the header is not valid JSON"),
        ("huge_header", r"header length field is 1099511627776 bytes"),
        ("tamper_metadata", r"checksum does not match"),
        ("tamper_shape", r"checksum does not match"),
        (
            "tamper_version",
            r"checksum does not match.*claims format version 7; this funcnet reads 1",
        ),
    ],
)
def test_bad_files_raise_naming_the_file(tmp_path, kind, message):
    good = _valid_file(tmp_path)
    raw = _corrupt(kind, good.read_bytes())
    assert raw != good.read_bytes()
    bad = tmp_path / f"{kind}.safetensors"
    bad.write_bytes(raw)
    with pytest.raises(
        CheckpointError, match=rf"checkpoint `.*{kind}\.safetensors`: .*{message}"
    ) as err:
        load(bad)
    assert err.value.corrupt


def test_file_shrinking_while_read(tmp_path, monkeypatch):
    good = _valid_file(tmp_path)
    real_fstat = os.fstat

    class Stat:
        def __init__(self, st):
            self.st_size, self.st_mode = st.st_size + 8, st.st_mode

    monkeypatch.setattr(os, "fstat", lambda fd: Stat(real_fstat(fd)))
    good.write_bytes(good.read_bytes()[:-8])  # 8 bytes short, but fstat claims the full size
    with pytest.raises(CheckpointError, match=r"truncated: read 56 of 64 bytes of data"):
        load(good)


def _metadata_span(raw: bytes) -> tuple[int, int]:
    """Where ``"__metadata__":{...}`` lies in the file: the marker, its keys and values."""
    return raw.index(b'"__metadata__"'), 8 + _header_len(raw)  # save writes it last


def test_no_single_byte_turns_verification_off(tmp_path):
    # A file whose data is corrupted must never load, whatever one other byte of its
    # header (the format marker, the metadata keys, ...) is changed to: a corrupted
    # marker must not make the file look like a foreign safetensors file (whose data is
    # not checksummed).
    raw = bytearray(_valid_file(tmp_path).read_bytes())
    n = _header_len(raw)
    raw[8 + n + 5] ^= 0x10  # corrupt the data
    bad = tmp_path / "bad.safetensors"
    begin, end = _metadata_span(raw)
    meta = bytes(raw[begin:end])
    marker = range(begin, begin + meta.index(b'"funcnet":') + len(b'"funcnet":'))
    keys = [begin + meta.index(k) + i for k in (b'"funcnet"', b'"sha256"') for i in range(9)]
    values = b'"{}[]:,\\ 0_adfmnortFMNT\x00\xff'  # JSON syntax, and letters of the keys
    cases = [(i, v) for i in [*marker, *keys] for v in values if v != raw[i]]
    cases += [(i, raw[i] ^ (1 << bit)) for i in range(8 + n) for bit in range(8)]  # every bit
    bad.write_bytes(raw)
    fd = os.open(bad, os.O_WRONLY)
    try:
        for i, value in cases:
            os.pwrite(fd, bytes([value]), i)
            with pytest.raises(CheckpointError, match=r"checkpoint `.*bad\.safetensors`: "):
                load(bad)
            os.pwrite(fd, raw[i : i + 1], i)
    finally:
        os.close(fd)


@pytest.mark.parametrize(
    "meta, message",
    [
        ({"format": "funcnet.checkpoinu"}, r"format marker is 'funcnet.checkpoinu', expected"),
        ({"format": None}, r"`__metadata__\['format'\]` is null, expected a string"),
        ({"sha256": "A" * 64}, r"its sha256 is 'AAAA.*', expected 64 lowercase hex digits"),
        ({"funcnet": None}, r"`__metadata__\['funcnet'\]` is null"),
        ({"funcnes": "{}"}, r"damaged: expected the keys .* unexpected \['funcnes'\]"),
        ({"extra": "x"}, r"damaged: .*missing \[\], unexpected \['extra'\]"),
    ],
)
def test_a_damaged_marker_is_an_error_not_a_foreign_file(tmp_path, meta, message):
    good = _valid_file(tmp_path)
    raw = good.read_bytes()
    n = _header_len(raw)
    header = json.loads(raw[8 : 8 + n])
    header["__metadata__"].update(meta)
    if "funcnes" in meta:
        del header["__metadata__"]["funcnet"]
    path = _write_raw(tmp_path / "m.safetensors", header, raw[8 + n :])
    with pytest.raises(CheckpointError, match=rf"`.*m\.safetensors`: .*{message}"):
        load(path)
    with pytest.raises(CheckpointError, match=message):
        read_metadata(path)


def test_foreign_files_load_without_a_checksum(tmp_path):
    # what tells a foreign file: no `funcnet` or `sha256` key, and a format that is not ours
    table = {"x": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}
    for meta in ({}, {"format": "pt"}, {"format": "pt", "note": "hi"}):
        path = _write_raw(tmp_path / "f.safetensors", {**table, "__metadata__": meta}, b"\0" * 4)
        assert load(path)["x"].tolist() == [0.0]
        assert read_metadata(path)["metadata"] == meta
    path = _write_raw(tmp_path / "f.safetensors", table, b"\0" * 4)
    assert load(path)["x"].tolist() == [0.0]


# ----------------------------------------------------------------------------- malformed headers


def _entry(dtype="F32", shape=None, offsets=None):
    shape, offsets = [1] if shape is None else shape, [0, 4] if offsets is None else offsets
    return {"dtype": dtype, "shape": shape, "data_offsets": offsets}


_DEEP = "[" * 100_000 + "]" * 100_000


@pytest.mark.parametrize(
    "header, message",
    [
        ([1, 2], r"the header is an array, expected an object"),
        ('"x"', r"the header is a string, expected an object"),
        (_DEEP, r"the header is nested too deeply"),
        ('{"x": 1, "x": 2}', r"the header is malformed: the key 'x' appears twice"),
        ('{"x": {"shape": [1' + "0" * 5000 + "]}}", r"the header is not valid JSON \(Exceeds"),
        (b"\xff\xfe", r"the header is not valid JSON"),
        ({"__metadata__": [1]}, r"`__metadata__` is an array, expected an object of strings"),
        ({"__metadata__": "x"}, r"`__metadata__` is a string, expected an object"),
        ({"__metadata__": None}, r"`__metadata__` is null, expected an object"),
        ({"__metadata__": {"a": 1}}, r"`__metadata__\['a'\]` is a number, expected a string"),
        (
            {"x": 5},
            r"entry `x` is malformed: expected keys dtype, shape, data_offsets, got a number",
        ),
        ({"x": {"dtype": "F32"}}, r"entry `x` is malformed: .* got \['dtype'\]"),
        ({"x": {**_entry(), "extra": 1}}, r"entry `x` is malformed"),
        ({"x": _entry(dtype="Q9")}, r"entry `x` has the unsupported dtype 'Q9'; expected one of"),
        ({"x": _entry(dtype=["F32"])}, r"entry `x` has the unsupported dtype \['F32'\]"),
        ({"x": _entry(shape=["1"])}, r"`x` has the shape \['1'\], expected a list of non-neg"),
        ({"x": _entry(shape=[1.0])}, r"`x` has the shape \[1.0\], expected"),
        ({"x": _entry(shape=[True])}, r"`x` has the shape \[True\], expected"),
        ({"x": _entry(shape=[-1])}, r"`x` has the shape \[-1\], expected"),
        ({"x": _entry(shape=4)}, r"`x` has the shape 4, expected"),
        ({"x": _entry(shape=[1] * 65)}, r"`x` has 65 dimensions, more than numpy allows \(64\)"),
        ({"x": _entry(shape=[0, 2**62])}, r"`x` \(F32\[0, 4611686018427387904\]\) is larger"),
        ({"x": _entry(offsets=[0.0, 4.0])}, r"`x` has the data offsets \[0.0, 4.0\], expected"),
        ({"x": _entry(offsets=["0", "4"])}, r"`x` has the data offsets \['0', '4'\]"),
        ({"x": _entry(offsets=[0, 4, 8])}, r"`x` has the data offsets \[0, 4, 8\]"),
        ({"x": _entry(offsets=[-4, 0])}, r"`x` \(F32\[1\]\) has data offsets \[-4, 0\]"),
        ({"x": _entry(offsets=[4, 0])}, r"has data offsets \[4, 0\] that do not match its size"),
        ({"x": _entry(shape=[2])}, r"`x` \(F32\[2\]\) has data offsets \[0, 4\] that do not"),
        ({"x": _entry(offsets=[4, 8])}, r"the data of `x` starts at byte 4, expected 0, leaving"),
        ({"x": _entry(), "y": _entry()}, r"the data of `y` starts at byte 0, expected 4, overlap"),
        ({"x": _entry(shape=[2**30], offsets=[0, 2**32])}, r"its arrays need 4294967296 bytes"),
        ({"x": _entry(shape=[2**30] * 2, offsets=[0, 2**62])}, r"its arrays need \d+ bytes"),
    ],
)
def test_malformed_headers(tmp_path, header, message):
    path = tmp_path / "bad.safetensors"
    if isinstance(header, bytes):
        path.write_bytes(struct.pack("<Q", len(header)) + header)
    else:
        _write_raw(path, header, b"\0" * 4, header if isinstance(header, str) else None)
    tracemalloc.start()
    try:
        with pytest.raises(CheckpointError, match=rf"checkpoint `.*bad\.safetensors`: .*{message}"):
            load(path)
        with pytest.raises(CheckpointError, match=message):
            read_metadata(path)
        assert tracemalloc.get_traced_memory()[1] < 64 * 2**20  # nothing sized by the header
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize(
    "info, message",
    [
        ("{not json", r"its funcnet metadata is not valid JSON"),
        ("[" * 5000 + "]" * 5000, r"its funcnet metadata is nested too deeply"),
        ("[]", r"its funcnet metadata is an array, expected an object"),
        ({"format_version": "1"}, r"`format_version` = '1', expected an int >= 1"),
        ({"format_version": 0}, r"`format_version` = 0, expected an int >= 1"),
        ({"format_version": True}, r"`format_version` = True, expected an int >= 1"),
        ({**_INFO, "tree": [], "metrics": [1]}, r"`metrics` = \[1\], expected an object or null"),
        ({**_INFO, "tree": [], "step": -3}, r"`step` = -3, expected an int >= 0 or null"),
        ({**_INFO, "tree": {}}, r"`tree` = \{\}, expected a list"),
        ({"format_version": 1, "tree": []}, r"its funcnet metadata is missing \["),
    ],
)
def test_malformed_funcnet_metadata(tmp_path, info, message):
    path = _forge(tmp_path / "bad.safetensors", _X, info, b"\0" * 4)
    with pytest.raises(CheckpointError, match=rf"`.*bad\.safetensors`: .*{message}") as err:
        load(path)
    assert err.value.corrupt


def test_a_newer_format_version_says_upgrade(tmp_path):
    path = _forge(tmp_path / "new.safetensors", _X, {"format_version": 99, "tree": 7}, b"\0" * 4)
    for read in (load, read_metadata):
        with pytest.raises(CheckpointError, match=r"has format version 99.*Upgrade funcnet") as err:
            read(path)
        assert not err.value.corrupt  # intact, just newer: no fallback to older checkpoints


# ----------------------------------------------------------------------------- malformed trees

_TREES = [
    (["dict", [["x", ["pickle", "x"]]]], "x", r"unknown node kind 'pickle'"),
    (["dict", 5], "(root)", r"expected a list of \[key, node\], got 5"),
    (["dict", [[["a"], ["array", "x"]]]], "(root)", r"expected \[str or int key, node\], got"),
    (["dict", [[True, ["array", "x"]]]], "(root)", r"expected \[str or int key, node\]"),
    (["dict", [["x", ["array", "x"]], ["x", ["none"]]]], "(root)", r"the key 'x' appears twice"),
    (["dict", [["x", 5]]], "x", r"expected a node \[kind, ...\], got 5"),
    (["dict", [["x", []]]], "x", r"expected a node \[kind, ...\], got \[\]"),
    (["dict", [["x", ["array"]]]], "x", r"a array node of 1 items, expected 2"),
    (["node", 3, [["x", ["array", "x"]]]], "(root)", r"the type name is 3, not a string"),
    (["namedtuple", "T", [[0, ["array", "x"]]]], "(root)", r"expected \[field name, node\]"),
    (["tuple", {"a": 1}], "(root)", r"a tuple of \{'a': 1\}, expected a list"),
    (["dict", [["x", ["int", "x"]]]], "x", r"a Python int is stored as I64\[\], got F32\[1\]"),
    (["dict", [["x", ["key", "x", "nope"]]]], "x", r"a PRNG key of implementation 'nope' .*F32"),
    (
        ["dict", [["x", ["key", "x", "rbg"]]]],
        "x",
        r"a PRNG key of implementation 'rbg' with data F32\[1\], .*invalid PRNG key",
    ),
    (
        ["dict", [["x", ["key", "x", ["rbg"]]]]],
        "x",
        r"a PRNG key whose implementation is \['rbg'\]",
    ),
    (["dict", [["x", ["array", "y"]]]], "x", r"the leaf names the array 'y', not its path"),
    (["dict", [["y", ["array", "y"]]]], "y", r"the file has no array of this name"),
    (["list", []], None, r"its tree does not match its arrays: no leaf for \['x'\]"),
    (["list", [["list", [["array", "0/0"]]]]], "0/0", r"the file has no array of this name"),
]


@pytest.mark.parametrize("tree, where, message", _TREES)
def test_malformed_trees_with_a_valid_checksum(tmp_path, tree, where, message):
    # a forger can recompute the checksum: the structure check must catch the rest
    path = _forge(tmp_path / "t.safetensors", _X, {**_INFO, "tree": tree}, b"\0" * 4)
    at = rf"its tree is malformed at `{re.escape(where)}`: " if where else ""
    with pytest.raises(CheckpointError, match=rf"checkpoint `.*t\.safetensors`: {at}{message}"):
        load(path)


def test_two_leaves_with_one_path(tmp_path):
    table = {"1": _entry(), "2": _entry(offsets=[4, 8])}
    tree = ["dict", [[1, ["array", "1"]], ["1", ["array", "1"]], ["2", ["array", "2"]]]]
    path = _forge(tmp_path / "t.safetensors", table, {**_INFO, "tree": tree}, b"\0" * 8)
    with pytest.raises(CheckpointError, match=r"malformed at `1`: a second leaf with this path"):
        load(path)


def test_trees_nested_too_deeply(tmp_path):
    deep = '["list",[' * 101 + '["array","x"]' + "]]" * 101
    text = json.dumps(_INFO)[:-1] + ', "tree": ' + deep + "}"
    path = _forge(tmp_path / "t.safetensors", _X, text, b"\0" * 4)
    with pytest.raises(CheckpointError, match=r"at `0/0/0`: nested deeper than the 100 levels"):
        load(path)
    deeper = text.replace(deep, '["list",[' * 3000 + '["none"]' + "]]" * 3000)
    path = _forge(tmp_path / "t.safetensors", _X, deeper, b"\0" * 4)
    with pytest.raises(CheckpointError, match=r"its funcnet metadata is nested too deeply"):
        load(path)
    tree = jnp.zeros(1)
    for _ in range(101):
        tree = [tree]
    with pytest.raises(ValueError, match=r"nested deeper than 100 levels .*; checkpoints hold at"):
        save(tmp_path / "deep.safetensors", tree)
    save(tmp_path / "ok.safetensors", tree[0])  # 100 levels are fine
    assert jax.tree.structure(load(tmp_path / "ok.safetensors")) == jax.tree.structure(tree[0])


def test_bool_arrays_hold_only_zeros_and_ones(tmp_path):
    table = {"b": _entry("BOOL", [2], [0, 2])}
    tree = ["dict", [["b", ["array", "b"]]]]
    path = _forge(tmp_path / "b.safetensors", table, {**_INFO, "tree": tree}, b"\x01\x02")
    with pytest.raises(CheckpointError, match=r"the bool array `b` holds bytes other than 0 and 1"):
        load(path)


# ----------------------------------------------------------------------------- special files


def _load_in_a_thread(path, unblock, timeout=20.0):
    """``load(path)``'s exception; fails (after unblocking it) if load blocks."""
    result = {}

    def run():
        try:
            load(path)
        except BaseException as err:  # handed to the test
            result["error"] = err

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        unblock()
        thread.join(timeout)
        pytest.fail(f"load({path}) blocked")
    return result.get("error")


def _make_special(tmp_path, kind: str):
    """A special file at a checkpoint path, and how to unblock a reader stuck on it."""
    path = tmp_path / f"{kind}.safetensors"
    if kind == "fifo":
        os.mkfifo(path)
        return path, lambda: os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
    if kind == "socket":
        server = socket.socket(socket.AF_UNIX)
        server.bind(str(path))
        return path, server.close
    if kind == "directory":
        path.mkdir()
        return path, lambda: None
    return Path("/dev/zero"), lambda: None  # endless: a reader would never finish


@pytest.mark.parametrize(
    "kind, what",
    [
        ("fifo", "a FIFO \\(named pipe\\)"),
        ("socket", "a socket"),
        ("directory", "a directory"),
        ("device", "a character device"),
    ],
)
def test_special_files_are_refused_without_blocking(tmp_path, kind, what):
    path, unblock = _make_special(tmp_path, kind)
    if not path.exists():
        pytest.skip(f"no {path} here")
    error = _load_in_a_thread(path, unblock)
    assert isinstance(error, CheckpointError), repr(error)
    assert re.search(
        rf"checkpoint `{re.escape(str(path))}` is {what}, not a regular file", str(error)
    )
    assert error.corrupt


def test_a_fifo_swapped_in_after_the_check_does_not_block(tmp_path, monkeypatch):
    # the path is checked with os.stat, then opened non-blocking and checked again (fstat)
    good = _valid_file(tmp_path)
    fifo, unblock = _make_special(tmp_path, "fifo")
    real_stat = os.stat
    monkeypatch.setattr(os, "stat", lambda p, *a, **k: real_stat(good if p == str(fifo) else p))
    error = _load_in_a_thread(fifo, unblock)
    assert isinstance(error, CheckpointError), repr(error)
    assert re.search(r"is a FIFO \(named pipe\), not a regular file", str(error))


# ----------------------------------------------------------------------------- the fuzzer


def _run_fuzzer(directory, seed: int, first: int, count: int) -> list[dict]:
    """Run the worker over cases ``first..first+count``; the finished cases' results."""
    command = [sys.executable, str(WORKER), str(directory), str(seed), str(first), str(count)]
    try:
        done = subprocess.run(
            command, env=_env(), capture_output=True, text=True, timeout=120 + count
        )
        stdout, problem = done.stdout, done.returncode and f"exit code {done.returncode}"
    except subprocess.TimeoutExpired as err:
        stdout, problem = (err.stdout or b"").decode(), "the time limit"
        done = None
    lines = [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]
    finished = [line for line in lines if "what" in line]
    if problem:
        last = lines[-1] if lines else None
        stderr = done.stderr[-3000:] if done else ""
        pytest.fail(f"the fuzz worker stopped ({problem}) at {last} (seed {seed}):\n{stderr}")
    return finished


def test_fuzz_loading_mutated_checkpoints(tmp_path):
    cases = int(os.environ.get("FUNCNET_FUZZ_CASES", "1000"))
    seed = int(os.environ.get("FUNCNET_FUZZ_SEED", "0"))
    results = _run_fuzzer(tmp_path, seed, 0, cases)
    assert len(results) == cases
    bad = [r for r in results if any(str(v).startswith("BAD") for v in r.values())]
    assert not bad, (
        f"{len(bad)} of {cases} mutations (seed {seed}; files kept in {tmp_path}):\n"
        + "\n".join(json.dumps(r) for r in bad[:20])
    )
    seen = {r["load"] for r in results}
    assert {"error", "same"} <= seen  # both harmless and fatal mutations were tried
