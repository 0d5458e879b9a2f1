"""A stack's predictions and metrics, per model or as an ensemble."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from funcnet._checks import check_positive_int
from funcnet.core import Layer, as_layer
from funcnet.training.feed import Placement, batch_check, eval_chunks, stack_batches
from funcnet.training.fused import eval_chunk_adder, logs_compute, logs_init
from funcnet.training.stacked.models import model_at, num_models
from funcnet.training.step import (
    metric_dict,
    predict_step,
    resolve_loss,
)

_COMBINE = ("mean_probs", "vote", "mean")


# ----------------------------------------------------------------------------- inference


def _stacked_evaluator(model, loss_fn, metrics: dict) -> Callable:
    """``add(params, state, acc, chunk, stacked)``: every model's logs of a chunk of batches."""
    add_one = eval_chunk_adder(model, loss_fn, metrics)

    def add(params, state, acc, chunk, stacked):
        one = lambda p, s, a: add_one(p, s, a, chunk, stacked)
        return jax.vmap(one)(params, state, acc)

    return jax.jit(add, static_argnums=4, donate_argnums=2)


def stacked_evaluate(
    model: Layer | Callable,
    params,
    state,
    data,
    *,
    loss: str | Callable | None = None,
    metrics=None,
    batch_size: int = 256,
) -> dict[str, np.ndarray]:
    """Every model's ``{"loss": (N,), name: (N, ...)}`` over a dataset, as :func:`evaluate`.

    ``params``/``state`` are stacked; ``data`` (arrays or an iterable of
    batches) is shared, padded and masked as in :func:`evaluate`.

    Examples:
        >>> import jax.numpy as jnp, numpy as np, optax
        >>> from funcnet import Dense
        >>> from funcnet.training.stacked import stack_init
        >>> ts = stack_init(Dense(1), optax.sgd(0.1), 3, jnp.zeros((1, 2)))
        >>> x, y = np.ones((10, 2), np.float32), np.zeros((10, 1), np.float32)
        >>> stacked_evaluate(Dense(1), ts.params, ts.state, (x, y), loss="mse")["loss"].shape
        (3,)
    """
    model = as_layer(model)
    loss_fn = resolve_loss(loss, "stacked_evaluate") if loss is not None else None
    metrics = metric_dict(metrics)
    check_positive_int("stacked_evaluate", "batch_size", batch_size)
    n = num_models((params, state), "stacked_evaluate")
    add = _stacked_evaluator(model, loss_fn, metrics)
    acc = jax.vmap(lambda _: logs_init(metrics))(jnp.arange(n))
    placement = Placement(None, "stacked_evaluate")
    check = batch_check(model, loss_fn)
    for chunk, stacked in eval_chunks(data, batch_size, placement, "stacked_evaluate", check):
        acc = add(params, state, acc, chunk, stacked)
    acc = jax.device_get(acc)
    logs = [logs_compute(metrics, model_at(acc, i), loss_fn is not None) for i in range(n)]
    return {name: np.stack([np.asarray(one[name]) for one in logs]) for name in logs[0]}


def stacked_predict(model: Layer | Callable, params, state, x, *, batch_size: int = 256):
    """Every model's outputs ``(N, rows, ...)``, in padded batches inside one compiled call.

    Examples:
        >>> import jax.numpy as jnp, numpy as np, optax
        >>> from funcnet import Dense
        >>> from funcnet.training.stacked import stack_init
        >>> ts = stack_init(Dense(3), optax.sgd(0.1), 4, jnp.zeros((1, 2)))
        >>> stacked_predict(Dense(3), ts.params, ts.state, np.ones((10, 2), np.float32),
        ...                 batch_size=4).shape
        (4, 10, 3)
    """
    model = as_layer(model)
    check_positive_int("stacked_predict", "batch_size", batch_size)
    num_models((params, state), "stacked_predict")
    rows = jax.tree.leaves(x)[0].shape[0]
    xb, _ = stack_batches(x, rows, min(batch_size, rows))
    apply = jax.vmap(predict_step(model), in_axes=(0, 0, None))

    def run(params, state, xb):
        out = jax.lax.map(lambda b: apply(params, state, b), xb)  # (batches, N, batch, ...)
        return jax.tree.map(
            lambda a: jnp.moveaxis(a, 0, 1).reshape(a.shape[1], -1, *a.shape[3:])[:, :rows], out
        )

    return jax.jit(run)(params, state, xb)


def _combine(outputs: jax.Array, combine: str) -> jax.Array:
    """The ensemble of ``(N, rows, classes)`` outputs (logits; one column: a binary logit)."""
    if combine == "mean":
        return jnp.mean(outputs, axis=0)
    binary = outputs.shape[-1] == 1
    if combine == "mean_probs":
        probs = jax.nn.sigmoid(outputs) if binary else jax.nn.softmax(outputs, axis=-1)
        return jnp.mean(probs, axis=0)
    votes = (outputs[..., 0] > 0).astype(jnp.int32) if binary else jnp.argmax(outputs, axis=-1)
    counts = jnp.sum(jax.nn.one_hot(votes, 2 if binary else outputs.shape[-1]), axis=0)
    return jnp.argmax(counts, axis=-1).astype(jnp.int32)


def ensemble_predict(
    model: Layer | Callable,
    params,
    state,
    x,
    *,
    combine: str = "mean_probs",
    batch_size: int = 256,
) -> jax.Array:
    """The stacked models' predictions combined (a deep ensemble); the models output logits.

    ``combine``: ``"mean_probs"``: the mean of the softmax probabilities (the
    sigmoid's for one column), ``(rows, classes)``. ``"vote"``: each model's
    class (argmax, or logit > 0), the most frequent wins, ties to the smallest
    class; ``(rows,)`` int32. ``"mean"``: the mean of the outputs (regression).
    A ValueError for any other.

    Examples:
        >>> import jax.numpy as jnp, numpy as np, optax
        >>> from funcnet import Dense
        >>> from funcnet.training.stacked import stack_init
        >>> ts = stack_init(Dense(3), optax.sgd(0.1), 5, jnp.zeros((1, 2)))
        >>> x = np.ones((4, 2), np.float32)
        >>> ensemble_predict(Dense(3), ts.params, ts.state, x, combine="vote").shape
        (4,)
    """
    if combine not in _COMBINE:
        raise ValueError(
            f"ensemble_predict: `combine` must be one of {_COMBINE}, got {combine!r}; "
            "'mean_probs' averages the models' probabilities."
        )
    outputs = stacked_predict(model, params, state, x, batch_size=batch_size)
    return _combine(outputs, combine)
