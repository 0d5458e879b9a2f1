"""Tests for funcnet.augment: shapes, dtypes, determinism, jit/vmap, and each transform's math."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from funcnet import augment
from funcnet.augment import (
    compose,
    cutout,
    gaussian_noise,
    mixup,
    on_inputs,
    random_brightness,
    random_contrast,
    random_crop,
    random_flip,
    random_rotation,
    random_translation,
)


def _images(n=6, h=7, w=9, c=2, dtype=jnp.float32, seed=0):
    x = np.random.default_rng(seed).uniform(0, 1, (n, h, w, c))
    if np.issubdtype(np.dtype(dtype), np.integer):
        return jnp.asarray((x * 255).astype(dtype))
    return jnp.asarray(x, dtype)


# One table drives the shared checks: (name, augmentation, accepts integer images).
TABLE = [
    ("flip_h", random_flip(), True),
    ("flip_hv", random_flip(horizontal=True, vertical=True), True),
    ("crop", random_crop(padding=2), True),
    ("crop_reflect", random_crop(padding=(1, 2), mode="reflect"), True),
    ("translation", random_translation(2, fill_value=0.5), True),
    ("rotation", random_rotation(20.0), True),
    ("cutout", cutout((2, 3)), True),
    ("brightness", random_brightness(0.3), False),
    ("contrast", random_contrast(0.5, 1.5), False),
    ("noise", gaussian_noise(0.2), False),
    ("compose", compose(random_flip(), random_crop(1), gaussian_noise(0.1)), False),
]
IDS = [row[0] for row in TABLE]


@pytest.mark.parametrize(("name", "aug", "integer_ok"), TABLE, ids=IDS)
def test_shared_properties(name, aug, integer_ok, key):
    """Shape and dtype kept, same key same result, keys and examples differ, jit == eager."""
    x = _images()
    jitted = jax.jit(aug)
    y = jitted(key, x)
    assert y.shape == x.shape and y.dtype == x.dtype
    np.testing.assert_array_equal(jitted(key, x), y)
    assert not np.array_equal(jitted(jax.random.key(1), x), y)
    np.testing.assert_allclose(aug(key, x), y, rtol=1e-5, atol=1e-5)
    same = jnp.broadcast_to(x[:1], x.shape)  # one image repeated: examples draw their own
    out = np.asarray(jitted(key, same))
    assert len({out[i].tobytes() for i in range(len(out))}) > 1


@pytest.mark.parametrize(("name", "aug", "integer_ok"), TABLE, ids=IDS)
def test_vmap_over_keys_and_batches(name, aug, integer_ok, key):
    stacked = jnp.stack([_images(seed=s) for s in range(2)])
    keys = jax.random.split(key, 2)
    out = jax.jit(jax.vmap(aug))(keys, stacked)
    jitted = jax.jit(aug)
    for i in range(2):
        np.testing.assert_allclose(out[i], jitted(keys[i], stacked[i]), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("name", "aug", "integer_ok"), TABLE, ids=IDS)
def test_other_dtypes(name, aug, integer_ok, key):
    """Geometric augmentations take uint8 pixels; intensity ones keep bfloat16."""
    x = _images(dtype=jnp.uint8 if integer_ok else jnp.bfloat16)
    y = jax.jit(aug)(key, x)
    assert y.shape == x.shape and y.dtype == x.dtype


# --------------------------------------------------------------------------- geometric math


def test_flip_probabilities(key):
    x = _images()
    np.testing.assert_array_equal(random_flip(prob=1.0)(key, x), x[:, :, ::-1])
    np.testing.assert_array_equal(random_flip(prob=0.0)(key, x), x)
    both = random_flip(horizontal=False, vertical=True, prob=1.0)(key, x)
    np.testing.assert_array_equal(both, x[:, ::-1])
    y = random_flip()(key, x)
    for i in range(len(x)):
        assert np.array_equal(y[i], x[i]) or np.array_equal(y[i], x[i, :, ::-1])


def _padded_windows(x, pad_y, pad_x, fill):
    """Every (h, w) window of the padded images: the possible shifted versions."""
    n, h, w, _ = x.shape
    padded = np.pad(np.asarray(x), ((0, 0), (pad_y, pad_y), (pad_x, pad_x), (0, 0)))
    if fill:
        mask = np.pad(
            np.zeros(x.shape), ((0, 0), (pad_y, pad_y), (pad_x, pad_x), (0, 0)), constant_values=1
        )
        padded = np.where(mask == 1, fill, padded)
    return [
        [
            padded[i, a : a + h, b : b + w]
            for a in range(2 * pad_y + 1)
            for b in range(2 * pad_x + 1)
        ]
        for i in range(n)
    ]


@pytest.mark.parametrize(
    ("aug", "pads", "fill"),
    [(random_crop(2), (2, 2), 0.0), (random_translation((1, 3), fill_value=-1.0), (1, 3), -1.0)],
)
def test_crop_and_translation_are_shifts(aug, pads, fill, key):
    x = _images(n=8)
    y = np.asarray(aug(key, x))
    windows = _padded_windows(x, *pads, fill)
    shifts = set()
    for i in range(len(x)):
        matches = [j for j, win in enumerate(windows[i]) if np.array_equal(win, y[i])]
        assert matches, f"example {i} is not a shift of its input"
        shifts.add(matches[0])
    assert len(shifts) > 1


def test_zero_shift_is_identity(key):
    x = _images()
    np.testing.assert_array_equal(random_crop(0)(key, x), x)
    np.testing.assert_array_equal(random_translation(0)(key, x), x)
    np.testing.assert_array_equal(random_rotation(0.0)(key, x), x)


_rotate = jax.jit(augment._rotate, static_argnums=2)


def test_rotate_quarter_turn_matches_rot90():
    x = _images(h=9, w=9)
    out = _rotate(x, jnp.full((6,), math.pi / 2), 0.0)
    np.testing.assert_allclose(out, np.rot90(np.asarray(x), 1, axes=(1, 2)), atol=1e-5)


def test_rotate_matches_scipy_bilinear():
    ndimage = pytest.importorskip("scipy.ndimage")
    x = _images()
    for degrees in (17.0, -8.0):
        out = _rotate(x, jnp.full((6,), math.radians(degrees)), 0.0)
        reference = ndimage.rotate(
            np.asarray(x), degrees, axes=(1, 2), reshape=False, order=1, mode="grid-constant"
        )
        np.testing.assert_allclose(out, reference, atol=1e-5)


def test_rotation_bounds_and_fill(key):
    x = jnp.ones((16, 9, 9, 1))
    y = jax.jit(random_rotation(30.0, fill_value=0.0))(key, x)
    assert float(y.min()) >= 0.0 and float(y.max()) <= 1.0 + 1e-6
    np.testing.assert_allclose(y[:, 4, 4], 1.0)  # the center stays
    corners = np.asarray(y[:, 0, 0, 0])
    assert (corners < 1.0).any()  # some corners come from outside the image


def test_cutout_patch(key):
    x = jnp.ones((20, 10, 10, 1))
    y = np.asarray(jax.jit(cutout(3, fill_value=-2.0))(key, x))
    assert set(np.unique(y).tolist()) <= {-2.0, 1.0}
    for image in y[..., 0]:
        rows, cols = np.nonzero(image == -2.0)
        assert 1 <= len(rows) <= 9
        # the patch is a rectangle
        assert len(rows) == (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
    assert ((y == -2.0).sum(axis=(1, 2, 3)) == 9).any()


# --------------------------------------------------------------------------- intensity math


def test_brightness_is_one_offset_per_example(key):
    x = _images()
    delta = np.asarray(random_brightness(0.3)(key, x) - x)
    per_example = delta.reshape(len(x), -1)
    np.testing.assert_allclose(
        per_example, per_example[:, :1].repeat(per_example.shape[1], 1), atol=1e-6
    )
    assert np.abs(per_example).max() <= 0.3 + 1e-6
    assert random_brightness(0.1)(key, jnp.zeros((4, 3))).shape == (4, 3)  # any (N, ...)


def test_contrast_hand_computed_and_keeps_channel_means(key):
    x = jnp.array([[1.0, 3.0], [10.0, 20.0]]).T.reshape(1, 1, 2, 2)  # channels (1, 3), (10, 20)
    y = random_contrast(3.0, 3.0)(key, x)
    np.testing.assert_allclose(y[0, 0], [[-1.0, 0.0], [5.0, 30.0]])
    # the mean is over all spatial axes (height too), not per row
    square = jnp.array([[0.0, 2.0], [4.0, 6.0]]).reshape(1, 2, 2, 1)
    np.testing.assert_allclose(random_contrast(2.0, 2.0)(key, square)[0, ..., 0], [[-3, 1], [5, 9]])
    z = random_contrast(0.2, 1.8)(key, _images())
    np.testing.assert_allclose(z.mean(axis=(1, 2)), _images().mean(axis=(1, 2)), atol=1e-5)


def test_noise_statistics(key):
    y = gaussian_noise(0.5)(key, jnp.zeros((200, 8, 8, 1)))
    assert abs(float(y.mean())) < 0.02 and abs(float(y.std()) - 0.5) < 0.02
    np.testing.assert_array_equal(gaussian_noise(0.0)(key, _images()), _images())


def test_mixup_mixes_inputs_and_targets_alike(key):
    n = 32
    labels = jnp.arange(n) % 4
    x = labels.astype(jnp.float32)[:, None, None, None] * jnp.ones((n, 2, 2, 1))
    y = jax.nn.one_hot(labels, 4)
    xm, ym = jax.jit(mixup(0.4))(key, (x, y))
    assert xm.shape == x.shape and ym.shape == y.shape and ym.dtype == y.dtype
    np.testing.assert_allclose(ym.sum(axis=1), 1.0, atol=1e-6)
    # each mixed input is the same mixture of class values as its mixed target
    np.testing.assert_allclose(xm[:, 0, 0, 0], ym @ jnp.arange(4.0), atol=1e-5)
    assert not np.allclose(ym, y)
    keys = jax.random.split(key, 2)
    pairs = (jnp.stack([x, x]), jnp.stack([y, y]))
    xv, yv = jax.jit(jax.vmap(mixup(0.4)))(keys, pairs)
    assert xv.shape == (2, *x.shape) and yv.shape == (2, *y.shape)
    np.testing.assert_allclose(xv[:, :, 0, 0, 0], yv @ jnp.arange(4.0), atol=1e-5)


# --------------------------------------------------------------------------- combinators


def test_compose_splits_the_key(key):
    first, second = random_flip(), gaussian_noise(0.1)
    x = _images()
    k1, k2 = jax.random.split(key)
    np.testing.assert_array_equal(compose(first, second)(key, x), second(k2, first(k1, x)))
    np.testing.assert_array_equal(compose()(key, x), x)
    assert "random_flip" in compose(first, second).__name__


def test_on_inputs(key):
    x, y = _images(), jnp.arange(6)
    flip = random_flip(prob=1.0)
    xf, yf = jax.jit(on_inputs(flip))(key, (x, y))
    np.testing.assert_array_equal(xf, x[:, :, ::-1])
    np.testing.assert_array_equal(yf, y)


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("make", "error", "match"),
    [
        (lambda: random_flip(False, False), ValueError, "nothing would flip"),
        (lambda: random_flip(prob=1.5), ValueError, r"`prob` must be in \[0, 1\]"),
        (lambda: random_flip(prob="half"), TypeError, "`prob` must be a number, got str"),
        (lambda: random_crop(-1), ValueError, "`padding` must be an int >= 0"),
        (lambda: random_crop(2.5), ValueError, "`padding` must be an int >= 0"),
        (lambda: random_crop(2, mode="mirror"), ValueError, "`mode` must be one of"),
        (lambda: random_translation((1, 2, 3)), ValueError, "`max_shift` must be an int >= 0"),
        (lambda: random_translation(1, fill_value=math.nan), ValueError, "must be finite"),
        (lambda: random_rotation(-5), ValueError, "`max_degrees` must be >= 0"),
        (lambda: random_rotation(200), ValueError, "`max_degrees` must be at most 180"),
        (lambda: random_rotation(True), TypeError, "`max_degrees` must be a number"),
        (lambda: cutout(0), ValueError, "`size` must be an int >= 1"),
        (lambda: random_brightness(-0.1), ValueError, "`max_delta` must be >= 0"),
        (lambda: random_contrast(-1.0, 1.0), ValueError, "`lower` must be >= 0"),
        (lambda: random_contrast(1.5, 0.5), ValueError, "needs `lower <= upper`"),
        (lambda: gaussian_noise(-1.0), ValueError, "`stddev` must be >= 0"),
        (lambda: mixup(0.0), ValueError, "`alpha` must be > 0"),
        (lambda: compose(random_flip(), 3), TypeError, "argument 1 must be an augmentation"),
        (lambda: on_inputs(None), TypeError, "expected an augmentation function"),
    ],
)
def test_factory_errors(make, error, match):
    with pytest.raises(error, match=match):
        make()


def test_batch_errors(key):
    with pytest.raises(
        ValueError, match=r"expected a batch of images \(N, H, W, C\), got shape \(7, 9, 2\)"
    ):
        random_rotation(10.0)(key, _images()[0])
    for aug in (random_flip(), random_crop(1), random_translation(1), cutout(2)):
        with pytest.raises(ValueError, match="expected a batch of images"):
            aug(key, jnp.zeros((4, 4)))
    with pytest.raises(TypeError, match="needs floating data, got dtype uint8"):
        random_brightness(0.1)(key, _images(dtype=jnp.uint8))
    with pytest.raises(ValueError, match=r"at least 3 axes, got shape \(4, 3\)"):
        random_contrast(0.5, 1.5)(key, jnp.zeros((4, 3)))
    x, y = _images(n=4), jax.nn.one_hot(jnp.arange(4), 4)
    with pytest.raises(TypeError, match="targets must be floating"):
        mixup(0.2)(key, (x, jnp.arange(4)))
    with pytest.raises(ValueError, match="same batch size, got 4 and 3"):
        mixup(0.2)(key, (x, y[:3]))
    with pytest.raises(TypeError, match=r"expected a pair `\(inputs, targets\)`"):
        mixup(0.2)(key, x)
    with pytest.raises(TypeError, match=r"expected a pair `\(inputs, targets\)`"):
        on_inputs(random_flip())(key, x)


def test_mixup_accepts_one_dimensional_float_targets_and_rejects_scalars():
    x = jnp.arange(8.0).reshape(4, 2)
    y = jnp.arange(4.0)  # regression targets, shape (N,)
    xm, ym = augment.mixup(0.5)(jax.random.key(1), (x, y))
    np.testing.assert_allclose(xm[:, 0], 2 * ym, rtol=1e-6)  # mixed alike: x[:, 0] == 2 y
    with pytest.raises(TypeError, match=r"targets must be floating \(N, \.\.\.\) arrays"):
        augment.mixup(0.5)(jax.random.key(1), (x, jnp.float32(1.0)))


def test_default_parameters_as_documented():
    assert augment.random_crop().__name__ == "random_crop(padding=4)"
    assert augment.mixup().__name__ == "mixup(0.2)"


def test_rotation_accepts_180_degrees_and_mixup_1d_inputs(key):
    assert augment.random_rotation(180)(key, _images()).shape == _images().shape
    xm, ym = augment.mixup(0.5)(key, (jnp.arange(4.0), jnp.arange(4.0) * 2))
    np.testing.assert_allclose(ym, 2 * xm, rtol=1e-6)  # (N,) inputs mix as the targets do
