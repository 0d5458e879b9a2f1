"""Recurrent cells, RNN and Bidirectional against independent numpy references."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from funcnet import training as train
from funcnet.combinators import serial
from funcnet.core import LayerError, output_spec, spec_of
from funcnet.layers.dense import Dense
from funcnet.layers.recurrent import (
    RNN,
    Bidirectional,
    GRUCell,
    LSTMCell,
    RecurrentCell,
    SimpleRNNCell,
)

F32, I32 = jnp.float32, jnp.int32


def S(*shape, dtype=F32):
    return jax.ShapeDtypeStruct(shape, dtype)


# ---------------------------------------------------------------------------------------------
# Independent numpy references, in PyTorch's weight layout (weight_ih (G*H, F), ...)
# ---------------------------------------------------------------------------------------------

GATES = {"rnn": 1, "lstm": 4, "gru": 3}
CELLS = {"rnn": SimpleRNNCell, "lstm": LSTMCell, "gru": GRUCell}


@functools.cache
def rnn(kind, **options):
    """One shared layer per configuration (hidden size 4), so its compiled scan is reused."""
    return RNN(CELLS[kind](4), **options)


def sigmoid(a):
    return 1.0 / (1.0 + np.exp(-a))


def torch_weights(kind, f, h, seed=0):
    rng = np.random.default_rng(seed)
    g = GATES[kind]
    return {
        "weight_ih": rng.normal(scale=0.5, size=(g * h, f)),
        "weight_hh": rng.normal(scale=0.5, size=(g * h, h)),
        "bias_ih": rng.normal(scale=0.5, size=(g * h,)),
        "bias_hh": rng.normal(scale=0.5, size=(g * h,)),
    }


def to_params(kind, tw):
    """The documented mapping from PyTorch's layout to ours."""
    params = {"wi": tw["weight_ih"].T, "wh": tw["weight_hh"].T}
    if kind == "gru":
        params |= {"bi": tw["bias_ih"], "bh": tw["bias_hh"]}
    else:
        params["b"] = tw["bias_ih"] + tw["bias_hh"]
    return {k: jnp.asarray(v, F32) for k, v in params.items()}


def np_step(kind, tw, x, state):
    """One step in float64; ``state`` is h, or (h, c) for the LSTM. Returns (state, y)."""
    w_ih, w_hh, b_ih, b_hh = tw["weight_ih"], tw["weight_hh"], tw["bias_ih"], tw["bias_hh"]
    if kind == "rnn":
        h = np.tanh(x @ w_ih.T + b_ih + state @ w_hh.T + b_hh)
        return h, h
    if kind == "lstm":
        h, c = state
        w_ii, w_if, w_ig, w_io = np.split(w_ih, 4)
        w_hi, w_hf, w_hg, w_ho = np.split(w_hh, 4)
        b_ii, b_if, b_ig, b_io = np.split(b_ih, 4)
        b_hi, b_hf, b_hg, b_ho = np.split(b_hh, 4)
        i = sigmoid(x @ w_ii.T + b_ii + h @ w_hi.T + b_hi)
        f = sigmoid(x @ w_if.T + b_if + h @ w_hf.T + b_hf)
        g = np.tanh(x @ w_ig.T + b_ig + h @ w_hg.T + b_hg)
        o = sigmoid(x @ w_io.T + b_io + h @ w_ho.T + b_ho)
        c = f * c + i * g
        h = o * np.tanh(c)
        return (h, c), h
    w_ir, w_iz, w_in = np.split(w_ih, 3)
    w_hr, w_hz, w_hn = np.split(w_hh, 3)
    b_ir, b_iz, b_in = np.split(b_ih, 3)
    b_hr, b_hz, b_hn = np.split(b_hh, 3)
    h = state
    r = sigmoid(x @ w_ir.T + b_ir + h @ w_hr.T + b_hr)
    z = sigmoid(x @ w_iz.T + b_iz + h @ w_hz.T + b_hz)
    n = np.tanh(x @ w_in.T + b_in + r * (h @ w_hn.T + b_hn))
    h = (1 - z) * n + z * h
    return h, h


