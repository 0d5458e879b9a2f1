"""Post-training int8 weight quantization: per-channel symmetric, and back to floats.

Each kernel ``w`` (a leaf whose path matches ``pattern``; the ``Dense`` and
``Conv`` kernels by default) becomes ``{"q": int8, "scale": float32}`` with one
scale per output channel (the last axis): ``scale[j] = max|w[..., j]| / 127``
and ``q = clip(round(w / scale), -127, 127)``. :func:`dequantize` recomputes
``q * scale``, so the model runs unchanged on the dequantized params (weight-only
quantization: stored at about a quarter of the size, computed in float; inside
``jax.jit`` the dequantization fuses into the program). Every weight is then
within ``scale / 2`` of the original (rounding to the nearest step; the
clipping never bites since ``|w| / scale <= 127``). :func:`int8_dense` is a
``Dense`` computed in integers (``int8 x int8 -> int32``) on activations
quantized on the fly.

``bits=4`` (any of 2 .. 8) uses the levels ``-(2**(bits-1)-1) .. 2**(bits-1)-1``
instead of ``-127 .. 127``, still stored in int8 arrays; :func:`size_bytes`
with ``bits=`` counts them packed. See :mod:`funcnet.compress.qat` for training
a model for its quantized weights.
"""

from __future__ import annotations

import re
from typing import Any

import jax
import jax.numpy as jnp

from funcnet.compress.prune import KERNELS
from funcnet.core import Params, path_str

__all__ = ["dequantize", "int8_dense", "is_quantized", "quantize", "quantize_array", "size_bytes"]

_QMAX = 127


def check_bits(where: str, bits) -> int:
    """``bits`` checked: an int in ``[2, 8]`` (values stored in int8 either way)."""
    if isinstance(bits, bool) or not isinstance(bits, int) or not 2 <= bits <= 8:
        raise ValueError(
            f"{where}: `bits` must be an int in [2, 8] (symmetric levels -(2**(bits-1)-1) .. "
            f"2**(bits-1)-1, stored in int8), got {bits!r}; e.g. `bits=4` for int4."
        )
    return bits


def channel_scale(w32: jax.Array, axis: int, qmax: int) -> jax.Array:
    """``max|w| / qmax`` over every axis but ``axis``: shape ``(w.shape[axis],)``."""
    reduce = tuple(a for a in range(w32.ndim) if a != axis)
    return jnp.max(jnp.abs(w32), axis=reduce) / qmax


def round_to_grid(w32: jax.Array, scale: jax.Array, axis: int, qmax: int) -> jax.Array:
    """``clip(round(w / scale), -qmax, qmax)`` in float32 (0 where ``scale`` is 0)."""
    shape = [1] * w32.ndim
    shape[axis] = w32.shape[axis]
    safe = jnp.where(scale > 0, scale, 1.0).reshape(shape)
    return jnp.clip(jnp.round(w32 / safe), -qmax, qmax)


def _check_weight(where: str, w: jax.Array) -> None:
    if not jnp.issubdtype(w.dtype, jnp.floating):
        raise TypeError(
            f"{where}: `w` must be floating point, got dtype {w.dtype}; only float "
            "weights are quantized."
        )
    if w.ndim == 0:
        raise ValueError(
            f"{where}: `w` must have at least one axis (a channel axis), got a scalar."
        )


def quantize_array(
    w: jax.typing.ArrayLike, *, axis: int = -1, bits: int = 8
) -> dict[str, jax.Array]:
    """``{"q": int8, "scale": float32}``: symmetric integers with one scale per index of ``axis``.

    With ``qmax = 2**(bits - 1) - 1`` (127 for int8, 7 for int4):
    ``scale = max|w| / qmax`` over the other axes and ``q = clip(round(w /
    scale), -qmax, qmax)``, stored in int8 whatever ``bits`` (see
    :func:`size_bytes` for the packed size). ``scale`` has shape
    ``(w.shape[axis],)``; a channel of zeros gets scale 0 (and ``q`` 0).

    Raises:
        TypeError: for a non-floating ``w``.
        ValueError: for a scalar ``w`` or ``bits`` outside ``[2, 8]``.

    Examples:
        >>> import jax.numpy as jnp
        >>> qw = quantize_array(jnp.array([[1.0, -0.5], [-2.54, 0.25]]))
        >>> qw["q"].tolist(), qw["scale"].tolist()
        ([[50, -127], [-127, 64]], [0.02, 0.003937...])
        >>> quantize_array(jnp.array([[1.0, -0.5], [-2.54, 0.25]]), bits=4)["q"].tolist()
        [[3, -7], [-7, 3]]
    """
    qmax = 2 ** (check_bits("quantize_array", bits) - 1) - 1
    w = jnp.asarray(w)
    _check_weight("quantize_array", w)
    axis = axis % w.ndim
    w32 = w.astype(jnp.float32)
    scale = channel_scale(w32, axis, qmax)
    return {"q": round_to_grid(w32, scale, axis, qmax).astype(jnp.int8), "scale": scale}


