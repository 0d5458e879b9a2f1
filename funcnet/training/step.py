"""The pure training step: ``TrainState`` and ``train_step`` / ``eval_step``.

``train_step(model, loss, optimizer, ...)`` returns a pure function
``(train_state, batch) -> (train_state, logs)`` that the caller compiles
(``jax.jit(step, donate_argnums=0)``) or fuses (``lax.scan``). Nothing else
is involved: the model is its two functions, the optimizer an optax
``GradientTransformation`` (with freezing, clipping and skipping of
non-finite updates composed into it, see :func:`compose_optimizer`), the
state a NamedTuple of arrays. The step itself keeps only what optax cannot
do: the loss and its regularization, mixed precision, loss scaling,
gradient accumulation, augmentation and explicit collectives.

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

from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from funcnet import _checks, distributed
from funcnet import losses as losses_lib
from funcnet import metrics as metrics_lib
from funcnet.core import Layer, Params, PRNGKey, State, as_layer, spec_of
from funcnet.training import collectives, keys
from funcnet.training.accumulate import accumulated_gradients
from funcnet.training.options import (
    check_optimizer,
    loss_scale_of,
    path_mask,
    policy_model,
    update_was_finite,
)

__all__ = ["TrainState", "eval_step", "metric_dict", "predict_step", "resolve_loss", "train_step"]


class TrainState(NamedTuple):
    """Everything a training run changes, as one pytree.

    Attributes:
        step: number of updates applied (int32 scalar); the step's random key
            is ``fold_in(key, step)`` (see :mod:`funcnet.training.keys`), so a
            run resumed from a saved state draws the same numbers as one that
            never stopped.
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
        check_optimizer(optimizer, "TrainState.create")
        spec = spec_of(inputs)

        def build(key):
            params, state = model.init(keys.init_key(key), spec)
            return cls(
                step=jnp.zeros((), jnp.int32),
                params=params,
                state=state,
                opt_state=optimizer.init(params),
                key=keys.run_key(key),
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


def unpack_batch(batch, where: str):
    """``(x, y, weights_or_None)`` of a batch ``(x, y)`` / ``(x, y, weights)``; TypeError else."""
    if isinstance(batch, (tuple, list)) and len(batch) in (2, 3):
        x, y, *rest = batch
        return x, y, (rest[0] if rest else None)
    raise TypeError(
        f"{where}: expected a batch `(inputs, targets)` or `(inputs, targets, weights)`, got "
        f"{type(batch).__name__}"
        + (f" of length {len(batch)}" if isinstance(batch, (tuple, list)) else "")
        + "."
    )


def metric_dict(metrics) -> dict:
    """``{name: Metric}`` from None, a name, a Metric, a list of them or a mapping.

    Examples:
        >>> sorted(metric_dict(["accuracy", "mae"]))
        ['accuracy', 'mae']
    """
    if metrics is None:
        return {}
    if isinstance(metrics, Mapping):  # names resolved; any object with the Metric methods kept
        return {k: metrics_lib.get(m) if isinstance(m, str) else m for k, m in metrics.items()}
    if isinstance(metrics, (str, metrics_lib.Metric)):
        metrics = [metrics]
    out = {}
    for m in metrics:
        metric = metrics_lib.get(m)
        out[m if isinstance(m, str) else metric.name] = metric
    return out


def _batch_metrics(metrics, outputs, targets, weights) -> dict:
    """Per-batch states of the streaming metrics; the caller merges them over batches."""
    return {
        name: metric.update(metric.init(), outputs, targets, weights=weights)
        for name, metric in (metrics or {}).items()
    }


def resolve_loss(loss, where: str = "train_step") -> Callable:
    """A loss function from a function or a name (:func:`funcnet.losses.get`)."""
    loss_fn = losses_lib.get(loss) if isinstance(loss, str) else loss
    if not callable(loss_fn):
        raise TypeError(f"{where}: `loss` must be a function or a name, got {loss!r}.")
    return loss_fn


def _call_loss(loss_fn, outputs, y, w):
    """The loss of a batch, checked to be one number (a per-example loss is a common slip)."""
    value = loss_fn(outputs, y, weights=w) if w is not None else loss_fn(outputs, y)
    shape = jnp.shape(value)
    if shape != ():
        name = getattr(loss_fn, "__name__", type(loss_fn).__name__)
        raise ValueError(
            f"the loss `{name}` returned shape {shape} for outputs {jnp.shape(outputs)}; it must "
            "return one number for the batch. optax's losses (e.g. "
            "`optax.softmax_cross_entropy_with_integer_labels`) are per example: wrap them as "
            "`lambda o, t, weights=None: optax_loss(o, t).mean()`, or use a funcnet loss name "
            "such as 'sparse_categorical_cross_entropy'."
        )
    return value


def _penalty(params, l1: float, l2: float, regularize) -> jax.Array:
    """``l1 * sum|w| + l2 * sum w**2`` over the params whose path matches ``regularize``."""
    total = jnp.zeros((), jnp.float32)
    if not (l1 or l2):
        return total
    mask = path_mask(params, regularize)
    for p, chosen in zip(jax.tree.leaves(params), jax.tree.leaves(mask)):
        if chosen:
            p = p.astype(jnp.float32)
            total = total + l1 * jnp.sum(jnp.abs(p)) + l2 * jnp.sum(p * p)
    return total


class _Options(NamedTuple):
    """train_step's checked options, shared by its named steps."""

    loss_fn: Callable
    l1: float
    l2: float
    regularize: Any
    accumulate_steps: int
    loss_scale: float
    axis_name: Any


def _objective(model, o: _Options):
    """``objective(params, state, x, y, w, key, share) -> (scaled loss, (loss, outputs, state))``.

    ``share`` weighs this part of the batch (a micro-batch, a device's rows)
    in the loss of the whole batch, times the loss scale.
    """

    def objective(params, state, x, y, w, key, share):
        outputs, new_state = model.apply(params, state, x, key=key, train=True)
        total = _call_loss(o.loss_fn, outputs, y, w) + _penalty(params, o.l1, o.l2, o.regularize)
        return total * share, (total, outputs, new_state)

    return objective


def _extra_args(optimizer, total, grads, value_fn) -> dict:
    """What optimizers that take extra arguments get (``optax.lbfgs``, ``reduce_on_plateau``)."""
    if not isinstance(optimizer, optax.GradientTransformationExtraArgs):
        return {}
    return {"value": total, "grad": grads, "value_fn": value_fn}


def _check_step_options(accumulate_steps, l1, l2, loss_scale, nan_guard, augment) -> None:
    _checks.check_positive_int("train_step", "accumulate_steps", accumulate_steps)
    if l1 < 0 or l2 < 0:
        raise ValueError(f"train_step: `l1` and `l2` must be >= 0, got {l1} and {l2}.")
    if loss_scale <= 0:
        raise ValueError(f"train_step: `loss_scale` must be > 0, got {loss_scale}.")
    if augment is not None and not callable(augment):
        raise TypeError(
            f"train_step: `augment` must be a function `(key, inputs) -> inputs`, got "
            f"{type(augment).__name__}; call the factory, e.g. `augment.random_flip()`."
        )
    if nan_guard == "skip":
        raise ValueError(
            "train_step: skipping non-finite updates is an optimizer option: pass "
            "`compose_optimizer(optimizer, skip_nonfinite=True)` to TrainState.create and "
            "train_step (`nan_guard='report'` only adds the log)."
        )
    if nan_guard not in ("report", False):
        raise ValueError(f"train_step: `nan_guard` must be 'report' or False, got {nan_guard!r}.")


def train_step(
    model: Layer | Callable,
    loss: str | Callable,
    optimizer: optax.GradientTransformation,
    *,
    metrics: Mapping[str, Any] | Sequence | str | None = None,
    l1: float = 0.0,
    l2: float = 0.0,
    regularize: str | Sequence[str] = r"(^|/)w$",
    accumulate_steps: int = 1,
    policy=None,
    compute_dtype=None,
    loss_scale: float = 1.0,
    nan_guard: str | bool = False,
    augment: Callable | None = None,
    augment_targets: bool = False,
    axis_name: Hashable | tuple | None = None,
    mesh: jax.sharding.Mesh | None = None,
    param_sharding=None,
) -> Callable[[TrainState, Any], tuple[TrainState, dict]]:
    """Build the pure update ``(train_state, batch) -> (train_state, logs)``.

    A batch is ``(inputs, targets)`` or ``(inputs, targets, weights)``;
    ``inputs`` may be any pytree. The model runs with ``train=True`` and the
    key of the step (see :mod:`funcnet.training.keys`).

    Args:
        model: the layer to train.
        loss: ``(outputs, targets, *, weights=None) -> scalar`` or a name from
            :func:`funcnet.losses.get`.
        optimizer: an optax ``GradientTransformation``, the same one given to
            ``TrainState.create``. Schedules, weight decay and chains are
            optax's; freezing, clipping and skipping non-finite updates are
            composed into it with :func:`compose_optimizer`. Optimizers that
            take extra arguments get them (``value``: the loss, ``grad``,
            ``value_fn``: the loss of the batch as a function of the params),
            so ``optax.lbfgs`` and ``optax.contrib.reduce_on_plateau`` work.
        metrics: ``{name: Metric}``, or names / Metrics as ``fit`` takes them
            (see :func:`metric_dict`); ``logs[name]`` is that metric's state
            for this batch, to ``merge`` over batches.
        l1, l2: coefficients of ``sum|w|`` and ``sum w**2`` added to the loss
            over the params whose path (see :func:`funcnet.core.path_str`)
            matches a regex in ``regularize`` (default: every leaf named ``w``,
            i.e. Dense and Conv kernels, not biases or norm scales).
        accumulate_steps: split the batch into this many micro-batches, run
            them one after another (``lax.scan``) and apply their gradients
            once, each weighted by its share of the batch's total sample
            weight: the memory of a small batch, the update of a large one.
            The batch size must be divisible by it.
        policy: a precision policy (:func:`funcnet.get_policy`: e.g.
            ``"mixed_bfloat16"``): the model runs as
            ``with_policy(model, policy)``, so the forward and backward passes
            compute in its compute dtype while the params, gradients and the
            optimizer keep the params' dtype, and the loss sees outputs in its
            output dtype (float32 for the mixed policies).
        compute_dtype: e.g. ``jnp.bfloat16``: short for a policy with that
            compute dtype and float32 outputs.
        loss_scale: multiply the loss before differentiating and divide the
            gradient after, before the optimizer (and so before clipping):
            static loss scaling for ``float16``, with
            ``compose_optimizer(..., skip_nonfinite=True)`` to skip
            overflowing steps. An optimizer with :func:`dynamic_loss_scale`
            (``compose_optimizer(..., loss_scale="dynamic")``) sets the scale
            itself, from its state, every step; the step logs it as
            ``"loss_scale"``.
        nan_guard: ``False`` (default): no check in the step (``fit`` still
            checks every step's loss and raises naming the first NaN/Inf one).
            ``"report"``: ``logs["nonfinite"]`` is True when the loss is
            NaN/Inf (measured: a step of a 32-64-64-1 MLP goes from ~38 to
            ~86 µs). With an optimizer that skips non-finite updates the log is
            always there, and the model state is kept on a skipped step too.
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
            ``shard_map`` and ``pmap`` alike (see
            :mod:`funcnet.training.collectives`); the logged loss is the global
            one and metric states are merged over the axis. BatchNorm
            statistics are global only with ``BatchNorm(axis_name=...)``. Each
            device's random key is folded with its axis index. Weighted batches
            assume a loss that is a weighted mean ``sum(w * l) / sum(w)``, as
            funcnet's losses are. Not needed (leave None) with ``jax.jit`` and
            sharded arrays, e.g. ``fit(..., mesh=...)``.
        mesh, param_sharding: for a step you jit yourself on a mesh (e.g.
            ``("data", "model")``): the step constrains the batch's rows to the
            mesh's ``"data"`` axis and the train state, in and out, to
            ``param_sharding`` (sharding rules such as
            ``distributed.tensor_parallel()``, or ``"replicated"``/``"fsdp"``;
            default replicated), so the compiler keeps every param where the
            rules put it. Place the first state with
            :func:`funcnet.distributed.train_state_shardings` (``fit`` does all this).

    Returns:
        ``step(train_state, batch) -> (train_state, logs)`` with
        ``logs = {"loss": scalar, **metric_states}`` (and ``"nonfinite"``, see
        ``nan_guard``).

    Raises:
        ValueError: for bad arguments (here) or a batch not divisible into
            ``accumulate_steps`` micro-batches (when traced).
    """
    model = policy_model(model, policy, compute_dtype, "train_step")
    metrics = metric_dict(metrics)
    check_optimizer(optimizer, "train_step")
    _check_step_options(accumulate_steps, l1, l2, loss_scale, nan_guard, augment)
    o = _Options(
        loss_fn=resolve_loss(loss),
        l1=l1,
        l2=l2,
        regularize=regularize,
        accumulate_steps=accumulate_steps,
        loss_scale=float(loss_scale),
        axis_name=collectives.check_axis_name(axis_name, "train_step"),
    )
    losses_lib.check_model_loss(model, o.loss_fn, "train_step")
    objective = _objective(model, o)
    gradients = accumulated_gradients(objective, accumulate_steps)

    def step(train_state: TrainState, batch) -> tuple[TrainState, dict]:
        x, y, w = unpack_batch(batch, "train_step")
        key, x, y = _step_inputs(train_state, x, y, o.axis_name, augment, augment_targets)
        grads, total, outputs, new_state = _global_gradients(
            gradients, train_state, x, y, w, key, o
        )

        def value_fn(params):  # the loss of this batch at other params (line searches)
            return objective(params, train_state.state, x, y, w, key, 1.0)[1][0]

        extra = _extra_args(optimizer, total, grads, value_fn)
        updates, new_opt_state = optimizer.update(
            grads, train_state.opt_state, train_state.params, **extra
        )
        logs = {"loss": total}
        scale = loss_scale_of(train_state.opt_state)
        if scale is not None:
            logs["loss_scale"] = scale
        finite = update_was_finite(new_opt_state)
        if finite is not None:  # the optimizer skipped a non-finite update: keep the model state
            new_state = jax.tree.map(
                lambda a, b: jnp.where(finite, a, b), new_state, train_state.state
            )
            logs["nonfinite"] = ~finite
        elif nan_guard == "report":
            logs["nonfinite"] = ~jnp.isfinite(total)
        logs.update(_batch_metrics(metrics, outputs, y, w))
        if o.axis_name is not None:
            logs = collectives.merge_over_axis(metrics, logs, o.axis_name)
        new = train_state._replace(
            step=train_state.step + 1,
            params=optax.apply_updates(train_state.params, updates),
            state=new_state,
            opt_state=new_opt_state,
        )
        return new, logs

    if mesh is None:
        if param_sharding is not None:
            raise ValueError(
                "train_step: `param_sharding` needs a `mesh`, e.g. "
                "`jax.make_mesh((2, 4), ('data', 'model'))`."
            )
        return step
    return _on_mesh(step, model, optimizer, mesh, param_sharding)


def _on_mesh(step, model, optimizer, mesh, param_sharding):
    """``step`` with its batch split over the mesh's batch axes and its train state (in and
    out) constrained to ``param_sharding`` (rules, or ``"replicated"``/``"fsdp"``)."""
    distributed.check_mesh(mesh, "train_step")
    if any(t != jax.sharding.AxisType.Auto for t in mesh.axis_types):
        raise ValueError(
            f"train_step: `mesh` needs Auto axes (the step constrains shardings, which "
            f"Explicit axes refuse), got axis types {mesh.axis_types}; pass "
            "`distributed.auto_mesh(mesh)` and place the state and batches on it."
        )
    if param_sharding is None or isinstance(param_sharding, str):
        mode = param_sharding or "replicated"
        distributed.state_shardings({}, mesh, mode)  # checks the mode now

        def shardings(ts, x):
            return distributed.state_shardings(ts, mesh, mode)
    else:
        rules = distributed.resolve_rules(param_sharding, "train_step")

        def shardings(ts, x):
            one = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), x)
            return distributed.train_state_shardings(ts, optimizer, model, one, mesh, rules)

    rows = distributed.batch_sharding(mesh)

    def constrain(ts, sh):  # the key stays as it is: typed keys take no constraint
        parts = (ts.step, ts.params, ts.state, ts.opt_state)
        done = jax.lax.with_sharding_constraint(parts, (sh.step, sh.params, sh.state, sh.opt_state))
        return ts._replace(step=done[0], params=done[1], state=done[2], opt_state=done[3])

    def sharded_step(train_state, batch):
        sh = shardings(train_state, unpack_batch(batch, "train_step")[0])
        batch = jax.lax.with_sharding_constraint(batch, jax.tree.map(lambda _: rows, batch))
        new, logs = step(constrain(train_state, sh), batch)
        return constrain(new, sh), logs

    return sharded_step


