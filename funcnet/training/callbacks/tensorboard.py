"""The TensorBoard callback: scalars, histograms, images, the summary text and HParams."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np

from funcnet.training.callbacks import Callback
from funcnet.training.options import learning_rate_of

__all__ = ["TensorBoard"]


def _tensorboardx():
    """The ``tensorboardX`` module, or an ImportError that says how to install it."""
    try:
        import tensorboardX
    except ImportError as err:
        raise ImportError(
            "TensorBoard: the callback writes with `tensorboardX`, which is not installed; "
            "install it with `pip install 'funcnet[tensorboard]'` (or `pip install tensorboardX`)."
        ) from err
    return tensorboardX


def _params_table(params) -> str:
    """A text table of every parameter leaf: path, shape, dtype, size."""
    from funcnet.core import path_str
    from funcnet.summaries import param_count

    leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    rows = [
        (path_str(p), str(tuple(np.shape(v))), str(v.dtype), str(np.size(v))) for p, v in leaves
    ]
    rows.insert(0, ("path", "shape", "dtype", "size"))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    return "\n".join([*lines, "", f"params: {param_count(params)}"])


class TensorBoard(Callback):
    """Write the run to TensorBoard event files in ``log_dir`` (with ``tensorboardX``).

    Needs the optional ``tensorboardX`` package: ``pip install 'funcnet[tensorboard]'``;
    view the run with ``tensorboard --logdir <log_dir>``. What is written:

    - **Scalars**: every scalar of the epoch's logs (``loss``, metrics,
      ``val_*``, ``learning_rate`` when the optimizer is built with
      ``optax.inject_hyperparams``, ...) under its own name, at x = the epoch
      counted from 1 as in the printed logs (``x_axis="epoch"``) or at x = the
      number of optimizer steps done (``x_axis="step"``, to compare runs with
      different batch sizes).
    - **Histograms** (``histograms=True`` or every ``histograms`` epochs): each
      parameter leaf under ``params/<path>`` (paths as
      :func:`funcnet.core.path_str` spells them).
    - **Text** ``model/summary``: the :func:`funcnet.summary` table when
      ``model`` and ``inputs`` are given, else a table of the parameter
      leaves (path, shape, dtype, size), written at the start of training.
    - **Images** (``images=fn``): ``fn(train_state)`` is called at the end of
      every epoch (or every ``images_every`` epochs) on the host and returns
      ``{tag: image}``; each image is ``(H, W)`` (grey), ``(H, W, C)`` or a
      batch ``(N, H, W, C)`` with ``C`` 1, 3 or 4, floats in ``[0, 1]``
      (clipped) or ``uint8``. E.g. saliency maps of fixed examples
      from :mod:`funcnet.explain`, or a generative model's samples.
    - **HParams**: with ``hparams={"lr": 1e-3, ...}``, the run's
      hyperparameters for TensorBoard's HParams tab, written at the end of
      training with the names of the final logged values as its metrics.
    - With ``update_every=n``: every ``n`` steps (checked after each compiled
      call, so at multiples of ``steps_per_execution``) the learning rate (when
      injected) as ``step/learning_rate`` at x = the step, and the file is
      flushed so a running TensorBoard sees it. The loss is per epoch only:
      callbacks do not see the step losses.

    Args:
        log_dir: the run's directory (created if needed).
        histograms: ``False``, ``True`` (every epoch) or a number of epochs.
        hparams: hyperparameter names to ``bool``, ``int``, ``float`` or ``str`` values.
        summary: write the model summary text.
        update_every: steps between step-level writes and flushes (``None``: only at epoch end).
        model: the model, for the :func:`funcnet.summary` table (with ``inputs``).
        inputs: example inputs or their ``jax.ShapeDtypeStruct`` for that table.
        x_axis: ``"epoch"`` (1-based) or ``"step"``.
        images: ``train_state -> {tag: image}`` (see above), or ``None``.
        images_every: epochs between image writes.

    If ``fit`` raises, the event file is flushed and closed (``on_exception``).

    Examples:
        Saliency maps of four fixed digits, logged every epoch (needs tensorboardX)::

            def saliency(ts):
                maps = fn.explain.gradients(model, ts.params, ts.state, x[:4], y[:4])
                m = jnp.abs(maps)[..., None]  # (4, 8, 8, 1)
                return {"saliency": m / m.max()}

            fn.fit(..., callbacks=[TensorBoard("runs/1", images=saliency)])

    Raises:
        ImportError: when ``tensorboardX`` is not installed.
        TypeError: for a hyperparameter value of another type.
        ValueError: for a bad ``histograms``, ``update_every`` or ``x_axis``,
            or ``model`` without ``inputs``.
    """

    def __init__(
        self,
        log_dir: str | os.PathLike,
        *,
        histograms: bool | int = False,
        hparams: Mapping[str, bool | int | float | str] | None = None,
        summary: bool = True,
        update_every: int | None = None,
        model: Any = None,
        inputs: Any = None,
        x_axis: str = "epoch",
        images: Callable[[Any], Mapping[str, Any]] | None = None,
        images_every: int = 1,
    ):
        self._tbx = _tensorboardx()
        if images is not None and not callable(images):
            raise TypeError(
                f"TensorBoard: `images` must be a function train_state -> {{tag: image}}, got "
                f"{type(images).__name__}."
            )
        if not isinstance(images_every, int) or images_every < 1:
            raise ValueError(
                f"TensorBoard: `images_every` must be a number of epochs >= 1, got "
                f"{images_every!r}."
            )
        every = int(histograms) if isinstance(histograms, bool) else histograms
        if not isinstance(every, int) or every < 0:
            raise ValueError(
                f"TensorBoard: `histograms` must be True, False or a number of epochs >= 1, "
                f"got {histograms!r}."
            )
        if update_every is not None and (not isinstance(update_every, int) or update_every < 1):
            raise ValueError(
                f"TensorBoard: `update_every` must be a number of steps >= 1 or None, "
                f"got {update_every!r}."
            )
        if x_axis not in ("epoch", "step"):
            raise ValueError(f"TensorBoard: `x_axis` must be 'epoch' or 'step', got {x_axis!r}.")
        if model is not None and inputs is None:
            raise ValueError(
                "TensorBoard: `model` needs `inputs` for its summary table, e.g. "
                "`TensorBoard(log_dir, model=model, inputs=x[:1])`."
            )
        for name, value in (hparams or {}).items():
            if not isinstance(value, (bool, int, float, str)):
                raise TypeError(
                    f"TensorBoard: hyperparameter {name!r} is a {type(value).__name__}; values "
                    f"must be bool, int, float or str (pass e.g. `str(value)`)."
                )
        self.log_dir, self.histogram_every = os.fspath(log_dir), every
        self.hparams = dict(hparams or {})
        self.summary, self.update_every, self.x_axis = summary, update_every, x_axis
        self.model, self.inputs = model, inputs
        self.images, self.images_every = images, images_every
        self.writer = None
        self._logs: dict = {}
        self._last_write = 0

    def on_train_begin(self, train_state):
        self.writer = self._tbx.SummaryWriter(logdir=self.log_dir)
        self._logs, self._last_write = {}, int(train_state.step) if train_state is not None else 0
        if self.summary:
            text = self._summary_text(train_state)
            if text is not None:
                indented = "\n".join("    " + line for line in text.splitlines())
                self.writer.add_text("model/summary", indented, 0)

    def _summary_text(self, train_state) -> str | None:
        if self.model is not None:
            from funcnet.summaries import summary

            return str(summary(self.model, self.inputs, print_fn=None, flops=False))
        if train_state is None:
            return None
        return _params_table(train_state.params)

    def on_epoch_end(self, epoch, logs, train_state):
        x = epoch + 1 if self.x_axis == "epoch" else int(train_state.step)
        for k, v in logs.items():
            if np.ndim(v) == 0:
                self.writer.add_scalar(k, float(v), x)
                self._logs[k] = float(v)
        if self.histogram_every and (epoch + 1) % self.histogram_every == 0:
            from funcnet.core import path_str

            params = jax.device_get(train_state.params)
            for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
                self.writer.add_histogram(f"params/{path_str(path)}", np.asarray(leaf), x)
        if self.images is not None and (epoch + 1) % self.images_every == 0:
            self._write_images(train_state, x)
        self.writer.flush()

    def _write_images(self, train_state, x: int) -> None:
        out = self.images(train_state)
        if not isinstance(out, Mapping):
            raise TypeError(
                "TensorBoard: `images` must return a dict {tag: image}, got "
                f"{type(out).__name__}."
            )
        for tag, image in out.items():
            batch = _image_batch(tag, image)
            self.writer.add_images(tag, batch, x, dataformats="NHWC")

    def on_steps_end(self, step, train_state):
        if self.update_every is None or step - self._last_write < self.update_every:
            return
        self._last_write = step
        lr = learning_rate_of(train_state.opt_state)
        if lr is not None:
            self.writer.add_scalar("step/learning_rate", lr, step)
        self.writer.flush()

    def on_train_end(self, train_state):
        if self.hparams:
            from tensorboardX.summary import hparams

            experiment, start, end = hparams(self.hparams, self._logs)
            for summary in (experiment, start, end):
                self.writer.file_writer.add_summary(summary)
        self.writer.close()

    def on_exception(self, error):
        if self.writer is not None:
            self.writer.close()  # flushes what was written before the error


def _image_batch(tag: str, image) -> np.ndarray:
    """``image`` as an ``(N, H, W, C)`` batch TensorBoard can show: uint8, or floats clipped
    to [0, 1]; a clear error for other shapes."""
    a = np.asarray(jax.device_get(image))
    if a.ndim == 2:
        a = a[None, :, :, None]
    elif a.ndim == 3:
        a = a[None]
    if a.ndim != 4 or a.shape[-1] not in (1, 3, 4):
        raise ValueError(
            f"TensorBoard: image {tag!r} has shape {np.shape(image)}; expected (H, W), "
            "(H, W, C) or (N, H, W, C) with C 1 (grey), 3 (RGB) or 4 (RGBA); move the channel "
            "axis last (e.g. `jnp.moveaxis(x, 1, -1)`)."
        )
    if a.dtype == np.uint8:
        return a
    if not np.issubdtype(a.dtype, np.floating):
        raise TypeError(
            f"TensorBoard: image {tag!r} has dtype {a.dtype}; use floats in [0, 1] or uint8."
        )
    return np.clip(np.nan_to_num(a.astype(np.float32)), 0.0, 1.0)
