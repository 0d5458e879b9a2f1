"""Compress a trained model: magnitude pruning, int8 weight quantization, distillation.

- Pruning (:mod:`funcnet.compress.prune`): :func:`magnitude_masks` (global or
  per-layer, unstructured or by output channel), :func:`apply_masks`,
  :func:`keep_masked` (an optax transform keeping pruned weights at 0),
  :func:`polynomial_sparsity` and :func:`gradual_pruning` (Zhu & Gupta 2017),
  :func:`sparsity_report`.
- Quantization (:mod:`funcnet.compress.quantize`): per-channel symmetric int8
  kernels with :func:`quantize` / :func:`dequantize`, :func:`size_bytes`, and
  :func:`int8_dense` (an integer matmul on activations quantized on the fly);
  ``bits=4`` (or 2 .. 8) for fewer levels, stored in int8, sized packed by
  ``size_bytes(..., bits=4)``.
- Static int8 (:mod:`funcnet.compress.static`): :func:`quantize_model`
  calibrates activation scales on a few batches (min/max or a percentile) and
  returns a ``Layer`` computing ``Dense``/``Conv``/attention projections as
  ``int8 x int8 -> int32`` that exports with ``fn.export``;
  :func:`int8_accumulators` shows its integer intermediates.
- Quantization-aware training (:mod:`funcnet.compress.qat`): :func:`fake_quantize`
  (the round trip with a straight-through gradient) and :func:`qat` (a model
  whose kernels are fake-quantized on every forward pass; ``quantize`` its
  trained params for integer weights computing exactly the same outputs).
- Distillation (:mod:`funcnet.compress.distill`): :func:`distillation_loss`
  (Hinton et al. 2015), a loss for ``fn.fit`` on ``{"labels", "teacher_logits"}`` targets.

Examples:
    >>> import jax, jax.numpy as jnp
    >>> import funcnet as fn
    >>> model = fn.serial(fn.Dense(16), jax.nn.relu, fn.Dense(3))
    >>> params, state = model.init(jax.random.key(0), jnp.zeros((1, 4)))
    >>> pruned = fn.compress.apply_masks(params, fn.compress.magnitude_masks(params, 0.75))
    >>> fn.compress.sparsity_report(pruned)["total"]
    (84, 112, 0.75)
"""

from funcnet.compress.distill import distillation_loss
from funcnet.compress.prune import (
    KERNELS,
    GradualPruningState,
    apply_masks,
    gradual_pruning,
    keep_masked,
    magnitude_masks,
    polynomial_sparsity,
    sparsity_report,
)
from funcnet.compress.qat import fake_quantize, fake_quantize_params, qat
from funcnet.compress.quantize import (
    dequantize,
    int8_dense,
    is_quantized,
    quantize,
    quantize_array,
    size_bytes,
)
from funcnet.compress.static import METHODS, WEIGHTS, int8_accumulators, quantize_model

__all__ = [
    "KERNELS",
    "METHODS",
    "WEIGHTS",
    "GradualPruningState",
    "apply_masks",
    "dequantize",
    "distillation_loss",
    "fake_quantize",
    "fake_quantize_params",
    "gradual_pruning",
    "int8_accumulators",
    "int8_dense",
    "is_quantized",
    "keep_masked",
    "magnitude_masks",
    "polynomial_sparsity",
    "qat",
    "quantize",
    "quantize_array",
    "quantize_model",
    "size_bytes",
    "sparsity_report",
]
