"""Training options as optax transforms composed with the user's optimizer.

Freezing, gradient clipping and skipping non-finite updates are not flags
inside the step: they are optax ``GradientTransformation``\\ s wrapped around
the optimizer (``optax.multi_transform`` with ``optax.set_to_zero``,
``optax.clip_by_global_norm``, ``optax.apply_if_finite``), so their state
lives in ``opt_state`` and any optax user reads them at once. Pass the
composed optimizer to both :meth:`TrainState.create` and :func:`train_step`
(``fit`` does this itself for its ``clip_norm=``, ``freeze=``,
``nan_guard="skip"`` arguments).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import jax
import optax

from funcnet.core import Params, path_str

__all__ = ["compose_optimizer", "path_mask"]

# apply_if_finite gives up skipping after this many non-finite steps in a row; "skip" never does.
_NEVER_GIVE_UP = 2**30


def path_mask(params: Params, pattern: str | Sequence[str] | None) -> Any:
    """A pytree of bools: True where the leaf's path (see :func:`funcnet.core.path_str`)
    matches one of the regex ``pattern``\\ s (``re.search``); all False for ``None``.

    Examples:
        >>> import jax.numpy as jnp
        >>> path_mask(({"w": jnp.ones(2), "b": jnp.ones(1)}, {"w": jnp.ones(1)}), r"^0/")
        ({'b': True, 'w': True}, {'w': False})
    """
    if pattern is None:
        return jax.tree.map(lambda _: False, params)
    patterns = [pattern] if isinstance(pattern, str) else list(pattern)
    compiled = [re.compile(p) for p in patterns]
    return jax.tree_util.tree_map_with_path(
        lambda path, _: any(c.search(path_str(path)) for c in compiled), params
    )


def check_optimizer(optimizer, where: str) -> None:
    """Raise a TypeError naming ``where`` unless ``optimizer`` is an optax transformation."""
    if not isinstance(optimizer, optax.GradientTransformation):
        raise TypeError(
            f"{where}: `optimizer` must be an optax GradientTransformation (e.g. "
            f"`optax.adam(1e-3)`), got {type(optimizer).__name__}."
        )


def _freeze_labels(pattern):
    def labels(params):
        mask = path_mask(params, pattern)
        if not any(jax.tree.leaves(mask)):
            some = [path_str(p) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]][:8]
            raise ValueError(
                f"compose_optimizer: `freeze={pattern!r}` matches no parameter path; paths look "
                f"like {some}. Use a regex such as r'^0/' (the first layer of a serial)."
            )
        return jax.tree.map(lambda frozen: "frozen" if frozen else "trained", mask)

    return labels


def compose_optimizer(
    optimizer: optax.GradientTransformation,
    *,
    clip_norm: float | None = None,
    freeze: str | Sequence[str] | None = None,
    skip_nonfinite: bool = False,
) -> optax.GradientTransformation:
    """``optimizer`` with the usual training options, each an optax transform.

    Args:
        optimizer: an optax ``GradientTransformation``.
        clip_norm: clip the gradient to this global norm first
            (``optax.clip_by_global_norm``; frozen params do not count).
        freeze: regex pattern(s) of param paths that are not trained
            (``optax.multi_transform`` with ``optax.set_to_zero``): their update
            is zero and the optimizer keeps no moments for them, e.g.
            ``r"^0/"`` freezes the first layer of a ``serial``.
        skip_nonfinite: skip every update whose gradient has a NaN/Inf
            (``optax.apply_if_finite``): params and optimizer state stay as they
            were, and :func:`train_step` also keeps the model state (BatchNorm
            statistics) and logs ``"nonfinite"``. For ``float16`` with
            ``loss_scale``, where overflowing steps are expected.

    Returns:
        The composed transformation; pass it to both :meth:`TrainState.create`
        and :func:`train_step`.

    Raises:
        TypeError: when ``optimizer`` is not an optax transformation.
        ValueError: for ``clip_norm <= 0``; at init, for a ``freeze`` pattern
            that matches no parameter.

    Examples:
        >>> import jax, jax.numpy as jnp, optax
        >>> import funcnet as fn
        >>> model = fn.serial(fn.Dense(4), fn.Dense(1))
        >>> opt = compose_optimizer(optax.adam(1e-2), clip_norm=1.0, freeze=r"^0/")
        >>> ts = fn.TrainState.create(model, opt, jax.random.key(0), jnp.zeros((1, 3)))
        >>> step = jax.jit(fn.train_step(model, "mse", opt))
        >>> ts2, _ = step(ts, (jnp.ones((8, 3)), jnp.zeros((8, 1))))
        >>> bool((ts2.params[0]["w"] == ts.params[0]["w"]).all())  # frozen
        True
    """
    check_optimizer(optimizer, "compose_optimizer")
    if clip_norm is not None and not clip_norm > 0:
        raise ValueError(f"compose_optimizer: `clip_norm` must be > 0, got {clip_norm}.")
    tx = optimizer
    if clip_norm is not None:
        tx = optax.chain(optax.clip_by_global_norm(clip_norm), tx)
    if freeze is not None:
        tx = optax.multi_transform(
            {"trained": tx, "frozen": optax.set_to_zero()}, _freeze_labels(freeze)
        )
    if skip_nonfinite:
        tx = optax.apply_if_finite(tx, _NEVER_GIVE_UP)
    return tx


def update_was_finite(opt_state) -> jax.Array | None:
    """``last_finite`` of the outermost ``optax.apply_if_finite`` state; None without one."""
    for node in jax.tree.leaves(
        opt_state, is_leaf=lambda s: isinstance(s, optax.ApplyIfFiniteState)
    ):
        if isinstance(node, optax.ApplyIfFiniteState):
            return node.last_finite
    return None
