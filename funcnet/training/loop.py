"""``fit`` / ``evaluate`` / ``predict``: the Keras-like loop on top of the pure step.

For data given as arrays (``(x, y)`` or ``(x, y, weights)``, each a numpy or
JAX array or a pytree of them) the data is placed on the device once, each
epoch is shuffled with ``jax.random.permutation``, batches are gathered inside
the compiled step, and ``steps_per_execution`` steps run as one ``lax.scan``
call, so Python dispatch is paid once per K steps. Data given as an iterable
of batches runs one compiled step per batch. Each function has one body for
every kind of data and for one device or a mesh: :mod:`funcnet.training.feed`
hides the difference.

Examples:
    >>> import jax, numpy as np, optax
    >>> import funcnet as fn
    >>> rng = np.random.default_rng(0)
    >>> x = rng.normal(size=(256, 4)).astype(np.float32)
    >>> y = (x.sum(1) > 0).astype(np.int32)
    >>> model = fn.serial(fn.Dense(16), jax.nn.relu, fn.Dense(2))
    >>> ts, history = fit(model, optax.adam(1e-2), "sparse_categorical_cross_entropy", (x, y),
    ...                   epochs=5, batch_size=32, metrics=["accuracy"], validation_split=0.25,
    ...                   verbose=0)
    >>> sorted(history.history)
    ['accuracy', 'loss', 'val_accuracy', 'val_loss']
    >>> history["val_accuracy"][-1] > 0.8
    True
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from funcnet._checks import check_positive_int
from funcnet.core import Layer, as_layer
from funcnet.distributed.rules import Rules
from funcnet.training.callbacks import call_exception_hooks, call_hooks
from funcnet.training.feed import (
    ArrayEpochs,
    BatchEpochs,
    Placement,
    batch_check,
    check_arrays,
    eval_chunks,
    eval_rules,
    is_arrays,
    is_batches,
    iterate,
    one_batch_spec,
    param_sharding_arg,
    split_validation,
    stack_batches,
)
from funcnet.training.fused import eval_chunk_adder, has_conv, logs_compute, logs_init
from funcnet.training.history import History
from funcnet.training.options import fit_options, learning_rate_of, loss_scale_of, update_was_finite
from funcnet.training.step import (
    TrainState,
    metric_dict,
    predict_step,
    resolve_loss,
    train_step,
)

__all__ = ["evaluate", "fit", "make_evaluator", "predict"]


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


# ----------------------------------------------------------------------------- fit's pieces


def _check_fit_args(batch_size, epochs, steps_per_execution, validation, param_sharding, mesh):
    check_positive_int("fit", "batch_size", batch_size)
    check_positive_int("fit", "epochs", epochs, allow_zero=True)
    check_positive_int("fit", "steps_per_execution", steps_per_execution)
    if validation:
        raise ValueError("fit: give `validation_data` or `validation_split`, not both.")
    param_sharding = param_sharding_arg(param_sharding, "fit")
    if mesh is None and param_sharding != "replicated":
        raise ValueError(
            f"fit: `param_sharding={param_sharding!r}` needs a `mesh`; pass e.g. "
            "`mesh=distributed.make_mesh(fsdp=4)`, or for rules a mesh with their axes, "
            "`jax.make_mesh((2, 4), ('data', 'model'))`."
        )
    return param_sharding


def _start_state(model, optimizer, key, example, placement, param_sharding, initial, manager):
    """The state training starts from (created, given, or the latest checkpoint), placed."""
    if initial is None:
        ts, shardings = placement.create(model, optimizer, key, example, param_sharding)
    else:  # copied: the fused step donates (deletes) its input
        ts = jax.tree.map(jnp.copy, initial)
        shardings = placement.state_shardings(ts, param_sharding, model, optimizer, example)
        ts = ts if shardings is None else placement.put(ts, shardings)
    restored = None if manager is None else manager.restore_latest(like=ts)
    if restored is not None:  # the newest intact checkpoint (corrupt newer ones warned about)
        ts = restored.tree
        ts = ts if shardings is None else placement.put(ts, shardings)
    return ts, shardings


def _checkpoint_manager(checkpoint, every, steps_per_execution):
    if every is not None:
        if checkpoint is None:
            raise ValueError("fit: `checkpoint_every` needs `checkpoint` (a CheckpointManager).")
        check_positive_int("fit", "checkpoint_every", every)
        if every % steps_per_execution:
            raise ValueError(
                f"fit: `checkpoint_every={every}` must be a multiple of "
                f"`steps_per_execution={steps_per_execution}` (fused steps are saved together)."
            )
    if checkpoint is None or hasattr(checkpoint, "save"):
        return checkpoint
    from funcnet.checkpoint import CheckpointManager

    return CheckpointManager(checkpoint)


def _check_best_metric(manager, metrics: dict, validation: bool) -> None:
    """Fail before training, not after the first epoch, when the best metric is never logged."""
    best = getattr(manager, "best_metric", None)
    if best is None or best == "learning_rate":
        return
    logged = ["loss", *metrics]
    if validation:
        logged += [f"val_{name}" for name in logged]
    if best not in logged:
        raise ValueError(
            f"fit: the checkpoint manager's `best_metric={best!r}` is not among the epoch logs "
            f"{logged}; pass it in `metrics=` (and `validation_data=` for a 'val_' name) or "
            "choose one of these."
        )


def _check_finite(acc: dict, epoch: int, skipping: bool = False) -> None:
    bad_step = int(acc["nonfinite_step"])
    if bad_step >= 0 and not skipping:
        raise FloatingPointError(
            f"fit: the loss was NaN/Inf at step {bad_step} (epoch {epoch + 1}). Check the "
            "inputs for NaN/Inf, lower the learning rate, or clip gradients "
            "(`clip_norm=1.0`); `nan_guard='skip'` skips non-finite updates instead."
        )


def _live_bar(bar_cls) -> bool:
    """Whether to draw a live bar: stderr is a terminal, or tqdm draws a notebook widget.

    Elsewhere (a log file, CI, a pipe) every update of a bar would be written
    out, so ``fit`` prints only its line per epoch.
    """
    import sys

    if any(c.__module__ == "tqdm.notebook" for c in bar_cls.__mro__):
        return True
    isatty = getattr(sys.stderr, "isatty", None)
    return bool(isatty is not None and isatty())


class _Progress:
    """The epoch's progress bar (verbose=1, on a terminal or notebook) and line (verbose>=1)."""

    def __init__(self, verbose: int, steps: int | None, epoch: int, epochs: int, done: int):
        self.verbose, self.epoch, self.epochs = verbose, epoch, epochs
        self.bar = None
        if verbose == 1:
            from tqdm.auto import tqdm

            if not _live_bar(tqdm):
                return
            desc = f"epoch {epoch + 1}/{epochs}"
            self.bar = tqdm(total=steps, desc=desc, unit="step", leave=False, initial=done)

    def update(self, k: int, acc: dict) -> None:
        if self.bar is not None:
            self.bar.update(k)
            self.bar.set_postfix_str(f"loss {float(acc['loss_total'] / acc['loss_count']):.4g}")

    def close(self, logs: dict) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.verbose:
            shown = "  ".join(f"{k} {v:.4g}" for k, v in logs.items() if np.ndim(v) == 0)
            print(f"epoch {self.epoch + 1}/{self.epochs}  {shown}")


