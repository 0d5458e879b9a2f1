"""Gradient accumulation: a batch split into micro-batches run one after another.

:func:`~funcnet.training.step.train_step`'s ``accumulate_steps``: the memory
of a small batch, the update of a large one. Each micro-batch is weighted by
its share of the batch's total sample weight, so the update equals the one
of the whole batch (tested with uneven weights, clipping, loss scaling and
over devices).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["accumulated_gradients", "micro_batches", "micro_shares"]


def micro_batches(tree, n_micro: int):
    """Every leaf ``(batch, ...)`` as ``(n_micro, batch // n_micro, ...)``.

    Examples:
        >>> import jax.numpy as jnp
        >>> micro_batches({"x": jnp.zeros((8, 3))}, 4)["x"].shape
        (4, 2, 3)
    """

    def split(a):
        n = a.shape[0]
        if n % n_micro:
            raise ValueError(
                f"train_step: the batch size {n} is not divisible by `accumulate_steps={n_micro}`;"
                " use a batch size that is a multiple of it."
            )
        return a.reshape(n_micro, n // n_micro, *a.shape[1:])

    return jax.tree.map(split, tree)


def micro_shares(w, n_micro: int, batch: int):
    """Each micro-batch's share of the batch's loss: its weight over the batch's total weight.

    Unweighted: ``1 / n_micro`` each. The loss of the whole batch is the weighted
    mean ``sum(w * l) / sum(w)``, so with weights the micro-batch losses (each
    a weighted mean of its own rows) are combined by their total weights.
    """
    if w is None:
        return jnp.full((n_micro,), 1.0 / n_micro, jnp.float32)
    per_row = jnp.asarray(w, jnp.float32).reshape(batch, -1).sum(axis=1)
    per_micro = per_row.reshape(n_micro, -1).sum(axis=1)
    total = jnp.sum(per_micro)
    return jnp.where(total > 0, per_micro / jnp.where(total > 0, total, 1.0), 0.0)


def accumulated_gradients(objective, accumulate_steps: int):
    """``grads(params, state, x, y, w, key, share) -> (grads, loss, outputs, state)``.

    With accumulation the micro-batches run one after another (``lax.scan``),
    each with its own key ``fold_in(key, i)``, and their gradients and losses
    are summed weighted by their share of the batch: the update of one large
    batch with the memory of a small one.
    """
    grad_fn = jax.grad(objective, has_aux=True)
    if accumulate_steps == 1:

        def one(params, state, x, y, w, key, share):
            grads, (total, outputs, new_state) = grad_fn(params, state, x, y, w, key, share)
            return grads, total, outputs, new_state

        return one

    def accumulated(params, state, x, y, w, key, share):
        micro = micro_batches((x, y, w), accumulate_steps)
        batch = jax.tree.leaves(x)[0].shape[0]
        shares = micro_shares(w, accumulate_steps, batch)

        def body(carry, inputs):
            grad_sum, st = carry
            (mx, my, mw), i, part = inputs
            g, (total, outputs, st) = grad_fn(
                params, st, mx, my, mw, jax.random.fold_in(key, i), share * part
            )
            return (jax.tree.map(jnp.add, grad_sum, g), st), (total, outputs)

        # the losses are scan outputs, not a carry: under shard_map a carry must keep its
        # varying/invariant type, and a device's loss varies
        zeros = jax.tree.map(jnp.zeros_like, params)
        (grads, new_state), (totals, outputs) = jax.lax.scan(
            body, (zeros, state), (micro, jnp.arange(accumulate_steps), shares)
        )
        total = jnp.sum(shares * totals)
        outputs = jax.tree.map(lambda a: a.reshape(-1, *a.shape[2:]), outputs)
        return grads, total, outputs, new_state

    return accumulated
