"""``fit`` / ``evaluate`` / ``predict``: the Keras-like loop on top of the pure step.

For data given as arrays (``(x, y)`` or ``(x, y, weights)``, each a numpy or
JAX array or a pytree of them) the data is placed on the device once, each
epoch is shuffled with ``jax.random.permutation``, batches are gathered inside
the compiled step, and ``steps_per_execution`` steps run as one ``lax.scan``
call, so Python dispatch is paid once per K steps. Data given as an iterable
of batches runs one compiled step per batch.

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
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from funcnet import distributed
from funcnet import losses as losses_lib
from funcnet import metrics as metrics_lib
from funcnet.core import Layer, as_layer, output_spec, spec_of
from funcnet.train import TrainState, _resolve_loss, eval_step, predict_step, train_step

__all__ = ["History", "evaluate", "fit", "predict"]


class History:
    """Per-epoch logs of a :func:`fit` run: ``history["val_loss"]`` is a list, one per epoch.

    Attributes:
        history: ``{name: [value per epoch]}``.
        epoch: the epoch numbers.
    """

    def __init__(self):
        self.history: dict[str, list] = {}
        self.epoch: list[int] = []

    def append(self, epoch: int, logs: Mapping[str, Any]) -> None:
        self.epoch.append(epoch)
        for k, v in logs.items():
            self.history.setdefault(k, []).append(v)

    def __getitem__(self, key: str) -> list:
        return self.history[key]

    def __repr__(self) -> str:
        last = {k: v[-1] for k, v in self.history.items()}
        return f"History(epochs={len(self.epoch)}, last={last})"

    def plot(self, path: str, keys: Sequence[str] | None = None) -> str:
        """Plot the curves (train and ``val_`` on one axis per quantity) to a PNG; needs matplotlib.

        Returns:
            ``path``.
        """
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError as err:  # pragma: no cover - depends on the environment
            raise ImportError("History.plot needs matplotlib: `pip install matplotlib`.") from err
        names = [k for k in (keys or self.history) if not k.startswith("val_")]
        names = [k for k in names if np.ndim(self.history[k][0]) == 0]
        fig, axes = plt.subplots(1, len(names), figsize=(4 * len(names), 3), squeeze=False)
        for ax, name in zip(axes[0], names):
            ax.plot(self.epoch, self.history[name], label=name)
            if "val_" + name in self.history:
                ax.plot(self.epoch, self.history["val_" + name], label="val_" + name)
            ax.set_xlabel("epoch")
            ax.set_title(name)
            ax.legend()
        fig.tight_layout()
        fig.savefig(path)
        plt.close(fig)
        return path


# ----------------------------------------------------------------------------- data checks


def _is_array(a) -> bool:
    return isinstance(a, (np.ndarray, jax.Array)) or (
        hasattr(a, "shape") and hasattr(a, "dtype") and hasattr(a, "__array__")
    )


def _in_memory(data) -> bool:
    return (
        isinstance(data, tuple)
        and len(data) in (2, 3)
        and all(_is_array(leaf) for leaf in jax.tree.leaves(data))
        and len(jax.tree.leaves(data)) > 0
    )


def _check_arrays(data, where: str):
    """``data`` as ``(x, y, w_or_None)`` host numpy trees; clear errors for bad input."""
    x, y, *rest = data
    w = rest[0] if rest else None
    leaves = jax.tree_util.tree_flatten_with_path({"x": x, "y": y, "weights": w})[0]
    lengths = {}
    for path, leaf in leaves:
        name = jax.tree_util.keystr(path)
        if np.ndim(leaf) == 0:
            raise ValueError(
                f"{where}: {name} is a scalar; every array needs a leading batch axis."
            )
        lengths[name] = np.shape(leaf)[0]
    if len(set(lengths.values())) > 1:
        raise ValueError(
            f"{where}: the arrays have different numbers of examples: {lengths}. x, y (and "
            "weights) must have the same length along axis 0."
        )
    n = next(iter(lengths.values()))
    if n == 0:
        raise ValueError(f"{where}: the dataset is empty (0 examples).")
    for path, leaf in leaves:
        a = np.asarray(leaf)
        if np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.complexfloating):
            bad = ~np.isfinite(a.reshape(n, -1)).all(1)
            if bad.any():
                rows = np.flatnonzero(bad)
                raise ValueError(
                    f"{where}: {jax.tree_util.keystr(path)} contains NaN or Inf in {len(rows)} "
                    f"example(s) (first at index {rows[0]}). Drop or impute them first (see "
                    "funcnet.data), training on them would silently corrupt the model."
                )
    return x, y, w, n


def _check_labels(model, loss_fn, x, y, where: str) -> None:
    """Integer labels for a sparse loss must index the model's outputs."""
    sparse = (losses_lib.sparse_categorical_cross_entropy,)
    if loss_fn not in sparse or not _is_array(y):
        return
    y = np.asarray(y)
    if not np.issubdtype(y.dtype, np.integer):
        return
    out = output_spec(
        model, jax.tree.map(lambda a: jax.ShapeDtypeStruct((1, *a.shape[1:]), a.dtype), x)
    )
    if not isinstance(out, jax.ShapeDtypeStruct) or not out.shape:
        return
    classes = out.shape[-1]
    low, high = int(y.min()), int(y.max())
    if low < 0 or high >= classes:
        raise ValueError(
            f"{where}: labels must be in [0, {classes}) for a model with {classes} outputs, got "
            f"labels in [{low}, {high}]. Re-encode the labels (funcnet.data label encoding) or "
            "give the last layer as many outputs as there are classes."
        )


