"""Losses by name: :func:`get`."""

from __future__ import annotations

import difflib
import functools
import inspect
from collections.abc import Callable

from funcnet.losses.classification import (
    binary_cross_entropy,
    binary_cross_entropy_with_logits,
    categorical_cross_entropy,
    focal,
    kl_divergence,
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

__all__ = ["get"]


def _key(name: str) -> str:
    return "".join(c for c in name.lower() if c.isalnum())


_NAMES: dict[str, Callable] = {
    **dict.fromkeys(["mse", "mean_squared_error"], mean_squared_error),
    **dict.fromkeys(["mae", "mean_absolute_error"], mean_absolute_error),
    **dict.fromkeys(["huber", "huber_loss"], huber),
    **dict.fromkeys(["bce", "binary_crossentropy", "log_loss"], binary_cross_entropy),
    **dict.fromkeys(
        ["binary_crossentropy_with_logits", "sigmoid_binary_cross_entropy"],
        binary_cross_entropy_with_logits,
    ),
    **dict.fromkeys(
        ["categorical_crossentropy", "softmax_cross_entropy", "cross_entropy"],
        categorical_cross_entropy,
    ),
    **dict.fromkeys(
        ["sparse_categorical_crossentropy", "softmax_cross_entropy_with_integer_labels"],
        sparse_categorical_cross_entropy,
    ),
    **dict.fromkeys(["kld", "kl_divergence", "kullback_leibler_divergence"], kl_divergence),
    "cosine_similarity": cosine_similarity,
    "cosine_distance": cosine_distance,
    "hinge": hinge,
    "squared_hinge": squared_hinge,
    **dict.fromkeys(["poisson", "poisson_nll_loss"], poisson),
    **dict.fromkeys(["ctc", "ctc_loss"], ctc),
    **dict.fromkeys(["focal", "sigmoid_focal_loss", "binary_focal_crossentropy"], focal),
}
_ALIASES = {_key(k): v for k, v in _NAMES.items()}


def get(name: str | Callable, **kwargs) -> Callable:
    """Resolve a loss by name (Keras-style names accepted), optionally with options.

    Names are matched ignoring case, ``_``, ``-`` and spaces, so
    ``"sparse_categorical_crossentropy"``, ``"SparseCategoricalCrossentropy"``
    and ``"sparse_categorical_cross_entropy"`` are the same loss. Short names:
    ``"mse"``, ``"mae"``, ``"bce"`` (also scikit-learn's ``"log_loss"``), ``"kld"``.
    Every classification loss takes logits by default, unlike Keras:
    ``get("binary_crossentropy", from_logits=False)`` for a model that ends in a sigmoid or softmax.

    Args:
        name: a loss name, or a callable (returned as is, with ``kwargs`` bound).
        **kwargs: keyword options bound with :func:`functools.partial`
            (``from_logits``, ``delta``, ``label_smoothing``, ...).

    Returns:
        ``loss(outputs, targets, *, weights=None) -> scalar``.

    Raises:
        ValueError: for an unknown name (with the closest known names) or an
            option the loss does not take.
        TypeError: if ``name`` is neither a string nor callable.

    Examples:
        >>> import jax.numpy as jnp
        >>> get("mse") is mean_squared_error
        True
        >>> loss = get("CategoricalCrossentropy", label_smoothing=0.1)
        >>> loss(jnp.array([[2.0, 0.0, -1.0]]), jnp.array([[1.0, 0.0, 0.0]]))
        Array(0.3365..., dtype=float32)
        >>> get("bce", from_logits=False)(jnp.array([0.9, 0.2]), jnp.array([1.0, 0.0]))
        Array(0.1642..., dtype=float32)
        >>> get("msee")
        Traceback (most recent call last):
        ...
        ValueError: unknown loss 'msee'; did you mean 'mse'? ...
    """
    if callable(name):
        fn = name
    elif isinstance(name, str):
        fn = _ALIASES.get(_key(name))
        if fn is None:
            close = difflib.get_close_matches(name.lower(), list(_NAMES), n=1, cutoff=0.6)
            hint = f"did you mean {close[0]!r}? " if close else ""
            known = ", ".join(_NAMES)
            raise ValueError(f"unknown loss {name!r}; {hint}known losses: {known}.")
    else:
        raise TypeError(f"a loss must be a name or a callable, got {type(name).__name__}.")
    if not kwargs:
        return fn
    try:
        inspect.signature(fn).bind_partial(**kwargs)
    except TypeError as err:
        raise ValueError(
            f"loss {getattr(fn, '__name__', fn)!r} takes no option among {sorted(kwargs)}: {err}."
        ) from None
    except ValueError:  # builtins without a signature
        pass
    return functools.partial(fn, **kwargs)
