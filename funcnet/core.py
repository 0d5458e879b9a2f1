"""The one abstraction: a layer is a pair of pure functions over pytrees.

A :class:`Layer` is a NamedTuple ``(init, apply, name, children)``:

- ``init(key, inputs) -> (params, state)`` reads only the shapes and dtypes of
  ``inputs`` (a pytree of arrays or :class:`jax.ShapeDtypeStruct`), so
  ``jax.eval_shape(layer.init, key, spec)`` gives the parameter shapes without
  allocating anything.
- ``apply(params, state, inputs, *, key=None, train=False) -> (outputs, state)``
  is pure; ``key`` is needed only by layers that draw random numbers in that
  mode (``Dropout`` with ``train=True``).

``params`` is what gets differentiated; ``state`` is what changes without
gradients (BatchNorm statistics). A layer with neither returns ``()``.

Errors caused by the model or its inputs are :class:`LayerError` (a
``ValueError``) whose message starts with the path of the layer in the model,
e.g. ``serial[3] Dense(10): expected inputs with last dimension 3136, got
shape (128, 2304)``. Every error funcnet defines derives from
:class:`FuncnetError`, so ``except funcnet.FuncnetError`` catches them all.

A :class:`Layer` is also a pytree with no leaves, so a model can be an
argument of ``jax.jit``, ``jax.vmap`` or ``jax.grad`` and sit inside any
pytree. Paths into pytrees of params are written by :func:`path_str`
(``"encoder/1/b"``), the one spelling used by training, checkpoints, exports
and summaries.

Parameters carry no metadata in normal use: they are plain arrays. Only
while :func:`declaring_axes` is on (``funcnet.distributed.logical_axes``
switches it on around a ``jax.eval_shape`` of ``init``) does a leaf layer's
:func:`declare` wrap each param as a :class:`Declared` node that names what
its axes mean (``("embed", "mlp")``); :func:`undeclare` (called by
:func:`spec_of`, hence by :func:`output_spec`) strips the wrappers again.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple, Protocol

import jax
import jax.numpy as jnp

from funcnet.axes import Declared, declare, declaring_axes, undeclare

__all__ = [
    "ApplyFn",
    "Declared",
    "FuncnetError",
    "InitFn",
    "Layer",
    "LayerError",
    "Params",
    "PRNGKey",
    "State",
    "as_layer",
    "call_with_path",
    "declare",
    "declaring_axes",
    "init_spec",
    "output_spec",
    "path_str",
    "prepend_path",
    "spec_of",
    "stateless",
    "tree_paths",
    "undeclare",
]

Params = Any
State = Any
PRNGKey = jax.Array
Pytree = Any


class InitFn(Protocol):
    """``init(key, inputs) -> (params, state)``; reads only shapes and dtypes of ``inputs``."""

    def __call__(self, key: PRNGKey, inputs: Pytree) -> tuple[Params, State]: ...


class ApplyFn(Protocol):
    """``apply(params, state, inputs, *, key=None, train=False) -> (outputs, state)``."""

    def __call__(
        self,
        params: Params,
        state: State,
        inputs: Pytree,
        *,
        key: PRNGKey | None = None,
        train: bool = False,
    ) -> tuple[Pytree, State]: ...


class FuncnetError(Exception):
    """The base of every error funcnet defines (:class:`LayerError`, ``CheckpointError``, ...).

    Each subclass also derives from the built-in exception it refines (e.g.
    ``ValueError``), so code that catches those keeps working.

    Examples:
        >>> issubclass(LayerError, FuncnetError) and issubclass(LayerError, ValueError)
        True
    """


class LayerError(FuncnetError, ValueError):
    """A model or its inputs are wrong; the message starts with the layer's path.

    ``path`` is the list of places from the outermost combinator to the layer
    that raised (``["serial[3]", "Dense(10)"]``) and ``reason`` the bare message.
    Combinators add their part of the path as the error passes through them.

    Examples:
        >>> raise LayerError("expected a tuple", path=["parallel"])
        Traceback (most recent call last):
        ...
        funcnet.core.LayerError: parallel: expected a tuple
    """

    def __init__(self, reason: str, *, path: Sequence[str] = ()):
        self.reason = reason
        self.path = list(path)
        super().__init__(self._message())

    def _message(self) -> str:
        return f"{' '.join(self.path)}: {self.reason}" if self.path else self.reason

    def prepend(self, part: str) -> LayerError:
        self.path.insert(0, part)
        self.args = (self._message(),)
        return self

    def __str__(self) -> str:
        return self._message()


_NOTE_PREFIX = "funcnet: raised inside "


def prepend_path(err: BaseException, part: str) -> None:
    """Add ``part`` to the layer path of ``err``, in place.

    A :class:`LayerError` gets it in its message; any other exception gets (or
    updates) a note ``"funcnet: raised inside <path>"``, so foreign errors
    (a ``TypeError`` from a user's function) still say where they came from.

    Args:
        err: the exception passing through a combinator.
        part: the combinator's part of the path, e.g. ``"serial[3]"``.

    Examples:
        >>> err = LayerError("bad width", path=["Dense(3)"])
        >>> prepend_path(err, "serial[1]")
        >>> str(err)
        'serial[1] Dense(3): bad width'
        >>> other = TypeError("unsupported operand")
        >>> prepend_path(other, "serial[0]")
        >>> other.__notes__
        ['funcnet: raised inside serial[0]']
    """
    if isinstance(err, LayerError):
        err.prepend(part)
        return
    path = [part, *getattr(err, "_funcnet_path", [])]
    try:
        err._funcnet_path = path  # type: ignore[attr-defined]
    except AttributeError:  # exceptions with __slots__
        return
    notes = [n for n in getattr(err, "__notes__", []) if not n.startswith(_NOTE_PREFIX)]
    notes.append(_NOTE_PREFIX + " ".join(path))
    err.__notes__ = notes


def call_with_path(part: str, fn: Callable, *args, **kwargs):
    """``fn(*args, **kwargs)``; an exception passing through gets ``part`` added to its path.

    This is how a combinator names its children in errors: it calls each
    child's ``init``/``apply`` through this function with its own part of the
    path (``"serial[3]"``).

    Args:
        part: the caller's part of the layer path.
        fn: the function to call; ``args`` and ``kwargs`` are passed to it.

    Returns:
        What ``fn`` returns.

    Examples:
        >>> def child(x):
        ...     raise LayerError("expected a matrix", path=["Dense(2)"])
        >>> call_with_path("serial[1]", child, 3)
        Traceback (most recent call last):
        ...
        funcnet.core.LayerError: serial[1] Dense(2): expected a matrix
    """
    try:
        return fn(*args, **kwargs)
    except Exception as err:
        prepend_path(err, part)
        raise


class _Named:
    """Wraps a layer's init/apply so that an error raised by the layer itself carries its name."""

    __slots__ = ("__weakref__", "fn", "name")

    def __init__(self, fn: Callable, name: str):
        self.fn = fn
        self.name = name

    def __call__(self, *args, **kwargs):
        try:
            return self.fn(*args, **kwargs)
        except LayerError as err:
            if not err.path:
                err.prepend(self.name)
            raise
        except Exception as err:
            if not getattr(err, "_funcnet_path", None):
                prepend_path(err, self.name)
            raise

    def __repr__(self) -> str:
        return f"<{self.name} {getattr(self.fn, '__name__', 'fn')}>"


class _LayerTuple(NamedTuple):
    init: InitFn
    apply: ApplyFn
    name: str
    children: tuple | Mapping


class Layer(_LayerTuple):
    """A model piece: ``init(key, inputs) -> (params, state)`` and ``apply(...)``.

    Args:
        init: ``(key, inputs) -> (params, state)``; must read only shapes and
            dtypes of ``inputs``.
        apply: ``(params, state, inputs, *, key=None, train=False) -> (outputs, state)``.
        name: a short readable description (``"Dense(10)"``), used by ``repr``,
            summaries and error paths.
        children: the sub-layers of a combinator (a tuple or a dict), for
            summaries and ``repr``; ``()`` for a leaf layer.

    A user-written layer is just these two functions. Raise :class:`LayerError`
    for bad inputs: funcnet adds the layer's name and path to the message.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> def init(key, x):
        ...     return {"scale": jnp.ones(x.shape[-1:], x.dtype)}, ()
        >>> def apply(params, state, x, *, key=None, train=False):
        ...     return x * params["scale"], state
        >>> scale = Layer(init, apply, "Scale")
        >>> params, state = scale.init(jax.random.key(0), jnp.zeros((2, 3)))
        >>> jax.tree.map(jnp.shape, params)
        {'scale': (3,)}
        >>> scale
        Scale

    A layer is a pytree with no leaves (its functions are static), equal to
    and hashed like another exactly when both have the same ``init`` and
    ``apply`` function objects. So a model can be an argument of a jitted
    function (it is compiled once per model object), of ``vmap`` or ``grad``,
    or sit inside a dict of things passed around:

        >>> f = jax.jit(lambda model, p, x: model.apply(p, (), x)[0])
        >>> f(scale, params, jnp.ones((2, 3))).shape
        (2, 3)
        >>> jax.tree.leaves({"model": scale, "params": params})
        [Array([1., 1., 1.], dtype=float32)]
    """

    __slots__ = ()

    def __new__(cls, init: InitFn, apply: ApplyFn, name: str | None = None, children=()):
        if not callable(init) or not callable(apply):
            raise TypeError(
                f"Layer(init, apply) needs two callables, got {type(init).__name__} and "
                f"{type(apply).__name__}."
            )
        if name is None:
            name = getattr(apply, "__name__", "Layer")
        if not isinstance(init, _Named):
            init = _Named(init, name)
        if not isinstance(apply, _Named):
            apply = _Named(apply, name)
        return super().__new__(cls, init, apply, name, children)

    def __repr__(self) -> str:
        if not self.children:
            return self.name
        if isinstance(self.children, Mapping):
            inner = ", ".join(f"{k}={v!r}" for k, v in self.children.items())
        else:
            inner = ", ".join(repr(c) for c in self.children)
        return f"{self.name}({inner})"

    # Identity of the two functions, not tuple equality: `children` may be an (unhashable)
    # dict, and two layers built alike from different closures are different models.
    # (Never NotImplemented: Python would fall back to tuple equality.)
    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Layer):
            return False
        return self.init is other.init and self.apply is other.apply

    def __ne__(self, other: object) -> bool:
        return not self.__eq__(other)

    def __hash__(self) -> int:
        return hash((self.init, self.apply))


