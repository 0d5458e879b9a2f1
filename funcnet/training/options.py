"""Training options as optax transforms composed with the user's optimizer.

Freezing, gradient clipping, skipping non-finite updates and dynamic loss
scaling are not flags inside the step: they are optax
``GradientTransformation``\\ s wrapped around the optimizer
(``optax.multi_transform`` with ``optax.set_to_zero``,
``optax.clip_by_global_norm``, ``optax.apply_if_finite``,
:func:`dynamic_loss_scale`), so their state lives in ``opt_state`` and any
optax user reads them at once. Pass the
composed optimizer to both :meth:`TrainState.create` and :func:`train_step`
(``fit`` does this itself for its ``clip_norm=``, ``freeze=``,
``nan_guard="skip"`` arguments).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from funcnet import _checks
from funcnet.combinators.precision import Policy, get_policy, with_policy
from funcnet.core import Layer, Params, as_layer, path_str

__all__ = [
    "DynamicLossScaleState",
    "compose_optimizer",
    "dynamic_loss_scale",
    "fit_options",
    "learning_rate_of",
    "loss_scale_of",
    "path_mask",
    "policy_model",
]

# apply_if_finite gives up skipping after this many non-finite steps in a row; "skip" never does.
_NEVER_GIVE_UP = 2**30


def path_mask(params: Params, pattern: str | Sequence[str] | None) -> Any:
    """A pytree of bools: True where the leaf's path (see :func:`funcnet.core.path_str`)
    matches one of the regex ``pattern``\\ s (``re.search``); all False for ``None``.

    Examples:
        >>> import jax.numpy as jnp
        >>> path_mask(({"w": jnp.ones(2), "b": jnp.ones(1)}, {"w": jnp.ones(1)}), r"^0/")
        ({'b': True, 'w': True}, {'w': False})
    """
    if pattern is None:
        return jax.tree.map(lambda _: False, params)
    patterns = [pattern] if isinstance(pattern, str) else list(pattern)
    compiled = [re.compile(p) for p in patterns]
    return jax.tree_util.tree_map_with_path(
        lambda path, _: any(c.search(path_str(path)) for c in compiled), params
    )


def check_optimizer(optimizer, where: str) -> None:
    """Raise a TypeError naming ``where`` unless ``optimizer`` is an optax transformation."""
    if not isinstance(optimizer, optax.GradientTransformation):
        raise TypeError(
            f"{where}: `optimizer` must be an optax GradientTransformation (e.g. "
            f"`optax.adam(1e-3)`), got {type(optimizer).__name__}."
        )


def _freeze_labels(pattern):
    def labels(params):
        mask = path_mask(params, pattern)
        if not any(jax.tree.leaves(mask)):
            some = [path_str(p) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]][:8]
            raise ValueError(
                f"compose_optimizer: `freeze={pattern!r}` matches no parameter path; paths look "
                f"like {some}. Use a regex such as r'^0/' (the first layer of a serial)."
            )
        return jax.tree.map(lambda frozen: "frozen" if frozen else "trained", mask)

    return labels


def compose_optimizer(
    optimizer: optax.GradientTransformation,
    *,
    clip_norm: float | None = None,
    freeze: str | Sequence[str] | None = None,
    skip_nonfinite: bool = False,
    loss_scale: str | None = None,
) -> optax.GradientTransformation:
    """``optimizer`` with the usual training options, each an optax transform.

    Args:
        optimizer: an optax ``GradientTransformation``.
        clip_norm: clip the gradient to this global norm first
            (``optax.clip_by_global_norm``; frozen params do not count).
        freeze: regex pattern(s) of param paths that are not trained
            (``optax.multi_transform`` with ``optax.set_to_zero``): their update
            is zero and the optimizer keeps no moments for them, e.g.
            ``r"^0/"`` freezes the first layer of a ``serial``.
        skip_nonfinite: skip every update whose gradient has a NaN/Inf
            (``optax.apply_if_finite``): params and optimizer state stay as they
            were, and :func:`train_step` also keeps the model state (BatchNorm
            statistics) and logs ``"nonfinite"``. For ``float16`` with
            a static ``loss_scale`` in :func:`train_step`.
        loss_scale: ``"dynamic"``: wrap everything in :func:`dynamic_loss_scale`
            (default settings) for ``float16`` training; it skips overflowing
            updates itself.

    Returns:
        The composed transformation; pass it to both :meth:`TrainState.create`
        and :func:`train_step`.

    Raises:
        TypeError: when ``optimizer`` is not an optax transformation.
        ValueError: for ``clip_norm <= 0``; at init, for a ``freeze`` pattern
            that matches no parameter.

    Examples:
        >>> import jax, jax.numpy as jnp, optax
        >>> import funcnet as fn
        >>> model = fn.serial(fn.Dense(4), fn.Dense(1))
        >>> opt = compose_optimizer(optax.adam(1e-2), clip_norm=1.0, freeze=r"^0/")
        >>> ts = fn.TrainState.create(model, opt, jax.random.key(0), jnp.zeros((1, 3)))
        >>> step = jax.jit(fn.train_step(model, "mse", opt))
        >>> ts2, _ = step(ts, (jnp.ones((8, 3)), jnp.zeros((8, 1))))
        >>> bool((ts2.params[0]["w"] == ts.params[0]["w"]).all())  # frozen
        True
    """
    check_optimizer(optimizer, "compose_optimizer")
    if clip_norm is not None and not clip_norm > 0:
        raise ValueError(f"compose_optimizer: `clip_norm` must be > 0, got {clip_norm}.")
    tx = optimizer
    if clip_norm is not None:
        tx = optax.chain(optax.clip_by_global_norm(clip_norm), tx)
    if freeze is not None:
        tx = optax.multi_transform(
            {"trained": tx, "frozen": optax.set_to_zero()}, _freeze_labels(freeze)
        )
    if skip_nonfinite:
        tx = optax.apply_if_finite(tx, _NEVER_GIVE_UP)
    if loss_scale is not None:
        if loss_scale != "dynamic":
            raise ValueError(
                f"compose_optimizer: `loss_scale` must be 'dynamic' or None, got {loss_scale!r}; "
                "for a static scale pass `loss_scale=` to train_step."
            )
        tx = dynamic_loss_scale(tx)
    return tx


class DynamicLossScaleState(NamedTuple):
    """The state of :func:`dynamic_loss_scale`: the scale and its bookkeeping."""

    scale: jax.Array  # float32: the factor the loss is multiplied by before differentiating
    good_steps: jax.Array  # int32: finite steps since the scale last changed
    last_finite: jax.Array  # bool: whether the last update was applied
    skipped: jax.Array  # int32: updates skipped so far (a non-finite gradient)
    inner_state: Any


def dynamic_loss_scale(
    optimizer: optax.GradientTransformation,
    *,
    initial_scale: float = 2.0**15,
    growth_interval: int = 2000,
    factor: float = 2.0,
    min_scale: float = 1.0,
) -> optax.GradientTransformationExtraArgs:
    """``optimizer`` behind a dynamic loss scale, for ``float16`` training.

    :func:`train_step` multiplies the loss by the current scale before
    differentiating (so small float16 gradients do not flush to zero) and
    divides the gradient by it before this transform sees it. Here a
    gradient with a NaN/Inf (an overflow) skips the update (params, optimizer
    state and, in :func:`train_step`, the model state stay as they were; the
    step logs ``"nonfinite"``) and divides the scale by ``factor`` (not below
    ``min_scale``); ``growth_interval`` finite steps in a row multiply it by
    ``factor``. This is the rule of PyTorch's ``GradScaler`` and Keras'
    ``LossScaleOptimizer``. The state (:class:`DynamicLossScaleState`) counts
    the skipped updates; :func:`loss_scale_of` reads the scale.

    Raises:
        TypeError: when ``optimizer`` is not an optax transformation.
        ValueError: for a scale, factor or interval out of range.

    Examples:
        >>> import jax.numpy as jnp, optax
        >>> opt = dynamic_loss_scale(optax.sgd(0.1), initial_scale=8.0, growth_interval=2)
        >>> s = opt.init({"w": jnp.zeros(2)})
        >>> for g in ([1.0, 1.0], [1.0, 1.0], [jnp.inf, 1.0]):
        ...     u, s = opt.update({"w": jnp.array(g)}, s)
        ...     print(float(s.scale), bool(s.last_finite), u["w"].tolist())
        8.0 True [-0.1, -0.1]
        16.0 True [-0.1, -0.1]
        8.0 False [0.0, 0.0]
    """
    check_optimizer(optimizer, "dynamic_loss_scale")
    _checks.check_positive_int("dynamic_loss_scale", "growth_interval", growth_interval)
    if not (min_scale > 0 and initial_scale >= min_scale and factor > 1):
        raise ValueError(
            "dynamic_loss_scale: need 0 < min_scale <= initial_scale and factor > 1, got "
            f"min_scale={min_scale}, initial_scale={initial_scale}, factor={factor}."
        )
    inner = optax.with_extra_args_support(optimizer)

    def init(params):
        return DynamicLossScaleState(
            scale=jnp.asarray(initial_scale, jnp.float32),
            good_steps=jnp.zeros((), jnp.int32),
            last_finite=jnp.asarray(True),
            skipped=jnp.zeros((), jnp.int32),
            inner_state=inner.init(params),
        )

    def update(updates, state, params=None, **extra):
        finite = jnp.all(jnp.array([jnp.all(jnp.isfinite(g)) for g in jax.tree.leaves(updates)]))
        new_updates, new_inner = inner.update(updates, state.inner_state, params, **extra)
        keep = lambda new, old: jnp.where(finite, new, old)
        new_updates = jax.tree.map(lambda u: keep(u, jnp.zeros_like(u)), new_updates)
        new_inner = jax.tree.map(keep, new_inner, state.inner_state)
        grow = finite & (state.good_steps + 1 >= growth_interval)
        scale = jnp.where(
            finite,
            jnp.where(grow, state.scale * factor, state.scale),
            jnp.maximum(state.scale / factor, min_scale),
        )
        return new_updates, DynamicLossScaleState(
            scale=scale,
            good_steps=jnp.where(finite & ~grow, state.good_steps + 1, 0),
            last_finite=finite,
            skipped=state.skipped + (~finite).astype(jnp.int32),
            inner_state=new_inner,
        )

    return optax.GradientTransformationExtraArgs(init, update)


def _outermost(opt_state, kinds):
    for node in jax.tree.leaves(opt_state, is_leaf=lambda s: isinstance(s, kinds)):
        if isinstance(node, kinds):
            return node
    return None


def learning_rate_of(opt_state) -> float | None:
    """The current learning rate, when the optimizer was built with ``optax.inject_hyperparams``
    (``None`` otherwise); what ``fit`` logs as ``learning_rate``.

    Examples:
        >>> import jax.numpy as jnp, optax
        >>> opt = optax.inject_hyperparams(optax.sgd)(learning_rate=0.1)
        >>> learning_rate_of(opt.init({"w": jnp.zeros(2)}))
        0.1...
        >>> learning_rate_of(optax.sgd(0.1).init({"w": jnp.zeros(2)})) is None
        True
    """
    for node in jax.tree.leaves(
        opt_state, is_leaf=lambda s: hasattr(s, "hyperparams") and isinstance(s.hyperparams, dict)
    ):
        hyper = getattr(node, "hyperparams", None)
        if isinstance(hyper, dict) and "learning_rate" in hyper:
            return float(hyper["learning_rate"])
    return None


def loss_scale_of(opt_state) -> jax.Array | None:
    """The current scale of the :func:`dynamic_loss_scale` in ``opt_state``; None without one."""
    node = _outermost(opt_state, DynamicLossScaleState)
    return None if node is None else node.scale


def update_was_finite(opt_state) -> jax.Array | None:
    """``last_finite`` of the outermost ``optax.apply_if_finite`` or
    :func:`dynamic_loss_scale` state; None without one."""
    node = _outermost(opt_state, (optax.ApplyIfFiniteState, DynamicLossScaleState))
    return None if node is None else node.last_finite


def policy_model(model, policy, compute_dtype, where: str) -> Layer:
    """``model`` under ``policy`` (or ``compute_dtype``: that compute dtype, float32 outputs)."""
    if policy is not None and compute_dtype is not None:
        raise ValueError(
            f"{where}: give `policy=` or `compute_dtype=`, not both "
            "(`compute_dtype=jnp.bfloat16` is `policy='params=float32,compute=bfloat16,"
            "output=float32'` without the cast of params at init)."
        )
    if compute_dtype is not None:
        policy = Policy(compute_dtype=jnp.dtype(compute_dtype), output_dtype=jnp.float32)
    model = as_layer(model)
    return model if policy is None else with_policy(model, get_policy(policy, where))


_OPTIMIZER_OPTIONS = ("clip_norm", "freeze")


def fit_options(model, optimizer, step_options: dict, where: str):
    """``(model, optimizer, rest)``: ``fit``'s options applied, the rest for :func:`train_step`.

    ``policy`` / ``compute_dtype`` wrap the model (:func:`policy_model`);
    ``clip_norm``, ``freeze``, ``nan_guard="skip"`` and ``loss_scale="dynamic"``
    (or a float16 policy without a ``loss_scale``) are composed into the
    optimizer (:func:`compose_optimizer`).
    """
    rest = dict(step_options)
    policy = get_policy(rest.pop("policy", None), where)
    model = policy_model(model, policy, rest.pop("compute_dtype", None), where)
    options = {k: rest.pop(k) for k in _OPTIMIZER_OPTIONS if k in rest}
    if rest.get("nan_guard") == "skip":
        rest.pop("nan_guard")
        options["skip_nonfinite"] = True
    float16 = policy is not None and policy.compute_dtype == jnp.float16
    if rest.get("loss_scale") == "dynamic" or (float16 and "loss_scale" not in rest):
        rest.pop("loss_scale", None)
        options["loss_scale"] = "dynamic"
    return model, (compose_optimizer(optimizer, **options) if options else optimizer), rest
