"""Helpers shared by the data modules."""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

Pytree = Any


def _leaf_lengths(arrays: Pytree, where: str) -> tuple[list, Any, int]:
    """Leaves, treedef and the common first-axis length of a pytree of arrays."""
    with_path, treedef = jax.tree_util.tree_flatten_with_path(arrays)
    if not with_path:
        raise ValueError(
            f"{where}: expected a pytree of arrays (e.g. `(x, y)`), got {arrays!r} with no "
            "arrays in it."
        )
    leaves, lengths = [], {}
    for path, leaf in with_path:
        name = jax.tree_util.keystr(path) or "arrays"
        if not hasattr(leaf, "shape") or not hasattr(leaf, "dtype"):
            raise TypeError(
                f"{where}: every leaf must be a numpy or jax array, got {type(leaf).__name__} "
                f"at {name}; convert it with `np.asarray`."
            )
        if len(leaf.shape) == 0:
            raise ValueError(
                f"{where}: every array needs a first (example) axis, got a scalar at {name}."
            )
        leaves.append(leaf)
        lengths[name] = leaf.shape[0]
    if len(set(lengths.values())) > 1:
        listed = ", ".join(f"{k}: {v}" for k, v in lengths.items())
        raise ValueError(
            f"{where}: all arrays need the same length along the first axis, got {listed}; "
            "pass arrays with one row per example."
        )
    return leaves, treedef, next(iter(lengths.values()))


def _labels_1d(labels: Any, n: int, where: str, name: str) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.shape[0] != n:
        raise ValueError(
            f"{where}: `{name}` must be one label per example, shape ({n},), got shape "
            f"{labels.shape}; pass integer or string class labels, not one-hot rows."
        )
    return labels
