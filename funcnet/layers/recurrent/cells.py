"""Recurrent cells: one time step as pure functions (SimpleRNNCell, LSTMCell, GRUCell).

Every cell takes the same initializer and dtype arguments and keeps its
weights in PyTorch's layout (see :mod:`funcnet.layers.recurrent`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from funcnet import initializers
from funcnet._checks import (
    check_floating_dtype,
    check_number,
    check_positive_int,
    compute_dtype,
    fmt_shape,
    is_int,
)
from funcnet.core import LayerError, declare

__all__ = ["GRUCell", "LSTMCell", "RecurrentCell", "SimpleRNNCell"]


class RecurrentCell(NamedTuple):
    """One step of a recurrent network, as pure functions; :func:`RNN` runs it over time.

    Attributes:
        init: ``(key, x_t) -> (params, ())``; ``x_t`` is one time step of shape
            ``(N, F)`` (an array or :class:`jax.ShapeDtypeStruct`: only its
            shape and dtype are read).
        apply: ``(params, carry, x_t) -> (carry, y_t)``, pure, for ``x_t`` of
            shape ``(N, F)`` (any leading axes work); no key, no ``train``.
        initial_carry: ``(batch_size, dtype=jnp.float32) -> carry``, the zero
            carry for ``batch_size`` sequences (an int or a tuple of leading axes).
        features: the hidden size ``H`` (the size of ``y_t``).
        name: a short description (``"LSTMCell(32)"``), used in layer names and errors.

    A user-written cell is these functions; errors about bad inputs should be
    :class:`~funcnet.core.LayerError`.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> cell = LSTMCell(4)
        >>> params, _ = cell.init(jax.random.key(0), jax.ShapeDtypeStruct((2, 3), jnp.float32))
        >>> xs = jnp.ones((5, 2, 3))  # time-major for a hand-written scan
        >>> step = lambda carry, x_t: cell.apply(params, carry, x_t)
        >>> (h, c), ys = jax.lax.scan(step, cell.initial_carry(2), xs)
        >>> h.shape, ys.shape
        ((2, 4), (5, 2, 4))
    """

    init: Callable
    apply: Callable
    initial_carry: Callable
    features: int
    name: str

    def __repr__(self) -> str:
        return self.name


def _check_cell_args(owner: str, features, dtype, w_init, recurrent_init, b_init):
    features = check_positive_int(owner, "features", features)
    dtype = check_floating_dtype(owner, dtype)
    inits = tuple(initializers.get(i) for i in (w_init, recurrent_init, b_init))
    return features, dtype, inits


def _batch_shape(batch_size) -> tuple[int, ...]:
    dims = tuple(batch_size) if isinstance(batch_size, (tuple, list)) else (batch_size,)
    if not all(is_int(d) and d >= 0 for d in dims):
        raise ValueError(
            f"initial_carry: `batch_size` must be an int >= 0 or a tuple of them, got "
            f"{batch_size!r}."
        )
    return tuple(int(d) for d in dims)


def _step_input(name: str, x_t, in_features: int | None = None):
    """Shape and dtype of one time step ``x_t``; LayerError (path: the cell) when it is wrong."""
    if not hasattr(x_t, "shape") or not hasattr(x_t, "dtype"):
        raise LayerError(
            f"expected one time step `x_t` as an array (N, F), got {type(x_t).__name__}.",
            path=[name],
        )
    shape, dtype = tuple(x_t.shape), jnp.dtype(x_t.dtype)
    if len(shape) < 1:
        raise LayerError(f"expected `x_t` of shape (N, F), got shape {shape}.", path=[name])
    if not jnp.issubdtype(dtype, jnp.floating):
        raise LayerError(
            f"expected floating-point `x_t`, got dtype {dtype}. Cast with `x.astype(jnp.float32)`.",
            path=[name],
        )
    if in_features is not None and shape[-1] != in_features:
        raise LayerError(
            f"expected `x_t` with last dimension {in_features} (the input size of the params), "
            f"got shape {fmt_shape(shape)}.",
            path=[name],
        )
    return shape, dtype


def _check_carry_leaves(name: str, leaves, x_shape, features: int, pair: bool) -> None:
    expected = (*x_shape[:-1], features)
    for leaf in leaves:
        if not hasattr(leaf, "shape") or tuple(leaf.shape) != expected:
            got = fmt_shape(leaf.shape) if hasattr(leaf, "shape") else type(leaf).__name__
            like = "(h, c)" if pair else "one array"
            raise LayerError(
                f"expected a carry of {like} with shape {expected} for `x_t` of shape "
                f"{fmt_shape(x_shape)}, got {got}. Make it with `cell.initial_carry(batch_size)`.",
                path=[name],
            )


def _gate_weights(init, key, rows: int, features: int, gates: int, dtype):
    """``(rows, gates * features)``: each gate's ``(rows, features)`` block drawn on its own."""
    keys = jax.random.split(key, gates)
    dtype = jnp.dtype(dtype)
    # Half-precision weights are the float32 ones rounded, whatever the initializer.
    draw = jnp.float32 if jnp.issubdtype(dtype, jnp.floating) and dtype.itemsize < 4 else dtype
    blocks = [init(k, (rows, features), draw).astype(dtype) for k in keys]
    return jnp.concatenate(blocks, axis=1)


