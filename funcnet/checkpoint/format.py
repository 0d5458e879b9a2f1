"""The file format: safetensors with funcnet's JSON description and a SHA-256 checksum."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import struct
from collections.abc import Mapping
from typing import Any, NamedTuple, NoReturn

import jax
import numpy as np

from funcnet.checkpoint.atomic import atomic_write
from funcnet.checkpoint.errors import CheckpointError
from funcnet.checkpoint.header import (
    DTYPES,
    FORMAT,
    FORMAT_VERSION,
    MAX_HEADER,
    Fail,
    check_info,
    check_marker,
    check_table,
    is_ours,
    name_str,
    parse_info,
    parse_json,
    short,
    split_header,
)
from funcnet.checkpoint.tree import _encode, _host_arrays, _jsonable, check_tree
from funcnet.version import __version__

__all__ = ["FORMAT", "FORMAT_VERSION", "read_metadata", "save"]

_INDEX = "index.json"  # a sharded checkpoint's (funcnet.checkpoint.index.INDEX_FILE)
_CODES = {dtype: code for code, dtype in DTYPES.items()}


def _host_dtype(dtype: np.dtype, name: str) -> str:
    code = _CODES.get(np.dtype(dtype))
    if code is None:
        raise TypeError(
            f"checkpoint: cannot store `{name}` of dtype {dtype}; safetensors supports "
            f"{', '.join(str(d) for d in DTYPES.values())}. Cast it first (e.g. "
            "`x.astype(jnp.float32)`)."
        )
    return code


def _digest(table: Mapping, info: str, chunks) -> str:
    h = hashlib.sha256()
    h.update(json.dumps(table, sort_keys=True, separators=(",", ":")).encode())
    h.update(b"\n" + info.encode("utf-8", "surrogatepass") + b"\n")
    for chunk in chunks:
        h.update(chunk)
    return h.hexdigest()


def _bytes_of(a: np.ndarray) -> np.ndarray:
    return a.reshape(-1).view(np.uint8)


# ----------------------------------------------------------------------------- writing


def _description(structure, metadata, extra) -> dict:
    """funcnet's JSON description of a checkpoint (versions, user metadata, step, tree)."""
    return {
        "format_version": FORMAT_VERSION,
        "funcnet_version": __version__,
        "jax_version": jax.__version__,
        "metadata": _jsonable(metadata if metadata is not None else {}, "metadata"),
        **_jsonable(dict(extra or {}), "metadata"),
        "tree": structure,
    }


def _prepare(path, tree, metadata=None, extra: Mapping | None = None, *, copy: bool = False):
    """The arrays of ``tree`` on the host; returns ``write()``, which writes the file atomically.

    With ``copy`` every array is copied into host memory now, so ``write`` may run later
    (in a background thread) while the caller donates or changes its arrays. ``write``
    uses no JAX collective when only this process writes (one process, or ``copy``).
    """
    path = os.fspath(path)
    structure, leaves = _encode(tree)
    arrays = _host_arrays(leaves)
    if copy:
        arrays = [np.array(a) for a in arrays]
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
    info_json = json.dumps(_description(structure, metadata, extra), separators=(",", ":"))

    def write_file(f):
        digest = _digest(table, info_json, (_bytes_of(a) for a in arrays))
        header = dict(table)
        header["__metadata__"] = {"format": FORMAT, "funcnet": info_json, "sha256": digest}
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for a in arrays:
            f.write(memoryview(_bytes_of(a)))

    def write() -> str:
        if jax.process_count() == 1:
            atomic_write(path, write_file)
            return path
        # Several processes hold the same (replicated) arrays: process 0 writes the file once,
        # and every process waits for it, so a file another process reads next is complete.
        try:
            if jax.process_index() == 0:
                atomic_write(path, write_file)
        finally:
            _sync(f"funcnet.checkpoint.save {path}")
        return path

    return write


def _save(path, tree, metadata=None, extra: Mapping | None = None) -> str:
    return _prepare(path, tree, metadata, extra)()


def _sync(name: str) -> None:
    from jax.experimental import multihost_utils

    multihost_utils.sync_global_devices(name)