def _metric_dict(metrics) -> dict:
    if metrics is None:
        return {}
    if isinstance(metrics, Mapping):
        return {k: metrics_lib.get(m) for k, m in metrics.items()}
    if isinstance(metrics, (str, metrics_lib.Metric)):
        metrics = [metrics]
    out = {}
    for m in metrics:
        metric = metrics_lib.get(m)
        out[m if isinstance(m, str) else metric.name] = metric
    return out


def _take(tree, idx):
    return jax.tree.map(lambda a: jnp.take(a, idx, axis=0), tree)


def _has_conv(layer: Layer) -> bool:
    if layer.name.startswith(("Conv", "ConvTranspose")):
        return True
    children = layer.children.values() if isinstance(layer.children, Mapping) else layer.children
    return any(_has_conv(c) for c in children if isinstance(c, Layer))


# ----------------------------------------------------------------------------- accumulators


def _acc_init(metrics: dict) -> dict:
    return {
        "loss_total": jnp.zeros((), jnp.float32),
        "loss_count": jnp.zeros((), jnp.float32),
        "nonfinite_step": jnp.full((), -1, jnp.int32),
        "metrics": {k: m.init() for k, m in metrics.items()},
    }


def _acc_add(metrics: dict, acc: dict, logs: dict, weight, step=None) -> dict:
    loss = logs["loss"].astype(jnp.float32)
    weight = jnp.asarray(weight, jnp.float32)
    out = {
        "loss_total": acc["loss_total"] + jnp.where(weight > 0, loss * weight, 0.0),
        "loss_count": acc["loss_count"] + weight,
        "nonfinite_step": acc["nonfinite_step"],
        "metrics": {k: m.merge(acc["metrics"][k], logs[k]) for k, m in metrics.items()},
    }
    if step is not None:
        bad = logs["nonfinite"] if "nonfinite" in logs else ~jnp.isfinite(loss)
        first = (acc["nonfinite_step"] < 0) & bad
        out["nonfinite_step"] = jnp.where(first, step, acc["nonfinite_step"])
    return out


def _acc_compute(metrics: dict, acc: dict, with_loss: bool = True) -> dict:
    acc = jax.device_get(acc)
    logs = {}
    if with_loss:
        logs["loss"] = float(acc["loss_total"] / max(float(acc["loss_count"]), 1e-30))
    for k, m in metrics.items():
        value = np.asarray(m.compute(acc["metrics"][k]))
        logs[k] = float(value) if value.ndim == 0 else value
    return logs


# ----------------------------------------------------------------------------- evaluate


def _padded_batches(tree, n: int, batch_size: int, xp=jnp):
    """Pad the leaves to a multiple of ``batch_size``; reshape to ``(batches, batch_size, ...)``.

    ``xp``: ``jnp`` (on the device) or ``np`` (on the host, for placing on a mesh).
    """
    nb = math.ceil(n / batch_size)
    pad = nb * batch_size - n

    def fix(a):
        a = xp.asarray(a)
        if pad:
            a = xp.concatenate([a, xp.zeros((pad, *a.shape[1:]), a.dtype)])
        return a.reshape(nb, batch_size, *a.shape[1:])

    mask = xp.arange(nb * batch_size) < n
    return jax.tree.map(fix, tree), mask.reshape(nb, batch_size)