def _step_inputs(train_state, x, y, axis_name, augment, augment_targets):
    """The model's key for this step (per device with ``axis_name``) and the augmented batch."""
    key = keys.step_key(train_state.key, train_state.step)
    if axis_name is not None:  # a different dropout / augmentation draw on every device
        key = jax.random.fold_in(key, jax.lax.axis_index(axis_name))
    if augment is not None:
        key, aug_key = jax.random.split(key)
        if augment_targets:
            x, y = augment(aug_key, (x, y))
        else:
            x = augment(aug_key, x)
    return key, x, y


def _global_gradients(gradients, train_state, x, y, w, key, o: _Options):
    """The gradient and loss of the whole (global) batch, unscaled.

    With ``axis_name`` each device differentiates its share of the global loss
    w.r.t. params marked as per-device, then the gradients are summed: right
    under ``pmap`` and ``shard_map`` alike.
    """
    params = train_state.params
    scale = _loss_scale(train_state.opt_state, o.loss_scale)
    if o.axis_name is None:
        grads, total, outputs, new_state = gradients(params, train_state.state, x, y, w, key, scale)
    else:
        share = collectives.device_share(w, o.axis_name)
        local = collectives.varying_params(params, o.axis_name)
        grads, total, outputs, new_state = gradients(
            local, train_state.state, x, y, w, key, share * scale
        )
        grads = jax.lax.psum(grads, o.axis_name)
        total = jax.lax.psum(total * share, o.axis_name)
    if not (isinstance(scale, float) and scale == 1.0):
        grads = jax.tree.map(lambda g: (g.astype(jnp.float32) / scale).astype(g.dtype), grads)
    return grads, total, outputs, new_state


