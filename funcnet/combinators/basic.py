"""The structural combinators: serial, residual, parallel, fanout, concat.

Also the helpers the other combinator modules build on: a combinator's
children (positional or named), running them one after another, and the
check of the params/state containers.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from funcnet._checks import fmt_spec
from funcnet.core import Layer, LayerError, as_layer, call_with_path, output_spec, spec_of

__all__ = ["concat", "fanout", "parallel", "residual", "serial"]


def _fold(key, i: int):
    return None if key is None else jax.random.fold_in(key, i)


def _children(kind: str, layers: Sequence, named: Mapping) -> tuple[list, tuple | dict]:
    """Labels and layers of a combinator's children (positional or keyword, not both)."""
    if layers and named:
        raise TypeError(
            f"{kind}: pass the layers either positionally or by keyword, not both "
            f"(got {len(layers)} positional and keywords {sorted(named)})."
        )
    if not layers and not named:
        raise ValueError(f"{kind}: needs at least one layer, got none.")
    if named:
        children = {k: as_layer(v) for k, v in named.items()}
        return list(children), children
    children = tuple(as_layer(layer) for layer in layers)
    return list(range(len(children))), children


def _check_container(kind: str, what: str, tree: Any, labels: list) -> None:
    """Raise a clear error when ``params``/``state`` do not match the children."""
    if isinstance(labels[0], str):
        ok = isinstance(tree, Mapping) and set(tree) == set(labels)
        expected = f"a dict with keys {labels}"
    else:
        ok = isinstance(tree, (tuple, list)) and len(tree) == len(labels)
        expected = f"a tuple of {len(labels)} entries (one per layer)"
    if not ok:
        got = (
            f"a dict with keys {sorted(tree)}"
            if isinstance(tree, Mapping)
            else f"{type(tree).__name__} of length {len(tree)}"
            if isinstance(tree, (tuple, list))
            else type(tree).__name__
        )
        raise LayerError(
            f"expected {what} as {expected}, got {got}. Pass the {what} returned by this "
            f"model's `init`.",
            path=[kind],
        )


def _pack(labels: list, values: list):
    return dict(zip(labels, values)) if isinstance(labels[0], str) else tuple(values)


def _sequence(kind: str, labels: list, children: tuple | dict):
    """init/apply running ``children`` one after another (shared by serial and residual)."""
    layers = [children[label] for label in labels]
    n = len(layers)

    def init(key, inputs):
        params, states, x = [], [], inputs
        for i, (label, layer) in enumerate(zip(labels, layers)):
            part = f"{kind}[{label}]"
            p, s = call_with_path(part, layer.init, _fold(key, i), x)
            params.append(p)
            states.append(s)
            if i < n - 1:
                x = call_with_path(part, output_spec, layer, x, p, s)
        return _pack(labels, params), _pack(labels, states)

    def apply(params, state, inputs, *, key=None, train=False):
        _check_container(kind, "params", params, labels)
        _check_container(kind, "state", state, labels)
        states, x = [], inputs
        for i, (label, layer) in enumerate(zip(labels, layers)):
            x, s = call_with_path(
                f"{kind}[{label}]",
                layer.apply,
                params[label],
                state[label],
                x,
                key=_fold(key, i),
                train=train,
            )
            states.append(s)
        return x, _pack(labels, states)

    return init, apply


