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

    def __repr__(self) -> str:
        return f"ExportedModel({self.path!r}, model={self.description.get('model')!r})"

    def _check(self, inputs) -> None:
        want = self.description["inputs"]
        got = jax.tree_util.tree_flatten_with_path(inputs)[0]
        ok = len(got) == len(want)
        if ok:
            for (p, x), spec in zip(got, want):
                shape = np.shape(x)
                dtype = str(np.dtype(getattr(x, "dtype", np.asarray(x).dtype)))
                ok &= path_str(p) == spec["path"] and dtype == spec["dtype"]
                ok &= len(shape) == len(spec["shape"]) and all(
                    not isinstance(w, int) or w == d for w, d in zip(spec["shape"], shape)
                )
        if not ok:
            expected = [f"{s['path'] or '(root)'}: {s['dtype']}{s['shape']}" for s in want]
            actual = [
                f"{path_str(p) or '(root)'}: "
                f"{np.dtype(getattr(x, 'dtype', np.asarray(x).dtype))}{list(np.shape(x))}"
                for p, x in got
            ]
            raise ExportError(
                f"exported model `{self.path}`: expected inputs {expected} ('b' is any batch "
                f"size), got {actual}; pass inputs of the exported shapes and dtypes."
            )

    def __call__(self, inputs):
        """The model's outputs for ``inputs`` (with the stored weights)."""
        self._check(inputs)
        if self.weights is not None:
            return self._call(self.weights, inputs)
        return self._call(inputs)

    def apply(self, params, state, inputs):
        """The outputs with other weights of the same structure (needs ``params_as_args``).

        Raises:
            ExportError: if the model was exported with its parameters baked in,
                or ``params``/``state`` have another number of leaves.
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
        self._check(inputs)
        return self._call(weights, inputs)


def load_exported(path: str | os.PathLike) -> ExportedModel:
    """Load a model written by :func:`export`; it runs without the model's Python code.

    Args:
        path: the directory given to :func:`export`.

    Returns:
        An :class:`ExportedModel`: ``model(inputs) -> outputs``.

    Raises:
        ExportError: when the directory is not an export, was written by a
            newer funcnet, or its artifact is missing or does not match its checksum.
    """
    path = os.fspath(path)
    described = os.path.join(path, DESCRIPTION)
    try:
        with open(described, encoding="utf-8") as f:
            description = json.load(f)
    except FileNotFoundError:
        raise ExportError(
            f"load_exported: `{path}` has no {DESCRIPTION}; pass the directory written by "
            "`funcnet.export.export`."
        ) from None
    except json.JSONDecodeError as err:
        raise ExportError(
            f"load_exported: `{described}` is not valid JSON ({err}); export the model again."
        ) from None
    if not isinstance(description, dict) or description.get("format") != FORMAT:
        raise ExportError(
            f"load_exported: `{described}` does not describe a funcnet export (no "
            f"format {FORMAT!r}); pass the directory written by `funcnet.export.export`."
        )
    version = description.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ExportError(
            f"load_exported: `{path}` has format version {version}, this funcnet reads up to "
            f"{FORMAT_VERSION}; upgrade funcnet."
        )
    artifact_path = os.path.join(path, ARTIFACT)
    try:
        with open(artifact_path, "rb") as f:
            artifact = f.read()
    except FileNotFoundError:
        raise ExportError(
            f"load_exported: `{artifact_path}` is missing; the export in `{path}` is incomplete. "
            "Export the model again."
        ) from None
    if _sha256(artifact) != description.get("artifact_sha256"):
        raise ExportError(
            f"load_exported: `{os.path.join(path, ARTIFACT)}` does not match the checksum in "
            f"{DESCRIPTION}: the artifact is corrupted or belongs to another export; export "
            "the model again."
        )
    exported = jax.export.deserialize(bytearray(artifact))
    weights = None
    if description.get("params_as_args"):
        weights = checkpoint.load(os.path.join(path, PARAMS))
    return ExportedModel(exported, description, weights, path)
