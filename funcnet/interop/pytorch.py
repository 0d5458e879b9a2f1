"""PyTorch ``state_dict`` -> funcnet params and state, and back.

:func:`from_torch` reads a state_dict (torch tensors, numpy or JAX arrays)
into the params and state of a funcnet model, guided by a mapping
(:func:`~funcnet.interop.torch_mapping`, or your own); :func:`to_torch` writes
funcnet params and state as a state_dict that the same torch module loads
with ``load_state_dict(..., strict=True)``. Only numpy is needed; torch is
imported only by :func:`to_torch` when it returns tensors.

Every problem is found before anything is converted and reported at once in
one :class:`InteropError`: torch tensors the model needs but the state_dict
lacks, tensors nobody uses, tensors of the wrong shape (with the shape
expected in torch's layout), funcnet params no mapping entry covers, and
layers torch cannot hold.

Layouts: torch images are ``(N, C, H, W)``, funcnet's ``(N, H, W, C)``, so
inputs are transposed (``x.transpose(0, 2, 3, 1)``) while weights are
converted here. A ``Linear`` right after a ``Flatten`` of channels-first
features sees them in another order than after funcnet's channels-last
``Flatten``: permute that weight's input axis yourself (or pool first).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from funcnet.core import FuncnetError, Layer, init_spec, path_str, tree_paths
from funcnet.interop.kinds import KINDS, Kind, NotRepresentable
from funcnet.interop.mapping import Entry, layer_paths, mapping_for, subtree

__all__ = ["ConversionReport", "InteropError", "from_torch", "to_torch"]

_FIX = (
    "Fix: build the funcnet model with the torch model's sizes, or edit the mapping so that each "
    "funcnet layer names its torch module: `torch_mapping(model, inputs, rename={funcnet_path: "
    "torch_name})`, or change the dict's entries (`mapping[path] = Entry(kind, torch_name)`); "
    "`ignore=[pattern]` skips torch tensors the model has no use for."
)


class ConversionReport(NamedTuple):
    """What did not fit, one line per tensor or layer; truthy when anything did not.

    Attributes:
        missing: torch names the model needs that the state_dict lacks.
        unexpected: state_dict names no mapping entry uses.
        mismatched: ``"name: expected (4, 3), got (5, 3) ..."`` (torch layout).
        unmapped: funcnet params/state paths that no mapping entry covers.
        unsupported: mapping entries that cannot hold the layer's params.
    """

    missing: list[str]
    unexpected: list[str]
    mismatched: list[str]
    unmapped: list[str]
    unsupported: list[str]

    def __bool__(self) -> bool:
        return any(len(items) for items in self)

    def describe(self) -> str:
        lines = []
        for field, items in zip(self._fields, self):
            if items:
                lines.append(f"  {field} ({len(items)}):")
                lines.extend(f"    {item}" for item in items)
        return "\n".join(lines)

    def summary(self) -> str:
        return ", ".join(f"{len(items)} {f}" for f, items in zip(self._fields, self) if items)


class InteropError(FuncnetError, ValueError):
    """A state_dict and a funcnet model (or its mapping) do not fit; ``report`` says where.

    Examples:
        >>> issubclass(InteropError, ValueError)
        True
    """

    def __init__(self, message: str, report: ConversionReport | None = None):
        super().__init__(message)
        self.report = report


# ---------------------------------------------------------------------------------------------
# Shared steps


class _Unit(NamedTuple):
    """One layer (one copy of a ``repeat``): where it is and what it converts."""

    path: str
    entry: Entry
    kind: Kind
    copy: int | None
    prefix: str


def _kind(entry: Any, path: str) -> Kind:
    if not isinstance(entry, Entry):
        raise TypeError(
            f"mapping[{path!r}] must be an `Entry(kind, torch_name)`, got {entry!r}; e.g. "
            f"`Entry('linear', 'fc1')`."
        )
    if isinstance(entry.kind, Kind):
        return entry.kind
    if entry.kind not in KINDS:
        raise ValueError(
            f"mapping[{path!r}]: unknown kind {entry.kind!r}; use one of {sorted(KINDS)} or a "
            "`funcnet.interop.kinds.Kind`."
        )
    return KINDS[entry.kind]


def _units(mapping: Mapping[str, Entry]) -> list[_Unit]:
    units = []
    for path, entry in mapping.items():
        kind = _kind(entry, path)
        copies = range(entry.stack) if entry.stack else [None]
        for i in copies:
            prefix = entry.torch if i is None else entry.torch.replace("{i}", str(i))
            units.append(_Unit(path, entry, kind, i, prefix))
    return units


def _name(prefix: str, rel: str) -> str:
    return f"{prefix}.{rel}" if prefix else rel


def _resolve(model, params, state, mapping, rename) -> dict[str, Entry]:
    if mapping is not None and rename is not None:
        raise ValueError(
            "pass either `mapping` or `rename`, not both; apply the renames when making the "
            "mapping: `torch_mapping(model, inputs, rename=...)`."
        )
    if mapping is None:
        return mapping_for(model, params, state, rename)
    if not isinstance(mapping, Mapping):
        raise TypeError(
            f"`mapping` must be a dict {{funcnet_path: Entry}}, got {type(mapping).__name__}."
        )
    return dict(mapping)


def _unmapped(model, mapping, params, state) -> list[str]:
    """funcnet leaves no entry covers, grouped by layer, each with the entry to add."""
    try:
        default = mapping_for(model, params, state)
    except (ValueError, TypeError, KeyError):
        default = {}
    groups: dict[str, list[str]] = {}
    for what, tree in (("params", params), ("state", state)):
        paths = tree_paths(tree)
        covered = {leaf for leaves in layer_paths(mapping, paths).values() for leaf in leaves}
        for leaf in paths:
            if leaf not in covered:
                owner = _owner(default, leaf)
                layer = owner if owner is not None else leaf.rsplit("/", 1)[0]
                groups.setdefault(layer, []).append(f"{what}/{leaf}")
    out = []
    for layer, leaves in groups.items():
        entry = default.get(layer)
        add = repr(entry) if entry is not None else "Entry(kind, torch_name)"
        out.append(
            f"{', '.join(leaves)}: no mapping entry covers them; add "
            f"`mapping[{layer!r}] = {add}` (with the torch module's name)"
        )
    return out


def _copy_of(tree, i: int | None, make):
    """``tree`` (of arrays or specs) as numpy, copy ``i`` of stacked leaves when ``i`` is set."""
    return jax.tree.map(lambda a: make(a) if i is None else make(a)[i], tree)


def _zeros(a) -> np.ndarray:
    """A zero array of ``a``'s shape and dtype that takes no memory (for the shapes of exports)."""
    return np.broadcast_to(np.zeros((), np.dtype(a.dtype)), tuple(a.shape))


