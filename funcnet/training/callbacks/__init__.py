"""Callbacks for :func:`funcnet.fit`: host-side hooks called between epochs.

A callback is any object with some of these methods (all optional):

- ``on_train_begin(train_state) -> TrainState | None``
- ``on_epoch_end(epoch, logs, train_state) -> TrainState | None``: ``logs`` is
  the epoch's dict of floats (``loss``, metrics, ``val_*``, ``learning_rate``);
  returning a ``TrainState`` replaces the one training continues from (this is
  how a learning rate is changed or best weights restored), wherever its
  arrays live: ``fit`` places it as it keeps its own (on the mesh, with the
  state's shardings). This is also the hook for checkpointing: it sees the
  whole ``TrainState``.
- ``on_steps_end(step, train_state)``: after every compiled call of ``fit`` (every
  ``steps_per_execution`` steps); the return value is ignored.
- ``on_train_end(train_state) -> TrainState | None``
- ``on_exception(error)``: when ``fit`` raises (a failing step, a diverged
  loss, ``KeyboardInterrupt``) instead of reaching ``on_train_end``; for
  closing files and threads (as PyTorch Lightning's ``on_exception``). Its
  return value is ignored, and the error is raised on after every callback's
  ``on_exception`` ran.

and may set ``self.stop_training = True`` to end training after this epoch.
Subclassing :class:`Callback` is optional.
"""

from __future__ import annotations

import csv
import json
import math
import os
import queue
import threading
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

__all__ = [
    "Callback",
    "call_exception_hooks",
    "call_hooks",
    "CSVLogger",
    "EarlyStopping",
    "JSONLogger",
    "JSONLLogger",
    "LambdaCallback",
    "LearningRateScheduler",
    "TensorBoard",
]


def call_hooks(callbacks, name: str, train_state, *args):
    """Call hook ``name`` of every callback in order; return the ``TrainState`` to go on with.

    ``on_steps_end`` gets ``(*args, train_state)`` and its result is ignored;
    the other hooks may return a new ``TrainState`` (``None`` keeps it), which
    the next callback sees.

    Raises:
        TypeError: when a hook returns something other than None or a TrainState.
    """
    for cb in callbacks:
        hook = getattr(cb, name, None)
        out = hook(*args, train_state) if hook is not None else None
        if out is None or name == "on_steps_end":
            continue
        if not isinstance(out, tuple) or not hasattr(out, "opt_state"):
            raise TypeError(
                f"fit: callback {type(cb).__name__}.{name} returned {type(out).__name__}; it must "
                "return None or a TrainState (which replaces the training state)."
            )
        train_state = out
    return train_state


class Callback:
    """Base class with no-op hooks; see the module docstring for the protocol."""

    stop_training: bool = False

    def on_train_begin(self, train_state):
        return None

    def on_epoch_end(self, epoch: int, logs: dict, train_state):
        return None

    def on_steps_end(self, step: int, train_state):
        return None

    def on_train_end(self, train_state):
        return None

    def on_exception(self, error: BaseException):
        return None


def call_exception_hooks(callbacks, error: BaseException) -> None:
    """Call every callback's ``on_exception(error)``; an error raised by one of
    them is attached to ``error`` as a note and the others still run."""
    for cb in callbacks:
        hook = getattr(cb, "on_exception", None)
        if hook is None:
            continue
        try:
            hook(error)
        except Exception as inner:  # never hide the training error behind a cleanup error
            error.add_note(f"(also, callback {type(cb).__name__}.on_exception failed: {inner!r})")


