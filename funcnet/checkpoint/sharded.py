"""Saving a sharded checkpoint: each process writes its own shards, process 0 commits.

The steps of a save (every process calls it with the same tree, as for any
multi-process JAX code):

1. *On the host* (:func:`prepare_sharded`, in the caller's thread): the
   temporary directory's name is agreed on (process 0 picks it, a broadcast
   tells the others), and each process copies to the host the shards it
   writes: of every JAX array, the addressable shards with ``replica_id ==
   0`` (so a replicated shard is written once, by one process); numpy arrays,
   Python scalars and arrays local to each process are written by process 0.
   After this the caller may donate or change its arrays.
2. *Writing* (:meth:`PendingSave.run`, in the caller's thread or a background
   one): each process writes ``process_<n>.safetensors`` into the temporary
   directory ``.<name>.<host>.<pid>.<hex>.tmp`` beside the target, ``fsync``-s
   it, then publishes a small manifest (its shards' boxes and SHA-256s)
   atomically. A process that fails publishes its error instead.
3. *Commit* (process 0): once every manifest is there (a barrier through the
   shared file system, so that a background thread needs no collective), it
   checks that the shards tile every array, writes ``index.json``, ``fsync``-s
   the directory and renames it to the target (an older checkpoint of that
   name is moved aside first, then removed), then ``fsync``-s the parent. The
   other processes return once the temporary directory is gone. A reader sees
   the old checkpoint or the complete new one, never a part; a process killed
   at any point leaves only the hidden temporary directory, which a
   :class:`~funcnet.checkpoint.CheckpointManager` on that directory removes
   once its owner is dead.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import struct
import time
from typing import Any

import jax
import numpy as np

from funcnet.checkpoint.atomic import _fsync_dir, _temp_name
from funcnet.checkpoint.errors import CheckpointError
from funcnet.checkpoint.format import _bytes_of, _description, _host_dtype
from funcnet.checkpoint.index import INDEX_FILE, SHARDED_FORMAT, index_digest, process_file
from funcnet.checkpoint.shards import box_of_index, check_tiling
from funcnet.checkpoint.tree import _encode, _is_key

__all__ = ["PendingSave", "needs_sharded", "prepare_sharded", "save_sharded"]

SHARD_FORMAT = "funcnet.checkpoint.shard"  # the __metadata__ marker of a shard file
FAILED = "FAILED"  # written into the temporary directory by process 0 when a save fails
DEFAULT_TIMEOUT = 600.0  # seconds process 0 waits for the others' shards
_NAME_BYTES = 4096  # the all-gathered buffer of the temporary directory's path

# Called as ``_write_hook(path, k)`` after shard ``k`` of a shard file is written (tests use it
# to make a save slow, or to kill the process in the middle of one).
_write_hook = None


def needs_sharded(tree: Any) -> bool:
    """Whether ``tree`` holds an array that no single process can write whole.

    That is a JAX array that is neither fully addressable by this process nor
    fully replicated (each process holds only some of its values).

    Examples:
        >>> import jax.numpy as jnp
        >>> needs_sharded({"w": jnp.ones(3)})
        False
    """
    for x in jax.tree.leaves(tree):
        if isinstance(x, jax.Array) and not x.is_fully_addressable and not x.is_fully_replicated:
            return True
    return False


# ----------------------------------------------------------------------------- on the host


def _local_shards(x, name: str, copy: bool) -> tuple[str, list[int], list]:
    """``(dtype code, global shape, [(box, shard data), ...])`` this process writes of ``x``."""
    process = jax.process_index()
    if isinstance(x, jax.Array):
        data = jax.random.key_data(x) if _is_key(x) else x
        code = _host_dtype(data.dtype, name)
        if data.is_fully_addressable and process != 0:  # a process-local value: process 0's
            return code, list(data.shape), []
        shards = [s for s in data.addressable_shards if s.replica_id == 0]
        for s in shards:
            s.data.copy_to_host_async()
        return code, list(data.shape), [(box_of_index(s.index, data.shape), s.data) for s in shards]
    if isinstance(x, bool):
        a = np.asarray(x, np.bool_)
    elif isinstance(x, int):
        a = np.asarray(x, np.int64)
    elif isinstance(x, float):
        a = np.asarray(x, np.float64)
    else:
        a = np.asarray(x)
    if not a.dtype.isnative:
        a = a.astype(a.dtype.newbyteorder("="))
    code = _host_dtype(a.dtype, name)
    if process != 0:
        return code, list(a.shape), []
    return code, list(a.shape), [(tuple((0, d) for d in a.shape), np.array(a) if copy else a)]


def _on_host(data, copy: bool) -> np.ndarray:
    a = np.array(data) if copy else np.asarray(data)
    return a if a.flags.c_contiguous else np.ascontiguousarray(a).reshape(a.shape)


def _agree_on_name(path: str) -> str:
    """The temporary directory's name: process 0's choice, told to every process.

    Every process sends its own choice (an all-gather); all of them fail at once when
    they were given different paths (each would wait for the others' shards in vain).
    """
    tmp = _temp_name(path)
    if jax.process_count() == 1:
        return tmp
    from jax.experimental import multihost_utils

    encoded = os.fsencode(path) + b"\0" + os.fsencode(tmp)
    if len(encoded) > _NAME_BYTES:
        raise ValueError(f"checkpoint: the path `{path}` is too long ({len(encoded)} bytes).")
    raw = np.zeros(_NAME_BYTES, np.uint8)
    raw[: len(encoded)] = np.frombuffer(encoded, np.uint8)
    rows = np.asarray(multihost_utils.process_allgather(raw)).reshape(-1, _NAME_BYTES)
    pairs = [bytes(row).rstrip(b"\0").split(b"\0") for row in rows]
    paths = [os.fsdecode(p) for p, _ in pairs]
    if len(set(paths)) > 1:
        raise ValueError(
            f"checkpoint: the processes save to different paths ({sorted(set(paths))[:4]}); "
            "every process must pass the same path, on a file system they all see."
        )
    return os.fsdecode(pairs[0][1])


class PendingSave:
    """A save whose arrays are on the host: :meth:`run` writes and commits it.

    Made by :func:`prepare_sharded`; run it once, in any thread (no JAX
    collective is used). ``path`` is the checkpoint directory it commits.
    """

    def __init__(self, path: str, tmp: str, info: dict, arrays: dict, shards: list, timeout):
        self.path, self.tmp, self.timeout = path, tmp, timeout
        self.info, self.arrays, self.shards = info, arrays, shards
        self.process, self.count = jax.process_index(), jax.process_count()

    def run(self) -> str:
        """Write this process's shards, then commit (process 0) or wait for the commit.

        Returns:
            The checkpoint directory.

        Raises:
            CheckpointError: when a process failed to write its shards.
            TimeoutError: when the others did not finish within ``timeout``.
            OSError: when writing fails (e.g. the disk is full).
        """
        deadline = time.monotonic() + self.timeout
        os.makedirs(self.tmp, exist_ok=True)
        manifest = self._write_own()
        if self.process != 0:
            _wait_for_commit(self.tmp, self.path, deadline)
            return self.path
        try:
            manifests = _gather(self.tmp, manifest, self.count, deadline)
            _write_index(self.tmp, self._index(manifests))
            _publish(self.tmp, self.path)
        except BaseException as err:
            with contextlib.suppress(OSError), open(os.path.join(self.tmp, FAILED), "w") as f:
                f.write(f"{type(err).__name__}: {err}")
            raise
        return self.path

    def _write_own(self) -> dict:
        name = process_file(self.process)
        try:
            manifest = _write_file(os.path.join(self.tmp, name), self.shards)
        except BaseException as err:
            if self.process != 0:
                _put_manifest(self.tmp, self.process, {"error": f"{type(err).__name__}: {err}"})
            raise
        manifest["file"] = name if manifest["shards"] else None
        if self.process != 0:
            _put_manifest(self.tmp, self.process, manifest)
        return manifest

    def _index(self, manifests: list[dict]) -> dict:
        arrays = {n: {**spec, "shards": []} for n, spec in self.arrays.items()}
        files = {}
        for manifest in manifests:
            if manifest["file"] is None:
                continue
            files[manifest["file"]] = {
                "size": manifest["size"],
                "header_sha256": manifest["header_sha256"],
            }
            for s in manifest["shards"]:
                entry = {k: s[k] for k in ("tensor", "index", "sha256")}
                arrays[s["array"]]["shards"].append({"file": manifest["file"], **entry})
        for name, spec in arrays.items():
            problem = check_tiling(
                spec["shape"], [tuple(map(tuple, s["index"])) for s in spec["shards"]]
            )
            if problem:
                raise CheckpointError(
                    f"checkpoint `{self.path}`: the shards the processes wrote of `{name}` do "
                    f"not tile it ({problem}); every process must save the same tree."
                )
        return {**self.info, "process_count": self.count, "files": files, "arrays": arrays}


def prepare_sharded(
    path: str | os.PathLike,
    tree: Any,
    metadata=None,
    extra=None,
    *,
    copy: bool = False,
    timeout: float = DEFAULT_TIMEOUT,
) -> PendingSave:
    """Copy this process's shards of ``tree`` to the host; :meth:`PendingSave.run` writes them.

    Every process must call it, in the same order as its other JAX calls (in
    several processes it agrees on the temporary directory's name with a
    broadcast).

    Args:
        path: the checkpoint directory to commit.
        tree, metadata: as for :func:`~funcnet.checkpoint.save`.
        extra: more fields for funcnet's description (``step``, ``metrics``).
        copy: copy every shard into host memory now (for a background save:
            the arrays may then be donated or changed); otherwise a shard
            may be read from a device buffer that must stay alive until
            :meth:`PendingSave.run` returns.
        timeout: seconds process 0 waits for the other processes' shards
            (and they for its commit).

    Returns:
        A :class:`PendingSave`.

    Examples:
        >>> import os, tempfile, jax.numpy as jnp
        >>> x = jnp.arange(3.0)
        >>> pending = prepare_sharded(os.path.join(tempfile.mkdtemp(), "c"), {"x": x}, copy=True)
        >>> x.delete()  # copied: the array may go
        >>> os.path.basename(pending.run())
        'c'
    """
    path = os.path.abspath(os.fspath(path))
    structure, leaves = _encode(tree)
    arrays, pending = {}, []
    for name, x in leaves:
        code, shape, shards = _local_shards(x, name, copy)
        arrays[name] = {"dtype": code, "shape": shape}
        pending.extend((name, box, data) for box, data in shards)
    shards = [(name, box, _on_host(data, copy)) for name, box, data in pending]
    info = _description(structure, metadata, extra)
    tmp = _agree_on_name(path)
    return PendingSave(path, tmp, info, arrays, shards, timeout)


def save_sharded(
    path: str | os.PathLike, tree: Any, *, metadata=None, timeout: float = DEFAULT_TIMEOUT
) -> str:
    """Save ``tree`` as a sharded checkpoint directory: each process writes its own shards.

    Every process calls it with the same tree (arrays sharded over any mesh
    of any processes); it returns once the checkpoint is committed. See
    :func:`funcnet.checkpoint.save` (``sharded=True`` calls this) and the
    module docstring.

    Returns:
        ``path``, the directory (as an absolute path).

    Examples:
        >>> import os, tempfile, jax.numpy as jnp
        >>> from funcnet.checkpoint import load
        >>> path = save_sharded(os.path.join(tempfile.mkdtemp(), "ckpt"), {"w": jnp.arange(4)})
        >>> sorted(os.listdir(path)), load(path)["w"].tolist()
        (['index.json', 'process_00000.safetensors'], [0, 1, 2, 3])
    """
    return prepare_sharded(path, tree, metadata, copy=False, timeout=timeout).run()


# ----------------------------------------------------------------------------- files


def _write_file(path: str, shards: list) -> dict:
    """Write ``shards`` as a safetensors file at ``path``; its manifest (sizes, checksums)."""
    table, offset = {}, 0
    for k, (_, _, a) in enumerate(shards):
        code = _host_dtype(a.dtype, "shard")
        table[str(k)] = {
            "dtype": code,
            "shape": list(a.shape),
            "data_offsets": [offset, offset + a.nbytes],
        }
        offset += a.nbytes
    manifest = {"size": 0, "header_sha256": None, "shards": []}
    if not shards:
        return manifest
    header = dict(table)
    header["__metadata__"] = {"format": SHARD_FORMAT}
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    head = struct.pack("<Q", len(raw)) + raw
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
    with os.fdopen(fd, "wb") as f:
        f.write(head)
        for k, (name, box, a) in enumerate(shards):
            data = _bytes_of(a)
            f.write(memoryview(data))
            digest = hashlib.sha256(memoryview(data)).hexdigest()
            index = [list(p) for p in box]
            manifest["shards"].append(
                {"array": name, "tensor": str(k), "index": index, "sha256": digest}
            )
            if _write_hook is not None:
                _write_hook(path, k)
        f.flush()
        os.fsync(f.fileno())
    manifest["size"] = len(head) + offset
    manifest["header_sha256"] = hashlib.sha256(head).hexdigest()
    return manifest


def _manifest_path(tmp: str, process: int) -> str:
    return os.path.join(tmp, f"process_{process:05d}.json")


def _put_manifest(tmp: str, process: int, manifest: dict) -> None:
    """Publish a manifest atomically (written aside, ``fsync``-ed, renamed)."""
    final = _manifest_path(tmp, process)
    part = final + ".part"
    with open(part, "w") as f:
        json.dump(manifest, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(part, final)


def _sleep(delay: float) -> float:
    time.sleep(delay)
    return min(delay * 2, 0.05)


def _gather(tmp: str, own: dict, count: int, deadline: float) -> list[dict]:
    """Every process's manifest (process 0's ``own``), waiting for them until ``deadline``."""
    manifests: dict[int, dict] = {0: own}
    delay = 0.001
    while len(manifests) < count:
        for p in range(1, count):
            if p in manifests or not os.path.exists(_manifest_path(tmp, p)):
                continue
            with open(_manifest_path(tmp, p)) as f:
                manifest = json.load(f)
            if "error" in manifest:
                raise CheckpointError(
                    f"checkpoint: process {p} failed to write its shards into `{tmp}` "
                    f"({manifest['error']}); the checkpoint was not committed."
                )
            manifests[p] = manifest
        if len(manifests) < count:
            if time.monotonic() > deadline:
                missing = sorted(set(range(count)) - set(manifests))
                raise TimeoutError(
                    f"checkpoint: process(es) {missing} did not finish writing their shards into "
                    f"`{tmp}` in time (did one die, or do they not see this directory: is it "
                    "on a file system shared by every process?); the checkpoint was not committed."
                )
            delay = _sleep(delay)
    for p in range(1, count):
        with contextlib.suppress(OSError):
            os.remove(_manifest_path(tmp, p))
    return [manifests[p] for p in range(count)]


def _write_index(tmp: str, index: dict) -> None:
    doc = {"format": SHARDED_FORMAT, "sha256": index_digest(index), "index": index}
    with open(os.path.join(tmp, INDEX_FILE), "w") as f:
        json.dump(doc, f, separators=(",", ":"))
        f.flush()
        os.fsync(f.fileno())
    _fsync_dir(tmp)


def _publish(tmp: str, path: str) -> None:
    """Rename ``tmp`` to ``path`` (an existing ``path`` is moved aside, then removed)."""
    aside = None
    if os.path.lexists(path):
        aside = _temp_name(path)
        os.replace(path, aside)
    os.replace(tmp, path)
    _fsync_dir(os.path.dirname(path))
    if aside is not None:
        if os.path.isdir(aside) and not os.path.islink(aside):
            shutil.rmtree(aside, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                os.remove(aside)


def _wait_for_commit(tmp: str, path: str, deadline: float) -> None:
    """Wait until process 0 has renamed ``tmp`` into place (or says it failed)."""
    delay = 0.001
    while os.path.exists(tmp):
        failed = os.path.join(tmp, FAILED)
        if os.path.exists(failed):
            with open(failed) as f:
                reason = f.read()
            raise CheckpointError(
                f"checkpoint `{path}`: process 0 could not commit it ({reason}); it was not saved."
            )
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"checkpoint `{path}`: process 0 did not commit it in time (did it die?); the "
                f"shards of this process are in `{tmp}`."
            )
        delay = _sleep(delay)
