"""The pure training step: ``TrainState`` and ``train_step`` / ``eval_step``.

``train_step(model, loss, optimizer, ...)`` returns a pure function
``(train_state, batch) -> (train_state, logs)`` that the caller compiles
(``jax.jit(step, donate_argnums=0)``) or fuses (``lax.scan``). Nothing else
is involved: the model is its two functions, the optimizer an optax
``GradientTransformation``, the state a NamedTuple of arrays.

Examples:
    >>> import jax, jax.numpy as jnp, optax
    >>> import funcnet as fn
    >>> model = fn.serial(fn.Dense(16), jax.nn.relu, fn.Dense(3))
    >>> optimizer = optax.sgd(0.1)
    >>> ts = TrainState.create(model, optimizer, jax.random.key(0), jnp.zeros((1, 4)))
    >>> step = jax.jit(train_step(model, "sparse_categorical_cross_entropy", optimizer))
    >>> x, y = jnp.ones((8, 4)), jnp.zeros(8, jnp.int32)
    >>> ts, logs = step(ts, (x, y))
    >>> int(ts.step), sorted(logs)
    (1, ['loss'])
"""

from __future__ import annotations

import re
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from funcnet import losses as losses_lib
from funcnet.core import Layer, Params, PRNGKey, State, as_layer, spec_of

__all__ = ["TrainState", "eval_step", "path_str", "predict_step", "train_step", "tree_paths"]


class TrainState(NamedTuple):
    """Everything a training run changes, as one pytree.

    Attributes:
        step: number of updates applied (int32 scalar); the step's random key
            is ``fold_in(key, step)``, so a run resumed from a saved state draws
            the same numbers as one that never stopped.
        params: the model's parameters.
        state: the model's non-trainable state (e.g. BatchNorm statistics).
        opt_state: the optax optimizer state.
        key: the run's base random key (constant; per-step keys are folded in).
    """

    step: jax.Array
    params: Params
    state: State
    opt_state: optax.OptState
    key: PRNGKey

    @classmethod
    def create(
        cls,
        model: Layer | Callable,
        optimizer: optax.GradientTransformation,
        key: PRNGKey,
        inputs: Any,
    ) -> TrainState:
        """Initialise the model with ``fold_in(key, 0)`` and the optimizer on its params.

        ``inputs`` is an example batch or its :class:`jax.ShapeDtypeStruct`
        (only shapes and dtypes are read).

        Examples:
            >>> import jax, jax.numpy as jnp, optax
            >>> from funcnet import Dense
            >>> ts = TrainState.create(Dense(2), optax.adam(1e-3), jax.random.key(0),
            ...                        jnp.zeros((1, 3)))
            >>> ts.params["w"].shape, int(ts.step)
            ((3, 2), 0)
        """
        model = as_layer(model)
        spec = spec_of(inputs)

        def build(key):
            params, state = model.init(jax.random.fold_in(key, 0), spec)
            return cls(
                step=jnp.zeros((), jnp.int32),
                params=params,
                state=state,
                opt_state=optimizer.init(params),
                key=jax.random.fold_in(key, 1),
            )

        # One compiled program: an eager init would compile every small op separately.
        return jax.jit(build)(key)

    def apply_gradients(
        self, optimizer: optax.GradientTransformation, grads: Params, **changes
    ) -> TrainState:
        """One optimizer update: the state with new params, opt_state and ``step + 1``.

        For hand-written steps (a GAN's two players, a VAE's ELBO) where
        :func:`train_step` does not fit. ``optimizer`` is the one given to
        :meth:`create`; ``changes`` replace other fields (e.g. ``state=``).

        Examples:
            >>> import jax, jax.numpy as jnp, optax
            >>> from funcnet import Dense
            >>> opt = optax.sgd(0.5)
            >>> ts = TrainState.create(Dense(1), opt, jax.random.key(0), jnp.zeros((1, 2)))
            >>> grads = jax.tree.map(jnp.ones_like, ts.params)
            >>> ts = ts.apply_gradients(opt, grads)
            >>> int(ts.step), ts.params["b"].tolist()
            (1, [-0.5])
        """
        updates, opt_state = optimizer.update(grads, self.opt_state, self.params)
        params = optax.apply_updates(self.params, updates)
        return self._replace(step=self.step + 1, params=params, opt_state=opt_state, **changes)


