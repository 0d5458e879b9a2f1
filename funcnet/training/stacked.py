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
use it, :func:`shard_models` splits it over devices.

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

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from funcnet import distributed
from funcnet import metrics as metrics_lib
from funcnet._checks import check_positive_int, is_int
from funcnet.core import Layer, as_layer, spec_of
from funcnet.training.feed import Placement, batch_check, eval_chunks, stack_batches
from funcnet.training.fused import logs_add, logs_compute, logs_init
from funcnet.training.options import check_optimizer
from funcnet.training.step import TrainState, eval_step, predict_step, resolve_loss, train_step

__all__ = [
    "ensemble_predict",
    "hparams_of",
    "model_at",
    "model_orders",
    "shard_models",
    "stack_init",
    "stack_models",
    "stacked_evaluate",
    "stacked_predict",
    "stacked_runner",
    "stacked_train_step",
    "take_batches",
    "with_hparams",
]

_METHODS = ("vmap", "unroll")
_COMBINE = ("mean_probs", "vote", "mean")
_INJECT = (optax.InjectHyperparamsState, optax.InjectStatefulHyperparamsState)


# ----------------------------------------------------------------------------- the stack


def model_at(tree: Any, index: int) -> Any:
    """Model ``index`` of a stacked pytree: every leaf indexed on its leading axis.

    Examples:
        >>> import jax.numpy as jnp
        >>> model_at({"w": jnp.arange(6).reshape(3, 2)}, 1)["w"].tolist()
        [2, 3]
    """
    return jax.tree.map(lambda a: a[index], tree)


def stack_models(trees: Sequence[Any]) -> Any:
    """One pytree with a leading model axis from N pytrees of one structure.

    Examples:
        >>> import jax.numpy as jnp
        >>> stack_models([{"w": jnp.zeros(2)}, {"w": jnp.ones(2)}])["w"].shape
        (2, 2)
    """
    if len(trees) == 0:
        raise ValueError("stack_models: expected a list of N >= 1 pytrees, got an empty one.")
    return jax.tree.map(lambda *leaves: jnp.stack(leaves), *trees)


def _num_models(tree: Any, where: str) -> int:
    leaves = jax.tree.leaves(tree)
    if not leaves or not np.shape(leaves[0]):
        got = "no arrays" if not leaves else f"a leaf of shape {np.shape(leaves[0])}"
        raise ValueError(
            f"{where}: expected a stacked pytree (from `stack_init`) whose leaves have a leading "
            f"model axis, got {got}; stack single models with `stack_models`."
        )
    return int(np.shape(leaves[0])[0])


def _model_keys(keys, where: str) -> jax.Array:
    """A ``(N,)`` array of typed keys from a count, a list of int seeds or an array of keys."""
    if is_int(keys):
        keys = range(check_positive_int(where, "keys", keys))
    if isinstance(keys, (range, list, tuple)) and len(keys) and all(is_int(s) for s in keys):
        return stack_models([jax.random.key(int(s)) for s in keys])
    typed = isinstance(keys, jax.Array) and jnp.issubdtype(keys.dtype, jax.dtypes.prng_key)
    if typed and keys.ndim == 1 and keys.shape[0] >= 1:
        return keys
    got = f"shape {keys.shape} {keys.dtype}" if hasattr(keys, "shape") else repr(keys)[:60]
    raise TypeError(
        f"{where}: `keys` must be a number of models N (seeds 0..N-1), a list of int seeds, or "
        f"an array of N typed keys such as `jax.random.split(jax.random.key(0), N)`; got {got}."
    )


def stack_init(
    model: Layer | Callable,
    optimizer: optax.GradientTransformation,
    keys: int | Sequence[int] | jax.Array,
    example: Any,
    *,
    hparams: Mapping[str, Any] | None = None,
) -> TrainState:
    """N models' ``TrainState``\\ s as one (``step`` of shape ``(N,)``).

    Model ``i`` is ``TrainState.create(model, optimizer, key_i, example)``, where
    ``fit(..., key=key_i)`` starts too. ``keys``: ``N`` (``jax.random.key(0)``
    .. ``key(N - 1)``), a list of int seeds, or an array of N typed keys.
    ``example``: inputs or their ``jax.ShapeDtypeStruct``. ``hparams``:
    ``{name: N values}`` of the optimizer's hyperparameters (:func:`with_hparams`).

    Raises:
        TypeError: for bad ``keys`` or optimizer; ValueError: bad ``hparams``.

    Examples:
        >>> import jax, jax.numpy as jnp, optax
        >>> from funcnet import Dense
        >>> ts = stack_init(Dense(2), optax.adam(1e-3), [0, 7], jnp.zeros((1, 3)))
        >>> ts.params["w"].shape, ts.step.tolist()
        ((2, 3, 2), [0, 0])
    """
    model = as_layer(model)
    check_optimizer(optimizer, "stack_init")
    keys = _model_keys(keys, "stack_init")
    spec = spec_of(example)
    create = jax.vmap(lambda key: TrainState.create(model, optimizer, key, spec))
    ts = jax.jit(create)(keys)
    return ts if hparams is None else with_hparams(ts, hparams, where="stack_init")