def _flatten_layer(layer: Layer) -> tuple[tuple, Layer]:
    return (), layer


def _unflatten_layer(layer: Layer, leaves: tuple) -> Layer:
    del leaves
    return layer


# A Layer is a pytree node with no leaves (its aux data is the layer itself), not the
# NamedTuple node JAX would make of it, whose functions would be leaves that jit rejects.
jax.tree_util.register_pytree_node(Layer, _flatten_layer, _unflatten_layer)


def _callable_name(fn: Callable) -> str:
    name = getattr(fn, "__name__", None)
    if name is None and hasattr(fn, "func"):  # functools.partial
        name = getattr(fn.func, "__name__", None)
    return name or type(fn).__name__


def as_layer(fn: Layer | Callable[[Any], Any]) -> Layer:
    """Return ``fn`` as a :class:`Layer`; a plain function ``x -> y`` becomes parameterless.

    Combinators call this on every child, so ``jax.nn.relu``, ``jnp.tanh`` or a
    lambda may stand wherever a layer is expected.

    Raises:
        TypeError: if ``fn`` is neither a Layer nor callable.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> relu = as_layer(jax.nn.relu)
        >>> relu
        relu
        >>> relu.init(jax.random.key(0), jnp.zeros(3))
        ((), ())
        >>> relu.apply((), (), jnp.array([-1.0, 2.0]))
        (Array([0., 2.], dtype=float32), ())
    """
    if isinstance(fn, Layer):
        return fn
    if isinstance(fn, tuple) and len(fn) in (2, 3, 4) and all(callable(f) for f in fn[:2]):
        return Layer(*fn)
    if not callable(fn):
        raise TypeError(
            f"expected a Layer or a function `x -> y`, got {type(fn).__name__} ({fn!r}). "
            "Build layers with their constructors, e.g. `Dense(10)`, not `Dense`."
        )
    name = getattr(fn, "__name__", "")
    if isinstance(fn, type) or (
        getattr(fn, "__module__", "").startswith("funcnet.") and name[:1].isupper()
    ):
        raise TypeError(
            f"got `{name}` itself where a layer is expected; call it to build the layer, "
            f"e.g. `{name}(...)`."
        )

    return stateless(_callable_name(fn), fn)


