"""Batches over processes: each process reads its rows, :func:`global_batch` joins them."""

from __future__ import annotations

from collections.abc import Iterator

import jax
import numpy as np

from funcnet._checks import is_int
from funcnet.data.batching import batches
from funcnet.distributed.mesh import Mesh, Pytree, batch_sharding, check_divisible, check_mesh


def global_batch(local: Pytree, mesh: Mesh, where: str = "global_batch") -> Pytree:
    """The global batch array from this process's rows, split over the mesh's batch axes.

    With one process ``local`` is the whole batch; with several, each process
    passes its own consecutive block of rows (process ``p`` holds rows
    ``p * n_local`` to ``(p + 1) * n_local`` of the global batch, see
    :func:`local_batches`) and the global leading size is
    ``n_local * jax.process_count()``. Built with
    ``jax.make_array_from_process_local_data``.

    Raises:
        ValueError: when the global batch size is not divisible by the number
            of devices the batch is split over (the message starts with ``where``).

    Examples:
        >>> from funcnet.distributed import make_mesh
        >>> batch = global_batch((np.ones((4, 2), np.float32), np.zeros(4, np.int32)), make_mesh(1))
        >>> batch[0].shape, tuple(batch[0].sharding.spec)
        ((4, 2), ('data',))
    """
    sharding = batch_sharding(check_mesh(mesh, where))
    leaves = jax.tree.leaves(local)
    if not leaves:
        raise ValueError(f"{where}: the batch has no arrays.")
    rows = {np.shape(a)[0] if np.ndim(a) else None for a in leaves}
    if None in rows or len(rows) != 1:
        raise ValueError(
            f"{where}: every array of the batch needs the same leading (batch) size, got "
            f"{sorted(map(str, rows))}."
        )
    total = rows.pop() * jax.process_count()
    hint = " (for the last batch of an epoch: `batches(..., drop_remainder=True)`)"
    check_divisible(total, mesh, where, "the global batch size", hint)

    def make(a):
        if isinstance(a, jax.Array) and not a.is_fully_addressable:
            return a  # already global
        return jax.make_array_from_process_local_data(sharding, np.asarray(a))

    return jax.tree.map(make, local)


def local_batches(
    arrays: Pytree,
    global_batch_size: int,
    *,
    key: jax.Array | None = None,
    shuffle: bool = False,
    process_index: int | None = None,
    process_count: int | None = None,
) -> Iterator[Pytree]:
    """This process's rows of every global batch; only those rows of ``arrays`` are read.

    All processes draw the same order (the same ``key``), cut it into global
    batches of ``global_batch_size`` and process ``p`` of ``P`` takes rows
    ``p * b`` to ``(p + 1) * b`` of each, ``b = global_batch_size // P``;
    pass each to :func:`global_batch`. ``arrays`` may be numpy memory maps, so
    a process reads only its part of a dataset on disk. The last partial
    global batch is dropped (every process needs equally many rows).

    Args:
        arrays: a pytree of equally long arrays, e.g. ``(x, y)``.
        global_batch_size: rows per global batch, a multiple of the process count.
        key: a random key (needed for ``shuffle=True``; the same on every process).
        shuffle: use ``jax.random.permutation(key, n)`` as the order.
        process_index, process_count: default ``jax.process_index()`` and
            ``jax.process_count()``.

    Raises:
        ValueError: for a bad batch size, one not divisible by the process
            count, ``shuffle`` without ``key`` or arrays of different lengths.

    Examples:
        >>> x = np.arange(10)
        >>> [b.tolist() for b in local_batches(x, 4, process_index=1, process_count=2)]
        [[2, 3], [6, 7]]
    """
    p = jax.process_index() if process_index is None else int(process_index)
    count = jax.process_count() if process_count is None else int(process_count)
    if not is_int(global_batch_size):
        raise ValueError(
            f"local_batches: `global_batch_size` must be an int, got {global_batch_size!r}."
        )
    if global_batch_size < count or global_batch_size % count:
        fix = max(count, global_batch_size // count * count)
        raise ValueError(
            f"local_batches: `global_batch_size={global_batch_size}` must be a positive "
            f"multiple of the {count} processes; use e.g. {fix}."
        )
    if not 0 <= p < count:
        raise ValueError(f"local_batches: `process_index={p}` is not in [0, {count}).")
    if shuffle and key is None:
        raise ValueError("local_batches: `shuffle=True` needs a `key` (the same on every process).")
    return batches(
        arrays,
        global_batch_size,
        key=key,
        shuffle=shuffle,
        drop_remainder=True,
        part=(p, count),
    )
