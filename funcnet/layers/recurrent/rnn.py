"""RNN and Bidirectional: a recurrent cell run over the time axis with one ``lax.scan``."""

from __future__ import annotations

import functools
import weakref
from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from funcnet._checks import check_bool, check_positive_int, fmt_shape, fmt_spec
from funcnet.combinators import split_inputs
from funcnet.core import Layer, LayerError, call_with_path, spec_of
from funcnet.layers.recurrent.cells import GRUCell, LSTMCell, RecurrentCell, SimpleRNNCell

__all__ = ["RNN", "Bidirectional"]

_KEYS = ("x", "lengths", "mask", "carry")
_MERGES = ("concat", "sum", "mul", "ave", None)

# ---------------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------------


class _Parts(NamedTuple):
    x: Any
    lengths: Any
    mask: Any
    carry: Any
    passthrough: dict | None  # the keys handed on to the next layer; None for array inputs


def _is_array(a) -> bool:
    return hasattr(a, "shape") and hasattr(a, "dtype")


def _read_inputs(inputs) -> _Parts:
    """Split the inputs by the dict convention and check every shape and dtype (static)."""
    parts, is_dict = split_inputs(inputs, _KEYS, layout="(N, T, F)")
    x = parts["x"]
    if not _is_array(x):
        raise LayerError(f"expected `x` to be an array (N, T, F), got {type(x).__name__}.")
    shape, x_dtype = tuple(x.shape), jnp.dtype(x.dtype)
    if len(shape) != 3:
        raise LayerError(
            f"expected `x` of shape (N, T, F) (batch, time, features), got shape "
            f"{fmt_shape(shape)}. Add the missing axis, e.g. `x[..., None]` for one feature."
        )
    if not jnp.issubdtype(x_dtype, jnp.floating):
        raise LayerError(
            f"expected floating-point `x`, got dtype {x_dtype}. Embed integer ids first "
            "(`Embedding`) or cast with `x.astype(jnp.float32)`."
        )
    n, t, _ = shape
    lengths, mask = parts.get("lengths"), parts.get("mask")
    if lengths is not None and (
        not _is_array(lengths)
        or tuple(lengths.shape) != (n,)
        or not jnp.issubdtype(jnp.dtype(lengths.dtype), jnp.integer)
    ):
        got = fmt_spec(lengths) if _is_array(lengths) else type(lengths).__name__
        raise LayerError(
            f"expected `lengths` as an integer array of shape ({n},) (one length per sequence "
            f"of `x` {fmt_shape(shape)}), got {got}."
        )
    if mask is not None and (
        not _is_array(mask)
        or tuple(mask.shape) != (n, t)
        or jnp.dtype(mask.dtype) != jnp.dtype(bool)
    ):
        got = fmt_spec(mask) if _is_array(mask) else type(mask).__name__
        raise LayerError(
            f"expected `mask` as a bool array of shape ({n}, {t}) (True = valid step of `x` "
            f"{fmt_shape(shape)}), got {got}."
        )
    passthrough = None
    if is_dict:
        passthrough = {k: parts[k] for k in ("lengths", "mask") if k in parts}
    return _Parts(x, lengths, mask, parts.get("carry"), passthrough)


# ---------------------------------------------------------------------------------------------
# RNN
# ---------------------------------------------------------------------------------------------


class _RNNConfig(NamedTuple):
    cell: Any
    return_sequences: bool
    return_state: bool
    reverse: bool
    unroll: int | bool


# The configuration of every layer built by RNN, keyed by its (wrapped) apply function, so that
# Bidirectional can check and rebuild its children.
_RNN_CONFIGS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _check_cell(cell) -> None:
    if isinstance(cell, RecurrentCell):
        return
    if isinstance(cell, type) or any(cell is c for c in (SimpleRNNCell, LSTMCell, GRUCell)):
        name = getattr(cell, "__name__", "the cell")
        raise TypeError(f"RNN: got `{name}` itself; call it to build the cell, e.g. `{name}(32)`.")
    if isinstance(cell, Layer) or not all(
        callable(getattr(cell, attr, None)) for attr in ("init", "apply", "initial_carry")
    ):
        raise TypeError(
            "RNN: `cell` must be a RecurrentCell (e.g. `LSTMCell(32)`) with `init`, `apply` and "
            f"`initial_carry`, got {type(cell).__name__}."
        )


