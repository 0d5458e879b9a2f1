"""Loading a sharded checkpoint onto any mesh: each process reads only the shards it needs.

The index is read and checked first (:mod:`funcnet.checkpoint.index`). With a
template (``like=``), every JAX leaf is built with
``jax.make_array_from_callback`` on the template's sharding: for each of this
process's target shards, the saved shards that overlap it are read (each
once: its bytes checked against the SHA-256 in the index) and the target
box is assembled from them. So a checkpoint saved on 4 devices restores on
1, 2 or 8, with any sharding, in any number of processes. Every read happens,
and is verified, before any array is built; when the template spans several
processes they then agree (a small all-gather) that each could read its
shards, so a corrupt shard that only one process reads makes every process
raise the same corrupt :class:`~funcnet.checkpoint.CheckpointError` (and a
:class:`~funcnet.checkpoint.CheckpointManager` falls back consistently).
"""

from __future__ import annotations

import hashlib
import os
import struct
from typing import Any, NamedTuple

import jax
import numpy as np

from funcnet.checkpoint.errors import CheckpointError
from funcnet.checkpoint.format import _open
from funcnet.checkpoint.header import (
    DTYPES,
    MAX_HEADER,
    check_table,
    name_str,
    parse_json,
    split_header,
)
from funcnet.checkpoint.index import failure, read_index
from funcnet.checkpoint.restore import fill_template
from funcnet.checkpoint.shards import Box, assemble, box_of_index, intersect
from funcnet.checkpoint.tree import _decode

__all__ = ["ShardReader", "load_sharded", "read_metadata_sharded"]


class _Spec(NamedTuple):
    shape: tuple
    dtype: np.dtype


