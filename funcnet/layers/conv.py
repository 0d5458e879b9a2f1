"""Convolutions over 1 to 3 spatial axes, channels last: Conv and ConvTranspose.

Inputs are ``(N, *spatial, C)`` (``(N, L, C)``, ``(N, H, W, C)`` or ``(N, D,
H, W, C)``) and kernels ``(*kernel_size, C // groups, features)``: the layouts
of Keras and of ``jax.lax.conv_general_dilated`` with NHWC/HWIO dimension
numbers, which is also the fast layout of XLA on CPU.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jax import lax

from funcnet import initializers
from funcnet._checks import (
    array_of,
    as_tuple,
    check_positive_int,
    compute_dtype,
    fmt_shape,
    is_int,
)
from funcnet.core import Layer, LayerError, declare

__all__ = ["Conv", "ConvTranspose"]

_SHAPES = {1: "(N, L, C)", 2: "(N, H, W, C)", 3: "(N, D, H, W, C)"}
_DIMENSION_NUMBERS = {
    1: ("NWC", "WIO", "NWC"),
    2: ("NHWC", "HWIO", "NHWC"),
    3: ("NDHWC", "DHWIO", "NDHWC"),
}


# ---------------------------------------------------------------------------
# Helpers shared with funcnet.layers.pool.


def _seq_len(value) -> int | None:
    """The length of a (non-string) sequence argument, ``None`` for a scalar."""
    if isinstance(value, Sequence) and not isinstance(value, str):
        return len(value)
    return None


def _spatial_rank(owner: str, lengths: dict[str, int | None]) -> int | None:
    """The number of spatial axes fixed by the arguments given as tuples (``None``: inferred)."""
    given = {name: n for name, n in lengths.items() if n is not None}
    if len(set(given.values())) > 1:
        desc = ", ".join(f"`{name}` {n}" for name, n in given.items())
        raise ValueError(
            f"{owner}: the arguments disagree on the number of spatial axes ({desc}); give "
            "every tuple argument one entry per spatial axis."
        )
    nd = next(iter(given.values()), None)
    if nd is not None and not 1 <= nd <= 3:
        name = next(iter(given))
        raise ValueError(
            f"{owner}: supports 1 to 3 spatial axes, got {nd} from `{name}`; give "
            f"`{name}` 1 to 3 entries."
        )
    return nd


def _parse_padding(owner: str, padding, modes: tuple[str, ...], *, negative: bool = False):
    """Normalize ``padding``: an upper-case mode string, an int, or a tuple of (lo, hi) pairs.

    Returns ``(padding, nd)`` where ``nd`` is the number of spatial axes the
    padding fixes (``None`` when it fits any).
    """
    options = ", ".join(repr(m) for m in modes)
    if isinstance(padding, str):
        mode = padding.upper()
        if mode not in modes:
            raise ValueError(
                f"{owner}: unknown `padding` {padding!r}; use one of {options}, an int, or one "
                "(lo, hi) pair per spatial axis."
            )
        return mode, (1 if mode == "CAUSAL" else None)
    if is_int(padding):
        if padding < 0:
            raise ValueError(f"{owner}: an int `padding` must be >= 0, got {padding}.")
        return int(padding), None
    pairs = None
    if _seq_len(padding):
        pairs = tuple(tuple(p) if _seq_len(p) == 2 else None for p in padding)
        if any(p is None or not all(is_int(v) for v in p) for p in pairs):
            pairs = None
    if pairs is None:
        raise ValueError(
            f"{owner}: `padding` must be one of {options}, an int, or one (lo, hi) pair of ints "
            f"per spatial axis, e.g. ((1, 1), (2, 2)) for 2-D; got {padding!r}."
        )
    pairs = tuple((int(lo), int(hi)) for lo, hi in pairs)
    if not negative and any(v < 0 for p in pairs for v in p):
        raise ValueError(f"{owner}: explicit `padding` must be >= 0, got {padding!r}.")
    return pairs, len(pairs)


def _expand(values: tuple, nd: int) -> tuple:
    """A per-axis tuple for ``nd`` axes; a 1-tuple made from an int is repeated."""
    return values if len(values) == nd else values * nd


def _pads_of(padding, nd: int):
    """Explicit (lo, hi) pairs for a padding given as an int or pairs (not for mode strings)."""
    if is_int(padding):
        return ((padding, padding),) * nd
    return padding


def _same_pads(n: int, window: int, stride: int) -> tuple[int, int]:
    """TF/Keras SAME: output ``ceil(n / stride)``, the extra padding at the end."""
    out = -(-n // stride)
    total = max((out - 1) * stride + window - n, 0)
    return total // 2, total - total // 2


def _out_size(n: int, window: int, stride: int, lo: int, hi: int) -> int:
    padded = n + lo + hi
    return (padded - window) // stride + 1 if padded >= window else 0


def _rank_fix(rank: int, want: int, arg: str) -> str:
    if rank == want - 2:
        return "Add the batch and channel axes, e.g. `x[None, ..., None]`."
    if rank == want - 1:
        return "Add the batch axis (`x[None]`) or the channel axis (`x[..., None]`)."
    return f"Reshape the inputs, or give `{arg}` one entry per spatial axis."


def _check_rank(shape: tuple, nd: int | None, arg: str) -> int:
    """The number of spatial axes of inputs ``(N, *spatial, C)``; ``nd`` fixed or inferred."""
    rank = len(shape)
    if nd is not None:
        if rank != nd + 2:
            raise LayerError(
                f"expected inputs of shape {_SHAPES[nd]} (rank {nd + 2}), got shape "
                f"{fmt_shape(shape)}. {_rank_fix(rank, nd + 2, arg)}"
            )
        return nd
    if not 3 <= rank <= 5:
        fix = (
            "Add the batch and channel axes, e.g. `x[None, ..., None]`."
            if rank < 3
            else "Merge spatial axes with `Reshape` (at most 3 are supported)."
        )
        raise LayerError(
            "expected inputs of shape (N, *spatial, C) with 1 to 3 spatial axes (rank 3 to 5), "
            f"got shape {fmt_shape(shape)}. {fix}"
        )
    return rank - 2


def _fmt_arg(value):
    """Show a hyperparameter as the user would write it (lists as tuples)."""
    if _seq_len(value) is not None:
        return repr(tuple(tuple(v) if _seq_len(v) is not None else v for v in value))
    return repr(value)


def _name(kind: str, head: str, **extras) -> str:
    parts = [head] + [f"{k}={_fmt_arg(v)}" for k, v in extras.items()]
    return f"{kind}({', '.join(parts)})"


def _non_default(**kwargs) -> dict:
    """The convolution arguments that differ from their defaults, for the layer's name."""
    defaults = {"strides": 1, "padding": "SAME", "dilation": 1, "groups": 1}
    return {
        k: v
        for k, v in kwargs.items()
        if not (v == defaults[k] or (isinstance(v, str) and v.upper() == defaults[k]))
    }


