"""Batching over pytrees of arrays, and prefetching batches to the device."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator
from typing import Any, NamedTuple

import jax
import numpy as np

from funcnet.data._util import Pytree, _is_int, _leaf_lengths

__all__ = ["batches", "prefetch_to_device"]


# --------------------------------------------------------------------------- batching


def batches(
    arrays: Pytree,
    batch_size: int,
    *,
    key: Any = None,
    shuffle: bool = False,
    drop_remainder: bool = False,
    sharding: Any = None,
) -> Iterator[Pytree]:
    """Iterate over batches of a pytree of equally long numpy or jax arrays.

    Each batch has the structure of ``arrays`` with ``batch_size`` rows (the
    last one fewer unless ``drop_remainder``). With ``shuffle=True`` the order
    is ``jax.random.permutation(key, n)``: pass a new key every epoch. ``key``
    is ignored when ``shuffle=False``, so ``shuffle=training`` works with one
    call. The arguments are checked when ``batches`` is called; the batches
    are made lazily (numpy leaves are sliced on the host, jax leaves gathered
    on their device).

    Args:
        arrays: e.g. ``(x, y)`` or ``{"image": x, "label": y}``.
        batch_size: rows per batch.
        key: a JAX random key, needed for ``shuffle=True``.
        shuffle: iterate in a random order.
        drop_remainder: skip the last, smaller batch.
        sharding: optional ``jax.sharding.Sharding`` (or device); each batch is
            placed with ``jax.device_put(batch, sharding)``, e.g.
            ``NamedSharding(mesh, P("data"))`` splits it over the ``data`` axis
            (use ``drop_remainder=True`` so every batch divides evenly). For
            several processes build global arrays with
            ``jax.make_array_from_process_local_data`` instead.

    Returns:
        A generator of batches.

    Raises:
        ValueError: for a bad ``batch_size``, ``shuffle`` without ``key``, or
            arrays of different lengths (the message lists each leaf's path
            and length).
        TypeError: for leaves that are not arrays.

    Examples:
        >>> import numpy as np, jax
        >>> x, y = np.arange(10.0).reshape(5, 2), np.arange(5)
        >>> [b[1].tolist() for b in batches((x, y), 2)]
        [[0, 1], [2, 3], [4]]
        >>> [b["y"].shape for b in batches({"x": x, "y": y}, 2, drop_remainder=True)]
        [(2,), (2,)]
        >>> shuffled = batches(y, 2, key=jax.random.key(0), shuffle=True)
        >>> sorted(np.concatenate(list(shuffled)).tolist())
        [0, 1, 2, 3, 4]
    """
    if not _is_int(batch_size) or batch_size < 1:
        raise ValueError(f"batches: `batch_size` must be an int >= 1, got {batch_size!r}.")
    leaves, treedef, n = _leaf_lengths(arrays, "batches")
    order = None
    if shuffle:
        if key is None:
            raise ValueError(
                "batches: `shuffle=True` needs a random `key`, e.g. "
                "`batches(data, 32, key=jax.random.fold_in(key, epoch), shuffle=True)`."
            )
        order = np.asarray(jax.random.permutation(key, n)) if n else np.arange(0)
    stop = n - n % batch_size if drop_remainder else n

    def generate() -> Iterator[Pytree]:
        for start in range(0, stop, batch_size):
            end = min(start + batch_size, n)
            index = slice(start, end) if order is None else order[start:end]
            batch = treedef.unflatten([leaf[index] for leaf in leaves])
            yield batch if sharding is None else jax.device_put(batch, sharding)

    return generate()


_END = object()


class _Raised(NamedTuple):
    error: BaseException


def prefetch_to_device(
    iterator: Iterable[Pytree], size: int = 2, sharding: Any = None
) -> Iterator[Pytree]:
    """Keep up to ``size`` batches of ``iterator`` already transferred to the device.

    A background thread takes items from ``iterator``, starts their transfer
    with ``jax.device_put(item, sharding)`` (``None``: the default device) and
    queues them, so host-side batch preparation and the copy overlap with the
    computation. An exception raised by ``iterator`` is raised again by this
    generator, at the place the item would have come. Stopping early (``break``,
    ``close()``, or dropping the generator) stops the thread: it finishes the
    ``next(iterator)`` in progress and touches ``iterator`` no more. The
    thread starts with the first ``next``.

    Args:
        iterator: any iterable of pytrees of arrays, e.g. :func:`batches`.
        size: the number of batches kept ready (>= 1).
        sharding: a ``jax.sharding.Sharding`` or device for every batch.

    Raises:
        ValueError: for ``size < 1``.

    Examples:
        >>> import numpy as np
        >>> x = np.arange(6.0)
        >>> [b.tolist() for b in prefetch_to_device(batches(x, 4))]
        [[0.0, 1.0, 2.0, 3.0], [4.0, 5.0]]
    """
    if not _is_int(size) or size < 1:
        raise ValueError(f"prefetch_to_device: `size` must be an int >= 1, got {size!r}.")
    source = iter(iterator)

    def generate() -> Iterator[Pytree]:
        ready: queue.Queue = queue.Queue(maxsize=size)
        stop = threading.Event()

        def put(item: Any) -> None:
            while not stop.is_set():
                try:
                    ready.put(item, timeout=0.1)
                    return
                except queue.Full:
                    continue

        def produce() -> None:
            try:
                for item in source:
                    if stop.is_set():
                        return
                    put(jax.device_put(item, sharding))
                    if stop.is_set():
                        return
                put(_END)
            except BaseException as err:  # handed to the consumer, re-raised there
                put(_Raised(err))

        thread = threading.Thread(target=produce, name="funcnet-prefetch", daemon=True)
        thread.start()
        try:
            while True:
                item = ready.get()
                if item is _END:
                    return
                if isinstance(item, _Raised):
                    raise item.error
                yield item
        finally:
            stop.set()
            while True:  # unblock a producer waiting to put
                try:
                    ready.get_nowait()
                except queue.Empty:
                    break
            thread.join()

    return generate()