def RNN(
    cell: RecurrentCell,
    *,
    return_sequences: bool = True,
    return_state: bool = False,
    reverse: bool = False,
    unroll: int | bool = 1,
) -> Layer:
    """Run a recurrent cell over the time axis with one ``jax.lax.scan``.

    Inputs are batch-major: ``x`` of shape ``(N, T, F)``, or the dict
    ``{"x": x, "lengths": (N,) int, "mask": (N, T) bool, "carry": carry}``
    with any of the optional keys (see the module docs). Invalid steps
    (``t >= lengths[n]`` or ``mask[n, t]`` False; lengths are effectively
    clipped to ``[0, T]``) leave the carry unchanged and give zero outputs.
    ``"carry"`` is the initial carry, shaped as ``cell.initial_carry(N)``
    (default: that, zeros).

    Outputs:

    - ``return_sequences=True``: the outputs of every step, ``(N, T, H)``. When
      the inputs were a dict the outputs are one too, ``{"x": (N, T, H)}`` with
      the inputs' ``"lengths"`` and ``"mask"`` handed on (not ``"carry"``), so
      stacked RNNs in :func:`~funcnet.serial` respect the lengths. Take
      ``lambda d: d["x"]`` before a layer that wants an array.
    - ``return_sequences=False``: each sequence's output at its last valid step,
      ``(N, H)`` (zeros for a sequence without valid steps), always an array.
    - ``return_state=True``: the pair ``(outputs, final_carry)``; the final
      carry is the one after each sequence's last valid step (for ``LSTMCell``,
      ``(h, c)``).

    ``reverse=True`` scans from ``t = T - 1`` down to 0, with the outputs kept
    at their time positions. Since padded steps are skipped, each sequence is
    read backwards *from its own last valid step*, as the backward direction
    of PyTorch's packed sequences; with ``return_sequences=False`` the output
    is the one at ``t = 0``, the last step processed.

    Params are the cell's params, unnested (``{"wi", "wh", "b"}`` for an
    LSTM); no state; no key (``train`` is ignored).

    Args:
        cell: a :class:`RecurrentCell`, e.g. ``LSTMCell(32)``.
        return_sequences: return the outputs of every step, else only the last valid one.
        return_state: also return the final carry.
        reverse: run the sequences backwards (see above).
        unroll: steps per iteration of the scan (``lax.scan``'s ``unroll``;
            ``True`` unrolls fully). Larger values can be faster for short
            sequences, at the cost of compile time.

    Raises:
        TypeError: in the constructor, for a ``cell`` that is not a cell or a
            flag that is not a bool.
        ValueError: in the constructor, for ``unroll < 1``.
        LayerError: for inputs that are not ``(N, T, F)`` floats, features that
            do not match the params, ``lengths``/``mask``/``carry`` of the wrong
            shape or dtype, or unknown dict keys.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> layer = RNN(LSTMCell(8))
        >>> x = jnp.ones((2, 5, 3))
        >>> params, state = layer.init(jax.random.key(0), x)
        >>> jax.tree.map(jnp.shape, params)
        {'b': (32,), 'wh': (8, 32), 'wi': (3, 32)}
        >>> layer.apply(params, state, x)[0].shape
        (2, 5, 8)

        Variable lengths, the final carry, and a stack:

        >>> inputs = {"x": x, "lengths": jnp.array([5, 2])}
        >>> (ys, (h, c)), _ = RNN(LSTMCell(8), return_state=True).apply(params, state, inputs)
        >>> ys["x"].shape, bool((ys["x"][1, 2:] == 0).all()), bool((ys["x"][1, 1] == h[1]).all())
        ((2, 5, 8), True, True)
        >>> from funcnet.combinators import serial
        >>> model = serial(RNN(GRUCell(8)), RNN(GRUCell(4), return_sequences=False))
        >>> params, state = model.init(jax.random.key(0), inputs)
        >>> model.apply(params, state, inputs)[0].shape
        (2, 4)
    """
    _check_cell(cell)
    return_sequences = check_bool("RNN", "return_sequences", return_sequences)
    return_state = check_bool("RNN", "return_state", return_state)
    reverse = check_bool("RNN", "reverse", reverse)
    if not (unroll is True or unroll is False):
        unroll = check_positive_int("RNN", "unroll", unroll)
    cell_name = getattr(cell, "name", type(cell).__name__)
    config = _RNNConfig(cell, return_sequences, return_state, reverse, unroll)
    name = _rnn_name(config)

    def in_cell(fn, *args):
        """Call a cell function; a LayerError from the cell gets this layer's name in its path."""
        try:
            return fn(*args)
        except LayerError as err:
            if err.path:
                err.prepend(name)
            else:
                err.prepend(f"{name} {cell_name}")
            raise

    def step_spec(params, parts: _Parts):
        n, _, f = parts.x.shape
        x_t = jax.ShapeDtypeStruct((n, f), parts.x.dtype)
        carry = jax.eval_shape(lambda: cell.initial_carry(n, x_t.dtype))
        return in_cell(jax.eval_shape, cell.apply, spec_of(params), carry, x_t)

    def init(key, inputs):
        parts = _read_inputs(inputs)
        n, _, f = parts.x.shape
        params, _ = in_cell(cell.init, key, jax.ShapeDtypeStruct((n, f), parts.x.dtype))
        if parts.carry is not None:
            carry_spec, _ = step_spec(params, parts)
            _check_carry(parts.carry, carry_spec, n)
        return params, ()

    # one compiled scan per layer and shape, also when `apply` is called eagerly
    run = jax.jit(functools.partial(_scan, cell.apply, return_sequences, reverse, unroll))

    def apply(params, state, inputs, *, key=None, train=False):
        del key, train
        parts = _read_inputs(inputs)
        carry_spec, _ = step_spec(params, parts)
        carry = _first_carry(cell, parts, carry_spec)
        carry, out = in_cell(run, params, carry, parts.x, _valid_steps(parts))
        if return_sequences and parts.passthrough is not None:
            out = {**parts.passthrough, "x": out}
        return ((out, carry) if return_state else out), state

    layer = Layer(init, apply, name)
    _RNN_CONFIGS[layer.apply] = config
    return layer


