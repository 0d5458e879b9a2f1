"""Sequence inputs: the dict convention, and the combinators that route it.

See :mod:`funcnet.combinators` for the convention.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from funcnet._checks import fmt_shape, fmt_spec
from funcnet.combinators.basic import _children, _same_spec, _sequence
from funcnet.core import (
    Layer,
    LayerError,
    as_layer,
    call_with_path,
    output_spec,
    stateless,
)

__all__ = ["INPUT_KEYS", "on_x", "replace_x", "residual_x", "select_keys", "split_inputs"]


INPUT_KEYS = ("x", "mask", "lengths", "carry", "memory", "memory_mask")
"""The keys of a sequence input dict; a layer accepts the subset it documents."""


def split_inputs(
    inputs: Any,
    allowed: Sequence[str] = INPUT_KEYS,
    *,
    require: Sequence[str] = ("x",),
    layout: str = "(N, T, D)",
) -> tuple[dict, bool]:
    """Read sequence inputs by the dict convention: ``(entries, is_dict)``.

    A plain array is taken as ``{"x": array}``; in a dict, ``None`` entries
    are dropped (``{"x": x, "mask": None}`` is ``{"x": x}``).

    Args:
        inputs: an array or a dict of arrays.
        allowed: the keys the layer accepts.
        require: the keys it needs (a plain array only gives ``"x"``).
        layout: how messages describe the array ``"x"`` (``"(N, T, F)"``).

    Returns:
        The entries as a new dict, and whether ``inputs`` was a dict.

    Raises:
        LayerError: (with no path; the calling layer adds its own) for
            anything but an array or a dict, for keys outside ``allowed`` and
            for missing ``require``-d keys.

    Examples:
        >>> import jax.numpy as jnp
        >>> entries, is_dict = split_inputs(jnp.ones((2, 3, 4)))
        >>> sorted(entries), is_dict
        (['x'], False)
        >>> split_inputs({"x": jnp.ones((2, 3, 4)), "lengths": None})[0].keys()
        dict_keys(['x'])
        >>> split_inputs({"x": jnp.ones((2, 3, 4)), "memry": 1}, ("x", "memory"))
        Traceback (most recent call last):
        ...
        funcnet.core.LayerError: unknown input keys ['memry']; the layer accepts a dict with \
