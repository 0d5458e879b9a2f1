"""Logical axis names on params: :func:`declare`, read under :func:`declaring_axes`.

A leaf layer's ``init`` ends with ``declare(params, {"w": ("embed", "mlp")})``;
in training and inference that returns ``params`` unchanged. Only while
:func:`declaring_axes` is on (``funcnet.distributed.logical_axes`` reads a
model's names through ``jax.eval_shape``) are the params wrapped as
:class:`Declared`. Re-exported by :mod:`funcnet.core`.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator, Mapping
from typing import Any

import jax
import jax.numpy as jnp

__all__ = ["Declared", "declare", "declaring_axes", "undeclare"]

Pytree = Any

_DECLARING: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "funcnet_declaring", default=False
)


class Declared:
    """A param wrapped with the logical names of its axes (only while :func:`declaring_axes`).

    A pytree node whose one child is the array (or ``jax.ShapeDtypeStruct``)
    and whose static aux data is ``names``, a tuple of strings or ``None``,
    one per axis. It survives ``jax.vmap`` (``repeat`` stacks copies: the
    stacked leaf then has more axes than names) and ``jax.eval_shape``.

    Examples:
        >>> d = Declared(jnp.zeros((2, 3)), ("embed", "mlp"))
        >>> d.names, jax.tree.leaves(d)[0].shape
        (('embed', 'mlp'), (2, 3))
    """

    __slots__ = ("names", "value")

    def __init__(self, value, names: tuple):
        self.value = value
        self.names = tuple(names)

    def __repr__(self) -> str:
        return f"Declared({self.value!r}, {self.names})"


jax.tree_util.register_pytree_node(
    Declared, lambda d: ((d.value,), d.names), lambda names, kids: Declared(kids[0], names)
)


@contextlib.contextmanager
def declaring_axes() -> Iterator[None]:
    """While on, :func:`declare` wraps params as :class:`Declared` (used by
    ``funcnet.distributed.logical_axes``; never on in training or inference).

    Examples:
        >>> with declaring_axes():
        ...     isinstance(declare(jnp.zeros(2), ("embed",)), Declared)
        True
        >>> isinstance(declare(jnp.zeros(2), ("embed",)), Declared)
        False
    """
    token = _DECLARING.set(True)
    try:
        yield
    finally:
        _DECLARING.reset(token)


def declare(params: Pytree, names: tuple | Mapping) -> Pytree:
    """Name the axes of a leaf layer's params; ``params`` unchanged unless :func:`declaring_axes`.

    Args:
        params: one array, or a dict of arrays (a leaf layer's params).
        names: for one array a tuple of logical names (a string or ``None``
            per axis); for a dict, a dict ``key -> tuple`` (keys left out stay
            undeclared, i.e. replicated).

    Returns:
        ``params`` as they are; while :func:`declaring_axes` is on, each named
        array wrapped as :class:`Declared`.

    Raises:
        ValueError: when a tuple's length differs from the array's number of
            axes (a bug in the layer's declaration).

    Examples:
        >>> p = {"w": jnp.zeros((3, 4)), "b": jnp.zeros(4)}
        >>> declare(p, {"w": ("embed", "mlp"), "b": ("mlp",)}) is p
        True
        >>> with declaring_axes():
        ...     declare(p, {"w": ("embed", "mlp"), "b": ("mlp",)})["w"].names
        ('embed', 'mlp')
    """
    if not _DECLARING.get():
        return params
    if isinstance(names, Mapping):
        return {k: declare(v, names[k]) if k in names else v for k, v in params.items()}
    names = tuple(names)
    if jnp.ndim(params) != len(names):
        raise ValueError(
            f"declare: {len(names)} axis names {names} for a param of shape "
            f"{jnp.shape(params)}; give one name (or None) per axis."
        )
    return Declared(params, names)


def undeclare(tree: Pytree) -> Pytree:
    """``tree`` with every :class:`Declared` replaced by the array it wraps.

    Examples:
        >>> undeclare({"w": Declared(1.0, ())})
        {'w': 1.0}
    """
    return jax.tree.map(
        lambda d: d.value if isinstance(d, Declared) else d,
        tree,
        is_leaf=lambda d: isinstance(d, Declared),
    )