def _bias(b, nd: int, dt):
    return b.astype(dt).reshape((1,) * (nd + 1) + b.shape)


class _ConvArgs:
    """The checked hyperparameters shared by Conv and ConvTranspose."""

    def __init__(
        self, owner, features, kernel_size, strides, padding, dilation, groups, modes, negative
    ):
        self.features = check_positive_int(owner, "features", features)
        self.groups = check_positive_int(owner, "groups", groups)
        if self.features % self.groups:
            raise ValueError(
                f"{owner}: `features` ({self.features}) must be divisible by `groups` "
                f"({self.groups}); use a multiple of {self.groups}."
            )
        padding, pad_nd = _parse_padding(owner, padding, modes, negative=negative)
        if padding == "CAUSAL":
            for name, value in (
                ("kernel_size", kernel_size),
                ("strides", strides),
                ("dilation", dilation),
            ):
                if _seq_len(value) not in (None, 1):
                    raise ValueError(
                        f"{owner}: padding='CAUSAL' is for 1-D inputs (it pads the start of "
                        f"the time axis), got `{name}` {_fmt_arg(value)} with "
                        f"{_seq_len(value)} axes. Use 'SAME', 'VALID' or one (lo, hi) pair per "
                        "axis, e.g. ((2, 0), (1, 1))."
                    )
        self.nd = _spatial_rank(
            owner,
            {
                "kernel_size": _seq_len(kernel_size),
                "strides": _seq_len(strides),
                "dilation": _seq_len(dilation),
                "padding": pad_nd,
            },
        )
        self.kernel = as_tuple(owner, "kernel_size", kernel_size, self.nd)
        self.strides = as_tuple(owner, "strides", strides, self.nd)
        self.dilation = as_tuple(owner, "dilation", dilation, self.nd)
        self.padding = padding

    def expanded(self, nd: int):
        return _expand(self.kernel, nd), _expand(self.strides, nd), _expand(self.dilation, nd)

    def check_input(self, inputs) -> tuple[tuple, jnp.dtype, int]:
        shape, x_dtype = array_of(inputs)
        nd = _check_rank(shape, self.nd, "kernel_size")
        channels = shape[-1]
        if channels % self.groups:
            raise LayerError(
                f"expected a number of input channels divisible by `groups` ({self.groups}), "
                f"got shape {fmt_shape(shape)} with {channels} channels. Use `groups` that "
                f"divides {channels}, or change the channels of the previous layer."
            )
        return shape, x_dtype, nd

    def check_channels(self, shape, w) -> None:
        if w.ndim != len(shape):
            nd = w.ndim - 2
            raise LayerError(
                f"expected inputs of shape {_SHAPES.get(nd, '(N, *spatial, C)')} (rank "
                f"{w.ndim}) for the kernel of shape {fmt_shape(w.shape)}, got shape "
                f"{fmt_shape(shape)}. {_rank_fix(len(shape), w.ndim, 'kernel_size')}"
            )
        expected = w.shape[-2] * self.groups
        if shape[-1] != expected:
            raise LayerError(
                f"expected inputs with {expected} channels (last axis) for the kernel of shape "
                f"{fmt_shape(w.shape)}, got shape {fmt_shape(shape)}. Re-run `init` with inputs "
                "of this shape, or fix the channels of the previous layer."
            )

    def init_params(self, key, shape, nd, w_init, b_init, use_bias, param_dtype):
        kernel = _expand(self.kernel, nd)
        k_w, k_b = jax.random.split(key)
        w_shape = (*kernel, shape[-1] // self.groups, self.features)
        params = {"w": w_init(k_w, w_shape, param_dtype)}
        if use_bias:
            params["b"] = b_init(k_b, (self.features,), param_dtype)
        names = {"w": ("window",) * nd + ("conv_in", "conv_out"), "b": ("conv_out",)}
        return declare(params, names)


def _empty_error(spatial, axis, kernel, dilated, what) -> LayerError:
    window = f"`kernel_size` {fmt_shape(kernel)}"
    if dilated != kernel:
        window += f" (dilated: {fmt_shape(dilated)})"
    return LayerError(
        f"spatial size {fmt_shape(spatial)} is too small for {window} with {what}: the output "
        f"would be empty along spatial axis {axis}. Use larger inputs, a smaller "
        "`kernel_size` or `dilation`, or more padding."
    )


def Conv(
    features: int,
    kernel_size: int | Sequence[int],
    *,
    strides: int | Sequence[int] = 1,
    padding: str | int | Sequence[tuple[int, int]] = "SAME",
    dilation: int | Sequence[int] = 1,
    groups: int = 1,
    use_bias: bool = True,
    w_init: str | initializers.Initializer = "glorot_uniform",
    b_init: str | initializers.Initializer = "zeros",
    dtype=None,
    param_dtype=jnp.float32,
) -> Layer:
    """A convolution (cross-correlation, as in every DL library) over 1 to 3 spatial axes.

    Inputs ``(N, *spatial, C)``, channels last; outputs ``(N, *out_spatial,
    features)``. Params ``{"w": (*kernel_size, C // groups, features), "b":
    (features,)}`` (no ``"b"`` when ``use_bias=False``; axes named ``("window",
    ..., "conv_in", "conv_out")`` and ``("conv_out",)``); no state; no key.

    With strides ``s``, dilation ``d`` and the input zero-padded by ``lo``
    in front, for each spatial axis (``g(f)`` is the group of output feature
    ``f``, ``G = groups``)::

        out[o, f] = b[f] + sum_{j, c} x[o*s + j*d - lo, g(f)*C/G + c] * w[j, c, f]

    Padding: ``"SAME"`` gives ``ceil(n / s)`` outputs with the extra padding
    at the end (TF/Keras); ``"VALID"`` none, ``floor((n - (k-1)*d - 1) / s) + 1``
    outputs; ``"CAUSAL"`` (1-D only) pads ``d*(k-1)`` in front, so output ``t``
    sees inputs ``<= t``; an int ``p`` pads ``p`` on both sides of every spatial
    axis (PyTorch ``padding=p``); a sequence of ``(lo, hi)`` pairs, one per
    spatial axis, pads explicitly. ``groups=C`` (with ``features`` a multiple
    of ``C``) is a depthwise convolution.

    Weights from other libraries: a Keras ``ConvND`` kernel is ``w`` as is;
    a PyTorch ``ConvNd`` weight ``(F, C // G, *k)`` is
    ``w = weight.permute(*range(2, 2 + nd), 1, 0)`` (``(2, 3, 1, 0)`` in 2-D).

    Args:
        features: the number of output channels.
        kernel_size: the window, an int (the same on every spatial axis; the
            number of spatial axes is then the input rank minus 2) or one int
            per spatial axis (which fixes the number of spatial axes).
        strides: an int or one int per spatial axis.
        padding: ``"SAME"``, ``"VALID"``, ``"CAUSAL"`` (case-insensitive), an
            int, or one ``(lo, hi)`` pair per spatial axis.
        dilation: the kernel dilation (atrous rate), an int or one per axis.
        groups: split the channels into this many independent groups; ``C``
            and ``features`` must be divisible by it.
        use_bias: add a bias.
        w_init, b_init: initializers (functions or names, see
            :mod:`funcnet.initializers`); defaults Glorot-uniform and zeros, as Keras.
        dtype: computation dtype; default: the promotion of the inputs' and the
            params' dtypes (integer inputs are cast to the params' dtype).
        param_dtype: dtype of the params.

    Raises:
        ValueError: at construction, for bad hyperparameters.
        LayerError: at ``init`` and ``apply``, for inputs of the wrong rank,
            channels not divisible by ``groups`` or not matching the kernel, or
            spatial sizes too small for a non-empty output.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> conv = Conv(8, (3, 3), strides=2)
        >>> params, state = conv.init(jax.random.key(0), jnp.zeros((1, 28, 28, 3)))
        >>> jax.tree.map(jnp.shape, params)
        {'b': (8,), 'w': (3, 3, 3, 8)}
        >>> conv.apply(params, state, jnp.ones((2, 28, 28, 3)))[0].shape
        (2, 14, 14, 8)
        >>> depthwise = Conv(6, 5, groups=3, padding="CAUSAL")  # 1-D, inferred from the rank
        >>> params, state = depthwise.init(jax.random.key(0), jnp.zeros((1, 10, 3)))
        >>> jax.tree.map(jnp.shape, params)
        {'b': (6,), 'w': (5, 1, 6)}
        >>> depthwise.apply(params, state, jnp.ones((2, 10, 3)))[0].shape
        (2, 10, 6)
    """
    args = _ConvArgs(
        "Conv",
        features,
        kernel_size,
        strides,
        padding,
        dilation,
        groups,
        ("SAME", "VALID", "CAUSAL"),
        False,
    )
    w_init, b_init = initializers.get(w_init), initializers.get(b_init)

    def pads_and_check(shape, nd):
        kernel, strides_, dilation_ = args.expanded(nd)
        spatial = shape[1:-1]
        dilated = tuple((k - 1) * d + 1 for k, d in zip(kernel, dilation_))
        if args.padding == "SAME":
            pads = tuple(_same_pads(n, k, s) for n, k, s in zip(spatial, dilated, strides_))
        elif args.padding == "VALID":
            pads = ((0, 0),) * nd
        elif args.padding == "CAUSAL":
            pads = ((dilated[0] - 1, 0),)
        else:
            pads = _pads_of(args.padding, nd)
        for axis, (n, k, s, (lo, hi)) in enumerate(zip(spatial, dilated, strides_, pads)):
            if _out_size(n, k, s, lo, hi) <= 0:
                raise _empty_error(spatial, axis, kernel, dilated, f"padding {args.padding!r}")
        return pads, strides_, dilation_

    def init(key, inputs):
        shape, _, nd = args.check_input(inputs)
        pads_and_check(shape, nd)
        return args.init_params(key, shape, nd, w_init, b_init, use_bias, param_dtype), ()

    def apply(params, state, inputs, *, key=None, train=False):
        del key, train
        w = params["w"]
        shape, x_dtype, nd = args.check_input(inputs)
        args.check_channels(shape, w)
        pads, strides_, dilation_ = pads_and_check(shape, nd)
        dt = compute_dtype(x_dtype, w.dtype, dtype)
        y = lax.conv_general_dilated(
            inputs.astype(dt),
            w.astype(dt),
            window_strides=strides_,
            padding=pads,
            rhs_dilation=dilation_,
            dimension_numbers=_DIMENSION_NUMBERS[nd],
            feature_group_count=args.groups,
        )
        if use_bias:
            y = y + _bias(params["b"], nd, dt)
        return y, state

    extras = _non_default(strides=strides, padding=padding, dilation=dilation, groups=groups)
    return Layer(init, apply, _name("Conv", f"{args.features}, {_fmt_arg(kernel_size)}", **extras))


def ConvTranspose(
    features: int,
    kernel_size: int | Sequence[int],
    *,
    strides: int | Sequence[int] = 1,
    padding: str | int | Sequence[tuple[int, int]] = "SAME",
    dilation: int | Sequence[int] = 1,
    groups: int = 1,
    use_bias: bool = True,
    w_init: str | initializers.Initializer = "glorot_uniform",
    b_init: str | initializers.Initializer = "zeros",
    dtype=None,
    param_dtype=jnp.float32,
) -> Layer:
    """A transposed convolution ("deconvolution"): the gradient of a convolution, for upsampling.

    Inputs ``(N, *spatial, C)``, channels last; outputs ``(N, *out_spatial,
    features)``. Params ``{"w": (*kernel_size, C // groups, features), "b":
    (features,)}`` (no ``"b"`` when ``use_bias=False``); no state; no key.

    Every input position scatters the kernel, scaled, into the output (the
    PyTorch / TF semantics; the kernel is *not* flipped). For each spatial
    axis, with strides ``s``, dilation ``d``, and ``g(f)`` the group of output
    feature ``f`` (``G = groups``)::

        out[i*s + j*d - crop_lo, f] += sum_c x[i, g(f)*C/G + c] * w[j, c, f]

    before cropping the output has ``(n-1)*s + (k-1)*d + 1`` positions, of
    which ``crop_lo`` are cut from the front and ``crop_hi`` from the end (a
    negative crop appends zeros). Padding chooses the crops:

    - ``"VALID"``: none, the full ``(n-1)*s + (k-1)*d + 1`` outputs.
    - ``"SAME"``: exactly ``n*s`` outputs, as TF/Keras: ``total = (k-1)*d + 1 - s``,
      ``crop_lo = total // 2``, ``crop_hi = total - crop_lo``; for ``total < 0``
      the ``-total`` missing positions are zeros appended at the end.
    - an int ``p``: ``crop_lo = crop_hi = p`` (PyTorch ``padding=p``).
    - one ``(crop_lo, crop_hi)`` pair per spatial axis; negative values append
      positions, e.g. PyTorch's ``output_padding=op`` is ``(p, p - op)``.

    It is the adjoint of :func:`Conv` with the kernel's last two axes swapped:
    for ``groups=1``, no bias and the same strides, dilation and padding
    ``"VALID"`` (or ``"SAME"`` on inputs of length ``n*s``), ``<Conv(w)(z), y> ==
    <z, ConvTranspose(swapaxes(w, -1, -2))(y)>``.

    Weights from other libraries: a PyTorch ``ConvTransposeNd`` weight ``(C, F
    // G, *k)`` is, for ``G = 1``, ``w = weight.permute(*range(2, 2 + nd), 0, 1)``
    (``(2, 3, 0, 1)`` in 2-D), and in general
    ``weight.reshape(G, C // G, F // G, *k).permute(*range(3, 3 + nd), 1, 0, 2)
    .reshape(*k, C // G, F)``. A Keras ``ConvNDTranspose`` kernel ``(*k, F, C)``
    is ``w = swapaxes(kernel, -1, -2)``; Keras ``"same"`` is ``"SAME"``, and
    Keras ``"valid"`` is ``"VALID"`` except when ``(k-1)*d + 1 < s``, where Keras
    appends ``s - (k-1)*d - 1`` zeros (padding ``(0, (k-1)*d + 1 - s)``).

    Args:
        features: the number of output channels.
        kernel_size: an int (the same on every spatial axis; the number of
            spatial axes is then the input rank minus 2) or one int per axis.
        strides: the upsampling factor, an int or one per spatial axis.
        padding: ``"SAME"``, ``"VALID"`` (case-insensitive), an int, or one
            ``(crop_lo, crop_hi)`` pair per spatial axis; see above.
        dilation: the kernel dilation, an int or one per axis.
        groups: split the channels into this many independent groups; ``C``
            and ``features`` must be divisible by it.
        use_bias: add a bias.
        w_init, b_init: initializers (functions or names, see
            :mod:`funcnet.initializers`).
        dtype: computation dtype; default: the promotion of the inputs' and the
            params' dtypes (integer inputs are cast to the params' dtype).
        param_dtype: dtype of the params.

    Raises:
        ValueError: at construction, for bad hyperparameters.
        LayerError: at ``init`` and ``apply``, for inputs of the wrong rank,
            channels not divisible by ``groups`` or not matching the kernel, or
            crops that leave an empty output.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> up = ConvTranspose(4, (3, 3), strides=2)
        >>> params, state = up.init(jax.random.key(0), jnp.zeros((1, 7, 7, 16)))
        >>> jax.tree.map(jnp.shape, params)
        {'b': (4,), 'w': (3, 3, 16, 4)}
        >>> up.apply(params, state, jnp.ones((2, 7, 7, 16)))[0].shape
        (2, 14, 14, 4)
        >>> full = ConvTranspose(4, 3, strides=2, padding="VALID")
        >>> params, state = full.init(jax.random.key(0), jnp.zeros((1, 7, 7, 16)))
        >>> full.apply(params, state, jnp.ones((2, 7, 7, 16)))[0].shape
        (2, 15, 15, 4)
    """
    args = _ConvArgs(
        "ConvTranspose",
        features,
        kernel_size,
        strides,
        padding,
        dilation,
        groups,
        ("SAME", "VALID"),
        True,
    )
    w_init, b_init = initializers.get(w_init), initializers.get(b_init)

    def crops_and_check(shape, nd):
        kernel, strides_, dilation_ = args.expanded(nd)
        spatial = shape[1:-1]
        dilated = tuple((k - 1) * d + 1 for k, d in zip(kernel, dilation_))
        if args.padding == "SAME":
            crops = []
            for k, s in zip(dilated, strides_):
                total = k - s
                lo = max(total, 0) // 2
                crops.append((lo, total - lo))
        elif args.padding == "VALID":
            crops = ((0, 0),) * nd
        else:
            crops = _pads_of(args.padding, nd)
        for axis, (n, k, s, (lo, hi)) in enumerate(zip(spatial, dilated, strides_, crops)):
            if n < 1 or (n - 1) * s + k - lo - hi <= 0:
                raise _empty_error(spatial, axis, kernel, dilated, f"crops {tuple(crops)}")
        return tuple(crops), dilated, strides_, dilation_

    def init(key, inputs):
        shape, _, nd = args.check_input(inputs)
        crops_and_check(shape, nd)
        return args.init_params(key, shape, nd, w_init, b_init, use_bias, param_dtype), ()

    def apply(params, state, inputs, *, key=None, train=False):
        del key, train
        w = params["w"]
        shape, x_dtype, nd = args.check_input(inputs)
        args.check_channels(shape, w)
        crops, dilated, strides_, dilation_ = crops_and_check(shape, nd)
        dt = compute_dtype(x_dtype, w.dtype, dtype)
        # A correlation of the stride-dilated input with the flipped kernel; negative
        # padding crops.
        pads = tuple((k - 1 - lo, k - 1 - hi) for k, (lo, hi) in zip(dilated, crops))
        y = lax.conv_general_dilated(
            inputs.astype(dt),
            jnp.flip(w.astype(dt), axis=tuple(range(nd))),
            window_strides=(1,) * nd,
            padding=pads,
            lhs_dilation=strides_,
            rhs_dilation=dilation_,
            dimension_numbers=_DIMENSION_NUMBERS[nd],
            feature_group_count=args.groups,
        )
        if use_bias:
            y = y + _bias(params["b"], nd, dt)
        return y, state

    extras = _non_default(strides=strides, padding=padding, dilation=dilation, groups=groups)
    head = f"{args.features}, {_fmt_arg(kernel_size)}"
    return Layer(init, apply, _name("ConvTranspose", head, **extras))
