"""Scratch study: faster lowerings of the ``cnn`` workload's convolutions and pools on XLA:CPU.

The same CNN train step (Adam, batch 128, NHWC) with the convolution and the
max-pool lowered in different ways, timed interleaved against PyTorch eager,
plus each variant's loss and gradients against the ``lax.conv`` reference
(same params, same batch):

- ``conv``: ``lax.conv_general_dilated`` (funcnet's ``Conv`` today), reshape max-pool.
- ``conv+reduce_window``: the same with ``lax.reduce_window`` max-pool (Flax/Haiku's).
- ``patches``: ``lax.conv_general_dilated_patches`` + one matmul.
- ``shifted``: im2col by hand: pad, stack the ``kh*kw`` shifted slices on the
  channel axis, one matmul with ``w.reshape(kh*kw*C, F)``. Its gradient is
  pads/slices and two matmuls, no convolution at all.
- ``shifted_sum``: no patches tensor: ``sum_j shift_j(x) @ w[j]`` (``kh*kw``
  small matmuls, accumulated).
- ``hybrid``: ``lax.conv`` forward and input gradient, weight gradient as a
  patches matmul (``jax.custom_vjp``).

Usage: ``python bench/scratch/conv_lowering.py [--rounds N] [--variants ...] [--fused K]``.
``--fused K`` also times K steps fused in one unrolled ``lax.scan`` per call.
"""

from __future__ import annotations

import argparse
import itertools
import sys
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import jax
import jax.numpy as jnp
import optax
from jax import lax

from bench import harness
from bench import impls as impls_lib
from bench.workloads import cnn

DN = ("NHWC", "HWIO", "NHWC")


# ----------------------------------------------------------------------------- lowerings


def conv_lax(x, w):
    return lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=DN)


