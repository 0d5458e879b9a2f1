"""fit warns once when training inputs are uint8 (raw pixels), never for int32/float inputs."""

import warnings

import numpy as np
import optax
import pytest

import funcnet as fn


def _data(dtype):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(32, 4)).astype(dtype)
    y = rng.integers(0, 2, size=32).astype(np.int32)
    return x, y


def _fit(data, model=None, **kwargs):
    model = model or fn.serial(lambda x: x.astype(np.float32) / 255, fn.Dense(2))
    return fn.fit(
        model,
        optax.sgd(0.1),
        "sparse_categorical_cross_entropy",
        data,
        epochs=2,
        batch_size=8,
        verbose=0,
        **kwargs,
    )


def test_uint8_arrays_warn_once():
    with pytest.warns(UserWarning, match=r"fit: the training inputs `x` are uint8") as record:
        _fit(_data(np.uint8), validation_split=0.25)
    uint8 = [w for w in record if "uint8" in str(w.message)]
    assert len(uint8) == 1
    assert "x.astype(np.float32) / 255" in str(uint8[0].message)
    assert uint8[0].filename == __file__  # points at the caller's fit


def test_uint8_batches_warn_once():
    x, y = _data(np.uint8)
    batches = [(x[i : i + 8], y[i : i + 8]) for i in range(0, 32, 8)]
    with pytest.warns(UserWarning, match=r"are uint8") as record:
        _fit(batches)
    assert len([w for w in record if "uint8" in str(w.message)]) == 1


def test_uint8_leaf_of_a_pytree_is_named():
    x, y = _data(np.uint8)
    model = fn.serial(lambda d: d["image"].astype(np.float32) + d["extra"], fn.Dense(2))
    data = ({"image": x, "extra": x.astype(np.float32)}, y)
    with pytest.warns(UserWarning, match=r"inputs `x\['image'\]` are uint8"):
        _fit(data, model)


@pytest.mark.parametrize("dtype", [np.float32, np.int32])
def test_no_warning_for_floats_or_int_ids(dtype):
    model = fn.serial(fn.Embedding(256, 3), lambda h: h.mean(1), fn.Dense(2))
    if dtype == np.float32:
        model = fn.Dense(2)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        _fit(_data(dtype), model)
