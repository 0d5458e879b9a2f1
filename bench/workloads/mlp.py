"""``mlp``: 784-128-128-10 ReLU, batch 128, softmax cross-entropy."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp

from bench.workloads._base import Workload, classes, glorot, nonempty, normal

SIZES = (784, 128, 128, 10)


def make_data(rng, n):
    return normal(rng, n, SIZES[0]), classes(rng, n)


def mlp_init(key, sizes):
    keys = jax.random.split(key, len(sizes) - 1)
    return [
        {"w": glorot(k, (a, b)), "b": jnp.zeros((b,), jnp.float32)}
        for k, a, b in zip(keys, sizes[:-1], sizes[1:])
    ]


def mlp_apply(params, x):
    for i, layer in enumerate(params):
        x = x @ layer["w"] + layer["b"]
        if i < len(params) - 1:
            x = jax.nn.relu(x)
    return x


def funcnet_mlp(sizes):
    import funcnet as fn

    layers = []
    for i, width in enumerate(sizes[1:]):
        layers.append(fn.Dense(width))
        if i < len(sizes) - 2:
            layers.append(jax.nn.relu)
    return fn.serial(*layers)


def linen_mlp(sizes):
    from flax import linen as nn

    class MLP(nn.Module):
        @nn.compact
        def __call__(self, x):
            for i, width in enumerate(sizes[1:]):
                x = nn.Dense(width)(x)
                if i < len(sizes) - 2:
                    x = nn.relu(x)
            return x

    return MLP()


def nnx_mlp(sizes, rngs):
    from flax import nnx

    class MLP(nnx.Module):
        def __init__(self, rngs):
            self.layers = nnx.List(
                [nnx.Linear(a, b, rngs=rngs) for a, b in itertools.pairwise(sizes)]
            )

        def __call__(self, x):
            for i, layer in enumerate(self.layers):
                x = layer(x)
                if i < len(self.layers) - 1:
                    x = nnx.relu(x)
            return x

    return MLP(rngs)


def haiku_mlp(sizes, x):
    import haiku as hk

    return hk.nets.MLP(list(sizes[1:]), activation=jax.nn.relu)(x)


def equinox_mlp(sizes, key):
    import equinox as eqx

    return eqx.nn.MLP(sizes[0], sizes[-1], sizes[1], len(sizes) - 2, jax.nn.relu, key=key)


def torch_mlp(sizes):
    import torch

    layers = []
    for i, (a, b) in enumerate(itertools.pairwise(sizes)):
        layers.append(torch.nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(torch.nn.ReLU())
    return torch.nn.Sequential(*layers)


WORKLOAD = Workload(
    name="mlp",
    description="784-128-128-10 ReLU MLP, batch 128, cross-entropy",
    batch=128,
    loss="xent",
    fused_steps=20,
    has_conv=False,
    make_data=make_data,
    funcnet=lambda: funcnet_mlp(SIZES),
    jax_init=lambda key: mlp_init(key, SIZES),
    jax_apply=mlp_apply,
    linen=lambda: linen_mlp(SIZES),
    nnx=lambda rngs: nnx_mlp(SIZES, rngs),
    haiku=lambda x: haiku_mlp(SIZES, x),
    equinox=lambda key: equinox_mlp(SIZES, key),
    torch=lambda: torch_mlp(SIZES),
    from_funcnet=nonempty,
)
