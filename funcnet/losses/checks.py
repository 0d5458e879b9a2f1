"""Static checks that a model's last layer and its loss agree on logits vs probabilities.

Nothing here runs in the compiled step: :func:`check_model_loss` reads the
model's layer tree (names and children) and the loss's ``from_logits`` once,
in Python, before training.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping
from typing import Any

from funcnet.core import Layer, as_layer
from funcnet.losses._lookup import get
from funcnet.losses.classification import (
    binary_cross_entropy,
    binary_cross_entropy_with_logits,
    categorical_cross_entropy,
    focal,
    kl_divergence,
    sparse_categorical_cross_entropy,
)

__all__ = ["check_model_loss", "expects_logits"]

# funcnet's losses that take logits or probabilities; each one's default is read
# from its `from_logits` parameter (True where it has none: it always takes logits).
_CLASSIFICATION_LOSSES = (
    binary_cross_entropy,
    binary_cross_entropy_with_logits,
    categorical_cross_entropy,
    focal,
    kl_divergence,
    sparse_categorical_cross_entropy,
)

# Last layers, by normalised name (lower case, letters only, before any "("):
# those that output probabilities, and those whose outputs clearly are not.
_PROBABILITY_LAYERS = {"sigmoid": "jax.nn.sigmoid", "softmax": "jax.nn.softmax"}
_SCORE_LAYERS = ("dense", "conv", "convtranspose", "logsoftmax")


def _default_from_logits(fn: Callable) -> bool:
    param = inspect.signature(fn).parameters.get("from_logits")
    return True if param is None else bool(param.default)


def expects_logits(loss: Callable | str) -> bool | None:
    """Whether ``loss`` takes logits (``True``), probabilities (``False``), or is unknown.

    Read, from the outside in:

    1. a ``from_logits`` attribute (``True``/``False``) on the callable, which
       a user-written loss may set to opt into :func:`check_model_loss`;
    2. a ``from_logits`` keyword bound by :func:`functools.partial` (which is
       what ``losses.get(name, from_logits=False)`` returns);
    3. the default of funcnet's classification losses: ``True`` for every one.

    Args:
        loss: a loss callable or name (see :func:`funcnet.losses.get`).

    Returns:
        ``True``, ``False``, or ``None`` for a loss that says nothing (a
        regression loss, or a user-written loss without the attribute).

    Examples:
        >>> from funcnet import losses
        >>> expects_logits(losses.binary_cross_entropy)
        True
        >>> expects_logits(losses.get("categorical_crossentropy", from_logits=False))
        False
        >>> expects_logits(losses.mean_squared_error) is None
        True
    """
    if isinstance(loss, str):
        loss = get(loss)
    fn = loss
    while True:
        declared = getattr(fn, "from_logits", None)
        if isinstance(declared, bool):
            return declared
        if not isinstance(fn, functools.partial):
            break
        if isinstance(fn.keywords.get("from_logits"), bool):
            return fn.keywords["from_logits"]
        fn = fn.func
    if any(fn is known for known in _CLASSIFICATION_LOSSES):
        return _default_from_logits(fn)
    return None


def _output_layer(model: Layer) -> tuple[list[str], Layer]:
    """The layer that produces the model's outputs and its path, through ``serial``.

    Follows the last child of ``serial`` (positional or named) and the single
    child of ``shared``/``repeat`` wrappers; stops at any other layer.
    """
    path: list[str] = []
    layer = model
    while True:
        children = layer.children
        if layer.name == "serial" and children:
            last = list(children)[-1] if isinstance(children, Mapping) else len(children) - 1
            path.append(f"serial[{last}]")
            layer = children[last]
        elif layer.name.startswith(("shared", "repeat")) and len(children) == 1:
            path.append(layer.name.split(" ")[0])
            layer = next(iter(children.values())) if isinstance(children, Mapping) else children[0]
        else:
            return path, layer


def _kind(name: str) -> str:
    return "".join(c for c in name.split("(")[0].lower() if c.isalpha())


def _loss_name(loss: Callable) -> str:
    fn = loss
    while isinstance(fn, functools.partial):
        fn = fn.func
    return getattr(fn, "__name__", type(fn).__name__)


def check_model_loss(model: Any, loss: Callable | str, where: str) -> None:
    """Raise when the model's last layer and the loss disagree on logits vs probabilities.

    Every classification loss in :mod:`funcnet.losses` takes logits by default,
    so a model ending in a softmax or sigmoid (Keras style) would silently
    train on the wrong loss. This check reads the layer tree once, in Python
    (no cost in the compiled step), following ``serial``'s last child down to
    the output layer:

    - last layer ``Sigmoid``/``Softmax`` (or ``jax.nn.sigmoid``/``jax.nn.softmax``
      passed as a layer) and a loss that expects logits: error;
    - last layer ``Dense``, ``Conv``, ``ConvTranspose`` or ``LogSoftmax`` (whose
      outputs are never probabilities) and a loss with ``from_logits=False``: error.

    Anything else passes, including losses it knows nothing about (see
    :func:`expects_logits`) and models whose output layer it cannot tell
    (``parallel``, ``residual``, a user-written layer).

    Args:
        model: a :class:`~funcnet.Layer` (or a function used as one).
        loss: the loss callable or name.
        where: the caller's name, starting the message (``"train_step"``).

    Raises:
        ValueError: a one-line message naming the last layer's path and the fix.

    Examples:
        >>> import funcnet as fn
        >>> check_model_loss(fn.serial(fn.Dense(1)), "binary_cross_entropy", "fit")
        >>> check_model_loss(fn.serial(fn.Dense(1), fn.Sigmoid()), "bce", "fit")
        Traceback (most recent call last):
        ...
        ValueError: fit: the model's last layer `serial[1] Sigmoid` outputs probabilities, ...
    """
    loss = get(loss) if isinstance(loss, str) else loss
    takes_logits = expects_logits(loss)
    if takes_logits is None:
        return
    if not isinstance(model, Layer):
        if not callable(model):
            return
        model = as_layer(model)
    path, layer = _output_layer(model)
    at = " ".join([*path, layer.name])
    kind = _kind(layer.name)
    name = _loss_name(loss)
    if takes_logits and kind in _PROBABILITY_LAYERS:
        option = "binary_cross_entropy" if name.endswith("_with_logits") else name
        raise ValueError(
            f"{where}: the model's last layer `{at}` outputs probabilities, but the loss "
            f"`{name}` expects logits (from_logits=True, the default); drop the final "
            f"{layer.name} and apply `{_PROBABILITY_LAYERS[kind]}` to predictions, or pass "
            f"`losses.get('{option}', from_logits=False)`."
        )
    if not takes_logits and kind in _SCORE_LAYERS:
        raise ValueError(
            f"{where}: the loss `{name}` has from_logits=False and expects probabilities, but "
            f"the model's last layer `{at}` outputs scores, not probabilities; drop "
            "`from_logits=False` (losses take logits by default), or end the model in a "
            "sigmoid/softmax."
        )