def path_str(path: Sequence) -> str:
    """A pytree key path as ``"0/w"`` or ``"encoder/1/b"`` (used for path patterns).

    Examples:
        >>> tree_paths(({"w": 1, "b": 2}, (), {"w": 3}))
        ['0/b', '0/w', '2/w']
    """
    parts = []
    for entry in path:
        for attr in ("key", "idx", "name"):
            if hasattr(entry, attr):
                parts.append(str(getattr(entry, attr)))
                break
        else:
            parts.append(str(entry))
    return "/".join(parts)


def tree_paths(tree: Any) -> list[str]:
    """The :func:`path_str` of every leaf of ``tree``, in leaf order."""
    return [path_str(p) for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]


def _mask(params: Params, pattern: str | Sequence[str] | None) -> Any:
    """A pytree of bools: True where the leaf's path matches one of the regex patterns."""
    if pattern is None:
        return jax.tree.map(lambda _: False, params)
    patterns = [pattern] if isinstance(pattern, str) else list(pattern)
    compiled = [re.compile(p) for p in patterns]
    return jax.tree_util.tree_map_with_path(
        lambda path, _: any(c.search(path_str(path)) for c in compiled), params
    )


def _unpack(batch, where: str):
    if isinstance(batch, (tuple, list)) and len(batch) in (2, 3):
        x, y, *rest = batch
        return x, y, (rest[0] if rest else None)
    raise TypeError(
        f"{where}: expected a batch `(inputs, targets)` or `(inputs, targets, weights)`, got "
        f"{type(batch).__name__}"
        + (f" of length {len(batch)}" if isinstance(batch, (tuple, list)) else "")
        + "."
    )


def _cast_floats(tree, dtype):
    if dtype is None:
        return tree
    return jax.tree.map(
        lambda a: a.astype(dtype) if jnp.issubdtype(jnp.result_type(a), jnp.floating) else a, tree
    )


def _batch_metrics(metrics, outputs, targets, weights) -> dict:
    """Per-batch states of the streaming metrics; the caller merges them over batches."""
    logs = {}
    for name, metric in (metrics or {}).items():
        logs[name] = metric.update(metric.init(), outputs, targets, weights=weights)
    return logs


def _resolve_loss(loss):
    return losses_lib.get(loss) if isinstance(loss, str) else loss


# ----------------------------------------------------------------------------- mapped axes


def _check_axis_name(axis_name, where: str):
    """``axis_name`` as None, one name, or a tuple of names (several mesh axes)."""
    if axis_name is None:
        return None
    if isinstance(axis_name, (tuple, list)):
        names = tuple(axis_name)
        if names and all(isinstance(a, Hashable) and not isinstance(a, tuple) for a in names):
            return names
    elif isinstance(axis_name, Hashable):
        return axis_name
    raise TypeError(
        f"{where}: `axis_name` must be a mapped axis name (e.g. 'data') or a tuple of names, got "
        f"{axis_name!r}."
    )


def _axes(axis_name) -> tuple:
    return axis_name if isinstance(axis_name, tuple) else (axis_name,)


def _varying(x) -> frozenset:
    """The mapped axes ``x`` varies over (shard_map's ``check_vma`` types; empty elsewhere)."""
    aval = jax.typeof(x)
    kind = getattr(aval, "manual_axis_type", None)
    if kind is not None:
        return frozenset(kind.varying)
    return frozenset(getattr(aval, "vma", ()) or ())


def _to_varying(x, axes: tuple):
    """Mark ``x`` as varying over ``axes`` (a no-op at run time)."""
    missing = tuple(a for a in axes if a not in _varying(x))
    if not missing:
        return x
    if hasattr(jax.lax, "pcast"):
        return jax.lax.pcast(x, missing, to="varying")
    return jax.lax.pvary(x, missing)  # pragma: no cover - older JAX


