"""``tiny_mlp``: 32-64-64-1 ReLU, batch 32, mean squared error: the per-step overhead."""

from __future__ import annotations

from bench.workloads._base import Workload, nonempty, normal
from bench.workloads.mlp import (
    equinox_mlp,
    funcnet_mlp,
    haiku_mlp,
    linen_mlp,
    mlp_apply,
    mlp_init,
    nnx_mlp,
    torch_mlp,
)

SIZES = (32, 64, 64, 1)


def make_data(rng, n):
    return normal(rng, n, SIZES[0]), normal(rng, n, 1)


WORKLOAD = Workload(
    name="tiny_mlp",
    description="32-64-64-1 ReLU MLP, batch 32, MSE (per-step overhead)",
    batch=32,
    loss="mse",
    fused_steps=100,
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
