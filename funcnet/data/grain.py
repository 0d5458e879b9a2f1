"""Grain pipelines as funcnet data: :func:`from_grain`.

`Grain <https://github.com/google/grain>`_ (``pip install funcnet[grain]``)
reads, decodes and augments examples in worker processes, deterministically
per seed. A batched ``MapDataset`` / ``IterDataset`` / ``DataLoader`` is
already an iterable of batches; its batches are whatever the records are
(a tuple, or a dict such as ``{"image": ..., "label": ...}``).
:func:`from_grain` turns them into funcnet's ``(x, y)`` / ``(x, y, weights)``
tuples and, given a function of the epoch, builds each epoch's pipeline
afresh, so ``fit`` reshuffles per epoch and a run resumed from a checkpoint
restarts the interrupted epoch at the first batch not trained on. Nothing
here imports grain: any iterable of batches works.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

from funcnet._checks import check_positive_int
from funcnet.data.batching import prefetch_to_device

__all__ = ["GrainBatches", "from_grain"]


class GrainBatches:
    """The batches of a Grain pipeline as ``(x, y)`` / ``(x, y, weights)`` tuples.

    Made by :func:`from_grain`. Iterating gives epoch 0; ``fit`` calls
    :meth:`for_epoch` with the epoch number.
    """

    def __init__(self, dataset: Any, keys: Sequence[str] | None, prefetch: int = 0):
        self.dataset, self.keys, self.prefetch = dataset, keys, prefetch

    def pipeline(self, epoch: int) -> Any:
        """The Grain dataset / loader of epoch ``epoch``."""
        return self.dataset(epoch) if callable(self.dataset) else self.dataset

    def for_epoch(self, epoch: int, start: int = 0) -> Iterator[tuple]:
        """The batches of epoch ``epoch`` from batch ``start`` on, as tuples.

        A resumed ``fit`` passes the number of batches already trained on. A
        ``MapDataset`` (random access) is sliced there, and an iterator with
        Grain's ``get_state()`` / ``set_state()`` holding ``"next_index"`` (an
        ``IterDataset`` made by ``to_iter_dataset()``) is moved there: neither
        reads the skipped batches. Other pipelines (a multi-worker
        ``DataLoader``) are read and the skipped batches dropped.
        """
        it = _positioned(self.pipeline(epoch), start)
        batches = (_as_tuple(b, self.keys, i) for i, b in enumerate(it, start))
        if self.prefetch:
            batches = prefetch_to_device(batches, self.prefetch)
        yield from batches

    def __iter__(self) -> Iterator[tuple]:
        return self.for_epoch(0)

    def __len__(self) -> int:
        """Batches per epoch, when the pipeline knows it (``TypeError`` otherwise)."""
        try:
            return len(self.pipeline(0))
        except Exception as err:  # an IterDataset or a DataLoader has no length
            raise TypeError(f"this Grain pipeline has no length: {err}") from err


def _positioned(pipeline: Any, start: int) -> Iterator:
    """An iterator over ``pipeline``'s batches from batch ``start`` on."""
    if start and hasattr(pipeline, "__getitem__") and hasattr(pipeline, "__len__"):
        try:
            return iter(pipeline[start:])
        except (TypeError, KeyError, IndexError):
            pass  # no slicing: fall through
    it = iter(pipeline)
    if not start:
        return it
    state = it.get_state() if hasattr(it, "get_state") and hasattr(it, "set_state") else None
    if isinstance(state, dict) and "next_index" in state:
        it.set_state({**state, "next_index": start})
        return it
    for _ in range(start):  # no way to jump: read and drop
        next(it, None)
    return it

    def __repr__(self) -> str:
        return f"GrainBatches({self.dataset!r}, keys={self.keys})"


