"""``cnn``: 28x28x1 -> Conv3x3(32)-ReLU-MaxPool2-Conv3x3(64)-ReLU-MaxPool2-Dense128-ReLU-Dense10.

Batch 128, SAME padding, channels last (NHWC) for the JAX implementations
(equinox is channels-first per example, PyTorch NCHW, as each is used).
The pure-JAX reference max-pools with a reshape + ``max`` (as funcnet's
``MaxPool`` does for non-overlapping windows); Flax and Haiku use their own
``max_pool`` (``lax.reduce_window``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from bench.workloads._base import Workload, classes, glorot, nonempty, normal

CHANNELS = (1, 32, 64)
HIDDEN = 128
FLAT = 7 * 7 * 64


def make_data(rng, n):
    return normal(rng, n, 28, 28, 1), classes(rng, n)


def jax_init(key):
    k1, k2, k3, k4 = jax.random.split(key, 4)
    return {
        "conv1": {"w": glorot(k1, (3, 3, 1, 32), 9, 9 * 32), "b": jnp.zeros((32,))},
        "conv2": {"w": glorot(k2, (3, 3, 32, 64), 9 * 32, 9 * 64), "b": jnp.zeros((64,))},
        "dense1": {"w": glorot(k3, (FLAT, HIDDEN)), "b": jnp.zeros((HIDDEN,))},
        "dense2": {"w": glorot(k4, (HIDDEN, 10)), "b": jnp.zeros((10,))},
    }


def from_funcnet(params):
    """funcnet's ``serial`` params -> the reference's dict (same arrays)."""
    return dict(zip(("conv1", "conv2", "dense1", "dense2"), nonempty(params), strict=True))


def conv(x, p):
    y = lax.conv_general_dilated(
        x, p["w"], (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
    return y + p["b"]


def max_pool2(x):
    n, h, w, c = x.shape
    return jnp.max(x.reshape(n, h // 2, 2, w // 2, 2, c), axis=(2, 4))


def jax_apply(params, x):
    x = max_pool2(jax.nn.relu(conv(x, params["conv1"])))
    x = max_pool2(jax.nn.relu(conv(x, params["conv2"])))
    x = x.reshape(x.shape[0], -1)
    x = jax.nn.relu(x @ params["dense1"]["w"] + params["dense1"]["b"])
    return x @ params["dense2"]["w"] + params["dense2"]["b"]


def funcnet_model():
    import funcnet as fn

    return fn.serial(
        fn.Conv(32, 3),
        jax.nn.relu,
        fn.MaxPool(2),
        fn.Conv(64, 3),
        jax.nn.relu,
        fn.MaxPool(2),
        fn.Flatten(),
        fn.Dense(HIDDEN),
        jax.nn.relu,
        fn.Dense(10),
    )


def linen_model():
    from flax import linen as nn

    class CNN(nn.Module):
        @nn.compact
        def __call__(self, x):
            for features in CHANNELS[1:]:
                x = nn.relu(nn.Conv(features, (3, 3), padding="SAME")(x))
                x = nn.max_pool(x, (2, 2), strides=(2, 2))
            x = x.reshape(x.shape[0], -1)
            x = nn.relu(nn.Dense(HIDDEN)(x))
            return nn.Dense(10)(x)

    return CNN()


def nnx_model(rngs):
    from flax import nnx

    class CNN(nnx.Module):
        def __init__(self, rngs):
            self.conv1 = nnx.Conv(1, 32, (3, 3), padding="SAME", rngs=rngs)
            self.conv2 = nnx.Conv(32, 64, (3, 3), padding="SAME", rngs=rngs)
            self.dense1 = nnx.Linear(FLAT, HIDDEN, rngs=rngs)
            self.dense2 = nnx.Linear(HIDDEN, 10, rngs=rngs)

        def __call__(self, x):
            x = nnx.max_pool(nnx.relu(self.conv1(x)), (2, 2), strides=(2, 2))
            x = nnx.max_pool(nnx.relu(self.conv2(x)), (2, 2), strides=(2, 2))
            x = x.reshape(x.shape[0], -1)
            return self.dense2(nnx.relu(self.dense1(x)))

    return CNN(rngs)


def haiku_forward(x):
    import haiku as hk

    for features in CHANNELS[1:]:
        x = jax.nn.relu(hk.Conv2D(features, 3, padding="SAME")(x))
        x = hk.max_pool(x, window_shape=(1, 2, 2, 1), strides=(1, 2, 2, 1), padding="VALID")
    x = hk.Flatten()(x)
    x = jax.nn.relu(hk.Linear(HIDDEN)(x))
    return hk.Linear(10)(x)


def equinox_model(key):
    import equinox as eqx

    class CNN(eqx.Module):
        conv1: eqx.nn.Conv2d
        conv2: eqx.nn.Conv2d
        dense1: eqx.nn.Linear
        dense2: eqx.nn.Linear
        pool: eqx.nn.MaxPool2d

        def __init__(self, key):
            k1, k2, k3, k4 = jax.random.split(key, 4)
            self.conv1 = eqx.nn.Conv2d(1, 32, 3, padding=1, key=k1)
            self.conv2 = eqx.nn.Conv2d(32, 64, 3, padding=1, key=k2)
            self.dense1 = eqx.nn.Linear(FLAT, HIDDEN, key=k3)
            self.dense2 = eqx.nn.Linear(HIDDEN, 10, key=k4)
            self.pool = eqx.nn.MaxPool2d(2, 2)

        def __call__(self, x):  # one example, (28, 28, 1)
            x = jnp.transpose(x, (2, 0, 1))
            x = self.pool(jax.nn.relu(self.conv1(x)))
            x = self.pool(jax.nn.relu(self.conv2(x)))
            x = jax.nn.relu(self.dense1(x.reshape(-1)))
            return self.dense2(x)

    return CNN(key)


def torch_model():
    import torch
    from torch import nn

    return nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(FLAT, HIDDEN),
        nn.ReLU(),
        nn.Linear(HIDDEN, 10),
    ).to(torch.float32)


WORKLOAD = Workload(
    name="cnn",
    description="28x28x1 Conv3x3(32)-ReLU-MaxPool2-Conv3x3(64)-ReLU-MaxPool2-Dense128-Dense10, "
    "batch 128",
    batch=128,
    loss="xent",
    fused_steps=10,
    has_conv=True,
    make_data=make_data,
    funcnet=funcnet_model,
    jax_init=jax_init,
    jax_apply=jax_apply,
    linen=linen_model,
    nnx=nnx_model,
    haiku=haiku_forward,
    equinox=equinox_model,
    torch=torch_model,
    torch_layout=lambda x: np.ascontiguousarray(np.transpose(x, (0, 3, 1, 2))),
    from_funcnet=from_funcnet,
)