def serial(*layers: Layer | Callable, **named_layers: Layer | Callable) -> Layer:
    """Apply layers one after another: ``serial(f, g)(x) == g(f(x))``.

    Positional children give a params tuple; keyword children a params dict
    (the keys are the names). Plain functions are wrapped as parameterless layers.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> from funcnet import Dense
        >>> model = serial(Dense(16), jax.nn.relu, Dense(3))
        >>> params, state = model.init(jax.random.key(0), jnp.zeros((8, 4)))
        >>> jax.tree.map(jnp.shape, params)
        ({'b': (16,), 'w': (4, 16)}, (), {'b': (3,), 'w': (16, 3)})
        >>> y, state = model.apply(params, state, jnp.ones((8, 4)))
        >>> y.shape
        (8, 3)
        >>> named = serial(encoder=Dense(2), decoder=Dense(4))
        >>> jax.tree.map(jnp.shape, named.init(jax.random.key(0), jnp.zeros((1, 4)))[0])
        {'decoder': {'b': (4,), 'w': (2, 4)}, 'encoder': {'b': (2,), 'w': (4, 2)}}
    """
    labels, children = _children("serial", layers, named_layers)
    init, apply = _sequence("serial", labels, children)
    return Layer(init, apply, "serial", children)


def residual(*layers: Layer | Callable) -> Layer:
    """``x + serial(*layers)(x)``: a skip connection around a block.

    The block must map its input to an output of the same shape and dtype;
    this is checked at ``init``. Params are a tuple, one entry per layer.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> from funcnet import Dense
        >>> block = residual(Dense(8), jax.nn.relu)
        >>> params, state = block.init(jax.random.key(0), jnp.zeros((2, 8)))
        >>> jax.tree.map(jnp.shape, params)
        ({'b': (8,), 'w': (8, 8)}, ())
    """
    labels, children = _children("residual", layers, {})
    body_init, body_apply = _sequence("residual", labels, children)
    body = Layer(body_init, body_apply, "residual")

    def init(key, inputs):
        params, state = body_init(key, inputs)
        out = output_spec(body, inputs, params, state)
        _require_same_spec(
            "residual",
            out,
            inputs,
            "be added to it",
            " Make the last layer of the block produce the input's features (e.g. `Dense(d)` "
            "for inputs of width d).",
        )
        return params, state

    def apply(params, state, inputs, *, key=None, train=False):
        y, state = body_apply(params, state, inputs, key=key, train=train)
        return jax.tree.map(jnp.add, inputs, y), state

    return Layer(init, apply, "residual", children)


def _same_spec(a, b) -> bool:
    """Whether two pytrees have the same structure, shapes and dtypes."""
    a, b = spec_of(a), spec_of(b)
    if jax.tree.structure(a) != jax.tree.structure(b):
        return False
    return all(
        x.shape == y.shape and x.dtype == y.dtype
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))
    )


def _require_same_spec(kind: str, out, inputs, purpose: str, hint: str = "") -> None:
    """Raise unless a block's output ``out`` has its ``inputs``' structure, shapes and dtypes."""
    if not _same_spec(out, inputs):
        raise LayerError(
            f"the block must keep its input's shape and dtype to {purpose}: input "
            f"{fmt_spec(inputs)}, block output {fmt_spec(out)}.{hint}",
            path=[kind],
        )


def parallel(*layers: Layer | Callable) -> Layer:
    """Apply the i-th layer to the i-th input: a tuple of n inputs gives a tuple of n outputs.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> from funcnet import Dense
        >>> both = parallel(Dense(2), jnp.tanh)
        >>> params, state = both.init(jax.random.key(0), (jnp.zeros((1, 3)), jnp.zeros((1, 5))))
        >>> ys, _ = both.apply(params, state, (jnp.ones((1, 3)), jnp.ones((1, 5))))
        >>> [y.shape for y in ys]
        [(1, 2), (1, 5)]
    """
    labels, children = _children("parallel", layers, {})
    n = len(children)

    def check(inputs):
        if not isinstance(inputs, (tuple, list)) or len(inputs) != n:
            got = (
                f"a {type(inputs).__name__} of length {len(inputs)}"
                if isinstance(inputs, (tuple, list))
                else f"{type(inputs).__name__} {fmt_spec(inputs)}"
            )
            raise LayerError(
                f"expected a tuple of {n} inputs (one per layer), got {got}.", path=["parallel"]
            )

    def init(key, inputs):
        check(inputs)
        pairs = [
            call_with_path(f"parallel[{i}]", layer.init, _fold(key, i), x)
            for i, (layer, x) in enumerate(zip(children, inputs))
        ]
        return tuple(p for p, _ in pairs), tuple(s for _, s in pairs)

    def apply(params, state, inputs, *, key=None, train=False):
        check(inputs)
        _check_container("parallel", "params", params, labels)
        outs = [
            call_with_path(f"parallel[{i}]", layer.apply, p, s, x, key=_fold(key, i), train=train)
            for i, (layer, p, s, x) in enumerate(zip(children, params, state, inputs))
        ]
        return tuple(y for y, _ in outs), tuple(s for _, s in outs)

    return Layer(init, apply, "parallel", children)