class EarlyStopping(Callback):
    """Stop when a monitored value has stopped improving.

    Args:
        monitor: the log key to watch (``"val_loss"``, ``"val_accuracy"``, ...).
        patience: epochs without improvement before stopping.
        min_delta: an improvement must be larger than this (an equal or NaN
            value is never one).
        mode: ``"min"``, ``"max"`` or ``"auto"`` (``max`` for names containing
            accuracy, precision, recall, f1, r2 or auc; else ``min``).
        restore_best: at the end of training, return the ``TrainState`` of the
            best epoch (kept on the host).

    Attributes:
        best, best_epoch, stopped_epoch: what happened (``stopped_epoch`` is
        ``None`` when training was not stopped early).

    Examples:
        >>> stop = EarlyStopping("val_loss", patience=1)
        >>> for epoch, v in enumerate([1.0, 0.5, 0.6, 0.7]):
        ...     _ = stop.on_epoch_end(epoch, {"val_loss": v}, None)
        ...     if stop.stop_training:
        ...         break
        >>> stop.best, stop.best_epoch, stop.stopped_epoch
        (0.5, 1, 3)
    """

    def __init__(
        self,
        monitor: str = "val_loss",
        *,
        patience: int = 0,
        min_delta: float = 0.0,
        mode: str = "auto",
        restore_best: bool = False,
    ):
        if mode not in ("min", "max", "auto"):
            raise ValueError(f"EarlyStopping: `mode` must be 'min', 'max' or 'auto', got {mode!r}.")
        if patience < 0 or min_delta < 0:
            raise ValueError(
                f"EarlyStopping: `patience` and `min_delta` must be >= 0, got {patience} and "
                f"{min_delta}."
            )
        if mode == "auto":
            bigger = ("acc", "precision", "recall", "f1", "r2", "auc")
            mode = "max" if any(b in monitor.lower() for b in bigger) else "min"
        self.monitor, self.patience, self.min_delta = monitor, patience, min_delta
        self.mode, self.restore_best = mode, restore_best
        self.on_train_begin(None)

    def on_train_begin(self, train_state):
        """Start fresh, so that one instance can serve several ``fit`` calls (as in Keras)."""
        self.best = math.inf if self.mode == "min" else -math.inf
        self.best_epoch, self.stopped_epoch, self.wait = None, None, 0
        self.best_state = None
        self.stop_training = False

    def _improved(self, value: float) -> bool:
        if self.mode == "min":
            return value < self.best - self.min_delta
        return value > self.best + self.min_delta

    def on_epoch_end(self, epoch, logs, train_state):
        if self.monitor not in logs:
            raise KeyError(
                f"EarlyStopping: monitored value {self.monitor!r} is not in the logs "
                f"{sorted(logs)}; monitor one of them (validation values need "
                "`validation_data` or `validation_split`)."
            )
        value = float(logs[self.monitor])
        if self._improved(value):
            self.best, self.best_epoch, self.wait = value, epoch, 0
            if self.restore_best and train_state is not None:
                self.best_state = jax.device_get(train_state)
        else:
            self.wait += 1
            if self.wait > self.patience:
                self.stop_training = True
                self.stopped_epoch = epoch
        return None

    def on_train_end(self, train_state):
        if self.restore_best and self.best_state is not None:
            return jax.tree.map(jax.numpy.asarray, self.best_state)
        return None


class LearningRateScheduler(Callback):
    """Set the learning rate at the end of each epoch: ``lr = schedule(epoch + 1, lr)``.

    The optimizer must expose its learning rate as a hyperparameter:
    build it with ``optax.inject_hyperparams(optax.adam)(learning_rate=1e-3)``.
    (A per-step optax schedule passed as ``learning_rate`` needs no callback;
    with ``inject_hyperparams`` its current value also shows in the logs.)

    Examples:
        >>> import optax, jax.numpy as jnp
        >>> opt = optax.inject_hyperparams(optax.sgd)(learning_rate=0.1)
        >>> from funcnet.training import TrainState
        >>> ts = TrainState(jnp.array(0), {"w": jnp.ones(2)}, (), opt.init({"w": jnp.ones(2)}),
        ...                 None)
        >>> ts = LearningRateScheduler(lambda epoch, lr: lr / 2).on_epoch_end(0, {}, ts)
        >>> float(ts.opt_state.hyperparams["learning_rate"])
        0.05
    """

    def __init__(self, schedule: Callable[[int, float], float]):
        if not callable(schedule):
            raise TypeError("LearningRateScheduler: `schedule(epoch, lr) -> lr` must be callable.")
        self.schedule = schedule

    def on_epoch_end(self, epoch, logs, train_state):
        hyper = getattr(train_state.opt_state, "hyperparams", None)
        if not isinstance(hyper, dict) or "learning_rate" not in hyper:
            raise TypeError(
                "LearningRateScheduler: the optimizer state has no `hyperparams"
                "['learning_rate']`; build the optimizer with "
                "`optax.inject_hyperparams(optax.adam)(learning_rate=1e-3)`."
            )
        old = hyper["learning_rate"]
        new = self.schedule(epoch + 1, float(old))
        hyper = {**hyper, "learning_rate": jax.numpy.asarray(new, old.dtype)}
        return train_state._replace(opt_state=train_state.opt_state._replace(hyperparams=hyper))


def _plain(logs: dict) -> dict:
    arrays = (np.ndarray, np.generic, jax.Array)  # numpy scalars and jax arrays too
    return {k: (v.tolist() if isinstance(v, arrays) else v) for k, v in logs.items()}


