"""``lstm``: LSTM(128) over length-64 sequences of 32 features -> Dense 10 on the last state.

Batch 64, cross-entropy. The pure-JAX reference projects each step's input
inside the ``lax.scan`` body (as funcnet and Haiku do): hoisting it out as one
big matmul before the scan measured ~2x slower on XLA:CPU. Each library
otherwise runs its own LSTM.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp

from bench.workloads._base import Workload, classes, glorot, normal

FEATURES, HIDDEN, LENGTH = 32, 128, 64


def make_data(rng, n):
    return normal(rng, n, LENGTH, FEATURES), classes(rng, n)


def jax_init(key):
    k1, k2, k3 = jax.random.split(key, 3)
    return {
        "wi": glorot(k1, (FEATURES, 4 * HIDDEN), FEATURES, HIDDEN),
        "wh": glorot(k2, (HIDDEN, 4 * HIDDEN), HIDDEN, HIDDEN),
        "b": jnp.zeros((4 * HIDDEN,)),
        "out": {"w": glorot(k3, (HIDDEN, 10)), "b": jnp.zeros((10,))},
    }


def jax_apply(params, x, unroll=1):
    def step(carry, x_t):
        h, c = carry
        z = x_t @ params["wi"] + params["b"] + h @ params["wh"]
        i, f, g, o = jnp.split(z, 4, axis=-1)
        c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
        h = jax.nn.sigmoid(o) * jnp.tanh(c)
        return (h, c), None

    zeros = jnp.zeros((x.shape[0], HIDDEN), x.dtype)
    (h, _), _ = jax.lax.scan(step, (zeros, zeros), jnp.swapaxes(x, 0, 1), unroll=unroll)
    return h @ params["out"]["w"] + params["out"]["b"]


def funcnet_model():
    """As the README builds it: ``fn.RNN(fn.LSTMCell(...), return_sequences=False)``."""
    import funcnet as fn

    return fn.serial(fn.RNN(fn.LSTMCell(HIDDEN), return_sequences=False), fn.Dense(10))


def from_funcnet(params):
    """funcnet's ``(cell params, Dense params)`` -> the reference's dict (same arrays)."""
    cell, out = params
    return {"wi": cell["wi"], "wh": cell["wh"], "b": cell["b"], "out": out}


def linen_model():
    from flax import linen as nn

    class LSTM(nn.Module):
        @nn.compact
        def __call__(self, x):
            y = nn.RNN(nn.OptimizedLSTMCell(HIDDEN))(x)
            return nn.Dense(10)(y[:, -1])

    return LSTM()


def nnx_model(rngs):
    from flax import nnx

    class LSTM(nnx.Module):
        def __init__(self, rngs):
            self.rnn = nnx.RNN(nnx.OptimizedLSTMCell(FEATURES, HIDDEN, rngs=rngs))
            self.out = nnx.Linear(HIDDEN, 10, rngs=rngs)

        def __call__(self, x):
            return self.out(self.rnn(x)[:, -1])

    return LSTM(rngs)


def haiku_forward(x):
    import haiku as hk

    core = hk.LSTM(HIDDEN)
    y, _ = hk.dynamic_unroll(core, jnp.swapaxes(x, 0, 1), core.initial_state(x.shape[0]))
    return hk.Linear(10)(y[-1])


def equinox_model(key):
    import equinox as eqx

    class LSTM(eqx.Module):
        cell: eqx.nn.LSTMCell
        out: eqx.nn.Linear

        def __init__(self, key):
            k1, k2 = jax.random.split(key)
            self.cell = eqx.nn.LSTMCell(FEATURES, HIDDEN, key=k1)
            self.out = eqx.nn.Linear(HIDDEN, 10, key=k2)

        def __call__(self, x):  # one sequence, (T, F)
            def step(carry, x_t):
                return self.cell(x_t, carry), None

            zeros = jnp.zeros((HIDDEN,), x.dtype)
            (h, _), _ = jax.lax.scan(step, (zeros, zeros), x)
            return self.out(h)

    return LSTM(key)


def torch_model():
    import torch
    from torch import nn

    class LSTM(nn.Module):
        def __init__(self):
            super().__init__()
            self.lstm = nn.LSTM(FEATURES, HIDDEN, batch_first=True)
            self.out = nn.Linear(HIDDEN, 10)

        def forward(self, x):
            y, _ = self.lstm(x)
            return self.out(y[:, -1])

    return LSTM().to(torch.float32)


WORKLOAD = Workload(
    name="lstm",
    description="LSTM hidden 128 over 64 steps of 32 features -> Dense 10, batch 64",
    batch=64,
    loss="xent",
    fused_steps=10,
    has_conv=False,
    make_data=make_data,
    funcnet=funcnet_model,
    jax_init=jax_init,
    jax_apply=jax_apply,
    linen=linen_model,
    nnx=nnx_model,
    haiku=haiku_forward,
    equinox=equinox_model,
    torch=torch_model,
    flops_apply=partial(jax_apply, unroll=True),
    from_funcnet=from_funcnet,
)