def _numpy(value) -> np.ndarray:
    """A state_dict value (a torch tensor, numpy or JAX array) as numpy, without torch imported."""
    if hasattr(value, "detach") and hasattr(value, "numpy"):  # a torch tensor
        t = value.detach().cpu()
        if str(t.dtype) == "torch.bfloat16":
            import torch  # only when the tensor is torch's

            return t.view(torch.int16).numpy().view(jnp.bfloat16)
        return t.numpy()
    return np.asarray(value)


def _shape(value) -> tuple[int, ...]:
    return tuple(int(d) for d in getattr(value, "shape", np.shape(value)))


# ---------------------------------------------------------------------------------------------
# torch -> funcnet


def _check(units, p_spec, s_spec, tensors, ignore) -> tuple[ConversionReport, set]:
    """Everything that does not fit, found from the shapes alone (nothing is converted)."""
    missing, mismatched, unsupported, claimed = [], [], [], set()
    for u in units:
        p_t = _copy_of(subtree(p_spec, u.path), u.copy, _zeros)
        s_t = _copy_of(subtree(s_spec, u.path), u.copy, _zeros)
        where = f"funcnet `{u.path}`, {u.entry.kind if isinstance(u.entry.kind, str) else 'custom'}"
        try:
            expected = u.kind.export(p_t, s_t, u.entry)
        except (NotRepresentable, KeyError, TypeError, ValueError, IndexError) as err:
            unsupported.append(f"{where}: the kind does not fit its params {_keys(p_t)}: {err}")
            continue
        for rel, want in expected.items():
            name = _name(u.prefix, rel)
            if name not in tensors:
                if rel not in u.kind.optional:
                    missing.append(f"{name} (for {where}, shape {_shape(want)})")
                continue
            claimed.add(name)
            if _shape(tensors[name]) != _shape(want):
                mismatched.append(
                    f"{name}: expected {_shape(want)}, got {_shape(tensors[name])} (for {where})"
                )
    unexpected = [
        f"{n} {_shape(v)}"
        for n, v in tensors.items()
        if n not in claimed and not any(fnmatch.fnmatchcase(n, pat) for pat in ignore)
    ]
    report = ConversionReport(missing, unexpected, mismatched, [], unsupported)
    return report, claimed


