"""funcnet: deep learning for JAX where a model is a pair of pure functions over pytrees.

Examples:
    >>> import jax, jax.numpy as jnp
    >>> import funcnet as fn
    >>> model = fn.serial(fn.Dense(32), jax.nn.relu, fn.Dense(10))
    >>> params, state = model.init(jax.random.key(0), jnp.zeros((1, 64)))
    >>> logits, state = model.apply(params, state, jnp.ones((4, 64)))
    >>> logits.shape
    (4, 10)
"""

from funcnet import (
    augment,
    checkpoint,
    compress,
    data,
    datasets,
    distributed,
    explain,
    export,
    initializers,
    losses,
    metrics,
    training,
)
from funcnet.beam_search import beam_search
from funcnet.checkpoint import CheckpointManager
from funcnet.combinators import (
    Policy,
    concat,
    fanout,
    get_policy,
    parallel,
    remat,
    repeat,
    residual,
    serial,
    shared,
    with_policy,
)
from funcnet.core import (
    FuncnetError,
    Layer,
    LayerError,
    Params,
    PRNGKey,
    State,
    as_layer,
    init_spec,
    output_spec,
    spec_of,
    stateless,
)
from funcnet.export import load_exported
from funcnet.generation import generate, init_cache
from funcnet.layers import *  # noqa: F403
from funcnet.layers import __all__ as _layers
from funcnet.summaries import param_count, summary
from funcnet.training import (
    History,
    TrainState,
    callbacks,
    compose_optimizer,
    dynamic_loss_scale,
    ensemble_predict,
    eval_step,
    evaluate,
    fit,
    hparams_of,
    model_at,
    model_orders,
    predict,
    predict_step,
    shard_models,
    stack_init,
    stack_models,
    stacked_evaluate,
    stacked_fit,
    stacked_predict,
    stacked_runner,
    stacked_train_step,
    take_batches,
    train_step,
    with_hparams,
)
from funcnet.version import __version__

__all__ = [
    "CheckpointManager",
    "FuncnetError",
    "History",
    "Layer",
    "LayerError",
    "PRNGKey",
    "Params",
    "Policy",
    "State",
    "TrainState",
    "__version__",
    "as_layer",
    "augment",
    "beam_search",
    "callbacks",
    "compose_optimizer",
    "compress",
    "checkpoint",
    "concat",
    "data",
    "datasets",
    "distributed",
    "dynamic_loss_scale",
    "ensemble_predict",
    "eval_step",
    "evaluate",
    "explain",
    "export",
    "fanout",
    "fit",
    "generate",
    "get_policy",
    "hparams_of",
    "init_cache",
    "init_spec",
    "initializers",
    "load_exported",
    "losses",
    "metrics",
    "model_at",
    "model_orders",
    "output_spec",
    "param_count",
    "parallel",
    "predict",
    "predict_step",
    "remat",
    "repeat",
    "residual",
    "serial",
    "shard_models",
    "shared",
    "spec_of",
    "stack_init",
    "stack_models",
    "stacked_evaluate",
    "stacked_fit",
    "stacked_predict",
    "stacked_runner",
    "stacked_train_step",
    "stateless",
    "summary",
    "take_batches",
    "train_step",
    "training",
    "with_hparams",
    "with_policy",
    *_layers,
]
