"""The file format: safetensors with funcnet's JSON description and a SHA-256 checksum."""

from __future__ import annotations

import hashlib
import json
import math
import os
import struct
from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from funcnet.checkpoint.atomic import atomic_write
from funcnet.checkpoint.errors import CheckpointError
from funcnet.checkpoint.tree import _encode, _host_arrays, _jsonable, _leaf_kinds
from funcnet.version import __version__

FORMAT = "funcnet.checkpoint"
FORMAT_VERSION = 1
_MAX_HEADER = 256 * 1024 * 1024  # bytes; a larger header length means a corrupt file

# safetensors dtype codes <-> numpy dtypes
_DTYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "U8": np.dtype(np.uint8),
    "I8": np.dtype(np.int8),
    "U16": np.dtype(np.uint16),
    "I16": np.dtype(np.int16),
    "U32": np.dtype(np.uint32),
    "I32": np.dtype(np.int32),
    "U64": np.dtype(np.uint64),
    "I64": np.dtype(np.int64),
    "F16": np.dtype(np.float16),
    "BF16": np.dtype(jnp.bfloat16),
    "F32": np.dtype(np.float32),
    "F64": np.dtype(np.float64),
    "C64": np.dtype(np.complex64),
    "F8_E4M3": np.dtype(jnp.float8_e4m3fn),
    "F8_E5M2": np.dtype(jnp.float8_e5m2),
}
_CODES = {dtype: code for code, dtype in _DTYPES.items()}


def _host_dtype(dtype: np.dtype, name: str) -> str:
    code = _CODES.get(np.dtype(dtype))
    if code is None:
        raise TypeError(
            f"checkpoint: cannot store `{name}` of dtype {dtype}; safetensors supports "
            f"{', '.join(str(d) for d in _DTYPES.values())}. Cast it first (e.g. "
            "`x.astype(jnp.float32)`)."
        )
    return code


def _digest(table: Mapping, info: str, chunks) -> str:
    h = hashlib.sha256()
    h.update(json.dumps(table, sort_keys=True, separators=(",", ":")).encode())
    h.update(b"\n" + info.encode() + b"\n")
    for chunk in chunks:
        h.update(chunk)
    return h.hexdigest()


def _bytes_of(a: np.ndarray) -> np.ndarray:
    return a.reshape(-1).view(np.uint8)


# ----------------------------------------------------------------------------- writing


def _save(path, tree, metadata=None, extra: Mapping | None = None) -> str:
    path = os.fspath(path)
    structure, leaves = _encode(tree)
    arrays = _host_arrays(leaves)
    table: dict[str, dict] = {}
    offset = 0
    for (name, _), a in zip(leaves, arrays):
        size = a.nbytes
        table[name] = {
            "dtype": _host_dtype(a.dtype, name),
            "shape": list(a.shape),
            "data_offsets": [offset, offset + size],
        }
        offset += size
    info = {
        "format_version": FORMAT_VERSION,
        "funcnet_version": __version__,
        "jax_version": jax.__version__,
        "metadata": _jsonable(metadata if metadata is not None else {}, "metadata"),
        **_jsonable(dict(extra or {}), "metadata"),
        "tree": structure,
    }
    info_json = json.dumps(info, separators=(",", ":"))
    digest = _digest(table, info_json, (_bytes_of(a) for a in arrays))
    header = dict(table)
    header["__metadata__"] = {"format": FORMAT, "funcnet": info_json, "sha256": digest}
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)

    def write(f):
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for a in arrays:
            f.write(memoryview(_bytes_of(a)))

    if jax.process_count() == 1:
        atomic_write(path, write)
        return path
    # Several processes hold the same (replicated) arrays: process 0 writes the file once, and
    # every process waits for it, so a file another process reads next is complete.
    try:
        if jax.process_index() == 0:
            atomic_write(path, write)
    finally:
        _sync(f"funcnet.checkpoint.save {path}")
    return path


def _sync(name: str) -> None:
    from jax.experimental import multihost_utils

    multihost_utils.sync_global_devices(name)


def save(path: str | os.PathLike, tree: Any, *, metadata: Mapping | None = None) -> str:
    """Write ``tree`` to a safetensors file at ``path``, atomically.

    Args:
        path: the file to write (conventionally ``*.safetensors``); missing
            directories are created. An existing file is replaced only once
            the new one is complete and on disk.
        tree: any pytree of JAX arrays (possibly sharded, see the module
            docstring), typed PRNG keys, numpy arrays and Python scalars, e.g.
            a whole :class:`~funcnet.TrainState`. Containers: dicts (str or
            int keys), lists, tuples, NamedTuples, ``None``, and other
            registered pytree nodes.
        metadata: JSON data stored with the arrays (read it back with
            :func:`read_metadata`).

    Returns:
        ``path`` (as a string).

    Raises:
        TypeError: for a leaf that is not an array or scalar, an unsupported
            dtype, or metadata that is not JSON data.
        ValueError: when two leaves have the same path, or for arrays spread
            over several processes.

    Examples:
        >>> import os, tempfile, jax.numpy as jnp
        >>> path = os.path.join(tempfile.mkdtemp(), "params.safetensors")
        >>> save(path, ({"w": jnp.zeros((3, 2)), "b": jnp.zeros(2)}, ())) == path
        True
        >>> sorted(read_metadata(path)["tensors"])
        ['0/b', '0/w']
    """
    return _save(path, tree, metadata)


# ----------------------------------------------------------------------------- reading


class _Contents(NamedTuple):
    table: dict  # name -> {"dtype", "shape", "data_offsets"}
    meta: dict  # the header's "__metadata__" strings
    info: dict | None  # funcnet's description; None for a foreign safetensors file
    buffer: Any  # the data bytes (None when only the header was read)