# ----------------------------------------------------------------------------- hyperparameters


def _is_inject(node) -> bool:
    return isinstance(node, _INJECT)


def _inject_states(opt_state) -> list:
    leaves = jax.tree.leaves(opt_state, is_leaf=_is_inject)
    return [node for node in leaves if _is_inject(node)]


def _checked_hparams(nodes, hparams, n: int, where: str) -> dict:
    """``{name: (n,) array}`` after checking names, schedules and lengths."""
    if not isinstance(hparams, Mapping):
        raise TypeError(
            f"{where}: `hparams` must be a dict {{name: one value per model}}, got "
            f"{type(hparams).__name__}."
        )
    schedules = {k for node in nodes for k in getattr(node, "hyperparams_states", {})}
    numeric = sorted({k for node in nodes for k in node.hyperparams} - schedules)
    values = {}
    for name, value in hparams.items():
        if name in schedules:
            raise ValueError(
                f"{where}: hyperparameter {name!r} is a schedule in this optimizer, recomputed "
                f"every step, so per-model values would be overwritten; give "
                f"`inject_hyperparams` a number for {name!r} and the per-model values here."
            )
        if name not in numeric:
            raise ValueError(
                f"{where}: the optimizer has no numeric hyperparameter {name!r}; it has "
                f"{numeric} (the numbers given to `optax.inject_hyperparams(...)(...)`; bools "
                "and `static_args` cannot vary per model)."
            )
        array = jnp.asarray(value)
        if array.shape != (n,):
            raise ValueError(
                f"{where}: `hparams[{name!r}]` needs one value per model, shape ({n},), got "
                f"shape {array.shape}; pass a list or 1-D array of {n} numbers."
            )
        values[name] = array
    return values


def with_hparams(
    train_state: TrainState, hparams: Mapping[str, Any], *, where: str = "with_hparams"
) -> TrainState:
    """A stacked state whose models use their own optimizer hyperparameters ``{name: N values}``.

    Any numeric hyperparameter of an ``optax.inject_hyperparams`` optimizer
    (also inside a chain or :func:`~funcnet.training.options.compose_optimizer`)
    can differ per model: ``learning_rate``, ``weight_decay``, ``b1``, ... They
    live in ``opt_state``, so one compiled step trains every model with its own
    and they may change between steps; a name in several injected states is set
    in each. A per-model L2 penalty is decoupled weight decay, e.g.
    ``inject_hyperparams(lambda learning_rate, l2: optax.chain(
    optax.add_decayed_weights(l2), optax.sgd(learning_rate)))``. Dropout rates
    cannot vary: ``Dropout(drop_rate)`` is a static constructor argument.

    Raises:
        TypeError: an optimizer without ``inject_hyperparams``; ValueError: a
            name it does not have (listing those it has), a schedule, a length.

    Examples:
        >>> import jax.numpy as jnp, optax
        >>> from funcnet import Dense
        >>> opt = optax.inject_hyperparams(optax.adamw)(learning_rate=1e-3, weight_decay=0.0)
        >>> ts = stack_init(Dense(1), opt, 3, jnp.zeros((1, 2)))
        >>> ts = with_hparams(ts, {"weight_decay": [0.0, 1e-4, 1e-2]})
        >>> hparams_of(ts)["weight_decay"].tolist()
        [0.0, 9.999999747378752e-05, 0.009999999776482582]
    """
    n = _num_models(train_state, where)
    nodes = _inject_states(train_state.opt_state)
    if not nodes:
        raise TypeError(
            f"{where}: per-model `hparams` need an optimizer that keeps its hyperparameters in "
            "its state, made with `optax.inject_hyperparams`; this one has none: build it as "
            "e.g. `optax.inject_hyperparams(optax.adamw)(learning_rate=1e-3, weight_decay=1e-4)`"
            " and pass that one optimizer to stack_init and stacked_train_step."
        )
    values = _checked_hparams(nodes, hparams, n, where)

    def replace(node):
        if not _is_inject(node):
            return node
        hp = dict(node.hyperparams)
        for name, value in values.items():
            if name in hp:
                old = hp[name]
                value = value.reshape((n,) + (1,) * (old.ndim - 1))
                hp[name] = jnp.broadcast_to(value, old.shape).astype(old.dtype)
        return node._replace(hyperparams=hp)

    opt_state = jax.tree.map(replace, train_state.opt_state, is_leaf=_is_inject)
    return train_state._replace(opt_state=opt_state)