keys ['x', 'memory'] (or a plain array (N, T, D) for 'x').
    """
    allowed = list(allowed)
    if isinstance(inputs, Mapping):
        unknown = sorted((str(k) for k in inputs if k not in allowed), key=str)
        if unknown:
            raise LayerError(
                f"unknown input keys {unknown}; the layer accepts a dict with keys {allowed} "
                f"(or a plain array {layout} for 'x')."
            )
        entries = {k: v for k, v in inputs.items() if v is not None}
        missing = [k for k in require if k not in entries]
        if missing:
            raise LayerError(
                f"the input dict needs the keys {missing}, got keys {sorted(entries)}; "
                f"accepted keys: {allowed}."
            )
        return entries, True
    if hasattr(inputs, "shape") and hasattr(inputs, "dtype"):
        if "x" not in require or len(require) > 1:
            raise LayerError(
                f"expected a dict with keys {list(require)} (accepted keys: {allowed}), "
                f"got a single array of shape {fmt_shape(inputs.shape)}."
            )
        return {"x": inputs}, False
    raise LayerError(
        f"expected an array {layout} or a dict with keys {allowed}, got {type(inputs).__name__}."
    )


def replace_x(inputs: Any, is_dict: bool, y: Any) -> Any:
    """A layer's output for ``inputs``: ``y`` itself, or the input dict with ``"x"`` replaced.

    Args:
        inputs: the layer's inputs.
        is_dict: whether they were a dict (as :func:`split_inputs` says).
        y: the new ``"x"``.

    Examples:
        >>> replace_x({"x": 1, "mask": 2}, True, 3)
        {'x': 3, 'mask': 2}
        >>> replace_x(1, False, 3)
        3
    """
    return {**inputs, "x": y} if is_dict else y


def on_x(layer: Layer | Callable) -> Layer:
    """Apply ``layer`` to ``"x"`` only: a dict keeps its other entries, an array is passed as is.

    Params and state are ``layer``'s own (no extra nesting).

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> from funcnet import LayerNorm
        >>> norm = on_x(LayerNorm())
        >>> inputs = {"x": jnp.ones((2, 3, 4)), "mask": jnp.ones((2, 3), bool)}
        >>> params, state = norm.init(jax.random.key(0), inputs)
        >>> jax.tree.map(jnp.shape, params)
        {'bias': (4,), 'scale': (4,)}
        >>> out, _ = norm.apply(params, state, inputs)
        >>> sorted(out), out["mask"] is inputs["mask"]
        (['mask', 'x'], True)
    """
    layer = as_layer(layer)

    def init(key, inputs):
        entries, _ = split_inputs(inputs)
        return call_with_path("on_x", layer.init, key, entries["x"])

    def apply(params, state, inputs, *, key=None, train=False):
        entries, is_dict = split_inputs(inputs)
        y, state = call_with_path(
            "on_x", layer.apply, params, state, entries["x"], key=key, train=train
        )
        return replace_x(inputs, is_dict, y), state

    return Layer(init, apply, "on_x", (layer,))


def select_keys(*keys: str) -> Layer:
    """Keep only the given entries of a dict input (absent ones are skipped).

    An array input is taken as ``{"x": array}``. No params, state or key.

    Raises:
        ValueError: for a key outside :data:`INPUT_KEYS`.

    Examples:
        >>> import jax.numpy as jnp
        >>> pick = select_keys("x", "mask")
        >>> out, _ = pick.apply((), (), {"x": jnp.ones(2), "memory": jnp.ones(3)})
        >>> sorted(out)
        ['x']
    """
    for k in keys:
        if k not in INPUT_KEYS:
            raise ValueError(f"select_keys: unknown key {k!r}; the keys are {list(INPUT_KEYS)}.")

    def pick(inputs):
        entries, _ = split_inputs(inputs)
        return {k: entries[k] for k in keys if k in entries}

    return stateless(f"select_keys({', '.join(map(repr, keys))})", pick, check=pick)


def residual_x(*layers: Layer | Callable) -> Layer:
    """``x + serial(*layers)(inputs)``: a skip connection whose branch sees the whole dict.

    The branch gets the inputs (array or dict) and must return an array shaped
    like ``"x"`` (checked at ``init``); the result replaces ``"x"``, other
    entries pass through. Params are a tuple, one entry per layer, as
    :func:`residual`.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> from funcnet import Dropout, LayerNorm, MultiHeadAttention
        >>> block = residual_x(on_x(LayerNorm()), MultiHeadAttention(2), Dropout(0.1))
        >>> inputs = {"x": jnp.ones((2, 3, 4)), "mask": jnp.ones((2, 3), bool)}
        >>> params, state = block.init(jax.random.key(0), inputs)
        >>> [sorted(p) for p in params]
        [['bias', 'scale'], ['key', 'out', 'query', 'value'], []]
        >>> block.apply(params, state, inputs)[0]["x"].shape
        (2, 3, 4)
    """
    labels, children = _children("residual_x", layers, {})
    body_init, body_apply = _sequence("residual_x", labels, children)
    body = Layer(body_init, body_apply, "residual_x")

    def init(key, inputs):
        entries, _ = split_inputs(inputs)
        params, state = body_init(key, inputs)
        out = output_spec(body, inputs, params, state)
        if not _same_spec(out, entries["x"]):
            raise LayerError(
                f"the branch must return an array shaped like 'x' to be added to it: 'x' "
                f"{fmt_spec(entries['x'])}, branch output {fmt_spec(out)}.",
                path=["residual_x"],
            )
        return params, state

    def apply(params, state, inputs, *, key=None, train=False):
        entries, is_dict = split_inputs(inputs)
        h, state = body_apply(params, state, inputs, key=key, train=train)
        return replace_x(inputs, is_dict, entries["x"] + h), state

    return Layer(init, apply, "residual_x", children)
