"""Larger-than-memory datasets: ``.npy`` shards read through memory maps.

:func:`write_shards` splits arrays ``(x, y)`` / ``(x, y, weights)`` into
files ``x_00000.npy``, ``y_00000.npy``, ... of ``rows_per_shard`` rows and an
``index.json`` (row counts, dtypes, shapes). :class:`ShardedArrays` opens them
with ``np.load(mmap_mode="r")`` and serves batches; only the rows of the
current batch are read, never a whole shard. It is an iterable of batches that
``fit`` / ``evaluate`` / ``predict`` take as their data, and its
``for_epoch(epoch)`` gives epoch ``epoch``'s order, so ``fit`` reshuffles
every epoch and a resumed run replays the same order.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from funcnet._checks import check_positive_int

__all__ = ["ShardedArrays", "write_shards"]

INDEX = "index.json"
_FORMAT = "funcnet.shards"
_VERSION = 1  # of the index layout; a reader refuses a newer one
_NAMES = ("x", "y", "weights")


def write_shards(directory: str | os.PathLike, arrays: tuple, rows_per_shard: int) -> Path:
    """Write ``(x, y)`` / ``(x, y, weights)`` as ``.npy`` shards and an ``index.json``.

    Shard ``i`` holds rows ``[i * rows_per_shard, (i + 1) * rows_per_shard)``
    of every array, as ``x_0000i.npy``, ``y_0000i.npy`` (and
    ``weights_0000i.npy``). ``index.json`` is written last, so a directory
    with an index is complete. Arrays may be ``np.memmap`` s: each shard is
    copied from its rows alone.

    Args:
        directory: created if missing; existing shard files are overwritten.
        arrays: a tuple ``(x, y)`` or ``(x, y, weights)`` of arrays with the
            same number of rows.
        rows_per_shard: rows in every shard but the last.

    Returns:
        The path of ``index.json``.

    Raises:
        TypeError: when ``arrays`` is not such a tuple of arrays.
        ValueError: for arrays of different lengths, no rows, or a bad
            ``rows_per_shard``.

    Examples:
        >>> import tempfile, json, numpy as np
        >>> d = tempfile.mkdtemp()
        >>> x, y = np.zeros((10, 3), np.float32), np.arange(10)
        >>> index = write_shards(d, (x, y), rows_per_shard=4)
        >>> sorted(p.name for p in index.parent.iterdir())[:3]
        ['index.json', 'x_00000.npy', 'x_00001.npy']
        >>> [s["rows"] for s in json.loads(index.read_text())["shards"]]
        [4, 4, 2]
    """
    rows_per_shard = check_positive_int("write_shards", "rows_per_shard", rows_per_shard)
    if not (isinstance(arrays, tuple) and len(arrays) in (2, 3)):
        raise TypeError(
            f"write_shards: `arrays` must be a tuple `(x, y)` or `(x, y, weights)`, got "
            f"{type(arrays).__name__}{_length(arrays)}; pass e.g. "
            "`write_shards(directory, (x, y), rows_per_shard=10_000)`."
        )
    names = _NAMES[: len(arrays)]
    for name, a in zip(names, arrays):
        if not hasattr(a, "shape") or np.ndim(a) == 0:
            raise TypeError(
                f"write_shards: `{name}` must be an array with a leading row axis, got "
                f"{type(a).__name__}; convert it with `np.asarray({name})`."
            )
    lengths = {name: a.shape[0] for name, a in zip(names, arrays)}
    if len(set(lengths.values())) > 1:
        raise ValueError(
            f"write_shards: the arrays have different numbers of rows: {lengths}; x, y "
            "(and weights) must have the same length along axis 0."
        )
    n = lengths["x"]
    if n == 0:
        raise ValueError("write_shards: the arrays have 0 rows; there is nothing to write.")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    index_path = directory / INDEX
    if index_path.exists():
        index_path.unlink()  # a half-rewritten directory must not look complete
    shards = []
    for i, start in enumerate(range(0, n, rows_per_shard)):
        stop = min(start + rows_per_shard, n)
        files = {}
        for name, a in zip(names, arrays):
            files[name] = f"{name}_{i:05d}.npy"
            np.save(directory / files[name], np.asarray(a[start:stop]))
        shards.append({"rows": stop - start, "files": files})
    index = {
        "format": _FORMAT,
        "version": _VERSION,
        "names": list(names),
        "rows": n,
        "dtypes": {name: np.dtype(a.dtype).str for name, a in zip(names, arrays)},
        "shapes": {name: list(a.shape[1:]) for name, a in zip(names, arrays)},
        "shards": shards,
    }
    tmp = directory / (INDEX + ".tmp")
    tmp.write_text(json.dumps(index, indent=1))
    os.replace(tmp, index_path)
    return index_path


def _length(arrays) -> str:
    return f" of length {len(arrays)}" if isinstance(arrays, (tuple, list)) else ""


def _read_index(directory: Path) -> dict:
    path = directory / INDEX
    if not path.is_file():
        raise FileNotFoundError(
            f"ShardedArrays: no index file {str(path)!r}; a shard directory is made by "
            "`funcnet.data.write_shards(directory, (x, y), rows_per_shard)`, which writes "
            "the index last (a directory without one was not finished)."
        )
    try:
        index = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(
            f"ShardedArrays: the index file {str(path)!r} is not valid JSON ({err}); "
            "write the shards again with `funcnet.data.write_shards`."
        ) from None
    keys = ("format", "names", "dtypes", "shapes", "shards")
    if (
        not isinstance(index, dict)
        or index.get("format") != _FORMAT
        or any(k not in index for k in keys)
    ):
        raise ValueError(
            f"ShardedArrays: the index file {str(path)!r} is not a funcnet shard index "
            f"(expected a JSON object with format {_FORMAT!r} and keys {list(keys)}); "
            "write the shards again with `funcnet.data.write_shards`."
        )
    if index.get("version", _VERSION) > _VERSION:
        raise ValueError(
            f"ShardedArrays: the index file {str(path)!r} has version {index['version']}, newer "
            f"than this funcnet reads ({_VERSION}); upgrade funcnet, or write the shards again."
        )
    return index


def _open_shard(directory: Path, index: dict, shard: dict) -> dict:
    arrays = {}
    for name in index["names"]:
        path = directory / shard["files"][name]
        if not path.is_file():
            raise FileNotFoundError(
                f"ShardedArrays: the shard file {str(path)!r} listed in "
                f"{str(directory / INDEX)!r} is missing; write the shards again with "
                "`funcnet.data.write_shards`."
            )
        try:
            a = np.load(path, mmap_mode="r")
        except (ValueError, OSError) as err:
            raise ValueError(
                f"ShardedArrays: the shard file {str(path)!r} is not a readable .npy file "
                f"({err}); write the shards again with `funcnet.data.write_shards`."
            ) from None
        expected = (shard["rows"], *index["shapes"][name])
        dtype = np.dtype(index["dtypes"][name])
        if a.shape != expected or a.dtype != dtype:
            raise ValueError(
                f"ShardedArrays: the shard file {str(path)!r} holds {a.dtype} {a.shape}, but "
                f"{str(directory / INDEX)!r} says {dtype} {expected}; write the shards again "
                "with `funcnet.data.write_shards`."
            )
        arrays[name] = a
    return arrays


class ShardedArrays:
    """Batches of ``.npy`` shards written by :func:`write_shards`, read through memory maps.

    Every shard file is opened with ``np.load(mmap_mode="r")`` (an
    ``np.memmap``); a batch reads only its own rows, so datasets larger than
    memory train with ``fit(model, optimizer, loss, ShardedArrays(...))``.

    Order: with ``seed=None`` the rows come in file order. With a seed, epoch
    ``e`` visits the shards in a random order and each shard's rows in a
    random order (both drawn from ``np.random.default_rng((seed, e))``): the
    shuffle is within a shard, not across shards, so put the examples in the
    shards in a random order when writing them if they are sorted (e.g. by
    class). Batches run across shard boundaries; the last one is smaller
    unless ``drop_remainder``. ``fit`` calls :meth:`for_epoch` with the epoch
    number, so every epoch is reshuffled and a run resumed from a checkpoint
    replays the same order; iterating the object itself gives epoch 0
    (``evaluate`` / ``predict``).

    Args:
        directory: a directory written by :func:`write_shards`.
        batch_size: rows per batch.
        seed: an integer for shuffled epochs, or None for file order.
        drop_remainder: leave out the last, smaller batch of every epoch.

    Attributes:
        rows: the number of examples.
        names: ``("x", "y")`` or ``("x", "y", "weights")``.
        shards: the opened shards, a list of ``{name: np.memmap}``.

    Raises:
        FileNotFoundError: for a missing ``index.json`` or shard file.
        ValueError: for an index that is not valid JSON or not a shard index,
            a shard file that disagrees with it, or a bad ``batch_size``.

    Examples:
        >>> import tempfile, numpy as np
        >>> d = tempfile.mkdtemp()
        >>> x, y = np.arange(20.0).reshape(10, 2), np.arange(10)
        >>> _ = write_shards(d, (x, y), rows_per_shard=4)
        >>> data = ShardedArrays(d, batch_size=3)
        >>> [yb.tolist() for xb, yb in data]
        [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9]]
        >>> shuffled = ShardedArrays(d, batch_size=5, seed=0)
        >>> sorted(np.concatenate([yb for _, yb in shuffled.for_epoch(1)]).tolist())
        [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]
        >>> type(data.shards[0]["x"]).__name__, len(data.batch_list(0))
        ('memmap', 4)
    """

    def __init__(
        self,
        directory: str | os.PathLike,
        batch_size: int,
        *,
        seed: int | None = None,
        drop_remainder: bool = False,
    ):
        self.batch_size = check_positive_int("ShardedArrays", "batch_size", batch_size)
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer))):
            raise TypeError(
                f"ShardedArrays: `seed` must be an integer or None, got {type(seed).__name__}; "
                "pass e.g. `seed=0`."
            )
        self.directory = Path(directory)
        self.seed, self.drop_remainder = seed, drop_remainder
        index = _read_index(self.directory)
        self.names = tuple(index["names"])
        self.shards = [_open_shard(self.directory, index, s) for s in index["shards"]]
        self.sizes = np.array([s["rows"] for s in index["shards"]], np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(self.sizes)])
        self.rows = int(self.offsets[-1])
        if drop_remainder and self.batch_size > self.rows:
            raise ValueError(
                f"ShardedArrays: `batch_size={batch_size}` with `drop_remainder=True` leaves no "
                f"batch of the {self.rows} examples; use a batch size <= {self.rows}."
            )

    def order(self, epoch: int = 0) -> np.ndarray:
        """The global row indices (over all shards, in file order) of epoch ``epoch``."""
        if self.seed is None:
            return np.arange(self.rows)
        rng = np.random.default_rng((self.seed, epoch))
        parts = []
        for s in rng.permutation(len(self.shards)):
            parts.append(self.offsets[s] + rng.permutation(self.sizes[s]))
        return np.concatenate(parts)

    def __len__(self) -> int:
        """Batches per epoch."""
        full, rest = divmod(self.rows, self.batch_size)
        return full + (1 if rest and not self.drop_remainder else 0)

    def _read(self, rows: np.ndarray) -> tuple:
        shard_of = np.searchsorted(self.offsets, rows, side="right") - 1
        out = []
        for name in self.names:
            first = self.shards[0][name]
            batch = np.empty((len(rows), *first.shape[1:]), first.dtype)
            for s in np.unique(shard_of):
                where = shard_of == s
                batch[where] = self.shards[s][name][rows[where] - self.offsets[s]]
            out.append(batch)
        return tuple(out)

    def for_epoch(self, epoch: int, start: int = 0) -> Iterator[tuple]:
        """The batches ``(x, y)`` / ``(x, y, weights)`` of epoch ``epoch`` (numpy arrays),
        from batch ``start`` on (a resumed run reads none of the batches before it)."""
        order = self.order(epoch)
        for b in range(start, len(self)):
            yield self._read(order[b * self.batch_size : (b + 1) * self.batch_size])

    def batch_list(self, epoch: int = 0) -> list[np.ndarray]:
        """The row indices of each batch of epoch ``epoch`` (to check or rebuild the order)."""
        order = self.order(epoch)
        return [order[b * self.batch_size : (b + 1) * self.batch_size] for b in range(len(self))]

    def __iter__(self) -> Iterator[tuple]:
        return self.for_epoch(0)

    def __repr__(self) -> str:
        return (
            f"ShardedArrays({str(self.directory)!r}, batch_size={self.batch_size}, "
            f"seed={self.seed}, rows={self.rows}, shards={len(self.shards)})"
        )
