"""Streaming metrics: pure ``init / update / merge / compute`` over a pytree state.

A :class:`Metric` is a NamedTuple of four pure functions and a name:

- ``init() -> state``: a pytree of arrays with static shapes;
- ``update(state, outputs, targets, *, weights=None) -> state``: add one batch;
- ``merge(state_a, state_b) -> state``: combine partial states (from several
  devices, processes or data shards); associative and commutative;
- ``compute(state) -> value``: the metric over everything added so far.

All four can be ``jax.jit``-ed, ``lax.scan``-ed and carried in a train state.
Precision, recall and F1 are computed from an accumulated confusion matrix,
never as a mean of per-batch ratios, so the result over uneven batches equals
scikit-learn's over the whole dataset.

Weights and masks: ``weights`` has the leading shape of the per-example values
(``(batch,)``, or ``(batch, time)`` for sequences) and is broadcast over the
rest; a 0/1 (or bool) mask drops the padding of a last partial batch. Entries
with weight 0 never contribute, even when they are NaN.

Logits and labels: a binary score per example is thresholded as a **logit**
by default (``from_logits=True``, the convention of :mod:`funcnet.losses`:
positive when ``> logit(threshold)``, 0 for 0.5); pass ``from_logits=False``
for probabilities after a sigmoid. Class scores ``(..., num_classes)`` are
argmax-ed, the same for logits and probabilities. Class labels may be
integers, bools, or floats holding whole numbers (``0., 1., 2.``: the targets
of binary cross-entropy); a non-integral float label such as ``0.3`` is a
``ValueError`` when the targets are concrete, and, under ``jit`` (where
checking values would need a host sync), an out-of-range label that is counted
as wrong (accuracies) or not counted (confusion matrix).

Dict targets: the built-in metrics read ``targets["labels"]`` when the
targets are a dict (distillation's ``{"labels": y, "teacher_logits": t}``);
:func:`select_targets` picks another entry. ``mean(fn)`` hands ``fn`` the
targets as they are.

Counts and sums:

- Counting metrics (accuracies, confusion matrix, precision, recall, F1) count
  in **int32** by default: exact up to ``2**31 - 1`` (about 2.1e9) weighted
  examples per counter, after which they wrap. With int32 counts ``weights``
  must be bool or integer (a mask or repeat counts); build the metric with
  ``dtype=jnp.float32`` for fractional weights (then counts are exact up to
  ``2**24`` and rounded, relative error ~1e-7, beyond).
- Value metrics (mean, mean absolute error, R²) keep **float32** sums, one
  addition per batch (each batch is reduced first), so rounding grows with
  the number of batches, not of examples.

No data: a ratio over zero examples (accuracy, mean, MAE, R²) is NaN, as the
value is undefined; precision/recall/F1 divisions by zero give 0 (the default
of scikit-learn, which also warns). Counting metrics' states are sums, so
``jax.lax.psum`` of states also merges them; R²'s state is not (use ``merge``).

Examples:
    >>> import jax, jax.numpy as jnp
    >>> from funcnet import metrics
    >>> acc = metrics.sparse_categorical_accuracy()
    >>> state = acc.init()
    >>> update = jax.jit(acc.update)
    >>> state = update(state, jnp.array([[2.0, 0.0], [0.0, 1.0]]), jnp.array([0, 0]))
    >>> state = update(state, jnp.array([[0.0, 3.0]]), jnp.array([1]))
    >>> acc.compute(state)
    Array(0.6666667, dtype=float32)
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable, Mapping

from funcnet.metrics._base import LABELS, Metric, labels_of, mean
from funcnet.metrics.calibration import expected_calibration_error
from funcnet.metrics.classification import (
    accuracy,
    binary_accuracy,
    categorical_accuracy,
    confusion_matrix,
    f1,
    precision,
    recall,
    sparse_categorical_accuracy,
    top_k_accuracy,
)
from funcnet.metrics.regression import mean_absolute_error, r2

__all__ = [
    "LABELS",
    "Metric",
    "accuracy",
    "binary_accuracy",
    "categorical_accuracy",
    "collection",
    "confusion_matrix",
    "expected_calibration_error",
    "f1",
    "get",
    "labels_of",
    "mean",
    "mean_absolute_error",
    "precision",
    "r2",
    "recall",
    "select_targets",
    "sparse_categorical_accuracy",
    "top_k_accuracy",
]


# ----------------------------------------------------------------------------- several


def collection(metrics: Mapping[str, Metric | str]) -> Metric:
    """Several metrics as one: a dict of metrics gives a dict of states and of values.

    ``update(states, outputs, targets, *, weights=None)`` feeds every metric
    the same batch (so :func:`mean` without ``fn`` does not fit here). Names
    are resolved with :func:`get`. One ``jax.jit`` of the collection's
    ``update`` compiles all the metrics together.

    Examples:
        >>> import jax.numpy as jnp
        >>> ms = collection({"acc": "accuracy", "f1": f1(3, average="macro")})
        >>> s = ms.update(ms.init(), jnp.eye(3), jnp.array([0, 1, 1]))
        >>> {k: round(float(v), 4) for k, v in ms.compute(s).items()}
        {'acc': 0.6667, 'f1': 0.5556}
    """
    if not isinstance(metrics, Mapping):
        raise TypeError(
            f"collection: `metrics` must be a dict of name -> metric, got "
            f"{type(metrics).__name__}; e.g. `collection({{'acc': accuracy()}})`."
        )
    ms = {k: get(m) for k, m in metrics.items()}

    def init():
        return {k: m.init() for k, m in ms.items()}

    def update(states, outputs, targets, *, weights=None):
        return {k: m.update(states[k], outputs, targets, weights=weights) for k, m in ms.items()}

    def merge(a, b):
        return {k: m.merge(a[k], b[k]) for k, m in ms.items()}

    def compute(states):
        return {k: m.compute(states[k]) for k, m in ms.items()}

    return Metric(init, update, merge, compute, "collection")


def select_targets(metric: Metric | str, key: str | Callable) -> Metric:
    """``metric`` computed on ``targets[key]`` (or ``key(targets)``) instead of the whole targets.

    For dict targets whose labels are not under ``"labels"`` (the entry the
    built-in metrics read by default, see :func:`labels_of`), e.g.
    ``fit(..., metrics={"acc": select_targets("accuracy", "y")})``.

    Args:
        metric: a Metric or a metric name (see :func:`get`).
        key: a dict key, or a function ``targets -> the metric's targets``.

    Raises:
        TypeError: for a ``key`` that is neither a string nor callable; when
            updated, for targets without ``key``.

    Examples:
        >>> import jax.numpy as jnp
        >>> acc = select_targets("accuracy", "y")
        >>> s = acc.update(acc.init(), jnp.eye(2), {"y": jnp.array([0, 0]), "w": None})
        >>> float(acc.compute(s)), acc.name
        (0.5, 'accuracy[y]')
    """
    metric = get(metric)
    if not (isinstance(key, str) or callable(key)):
        raise TypeError(
            f"select_targets: `key` must be a dict key (str) or a function of the targets, got "
            f"{type(key).__name__}."
        )

    def select(targets):
        if callable(key):
            return key(targets)
        if not isinstance(targets, Mapping) or key not in targets:
            got = sorted(targets) if isinstance(targets, Mapping) else type(targets).__name__
            raise TypeError(
                f"{metric.name}: `select_targets(..., {key!r})` needs dict targets with a "
                f"{key!r} entry, got {got}."
            )
        return targets[key]

    def update(state, outputs, targets, *, weights=None):
        return metric.update(state, outputs, select(targets), weights=weights)

    shown = key if isinstance(key, str) else getattr(key, "__name__", "fn")
    return metric._replace(update=update, name=f"{metric.name}[{shown}]")


# ----------------------------------------------------------------------------- lookup


def _key(name: str) -> str:
    return "".join(c for c in name.lower() if c.isalnum())


_NAMES: dict[str, Callable[..., Metric]] = {
    **dict.fromkeys(["accuracy", "acc"], accuracy),
    "binary_accuracy": binary_accuracy,
    "categorical_accuracy": categorical_accuracy,
    "sparse_categorical_accuracy": sparse_categorical_accuracy,
    **dict.fromkeys(
        ["top_k_accuracy", "top_k_categorical_accuracy", "sparse_top_k_categorical_accuracy"],
        top_k_accuracy,
    ),
    "confusion_matrix": confusion_matrix,
    **dict.fromkeys(["ece", "expected_calibration_error"], expected_calibration_error),
    "precision": precision,
    "recall": recall,
    **dict.fromkeys(["f1", "f1_score"], f1),
    **dict.fromkeys(["mae", "mean_absolute_error"], mean_absolute_error),
    **dict.fromkeys(["r2", "r2_score"], r2),
    "mean": mean,
}
_ALIASES = {_key(k): v for k, v in _NAMES.items()}


def get(name: str | Metric, **kwargs) -> Metric:
    """Build a metric from its name (Keras/scikit-learn style), with constructor options.

    Names are matched ignoring case, ``_``, ``-`` and spaces (``"acc"``,
    ``"sparse_categorical_accuracy"``, ``"top_k_categorical_accuracy"``,
    ``"f1_score"``, ``"mae"``, ``"r2_score"``, ...). A :class:`Metric` is
    returned as is.

    Args:
        name: a metric name or a Metric.
        **kwargs: options for the constructor (``num_classes``, ``average``, ``k``, ...).

    Raises:
        ValueError: for an unknown name (with the closest known names) or bad options.
        TypeError: if ``name`` is neither.

    Examples:
        >>> get("f1_score", num_classes=3, average="macro").name
        'f1_macro'
        >>> get("acuracy")
        Traceback (most recent call last):
        ...
        ValueError: unknown metric 'acuracy'; did you mean 'accuracy'? ...
    """
    if isinstance(name, Metric):
        if kwargs:
            raise ValueError(f"get: options {sorted(kwargs)} need a metric name, not a Metric.")
        return name
    if not isinstance(name, str):
        raise TypeError(f"a metric must be a name or a Metric, got {type(name).__name__}.")
    make = _ALIASES.get(_key(name))
    if make is None:
        close = difflib.get_close_matches(name.lower(), list(_NAMES), n=1, cutoff=0.6)
        hint = f"did you mean {close[0]!r}? " if close else ""
        known = ", ".join(_NAMES)
        raise ValueError(f"unknown metric {name!r}; {hint}known metrics: {known}.")
    try:
        inspect.signature(make).bind(**kwargs)
    except TypeError as err:
        raise ValueError(
            f"metric {make.__name__!r}: bad options {sorted(kwargs)}: {err}."
        ) from None
    return make(**kwargs)
