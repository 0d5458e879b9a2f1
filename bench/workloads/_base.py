"""What a workload is: one model written once per implementation, plus its data.

Every implementation computes the same math (float32, Adam 1e-3, data in
memory). A field left ``None`` means that implementation has no version of the
workload; a builder that raises :class:`Skip` (e.g. a missing funcnet layer or
peer library) is reported as skipped with its reason.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np


class Skip(Exception):
    """This implementation cannot run this workload here (the message says why)."""


@dataclass(frozen=True)
class Workload:
    """One benchmark model, written for every implementation.

    Attributes:
        name: the workload's id (``mlp``, ``cnn``, ...).
        description: one line for the report.
        batch: examples per step.
        loss: ``"xent"`` (integer labels, mean softmax cross-entropy) or
            ``"mse"`` (mean squared error).
        fused_steps: steps fused into one call (``lax.scan``) by the fused paths.
        has_conv: contains convolutions (the fused paths unroll on CPU).
        make_data: ``(rng, n) -> (x, y)`` numpy arrays of ``n`` examples.
        funcnet: ``() -> Layer``; raises :class:`Skip` when a layer is missing.
        jax_init: ``(key) -> params`` (a dict of arrays) for the pure-JAX reference.
        jax_apply: ``(params, x) -> outputs``.
        linen: ``() -> flax.linen.Module``.
        nnx: ``(rngs) -> flax.nnx.Module``.
        haiku: ``(x) -> outputs``, to be ``hk.transform``-ed.
        equinox: ``(key) -> eqx.Module`` mapping **one** example to its
            outputs (vmapped over the batch, as equinox is used).
        torch: ``() -> torch.nn.Module``.
        torch_layout: numpy ``x -> x`` in PyTorch's layout (e.g. NHWC -> NCHW).
        flops_apply: ``jax_apply`` with its loops unrolled, used only to count
            FLOPs (XLA's cost analysis counts a loop body once, not per trip).
        from_funcnet: ``(funcnet params) -> reference params``: the same
            weights in the pure-JAX layout, so a test can check that both
            compute the same loss and gradients (what makes the ratio fair).
    """

    name: str
    description: str
    batch: int
    loss: str
    fused_steps: int
    has_conv: bool
    make_data: Callable[[np.random.Generator, int], tuple[np.ndarray, np.ndarray]]
    funcnet: Callable[[], Any]
    jax_init: Callable[[Any], Any]
    jax_apply: Callable[[Any, Any], Any]
    linen: Callable[[], Any] | None = None
    nnx: Callable[[Any], Any] | None = None
    haiku: Callable[[Any], Any] | None = None
    equinox: Callable[[Any], Any] | None = None
    torch: Callable[[], Any] | None = None
    torch_layout: Callable[[np.ndarray], np.ndarray] = lambda x: x
    flops_apply: Callable[[Any, Any], Any] | None = None
    from_funcnet: Callable[[Any], Any] | None = None


def classes(rng: np.random.Generator, n: int, k: int = 10) -> np.ndarray:
    return rng.integers(0, k, size=n).astype(np.int32)


def normal(rng: np.random.Generator, *shape: int) -> np.ndarray:
    return rng.standard_normal(shape).astype(np.float32)


def glorot(key, shape, fan_in: int | None = None, fan_out: int | None = None):
    """Glorot-uniform weights for the pure-JAX reference."""
    import jax

    fan_in = shape[-2] if fan_in is None else fan_in
    fan_out = shape[-1] if fan_out is None else fan_out
    limit = (6.0 / (fan_in + fan_out)) ** 0.5
    return jax.random.uniform(key, shape, minval=-limit, maxval=limit)


def funcnet_attr(*names: str):
    """Look up funcnet layers by name (exported, or in their module); :class:`Skip` if absent."""
    import importlib

    import funcnet

    found = []
    for name in names:
        obj = getattr(funcnet, name, None)
        if obj is None:
            for module in ("recurrent", "attention", "transformer"):
                try:
                    mod = importlib.import_module(f"funcnet.layers.{module}")
                except Exception:  # a half-written module must not stop the run
                    continue
                obj = getattr(mod, name, None)
                if obj is not None:
                    break
        if obj is None:
            raise Skip(f"funcnet layer not available: {name}")
        found.append(obj)
    return found[0] if len(found) == 1 else tuple(found)


def nonempty(params) -> list:
    """The param dicts of a ``serial`` model, without its parameter-free layers' ``()``."""
    return [p for p in params if p]