def stateless(
    name: str,
    forward: Callable[[Pytree], Pytree],
    check: Callable[[Pytree], Any] | None = None,
) -> Layer:
    """A layer with no params, no state and no randomness: ``inputs -> forward(inputs)``.

    ``init`` runs ``check(inputs)`` (when given) so that bad inputs fail at
    ``init``, before anything runs, and returns ``((), ())``; ``apply`` ignores
    params, key and ``train`` and returns ``(forward(inputs), state)``. Raise
    :class:`LayerError` in ``check`` or ``forward``: the message gets ``name``
    and the layer's path.

    Args:
        name: the layer's description (``"Flatten"``).
        forward: the computation, on the inputs (arrays or, at ``init``-time
            shape checks, whatever ``jax.eval_shape`` passes).
        check: an optional function of the inputs that raises for bad ones;
            its result is ignored.

    Returns:
        A :class:`Layer`.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> def check(x):
        ...     if x.ndim != 2:
        ...         raise LayerError(f"expected a matrix, got shape {x.shape}.")
        >>> transpose = stateless("Transpose", lambda x: x.T, check)
        >>> transpose.init(jax.random.key(0), jnp.zeros((2, 3)))
        ((), ())
        >>> transpose.apply((), (), jnp.zeros((2, 3)))[0].shape
        (3, 2)
        >>> transpose.init(jax.random.key(0), jnp.zeros(3))
        Traceback (most recent call last):
        ...
        funcnet.core.LayerError: Transpose: expected a matrix, got shape (3,).
    """

    def init(key, inputs):
        del key
        if check is not None:
            check(inputs)
        return (), ()

    def apply(params, state, inputs, *, key=None, train=False):
        del params, key, train
        return forward(inputs), state

    return Layer(init, apply, name)


