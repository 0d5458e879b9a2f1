"""Combinators that reuse one block: ``shared`` (weight tying) and ``repeat`` (stacked copies)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp

from funcnet._checks import check_positive_int, fmt_spec
from funcnet.combinators.basic import _fold, _require_same_spec, _same_spec
from funcnet.combinators.remat import remat as remat_layer
from funcnet.combinators.remat import resolve_policy
from funcnet.core import (
    Layer,
    LayerError,
    as_layer,
    call_with_path,
    output_spec,
    spec_of,
    undeclare,
)

__all__ = ["repeat", "shared"]


class _SharedSlot:
    __slots__ = ("initializing", "key", "params", "state")

    def __init__(self, params=None, state=None, key=None, initializing=False):
        self.params, self.state, self.key, self.initializing = params, state, key, initializing


def shared(layer: Layer | Callable, build: Callable[[Layer], Layer | Callable]) -> Layer:
    """Use one layer's parameters in several places (weight tying).

    ``build`` receives a stand-in for ``layer`` and returns the model that uses
    it, any number of times. The parameters are created once, at the first use
    (from the input that reaches it there), and every use reads the same
    arrays, so their gradients add up. Params are ``{"shared": ..., "body": ...}``.

    State changed by a shared layer (e.g. BatchNorm statistics) is carried from
    one use to the next; such a layer must not be used inside ``repeat``.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> from funcnet import Dense, parallel, serial
        >>> siamese = shared(Dense(4), lambda enc: parallel(enc, enc))
        >>> params, state = siamese.init(jax.random.key(0), (jnp.zeros((2, 3)),) * 2)
        >>> jax.tree.map(jnp.shape, params["shared"])
        {'b': (4,), 'w': (3, 4)}
        >>> tied = shared(Dense(5), lambda d: serial(d, jnp.tanh, d))
        >>> params, state = tied.init(jax.random.key(0), jnp.zeros((2, 5)))
        >>> params["body"]
        ((), (), ())
    """
    layer = as_layer(layer)
    local = threading.local()

    def current() -> _SharedSlot:
        stack = getattr(local, "stack", None)
        if not stack:
            raise LayerError(
                "this stand-in can only be used inside the model returned by `build`; it was "
                "called outside its `shared(...)` layer.",
                path=[f"shared {layer.name}"],
            )
        return stack[-1]

    def push(slot):
        if not hasattr(local, "stack"):
            local.stack = []
        local.stack.append(slot)

    def ref_init(key, inputs):
        del key
        slot = current()
        if slot.params is None:
            slot.params, slot.state = layer.init(slot.key, inputs)
        else:
            _check_reuse(layer, slot, inputs)
        return (), ()

    def ref_apply(params, state, inputs, *, key=None, train=False):
        slot = current()  # undeclare: at `distributed.logical_axes`, init's params are wrapped
        y, new_state = layer.apply(undeclare(slot.params), slot.state, inputs, key=key, train=train)
        if not slot.initializing:
            slot.state = new_state
        return y, state

    ref = Layer(ref_init, ref_apply, f"shared {layer.name}", (layer,))
    body = as_layer(build(ref))

    def init(key, inputs):
        slot = _SharedSlot(key=_fold(key, 0), initializing=True)
        push(slot)
        try:
            body_params, body_state = call_with_path("shared", body.init, _fold(key, 1), inputs)
        finally:
            local.stack.pop()
        if slot.params is None:
            raise LayerError(
                "`build` returned a model that never uses the shared layer it was given.",
                path=["shared"],
            )
        return {"shared": slot.params, "body": body_params}, {
            "shared": slot.state,
            "body": body_state,
        }

    def apply(params, state, inputs, *, key=None, train=False):
        _check_shared_trees(params, state)
        slot = _SharedSlot(params["shared"], state["shared"])
        push(slot)
        try:
            y, body_state = call_with_path(
                "shared", body.apply, params["body"], state["body"], inputs, key=key, train=train
            )
        finally:
            local.stack.pop()
        return y, {"shared": slot.state, "body": body_state}

    return Layer(init, apply, "shared", (body,))


def _check_reuse(layer: Layer, slot, inputs) -> None:
    """A later use of a shared layer must need the params its first use created."""
    # a fresh function: a cached trace of `init` may come from `declaring_axes`
    want = jax.eval_shape(lambda k, x: layer.init(k, x), slot.key, spec_of(inputs))
    if not _same_spec(want, (slot.params, slot.state)):
        raise LayerError(
            f"used with inputs {fmt_spec(inputs)} here, which need parameters "
            f"{fmt_spec(want[0])}, but its parameters were created at its first use as "
            f"{fmt_spec(slot.params)}. A shared layer must see compatible inputs everywhere.",
        )


def _check_shared_trees(params, state) -> None:
    for what, tree in (("params", params), ("state", state)):
        if not isinstance(tree, Mapping) or set(tree) != {"shared", "body"}:
            raise LayerError(
                f"expected {what} as a dict with keys ['body', 'shared'], got "
                f"{type(tree).__name__}. Pass the {what} returned by this model's `init`.",
                path=["shared"],
            )


def repeat(
    block: Layer | Callable, n: int, *, unroll: int | bool = 1, remat: bool | str | Callable = False
) -> Layer:
    """Apply ``n`` copies of ``block`` (each with its own params) one after another.

    The copies' params are stacked along a new leading axis of size ``n`` and
    run with one ``jax.lax.scan``: the block is traced once, so compile time
    does not grow with ``n``. The block must keep its input's shape and dtype
    (checked at ``init``). Copy ``i`` gets ``fold_in(key, i)``.

    Args:
        block: the layer to repeat.
        n: number of copies, >= 1.
        unroll: passed to ``lax.scan``; on CPU, blocks with convolutions are
            much faster fully unrolled (``unroll=True``), see JAX_NOTES.
        remat: rematerialise each copy in the backward pass (:func:`funcnet.remat`):
            ``False`` or ``None`` (default: off), ``True`` (save nothing), or a policy name or
            function. Only the carried ``x`` between copies is stored.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> from funcnet import Dense, serial
        >>> stack = repeat(serial(Dense(8), jax.nn.relu), 4)
        >>> params, state = stack.init(jax.random.key(0), jnp.zeros((2, 8)))
        >>> jax.tree.map(jnp.shape, params)
        ({'b': (4, 8), 'w': (4, 8, 8)}, ())
    """
    block = as_layer(block)
    n = check_positive_int("repeat", "n", n)
    if remat is not False and remat is not None:
        policy = None if remat is True else remat
        resolve_policy("repeat", policy)
        block = remat_layer(block, policy)

    def init(key, inputs):
        def one(i):
            return block.init(jax.random.fold_in(key, i), inputs)

        params, state = call_with_path("repeat", jax.vmap(one), jnp.arange(n))
        first = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape[1:], a.dtype), (params, state))
        out = call_with_path("repeat", output_spec, block, inputs, first[0], first[1])
        _require_same_spec("repeat", out, inputs, "be repeated")
        return params, state

    def apply(params, state, inputs, *, key=None, train=False):
        for leaf in jax.tree.leaves((params, state)):
            if jnp.ndim(leaf) < 1 or jnp.shape(leaf)[0] != n:
                raise LayerError(
                    f"expected params and state stacked with a leading axis of size {n}, got a "
                    f"leaf of shape {jnp.shape(leaf)}. Pass the params returned by this "
                    "model's `init`.",
                    path=["repeat"],
                )

        def body(x, per_copy):
            p, s, i = per_copy
            k = None if key is None else jax.random.fold_in(key, i)
            return call_with_path("repeat", block.apply, p, s, x, key=k, train=train)

        return jax.lax.scan(body, inputs, (params, state, jnp.arange(n)), unroll=unroll)

    return Layer(init, apply, f"repeat(n={n})", (block,))
