"""Magnitude pruning: masks, a transform that keeps them, a sparsity schedule, a report.

A mask tree has the structure of ``params``: a bool array of each leaf's shape,
``True`` where the weight is kept. Leaves whose path (:func:`funcnet.core.path_str`)
does not match ``pattern`` (by default everything but the kernels ``w`` of
``Dense``/``Conv``) get all-True masks, so a mask tree always lines up with its
params and with the updates of any optimizer.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from funcnet.core import Params, path_str

__all__ = [
    "GradualPruningState",
    "KERNELS",
    "apply_masks",
    "gradual_pruning",
    "keep_masked",
    "magnitude_masks",
    "polynomial_sparsity",
    "sparsity_report",
]

#: The default ``pattern``: the kernels ``w`` of ``Dense`` and ``Conv`` (not biases, norms, tables).
KERNELS = r"(^|/)w$"
_SCOPES = ("global", "layer")


def _check_sparsity(where: str, sparsity) -> None:
    """Check a concrete ``sparsity`` (traced values, inside a schedule, pass)."""
    try:
        value = float(sparsity)
    except jax.errors.ConcretizationTypeError:
        return
    except (TypeError, ValueError):
        raise TypeError(
            f"{where}: `sparsity` must be a number in [0, 1] (the fraction pruned), got "
            f"{sparsity!r}."
        ) from None
    if not 0.0 <= value <= 1.0:
        raise ValueError(
            f"{where}: `sparsity` must be in [0, 1] (the fraction of weights pruned), got "
            f"{sparsity!r}; e.g. `sparsity=0.8` keeps 20% of the weights."
        )


def _matched(where: str, params: Params, pattern: str) -> list[bool]:
    """For each leaf, whether its path matches ``pattern``; an error when none does."""
    compiled = re.compile(pattern)
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    paths = [path_str(p) for p, _ in flat]
    matched = [bool(compiled.search(p)) for p in paths]
    if not any(matched):
        raise ValueError(
            f"{where}: `pattern={pattern!r}` matches no parameter path; paths look like "
            f"{paths[:8]}. Pass a regex over these paths, e.g. r'(^|/)w$' for the kernels."
        )
    for path, hit, (_, leaf) in zip(paths, matched, flat):
        if hit and not jnp.issubdtype(jnp.asarray(leaf).dtype, jnp.floating):
            raise TypeError(
                f"{where}: the parameter {path!r} matched by `pattern` is not floating point "
                f"(dtype {jnp.asarray(leaf).dtype}); narrow `pattern` to float weights."
            )
        if hit and jnp.ndim(leaf) == 0:
            raise ValueError(
                f"{where}: the parameter {path!r} is a scalar; masks need at least one axis. "
                "Narrow `pattern` to arrays."
            )
    return matched


def _scores(leaf: jax.Array, structured: bool) -> jax.Array:
    """What is ranked: ``|w|`` per weight, or the L2 norm of each output channel (last axis)."""
    w = jnp.asarray(leaf).astype(jnp.float32)
    if not structured:
        return jnp.abs(w).reshape(-1)
    return jnp.sqrt(jnp.sum(jnp.square(w).reshape(-1, w.shape[-1]), axis=0))


def _keep(scores: jax.Array, sparsity) -> jax.Array:
    """True for all but the ``round(sparsity * n)`` smallest scores; ties by position."""
    n = scores.shape[0]
    k = jnp.round(jnp.asarray(sparsity, jnp.float32) * n).astype(jnp.int32)
    order = jnp.argsort(scores, stable=True)
    ranks = jnp.zeros(n, jnp.int32).at[order].set(jnp.arange(n, dtype=jnp.int32))
    return ranks >= k


def _expand(keep: jax.Array, leaf, structured: bool) -> jax.Array:
    shape = jnp.shape(leaf)
    return jnp.broadcast_to(keep, shape) if structured else keep.reshape(shape)


def magnitude_masks(
    params: Params,
    sparsity: float | jax.Array,
    *,
    scope: str = "global",
    structured: bool = False,
    pattern: str = KERNELS,
) -> Any:
    """Masks (True = kept) that prune the weights of smallest magnitude.

    Among the leaves whose path matches ``pattern``, the ``round(sparsity * n)``
    smallest scores are pruned, where a score is ``|w|`` (unstructured) or, with
    ``structured=True``, the L2 norm of an output channel (a slice along the
    last axis, ``w[..., j]``: whole units of a ``Dense``, whole filters of a
    ``Conv``), and ``n`` counts weights (or channels). ``scope="global"`` ranks
    all matched leaves together (one threshold for the model; layers end up
    with different sparsities); ``scope="layer"`` prunes that fraction of each
    leaf. Ties are broken by position: among equal scores, the one earlier in
    leaf order, then in row-major order, is pruned first, so exactly
    ``round(sparsity * n)`` are pruned. Jit-compatible (``sparsity`` may be traced).

    Args:
        params: a pytree of params.
        sparsity: the fraction pruned, in ``[0, 1]``.
        scope: ``"global"`` or ``"layer"``.
        structured: prune whole output channels by their L2 norm.
        pattern: regex (``re.search``) over param paths; default: kernels ``w``.

    Returns:
        A pytree like ``params`` of bool arrays; all True for unmatched leaves.

    Raises:
        ValueError: for ``sparsity`` outside ``[0, 1]``, an unknown ``scope``, a
            ``pattern`` matching nothing, or a matched scalar.
        TypeError: for a non-numeric ``sparsity`` or a matched integer leaf.

    Examples:
        >>> import jax.numpy as jnp
        >>> params = {"w": jnp.array([[0.1, -2.0], [3.0, -0.2]]), "b": jnp.ones(2)}
        >>> masks = magnitude_masks(params, 0.5)
        >>> masks["w"].tolist(), masks["b"].tolist()
        ([[False, True], [True, False]], [True, True])
        >>> magnitude_masks(params, 0.5, structured=True)["w"].tolist()  # column norms 3.0, 2.01
        [[True, False], [True, False]]
    """
    where = "magnitude_masks"
    _check_sparsity(where, sparsity)
    if scope not in _SCOPES:
        raise ValueError(f"{where}: `scope` must be 'global' or 'layer', got {scope!r}.")
    leaves, treedef = jax.tree.flatten(params)
    matched = _matched(where, params, pattern)
    scored = [_scores(leaf, structured) for leaf, hit in zip(leaves, matched) if hit]
    if scope == "layer":
        keeps = [_keep(s, sparsity) for s in scored]
    else:
        flat_keep = _keep(jnp.concatenate(scored), sparsity)
        ends, total = [], 0
        for s in scored[:-1]:
            total += s.shape[0]
            ends.append(total)
        keeps = jnp.split(flat_keep, ends)
    it = iter(keeps)
    masks = [
        _expand(next(it), leaf, structured) if hit else jnp.ones(jnp.shape(leaf), bool)
        for leaf, hit in zip(leaves, matched)
    ]
    return jax.tree.unflatten(treedef, masks)


def _check_masks(where: str, params: Params, masks: Any) -> None:
    p_def, m_def = jax.tree.structure(params), jax.tree.structure(masks)
    if p_def != m_def:
        raise ValueError(
            f"{where}: `masks` must have the structure of the params, got {m_def} for params "
            f"{p_def}; compute them with `magnitude_masks(params, sparsity)`."
        )
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    for (path, p), m in zip(flat, jax.tree.leaves(masks)):
        if jnp.shape(m) != jnp.shape(p):
            raise ValueError(
                f"{where}: the mask of {path_str(path)!r} has shape {jnp.shape(m)}, the "
                f"parameter {jnp.shape(p)}; recompute the masks for these params."
            )


def apply_masks(params: Params, masks: Any) -> Params:
    """``params`` with the pruned weights (mask False) set to exactly 0.

    Raises:
        ValueError: when ``masks`` do not line up with ``params`` (structure or shapes).

    Examples:
        >>> import jax.numpy as jnp
        >>> params = {"w": jnp.array([1.0, -0.1, 2.0])}
        >>> apply_masks(params, magnitude_masks(params, 1 / 3))["w"].tolist()
        [1.0, 0.0, 2.0]
    """
    _check_masks("apply_masks", params, masks)
    return jax.tree.map(lambda p, m: jnp.where(m, p, jnp.zeros_like(p)), params, masks)


def keep_masked(masks: Any) -> optax.GradientTransformation:
    """An optax transform that zeroes the updates of pruned weights (mask False).

    Chain it last, after any optimizer (``optax.chain(opt, keep_masked(masks))``):
    params pruned with :func:`apply_masks` then stay exactly 0 through training,
    whatever the optimizer adds (momentum, Adam moments, weight decay).

    Examples:
        >>> import jax.numpy as jnp, optax
        >>> masks = {"w": jnp.array([True, False])}
        >>> params = apply_masks({"w": jnp.array([1.0, -0.1])}, masks)
        >>> opt = optax.chain(optax.adamw(0.1, weight_decay=0.1), keep_masked(masks))
        >>> updates, _ = opt.update({"w": jnp.ones(2)}, opt.init(params), params)
        >>> optax.apply_updates(params, updates)["w"].tolist()
        [0.89, 0.0]
    """

    def init(params):
        _check_masks("keep_masked", params, masks)
        return optax.EmptyState()

    def update(updates, state, params=None):
        del params
        _check_masks("keep_masked", updates, masks)
        return jax.tree.map(lambda u, m: jnp.where(m, u, jnp.zeros_like(u)), updates, masks), state

    return optax.GradientTransformation(init, update)


def polynomial_sparsity(
    initial: float, final: float, begin_step: int, end_step: int, power: float = 3
) -> Callable[[jax.typing.ArrayLike], jax.Array]:
    """The gradual sparsity schedule of Zhu & Gupta (2017), a function of the step.

    ``s(t) = final + (initial - final) * (1 - (t - begin_step) / (end_step - begin_step)) ** power``
    for ``t`` in ``[begin_step, end_step]``, ``initial`` before and ``final`` after:
    fast pruning early, slow near the end.

    Raises:
        ValueError: for sparsities outside ``[0, 1]`` or ``end_step <= begin_step``.

    Examples:
        >>> s = polynomial_sparsity(0.0, 0.8, begin_step=0, end_step=100)
        >>> [round(float(s(t)), 4) for t in (0, 50, 100, 200)]
        [0.0, 0.7, 0.8, 0.8]
    """
    where = "polynomial_sparsity"
    for value in (initial, final):
        _check_sparsity(where, value)
    if not end_step > begin_step:
        raise ValueError(
            f"{where}: need `end_step > begin_step`, got begin_step={begin_step}, "
            f"end_step={end_step}."
        )

    def schedule(step):
        t = jnp.clip(jnp.asarray(step, jnp.float32), begin_step, end_step)
        frac = 1.0 - (t - begin_step) / (end_step - begin_step)
        return jnp.float32(final) + jnp.float32(initial - final) * frac**power

    return schedule


class GradualPruningState(NamedTuple):
    """The state of :func:`gradual_pruning`: the step count and the current masks."""

    count: jax.Array  # int32: updates seen so far
    masks: Any  # bool arrays like the params


def gradual_pruning(
    schedule: Callable[[jax.Array], jax.Array] | float,
    every: int,
    *,
    scope: str = "global",
    structured: bool = False,
    pattern: str = KERNELS,
) -> optax.GradientTransformation:
    """An optax transform that prunes by magnitude every ``every`` steps, to ``schedule(step)``.

    Chain it last (``optax.chain(opt, gradual_pruning(...))``); its ``update``
    needs ``params`` (as ``fn.train_step`` passes them). At steps ``0, every,
    2 * every, ...`` it recomputes the masks (:func:`magnitude_masks`) from
    the updated params ``params + updates`` at sparsity ``schedule(step)``;
    at every step it returns updates after which pruned weights are exactly
    0 (``-params`` where pruned). The masks are in the state
    (:class:`GradualPruningState`); a pruned weight stays 0 between re-prunings.

    Raises:
        ValueError: for ``every < 1``, an unknown ``scope``; at init, for a
            ``pattern`` matching nothing; at update, when ``params`` is missing.

    Examples:
        >>> import jax.numpy as jnp, optax
        >>> schedule = polynomial_sparsity(0.0, 0.5, begin_step=0, end_step=2, power=1)
        >>> opt = optax.chain(optax.sgd(0.0), gradual_pruning(schedule, every=1))
        >>> params = {"w": jnp.array([1.0, -2.0, 3.0, -4.0])}
        >>> state = opt.init(params)
        >>> for _ in range(3):
        ...     updates, state = opt.update({"w": jnp.zeros(4)}, state, params)
        ...     params = optax.apply_updates(params, updates)
        ...     print(params["w"].tolist())
        [1.0, -2.0, 3.0, -4.0]
        [0.0, -2.0, 3.0, -4.0]
        [0.0, 0.0, 3.0, -4.0]
    """
    where = "gradual_pruning"
    if isinstance(every, bool) or not isinstance(every, int) or every < 1:
        raise ValueError(
            f"{where}: `every` must be an int >= 1 (steps between prunings), got {every!r}."
        )
    if scope not in _SCOPES:
        raise ValueError(f"{where}: `scope` must be 'global' or 'layer', got {scope!r}.")
    sparsity_at = schedule if callable(schedule) else (lambda step: schedule)
    if not callable(schedule):
        _check_sparsity(where, schedule)

    def prune(params, step):
        return magnitude_masks(
            params, sparsity_at(step), scope=scope, structured=structured, pattern=pattern
        )

    def init(params):
        _matched(where, params, pattern)
        masks = jax.tree.map(lambda p: jnp.ones(jnp.shape(p), bool), params)
        return GradualPruningState(jnp.zeros((), jnp.int32), masks)

    def update(updates, state, params=None):
        if params is None:
            raise ValueError(
                f"{where}: `update` needs `params` (it prunes by their magnitude); call "
                "`opt.update(grads, state, params)`."
            )
        new_params = optax.apply_updates(params, updates)
        masks = jax.lax.cond(
            state.count % every == 0,
            lambda: prune(new_params, state.count),
            lambda: state.masks,
        )
        out = jax.tree.map(lambda u, p, m: jnp.where(m, u, -p), updates, params, masks)
        return out, GradualPruningState(state.count + 1, masks)

    return optax.GradientTransformation(init, update)


def sparsity_report(params: Params, *, pattern: str | None = KERNELS) -> dict[str, tuple]:
    """Zeros per leaf: ``{path: (zeros, total, fraction)}`` and ``"total"`` over them.

    Args:
        params: a pytree of params.
        pattern: report only leaves whose path matches (default: kernels ``w``);
            ``None`` reports every leaf.

    Raises:
        ValueError: when ``pattern`` matches no parameter.

    Examples:
        >>> import jax.numpy as jnp
        >>> sparsity_report([{"w": jnp.array([0.0, 1.0]), "b": jnp.zeros(1)}, {"w": jnp.zeros(2)}])
        {'0/w': (1, 2, 0.5), '1/w': (2, 2, 1.0), 'total': (3, 4, 0.75)}
    """
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    matched = (
        [True] * len(flat) if pattern is None else _matched("sparsity_report", params, pattern)
    )
    report = {}
    zeros = total = 0
    for (path, leaf), hit in zip(flat, matched):
        if not hit:
            continue
        z, n = int(jnp.sum(jnp.asarray(leaf) == 0)), int(jnp.size(leaf))
        report[path_str(path)] = (z, n, z / n if n else 0.0)
        zeros, total = zeros + z, total + n
    report["total"] = (zeros, total, zeros / total if total else 0.0)
    return report