class ShardReader:
    """Reads the saved shards of one sharded checkpoint, each at most once, each verified.

    Args:
        directory: the checkpoint directory.
        index: its checked index (from :func:`~funcnet.checkpoint.index.read_index`).

    Use it as a context manager (it keeps the shard files it opened open).

    Examples:
        >>> import os, tempfile, jax.numpy as jnp
        >>> from funcnet.checkpoint import save
        >>> from funcnet.checkpoint.index import read_index
        >>> path = save(os.path.join(tempfile.mkdtemp(), "c"), {"w": jnp.arange(6)}, sharded=True)
        >>> with ShardReader(path, read_index(path)[0]) as reader:
        ...     reader.read("w", ((2, 5),)).tolist()
        [2, 3, 4]
    """

    def __init__(self, directory: str, index: dict):
        self.directory, self.index = directory, index
        self.fail = failure(directory)
        self._files: dict[str, tuple[Any, dict, int]] = {}  # name -> (file, table, data start)
        self._shards: dict[tuple[str, int], np.ndarray] = {}

    def __enter__(self) -> ShardReader:
        return self

    def __exit__(self, *exc) -> None:
        for f, _, _ in self._files.values():
            f.close()
        self._files.clear()

    def _file(self, name: str) -> tuple[Any, dict, int]:
        if name in self._files:
            return self._files[name]
        where = f"its shard file `{name}`"
        try:
            f = _open(os.path.join(self.directory, name))
        except CheckpointError as err:
            self.fail(f"{where} cannot be read ({err})")
        try:
            size = os.fstat(f.fileno()).st_size
            expected = self.index["files"][name]
            if size != expected["size"]:
                self.fail(f"{where} has {size} bytes, its index says {expected['size']}")
            head = f.read(8)
            (n,) = struct.unpack("<Q", head) if len(head) == 8 else (size,)
            if n > MAX_HEADER or 8 + n > size:
                self.fail(f"{where} has a header length of {n} bytes, more than the file holds")
            head += f.read(n)
            if hashlib.sha256(head).hexdigest() != expected["header_sha256"]:
                self.fail(f"{where}: the checksum of its header does not match its index")
            table, _ = split_header(
                parse_json(head[8:], f"the header of `{name}`", self.fail), self.fail
            )
            if check_table(table, self.fail) != size - 8 - n:
                self.fail(f"{where}: its header's arrays do not fill its {size - 8 - n} data bytes")
        except BaseException:
            f.close()
            raise
        self._files[name] = (f, table, 8 + n)
        return self._files[name]

    def shard(self, name: str, k: int) -> np.ndarray:
        """Saved shard ``k`` of the array ``name``, read and checked (once)."""
        if (name, k) in self._shards:
            return self._shards[(name, k)]
        array = self.index["arrays"][name]
        entry = array["shards"][k]
        box = [tuple(p) for p in entry["index"]]
        where = f"the shard {box} of `{name_str(name)}` in `{entry['file']}`"
        f, table, start = self._file(entry["file"])
        tensor = table.get(entry["tensor"])
        shape = [stop - begin for begin, stop in box]
        if tensor is None or tensor["dtype"] != array["dtype"] or tensor["shape"] != shape:
            self.fail(f"{where} (tensor {entry['tensor']!r}) is not {array['dtype']}{shape} there")
        begin, end = tensor["data_offsets"]
        raw = os.pread(f.fileno(), end - begin, start + begin)
        if len(raw) != end - begin:
            self.fail(f"{where} is truncated: read {len(raw)} of {end - begin} bytes")
        digest = hashlib.sha256(raw).hexdigest()
        if digest != entry["sha256"]:
            self.fail(
                f"{where}: the checksum does not match: the file is corrupted or was modified "
                f"(stored sha256 {entry['sha256'][:12]}..., computed {digest[:12]}...)"
            )
        dtype = DTYPES[array["dtype"]]
        data = np.frombuffer(raw, dtype).reshape(shape)  # read-only: assemble copies out of it
        if dtype == np.bool_ and data.size and data.view(np.uint8).max() > 1:
            self.fail(f"{where} holds bool bytes other than 0 and 1")
        self._shards[(name, k)] = data
        return data

    def read(self, name: str, box: Box | None = None) -> np.ndarray:
        """The part ``box`` (default: all) of the array ``name``, from the shards overlapping it."""
        array = self.index["arrays"][name]
        if box is None:
            box = tuple((0, d) for d in array["shape"])
        pieces = []
        for k, entry in enumerate(array["shards"]):
            saved = tuple(tuple(p) for p in entry["index"])
            if intersect(saved, box) is not None:
                pieces.append((saved, self.shard(name, k)))
        return assemble(box, DTYPES[array["dtype"]], pieces, name=name)


def _target_sharding(t, want):
    """The sharding to build a template leaf's data with, or ``None`` (uncommitted/host)."""
    if isinstance(t, (np.ndarray, np.generic)) or want[0] in ("bool", "int", "float"):
        return None
    sharding = getattr(t, "sharding", None)
    if sharding is None or not getattr(t, "committed", True):
        return None
    if want[0] == "key" and isinstance(t, jax.Array):
        return jax.random.key_data(t).sharding  # the sharding of the key data (one more axis)
    return sharding


class _Build(NamedTuple):
    """A leaf whose target shards are read: ``build()`` makes the array."""

    t: Any
    want: tuple
    sharding: Any
    shape: tuple
    parts: dict  # box -> host data

    def build(self):
        kind, t = self.want[0], self.t
        if self.sharding is None:
            data = self.parts[tuple((0, d) for d in self.shape)]
            if kind in ("bool", "int", "float"):
                return type(t)(data.item())
            if isinstance(t, np.generic):
                return data.reshape(()).astype(t.dtype)[()]
            if isinstance(t, np.ndarray):
                return data.copy()
            placed = jax.device_put(data)
        else:
            placed = jax.make_array_from_callback(
                self.shape, self.sharding, lambda index: self.parts[box_of_index(index, self.shape)]
            )
        return jax.random.wrap_key_data(placed, impl=self.want[3]) if kind == "key" else placed