def is_quantized(node: Any) -> bool:
    """Whether ``node`` is a quantized weight ``{"q": int8 array, "scale": array}``.

    Also true with an ``"input_scale"`` (the calibrated activation scale of
    :func:`~funcnet.compress.quantize_model`).

    Examples:
        >>> import jax.numpy as jnp
        >>> is_quantized(quantize_array(jnp.ones((2, 3)))), is_quantized({"w": jnp.ones(2)})
        (True, False)
    """
    return (
        isinstance(node, dict)
        and set(node) in ({"q", "scale"}, {"q", "scale", "input_scale"})
        and hasattr(node["q"], "dtype")
        and node["q"].dtype == jnp.int8
    )


def quantize(params: Params, *, pattern: str = KERNELS, bits: int = 8) -> Any:
    """``params`` with every leaf matching ``pattern`` replaced by :func:`quantize_array` of it.

    Scales are per output channel (the last axis: ``features`` of a ``Dense``
    ``(in, features)`` or a ``Conv`` ``(*kernel_size, in, features)`` kernel).
    Biases and other leaves stay as they are. Run the model on
    :func:`dequantize` of the result.

    Args:
        params: a pytree of params.
        pattern: regex (``re.search``) over param paths
            (:func:`funcnet.core.path_str`); default: the kernels ``w``.
        bits: 8 (int8) or fewer (e.g. 4: levels -7 .. 7, still stored in int8).

    Returns:
        The quantized params (a pytree whose quantized leaves are dicts).

    Raises:
        ValueError: when ``pattern`` matches no parameter, or a scalar; for
            ``bits`` outside ``[2, 8]``.
        TypeError: when it matches a non-floating parameter.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> import funcnet as fn
        >>> model = fn.serial(fn.Dense(64), jax.nn.relu, fn.Dense(10))
        >>> params, state = model.init(jax.random.key(0), jnp.zeros((1, 64)))
        >>> qparams = quantize(params)
        >>> jax.tree.map(lambda a: (a.dtype.name, a.shape), qparams[2])
        {'b': ('float32', (10,)), 'w': {'q': ('int8', (64, 10)), 'scale': ('float32', (10,))}}
        >>> y, _ = model.apply(dequantize(qparams), state, jnp.ones((2, 64)))
        >>> size_bytes(params), size_bytes(qparams)  # float32 biases stay
        (19240, 5328)
    """
    check_bits("quantize", bits)
    compiled = re.compile(pattern)
    flat, treedef = jax.tree_util.tree_flatten_with_path(params)
    paths = [path_str(p) for p, _ in flat]
    if not any(compiled.search(p) for p in paths):
        raise ValueError(
            f"quantize: `pattern={pattern!r}` matches no parameter path; paths look like "
            f"{paths[:8]}. Pass a regex over these paths, e.g. r'(^|/)w$' for the kernels."
        )
    leaves = []
    for path, (_, leaf) in zip(paths, flat):
        if not compiled.search(path):
            leaves.append(leaf)
            continue
        try:
            leaves.append(quantize_array(leaf, bits=bits))
        except (TypeError, ValueError) as err:
            raise type(err)(
                f"quantize: cannot quantize {path!r}: {err} Narrow `pattern` to float kernels."
            ) from None
    return jax.tree.unflatten(treedef, leaves)