def hparams_of(train_state: TrainState) -> dict[str, jax.Array]:
    """``{name: values}`` of the injected hyperparameters (see :func:`with_hparams`)."""
    found: dict[str, jax.Array] = {}
    for node in _inject_states(train_state.opt_state):
        for name, value in node.hyperparams.items():
            found.setdefault(name, value)
    return found


# ----------------------------------------------------------------------------- training


def _check_model_axis(batch, n: int) -> None:
    for leaf in jax.tree.leaves(batch):
        if not np.shape(leaf) or np.shape(leaf)[0] != n:
            raise ValueError(
                f"stacked_train_step: with `shared_batch=False` every leaf of the batch needs a "
                f"leading model axis of size {n}, got shape {np.shape(leaf)}; pass "
                "`shared_batch=True` to give every model the same batch."
            )


def stacked_train_step(
    model: Layer | Callable,
    loss: str | Callable,
    optimizer: optax.GradientTransformation,
    *,
    shared_batch: bool = True,
    method: str = "vmap",
    **step_options,
) -> Callable[[TrainState, Any], tuple[TrainState, dict]]:
    """``step(train_state, batch) -> (train_state, logs)``: :func:`train_step` for every model.

    Each model updates as ``train_step`` would update it alone, with its own
    key (``ts.key``), hyperparameters and, unless shared, batch. Every log has
    a leading model axis (``logs["loss"]``: ``(N,)``); jit the step, donate the
    state. ``**step_options`` are :func:`train_step`'s, the same for all models.

    Args:
        shared_batch: ``True``: every model trains on the batch. ``False``:
            every leaf has a leading model axis ``(N, batch, ...)`` and model
            ``i`` trains on ``batch[i]`` (bagging, own data orders:
            :func:`model_orders`); ``step.shared_batch`` records it.
        method: ``"vmap"`` (default) or ``"unroll"``: the N steps one after
            another in one program, for layers slow when batched: ``vmap``
            turns N models' convolutions into grouped ones, which XLA:CPU runs
            2-3x slower (``bench/stacked.py``: 0.3-0.5x, unrolled 0.85-1.1x;
            compiling ~N times longer).

    Raises:
        ValueError: an unknown ``method``; a per-model batch without the axis.

    Examples:
        >>> import jax, jax.numpy as jnp, optax
        >>> from funcnet import Dense
        >>> opt = optax.sgd(0.1)
        >>> ts = stack_init(Dense(1), opt, 3, jnp.zeros((1, 2)))
        >>> step = stacked_train_step(Dense(1), "mse", opt, shared_batch=False)
        >>> batches = (jnp.ones((3, 8, 2)), jnp.zeros((3, 8, 1)))  # one batch per model
        >>> ts, logs = jax.jit(step)(ts, batches)
        >>> logs["loss"].shape
        (3,)
    """
    if method not in _METHODS:
        raise ValueError(
            f"stacked_train_step: `method` must be one of {_METHODS}, got {method!r}; 'unroll' "
            "runs the models one after another in one program."
        )
    step = train_step(model, loss, optimizer, **step_options)
    batch_axis = None if shared_batch else 0
    vmapped = jax.vmap(step, in_axes=(0, batch_axis))

    def stacked_step(train_state: TrainState, batch) -> tuple[TrainState, dict]:
        n = _num_models(train_state, "stacked_train_step")
        if not shared_batch:
            _check_model_axis(batch, n)
        if method == "vmap":
            return vmapped(train_state, batch)
        parts = [
            step(model_at(train_state, i), batch if shared_batch else model_at(batch, i))
            for i in range(n)
        ]
        return stack_models(parts)

    stacked_step.shared_batch = shared_batch
    return stacked_step