def np_run(kind, tw, x, valid=None, reverse=False, carry=None):
    """A python loop over each sequence on its own, visiting only its valid steps.

    Returns ``(ys (N, T, H) with zeros at skipped steps, last (N, H), final carries)``.
    """
    x = np.asarray(x, np.float64)
    n_seq, t_len, _ = x.shape
    h_size = tw["weight_hh"].shape[1]
    valid = np.ones((n_seq, t_len), bool) if valid is None else np.asarray(valid)
    ys = np.zeros((n_seq, t_len, h_size))
    last = np.zeros((n_seq, h_size))
    finals = []
    for n in range(n_seq):
        if carry is None:
            zero = np.zeros((1, h_size))
            state = (zero, zero) if kind == "lstm" else zero
        else:
            state = jax.tree.map(lambda a, n=n: np.asarray(a, np.float64)[n : n + 1], carry)
        order = [t for t in range(t_len) if valid[n, t]]
        for t in reversed(order) if reverse else order:
            state, y = np_step(kind, tw, x[n, t][None], state)
            ys[n, t] = y[0]
            last[n] = y[0]
        finals.append(state)
    final = jax.tree.map(lambda *a: np.concatenate(a), *finals)
    return ys, last, final


def valid_from_lengths(lengths, t_len):
    return np.arange(t_len)[None, :] < np.asarray(lengths)[:, None]


def close(a, b, tol=2e-5):
    jax.tree.map(lambda u, v: np.testing.assert_allclose(u, v, rtol=tol, atol=tol), a, b)


# ---------------------------------------------------------------------------------------------
# Cells
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["rnn", "lstm", "gru"])
def test_one_step_of_each_cell_matches_numpy(kind):
    f, h = 3, 4
    tw = torch_weights(kind, f, h)
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, f))
    state = tuple(rng.normal(size=(2, h)) for _ in range(2 if kind == "lstm" else 1))
    state = state if kind == "lstm" else state[0]
    cell = CELLS[kind](h)
    carry = jax.tree.map(lambda a: jnp.asarray(a, F32), state)
    new_carry, y = jax.jit(cell.apply)(to_params(kind, tw), carry, jnp.asarray(x, F32))
    ref_carry, ref_y = np_step(kind, tw, x, state)
    close(y, ref_y)
    close(new_carry, ref_carry)


@pytest.mark.parametrize("kind", ["rnn", "lstm", "gru"])
def test_cell_init_shapes_and_defaults(kind, key):
    cell = CELLS[kind](4)
    params, state = cell.init(key, S(2, 3))
    g = GATES[kind]
    assert state == ()
    assert params["wi"].shape == (3, g * 4) and params["wh"].shape == (4, g * 4)
    for gate in range(g):  # each gate's recurrent block is orthogonal
        block = np.asarray(params["wh"][:, gate * 4 : (gate + 1) * 4])
        np.testing.assert_allclose(block.T @ block, np.eye(4), atol=1e-5)
    assert jax.eval_shape(cell.init, key, S(2, 3)) == spec_of((params, state))
    assert cell.features == 4 and repr(cell) == cell.name
    carry = cell.initial_carry((5, 2), jnp.bfloat16)
    assert all(a.shape == (5, 2, 4) and a.dtype == jnp.bfloat16 for a in jax.tree.leaves(carry))


def test_lstm_forget_bias(key):
    b = LSTMCell(3).init(key, S(1, 2))[0]["b"]
    np.testing.assert_array_equal(b, [0, 0, 0, 1, 1, 1, 0, 0, 0, 0, 0, 0])
    b = LSTMCell(3, forget_bias=0.0).init(key, S(1, 2))[0]["b"]
    np.testing.assert_array_equal(b, np.zeros(12))
    b = LSTMCell(3, forget_bias=2.0, b_init="ones").init(key, S(1, 2))[0]["b"]
    np.testing.assert_array_equal(b[3:6], [3, 3, 3])


def test_cell_in_a_hand_written_scan_equals_rnn(key):
    cell = GRUCell(4)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 6, 3)), F32)
    params, _ = cell.init(key, x[:, 0])
    step = lambda c, x_t: cell.apply(params, c, x_t)
    carry, ys = jax.lax.scan(step, cell.initial_carry(2), jnp.swapaxes(x, 0, 1))
    (out, final), _ = RNN(cell, return_state=True).apply(params, (), x)
    close(out, jnp.swapaxes(ys, 0, 1))
    close(final, carry)


