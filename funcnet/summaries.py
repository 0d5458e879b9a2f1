"""Model summaries from shapes alone: per-layer output shapes, parameter counts and FLOPs.

:func:`summary` creates the parameters abstractly (``jax.eval_shape`` of
``init``), so nothing is allocated, and walks the model's
:attr:`~funcnet.core.Layer.children`:

- ``serial`` (positional or named) and ``residual`` pass each child's output
  to the next; ``fanout`` and ``concat`` give every child the same input;
  ``parallel`` gives child ``i`` input ``i``; ``repeat(n)`` shows its block
  once, with the parameters of one copy. These are expanded recursively.
- Any other layer with children (``shared``, user-written combinators) is one
  row described by its ``repr``: how it feeds its children is not known.

FLOPs come from XLA's cost analysis of each row's compiled ``apply``
(inference mode) for the given input shapes, so they count what XLA counts
(a multiply-add as 2, elementwise arithmetic too, transcendentals such as
``tanh`` not at all) and need one compilation per row (``flops=False`` skips
them). XLA counts the body of a loop once, so a ``repeat(n)`` row (and every
row around it) is corrected to ``n`` times its block; loops inside other
layers (a user's ``lax.scan``, recurrent layers) are counted once. FLOPs per
example divide the total by the batch size, the leading dimension of the
first input leaf.

Examples:
    >>> import jax, jax.numpy as jnp
    >>> from funcnet import Dense, serial
    >>> model = serial(Dense(16), jax.nn.relu, Dense(3))
    >>> info = summary(model, jax.ShapeDtypeStruct((32, 8), jnp.float32), flops=False)
    path  layer        output    params  state
    ----  -----------  --------  ------  -----
          serial       (32, 3)   195     0
    0       Dense(16)  (32, 16)  144     0
    1       relu       (32, 16)  0       0
    2       Dense(3)   (32, 3)   51      0
    <BLANKLINE>
    params: 195 (780 B)  state: 0 (0 B)
    >>> info.params, info.rows[1].output
    (195, ShapeDtypeStruct(shape=(32, 16), dtype=float32))
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import numpy as np

from funcnet._checks import fmt_shape
from funcnet.core import Layer, as_layer, init_spec, output_spec, path_str, spec_of

__all__ = ["Summary", "SummaryRow", "param_count", "summary"]


class SummaryRow(NamedTuple):
    """One layer of a :func:`summary`.

    Attributes:
        path: where the layer's params are (``""`` for the model, ``"1/encoder"``),
            as :func:`funcnet.core.path_str` spells param paths.
        depth: nesting depth (0 for the model).
        description: the layer's name (``"Dense(10)"``), or its ``repr`` when
            its children are not expanded.
        output: its output spec (a pytree of :class:`jax.ShapeDtypeStruct`),
            or ``None`` when its input cannot be derived.
        params: number of parameters (elements).
        state: number of state elements.
        flops: XLA's FLOP count for the whole batch, or ``None``.
        sharding: with a mesh and rules, each param's placement (``"w(·,model)
            b(model)"``: the mesh axes splitting each axis, ``·`` for none) on
            a leaf layer's row (``"11 of 16 params split"`` for a row of more
            than 4 params), ``""`` elsewhere; else ``None``.
        device_bytes: with a mesh and rules, the bytes of the row's params
            held by each device; else ``None``.
    """

    path: str
    depth: int
    description: str
    output: Any
    params: int
    state: int
    flops: float | None
    sharding: str | None = None
    device_bytes: int | None = None


class Summary(NamedTuple):
    """The result of :func:`summary`; ``str()`` of it is the printed table.

    Attributes:
        rows: the :class:`SummaryRow` of every layer, the model first.
        params: total parameters.
        state: total state elements.
        param_bytes: bytes of the parameters.
        state_bytes: bytes of the state.
        flops: FLOPs of one call on the given inputs (``None`` without).
        flops_per_example: ``flops / batch_size``.
        batch_size: the leading dimension of the first input leaf (``None`` for a scalar).
        device_param_bytes: with a mesh and rules, the parameter bytes each
            device holds; else ``None``.
    """

    rows: list[SummaryRow]
    params: int
    state: int
    param_bytes: int
    state_bytes: int
    flops: float | None
    flops_per_example: float | None
    batch_size: int | None
    device_param_bytes: int | None = None

    @property
    def bytes(self) -> int:
        """Bytes of params and state together."""
        return self.param_bytes + self.state_bytes

    def __str__(self) -> str:
        return _table(self)


def _leaf_size(x, where: str) -> tuple[int, int]:
    """(elements, bytes) of one leaf: an array, a ShapeDtypeStruct or a Python number."""
    if hasattr(x, "shape") and hasattr(x, "dtype"):
        n = math.prod(x.shape)
        itemsize = getattr(x.dtype, "itemsize", None)
        if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            itemsize = math.prod(jax.eval_shape(jax.random.key_data, x).shape[x.ndim :]) * 4
        return n, n * int(itemsize or 0)
    if isinstance(x, (bool, int, float, complex)):
        return 1, np.asarray(x).itemsize
    raise TypeError(
        f"{where}: expected a pytree of arrays or jax.ShapeDtypeStructs, got a leaf of type "
        f"{type(x).__name__}; pass the params returned by `init` (or `init_spec`)."
    )


def _size(tree, where: str) -> tuple[int, int]:
    total = nbytes = 0
    for leaf in jax.tree.leaves(tree):
        n, b = _leaf_size(leaf, where)
        total += n
        nbytes += b
    return total, nbytes


def param_count(params: Any) -> int:
    """The number of parameters (array elements) in a pytree of arrays or specs.

    Raises:
        TypeError: for a leaf that is neither array-like nor a number.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> from funcnet import Dense, serial, init_spec
        >>> params, _ = init_spec(serial(Dense(16), Dense(3)), jnp.zeros((1, 8)))
        >>> param_count(params)
        195
    """
    return _size(params, "param_count")[0]


def _flops(layer: Layer, params, state, inputs) -> float | None:
    def run(p, s, x):
        return layer.apply(p, s, x)[0]

    try:
        cost = jax.jit(run).lower(params, state, inputs).compile().cost_analysis()
    except (NotImplementedError, RuntimeError):  # backends without cost analysis
        return None
    return _flops_of(cost)


def _flops_of(cost) -> float | None:
    """``flops`` of a cost analysis: a dict (newer jax) or a list of dicts (older jax)."""
    if isinstance(cost, Mapping):
        cost = [cost]
    dicts = [c for c in cost or () if isinstance(c, Mapping)]
    if not dicts:
        return None
    return float(sum(max(float(c.get("flops", 0.0)), 0.0) for c in dicts))


def _labels(children) -> list:
    return list(children) if isinstance(children, Mapping) else list(range(len(children)))


def _aligned(tree, labels: list) -> bool:
    if labels and isinstance(labels[0], str):
        return isinstance(tree, Mapping) and set(tree) == set(labels)
    return isinstance(tree, (tuple, list)) and len(tree) == len(labels)


def _axes_str(spec) -> str:
    parts = []
    for entry in spec:
        if entry is None:
            parts.append("·")
        else:
            parts.append("+".join((entry,) if isinstance(entry, str) else entry))
    return "(" + ",".join(parts) + ")"


def _placement(params, specs, mesh, leaf_row: bool) -> tuple[str | None, int | None]:
    """A row's sharding text (leaf layers only) and parameter bytes per device."""
    if specs is None:
        return None, None
    is_spec = lambda x: isinstance(x, jax.sharding.PartitionSpec)
    flat = jax.tree_util.tree_flatten_with_path(specs, is_leaf=is_spec)[0]
    total, texts = 0, []
    for (path, spec), leaf in zip(flat, jax.tree.leaves(params), strict=True):
        split = 1
        for entry in spec:
            for axis in () if entry is None else (entry,) if isinstance(entry, str) else entry:
                split *= mesh.shape[axis]
        total += _leaf_size(leaf, "summary")[1] // split
        texts.append((path_str(path) + _axes_str(spec), split > 1))
    if not leaf_row:
        return "", total
    if len(texts) <= 4:  # a leaf layer: each param
        return " ".join(t for t, _ in texts), total
    split_count = sum(is_split for _, is_split in texts)  # a block shown as one row
    return f"{split_count} of {len(texts)} params split", total