def save(
    path: str | os.PathLike,
    tree: Any,
    *,
    metadata: Mapping | None = None,
    sharded: bool | None = None,
) -> str:
    """Write ``tree`` to a safetensors file at ``path`` (or a sharded directory), atomically.

    Args:
        path: the file to write (conventionally ``*.safetensors``); missing
            directories are created. An existing file is replaced only once
            the new one is complete and on disk. For a sharded checkpoint,
            the directory to create.
        tree: any pytree of JAX arrays (possibly sharded, see the module
            docstring), typed PRNG keys, numpy arrays and Python scalars, e.g.
            a whole :class:`~funcnet.TrainState`. Containers: dicts (str or
            int keys), lists, tuples, NamedTuples, ``None``, and other
            registered pytree nodes.
        metadata: JSON data stored with the arrays (read it back with
            :func:`read_metadata`).
        sharded: ``True`` writes a sharded checkpoint: a directory in which
            each process writes only its own shards (see
            :mod:`funcnet.checkpoint.sharded`); ``False`` one file, written by
            process 0; ``None`` (the default) picks sharded when some array is
            spread over several processes without being replicated (one
            process cannot write it whole). :func:`load` reads either.

    Returns:
        ``path`` (as a string).

    Raises:
        TypeError: for a leaf that is not an array or scalar, an unsupported
            dtype, or metadata that is not JSON data.
        ValueError: when two leaves have the same path, or, with
            ``sharded=False``, for arrays spread over several processes.

    Examples:
        >>> import os, tempfile, jax.numpy as jnp
        >>> path = os.path.join(tempfile.mkdtemp(), "params.safetensors")
        >>> save(path, ({"w": jnp.zeros((3, 2)), "b": jnp.zeros(2)}, ())) == path
        True
        >>> sorted(read_metadata(path)["tensors"])
        ['0/b', '0/w']
    """
    from funcnet.checkpoint.sharded import needs_sharded, save_sharded

    if sharded is None:
        sharded = needs_sharded(tree)
    if sharded:
        save_sharded(path, tree, metadata=metadata)
        return os.fspath(path)
    return _save(path, tree, metadata)


# ----------------------------------------------------------------------------- reading


class _Contents(NamedTuple):
    table: dict  # name -> {"dtype", "shape", "data_offsets"}
    meta: dict  # the header's "__metadata__" strings
    info: dict | None  # funcnet's description; None for a foreign safetensors file
    kinds: dict  # name -> (kind, key impl) of every array (all "array" for a foreign file)
    buffer: Any  # the data bytes (None when only the header was read)


def _failure(path: str) -> Fail:
    def fail(what: str) -> NoReturn:
        raise CheckpointError(
            f"checkpoint `{path}`: {what}; restore an earlier checkpoint or save it again.",
            corrupt=True,
        )

    return fail


_FILE_KINDS = {
    stat.S_IFDIR: "directory",
    stat.S_IFIFO: "FIFO (named pipe)",
    stat.S_IFSOCK: "socket",
    stat.S_IFCHR: "character device",
    stat.S_IFBLK: "block device",
}
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)


def _check_regular(path: str, mode: int) -> None:
    if stat.S_ISDIR(mode):
        raise CheckpointError(
            f"checkpoint `{path}` is a directory, not a regular file, and not a sharded "
            f"checkpoint either: it has no `{_INDEX}`; pass a checkpoint written by `save`.",
            corrupt=True,
        )
    if not stat.S_ISREG(mode):
        kind = _FILE_KINDS.get(stat.S_IFMT(mode), "special file")
        raise CheckpointError(
            f"checkpoint `{path}` is a {kind}, not a regular file (reading it could block or "
            "never end); pass the path of a checkpoint file written by `save`.",
            corrupt=True,
        )


def is_sharded(path) -> bool:
    """Whether ``path`` is a sharded checkpoint: a directory with an index."""
    return os.path.isdir(path) and os.path.lexists(os.path.join(path, _INDEX))


def _open(path: str):
    """``path`` opened for reading; anything but a regular file is refused, never read."""
    try:
        _check_regular(path, os.stat(path).st_mode)
        fd = os.open(path, os.O_RDONLY | _NONBLOCK)  # a FIFO swapped in now cannot block
    except FileNotFoundError:
        raise CheckpointError(
            f"checkpoint `{path}` does not exist; check the path (a CheckpointManager lists "
            "its steps with `all_steps()`).",
            corrupt=True,
        ) from None
    try:
        _check_regular(path, os.fstat(fd).st_mode)
        if _NONBLOCK:
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _read_header(f, size: int, fail: Fail) -> tuple[dict, dict, int]:
    """The tensor table, the ``__metadata__`` strings and the header's length."""
    head = f.read(8)
    if size < 8 or len(head) < 8:
        fail(f"the file is truncated ({len(head)} bytes; a checkpoint has at least 8)")
    (n,) = struct.unpack("<Q", head)
    if n > MAX_HEADER:
        fail(f"the header length field is {n} bytes, not a valid safetensors file")
    if 8 + n > size:
        fail(f"the file is truncated ({size} bytes, its header alone needs {8 + n})")
    raw = f.read(n)
    if len(raw) != n:
        fail(f"the file is truncated: read {len(raw)} of its {n} header bytes")
    table, meta = split_header(parse_json(raw, "the header", fail), fail)
    return table, meta, n