def _rnn_name(config: _RNNConfig) -> str:
    """``RNN(LSTMCell(8), reverse=True)``: the cell and the options that are not the defaults."""
    cell_name = getattr(config.cell, "name", type(config.cell).__name__)
    defaults = {"return_sequences": True, "return_state": False, "reverse": False, "unroll": 1}
    options = [
        f"{k}={v!r}"
        for k, v in config._asdict().items()
        if k in defaults and (type(v), v) != (type(defaults[k]), defaults[k])
    ]
    return f"RNN({', '.join([str(cell_name), *options])})"


def _check_carry(carry, carry_spec, n: int) -> None:
    """An initial carry shaped like ``cell.initial_carry(n)`` (floating), else a LayerError."""
    leaves, spec_leaves = jax.tree.leaves(carry), jax.tree.leaves(carry_spec)
    ok = len(leaves) == len(spec_leaves) and all(
        _is_array(a)
        and tuple(a.shape) == s.shape
        and jnp.issubdtype(jnp.dtype(a.dtype), jnp.floating)
        for a, s in zip(leaves, spec_leaves)
    )
    if not ok:
        got = fmt_spec(carry) if all(map(_is_array, leaves)) else type(carry).__name__
        raise LayerError(
            f"expected `carry` like `cell.initial_carry({n})`: {fmt_spec(carry_spec)} "
            f"(floating), got {got}."
        )


def _first_carry(cell, parts: _Parts, carry_spec):
    """The carry the scan starts from: the given one (checked) or the cell's zeros, in the
    dtypes of the cell's step."""
    n = parts.x.shape[0]
    spec_leaves, carry_def = jax.tree.flatten(carry_spec)
    if parts.carry is None:
        carry = cell.initial_carry(n, spec_leaves[0].dtype if spec_leaves else parts.x.dtype)
    else:
        _check_carry(parts.carry, carry_spec, n)
        carry = parts.carry
    leaves = [a.astype(s.dtype) for a, s in zip(jax.tree.leaves(carry), spec_leaves)]
    return jax.tree.unflatten(carry_def, leaves)


def _valid_steps(parts: _Parts):
    """``(N, T)`` bool of the steps that count (from ``lengths`` and ``mask``), or None."""
    valid = None
    if parts.lengths is not None:
        lengths = jnp.asarray(parts.lengths).astype(jnp.int32)
        valid = jnp.arange(parts.x.shape[1], dtype=jnp.int32)[None, :] < lengths[:, None]
    if parts.mask is not None:
        valid = parts.mask if valid is None else valid & parts.mask
    return valid