def _one_copy(tree):
    """One copy of a ``repeat``'s stacked params (specs lose their leading entry)."""
    if tree is None:
        return None
    is_spec = lambda x: isinstance(x, jax.sharding.PartitionSpec)
    return jax.tree.map(
        lambda x: (
            jax.sharding.PartitionSpec(*x[1:])
            if is_spec(x)
            else jax.ShapeDtypeStruct(x.shape[1:], x.dtype)
        ),
        tree,
        is_leaf=is_spec,
    )


def _walk(
    layer, params, state, inputs, path, depth, rows, with_flops, description=None, place=None
):
    """Append the rows of ``layer`` and its children.

    ``place`` is ``(specs, mesh)`` with a mesh and rules: ``specs`` the
    ``PartitionSpec``s of ``params``.

    Returns ``(output_spec, missed)``: ``missed`` is the FLOPs XLA's count of
    this layer leaves out (it counts the body of a loop once, so a
    ``repeat(n)`` is corrected to ``n`` times its block), added to every
    enclosing row.
    """
    children = layer.children
    labels = _labels(children) if children else []
    kind = layer.name
    is_repeat = kind.startswith("repeat(n=") and len(children) == 1
    known = kind in ("serial", "residual", "fanout", "parallel") or kind.startswith("concat")
    expand = bool(children) and (is_repeat or (known and _aligned(params, labels)))
    out = output_spec(layer, inputs, params, state) if inputs is not None else None
    flops = _flops(layer, params, state, inputs) if with_flops and inputs is not None else None
    if description is None:
        description = kind if expand or not children else _shorten(repr(layer))
    index = len(rows)
    specs, mesh = place if place is not None else (None, None)
    sharding, device_bytes = _placement(params, specs, mesh, not expand)
    rows.append(
        SummaryRow(
            path,
            depth,
            description,
            out,
            _size(params, "summary")[0],
            _size(state, "summary")[0],
            flops,
            sharding,
            device_bytes,
        )
    )
    missed = 0.0
    if not expand:
        return out, missed
    if is_repeat:
        (block,) = children
        one = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape[1:], a.dtype), (params, state))
        n = int(kind[len("repeat(n=") :].split(")")[0])
        name = f"{block.name} (one of {n})"
        inner = None if place is None else (_one_copy(specs), mesh)
        _walk(block, one[0], one[1], inputs, path, depth + 1, rows, with_flops, name, inner)
        block_flops = rows[index + 1].flops
        if flops is not None and block_flops is not None:
            missed = max(n * block_flops - flops, 0.0)
    else:
        x = inputs
        for i, label in enumerate(labels):
            child = as_layer(children[label])
            child_path = f"{path}/{label}" if path else str(label)
            if kind in ("serial", "residual"):
                child_in = x
            elif kind == "parallel":
                child_in = inputs[i] if isinstance(inputs, (tuple, list)) else None
            else:  # fanout, concat
                child_in = inputs
            x, child_missed = _walk(
                child,
                params[label],
                state[label],
                child_in,
                child_path,
                depth + 1,
                rows,
                with_flops,
                place=None if place is None else (specs[label], mesh),
            )
            missed += child_missed
    if flops is not None and missed:
        rows[index] = rows[index]._replace(flops=flops + missed)
    return out, missed


