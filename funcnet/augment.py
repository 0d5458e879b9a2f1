"""Data augmentation as pure JAX functions ``(key, batch) -> batch``.

Each factory here checks its hyperparameters at once and returns a function of
``(key, batch)`` that draws its random numbers per example from ``key``, keeps
the batch's shape and dtype, and runs inside ``jax.jit`` and under
``jax.vmap`` (e.g. over devices or ensemble members, with one key each). The
same key gives the same result; different keys give different results.

Image batches are channels-last ``(N, H, W, C)``. Geometric augmentations
(:func:`random_flip`, :func:`random_crop`, :func:`random_translation`,
:func:`random_rotation`, :func:`cutout`) accept any dtype, including uint8
pixels; intensity augmentations (:func:`random_brightness`,
:func:`random_contrast`, :func:`gaussian_noise`, :func:`mixup`) need floating
data and accept any ``(N, ...)`` batch (contrast: ``(N, ..., C)``). Nothing is
clipped: values may leave their original range (e.g. after standardizing).

:func:`compose` chains augmentations, splitting the key. :func:`mixup` works
on ``(inputs, one_hot_targets)`` pairs; lift the others to pairs with
:func:`on_inputs`. Apply augmentations to training batches only.

Examples:
    >>> import jax, jax.numpy as jnp
    >>> aug = compose(random_flip(), random_crop(padding=2), gaussian_noise(0.1))
    >>> x = jnp.ones((8, 16, 16, 3))
    >>> y = jax.jit(aug)(jax.random.key(0), x)
    >>> y.shape, y.dtype
    ((8, 16, 16, 3), dtype('float32'))
    >>> bool((y == jax.jit(aug)(jax.random.key(0), x)).all())  # same key, same batch
    True
    >>> pairs = compose(on_inputs(random_flip()), mixup(0.2))
    >>> xm, ym = pairs(jax.random.key(1), (x, jax.nn.one_hot(jnp.arange(8) % 10, 10)))
    >>> xm.shape, ym.shape
    ((8, 16, 16, 3), (8, 10))
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from funcnet._checks import is_int

__all__ = [
    "AugmentFn",
    "compose",
    "on_inputs",
    "random_flip",
    "random_crop",
    "random_translation",
    "random_rotation",
    "random_brightness",
    "random_contrast",
    "gaussian_noise",
    "cutout",
    "mixup",
]

AugmentFn = Callable[[jax.Array, Any], Any]
"""An augmentation: ``(key, batch) -> batch`` of the same shape and dtype."""


# --------------------------------------------------------------------------- checks


def _named(fn: Callable, description: str) -> Callable:
    fn.__name__ = fn.__qualname__ = description
    return fn


def _number(where: str, name: str, value: Any) -> float:
    if isinstance(value, bool) or not hasattr(value, "__float__"):
        raise TypeError(f"{where}: `{name}` must be a number, got {type(value).__name__}.")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{where}: `{name}` must be finite, got {value}.")
    return value


def _nonnegative(where: str, name: str, value: Any) -> float:
    value = _number(where, name, value)
    if value < 0:
        raise ValueError(f"{where}: `{name}` must be >= 0, got {value}.")
    return value


def _pixels(where: str, name: str, value: Any, minimum: int) -> tuple[int, int]:
    """An int or an ``(height, width)`` pair of ints, each >= ``minimum``."""
    pair = value if isinstance(value, (tuple, list)) else (value, value)
    if len(pair) != 2 or not all(is_int(v) and v >= minimum for v in pair):
        raise ValueError(
            f"{where}: `{name}` must be an int >= {minimum} or a (height, width) pair of "
            f"them, got {value!r}."
        )
    return int(pair[0]), int(pair[1])


def _images(where: str, x: Any) -> None:
    if jnp.ndim(x) != 4:
        raise ValueError(
            f"{where}: expected a batch of images (N, H, W, C), got shape {jnp.shape(x)}; "
            "add a batch axis with `x[None]` or a channel axis with `x[..., None]`."
        )


def _floating(where: str, x: Any, min_ndim: int = 1) -> None:
    if not jnp.issubdtype(jnp.result_type(x), jnp.floating):
        raise TypeError(
            f"{where}: needs floating data, got dtype {jnp.result_type(x)}; convert first, "
            "e.g. `x.astype(jnp.float32) / 255`."
        )
    if jnp.ndim(x) < min_ndim:
        shape = "(N, ..., C)" if min_ndim > 1 else "(N, ...)"
        raise ValueError(
            f"{where}: expected a batch {shape} with at least {min_ndim} axes, got shape "
            f"{jnp.shape(x)}."
        )


def _per_example(values: jax.Array, ndim: int) -> jax.Array:
    """Reshape ``(N,)`` values to broadcast against an ``(N, ...)`` batch of rank ``ndim``."""
    return values.reshape(values.shape + (1,) * (ndim - 1))


# --------------------------------------------------------------------------- combinators


def compose(*fns: AugmentFn) -> AugmentFn:
    """Chain augmentations, left to right, each with its own key split from the one given.

    ``compose()`` is the identity.

    Raises:
        TypeError: if an argument is not callable.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> aug = compose(random_brightness(0.1), random_contrast(0.9, 1.1))
        >>> aug(jax.random.key(0), jnp.zeros((2, 4, 4, 1))).shape
        (2, 4, 4, 1)
    """
    for i, fn in enumerate(fns):
        if not callable(fn):
            raise TypeError(
                f"compose: argument {i} must be an augmentation `(key, batch) -> batch`, got "
                f"{type(fn).__name__}; call the factory, e.g. `random_flip()`."
            )

    def composed(key: jax.Array, batch: Any) -> Any:
        if not fns:
            return batch
        for fn, k in zip(fns, jax.random.split(key, len(fns))):
            batch = fn(k, batch)
        return batch

    names = ", ".join(getattr(fn, "__name__", type(fn).__name__) for fn in fns)
    return _named(composed, f"compose({names})")


def on_inputs(fn: AugmentFn) -> AugmentFn:
    """Lift an augmentation of inputs to ``(key, (x, y)) -> (fn(key, x), y)``.

    Use it to put input-only augmentations before :func:`mixup` in :func:`compose`.

    Raises:
        TypeError: if ``fn`` is not callable.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> x, y = on_inputs(random_flip())(jax.random.key(0), (jnp.zeros((2, 3, 3, 1)), 7))
        >>> x.shape, y
        ((2, 3, 3, 1), 7)
    """
    if not callable(fn):
        raise TypeError(f"on_inputs: expected an augmentation function, got {type(fn).__name__}.")

    def lifted(key: jax.Array, pair: Any) -> Any:
        x, y = _pair("on_inputs", pair)
        return fn(key, x), y

    return _named(lifted, f"on_inputs({getattr(fn, '__name__', 'fn')})")


def _pair(where: str, pair: Any) -> tuple[Any, Any]:
    if not isinstance(pair, (tuple, list)) or len(pair) != 2:
        raise TypeError(
            f"{where}: expected a pair `(inputs, targets)`, got {type(pair).__name__}; call "
            "it as `fn(key, (x, y))`."
        )
    return pair[0], pair[1]


# --------------------------------------------------------------------------- geometric


def random_flip(horizontal: bool = True, vertical: bool = False, *, prob: float = 0.5) -> AugmentFn:
    """Flip each image left-right (``horizontal``) and/or upside down (``vertical``).

    Each enabled flip happens to each image independently with probability ``prob``.

    Raises:
        ValueError: if neither flip is enabled or ``prob`` is outside ``[0, 1]``.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> x = jnp.arange(3.0).reshape(1, 1, 3, 1)
        >>> random_flip(prob=1.0)(jax.random.key(0), x)[0, 0, :, 0]
        Array([2., 1., 0.], dtype=float32)
    """
    if not (horizontal or vertical):
        raise ValueError(
            "random_flip: both `horizontal` and `vertical` are False, so nothing would flip; "
            "enable at least one."
        )
    prob = _number("random_flip", "prob", prob)
    if not 0.0 <= prob <= 1.0:
        raise ValueError(f"random_flip: `prob` must be in [0, 1], got {prob}.")

    def flip(key: jax.Array, x: Any) -> jax.Array:
        _images("random_flip", x)
        x = jnp.asarray(x)
        key_h, key_v = jax.random.split(key)
        for enabled, k, axis in ((horizontal, key_h, 2), (vertical, key_v, 1)):
            if enabled:
                do = jax.random.bernoulli(k, prob, (x.shape[0],))
                x = jnp.where(_per_example(do, 4), jnp.flip(x, axis), x)
        return x

    return _named(flip, f"random_flip(horizontal={horizontal}, vertical={vertical})")


_PAD_MODES = ("constant", "edge", "reflect", "symmetric", "wrap")


def _random_shift(key: jax.Array, x: jax.Array, pads: tuple[int, int], pad: Callable) -> jax.Array:
    """Pad H and W by ``pads`` and cut the original size at a random offset per image."""
    n, h, w, c = x.shape
    padded = pad(x, ((0, 0), (pads[0], pads[0]), (pads[1], pads[1]), (0, 0)))
    key_y, key_x = jax.random.split(key)
    oy = jax.random.randint(key_y, (n,), 0, 2 * pads[0] + 1)
    ox = jax.random.randint(key_x, (n,), 0, 2 * pads[1] + 1)

    def cut(image: jax.Array, y0: jax.Array, x0: jax.Array) -> jax.Array:
        return jax.lax.dynamic_slice(image, (y0, x0, jnp.zeros_like(y0)), (h, w, c))

    return jax.vmap(cut)(padded, oy, ox)


def random_crop(padding: int | tuple[int, int] = 4, *, mode: str = "constant") -> AugmentFn:
    """Pad each image by ``padding`` pixels on every side and crop its size at random.

    The classic CIFAR augmentation: equivalent to shifting by up to
    ``padding`` pixels. ``padding`` is an int or a ``(height, width)`` pair;
    ``mode`` is how :func:`jax.numpy.pad` fills (``"constant"`` pads zeros).

    Raises:
        ValueError: for a negative ``padding`` or an unknown ``mode``.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> random_crop(padding=4)(jax.random.key(0), jnp.ones((2, 32, 32, 3))).shape
        (2, 32, 32, 3)
    """
    pads = _pixels("random_crop", "padding", padding, 0)
    if mode not in _PAD_MODES:
        raise ValueError(f"random_crop: `mode` must be one of {_PAD_MODES}, got {mode!r}.")

    def crop(key: jax.Array, x: Any) -> jax.Array:
        _images("random_crop", x)
        return _random_shift(key, jnp.asarray(x), pads, lambda a, p: jnp.pad(a, p, mode=mode))

    return _named(crop, f"random_crop(padding={padding})")


def random_translation(max_shift: int | tuple[int, int], *, fill_value: float = 0.0) -> AugmentFn:
    """Shift each image by a random whole number of pixels, up to ``max_shift`` each way.

    Shifts are drawn uniformly from ``[-max_shift, max_shift]`` per axis and
    image (``max_shift`` an int or a ``(height, width)`` pair); uncovered
    pixels get ``fill_value``.

    Raises:
        ValueError: for a negative ``max_shift``.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> y = random_translation(1)(jax.random.key(3), jnp.ones((1, 3, 3, 1)))
        >>> y.shape, int(y.sum()) in (4, 6, 9)
        ((1, 3, 3, 1), True)
    """
    pads = _pixels("random_translation", "max_shift", max_shift, 0)
    fill_value = _number("random_translation", "fill_value", fill_value)

    def translate(key: jax.Array, x: Any) -> jax.Array:
        _images("random_translation", x)
        x = jnp.asarray(x)
        fill = jnp.asarray(fill_value).astype(x.dtype)
        return _random_shift(key, x, pads, lambda a, p: jnp.pad(a, p, constant_values=fill))

    return _named(translate, f"random_translation({max_shift})")


def _rotate(x: jax.Array, radians: jax.Array, fill_value: float) -> jax.Array:
    """Rotate each image of ``x`` counterclockwise by ``radians[i]`` about its center, bilinearly.

    Pixels that come from outside the image get ``fill_value``.
    """
    n, h, w, _ = x.shape
    compute = x.dtype if jnp.issubdtype(x.dtype, jnp.floating) else jnp.dtype(jnp.float32)
    rows, cols = jnp.meshgrid(
        jnp.arange(h, dtype=jnp.float32), jnp.arange(w, dtype=jnp.float32), indexing="ij"
    )
    cy, cx = (h - 1) / 2, (w - 1) / 2
    dy, dx = rows - cy, cols - cx
    cos = jnp.cos(radians).astype(jnp.float32)[:, None, None]
    sin = jnp.sin(radians).astype(jnp.float32)[:, None, None]
    src_y = cy + sin * dx + cos * dy  # (N, H, W): where each output pixel samples the input
    src_x = cx + cos * dx - sin * dy
    y0, x0 = jnp.floor(src_y), jnp.floor(src_x)
    wy, wx = src_y - y0, src_x - x0
    batch = jnp.arange(n)[:, None, None]
    fill = jnp.asarray(fill_value).astype(compute)
    out = jnp.zeros(x.shape, compute)
    for yy, weight_y in ((y0, 1 - wy), (y0 + 1, wy)):
        for xx, weight_x in ((x0, 1 - wx), (x0 + 1, wx)):
            inside = (yy >= 0) & (yy <= h - 1) & (xx >= 0) & (xx <= w - 1)
            yi = jnp.clip(yy, 0, h - 1).astype(jnp.int32)
            xi = jnp.clip(xx, 0, w - 1).astype(jnp.int32)
            values = jnp.where(inside[..., None], x[batch, yi, xi].astype(compute), fill)
            out = out + (weight_y * weight_x).astype(compute)[..., None] * values
    if jnp.issubdtype(x.dtype, jnp.integer):
        info = jnp.iinfo(x.dtype)
        out = jnp.clip(jnp.round(out), info.min, info.max)
    return out.astype(x.dtype)


def random_rotation(max_degrees: float, *, fill_value: float = 0.0) -> AugmentFn:
    """Rotate each image about its center by an angle in ``[-max_degrees, max_degrees]``.

    Positive angles turn counterclockwise. Bilinear interpolation; pixels that
    come from outside the image get ``fill_value``. Integer images are rounded
    back to their dtype. Meant for small angles (``max_degrees <= 180``).

    Raises:
        ValueError: for ``max_degrees`` outside ``[0, 180]``.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> rotate = random_rotation(15.0)
        >>> rotate(jax.random.key(0), jnp.ones((4, 28, 28, 1))).shape
        (4, 28, 28, 1)
        >>> x = jnp.ones((1, 5, 5, 1), jnp.uint8)
        >>> bool((random_rotation(0.0)(jax.random.key(0), x) == x).all())
        True
    """
    max_degrees = _nonnegative("random_rotation", "max_degrees", max_degrees)
    if max_degrees > 180:
        raise ValueError(
            f"random_rotation: `max_degrees` must be at most 180, got {max_degrees}; it is the "
            "largest angle either way, e.g. 15."
        )
    fill_value = _number("random_rotation", "fill_value", fill_value)

    def rotate(key: jax.Array, x: Any) -> jax.Array:
        _images("random_rotation", x)
        x = jnp.asarray(x)
        limit = math.radians(max_degrees)
        angles = jax.random.uniform(key, (x.shape[0],), jnp.float32, -limit, limit)
        return _rotate(x, angles, fill_value)

    return _named(rotate, f"random_rotation({max_degrees})")


def cutout(size: int | tuple[int, int], *, fill_value: float = 0.0) -> AugmentFn:
    """Set a ``size`` square (or ``(height, width)`` rectangle) of each image to ``fill_value``.

    The patch's center is drawn uniformly over the image, so the patch may be
    partly outside it (DeVries & Taylor, 2017).

    Raises:
        ValueError: for a ``size`` below 1.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> y = cutout(2)(jax.random.key(0), jnp.ones((3, 8, 8, 1)))
        >>> zeroed = (y == 0).sum(axis=(1, 2, 3))  # 4 pixels, fewer at the border
        >>> y.shape, bool(((zeroed >= 1) & (zeroed <= 4)).all())
        ((3, 8, 8, 1), True)
    """
    patch = _pixels("cutout", "size", size, 1)
    fill_value = _number("cutout", "fill_value", fill_value)

    def cut(key: jax.Array, x: Any) -> jax.Array:
        _images("cutout", x)
        x = jnp.asarray(x)
        n, h, w, _ = x.shape
        key_y, key_x = jax.random.split(key)
        top = jax.random.randint(key_y, (n,), 0, h) - patch[0] // 2
        left = jax.random.randint(key_x, (n,), 0, w) - patch[1] // 2
        rows = jnp.arange(h)[None, :, None]
        cols = jnp.arange(w)[None, None, :]
        top, left = top[:, None, None], left[:, None, None]
        inside = (rows >= top) & (rows < top + patch[0]) & (cols >= left) & (cols < left + patch[1])
        fill = jnp.asarray(fill_value).astype(x.dtype)
        return jnp.where(inside[..., None], fill, x)

    return _named(cut, f"cutout({size})")


# --------------------------------------------------------------------------- intensity


def random_brightness(max_delta: float) -> AugmentFn:
    """Add one random offset in ``[-max_delta, max_delta]`` to each example.

    Works on any floating ``(N, ...)`` batch; no clipping.

    Raises:
        ValueError: for a negative ``max_delta``.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> y = random_brightness(0.2)(jax.random.key(0), jnp.zeros((2, 4, 4, 1)))
        >>> bool((jnp.abs(y) <= 0.2).all()), bool((y[0] == y[0, 0, 0, 0]).all())
        (True, True)
    """
    max_delta = _nonnegative("random_brightness", "max_delta", max_delta)

    def brightness(key: jax.Array, x: Any) -> jax.Array:
        _floating("random_brightness", x)
        x = jnp.asarray(x)
        delta = jax.random.uniform(key, (x.shape[0],), jnp.float32, -max_delta, max_delta)
        return x + _per_example(delta.astype(x.dtype), x.ndim)

    return _named(brightness, f"random_brightness({max_delta})")


def random_contrast(lower: float, upper: float) -> AugmentFn:
    """Scale each example's deviation from its per-channel mean by a factor in ``[lower, upper]``.

    ``x -> (x - mean) * factor + mean``, the mean taken over the spatial axes
    of each example and channel (as ``tf.image.adjust_contrast``). Needs a
    floating ``(N, ..., C)`` batch with at least one spatial axis.

    Raises:
        ValueError: unless ``0 <= lower <= upper``.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> x = jnp.array([0.0, 2.0]).reshape(1, 1, 2, 1)
        >>> random_contrast(2.0, 2.0)(jax.random.key(0), x)[0, 0, :, 0]
        Array([-1.,  3.], dtype=float32)
    """
    lower = _nonnegative("random_contrast", "lower", lower)
    upper = _number("random_contrast", "upper", upper)
    if upper < lower:
        raise ValueError(
            f"random_contrast: needs `lower <= upper`, got lower={lower} and upper={upper}; "
            "e.g. `random_contrast(0.8, 1.2)`."
        )

    def contrast(key: jax.Array, x: Any) -> jax.Array:
        _floating("random_contrast", x, min_ndim=3)
        x = jnp.asarray(x)
        factor = jax.random.uniform(key, (x.shape[0],), jnp.float32, lower, upper)
        mean = x.mean(axis=tuple(range(1, x.ndim - 1)), keepdims=True)
        return (x - mean) * _per_example(factor.astype(x.dtype), x.ndim) + mean

    return _named(contrast, f"random_contrast({lower}, {upper})")


def gaussian_noise(stddev: float) -> AugmentFn:
    """Add independent normal noise with standard deviation ``stddev`` to every value.

    Raises:
        ValueError: for a negative ``stddev``.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> y = gaussian_noise(0.1)(jax.random.key(0), jnp.zeros((1000, 10)))
        >>> round(float(y.std()), 1)
        0.1
    """
    stddev = _nonnegative("gaussian_noise", "stddev", stddev)

    def noise(key: jax.Array, x: Any) -> jax.Array:
        _floating("gaussian_noise", x)
        x = jnp.asarray(x)
        return x + jnp.asarray(stddev).astype(x.dtype) * jax.random.normal(key, x.shape, x.dtype)

    return _named(noise, f"gaussian_noise({stddev})")


def mixup(alpha: float = 0.2) -> AugmentFn:
    """Mix each example with another of the batch, inputs **and** targets (Zhang et al., 2018).

    The returned function has the signature ``(key, (x, y)) -> (x, y)``,
    unlike the others: ``x`` is a floating ``(N, ...)`` batch and ``y`` floating
    targets ``(N, ...)``, usually one-hot (``funcnet.data.one_hot``), so the
    mixed targets are soft labels for a cross-entropy loss. Each example ``i``
    draws ``lam_i ~ Beta(alpha, alpha)`` and a partner ``j = perm[i]`` from a
    random permutation of the batch: ``x_i <- lam_i x_i + (1 - lam_i) x_j``,
    and the same for ``y_i``. Put input-only augmentations before it with
    :func:`on_inputs`.

    Raises:
        ValueError: for ``alpha <= 0``.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> x = jnp.arange(4.0).reshape(4, 1)
        >>> y = jax.nn.one_hot(jnp.arange(4), 4)
        >>> xm, ym = mixup(0.4)(jax.random.key(0), (x, y))
        >>> xm.shape, ym.shape, bool(jnp.allclose(ym.sum(axis=1), 1.0))
        ((4, 1), (4, 4), True)
        >>> bool(jnp.allclose(xm[:, 0], ym @ jnp.arange(4.0)))  # inputs and targets mixed alike
        True
    """
    alpha = _number("mixup", "alpha", alpha)
    if alpha <= 0:
        raise ValueError(f"mixup: `alpha` must be > 0, got {alpha}; 0.2 is common.")

    def mix(key: jax.Array, pair: Any) -> tuple[jax.Array, jax.Array]:
        x, y = _pair("mixup", pair)
        _floating("mixup", x)
        if not jnp.issubdtype(jnp.result_type(y), jnp.floating) or jnp.ndim(y) < 1:
            raise TypeError(
                f"mixup: targets must be floating (N, ...) arrays, got dtype "
                f"{jnp.result_type(y)} and shape {jnp.shape(y)}; pass one-hot targets, "
                "e.g. `funcnet.data.one_hot(labels, num_classes)`."
            )
        x, y = jnp.asarray(x), jnp.asarray(y)
        if x.shape[0] != y.shape[0]:
            raise ValueError(
                f"mixup: inputs and targets need the same batch size, got {x.shape[0]} and "
                f"{y.shape[0]}."
            )
        key_lam, key_perm = jax.random.split(key)
        lam = jax.random.beta(key_lam, alpha, alpha, (x.shape[0],), jnp.float32)
        perm = jax.random.permutation(key_perm, x.shape[0])

        def blend(a: jax.Array) -> jax.Array:
            weight = _per_example(lam.astype(a.dtype), a.ndim)
            return weight * a + (1 - weight) * a[perm]

        return blend(x), blend(y)

    return _named(mix, f"mixup({alpha})")