# ----------------------------------------------------------------------------- fit


def fit(
    model: Layer | Callable,
    optimizer: optax.GradientTransformation,
    loss: str | Callable,
    train_data,
    *,
    epochs: int = 1,
    batch_size: int = 32,
    validation_data=None,
    validation_split: float = 0.0,
    validation_batch_size: int = 256,
    metrics=None,
    callbacks: Sequence[Any] = (),
    key: jax.Array | None = None,
    steps_per_execution: int = 1,
    initial_state: TrainState | None = None,
    shuffle: bool = True,
    unroll: int | bool | None = None,
    verbose: int = 1,
    checkpoint=None,
    checkpoint_every: int | None = None,
    mesh: jax.sharding.Mesh | None = None,
    param_sharding: str | Rules | dict = "replicated",
    **step_options,
) -> tuple[TrainState, History]:
    """Train ``model`` for ``epochs`` epochs; return the final ``TrainState`` and a ``History``.

    Args:
        model: the layer to train.
        optimizer: an optax ``GradientTransformation``.
        loss: a loss function or name (:func:`funcnet.losses.get`).
        train_data: a tuple ``(x, y)`` or ``(x, y, weights)`` of arrays (``x``
            may be a pytree), or an iterable of such batches (a list, or a
            function returning a fresh iterator each epoch). A tuple is always
            read as arrays, a list always as batches.
        epochs: number of passes over the data.
        batch_size: examples per step (arrays only). Each epoch runs
            ``n // batch_size`` steps over a fresh permutation; the few
            examples left over land in other epochs' batches.
        validation_data: arrays or batches, evaluated after every epoch
            (every example counted once); logged as ``val_loss``, ``val_<metric>``.
        validation_split: instead, hold out this last fraction of the arrays
            (the last ``round(n * validation_split)`` rows, before shuffling).
        metrics: names or :class:`~funcnet.metrics.Metric`s (a list, or a dict
            name -> metric); streamed over the epoch.
        callbacks: objects with ``on_train_begin`` / ``on_epoch_end`` /
            ``on_steps_end`` / ``on_train_end`` (see :mod:`funcnet.training.callbacks`).
        key: the run's key (default ``jax.random.key(0)``): it fixes the
            initialisation, the shuffling and dropout (see
            :mod:`funcnet.training.keys`), so the same key and data give
            bit-identical results.
        steps_per_execution: steps fused into one compiled ``lax.scan`` call
            (arrays only); the parameters equal those of ``1`` up to float
            rounding.
        initial_state: continue from this ``TrainState`` (its ``step``
            decides the first epoch when it is a multiple of the epoch length).
        shuffle: reshuffle the arrays every epoch.
        unroll: unrolling of the fused scan; default: fully unrolled when the
            model contains a convolution on CPU (XLA:CPU computes convolution
            gradients inside a loop ~10x slower), else rolled. Unrolled steps
            compile one by one (~1 s each for a small CNN), so keep
            ``steps_per_execution`` small (1-8) for convolutional models.
        verbose: 0 silent, 1 a progress bar and a line per epoch, 2 a line per epoch.
        checkpoint: a :class:`funcnet.checkpoint.CheckpointManager` (or a
            directory for one). Training starts from its newest intact
            checkpoint when there is one (newer corrupt ones are set aside as
            ``*.corrupt`` with a ``CheckpointWarning``; a manager made with
            ``on_corrupt="raise"`` stops instead), and saves at the end of every
            epoch (with the epoch's logs, for ``best_metric``) and every
            ``checkpoint_every`` steps. A
            run killed at any moment and started again with the same arguments
            ends with the same parameters as one that never stopped (the
            interrupted epoch's logged loss covers only the steps after the
            restart).
        checkpoint_every: also save every this many steps (a multiple of
            ``steps_per_execution``; fused steps are saved together).
        mesh: train data-parallel on this :class:`jax.sharding.Mesh` (see
            :func:`funcnet.distributed.make_mesh`; ``Auto`` or ``Explicit``
            axes): every batch is split over its ``"data"`` (and ``"fsdp"``)
            axes, the train state is replicated (or sharded, see
            ``param_sharding``) and the compiled step averages the gradients
            over the devices, so the parameters equal those of a one-device run
            with the same ``batch_size`` (the global batch) up to float
            rounding. ``batch_size`` must be divisible by the number of devices
            the batch is split over. BatchNorm needs no ``axis_name`` here: its
            statistics are those of the global batch. With several processes
            (:func:`funcnet.distributed.initialize`) every process passes the
            same arrays, or an iterable of its own rows of each global batch
            (:func:`funcnet.distributed.local_batches`).
        param_sharding: ``"replicated"`` (default) or ``"fsdp"``: params,
            model state and optimizer state split over the mesh's ``"fsdp"``
            axis (``"data"`` without one), see
            :func:`funcnet.distributed.state_shardings`. Or sharding rules
            (:class:`funcnet.distributed.Rules` or a dict, e.g.
            ``distributed.tensor_parallel()`` on a ``("data", "model")``
            mesh): each param and its optimizer moments placed by the logical
            names of its axes (:mod:`funcnet.distributed.rules`), checked
            before anything is compiled; the batch is split over ``"data"``
            only, and the compiler inserts the collectives of tensor
            parallelism. The parameters equal those of one device up to
            float rounding.
        **step_options: ``policy`` (or ``compute_dtype``) runs the whole model
            (training, validation, the params' dtype at init) as
            ``with_policy(model, policy)`` (see :func:`funcnet.get_policy`);
            ``clip_norm``, ``freeze``, ``nan_guard="skip"`` and
            ``loss_scale="dynamic"`` are composed into the optimizer
            (:func:`compose_optimizer`); a float16 policy
            (``"mixed_float16"``) without a ``loss_scale`` gets the dynamic
            one. The rest go to :func:`train_step` (``l2``,
            ``accumulate_steps``, ``augment``, a static ``loss_scale``, ...).

    Returns:
        ``(train_state, history)``.

    Raises:
        ValueError: for inconsistent or empty data, NaN/Inf in the arrays,
            labels out of range, bad arguments.
        FloatingPointError: when a step produced a NaN/Inf loss (the message
            names the step). With ``nan_guard="skip"`` or a dynamic loss scale
            (an optimizer that skips non-finite updates) such a step's update
            is skipped instead, its loss and metrics left out of the epoch's,
            and the epoch's count logged as ``skipped_steps``; a dynamic loss
            scale's value at the end of the epoch is logged as ``loss_scale``.
    """
    model, optimizer, step_options = fit_options(model, optimizer, step_options, "fit")
    loss_fn = resolve_loss(loss, "fit")
    metrics = metric_dict(metrics)
    both = bool(validation_split) and validation_data is not None
    param_sharding = _check_fit_args(
        batch_size, epochs, steps_per_execution, both, param_sharding, mesh
    )
    placement = Placement(mesh, "fit")
    step = train_step(model, loss_fn, optimizer, metrics=metrics, **step_options)
    key = jax.random.key(0) if key is None else key
    if validation_split:
        if not is_arrays(train_data):
            raise ValueError("fit: `validation_split` needs arrays `(x, y)`, not an iterable.")
        train_data, validation_data = split_validation(train_data, validation_split)
    check = batch_check(model, loss_fn)
    if is_arrays(train_data):
        arrays = check_arrays(train_data, "fit")
        check(*arrays[:3], "fit")
        feed = ArrayEpochs(arrays, batch_size, placement)
    else:
        feed = BatchEpochs(train_data, placement, check)
    manager = _checkpoint_manager(checkpoint, checkpoint_every, steps_per_execution)
    _check_best_metric(manager, metrics, validation_data is not None)
    ts, ts_shardings = _start_state(
        model, optimizer, key, feed.example, placement, param_sharding, initial_state, manager
    )
    if unroll is None:
        unroll = has_conv(model) and jax.default_backend() == "cpu"
    feed.compile(
        step, metrics, ts_shardings, unroll=unroll, steps_per_execution=steps_per_execution
    )
    validate = None
    if validation_data is not None:
        validate = _validator(
            model, loss_fn, metrics, placement, validation_data, validation_batch_size, check
        )
    skipping = update_was_finite(ts.opt_state) is not None  # the optimizer skips NaN/Inf steps
    run = _Run(feed, manager, checkpoint_every, callbacks, verbose, epochs, skipping)
    ts, history = run.epochs(ts, key, shuffle, metrics, placement, validate)
    return placement.to_user(ts), history