def _shorten(text: str, limit: int = 48) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _human(n: float | None) -> str:
    if n is None:
        return "?"
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.3g}{unit}"
    return f"{n:.3g}"


def _bytes(n: int) -> str:
    for unit, scale in (("GB", 2**30), ("MB", 2**20), ("KB", 2**10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def _shape_str(out) -> str:
    if out is None:
        return "?"
    if isinstance(out, jax.ShapeDtypeStruct):
        return fmt_shape(out.shape)
    return str(jax.tree.map(lambda s: tuple(s.shape), out))


def _table(info: Summary) -> str:
    with_flops = any(r.flops is not None for r in info.rows)
    placed = info.device_param_bytes is not None
    header = ["path", "layer", "output", "params", "state"] + (["FLOPs"] if with_flops else [])
    header += ["bytes/device", "sharding"] if placed else []
    body = []
    for r in info.rows:
        cells = [
            r.path,
            "  " * r.depth + r.description,
            _shape_str(r.output),
            f"{r.params:,}",
            f"{r.state:,}",
        ]
        if with_flops:
            cells.append(_human(r.flops))
        if placed:
            cells += [_bytes(r.device_bytes or 0), r.sharding or ""]
        body.append(cells)
    widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in [header]]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in body]
    lines.append("")
    total = (
        f"params: {info.params:,} ({_bytes(info.param_bytes)})  "
        f"state: {info.state:,} ({_bytes(info.state_bytes)})"
    )
    if info.flops is not None:
        total += f"  FLOPs: {_human(info.flops_per_example)} per example"
        if info.batch_size is not None:
            total += f" ({_human(info.flops)} per batch of {info.batch_size})"
    if placed:
        total += f"  params per device: {_bytes(info.device_param_bytes)}"
    lines.append(total)
    return "\n".join(lines)