def _build_cell(
    name: str,
    features: int,
    gates: int,
    step: Callable,
    inits: tuple,
    dtype,
    param_dtype,
    *,
    pair: bool = False,
    two_biases: bool = False,
    forget_bias: float = 0.0,
) -> RecurrentCell:
    """The parts the cells share: params ``wi``, ``wh`` and biases, the carry, the projections.

    ``step`` is what makes each cell different. With one bias it is
    ``step(params, carry, z) -> (carry, y_t)`` and gets the gates'
    pre-activations ``z = x_t @ wi + h @ wh + b``, computed as one matmul
    ``[x_t, h] @ [wi; wh]`` (on XLA:CPU one larger matmul per step made the
    ``lstm`` workload of ``bench/run.py`` train in 0.88x the time of two).
    With ``two_biases`` (the GRU, whose hidden projection is gated apart) it
    is ``step(params, carry, xp, hp)`` with ``xp = x_t @ wi + bi`` and
    ``hp = h @ wh`` (no bias). All in the computation dtype.
    """
    wi_init, wh_init, bias_init = inits
    b_key = "bi" if two_biases else "b"

    def init(key, x_t):
        shape, _ = _step_input(name, x_t)
        k_i, k_h, k_b, k_bh = jax.random.split(key, 4)
        params = {
            "wi": _gate_weights(wi_init, k_i, shape[-1], features, gates, param_dtype),
            "wh": _gate_weights(wh_init, k_h, features, features, gates, param_dtype),
            b_key: bias_init(k_b, (gates * features,), param_dtype),
        }
        if two_biases:
            params["bh"] = bias_init(k_bh, (gates * features,), param_dtype)
        if forget_bias:  # the LSTM's second block
            b = params[b_key]
            params[b_key] = b.at[features : 2 * features].add(jnp.asarray(forget_bias, b.dtype))
        names = {"wi": ("embed", "gates"), "wh": ("rnn", "gates")}
        names.update({k: ("gates",) for k in ("b", "bi", "bh")})
        return declare(params, names), ()

    def initial_carry(batch_size, dtype=jnp.float32):
        zeros = jnp.zeros((*_batch_shape(batch_size), features), dtype)
        return (zeros, zeros) if pair else zeros

    def apply(params, carry, x_t):
        shape, _ = _step_input(name, x_t, params["wi"].shape[0])
        if pair:
            if not isinstance(carry, (tuple, list)) or len(carry) != 2:
                raise LayerError(
                    f"expected the carry as a pair `(h, c)`, got {type(carry).__name__}. Make "
                    "it with `cell.initial_carry(batch_size)`.",
                    path=[name],
                )
            carry = tuple(carry)
        _check_carry_leaves(name, carry if pair else [carry], shape, features, pair)
        dt = compute_dtype(jnp.dtype(x_t.dtype), params["wi"].dtype, dtype)
        h = (carry[0] if pair else carry).astype(dt)
        if not two_biases:
            xh = jnp.concatenate([x_t.astype(dt), h], axis=-1)
            w = jnp.concatenate([params["wi"], params["wh"]], axis=0).astype(dt)
            return step(params, carry, jnp.matmul(xh, w) + params["b"].astype(dt))
        xp = jnp.matmul(x_t.astype(dt), params["wi"].astype(dt)) + params[b_key].astype(dt)
        return step(params, carry, xp, jnp.matmul(h, params["wh"].astype(dt)))

    return RecurrentCell(init, apply, initial_carry, features, name)


