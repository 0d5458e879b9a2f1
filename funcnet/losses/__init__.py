"""Losses: ``loss(outputs, targets, *, weights=None) -> scalar mean``.

Every loss computes a per-example (or per-element) loss, wrapping optax's
per-example losses where optax has them, and reduces it to one scalar with a
weighted mean (see :func:`weighted_mean`):

- ``weights=None``: the plain mean over every entry of the per-example loss.
- ``weights`` of shape ``per_example_shape[:k]`` (the leading axes, e.g.
  ``(batch,)`` or ``(batch, time)``): per-example weights or a 0/1 (or bool)
  mask, broadcast over the remaining axes; the result is
  ``sum(w * l) / sum(w)``, so a mask gives the mean over the kept examples
  and a padded last batch gives the same loss as the unpadded one.
  Examples with weight 0 never contribute, even where their loss is NaN or
  infinite (garbage in the padding). An all-zero mask gives ``0.0`` (not
  ``0/0 = NaN``) with zero gradients, so a fully padded step does not poison
  training. Weights should be non-negative.

Shapes are checked at trace time and never broadcast silently: ``(32, 1)``
outputs against ``(32,)`` targets is an error that shows the fix, not a
``(32, 32)`` loss.

**Logits, one convention.** Every classification loss
(:func:`binary_cross_entropy` (alias :func:`log_loss`), :func:`focal`,
:func:`categorical_cross_entropy`, :func:`sparse_categorical_cross_entropy`,
:func:`kl_divergence`, and :func:`ctc`, which has no probability option) takes
**logits** by default, ``from_logits=True``, as optax, Flax and PyTorch's
``BCEWithLogitsLoss``/``CrossEntropyLoss``: the model ends in a linear layer
and the loss applies the sigmoid or softmax itself, exactly and stably. Apply
``jax.nn.sigmoid``/``jax.nn.softmax`` to the outputs at prediction time.
``from_logits=False`` takes probabilities (after a sigmoid or softmax), with a
clipped log, as Keras. Losses are passed around as callables or looked up by
name, so pick it with either of::

    losses.get("binary_cross_entropy", from_logits=False)
    functools.partial(losses.binary_cross_entropy, from_logits=False)

:func:`check_model_loss` (called by the training step) rejects, before
anything runs, a model ending in a softmax/sigmoid trained on a loss that
expects logits, and the reverse; it reads ``from_logits`` from the
``functools.partial`` keywords, a ``from_logits`` attribute, or the loss's
default (see :func:`expects_logits`).

The margin losses :func:`hinge` and :func:`squared_hinge` take raw scores
(no sigmoid) and labels in ``{-1, 1}`` or ``{0, 1}``; :func:`poisson` takes
rates, or log-rates with ``log_input=True``.

Every loss also takes ``reduction="mean"`` (the default, the weighted mean
above), ``"sum"`` or ``"none"`` (the weighted per-example or per-element
losses, shaped as before the reduction; weight-0 entries are 0), as PyTorch's
``reduction`` and Keras'. ``fit`` and ``train_step`` need the scalar of
``"mean"`` or ``"sum"``.

Losses are computed in float32 (float64 when the outputs are float64), also
for bfloat16/float16 outputs.

Examples:
    >>> import jax, jax.numpy as jnp
    >>> from funcnet import losses
    >>> logits = jnp.array([[2.0, 0.0, -1.0], [0.0, 3.0, 0.0]])
    >>> labels = jnp.array([0, 1])
    >>> losses.sparse_categorical_cross_entropy(logits, labels)
    Array(0.1323..., dtype=float32)
    >>> loss_fn = losses.get("sparse_categorical_crossentropy")
    >>> loss_fn(logits, labels, weights=jnp.array([1.0, 0.0]))  # only the first example
    Array(0.1698..., dtype=float32)
    >>> probs = losses.get("sparse_categorical_crossentropy", from_logits=False)
    >>> probs(jax.nn.softmax(logits), labels)
    Array(0.1323..., dtype=float32)
"""

from funcnet.losses._base import Loss, weighted_mean
from funcnet.losses._lookup import get
from funcnet.losses.checks import check_model_loss, expects_logits
from funcnet.losses.classification import (
    binary_cross_entropy,
    binary_cross_entropy_with_logits,
    categorical_cross_entropy,
    focal,
    kl_divergence,
    log_loss,
    sparse_categorical_cross_entropy,
)
from funcnet.losses.margin import hinge, squared_hinge
from funcnet.losses.regression import (
    cosine_distance,
    cosine_similarity,
    huber,
    mean_absolute_error,
    mean_squared_error,
    poisson,
)
from funcnet.losses.sequence import ctc

__all__ = [
    "Loss",
    "binary_cross_entropy",
    "binary_cross_entropy_with_logits",
    "categorical_cross_entropy",
    "check_model_loss",
    "cosine_distance",
    "cosine_similarity",
    "ctc",
    "expects_logits",
    "focal",
    "get",
    "hinge",
    "huber",
    "kl_divergence",
    "log_loss",
    "mean_absolute_error",
    "mean_squared_error",
    "poisson",
    "sparse_categorical_cross_entropy",
    "squared_hinge",
    "weighted_mean",
]
