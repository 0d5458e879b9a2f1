"""Pytrees as a JSON structure plus named leaves, and back.

A tree is stored as a nested JSON list (``["dict", [[key, node], ...]]``,
``["tuple", [...]]``, ``["array", name]``, ...) and its leaves under their
pytree path (``params/0/w``, as :func:`funcnet.core.path_str` writes it).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

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


def _leaf_kinds(node, out: dict) -> dict:
    """``{name: (kind, impl)}`` of every leaf in a JSON structure; ValueError if malformed."""
    kind = node[0]
    if kind == "dict":
        for _, v in node[1]:
            _leaf_kinds(v, out)
    elif kind in ("namedtuple", "node"):
        for _, v in node[2]:
            _leaf_kinds(v, out)
    elif kind in ("tuple", "list"):
        for v in node[1]:
            _leaf_kinds(v, out)
    elif kind == "key":
        out[str(node[1])] = (kind, str(node[2]))
    elif kind in ("array", "numpy", "bool", "int", "float"):
        out[str(node[1])] = (kind, None)
    elif kind != "none":
        raise ValueError(f"unknown node kind {kind!r}")
    return out


def _host_arrays(leaves: list[tuple[str, Any]]) -> list[np.ndarray]:
    values = []
    for name, x in leaves:
        if isinstance(x, jax.Array):
            if not x.is_fully_addressable:
                if not x.is_fully_replicated:
                    raise ValueError(
                        f"checkpoint: `{name}` is sharded over several processes (multi-host); "
                        "this process cannot read all of it. Gather it first "
                        "(`jax.experimental.multihost_utils.process_allgather`) or save each "
                        "process's shards with orbax-checkpoint."
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