def _tracks_variance(axis_name) -> bool:
    """True inside ``jax.shard_map(check_vma=True)``, where JAX types values as varying/invariant.

    There the gradient of a device's loss w.r.t. an *invariant* (replicated)
    input is summed over the devices by JAX itself; elsewhere (``jax.pmap``,
    ``check_vma=False``, ``jax.vmap``) it is the device's own gradient.
    """
    return bool(set(_axes(axis_name)) & _varying(jax.lax.axis_index(axis_name)))


def _share(w, axis_name):
    """A device's share of the global loss: its batch's total weight over the axis' total.

    Without weights every device has the same share (equal batch sizes).
    """
    weight = jnp.ones((), jnp.float32) if w is None else jnp.sum(jnp.asarray(w, jnp.float32))
    total = jax.lax.psum(weight, axis_name)
    return jnp.where(total > 0, weight / jnp.where(total > 0, total, 1.0), 0.0)


def _gather_merge(metric, state, axis_name):
    """``metric.merge`` of the states of every device on the axis (the same on every device).

    The states are gathered with a ``psum`` of one-hot placements (invariant
    under ``shard_map``'s type checks) and merged in device order, so metrics
    whose state is not a sum (R²) merge correctly too.
    """
    n = jax.lax.axis_size(axis_name)
    index = jax.lax.axis_index(axis_name)

    def gather(a):
        slots = jnp.zeros((n, *a.shape), a.dtype).at[index].set(a)
        return jax.lax.psum(slots, axis_name)

    stacked = jax.tree.map(gather, state)
    merged = jax.tree.map(lambda a: a[0], stacked)
    for i in range(1, n):
        merged = metric.merge(merged, jax.tree.map(lambda a, i=i: a[i], stacked))
    return merged


def _reduce_logs(metrics, logs, axis_name):
    """Metric states of the whole mapped axis, merged (see :func:`_gather_merge`)."""
    for name, metric in (metrics or {}).items():
        logs[name] = _gather_merge(metric, logs[name], axis_name)
    return logs


