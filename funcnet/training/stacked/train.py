"""Training a stack: one vmapped step, per-model data orders, K steps per call."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from funcnet._checks import check_positive_int
from funcnet.core import Layer
from funcnet.training.stacked.models import model_at, num_models, stack_models
from funcnet.training.step import (
    TrainState,
    train_step,
)

_METHODS = ("vmap", "unroll")


# ----------------------------------------------------------------------------- training


def _check_model_axis(batch, n: int) -> None:
    for leaf in jax.tree.leaves(batch):
        if not np.shape(leaf) or np.shape(leaf)[0] != n:
            raise ValueError(
                f"stacked_train_step: with `shared_batch=False` every leaf of the batch needs a "
                f"leading model axis of size {n}, got shape {np.shape(leaf)}; pass "
                "`shared_batch=True` to give every model the same batch."
            )


def stacked_train_step(
    model: Layer | Callable,
    loss: str | Callable,
    optimizer: optax.GradientTransformation,
    *,
    shared_batch: bool = True,
    method: str = "vmap",
    **step_options,
) -> Callable[[TrainState, Any], tuple[TrainState, dict]]:
    """``step(train_state, batch) -> (train_state, logs)``: :func:`train_step` for every model.

    Each model updates as ``train_step`` would update it alone, with its own
    key (``ts.key``), hyperparameters and, unless shared, batch. Every log has
    a leading model axis (``logs["loss"]``: ``(N,)``); jit the step, donate the
    state. ``**step_options`` are :func:`train_step`'s, the same for all models.

    Args:
        shared_batch: ``True``: every model trains on the batch. ``False``:
            every leaf has a leading model axis ``(N, batch, ...)`` and model
            ``i`` trains on ``batch[i]`` (bagging, own data orders:
            :func:`model_orders`); ``step.shared_batch`` records it.
        method: ``"vmap"`` (default) or ``"unroll"``: the N steps one after
            another in one program, for layers slow when batched: ``vmap``
            turns N models' convolutions into grouped ones, which XLA:CPU runs
            2-3x slower (``bench/stacked.py``: 0.3-0.5x, unrolled 0.85-1.1x;
            compiling ~N times longer).

    Raises:
        ValueError: an unknown ``method``; a per-model batch without the axis.

    Examples:
        >>> import jax, jax.numpy as jnp, optax
        >>> from funcnet import Dense
        >>> opt = optax.sgd(0.1)
        >>> from funcnet.training.stacked import stack_init
        >>> ts = stack_init(Dense(1), opt, 3, jnp.zeros((1, 2)))
        >>> step = stacked_train_step(Dense(1), "mse", opt, shared_batch=False)
        >>> batches = (jnp.ones((3, 8, 2)), jnp.zeros((3, 8, 1)))  # one batch per model
        >>> ts, logs = jax.jit(step)(ts, batches)
        >>> logs["loss"].shape
        (3,)
    """
    if method not in _METHODS:
        raise ValueError(
            f"stacked_train_step: `method` must be one of {_METHODS}, got {method!r}; 'unroll' "
            "runs the models one after another in one program."
        )
    step = train_step(model, loss, optimizer, **step_options)
    batch_axis = None if shared_batch else 0
    vmapped = jax.vmap(step, in_axes=(0, batch_axis))

    def stacked_step(train_state: TrainState, batch) -> tuple[TrainState, dict]:
        n = num_models(train_state, "stacked_train_step")
        if not shared_batch:
            _check_model_axis(batch, n)
        if method == "vmap":
            return vmapped(train_state, batch)
        parts = [
            step(model_at(train_state, i), batch if shared_batch else model_at(batch, i))
            for i in range(n)
        ]
        return stack_models(parts)

    stacked_step.shared_batch = shared_batch
    return stacked_step


def model_orders(
    key: jax.Array, num_models: int, num_rows: int, *, bootstrap: bool = False
) -> jax.Array:
    """Each model's own order of the rows, ``(num_models, num_rows)``, from ``fold_in(key, i)``.

    A permutation, or with ``bootstrap=True`` rows drawn with replacement
    (bagging: ~63% of the rows, some twice). Fold the epoch into ``key`` for
    a new order every epoch.

    Examples:
        >>> import jax
        >>> orders = model_orders(jax.random.key(0), 3, 5)
        >>> orders.shape, sorted(orders[1].tolist())
        ((3, 5), [0, 1, 2, 3, 4])
    """
    check_positive_int("model_orders", "num_models", num_models)
    check_positive_int("model_orders", "num_rows", num_rows)

    def one(i):
        k = jax.random.fold_in(key, i)
        if bootstrap:
            return jax.random.randint(k, (num_rows,), 0, num_rows)
        return jax.random.permutation(k, num_rows)

    return jax.jit(jax.vmap(one))(jnp.arange(num_models)).astype(jnp.int32)


def take_batches(data: Any, order: jax.Array, index, batch_size: int) -> Any:
    """Batch ``index`` of ``order``: the rows ``order[..., index * batch_size:][:batch_size]``.

    ``order`` ``(rows,)`` gives a shared batch, ``(N, rows)`` one with a leading
    model axis; ``data`` is a pytree of arrays, rows first; ``index`` may be traced.

    Examples:
        >>> import jax.numpy as jnp
        >>> x = jnp.arange(6) * 10
        >>> take_batches(x, jnp.array([[5, 4, 3, 2, 1, 0], [0, 1, 2, 3, 4, 5]]), 1, 2).tolist()
        [[30, 20], [20, 30]]
    """
    axis = jnp.ndim(order) - 1
    rows = jax.lax.dynamic_slice_in_dim(order, index * batch_size, batch_size, axis=axis)
    return jax.tree.map(lambda a: jnp.take(a, rows, axis=0), data)


def _check_order(order, shared, batch_size: int) -> None:
    if jnp.ndim(order) not in (1, 2):
        raise ValueError(
            f"stacked_runner: `order` must be row indices of shape (rows,) or (N, rows), got "
            f"shape {jnp.shape(order)}."
        )
    per_model = jnp.ndim(order) == 2
    if shared is not None and per_model == shared:
        need = "shared_batch=False" if per_model else "shared_batch=True"
        raise ValueError(
            f"stacked_runner: an `order` of shape {jnp.shape(order)} gives "
            f"{'per-model' if per_model else 'shared'} batches; build the step with "
            f"`stacked_train_step(..., {need})`."
        )
    if jnp.shape(order)[-1] < batch_size:
        raise ValueError(
            f"stacked_runner: `batch_size={batch_size}` is larger than the {jnp.shape(order)[-1]}"
            " rows of `order`; use a smaller batch size."
        )


def stacked_runner(step: Callable, batch_size: int, *, unroll: int | bool = 1) -> Callable:
    """``run(ts, data, order, begin, k) -> (ts, losses (k, N))``: ``k`` steps in one call.

    Step ``j`` trains on batch ``(begin + j) % (rows // batch_size)`` of
    ``order`` (:func:`take_batches`; ``(rows,)`` for a step with
    ``shared_batch=True``, ``(N, rows)`` without), gathered on the device from
    ``data`` (``(x, y[, weights])``), so calls cycle through the data. ``ts``
    is donated, ``k`` static; a plain :func:`train_step` works too. ``unroll``:
    as ``lax.scan``'s; ``True``: straight-line code (convolutions on XLA:CPU).

    Examples:
        >>> import jax, jax.numpy as jnp, optax
        >>> from funcnet import Dense
        >>> opt = optax.sgd(0.1)
        >>> from funcnet.training.stacked import stack_init
        >>> ts = stack_init(Dense(1), opt, 2, jnp.zeros((1, 2)))
        >>> run = stacked_runner(stacked_train_step(Dense(1), "mse", opt), batch_size=4)
        >>> data = (jnp.ones((8, 2)), jnp.zeros((8, 1)))
        >>> ts, losses = run(ts, data, jnp.arange(8), 0, 5)
        >>> losses.shape, ts.step.tolist()
        ((5, 2), [5, 5])
    """
    check_positive_int("stacked_runner", "batch_size", batch_size)
    shared = getattr(step, "shared_batch", None)

    def run(ts, data, order, begin, k):
        _check_order(order, shared, batch_size)
        per_pass = jnp.shape(order)[-1] // batch_size

        def body(ts, i):
            batch = take_batches(data, order, (begin + i) % per_pass, batch_size)
            ts, logs = step(ts, batch)
            return ts, logs["loss"]

        if unroll is True or k == 1:
            losses = []
            for i in range(k):
                ts, loss = body(ts, jnp.int32(i))
                losses.append(loss)
            return ts, jnp.stack(losses)
        steps = jnp.arange(k, dtype=jnp.int32)
        return jax.lax.scan(body, ts, steps, unroll=unroll)

    return jax.jit(run, static_argnums=4, donate_argnums=0)
