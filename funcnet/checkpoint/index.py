"""The global index of a sharded checkpoint: written by process 0, checked as untrusted input.

A sharded checkpoint is a directory::

    step_00000040/
      index.json                  this index
      process_00000.safetensors   the shards process 0 wrote
      process_00001.safetensors   ...

``index.json`` is ``{"format": "funcnet.checkpoint.sharded", "sha256": ..., "index":
{...}}``; ``sha256`` is the SHA-256 of the index's canonical JSON
(``sort_keys``, no spaces). The index holds funcnet's description (as in a
single-file checkpoint: versions, tree, metadata, step, metrics), the files
(``{"process_00000.safetensors": {"size", "header_sha256"}}``) and every array
(``{"params/0/w": {"dtype": "F32", "shape": [8, 4], "shards": [{"file",
"tensor", "index": [[0, 4], [0, 4]], "sha256"}]}}``): each shard names the
file and tensor that hold it, the box of the global array it covers and the
SHA-256 of its bytes. The shards of an array tile it exactly (no overlap, no
gap). Every field is checked before it is used: a file name is one of the
``process_<n>.safetensors`` names (never a path), every number in range.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from typing import Any, NoReturn

from funcnet.checkpoint.errors import CheckpointError
from funcnet.checkpoint.header import (
    DTYPES,
    FORMAT_VERSION,
    MAX_NDIM,
    Fail,
    check_info,
    is_int,
    json_type,
    name_str,
    parse_json,
    short,
)
from funcnet.checkpoint.shards import check_tiling
from funcnet.checkpoint.tree import check_tree

__all__ = [
    "INDEX_FILE",
    "SHARDED_FORMAT",
    "check_index",
    "index_digest",
    "process_file",
    "read_index",
]

SHARDED_FORMAT = "funcnet.checkpoint.sharded"
INDEX_FILE = "index.json"
MAX_INDEX = 1 << 30  # bytes; a larger index.json is refused unread
_FILE_RE = re.compile(r"^process_\d{5,9}\.safetensors$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_MAX_BYTES = 2**63


def process_file(process: int) -> str:
    """The name of the shard file process ``process`` writes.

    Examples:
        >>> process_file(3)
        'process_00003.safetensors'
    """
    return f"process_{int(process):05d}.safetensors"


def index_digest(index: dict) -> str:
    """The SHA-256 (hex) of ``index``'s canonical JSON (keys sorted, no spaces).

    Examples:
        >>> index_digest({"b": 1, "a": [2]}) == index_digest({"a": [2], "b": 1})
        True
    """
    text = json.dumps(index, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def failure(directory: str) -> Fail:
    """A ``fail(what)`` that raises a corrupt :class:`CheckpointError` naming ``directory``.

    Examples:
        >>> failure("ckpt")("it is broken")
        Traceback (most recent call last):
        ...
        funcnet.checkpoint.CheckpointError: checkpoint `ckpt`: it is broken; restore an earlier ...
    """

    def fail(what: str) -> NoReturn:
        raise CheckpointError(
            f"checkpoint `{directory}`: {what}; restore an earlier checkpoint or save it again.",
            corrupt=True,
        )

    return fail


def _check_files(files: Any, fail: Fail) -> None:
    if not isinstance(files, dict):
        fail(f"its index has `files` = {json_type(files)}, expected an object")
    for name, entry in files.items():
        if not _FILE_RE.match(name):
            fail(f"its index names the file {short(name)}, expected process_<n>.safetensors")
        ok = isinstance(entry, dict) and set(entry) == {"size", "header_sha256"}
        if not ok or not is_int(entry["size"]) or not 8 <= entry["size"] < _MAX_BYTES:
            fail(f"its index has a malformed entry for the file `{name}`: {short(entry)}")
        if not isinstance(entry["header_sha256"], str) or not _SHA256.match(entry["header_sha256"]):
            fail(f"its index has a malformed header checksum for `{name}`")


def _check_box(box: Any, ndim: int) -> bool:
    return (
        isinstance(box, list)
        and len(box) == ndim
        and all(isinstance(p, list) and len(p) == 2 and is_int(p[0]) and is_int(p[1]) for p in box)
    )


def _check_shard(where: str, k: int, shard: Any, ndim: int, files: dict, fail: Fail) -> tuple:
    keys = {"file", "tensor", "index", "sha256"}
    if not isinstance(shard, dict) or set(shard) != keys:
        fail(f"{where} has a malformed shard {k}: expected keys {sorted(keys)}, got {short(shard)}")
    if not isinstance(shard["file"], str) or shard["file"] not in files:
        fail(f"{where} shard {k} names the file {short(shard['file'])}, not among the files")
    if not isinstance(shard["tensor"], str):
        fail(f"{where} shard {k} names the tensor {short(shard['tensor'])}, expected a string")
    if not _check_box(shard["index"], ndim):
        fail(
            f"{where} shard {k} has the index {short(shard['index'])}, expected {ndim} "
            "[start, stop] pairs"
        )
    if not isinstance(shard["sha256"], str) or not _SHA256.match(shard["sha256"]):
        fail(f"{where} shard {k} has a malformed sha256 {short(shard['sha256'])}")
    return tuple(tuple(p) for p in shard["index"])


def _check_array(name: str, entry: Any, files: dict, fail: Fail) -> None:
    where = f"the array `{name_str(name)}`"
    if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "shards"}:
        got = short(sorted(entry)) if isinstance(entry, dict) else json_type(entry)
        fail(f"{where} is malformed in its index: expected keys dtype, shape, shards, got {got}")
    dtype, shape, shards = entry["dtype"], entry["shape"], entry["shards"]
    if not isinstance(dtype, str) or dtype not in DTYPES:
        fail(f"{where} has the unsupported dtype {short(dtype)}")
    if not isinstance(shape, list) or not all(is_int(d) and d >= 0 for d in shape):
        fail(f"{where} has the shape {short(shape)}, expected a list of non-negative ints")
    if len(shape) > MAX_NDIM or math.prod(max(d, 1) for d in shape) * 16 >= _MAX_BYTES:
        fail(f"{where} ({dtype}{short(shape)}) is larger than any array can be")
    if not isinstance(shards, list):
        fail(f"{where} has `shards` = {json_type(shards)}, expected a list")
    boxes = [_check_shard(where, k, s, len(shape), files, fail) for k, s in enumerate(shards)]
    problem = check_tiling(shape, boxes)
    if problem:
        fail(f"the shards of {where} do not tile its shape {shape}: {problem}")


def check_index(directory: str, index: Any) -> dict:
    """Check a parsed index (after its checksum); returns ``{name: (kind, key impl)}``.

    Raises:
        CheckpointError: naming ``directory`` and the first problem found.

    Examples:
        >>> check_index("ckpt", {"format_version": 1})
        Traceback (most recent call last):
        ...
        funcnet.checkpoint.CheckpointError: checkpoint `ckpt`: its funcnet metadata is missing ...
    """
    fail = failure(directory)
    if not isinstance(index, dict):
        fail(f"its index is {json_type(index)}, expected an object")
    version = index.get("format_version")
    if not is_int(version) or version < 1:
        fail(f"its index has `format_version` = {short(version)}, expected an int >= 1")
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint `{directory}` has format version {version}, written by funcnet "
            f"{short(index.get('funcnet_version'))}; this funcnet reads up to version "
            f"{FORMAT_VERSION}. Upgrade funcnet to load it."
        )
    check_info(index, fail)
    for key, expected in (("process_count", "an int >= 1"), ("files", None), ("arrays", None)):
        if key not in index:
            fail(f"its index is missing `{key}`")
        if expected and not (is_int(index[key]) and index[key] >= 1):
            fail(f"its index has `{key}` = {short(index[key])}, expected {expected}")
    _check_files(index["files"], fail)
    arrays = index["arrays"]
    if not isinstance(arrays, dict):
        fail(f"its index has `arrays` = {json_type(arrays)}, expected an object")
    for name, entry in arrays.items():
        _check_array(name, entry, index["files"], fail)
    return check_tree(index["tree"], arrays, fail)


def read_index(directory: str) -> tuple[dict, dict]:
    """The checked index of the sharded checkpoint ``directory`` and its leaf kinds.

    Raises:
        CheckpointError: when ``index.json`` is missing, too large, malformed,
            or its checksum does not match (naming the directory).

    Examples:
        >>> import os, tempfile, jax.numpy as jnp
        >>> from funcnet.checkpoint import save
        >>> path = save(os.path.join(tempfile.mkdtemp(), "c"), {"w": jnp.ones(4)}, sharded=True)
        >>> index, kinds = read_index(path)
        >>> index["arrays"]["w"]["shards"][0]["index"], kinds
        ([[0, 4]], {'w': ('array', None)})
    """
    fail = failure(directory)
    path = os.path.join(directory, INDEX_FILE)
    try:
        with open(path, "rb") as f:
            if os.fstat(f.fileno()).st_size > MAX_INDEX:
                fail(f"its `{INDEX_FILE}` is larger than {MAX_INDEX} bytes")
            raw = f.read(MAX_INDEX + 1)
    except FileNotFoundError:
        fail(f"it has no `{INDEX_FILE}` (not a sharded checkpoint, or an incomplete copy)")
    except IsADirectoryError as err:
        fail(f"its `{INDEX_FILE}` cannot be read ({err.strerror})")
    doc = parse_json(raw, f"its `{INDEX_FILE}`", fail)
    if not isinstance(doc, dict) or set(doc) != {"format", "sha256", "index"}:
        got = short(sorted(doc)) if isinstance(doc, dict) else json_type(doc)
        fail(f"its `{INDEX_FILE}` is malformed: expected keys format, index, sha256, got {got}")
    if doc["format"] != SHARDED_FORMAT:
        fail(f"its format marker is {short(doc['format'])}, expected {SHARDED_FORMAT!r}")
    digest = index_digest(doc["index"])
    if doc["sha256"] != digest:
        fail(
            f"the checksum of its `{INDEX_FILE}` does not match: the file is corrupted or was "
            f"modified (stored sha256 {short(doc['sha256'])[:14]}..., computed {digest[:12]}...)"
        )
    kinds = check_index(directory, doc["index"])
    return doc["index"], kinds
