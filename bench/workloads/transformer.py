"""``transformer``: 2 pre-LN encoder blocks (width 128, 4 heads, MLP 512, exact GELU).

Inputs ``(16, 128, 128)`` float32 (batch 16, length 128, width 128), no mask,
no dropout; a final LayerNorm (what ``fn.transformer_encoder`` adds after
pre-LN blocks), mean over time -> Dense 10; cross-entropy. LayerNorm epsilon
1e-5 everywhere. funcnet's model is the README's:
``fn.transformer_encoder(2, num_heads=4)`` with its defaults (the blocks'
params stacked, their ``lax.scan`` unrolled at 2 blocks, see
``bench/unroll.py``); the reference is a Python loop over the blocks. The
pure-JAX reference attends with ``jax.nn.dot_product_attention`` (as
funcnet's ``MultiHeadAttention`` does); the peers with their own attention.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from bench.workloads._base import Workload, classes, glorot, normal

WIDTH, HEADS, MLP, LENGTH, BLOCKS = 128, 4, 512, 128, 2
HEAD = WIDTH // HEADS
EPS = 1e-5


def make_data(rng, n):
    return normal(rng, n, LENGTH, WIDTH), classes(rng, n)


def _ln():
    return {"scale": jnp.ones((WIDTH,)), "bias": jnp.zeros((WIDTH,))}


def jax_init(key):
    blocks = []
    for k in jax.random.split(key, BLOCKS):
        kq, kk, kv, ko, k1, k2 = jax.random.split(k, 6)

        def proj(k_):
            return {
                "w": glorot(k_, (WIDTH, HEADS, HEAD), WIDTH, WIDTH),
                "b": jnp.zeros((HEADS, HEAD)),
            }

        blocks.append(
            {
                "ln1": _ln(),
                "q": proj(kq),
                "k": proj(kk),
                "v": proj(kv),
                "o": {"w": glorot(ko, (HEADS, HEAD, WIDTH), WIDTH, WIDTH), "b": jnp.zeros(WIDTH)},
                "ln2": _ln(),
                "mlp1": {"w": glorot(k1, (WIDTH, MLP)), "b": jnp.zeros((MLP,))},
                "mlp2": {"w": glorot(k2, (MLP, WIDTH)), "b": jnp.zeros((WIDTH,))},
            }
        )
    head = {"w": glorot(jax.random.fold_in(key, 99), (WIDTH, 10)), "b": jnp.zeros((10,))}
    return {"blocks": blocks, "norm": _ln(), "head": head}


def layer_norm(x, p):
    mean = jnp.mean(x, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
    return (x - mean) * jax.lax.rsqrt(var + EPS) * p["scale"] + p["bias"]


def block_apply(p, x):
    h = layer_norm(x, p["ln1"])
    q, k, v = (jnp.einsum("ntd,dhk->nthk", h, p[n]["w"]) + p[n]["b"] for n in "qkv")
    o = jax.nn.dot_product_attention(q, k, v)
    x = x + jnp.einsum("nthk,hkd->ntd", o, p["o"]["w"]) + p["o"]["b"]
    h = layer_norm(x, p["ln2"])
    h = jax.nn.gelu(h @ p["mlp1"]["w"] + p["mlp1"]["b"], approximate=False)
    return x + h @ p["mlp2"]["w"] + p["mlp2"]["b"]


def jax_apply(params, x):
    for p in params["blocks"]:
        x = block_apply(p, x)
    x = jnp.mean(layer_norm(x, params["norm"]), axis=1)
    return x @ params["head"]["w"] + params["head"]["b"]


def funcnet_model():
    """As the README builds it: ``fn.transformer_encoder(2, num_heads=4)``, defaults
    (MLP ratio 4, exact GELU, epsilon 1e-5, final LayerNorm; 2 blocks: the scan unrolled)."""
    import funcnet as fn

    assert MLP == 4 * WIDTH and EPS == 1e-5  # transformer_encoder's defaults
    return fn.serial(
        fn.transformer_encoder(BLOCKS, num_heads=HEADS),
        fn.GlobalAvgPool(),
        fn.Dense(10),
    )


def from_funcnet(params):
    """funcnet's stacked block params -> the reference's per-block dicts (same arrays)."""
    (stacked, norm), _, head = params
    names = {"q": "query", "k": "key", "v": "value", "o": "out"}
    blocks = []
    for i in range(BLOCKS):
        p = jax.tree.map(lambda a, i=i: a[i], stacked)
        ln1, mha, _ = p["attention"]
        ln2, mlp1, _, mlp2, _ = p["mlp"]
        blocks.append(
            {k: mha[v] for k, v in names.items()}
            | {"ln1": ln1, "ln2": ln2, "mlp1": mlp1, "mlp2": mlp2}
        )
    return {"blocks": blocks, "norm": norm, "head": head}


def linen_model():
    from flax import linen as nn

    class Block(nn.Module):
        @nn.compact
        def __call__(self, x):
            h = nn.LayerNorm(epsilon=EPS)(x)
            x = x + nn.MultiHeadDotProductAttention(num_heads=HEADS)(h)
            h = nn.LayerNorm(epsilon=EPS)(x)
            h = nn.Dense(WIDTH)(nn.gelu(nn.Dense(MLP)(h), approximate=False))
            return x + h

    class Model(nn.Module):
        @nn.compact
        def __call__(self, x):
            for _ in range(BLOCKS):
                x = Block()(x)
            x = nn.LayerNorm(epsilon=EPS)(x)
            return nn.Dense(10)(jnp.mean(x, axis=1))

    return Model()


def nnx_model(rngs):
    from flax import nnx

    class Block(nnx.Module):
        def __init__(self, rngs):
            self.ln1 = nnx.LayerNorm(WIDTH, epsilon=EPS, rngs=rngs)
            self.attn = nnx.MultiHeadAttention(
                num_heads=HEADS, in_features=WIDTH, decode=False, rngs=rngs
            )
            self.ln2 = nnx.LayerNorm(WIDTH, epsilon=EPS, rngs=rngs)
            self.mlp1 = nnx.Linear(WIDTH, MLP, rngs=rngs)
            self.mlp2 = nnx.Linear(MLP, WIDTH, rngs=rngs)

        def __call__(self, x):
            x = x + self.attn(self.ln1(x))
            return x + self.mlp2(nnx.gelu(self.mlp1(self.ln2(x)), approximate=False))

    class Model(nnx.Module):
        def __init__(self, rngs):
            self.blocks = nnx.List([Block(rngs) for _ in range(BLOCKS)])
            self.norm = nnx.LayerNorm(WIDTH, epsilon=EPS, rngs=rngs)
            self.head = nnx.Linear(WIDTH, 10, rngs=rngs)

        def __call__(self, x):
            for block in self.blocks:
                x = block(x)
            return self.head(jnp.mean(self.norm(x), axis=1))

    return Model(rngs)


def haiku_forward(x):
    import haiku as hk

    for _ in range(BLOCKS):
        h = hk.LayerNorm(axis=-1, create_scale=True, create_offset=True, eps=EPS)(x)
        attn = hk.MultiHeadAttention(
            num_heads=HEADS, key_size=HEAD, w_init=hk.initializers.VarianceScaling(1.0)
        )
        x = x + attn(h, h, h)
        h = hk.LayerNorm(axis=-1, create_scale=True, create_offset=True, eps=EPS)(x)
        x = x + hk.Linear(WIDTH)(jax.nn.gelu(hk.Linear(MLP)(h), approximate=False))
    x = hk.LayerNorm(axis=-1, create_scale=True, create_offset=True, eps=EPS)(x)
    return hk.Linear(10)(jnp.mean(x, axis=1))


def equinox_model(key):
    import equinox as eqx

    class Block(eqx.Module):
        ln1: eqx.nn.LayerNorm
        attn: eqx.nn.MultiheadAttention
        ln2: eqx.nn.LayerNorm
        mlp1: eqx.nn.Linear
        mlp2: eqx.nn.Linear

        def __init__(self, key):
            k1, k2, k3 = jax.random.split(key, 3)
            self.ln1 = eqx.nn.LayerNorm(WIDTH, eps=EPS)
            self.attn = eqx.nn.MultiheadAttention(
                HEADS,
                WIDTH,
                use_query_bias=True,
                use_key_bias=True,
                use_value_bias=True,
                use_output_bias=True,
                key=k1,
            )
            self.ln2 = eqx.nn.LayerNorm(WIDTH, eps=EPS)
            self.mlp1 = eqx.nn.Linear(WIDTH, MLP, key=k2)
            self.mlp2 = eqx.nn.Linear(MLP, WIDTH, key=k3)

        def __call__(self, x):  # one sequence, (T, D)
            h = jax.vmap(self.ln1)(x)
            x = x + self.attn(h, h, h)
            h = jax.vmap(self.ln2)(x)
            h = jax.vmap(self.mlp1)(h)
            return x + jax.vmap(self.mlp2)(jax.nn.gelu(h, approximate=False))

    class Model(eqx.Module):
        blocks: list
        norm: eqx.nn.LayerNorm
        head: eqx.nn.Linear

        def __init__(self, key):
            keys = jax.random.split(key, BLOCKS + 1)
            self.blocks = [Block(k) for k in keys[:-1]]
            self.norm = eqx.nn.LayerNorm(WIDTH, eps=EPS)
            self.head = eqx.nn.Linear(WIDTH, 10, key=keys[-1])

        def __call__(self, x):
            for block in self.blocks:
                x = block(x)
            return self.head(jnp.mean(jax.vmap(self.norm)(x), axis=0))

    return Model(key)


def torch_model():
    import torch
    from torch import nn

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            layer = nn.TransformerEncoderLayer(
                WIDTH,
                HEADS,
                MLP,
                dropout=0.0,
                activation="gelu",
                layer_norm_eps=EPS,
                batch_first=True,
                norm_first=True,
            )
            self.encoder = nn.TransformerEncoder(
                layer, BLOCKS, norm=nn.LayerNorm(WIDTH, eps=EPS), enable_nested_tensor=False
            )
            self.head = nn.Linear(WIDTH, 10)

        def forward(self, x):
            return self.head(self.encoder(x).mean(dim=1))

    return Model().to(torch.float32)


WORKLOAD = Workload(
    name="transformer",
    description="2 pre-LN encoder blocks (width 128, 4 heads, MLP 512), length 128, batch 16, "
    "mean-pool -> Dense 10",
    batch=16,
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
    from_funcnet=from_funcnet,
)
