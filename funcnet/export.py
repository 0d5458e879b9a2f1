"""Deployment: a model as a serialized ``jax.export`` artifact that runs without its Python code.

:func:`export` traces the model's inference function (``apply`` with
``train=False``) to StableHLO with :func:`jax.export.export` and writes a
directory:

- ``model.jaxexport``: the serialized :class:`jax.export.Exported` (versioned
  StableHLO, with the parameters baked in as constants unless
  ``params_as_args``);
- ``params.safetensors``: with ``params_as_args``, the params and state leaves
  as a :mod:`funcnet.checkpoint` file (a list, in ``jax.tree.leaves((params,
  state))`` order);
- ``model.json``: a description: input and output specs (``"b"`` marks the
  symbolic batch dimension), platforms, funcnet/jax versions, the calling
  convention version, the parameter count and a SHA-256 of the artifact.

:func:`load_exported` reads it back into a callable. Loading needs only jax,
numpy and this module, never the code that built the model. Serialization
needs the ``flatbuffers`` package (``pip install flatbuffers``).

Problems with an artifact or with what a model is given (a missing or
corrupted file, inputs of other shapes than exported) raise
:class:`ExportError`, a :class:`~funcnet.core.FuncnetError` and a
``ValueError``, whose message names the directory or file.

An artifact runs on the platforms it was exported for (default: the current
backend; pass e.g. ``platforms=("cpu", "cuda")``) and with jax versions that
still support its calling convention (jax keeps about six months of backward
compatibility).

Examples:
    >>> import tempfile, jax, jax.numpy as jnp
    >>> from funcnet import Dense, serial
    >>> model = serial(Dense(8), jax.nn.relu, Dense(2))
    >>> params, state = model.init(jax.random.key(0), jnp.zeros((1, 4)))
    >>> path = export(model, params, state, jax.ShapeDtypeStruct((1, 4), jnp.float32),
    ...               tempfile.mkdtemp())
    >>> predict = load_exported(path)
    >>> predict.description["inputs"]
    [{'path': '', 'shape': ['b', 4], 'dtype': 'float32'}]
    >>> predict(jnp.ones((5, 4))).shape  # any batch size
    (5, 2)
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import stat
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from funcnet import checkpoint
from funcnet.core import FuncnetError, as_layer, path_str, spec_of
from funcnet.version import __version__

__all__ = ["ExportError", "ExportedModel", "export", "load_exported"]

FORMAT = "funcnet.export"
FORMAT_VERSION = 1
ARTIFACT = "model.jaxexport"
DESCRIPTION = "model.json"
PARAMS = "params.safetensors"


class ExportError(FuncnetError, ValueError):
    """An export cannot be written, read or called as asked; the message names its directory.

    Examples:
        >>> load_exported("/no/such/export")
        Traceback (most recent call last):
        ...
        funcnet.export.ExportError: load_exported: `/no/such/export` has no model.json; ...
    """


def _describe(tree) -> list[dict]:
    """``[{"path", "shape", "dtype"}]`` of a pytree of avals/specs (symbolic dims as strings)."""
    out = []
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        shape = [d if isinstance(d, int) else str(d) for d in leaf.shape]
        out.append({"path": path_str(path), "shape": shape, "dtype": str(np.dtype(leaf.dtype))})
    return out


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def export(
    model,
    params: Any,
    state: Any,
    input_spec: Any,
    path: str | os.PathLike,
    *,
    batch_polymorphic: bool = True,
    params_as_args: bool = False,
    platforms: Sequence[str] | None = None,
) -> str:
    """Export the model's inference function ``inputs -> outputs`` to the directory ``path``.

    Args:
        model: a :class:`~funcnet.core.Layer` (or a plain function).
        params, state: its parameters and state (e.g. ``train_state.params``).
        input_spec: a pytree of arrays or :class:`jax.ShapeDtypeStruct` giving
            the inputs' shapes and dtypes (only these are read).
        path: the directory to write (created if needed; the three files in it
            are replaced atomically one by one).
        batch_polymorphic: make the leading dimension of every input leaf one
            symbolic dimension ``b``, so the artifact accepts any batch size
            (every input leaf must then have a leading batch axis, the same for
            all). When False the shapes are exactly those of ``input_spec``.
        params_as_args: keep the parameters out of the StableHLO: they are
            stored next to it in ``params.safetensors`` and passed at every
            call, so they can be replaced (``ExportedModel.apply``) without
            exporting again. Otherwise they are baked in as constants.
        platforms: the platforms to compile for (``"cpu"``, ``"cuda"``,
            ``"rocm"``, ``"tpu"``); default the current backend.

    Returns:
        ``path`` as a string.

    Raises:
        ExportError: when ``batch_polymorphic`` and an input leaf is a scalar.
        TypeError: when ``input_spec`` has no array leaves.
    """
    layer = as_layer(model)
    specs = spec_of(input_spec)
    leaves = jax.tree.leaves(specs)
    if not leaves:
        raise TypeError(
            "export: `input_spec` has no arrays; pass an example input or its "
            "`jax.ShapeDtypeStruct`, e.g. `jax.ShapeDtypeStruct((1, 784), jnp.float32)`."
        )
    if batch_polymorphic:
        scalars = [
            path_str(p) or "(root)"
            for p, s in jax.tree_util.tree_flatten_with_path(specs)[0]
            if not s.shape
        ]
        if scalars:
            raise ExportError(
                f"export to `{os.fspath(path)}`: with `batch_polymorphic=True` every input needs "
                f"a leading batch axis, but {scalars} are scalars; add a batch axis or pass "
                "`batch_polymorphic=False`."
            )
        (batch,) = jax.export.symbolic_shape("b")
        specs = jax.tree.map(lambda s: jax.ShapeDtypeStruct((batch, *s.shape[1:]), s.dtype), specs)

    weights = jax.tree.leaves((params, state))
    weights_def = jax.tree.structure((params, state))

    if params_as_args:

        def infer(flat_weights, inputs):
            p, s = jax.tree.unflatten(weights_def, flat_weights)
            return layer.apply(p, s, inputs)[0]

        args = ([jax.ShapeDtypeStruct(np.shape(w), w.dtype) for w in weights], specs)
    else:

        def infer(inputs):
            return layer.apply(params, state, inputs)[0]

        args = (specs,)

    try:
        exported = jax.export.export(jax.jit(infer), platforms=platforms)(*args)
    except Exception as err:
        if batch_polymorphic:
            err.add_note(
                "funcnet.export: exporting with a symbolic batch dimension `b` failed; if the "
                "model needs a concrete batch size, pass `batch_polymorphic=False`."
            )
        raise
    artifact = bytes(exported.serialize())
    out_tree = jax.tree_util.tree_unflatten(exported.out_tree, exported.out_avals)
    description = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "funcnet_version": __version__,
        "jax_version": jax.__version__,
        "model": repr(layer),
        "platforms": list(exported.platforms),
        "calling_convention_version": exported.calling_convention_version,
        "batch_polymorphic": bool(batch_polymorphic),
        "params_as_args": bool(params_as_args),
        "param_count": int(sum(math.prod(np.shape(w)) for w in jax.tree.leaves(params))),
        "inputs": _describe(specs),
        "outputs": _describe(out_tree),
        "artifact": ARTIFACT,
        "artifact_sha256": _sha256(artifact),
    }
    path = os.fspath(path)
    os.makedirs(path, exist_ok=True)
    checkpoint.atomic_write(os.path.join(path, ARTIFACT), lambda f: f.write(artifact))
    if params_as_args:
        checkpoint.save(os.path.join(path, PARAMS), list(weights))
        with open(os.path.join(path, PARAMS), "rb") as f:
            description["params_sha256"] = _sha256(f.read())
    text = json.dumps(description, indent=2) + "\n"
    checkpoint.atomic_write(os.path.join(path, DESCRIPTION), lambda f: f.write(text.encode()))
    return path


class ExportedModel:
    """A loaded export: call it on inputs like the model's ``apply`` (inference mode).

    Attributes:
        exported: the :class:`jax.export.Exported`.
        description: the contents of ``model.json``.
        weights: with ``params_as_args``, the stored params and state leaves.
    """

    def __init__(self, exported, description: dict, weights: list | None, path: str):
        self.exported = exported
        self.description = description
        self.weights = weights
        self.path = path
        self._call = jax.jit(exported.call)
        self._compiled: dict = {}

    def __repr__(self) -> str:
        return f"ExportedModel({self.path!r}, model={self.description.get('model')!r})"

    def _check(self, inputs) -> None:
        """Raise unless ``inputs`` has the exported paths, dtypes and shapes."""
        want = self.description["inputs"]
        got = []
        for p, x in jax.tree_util.tree_flatten_with_path(inputs)[0]:
            try:
                dtype = str(np.dtype(getattr(x, "dtype", None) or np.asarray(x).dtype))
                shape = list(np.shape(x))
            except (TypeError, ValueError) as err:
                dtype, shape = f"<not an array: {type(err).__name__}>", None
            got.append((path_str(p), dtype, shape))
        problem = _mismatch(want, got)
        if problem:
            expected = [f"{s['path'] or '(root)'}: {s['dtype']}{s['shape']}" for s in want]
            actual = [f"{p or '(root)'}: {d}{s}" for p, d, s in got]
            raise ExportError(
                f"exported model `{self.path}`: expected inputs {expected} ('b' is any batch "
                f"size), got {actual} ({problem}); pass inputs of the exported shapes and dtypes."
            )

    def _run(self, *args):
        """Call the artifact, compiling it once per input signature (compile errors named)."""
        signature = tuple(
            (np.shape(x), str(x.dtype), getattr(x, "weak_type", False), getattr(x, "sharding", 0))
            if hasattr(x, "dtype")
            else (np.shape(x), type(x).__name__)
            for x in jax.tree.leaves(args)
        )
        if signature not in self._compiled:
            backend = jax.default_backend()
            if backend not in self.exported.platforms:
                raise ExportError(
                    f"exported model `{self.path}` was exported for platforms "
                    f"{list(self.exported.platforms)}, this process runs on {backend!r}; export "
                    f"again with `platforms=(..., {backend!r})`."
                )
            try:
                self._compiled[signature] = self._call.lower(*args).compile()
            except Exception as err:
                raise ExportError(
                    f"exported model `{self.path}`: compiling its artifact failed "
                    f"({type(err).__name__}: {_clip(str(err))}); the artifact is damaged or "
                    f"needs another jax (it was written with jax "
                    f"{self.description['jax_version']}, this is {jax.__version__}): export the "
                    "model again."
                ) from err
        return self._compiled[signature](*args)

    def __call__(self, inputs):
        """The model's outputs for ``inputs`` (with the stored weights).

        Raises:
            ExportError: when ``inputs`` do not have the exported paths, shapes
                and dtypes, or the artifact cannot be compiled here.
        """
        self._check(inputs)
        if self.weights is not None:
            return self._run(self.weights, inputs)
        return self._run(inputs)

    def apply(self, params, state, inputs):
        """The outputs with other weights of the same structure (needs ``params_as_args``).

        Raises:
            ExportError: if the model was exported with its parameters baked in,
                or ``params``/``state`` have another number of leaves, shapes or dtypes.
        """
        if self.weights is None:
            raise ExportError(
                f"exported model `{self.path}`: its parameters are baked in; export with "
                "`params_as_args=True` to pass other parameters."
            )
        weights = jax.tree.leaves((params, state))
        if len(weights) != len(self.weights):
            raise ExportError(
                f"exported model `{self.path}`: expected params and state with "
                f"{len(self.weights)} arrays in all, got {len(weights)}; pass the same "
                "structure as at export."
            )
        _check_weights(self.path, "the params and state passed", weights, self.weights)
        self._check(inputs)
        return self._run(weights, inputs)


def _mismatch(want: list[dict], got: list[tuple]) -> str:
    """Why the flattened inputs ``got`` (path, dtype, shape) do not fit ``want``; "" if they do."""
    if len(got) != len(want):
        return f"{len(got)} arrays instead of {len(want)}"
    sizes: dict[str, int] = {}
    for spec, (path, dtype, shape) in zip(want, got):
        name = path or "(root)"
        if path != spec["path"]:
            return f"found `{name}` where `{spec['path'] or '(root)'}` was exported"
        if dtype != spec["dtype"] or shape is None or len(shape) != len(spec["shape"]):
            return f"`{name}` differs in dtype or rank"
        for w, d in zip(spec["shape"], shape):
            if isinstance(w, int) and w != d:
                return f"`{name}` has {d} where {w} was exported"
            if isinstance(w, str) and (d < 1 or sizes.setdefault(w, d) != d):
                return f"dimension {w!r} must be the same size >= 1 in every input"
    return ""


def _check_weights(path: str, what: str, weights: Sequence, avals: Sequence) -> None:
    for i, (w, aval) in enumerate(zip(weights, avals)):
        shape, dtype = tuple(np.shape(w)), str(getattr(w, "dtype", np.asarray(w).dtype))
        if shape != tuple(aval.shape) or dtype != str(aval.dtype):
            raise ExportError(
                f"exported model `{path}`: {what}: array {i} is {dtype}{list(shape)}, the "
                f"artifact expects {aval.dtype}{list(aval.shape)}; pass the structure exported."
            )


def _clip(text: str, limit: int = 2000) -> str:
    return text if len(text) <= limit else text[:limit] + " ..."


def load_exported(path: str | os.PathLike) -> ExportedModel:
    """Load a model written by :func:`export`; it runs without the model's Python code.

    Everything is checked before it is used: ``model.json`` against its schema
    (every key, of the right type), the artifact and params against the
    SHA-256 checksums in it, and the description's inputs, outputs, platforms
    and weights against what the deserialized artifact declares.

    Args:
        path: the directory given to :func:`export`.

    Returns:
        An :class:`ExportedModel`: ``model(inputs) -> outputs``.

    Raises:
        ExportError: when the directory is not an export, was written by a
            newer funcnet, its ``model.json`` is malformed or disagrees with the
            artifact, or a file is missing, not a regular file, does not match
            its checksum or cannot be deserialized. The message names the file.
    """
    path = os.fspath(path)
    description, described = _read_description(path)
    _check_description(description, described)
    exported = _read_artifact(path, description)
    weight_avals = _check_against_artifact(exported, description, described)
    weights = None
    if weight_avals is not None:
        weights = _load_weights(path, description, weight_avals)
    return ExportedModel(exported, description, weights, path)


# --------------------------------------------------------------------------- loading, step by step

_MAX_DESCRIPTION = 64 << 20  # bytes; a model.json is a few kilobytes
_AGAIN = "export the model again."
_EDITED = f"the file was edited or damaged: {_AGAIN}"


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_specs(value) -> bool:
    """A list of ``{"path": str, "shape": [int >= 0 | str], "dtype": str}``."""
    return isinstance(value, list) and all(
        isinstance(s, dict)
        and set(s) == {"path", "shape", "dtype"}
        and isinstance(s["path"], str)
        and isinstance(s["dtype"], str)
        and isinstance(s["shape"], list)
        and all((_is_int(d) and d >= 0) or isinstance(d, str) for d in s["shape"])
        for s in value
    )


def _is_sha256(value) -> bool:
    return (
        isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value)
    )


# key -> (predicate, what it must be); every key is required (format_version is checked first).
_SCHEMA = {
    "funcnet_version": (lambda v: isinstance(v, str), "a string"),
    "jax_version": (lambda v: isinstance(v, str), "a string"),
    "model": (lambda v: isinstance(v, str), "a string"),
    "platforms": (
        lambda v: isinstance(v, list) and all(isinstance(p, str) for p in v),
        "a list of strings",
    ),
    "calling_convention_version": (_is_int, "an integer"),
    "batch_polymorphic": (lambda v: isinstance(v, bool), "true or false"),
    "params_as_args": (lambda v: isinstance(v, bool), "true or false"),
    "param_count": (lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
    "inputs": (_is_specs, 'a list of {"path": str, "shape": [int | "b"], "dtype": str}'),
    "outputs": (_is_specs, 'a list of {"path": str, "shape": [int | "b"], "dtype": str}'),
    "artifact": (lambda v: v == ARTIFACT, repr(ARTIFACT)),
    "artifact_sha256": (_is_sha256, "64 lowercase hex digits"),
}
_OPTIONAL = {"params_sha256": (_is_sha256, "64 lowercase hex digits")}  # since funcnet 0.1


def _show(value, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _read_regular(file: str, limit: int | None = None) -> bytes:
    """The bytes of ``file``, refusing anything but a regular file (a FIFO would block)."""
    fd = os.open(file, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ExportError(
                f"load_exported: `{file}` is not a regular file (a FIFO, socket, device or "
                f"folder); {_AGAIN}"
            )
        os.set_blocking(fd, True)
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read() if limit is None else f.read(limit + 1)
    finally:
        os.close(fd)
    if limit is not None and len(data) > limit:
        raise ExportError(
            f"load_exported: `{file}` is larger than {limit} bytes, too large for a "
            f"description; {_EDITED}"
        )
    return data


def _read_description(path: str) -> tuple[Any, str]:
    described = os.path.join(path, DESCRIPTION)
    try:
        raw = _read_regular(described, _MAX_DESCRIPTION)
    except (FileNotFoundError, NotADirectoryError):
        raise ExportError(
            f"load_exported: `{path}` has no {DESCRIPTION}; pass the directory written by "
            "`funcnet.export.export`."
        ) from None
    try:
        return json.loads(raw.decode("utf-8")), described
    except (UnicodeDecodeError, ValueError, RecursionError) as err:
        raise ExportError(
            f"load_exported: `{described}` is not valid JSON ({type(err).__name__}: "
            f"{_clip(str(err), 200)}); {_AGAIN}"
        ) from err


def _check_description(description: Any, described: str) -> None:
    """The format marker, then the version's type and value, then every key of the schema."""
    if not isinstance(description, dict) or description.get("format") != FORMAT:
        raise ExportError(
            f"load_exported: `{described}` does not describe a funcnet export (no "
            f"format {FORMAT!r}); pass the directory written by `funcnet.export.export`."
        )
    version = description.get("format_version")
    if not _is_int(version) or version < 1:
        raise ExportError(
            f"load_exported: `{described}` is malformed: 'format_version' must be an integer "
            f">= 1, got {_show(version)}; {_EDITED}"
        )
    if version > FORMAT_VERSION:
        raise ExportError(
            f"load_exported: `{described}` has format version {version}, this funcnet reads up "
            f"to {FORMAT_VERSION}; upgrade funcnet."
        )
    for key, (_, kind) in _SCHEMA.items():
        if key not in description:
            raise ExportError(
                f"load_exported: `{described}` is malformed: it has no {key!r} (expected "
                f"{kind}); {_EDITED}"
            )
    for key, (ok, kind) in {**_SCHEMA, **_OPTIONAL}.items():
        if key in description and not ok(description[key]):
            raise ExportError(
                f"load_exported: `{described}` is malformed: {key!r} must be {kind}, got "
                f"{_show(description[key])}; {_EDITED}"
            )