def train_step(
    model: Layer | Callable,
    loss: str | Callable,
    optimizer: optax.GradientTransformation,
    *,
    metrics: Mapping[str, Any] | None = None,
    l1: float = 0.0,
    l2: float = 0.0,
    regularize: str | Sequence[str] = r"(^|/)w$",
    clip_norm: float | None = None,
    freeze: str | Sequence[str] | None = None,
    accumulate_steps: int = 1,
    compute_dtype=None,
    loss_scale: float = 1.0,
    nan_guard: str | bool = False,
    augment: Callable | None = None,
    augment_targets: bool = False,
    axis_name: Hashable | tuple | None = None,
) -> Callable[[TrainState, Any], tuple[TrainState, dict]]:
    """Build the pure update ``(train_state, batch) -> (train_state, logs)``.

    A batch is ``(inputs, targets)`` or ``(inputs, targets, weights)``;
    ``inputs`` may be any pytree. The model runs with ``train=True`` and the
    key ``fold_in(train_state.key, train_state.step)``.

    Args:
        model: the layer to train.
        loss: ``(outputs, targets, *, weights=None) -> scalar`` or a name from
            :func:`funcnet.losses.get`.
        optimizer: an optax ``GradientTransformation`` (schedules, weight decay
            and chains are optax's; the same one given to ``TrainState.create``).
        metrics: ``{name: Metric}`` (see :mod:`funcnet.metrics`); ``logs[name]``
            is that metric's state for this batch, to ``merge`` over batches.
        l1, l2: coefficients of ``sum|w|`` and ``sum w**2`` added to the loss
            over the params whose path (see :func:`path_str`) matches a regex
            in ``regularize`` (default: every leaf named ``w``, i.e. Dense and
            Conv kernels, not biases or norm scales).
        clip_norm: clip the gradient to this global norm (``optax.clip_by_global_norm``).
        freeze: regex pattern(s) of param paths that are not trained: their
            gradient and update are zero (e.g. ``r"^0/"`` freezes the first
            layer of a ``serial``).
        accumulate_steps: split the batch into this many micro-batches, run
            them one after another (``lax.scan``) and apply the mean gradient
            once: the memory of a small batch, the update of a large one.
            The batch size must be divisible by it.
        compute_dtype: e.g. ``jnp.bfloat16``: the forward and backward passes
            run in this dtype (params and float inputs cast) while params,
            gradients and the optimizer stay float32; outputs are cast back to
            float32 for the loss.
        loss_scale: multiply the loss before differentiating and divide the
            gradient after (static loss scaling, for ``float16``; with
            ``nan_guard="skip"`` an overflowing step is skipped).
        nan_guard: ``False`` (default): no check in the step (``fit``
            still checks every step's loss and raises naming the first NaN/Inf
            one). ``"report"``: ``logs["nonfinite"]`` is True when the loss is
            NaN/Inf; the update is applied as computed. ``"skip"``: also
            checks every gradient and skips a non-finite update (params,
            model state and optimizer state stay as they were;
            ``train_state.step`` still advances), for ``loss_scale`` with
            float16, where overflowing steps are expected. Either costs time
            on tiny models (measured: a step of a 32-64-64-1 MLP goes from
            ~38 to ~86 µs with "report" and ~118 µs with "skip"; "skip"
            selects over every parameter, so XLA cannot update in place).
        augment: a data augmentation ``(key, inputs) -> inputs`` (see
            :mod:`funcnet.augment`) applied to each training batch inside the
            compiled step, with its own key; never in ``eval_step``.
        augment_targets: call ``augment(key, (inputs, targets))`` and use the
            pair it returns (for :func:`funcnet.augment.mixup`).
        axis_name: only for explicit collectives: the mapped axis (or tuple
            of axes) the batch is split over when the step runs inside
            ``jax.shard_map`` or ``jax.pmap`` (each device gets its part of the
            global batch). Gradients are then summed over the axis with each
            device's loss weighted by its share of the global batch, so the
            update equals the one for the whole batch on one device, under
            ``shard_map`` (where JAX already sums the gradient w.r.t.
            replicated params: the step marks them as per-device first, so
            nothing is counted twice) and under ``pmap`` alike; the logged
            loss is the global one and metric states are merged over the axis
            (``merge``, so R² is right too). BatchNorm statistics are global
            only with ``BatchNorm(axis_name=...)``. Each device's random key
            is folded with its axis index, so dropout masks differ between
            devices (and from a single-device run). Weighted batches assume a
            loss that is a weighted mean ``sum(w * l) / sum(w)``, as
            funcnet's losses are. Not needed (leave None) with ``jax.jit`` and
            sharded arrays, e.g. ``fit(..., mesh=...)``: there the compiler
            averages the gradients.

    Returns:
        ``step(train_state, batch) -> (train_state, logs)`` with
        ``logs = {"loss": scalar, "nonfinite": bool, **metric_states}``.

    Raises:
        ValueError: for bad arguments (here) or a batch not divisible into
            ``accumulate_steps`` micro-batches (when traced).
    """
    model = as_layer(model)
    loss_fn = _resolve_loss(loss)
    if not callable(loss_fn):
        raise TypeError(f"train_step: `loss` must be a function or a name, got {loss!r}.")
    if not isinstance(optimizer, optax.GradientTransformation):
        raise TypeError(
            "train_step: `optimizer` must be an optax GradientTransformation (e.g. "
            f"`optax.adam(1e-3)`), got {type(optimizer).__name__}."
        )
    if (
        isinstance(accumulate_steps, bool)
        or not isinstance(accumulate_steps, int)
        or (accumulate_steps < 1)
    ):
        raise ValueError(
            f"train_step: `accumulate_steps` must be an int >= 1, got {accumulate_steps!r}."
        )
    if l1 < 0 or l2 < 0:
        raise ValueError(f"train_step: `l1` and `l2` must be >= 0, got {l1} and {l2}.")
    if clip_norm is not None and clip_norm <= 0:
        raise ValueError(f"train_step: `clip_norm` must be > 0, got {clip_norm}.")
    if loss_scale <= 0:
        raise ValueError(f"train_step: `loss_scale` must be > 0, got {loss_scale}.")
    if augment is not None and not callable(augment):
        raise TypeError(
            f"train_step: `augment` must be a function `(key, inputs) -> inputs`, got "
            f"{type(augment).__name__}; call the factory, e.g. `augment.random_flip()`."
        )
    axis_name = _check_axis_name(axis_name, "train_step")
    if nan_guard not in ("report", "skip", False):
        raise ValueError(
            f"train_step: `nan_guard` must be 'report', 'skip' or False, got {nan_guard!r}."
        )
    clipper = optax.clip_by_global_norm(clip_norm) if clip_norm is not None else None

    def penalty(params):
        if not (l1 or l2):
            return jnp.zeros((), jnp.float32)
        mask = _mask(params, regularize)
        chosen = [p for p, m in zip(jax.tree.leaves(params), jax.tree.leaves(mask)) if m]
        total = jnp.zeros((), jnp.float32)
        for p in chosen:
            p = p.astype(jnp.float32)
            total = total + l1 * jnp.sum(jnp.abs(p)) + l2 * jnp.sum(p * p)
        return total

    def forward(params, state, x, y, w, key, share=None):
        compute_params = _cast_floats(params, compute_dtype)
        outputs, new_state = model.apply(
            compute_params, state, _cast_floats(x, compute_dtype), key=key, train=True
        )
        if compute_dtype is not None:
            outputs = _cast_floats(outputs, jnp.float32)
        data_loss = loss_fn(outputs, y, weights=w) if w is not None else loss_fn(outputs, y)
        total = data_loss + penalty(params)
        objective = total * loss_scale if share is None else total * (loss_scale * share)
        return objective, (total, outputs, new_state)

    grad_fn = jax.grad(forward, has_aux=True)

    def gradients(params, state, x, y, w, key, share=None):
        if accumulate_steps == 1:
            grads, (total, outputs, new_state) = grad_fn(params, state, x, y, w, key, share)
            return grads, total, outputs, new_state

        def split(a):
            n = a.shape[0]
            if n % accumulate_steps:
                raise ValueError(
                    f"train_step: the batch size {n} is not divisible by "
                    f"`accumulate_steps={accumulate_steps}`; use a batch size that is a "
                    "multiple of it."
                )
            return a.reshape(accumulate_steps, n // accumulate_steps, *a.shape[1:])

        micro = jax.tree.map(split, (x, y, w))

        def body(carry, inputs):
            grad_sum, loss_sum, st = carry
            (mx, my, mw), i = inputs
            g, (total, outputs, st) = grad_fn(
                params, st, mx, my, mw, jax.random.fold_in(key, i), share
            )
            return (jax.tree.map(jnp.add, grad_sum, g), loss_sum + total, st), outputs

        zeros = jax.tree.map(jnp.zeros_like, params)
        (grad_sum, loss_sum, new_state), outputs = jax.lax.scan(
            body,
            (zeros, jnp.zeros((), jnp.float32), state),
            (micro, jnp.arange(accumulate_steps)),
        )
        outputs = jax.tree.map(lambda a: a.reshape(-1, *a.shape[2:]), outputs)
        grads = jax.tree.map(lambda g: g / accumulate_steps, grad_sum)
        return grads, loss_sum / accumulate_steps, outputs, new_state

    def step(train_state: TrainState, batch) -> tuple[TrainState, dict]:
        x, y, w = _unpack(batch, "train_step")
        key = jax.random.fold_in(train_state.key, train_state.step)
        if axis_name is not None:  # a different dropout / augmentation draw on every device
            key = jax.random.fold_in(key, jax.lax.axis_index(axis_name))
        if augment is not None:
            key, aug_key = jax.random.split(key)
            if augment_targets:
                x, y = augment(aug_key, (x, y))
            else:
                x = augment(aug_key, x)
        params = train_state.params
        if axis_name is None:
            grads, total, outputs, new_state = gradients(params, train_state.state, x, y, w, key)
        else:
            # Each device differentiates its share of the global loss w.r.t. params marked as
            # per-device, then the gradients are summed: right under pmap and shard_map alike.
            share = _share(w, axis_name)
            local_params = params
            if _tracks_variance(axis_name):
                local_params = jax.tree.map(lambda p: _to_varying(p, _axes(axis_name)), params)
            grads, total, outputs, new_state = gradients(
                local_params, train_state.state, x, y, w, key, share
            )
            grads = jax.lax.psum(grads, axis_name)
            total = jax.lax.psum(total * share, axis_name)
        if loss_scale != 1.0:
            grads = jax.tree.map(lambda g: g / loss_scale, grads)
        frozen = _mask(params, freeze) if freeze is not None else None
        if frozen is not None:
            grads = jax.tree.map(lambda g, f: jnp.zeros_like(g) if f else g, grads, frozen)
        if clipper is not None:
            grads, _ = clipper.update(grads, clipper.init(params))
        updates, new_opt_state = optimizer.update(grads, train_state.opt_state, params)
        if frozen is not None:
            updates = jax.tree.map(lambda u, f: jnp.zeros_like(u) if f else u, updates, frozen)
        new_params = optax.apply_updates(params, updates)
        logs = {"loss": total}
        if nan_guard == "skip":
            finite = jnp.isfinite(total)
            for g in jax.tree.leaves(grads):
                finite &= jnp.all(jnp.isfinite(g))

            def keep(new, old):
                return jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)

            new_params = keep(new_params, params)
            new_state = keep(new_state, train_state.state)
            new_opt_state = keep(new_opt_state, train_state.opt_state)
            logs["nonfinite"] = ~finite
        elif nan_guard == "report":
            logs["nonfinite"] = ~jnp.isfinite(total)
        logs.update(_batch_metrics(metrics, outputs, y, w))
        if axis_name is not None:
            logs = _reduce_logs(metrics, logs, axis_name)
        return (
            TrainState(train_state.step + 1, new_params, new_state, new_opt_state, train_state.key),
            logs,
        )

    return step


