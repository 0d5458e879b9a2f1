"""``gru``: GRU(128) over length-64 sequences of 32 features -> Dense 10 on the last state.

Batch 64, cross-entropy: the ``lstm`` workload with ``fn.RNN(fn.GRUCell)``.
The pure-JAX reference writes PyTorch's GRU equations (gate order ``r, z, n``,
the reset gate applied to ``h @ wh + bh``), projecting each step's input
inside the ``lax.scan`` as funcnet does. Flax's and PyTorch's GRUs compute the
same function (their own layouts and loops).
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
        "wi": glorot(k1, (FEATURES, 3 * HIDDEN), FEATURES, HIDDEN),
        "wh": glorot(k2, (HIDDEN, 3 * HIDDEN), HIDDEN, HIDDEN),
        "bi": jnp.zeros((3 * HIDDEN,)),
        "bh": jnp.zeros((3 * HIDDEN,)),
        "out": {"w": glorot(k3, (HIDDEN, 10)), "b": jnp.zeros((10,))},
    }


def jax_apply(params, x, unroll=1):
    def step(h, x_t):
        a_r, a_z, a_n = jnp.split(x_t @ params["wi"] + params["bi"], 3, axis=-1)
        u_r, u_z, u_n = jnp.split(h @ params["wh"] + params["bh"], 3, axis=-1)
        r = jax.nn.sigmoid(a_r + u_r)
        z = jax.nn.sigmoid(a_z + u_z)
        n = jnp.tanh(a_n + r * u_n)
        return (1 - z) * n + z * h, None

    h0 = jnp.zeros((x.shape[0], HIDDEN), x.dtype)
    h, _ = jax.lax.scan(step, h0, jnp.swapaxes(x, 0, 1), unroll=unroll)
    return h @ params["out"]["w"] + params["out"]["b"]


def funcnet_model():
    """As the README builds it: ``fn.RNN(fn.GRUCell(...), return_sequences=False)``."""
    import funcnet as fn

    return fn.serial(fn.RNN(fn.GRUCell(HIDDEN), return_sequences=False), fn.Dense(10))


def from_funcnet(params):
    """funcnet's ``(cell params, Dense params)`` -> the reference's dict (same arrays)."""
    cell, out = params
    return {k: cell[k] for k in ("wi", "wh", "bi", "bh")} | {"out": out}


def linen_model():
    from flax import linen as nn

    class GRU(nn.Module):
        @nn.compact
        def __call__(self, x):
            y = nn.RNN(nn.GRUCell(HIDDEN))(x)
            return nn.Dense(10)(y[:, -1])

    return GRU()


def nnx_model(rngs):
    from flax import nnx

    class GRU(nnx.Module):
        def __init__(self, rngs):
            self.rnn = nnx.RNN(nnx.GRUCell(FEATURES, HIDDEN, rngs=rngs))
            self.out = nnx.Linear(HIDDEN, 10, rngs=rngs)

        def __call__(self, x):
            return self.out(self.rnn(x)[:, -1])

    return GRU(rngs)


def equinox_model(key):
    import equinox as eqx

    class GRU(eqx.Module):
        cell: eqx.nn.GRUCell
        out: eqx.nn.Linear

        def __init__(self, key):
            k1, k2 = jax.random.split(key)
            self.cell = eqx.nn.GRUCell(FEATURES, HIDDEN, key=k1)
            self.out = eqx.nn.Linear(HIDDEN, 10, key=k2)

        def __call__(self, x):  # one sequence, (T, F)
            def step(h, x_t):
                return self.cell(x_t, h), None

            h, _ = jax.lax.scan(step, jnp.zeros((HIDDEN,), x.dtype), x)
            return self.out(h)

    return GRU(key)


def torch_model():
    import torch
    from torch import nn

    class GRU(nn.Module):
        def __init__(self):
            super().__init__()
            self.gru = nn.GRU(FEATURES, HIDDEN, batch_first=True)
            self.out = nn.Linear(HIDDEN, 10)

        def forward(self, x):
            y, _ = self.gru(x)
            return self.out(y[:, -1])

    return GRU().to(torch.float32)


WORKLOAD = Workload(
    name="gru",
    description="GRU hidden 128 over 64 steps of 32 features -> Dense 10, batch 64",
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
    equinox=equinox_model,
    torch=torch_model,
    flops_apply=partial(jax_apply, unroll=True),
    from_funcnet=from_funcnet,
)