def spec_of(tree: Pytree) -> Pytree:
    """Replace every array-like leaf of ``tree`` by a :class:`jax.ShapeDtypeStruct`.

    :class:`Declared` wrappers are dropped (only the shapes matter here).

    Examples:
        >>> spec_of({"x": jnp.zeros((2, 3))})
        {'x': ShapeDtypeStruct(shape=(2, 3), dtype=float32)}
    """

    def leaf(x):
        if isinstance(x, jax.ShapeDtypeStruct):
            return x
        return jax.ShapeDtypeStruct(jnp.shape(x), jnp.result_type(x))

    return jax.tree.map(leaf, undeclare(tree))


def init_spec(layer: Layer | Callable, inputs: Pytree) -> tuple[Params, State]:
    """The ``(params, state)`` shapes of ``layer`` for ``inputs``, allocating nothing.

    Examples:
        >>> from funcnet import Dense
        >>> params, state = init_spec(Dense(4), jax.ShapeDtypeStruct((8, 3), jnp.float32))
        >>> params["w"]
        ShapeDtypeStruct(shape=(3, 4), dtype=float32)
    """
    layer = as_layer(layer)
    # A fresh function each call: JAX caches traces by function, and `init`'s output
    # depends on `declaring_axes` (a trace cached in one mode must not serve the other).
    return jax.eval_shape(lambda k, x: layer.init(k, x), jax.random.key(0), spec_of(inputs))


def output_spec(
    layer: Layer | Callable,
    inputs: Pytree,
    params: Params | None = None,
    state: State | None = None,
) -> Pytree:
    """The output shapes and dtypes of ``layer`` on ``inputs``, computed with ``jax.eval_shape``.

    Args:
        layer: a layer or a plain function.
        inputs: a pytree of arrays or :class:`jax.ShapeDtypeStruct`.
        params, state: the layer's parameters; when omitted they are created
            abstractly with ``init`` (nothing is allocated).

    Returns:
        A pytree of :class:`jax.ShapeDtypeStruct` shaped like the outputs.

    Examples:
        >>> from funcnet import Dense, serial
        >>> model = serial(Dense(16), jax.nn.relu, Dense(3))
        >>> output_spec(model, jax.ShapeDtypeStruct((32, 8), jnp.float32))
        ShapeDtypeStruct(shape=(32, 3), dtype=float32)
    """
    layer = as_layer(layer)
    if params is None or state is None:
        p, s = init_spec(layer, inputs)
        params = p if params is None else params
        state = s if state is None else state

    def run(p, s, x):
        return layer.apply(p, s, x)[0]

    return jax.eval_shape(run, spec_of(params), spec_of(state), spec_of(inputs))


def path_str(path: Sequence) -> str:
    """A pytree key path as ``"0/w"`` or ``"encoder/1/b"`` (used for path patterns).

    Examples:
        >>> tree_paths(({"w": 1, "b": 2}, (), {"w": 3}))
        ['0/b', '0/w', '2/w']
    """
    parts = []
    for entry in path:
        for attr in ("key", "idx", "name"):
            if hasattr(entry, attr):
                parts.append(str(getattr(entry, attr)))
                break
        else:
            parts.append(str(entry))
    return "/".join(parts)


def tree_paths(tree: Any) -> list[str]:
    """The :func:`path_str` of every leaf of ``tree``, in leaf order."""
    return [path_str(p) for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]