def _loss_scale(opt_state, static: float):
    """The loss scale of this step: the optimizer's dynamic one, or the static one."""
    dynamic = loss_scale_of(opt_state)
    if dynamic is None:
        return static
    if static != 1.0:
        raise ValueError(
            f"train_step: the optimizer has a dynamic loss scale, so `loss_scale={static}` "
            "cannot apply too; drop one of them."
        )
    return dynamic


def eval_step(
    model: Layer | Callable,
    loss: str | Callable | None = None,
    *,
    metrics: Mapping[str, Any] | Sequence | str | None = None,
    policy=None,
    compute_dtype=None,
    axis_name: Hashable | tuple | None = None,
) -> Callable[[Params, State, Any], dict]:
    """Build ``(params, state, batch) -> logs``: the model in inference mode on one batch.

    ``logs`` has ``"loss"`` (when a loss is given) and each metric's state
    for the batch; merge them over batches with the metrics' ``merge``.

    With ``axis_name`` (inside ``jax.shard_map`` / ``jax.pmap``, the batch
    split over that axis) the loss is the global batch's (each device's loss
    weighted by its share of the batch) and the metric states are merged over
    the axis, as in :func:`train_step`. ``policy`` and ``compute_dtype`` are
    :func:`train_step`'s.

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
    model = policy_model(model, policy, compute_dtype, "eval_step")
    metrics = metric_dict(metrics)
    loss_fn = resolve_loss(loss, "eval_step") if loss is not None else None
    axis_name = collectives.check_axis_name(axis_name, "eval_step")

    def step(params, state, batch) -> dict:
        x, y, w = unpack_batch(batch, "eval_step")
        outputs, _ = model.apply(params, state, x)
        logs = {}
        if loss_fn is not None:
            logs["loss"] = _call_loss(loss_fn, outputs, y, w)
            if axis_name is not None:
                share = collectives.device_share(w, axis_name)
                logs["loss"] = jax.lax.psum(logs["loss"] * share, axis_name)
        logs.update(_batch_metrics(metrics, outputs, y, w))
        if axis_name is not None:
            logs = collectives.merge_over_axis(metrics, logs, axis_name)
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
