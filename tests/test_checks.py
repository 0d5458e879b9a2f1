"""funcnet._checks: the shared argument checks keep one wording everywhere."""

import jax.numpy as jnp
import numpy as np
import pytest

from funcnet import _checks
from funcnet.core import LayerError


@pytest.mark.parametrize("value", [1, 7, np.int32(3), np.int64(2)])
def test_check_positive_int_accepts_ints(value):
    out = _checks.check_positive_int("Owner", "n", value)
    assert out == int(value) and type(out) is int


@pytest.mark.parametrize("value", [0, -1, True, False, 1.0, "2", None, np.bool_(True)])
def test_check_positive_int_rejects(value):
    with pytest.raises(ValueError, match=r"^Owner: `n` must be an int >= 1, got "):
        _checks.check_positive_int("Owner", "n", value)


def test_check_positive_int_allow_zero():
    assert _checks.check_positive_int("Owner", "n", 0, allow_zero=True) == 0
    with pytest.raises(ValueError, match=r"^Owner: `n` must be an int >= 0, got -1\.$"):
        _checks.check_positive_int("Owner", "n", -1, allow_zero=True)


def test_is_int():
    assert _checks.is_int(3) and _checks.is_int(np.uint8(3))
    assert not any(_checks.is_int(v) for v in (True, np.bool_(False), 3.0, "3", None))


def test_check_rate_and_bool():
    assert _checks.check_rate("Dropout", "drop_rate", 1) == 1.0
    with pytest.raises(ValueError, match=r"^Dropout: `drop_rate` must be a number in \[0, 1\]"):
        _checks.check_rate("Dropout", "drop_rate", True)
    assert _checks.check_bool("RNN", "reverse", False) is False
    with pytest.raises(TypeError, match=r"^RNN: `reverse` must be True or False, got 0\.$"):
        _checks.check_bool("RNN", "reverse", 0)


def test_as_tuple():
    assert _checks.as_tuple("Conv", "strides", 2, None) == (2,)
    assert _checks.as_tuple("Conv", "padding", [0, 1], 2, allow_zero=True) == (0, 1)
    with pytest.raises(ValueError, match=r"^Conv: `strides` must be an int or a tuple of ints"):
        _checks.as_tuple("Conv", "strides", "2", 2)
    with pytest.raises(ValueError, match=r"^Conv: `strides` must be an int >= 1, got 0\."):
        _checks.as_tuple("Conv", "strides", (1, 0), 2)


def test_dtype_checks():
    assert _checks.check_floating_dtype("LayerNorm", None) is None
    with pytest.raises(ValueError, match=r"^LayerNorm: `dtype` must be a floating dtype or None"):
        _checks.check_floating_dtype("LayerNorm", "int8")
    with pytest.raises(LayerError, match=r"^expected floating-point inputs, got dtype int32"):
        _checks.check_floating(jnp.dtype("int32"))
    with pytest.raises(LayerError, match=r"^expected 'x' to be a single array, got dict"):
        _checks.array_of({}, "'x'")


def test_formatters():
    assert _checks.fmt_shape(np.zeros((2, 0, 3)).shape) == "(2, 0, 3)"
    assert _checks.fmt_spec(jnp.zeros((2,), jnp.bfloat16)) == "bfloat16[2]"
    assert _checks.fmt_spec((jnp.zeros(1), jnp.zeros((2, 2), jnp.int32))) == (
        "('float32[1]', 'int32[2, 2]')"
    )