def SimpleRNNCell(
    features: int,
    *,
    activation: Callable[[jax.Array], jax.Array] = jnp.tanh,
    w_init: str | initializers.Initializer = "glorot_uniform",
    recurrent_init: str | initializers.Initializer = "orthogonal",
    b_init: str | initializers.Initializer = "zeros",
    dtype=None,
    param_dtype=jnp.float32,
) -> RecurrentCell:
    """The Elman cell: ``h' = activation(x W_i + h W_h + b)``; ``y_t = h'``.

    One step maps ``x_t (N, F)`` and the carry ``h (N, H)`` to ``(h', h')``.
    Params ``{"wi": (F, H), "wh": (H, H), "b": (H,)}``. PyTorch's ``nn.RNN``
    (``nonlinearity="tanh"``): ``wi = weight_ih_l0.T``, ``wh = weight_hh_l0.T``,
    ``b = bias_ih_l0 + bias_hh_l0``.

    Args:
        features: the hidden size ``H``.
        activation: the nonlinearity (``jnp.tanh``; ``jax.nn.relu`` for PyTorch's
            ``nonlinearity="relu"``).
        w_init: initializer of ``wi`` (Glorot-uniform, as Keras).
        recurrent_init: initializer of ``wh`` (orthogonal, as Keras).
        b_init: initializer of the bias (zeros).
        dtype: computation dtype; default: the promotion of the inputs' and the params' dtypes.
        param_dtype: dtype of the params.

    Returns:
        A :class:`RecurrentCell`; wrap it in :func:`RNN` for a layer.

    Raises:
        ValueError: for ``features < 1`` or a non-floating ``dtype``.
        TypeError: for an ``activation`` that is not callable.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> cell = SimpleRNNCell(4)
        >>> params, _ = cell.init(jax.random.key(0), jnp.zeros((2, 3)))
        >>> jax.tree.map(jnp.shape, params)
        {'b': (4,), 'wh': (4, 4), 'wi': (3, 4)}
        >>> h, y = cell.apply(params, cell.initial_carry(2), jnp.ones((2, 3)))
        >>> h.shape, bool((h == y).all())
        ((2, 4), True)
    """
    owner = "SimpleRNNCell"
    features, dtype, inits = _check_cell_args(
        owner, features, dtype, w_init, recurrent_init, b_init
    )
    if not callable(activation):
        raise TypeError(f"{owner}: `activation` must be a function, got {activation!r}.")
    act_name = getattr(activation, "__name__", None) or type(activation).__name__
    name = f"{owner}({features})" if activation is jnp.tanh else f"{owner}({features}, {act_name})"

    def step(params, carry, z):
        del params, carry
        h = activation(z)
        return h, h

    return _build_cell(name, features, 1, step, inits, dtype, param_dtype)


def LSTMCell(
    features: int,
    *,
    forget_bias: float = 1.0,
    w_init: str | initializers.Initializer = "glorot_uniform",
    recurrent_init: str | initializers.Initializer = "orthogonal",
    b_init: str | initializers.Initializer = "zeros",
    dtype=None,
    param_dtype=jnp.float32,
) -> RecurrentCell:
    """Long short-term memory, with PyTorch's gate order ``i, f, g, o``.

    The carry is the pair ``(h, c)``, each ``(N, H)``; one step computes::

        z = x_t @ wi + h @ wh + b          # (N, 4H) = [i | f | g | o]
        i, f, o = sigmoid(z_i), sigmoid(z_f), sigmoid(z_o)
        g = tanh(z_g)
        c' = f * c + i * g
        h' = o * tanh(c')                  # carry (h', c'), output y_t = h'

    Params ``{"wi": (F, 4H), "wh": (H, 4H), "b": (4H,)}``, the gates stacked
    along the last axis in the order ``i, f, g, o``. From ``torch.nn.LSTM``:
    ``wi = weight_ih_l0.T`` (torch ``(4H, F)``), ``wh = weight_hh_l0.T``,
    ``b = bias_ih_l0 + bias_hh_l0``; PyTorch's carry ``(h_0, c_0)`` is ours
    without its leading layer axis. Keras' ``LSTM`` has the same order:
    ``kernel``, ``recurrent_kernel``, ``bias``.

    Args:
        features: the hidden size ``H``.
        forget_bias: added to the forget gate's slice of ``b`` at *initialization*
            (default 1.0, as Keras' ``unit_forget_bias=True``, after Jozefowicz et
            al. 2015, so gradients flow through ``c`` early in training); 0.0 for
            a plain ``b_init``. It is a value in the params, not a constant of the
            step, so imported weights are used as they are.
        w_init, recurrent_init, b_init, dtype, param_dtype: as :func:`SimpleRNNCell`;
            ``wi`` and ``wh`` are drawn one gate at a time (``(F, H)`` and ``(H, H)``
            blocks), so each gate's recurrent matrix is orthogonal.

    Returns:
        A :class:`RecurrentCell`; wrap it in :func:`RNN` for a layer.

    Raises:
        ValueError: for ``features < 1``, a non-number ``forget_bias`` or a
            non-floating ``dtype``.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> cell = LSTMCell(4)
        >>> params, _ = cell.init(jax.random.key(0), jnp.zeros((2, 3)))
        >>> jax.tree.map(jnp.shape, params)
        {'b': (16,), 'wh': (4, 16), 'wi': (3, 16)}
        >>> params["b"][4:8]  # the forget gate
        Array([1., 1., 1., 1.], dtype=float32)
        >>> (h, c), y = cell.apply(params, cell.initial_carry(2), jnp.ones((2, 3)))
        >>> h.shape, c.shape, y.shape
        ((2, 4), (2, 4), (2, 4))
    """
    owner = "LSTMCell"
    features, dtype, inits = _check_cell_args(
        owner, features, dtype, w_init, recurrent_init, b_init
    )
    forget_bias = check_number(owner, "forget_bias", forget_bias)

    def step(params, carry, z):
        del params
        i, f, g, o = jnp.split(z, 4, axis=-1)
        c = jax.nn.sigmoid(f) * carry[1].astype(z.dtype) + jax.nn.sigmoid(i) * jnp.tanh(g)
        h = jax.nn.sigmoid(o) * jnp.tanh(c)
        return (h, c), h

    name = f"{owner}({features})"
    return _build_cell(
        name, features, 4, step, inits, dtype, param_dtype, pair=True, forget_bias=forget_bias
    )


