"""``stacked_fit``: ``fit`` for N models at once, with per-model logs, stopping and the best model.

Examples:
    >>> import jax, numpy as np, optax
    >>> import funcnet as fn
    >>> rng = np.random.default_rng(0)
    >>> x = rng.normal(size=(64, 4)).astype(np.float32)
    >>> y = (x.sum(1) > 0).astype(np.int32)
    >>> opt = optax.inject_hyperparams(optax.sgd)(learning_rate=0.1)
    >>> ts, history = stacked_fit(fn.Dense(2), opt, "sparse_categorical_cross_entropy", (x, y),
    ...                           num_models=3, hparams={"learning_rate": [0.3, 0.1, 0.0]},
    ...                           epochs=2, batch_size=16, validation_data=(x, y))
    >>> ts.params["w"].shape, history["val_loss"][-1].shape, type(history["val_loss_mean"][-1])
    ((3, 4, 2), (3,), <class 'float'>)
    >>> history.best_model  # the model with the lowest val_loss; lr 0 never learns
    0
    >>> best = fn.model_at(ts, history.best_model)  # a plain TrainState
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from funcnet import distributed
from funcnet._checks import check_positive_int
from funcnet.core import Layer
from funcnet.training import keys as keyring
from funcnet.training.callbacks import EarlyStopping
from funcnet.training.feed import Placement, batch_check, check_arrays, eval_chunks, is_arrays
from funcnet.training.fused import has_conv, logs_add, logs_compute, logs_init
from funcnet.training.history import History
from funcnet.training.options import fit_options
from funcnet.training.stacked.infer import _stacked_evaluator
from funcnet.training.stacked.models import (
    _model_keys,
    model_at,
    shard_models,
    stack_init,
    with_hparams,
)
from funcnet.training.stacked.train import model_orders, stacked_train_step, take_batches
from funcnet.training.step import TrainState, metric_dict, resolve_loss

__all__ = ["StackedHistory", "stacked_fit"]

_WHERE = "stacked_fit"
_ORDERS = ("shared", "per_model", "bootstrap")
_STOP_KEYS = ("monitor", "patience", "min_delta", "mode", "restore_best")


class StackedHistory(History):
    """:class:`History` of :func:`stacked_fit`: every log a ``(N,)`` array plus its mean and std.

    ``history["val_loss"]`` is a list (one per epoch) of ``(N,)`` arrays,
    ``history["val_loss_mean"]`` / ``["val_loss_std"]`` lists of floats (what
    :meth:`plot` draws), ``history["active"]`` which models trained that epoch.

    Attributes:
        monitor, mode: what decides the best epoch and model.
        best_value, best_epoch: each model's best monitored value and its epoch
            (``-1``: never a finite one), ``(N,)``.
        stopped_epoch: the epoch each model stopped in (early stopping, or a
            NaN/Inf parameters), ``-1`` for none, ``(N,)``.
        best_model: the index of the model with the best ``best_value``:
            ``fn.model_at(train_state, history.best_model)``.
    """

    def column(self, name: str) -> np.ndarray:
        """``(epochs, N)``: the per-model values of ``name``, one row per epoch."""
        return np.stack([np.asarray(v) for v in self.history[name]])


# ----------------------------------------------------------------------------- arguments


def _check_args(num_models, keys, data_order, batch_size, epochs, steps_per_execution) -> None:
    if (num_models is None) == (keys is None):
        given = "both" if keys is not None else "neither"
        raise ValueError(
            f"{_WHERE}: give exactly one of `num_models` (N models from `fold_in(key, i)`) and "
            f"`keys` (one seed or key per model), got {given}; e.g. `num_models=8`."
        )
    if data_order not in _ORDERS:
        raise ValueError(
            f"{_WHERE}: `data_order` must be one of {_ORDERS}, got {data_order!r}; 'per_model' "
            "gives model i the order `fit(key=key_i)` would use."
        )
    check_positive_int(_WHERE, "batch_size", batch_size)
    check_positive_int(_WHERE, "epochs", epochs, allow_zero=True)
    check_positive_int(_WHERE, "steps_per_execution", steps_per_execution)


def _model_key_array(num_models, keys, key) -> jax.Array:
    if keys is not None:
        return _model_keys(keys, _WHERE)
    n = check_positive_int(_WHERE, "num_models", num_models)
    if not jnp.issubdtype(key.dtype, jax.dtypes.prng_key):  # a raw ``PRNGKey``
        key = jax.random.wrap_key_data(key)
    return jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(n))


def _train_arrays(train_data, check, batch_size: int):
    if not is_arrays(train_data, _WHERE):
        raise ValueError(
            f"{_WHERE}: `train_data` must be arrays `(x, y)` or `(x, y, weights)` (a tuple), got "
            f"{type(train_data).__name__}; batches from an iterable are not supported: "
            "concatenate them into arrays first."
        )
    x, y, w, rows = check_arrays(train_data, _WHERE)
    check(x, y, w, _WHERE)
    if batch_size > rows:
        raise ValueError(
            f"{_WHERE}: `batch_size={batch_size}` is larger than the {rows} training examples; "
            f"use a batch size <= {rows}."
        )
    return (x, y, w), rows


def _stopping(early_stopping, metrics: dict, validation: bool):
    """An :class:`EarlyStopping` (its checks and conventions) or None; the monitor is logged."""
    if early_stopping is None:
        return None
    if isinstance(early_stopping, Mapping):
        unknown = sorted(set(early_stopping) - set(_STOP_KEYS))
        if unknown:
            raise ValueError(
                f"{_WHERE}: `early_stopping` has unknown keys {unknown}; it takes {_STOP_KEYS}."
            )
        early_stopping = EarlyStopping(**early_stopping)
    elif not isinstance(early_stopping, EarlyStopping):
        raise TypeError(
            f"{_WHERE}: `early_stopping` must be a dict such as `dict(monitor='val_loss', "
            f"patience=2)` or an EarlyStopping, got {type(early_stopping).__name__}."
        )
    logged = ["loss", *metrics]
    logged += [f"val_{name}" for name in logged] if validation else []
    if early_stopping.monitor not in logged:
        raise ValueError(
            f"{_WHERE}: `early_stopping` monitors {early_stopping.monitor!r}, which is not among "
            f"the epoch logs {logged}; pass `validation_data=` for a 'val_' name and the metric "
            "in `metrics=`, or monitor one of these."
        )
    return early_stopping


# ----------------------------------------------------------------------------- the compiled epoch


def _select(mask, new, old):
    """Model ``i`` of ``new`` where ``mask[i]``, else of ``old`` (keys: ``new``'s, constant)."""

    def pick(a, b):
        if jnp.issubdtype(a.dtype, jax.dtypes.prng_key):
            return a
        return jnp.where(mask.reshape((-1,) + (1,) * (a.ndim - 1)), a, b)

    return jax.tree.map(pick, new, old)


def _finite(params) -> jax.Array:
    """``(N,)``: whether all of model ``i``'s parameters are finite."""
    leaves = [a for a in jax.tree.leaves(params) if jnp.issubdtype(a.dtype, jnp.inexact)]
    return jnp.stack([jnp.isfinite(a).reshape(a.shape[0], -1).all(axis=1) for a in leaves]).all(0)


def _runner(step: Callable, metrics: dict, batch_size: int, unroll) -> Callable:
    """``run(ts, acc, active, data, order, begin, k) -> (ts, acc, active)``: k steps, one call.

    A model not ``active`` keeps its state (its logs still count: the frozen
    model on the batches); one whose parameters turn NaN/Inf keeps its last
    finite state and becomes inactive (a step skipped by the optimizer is no
    such step: its NaN/Inf loss is left out of the logs, as in ``fit``).
    """
    add = jax.vmap(lambda acc, logs, step: logs_add(metrics, acc, logs, 1.0, step))

    def run(ts, acc, active, data, order, begin, k):
        def body(carry, i):
            ts, acc, active = carry
            new, logs = step(ts, take_batches(data, order, begin + i, batch_size))
            keep = active & _finite(new.params)
            return (_select(keep, new, ts), add(acc, logs, new.step - 1), keep), None

        carry = (ts, acc, active)
        if unroll is True or k == 1:
            for i in range(k):
                carry, _ = body(carry, jnp.int32(i))
            return carry
        return jax.lax.scan(body, carry, jnp.arange(k, dtype=jnp.int32), unroll=unroll)[0]

    return jax.jit(run, static_argnums=6, donate_argnums=(0, 1))


def _epoch_order(data_order: str, key, model_keys, epoch: int, rows: int) -> jax.Array:
    """``(rows,)`` (shared) or ``(N, rows)``: the order of the epoch's rows."""
    if data_order == "shared":  # fit(key=key)'s order
        return jax.random.permutation(keyring.epoch_key(key, epoch), rows)
    if data_order == "bootstrap":
        return model_orders(keyring.epoch_key(key, epoch), len(model_keys), rows, bootstrap=True)
    perm = lambda k: jax.random.permutation(keyring.epoch_key(k, epoch), rows)
    return jax.jit(jax.vmap(perm))(model_keys)  # model i: fit(key=key_i)'s order


def _columns(per_model: list[dict]) -> dict:
    """``{name: (N,) array, name_mean: float, name_std: float}`` from N models' logs."""
    logs = {}
    for name in per_model[0]:
        column = np.stack([np.asarray(one[name]) for one in per_model])
        logs[name] = column
        if column.ndim == 1:
            logs[f"{name}_mean"] = float(np.mean(column))
            logs[f"{name}_std"] = float(np.std(column))
    return logs


def _validator(model, loss_fn, metrics: dict, data, n: int, put: Callable) -> Callable:
    """``validate(ts) -> [logs of model i]``; array data is padded and placed once."""
    where = f"{_WHERE} (validation_data)"
    check = batch_check(model, loss_fn)
    chunks = eval_chunks(data, 256, Placement(None, where), where, check)
    chunks = [(put(c), s) for c, s in chunks] if isinstance(chunks, list) else None
    add = _stacked_evaluator(model, loss_fn, metrics)

    def validate(ts):
        acc = put(jax.vmap(lambda _: logs_init(metrics))(jnp.arange(n)))
        current = chunks  # arrays: placed once; an iterable: its batches, one by one
        if current is None:
            batches = eval_chunks(data, 256, Placement(None, where), where, check)
            current = ((put(c), s) for c, s in batches)
        for chunk, stacked in current:
            acc = add(ts.params, ts.state, acc, chunk, stacked)
        acc = jax.device_get(acc)
        return [logs_compute(metrics, model_at(acc, i)) for i in range(n)]

    return validate


# ----------------------------------------------------------------------------- per-model stopping


class _Tracker:
    """Each model's best monitored value and epoch, and early stopping (host numpy arrays)."""

    def __init__(self, n: int, monitor: str, mode: str, stop: EarlyStopping | None):
        self.monitor, self.mode = monitor, mode
        self.patience = None if stop is None else stop.patience
        self.min_delta = 0.0 if stop is None else stop.min_delta
        self.arrays = {
            "best": np.full(n, np.inf if mode == "min" else -np.inf),
            "best_epoch": np.full(n, -1, np.int32),
            "wait": np.zeros(n, np.int32),
            "stopped_epoch": np.full(n, -1, np.int32),
            "active": np.ones(n, bool),
        }

    def load(self, arrays: Mapping) -> None:
        self.arrays = {k: np.asarray(arrays[k]).copy() for k in self.arrays}

    def halted(self, epoch: int, active: np.ndarray) -> None:
        """Record the models whose parameters turned NaN/Inf in ``epoch`` (frozen by the runner)."""
        a = self.arrays
        newly = a["active"] & ~active
        if newly.any():
            warnings.warn(
                f"{_WHERE}: the parameters of model(s) {np.flatnonzero(newly).tolist()} turned "
                f"NaN/Inf in epoch {epoch + 1}; they keep their last finite state and stop (lower "
                "their learning rate or clip gradients with `clip_norm=1.0`).",
                RuntimeWarning,
                stacklevel=4,
            )
        a["stopped_epoch"] = np.where(newly, epoch, a["stopped_epoch"]).astype(np.int32)
        a["active"] = a["active"] & active

    def update(self, epoch: int, values, trained: np.ndarray) -> np.ndarray:
        """Compare the epoch's monitored values; returns which models improved."""
        a, values = self.arrays, np.asarray(values, np.float64)
        with np.errstate(invalid="ignore"):
            if self.mode == "min":
                better = values < a["best"] - self.min_delta
            else:
                better = values > a["best"] + self.min_delta
        improved = better & trained
        a["best"] = np.where(improved, values, a["best"])
        a["best_epoch"] = np.where(improved, epoch, a["best_epoch"]).astype(np.int32)
        if self.patience is not None:
            a["wait"] = np.where(improved, 0, a["wait"] + trained).astype(np.int32)
            newly = a["active"] & (a["wait"] > self.patience)
            a["stopped_epoch"] = np.where(newly, epoch, a["stopped_epoch"]).astype(np.int32)
            a["active"] = a["active"] & ~newly
        return improved

    def best_model(self) -> int:
        best = np.where(self.arrays["best_epoch"] >= 0, self.arrays["best"], np.nan)
        if np.isnan(best).all():
            return 0
        return int(np.nanargmin(best) if self.mode == "min" else np.nanargmax(best))

    def finish(self, history: StackedHistory) -> StackedHistory:
        a = self.arrays
        history.monitor, history.mode = self.monitor, self.mode
        history.best_value, history.best_epoch = a["best"].copy(), a["best_epoch"].copy()
        history.stopped_epoch, history.best_model = a["stopped_epoch"].copy(), self.best_model()
        return history


# ----------------------------------------------------------------------------- the epochs


class _Loop:
    """The epochs of one ``stacked_fit`` call: steps, validation, stopping, checkpoints, logs."""

    def __init__(self, **parts):
        self.__dict__.update(parts)  # run, validate, tracker, restore_best, manager, put, ...
        self.select = jax.jit(_select)

    def _tree(self, ts, best_state) -> dict:
        tree = {"train_state": ts, "tracker": self.tracker.arrays}
        return tree if best_state is None else {**tree, "best_state": best_state}

    def _resume(self, ts):
        """The stack (and its best states) to start from: ``ts`` or the latest checkpoint."""
        best_state = jax.tree.map(jnp.copy, ts) if self.restore_best else None
        if self.manager is None:
            return ts, best_state
        restored = self.manager.restore_latest(like=self._tree(ts, best_state))
        if restored is None:
            return ts, best_state
        tree = restored.tree
        self.tracker.load(tree["tracker"])
        ts = self.place(jax.tree.map(jnp.asarray, tree["train_state"]))
        if best_state is not None:
            best_state = self.place(jax.tree.map(jnp.asarray, tree["best_state"]))
        return ts, best_state

    def _train(self, ts, epoch: int, first: int):
        order = self.put(self.order(epoch))
        acc = self.put(jax.vmap(lambda _: logs_init(self.metrics))(jnp.arange(self.n)))
        active = self.put(jnp.asarray(self.tracker.arrays["active"]))
        for begin in range(first, self.steps, self.k):
            k = min(self.k, self.steps - begin)
            ts, acc, active = self.run(ts, acc, active, self.data, order, begin, k)
        self.tracker.halted(epoch, np.asarray(active))
        acc = jax.device_get(acc)
        return ts, [logs_compute(self.metrics, model_at(acc, i)) for i in range(self.n)]

    def fit(self, ts):
        history = StackedHistory()
        ts, best_state = self._resume(ts)
        start, skip = divmod(int(np.max(ts.step)), self.steps)
        for epoch in range(start, self.epochs):
            trained = self.tracker.arrays["active"].copy()
            if not trained.any():
                break
            ts, per_model = self._train(ts, epoch, skip if epoch == start else 0)
            if self.validate is not None:
                val = self.validate(ts)
                per_model = [
                    {**t, **{f"val_{k}": v for k, v in e.items()}} for t, e in zip(per_model, val)
                ]
            logs = {**_columns(per_model), "active": trained}
            improved = self.tracker.update(epoch, logs[self.tracker.monitor], trained)
            if best_state is not None:
                best_state = self.select(self.put(jnp.asarray(improved)), ts, best_state)
            history.append(epoch, logs)
            self._save(ts, best_state, logs)
            self._print(epoch, logs)
        if best_state is not None:
            found = self.tracker.arrays["best_epoch"] >= 0
            ts = self.select(self.put(jnp.asarray(found)), best_state, ts)
        return ts, self.tracker.finish(history)

    def _save(self, ts, best_state, logs: dict) -> None:
        if self.manager is not None:
            means = {k[: -len("_mean")]: v for k, v in logs.items() if k.endswith("_mean")}
            self.manager.save(int(np.max(ts.step)), self._tree(ts, best_state), metrics=means)

    def _print(self, epoch: int, logs: dict) -> None:
        if self.verbose:
            shown = "  ".join(
                f"{k} {logs[k + '_mean']:.4g}±{logs[k + '_std']:.2g}"
                for k in logs
                if f"{k}_mean" in logs
            )
            active = int(np.sum(self.tracker.arrays["active"]))
            print(f"epoch {epoch + 1}/{self.epochs}  {shown}  active {active}/{self.n}")


# ----------------------------------------------------------------------------- stacked_fit


def _placers(mesh):
    """``(put, place)``: replicate a value / split a stack over the mesh (identity without)."""
    if mesh is None:
        return jax.device_put, lambda tree: tree
    mesh = distributed.auto_mesh(mesh)
    replicated = NamedSharding(mesh, P())
    return (lambda tree: distributed.place(tree, replicated)), (lambda t: shard_models(t, mesh))


def _manager(checkpoint):
    if checkpoint is None or hasattr(checkpoint, "save"):
        return checkpoint
    from funcnet.checkpoint import CheckpointManager

    return CheckpointManager(checkpoint)


def _start_stack(model, optimizer, model_keys, data, batch_size: int, hparams, place):
    example = jax.tree.map(
        lambda a: jax.ShapeDtypeStruct((batch_size, *a.shape[1:]), a.dtype), data[0]
    )
    ts = stack_init(model, optimizer, model_keys, example)
    if hparams is not None:
        ts = with_hparams(ts, hparams, where=_WHERE)
    return place(ts)


def stacked_fit(
    model: Layer | Callable,
    optimizer: optax.GradientTransformation,
    loss: str | Callable,
    train_data,
    *,
    num_models: int | None = None,
    keys=None,
    hparams: Mapping[str, Any] | None = None,
    epochs: int = 1,
    batch_size: int = 32,
    validation_data=None,
    metrics=None,
    data_order: str = "shared",
    early_stopping: Mapping[str, Any] | EarlyStopping | None = None,
    key: jax.Array | None = None,
    steps_per_execution: int = 1,
    checkpoint=None,
    mesh: jax.sharding.Mesh | None = None,
    verbose: int = 0,
    **step_options,
) -> tuple[TrainState, StackedHistory]:
    """:func:`~funcnet.fit` for N models in one compiled program; model ``i`` is a ``fit`` run.

    Args:
        model, optimizer, loss, metrics, epochs, batch_size, steps_per_execution:
            as :func:`~funcnet.fit` (arrays only: ``n // batch_size`` steps per epoch).
        train_data: arrays ``(x, y)`` or ``(x, y, weights)``.
        num_models: N models, model ``i`` from ``fold_in(key, i)``; or
        keys: one key per model (a list of int seeds or an array of keys, as
            :func:`stack_init` takes). Give exactly one of the two.
        hparams: ``{name: N values}`` of an ``optax.inject_hyperparams``
            optimizer's hyperparameters (:func:`with_hparams`).
        validation_data: arrays or batches, evaluated for every model after every epoch.
        data_order: ``"shared"``: one shuffle per epoch, ``fit(key=key)``'s, for
            all; ``"per_model"``: model ``i`` gets ``fit(key=key_i)``'s, so it
            ends as ``fit(model, ..., key=key_i)`` would, up to float rounding;
            ``"bootstrap"``: rows drawn with replacement per model and epoch (bagging).
        early_stopping: per-model early stopping, :class:`EarlyStopping`'s
            arguments as a dict (``monitor``, ``patience``, ``min_delta``,
            ``mode``, ``restore_best``; same defaults and patience convention)
            or an ``EarlyStopping``. A stopped model keeps its state while the
            others train; the run ends when all stopped. ``restore_best``: each
            model ends with its own best epoch's state.
        key: the run's key (default ``jax.random.key(0)``).
        checkpoint: a :class:`~funcnet.checkpoint.CheckpointManager` or a
            directory. Every epoch saves ``{"train_state": stack, "tracker":
            per-model stopping arrays[, "best_state": ...]}`` with the epochs'
            means as metrics; a call with the same arguments resumes from the
            latest, as ``fit`` does.
        mesh: a mesh with a ``"models"`` axis: the models are split over it
            (:func:`shard_models`; N a multiple of its size), the data replicated.
        verbose: 0 silent, 1 a line per epoch (mean ± std of each log).
        **step_options: as ``fit``'s (:func:`~funcnet.training.options.fit_options`):
            ``policy``/``compute_dtype`` wrap the model, ``clip_norm``,
            ``freeze``, ``nan_guard="skip"`` and dynamic loss scaling go into
            the optimizer, the rest to :func:`stacked_train_step`.

    Returns:
        ``(train_state, history)``: the stacked ``TrainState`` and a
        :class:`StackedHistory`: ``history[name]`` per epoch a ``(N,)`` array,
        ``history[name + "_mean"]`` / ``"_std"`` floats, ``history["active"]``;
        ``history.best_model`` (by the early-stopping monitor, else ``val_loss``
        with validation data, else ``loss``, at each model's best epoch):
        ``fn.model_at(train_state, history.best_model)``. A model whose
        parameters turn NaN/Inf keeps its last finite state and stops (a warning).

    Raises:
        ValueError: both or neither of ``num_models``/``keys``, ``hparams`` of
            the wrong length, an unknown ``data_order``, an ``early_stopping``
            monitor that is not logged, an iterable ``train_data``, bad data
            (as ``fit``).
    """
    _check_args(num_models, keys, data_order, batch_size, epochs, steps_per_execution)
    key = jax.random.key(0) if key is None else key
    model, optimizer, step_options = fit_options(model, optimizer, step_options, _WHERE)
    loss_fn, metrics = resolve_loss(loss, _WHERE), metric_dict(metrics)
    data, rows = _train_arrays(train_data, batch_check(model, loss_fn), batch_size)
    stop = _stopping(early_stopping, metrics, validation_data is not None)
    model_keys = _model_key_array(num_models, keys, key)
    put, place = _placers(mesh)
    ts = _start_stack(model, optimizer, model_keys, data, batch_size, hparams, place)
    n = int(model_keys.shape[0])
    options = dict(shared_batch=data_order == "shared", metrics=metrics, **step_options)
    step = stacked_train_step(model, loss_fn, optimizer, **options)
    monitor = stop.monitor if stop else ("val_loss" if validation_data is not None else "loss")
    validate = None
    if validation_data is not None:
        validate = _validator(model, loss_fn, metrics, validation_data, n, put)
    unroll = has_conv(model) and jax.default_backend() == "cpu"
    loop = _Loop(
        run=_runner(step, metrics, batch_size, unroll or 1),
        validate=validate,
        tracker=_Tracker(n, monitor, (stop or EarlyStopping(monitor)).mode, stop),
        restore_best=bool(stop and stop.restore_best),
        manager=_manager(checkpoint),
        put=put,
        place=place,
        order=lambda epoch: _epoch_order(data_order, key, model_keys, epoch, rows),
        data=put(data),
        n=n,
        steps=rows // batch_size,
        k=steps_per_execution,
        metrics=metrics,
        verbose=verbose,
        epochs=epochs,
    )
    ts, history = loop.fit(ts)
    return (ts if mesh is None else shard_models(ts, mesh)), history
