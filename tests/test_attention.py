"""MultiHeadAttention, dot_product_attention and positional layers vs numpy references."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import funcnet as fn
from funcnet.core import LayerError
from funcnet.layers.attention import (
    MultiHeadAttention,
    PositionalEmbedding,
    RotaryEmbedding,
    SinusoidalEncoding,
    apply_rope,
    dot_product_attention,
    sinusoidal_encoding,
)

F32, I32 = jnp.float32, jnp.int32


# ---------------------------------------------------------------------------------------------
# numpy references, written independently of the library


def np_softmax(logits, allowed):
    """Softmax over the last axis with masked entries at exactly 0 and empty rows all 0."""
    logits = np.where(allowed, logits, -np.inf)
    top = logits.max(-1, keepdims=True)
    top = np.where(np.isfinite(top), top, 0.0)
    e = np.where(allowed, np.exp(logits - top), 0.0)
    total = e.sum(-1, keepdims=True)
    return np.where(total > 0, e / np.where(total > 0, total, 1.0), 0.0)


def np_rope(x, positions, base=10000.0):
    """RoPE on the last axis, rotate-half layout, pair i = (i, i + D/2).

    ``positions`` broadcasts against ``x.shape[:-1]``.
    """
    x = np.asarray(x, np.float64)
    d = x.shape[-1]
    out = np.empty_like(x)
    for i in range(d // 2):
        theta = base ** (-2.0 * i / d)
        angle = np.asarray(positions, np.float64) * theta
        a, b = x[..., i], x[..., i + d // 2]
        out[..., i] = a * np.cos(angle) - b * np.sin(angle)
        out[..., i + d // 2] = b * np.cos(angle) + a * np.sin(angle)
    return out


def np_mha(params, x, memory=None, allowed=None, causal=False, rope=False):
    """Multi-head attention in float64 numpy; returns (out (N,Tq,Do), weights (N,H,Tq,Tk))."""
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
    x = np.asarray(x, np.float64)
    memory = x if memory is None else np.asarray(memory, np.float64)
    n, tq, tk = x.shape[0], x.shape[1], memory.shape[1]
    heads = p["query"]["w"].shape[1]
    group = heads // p["key"]["w"].shape[1]  # query heads per key/value head (GQA)
    out = np.zeros((n, tq, p["out"]["w"].shape[-1]))
    weights = np.zeros((n, heads, tq, tk))
    mask = np.ones((n, heads, tq, tk), bool)
    if allowed is not None:
        mask &= np.broadcast_to(allowed, mask.shape)
    if causal:
        mask &= np.tril(np.ones((tq, tk), bool))
    for b in range(n):
        for h in range(heads):
            q = x[b] @ p["query"]["w"][:, h] + p["query"].get("b", np.zeros((heads, 1)))[h]
            g = h // group
            k = memory[b] @ p["key"]["w"][:, g] + p["key"].get("b", np.zeros((heads, 1)))[g]
            v = memory[b] @ p["value"]["w"][:, g] + p["value"].get("b", np.zeros((heads, 1)))[g]
            if rope:
                q, k = np_rope(q, np.arange(tq)), np_rope(k, np.arange(tk))
            w = np_softmax(q @ k.T / math.sqrt(q.shape[-1]), mask[b, h])
            weights[b, h] = w
            out[b] += (w @ v) @ p["out"]["w"][h]
    if "b" in p["out"]:
        out += p["out"]["b"]
    return out, weights


def close(a, b, tol=2e-5):
    np.testing.assert_allclose(np.asarray(a, np.float64), b, rtol=tol, atol=tol)


def rand(*shape, seed=0):
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def lengths_mask(lengths, t):
    return np.arange(t)[None, :] < np.asarray(lengths)[:, None]


# ---------------------------------------------------------------------------------------------
# MultiHeadAttention vs numpy


def test_self_attention_matches_numpy_on_both_paths(key):
    x = rand(2, 5, 6)
    mha = MultiHeadAttention(3)
    params, state = mha.init(key, x)
    assert jax.tree.map(jnp.shape, params["query"]) == {"w": (6, 3, 2), "b": (3, 2)}
    ref, ref_w = np_mha(params, x)
    close(jax.jit(mha.apply)(params, state, x)[0], ref)
    (y, w), _ = jax.jit(MultiHeadAttention(3, return_weights=True).apply)(params, state, x)
    close(y, ref)
    close(w, ref_w)


@pytest.mark.parametrize("causal", [False, True])
def test_padding_mask_matches_numpy_and_gives_exact_zero_weight(key, causal):
    x = rand(3, 6, 4)
    pad = lengths_mask([6, 4, 2], 6)
    mha = MultiHeadAttention(2, 3, causal=causal, return_weights=True)
    params, state = mha.init(key, {"x": x, "mask": pad})
    (y, w), _ = jax.jit(mha.apply)(params, state, {"x": x, "mask": pad})
    ref, ref_w = np_mha(params, x, allowed=pad[:, None, None, :], causal=causal)
    close(y, ref)
    close(w, ref_w)
    w = np.asarray(w)
    assert (w[~np.broadcast_to(pad[:, None, None, :], w.shape)] == 0.0).all()
    if causal:
        assert (w[..., np.triu(np.ones((6, 6), bool), 1)] == 0.0).all()
    np.testing.assert_allclose(w.sum(-1), 1.0, rtol=1e-6)
    # The fast path (no weights returned) gives the same outputs.
    fast = MultiHeadAttention(2, 3, causal=causal)
    close(jax.jit(fast.apply)(params, state, {"x": x, "mask": pad})[0], ref)


def test_changing_padded_inputs_does_not_change_unmasked_outputs(key):
    x = rand(2, 7, 4)
    pad = lengths_mask([7, 4], 7)
    mha = MultiHeadAttention(2)
    params, state = mha.init(key, x)
    changed = x.copy()
    changed[1, 4:] = 100.0 * rand(3, 4, seed=1)
    y, _ = mha.apply(params, state, {"x": x, "mask": pad})
    y2, _ = mha.apply(params, state, {"x": changed, "mask": pad})
    np.testing.assert_array_equal(np.asarray(y)[0], np.asarray(y2)[0])
    close(np.asarray(y2)[1, :4], np.asarray(y)[1, :4], tol=1e-6)
    assert not np.allclose(np.asarray(y2)[1, 4:], np.asarray(y)[1, 4:])


@pytest.mark.parametrize(
    "shape",
    [(2, 5), (1, 5), (2, 4, 5), (2, 1, 5), (2, 2, 4, 5), (2, 1, 4, 5), (1, 2, 1, 5)],
    ids=str,
)
def test_mask_shapes_broadcast_as_documented(key, shape):
    x, memory = rand(2, 4, 3), rand(2, 5, 3, seed=1)
    mask = np.random.default_rng(2).random(shape) < 0.7
    mha = MultiHeadAttention(2, 4, return_weights=True)
    inputs = {"x": x, "memory": memory, "mask": mask}
    params, state = mha.init(key, inputs)
    (y, w), _ = mha.apply(params, state, inputs)
    rank4 = {2: mask[:, None, None, :], 3: mask[:, None], 4: mask}[len(shape)]
    ref, ref_w = np_mha(params, x, memory, allowed=rank4)
    close(y, ref)
    close(w, ref_w)
    close(MultiHeadAttention(2, 4).apply(params, state, inputs)[0], ref)


def test_fully_masked_query_row_gives_zero_weights_and_the_output_bias(key):
    x = rand(1, 3, 4)
    mask = np.array([[[True, True, False], [False, False, False], [True, False, True]]])
    inputs = {"x": x, "mask": mask}
    mha = MultiHeadAttention(2, b_init="ones", return_weights=True)
    params, state = mha.init(key, inputs)
    (y, w), _ = mha.apply(params, state, inputs)
    np.testing.assert_array_equal(np.asarray(w)[0, :, 1], 0.0)
    np.testing.assert_array_equal(np.asarray(y)[0, 1], np.asarray(params["out"]["b"]))
    fast = MultiHeadAttention(2, b_init="ones")
    y_fast, _ = fast.apply(params, state, inputs)
    close(y_fast, np.asarray(y))

    def loss(p, layer):
        out = layer.apply(p, state, inputs)[0]
        return jnp.sum(jnp.sin(out[0] if isinstance(out, tuple) else out))

    for layer in (mha, fast):
        grads = jax.jit(jax.grad(loss), static_argnums=1)(params, layer)
        assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(grads))


def test_cross_attention_with_memory_mask_matches_numpy(key):
    x, memory = rand(2, 4, 6), rand(2, 7, 3, seed=1)
    mem_pad = lengths_mask([7, 3], 7)
    mha = MultiHeadAttention(2, 4, value_size=5, out_features=3)
    inputs = {"x": x, "memory": memory, "memory_mask": mem_pad}
    params, state = mha.init(key, inputs)
    shapes = jax.tree.map(jnp.shape, params)
    assert shapes["key"] == {"w": (3, 2, 4), "b": (2, 4)}
    assert shapes["value"] == {"w": (3, 2, 5), "b": (2, 5)}
    assert shapes["out"] == {"w": (2, 5, 3), "b": (3,)}
    y, _ = jax.jit(mha.apply)(params, state, inputs)
    assert y.shape == (2, 4, 3)
    ref, _ = np_mha(params, x, memory, allowed=mem_pad[:, None, None, :])
    close(y, ref)
    # "mask" and "memory_mask" are combined.
    extra = np.random.default_rng(3).random((2, 4, 7)) < 0.8
    y, _ = mha.apply(params, state, {**inputs, "mask": extra})
    ref, _ = np_mha(params, x, memory, allowed=mem_pad[:, None, None, :] & extra[:, None])
    close(y, ref)


def test_no_bias_and_custom_scale_of_inits(key):
    x = rand(2, 3, 4)
    mha = MultiHeadAttention(2, use_bias=False)
    params, state = mha.init(key, x)
    assert all(set(p) == {"w"} for p in params.values())
    close(mha.apply(params, state, x)[0], np_mha(params, x)[0])


def test_rope_attention_matches_numpy(key):
    x = rand(2, 5, 8)
    mha = MultiHeadAttention(2, rope=True, causal=True)
    params, state = mha.init(key, x)
    close(jax.jit(mha.apply)(params, state, x)[0], np_mha(params, x, causal=True, rope=True)[0])


def test_rope_attention_logits_depend_only_on_position_differences(key):
    # Every position holds the same vector, so without RoPE all logits in a row would be
    # equal; with RoPE logit(i, j) depends on j - i only. Differences of log-weights within a
    # row are differences of logits.
    x = np.broadcast_to(rand(1, 1, 8), (1, 6, 8))
    mha = MultiHeadAttention(2, rope=True, return_weights=True)
    params, state = mha.init(key, x)
    (_, w), _ = mha.apply(params, state, x)
    logw = np.log(np.asarray(w, np.float64))[0]
    diff = logw[:, :, 1:] - logw[:, :, :1]  # logit(i, j) - logit(i, 0)
    for i in range(5):
        for j in range(5):
            a = logw[:, i, j + 1] - logw[:, i, j]
            b = logw[:, i + 1, j + 2] - logw[:, i + 1, j + 1] if j + 2 < 6 else a
            np.testing.assert_allclose(a, b, atol=1e-4)
    assert np.abs(diff).max() > 1e-3  # the positions do matter


def test_dot_product_attention_reference_equals_jax_nn(key):
    rng = np.random.default_rng(0)
    q, k, v = (
        rng.normal(size=(2, 4, 3, 8)),
        rng.normal(size=(2, 6, 3, 8)),
        rng.normal(size=(2, 6, 3, 8)),
    )
    q, k, v = (jnp.asarray(a, F32) for a in (q, k, v))
    mask = jnp.asarray(rng.random((2, 1, 4, 6)) < 0.8) | jnp.eye(4, 6, dtype=bool)
    for causal in (False, True):
        ours, _ = dot_product_attention(q, k, v, mask, causal=causal)
        theirs = jax.nn.dot_product_attention(q, k, v, mask=mask, is_causal=causal)
        close(ours, np.asarray(theirs), tol=1e-5)


def test_attention_dropout(key):
    x = rand(2, 5, 4)
    mha = MultiHeadAttention(2, drop_rate=0.5)
    params, state = mha.init(key, x)
    with pytest.raises(
        LayerError, match=r"^MultiHeadAttention\(2, drop_rate=0.5\): needs a random"
    ):
        mha.apply(params, state, x, train=True)
    eval_y, _ = mha.apply(params, state, x)
    close(eval_y, np_mha(params, x)[0])
    y1, _ = mha.apply(params, state, x, key=jax.random.key(1), train=True)
    y2, _ = jax.jit(mha.apply, static_argnames="train")(
        params, state, x, key=jax.random.key(1), train=True
    )
    y3, _ = mha.apply(params, state, x, key=jax.random.key(2), train=True)
    close(y1, np.asarray(y2), tol=1e-5)
    assert not np.allclose(y1, eval_y) and not np.allclose(y1, y3)
    # Dropping everything leaves the output bias.
    everything = MultiHeadAttention(2, drop_rate=1.0, b_init="ones")
    params, state = everything.init(key, x)
    y, _ = everything.apply(params, state, x, key=key, train=True)
    np.testing.assert_array_equal(np.asarray(y), np.ones((2, 5, 4), np.float32))


def test_dropout_keeps_weights_unbiased(key):
    # Inverted dropout: out = sum_s keep_s w_s v_s / (1 - p) with keep_s ~ Bernoulli(1 - p), so
    # over many keys its mean is the output without dropout, and its variance per element is
    # p / (1 - p) sum_s w_s^2 v_s^2. The mean of `draws` outputs must be within 5 standard
    # errors. That bound rejects dropout without the 1 / (1 - p) rescaling (mean (1 - p) base),
    # as checked below; so it does a keep probability of p instead of 1 - p, or of 1 - 1.1 p
    # (a 4% bias, which atol=0.1 let pass).
    rate, draws = 0.3, 4000
    q = k = v = jnp.asarray(rand(1, 3, 1, 4))
    base, weights = dot_product_attention(q, k, v)
    keys = jax.random.split(key, draws)
    outs = jax.vmap(lambda kk: dot_product_attention(q, k, v, drop_rate=rate, dropout_key=kk)[0])(
        keys
    )
    w = np.asarray(weights, np.float64)[0, 0]  # (Tq, Tk)
    values = np.asarray(v, np.float64)[0, :, 0]  # (Tk, V)
    bound = 5 * np.sqrt(rate / (1 - rate) * (w**2 @ values**2) / draws)  # (Tq, V)
    base = np.asarray(base, np.float64)[0, :, 0]
    error = np.abs(np.asarray(outs, np.float64).mean(0)[0, :, 0] - base)
    assert (error <= bound).all(), (error / bound).max()
    assert (rate * np.abs(base) > 2 * bound).any()  # an unscaled dropout would fail


def _bf16(a):
    """``a`` rounded to bfloat16, as float64."""
    return np.asarray(jnp.asarray(a, jnp.bfloat16), np.float64)


def test_bfloat16_inputs(key):
    x = rand(2, 4, 8)
    mha = MultiHeadAttention(2)
    params, state = mha.init(key, x)
    # bfloat16 inputs with float32 params: promoted, so float32 numbers from the rounded inputs.
    y, _ = mha.apply(params, state, jnp.asarray(x, jnp.bfloat16))
    assert y.dtype == jnp.float32  # promoted with the float32 params, as Dense
    close(y, np_mha(params, _bf16(x))[0])
    # Computing in bfloat16: the reference gets the inputs and params rounded to bfloat16 as the
    # layer does. What remains is the rounding of the intermediate results (projections,
    # weights, products, output), each at most u = 2**-8 relative in bfloat16; allow 4u of the
    # output's scale (measured: about 1.1u). A logits scale of 1/sqrt(K + 1) for 1/sqrt(K) is
    # far outside it (13u), and atol=0.1 let it pass.
    u = 2.0**-8
    ref, ref_w = np_mha(jax.tree.map(_bf16, params), _bf16(x))
    tol = 4 * u * np.abs(ref).max()
    half = MultiHeadAttention(2, dtype=jnp.bfloat16)
    y, _ = half.apply(params, state, x)
    assert y.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(y, np.float64), ref, rtol=0, atol=tol)
    (y, w), _ = MultiHeadAttention(2, dtype=jnp.bfloat16, return_weights=True).apply(
        params, state, x
    )
    np.testing.assert_allclose(np.asarray(y, np.float64), ref, rtol=0, atol=tol)
    assert w.dtype == jnp.bfloat16
    # weights <= 1 from a float32 softmax of bfloat16 queries and keys, rounded once: 2u
    np.testing.assert_allclose(np.asarray(w, np.float64), ref_w, rtol=0, atol=2 * u)
    # each weight rounded by at most u of itself, and they sum to 1 before rounding
    np.testing.assert_allclose(np.asarray(w, np.float64).sum(-1), 1.0, rtol=0, atol=u + 1e-6)


def test_float64_uses_the_reference_path():
    with jax.enable_x64(True):
        x = rand(2, 4, 6).astype(np.float64)
        mha = MultiHeadAttention(2, param_dtype=jnp.float64, causal=True)
        params, state = mha.init(jax.random.key(0), x)
        y, _ = mha.apply(params, state, {"x": x, "mask": lengths_mask([4, 2], 4)})
        assert y.dtype == jnp.float64
        ref, _ = np_mha(params, x, allowed=lengths_mask([4, 2], 4)[:, None, None], causal=True)
        np.testing.assert_allclose(y, ref, rtol=1e-12, atol=1e-12)


def test_matches_torch_multihead_attention(key):
    torch = pytest.importorskip("torch")
    e, h, n, t = 8, 2, 2, 5
    x = rand(n, t, e)
    pad = lengths_mask([5, 3], t)
    mha = MultiHeadAttention(h, return_weights=True, causal=True)
    params, state = mha.init(key, x)
    (y, w), _ = mha.apply(params, state, {"x": x, "mask": pad})
    p = jax.tree.map(np.asarray, params)
    ref = torch.nn.MultiheadAttention(e, h, batch_first=True)
    with torch.no_grad():
        in_w = [p[name]["w"].reshape(e, e).T for name in ("query", "key", "value")]
        in_b = [p[name]["b"].reshape(e) for name in ("query", "key", "value")]
        ref.in_proj_weight.copy_(torch.tensor(np.concatenate(in_w, 0)))
        ref.in_proj_bias.copy_(torch.tensor(np.concatenate(in_b, 0)))
        ref.out_proj.weight.copy_(torch.tensor(p["out"]["w"].reshape(e, e).T))
        ref.out_proj.bias.copy_(torch.tensor(p["out"]["b"]))
        xt = torch.tensor(x)
        y_t, w_t = ref(
            xt,
            xt,
            xt,
            key_padding_mask=torch.tensor(~pad),  # torch: True = ignore
            attn_mask=torch.triu(torch.ones(t, t, dtype=torch.bool), 1),
            need_weights=True,
            average_attn_weights=False,
        )
    close(y, y_t.numpy(), tol=1e-5)
    close(w, w_t.numpy(), tol=1e-5)


# ---------------------------------------------------------------------------------------------
# Grouped-query and multi-query attention


def torch_sdpa_layer(torch, params, x, *, allowed=None, causal=False, rope=False):
    """The layer written with torch's ``scaled_dot_product_attention(enable_gqa=True)``, float64.

    Projections with the same weights; ``allowed`` a boolean mask (True = may attend)
    broadcastable to ``(N, H, Tq, Tk)``.
    """
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
    x = np.asarray(x, np.float64)
    q, k, v = (
        np.einsum("ntd,dhk->nthk", x, p[n]["w"]) + p[n]["b"] for n in ("query", "key", "value")
    )
    if rope:
        positions = np.arange(x.shape[1])[:, None]
        q, k = np_rope(q, positions), np_rope(k, positions)
    qt, kt, vt = (torch.tensor(a).transpose(1, 2) for a in (q, k, v))  # (N, heads, T, K)
    mask = None if allowed is None else torch.tensor(np.asarray(allowed))
    o = torch.nn.functional.scaled_dot_product_attention(
        qt, kt, vt, attn_mask=mask, is_causal=causal, enable_gqa=True
    )
    return np.einsum("nthv,hvo->nto", o.transpose(1, 2).numpy(), p["out"]["w"]) + p["out"]["b"]


@pytest.mark.parametrize("variant", ["plain", "causal", "masked", "causal_masked", "rope"])
@pytest.mark.parametrize("kv_heads", [4, 2, 1], ids=["mha", "gqa", "mqa"])
def test_grouped_query_attention_matches_torch_sdpa(key, kv_heads, variant):
    torch = pytest.importorskip("torch")
    x = rand(2, 6, 8)
    mha = MultiHeadAttention(
        4, num_kv_heads=kv_heads, causal="causal" in variant, rope=variant == "rope"
    )
    params, state = mha.init(key, x)
    assert params["key"]["w"].shape == params["value"]["w"].shape == (8, kv_heads, 2)
    assert params["query"]["w"].shape == (8, 4, 2) and params["key"]["b"].shape == (kv_heads, 2)
    inputs, allowed, torch_mask = x, None, None
    if "masked" in variant:
        pad = lengths_mask([6, 4], 6)
        inputs, allowed = {"x": x, "mask": pad}, pad[:, None, None, :]
        torch_mask = allowed & np.tril(np.ones((6, 6), bool)) if "causal" in variant else allowed
    ref = torch_sdpa_layer(
        torch, params, x, allowed=torch_mask, causal=variant == "causal", rope=variant == "rope"
    )
    y, _ = jax.jit(mha.apply)(params, state, inputs)  # jax.nn.dot_product_attention
    close(y, ref, tol=1e-5)
    # the einsum reference path, and its weights against numpy
    with_weights = MultiHeadAttention(
        4,
        num_kv_heads=kv_heads,
        causal="causal" in variant,
        rope=variant == "rope",
        return_weights=True,
    )
    (y, w), _ = jax.jit(with_weights.apply)(params, state, inputs)
    close(y, ref, tol=1e-5)
    _, ref_w = np_mha(
        params, x, allowed=allowed, causal="causal" in variant, rope=variant == "rope"
    )
    close(w, ref_w, tol=1e-5)


def test_grouped_query_attention_with_dropout_and_bfloat16(key):
    x = rand(2, 5, 8)
    mha = MultiHeadAttention(4, num_kv_heads=2, drop_rate=0.5)
    params, state = mha.init(key, x)
    eval_y, _ = mha.apply(params, state, x)
    close(eval_y, np_mha(params, x)[0])
    y1, _ = mha.apply(params, state, x, key=jax.random.key(1), train=True)
    y2, _ = mha.apply(params, state, x, key=jax.random.key(1), train=True)
    y3, _ = mha.apply(params, state, x, key=jax.random.key(2), train=True)
    np.testing.assert_array_equal(np.asarray(y1), np.asarray(y2))
    assert not np.allclose(y1, eval_y) and not np.allclose(y1, y3)
    half = MultiHeadAttention(4, num_kv_heads=1, dtype=jnp.bfloat16)
    params, state = half.init(key, x)
    y, _ = half.apply(params, state, x)
    assert y.dtype == jnp.bfloat16
    ref = np_mha(jax.tree.map(_bf16, params), _bf16(x))[0]
    np.testing.assert_allclose(np.asarray(y, np.float64), ref, atol=4 * 2.0**-8 * np.abs(ref).max())


def test_dot_product_attention_groups_key_heads(key):
    rng = np.random.default_rng(0)
    q = jnp.asarray(rng.normal(size=(2, 3, 6, 4)), F32)
    k = jnp.asarray(rng.normal(size=(2, 5, 2, 4)), F32)
    v = jnp.asarray(rng.normal(size=(2, 5, 2, 3)), F32)
    out, w = dot_product_attention(q, k, v, causal=True)
    # query head h attends with key/value head h // 3: the same as repeating each kv head 3 times
    rk, rv = jnp.repeat(k, 3, axis=2), jnp.repeat(v, 3, axis=2)
    out_rep, w_rep = dot_product_attention(q, rk, rv, causal=True)
    close(out, np.asarray(out_rep), tol=1e-6)
    close(w, np.asarray(w_rep), tol=1e-6)
    with pytest.raises(
        ValueError, match=r"the key/value heads G=4 must divide the query heads H=6"
    ):
        dot_product_attention(q, jnp.ones((2, 5, 4, 4)), jnp.ones((2, 5, 4, 4)))


def test_grouped_query_errors(key):
    with pytest.raises(
        ValueError,
        match=r"^MultiHeadAttention: `num_kv_heads=3` must divide `num_heads=4` .*\[1, 2, 4\]",
    ):
        MultiHeadAttention(4, num_kv_heads=3)
    with pytest.raises(ValueError, match=r"MultiHeadAttention: `num_kv_heads` must be an int >= 1"):
        MultiHeadAttention(4, num_kv_heads=0)
    with pytest.raises(
        ValueError, match=r"TransformerEncoderBlock: `num_kv_heads=3` must divide `num_heads=4`"
    ):
        fn.TransformerEncoderBlock(4, num_kv_heads=3)
    x = jnp.ones((2, 3, 8))
    gqa = MultiHeadAttention(4, num_kv_heads=2, causal=True)
    assert repr(gqa) == "MultiHeadAttention(4, num_kv_heads=2, causal=True)"
    params, state = gqa.init(key, x)
    with pytest.raises(
        LayerError,
        match=r"^MultiHeadAttention\(4\): the params do not fit `num_heads=4`: .*"
        r"\(8, 2, 2\)",
    ):
        MultiHeadAttention(4).apply(params, state, x)
    with pytest.raises(
        LayerError,
        match=r"MultiHeadAttention\(4, num_kv_heads=1\): the params do not fit "
        r"`num_heads=4`, `num_kv_heads=1`",
    ):
        MultiHeadAttention(4, num_kv_heads=1).apply(params, state, x)


# ---------------------------------------------------------------------------------------------
# Positional information


def test_sinusoidal_encoding_matches_the_formula():
    length, d = 9, 6
    ref = np.zeros((length, d))
    for pos in range(length):
        for i in range(0, d, 2):
            ref[pos, i] = math.sin(pos / 10000 ** (i / d))
            ref[pos, i + 1] = math.cos(pos / 10000 ** (i / d))
    close(sinusoidal_encoding(length, d), ref, tol=1e-6)
    x = rand(2, length, d)
    layer = SinusoidalEncoding(16)
    params, state = layer.init(jax.random.key(0), x)
    close(jax.jit(layer.apply)(params, state, x)[0], x + ref, tol=1e-6)
    odd = np.zeros((3, 5))
    for pos in range(3):
        for i in range(5):
            angle = pos / 10000 ** ((i - i % 2) / 5)
            odd[pos, i] = math.sin(angle) if i % 2 == 0 else math.cos(angle)
    close(sinusoidal_encoding(3, 5), odd, tol=1e-6)


def test_positional_embedding_adds_the_table(key):
    x = rand(2, 5, 4)
    layer = PositionalEmbedding(8)
    params, state = layer.init(key, x)
    assert params["table"].shape == (8, 4)
    close(layer.apply(params, state, x)[0], x + np.asarray(params["table"])[:5], tol=1e-6)
    # The dict form changes "x" and passes the rest through.
    mask = np.ones((2, 5), bool)
    out, _ = layer.apply(params, state, {"x": x, "mask": mask})
    assert out["mask"] is mask
    close(out["x"], x + np.asarray(params["table"])[:5], tol=1e-6)
    # The table is cast to the inputs' dtype.
    assert layer.apply(params, state, x.astype(jnp.bfloat16))[0].dtype == jnp.bfloat16


def test_apply_rope_matches_numpy_and_rotary_layer():
    x = rand(2, 5, 3, 8)
    close(apply_rope(x), np_rope(x, np.arange(5)[:, None]), tol=1e-5)
    positions = np.array([[3, 4, 5, 6, 7], [0, 2, 4, 6, 8]])
    close(apply_rope(x, positions), np_rope(x, positions[:, :, None]), tol=1e-5)
    traced = jax.jit(apply_rope)(x, jnp.asarray(positions))
    close(traced, np_rope(x, positions[:, :, None]), tol=1e-5)
    layer = RotaryEmbedding()
    close(layer.apply((), (), x)[0], np_rope(x, np.arange(5)[:, None]), tol=1e-5)
    y = rand(2, 5, 8)
    close(apply_rope(y, base=100.0), np_rope(y, np.arange(5), base=100.0), tol=1e-5)


def test_apply_rope_looks_up_traced_positions_in_an_exact_table():
    x = rand(2, 5, 3, 8)
    positions = np.array([[3, 4, 5, 6, 7], [0, 2, 4, 6, 40]])
    static = jax.jit(lambda x: apply_rope(x, positions))(x)  # float64 angles, then cast
    looked_up = jax.jit(lambda x, p: apply_rope(x, p, max_len=41))(x, jnp.asarray(positions))
    np.testing.assert_array_equal(np.asarray(looked_up), np.asarray(static))
    beyond = jax.jit(lambda x, p: apply_rope(x, p, max_len=8))(x, jnp.asarray(positions))
    assert np.isnan(np.asarray(beyond)[1, 4]).all() and np.isfinite(np.asarray(beyond)[0]).all()
    with pytest.raises(ValueError, match=r"apply_rope: `max_len` must be an int >= 1, got 0"):
        apply_rope(x, positions, max_len=0)


def test_rope_dot_products_depend_only_on_relative_position():
    q, k = rand(1, 1, 16), rand(1, 1, 16, seed=1)

    def score(m, n):
        rq = apply_rope(q, np.array([m]))
        rk = apply_rope(k, np.array([n]))
        return float(jnp.sum(rq * rk))

    for m, n in [(0, 3), (2, 7), (5, 1), (4, 4)]:
        for shift in (1, 10, 100):
            assert score(m, n) == pytest.approx(score(m + shift, n + shift), abs=1e-4)
    assert abs(score(0, 3) - score(0, 4)) > 1e-3
    # Norms are preserved (a rotation).
    np.testing.assert_allclose(np.linalg.norm(apply_rope(q, np.array([9]))), np.linalg.norm(q))


# ---------------------------------------------------------------------------------------------
# Errors


def test_constructor_errors():
    with pytest.raises(ValueError, match=r"MultiHeadAttention: `num_heads` must be an int >= 1"):
        MultiHeadAttention(0)
    with pytest.raises(ValueError, match=r"`key_size` must be an int >= 1, got -2"):
        MultiHeadAttention(2, -2)
    with pytest.raises(ValueError, match=r"`drop_rate` must be a number in \[0, 1\], got 1.5"):
        MultiHeadAttention(2, drop_rate=1.5)
    with pytest.raises(ValueError, match=r"`rope=True` needs an even `key_size`, got 3"):
        MultiHeadAttention(2, 3, rope=True)
    with pytest.raises(ValueError, match="unknown initializer 'nope'"):
        MultiHeadAttention(2, w_init="nope")
    with pytest.raises(ValueError, match=r"PositionalEmbedding: `max_len` must be an int >= 1"):
        PositionalEmbedding(0)
    with pytest.raises(ValueError, match=r"SinusoidalEncoding: `base` must be a number > 1"):
        SinusoidalEncoding(base=1)
    with pytest.raises(ValueError, match=r"apply_rope: expected x of shape \(N, T, ..., D\)"):
        apply_rope(jnp.ones((2, 3, 5)))
    with pytest.raises(ValueError, match=r"apply_rope: expected positions of shape \(3,\)"):
        apply_rope(jnp.ones((2, 3, 4)), jnp.arange(4))
    with pytest.raises(ValueError, match=r"dot_product_attention: expected query, key and value"):
        dot_product_attention(jnp.ones((2, 3, 4)), jnp.ones((2, 3, 4)), jnp.ones((2, 3, 4)))
    with pytest.raises(ValueError, match=r"`drop_rate > 0` needs a `dropout_key`"):
        q = jnp.ones((1, 2, 1, 2))
        dot_product_attention(q, q, q, drop_rate=0.1)


def test_input_errors_name_the_layer(key):
    mha = MultiHeadAttention(2, 4)
    x = jnp.ones((2, 5, 6))
    params, state = mha.init(key, x)
    name = r"^MultiHeadAttention\(2, 4\): "
    with pytest.raises(LayerError, match=name + r"expected 'x' of shape \(N, T, D\) .*\(5, 6\)"):
        mha.init(key, jnp.ones((5, 6)))
    with pytest.raises(LayerError, match=name + r"expected 'memory' of shape \(N, T, D\)"):
        mha.init(key, {"x": x, "memory": jnp.ones((2, 6))})
    with pytest.raises(LayerError, match=name + r"expected floating-point 'x', got dtype int32"):
        mha.init(key, jnp.ones((2, 5, 6), I32))
    with pytest.raises(LayerError, match=name + r"unknown input keys \['lengths'\]; .*'memory'"):
        mha.init(key, {"x": x, "lengths": jnp.ones(2)})
    with pytest.raises(LayerError, match=name + r"the input dict needs the keys \['x'\]"):
        mha.init(key, {"memory": x})
    with pytest.raises(LayerError, match=name + r"expected an array \(N, T, D\) or a dict"):
        mha.init(key, (x, x))
    with pytest.raises(LayerError, match=name + r"'x' and 'memory' must have the same batch"):
        mha.init(key, {"x": x, "memory": jnp.ones((3, 5, 6))})
    # widths that do not fit the params
    with pytest.raises(LayerError, match=name + r"expected 'x' with 6 features \(the query"):
        mha.apply(params, state, jnp.ones((2, 5, 7)))
    with pytest.raises(LayerError, match=name + r"expected 'memory' with 6 features \(the key"):
        mha.apply(params, state, {"x": x, "memory": jnp.ones((2, 3, 4))})
    with pytest.raises(LayerError, match=r"^MultiHeadAttention\(3\): the params do not fit "):
        MultiHeadAttention(3).apply(params, state, x)
    with pytest.raises(LayerError, match=r"^MultiHeadAttention\(2, 3\): the params do not fit "):
        MultiHeadAttention(2, 3).apply(params, state, x)
    with pytest.raises(LayerError, match=name + r"expected params \{'query', 'key'"):
        mha.apply({"w": params["query"]["w"]}, state, x)
    # masks
    with pytest.raises(LayerError, match=name + r"expected `mask` of shape \(N, Tk\) = \(2, 5\)"):
        mha.apply(params, state, {"x": x, "mask": jnp.ones((2, 4), bool)})
    with pytest.raises(LayerError, match=name + r"expected `mask` .*got shape \(2, 3, 5, 5\)"):
        mha.init(key, {"x": x, "mask": jnp.ones((2, 3, 5, 5), bool)})
    with pytest.raises(LayerError, match=name + r"expected a boolean `mask` \(True = may attend\)"):
        mha.apply(params, state, {"x": x, "mask": jnp.ones((2, 5))})
    with pytest.raises(LayerError, match=name + r"got `memory_mask` without `memory`"):
        mha.apply(params, state, {"x": x, "memory_mask": jnp.ones((2, 5), bool)})
    with pytest.raises(
        LayerError, match=name + r"expected `memory_mask` of shape \(N, S\) = \(2, 3\)"
    ):
        mha.apply(
            params,
            state,
            {"x": x, "memory": jnp.ones((2, 3, 6)), "memory_mask": jnp.ones((2, 5), bool)},
        )


def test_width_not_divisible_by_heads_and_rope_odd_size(key):
    with pytest.raises(
        LayerError,
        match=r"^MultiHeadAttention\(4\): `num_heads=4` does not divide the width 6 "
        r".*\[1, 2, 3, 6\]",
    ):
        MultiHeadAttention(4).init(key, jnp.ones((2, 3, 6)))
    with pytest.raises(LayerError, match=r"`rope=True` needs an even key size, got 3"):
        MultiHeadAttention(2, rope=True).init(key, jnp.ones((2, 3, 6)))


def test_positional_errors(key):
    with pytest.raises(
        LayerError, match=r"^PositionalEmbedding\(4\): the sequence is longer than `max_len=4`"
    ):
        PositionalEmbedding(4).init(key, jnp.ones((2, 5, 3)))
    params, _ = PositionalEmbedding(4).init(key, jnp.ones((2, 4, 3)))
    with pytest.raises(
        LayerError, match=r"^PositionalEmbedding\(4\): expected 'x' with 3 features"
    ):
        PositionalEmbedding(4).apply(params, (), jnp.ones((2, 4, 5)))
    with pytest.raises(LayerError, match=r"^SinusoidalEncoding\(3\): the sequence is longer"):
        SinusoidalEncoding(3).apply((), (), jnp.ones((1, 4, 2)))
    with pytest.raises(
        LayerError, match=r"^RotaryEmbedding: expected 'x' of shape \(N, T, ..., D\) with an even D"
    ):
        RotaryEmbedding().init(key, jnp.ones((1, 4, 3)))


def test_errors_inside_a_model_carry_the_path(key):
    model = fn.serial(fn.Dense(6), MultiHeadAttention(4))
    with pytest.raises(LayerError, match=r"^serial\[1\] MultiHeadAttention\(4\): `num_heads=4`"):
        model.init(key, jnp.ones((2, 3, 5)))


# ----------------------------------------------------------------------------- kernel choice


def _recording_sdpa(monkeypatch):
    """jax.nn.dot_product_attention recording the `implementation` it is asked for (and
    computing with XLA's, the only one this machine has)."""
    seen, real = [], jax.nn.dot_product_attention

    def sdpa(*args, implementation=None, **kwargs):
        seen.append(implementation)
        return real(*args, **kwargs)

    monkeypatch.setattr(jax.nn, "dot_product_attention", sdpa)
    return seen


def test_implementation_is_passed_to_jax_and_xla_equals_the_default(monkeypatch, key):
    x = jax.random.normal(key, (2, 5, 16))
    default = fn.MultiHeadAttention(4, causal=True)
    params, state = default.init(key, x)
    seen = _recording_sdpa(monkeypatch)
    xla = fn.MultiHeadAttention(4, causal=True, implementation="xla")
    assert repr(xla) == "MultiHeadAttention(4, causal=True, implementation='xla')"
    np.testing.assert_array_equal(
        xla.apply(params, state, x)[0], default.apply(params, state, x)[0]
    )
    assert seen == ["xla", None]


def test_cudnn_on_a_gpu_backend_asks_jax_for_cudnn_in_bfloat16(monkeypatch, key):
    """With the backend reported as a GPU: bfloat16 computation reaches
    jax.nn.dot_product_attention with implementation='cudnn' (through a block under a
    policy); float32 computation (init's shape inference with float32 params) uses XLA's."""
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    seen = _recording_sdpa(monkeypatch)
    x = jax.random.normal(key, (2, 5, 16))
    block = fn.TransformerEncoderBlock(4, causal=True, attention_implementation="cudnn")
    bf16 = fn.with_policy(block, "mixed_bfloat16")
    params, state = bf16.init(key, x)
    assert set(seen) == {None}
    seen.clear()
    assert bf16.apply(params, state, x)[0].dtype == jnp.float32
    assert seen == ["cudnn"]


def test_cudnn_errors(key):
    x = jnp.ones((2, 5, 16))
    with pytest.raises(ValueError, match=r"`implementation` must be None \(XLA\), 'xla' or"):
        fn.MultiHeadAttention(4, implementation="flash")
    with pytest.raises(ValueError, match=r"neither returns the attention weights"):
        fn.MultiHeadAttention(4, implementation="cudnn", return_weights=True)
    with pytest.raises(ValueError, match=r"neither returns the attention weights nor drops"):
        fn.MultiHeadAttention(4, implementation="cudnn", drop_rate=0.1)
    block = fn.TransformerDecoderBlock(4, attention_implementation="cudnn")
    with pytest.raises(LayerError, match=r"MultiHeadAttention.*for NVIDIA GPUs; JAX's backend"):
        block.init(key, {"x": x, "memory": x})