def cumsum_cell(features):
    """A user-written cell whose output differs from its carry: ``h' = h + x @ w``, ``y = -h'``."""

    def init(key, x_t):
        return {"w": jax.random.normal(key, (x_t.shape[-1], features))}, ()

    def apply(params, carry, x_t):
        if x_t.shape[-1] != params["w"].shape[0]:
            raise LayerError(f"wrong features {x_t.shape[-1]}")
        h = carry + x_t @ params["w"]
        return h, -h

    def initial_carry(batch_size, dtype=jnp.float32):
        return jnp.zeros((batch_size, features), dtype)

    return RecurrentCell(init, apply, initial_carry, features, "CumSum")


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
def test_user_written_cell(reverse, key):
    x = np.random.default_rng(0).normal(size=(3, 5, 2))
    lengths = np.array([5, 2, 0])
    inputs = {"x": jnp.asarray(x, F32), "lengths": jnp.asarray(lengths)}
    layer = RNN(cumsum_cell(4), reverse=reverse, return_state=True)
    params, _ = layer.init(key, inputs)
    (out, final), _ = layer.apply(params, (), inputs)
    w = np.asarray(params["w"], np.float64)
    proj = np.where(valid_from_lengths(lengths, 5)[..., None], x @ w, 0.0)
    sums = np.cumsum(proj[:, ::-1], 1)[:, ::-1] if reverse else np.cumsum(proj, 1)
    ref = np.where(valid_from_lengths(lengths, 5)[..., None], -sums, 0.0)
    close(out["x"], ref)
    close(final, proj.sum(1))
    (last, _), _ = RNN(
        cumsum_cell(4), reverse=reverse, return_sequences=False, return_state=True
    ).apply(params, (), inputs)
    close(last, -proj.sum(1))
    assert repr(RNN(cumsum_cell(4), reverse=True)) == "RNN(CumSum, reverse=True)"
    with pytest.raises(LayerError, match=r"^RNN\(CumSum\) CumSum: wrong features 3"):
        RNN(cumsum_cell(4)).apply(params, (), jnp.zeros((3, 5, 3)))


# ---------------------------------------------------------------------------------------------
# RNN over sequences
# ---------------------------------------------------------------------------------------------


def sequence_case(kind, n=4, t=5, f=3, h=4, seed=0):
    tw = torch_weights(kind, f, h, seed)
    x = np.random.default_rng(seed + 1).normal(size=(n, t, f))
    return tw, x, to_params(kind, tw)


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("kind", ["rnn", "lstm", "gru"])
def test_variable_length_sequence_matches_numpy_loop(kind, reverse):
    tw, x, params = sequence_case(kind)
    lengths = np.array([5, 3, 0, 7])  # 7 > T: clipped to T
    valid = valid_from_lengths(lengths, x.shape[1])
    inputs = {"x": jnp.asarray(x, F32), "lengths": jnp.asarray(lengths, I32)}
    ref_ys, ref_last, ref_final = np_run(kind, tw, x, valid, reverse)

    layer = rnn(kind, reverse=reverse, return_state=True)
    (out, final), state = layer.apply(params, (), inputs)
    assert state == ()
    assert set(out) == {"x", "lengths"} and out["lengths"] is not None
    close(out["x"], ref_ys)
    close(final, ref_final)
    assert not np.asarray(out["x"])[~valid].any()  # padded steps are exactly zero

    last, _ = rnn(kind, reverse=reverse, return_sequences=False).apply(params, (), inputs)
    close(last, ref_last)
    # The last output of the forward direction is the output at the last valid step.
    step = 0 if reverse else np.maximum(np.minimum(lengths, 5) - 1, 0)
    expected = np.asarray(out["x"])[np.arange(4), step] * (lengths > 0)[:, None]
    close(last, expected)


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
def test_mask_with_holes_matches_numpy_loop(reverse):
    tw, x, params = sequence_case("lstm")
    mask = np.random.default_rng(3).random(x.shape[:2]) > 0.4
    lengths = np.array([4, 5, 2, 5])
    valid = mask & valid_from_lengths(lengths, x.shape[1])
    ref_ys, ref_last, ref_final = np_run("lstm", tw, x, valid, reverse)
    inputs = {"x": jnp.asarray(x, F32), "mask": jnp.asarray(mask), "lengths": jnp.asarray(lengths)}
    (out, final), _ = rnn("lstm", reverse=reverse, return_state=True).apply(params, (), inputs)
    close(out["x"], ref_ys)
    close(final, ref_final)
    assert sorted(out) == ["lengths", "mask", "x"]
    last, _ = rnn("lstm", reverse=reverse, return_sequences=False).apply(params, (), inputs)
    close(last, ref_last)


