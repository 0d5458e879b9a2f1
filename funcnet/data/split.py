"""Splitting: train/validation/test splits (optionally stratified) and k-fold."""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np

from funcnet._checks import is_int
from funcnet.data._util import Pytree, _labels_1d, _leaf_lengths

__all__ = ["Split", "k_fold", "take", "train_val_test_split"]


# --------------------------------------------------------------------------- splits


class Split(NamedTuple):
    """The three parts of :func:`train_val_test_split`, each shaped like its input pytree."""

    train: Pytree
    val: Pytree
    test: Pytree


def take(arrays: Pytree, indices: Any) -> Pytree:
    """Index the first axis of every array of a pytree: ``arrays[i][indices]``.

    Examples:
        >>> import numpy as np
        >>> train_idx, val_idx = k_fold(4, 2, shuffle=False)[0]
        >>> take({"x": np.arange(8).reshape(4, 2), "y": np.arange(4)}, val_idx)
        {'x': array([[0, 1], [2, 3]]), 'y': array([0, 1])}

    Raises:
        ValueError: if the arrays have different lengths.
    """
    leaves, treedef, _ = _leaf_lengths(arrays, "take")
    indices = np.asarray(indices)
    return treedef.unflatten([leaf[indices] for leaf in leaves])


def _count(size: Any, n: int, name: str) -> int:
    if is_int(size):
        if size < 0:
            raise ValueError(f"train_val_test_split: `{name}` must be >= 0, got {size}.")
        return int(size)
    if isinstance(size, (float, np.floating)):
        if not 0.0 <= size < 1.0:
            raise ValueError(
                f"train_val_test_split: `{name}` as a fraction must be in [0, 1), got {size}; "
                "pass an int for a number of examples."
            )
        count = math.floor(size * n + 0.5)
        if size > 0 and count == 0:
            raise ValueError(
                f"train_val_test_split: `{name}={size}` of {n} examples gives an empty split; "
                f"pass a larger fraction or a count, or `{name}=0` for no such split."
            )
        return count
    raise TypeError(
        f"train_val_test_split: `{name}` must be a fraction (float) or a count (int), got "
        f"{type(size).__name__} {size!r}."
    )


def _controlled_round(sizes: np.ndarray, parts: list[int]) -> np.ndarray:
    """Examples of each class (rows) in each part (columns): every entry is its exact share
    ``sizes[c] * parts[p] / n`` rounded down or up, and rows and columns keep their sums.

    Such a rounding always exists (the shares are a point of a transportation polytope, whose
    corners are integral); it is found as a flow of the rounded-up units from classes to
    parts, trying the largest remainders first.
    """
    n = int(sizes.sum())
    exact = np.outer(sizes, parts)  # n times the shares, as integers
    table, remainder = exact // n, exact % n
    need_row = sizes - table.sum(1)
    need_col = np.asarray(parts) - table.sum(0)
    up = np.zeros(table.shape, bool)  # which entries are rounded up

    def augment(c: int, seen: set) -> bool:  # an alternating path from class c to a part
        for p in np.argsort(-remainder[c], kind="stable"):
            if remainder[c, p] == 0 or up[c, p] or p in seen:
                continue
            seen.add(p)
            if need_col[p] > 0:
                need_col[p] -= 1
                up[c, p] = True
                return True
            for other in np.flatnonzero(up[:, p]):  # move another class's unit elsewhere
                if augment(int(other), seen):
                    up[other, p], up[c, p] = False, True
                    return True
        return False

    for c in range(len(sizes)):
        for _ in range(int(need_row[c])):
            found = augment(c, set())
            assert found, "a controlled rounding exists"
    return table + up


