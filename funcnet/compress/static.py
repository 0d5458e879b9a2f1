"""Static (calibrated) int8 quantization: integer matmuls and convolutions, exportable.

:func:`quantize_model` turns a trained float model into a
:class:`~funcnet.core.Layer` that computes its ``Dense`` and ``Conv`` layers
(and attention projections: every ``dot_general`` and convolution with a
kernel on one side) as ``int8 x int8 -> int32``:

- weights: per output channel, symmetric (:func:`~funcnet.compress.quantize_array`);
- activations (the inputs of those ops): one symmetric scale per kernel,
  ``input_scale = amax / 127``, fixed after calibration on a few batches
  (static quantization, as PyTorch's ``prepare`` / ``convert``): ``amax`` is
  the largest ``|x|`` seen (``method="minmax"``, PyTorch's
  ``MinMaxObserver``), or a percentile of ``|x|`` from a histogram
  (``method="percentile"``, a light ``HistogramObserver``; clips outliers);
- the int32 accumulator is rescaled by ``input_scale * scale[channel]`` in
  float32, and everything else (biases, activations, pooling, norms) runs in
  float as before.

Kernels that are used any other way (an ``Embedding`` lookup, a tied output
projection, kernels stacked under ``repeat``) are stored in int8 and
dequantized where used (weight-only). The quantized params are the float
params with each kernel replaced by ``{"q", "scale"[, "input_scale"]}``, so
:func:`~funcnet.compress.size_bytes` and :func:`~funcnet.compress.dequantize`
apply to them, and the model exports with :func:`funcnet.export.export`.

How: like PyTorch's FX graph mode quantization, the rewrite happens on the
traced program, so it reaches kernels wherever a combinator put them. The
model's ``apply`` is traced to a jaxpr (at inference, ``train=False``) and
evaluated equation by equation; an equation that reads a kernel becomes the
integer op (``dot_general`` / ``conv_general_dilated`` with a floating
activation on the other side and the kernel's channel axis, its last, among
the outputs), is entered (``jit``, ``checkpoint``, ``custom_jvp_call``), or
runs in float on the dequantized kernel (anything else). Tracing happens
inside ``apply``, so the quantized model is jittable, and each new input
shape traces once more. Activations are symmetric (as TensorRT's), so a
non-negative input (after a ReLU) uses the levels 0..127 only.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from funcnet.compress._interpret import QMAX, Kernel, Mode, run
from funcnet.compress.prune import _matched
from funcnet.compress.quantize import is_quantized, quantize_array
from funcnet.core import Layer, Params, State, path_str

__all__ = ["METHODS", "WEIGHTS", "int8_accumulators", "quantize_model"]

WEIGHTS = r"(^|/)(w|table)$"
METHODS = ("minmax", "percentile")


def _check_options(method, percentile, bins) -> None:
    if method not in METHODS:
        raise ValueError(
            f"quantize_model: `method` must be one of {METHODS}, got {method!r}; 'minmax' keeps "
            "every activation in range, 'percentile' clips the rare largest ones."
        )
    if isinstance(percentile, bool) or not isinstance(percentile, (int, float)):
        raise TypeError(f"quantize_model: `percentile` must be a number, got {percentile!r}.")
    if not 50.0 < percentile <= 100.0:
        raise ValueError(
            f"quantize_model: `percentile` must be in (50, 100], got {percentile!r}; "
            "e.g. 99.99 (100 is 'minmax')."
        )
    if isinstance(bins, bool) or not isinstance(bins, int) or bins < 16:
        raise ValueError(f"quantize_model: `bins` must be an int >= 16, got {bins!r}.")


def _batches(calibration_batches) -> list:
    if isinstance(calibration_batches, (jax.Array, np.ndarray)):
        return [calibration_batches]
    if not isinstance(calibration_batches, Iterable) or isinstance(calibration_batches, dict):
        raise TypeError(
            "quantize_model: `calibration_batches` must be a list (or iterable) of input "
            f"batches, got {type(calibration_batches).__name__}; e.g. `[x[:256], x[256:512]]`."
        )
    batches = list(calibration_batches)
    if not batches:
        raise ValueError(
            "quantize_model: `calibration_batches` is empty; pass a few input batches of "
            "training data, e.g. `[x[:256], x[256:512]]`."
        )
    return batches


def _trace(model: Layer, params_spec, state, inputs, key):
    """The closed jaxpr of ``model.apply`` at inference and the tree of its outputs."""

    def f(p, s, x, k):
        return model.apply(p, s, x, key=k, train=False)

    closed, out_shape = jax.make_jaxpr(f, return_shape=True)(params_spec, state, inputs, key)
    return closed, jax.tree.structure(out_shape)


def _evaluate(model, leaves, treedef, kernels: dict, state, inputs, key, mode: Mode):
    """Run ``model`` on the param ``leaves`` whose indices in ``kernels`` (to paths) are kernels."""
    specs = []
    for i, leaf in enumerate(leaves):
        if i in kernels and is_quantized(leaf):
            specs.append(jax.ShapeDtypeStruct(leaf["q"].shape, jnp.float32))
        else:
            specs.append(jax.ShapeDtypeStruct(jnp.shape(leaf), jnp.result_type(leaf)))
    closed, out_tree = _trace(model, jax.tree.unflatten(treedef, specs), state, inputs, key)
    args = [
        Kernel(kernels[i], leaf, specs[i].dtype) if i in kernels else leaf
        for i, leaf in enumerate(leaves)
    ]
    args += jax.tree.leaves((state, inputs, key))
    outs = run(closed.jaxpr, closed.consts, args, mode)
    return jax.tree.unflatten(out_tree, outs)


def _quantized_leaves(where: str, qparams) -> tuple[list, Any, dict]:
    flat, treedef = jax.tree_util.tree_flatten_with_path(qparams, is_leaf=is_quantized)
    leaves = [leaf for _, leaf in flat]
    kernels = {i: path_str(p) for i, (p, leaf) in enumerate(flat) if is_quantized(leaf)}
    if not kernels:
        raise ValueError(
            f"{where}: `params` hold no quantized weights ({{'q', 'scale'}} dicts); pass the "
            "params returned by `quantize_model`, not the float ones."
        )
    return leaves, treedef, kernels


def _apply_quantized(model, qparams, state, inputs, key, mode: Mode, where: str):
    leaves, treedef, kernels = _quantized_leaves(where, qparams)
    return _evaluate(model, leaves, treedef, kernels, state, inputs, key, mode)


def _observe(model, params, matched, state, batches, reduce) -> dict:
    """``{path: reduce over batches of stat(path, activations)}`` from float runs of ``model``."""
    leaves, treedef = jax.tree.flatten(params)
    paths = [path_str(p) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
    kernels = {i: paths[i] for i, hit in enumerate(matched) if hit}

    @jax.jit
    def stats(leaves, state, x, extra):
        found: dict = {}

        def observe(path, activation):
            value = reduce(path, jnp.abs(activation.astype(jnp.float32)), extra)
            found[path] = value if path not in found else combine(found[path], value)

        _evaluate(model, leaves, treedef, kernels, state, x, None, Mode(observe=observe))
        return found

    combine = jnp.maximum if reduce is _amax else jnp.add
    total: dict = {}
    for x in batches:
        for path, value in stats(leaves, state, x, getattr(reduce, "extra", None)).items():
            total[path] = value if path not in total else combine(total[path], value)
    return total


def _amax(path, a, extra):
    del path, extra
    return jnp.max(a)


def _histogram(bins: int, amax: dict):
    def reduce(path, a, extra):
        top = extra[path]
        idx = jnp.floor(a / jnp.where(top > 0, top, 1.0) * bins).astype(jnp.int32)
        return jnp.bincount(jnp.clip(idx, 0, bins - 1).ravel(), length=bins)

    reduce.extra = amax
    return reduce


def _percentile_amax(counts: jax.Array, top: jax.Array, percentile: float) -> float:
    """The upper edge of the first histogram bin whose cumulative share reaches ``percentile``."""
    counts = np.asarray(counts, np.float64)
    cdf = np.cumsum(counts) / max(counts.sum(), 1.0)
    first = int(np.searchsorted(cdf, percentile / 100.0 - 1e-12))
    return float(top) * min(first + 1, len(counts)) / len(counts)


def calibrate(model, params, matched, state, batches, method, percentile, bins) -> dict:
    """``{kernel path: amax}`` of the activations entering each integer op."""
    amax = _observe(model, params, matched, state, batches, _amax)
    if method == "minmax" or percentile == 100.0:
        return {path: float(v) for path, v in amax.items()}
    counts = _observe(model, params, matched, state, batches, _histogram(bins, amax))
    return {path: _percentile_amax(counts[path], amax[path], percentile) for path in amax}


def _int8_layer(model: Layer, qparams, state) -> Layer:
    where = f"int8({model.name})"

    def init(key, inputs):
        del key, inputs
        return qparams, state

    def apply(params, state, inputs, *, key=None, train=False):
        if train:
            raise ValueError(
                f"{where}: a statically quantized model runs at inference only (`train=False`); "
                "to train for quantization use `fn.compress.qat(model)`, then quantize."
            )
        return _apply_quantized(model, params, state, inputs, key, Mode(), where)

    return Layer(init, apply, "int8", (model,))


def quantize_model(
    model: Layer,
    params: Params,
    state: State,
    calibration_batches: Any,
    *,
    method: str = "minmax",
    percentile: float = 99.99,
    bins: int = 2048,
    pattern: str = WEIGHTS,
) -> tuple[Layer, Any]:
    """Post-training static int8 quantization: ``(quantized model, its params)``.

    Weights are quantized per output channel; the activations entering each
    ``dot_general`` / convolution with a kernel get one scale, calibrated by
    running the float model on ``calibration_batches`` (see the module doc).
    The returned model is a :class:`~funcnet.core.Layer` shown as
    ``int8(<model>)``: ``apply(qparams, state, x)`` runs the integer program
    (``train=False`` only); its ``init`` returns ``(qparams, state)``.

    Args:
        model: the float model.
        params, state: its trained params and state.
        calibration_batches: a list (or iterable) of input batches, or one
            array (one batch); a few hundred examples are usually enough.
        method: ``"minmax"`` (``amax`` = the largest ``|x|`` seen) or
            ``"percentile"`` (the ``percentile``-th percentile of ``|x|``,
            from a ``bins``-bin histogram over all batches; larger values clip).
        percentile: in ``(50, 100]``, for ``method="percentile"``.
        bins: histogram bins, for ``method="percentile"``.
        pattern: regex over param paths of the weights to quantize; default
            ``Dense``/``Conv``/attention kernels ``w`` and ``Embedding`` tables.

    Returns:
        ``(qmodel, qparams)``; in ``qparams`` each matched weight is
        ``{"q": int8, "scale": float32 (channels,)}``, plus ``"input_scale":
        float32 ()`` where its op runs in integers.

    Raises:
        ValueError: for a bad ``method``, ``percentile`` or ``bins``, no
            calibration batch, a ``pattern`` matching no parameter (or a scalar).
        TypeError: for ``calibration_batches`` that are not batches, or a
            ``pattern`` matching a non-floating parameter.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> import funcnet as fn
        >>> model = fn.serial(fn.Dense(16), jax.nn.relu, fn.Dense(3))
        >>> x = jax.random.normal(jax.random.key(1), (64, 4))
        >>> params, state = model.init(jax.random.key(0), x)
        >>> qmodel, qparams = quantize_model(model, params, state, [x[:32], x[32:]])
        >>> qmodel
        int8(serial(Dense(16), relu, Dense(3)))
        >>> jax.tree.map(lambda a: a.dtype.name, qparams[0])
        {'b': 'float32', 'w': {'input_scale': 'float32', 'q': 'int8', 'scale': 'float32'}}
        >>> y, _ = jax.jit(qmodel.apply)(qparams, state, x)
        >>> bool(jnp.abs(y - model.apply(params, state, x)[0]).max() < 0.05)
        True
    """
    _check_options(method, percentile, bins)
    batches = _batches(calibration_batches)
    matched = _matched("quantize_model", params, pattern)
    amax = calibrate(model, params, matched, state, batches, method, percentile, bins)
    flat = jax.tree_util.tree_flatten_with_path(params)
    leaves = []
    for hit, (path, leaf) in zip(matched, flat[0]):
        if not hit:
            leaves.append(leaf)
            continue
        node = quantize_array(leaf)
        if path_str(path) in amax:
            node["input_scale"] = jnp.asarray(amax[path_str(path)] / QMAX, jnp.float32)
        leaves.append(node)
    qparams = jax.tree.unflatten(flat[1], leaves)
    return _int8_layer(model, qparams, state), qparams


def int8_accumulators(
    model: Layer, qparams: Any, state: State, inputs: Any, *, key=None
) -> dict[str, list[tuple[jax.Array, jax.Array]]]:
    """The integer ops' int8 inputs and int32 accumulators, by kernel path, for checking.

    Runs the quantized program of ``model`` (the **float** model given to
    :func:`quantize_model`) on ``qparams`` and returns, for each kernel that
    runs in integers, a list (one entry per use) of ``(int8 activations,
    int32 accumulators)``: ``qmodel``'s output of that op is ``accumulators *
    input_scale * scale`` (per channel).

    Raises:
        ValueError: when ``qparams`` hold no quantized weight.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> import funcnet as fn
        >>> model = fn.Dense(2)
        >>> x = jnp.array([[1.0, -2.0, 0.5]])
        >>> params, state = model.init(jax.random.key(0), x)
        >>> _, qparams = quantize_model(model, params, state, [x])
        >>> [(qx, acc)] = int8_accumulators(model, qparams, state, x)["w"]
        >>> qx.tolist(), acc.dtype.name
        ([[64, -127, 32]], 'int32')
    """
    _quantized_leaves("int8_accumulators", qparams)  # the error outside of jit

    @jax.jit
    def accumulators(qparams, state, inputs, key):
        record: list = []
        mode = Mode(record=record)
        _apply_quantized(model, qparams, state, inputs, key, mode, "int8_accumulators")
        out: dict = {}
        for path, qx, acc in record:
            out.setdefault(path, []).append((qx, acc))
        return out

    return accumulators(qparams, state, inputs, key)