def test_prefix_mask_equals_lengths():
    _, x, params = sequence_case("gru")
    lengths = np.array([5, 1, 3, 0])
    by_lengths = {"x": jnp.asarray(x, F32), "lengths": jnp.asarray(lengths, I32)}
    by_mask = {"x": jnp.asarray(x, F32), "mask": jnp.asarray(valid_from_lengths(lengths, 5))}
    for reverse in (False, True):
        layer = rnn("gru", reverse=reverse)
        close(layer.apply(params, (), by_lengths)[0]["x"], layer.apply(params, (), by_mask)[0]["x"])


def test_padded_steps_do_not_leak():
    _, x, params = sequence_case("lstm")
    lengths = jnp.array([2, 5, 3, 1])
    noisy = np.where(valid_from_lengths(lengths, 5)[..., None], x, 1e3)
    for reverse in (False, True):
        layer = rnn("lstm", reverse=reverse, return_state=True)
        a = layer.apply(params, (), {"x": jnp.asarray(x, F32), "lengths": lengths})[0]
        b = layer.apply(params, (), {"x": jnp.asarray(noisy, F32), "lengths": lengths})[0]
        close(a, b, tol=0)


def test_no_lengths_matches_numpy_and_returns_arrays():
    tw, x, params = sequence_case("lstm")
    ref_ys, ref_last, ref_final = np_run("lstm", tw, x)
    ys, _ = rnn("lstm").apply(params, (), jnp.asarray(x, F32))
    assert isinstance(ys, jax.Array)
    close(ys, ref_ys)
    (last, final), _ = rnn("lstm", return_sequences=False, return_state=True).apply(
        params, (), jnp.asarray(x, F32)
    )
    close(last, ref_last)
    close(final, ref_final)
    # A dict without optional keys gives a dict back.
    out, _ = rnn("lstm").apply(params, (), {"x": jnp.asarray(x, F32)})
    assert list(out) == ["x"]


def test_empty_time_axis(key):
    x = jnp.zeros((2, 0, 3))
    params, _ = rnn("lstm").init(key, x)
    ys, _ = rnn("lstm").apply(params, (), x)
    assert ys.shape == (2, 0, 4)
    (last, (h, c)), _ = rnn("lstm", return_sequences=False, return_state=True).apply(params, (), x)
    assert last.shape == h.shape == c.shape == (2, 4) and not np.asarray(last).any()


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_initial_carry(kind):
    tw, x, params = sequence_case(kind)
    rng = np.random.default_rng(5)
    carry = (
        tuple(rng.normal(size=(4, 4)) for _ in range(2))
        if kind == "lstm"
        else rng.normal(size=(4, 4))
    )
    lengths = np.array([5, 3, 0, 4])
    for reverse in (False, True):
        ref_ys, _, ref_final = np_run(
            kind, tw, x, valid_from_lengths(lengths, 5), reverse, carry=carry
        )
        inputs = {
            "x": jnp.asarray(x, F32),
            "lengths": jnp.asarray(lengths),
            "carry": jax.tree.map(lambda a: jnp.asarray(a, F32), carry),
        }
        (out, final), _ = rnn(kind, reverse=reverse, return_state=True).apply(params, (), inputs)
        assert "carry" not in out  # the initial carry is not handed on
        close(out["x"], ref_ys)
        close(final, ref_final)
    # An LSTM carry given as a list works too; a zero-length sequence keeps its initial carry.
    if kind == "lstm":
        inputs["carry"] = list(inputs["carry"])
        (_, final), _ = rnn("lstm", return_state=True).apply(params, (), inputs)
        close(final[0][2], carry[0][2])


def test_unroll_and_jit_match_eager():
    _, x, params = sequence_case("lstm", t=7)
    inputs = {"x": jnp.asarray(x, F32), "lengths": jnp.array([7, 2, 4, 0])}
    base = rnn("lstm").apply(params, (), inputs)[0]
    for unroll in (2, 3, True):
        close(rnn("lstm", unroll=unroll).apply(params, (), inputs)[0], base)
    close(jax.jit(rnn("lstm").apply)(params, (), inputs)[0], base)