def _read_parts(reader: ShardReader, name: str, t, want) -> _Build:
    shape = tuple(reader.index["arrays"][name]["shape"])
    sharding = _target_sharding(t, want)
    if sharding is None:
        boxes = {tuple((0, d) for d in shape)}
    else:
        indices = sharding.addressable_devices_indices_map(shape).values()
        boxes = {box_of_index(index, shape) for index in indices}
    return _Build(t, want, sharding, shape, {box: reader.read(name, box) for box in boxes})


def _agree(directory: str, error: BaseException | None) -> None:
    """Every process learns whether each could read its shards; all raise if one could not."""
    from jax.experimental import multihost_utils

    code = 0 if error is None else 1 if getattr(error, "corrupt", False) else 2
    codes = np.asarray(multihost_utils.process_allgather(np.int32(code))).reshape(-1)
    if error is not None:
        raise error
    bad = [p for p, c in enumerate(codes.tolist()) if c]
    if bad:
        raise CheckpointError(
            f"checkpoint `{directory}`: process(es) {bad} could not read their shards (their "
            "errors say why); nothing was restored.",
            corrupt=all(codes[p] == 1 for p in bad),
        )


def _spans_processes(like) -> bool:
    for x in jax.tree.leaves(like):
        sharding = getattr(x, "sharding", None)
        if sharding is not None and not sharding.is_fully_addressable:
            return True
    return False


def load_sharded(directory: str | os.PathLike, like: Any = None, *, strict: bool = True) -> Any:
    """Load the sharded checkpoint ``directory`` (see :func:`funcnet.checkpoint.load`).

    Without ``like``, every array is read whole. With it, each process reads
    only the saved shards its target shards overlap.

    Examples:
        >>> import os, tempfile, jax, jax.numpy as jnp
        >>> from funcnet.checkpoint import save
        >>> path = save(os.path.join(tempfile.mkdtemp(), "ckpt"), {"w": jnp.arange(6.0)},
        ...             sharded=True)
        >>> load_sharded(path, like={"w": jnp.zeros(6)})["w"].tolist()
        [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    """
    directory = os.fspath(directory)
    index, kinds = read_index(directory)
    with ShardReader(directory, index) as reader:
        if like is None:
            arrays = {name: reader.read(name) for name in index["arrays"]}
            return _decode(index["tree"], arrays)
        entries = {
            n: _Spec(tuple(a["shape"]), DTYPES[a["dtype"]]) for n, a in index["arrays"].items()
        }
        spans = _spans_processes(like)
        error = None
        try:
            treedef, out = fill_template(
                directory,
                like,
                strict,
                entries,
                kinds,
                lambda n, t, w: _read_parts(reader, n, t, w),
            )
        except (CheckpointError, OSError) as err:
            if not spans or getattr(err, "report", None) is not None:
                raise  # a template mismatch is the same in every process
            error = err
        if spans:
            _agree(directory, error)
    out = [x.build() if isinstance(x, _Build) else x for x in out]
    return jax.tree_util.tree_unflatten(treedef, out)


def read_metadata_sharded(directory: str | os.PathLike) -> dict:
    """The description of a sharded checkpoint (see :func:`funcnet.checkpoint.read_metadata`).

    Reads and checks only ``index.json``; the result also has ``"sharded": True``
    and ``"process_count"`` (how many processes saved it).

    Examples:
        >>> import os, tempfile, jax.numpy as jnp
        >>> from funcnet.checkpoint import save
        >>> path = save(os.path.join(tempfile.mkdtemp(), "c"), {"w": jnp.ones(2)}, sharded=True)
        >>> meta = read_metadata_sharded(path)
        >>> meta["sharded"], meta["process_count"], meta["tensors"]
        (True, 1, {'w': {'dtype': 'F32', 'shape': [2]}})
    """
    index, _ = read_index(os.fspath(directory))
    skip = ("tree", "files", "arrays")
    info = {k: v for k, v in index.items() if k not in skip}
    info["tensors"] = {
        n: {"dtype": a["dtype"], "shape": list(a["shape"])} for n, a in index["arrays"].items()
    }
    info["sharded"] = True
    return info
