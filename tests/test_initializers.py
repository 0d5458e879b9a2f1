"""Initializers in low precision."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from funcnet import initializers
from funcnet.layers.dense import Dense


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
@pytest.mark.parametrize("shape", [(4, 4), (6, 3), (2, 3, 5)])
def test_orthogonal_in_half_precision_is_the_float32_draw_cast(dtype, shape):
    key = jax.random.key(0)
    w = initializers.orthogonal(2.0)(key, shape, dtype)
    assert w.dtype == dtype and w.shape == shape
    expected = jax.nn.initializers.orthogonal(2.0)(key, shape, jnp.float32).astype(dtype)
    np.testing.assert_array_equal(np.asarray(w, np.float32), np.asarray(expected, np.float32))


def test_orthogonal_keeps_jax_results_in_float32():
    key = jax.random.key(1)
    w = initializers.orthogonal()(key, (5, 3))
    np.testing.assert_array_equal(w, jax.nn.initializers.orthogonal()(key, (5, 3)))
    q = np.asarray(w, np.float64)
    np.testing.assert_allclose(q.T @ q, np.eye(3), atol=1e-5)


def test_orthogonal_bfloat16_params_of_a_layer():
    layer = Dense(4, w_init="orthogonal", param_dtype=jnp.bfloat16)
    params, _ = layer.init(jax.random.key(0), jnp.zeros((2, 4), jnp.bfloat16))
    assert params["w"].dtype == jnp.bfloat16
    q = np.asarray(params["w"], np.float32)
    np.testing.assert_allclose(q.T @ q, np.eye(4), atol=0.05)  # bfloat16 has 8 mantissa bits