def train_val_test_split(
    arrays: Pytree,
    *,
    val_size: float | int = 0.1,
    test_size: float | int = 0.2,
    seed: int = 0,
    shuffle: bool = True,
    stratify: Any = None,
) -> Split:
    """Split a pytree of equally long arrays into train, validation and test parts.

    Sizes are fractions of all examples (a float in ``[0, 1)``, rounded to the
    nearest count) or counts (an int); ``0`` gives an empty part. The training
    part takes the rest. With ``stratify`` (one class label per example) each
    class is split in the same proportions (per class within one example of
    the exact share; the part sizes are exactly as requested). With
    ``shuffle=True`` examples are drawn at random with ``seed`` and each part
    comes in random order; with ``shuffle=False`` the first examples (of each
    class) go to train, then validation, then test, in their original order.

    Args:
        arrays: a pytree of numpy or jax arrays with one row per example,
            e.g. ``(x, y)`` or ``{"image": x, "label": y}``.
        val_size, test_size: fraction or count of the validation / test parts.
        seed: an int seeding the host-side shuffle (numpy ``default_rng``).
        shuffle: draw the parts at random.
        stratify: optional labels of shape ``(N,)`` to keep class proportions.

    Returns:
        A :class:`Split` ``(train, val, test)``, each shaped like ``arrays``.

    Raises:
        ValueError: for mismatched lengths, bad sizes, or no examples left for training.
        TypeError: for sizes that are neither float nor int, or a non-int ``seed``.

    Examples:
        >>> import numpy as np
        >>> x, y = np.arange(20.0).reshape(10, 2), np.array([0] * 5 + [1] * 5)
        >>> train, val, test = train_val_test_split((x, y), val_size=2, test_size=0.2, stratify=y)
        >>> [part[0].shape for part in (train, val, test)]
        [(6, 2), (2, 2), (2, 2)]
        >>> [np.bincount(part[1]).tolist() for part in (train, val, test)]
        [[3, 3], [1, 1], [1, 1]]
        >>> train_val_test_split(np.arange(5), val_size=1, test_size=1, shuffle=False)
        Split(train=array([0, 1, 2]), val=array([3]), test=array([4]))
    """
    _, _, n = _leaf_lengths(arrays, "train_val_test_split")
    if not is_int(seed):
        raise TypeError(f"train_val_test_split: `seed` must be an int, got {seed!r}.")
    n_val, n_test = _count(val_size, n, "val_size"), _count(test_size, n, "test_size")
    if n_val + n_test >= n:
        raise ValueError(
            f"train_val_test_split: val ({n_val}) + test ({n_test}) take all {n} examples, "
            "leaving none for training; pass smaller `val_size` / `test_size`."
        )
    rng = np.random.default_rng(seed)
    order = rng.permutation(n) if shuffle else np.arange(n)
    if stratify is None:
        parts = np.split(order, [n - n_val - n_test, n - n_test])
    else:
        labels = _labels_1d(stratify, n, "train_val_test_split", "stratify")[order]
        classes, inverse, sizes = np.unique(labels, return_inverse=True, return_counts=True)
        table = _controlled_round(sizes, [n - n_val - n_test, n_val, n_test])
        parts = [[], [], []]
        for c in range(len(classes)):
            members = order[inverse.reshape(-1) == c]
            cuts = np.cumsum(table[c, :2])
            for part, chunk in zip(parts, np.split(members, cuts)):
                part.append(chunk)
        parts = [np.concatenate(p) for p in parts]
        parts = [rng.permutation(p) if shuffle else np.sort(p) for p in parts]
    return Split(*(take(arrays, p) for p in parts))


def k_fold(
    n: int,
    k: int = 5,
    *,
    seed: int = 0,
    shuffle: bool = True,
    stratify: Any = None,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Indices for k-fold cross-validation: ``k`` pairs ``(train_indices, val_indices)``.

    Every example is in exactly one validation fold; fold sizes differ by at
    most one. With ``stratify`` (labels of shape ``(n,)``) each class is dealt
    round-robin over the folds, so every fold holds each class within one
    example of its share. Indices are sorted; select the data with :func:`take`.

    Args:
        n: the number of examples.
        k: the number of folds, ``2 <= k <= n``.
        seed: an int seeding the shuffle (numpy ``default_rng``).
        shuffle: assign examples to folds at random (else contiguous folds).
        stratify: optional class labels to balance over the folds.

    Raises:
        ValueError: for ``k`` outside ``[2, n]`` or labels not of shape ``(n,)``.
        TypeError: for a non-int ``n``, ``k`` or ``seed``.

    Examples:
        >>> [(t.tolist(), v.tolist()) for t, v in k_fold(5, 2, shuffle=False)]
        [([3, 4], [0, 1, 2]), ([0, 1, 2], [3, 4])]
        >>> folds = k_fold(6, 3, stratify=[0, 0, 0, 1, 1, 1])
        >>> [len(v) for _, v in folds]
        [2, 2, 2]
    """
    for name, value in (("n", n), ("k", k), ("seed", seed)):
        if not is_int(value):
            raise TypeError(f"k_fold: `{name}` must be an int, got {value!r}.")
    if not 2 <= k <= n:
        raise ValueError(f"k_fold: needs 2 <= k <= n, got k={k} and n={n}.")
    rng = np.random.default_rng(seed)
    order = rng.permutation(n) if shuffle else np.arange(n)
    fold = np.empty(n, np.int64)
    if stratify is None:
        for i, chunk in enumerate(np.array_split(order, k)):
            fold[chunk] = i
    else:
        labels = _labels_1d(stratify, n, "k_fold", "stratify")[order]
        offset = 0
        for c in np.unique(labels):
            members = order[labels == c]
            fold[members] = (offset + np.arange(len(members))) % k
            offset += len(members)
    everything = np.arange(n)
    return [(everything[fold != i], everything[fold == i]) for i in range(k)]