def _read_artifact(path: str, description: dict):
    file = os.path.join(path, ARTIFACT)
    try:
        artifact = _read_regular(file)
    except (FileNotFoundError, NotADirectoryError):
        raise ExportError(
            f"load_exported: `{file}` is missing; the export in `{path}` is incomplete. "
            f"{_AGAIN.capitalize()}"
        ) from None
    if _sha256(artifact) != description["artifact_sha256"]:
        raise ExportError(
            f"load_exported: `{file}` does not match the checksum in {DESCRIPTION}: the "
            f"artifact is corrupted or belongs to another export; {_AGAIN}"
        )
    try:
        return jax.export.deserialize(bytearray(artifact))
    except Exception as err:  # flatbuffers and jax raise many kinds for a malformed artifact
        raise ExportError(
            f"load_exported: `{file}` cannot be deserialized ({type(err).__name__}: "
            f"{_clip(str(err), 500)}); it matches its checksum, so it was written this way "
            f"(with jax {description['jax_version']}; this is {jax.__version__}) or it and "
            f"{DESCRIPTION} were both replaced: {_AGAIN}"
        ) from err


def _check_against_artifact(exported, description: dict, described: str):
    """The description must say what the artifact declares; returns the weights' avals or None."""
    args, _ = jax.tree_util.tree_unflatten(exported.in_tree, exported.in_avals)
    outputs = jax.tree_util.tree_unflatten(exported.out_tree, exported.out_avals)
    declared = {
        "params_as_args": len(args) == 2,
        "batch_polymorphic": any(
            isinstance(d, str) for spec in _describe(args[-1]) for d in spec["shape"]
        ),
        "inputs": _describe(args[-1]),
        "outputs": _describe(outputs),
        "platforms": list(exported.platforms),
        "calling_convention_version": exported.calling_convention_version,
    }
    for key, value in declared.items():
        if description[key] != value:
            raise ExportError(
                f"load_exported: `{described}` disagrees with its artifact: {key!r} is "
                f"{_show(description[key])}, the artifact's is {_show(value)}; {DESCRIPTION} "
                f"was edited or belongs to another export: {_AGAIN}"
            )
    return args[0] if description["params_as_args"] else None


def _load_weights(path: str, description: dict, avals: Sequence) -> list:
    file = os.path.join(path, PARAMS)
    try:
        raw = _read_regular(file)
    except (FileNotFoundError, NotADirectoryError):
        raise ExportError(
            f"load_exported: `{file}` is missing; the export in `{path}` was written with "
            f"`params_as_args=True` and needs it. {_AGAIN.capitalize()}"
        ) from None
    expected = description.get("params_sha256")
    if expected is not None and _sha256(raw) != expected:
        raise ExportError(
            f"load_exported: `{file}` does not match the checksum in {DESCRIPTION}: the params "
            f"are corrupted or belong to another export; {_AGAIN}"
        )
    try:
        weights = checkpoint.load(file)
    except FuncnetError as err:
        raise ExportError(f"load_exported: {err}") from err
    if not isinstance(weights, list) or len(weights) != len(avals):
        raise ExportError(
            f"load_exported: `{file}` holds {_show(type(weights).__name__)} of "
            f"{len(jax.tree.leaves(weights))} arrays, the artifact takes a list of {len(avals)}; "
            f"{_AGAIN}"
        )
    _check_weights(path, f"`{file}`", weights, avals)
    return weights
