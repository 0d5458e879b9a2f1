"""The :class:`Loss` type, the weighted mean, and the checks every loss shares."""

from __future__ import annotations

from typing import Protocol

import jax
import jax.numpy as jnp
import numpy as np

from funcnet._checks import fmt_shape as _shape

__all__ = ["Loss", "weighted_mean"]

_EPSILON = 1e-7


class Loss(Protocol):
    """``loss(outputs, targets, *, weights=None) -> scalar``: the weighted mean loss."""

    def __call__(
        self,
        outputs: jax.typing.ArrayLike,
        targets: jax.typing.ArrayLike,
        *,
        weights: jax.typing.ArrayLike | None = None,
    ) -> jax.Array: ...


# ----------------------------------------------------------------------------- helpers


def _float_dtype(dtype) -> np.dtype:
    """The dtype a loss computes in: float32, or float64 for float64 inputs."""
    dtype = jnp.dtype(dtype)
    return dtype if dtype.itemsize >= 4 else jnp.dtype(jnp.float32)


def _outputs(name: str, outputs, *, min_ndim: int = 0) -> jax.Array:
    """``outputs`` as a floating array in the compute dtype; clear errors otherwise."""
    outputs = jnp.asarray(outputs)
    if not jnp.issubdtype(outputs.dtype, jnp.floating):
        raise TypeError(
            f"{name}: `outputs` must be floating point, got dtype {outputs.dtype}; "
            "cast with `outputs.astype(jnp.float32)`."
        )
    if outputs.ndim < min_ndim:
        raise ValueError(
            f"{name}: `outputs` must have a class axis (last axis), got shape "
            f"{_shape(outputs.shape)}; e.g. logits of shape (batch, num_classes)."
        )
    return outputs.astype(_float_dtype(outputs.dtype))


def _numeric_targets(name: str, targets, dtype) -> jax.Array:
    """Real-valued ``targets`` (bool, int or float) cast to ``dtype``."""
    targets = jnp.asarray(targets)
    if not (
        jnp.issubdtype(targets.dtype, jnp.floating)
        or jnp.issubdtype(targets.dtype, jnp.integer)
        or targets.dtype == jnp.bool_
    ):
        raise TypeError(f"{name}: `targets` must be real numbers, got dtype {targets.dtype}.")
    return targets.astype(dtype)


def _same_shape(name: str, outputs: jax.Array, targets: jax.Array) -> None:
    if outputs.shape == targets.shape:
        return
    o, t = outputs.shape, targets.shape
    if o == (*t, 1):
        fix = f"add the axis to the targets with `targets[..., None]` (shape {_shape(o)})"
    elif t == (*o, 1):
        fix = f"drop the targets' last axis with `targets[..., 0]` (shape {_shape(o)})"
    else:
        fix = "make them equal; shapes are never broadcast"
    raise ValueError(
        f"{name}: `outputs` and `targets` must have the same shape, got outputs "
        f"{_shape(o)} and targets {_shape(t)}; {fix}."
    )


def _check_range(name: str, arg: str, value, low: float, high: float, *, open_low=False) -> None:
    """Check a hyperparameter when it is a concrete number (traced values pass)."""
    interval = f"{'(' if open_low else '['}{low}, {high}]"
    try:
        v = float(value)
    except jax.errors.ConcretizationTypeError:
        return
    except (TypeError, ValueError):
        raise TypeError(f"{name}: `{arg}` must be a number in {interval}, got {value!r}.") from None
    if not ((low < v if open_low else low <= v) and v <= high):
        raise ValueError(f"{name}: `{arg}` must be in {interval}, got {value!r}.")


_REDUCTIONS = ("mean", "sum", "none")


def weighted_mean(
    values: jax.typing.ArrayLike,
    weights: jax.typing.ArrayLike | None = None,
    *,
    name: str = "loss",
    reduction: str = "mean",
) -> jax.Array:
    """``sum(w * values) / sum(w)``, with ``weights`` over the leading axes of ``values``.

    The reduction every loss in this module uses; public for custom losses.

    Args:
        values: per-example (or per-element) losses, any shape.
        weights: ``None`` (plain mean) or an array of shape ``values.shape[:k]``
            (bool, int or float), broadcast over the trailing axes.
        name: the loss's name, for error messages.
        reduction: ``"mean"`` (the weighted mean above), ``"sum"`` (``sum(w *
            values)``, as PyTorch's and Keras' ``"sum"``) or ``"none"`` (``w *
            values`` with the shape of ``values``, as PyTorch's ``"none"``).

    Returns:
        A scalar (an array shaped like ``values`` for ``"none"``). Entries with
        weight 0 are left out (are 0 for ``"none"``) even when NaN or infinite;
        when every weight is 0 the mean is ``0.0`` with zero gradients.

    Raises:
        ValueError: if ``weights`` is not shaped like the leading axes of
            ``values``, or for an unknown ``reduction``.
        TypeError: if ``weights`` is not real-valued.

    Examples:
        >>> weighted_mean(jnp.array([1.0, 2.0, jnp.nan]), jnp.array([1, 1, 0]))
        Array(1.5, dtype=float32)
        >>> weighted_mean(jnp.array([1.0, 2.0]), jnp.zeros(2))
        Array(0., dtype=float32)
        >>> weighted_mean(jnp.array([1.0, 2.0, jnp.nan]), jnp.array([2, 1, 0]), reduction="none")
        Array([2., 2., 0.], dtype=float32)
    """
    if reduction not in _REDUCTIONS:
        raise ValueError(
            f"{name}: `reduction` must be 'mean', 'sum' or 'none', got {reduction!r} (Keras' "
            "'sum_over_batch_size' is 'mean')."
        )
    values = jnp.asarray(values)
    if weights is None:
        return {"mean": jnp.mean, "sum": jnp.sum, "none": lambda v: v}[reduction](values)
    weights = jnp.asarray(weights)
    if not (
        jnp.issubdtype(weights.dtype, jnp.floating)
        or jnp.issubdtype(weights.dtype, jnp.integer)
        or weights.dtype == jnp.bool_
    ):
        raise TypeError(f"{name}: `weights` must be bool, int or float, got dtype {weights.dtype}.")
    if weights.ndim > values.ndim or weights.shape != values.shape[: weights.ndim]:
        lead = _shape(values.shape[:1]) if values.ndim else "()"
        raise ValueError(
            f"{name}: `weights` must have the leading shape of the per-example losses "
            f"{_shape(values.shape)} (e.g. {lead}), got shape {_shape(weights.shape)}; "
            "weights are per example, not broadcast (squeeze size-1 axes, e.g. `w[:, 0]`)."
        )
    w = weights.astype(values.dtype).reshape(weights.shape + (1,) * (values.ndim - weights.ndim))
    w = jnp.broadcast_to(w, values.shape)
    keep = w != 0
    weighted = jnp.where(keep, w * jnp.where(keep, values, 0), 0)
    if reduction == "none":
        return weighted
    num = jnp.sum(weighted)
    if reduction == "sum":
        return num
    total = jnp.sum(w)
    nonzero = total != 0
    return jnp.where(nonzero, num / jnp.where(nonzero, total, 1), 0).astype(values.dtype)


def _log_probs(outputs: jax.Array, from_logits: bool, epsilon: float) -> jax.Array:
    """Log-probabilities over the last axis: ``log_softmax`` of logits or ``log(clip(p))``."""
    if from_logits:
        return jax.nn.log_softmax(outputs, axis=-1)
    return jnp.log(jnp.clip(outputs, epsilon, 1.0))