def _as_tuple(batch: Any, keys: Sequence[str] | None, i: int) -> tuple:
    if isinstance(batch, dict):
        if keys is None:
            raise TypeError(
                f"from_grain: batch {i} is a dict with keys {sorted(batch)}, so funcnet needs "
                "to know which entries are the inputs and targets; pass e.g. "
                "`from_grain(dataset, keys=('image', 'label'))`."
            )
        missing = [k for k in keys if k not in batch]
        if missing:
            raise KeyError(
                f"from_grain: batch {i} has keys {sorted(batch)}, not {missing} of `keys="
                f"{tuple(keys)}`; pass the names of the inputs, targets (and weights)."
            )
        return tuple(batch[k] for k in keys)
    if isinstance(batch, (tuple, list)) and len(batch) in (2, 3):
        return tuple(batch)
    what = f"{type(batch).__name__}"
    if isinstance(batch, (tuple, list)):
        what += f" of length {len(batch)}"
    raise TypeError(
        f"from_grain: batch {i} is a {what}; expected a tuple `(x, y)` / `(x, y, weights)` "
        "or a dict with `keys=`. Make the records such tuples or dicts (a Grain `map`) and "
        "batch them (`.batch(batch_size)` or `grain.python.Batch`)."
    )


def from_grain(
    dataset: Any | Callable[[int], Any],
    *,
    keys: Sequence[str] | None = None,
    prefetch: int = 0,
) -> GrainBatches:
    """A Grain pipeline as data for ``fit`` / ``evaluate``.

    Args:
        dataset: a batched Grain ``MapDataset``, ``IterDataset`` or
            ``DataLoader`` (any iterable of batches works), or a function
            ``epoch -> pipeline`` building epoch ``epoch``'s pipeline, e.g.
            shuffled with ``seed=seed + epoch``. With a fixed pipeline every
            epoch has the same order; with a function, ``fit`` reshuffles,
            and a run resumed from a checkpoint rebuilds the interrupted
            epoch's pipeline and starts it at the first batch not trained on
            (the checkpoint's step says which; see :meth:`GrainBatches.for_epoch`:
            a ``MapDataset`` or an ``IterDataset`` jumps there without reading
            the batches before), so it continues at the same example.
        keys: for batches that are dicts, the entries that are
            ``(x, y)`` or ``(x, y, weights)``, e.g. ``("image", "label")``.
            Tuple batches are used as they are.
        prefetch: keep this many batches already on the device
            (:func:`funcnet.data.prefetch_to_device`, a background thread);
            0 (the default) hands numpy batches to ``fit``.

    Returns:
        A :class:`GrainBatches`: ``fit(model, opt, loss, from_grain(...))``,
        ``evaluate(model, params, state, from_grain(...), loss=loss)``,
        ``predict(model, params, state, from_grain(...))`` (the outputs of
        epoch 0's batches, concatenated).

    Raises:
        ValueError: for a negative ``prefetch``.
        TypeError: when ``keys`` is not a sequence of 2 or 3 names; while
            iterating, for a batch that is neither a 2/3-tuple nor a dict
            (or a dict without ``keys``).
        KeyError: while iterating, for a dict batch without one of ``keys``.

    Examples:
        >>> import numpy as np
        >>> import grain.python as grain
        >>> x, y = np.arange(12.0).reshape(6, 2), np.arange(6)
        >>> records = grain.MapDataset.source([{"x": x[i], "y": y[i]} for i in range(6)])
        >>> data = from_grain(
        ...     lambda epoch: records.shuffle(seed=epoch).batch(4), keys=("x", "y")
        ... )
        >>> [yb.tolist() for _, yb in data.for_epoch(0)]
        [[0, 4, 1, 2], [5, 3]]
        >>> [yb.tolist() for _, yb in data.for_epoch(1)]
        [[5, 2, 3, 0], [4, 1]]
    """
    if keys is not None and (not isinstance(keys, (tuple, list)) or len(keys) not in (2, 3)):
        raise TypeError(
            f"from_grain: `keys` must name 2 or 3 entries (inputs, targets, optional "
            f"weights), got {keys!r}; pass e.g. `keys=('image', 'label')`."
        )
    prefetch = check_positive_int("from_grain", "prefetch", prefetch, allow_zero=True)
    return GrainBatches(dataset, None if keys is None else tuple(keys), prefetch)