class CSVLogger(Callback):
    """Write one CSV row per epoch (``epoch`` and every scalar log) to ``path``.

    The file is rewritten at the start of training unless ``append=True``;
    rows are flushed as they are written.
    """

    def __init__(self, path: str | os.PathLike, *, append: bool = False):
        self.path, self.append = os.fspath(path), append
        self._keys: list[str] | None = None

    def on_train_begin(self, train_state):
        if not self.append:
            open(self.path, "w").close()
        self._keys = None

    def on_epoch_end(self, epoch, logs, train_state):
        scalars = {k: v for k, v in logs.items() if np.ndim(v) == 0}
        new_file = not os.path.exists(self.path) or os.path.getsize(self.path) == 0
        if self._keys is None:
            self._keys = ["epoch", *scalars]
        with open(self.path, "a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=self._keys, extrasaction="ignore")
            if new_file:
                writer.writeheader()
            writer.writerow({"epoch": epoch, **scalars})


class JSONLogger(Callback):
    """Append one JSON object per epoch (JSON lines) to ``path``; arrays become lists."""

    def __init__(self, path: str | os.PathLike, *, append: bool = False):
        self.path, self.append = os.fspath(path), append

    def on_train_begin(self, train_state):
        if not self.append:
            open(self.path, "w").close()

    def on_epoch_end(self, epoch, logs, train_state):
        with open(self.path, "a") as f:
            f.write(json.dumps({"epoch": epoch, **_plain(logs)}) + "\n")


class JSONLLogger(Callback):
    """Like :class:`JSONLogger` (one JSON object per epoch), but written on a background thread.

    ``on_epoch_end`` only turns the logs into a line and puts it on a queue; a
    thread appends the lines to ``path`` and flushes each one, so a slow disk
    (a network file system) does not hold up training. ``on_train_end`` waits
    until every line is written; an error of the writing thread is raised
    there (or at the next epoch end).

    Examples:
        >>> import os, tempfile
        >>> path = os.path.join(tempfile.mkdtemp(), "log.jsonl")
        >>> log = JSONLLogger(path)
        >>> log.on_train_begin(None)
        >>> log.on_epoch_end(0, {"loss": 0.5}, None)
        >>> log.on_train_end(None)
        >>> open(path).read()
        '{"epoch": 0, "loss": 0.5}\\n'
    """

    def __init__(self, path: str | os.PathLike, *, append: bool = False):
        self.path, self.append = os.fspath(path), append
        self._queue: queue.Queue | None = None
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def on_train_begin(self, train_state):
        self._finish()  # a previous run's thread, if it was left running
        if not self.append:
            open(self.path, "w").close()
        self._queue, self._error = queue.Queue(), None
        self._thread = threading.Thread(target=self._drain, name="JSONLLogger", daemon=True)
        self._thread.start()

    def _write(self, f, line: str) -> None:
        f.write(line)
        f.flush()

    def _drain(self) -> None:
        try:
            with open(self.path, "a") as f:
                while (line := self._queue.get()) is not None:
                    self._write(f, line)
        except BaseException as err:  # kept for the training thread to raise
            self._error = err

    def _raise_error(self) -> None:
        if self._error is not None:
            err, self._error = self._error, None
            raise OSError(f"JSONLLogger: writing {self.path!r} failed: {err}") from err

    def on_epoch_end(self, epoch, logs, train_state):
        self._raise_error()
        if self._queue is None:
            raise RuntimeError(
                "JSONLLogger: `on_train_begin` must be called before `on_epoch_end`."
            )
        self._queue.put(json.dumps({"epoch": epoch, **_plain(logs)}) + "\n")

    def _finish(self) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None

    def on_train_end(self, train_state):
        self._finish()
        self._raise_error()

    def on_exception(self, error):
        self._finish()  # the lines of the epochs that ran are written; a write error is dropped


class LambdaCallback(Callback):
    """A callback made of plain functions: ``LambdaCallback(on_epoch_end=lambda e, logs, ts: ...)``.

    Each given function has the signature of the hook it replaces; what it
    returns is used as that hook's result (``None`` or a ``TrainState``).
    """

    def __init__(
        self,
        *,
        on_train_begin: Callable[[Any], Any] | None = None,
        on_epoch_end: Callable[[int, dict, Any], Any] | None = None,
        on_train_end: Callable[[Any], Any] | None = None,
    ):
        for name, f in (
            ("on_train_begin", on_train_begin),
            ("on_epoch_end", on_epoch_end),
            ("on_train_end", on_train_end),
        ):
            if f is not None:
                if not callable(f):
                    raise TypeError(f"LambdaCallback: `{name}` must be callable.")
                setattr(self, name, f)


from funcnet.training.callbacks.tensorboard import TensorBoard  # noqa: E402 (subclasses Callback)
