"""Per-example gradients with ``jax.vmap``."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from funcnet.distributed.mesh import Pytree


def per_example_grads(loss_fn: Callable, params: Pytree, batch: Pytree) -> Pytree:
    """The gradient of ``loss_fn`` for every example of ``batch`` separately, with ``jax.vmap``.

    ``loss_fn(params, batch) -> scalar`` is called on batches of one example
    (each leaf keeps a leading axis of size 1, so models and losses that
    expect a batch work unchanged). The result has the structure of ``params``
    with a leading axis of the batch size. Memory grows with batch size x
    parameter count; for large models split the batch.

    Examples:
        >>> import funcnet as fn
        >>> model = fn.Dense(1)
        >>> params, state = model.init(jax.random.key(0), jnp.zeros((1, 3)))
        >>> def loss_fn(p, batch):
        ...     x, y = batch
        ...     return fn.losses.mean_squared_error(model.apply(p, state, x)[0], y)
        >>> x, y = jnp.ones((5, 3)), jnp.zeros((5, 1))
        >>> grads = per_example_grads(loss_fn, params, (x, y))
        >>> grads["w"].shape
        (5, 3, 1)
        >>> mean = jax.tree.map(lambda g: g.mean(0), grads)  # == the batch gradient
        >>> bool(jnp.allclose(mean["w"], jax.grad(loss_fn)(params, (x, y))["w"]))
        True
        >>> per_example_grad_norms(grads).shape
        (5,)
    """
    if not callable(loss_fn):
        raise TypeError(
            f"per_example_grads: `loss_fn` must be a function `(params, batch) -> scalar`, got "
            f"{type(loss_fn).__name__}."
        )
    leaves = jax.tree.leaves(batch)
    if not leaves or any(np.ndim(a) == 0 for a in leaves):
        raise ValueError(
            "per_example_grads: every array of `batch` needs a leading batch axis, got "
            f"shapes {[np.shape(a) for a in leaves]}."
        )
    grad = jax.grad(loss_fn)

    def one(example):
        return grad(params, jax.tree.map(lambda a: a[None], example))

    return jax.vmap(one)(batch)


def per_example_grad_norms(grads: Pytree) -> jax.Array:
    """The global L2 norm of each example's gradient (over every leaf), shape ``(batch,)``.

    ``grads`` is the output of :func:`per_example_grads`.

    Examples:
        >>> per_example_grad_norms({"w": jnp.array([[3.0, 4.0], [0.0, 1.0]])})
        Array([5., 1.], dtype=float32)
    """
    leaves = jax.tree.leaves(grads)
    if not leaves:
        raise ValueError("per_example_grad_norms: `grads` has no arrays.")
    squares = [jnp.sum(jnp.reshape(g, (g.shape[0], -1)) ** 2, axis=1) for g in leaves]
    return jnp.sqrt(sum(squares[1:], squares[0]))
