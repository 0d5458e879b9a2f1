"""The training wing: the pure step, options as optax transforms, the feed and the loop.

Who owns what (imports go down this list, never up; layers, losses,
metrics, data, distributed and persistence never import training):

- :mod:`~funcnet.training.keys`: the key scheme, one table of every use of randomness.
- :mod:`~funcnet.training.options`: freezing, clipping, skipping non-finite
  updates and dynamic loss scaling as optax transforms (:func:`compose_optimizer`,
  :func:`dynamic_loss_scale`).
- :mod:`~funcnet.training.collectives`: the explicit-collective helpers of a step
  under ``shard_map`` / ``pmap`` (``axis_name``).
- :mod:`~funcnet.training.accumulate`: gradient accumulation over micro-batches.
- :mod:`~funcnet.training.step`: :class:`TrainState`, :func:`train_step`,
  :func:`eval_step`, :func:`predict_step` — pure functions, nothing else.
- :mod:`~funcnet.training.fused`: K steps in one compiled call
  (:func:`fused_runner`) and the logs accumulated inside it.
- :mod:`~funcnet.training.feed`: arrays or iterables, padding, placement on one
  device or a mesh (:class:`~funcnet.training.feed.Placement`).
- :mod:`~funcnet.training.callbacks`, :mod:`~funcnet.training.history`: host-side
  hooks between epochs, and the logs of a run.
- :mod:`~funcnet.training.stacked`: N models on a leading axis, trained by one
  vmapped step (seeds, ensembles, sweeps).
- :mod:`~funcnet.training.loop`: :func:`fit`; :mod:`~funcnet.training.inference`:
  :func:`evaluate` / :func:`predict`; one body each for every kind of data.
"""

from funcnet.training import callbacks, keys
from funcnet.training.fused import fused_runner, logs_add, logs_compute, logs_init
from funcnet.training.history import History
from funcnet.training.inference import evaluate, predict
from funcnet.training.loop import fit
from funcnet.training.options import compose_optimizer, dynamic_loss_scale, loss_scale_of
from funcnet.training.stacked import (
    ensemble_predict,
    hparams_of,
    model_at,
    model_orders,
    shard_models,
    stack_init,
    stack_models,
    stacked_evaluate,
    stacked_fit,
    stacked_predict,
    stacked_runner,
    stacked_train_step,
    take_batches,
    with_hparams,
)
from funcnet.training.step import TrainState, eval_step, predict_step, train_step

__all__ = [
    "History",
    "TrainState",
    "callbacks",
    "compose_optimizer",
    "dynamic_loss_scale",
    "eval_step",
    "evaluate",
    "fit",
    "fused_runner",
    "keys",
    "logs_add",
    "logs_compute",
    "logs_init",
    "loss_scale_of",
    "predict",
    "predict_step",
    "train_step",
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
