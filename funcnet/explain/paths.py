"""Sub-layers of a ``serial`` model by path: their outputs, and a hook to perturb them.

A path names a child of a :func:`~funcnet.serial` the way its params are
named by :func:`funcnet.core.path_str`: ``"3"`` is the fourth layer of a
positional serial, ``"encoder"`` a keyword child, ``"block/2"`` the third
layer of the serial ``block`` nested in the model. :func:`intermediates`
runs the model once and returns the outputs of the named sub-layers (feature
extraction, Grad-CAM); :func:`layer_paths` lists the valid paths.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import jax

from funcnet.core import Layer, LayerError, Params, PRNGKey, State, call_with_path

__all__ = ["intermediates", "layer_paths"]


def _is_serial(model) -> bool:
    return (
        isinstance(model, Layer)
        and model.name == "serial"
        and isinstance(model.children, (tuple, Mapping))
        and len(model.children) > 0
    )


def _labels(model: Layer) -> list:
    children = model.children
    return list(children) if isinstance(children, Mapping) else list(range(len(children)))


def layer_paths(model: Layer) -> list[str]:
    """Every path that names a sub-layer of the ``serial`` model ``model``, in order.

    Children of a nested ``serial`` get the parent's path and a slash.

    Args:
        model: a model built with :func:`~funcnet.serial`.

    Returns:
        The paths, e.g. ``["0", "1", "block", "block/0", "block/1"]``.

    Raises:
        ValueError: if ``model`` is not a ``serial``.

    Examples:
        >>> import jax
        >>> import funcnet as fn
        >>> model = fn.serial(fn.Dense(4), fn.serial(fn.Dense(3), jax.nn.relu), fn.Dense(2))
        >>> layer_paths(model)
        ['0', '1', '1/0', '1/1', '2']
    """
    _require_serial(model, "layer_paths")
    paths = []
    for label in _labels(model):
        child = model.children[label]
        paths.append(str(label))
        if _is_serial(child):
            paths += [f"{label}/{p}" for p in layer_paths(child)]
    return paths


def _require_serial(model, where: str) -> None:
    if not _is_serial(model):
        raise ValueError(
            f"{where}: sub-layers are named by path only in a `serial` model, got "
            f"{model!r}. Build the model with `funcnet.serial(...)` (or wrap it: "
            f'`serial(model)` names the whole model "0").'
        )


def _check_paths(model: Layer, paths: Iterable, where: str) -> list[str]:
    """``paths`` as strings, each checked to name a sub-layer of ``model``."""
    _require_serial(model, where)
    if isinstance(paths, (str, int)):
        paths = [paths]
    valid = layer_paths(model)
    out = []
    for path in paths:
        if not isinstance(path, (str, int)) or isinstance(path, bool):
            raise TypeError(
                f'{where}: a layer path must be a str like "3" or "block/2" (or an int), '
                f"got {type(path).__name__} {path!r}."
            )
        text = str(path).strip("/")
        if text not in valid:
            raise ValueError(
                f"{where}: no sub-layer at path {str(path)!r} in {model!r}; valid paths: {valid}."
            )
        out.append(text)
    return out


def _run(
    model: Layer,
    params: Params,
    state: State,
    x,
    *,
    prefix: str,
    capture: frozenset,
    add: Mapping,
    captured: dict,
    key,
    train: bool,
):
    """Apply a serial child by child (keys folded as ``serial`` does), capturing and perturbing.

    The output of the child at path ``p`` becomes ``output + add[p]`` when ``p`` is in ``add``,
    and that value is stored in ``captured[p]`` when ``p`` is in ``capture``.
    """
    labels = _labels(model)
    for what, tree in (("params", params), ("state", state)):
        ok = (
            isinstance(tree, Mapping) and set(tree) == set(labels)
            if isinstance(labels[0], str)
            else isinstance(tree, (tuple, list)) and len(tree) == len(labels)
        )
        if not ok:
            raise LayerError(
                f"the {what} do not match the layers {labels}; pass the {what} returned by "
                "this model's `init`.",
                path=[f"serial at {prefix.rstrip('/') or 'the top'}"],
            )
    inner = {p for p in (*capture, *add) if p.startswith(prefix)}
    for i, label in enumerate(labels):
        path = f"{prefix}{label}"
        child = model.children[label]
        child_key = None if key is None else jax.random.fold_in(key, i)
        if any(p.startswith(path + "/") for p in inner):
            x = call_with_path(
                f"serial[{label}]",
                _run,
                child,
                params[label],
                state[label],
                x,
                prefix=path + "/",
                capture=capture,
                add=add,
                captured=captured,
                key=child_key,
                train=train,
            )
        else:
            x, _ = call_with_path(
                f"serial[{label}]",
                child.apply,
                params[label],
                state[label],
                x,
                key=child_key,
                train=train,
            )
        if path in add:
            x = jax.tree.map(lambda a, b: a + b, x, add[path])
        if path in capture:
            captured[path] = x
    return x


def run_with(
    model: Layer,
    params: Params,
    state: State,
    inputs,
    *,
    capture: Iterable[str] = (),
    add: Mapping | None = None,
    key: PRNGKey | None = None,
    train: bool = False,
    where: str = "run_with",
):
    """``(outputs, {path: value})``, adding ``add[path]`` to the output of the sub-layer at path.

    The building block of :func:`intermediates` and of Grad-CAM (whose gradient
    with respect to an intermediate output is the gradient with respect to a zero
    ``add`` there).
    """
    add = dict(add or {})
    capture = _check_paths(model, capture, where)
    add = dict(zip(_check_paths(model, list(add), where), add.values()))
    captured: dict = {}
    outputs = _run(
        model,
        params,
        state,
        inputs,
        prefix="",
        capture=frozenset(capture),
        add=add,
        captured=captured,
        key=key,
        train=train,
    )
    return outputs, {p: captured[p] for p in capture}


def intermediates(
    model: Layer,
    params: Params,
    state: State,
    inputs,
    paths: str | int | Iterable[str | int],
    *,
    key: PRNGKey | None = None,
    train: bool = False,
) -> tuple:
    """Run ``model`` once; return its outputs and the outputs of the sub-layers at ``paths``.

    ``model`` must be a :func:`~funcnet.serial`; a path names one of its
    children like the params do (``"3"``, ``"encoder"``, ``"block/2"`` inside
    a nested serial; see :func:`layer_paths`). The children run exactly as
    ``model.apply`` runs them (same keys, same ``train``), so the outputs equal
    ``model.apply``'s. The updated state is not returned: use it for inference
    and feature extraction. Pure, so it may be jitted (with ``paths`` static).

    Args:
        model: a ``serial`` model.
        params, state: its parameters and state.
        inputs: its inputs.
        paths: one path or several.
        key: the key ``model.apply`` would get (only for random layers in training mode).
        train: the mode ``model.apply`` would get.

    Returns:
        ``(outputs, {path: value})`` with the paths as strings.

    Raises:
        ValueError: if ``model`` is not a ``serial`` or a path names no sub-layer
            (the message lists the valid paths).

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> import funcnet as fn
        >>> model = fn.serial(fn.Dense(8), jax.nn.relu, fn.Dense(3))
        >>> params, state = model.init(jax.random.key(0), jnp.zeros((2, 4)))
        >>> y, inner = intermediates(model, params, state, jnp.ones((2, 4)), ["0", "1"])
        >>> y.shape, inner["1"].shape, bool((inner["1"] >= 0).all())
        ((2, 3), (2, 8), True)
        >>> intermediates(model, params, state, jnp.ones((2, 4)), "5")
        Traceback (most recent call last):
        ...
        ValueError: intermediates: no sub-layer at path '5' in serial(...); valid paths: [...].
    """
    return run_with(
        model, params, state, inputs, capture=paths, key=key, train=train, where="intermediates"
    )