def test_gradients_are_finite_and_zero_at_padded_steps(key):
    layer = rnn("gru", return_sequences=False)
    _, x, params = sequence_case("gru")
    lengths = jnp.array([5, 2, 0, 3])

    def loss(p, x):
        return jnp.sum(jnp.sin(layer.apply(p, (), {"x": x, "lengths": lengths})[0]))

    g_params, g_x = jax.grad(loss, argnums=(0, 1))(params, jnp.asarray(x, F32))
    for g in jax.tree.leaves(g_params):
        assert np.isfinite(np.asarray(g)).all() and np.abs(np.asarray(g)).sum() > 0
    valid = valid_from_lengths(lengths, 5)
    assert not np.asarray(g_x)[~valid].any()
    assert np.abs(np.asarray(g_x)[valid]).sum() > 0


def test_dtypes(key):
    layer = rnn("lstm")
    x = jnp.ones((2, 3, 2), jnp.bfloat16)
    params, _ = layer.init(key, x)
    assert params["wi"].dtype == F32
    assert layer.apply(params, (), x)[0].dtype == F32  # promoted with the float32 params
    half = RNN(LSTMCell(4, dtype=jnp.bfloat16), return_state=True)
    (y, (h, c)), _ = half.apply(params, (), x)
    assert y.dtype == h.dtype == c.dtype == jnp.bfloat16
    params16, _ = RNN(GRUCell(4, param_dtype=jnp.bfloat16)).init(key, x)
    assert params16["wh"].dtype == jnp.bfloat16


def test_names():
    assert repr(RNN(LSTMCell(8))) == "RNN(LSTMCell(8))"
    assert repr(RNN(GRUCell(2), return_sequences=False, unroll=4)) == (
        "RNN(GRUCell(2), return_sequences=False, unroll=4)"
    )
    assert repr(SimpleRNNCell(3, activation=jax.nn.relu)) == "SimpleRNNCell(3, relu)"
    bi = Bidirectional(RNN(LSTMCell(2)))
    assert repr(bi) == (
        "Bidirectional(forward=RNN(LSTMCell(2)), backward=RNN(LSTMCell(2), reverse=True))"
    )


# ---------------------------------------------------------------------------------------------
# Stacks and Bidirectional
# ---------------------------------------------------------------------------------------------


def test_stack_with_lengths_equals_manual_composition(key):
    _, x, _ = sequence_case("lstm")
    inputs = {"x": jnp.asarray(x, F32), "lengths": jnp.array([5, 2, 3, 1])}
    first, second = rnn("lstm"), rnn("lstm", return_sequences=False)
    model = serial(first, second)
    params, state = model.init(key, inputs)
    y, _ = model.apply(params, state, inputs)
    hidden, _ = first.apply(params[0], (), inputs)
    assert sorted(hidden) == ["lengths", "x"]
    close(y, second.apply(params[1], (), hidden)[0])
    assert y.shape == (4, 4)
    # Without lengths the array flows through as an array.
    y, _ = model.apply(params, state, inputs["x"])
    assert y.shape == (4, 4)
    # The last output of each sequence is at its own last valid step: padding can't change it.
    noisy = inputs | {"x": inputs["x"].at[1, 2:].set(100.0)}
    close(model.apply(params, state, noisy)[0], model.apply(params, state, inputs)[0], tol=0)


MERGES = {
    "concat": lambda a, b: np.concatenate([a, b], -1),
    "sum": lambda a, b: a + b,
    "mul": lambda a, b: a * b,
    "ave": lambda a, b: (a + b) / 2,
}


@pytest.mark.parametrize("merge", [*MERGES, None])
def test_bidirectional_merge_matches_numpy(merge, key):
    tw_f, x, _ = sequence_case("lstm", seed=0)
    tw_b = torch_weights("lstm", 3, 4, seed=7)
    lengths = np.array([5, 3, 0, 1])
    valid = valid_from_lengths(lengths, 5)
    ys_f, last_f, _ = np_run("lstm", tw_f, x, valid)
    ys_b, last_b, _ = np_run("lstm", tw_b, x, valid, reverse=True)
    params = {"forward": to_params("lstm", tw_f), "backward": to_params("lstm", tw_b)}
    inputs = {"x": jnp.asarray(x, F32), "lengths": jnp.asarray(lengths)}

    bi = Bidirectional(rnn("lstm"), rnn("lstm", reverse=True), merge=merge)
    assert jax.tree.map(jnp.shape, bi.init(key, inputs)[0]) == jax.tree.map(jnp.shape, params)
    out, state = bi.apply(params, (), inputs)
    assert state == ()
    last = Bidirectional(
        rnn("lstm", return_sequences=False),
        rnn("lstm", return_sequences=False, reverse=True),
        merge=merge,
    )
    out_last, _ = last.apply(params, (), inputs)
    if merge is None:
        close(out[0]["x"], ys_f)
        close(out[1]["x"], ys_b)
        close(out_last, (last_f, last_b))
    else:
        assert sorted(out) == ["lengths", "x"]
        close(out["x"], MERGES[merge](ys_f, ys_b))
        close(out_last, MERGES[merge](last_f, last_b))