def dequantize(qparams: Any, *, dtype=jnp.float32) -> Params:
    """``qparams`` with every ``{"q", "scale"}`` replaced by ``q * scale`` (in ``dtype``).

    Jit-compatible; params without quantized leaves come back unchanged.

    Examples:
        >>> import jax.numpy as jnp
        >>> w = jnp.array([[0.5, -1.0], [0.25, 3.0]])
        >>> back = dequantize({"w": quantize_array(w)})["w"]
        >>> bool((jnp.abs(back - w) <= quantize_array(w)["scale"] / 2).all())
        True
    """

    def restore(node):
        if is_quantized(node):
            return (node["q"].astype(jnp.float32) * node["scale"].astype(jnp.float32)).astype(dtype)
        return node

    return jax.tree.map(restore, qparams, is_leaf=is_quantized)


def size_bytes(tree: Any, *, bits: int | None = None) -> int:
    """The bytes of every array leaf of ``tree`` (``size * itemsize``): the model's storage size.

    With ``bits``, the ``q`` of each quantized weight counts as packed,
    ``ceil(size * bits / 8)`` bytes (two int4 values a byte), the size a
    ``bits``-bit format would store; the arrays themselves stay int8.

    Examples:
        >>> import jax.numpy as jnp
        >>> size_bytes({"w": jnp.ones((64, 10)), "b": jnp.ones(10)})
        2600
        >>> size_bytes({"w": quantize_array(jnp.ones((64, 10))), "b": jnp.ones(10)})
        720
        >>> size_bytes({"w": quantize_array(jnp.ones((64, 10)), bits=4)}, bits=4)
        360
    """
    if bits is not None:
        check_bits("size_bytes", bits)

    def count(node) -> int:
        if bits is not None and is_quantized(node):
            return -(-int(jnp.size(node["q"])) * bits // 8) + count(node["scale"])
        return sum(int(jnp.size(x)) * jnp.asarray(x).dtype.itemsize for x in jax.tree.leaves(node))

    return sum(count(node) for node in jax.tree.leaves(tree, is_leaf=is_quantized))


def int8_dense(
    inputs: jax.typing.ArrayLike,
    qw: dict[str, jax.Array],
    bias: jax.typing.ArrayLike | None = None,
) -> jax.Array:
    """``inputs @ w + bias`` computed as ``int8 x int8 -> int32`` (dynamic activation quantization).

    The inputs are quantized per row (per example) with a symmetric int8 scale
    ``max|x| / 127`` computed on the fly, multiplied by the int8 kernel
    ``qw`` (from :func:`quantize_array` of a ``(in, features)`` kernel) with
    ``jax.lax.dot_general(..., preferred_element_type=jnp.int32)``, and
    rescaled by the product of the scales. Compared with the float result on
    the dequantized kernel, the error of output ``j`` is at most
    ``sum_i |w_ij| * s_x / 2`` (the rounding of the activations).

    Raises:
        ValueError: when the shapes do not line up.

    Examples:
        >>> import jax.numpy as jnp
        >>> qw = quantize_array(jnp.array([[1.0, -2.0], [0.5, 0.25]]))
        >>> int8_dense(jnp.array([[1.0, 2.0]]), qw).round(2).tolist()
        [[2.0, -1.5]]
    """
    x = jnp.asarray(inputs)
    q, w_scale = qw["q"], qw["scale"]
    if q.ndim != 2 or x.ndim < 1 or x.shape[-1] != q.shape[0]:
        raise ValueError(
            f"int8_dense: expected inputs (..., {q.shape[0] if q.ndim == 2 else 'in'}) and a "
            f"quantized (in, features) kernel, got inputs {x.shape} and kernel {q.shape}."
        )
    x32 = x.astype(jnp.float32)
    x_scale = jnp.max(jnp.abs(x32), axis=-1, keepdims=True) / _QMAX
    qx = jnp.round(x32 / jnp.where(x_scale > 0, x_scale, 1.0)).astype(jnp.int8)
    acc = jax.lax.dot_general(
        qx, q, (((x.ndim - 1,), (0,)), ((), ())), preferred_element_type=jnp.int32
    )
    y = acc.astype(jnp.float32) * x_scale * w_scale.astype(jnp.float32)
    if bias is not None:
        y = y + jnp.asarray(bias).astype(jnp.float32)
    return y
