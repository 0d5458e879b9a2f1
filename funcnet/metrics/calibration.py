"""Calibration: how well a classifier's confidence matches its accuracy."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from funcnet.metrics._base import Metric, _add, _check_int, _weights, labels_of
from funcnet.metrics.classification import _sparse_labels

__all__ = ["expected_calibration_error"]


def expected_calibration_error(
    num_bins: int = 15, *, from_logits: bool = True, name: str = "ece"
) -> Metric:
    """Expected calibration error (Guo et al., 2017) of integer labels, streamed.

    Each example's confidence is its largest class probability; the examples
    fall into ``num_bins`` equal-width confidence bins ``(k/B, (k+1)/B]``, and

        ECE = sum over bins of (weight in the bin / total weight) * |accuracy - mean confidence|

    0 for a perfectly calibrated model. ``outputs`` are ``(..., classes)``
    logits (``from_logits=True``, the default, as funcnet's losses) or
    probabilities (e.g. :func:`funcnet.ensemble_predict`'s mean probabilities);
    ``targets`` integer labels of shape ``outputs.shape[:-1]``; ``weights``
    optional per-example weights.

    Raises:
        ValueError: for ``num_bins < 1`` or targets that do not fit the outputs.

    Examples:
        >>> import jax.numpy as jnp
        >>> ece = expected_calibration_error(num_bins=2, from_logits=False)
        >>> probs = jnp.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.4, 0.6]])
        >>> state = ece.update(ece.init(), probs, jnp.array([0, 1, 1, 1]))
        >>> float(ece.compute(state))  # bin (0.5, 1]: accuracy 3/4, confidence 0.75
        0.0
        >>> state = ece.update(ece.init(), probs, jnp.array([0, 0, 0, 0]))
        >>> round(float(ece.compute(state)), 4)  # accuracy 1/2 at confidence 0.75
        0.25
    """
    bins = _check_int(name, "num_bins", num_bins, 1)

    def init():
        zeros = jnp.zeros((bins,), jnp.float32)
        return {"weight": zeros, "confidence": zeros, "correct": zeros}

    def update(state, outputs, targets, *, weights=None):
        outputs = jnp.asarray(outputs)
        labels = _sparse_labels(name, outputs, jnp.asarray(labels_of(name, targets)))
        probs = jax.nn.softmax(outputs.astype(jnp.float32), -1) if from_logits else outputs
        confidence = jnp.max(probs, -1).astype(jnp.float32)
        correct = (jnp.argmax(probs, -1) == labels).astype(jnp.float32)
        w = _weights(name, weights, confidence.shape, jnp.float32)
        index = jnp.clip(jnp.ceil(confidence * bins).astype(jnp.int32) - 1, 0, bins - 1)
        rows = index.ravel()

        def per_bin(values):
            return jnp.zeros((bins,), jnp.float32).at[rows].add((w * values).ravel())

        new = {"weight": per_bin(1.0), "confidence": per_bin(confidence)}
        return _add(state, {**new, "correct": per_bin(correct)})

    def compute(state):
        total = jnp.sum(state["weight"])
        gap = jnp.abs(state["correct"] - state["confidence"])  # weighted sums: |n acc - n conf|
        return jnp.where(total > 0, jnp.sum(gap) / jnp.where(total > 0, total, 1.0), jnp.nan)

    return Metric(init, update, _add, compute, name)