def test_bidirectional_return_state_and_carry(key):
    tw_f, x, _ = sequence_case("gru", seed=0)
    tw_b = torch_weights("gru", 3, 4, seed=7)
    rng = np.random.default_rng(2)
    c_f, c_b = rng.normal(size=(4, 4)), rng.normal(size=(4, 4))
    lengths = np.array([5, 3, 2, 4])
    valid = valid_from_lengths(lengths, 5)
    ys_f, _, fin_f = np_run("gru", tw_f, x, valid, carry=c_f)
    ys_b, _, fin_b = np_run("gru", tw_b, x, valid, reverse=True, carry=c_b)
    params = {"forward": to_params("gru", tw_f), "backward": to_params("gru", tw_b)}
    inputs = {
        "x": jnp.asarray(x, F32),
        "lengths": jnp.asarray(lengths),
        "carry": {"forward": jnp.asarray(c_f, F32), "backward": jnp.asarray(c_b, F32)},
    }
    bi = Bidirectional(RNN(GRUCell(4), return_state=True))
    bi.init(key, inputs)
    (out, carry), _ = bi.apply(params, (), inputs)
    close(out["x"], np.concatenate([ys_f, ys_b], -1))
    close(carry, {"forward": fin_f, "backward": fin_b})


# ---------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------


def test_constructor_errors():
    with pytest.raises(ValueError, match=r"LSTMCell: `features` must be an int >= 1, got 0"):
        LSTMCell(0)
    with pytest.raises(ValueError, match=r"GRUCell: `features` must be an int >= 1"):
        GRUCell(2.5)
    with pytest.raises(ValueError, match=r"`forget_bias` must be a number, got 'one'"):
        LSTMCell(4, forget_bias="one")
    with pytest.raises(ValueError, match=r"`dtype` must be a floating dtype or None, got int32"):
        SimpleRNNCell(4, dtype=jnp.int32)
    with pytest.raises(TypeError, match=r"`activation` must be a function"):
        SimpleRNNCell(4, activation="tanh")
    with pytest.raises(ValueError, match=r"unknown initializer 'orthogonl'"):
        LSTMCell(4, recurrent_init="orthogonl")
    with pytest.raises(ValueError, match=r"`batch_size` must be an int >= 0"):
        LSTMCell(4).initial_carry(-1)
    with pytest.raises(TypeError, match=r"got `LSTMCell` itself; call it"):
        RNN(LSTMCell)
    with pytest.raises(TypeError, match=r"`cell` must be a RecurrentCell"):
        RNN(Dense(3))
    with pytest.raises(TypeError, match=r"`return_sequences` must be True or False, got 'no'"):
        RNN(LSTMCell(4), return_sequences="no")
    with pytest.raises(TypeError, match=r"`reverse` must be True or False"):
        RNN(LSTMCell(4), reverse=None)
    with pytest.raises(ValueError, match=r"RNN: `unroll` must be an int >= 1, got 0"):
        RNN(LSTMCell(4), unroll=0)


def test_bidirectional_constructor_errors():
    with pytest.raises(ValueError, match=r"`merge` must be one of .*got 'max'"):
        Bidirectional(RNN(LSTMCell(4)), merge="max")
    with pytest.raises(TypeError, match=r"`forward` must be a layer made by `RNN"):
        Bidirectional(Dense(4))
    with pytest.raises(TypeError, match=r"`backward` must be a layer made by `RNN"):
        Bidirectional(RNN(LSTMCell(4)), LSTMCell(4))
    with pytest.raises(ValueError, match=r"the `backward` layer must run backwards"):
        Bidirectional(RNN(LSTMCell(4)), RNN(LSTMCell(4)))
    with pytest.raises(ValueError, match=r"the `forward` layer must run forwards"):
        Bidirectional(RNN(LSTMCell(4), reverse=True))
    with pytest.raises(ValueError, match=r"the same `return_sequences`, got True and False"):
        Bidirectional(RNN(LSTMCell(4)), RNN(LSTMCell(4), reverse=True, return_sequences=False))
    with pytest.raises(ValueError, match=r"`merge='sum'` needs both directions of the same size"):
        Bidirectional(RNN(LSTMCell(4)), RNN(LSTMCell(3), reverse=True), merge="sum")