def _keys(tree) -> str:
    paths = tree_paths(tree)
    return "{" + ", ".join(paths) + "}" if paths else "()"


def _load_units(units, p_spec, s_spec, tensors) -> dict[str, list]:
    """Convert every unit; returns ``{"params/<path>": [value per copy]}`` (one without copies)."""
    values: dict[str, list] = {}
    for u in units:
        p_t = _copy_of(subtree(p_spec, u.path), u.copy, _zeros)
        s_t = _copy_of(subtree(s_spec, u.path), u.copy, _zeros)

        def get(rel, prefix=u.prefix):
            return _numpy(tensors[_name(prefix, rel)])

        p_new, s_new = u.kind.load(get, p_t, s_t, u.entry)
        for what, tree in (("params", p_new), ("state", s_new)):
            for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
                full = "/".join(part for part in (what, u.path, path_str(path)) if part)
                values.setdefault(full, []).append(leaf)
    return values


def _assemble(what: str, spec, values, mapping, problems: list) -> Any:
    flat, treedef = jax.tree_util.tree_flatten_with_path(spec)
    out = []
    for path, leaf in flat:
        name = "/".join(p for p in (what, path_str(path)) if p)
        got = values.get(name)
        if got is None:
            problems.append(f"{name}: its mapping entry's kind made no value for it")
            out.append(leaf)
            continue
        entry = mapping.get(_owner(mapping, path_str(path)))
        a = np.stack(got) if entry is not None and entry.stack else got[0]
        if tuple(a.shape) != tuple(leaf.shape):
            problems.append(f"{name}: the kind made shape {a.shape}, expected {tuple(leaf.shape)}")
            out.append(leaf)
            continue
        out.append(jnp.asarray(a, dtype=leaf.dtype))
    return jax.tree_util.tree_unflatten(treedef, out)


def _owner(mapping, leaf: str) -> str | None:
    owners = [k for k in mapping if k == "" or leaf == k or leaf.startswith(k + "/")]
    return max(owners, key=len) if owners else None


def from_torch(
    model: Layer,
    inputs: Any,
    state_dict: Mapping[str, Any],
    *,
    mapping: Mapping[str, Entry] | None = None,
    rename: Mapping[str, str] | None = None,
    ignore: Iterable[str] = (),
) -> tuple[Any, Any]:
    """funcnet ``(params, state)`` for ``model`` from a PyTorch ``state_dict``.

    Args:
        model: the funcnet model.
        inputs: example inputs (only shapes are read).
        state_dict: ``{name: tensor}``: ``module.state_dict()``, or numpy/JAX
            arrays (e.g. read from a safetensors file).
        mapping: ``{funcnet_path: Entry}``; default :func:`torch_mapping`.
        rename: passed to :func:`torch_mapping` (instead of ``mapping``).
        ignore: glob patterns of state_dict names to leave unused silently
            (e.g. ``["*.attn.bias"]``).

    Returns:
        ``(params, state)`` shaped as ``model.init`` makes them, JAX arrays
        in the dtypes of ``init`` (the state_dict's values are cast).

    Raises:
        InteropError: listing at once every missing, unexpected or mis-shaped
            tensor (shapes in torch's layout), funcnet params no entry covers
            and entries that do not fit their layer; its ``report`` is a
            :class:`ConversionReport`.

    Examples:
        >>> import numpy as np, jax, jax.numpy as jnp
        >>> import funcnet as fn
        >>> model = fn.serial(fn.Dense(3), jax.nn.relu, fn.Dense(2))
        >>> sd = {"0.weight": np.ones((3, 4)), "0.bias": np.zeros(3),   # torch (out, in)
        ...       "2.weight": np.ones((2, 3)), "2.bias": np.zeros(2)}
        >>> params, state = from_torch(model, jnp.zeros((1, 4)), sd)
        >>> params[0]["w"].shape  # funcnet (in, out)
        (4, 3)
        >>> from_torch(model, jnp.zeros((1, 4)), {**sd, "2.weight": np.ones((2, 5))})
        Traceback (most recent call last):
        ...
        funcnet.interop.InteropError: from_torch: the state_dict does not fit the model (1 ...
          mismatched (1):
            2.weight: expected (2, 3), got (2, 5) (for funcnet `2`, linear)
        Fix: ...
    """
    p_spec, s_spec = init_spec(model, inputs)
    mapping = _resolve(model, p_spec, s_spec, mapping, rename)
    tensors = dict(state_dict)
    units = _units(mapping)
    report, _ = _check(units, p_spec, s_spec, tensors, tuple(ignore))
    report = report._replace(unmapped=_unmapped(model, mapping, p_spec, s_spec))
    if report:
        raise InteropError(
            f"from_torch: the state_dict does not fit the model ({report.summary()}):\n"
            f"{report.describe()}\n{_FIX}",
            report,
        )
    values = _load_units(units, p_spec, s_spec, tensors)
    problems: list[str] = []
    params = _assemble("params", p_spec, values, mapping, problems)
    state = _assemble("state", s_spec, values, mapping, problems)
    if problems:
        raise InteropError(
            "from_torch: a mapping entry's kind made values that do not fit the model:\n  "
            + "\n  ".join(problems)
            + "\nFix the custom `Kind`'s `load`, or use another kind for these layers."
        )
    return params, state