def _validator(model, loss_fn, metrics, placement, data, batch_size, check):
    """``validate(ts) -> {"val_<name>": value}``; array data is padded and placed once."""
    where = "fit (validation_data)"
    chunks = eval_chunks(data, batch_size, placement, where, check)
    run = make_evaluator(model, loss_fn, metrics, placement)

    def validate(ts):
        current = (
            chunks
            if isinstance(chunks, list)
            else eval_chunks(data, batch_size, placement, where, check)
        )
        logs = logs_compute(metrics, run(ts.params, ts.state, current))
        return {f"val_{k}": v for k, v in logs.items()}

    return validate


class _Run:
    """The epochs of one ``fit`` call: steps, checkpoints, callbacks, logs."""

    def __init__(self, feed, manager, checkpoint_every, callbacks, verbose, epochs, skipping):
        self.feed, self.manager, self.every = feed, manager, checkpoint_every
        self.callbacks, self.verbose, self.n_epochs = callbacks, verbose, epochs
        self.skipping = skipping  # nan_guard="skip", loss scaling: non-finite steps are skipped

    def epochs(self, ts, key, shuffle, metrics, placement, validate):
        try:
            return self._epochs(ts, key, shuffle, metrics, placement, validate)
        except BaseException as err:  # KeyboardInterrupt too: callbacks close their files
            call_exception_hooks(self.callbacks, err)
            raise

    def _epochs(self, ts, key, shuffle, metrics, placement, validate):
        history = History()
        ts = call_hooks(self.callbacks, "on_train_begin", ts)
        if int(ts.step) > 0 and self.feed.steps is None:  # resuming: where does it restart?
            self.feed.count_steps()
        steps = self.feed.steps
        start_epoch, skip = divmod(int(ts.step), steps) if steps else (0, 0)
        for epoch in range(start_epoch, self.n_epochs):
            first = skip if epoch == start_epoch else 0
            progress = _Progress(self.verbose, steps, epoch, self.n_epochs, first)
            acc = placement.put(logs_init(metrics), placement.replicated)
            steps_run = self.feed.epoch(ts, acc, key, epoch, first, shuffle)
            for ts, acc, k, last in steps_run:
                self._after_steps(ts, acc, epoch, last)
                progress.update(k, acc)
            _check_finite(acc, epoch, self.skipping)
            logs = logs_compute(metrics, acc)
            if self.skipping:
                logs["skipped_steps"] = int(acc["nonfinite_count"])
            if validate is not None:
                logs.update(validate(ts))
            lr = learning_rate_of(ts.opt_state)
            if lr is not None:
                logs["learning_rate"] = lr
            scale = loss_scale_of(ts.opt_state)
            if scale is not None:
                logs["loss_scale"] = float(scale)
            history.append(epoch, logs)
            if self.manager is not None:
                self.manager.save(int(ts.step), ts, metrics=logs)
            progress.close(logs)
            ts = call_hooks(self.callbacks, "on_epoch_end", ts, epoch, logs)
            if any(getattr(cb, "stop_training", False) for cb in self.callbacks):
                break
        return call_hooks(self.callbacks, "on_train_end", ts), history

    def _after_steps(self, ts, acc, epoch: int, last: bool) -> None:
        call_hooks(self.callbacks, "on_steps_end", ts, int(ts.step))
        if self.manager is None or not self.every or int(ts.step) % self.every:
            return
        if last:  # the epoch-end save (with its logs) follows
            return
        _check_finite(acc, epoch, self.skipping)  # never save a diverged model
        self.manager.save(int(ts.step), ts)