def _scan(step_fn, return_sequences: bool, reverse: bool, unroll, params, carry, x, valid):
    """The cell's ``step_fn`` over the time axis of ``x`` (N, T, F) in one ``lax.scan``:
    ``(final carry, outputs (N, T, H) or the last valid step's (N, H))``."""
    # The input projection stays inside the step: on XLA:CPU hoisting it out of the loop (one
    # big matmul before the scan) measured 1.5-2x slower, forward and backward.
    xs = jnp.swapaxes(x, 0, 1)  # time-major (T, N, F)
    scanned = xs if valid is None else (xs, jnp.swapaxes(valid, 0, 1))

    def body(loop, inp):
        carry, last = loop
        x_t, v = (inp, None) if valid is None else inp
        new_carry, y = step_fn(params, carry, x_t)
        if v is not None:
            new_carry = _where(v, new_carry, carry)
            y = _where(v, y, jax.tree.map(jnp.zeros_like, y))
        if return_sequences:
            return (new_carry, last), y
        last = y if v is None else _where(v, y, last)
        return (new_carry, last), None

    last = None
    if not return_sequences:
        x_t = jax.ShapeDtypeStruct(xs.shape[1:], xs.dtype)
        _, y_spec = jax.eval_shape(step_fn, params, carry, x_t)
        last = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), y_spec)
    (carry, last), ys = jax.lax.scan(body, (carry, last), scanned, reverse=reverse, unroll=unroll)
    if return_sequences:
        return carry, jax.tree.map(lambda a: jnp.swapaxes(a, 0, 1), ys)
    return carry, last


def _where(v, new, old):
    """``new`` where the step is valid (``v`` of shape (N,)), else ``old``, leaf by leaf."""

    def pick(a, b):
        return jnp.where(v.reshape(v.shape + (1,) * (a.ndim - 1)), a, b)

    return jax.tree.map(pick, new, old)


# ---------------------------------------------------------------------------------------------
# Bidirectional
# ---------------------------------------------------------------------------------------------


def _rnn_config(layer, which: str) -> _RNNConfig:
    config = _RNN_CONFIGS.get(getattr(layer, "apply", None)) if isinstance(layer, Layer) else None
    if config is None:
        raise TypeError(
            f"Bidirectional: `{which}` must be a layer made by `RNN(...)`, e.g. "
            f"`RNN(LSTMCell(32))`, got {layer!r}."
        )
    return config


def _is_pair_dict(tree) -> bool:
    """Whether ``tree`` is a dict with exactly the keys ``"forward"`` and ``"backward"``."""
    return isinstance(tree, Mapping) and set(tree) == {"forward", "backward"}


def _describe(tree) -> str:
    return f"a dict with keys {sorted(tree)}" if isinstance(tree, Mapping) else type(tree).__name__


def _merge_fn(merge):
    if merge == "concat":
        return lambda a, b: jnp.concatenate([a, b], axis=-1)
    if merge == "sum":
        return jnp.add
    if merge == "mul":
        return jnp.multiply
    return lambda a, b: (a + b) * 0.5  # "ave"


def _directions(forward: Layer, backward: Layer | None, merge) -> tuple[Layer, bool]:
    """Check the two directions (and build ``backward`` from ``forward`` when None); return
    the backward layer and whether both return their state."""
    if merge not in _MERGES:
        raise ValueError(f"Bidirectional: `merge` must be one of {list(_MERGES)}, got {merge!r}.")
    f_cfg = _rnn_config(forward, "forward")
    if f_cfg.reverse:
        raise ValueError(
            "Bidirectional: the `forward` layer must run forwards; build it with "
            "`reverse=False` (the default)."
        )
    if backward is None:
        backward = RNN(
            f_cfg.cell,
            return_sequences=f_cfg.return_sequences,
            return_state=f_cfg.return_state,
            reverse=True,
            unroll=f_cfg.unroll,
        )
    b_cfg = _rnn_config(backward, "backward")
    if not b_cfg.reverse:
        raise ValueError(
            "Bidirectional: the `backward` layer must run backwards; build it with "
            f"`RNN(..., reverse=True)`, got {backward!r}."
        )
    for option in ("return_sequences", "return_state"):
        if getattr(f_cfg, option) != getattr(b_cfg, option):
            raise ValueError(
                f"Bidirectional: `forward` and `backward` must have the same `{option}`, got "
                f"{getattr(f_cfg, option)} and {getattr(b_cfg, option)}."
            )
    h_f, h_b = getattr(f_cfg.cell, "features", None), getattr(b_cfg.cell, "features", None)
    if merge in ("sum", "mul", "ave") and h_f is not None and h_b is not None and h_f != h_b:
        raise ValueError(
            f"Bidirectional: `merge={merge!r}` needs both directions of the same size, got "
            f"{h_f} and {h_b}; use `merge='concat'` or cells of the same `features`."
        )
    return backward, f_cfg.return_state


def _split_carry(inputs):
    """The inputs of each direction: the same, but with its own part of ``carry``."""
    if not isinstance(inputs, Mapping) or inputs.get("carry") is None:
        return inputs, inputs
    carry = inputs["carry"]
    if not _is_pair_dict(carry):
        raise LayerError(
            "expected `carry` as a dict {'forward': carry, 'backward': carry} (one initial "
            f"carry per direction), got {_describe(carry)}."
        )
    return {**inputs, "carry": carry["forward"]}, {**inputs, "carry": carry["backward"]}