# ---------------------------------------------------------------------------------------------
# funcnet -> torch


def to_torch(
    model: Layer,
    params: Any,
    state: Any,
    *,
    mapping: Mapping[str, Entry] | None = None,
    rename: Mapping[str, str] | None = None,
    as_numpy: bool = False,
) -> dict[str, Any]:
    """A PyTorch ``state_dict`` of ``model``'s ``params`` and ``state``.

    Args:
        model: the funcnet model.
        params, state: as ``model.init`` (or training) made them.
        mapping, rename: as :func:`from_torch`.
        as_numpy: return numpy arrays instead of torch tensors (then torch
            is not needed).

    Returns:
        ``{torch_name: tensor}`` in mapping order, for
        ``module.load_state_dict(sd, strict=True)``.

    Raises:
        InteropError: for params no mapping entry covers, or layers torch
            cannot hold (e.g. grouped-query attention in ``nn.MultiheadAttention``).
        ImportError: when torch is not installed and ``as_numpy`` is False.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> import funcnet as fn
        >>> model = fn.serial(fn.Conv(4, 3), fn.BatchNorm())
        >>> params, state = model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 2)))
        >>> sd = to_torch(model, params, state, as_numpy=True)
        >>> {name: a.shape for name, a in sd.items()}  # doctest: +NORMALIZE_WHITESPACE
        {'0.weight': (4, 2, 3, 3), '0.bias': (4,), '1.weight': (4,), '1.bias': (4,),
         '1.running_mean': (4,), '1.running_var': (4,), '1.num_batches_tracked': ()}
    """
    mapping = _resolve(model, params, state, mapping, rename)
    report = ConversionReport([], [], [], _unmapped(model, mapping, params, state), [])
    out: dict[str, np.ndarray] = {}
    hosts: dict[str, tuple] = {}
    for u in _units(mapping):
        if u.path not in hosts:
            host = (
                _copy_of(subtree(params, u.path), None, np.asarray),
                _copy_of(subtree(state, u.path), None, np.asarray),
            )
            hosts = {u.path: host}  # one layer's host copy at a time
        p_i, s_i = (
            jax.tree.map(lambda a, i=u.copy: a if i is None else a[i], t) for t in hosts[u.path]
        )
        try:
            arrays = u.kind.export(p_i, s_i, u.entry)
        except (NotRepresentable, KeyError, TypeError, ValueError, IndexError) as err:
            report.unsupported.append(f"funcnet `{u.path}` ({u.entry.kind}): {err}")
            continue
        for rel, a in arrays.items():
            name = _name(u.prefix, rel)
            if name in out:
                report.unsupported.append(
                    f"{name}: written by two mapping entries (one is `{u.path}`)"
                )
            out[name] = np.array(a)
    if report:
        raise InteropError(
            f"to_torch: the model's params cannot be written with this mapping "
            f"({report.summary()}):\n{report.describe()}\n{_FIX}",
            report,
        )
    return out if as_numpy else _as_tensors(out)


def _as_tensors(arrays: dict[str, np.ndarray]) -> dict[str, Any]:
    try:
        import torch  # optional: never imported at import time
    except ImportError as err:
        raise ImportError(
            "to_torch: torch is not installed; `pip install torch` (the CPU build: "
            "`torch==2.13.0`), or pass `as_numpy=True` for numpy arrays."
        ) from err
    out = {}
    for name, a in arrays.items():
        if a.dtype == jnp.bfloat16:
            out[name] = torch.from_numpy(a.view(np.int16)).view(torch.bfloat16)
        else:
            out[name] = torch.from_numpy(a)
    return out
