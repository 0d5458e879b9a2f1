"""Batching over pytrees of arrays, and prefetching batches to the device."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator
from typing import Any, NamedTuple

import jax
import numpy as np

from funcnet._checks import check_positive_int
from funcnet.data._util import Pytree, _leaf_lengths

__all__ = ["batches", "pad_rows", "prefetch_to_device"]


# --------------------------------------------------------------------------- batching


def batches(
    arrays: Pytree,
    batch_size: int,
    *,
    key: Any = None,
    shuffle: bool = False,
    drop_remainder: bool = False,
    sharding: Any = None,
    part: tuple[int, int] = (0, 1),
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
        part: ``(index, count)``: yield only part ``index`` of ``count``
            equal consecutive blocks of every batch (only those rows are read);
            ``batch_size`` must be divisible by ``count``. This is how each
            process reads its rows of a global batch
            (:func:`funcnet.distributed.local_batches`).

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
    check_positive_int("batches", "batch_size", batch_size)
    index, count = part
    if batch_size % count or not 0 <= index < count:
        raise ValueError(
            f"batches: `part={part}` must be (index, count) with 0 <= index < count and "
            f"`batch_size={batch_size}` divisible by count."
        )
    per = batch_size // count
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
            if count > 1:
                start, end = start + index * per, start + (index + 1) * per
            rows = slice(start, end) if order is None else order[start:end]
            batch = treedef.unflatten([leaf[rows] for leaf in leaves])
            yield batch if sharding is None else jax.device_put(batch, sharding)

    return generate()


def pad_rows(tree: Pytree, multiple: int, xp: Any = np) -> tuple[Pytree, Any]:
    """Pad every leaf's rows with zeros to a multiple of ``multiple``; also the row mask.

    The mask is True for the real rows; padded rows are meant to get weight 0,
    so every example counts once and one shape is compiled.

    Args:
        tree: a pytree of equally long arrays.
        multiple: the padded length is the next multiple of this.
        xp: ``np`` (on the host) or ``jax.numpy`` (on the device, for jax arrays).

    Examples:
        >>> padded, mask = pad_rows((np.ones((3, 2)), np.arange(3)), 4)
        >>> padded[0].shape, padded[1].tolist(), mask.tolist()
        ((4, 2), [0, 1, 2, 0], [True, True, True, False])
    """
    n = np.shape(jax.tree.leaves(tree)[0])[0]
    pad = -n % multiple

    def fix(a):
        a = xp.asarray(a)
        return xp.concatenate([a, xp.zeros((pad, *a.shape[1:]), a.dtype)]) if pad else a

    return jax.tree.map(fix, tree), xp.arange(n + pad) < n


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
    check_positive_int("prefetch_to_device", "size", size)
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