@pytest.mark.parametrize(
    ("inputs", "match"),
    [
        (S(2, 5), r"^RNN\(LSTMCell\(4\)\): expected `x` of shape \(N, T, F\).*got shape \(2, 5\)"),
        (S(2, 5, 3, dtype=I32), r"expected floating-point `x`, got dtype int32"),
        ((S(2, 5, 3),), r"expected an array \(N, T, F\) or a dict"),
        ({"x": S(2, 5, 3), "length": S(2, dtype=I32)}, r"unknown input keys \['length'\]; the"),
        ({"lengths": S(2, dtype=I32)}, r"the input dict needs the keys \['x'\]"),
        ({"x": S(2, 5, 3), "lengths": S(3, dtype=I32)}, r"`lengths` as an integer array of sh"),
        ({"x": S(2, 5, 3), "lengths": S(2)}, r"got float32\[2\]"),
        ({"x": S(2, 5, 3), "mask": S(2, 5)}, r"`mask` as a bool array of shape \(2, 5\)"),
        ({"x": S(2, 5, 3), "mask": S(2, 4, dtype=jnp.bool_)}, r"got bool\[2, 4\]"),
        ({"x": S(2, 5, 3), "carry": S(2, 4)}, r"expected `carry` like `cell.initial_carry\(2\)`"),
        ({"x": S(2, 5, 3), "carry": (S(2, 4), S(3, 4))}, r"got \(.*float32\[3, 4\]"),
    ],
)
def test_input_errors_at_init_and_apply(inputs, match, key):
    layer = RNN(LSTMCell(4))
    with pytest.raises(LayerError, match=match):
        jax.eval_shape(layer.init, key, inputs)
    params, _ = layer.init(key, S(2, 5, 3))
    with pytest.raises(LayerError, match=match):
        output_spec(layer, inputs, params, ())


def test_feature_mismatch_names_the_path(key):
    model = serial(Dense(3), RNN(GRUCell(4)))
    params, state = model.init(key, jnp.zeros((2, 5, 2)))
    wrong = (params[0], RNN(GRUCell(4)).init(key, S(2, 5, 4))[0])
    with pytest.raises(
        LayerError,
        match=r"^serial\[1\] RNN\(GRUCell\(4\)\) GRUCell\(4\): expected `x_t` with last "
        r"dimension 4 \(the input size of the params\), got shape \(2, 3\)",
    ):
        model.apply(wrong, state, jnp.zeros((2, 5, 2)))
    with pytest.raises(LayerError, match=r"^serial\[1\] RNN\(GRUCell\(4\)\): expected `x` of "):
        model.apply(params, state, jnp.zeros((2, 2)))


def test_feature_mismatch_direct(key):
    params, _ = RNN(GRUCell(4)).init(key, S(2, 5, 3))
    with pytest.raises(
        LayerError, match=r"^RNN\(GRUCell\(4\)\) GRUCell\(4\): expected `x_t` with last dim"
    ):
        RNN(GRUCell(4)).apply(params, (), jnp.zeros((2, 5, 4)))


def test_cell_errors(key):
    cell = LSTMCell(4)
    params, _ = cell.init(key, S(2, 3))
    with pytest.raises(LayerError, match=r"^LSTMCell\(4\): expected `x_t` with last dimension 3"):
        cell.apply(params, cell.initial_carry(2), jnp.zeros((2, 5)))
    with pytest.raises(LayerError, match=r"^LSTMCell\(4\): expected the carry as a pair"):
        cell.apply(params, jnp.zeros((2, 4)), jnp.zeros((2, 3)))
    with pytest.raises(LayerError, match=r"expected a carry of \(h, c\) with shape \(2, 4\)"):
        cell.apply(params, cell.initial_carry(3), jnp.zeros((2, 3)))
    with pytest.raises(LayerError, match=r"^GRUCell\(4\): expected floating-point `x_t`"):
        GRUCell(4).init(key, S(2, 3, dtype=I32))
    with pytest.raises(LayerError, match=r"^SimpleRNNCell\(4\): expected one time step `x_t`"):
        SimpleRNNCell(4).init(key, [1.0, 2.0])


