"""Sequence losses: connectionist temporal classification (CTC)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from funcnet._checks import is_int
from funcnet.losses._base import _outputs, _shape, weighted_mean

__all__ = ["ctc"]


def _paddings(name: str, arg: str, paddings, shape, dtype, like: str) -> jax.Array:
    paddings = jnp.asarray(paddings)
    if paddings.shape != shape:
        raise ValueError(
            f"{name}: `{arg}` must have the shape of {like}, {_shape(shape)}, got "
            f"{_shape(paddings.shape)}; 1.0 marks a padded step, 0.0 a real one."
        )
    return paddings.astype(dtype)


def ctc(
    outputs: jax.typing.ArrayLike,
    targets: jax.typing.ArrayLike,
    *,
    output_paddings: jax.typing.ArrayLike | None = None,
    target_paddings: jax.typing.ArrayLike | None = None,
    blank_id: int = 0,
    weights: jax.typing.ArrayLike | None = None,
    reduction: str = "mean",
) -> jax.Array:
    """CTC loss (Graves et al. 2006) for unaligned label sequences (``optax.ctc_loss``).

    For speech or handwriting: the model emits, for every time step, scores
    over the labels plus a *blank*; the loss is the negative log-likelihood of
    the target sequence summed over every alignment (repeats merged, blanks
    removed). Per sequence it is the sum over time, **not** divided by the
    target length (PyTorch's ``ctc_loss(..., reduction="none")``; its default
    ``"mean"`` divides by the lengths first); sequences are then reduced with
    the weighted mean. An impossible alignment (a target longer than the
    output allows) gives a large finite loss (about ``1e5``) rather than
    PyTorch's ``inf``.

    **Paddings**, in optax's convention, are float masks with ``1.0`` at padded
    steps and ``0.0`` at real ones, so a batch holds sequences of different
    lengths:

    - ``output_paddings`` ``(batch, time)``: padded frames of the outputs;
      ``None`` means every frame is real.
    - ``target_paddings`` ``(batch, max_label_len)``: padded label positions;
      ``None`` takes every negative label as padding, so targets padded with
      ``-1`` work in ``fit`` without any option.

    Args:
        outputs: **logits** (unnormalised; the log-softmax is taken here) of
            shape ``(batch, time, num_labels)``, the blank included.
        targets: integer labels ``(batch, max_label_len)``, in
            ``[0, num_labels)`` and never ``blank_id`` at real positions.
        output_paddings: optional ``(batch, time)`` padding of the outputs.
        target_paddings: optional ``(batch, max_label_len)`` padding of the targets.
        blank_id: the index of the blank label (PyTorch's ``blank``). Default 0.
        weights: optional per-sequence weights or mask, shape ``(batch,)``.
        reduction: ``"mean"`` (weighted mean, the default), ``"sum"`` or ``"none"``
            (the weighted per-example losses), see :func:`weighted_mean`.

    Returns:
        The weighted mean over sequences of the CTC negative log-likelihood.

    Raises:
        ValueError: for outputs that are not ``(batch, time, num_labels)``,
            targets that are not ``(batch, max_label_len)``, paddings of the
            wrong shape, or a ``blank_id`` out of range.
        TypeError: for targets that are not integers, or a ``blank_id`` that is not an int.

    Examples:
        >>> logits = jnp.zeros((1, 3, 3))  # uniform over {blank, 1, 2} at 3 steps
        >>> ctc(logits, jnp.array([[1, 2]]))  # 5 of the 27 paths give "1 2"
        Array(1.6863..., dtype=float32)
        >>> ctc(logits, jnp.array([[1, -1]]))  # "1", padded with -1: 6 of 27 paths
        Array(1.5040..., dtype=float32)
    """
    name = "ctc"
    outputs = _outputs(name, outputs)
    if outputs.ndim != 3:
        raise ValueError(
            f"{name}: `outputs` must be logits of shape (batch, time, num_labels), got shape "
            f"{_shape(outputs.shape)}; add the missing batch axis with `outputs[None]`."
        )
    batch, time, num_labels = outputs.shape
    targets = jnp.asarray(targets)
    if not jnp.issubdtype(targets.dtype, jnp.integer):
        raise TypeError(
            f"{name}: `targets` must be integer labels, got dtype {targets.dtype}; cast with "
            "`targets.astype(jnp.int32)`."
        )
    if targets.ndim != 2 or targets.shape[0] != batch:
        raise ValueError(
            f"{name}: `targets` must be labels of shape (batch, max_label_len) = ({batch}, L) "
            f"for outputs {_shape(outputs.shape)}, got shape {_shape(targets.shape)}; pad the "
            "label sequences to one length with -1."
        )
    if not is_int(blank_id):
        raise TypeError(f"{name}: `blank_id` must be an int, got {blank_id!r}.")
    if not 0 <= blank_id < num_labels:
        raise ValueError(
            f"{name}: `blank_id` must be in [0, {num_labels}) (the last axis of `outputs`), "
            f"got {blank_id}."
        )
    if target_paddings is None:
        target_paddings = (targets < 0).astype(outputs.dtype)
    else:
        target_paddings = _paddings(
            name, "target_paddings", target_paddings, targets.shape, outputs.dtype, "`targets`"
        )
    if output_paddings is None:
        output_paddings = jnp.zeros((batch, time), outputs.dtype)
    else:
        output_paddings = _paddings(
            name,
            "output_paddings",
            output_paddings,
            (batch, time),
            outputs.dtype,
            "`outputs.shape[:2]`",
        )
    labels = jnp.where(target_paddings > 0, 0, targets)
    per_sequence = optax.ctc_loss(
        outputs, output_paddings, labels, target_paddings, blank_id=blank_id
    )
    return weighted_mean(per_sequence, weights, name=name, reduction=reduction)
