"""Boxes of an array (the index slices of its shards), and arrays assembled from them.

A shard covers a *box* of its global array: one ``(start, stop)`` pair per
dimension, as ``jax.Array.addressable_shards[i].index`` gives it (a tuple of
unit-step slices). A sharded checkpoint stores each array as shards whose boxes
tile the array exactly; a restore onto another mesh asks for other boxes and
assembles each from the saved shards it overlaps.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

__all__ = ["Box", "assemble", "box_of_index", "box_size", "check_tiling", "intersect"]

Box = tuple[tuple[int, int], ...]  # ((start, stop), ...) per dimension, unit step


def box_of_index(index: tuple, shape: Sequence[int]) -> Box:
    """The box of a numpy/JAX index (a tuple of unit-step slices, as a shard's ``.index``).

    Args:
        index: a tuple of ``slice`` objects (``slice(None)`` for a whole
            dimension), at most one per dimension; missing trailing ones
            mean whole dimensions.
        shape: the global array's shape.

    Returns:
        ``((start, stop), ...)``, one pair per dimension.

    Raises:
        ValueError: for an index that is not slices of step 1, or longer than
            the shape.

    Examples:
        >>> box_of_index((slice(2, 4), slice(None)), (8, 3))
        ((2, 4), (0, 3))
        >>> box_of_index((), (5,))
        ((0, 5),)
    """
    index = tuple(index)
    if len(index) > len(shape):
        raise ValueError(f"box_of_index: index {index} has more entries than the shape {shape}.")
    box = []
    for dim, size in enumerate(shape):
        s = index[dim] if dim < len(index) else slice(None)
        if not isinstance(s, slice):
            raise ValueError(
                f"box_of_index: index {index} has {s!r} in dimension {dim}; shards are indexed "
                "by slices."
            )
        start, stop, step = s.indices(int(size))
        if step != 1:
            raise ValueError(f"box_of_index: index {index} has step {step}; expected step 1.")
        box.append((start, max(start, stop)))
    return tuple(box)


def box_size(box: Box) -> int:
    """How many elements ``box`` holds.

    Examples:
        >>> box_size(((0, 2), (1, 4)))
        6
    """
    return math.prod(stop - start for start, stop in box)


def intersect(a: Box, b: Box) -> Box | None:
    """The box where ``a`` and ``b`` overlap, or ``None`` when they share no element.

    Examples:
        >>> intersect(((0, 4), (0, 2)), ((2, 6), (1, 3)))
        ((2, 4), (1, 2))
        >>> intersect(((0, 2),), ((2, 4),)) is None
        True
    """
    out = tuple((max(a0, b0), min(a1, b1)) for (a0, a1), (b0, b1) in zip(a, b))
    if any(start >= stop for start, stop in out):
        return None
    return out


def _local(box: Box, within: Box) -> tuple[slice, ...]:
    """``box`` as slices into the array that holds ``within``."""
    return tuple(slice(s - w, e - w) for (s, e), (w, _) in zip(box, within))


def check_tiling(shape: Sequence[int], boxes: Sequence[Box]) -> str | None:
    """Why ``boxes`` do not tile an array of ``shape`` exactly (``None`` when they do).

    Every box must lie inside the array, no two may overlap, and together they
    must cover every element (the sizes add up to the array's size).

    Examples:
        >>> check_tiling((4, 2), [((0, 2), (0, 2)), ((2, 4), (0, 2))]) is None
        True
        >>> check_tiling((4, 2), [((0, 2), (0, 2)), ((1, 4), (0, 2))])
        'shards 0 and 1 overlap at ((1, 2), (0, 2))'
    """
    shape = tuple(shape)
    if not shape and len(boxes) != 1:
        return f"a 0-d array is stored as one shard, got {len(boxes)}"
    for k, box in enumerate(boxes):
        if len(box) != len(shape):
            return f"shard {k} has {len(box)} dimensions, the array {len(shape)}"
        for (start, stop), size in zip(box, shape):
            if not 0 <= start <= stop <= size:
                return f"shard {k} covers {list(box)}, outside the array's shape {list(shape)}"
    nonempty = [(k, box) for k, box in enumerate(boxes) if box_size(box) > 0]
    nonempty.sort(key=lambda kb: kb[1])
    for i, (k, box) in enumerate(nonempty):  # sorted by start: only neighbours can overlap
        for j, other in nonempty[i + 1 :]:
            if shape and other[0][0] >= box[0][1]:
                break
            both = intersect(box, other)
            if both is not None:
                return f"shards {min(k, j)} and {max(k, j)} overlap at {both}"
    covered = sum(box_size(b) for _, b in nonempty)
    if covered != math.prod(shape):
        return f"the shards cover {covered} of the array's {math.prod(shape)} elements"
    return None


def assemble(
    box: Box, dtype, pieces: Sequence[tuple[Box, np.ndarray]], *, name: str = "array"
) -> np.ndarray:
    """The part ``box`` of an array, copied from the saved ``pieces`` that overlap it.

    Args:
        box: the part wanted (e.g. a target shard's box).
        dtype: the array's dtype.
        pieces: ``(piece_box, data)`` pairs, ``data`` of the piece box's shape;
            together they must cover ``box`` (pieces that do not overlap it are
            skipped).
        name: the array's path, for the error.

    Returns:
        A new C-contiguous array of ``box``'s shape.

    Raises:
        ValueError: when the pieces leave part of ``box`` uncovered.

    Examples:
        >>> import numpy as np
        >>> x = np.arange(12).reshape(4, 3)
        >>> pieces = [(((0, 2), (0, 3)), x[:2]), (((2, 4), (0, 3)), x[2:])]
        >>> assemble(((1, 3), (1, 3)), x.dtype, pieces).tolist()
        [[4, 5], [7, 8]]
    """
    out = np.empty(tuple(stop - start for start, stop in box), dtype)
    filled = 0
    for piece_box, data in pieces:
        both = intersect(piece_box, box)
        if both is None:
            continue
        out[_local(both, box)] = data[_local(both, piece_box)]
        filled += box_size(both)
    if filled != out.size:  # the pieces tile their array, so this counts each element once
        raise ValueError(
            f"assemble: the saved shards of `{name}` cover {filled} of the {out.size} elements "
            f"of {list(box)}."
        )
    return out