def eval_step(
    model: Layer | Callable,
    loss: str | Callable | None = None,
    *,
    metrics: Mapping[str, Any] | None = None,
    compute_dtype=None,
    axis_name: Hashable | tuple | None = None,
) -> Callable[[Params, State, Any], dict]:
    """Build ``(params, state, batch) -> logs``: the model in inference mode on one batch.

    ``logs`` has ``"loss"`` (when a loss is given) and each metric's state
    for the batch; merge them over batches with the metrics' ``merge``.

    With ``axis_name`` (inside ``jax.shard_map`` / ``jax.pmap``, the batch
    split over that axis) the loss is the global batch's (each device's loss
    weighted by its share of the batch) and the metric states are merged over
    the axis, as in :func:`train_step`.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> from funcnet import Dense
        >>> model = Dense(1)
        >>> params, state = model.init(jax.random.key(0), jnp.zeros((1, 2)))
        >>> logs = eval_step(model, "mean_squared_error")(params, state, (jnp.ones((4, 2)),
        ...                                                              jnp.zeros((4, 1))))
        >>> logs["loss"].shape
        ()
    """
    model = as_layer(model)
    loss_fn = _resolve_loss(loss) if loss is not None else None
    axis_name = _check_axis_name(axis_name, "eval_step")

    def step(params, state, batch) -> dict:
        x, y, w = _unpack(batch, "eval_step")
        outputs, _ = model.apply(
            _cast_floats(params, compute_dtype), state, _cast_floats(x, compute_dtype)
        )
        outputs = _cast_floats(outputs, jnp.float32) if compute_dtype is not None else outputs
        logs = {}
        if loss_fn is not None:
            logs["loss"] = loss_fn(outputs, y, weights=w) if w is not None else loss_fn(outputs, y)
            if axis_name is not None:
                share = _share(w, axis_name)
                logs["loss"] = jax.lax.psum(logs["loss"] * share, axis_name)
        logs.update(_batch_metrics(metrics, outputs, y, w))
        if axis_name is not None:
            logs = _reduce_logs(metrics, logs, axis_name)
        return logs

    return step


def predict_step(model: Layer | Callable) -> Callable[[Params, State, Any], Any]:
    """Build ``(params, state, inputs) -> outputs``: the model in inference mode.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> from funcnet import Dense
        >>> params, state = Dense(3).init(jax.random.key(0), jnp.zeros((1, 2)))
        >>> predict_step(Dense(3))(params, state, jnp.ones((5, 2))).shape
        (5, 3)
    """
    model = as_layer(model)

    def step(params, state, inputs):
        return model.apply(params, state, inputs)[0]

    return step