def model_orders(
    key: jax.Array, num_models: int, num_rows: int, *, bootstrap: bool = False
) -> jax.Array:
    """Each model's own order of the rows, ``(num_models, num_rows)``, from ``fold_in(key, i)``.

    A permutation, or with ``bootstrap=True`` rows drawn with replacement
    (bagging: ~63% of the rows, some twice). Fold the epoch into ``key`` for
    a new order every epoch.

    Examples:
        >>> import jax
        >>> orders = model_orders(jax.random.key(0), 3, 5)
        >>> orders.shape, sorted(orders[1].tolist())
        ((3, 5), [0, 1, 2, 3, 4])
    """
    check_positive_int("model_orders", "num_models", num_models)
    check_positive_int("model_orders", "num_rows", num_rows)

    def one(i):
        k = jax.random.fold_in(key, i)
        if bootstrap:
            return jax.random.randint(k, (num_rows,), 0, num_rows)
        return jax.random.permutation(k, num_rows)

    return jax.jit(jax.vmap(one))(jnp.arange(num_models)).astype(jnp.int32)


def take_batches(data: Any, order: jax.Array, index, batch_size: int) -> Any:
    """Batch ``index`` of ``order``: the rows ``order[..., index * batch_size:][:batch_size]``.

    ``order`` ``(rows,)`` gives a shared batch, ``(N, rows)`` one with a leading
    model axis; ``data`` is a pytree of arrays, rows first; ``index`` may be traced.

    Examples:
        >>> import jax.numpy as jnp
        >>> x = jnp.arange(6) * 10
        >>> take_batches(x, jnp.array([[5, 4, 3, 2, 1, 0], [0, 1, 2, 3, 4, 5]]), 1, 2).tolist()
        [[30, 20], [20, 30]]
    """
    axis = jnp.ndim(order) - 1
    rows = jax.lax.dynamic_slice_in_dim(order, index * batch_size, batch_size, axis=axis)
    return jax.tree.map(lambda a: jnp.take(a, rows, axis=0), data)


def _check_order(order, shared, batch_size: int) -> None:
    if jnp.ndim(order) not in (1, 2):
        raise ValueError(
            f"stacked_runner: `order` must be row indices of shape (rows,) or (N, rows), got "
            f"shape {jnp.shape(order)}."
        )
    per_model = jnp.ndim(order) == 2
    if shared is not None and per_model == shared:
        need = "shared_batch=False" if per_model else "shared_batch=True"
        raise ValueError(
            f"stacked_runner: an `order` of shape {jnp.shape(order)} gives "
            f"{'per-model' if per_model else 'shared'} batches; build the step with "
            f"`stacked_train_step(..., {need})`."
        )
    if jnp.shape(order)[-1] < batch_size:
        raise ValueError(
            f"stacked_runner: `batch_size={batch_size}` is larger than the {jnp.shape(order)[-1]}"
            " rows of `order`; use a smaller batch size."
        )


def stacked_runner(step: Callable, batch_size: int, *, unroll: int | bool = 1) -> Callable:
    """``run(ts, data, order, begin, k) -> (ts, losses (k, N))``: ``k`` steps in one call.

    Step ``j`` trains on batch ``(begin + j) % (rows // batch_size)`` of
    ``order`` (:func:`take_batches`; ``(rows,)`` for a step with
    ``shared_batch=True``, ``(N, rows)`` without), gathered on the device from
    ``data`` (``(x, y[, weights])``), so calls cycle through the data. ``ts``
    is donated, ``k`` static; a plain :func:`train_step` works too. ``unroll``:
    as ``lax.scan``'s; ``True``: straight-line code (convolutions on XLA:CPU).

    Examples:
        >>> import jax, jax.numpy as jnp, optax
        >>> from funcnet import Dense
        >>> opt = optax.sgd(0.1)
        >>> ts = stack_init(Dense(1), opt, 2, jnp.zeros((1, 2)))
        >>> run = stacked_runner(stacked_train_step(Dense(1), "mse", opt), batch_size=4)
        >>> data = (jnp.ones((8, 2)), jnp.zeros((8, 1)))
        >>> ts, losses = run(ts, data, jnp.arange(8), 0, 5)
        >>> losses.shape, ts.step.tolist()
        ((5, 2), [5, 5])
    """
    check_positive_int("stacked_runner", "batch_size", batch_size)
    shared = getattr(step, "shared_batch", None)

    def run(ts, data, order, begin, k):
        _check_order(order, shared, batch_size)
        per_pass = jnp.shape(order)[-1] // batch_size

        def body(ts, i):
            batch = take_batches(data, order, (begin + i) % per_pass, batch_size)
            ts, logs = step(ts, batch)
            return ts, logs["loss"]

        if unroll is True or k == 1:
            losses = []
            for i in range(k):
                ts, loss = body(ts, jnp.int32(i))
                losses.append(loss)
            return ts, jnp.stack(losses)
        steps = jnp.arange(k, dtype=jnp.int32)
        return jax.lax.scan(body, ts, steps, unroll=unroll)

    return jax.jit(run, static_argnums=4, donate_argnums=0)


