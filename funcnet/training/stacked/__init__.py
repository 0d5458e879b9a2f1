"""Many models at once: N models stacked on a leading axis and trained by one step.

N models of one architecture are one pytree with a leading *model axis* on
every leaf, and ``jax.vmap`` of :func:`~funcnet.training.step.train_step`
trains them all in one compiled program: seeds, ensembles, bagging, sweeps.
Model ``i`` of a stack is ``TrainState.create(model, optimizer, keys[i],
example)`` trained alone on the same batches, up to float rounding.
:func:`stack_init` builds the stack (per-model optimizer ``hparams``),
:func:`stacked_train_step` trains it on shared or per-model batches
(:func:`model_orders`, :func:`take_batches`, :func:`stacked_runner`),
:func:`stacked_evaluate` / :func:`stacked_predict` / :func:`ensemble_predict`
use it, :func:`shard_models` splits it over devices, and :func:`stacked_fit`
is ``fit`` for the stack (per-model logs with mean and std, per-model early
stopping, the best model, checkpoints of the stack).

Memory: N copies of the params and optimizer state, nothing more (tested).
Speed: one program saves N - 1 dispatches per step and lets a backend fill
its cores with N small models; where one model's step already keeps the
device busy it saves nothing (2-core CPU: 1.4-1.7x for a tiny MLP, 0.9-1.0x
for a 784-128-128-10 MLP; ``bench/stacked.py``).

Examples:
    >>> import jax, jax.numpy as jnp, optax
    >>> import funcnet as fn
    >>> model = fn.serial(fn.Dense(8), jax.nn.relu, fn.Dense(2))
    >>> opt = optax.inject_hyperparams(optax.sgd)(learning_rate=0.1)
    >>> x, y = jnp.ones((16, 3)), jnp.zeros(16, jnp.int32)
    >>> ts = stack_init(model, opt, 4, x, hparams={"learning_rate": [0.3, 0.1, 0.03, 0.01]})
    >>> step = jax.jit(stacked_train_step(model, "sparse_categorical_cross_entropy", opt))
    >>> ts, logs = step(ts, (x, y))
    >>> ts.params[0]["w"].shape, logs["loss"].shape
    ((4, 3, 8), (4,))
"""

from funcnet.training.stacked.fit import StackedHistory, stacked_fit
from funcnet.training.stacked.infer import ensemble_predict, stacked_evaluate, stacked_predict
from funcnet.training.stacked.models import (
    hparams_of,
    model_at,
    shard_models,
    stack_init,
    stack_models,
    with_hparams,
)
from funcnet.training.stacked.train import (
    model_orders,
    stacked_runner,
    stacked_train_step,
    take_batches,
)

__all__ = [
    "StackedHistory",
    "ensemble_predict",
    "hparams_of",
    "model_at",
    "model_orders",
    "shard_models",
    "stack_init",
    "stack_models",
    "stacked_evaluate",
    "stacked_fit",
    "stacked_predict",
    "stacked_runner",
    "stacked_train_step",
    "take_batches",
    "with_hparams",
]