def _read_data(f, expected: int, fail: Fail) -> bytearray:
    buffer = bytearray(expected)  # no larger than the file: its size was checked
    got = f.readinto(buffer)
    if got != expected:  # the file shrank while being read
        fail(f"the file is truncated: read {got} of {expected} bytes of data")
    return buffer


def _check_bools(table: dict, buffer, fail: Fail) -> None:
    """Bool arrays hold only bytes 0 and 1 (numpy and XLA assume it)."""
    for name, entry in table.items():
        begin, end = entry["data_offsets"]
        bad = entry["dtype"] == "BOOL" and begin < end
        if bad and np.frombuffer(buffer, np.uint8, end - begin, begin).max() > 1:
            fail(f"the bool array `{name_str(name)}` holds bytes other than 0 and 1")


def _declared_version(text: str) -> Any:
    try:
        return json.loads(text).get("format_version")
    except (ValueError, RecursionError, AttributeError):
        return None


def _verify(path: str, table: dict, meta: dict, buffer, fail: Fail) -> tuple[dict, dict]:
    """funcnet's description and leaf kinds, after the checksum (with data) and every check."""
    if buffer is not None:
        digest = _digest(table, meta["funcnet"], [memoryview(buffer)])
        if digest != meta["sha256"]:
            version, hint = _declared_version(meta["funcnet"]), ""
            if isinstance(version, int) and version > FORMAT_VERSION:
                hint = f" (it claims format version {version}; this funcnet reads {FORMAT_VERSION})"
            fail(
                "the checksum does not match: the file is corrupted or was modified after it "
                f"was written (stored sha256 {meta['sha256'][:12]}..., computed "
                f"{digest[:12]}...){hint}"
            )
    info, version = parse_info(meta["funcnet"], fail)
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint `{path}` has format version {version}, written by funcnet "
            f"{short(info.get('funcnet_version'))}; this funcnet reads up to version "
            f"{FORMAT_VERSION}. Upgrade funcnet to load it."
        )
    check_info(info, fail)
    return info, check_tree(info["tree"], table, fail)


def _read(path, *, data: bool = True) -> _Contents:
    """Read and check a safetensors file; every problem raises CheckpointError naming it."""
    path = os.fspath(path)
    fail = _failure(path)
    with _open(path) as f:
        size = os.fstat(f.fileno()).st_size
        table, meta, n = _read_header(f, size, fail)
        expected = check_table(table, fail)
        available = size - 8 - n
        if available < expected:
            fail(
                f"the file is truncated: its arrays need {expected} bytes of data, only "
                f"{available} are there"
            )
        if available > expected:
            fail(f"the file has {available - expected} unexpected bytes after its data")
        ours = is_ours(meta)
        if ours:  # then it must verify: see funcnet/checkpoint/header.py
            check_marker(meta, fail)
        buffer = _read_data(f, expected, fail) if data else None
    info, kinds = None, {name: ("array", None) for name in table}
    if ours:
        info, kinds = _verify(path, table, meta, buffer, fail)
    if buffer is not None:
        _check_bools(table, buffer, fail)
    return _Contents(table, meta, info, kinds, buffer)


def _arrays(contents: _Contents) -> dict[str, np.ndarray]:
    out = {}
    for name, entry in contents.table.items():
        dtype = DTYPES[entry["dtype"]]
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
    if is_sharded(path):
        from funcnet.checkpoint.sharded_read import read_metadata_sharded

        return read_metadata_sharded(path)
    contents = _read(path, data=False)
    tensors = {
        name: {"dtype": e["dtype"], "shape": list(e["shape"])} for name, e in contents.table.items()
    }
    if contents.info is None:
        return {"metadata": contents.meta, "format_version": None, "tensors": tensors}
    info = {k: v for k, v in contents.info.items() if k != "tree"}
    info["tensors"] = tensors
    return info
