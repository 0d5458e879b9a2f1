"""Checkpoints: pytrees of arrays in safetensors files, saved atomically, loaded without code.

A checkpoint is one `safetensors <https://github.com/huggingface/safetensors>`_
file: an 8-byte little-endian header length, a JSON header, the raw bytes of
every array. Arrays are stored under their pytree path (``params/0/w``, as
:func:`funcnet.train.path_str` writes it); the header's ``__metadata__`` holds
funcnet's JSON description (format version, funcnet and jax versions, the tree
structure, the user's metadata) and a SHA-256 checksum of the tensor table,
that description and all array bytes. Any safetensors reader can open the
file; nothing in it is ever executed (no pickle).

- :func:`save` writes atomically: a temporary file in the same directory,
  flushed and ``fsync``-ed, renamed over the target with ``os.replace``, then
  the directory is ``fsync``-ed. A process killed during a save leaves the
  previous file intact (and at worst a hidden ``.*.tmp`` file, removed by the
  next :class:`CheckpointManager` on that directory).
- :func:`load` checks the file before building anything: a truncated,
  corrupted or modified file raises :class:`CheckpointError` naming the file
  and the problem. With ``like=`` (a template tree, e.g. a fresh
  ``TrainState``) it returns a tree of the template's structure and types,
  placed with the template's shardings, and reports every missing, unexpected
  and mismatched path at once; ``strict=False`` loads what matches.
- :class:`CheckpointManager` keeps a directory of numbered checkpoints (the
  last ``max_to_keep`` plus the best by a metric) and is what
  :func:`funcnet.fit` uses to resume.

Leaves that can be stored: JAX arrays (also sharded over a mesh, when every
shard is addressable by this process), typed PRNG keys (stored as their key
data plus the implementation name and rewrapped on load), numpy arrays and
scalars, and Python ``bool``/``int``/``float``. Supported dtypes are the
safetensors ones: bool, (u)int8/16/32/64, float16, bfloat16, float32,
float64, complex64, float8_e4m3fn and float8_e5m2.

Multi-host: arrays replicated over several processes (data-parallel params)
are saved from this process's local copy (every process may save; each write
is atomic and they write the same bytes). Saving arrays *sharded* over
several processes is future work and raises; gather them first
(``jax.experimental.multihost_utils``) or use orbax-checkpoint. Restoring
into a multi-host ``like=`` template builds each process's shards with
``jax.make_array_from_callback`` from the file (every process must be able to
read it). Tested with two CPU processes on one host.

Examples:
    >>> import os, tempfile, jax, jax.numpy as jnp
    >>> tree = {"w": jnp.ones((2, 3), jnp.bfloat16), "step": 7, "key": jax.random.key(0)}
    >>> path = save(os.path.join(tempfile.mkdtemp(), "model.safetensors"), tree,
    ...             metadata={"note": "demo"})
    >>> back = load(path)
    >>> back["w"].dtype, back["step"], back["key"].dtype
    (dtype(bfloat16), 7, key<fry>)
    >>> read_metadata(path)["metadata"]
    {'note': 'demo'}
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
import secrets
import socket
import struct
import warnings
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from funcnet.train import path_str

__all__ = [
    "CheckpointError",
    "CheckpointManager",
    "CheckpointWarning",
    "LoadReport",
    "load",
    "read_metadata",
    "save",
]

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


class CheckpointError(ValueError):
    """A checkpoint cannot be read or does not fit the template; the message names the file.

    Attributes:
        report: for a template mismatch, the :class:`LoadReport`; else ``None``.
    """

    def __init__(self, message: str, report: LoadReport | None = None):
        super().__init__(message)
        self.report = report


class LoadReport(NamedTuple):
    """What did not match when loading into a template (paths as ``params/0/w``).

    It is truthy when anything did not match.

    Attributes:
        missing: template paths the file does not have.
        unexpected: file paths the template does not have.
        mismatched: ``"path: expected float32[3,4], got float32[5,4]"`` entries.
    """

    missing: list[str]
    unexpected: list[str]
    mismatched: list[str]

    def __bool__(self) -> bool:  # true when something did not match
        return bool(self.missing or self.unexpected or self.mismatched)

    def describe(self) -> str:
        lines = []
        for name, items in zip(self._fields, self):
            if items:
                lines.append(f"  {name} ({len(items)}): " + ", ".join(items))
        return "\n".join(lines)


class CheckpointWarning(UserWarning):
    """Issued by ``load(..., strict=False)`` when entries were skipped; ``.report`` lists them."""

    def __init__(self, message: str, report: LoadReport):
        super().__init__(message)
        self.report = report


# ----------------------------------------------------------------------------- small helpers


def _funcnet_version() -> str:
    import funcnet

    return str(getattr(funcnet, "__version__", "unknown"))


def _spec_str(dtype, shape) -> str:
    return f"{dtype}[{','.join(str(d) for d in shape)}]"


def _jsonable(obj: Any, where: str) -> Any:
    """``obj`` as plain JSON data (numpy scalars and arrays become numbers and lists)."""
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, (int, float)):
        return obj
    if isinstance(obj, np.generic) or (isinstance(obj, (np.ndarray, jax.Array)) and obj.ndim == 0):
        return np.asarray(obj).item()
    if isinstance(obj, (np.ndarray, jax.Array)):
        return np.asarray(obj).tolist()
    if isinstance(obj, Mapping):
        out = {}
        for k, v in obj.items():
            if not isinstance(k, str):
                raise TypeError(
                    f"checkpoint {where}: keys must be strings to be stored as JSON, got "
                    f"{type(k).__name__} key {k!r}; convert it with `str(...)`."
                )
            out[k] = _jsonable(v, f"{where}[{k!r}]")
        return out
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v, f"{where}[{i}]") for i, v in enumerate(obj)]
    raise TypeError(
        f"checkpoint {where}: values must be JSON data (str, number, bool, None, lists, dicts "
        f"or numpy arrays), got {type(obj).__name__}; convert it first, e.g. with `str(...)`."
    )


def _is_key(x) -> bool:
    dtype = getattr(x, "dtype", None)
    return dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key)


def _host_dtype(dtype: np.dtype, name: str) -> str:
    code = _CODES.get(np.dtype(dtype))
    if code is None:
        raise TypeError(
            f"checkpoint: cannot store `{name}` of dtype {dtype}; safetensors supports "
            f"{', '.join(str(d) for d in _DTYPES.values())}. Cast it first (e.g. "
            "`x.astype(jnp.float32)`)."
        )
    return code


# ----------------------------------------------------------------------------- tree encoding


def _children(x) -> list | None:
    """``[(key_entry, child), ...]`` one level down, or ``None`` when ``x`` is a leaf."""
    flat, _ = jax.tree_util.tree_flatten_with_path(x, is_leaf=lambda c: c is not x)
    if len(flat) == 1 and flat[0][0] == () and flat[0][1] is x:
        return None
    return [(path[0], child) for path, child in flat]


def _encode(tree) -> tuple[Any, list[tuple[str, Any]]]:
    """The JSON structure of ``tree`` and its ``(name, leaf)`` pairs in leaf order."""
    leaves: list[tuple[str, Any]] = []

    def leaf_node(x, name):
        if isinstance(x, bool):
            kind = "bool"
        elif isinstance(x, int):
            kind = "int"
        elif isinstance(x, float):
            kind = "float"
        elif _is_key(x):
            kind = "key"
        elif isinstance(x, jax.Array):
            kind = "array"
        elif isinstance(x, (np.ndarray, np.generic)):
            kind = "numpy"
        else:
            raise TypeError(
                f"checkpoint: cannot store the leaf at `{name or '(root)'}`, a "
                f"{type(x).__name__}; leaves must be arrays, PRNG keys or Python bool/int/float. "
                "Put other values in `metadata=` (JSON)."
            )
        leaves.append((name, x))
        if kind == "key":
            return [kind, name, str(jax.random.key_impl(x))]
        return [kind, name]

    def visit(x, parts):
        if x is None:
            return ["none"]
        children = _children(x)
        if children is None:
            return leaf_node(x, "/".join(parts))
        named = [(entry, path_str([entry]), child) for entry, child in children]
        if isinstance(x, dict):
            items = []
            for entry, part, child in named:
                key = entry.key
                if isinstance(key, bool) or not isinstance(key, (str, int)):
                    raise TypeError(
                        f"checkpoint: dict keys must be str or int, got {type(key).__name__} "
                        f"key {key!r} at `{'/'.join(parts) or '(root)'}`; use string keys."
                    )
                items.append([key, visit(child, [*parts, part])])
            return ["dict", items]
        if isinstance(x, tuple) and hasattr(type(x), "_fields"):
            fields = [[part, visit(child, [*parts, part])] for _, part, child in named]
            return ["namedtuple", type(x).__name__, fields]
        if isinstance(x, (tuple, list)):
            kind = "tuple" if isinstance(x, tuple) else "list"
            return [kind, [visit(child, [*parts, part]) for _, part, child in named]]
        fields = [[part, visit(child, [*parts, part])] for _, part, child in named]
        return ["node", type(x).__name__, fields]

    structure = visit(tree, [])
    seen: dict[str, int] = {}
    for name, _ in leaves:
        seen[name] = seen.get(name, 0) + 1
    dupes = sorted(n for n, c in seen.items() if c > 1)
    if dupes:
        raise ValueError(
            f"checkpoint: several leaves have the same path {dupes}: a dict key contains '/' "
            "or an int and a str key spell the same; rename the keys so every path is unique."
        )
    return structure, leaves


def _decode(node, arrays: Mapping[str, Any]):
    """Rebuild a tree from its JSON structure; NamedTuples and custom nodes become dicts."""
    kind = node[0]
    if kind == "none":
        return None
    if kind == "dict":
        return {k: _decode(v, arrays) for k, v in node[1]}
    if kind in ("namedtuple", "node"):
        return {k: _decode(v, arrays) for k, v in node[2]}
    if kind == "tuple":
        return tuple(_decode(v, arrays) for v in node[1])
    if kind == "list":
        return [_decode(v, arrays) for v in node[1]]
    data = arrays[node[1]]
    if kind == "bool":
        return bool(data.item())
    if kind == "int":
        return int(data.item())
    if kind == "float":
        return float(data.item())
    if kind == "numpy":
        return data.copy()
    if kind == "key":
        return jax.random.wrap_key_data(jax.device_put(data), impl=node[2])
    return jax.device_put(data)


def _leaf_kinds(node, out: dict) -> dict:
    """``{name: (kind, impl)}`` of every leaf in a JSON structure; ValueError if malformed."""
    kind = node[0]
    if kind == "dict":
        for _, v in node[1]:
            _leaf_kinds(v, out)
    elif kind in ("namedtuple", "node"):
        for _, v in node[2]:
            _leaf_kinds(v, out)
    elif kind in ("tuple", "list"):
        for v in node[1]:
            _leaf_kinds(v, out)
    elif kind == "key":
        out[str(node[1])] = (kind, str(node[2]))
    elif kind in ("array", "numpy", "bool", "int", "float"):
        out[str(node[1])] = (kind, None)
    elif kind != "none":
        raise ValueError(f"unknown node kind {kind!r}")
    return out


# ----------------------------------------------------------------------------- writing


def _host_arrays(leaves: list[tuple[str, Any]]) -> list[np.ndarray]:
    values = []
    for name, x in leaves:
        if isinstance(x, jax.Array):
            if not x.is_fully_addressable:
                if not x.is_fully_replicated:
                    raise ValueError(
                        f"checkpoint: `{name}` is sharded over several processes (multi-host); "
                        "this process cannot read all of it. Gather it first "
                        "(`jax.experimental.multihost_utils.process_allgather`) or save each "
                        "process's shards with orbax-checkpoint."
                    )
                x = x.addressable_data(0)  # replicated over processes: any local copy is all
            values.append(jax.random.key_data(x) if _is_key(x) else x)
        elif isinstance(x, bool):
            values.append(np.asarray(x, np.bool_))
        elif isinstance(x, int):
            values.append(np.asarray(x, np.int64))
        elif isinstance(x, float):
            values.append(np.asarray(x, np.float64))
        else:
            values.append(np.asarray(x))
    host = jax.device_get(values)
    out = []
    for a in host:
        a = np.asarray(a)
        a = a if a.flags.c_contiguous else a.copy(order="C")  # ascontiguousarray makes 0-d 1-d
        if not a.dtype.isnative:  # e.g. '>f4' from a file; safetensors is little-endian
            a = a.astype(a.dtype.newbyteorder("="))
        out.append(a)
    return out


def _digest(table: Mapping, info: str, chunks) -> str:
    h = hashlib.sha256()
    h.update(json.dumps(table, sort_keys=True, separators=(",", ":")).encode())
    h.update(b"\n" + info.encode() + b"\n")
    for chunk in chunks:
        h.update(chunk)
    return h.hexdigest()


def _bytes_of(a: np.ndarray) -> np.ndarray:
    return a.reshape(-1).view(np.uint8)


def _temp_name(path: str) -> str:
    host = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:40] or "host"
    directory, base = os.path.split(path)
    return os.path.join(directory, f".{base}.{host}.{os.getpid()}.{secrets.token_hex(4)}.tmp")


_TEMP_RE = re.compile(r"^\.(?P<base>.+)\.(?P<host>[A-Za-z0-9-]+)\.(?P<pid>\d+)\.[0-9a-f]{8}\.tmp$")


def _fsync_dir(directory: str) -> None:
    if os.name != "posix":  # pragma: no cover - directories cannot be opened on Windows
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _atomic_write(path: str, write: Callable[[Any], None]) -> None:
    """Write a file through ``write(f)`` so that ``path`` is either the old or the new file."""
    path = os.path.abspath(path)
    directory = os.path.dirname(path)
    os.makedirs(directory, exist_ok=True)
    tmp = _temp_name(path)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise
    _fsync_dir(directory)


def _remove_stale_temp_files(directory: str) -> list[str]:
    """Remove temp files left by dead processes on this host (never another live save's)."""
    if os.name != "posix":  # pragma: no cover
        return []
    host = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:40] or "host"
    removed = []
    for name in os.listdir(directory):
        m = _TEMP_RE.match(name)
        if not m or m["host"] != host or int(m["pid"]) == os.getpid():
            continue
        try:
            os.kill(int(m["pid"]), 0)  # signal 0 only checks whether the process exists
            continue
        except ProcessLookupError:
            pass
        except (PermissionError, OverflowError):
            continue
        with contextlib.suppress(OSError):
            os.remove(os.path.join(directory, name))
            removed.append(name)
    return removed


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
        "funcnet_version": _funcnet_version(),
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

    _atomic_write(path, write)
    return path


