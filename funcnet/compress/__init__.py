"""Compress a trained model: magnitude pruning, int8 weight quantization, distillation.

- Pruning (:mod:`funcnet.compress.prune`): :func:`magnitude_masks` (global or
  per-layer, unstructured or by output channel), :func:`apply_masks`,
  :func:`keep_masked` (an optax transform keeping pruned weights at 0),
  :func:`polynomial_sparsity` and :func:`gradual_pruning` (Zhu & Gupta 2017),
  :func:`sparsity_report`.
- Quantization (:mod:`funcnet.compress.quantize`): per-channel symmetric int8
  kernels with :func:`quantize` / :func:`dequantize`, :func:`size_bytes`, and
  :func:`int8_dense` (an integer matmul on activations quantized on the fly).
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
from funcnet.compress.quantize import (
    dequantize,
    int8_dense,
    is_quantized,
    quantize,
    quantize_array,
    size_bytes,
)

__all__ = [
    "KERNELS",
    "GradualPruningState",
    "apply_masks",
    "dequantize",
    "distillation_loss",
    "gradual_pruning",
    "int8_dense",
    "is_quantized",
    "keep_masked",
    "magnitude_masks",
    "polynomial_sparsity",
    "quantize",
    "quantize_array",
    "size_bytes",
    "sparsity_report",
]
