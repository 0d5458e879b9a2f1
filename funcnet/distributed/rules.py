"""Sharding rules: logical axis names on parameters, mapped to the axes of a mesh.

Every built-in layer says what the axes of its params mean, with a small
vocabulary of **logical axis names**:

=============  =================================================================
``embed``      the model's width (the residual stream, ``d_model``; a Dense's
               input by default)
``mlp``        the hidden width of an MLP (a Dense's output by default)
``heads``      attention query heads; ``kv_heads``: key/value heads (GQA)
``kv``         the size of one head (keys, queries and values alike)
``vocab``      rows of an embedding table (token ids)
``position``   rows of a learned position table
``conv_in``    ``conv_out``: a convolution kernel's input and output channels,
               ``window`` its spatial axes
``norm``       the scale and bias of a normalization layer
``rnn``        ``gates``: a recurrent cell's hidden size and its stacked gates
``layers``     the leading axis of params stacked by :func:`funcnet.repeat`
=============  =================================================================

``batch`` and ``length`` name activation axes. The presets map ``batch`` to
the axes ``fit``, ``evaluate`` and ``predict`` split every batch over (the
mesh's ``"data"``, and ``"fsdp"`` when it has one); those functions always
split it so, whatever the rules say.

**How the names are read.** :func:`logical_axes` runs ``jax.eval_shape`` of the
model's ``init`` (nothing is allocated) with the declaring switch of
:func:`funcnet.core.declaring_axes` on; only then does a leaf layer's ``init``
return its params wrapped by :func:`funcnet.core.declare`. In training and
inference params stay plain arrays with nothing attached, so every JAX
transformation and every checkpoint sees what it always saw. A param with
``k`` more axes than names was stacked ``k`` times (``repeat`` vmaps ``init``):
it gets ``k`` leading ``"layers"`` names. A param nobody declared (a
user-written layer) reads as all ``None``: replicated. A user-written layer
declares its own with ``funcnet.core.declare(params, {"w": ("embed", "mlp")})``
at the end of its ``init`` (any names; unknown ones only have to appear in the
rules to be sharded).

**Dense's default.** ``Dense(features)`` declares ``w`` as ``("embed", "mlp")``
(it widens the stream: column-parallel under tensor-parallel rules). The
Transformer blocks' MLP goes back to the stream with ``Dense(D, axes=("mlp",
"embed"))`` (row-parallel), so Megatron's pattern (one all-reduce per MLP)
comes out of the names; a plain MLP whose layers should alternate passes
``axes=`` itself. A default of ``(None, None)`` would have made every
undeclared model replicated under every rule set, hiding mistakes; with
``("embed", "mlp")`` an output head whose size does not divide the model axis
fails at setup with the fix (``axes=("embed", None)``).

**Rules** (:class:`Rules`) map each logical name to a mesh axis, a tuple of
mesh axes, or ``None`` (replicated); names not in the rules are replicated.
Presets: :func:`data_parallel` (everything replicated), :func:`fsdp_rules`
(``embed``, ``conv_out`` and ``gates`` split over the ``"fsdp"`` axis: each
param split once, over the axis that also splits the batch) and
:func:`tensor_parallel` (Megatron: ``mlp``, ``heads``, ``kv_heads`` and
``vocab`` over ``"model"``, the batch over ``"data"``). Per-path overrides
(``overrides={r"head/w$": P(None, "model")}``, regexes searched in the
:func:`funcnet.core.path_str` of each param) win over the names.

**Activations** get no sharding constraints from funcnet: with the params
placed by these rules and the batch split over ``"data"``, XLA's sharding
propagation already compiles Megatron's pattern. Measured on the
``bench/sharding.py`` LM (one block, 1x8 mesh): 8 all-reduces per training
step (attention output and MLP down projection forward, their input
gradients backward, the vocabulary-split embedding and softmax) and no
all-gather of an activation, so a constraint had nothing to remove
(``train_step(mesh=...)`` constrains only the batch and the train state).

Everything is checked at setup, before anything is compiled, with the
parameter's path in the message: a mesh axis that does not divide the
dimension, a logical name in the rules that neither the vocabulary nor the
model knows, a mesh axis used twice in one param's spec, a mesh axis the mesh
does not have.

Examples:
    >>> import jax, jax.numpy as jnp
    >>> import funcnet as fn
    >>> model = fn.serial(fn.Dense(8), jax.nn.relu, fn.Dense(4, axes=("mlp", "embed")))
    >>> names = logical_axes(model, jax.ShapeDtypeStruct((2, 4), jnp.float32))
    >>> names[0]["w"], names[2]["w"], names[2]["b"]
    (P('embed', 'mlp'), P('mlp', 'embed'), P('embed',))
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from funcnet.core import Declared, as_layer, declaring_axes, path_str, spec_of

__all__ = [
    "LAYERS",
    "LOGICAL_AXES",
    "Rules",
    "data_parallel",
    "fsdp_rules",
    "logical_axes",
    "opt_state_specs",
    "param_shardings",
    "param_specs",
    "resolve_rules",
    "tensor_parallel",
    "train_state_shardings",
]

LAYERS = "layers"
LOGICAL_AXES = (
    "batch",
    "length",
    "embed",
    "mlp",
    "heads",
    "kv_heads",
    "kv",
    "vocab",
    "position",
    "conv_in",
    "conv_out",
    "window",
    "norm",
    "rnn",
    "gates",
    LAYERS,
)
"""The logical axis names the built-in layers declare (and ``batch``/``length`` of activations)."""

Pytree = Any


class Rules:
    """Logical axis name -> mesh axis (or a tuple of them, or ``None``), plus path overrides.

    Args:
        mapping: ``{"mlp": "model", "heads": "model", "embed": None, "batch": "data"}``;
            names left out are replicated.
        overrides: ``{regex: PartitionSpec}``: a param whose path
            (:func:`funcnet.core.path_str`, e.g. ``"2/mlp/1/w"``) matches the
            regex (``re.search``) gets that spec of mesh axes instead; the
            first matching regex wins.

    Raises:
        TypeError: for a mapping value that is not a string, tuple of strings
            or None, or an override that is not a PartitionSpec (or None).

    Examples:
        >>> rules = Rules({"mlp": "model"}, overrides={r"^head/": P()})
        >>> rules.mesh_axes("mlp"), rules.mesh_axes("embed")
        ('model', None)
        >>> rules.override("head/w")
        P()
        >>> rules | {"embed": "fsdp"}
        Rules({'mlp': 'model', 'embed': 'fsdp'}, overrides={'^head/': P()})
    """

    def __init__(self, mapping: Mapping | None = None, *, overrides: Mapping | None = None):
        mapping = dict(mapping or {})
        for name, axes in mapping.items():
            ok = axes is None or isinstance(axes, str)
            ok = ok or (isinstance(axes, tuple) and all(isinstance(a, str) for a in axes))
            if not isinstance(name, str) or not ok:
                raise TypeError(
                    f"Rules: each rule maps a logical name to a mesh axis name, a tuple of them "
                    f"or None, got {name!r}: {axes!r}; e.g. `{{'mlp': 'model'}}`."
                )
        overrides = dict(overrides or {})
        for pattern, spec in overrides.items():
            if spec is None:
                overrides[pattern] = P()
            elif not isinstance(spec, P):
                raise TypeError(
                    f"Rules: the override for {pattern!r} must be a PartitionSpec of mesh axes "
                    f"(e.g. `P(None, 'model')`) or None, got {type(spec).__name__}."
                )
            re.compile(pattern)
        self.mapping = mapping
        self.overrides = overrides
        self._compiled = [(re.compile(k), v) for k, v in overrides.items()]

    def mesh_axes(self, name: str | None):
        """The mesh axes of a logical name (``None``: replicated)."""
        return None if name is None else self.mapping.get(name)

    def override(self, path: str) -> P | None:
        """The override spec of the param at ``path``, or None."""
        for pattern, spec in self._compiled:
            if pattern.search(path):
                return spec
        return None

    def __or__(self, other: Rules | Mapping) -> Rules:
        other = other if isinstance(other, Rules) else Rules(other)
        return Rules(
            {**self.mapping, **other.mapping}, overrides={**self.overrides, **other.overrides}
        )

    def __repr__(self) -> str:
        extra = f", overrides={self.overrides}" if self.overrides else ""
        return f"Rules({self.mapping}{extra})"


def data_parallel(data: str = "data") -> Rules:
    """Every param replicated, the batch over ``data``.

    Examples:
        >>> data_parallel()
        Rules({'batch': 'data'})
    """
    return Rules({"batch": data})


def fsdp_rules(fsdp: str = "fsdp", data: str = "data") -> Rules:
    """Fully sharded data parallel: each param split once over ``fsdp``, the batch over both.

    ``embed`` (every Dense, attention and embedding weight has one),
    ``conv_out`` and ``gates`` go to ``fsdp``; the compiler gathers a layer's
    params when it needs them. Use with a mesh ``("data", "fsdp")``
    (:func:`funcnet.distributed.make_mesh` with ``fsdp=k``).

    Examples:
        >>> fsdp_rules().mesh_axes("embed")
        'fsdp'
    """
    return Rules(
        {"embed": fsdp, "conv_out": fsdp, "gates": fsdp, "batch": (data, fsdp)},
    )


def tensor_parallel(model: str = "model", data: str = "data") -> Rules:
    """Megatron-style tensor parallelism over ``model``, data parallelism over ``data``.

    An MLP's first Dense is split by its output columns (``mlp``), its second
    by its input rows: each device computes its slice of the hidden layer and
    one all-reduce sums the second's partial outputs. Attention is split by
    heads (``heads``, ``kv_heads``), the embedding table and an LM head by
    ``vocab``. Everything else (norms, biases of row-parallel layers) is
    replicated.

    Examples:
        >>> sorted(tensor_parallel().mapping.items())  # doctest: +NORMALIZE_WHITESPACE
        [('batch', 'data'), ('heads', 'model'), ('kv_heads', 'model'), ('mlp', 'model'),
         ('vocab', 'model')]
    """
    return Rules(
        {"mlp": model, "heads": model, "kv_heads": model, "vocab": model, "batch": data},
    )


def resolve_rules(rules: Rules | Mapping, where: str = "rules") -> Rules:
    """``rules`` as :class:`Rules` (a dict becomes ``Rules(dict)``).

    Examples:
        >>> resolve_rules({"mlp": "model"}).mesh_axes("mlp")
        'model'
    """
    if isinstance(rules, Rules):
        return rules
    if isinstance(rules, Mapping):
        return Rules(rules)
    raise TypeError(
        f"{where}: sharding rules must be a `distributed.Rules` or a dict of logical name -> "
        f"mesh axis, got {type(rules).__name__}; e.g. `distributed.tensor_parallel()`."
    )


# ----------------------------------------------------------------------------- reading names


def _is_declared(x) -> bool:
    return isinstance(x, Declared)


def _names_of(leaf) -> P:
    if not isinstance(leaf, Declared):
        return P(*([None] * len(leaf.shape)))
    extra = len(leaf.value.shape) - len(leaf.names)  # stacked by `repeat` (vmap of init)
    return P(*([LAYERS] * extra), *leaf.names)


def _declared_params(model, inputs) -> Pytree:
    layer = as_layer(model)

    def init(key, x):  # a fresh function: JAX caches traces by function, not by our switch
        return layer.init(key, x)

    with declaring_axes():
        params, _ = jax.eval_shape(init, jax.random.key(0), spec_of(inputs))
    return params


def logical_axes(model, inputs) -> Pytree:
    """The logical names of every param's axes, as a params-shaped tree of ``PartitionSpec``.

    Computed with ``jax.eval_shape`` of ``model.init`` (nothing allocated).
    Stacked params (``repeat``) get leading ``"layers"`` names; params no
    layer declared read as all ``None``.

    Args:
        model: a layer (or plain function).
        inputs: example inputs (arrays or ``jax.ShapeDtypeStruct``), as for ``init``.

    Returns:
        A pytree shaped like the params, each leaf a ``PartitionSpec`` of
        logical names (one per axis).

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> import funcnet as fn
        >>> stack = fn.repeat(fn.Dense(4), 3)
        >>> logical_axes(stack, jax.ShapeDtypeStruct((2, 4), jnp.float32))
        {'b': P('layers', 'mlp'), 'w': P('layers', 'embed', 'mlp')}
    """
    return jax.tree.map(_names_of, _declared_params(model, inputs), is_leaf=_is_declared)


# ----------------------------------------------------------------------------- checking rules


def _as_tuple(axes) -> tuple:
    if axes is None:
        return ()
    return (axes,) if isinstance(axes, str) else tuple(axes)


def _check_known_names(rules: Rules, declared: set) -> None:
    known = set(LOGICAL_AXES) | declared
    for name in rules.mapping:
        if name not in known:
            close = difflib.get_close_matches(name, sorted(known), n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ValueError(
                f"sharding rules: unknown logical axis name {name!r}: neither the vocabulary "
                f"{list(LOGICAL_AXES)} nor any param of the model "
                f"{sorted(n for n in declared if n not in LOGICAL_AXES)} uses it.{hint} Fix the "
                "name, or declare it in the layer with `funcnet.core.declare`."
            )


def _spec_for(path: str, shape: tuple, names: P, rules: Rules, mesh: Mesh) -> P:
    """The mesh-axes spec of one param, checked: axes in the mesh, used once, dividing."""
    override = rules.override(path)
    if override is not None:
        if len(override) > len(shape):
            raise ValueError(
                f"sharding rules: the override for param {path!r} of shape {shape} has "
                f"{len(override)} entries {override}; give at most one per axis."
            )
        entries = [*override, *([None] * (len(shape) - len(override)))]
        source = ["override"] * len(shape)
    else:
        entries = [rules.mesh_axes(n) for n in names]
        source = [repr(n) for n in names]
    used: dict[str, str] = {}
    for dim, (size, axes, what) in enumerate(zip(shape, entries, source)):
        parts = _as_tuple(axes)
        for axis in parts:
            if axis not in mesh.axis_names:
                raise ValueError(
                    f"sharding rules: param {path!r} (axes {tuple(names)}): {what} maps to mesh "
                    f"axis {axis!r}, but the mesh has axes {mesh.axis_names}. Map it to one of "
                    "these or to None, or build the mesh with that axis."
                )
            if axis in used:
                raise ValueError(
                    f"sharding rules: param {path!r} (axes {tuple(names)}): mesh axis {axis!r} "
                    f"is used twice, by {used[axis]} and {what}; a mesh axis can split only one "
                    "axis of an array. Map one of them to None, or override the path."
                )
            used[axis] = what
        split = int(np.prod([mesh.shape[a] for a in parts])) if parts else 1
        if size % split:
            raise ValueError(
                f"sharding rules: param {path!r} of shape {shape}: axis {dim} ({what} -> mesh "
                f"axes {parts}, {split} devices) does not divide its size {size}. Map {what} to "
                f"None, override the path (`overrides={{{path!r}: P(...)}}`), or give the layer "
                "other `axes=` (e.g. `Dense(n, axes=('embed', None))`)."
            )
    return P(*entries)


def param_specs(model, inputs, mesh: Mesh, rules: Rules | Mapping) -> Pytree:
    """The ``PartitionSpec`` (mesh axes) of every param of ``model`` under ``rules``, checked.

    Args:
        model: a layer.
        inputs: example inputs (arrays or ``jax.ShapeDtypeStruct``).
        mesh: the mesh the params will live on.
        rules: :class:`Rules` or a dict.

    Returns:
        A params-shaped tree of ``PartitionSpec``.

    Raises:
        ValueError: naming the param's path, for a mesh axis that does not
            divide the dimension, an unknown logical name in the rules, a mesh
            axis used twice in one param's spec, or one the mesh lacks.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> import funcnet as fn
        >>> mesh = jax.make_mesh((1, 1), ("data", "model"))
        >>> specs = param_specs(fn.Dense(4), jax.ShapeDtypeStruct((2, 3), jnp.float32), mesh,
        ...                     tensor_parallel())
        >>> specs["w"], specs["b"]
        (P(None, 'model'), P('model',))
    """
    rules = resolve_rules(rules, "param_specs")
    declared = _declared_params(model, inputs)
    leaves, treedef = jax.tree_util.tree_flatten_with_path(declared, is_leaf=_is_declared)
    names = [_names_of(leaf) for _, leaf in leaves]
    _check_known_names(rules, {n for spec in names for n in spec if n is not None})
    specs = [
        _spec_for(path_str(path), tuple(spec_of(leaf).shape), n, rules, mesh)
        for (path, leaf), n in zip(leaves, names, strict=True)
    ]
    return jax.tree.unflatten(treedef, specs)


def param_shardings(model, inputs, mesh: Mesh, rules: Rules | Mapping) -> Pytree:
    """:func:`param_specs` as ``NamedSharding`` on ``mesh``.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> import funcnet as fn
        >>> mesh = jax.make_mesh((1, 1), ("data", "model"))
        >>> s = param_shardings(fn.Dense(4), jnp.zeros((2, 3)), mesh, tensor_parallel())
        >>> s["w"].spec
        P(None, 'model')
    """
    specs = param_specs(model, inputs, mesh, rules)
    return jax.tree.map(lambda s: NamedSharding(mesh, s), specs, is_leaf=lambda x: isinstance(x, P))


def opt_state_specs(optimizer: optax.GradientTransformation, params, specs) -> Pytree:
    """``PartitionSpec``s of ``optimizer.init(params)``: params-shaped parts get the params'
    specs (``optax.tree_map_params``), everything else (counts, scalars) is replicated.

    Args:
        optimizer: the optax transformation.
        params: the params (arrays or ``jax.ShapeDtypeStruct``).
        specs: a params-shaped tree of ``PartitionSpec``.

    Examples:
        >>> import jax.numpy as jnp, optax
        >>> params = {"w": jnp.zeros((4, 2))}
        >>> s = opt_state_specs(optax.adam(1e-3), params, {"w": P(None, "model")})
        >>> s[0].mu["w"], s[0].count
        (P(None, 'model'), P())
    """
    shape = jax.eval_shape(optimizer.init, spec_of(params))
    return optax.tree_map_params(
        optimizer,
        lambda _, spec: spec,
        shape,
        specs,
        transform_non_params=lambda _: P(),
        is_leaf=lambda x: isinstance(x, P),
    )


def train_state_shardings(ts_shape, optimizer, model, inputs, mesh: Mesh, rules) -> Pytree:
    """``NamedSharding``s of a ``TrainState`` (or its shapes): params and their optimizer
    moments by ``rules``, the rest (step, model state, key, counts) replicated.

    Examples:
        >>> import jax, jax.numpy as jnp, optax
        >>> import funcnet as fn
        >>> mesh = jax.make_mesh((1, 1), ("data", "model"))
        >>> x = jnp.zeros((2, 3))
        >>> ts = jax.eval_shape(lambda: fn.TrainState.create(fn.Dense(4), optax.sgd(0.1),
        ...                                                  jax.random.key(0), x))
        >>> s = train_state_shardings(ts, optax.sgd(0.1), fn.Dense(4), x, mesh, tensor_parallel())
        >>> s.params["w"].spec, s.step.spec
        (P(None, 'model'), P())
    """
    specs = param_specs(model, inputs, mesh, rules)
    opt = opt_state_specs(optimizer, ts_shape.params, specs)
    rest = jax.tree.map(lambda _: P(), ts_shape)
    tree = rest._replace(params=specs, opt_state=opt)
    return jax.tree.map(lambda s: NamedSharding(mesh, s), tree, is_leaf=lambda x: isinstance(x, P))