def test_bidirectional_errors(key):
    bi = Bidirectional(RNN(LSTMCell(4), return_state=True))
    x = S(2, 5, 3)
    with pytest.raises(LayerError, match=r"^Bidirectional: expected `carry` as a dict"):
        bi.init(key, {"x": x, "carry": (S(2, 4), S(2, 4))})
    params, _ = bi.init(key, x)
    with pytest.raises(LayerError, match=r"^Bidirectional: expected params as a dict with keys"):
        bi.apply((params["forward"], params["backward"]), (), jnp.zeros((2, 5, 3)))
    carry = {"forward": (S(2, 4), S(2, 4)), "backward": S(2, 4)}
    with pytest.raises(
        LayerError, match=r"^Bidirectional\[backward\] RNN\(LSTMCell\(4\), return_state=True, "
    ):
        output_spec(bi, {"x": x, "carry": carry}, params, ())
    with pytest.raises(LayerError, match=r"^Bidirectional\[forward\] RNN\(.*\): expected `x` of"):
        bi.apply(params, (), jnp.zeros((2, 3)))


# ---------------------------------------------------------------------------------------------
# PyTorch, when installed
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_matches_torch(kind):
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    n, t, f, h = 3, 6, 4, 5
    module = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[kind](
        f, h, batch_first=True, bidirectional=True
    )
    tw = {name: p.detach().numpy().astype(np.float64) for name, p in module.named_parameters()}

    def direction(suffix):
        return to_params(kind, {k: tw[f"{k}_l0{suffix}"] for k in torch_weights(kind, 1, 1)})

    params = {"forward": direction(""), "backward": direction("_reverse")}
    x = np.random.default_rng(0).normal(size=(n, t, f)).astype(np.float32)
    lengths = np.array([6, 2, 4])
    packed = torch.nn.utils.rnn.pack_padded_sequence(
        torch.from_numpy(x), torch.from_numpy(lengths), batch_first=True, enforce_sorted=False
    )
    with torch.no_grad():
        out_packed, h_n = module(packed)
    out, _ = torch.nn.utils.rnn.pad_packed_sequence(out_packed, batch_first=True, total_length=t)
    h_n = h_n[0] if kind == "lstm" else h_n  # (2, N, H): forward, backward

    cell = CELLS[kind]
    bi = Bidirectional(RNN(cell(h), return_state=True))
    (ys, carry), _ = bi.apply(params, (), {"x": jnp.asarray(x), "lengths": jnp.asarray(lengths)})
    close(ys["x"], out.numpy(), tol=1e-5)
    final_h = {k: (c[0] if kind == "lstm" else c) for k, c in carry.items()}
    close(final_h["forward"], h_n[0].numpy(), tol=1e-5)
    close(final_h["backward"], h_n[1].numpy(), tol=1e-5)


# ---------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------


def test_lstm_classifier_trains():
    """Is the sum of a variable-length sequence positive? An LSTM learns it in 80 SGD steps."""
    rng = np.random.default_rng(0)
    n, t = 256, 12
    x = rng.normal(size=(n, t, 1)).astype(np.float32)
    lengths = rng.integers(3, t + 1, n).astype(np.int32)
    y = ((x[..., 0] * valid_from_lengths(lengths, t)).sum(1) > 0).astype(np.int32)
    inputs = {"x": jnp.asarray(x), "lengths": jnp.asarray(lengths)}
    model = serial(RNN(LSTMCell(16), return_sequences=False), Dense(2))
    optimizer = train.compose_optimizer(optax.sgd(0.2, momentum=0.9), clip_norm=1.0)
    ts = train.TrainState.create(model, optimizer, jax.random.key(0), inputs)
    step = jax.jit(train.train_step(model, "sparse_categorical_cross_entropy", optimizer))
    losses = []
    for _ in range(80):
        ts, logs = step(ts, (inputs, jnp.asarray(y)))
        losses.append(float(logs["loss"]))
    assert np.isfinite(losses).all()
    assert losses[0] > 0.5 and np.mean(losses[-10:]) < 0.2, losses[::10]
    logits, _ = model.apply(ts.params, ts.state, inputs)
    assert (np.asarray(logits).argmax(-1) == y).mean() > 0.9
