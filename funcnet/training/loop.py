"""``fit``: the Keras-like loop on top of the pure step (with ``evaluate`` / ``predict``
from :mod:`funcnet.training.inference`).

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

import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from funcnet._checks import check_positive_int
from funcnet.core import Layer
from funcnet.distributed.rules import Rules
from funcnet.training.callbacks import call_exception_hooks, call_hooks
from funcnet.training.feed import (
    ArrayEpochs,
    BatchEpochs,
    Placement,
    batch_check,
    check_arrays,
    eval_chunks,
    is_arrays,
    param_sharding_arg,
    split_validation,
)
from funcnet.training.fused import has_conv, logs_compute, logs_init
from funcnet.training.history import History
from funcnet.training.inference import evaluate, make_evaluator, predict
from funcnet.training.options import fit_options, learning_rate_of, loss_scale_of, update_was_finite
from funcnet.training.step import (
    TrainState,
    metric_dict,
    resolve_loss,
    train_step,
)

__all__ = ["evaluate", "fit", "make_evaluator", "predict"]

LOSS_EVERY_S = 0.5  # how often a live progress bar reads the running loss


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


def _check_finite(acc: dict, epoch: int, skipping: bool) -> None:
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
        self.bar, self.shown = None, -math.inf
        if verbose == 1:
            from tqdm.auto import tqdm

            if not _live_bar(tqdm):
                return
            desc = f"epoch {epoch + 1}/{epochs}"
            self.bar = tqdm(total=steps, desc=desc, unit="step", leave=False, initial=done)

    def update(self, k: int, acc: dict) -> None:
        if self.bar is None:
            return
        self.bar.update(k)
        now = time.monotonic()
        if now - self.shown >= LOSS_EVERY_S:  # reading the loss waits for the device
            self.shown = now
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
            may be a pytree; numpy, jax, or anything numpy reads through
            ``__array__``, such as a pandas Series or a torch tensor), or an
            iterable of such batches (a list, or a function returning a fresh
            iterator each epoch). A tuple is always read as arrays, a list
            always as batches.
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
    ts, history = run.epochs(ts, key, shuffle, metrics, placement, ts_shardings, validate)
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

    def epochs(self, ts, key, shuffle, metrics, placement, shardings, validate):
        try:
            return self._epochs(ts, key, shuffle, metrics, placement, shardings, validate)
        except BaseException as err:  # KeyboardInterrupt too: callbacks close their files
            call_exception_hooks(self.callbacks, err)
            raise

    def _epochs(self, ts, key, shuffle, metrics, placement, shardings, validate):
        def hooks(name, ts, *args):  # a state a callback returns goes where the loop keeps its
            out = call_hooks(self.callbacks, name, ts, *args)  # own (EarlyStopping's: the host)
            return out if out is ts else placement.put(out, shardings)

        history = History()
        ts = hooks("on_train_begin", ts)
        # the step counted on the host: reading ts.step after every call would wait for the
        # device each time and stop JAX from queueing the next call meanwhile
        step = int(ts.step)
        if step > 0 and self.feed.steps is None:  # resuming: where does it restart?
            self.feed.count_steps()
        steps = self.feed.steps
        start_epoch, skip = divmod(step, steps) if steps else (0, 0)
        for epoch in range(start_epoch, self.n_epochs):
            first = skip if epoch == start_epoch else 0
            progress = _Progress(self.verbose, steps, epoch, self.n_epochs, first)
            acc = placement.put(logs_init(metrics), placement.replicated)
            steps_run = self.feed.epoch(ts, acc, key, epoch, first, shuffle)
            for ts, acc, k, last in steps_run:
                step += k
                self._after_steps(ts, acc, epoch, last, step)
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
            ts = hooks("on_epoch_end", ts, epoch, logs)
            if any(getattr(cb, "stop_training", False) for cb in self.callbacks):
                break
        return hooks("on_train_end", ts), history

    def _after_steps(self, ts, acc, epoch: int, last: bool, step: int) -> None:
        call_hooks(self.callbacks, "on_steps_end", ts, step)
        if self.manager is None or not self.every or step % self.every:
            return
        if last:  # the epoch-end save (with its logs) follows
            return
        _check_finite(acc, epoch, self.skipping)  # never save a diverged model
        self.manager.save(step, ts)
