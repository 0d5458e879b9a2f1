"""Loading a checkpoint: the tree as saved, or into a template (``like=``)."""

from __future__ import annotations

import os
import warnings
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from funcnet.checkpoint.errors import CheckpointError, CheckpointWarning, LoadReport
from funcnet.checkpoint.format import _arrays, _read, is_sharded
from funcnet.checkpoint.tree import _decode, _is_key
from funcnet.core import path_str


def _spec_str(dtype, shape) -> str:
    return f"{dtype}[{','.join(str(d) for d in shape)}]"


def _template_leaf(x, name: str):
    """``(kind, dtype, shape, impl)`` a template leaf expects from the file."""
    if isinstance(x, bool):
        return "bool", None, (), None
    if isinstance(x, int):
        return "int", None, (), None
    if isinstance(x, float):
        return "float", None, (), None
    if _is_key(x):
        impl = []  # key_impl needs an array: read it while tracing (x may be a ShapeDtypeStruct)

        def data_of(k):
            impl.append(str(jax.random.key_impl(k)))
            return jax.random.key_data(k)

        data = jax.eval_shape(data_of, x)
        return "key", np.dtype(data.dtype), tuple(data.shape), impl[0]
    if isinstance(x, (jax.Array, jax.ShapeDtypeStruct, np.ndarray, np.generic)):
        dtype = np.dtype(x.dtype)
        return "array", dtype if dtype.isnative else dtype.newbyteorder("="), tuple(x.shape), None
    raise TypeError(
        f"load: the template leaf at `{name or '(root)'}` is a {type(x).__name__}; `like` must "
        "hold arrays, jax.ShapeDtypeStructs, PRNG keys or Python scalars (e.g. a freshly "
        "initialised TrainState or `jax.eval_shape` of one)."
    )


def _restore_leaf(t, want, data: np.ndarray):
    kind = want[0]
    if kind in ("bool", "int", "float"):
        return type(t)(data.item())
    if isinstance(t, np.generic):
        return data.reshape(()).astype(t.dtype)[()]
    if isinstance(t, np.ndarray):
        return data.copy()
    sharding = getattr(t, "sharding", None)
    if sharding is None or not getattr(t, "committed", True):
        placed = jax.device_put(data)  # uncommitted, like the template
    elif sharding.is_fully_addressable:
        placed = jax.device_put(data, sharding)
    else:  # multi-host: each process builds its own shards
        placed = jax.make_array_from_callback(data.shape, sharding, lambda index: data[index])
    if kind == "key":
        return jax.random.wrap_key_data(placed, impl=want[3])
    return placed


def _converts(dtype: np.dtype, to: str) -> bool:
    """Whether values of ``dtype`` convert exactly to the Python scalar type ``to``."""
    if dtype == np.bool_:
        return True
    if jnp.issubdtype(dtype, jnp.integer):
        return to != "bool"
    return to == "float" and jnp.issubdtype(dtype, jnp.floating)


def _mismatch(want, kind: str, impl: str | None, data: np.ndarray) -> str | None:
    """Why the file's entry (``kind``, key ``impl``, ``data``) cannot fill a template leaf."""
    got = _spec_str(data.dtype, data.shape)
    if kind == "key":
        got = f"key<{impl}> data {data.shape}"
    if want[0] == "key":
        if (kind, impl, data.shape) != ("key", want[3], want[2]):
            return f"expected key<{want[3]}> data {want[2]}, got {got}"
    elif want[0] in ("bool", "int", "float"):
        # a Python scalar takes a 0-d value that converts exactly (no float -> int, complex)
        if data.shape != () or kind == "key" or not _converts(data.dtype, want[0]):
            return f"expected a scalar ({want[0]}), got {got}"
    elif kind == "key" or data.shape != want[2] or data.dtype != want[1]:
        return f"expected {_spec_str(want[1], want[2])}, got {got}"
    return None


