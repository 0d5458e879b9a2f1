"""Knowledge distillation (Hinton et al. 2015): a loss on a teacher's soft targets.

The recipe that fits ``fn.fit`` as it is: compute the teacher's logits on the
training set once (``fn.predict(teacher, params, state, x)``), pass them with
the labels as dict targets ``{"labels": y, "teacher_logits": t}`` (batched and
shuffled with ``x``), and train the student on :func:`distillation_loss`.
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp
import optax

from funcnet.losses import Loss, weighted_mean

__all__ = ["distillation_loss"]

_NAME = "distillation_loss"
_KEYS = ("labels", "teacher_logits")


def _number(arg: str, value, low: float, high: float | None, *, open_low: bool) -> float:
    interval = f"{'(' if open_low else '['}{low}, {'inf)' if high is None else f'{high}]'}"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{_NAME}: `{arg}` must be a number in {interval}, got {value!r}.")
    if (value <= low if open_low else value < low) or (high is not None and value > high):
        raise ValueError(f"{_NAME}: `{arg}` must be in {interval}, got {value!r}.")
    return float(value)


def _check_inputs(outputs, targets) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``(student logits, labels, teacher logits)``, checked, in float32 (or float64)."""
    if not isinstance(targets, Mapping) or set(targets) != set(_KEYS):
        got = sorted(targets) if isinstance(targets, Mapping) else type(targets).__name__
        raise TypeError(
            f"{_NAME}: `targets` must be a dict with keys 'labels' and 'teacher_logits', got "
            f"{got}; pass `(x, {{'labels': y, 'teacher_logits': fn.predict(teacher, ...)}})`."
        )
    s, labels, t = jnp.asarray(outputs), jnp.asarray(targets["labels"]), targets["teacher_logits"]
    t = jnp.asarray(t)
    if not (jnp.issubdtype(s.dtype, jnp.floating) and jnp.issubdtype(t.dtype, jnp.floating)):
        raise TypeError(
            f"{_NAME}: student outputs and teacher logits must be floating point, got "
            f"{s.dtype} and {t.dtype}."
        )
    if s.ndim < 1 or t.shape != s.shape:
        raise ValueError(
            f"{_NAME}: the student's logits and `teacher_logits` must have the same shape "
            f"(batch, num_classes), got {s.shape} and {t.shape}."
        )
    if not jnp.issubdtype(labels.dtype, jnp.integer) or labels.shape != s.shape[:-1]:
        raise ValueError(
            f"{_NAME}: `labels` must be integer class ids of shape {s.shape[:-1]}, got dtype "
            f"{labels.dtype} and shape {labels.shape}."
        )
    dt = jnp.float64 if jnp.float64 in (s.dtype, t.dtype) else jnp.float32
    return s.astype(dt), labels, jax.lax.stop_gradient(t.astype(dt))


def distillation_loss(*, temperature: float = 4.0, alpha: float = 0.9) -> Loss:
    """The distillation loss of Hinton et al. (2015), for ``fn.fit`` with dict targets.

    Per example, with student logits ``s``, teacher logits ``t``, label ``y``
    and temperature ``T``::

        alpha * T**2 * KL(softmax(t / T) || softmax(s / T)) + (1 - alpha) * CE(s, y)

    ``T**2`` keeps the soft term's gradients on the scale of the hard one.
    ``alpha=0`` is plain cross-entropy on the labels. Reduced with
    :func:`funcnet.losses.weighted_mean` (``weights=`` as every loss). The
    returned loss takes logits (``from_logits = True``), so the training step
    rejects a student ending in a softmax.

    Args:
        temperature: ``T > 0``; higher softens both distributions.
        alpha: weight of the soft (teacher) term, in ``[0, 1]``.

    Returns:
        ``loss(student_logits, {"labels": y, "teacher_logits": t}, *, weights=None)``.

    Raises:
        ValueError: for ``temperature <= 0`` or ``alpha`` outside ``[0, 1]``;
            when called, for mismatched shapes or non-integer labels.
        TypeError: for non-numeric options; when called, for targets that are
            not a ``{"labels", "teacher_logits"}`` dict.

    Examples:
        >>> import jax.numpy as jnp
        >>> loss = distillation_loss(temperature=2.0, alpha=0.5)
        >>> s = jnp.array([[1.0, 0.0, -1.0]])
        >>> loss(s, {"labels": jnp.array([0]), "teacher_logits": s})  # KL 0: half the CE
        Array(0.2038..., dtype=float32)
        >>> distillation_loss(alpha=0.0)(s, {"labels": jnp.array([0]), "teacher_logits": -s})
        Array(0.4076..., dtype=float32)
    """
    temperature = _number("temperature", temperature, 0.0, None, open_low=True)
    alpha = _number("alpha", alpha, 0.0, 1.0, open_low=False)

    def loss(outputs, targets, *, weights=None):
        s, labels, t = _check_inputs(outputs, targets)
        log_p_s = jax.nn.log_softmax(s / temperature, axis=-1)
        log_p_t = jax.nn.log_softmax(t / temperature, axis=-1)
        kl = jnp.sum(jnp.exp(log_p_t) * (log_p_t - log_p_s), axis=-1)
        ce = optax.losses.softmax_cross_entropy_with_integer_labels(s, labels)
        per_example = alpha * temperature**2 * kl + (1.0 - alpha) * ce
        return weighted_mean(per_example, weights, name=_NAME)

    loss.from_logits = True
    loss.__name__ = loss.__qualname__ = f"distillation_loss(T={temperature:g}, alpha={alpha:g})"
    return loss
