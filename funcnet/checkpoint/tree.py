"""Pytrees as a JSON structure plus named leaves, and back.

A tree is stored as a nested JSON list (``["dict", [[key, node], ...]]``,
``["tuple", [...]]``, ``["array", name]``, ...) and its leaves under their
pytree path (``params/0/w``, as :func:`funcnet.core.path_str` writes it).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any, NoReturn

import jax
import numpy as np

from funcnet.checkpoint.header import DTYPES, Fail, clip, is_int, name_str, short
from funcnet.core import path_str


def _jsonable(obj: Any, where: str) -> Any:
    """``obj`` as plain JSON data (numpy scalars and arrays become numbers and lists)."""
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, (int, float)):
        return obj
    if isinstance(obj, np.generic) or (isinstance(obj, (np.ndarray, jax.Array)) and obj.ndim == 0):
        return np.asarray(obj).item()
    if isinstance(obj, (np.ndarray, jax.Array)):
        return np.asarray(obj).tolist()
    if isinstance(obj, Mapping):
        out = {}
        for k, v in obj.items():
            if not isinstance(k, str):
                raise TypeError(
                    f"checkpoint {where}: keys must be strings to be stored as JSON, got "
                    f"{type(k).__name__} key {k!r}; convert it with `str(...)`."
                )
            out[k] = _jsonable(v, f"{where}[{k!r}]")
        return out
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v, f"{where}[{i}]") for i, v in enumerate(obj)]
    raise TypeError(
        f"checkpoint {where}: values must be JSON data (str, number, bool, None, lists, dicts "
        f"or numpy arrays), got {type(obj).__name__}; convert it first, e.g. with `str(...)`."
    )


def _is_key(x) -> bool:
    dtype = getattr(x, "dtype", None)
    return dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key)


def _children(x) -> list | None:
    """``[(key_entry, child), ...]`` one level down, or ``None`` when ``x`` is a leaf."""
    flat, _ = jax.tree_util.tree_flatten_with_path(x, is_leaf=lambda c: c is not x)
    if len(flat) == 1 and flat[0][0] == () and flat[0][1] is x:
        return None
    return [(path[0], child) for path, child in flat]


def _encode(tree) -> tuple[Any, list[tuple[str, Any]]]:
    """The JSON structure of ``tree`` and its ``(name, leaf)`` pairs in leaf order."""
    leaves: list[tuple[str, Any]] = []

    def leaf_node(x, name):
        if isinstance(x, bool):
            kind = "bool"
        elif isinstance(x, int):
            kind = "int"
        elif isinstance(x, float):
            kind = "float"
        elif _is_key(x):
            kind = "key"
        elif isinstance(x, jax.Array):
            kind = "array"
        elif isinstance(x, (np.ndarray, np.generic)):
            kind = "numpy"
        else:
            raise TypeError(
                f"checkpoint: cannot store the leaf at `{name or '(root)'}`, a "
                f"{type(x).__name__}; leaves must be arrays, PRNG keys or Python bool/int/float. "
                "Put other values in `metadata=` (JSON)."
            )
        leaves.append((name, x))
        if kind == "key":
            return [kind, name, str(jax.random.key_impl(x))]
        return [kind, name]

    def visit(x, parts):
        if len(parts) > MAX_DEPTH:
            raise ValueError(
                f"checkpoint: the tree is nested deeper than {MAX_DEPTH} levels (at "
                f"`{'/'.join(parts[:5])}/...`); checkpoints hold at most {MAX_DEPTH}. Flatten it "
                "(e.g. a dict keyed by path)."
            )
        if x is None:
            return ["none"]
        children = _children(x)
        if children is None:
            return leaf_node(x, "/".join(parts))
        named = [(entry, path_str([entry]), child) for entry, child in children]
        if isinstance(x, dict):
            items = []
            for entry, part, child in named:
                key = entry.key
                if isinstance(key, bool) or not isinstance(key, (str, int)):
                    raise TypeError(
                        f"checkpoint: dict keys must be str or int, got {type(key).__name__} "
                        f"key {key!r} at `{'/'.join(parts) or '(root)'}`; use string keys."
                    )
                items.append([key, visit(child, [*parts, part])])
            return ["dict", items]
        if isinstance(x, tuple) and hasattr(type(x), "_fields"):
            fields = [[part, visit(child, [*parts, part])] for _, part, child in named]
            return ["namedtuple", type(x).__name__, fields]
        if isinstance(x, (tuple, list)):
            kind = "tuple" if isinstance(x, tuple) else "list"
            return [kind, [visit(child, [*parts, part]) for _, part, child in named]]
        fields = [[part, visit(child, [*parts, part])] for _, part, child in named]
        return ["node", type(x).__name__, fields]

    structure = visit(tree, [])
    seen: dict[str, int] = {}
    for name, _ in leaves:
        seen[name] = seen.get(name, 0) + 1
    dupes = sorted(n for n, c in seen.items() if c > 1)
    if dupes:
        raise ValueError(
            f"checkpoint: several leaves have the same path {dupes}: a dict key contains '/' "
            "or an int and a str key spell the same; rename the keys so every path is unique."
        )
    return structure, leaves


def _decode(node, arrays: Mapping[str, Any]):
    """Rebuild a tree from its JSON structure; NamedTuples and custom nodes become dicts."""
    kind = node[0]
    if kind == "none":
        return None
    if kind == "dict":
        return {k: _decode(v, arrays) for k, v in node[1]}
    if kind in ("namedtuple", "node"):
        return {k: _decode(v, arrays) for k, v in node[2]}
    if kind == "tuple":
        return tuple(_decode(v, arrays) for v in node[1])
    if kind == "list":
        return [_decode(v, arrays) for v in node[1]]
    data = arrays[node[1]]
    if kind == "bool":
        return bool(data.item())
    if kind == "int":
        return int(data.item())
    if kind == "float":
        return float(data.item())
    if kind == "numpy":
        return data.copy()
    if kind == "key":
        return jax.random.wrap_key_data(jax.device_put(data), impl=node[2])
    return jax.device_put(data)


MAX_DEPTH = 100  # levels of containers; save refuses deeper trees, load rejects them
_CONTAINERS = ("dict", "namedtuple", "node", "tuple", "list")
_SCALARS = {"bool": "BOOL", "int": "I64", "float": "F64"}  # what save writes for Python scalars
_LEAVES = ("array", "numpy", "bool", "int", "float", "key")
_ARITY = {"none": 1, "dict": 2, "tuple": 2, "list": 2, "namedtuple": 3, "node": 3, "key": 3}


def _where(parts: tuple) -> str:
    """A tree path for a message: ``params/0/w``, ``(root)``, long ones shortened."""
    return name_str("/".join(parts)) if parts else "(root)"


def _pairs(items, parts: tuple, key_ok, expected: str, fail: Fail) -> list:
    """The ``[key, node]`` pairs of a dict or of named fields, keys checked and unique."""
    if not isinstance(items, list):
        _bad(parts, f"expected a list of [key, node], got {short(items)}", fail)
    seen = set()
    for item in items:
        if not (isinstance(item, list) and len(item) == 2 and key_ok(item[0])):
            _bad(parts, f"expected [{expected}, node], got {short(item)}", fail)
        if item[0] in seen:
            _bad(parts, f"the key {short(item[0])} appears twice", fail)
        seen.add(item[0])
    return items


def _bad(parts: tuple, what: str, fail: Fail) -> NoReturn:
    fail(f"its tree is malformed at `{_where(parts)}`: {what}")


def _stored_children(node: list, parts: tuple, fail: Fail) -> list:
    """``[(child, parts), ...]`` of a container node, its layout checked."""
    kind = node[0]
    if kind == "dict":
        key_ok = lambda k: isinstance(k, str) or is_int(k)
        items = _pairs(node[1], parts, key_ok, "str or int key", fail)
    elif kind in ("namedtuple", "node"):
        if not isinstance(node[1], str):
            _bad(parts, f"the type name is {short(node[1])}, not a string", fail)
        items = _pairs(node[2], parts, lambda k: isinstance(k, str), "field name", fail)
    else:
        if not isinstance(node[1], list):
            _bad(parts, f"a {kind} of {short(node[1])}, expected a list", fail)
        items = list(enumerate(node[1]))
    return [(child, (*parts, str(key))) for key, child in items]


@functools.lru_cache(maxsize=64)
def _key_problem(impl: str, dtype: str, shape: tuple) -> str | None:
    """Why jax cannot wrap key data of ``dtype[shape]`` as ``impl`` keys (``None`` if it can)."""
    try:
        wrap = functools.partial(jax.random.wrap_key_data, impl=impl)
        jax.eval_shape(wrap, jax.ShapeDtypeStruct(shape, DTYPES[dtype]))
    except (TypeError, ValueError) as err:
        return str(err).split("\n")[0].split(" for impl=")[0]
    return None


def _check_leaf(node: list, parts: tuple, table: dict, kinds: dict, fail: Fail) -> None:
    kind, name = node[0], node[1]
    if name != "/".join(parts):  # save names every leaf by its path
        _bad(parts, f"the leaf names the array {short(name)}, not its path", fail)
    if name not in table:
        _bad(parts, "the file has no array of this name", fail)
    if name in kinds:
        _bad(parts, "a second leaf with this path", fail)
    dtype, shape = table[name]["dtype"], table[name]["shape"]
    if kind in _SCALARS and (dtype, shape) != (_SCALARS[kind], []):
        _bad(parts, f"a Python {kind} is stored as {_SCALARS[kind]}[], got {dtype}{shape}", fail)
    impl = node[2] if kind == "key" else None
    if kind == "key" and not isinstance(impl, str):
        _bad(parts, f"a PRNG key whose implementation is {short(impl)}, not a name", fail)
    problem = _key_problem(impl, dtype, tuple(shape)) if kind == "key" else None
    if problem:
        _bad(
            parts,
            f"a PRNG key of implementation {short(impl)} with data {dtype}{shape}, which jax "
            f"does not accept ({clip(problem)})",
            fail,
        )
    kinds[name] = (kind, impl)


def check_tree(tree: Any, table: dict, fail: Fail) -> dict:
    """``{name: (kind, key impl)}`` of every leaf of a stored structure, after checking it.

    The structure is untrusted (a forger can recompute the checksum): every node's layout,
    key types, depth (at most ``MAX_DEPTH``), leaf name (its path) and scalar/key entry is
    checked, iteratively, and the leaves must name each array of ``table`` exactly once.
    Problems go to ``fail`` with the path in the tree.
    """
    kinds: dict[str, tuple[str, str | None]] = {}
    stack: list[tuple[Any, tuple]] = [(tree, ())]
    while stack:
        node, parts = stack.pop()
        if len(parts) > MAX_DEPTH:
            _bad(parts[:3], f"nested deeper than the {MAX_DEPTH} levels a checkpoint holds", fail)
        if not (isinstance(node, list) and node and isinstance(node[0], str)):
            _bad(parts, f"expected a node [kind, ...], got {short(node)}", fail)
        kind = node[0]
        if kind not in _ARITY and kind not in _LEAVES:
            _bad(parts, f"unknown node kind {short(kind)}", fail)
        if len(node) != _ARITY.get(kind, 2):
            _bad(parts, f"a {kind} node of {len(node)} items, expected {_ARITY.get(kind, 2)}", fail)
        if kind in _CONTAINERS:
            stack.extend(reversed(_stored_children(node, parts, fail)))
        elif kind != "none":
            _check_leaf(node, parts, table, kinds, fail)
    if len(kinds) != len(table):
        unnamed = sorted(set(table) - set(kinds))
        fail(f"its tree does not match its arrays: no leaf for {short(unnamed)}")
    return kinds


def _host_arrays(leaves: list[tuple[str, Any]]) -> list[np.ndarray]:
    values = []
    for name, x in leaves:
        if isinstance(x, jax.Array):
            if not x.is_fully_addressable:
                if not x.is_fully_replicated:
                    raise ValueError(
                        f"checkpoint: `{name}` is sharded over several processes (multi-host); "
                        "one file cannot hold it, as this process cannot read all of it. Save "
                        "a sharded checkpoint instead (`save(..., sharded=True)`, or leave "
                        "`sharded=None`): each process then writes its own shards."
                    )
                x = x.addressable_data(0)  # replicated over processes: any local copy is all
            values.append(jax.random.key_data(x) if _is_key(x) else x)
        elif isinstance(x, bool):
            values.append(np.asarray(x, np.bool_))
        elif isinstance(x, int):
            values.append(np.asarray(x, np.int64))
        elif isinstance(x, float):
            values.append(np.asarray(x, np.float64))
        else:
            values.append(np.asarray(x))
    host = jax.device_get(values)
    out = []
    for a in host:
        a = np.asarray(a)
        a = a if a.flags.c_contiguous else a.copy(order="C")  # ascontiguousarray makes 0-d 1-d
        if not a.dtype.isnative:  # e.g. '>f4' from a file; safetensors is little-endian
            a = a.astype(a.dtype.newbyteorder("="))
        out.append(a)
    return out
