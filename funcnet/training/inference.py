"""``evaluate`` / ``predict``: a model in inference mode over a whole dataset.

For arrays, the batches (the last one padded and masked, so one shape is
compiled) run inside one compiled call; for an iterable of batches, one
compiled call per batch. Both take a mesh and sharding rules as ``fit`` does
(:mod:`funcnet.training.feed` places the data and the params).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import numpy as np

from funcnet._checks import check_positive_int
from funcnet.core import Layer, as_layer
from funcnet.distributed.rules import Rules
from funcnet.training.feed import (
    Placement,
    batch_check,
    eval_chunks,
    eval_rules,
    is_batches,
    iterate,
    one_batch_spec,
    stack_batches,
)
from funcnet.training.fused import eval_chunk_adder, logs_compute, logs_init
from funcnet.training.step import metric_dict, predict_step, resolve_loss

__all__ = ["evaluate", "make_evaluator", "predict"]


# ----------------------------------------------------------------------------- evaluate


def make_evaluator(
    model: Layer, loss_fn, metrics: dict, placement: Placement, param_sharding=None
) -> Callable:
    """``run(params, state, chunks) -> accumulator`` over the chunks of ``feed.eval_chunks``.

    One compiled function adds a chunk of batches to the accumulator (a
    ``lax.scan`` over stacked batches, or one batch), every example weighted by
    its weight (0 for padding); it is compiled once per chunk shape and reused.
    With sharding rules (``param_sharding``) the params are placed by them,
    from the first chunk's inputs; else they stay where they are on the mesh.
    """
    compiled = jax.jit(
        eval_chunk_adder(model, loss_fn, metrics),
        static_argnums=4,
        donate_argnums=2,
        out_shardings=placement.replicated,
    )

    by_rules = isinstance(param_sharding, Rules)

    def run(params, state, chunks):
        params = params if by_rules else placement.model_vars(params)
        state = placement.model_vars(state)
        acc = placement.put(logs_init(metrics), placement.replicated)
        for i, (chunk, stacked) in enumerate(chunks):
            if i == 0 and by_rules:
                example = one_batch_spec(chunk[0], stacked)
                params = placement.params_by_rules(model, params, example, param_sharding)
            acc = compiled(params, state, acc, chunk, stacked)
            if i % placement.block_every == placement.block_every - 1:
                jax.block_until_ready(acc)
        return acc

    return run


def evaluate(
    model: Layer | Callable,
    params,
    state,
    data,
    *,
    loss: str | Callable | None = None,
    metrics=None,
    batch_size: int = 256,
    mesh: jax.sharding.Mesh | None = None,
    param_sharding: Rules | dict | None = None,
) -> dict:
    """Loss and metrics of the model (inference mode) over a whole dataset.

    ``data`` is ``(x, y)`` / ``(x, y, weights)`` arrays or an iterable of such
    batches. For arrays, the last partial batch is padded and masked, so every
    example counts exactly once and only one shape is compiled; metrics are
    streamed (a confusion matrix over the whole dataset, not a mean of batch
    ratios). The loss is the mean over all examples, weighted by ``weights``.

    With ``mesh`` (see :func:`funcnet.distributed.make_mesh`) every batch is
    split over the mesh's batch axes: for arrays the batch size is rounded up
    to a multiple of that device count (the padding is masked); batches of an
    iterable are this process's rows (padded and masked likewise) and are
    assembled into global arrays. The results equal those without a mesh.
    With sharding rules (``param_sharding``, see :func:`fit`) the params are
    placed by them first (params returned by such a ``fit`` already are).

    Returns:
        ``{"loss": float, name: value, ...}`` (no ``"loss"`` without ``loss``).

    Examples:
        >>> import jax, jax.numpy as jnp, numpy as np
        >>> from funcnet import Dense
        >>> params, state = Dense(1).init(jax.random.key(0), jnp.zeros((1, 2)))
        >>> x, y = np.ones((10, 2), np.float32), np.zeros((10, 1), np.float32)
        >>> logs = evaluate(Dense(1), params, state, (x, y), loss="mse", batch_size=4)
        >>> sorted(logs)
        ['loss']
    """
    model = as_layer(model)
    loss_fn = resolve_loss(loss, "evaluate") if loss is not None else None
    metrics = metric_dict(metrics)
    check_positive_int("evaluate", "batch_size", batch_size)
    placement = Placement(mesh, "evaluate")
    rules = eval_rules(param_sharding, mesh, "evaluate")
    run = make_evaluator(model, loss_fn, metrics, placement, rules)
    check = batch_check(model, loss_fn)
    acc = run(params, state, eval_chunks(data, batch_size, placement, "evaluate", check))
    return logs_compute(metrics, acc, with_loss=loss_fn is not None)


def predict(
    model: Layer | Callable,
    params,
    state,
    x,
    *,
    batch_size: int = 256,
    mesh: jax.sharding.Mesh | None = None,
    param_sharding: Rules | dict | None = None,
):
    """The model's outputs (inference mode) for every example of ``x`` (arrays or a pytree).

    Runs in batches of ``batch_size`` (the last one padded, one compile) inside
    one compiled call. With ``mesh`` each batch is split over the mesh's batch
    axes (``batch_size`` rounded up to a multiple of their device count) and
    the outputs are returned replicated (with several processes, every process
    passes the same ``x`` and gets all outputs). With sharding rules
    (``param_sharding``, see :func:`fit`) the params are placed by them first.

    ``x`` may also be an iterable of batches (data larger than memory:
    :class:`funcnet.data.ShardedArrays`, :func:`funcnet.data.from_grain`, a
    generator): each batch is the inputs or an ``(x, y)`` / ``(x, y,
    weights)`` tuple whose ``x`` is used; one compiled call per batch (a
    smaller last batch is padded to the first one's size, so one compile),
    and the outputs are concatenated as numpy arrays in batch order
    (``batch_size`` is unused; one device).

    Examples:
        >>> import jax, jax.numpy as jnp, numpy as np
        >>> from funcnet import Dense
        >>> params, state = Dense(3).init(jax.random.key(0), jnp.zeros((1, 2)))
        >>> predict(Dense(3), params, state, np.ones((10, 2), np.float32), batch_size=4).shape
        (10, 3)
    """
    model = as_layer(model)
    check_positive_int("predict", "batch_size", batch_size)
    if is_batches(x):
        if mesh is not None:
            raise ValueError(
                "predict: `mesh` needs the inputs as arrays; for an iterable of batches call "
                "predict per batch (`predict(model, params, state, xb, mesh=mesh)`) or pass "
                "`mesh=None`."
            )
        return _predict_batches(model, params, state, x)
    placement = Placement(mesh, "predict")
    n = jax.tree.leaves(x)[0].shape[0]
    xb, _ = stack_batches(x, n, placement.batch_size(batch_size, n), placement.xp)
    xb = placement.put(xb, placement.stacked)
    rules = eval_rules(param_sharding, mesh, "predict")
    if rules is None:
        params = placement.model_vars(params)
    else:
        example = one_batch_spec(xb, True)
        params = placement.params_by_rules(model, params, example, rules)
    state = placement.model_vars(state)
    apply = predict_step(model)

    def run_all(params, state, xb):
        out = jax.lax.map(lambda b: apply(params, state, b), xb)
        return jax.tree.map(lambda a: a.reshape(-1, *a.shape[2:])[:n], out)

    out = jax.jit(run_all, out_shardings=placement.replicated)(params, state, xb)
    return placement.to_user(out)


def _batch_inputs(batch, i: int):
    x = batch[0] if isinstance(batch, tuple) and len(batch) in (2, 3) else batch
    leaves = jax.tree.leaves(x)
    if not leaves or any(np.ndim(a) == 0 for a in leaves):
        raise TypeError(
            f"predict: batch {i} of the iterable is a {type(batch).__name__} without a batch "
            "axis; each batch must be the inputs (arrays with one row per example) or an "
            "`(x, y)` / `(x, y, weights)` tuple."
        )
    return x, int(np.shape(leaves[0])[0])


def _predict_batches(model, params, state, batches):
    """``predict`` over an iterable of batches: one jitted call per batch, padded to the
    first batch's rows, outputs concatenated on the host."""
    apply = jax.jit(predict_step(model))
    outs, size = [], None
    for i, batch in enumerate(iterate(batches, "predict")):
        x, n = _batch_inputs(batch, i)
        size = n if size is None else size
        if n < size:  # pad the (last) smaller batch: no second compile
            pad = size - n
            x = jax.tree.map(lambda a, pad=pad: np.concatenate([a, np.repeat(a[-1:], pad, 0)]), x)
        out = jax.device_get(apply(params, state, x))
        outs.append(jax.tree.map(lambda a, n=n: a[:n], out))
    if not outs:
        raise ValueError("predict: the iterable of batches gave no batch.")
    return jax.tree.map(lambda *a: np.concatenate(a), *outs)