def _read(path, *, data: bool = True) -> _Contents:
    """Read and check a safetensors file; every problem raises CheckpointError naming it."""
    path = os.fspath(path)

    def fail(what: str, fix: str = "restore an earlier checkpoint or save it again"):
        return CheckpointError(f"checkpoint `{path}`: {what}; {fix}.")

    try:
        f = open(path, "rb")  # noqa: SIM115 - closed below
    except FileNotFoundError:
        raise CheckpointError(
            f"checkpoint `{path}` does not exist; check the path (a CheckpointManager lists "
            "its steps with `all_steps()`)."
        ) from None
    with f:
        size = os.fstat(f.fileno()).st_size
        if size < 8:
            raise fail(f"the file is truncated ({size} bytes; a checkpoint has at least 8)")
        (n,) = struct.unpack("<Q", f.read(8))
        if n > _MAX_HEADER:
            raise fail(f"the header length field is {n} bytes, not a valid safetensors file")
        if 8 + n > size:
            raise fail(f"the file is truncated ({size} bytes, its header alone needs {8 + n})")
        try:
            header = json.loads(f.read(n).decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise fail(f"the header is not valid JSON ({err})") from None
        if not isinstance(header, dict):
            raise fail("the header is not a JSON object")
        meta = header.pop("__metadata__", None) or {}
        table = header
        spans = []
        for name, entry in table.items():
            try:
                dtype = _DTYPES[entry["dtype"]]
                shape = [int(d) for d in entry["shape"]]
                begin, end = (int(o) for o in entry["data_offsets"])
            except (KeyError, TypeError, ValueError):
                raise fail(
                    f"the entry `{name}` is malformed or has an unsupported dtype ({entry!r})"
                ) from None
            if any(d < 0 for d in shape) or end - begin != math.prod(shape) * dtype.itemsize:
                raise fail(
                    f"the entry `{name}` ({entry['dtype']}{shape}) has data offsets "
                    f"[{begin}, {end}] that do not match its size"
                )
            spans.append((begin, end, name))
        spans.sort()
        expected = 0
        for begin, end, name in spans:
            if begin != expected:
                raise fail(f"the data of `{name}` starts at byte {begin}, expected {expected}")
            expected = end
        available = size - 8 - n
        if available < expected:
            raise fail(
                f"the file is truncated: its arrays need {expected} bytes of data, only "
                f"{available} are there"
            )
        if available > expected:
            raise fail(f"the file has {available - expected} unexpected bytes after its data")
        info = None
        if meta.get("format") == FORMAT:
            try:
                info = json.loads(meta["funcnet"])
                version = int(info["format_version"])
                if not isinstance(info["tree"], list):
                    raise TypeError("`tree` is not a list")
            except (KeyError, TypeError, ValueError) as err:
                raise fail(f"its funcnet metadata is unreadable ({err!r})") from None
            if version > FORMAT_VERSION:
                raise CheckpointError(
                    f"checkpoint `{path}` has format version {version}, written by funcnet "
                    f"{info.get('funcnet_version')}; this funcnet reads up to version "
                    f"{FORMAT_VERSION}. Upgrade funcnet to load it."
                )
        buffer = None
        if data:
            buffer = bytearray(expected)
            got = f.readinto(buffer)
            if got != expected:  # the file shrank while being read
                raise fail(f"the file is truncated: read {got} of {expected} bytes of data")
    if info is not None and data:
        want = meta.get("sha256")
        digest = _digest(table, meta["funcnet"], [memoryview(buffer)])
        if want != digest:
            raise fail(
                "the checksum does not match: the file is corrupted or was modified after it "
                f"was written (stored sha256 {str(want)[:12]}..., computed {digest[:12]}...)"
            )
        try:
            kinds = _leaf_kinds(info["tree"], {})
        except (ValueError, TypeError, IndexError, KeyError) as err:
            raise fail(f"its tree structure is malformed ({err!r})") from None
        if set(kinds) != set(table):
            raise fail("its tree structure does not match its arrays")
    return _Contents(table, meta, info, buffer)


def _arrays(contents: _Contents) -> dict[str, np.ndarray]:
    out = {}
    for name, entry in contents.table.items():
        dtype = _DTYPES[entry["dtype"]]
        begin, end = entry["data_offsets"]
        a = np.frombuffer(
            contents.buffer, dtype=dtype, count=(end - begin) // dtype.itemsize, offset=begin
        )
        out[name] = a.reshape(tuple(entry["shape"]))
    return out


def read_metadata(path: str | os.PathLike) -> dict:
    """The description stored in a checkpoint, reading only its header (no checksum check).

    Returns:
        A dict with ``"metadata"`` (what was given to :func:`save`),
        ``"format_version"``, ``"funcnet_version"``, ``"jax_version"``,
        ``"tensors"`` (``{path: {"dtype": "F32", "shape": [3, 2]}}``) and, for a
        file written by :class:`CheckpointManager`, ``"step"`` and ``"metrics"``.
        A safetensors file written by another tool gives its ``__metadata__``
        strings as ``"metadata"``.

    Raises:
        CheckpointError: if the file is missing, truncated or not safetensors.
    """
    contents = _read(path, data=False)
    tensors = {
        name: {"dtype": e["dtype"], "shape": list(e["shape"])} for name, e in contents.table.items()
    }
    if contents.info is None:
        return {"metadata": contents.meta, "format_version": None, "tensors": tensors}
    info = {k: v for k, v in contents.info.items() if k != "tree"}
    info["tensors"] = tensors
    return info