def GRUCell(
    features: int,
    *,
    w_init: str | initializers.Initializer = "glorot_uniform",
    recurrent_init: str | initializers.Initializer = "orthogonal",
    b_init: str | initializers.Initializer = "zeros",
    dtype=None,
    param_dtype=jnp.float32,
) -> RecurrentCell:
    """Gated recurrent unit, with PyTorch's equations and gate order ``r, z, n``.

    The carry is ``h (N, H)``; one step computes::

        [a_r | a_z | a_n] = x_t @ wi + bi  # (N, 3H)
        [u_r | u_z | u_n] = h @ wh + bh    # (N, 3H)
        r = sigmoid(a_r + u_r)
        z = sigmoid(a_z + u_z)
        n = tanh(a_n + r * u_n)            # r gates W_hn h + b_hn, bias included
        h' = (1 - z) * n + z * h           # carry h', output y_t = h'

    Params ``{"wi": (F, 3H), "wh": (H, 3H), "bi": (3H,), "bh": (3H,)}``. The two
    biases stay apart because ``bh``'s ``n`` block is multiplied by ``r``. From
    ``torch.nn.GRU``: ``wi = weight_ih_l0.T`` (torch ``(3H, F)``), ``wh =
    weight_hh_l0.T``, ``bi = bias_ih_l0``, ``bh = bias_hh_l0``. Keras' ``GRU``
    with ``reset_after=True`` (its default) is the same cell with the blocks in
    the order ``z, r, n`` and ``bias = [bi, bh]``.

    Args:
        features: the hidden size ``H``.
        w_init, recurrent_init, b_init, dtype, param_dtype: as :func:`LSTMCell`
            (``b_init`` initializes both ``bi`` and ``bh``).

    Returns:
        A :class:`RecurrentCell`; wrap it in :func:`RNN` for a layer.

    Raises:
        ValueError: for ``features < 1`` or a non-floating ``dtype``.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> cell = GRUCell(4)
        >>> params, _ = cell.init(jax.random.key(0), jnp.zeros((2, 3)))
        >>> jax.tree.map(jnp.shape, params)
        {'bh': (12,), 'bi': (12,), 'wh': (4, 12), 'wi': (3, 12)}
        >>> h, y = cell.apply(params, cell.initial_carry(2), jnp.ones((2, 3)))
        >>> h.shape
        (2, 4)
    """
    owner = "GRUCell"
    features, dtype, inits = _check_cell_args(
        owner, features, dtype, w_init, recurrent_init, b_init
    )

    def step(params, carry, xp, hp):
        a_r, a_z, a_n = jnp.split(xp, 3, axis=-1)
        u_r, u_z, u_n = jnp.split(hp + params["bh"].astype(hp.dtype), 3, axis=-1)
        r = jax.nn.sigmoid(a_r + u_r)
        z = jax.nn.sigmoid(a_z + u_z)
        n = jnp.tanh(a_n + r * u_n)
        h = (1 - z) * n + z * carry.astype(xp.dtype)
        return h, h

    name = f"{owner}({features})"
    return _build_cell(name, features, 3, step, inits, dtype, param_dtype, two_biases=True)