def _place_of(layer, specs, mesh, rules):
    if (mesh is None) != (rules is None):
        raise ValueError(
            "summary: give `mesh` and `rules` together (e.g. `mesh=jax.make_mesh((2, 4), "
            "('data', 'model')), rules=distributed.tensor_parallel()`), or neither."
        )
    if mesh is None:
        return None
    from funcnet.distributed.rules import param_specs

    return param_specs(layer, specs, mesh, rules), mesh


def summary(
    model: Layer | Callable,
    inputs: Any,
    *,
    print_fn: Callable[[str], Any] | None = print,
    flops: bool = True,
    mesh=None,
    rules=None,
) -> Summary:
    """Print and return a table of the model's layers, from shapes only.

    Args:
        model: a layer or a plain function.
        inputs: example inputs or their :class:`jax.ShapeDtypeStruct` pytree;
            only shapes and dtypes are read, parameters are never allocated.
        print_fn: called with the table (``None``: do not print).
        flops: compute FLOPs with XLA's cost analysis (one compilation per row).
        mesh, rules: a mesh (a :class:`jax.sharding.Mesh`, or an
            ``AbstractMesh`` to plan without the devices) and sharding rules
            (:mod:`funcnet.distributed.rules`): adds the columns
            ``bytes/device`` and ``sharding`` (each param's mesh axes per
            axis, ``·`` for none), checked as ``fit`` checks them.

    Returns:
        A :class:`Summary`: ``rows`` (one :class:`SummaryRow` per layer, the
        model first, children after their parent), totals of parameters,
        state and their bytes, FLOPs per call and per example.

    Raises:
        TypeError: if ``inputs`` has no arrays or ``print_fn`` is not callable.
        ValueError: for ``mesh`` without ``rules`` (or the reverse), or bad rules
            (see :func:`funcnet.distributed.param_specs`).

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> from jax.sharding import AbstractMesh
        >>> from funcnet import Dense, serial, distributed
        >>> model = serial(Dense(16), jax.nn.relu, Dense(8, axes=("mlp", "embed")))
        >>> info = summary(model, jax.ShapeDtypeStruct((32, 8), jnp.float32), flops=False,
        ...                mesh=AbstractMesh((2, 4), ("data", "model")),
        ...                rules=distributed.tensor_parallel())
        path  layer        output    params  state  bytes/device  sharding
        ----  -----------  --------  ------  -----  ------------  -------------------
              serial       (32, 8)   280     0      304 B
        0       Dense(16)  (32, 16)  144     0      144 B         b(model) w(·,model)
        1       relu       (32, 16)  0       0      0 B
        2       Dense(8)   (32, 8)   136     0      160 B         b(·) w(model,·)
        <BLANKLINE>
        params: 280 (1.1 KB)  state: 0 (0 B)  params per device: 304 B
    """
    if print_fn is not None and not callable(print_fn):
        raise TypeError(
            f"summary: `print_fn` must be a function such as `print` (or None), got "
            f"{type(print_fn).__name__}."
        )
    layer = as_layer(model)
    specs = spec_of(inputs)
    leaves = jax.tree.leaves(specs)
    if not leaves:
        raise TypeError(
            "summary: `inputs` has no arrays; pass an example batch or its "
            "`jax.ShapeDtypeStruct`, e.g. `jax.ShapeDtypeStruct((32, 784), jnp.float32)`."
        )
    params, state = init_spec(layer, specs)
    place = _place_of(layer, specs, mesh, rules)
    rows: list[SummaryRow] = []
    _walk(layer, params, state, specs, "", 0, rows, flops, place=place)
    n_params, param_bytes = _size(params, "summary")
    n_state, state_bytes = _size(state, "summary")
    batch = leaves[0].shape[0] if leaves[0].shape else None
    total = rows[0].flops
    per_example = None if total is None else total / (batch or 1)
    info = Summary(
        rows,
        n_params,
        n_state,
        param_bytes,
        state_bytes,
        total,
        per_example,
        batch,
        rows[0].device_bytes,
    )
    if print_fn is not None:
        print_fn(str(info))
    return info