# ----------------------------------------------------------------------------- inference


def _metric_dict(metrics) -> dict:
    if metrics is None:
        return {}
    if isinstance(metrics, Mapping):
        return {k: metrics_lib.get(m) for k, m in metrics.items()}
    if isinstance(metrics, (str, metrics_lib.Metric)):
        metrics = [metrics]
    return {m if isinstance(m, str) else m.name: metrics_lib.get(m) for m in metrics}


def _stacked_evaluator(model, loss_fn, metrics: dict) -> Callable:
    """``add(params, state, acc, chunk, stacked)``: every model's logs of a chunk of batches."""
    step = eval_step(model, loss_fn, metrics=metrics)

    def add_one(params, state, acc, chunk, stacked):
        if not stacked:
            chunk = jax.tree.map(lambda a: a[None], chunk)

        def body(acc, batch):
            logs = step(params, state, batch)
            if loss_fn is None:
                logs["loss"] = jnp.zeros((), jnp.float32)
            return logs_add(metrics, acc, logs, jnp.sum(batch[2].astype(jnp.float32))), None

        return jax.lax.scan(body, acc, chunk)[0]

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
        >>> ts = stack_init(Dense(1), optax.sgd(0.1), 3, jnp.zeros((1, 2)))
        >>> x, y = np.ones((10, 2), np.float32), np.zeros((10, 1), np.float32)
        >>> stacked_evaluate(Dense(1), ts.params, ts.state, (x, y), loss="mse")["loss"].shape
        (3,)
    """
    model = as_layer(model)
    loss_fn = resolve_loss(loss, "stacked_evaluate") if loss is not None else None
    metrics = _metric_dict(metrics)
    check_positive_int("stacked_evaluate", "batch_size", batch_size)
    n = _num_models((params, state), "stacked_evaluate")
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
        >>> ts = stack_init(Dense(3), optax.sgd(0.1), 4, jnp.zeros((1, 2)))
        >>> stacked_predict(Dense(3), ts.params, ts.state, np.ones((10, 2), np.float32),
        ...                 batch_size=4).shape
        (4, 10, 3)
    """
    model = as_layer(model)
    check_positive_int("stacked_predict", "batch_size", batch_size)
    _num_models((params, state), "stacked_predict")
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


# ----------------------------------------------------------------------------- devices


def shard_models(tree: Any, mesh: Mesh, axis: str = "models") -> Any:
    """A copy of a stacked pytree, its model axis split over the mesh axis ``axis``.

    Each device holds ``N / mesh.shape[axis]`` models; the jitted step
    follows the shardings (a batch may be split over another axis, e.g. of a
    ``("models", "data")`` mesh). ValueError for a mesh without ``axis`` or N
    not a multiple of its size.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> mesh = jax.make_mesh((1,), ("models",))
        >>> sharded = shard_models({"w": jnp.zeros((2, 3))}, mesh)
        >>> tuple(sharded["w"].sharding.spec)
        ('models',)
    """
    if axis not in mesh.axis_names:
        raise ValueError(
            f"shard_models: the mesh has no axis {axis!r}, its axes are {mesh.axis_names}; make "
            f"one with e.g. `jax.make_mesh((4,), ({axis!r},))`."
        )
    n, size = _num_models(tree, "shard_models"), mesh.shape[axis]
    if n % size:
        raise ValueError(
            f"shard_models: {n} models do not split evenly over the {size} devices of mesh axis "
            f"{axis!r}; use a number of models that is a multiple of {size}."
        )
    return distributed.place(tree, NamedSharding(mesh, P(axis)))