def _same_pad(x, kh, kw):
    # stride 1 SAME: total padding k - 1, the extra one at the end (TF/Keras; funcnet)
    return jnp.pad(x, ((0, 0), ((kh - 1) // 2, kh // 2), ((kw - 1) // 2, kw // 2), (0, 0)))


def _shifts(x, kh, kw):
    _, h, w_, _ = x.shape
    xp = _same_pad(x, kh, kw)
    return [xp[:, i : i + h, j : j + w_, :] for i in range(kh) for j in range(kw)]


def conv_shifted(x, w):
    """im2col by slicing: (N, H, W, kh*kw*C) @ (kh*kw*C, F); order (kh, kw, C) = HWIO's."""
    kh, kw, c, f = w.shape
    cols = jnp.concatenate(_shifts(x, kh, kw), axis=-1)
    return jnp.dot(cols, w.reshape(kh * kw * c, f))


def conv_shifted_sum(x, w):
    kh, kw, c, f = w.shape
    parts = _shifts(x, kh, kw)
    wf = w.reshape(kh * kw, c, f)
    return sum(jnp.dot(p, wf[j]) for j, p in enumerate(parts))


def conv_patches(x, w):
    """``conv_general_dilated_patches`` (features ordered (C, kh, kw)) + one matmul."""
    kh, kw, c, f = w.shape
    cols = lax.conv_general_dilated_patches(
        x, (kh, kw), (1, 1), "SAME", dimension_numbers=DN
    )  # (N, H, W, C*kh*kw)
    return jnp.dot(cols, jnp.transpose(w, (2, 0, 1, 3)).reshape(c * kh * kw, f))


@jax.custom_vjp
def conv_hybrid(x, w):
    return conv_lax(x, w)


def _hybrid_fwd(x, w):
    return conv_lax(x, w), (x, w)


def _hybrid_bwd(res, g):
    x, w = res
    kh, kw, c, f = w.shape
    # input gradient: the transposed convolution, as XLA would do it
    _, vjp_x = jax.vjp(lambda x_: conv_lax(x_, w), x)
    (dx,) = vjp_x(g)
    cols = jnp.concatenate(_shifts(x, kh, kw), axis=-1)  # (N, H, W, kh*kw*C)
    dw = jnp.einsum("nhwk,nhwf->kf", cols, g).reshape(kh, kw, c, f)
    return dx, dw


conv_hybrid.defvjp(_hybrid_fwd, _hybrid_bwd)


@jax.custom_vjp
def conv_dotw(x, w):
    return conv_lax(x, w)


def _dotw_bwd(res, g):
    """``lax`` input gradient; weight gradient as ONE plain matmul ``cols^T @ g``."""
    x, w = res
    kh, kw, c, f = w.shape
    _, vjp_x = jax.vjp(lambda x_: conv_lax(x_, w), x)
    (dx,) = vjp_x(g)
    cols = jnp.concatenate(_shifts(x, kh, kw), axis=-1).reshape(-1, kh * kw * c)
    dw = jnp.dot(cols.T, g.reshape(-1, f)).reshape(kh, kw, c, f)
    return dx, dw


conv_dotw.defvjp(_hybrid_fwd, _dotw_bwd)


def conv_auto(x, w):
    """The proposal: the dot weight gradient where the patches are narrow (kh*kw*C <= 64)."""
    kh, kw, c, _ = w.shape
    return conv_dotw(x, w) if kh * kw * c <= 64 else conv_lax(x, w)


def pool_reshape(x):
    return cnn.max_pool2(x)


def pool_slices(x):
    """2x2/2 max-pool as the max of 4 strided slices (elementwise; the gradient is pads)."""
    h, w = x.shape[1:3]
    x = x[:, : h // 2 * 2, : w // 2 * 2]
    return jnp.maximum(
        jnp.maximum(x[:, 0::2, 0::2], x[:, 0::2, 1::2]),
        jnp.maximum(x[:, 1::2, 0::2], x[:, 1::2, 1::2]),
    )


def pool_reduce_window(x):
    return lax.reduce_window(x, -jnp.inf, lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")


VARIANTS = {
    "conv": (conv_lax, pool_reshape),
    "conv+reduce_window": (conv_lax, pool_reduce_window),
    "patches": (conv_patches, pool_reshape),
    "shifted": (conv_shifted, pool_reshape),
    "shifted_sum": (conv_shifted_sum, pool_reshape),
    "hybrid": (conv_hybrid, pool_reshape),
    "dotw": (conv_dotw, pool_reshape),
    "conv+slicepool": (conv_lax, pool_slices),
    "auto": (conv_auto, pool_reshape),
    "auto+slicepool": (conv_auto, pool_slices),
}


def make_apply(conv, pool):
    def apply(params, x):
        for name in ("conv1", "conv2"):
            p = params[name]
            x = pool(jax.nn.relu(conv(x, p["w"]) + p["b"]))
        x = x.reshape(x.shape[0], -1)
        x = jax.nn.relu(x @ params["dense1"]["w"] + params["dense1"]["b"])
        return x @ params["dense2"]["w"] + params["dense2"]["b"]

    return apply


# ----------------------------------------------------------------------------- checks


def numerics(data) -> None:
    """Loss and gradients of every variant vs ``conv``, at the same params and batch."""
    params = cnn.jax_init(jax.random.key(0))
    loss = impls_lib.loss_fn("xent")
    x, y = data.batches[0]
    results = {}
    for name, (conv, pool) in VARIANTS.items():
        apply = make_apply(conv, pool)
        results[name] = jax.jit(jax.value_and_grad(lambda p, a=apply: loss(a(p, x), y)))(params)
    ref_loss, ref_grads = results["conv"]
    print("numerics vs `conv` (loss diff; max |grad diff| / max |grad| per leaf, worst):")
    for name, (value, grads) in results.items():
        rel = jax.tree.map(
            lambda a, b: float(jnp.max(jnp.abs(a - b)) / (jnp.max(jnp.abs(b)) + 1e-30)),
            grads,
            ref_grads,
        )
        worst = max(jax.tree.leaves(rel))
        print(f"  {name:20s} loss {float(value - ref_loss):+.2e}  grads {worst:.2e}")
    # single-conv forward check of every lowering against lax (odd sizes, 5x3 kernel)
    xs = jax.random.normal(jax.random.key(1), (2, 9, 8, 3))
    ws = jax.random.normal(jax.random.key(2), (5, 3, 3, 4))
    for name, fn_ in (("patches", conv_patches), ("shifted", conv_shifted)):
        err = float(jnp.max(jnp.abs(fn_(xs, ws) - conv_lax(xs, ws))))
        print(f"  {name} vs lax.conv on a 5x3 kernel, odd sizes: max abs diff {err:.1e}")


# ----------------------------------------------------------------------------- timing


def runner_for(apply, data, fused: int = 0):
    opt = optax.adam(1e-3)
    loss = impls_lib.loss_fn("xent")
    step = impls_lib.make_jax_step(apply, loss, opt)
    params = cnn.jax_init(jax.random.key(0))
    state = [params, opt.init(params)]
    if not fused:
        jstep = jax.jit(step, donate_argnums=(0, 1))
        batches = itertools.cycle(data.batches)

        def call():
            x, y = next(batches)
            state[0], state[1], _ = jstep(state[0], state[1], x, y)

        return impls_lib.Runner(call, lambda: jax.block_until_ready(state))

    @partial(jax.jit, donate_argnums=(0, 1))
    def run(p, o, xs, ys):
        def body(carry, xy):
            p, o = carry
            p, o, _ = step(p, o, *xy)
            return (p, o), None

        (p, o), _ = lax.scan(body, (p, o), (xs, ys), unroll=True)
        return p, o

    k, b = fused, data.batch
    xs = data.dx[: k * b].reshape(k, b, *data.dx.shape[1:])
    ys = data.dy[: k * b].reshape(k, b)

    def call_fused():
        state[0], state[1] = run(state[0], state[1], xs, ys)

    return impls_lib.Runner(call_fused, lambda: jax.block_until_ready(state), steps_per_call=k)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--window", type=float, default=0.5)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--fused", type=int, default=0, help="also time K fused (unrolled) steps")
    parser.add_argument("--no-torch", action="store_true")
    args = parser.parse_args()

    data = impls_lib.Data(cnn.WORKLOAD, 5)
    numerics(data)
    runners = {name: runner_for(make_apply(*VARIANTS[name]), data) for name in args.variants}
    if args.fused:
        for name in args.variants:
            runners[f"{name} fused{args.fused}"] = runner_for(
                make_apply(*VARIANTS[name]), data, fused=args.fused
            )
    if not args.no_torch:
        try:
            runners["torch"] = impls_lib.build_torch(cnn.WORKLOAD, data)
        except Exception as err:  # torch is optional
            print(f"torch skipped: {err}")
    settings = harness.Settings(rounds=args.rounds, window_s=args.window)
    reference = "torch" if "torch" in runners else args.variants[0]
    rows = harness.compare(runners, settings, reference)
    print(f"{'variant':26s} {'compile s':>9s} {'ms/step':>8s} {'±%':>4s} {'vs ' + reference:>9s}")
    for r in rows:
        print(
            f"{r['impl']:26s} {r['compile_s']:9.2f} {r['step_ms']:8.2f} {r['spread_pct']:4.0f} "
            f"{r['vs_ref']:9.3f}"
        )


if __name__ == "__main__":
    main()