def _make_evaluator(model, loss_fn, metrics, batch_size, mesh=None):
    step = eval_step(model, loss_fn, metrics=metrics)

    def run(params, state, x, y, w, n_mask):
        def body(acc, inputs):
            xb, yb, wb, mb = inputs
            # the padding mask is boolean so that integer-counting metrics accept it
            if wb is None:
                weights = mb
            else:
                m = mb.reshape(mb.shape + (1,) * (wb.ndim - 1))
                weights = jnp.where(m, wb, jnp.zeros((), wb.dtype))
            logs = step(params, state, (xb, yb, weights))
            if loss_fn is None:
                logs["loss"] = jnp.zeros((), jnp.float32)
            return _acc_add(metrics, acc, logs, jnp.sum(weights.astype(jnp.float32))), None

        acc, _ = jax.lax.scan(body, _acc_init(metrics), (x, y, w, n_mask))
        return acc

    if mesh is not None:
        return _mesh_evaluator(run, batch_size, mesh)
    run = jax.jit(run)

    def evaluate_arrays(params, state, x, y, w, n):
        bs = min(batch_size, n)
        (xb, yb, wb), mask = _padded_batches((x, y, w), n, bs)
        return run(params, state, xb, yb, wb, mask)

    return evaluate_arrays


# ----------------------------------------------------------------------------- many devices