def save(path: str | os.PathLike, tree: Any, *, metadata: Mapping | None = None) -> str:
    """Write ``tree`` to a safetensors file at ``path``, atomically.

    Args:
        path: the file to write (conventionally ``*.safetensors``); missing
            directories are created. An existing file is replaced only once
            the new one is complete and on disk.
        tree: any pytree of JAX arrays (possibly sharded, see the module
            docstring), typed PRNG keys, numpy arrays and Python scalars, e.g.
            a whole :class:`~funcnet.train.TrainState`. Containers: dicts (str or
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
    return _Contents(table, info, buffer)


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
        with open(os.fspath(path), "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            meta = json.loads(f.read(n)).get("__metadata__") or {}
        return {"metadata": meta, "format_version": None, "tensors": tensors}
    info = {k: v for k, v in contents.info.items() if k != "tree"}
    info["tensors"] = tensors
    return info


def _template_leaf(x, name: str):
    """``(kind, dtype, shape, impl)`` a template leaf expects from the file."""
    if isinstance(x, bool):
        return "bool", None, (), None
    if isinstance(x, int):
        return "int", None, (), None
    if isinstance(x, float):
        return "float", None, (), None
    if _is_key(x):
        impl = []  # key_impl needs an array: read it while tracing (x may be a ShapeDtypeStruct)

        def data_of(k):
            impl.append(str(jax.random.key_impl(k)))
            return jax.random.key_data(k)

        data = jax.eval_shape(data_of, x)
        return "key", np.dtype(data.dtype), tuple(data.shape), impl[0]
    if isinstance(x, (jax.Array, jax.ShapeDtypeStruct, np.ndarray, np.generic)):
        dtype = np.dtype(x.dtype)
        return "array", dtype if dtype.isnative else dtype.newbyteorder("="), tuple(x.shape), None
    raise TypeError(
        f"load: the template leaf at `{name or '(root)'}` is a {type(x).__name__}; `like` must "
        "hold arrays, jax.ShapeDtypeStructs, PRNG keys or Python scalars (e.g. a freshly "
        "initialised TrainState or `jax.eval_shape` of one)."
    )


def _restore_leaf(t, want, data: np.ndarray):
    kind = want[0]
    if kind in ("bool", "int", "float"):
        return type(t)(data.item())
    if isinstance(t, np.generic):
        return data.reshape(()).astype(t.dtype)[()]
    if isinstance(t, np.ndarray):
        return data.copy()
    sharding = getattr(t, "sharding", None)
    if sharding is None or not getattr(t, "committed", True):
        placed = jax.device_put(data)  # uncommitted, like the template
    elif sharding.is_fully_addressable:
        placed = jax.device_put(data, sharding)
    else:  # multi-host: each process builds its own shards
        placed = jax.make_array_from_callback(data.shape, sharding, lambda index: data[index])
    if kind == "key":
        return jax.random.wrap_key_data(placed, impl=want[3])
    return placed


def load(path: str | os.PathLike, like: Any = None, *, strict: bool = True) -> Any:
    """Read a checkpoint written by :func:`save` (or any safetensors file).

    The whole file is checked (header, sizes, SHA-256 checksum) before any
    array is built, so a bad file raises and nothing is half-loaded.

    Args:
        path: the file.
        like: a template tree, e.g. a freshly created ``TrainState`` or its
            ``jax.eval_shape``. The result then has exactly the template's
            structure (NamedTuples, optax states, ...) and leaf types: JAX
            arrays are placed with the template leaf's sharding (uncommitted
            template arrays give uncommitted arrays), numpy leaves stay numpy,
            Python scalars stay Python scalars, keys are rewrapped with their
            implementation. Every leaf must match the file's entry at the same
            path in shape and dtype (no casting).
        strict: with ``like``: when False, load the entries that match and keep
            the template's values for the others (for fine-tuning); a
            :class:`CheckpointWarning` whose ``report`` is a :class:`LoadReport`
            lists what was skipped. A missing entry whose template leaf is only
            a ``jax.ShapeDtypeStruct`` still raises (there is no value to keep).

    Returns:
        With ``like``, a tree like it. Without, the tree as saved, rebuilt
        from the stored structure: dicts, lists, tuples and ``None`` as they
        were; NamedTuples (``TrainState``, optax states) and other custom
        pytree nodes as dicts keyed by field name; JAX arrays and keys on the
        default device; numpy arrays as numpy (numpy scalars as 0-d arrays);
        Python scalars as Python scalars. A safetensors file from another tool gives a flat dict
        ``{name: jax.Array}``.

    Raises:
        CheckpointError: for a missing, truncated, corrupted or modified file
            (naming it and the problem), or, with ``like`` and ``strict=True``,
            listing every missing, unexpected and mismatched path.
        TypeError: for a template leaf that is not array-like.

    Examples:
        >>> import os, tempfile, jax, jax.numpy as jnp
        >>> path = os.path.join(tempfile.mkdtemp(), "p.safetensors")
        >>> _ = save(path, {"w": jnp.ones((2, 2)), "b": jnp.zeros(2)})
        >>> template = {"w": jnp.zeros((2, 2)), "b": jnp.zeros(3)}
        >>> load(path, like=template)
        Traceback (most recent call last):
        ...
        funcnet.checkpoint.CheckpointError: checkpoint `...`: does not fit `like`: ...
        >>> import warnings
        >>> with warnings.catch_warnings():
        ...     warnings.simplefilter("ignore")
        ...     tree = load(path, like=template, strict=False)
        >>> tree["w"].tolist(), tree["b"].shape
        ([[1.0, 1.0], [1.0, 1.0]], (3,))
    """
    contents = _read(path)
    arrays = _arrays(contents)
    if contents.info is not None:
        kinds = _leaf_kinds(contents.info["tree"], {})
    else:
        kinds = {name: ("array", None) for name in contents.table}
    if like is None:
        if contents.info is None:
            return {name: jax.device_put(a) for name, a in arrays.items()}
        return _decode(contents.info["tree"], arrays)

    flat, treedef = jax.tree_util.tree_flatten_with_path(like)
    names = [path_str(p) for p, _ in flat]
    missing, mismatched, out = [], [], []
    for name, (_, t) in zip(names, flat):
        want = _template_leaf(t, name)
        if name not in arrays:
            missing.append(name)
            out.append(t)
            continue
        data = arrays[name]
        kind, impl = kinds[name]
        got = (
            f"key<{impl}> data {data.shape}" if kind == "key" else _spec_str(data.dtype, data.shape)
        )
        problem = None
        if want[0] == "key":
            if (kind, impl, data.shape) != ("key", want[3], want[2]):
                problem = f"expected key<{want[3]}> data {want[2]}, got {got}"
        elif want[0] in ("bool", "int", "float"):
            if data.shape != () or kind == "key":
                problem = f"expected a scalar ({want[0]}), got {got}"
        elif kind == "key" or data.shape != want[2] or data.dtype != want[1]:
            problem = f"expected {_spec_str(want[1], want[2])}, got {got}"
        if problem:
            mismatched.append(f"{name}: {problem}")
            out.append(t)
        else:
            out.append(_restore_leaf(t, want, data))
    unexpected = sorted(set(arrays) - set(names))
    report = LoadReport(missing, unexpected, mismatched)
    if report:
        summary = (
            f"{len(missing)} missing, {len(unexpected)} unexpected, {len(mismatched)} mismatched"
        )
        if strict:
            raise CheckpointError(
                f"checkpoint `{os.fspath(path)}`: does not fit `like`: {summary} "
                f"path(s):\n{report.describe()}\nPass the template the checkpoint was saved "
                "from, or `strict=False` to load only the entries that match (e.g. for "
                "fine-tuning).",
                report,
            )
        abstract = [n for n, v in zip(names, out) if isinstance(v, jax.ShapeDtypeStruct)]
        if abstract:
            raise CheckpointError(
                f"checkpoint `{os.fspath(path)}`: no value for {abstract}: the file does not "
                "have them (or they do not match) and the template gives only their shapes; "
                "pass a template with real arrays there to keep its values.",
                report,
            )
        warnings.warn(
            CheckpointWarning(
                f"load(`{os.fspath(path)}`, strict=False) kept the template's values for "
                f"{summary} path(s):\n{report.describe()}",
                report,
            ),
            stacklevel=2,
        )
    return jax.tree_util.tree_unflatten(treedef, out)


# ----------------------------------------------------------------------------- manager


_STEP_RE = re.compile(r"^step_(\d+)\.safetensors$")


class CheckpointManager:
    """A directory of numbered checkpoints: keep the last few and the best, find the latest.

    Files are named ``step_<step>.safetensors`` (zero-padded to 8 digits) and
    are the only record: the step and metrics of each live in its header, so
    a crash at any moment (during a save, or between a save and the removal
    of old files) leaves a consistent directory. Steps are expected to grow;
    the "last" checkpoints are those with the highest steps.

    Args:
        directory: where the checkpoints live (created if needed). Temporary
            files left in it by killed processes on this host are removed.
        max_to_keep: how many of the most recent checkpoints to keep (``None``
            keeps all); the best one is kept in addition.
        best_metric: the name of a metric given to :meth:`save` (e.g.
            ``"val_loss"``) that decides which checkpoint is best.
        best_mode: ``"min"`` or ``"max"``: whether a smaller or a larger value
            of ``best_metric`` is better. Ties keep the earlier step.

    Examples:
        >>> import tempfile, jax.numpy as jnp
        >>> manager = CheckpointManager(tempfile.mkdtemp(), max_to_keep=2, best_metric="loss")
        >>> for step, loss in [(10, 0.5), (20, 0.2), (30, 0.4), (40, 0.3)]:
        ...     _ = manager.save(step, {"w": jnp.full(2, step)}, metrics={"loss": loss})
        >>> manager.all_steps(), manager.latest_step(), manager.best_step()
        ([20, 30, 40], 40, 20)
        >>> manager.restore()["w"].tolist()
        [40, 40]
    """

    def __init__(
        self,
        directory: str | os.PathLike,
        *,
        max_to_keep: int | None = 3,
        best_metric: str | None = None,
        best_mode: str = "min",
    ):
        if max_to_keep is not None and (
            isinstance(max_to_keep, bool) or not isinstance(max_to_keep, int) or max_to_keep < 1
        ):
            raise ValueError(
                f"CheckpointManager: `max_to_keep` must be an int >= 1 or None (keep all), got "
                f"{max_to_keep!r}."
            )
        if best_mode not in ("min", "max"):
            raise ValueError(
                f"CheckpointManager: `best_mode` must be 'min' or 'max', got {best_mode!r}."
            )
        if best_metric is not None and not isinstance(best_metric, str):
            raise TypeError(
                f"CheckpointManager: `best_metric` must be a metric name (str), got "
                f"{type(best_metric).__name__}."
            )
        self.directory = os.path.abspath(os.fspath(directory))
        self.max_to_keep = max_to_keep
        self.best_metric = best_metric
        self.best_mode = best_mode
        os.makedirs(self.directory, exist_ok=True)
        _remove_stale_temp_files(self.directory)

    def __repr__(self) -> str:
        return (
            f"CheckpointManager({self.directory!r}, max_to_keep={self.max_to_keep}, "
            f"best_metric={self.best_metric!r}, best_mode={self.best_mode!r})"
        )

    def path(self, step: int) -> str:
        """The file of ``step``."""
        return os.path.join(self.directory, f"step_{int(step):08d}.safetensors")

    def all_steps(self) -> list[int]:
        """The steps that have a checkpoint, ascending."""
        steps = []
        for name in os.listdir(self.directory):
            m = _STEP_RE.match(name)
            if m:
                steps.append(int(m[1]))
        return sorted(steps)

    def latest_step(self) -> int | None:
        """The highest saved step, or ``None`` when there is none."""
        steps = self.all_steps()
        return steps[-1] if steps else None

    def metrics(self, step: int) -> dict:
        """The metrics saved with ``step`` (``{}`` when none; header only, no checksum check)."""
        return read_metadata(self.path(step)).get("metrics") or {}

    def best_step(self) -> int | None:
        """The step with the best ``best_metric``, or ``None`` (no metric, or none saved)."""
        if self.best_metric is None:
            return None
        best = None
        for step in self.all_steps():
            try:
                value = self.metrics(step).get(self.best_metric)
            except CheckpointError:
                continue
            if not isinstance(value, (int, float)) or not math.isfinite(value):
                continue
            better = best is None or (
                value < best[1] if self.best_mode == "min" else value > best[1]
            )
            if better:
                best = (step, value)
        return None if best is None else best[0]

    def save(
        self,
        step: int,
        tree: Any,
        *,
        metrics: Mapping[str, Any] | None = None,
        metadata: Mapping | None = None,
    ) -> str:
        """Save ``tree`` as checkpoint ``step`` (replacing one of the same step), then prune.

        Args:
            step: a non-negative int (e.g. ``int(train_state.step)``).
            tree: the pytree to save (see :func:`save`).
            metrics: numbers such as an epoch's logs; ``best_metric`` is read
                from them. Non-scalar values are stored as lists.
            metadata: JSON data stored with it.

        Returns:
            The file written.

        Raises:
            ValueError: for a negative step, or metrics without ``best_metric``.
        """
        if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or step < 0:
            raise ValueError(
                f"CheckpointManager.save: `step` must be an int >= 0, got {step!r}; pass "
                "`int(train_state.step)`."
            )
        if metrics is not None and self.best_metric is not None and self.best_metric not in metrics:
            raise ValueError(
                f"CheckpointManager.save: `best_metric={self.best_metric!r}` is not among the "
                f"metrics {sorted(metrics)}; log it (e.g. give fit validation data for "
                "'val_loss') or choose one of these."
            )
        extra = {"step": int(step), "metrics": dict(metrics) if metrics is not None else None}
        path = _save(self.path(step), tree, metadata, extra)
        self._prune()
        return path

    def _prune(self) -> None:
        steps = self.all_steps()
        if self.max_to_keep is None or len(steps) <= self.max_to_keep:
            return
        keep = set(steps[-self.max_to_keep :])
        best = self.best_step()
        if best is not None:
            keep.add(best)
        for step in steps:
            if step not in keep:
                with contextlib.suppress(FileNotFoundError):
                    os.remove(self.path(step))

    def restore(self, step: int | None = None, like: Any = None, *, strict: bool = True) -> Any:
        """Load checkpoint ``step`` (default: the latest); see :func:`load` for ``like``/``strict``.

        Raises:
            CheckpointError: when there is no checkpoint, no checkpoint of that
                step, or the file is bad.
        """
        steps = self.all_steps()
        if step is None:
            if not steps:
                raise CheckpointError(
                    f"CheckpointManager: no checkpoints in `{self.directory}`; save one first "
                    "(or check the directory)."
                )
            step = steps[-1]
        elif int(step) not in steps:
            raise CheckpointError(
                f"CheckpointManager: no checkpoint for step {step} in `{self.directory}`; the "
                f"saved steps are {steps}."
            )
        return load(self.path(step), like=like, strict=strict)
