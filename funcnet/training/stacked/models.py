"""The stack: N models' states on a leading model axis, their hyperparameters, devices."""

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
from funcnet._checks import check_positive_int, is_int
from funcnet.core import Layer, as_layer, spec_of
from funcnet.training.options import check_optimizer
from funcnet.training.step import (
    TrainState,
)

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


def num_models(tree: Any, where: str) -> int:
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
    n = num_models(train_state, where)
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
    n, size = num_models(tree, "shard_models"), mesh.shape[axis]
    if n % size:
        raise ValueError(
            f"shard_models: {n} models do not split evenly over the {size} devices of mesh axis "
            f"{axis!r}; use a number of models that is a multiple of {size}."
        )
    return distributed.place(tree, NamedSharding(mesh, P(axis)))