def _mesh_batch_size(batch_size: int, n: int, mesh) -> int:
    """``min(batch_size, n)`` rounded up to a multiple of the devices the batch is split over."""
    parts = distributed._batch_devices(mesh)
    return -(-min(batch_size, n) // parts) * parts


def _stacked_sharding(mesh) -> NamedSharding:
    """``(batches, batch, ...)`` arrays: the batch axis (1) split over the mesh's batch axes."""
    return NamedSharding(mesh, P(None, *distributed.batch_spec(mesh)))


def _mesh_evaluator(run, batch_size, mesh):
    run = jax.jit(run, out_shardings=NamedSharding(mesh, P()))

    def evaluate_arrays(params, state, x, y, w, n):
        bs = _mesh_batch_size(batch_size, n, mesh)
        data, mask = _padded_batches((x, y, w), n, bs, xp=np)
        xb, yb, wb, mask = jax.device_put((*data, mask), _stacked_sharding(mesh))
        params, state = distributed._on_mesh((params, state), mesh)
        return run(params, state, xb, yb, wb, mask)

    return evaluate_arrays


def _fit_mesh(mesh, param_sharding):
    """fit's internal mesh (Auto axes) after checking the arguments; None without a mesh."""
    if param_sharding not in ("replicated", "fsdp"):
        raise ValueError(
            f"fit: `param_sharding` must be 'replicated' or 'fsdp', got {param_sharding!r}."
        )
    if mesh is None:
        if param_sharding != "replicated":
            raise ValueError(
                f"fit: `param_sharding={param_sharding!r}` needs a `mesh`; pass e.g. "
                "`mesh=distributed.make_mesh(fsdp=4)`."
            )
        return None
    return distributed._auto_mesh(distributed._check_mesh(mesh, "fit"))


def _create_on_mesh(model, optimizer, key, example, mesh, param_sharding):
    """``TrainState.create`` compiled straight into its shardings (FSDP never holds it whole)."""
    impl = jax.random.key_impl(key)

    def create(key_data):
        return TrainState.create(
            model, optimizer, jax.random.wrap_key_data(key_data, impl=impl), example
        )

    key_data = np.asarray(jax.random.key_data(key))
    shardings = distributed.state_shardings(jax.eval_shape(create, key_data), mesh, param_sharding)
    return jax.jit(create, out_shardings=shardings)(key_data), shardings


def _shard_rows(tree, mesh):
    """Host arrays placed with their rows split over the mesh (padded to a multiple of it)."""
    parts = distributed._batch_devices(mesh)
    sharding = distributed.batch_sharding(mesh)

    def put(a):
        a = np.asarray(a)
        pad = -len(a) % parts
        if pad:
            a = np.concatenate([a, np.zeros((pad, *a.shape[1:]), a.dtype)])
        return jax.device_put(a, sharding)

    return jax.tree.map(put, tree)


def _pad_batch(batch, mesh):
    """An evaluation batch padded (weight 0) to a multiple of this process's batch devices."""
    x, y, *rest = batch
    w = rest[0] if rest else None
    parts = max(1, distributed._batch_devices(mesh) // jax.process_count())
    n = jax.tree.leaves(x)[0].shape[0]
    pad = -n % parts

    def fix(a):
        a = np.asarray(a)
        return np.concatenate([a, np.zeros((pad, *a.shape[1:]), a.dtype)]) if pad else a

    mask = np.arange(n + pad) < n
    if w is None:
        weights = mask
    else:
        w = np.asarray(w)
        weights = np.where(mask.reshape(mask.shape + (1,) * (w.ndim - 1)), fix(w), 0).astype(
            w.dtype
        )
    return (*jax.tree.map(fix, (x, y)), weights), mask


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
) -> dict:
    """Loss and metrics of the model (inference mode) over a whole dataset.

    ``data`` is ``(x, y)`` / ``(x, y, weights)`` arrays or an iterable of such
    batches. For arrays, the last partial batch is padded and masked, so every
    example counts exactly once and only one shape is compiled; metrics are
    streamed (a confusion matrix over the whole dataset, not a mean of batch
    ratios).

    With ``mesh`` (see :func:`funcnet.distributed.make_mesh`) every batch is
    split over the mesh's batch axes: for arrays the batch size is rounded up
    to a multiple of that device count (the padding is masked); batches of an
    iterable are this process's rows (padded and masked likewise) and are
    assembled into global arrays. The results equal those without a mesh.

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
    loss_fn = _resolve_loss(loss) if loss is not None else None
    metrics = _metric_dict(metrics)
    _check_batch_size(batch_size, "evaluate")
    if mesh is not None:
        mesh = distributed._auto_mesh(distributed._check_mesh(mesh, "evaluate"))
    if _in_memory(data):
        x, y, w, n = _check_arrays(data, "evaluate")
        acc = _make_evaluator(model, loss_fn, metrics, batch_size, mesh)(params, state, x, y, w, n)
    elif mesh is not None:
        step = jax.jit(
            eval_step(model, loss_fn, metrics=metrics), out_shardings=NamedSharding(mesh, P())
        )
        params, state = distributed._on_mesh((params, state), mesh)
        acc = distributed.place(_acc_init(metrics), NamedSharding(mesh, P()))
        for i, batch in enumerate(_iterate(data, "evaluate")):
            batch, mask = _pad_batch(batch, mesh)
            batch, mask = distributed._global_batch((batch, mask), mesh, "evaluate")
            logs = step(params, state, batch)
            if loss_fn is None:
                logs["loss"] = jnp.zeros((), jnp.float32)
            acc = _acc_add(metrics, acc, logs, jnp.sum(mask.astype(jnp.float32)))
            if i % 8 == 7:  # jax 0.10 on CPU can deadlock with many multi-device calls queued
                jax.block_until_ready(acc)
    else:
        step = jax.jit(eval_step(model, loss_fn, metrics=metrics))
        acc = _acc_init(metrics)
        for batch in _iterate(data, "evaluate"):
            logs = step(params, state, batch)
            if loss_fn is None:
                logs["loss"] = jnp.zeros((), jnp.float32)
            n_batch = jax.tree.leaves(batch[0])[0].shape[0]
            acc = _acc_add(metrics, acc, logs, n_batch)
    return _acc_compute(metrics, acc, with_loss=loss_fn is not None)


def predict(
    model: Layer | Callable,
    params,
    state,
    x,
    *,
    batch_size: int = 256,
    mesh: jax.sharding.Mesh | None = None,
):
    """The model's outputs (inference mode) for every example of ``x`` (arrays or a pytree).

    Runs in batches of ``batch_size`` (the last one padded, one compile) inside
    one compiled call. With ``mesh`` each batch is split over the mesh's batch
    axes (``batch_size`` rounded up to a multiple of their device count) and
    the outputs are returned replicated (with several processes, every process
    passes the same ``x`` and gets all outputs).

    Examples:
        >>> import jax, jax.numpy as jnp, numpy as np
        >>> from funcnet import Dense
        >>> params, state = Dense(3).init(jax.random.key(0), jnp.zeros((1, 2)))
        >>> predict(Dense(3), params, state, np.ones((10, 2), np.float32), batch_size=4).shape
        (10, 3)
    """
    model = as_layer(model)
    _check_batch_size(batch_size, "predict")
    n = jax.tree.leaves(x)[0].shape[0]
    fn_ = predict_step(model)
    if mesh is not None:
        user_mesh = distributed._check_mesh(mesh, "predict")
        mesh = distributed._auto_mesh(user_mesh)
        xb, _ = _padded_batches(x, n, _mesh_batch_size(batch_size, n, mesh), xp=np)
        xb = jax.device_put(xb, _stacked_sharding(mesh))
        params, state = distributed._on_mesh((params, state), mesh)

        def run_all(params, state, xb):
            out = jax.lax.map(lambda b: fn_(params, state, b), xb)
            return jax.tree.map(lambda a: a.reshape(-1, *a.shape[2:])[:n], out)

        out = jax.jit(run_all, out_shardings=NamedSharding(mesh, P()))(params, state, xb)
        if user_mesh is not mesh:  # on the caller's (Explicit) mesh
            out = distributed.place(out, NamedSharding(user_mesh, P()))
        return out
    bs = min(batch_size, n)
    xb, _ = _padded_batches(x, n, bs)

    @jax.jit
    def run(params, state, xb):
        return jax.lax.map(lambda b: fn_(params, state, b), xb)

    out = run(params, state, xb)
    return jax.tree.map(lambda a: a.reshape(-1, *a.shape[2:])[:n], out)


# ----------------------------------------------------------------------------- fit


def _check_batch_size(batch_size, where):
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"{where}: `batch_size` must be an int >= 1, got {batch_size!r}.")


def _iterate(data, where: str):
    """Batches of an iterable (a callable is called each time for a fresh iterator)."""
    it = data() if callable(data) else data
    if not isinstance(it, Iterable):
        raise TypeError(
            f"{where}: expected arrays `(x, y)` / `(x, y, weights)` or an iterable of such "
            f"batches, got {type(data).__name__}."
        )
    return iter(it)


def _split(data, fraction: float):
    """The last ``fraction`` of the examples as validation data (before any shuffling), as Keras."""
    x, y, w, n = _check_arrays(data, "fit")
    n_val = round(n * fraction)
    if not 0 < n_val < n:
        raise ValueError(
            f"fit: `validation_split={fraction}` of {n} examples leaves no training or no "
            "validation data; use a fraction in (0, 1) that keeps both non-empty."
        )

    def part(tree, sl):
        return None if tree is None else jax.tree.map(lambda a: a[sl], tree)

    train = (part(x, slice(0, n - n_val)), part(y, slice(0, n - n_val)))
    val = (part(x, slice(n - n_val, n)), part(y, slice(n - n_val, n)))
    if w is not None:
        train, val = (*train, part(w, slice(0, n - n_val))), (*val, part(w, slice(n - n_val, n)))
    return train, val


def _learning_rate(opt_state) -> float | None:
    """The current learning rate, when the optimizer was built with ``optax.inject_hyperparams``."""
    for node in jax.tree.leaves(
        opt_state, is_leaf=lambda s: hasattr(s, "hyperparams") and isinstance(s.hyperparams, dict)
    ):
        hyper = getattr(node, "hyperparams", None)
        if isinstance(hyper, dict) and "learning_rate" in hyper:
            return float(hyper["learning_rate"])
    return None


def _progress(total: int, epoch: int, epochs: int, verbose: int):
    if verbose != 1:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - tqdm is a dependency
        return None
    return tqdm(total=total, desc=f"epoch {epoch + 1}/{epochs}", unit="step", leave=False)


def _format(logs: dict) -> str:
    return "  ".join(f"{k} {v:.4g}" for k, v in logs.items() if np.ndim(v) == 0)


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
    param_sharding: str = "replicated",
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
        validation_split: instead, hold out this last fraction of the arrays.
        metrics: names or :class:`~funcnet.metrics.Metric`s (a list, or a dict
            name -> metric); streamed over the epoch.
        callbacks: objects with ``on_train_begin`` / ``on_epoch_end`` /
            ``on_train_end`` (see :mod:`funcnet.callbacks`).
        key: the run's key (default ``jax.random.key(0)``): it fixes the
            initialisation, the shuffling and dropout, so the same key and data
            give bit-identical results.
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
            ``steps_per_execution`` small (1-8) for convolutional models: the
            MNIST-1D CNN example trains fastest with 1.
        verbose: 0 silent, 1 a progress bar and a line per epoch, 2 a line per epoch.
        checkpoint: a :class:`funcnet.checkpoint.CheckpointManager` (or a
            directory for one). Training starts from its latest checkpoint when
            there is one, and saves at the end of every epoch (with the epoch's
            logs, for ``best_metric``) and every ``checkpoint_every`` steps. A
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
            ``param_sharding``) and the compiled step (also the on-device epoch
            and ``steps_per_execution`` fusion) averages the gradients over the
            devices, so the parameters equal those of a one-device run with the
            same ``batch_size`` (the global batch) up to float rounding.
            ``batch_size`` must be divisible by the number of devices the batch
            is split over. Arrays are stored with their rows split over the
            devices. BatchNorm needs no ``axis_name`` here: its statistics are
            those of the global batch. With several processes
            (:func:`funcnet.distributed.initialize`) every process passes the
            same arrays, or an iterable of its own rows of each global batch
            (:func:`funcnet.distributed.local_batches`).
        param_sharding: ``"replicated"`` (default) or ``"fsdp"``: params,
            model state and optimizer state split over the mesh's ``"fsdp"``
            axis (``"data"`` without one), each array along its largest
            divisible dimension (see :func:`funcnet.distributed.state_shardings`
            for the memory saved); the results equal the replicated ones.
        **step_options: passed to :func:`funcnet.train.train_step` (``l2``,
            ``clip_norm``, ``freeze``, ``accumulate_steps``, ``compute_dtype``, ...).

    Returns:
        ``(train_state, history)``.

    Raises:
        ValueError: for inconsistent or empty data, NaN/Inf in the arrays,
            labels out of range, bad arguments.
        FloatingPointError: when a step produced a NaN/Inf loss or gradient
            (the update was skipped; the message names the step).
    """
    model = as_layer(model)
    loss_fn = _resolve_loss(loss)
    metrics = _metric_dict(metrics)
    _check_batch_size(batch_size, "fit")
    for name, value, low in (
        ("epochs", epochs, 0),
        ("steps_per_execution", steps_per_execution, 1),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"fit: `{name}` must be an int >= {low}, got {value!r}.")
    if validation_split and validation_data is not None:
        raise ValueError("fit: give `validation_data` or `validation_split`, not both.")
    user_mesh, mesh = mesh, _fit_mesh(mesh, param_sharding)
    key = jax.random.key(0) if key is None else key
    step = train_step(model, loss_fn, optimizer, metrics=metrics, **step_options)

    in_memory = _in_memory(train_data)
    if validation_split:
        if not in_memory:
            raise ValueError("fit: `validation_split` needs arrays `(x, y)`, not an iterable.")
        train_data, validation_data = _split(train_data, validation_split)

    if in_memory:
        x, y, w, n = _check_arrays(train_data, "fit")
        _check_labels(model, loss_fn, x, y, "fit")
        if batch_size > n:
            raise ValueError(
                f"fit: `batch_size={batch_size}` is larger than the {n} training examples; use "
                f"a batch size <= {n}."
            )
        if mesh is not None:
            distributed._check_divisible(batch_size, mesh, "fit", "`batch_size`")
        example = jax.tree.map(
            lambda a: jax.ShapeDtypeStruct((batch_size, *a.shape[1:]), a.dtype), x
        )
    else:
        first = next(_iterate(train_data, "fit"), None)
        if first is None:
            raise ValueError("fit: `train_data` yielded no batches.")
        example = spec_of(first[0])

    ts_shardings = None
    if mesh is not None and initial_state is None:
        ts, ts_shardings = _create_on_mesh(model, optimizer, key, example, mesh, param_sharding)
    elif initial_state is not None:  # copied: the fused step donates (deletes) its input
        ts = jax.tree.map(jnp.copy, initial_state)
    else:
        ts = TrainState.create(model, optimizer, key, example)
    if mesh is not None and ts_shardings is None:
        ts_shardings = distributed.state_shardings(ts, mesh, param_sharding)
        ts = distributed.place(ts, ts_shardings)
    manager = _checkpoint_manager(checkpoint, checkpoint_every, steps_per_execution)
    _check_best_metric(manager, metrics, validation_data is not None)
    if manager is not None and manager.latest_step() is not None:
        ts = manager.restore(manager.latest_step(), like=ts)
        if mesh is not None:
            ts = distributed.place(ts, ts_shardings)
    evaluator = None
    if validation_data is not None and _in_memory(validation_data):
        vx, vy, vw, vn = _check_arrays(validation_data, "fit (validation_data)")
        evaluator = _make_evaluator(model, loss_fn, metrics, validation_batch_size, mesh)

    history = History()
    for cb in callbacks:
        ts = _state_hook(cb, "on_train_begin", ts)

    def after_steps(ts, acc, epoch, done):
        for cb in callbacks:
            _hook(cb, "on_steps_end", int(ts.step), ts)
        if manager is not None and checkpoint_every and int(ts.step) % checkpoint_every == 0:
            if done:  # the epoch-end save (with its logs) follows
                return
            _check_finite(acc, epoch)  # never save a diverged model
            manager.save(int(ts.step), ts)

    replicated = None if mesh is None else NamedSharding(mesh, P())
    # jax 0.10 on CPU can deadlock with many multi-device steps queued: block every few calls
    block_every = 16 if mesh is None else max(1, 8 // steps_per_execution)
    if in_memory:
        data = jax.device_put((x, y, w)) if mesh is None else _shard_rows((x, y, w), mesh)
        steps = n // batch_size
        shardings = None
        if mesh is not None:
            shardings = (ts_shardings, distributed.batch_sharding(mesh), replicated)
        run = _fused_runner(step, metrics, batch_size, unroll, _has_conv(model), shardings)
    else:

        def step_and_add(ts, acc, batch):  # the logs are accumulated inside the compiled call
            ts, logs = step(ts, batch)
            return ts, _acc_add(metrics, acc, logs, 1.0, ts.step - 1)

        placed = {} if mesh is None else {"out_shardings": (ts_shardings, replicated)}
        jstep = jax.jit(step_and_add, donate_argnums=(0, 1), **placed)
        steps = None
        if int(ts.step) > 0:  # resuming: the epoch length is needed to know where to restart
            steps = sum(1 for _ in _iterate(train_data, "fit"))
    start_epoch, skip = divmod(int(ts.step), steps) if steps else (0, 0)

    for epoch in range(start_epoch, epochs):
        acc = _acc_init(metrics)
        if mesh is not None:
            acc = distributed.place(acc, replicated)
        first = skip if epoch == start_epoch else 0
        if in_memory:
            perm = (
                jax.random.permutation(jax.random.fold_in(key, 1_000_003 + epoch), n)
                if shuffle
                else jnp.arange(n)
            )
            if mesh is not None:
                perm = distributed.place(perm, replicated)
            bar = _progress(steps, epoch, epochs, verbose)
            if bar is not None and first:
                bar.update(first)
            for begin in range(first, steps, steps_per_execution):
                k = min(steps_per_execution, steps - begin)
                ts, acc = run(ts, acc, data, perm, jnp.int32(begin), k)
                after_steps(ts, acc, epoch, begin + k == steps)
                if bar is not None:
                    bar.update(k)
                    bar.set_postfix_str(f"loss {float(acc['loss_total'] / acc['loss_count']):.4g}")
                elif (begin // steps_per_execution) % block_every == block_every - 1:
                    jax.block_until_ready(acc)
            if bar is not None:
                bar.close()
        else:
            count = 0
            for i, batch in enumerate(_iterate(train_data, "fit")):
                count += 1
                if i < first:
                    continue
                if mesh is not None:
                    batch = distributed._global_batch(batch, mesh, "fit")
                ts, acc = jstep(ts, acc, batch)
                after_steps(ts, acc, epoch, steps is not None and i + 1 == steps)
                if mesh is not None and i % 8 == 7:
                    jax.block_until_ready(acc)
            if count == 0:
                raise ValueError(
                    f"fit: `train_data` yielded no batches in epoch {epoch + 1}; a one-shot "
                    "iterator is used up after one epoch. Pass a list or a function that "
                    "returns a fresh iterator."
                )
        _check_finite(acc, epoch)
        logs = _acc_compute(metrics, acc)
        if validation_data is not None:
            if evaluator is not None:
                vacc = evaluator(ts.params, ts.state, vx, vy, vw, vn)
                val = _acc_compute(metrics, vacc)
            else:
                val = evaluate(
                    model,
                    ts.params,
                    ts.state,
                    validation_data,
                    loss=loss_fn,
                    metrics=metrics,
                    batch_size=validation_batch_size,
                    mesh=mesh,
                )
            logs.update({f"val_{k}": v for k, v in val.items()})
        lr = _learning_rate(ts.opt_state)
        if lr is not None:
            logs["learning_rate"] = lr
        history.append(epoch, logs)
        if manager is not None:
            manager.save(int(ts.step), ts, metrics=logs)
        if verbose:
            print(f"epoch {epoch + 1}/{epochs}  {_format(logs)}")
        for cb in callbacks:
            ts = _state_hook(cb, "on_epoch_end", ts, epoch, logs)
        if any(getattr(cb, "stop_training", False) for cb in callbacks):
            break
    for cb in callbacks:
        ts = _state_hook(cb, "on_train_end", ts)
    if user_mesh is not None and user_mesh is not mesh:  # back on the caller's (Explicit) mesh
        ts = distributed.place(
            ts, jax.tree.map(lambda a: NamedSharding(user_mesh, a.sharding.spec), ts)
        )
    return ts, history


def _checkpoint_manager(checkpoint, every, steps_per_execution):
    if every is not None:
        if checkpoint is None:
            raise ValueError("fit: `checkpoint_every` needs `checkpoint` (a CheckpointManager).")
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"fit: `checkpoint_every` must be an int >= 1, got {every!r}.")
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


def _hook(cb, name, *args):
    fn_ = getattr(cb, name, None)
    return fn_(*args) if fn_ is not None else None


def _state_hook(cb, name, ts, *args):
    """Call a hook that may return a new ``TrainState`` (``None`` keeps ``ts``)."""
    out = _hook(cb, name, *args, ts)
    if out is None:
        return ts
    if not isinstance(out, TrainState):
        raise TypeError(
            f"fit: callback {type(cb).__name__}.{name} returned {type(out).__name__}; it must "
            "return None or a TrainState (which replaces the training state)."
        )
    return out


def _check_finite(acc: dict, epoch: int) -> None:
    bad_step = int(acc["nonfinite_step"])
    if bad_step >= 0:
        raise FloatingPointError(
            f"fit: the loss was NaN/Inf at step {bad_step} (epoch {epoch + 1}). Check the "
            "inputs for NaN/Inf, lower the learning rate, or clip gradients "
            "(`clip_norm=1.0`); `nan_guard='skip'` skips non-finite updates instead."
        )


def _fused_runner(step, metrics, batch_size, unroll, has_conv, shardings=None):
    """``run(ts, acc, data, perm, begin, k)``: k steps from ``perm[begin*bs:]`` in one call.

    ``shardings``: ``(train_state, batch, replicated)`` shardings on a mesh, or None.
    """
    if unroll is None:
        unroll = has_conv and jax.default_backend() == "cpu"

    def run(ts, acc, data, perm, begin, k):
        def body(carry, i):
            ts, acc = carry
            idx = jax.lax.dynamic_slice_in_dim(perm, (begin + i) * batch_size, batch_size)
            x, y, w = _take(data, idx)
            if shardings is not None:  # the gathered rows, split over the devices
                x, y, w = jax.lax.with_sharding_constraint((x, y, w), shardings[1])
            batch = (x, y) if w is None else (x, y, w)
            ts, logs = step(ts, batch)
            return (ts, _acc_add(metrics, acc, logs, 1.0, ts.step - 1)), None

        if unroll is True or k == 1:  # straight-line code: no loop at all (see `unroll`)
            carry = (ts, acc)
            for i in range(k):
                carry, _ = body(carry, jnp.int32(i))
            return carry
        (ts, acc), _ = jax.lax.scan(body, (ts, acc), jnp.arange(k, dtype=jnp.int32), unroll=unroll)
        return ts, acc

    if shardings is not None:
        return jax.jit(
            run,
            static_argnums=5,
            donate_argnums=(0, 1),
            out_shardings=(shardings[0], shardings[2]),
        )
    return jax.jit(run, static_argnums=5, donate_argnums=(0, 1))