def fanout(*layers: Layer | Callable) -> Layer:
    """Apply every layer to the same input: one input gives a tuple of outputs.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> from funcnet import Dense
        >>> heads = fanout(Dense(2), Dense(3))
        >>> params, state = heads.init(jax.random.key(0), jnp.zeros((4, 5)))
        >>> ys, _ = heads.apply(params, state, jnp.ones((4, 5)))
        >>> [y.shape for y in ys]
        [(4, 2), (4, 3)]
    """
    labels, children = _children("fanout", layers, {})

    def init(key, inputs):
        pairs = [
            call_with_path(f"fanout[{i}]", layer.init, _fold(key, i), inputs)
            for i, layer in enumerate(children)
        ]
        return tuple(p for p, _ in pairs), tuple(s for _, s in pairs)

    def apply(params, state, inputs, *, key=None, train=False):
        _check_container("fanout", "params", params, labels)
        outs = [
            call_with_path(
                f"fanout[{i}]", layer.apply, p, s, inputs, key=_fold(key, i), train=train
            )
            for i, (layer, p, s) in enumerate(zip(children, params, state))
        ]
        return tuple(y for y, _ in outs), tuple(s for _, s in outs)

    return Layer(init, apply, "fanout", children)


def concat(*layers: Layer | Callable, axis: int = -1) -> Layer:
    """Apply every layer to the same input and concatenate the outputs along ``axis``.

    The branches' outputs must agree in every dimension but ``axis``
    (checked at ``init``). Params are a tuple, one entry per branch.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> from funcnet import Dense
        >>> block = concat(Dense(2), Dense(3), lambda x: x)
        >>> params, state = block.init(jax.random.key(0), jnp.zeros((4, 5)))
        >>> block.apply(params, state, jnp.ones((4, 5)))[0].shape
        (4, 10)
    """
    if not isinstance(axis, int):
        raise TypeError(f"concat: `axis` must be an int, got {type(axis).__name__}.")
    branches = fanout(*layers)

    def init(key, inputs):
        params, state = branches.init(key, inputs)
        outs = output_spec(branches, inputs, params, state)
        shapes = [o.shape if isinstance(o, jax.ShapeDtypeStruct) else None for o in outs]
        ndim = len(shapes[0]) if shapes[0] is not None else 0
        bad = any(s is None or len(s) != ndim for s in shapes) or not -ndim <= axis < ndim
        if not bad:
            ax = axis % ndim
            rest = {tuple(d for j, d in enumerate(s) if j != ax) for s in shapes}
            dtypes = {o.dtype for o in outs}
            bad = len(rest) > 1 or len(dtypes) > 1
        if bad:
            raise LayerError(
                f"cannot concatenate the branch outputs {[fmt_spec(o) for o in outs]} along axis "
                f"{axis}: they must be single arrays of one dtype, equal in every other "
                "dimension.",
                path=["concat"],
            )
        return params, state

    def apply(params, state, inputs, *, key=None, train=False):
        outs, state = branches.apply(params, state, inputs, key=key, train=train)
        return jnp.concatenate(outs, axis=axis), state

    return Layer(init, apply, f"concat(axis={axis})" if axis != -1 else "concat", branches.children)