def load(path: str | os.PathLike, like: Any = None, *, strict: bool = True) -> Any:
    """Read a checkpoint written by :func:`save` (or any safetensors file).

    The whole file is checked (header, sizes, SHA-256 checksum) before any
    array is built, so a bad file raises and nothing is half-loaded. A
    sharded checkpoint (a directory, see :mod:`funcnet.checkpoint.sharded`) is
    read the same way, except that with ``like`` each process reads (and
    checks) only the saved shards that its target shards overlap, so it
    restores onto any mesh and process count.

    Args:
        path: the file, or a sharded checkpoint's directory.
        like: a template tree, e.g. a freshly created ``TrainState`` or its
            ``jax.eval_shape``. The result then has exactly the template's
            structure (NamedTuples, optax states, ...) and leaf types: JAX
            arrays are placed with the template leaf's sharding (uncommitted
            template arrays give uncommitted arrays), numpy leaves stay numpy,
            Python scalars stay Python scalars, keys are rewrapped with their
            implementation. Every leaf must match the file's entry at the same
            path in shape and dtype (no casting).
        strict: with ``like``: when False, load the entries that match and keep
            the template's values for the others (for fine-tuning); a
            :class:`CheckpointWarning` whose ``report`` is a :class:`LoadReport`
            lists what was skipped. A missing entry whose template leaf is only
            a ``jax.ShapeDtypeStruct`` still raises (there is no value to keep).

    Returns:
        With ``like``, a tree like it. Without, the tree as saved, rebuilt
        from the stored structure: dicts, lists, tuples and ``None`` as they
        were; NamedTuples (``TrainState``, optax states) and other custom
        pytree nodes as dicts keyed by field name; JAX arrays and keys on the
        default device; numpy arrays as numpy (numpy scalars as 0-d arrays);
        Python scalars as Python scalars. A safetensors file from another tool gives a flat dict
        ``{name: jax.Array}``.

    Raises:
        CheckpointError: for a missing, truncated, corrupted, modified or
            malformed file, or one that is not a regular file (naming it and
            the problem; its ``corrupt`` is true), for a file of a newer
            format version, or, with ``like`` and ``strict=True``, listing
            every missing, unexpected and mismatched path.
        OSError: when the file cannot be read (e.g. ``PermissionError``),
            naming it.
        TypeError: for a template leaf that is not array-like.

    Examples:
        >>> import os, tempfile, jax, jax.numpy as jnp
        >>> from funcnet.checkpoint import save
        >>> path = os.path.join(tempfile.mkdtemp(), "p.safetensors")
        >>> _ = save(path, {"w": jnp.ones((2, 2)), "b": jnp.zeros(2)})
        >>> template = {"w": jnp.zeros((2, 2)), "b": jnp.zeros(3)}
        >>> load(path, like=template)
        Traceback (most recent call last):
        ...
        funcnet.checkpoint.CheckpointError: checkpoint `...`: does not fit `like`: ...
        >>> import warnings
        >>> with warnings.catch_warnings():
        ...     warnings.simplefilter("ignore")
        ...     tree = load(path, like=template, strict=False)
        >>> tree["w"].tolist(), tree["b"].shape
        ([[1.0, 1.0], [1.0, 1.0]], (3,))
    """
    if is_sharded(path):
        from funcnet.checkpoint.sharded_read import load_sharded

        return load_sharded(path, like, strict=strict)
    contents = _read(path)
    arrays, kinds = _arrays(contents), contents.kinds
    if like is None:
        if contents.info is None:
            return {name: jax.device_put(a) for name, a in arrays.items()}
        return _decode(contents.info["tree"], arrays)
    treedef, out = fill_template(
        path,
        like,
        strict,
        arrays,
        kinds,
        lambda name, t, want: _restore_leaf(t, want, arrays[name]),
    )
    return jax.tree_util.tree_unflatten(treedef, out)


def fill_template(path, like, strict: bool, entries: dict, kinds: dict, take) -> tuple[Any, list]:
    """The template's treedef and its leaves filled from a checkpoint's entries.

    ``entries`` maps each stored path to something with the stored ``shape`` and
    ``dtype``; ``take(name, template_leaf, want)`` gives the leaf for a matching entry.
    Missing, unexpected and mismatched paths raise together (``strict``) or keep the
    template's values with a :class:`CheckpointWarning`.
    """
    flat, treedef = jax.tree_util.tree_flatten_with_path(like)
    names = [path_str(p) for p, _ in flat]
    missing, mismatched, out = [], [], []
    for name, (_, t) in zip(names, flat):
        want = _template_leaf(t, name)
        if name not in entries:
            missing.append(name)
            out.append(t)
            continue
        problem = _mismatch(want, *kinds[name], entries[name])
        if problem:
            mismatched.append(f"{name}: {problem}")
            out.append(t)
        else:
            out.append(take(name, t, want))
    unexpected = sorted(set(entries) - set(names))
    report = LoadReport(missing, unexpected, mismatched)
    if report:
        _report(
            path,
            strict,
            report,
            [n for n, v in zip(names, out) if isinstance(v, jax.ShapeDtypeStruct)],
        )
    return treedef, out


def _report(path, strict: bool, report: LoadReport, abstract: list[str]) -> None:
    missing, unexpected, mismatched = report
    summary = f"{len(missing)} missing, {len(unexpected)} unexpected, {len(mismatched)} mismatched"
    if strict:
        raise CheckpointError(
            f"checkpoint `{os.fspath(path)}`: does not fit `like`: {summary} "
            f"path(s):\n{report.describe()}\nPass the template the checkpoint was saved "
            "from, or `strict=False` to load only the entries that match (e.g. for "
            "fine-tuning).",
            report,
        )
    if abstract:
        raise CheckpointError(
            f"checkpoint `{os.fspath(path)}`: no value for {abstract}: the file does not "
            "have them (or they do not match) and the template gives only their shapes; "
            "pass a template with real arrays there to keep its values.",
            report,
        )
    warnings.warn(
        CheckpointWarning(
            f"load(`{os.fspath(path)}`, strict=False) kept the template's values for "
            f"{summary} path(s):\n{report.describe()}",
            report,
        ),
        stacklevel=4,
    )