def Bidirectional(
    forward: Layer,
    backward: Layer | None = None,
    *,
    merge: str | None = "concat",
) -> Layer:
    """Run one RNN forwards and one backwards over the same inputs and merge their outputs.

    Both directions get the same inputs (an array or the dict of :func:`RNN`;
    lengths and masks are respected, so the backward direction starts at each
    sequence's last valid step). An initial carry is given per direction:
    ``{"x": x, "carry": {"forward": c_f, "backward": c_b}}``.

    Outputs: the two RNNs' outputs merged over the last axis by ``merge``:
    ``"concat"`` (``(..., H_f + H_b)``), ``"sum"``, ``"mul"``, ``"ave"`` (the
    mean), or ``None`` for the tuple ``(forward_outputs, backward_outputs)``
    unmerged. Dict outputs (``return_sequences=True`` on dict inputs) stay
    dicts with ``"x"`` merged. With ``return_state=True`` the outputs are
    ``(merged, {"forward": carry_f, "backward": carry_b})``. With
    ``return_sequences=False`` the backward output is the one at ``t = 0``
    (as the backward half of PyTorch's ``h_n``).

    Params ``{"forward": ..., "backward": ...}`` (each an RNN's params); no
    state; no key.

    Args:
        forward: an ``RNN(...)`` layer with ``reverse=False``.
        backward: an ``RNN(...)`` layer with ``reverse=True`` and the same
            ``return_sequences`` and ``return_state``; default: ``forward``'s
            cell and options with ``reverse=True`` (its own params).
        merge: how to combine the two directions (see above).

    Raises:
        TypeError: if ``forward`` or ``backward`` is not made by :func:`RNN`.
        ValueError: for an unknown ``merge``, a ``forward`` that runs in
            reverse, a ``backward`` that does not, different
            ``return_sequences``/``return_state``, or different sizes with an
            elementwise merge.
        LayerError: for bad inputs (see :func:`RNN`) or a ``carry`` that is not
            ``{"forward": ..., "backward": ...}``.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> bi = Bidirectional(RNN(LSTMCell(8)), RNN(LSTMCell(8), reverse=True))
        >>> inputs = {"x": jnp.ones((2, 5, 3)), "lengths": jnp.array([5, 3])}
        >>> params, state = bi.init(jax.random.key(0), inputs)
        >>> jax.tree.map(jnp.shape, params["backward"])
        {'b': (32,), 'wh': (8, 32), 'wi': (3, 32)}
        >>> bi.apply(params, state, inputs)[0]["x"].shape
        (2, 5, 16)
        >>> summed = Bidirectional(RNN(GRUCell(8), return_sequences=False), merge="sum")
        >>> params, state = summed.init(jax.random.key(0), inputs)
        >>> summed.apply(params, state, inputs)[0].shape
        (2, 8)
    """
    backward, return_state = _directions(forward, backward, merge)
    children = {"forward": forward, "backward": backward}
    combine = _merge_fn(merge)

    def call(which, fn, *args):
        return call_with_path(f"Bidirectional[{which}]", fn, *args)

    def init(key, inputs):
        in_f, in_b = _split_carry(inputs)
        p_f, _ = call("forward", forward.init, jax.random.fold_in(key, 0), in_f)
        p_b, _ = call("backward", backward.init, jax.random.fold_in(key, 1), in_b)
        return {"forward": p_f, "backward": p_b}, ()

    def merged(y_f, y_b):
        if merge is None:
            return y_f, y_b
        if isinstance(y_f, Mapping):
            return {**y_f, "x": combine(y_f["x"], y_b["x"])}
        return combine(y_f, y_b)

    def apply(params, state, inputs, *, key=None, train=False):
        del key, train
        if not _is_pair_dict(params):
            raise LayerError(
                "expected params as a dict with keys ['backward', 'forward'], got "
                f"{_describe(params)}. Pass the params returned by this layer's `init`."
            )
        in_f, in_b = _split_carry(inputs)
        out_f, _ = call("forward", forward.apply, params["forward"], (), in_f)
        out_b, _ = call("backward", backward.apply, params["backward"], (), in_b)
        if return_state:
            (y_f, c_f), (y_b, c_b) = out_f, out_b
            return (merged(y_f, y_b), {"forward": c_f, "backward": c_b}), state
        return merged(out_f, out_b), state

    return Layer(init, apply, "Bidirectional", children)
