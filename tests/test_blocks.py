"""Modern decoder blocks: RMSNorm pre-norm, SwiGLU/GeGLU MLPs, sliding-window attention.

Checked against numpy references written here (and torch where handy), and
cached decoding against recomputation for the sliding window.
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import funcnet as fn
from funcnet.core import LayerError

VOCAB = 11


def close(a, b, tol=1e-5):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=tol, atol=tol)


def normal(*shape, seed=0):
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def np_silu(x):
    return x / (1 + np.exp(-x))


def np_gelu(x):
    return 0.5 * x * (1 + np.vectorize(math.erf)(x / math.sqrt(2)))


def np_rms(x, scale, eps):
    return x / np.sqrt(np.mean(x**2, -1, keepdims=True) + eps) * scale


def np_glu(x, p, act):
    (gate, _), up = p["gate_up"]
    return (act(x @ np.asarray(gate["w"])) * (x @ np.asarray(up["w"]))) @ np.asarray(p["down"]["w"])


def np_attention(x, p, window=None):
    """Causal multi-head self-attention with an optional sliding window, in numpy."""
    q = np.einsum("ntd,dhk->nhtk", x, p["query"]["w"]) + np.asarray(p["query"]["b"])[:, None]
    k = np.einsum("ntd,dhk->nhtk", x, p["key"]["w"]) + np.asarray(p["key"]["b"])[:, None]
    v = np.einsum("ntd,dhk->nhtk", x, p["value"]["w"]) + np.asarray(p["value"]["b"])[:, None]
    t = x.shape[1]
    i, j = np.arange(t)[:, None], np.arange(t)[None]
    allowed = (j <= i) & ((j > i - window) if window else True)
    logits = np.where(allowed, q @ k.transpose(0, 1, 3, 2) / math.sqrt(q.shape[-1]), -np.inf)
    w = np.exp(logits - logits.max(-1, keepdims=True))
    w = w / w.sum(-1, keepdims=True)
    return np.einsum("nhtv,hvo->nto", w @ v, p["out"]["w"]) + np.asarray(p["out"]["b"])


@pytest.mark.parametrize("activation,np_act", [("silu", np_silu), ("gelu", np_gelu)])
def test_glu_mlp_against_numpy(activation, np_act, key):
    mlp = fn.glu_mlp(12, 6, activation=activation)
    x = normal(2, 5, 8)
    params, state = mlp.init(key, x)
    y, _ = jax.jit(mlp.apply)(params, state, x)
    close(y, np_glu(x, params, np_act))


def test_swiglu_against_torch(key):
    torch = pytest.importorskip("torch")
    mlp = fn.glu_mlp(12, 8)
    x = normal(3, 8)
    params, state = mlp.init(key, x)
    (gate, _), up = params["gate_up"]
    t = lambda a: torch.from_numpy(np.array(a))
    xt = t(x)
    want = (torch.nn.functional.silu(xt @ t(gate["w"])) * (xt @ t(up["w"]))) @ t(
        params["down"]["w"]
    )
    close(mlp.apply(params, state, x)[0], want.numpy())


@pytest.mark.parametrize("window", [None, 3])
def test_rms_swiglu_block_against_numpy(window, key):
    block = fn.TransformerEncoderBlock(
        2, norm="rms", mlp="swiglu", mlp_ratio=1.5, causal=True, window=window, epsilon=1e-6
    )
    x = normal(2, 7, 8)
    params, state = block.init(key, x)
    params = jax.tree.map(lambda a: a + 0.1 * normal(*a.shape, seed=3), params)  # non-unit scales
    y, _ = jax.jit(block.apply)(params, state, x)
    norm_a, mha, _ = params["attention"]
    h = x + np_attention(np_rms(x, norm_a["scale"], 1e-6), mha, window)
    norm_m, glu = params["mlp"]
    want = h + np_glu(np_rms(h, norm_m["scale"], 1e-6), glu, np_silu)
    close(y, want, 1e-4)


def test_rms_stack_ends_with_rmsnorm(key):
    enc = fn.transformer_encoder(2, 2, norm="rms", mlp="geglu", mlp_ratio=2)
    params, _ = jax.eval_shape(enc.init, key, jnp.ones((1, 3, 8)))  # shapes only
    assert jax.tree.map(jnp.shape, params[1]) == {"scale": (8,)}
    assert params[0]["mlp"][1]["gate_up"][1]["w"].shape == (2, 8, 16)


@pytest.mark.parametrize("window", [1, 2, 5, 20])
def test_window_attention_against_numpy_and_torch(window, key):
    mha = fn.MultiHeadAttention(2, causal=True, window=window)
    x = normal(2, 9, 8)
    params, state = mha.init(key, x)
    y, _ = jax.jit(mha.apply)(params, state, x)
    close(y, np_attention(x, params, window))
    torch = pytest.importorskip("torch")
    i, j = np.arange(9)[:, None], np.arange(9)[None]
    band = torch.from_numpy((j <= i) & (j > i - window))
    q, k, v = (
        torch.from_numpy(np.einsum("ntd,dhk->nhtk", x, params[n]["w"]))
        + torch.from_numpy(np.array(params[n]["b"]))[:, None]
        for n in ("query", "key", "value")
    )
    o = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=band).numpy()
    close(y, np.einsum("nhtv,hvo->nto", o, params["out"]["w"]) + np.asarray(params["out"]["b"]))


@functools.cache
def lm(window, mlp):
    """A one-block sliding-window LM (stacks of blocks decode in tests/test_generation.py)."""
    return fn.serial(
        fn.Embedding(VOCAB, 16),
        fn.transformer_encoder(
            1, 4, num_kv_heads=2, causal=True, rope=True, window=window, norm="rms", mlp=mlp
        ),
        fn.Dense(VOCAB),
    )


SEQ = np.random.default_rng(1).integers(0, VOCAB, (2, 12)).astype(np.int32)


@functools.cache
def window_lm(window, mlp):
    """``(model, params, state, jitted apply)`` of a sliding-window LM, shared by the tests."""
    model = lm(window, mlp)
    params, state = model.init(jax.random.key(0), SEQ)
    return model, params, state, jax.jit(model.apply)


@pytest.mark.parametrize("window,mlp", [(3, "swiglu"), (1, "geglu"), (4, "mlp")])
def test_window_cached_decoding_equals_recomputation(window, mlp):
    model, params, state, step = window_lm(window, mlp)
    seq = SEQ
    full, _ = step(params, state, seq)
    no_window, _ = jax.jit(lm(None, mlp).apply)(params, state, seq)
    assert not np.allclose(full[:, window + 1 :], no_window[:, window + 1 :], atol=1e-4)
    cache = fn.init_cache(model, state, seq, max_len=12)
    # a prefill longer than the window, a chunk of as many (one compile), then single tokens
    logits, cache = step(params, cache, seq[:, :5])
    close(logits, full[:, :5])
    logits, cache = step(params, cache, seq[:, 5:10])
    close(logits, full[:, 5:10])
    for t in range(10, 12):
        logits, cache = step(params, cache, seq[:, t : t + 1])
        close(logits[:, 0], full[:, t])


def test_window_generate_with_the_cache_equals_recomputation():
    # generate is a prefill and single-token steps, checked above for every window; here its
    # cached and uncached programs, once (each is a compile of its own)
    model, params, state, _ = window_lm(3, "swiglu")
    out = fn.generate(model, params, state, SEQ[:, :4], max_new_tokens=5, temperature=0.0)
    slow = fn.generate(
        model, params, state, SEQ[:, :4], max_new_tokens=5, temperature=0.0, use_cache=False
    )
    np.testing.assert_array_equal(np.asarray(out), np.asarray(slow))


def test_block_errors():
    with pytest.raises(ValueError, match=r"^MultiHeadAttention: `window=3` is a sliding window"):
        fn.MultiHeadAttention(2, window=3)
    with pytest.raises(ValueError, match=r"^MultiHeadAttention: `window` must be"):
        fn.MultiHeadAttention(2, causal=True, window=0)
    with pytest.raises(ValueError, match=r"^TransformerEncoderBlock: `mlp` must be one of"):
        fn.TransformerEncoderBlock(2, mlp="relu")
    with pytest.raises(ValueError, match=r"^TransformerDecoderBlock: `norm` must be 'pre'.*'rms'"):
        fn.TransformerDecoderBlock(2, norm="layer")
    with pytest.raises(ValueError, match=r"^glu_mlp: unknown `activation='tanh'`; use one of"):
        fn.glu_mlp(4, 4, activation="tanh")
    with pytest.raises(ValueError, match=r"^glu_mlp: `activation` must be a name or a function"):
        fn.glu_mlp(4, 4, activation=3)
    with pytest.raises(LayerError, match=r"expected 'x' with 8 features"):
        mha = fn.MultiHeadAttention(2, causal=True, window=2)
        params, state = mha.init(jax.random.key(0), jnp.ones((1, 3, 8)))
        mha.apply(params, state, jnp.ones((1, 3, 6)))


def test_rms_swiglu_decoder_block(key):
    block = fn.TransformerDecoderBlock(2, norm="rms", mlp="swiglu", mlp_ratio=2)
    assert block.name == "TransformerDecoderBlock(2, norm='rms', mlp='swiglu')"
    inputs = {"x": normal(2, 5, 8), "memory": normal(2, 3, 6, seed=1)}
    params, state = block.init(key, inputs)
    assert sorted(params["cross_attention"][0]) == ["scale"]  # RMSNorm: no bias
    out, _ = jax.jit(block.apply)(params, state, inputs)
    x = inputs["x"]
    assert out["x"].shape == x.shape and np.isfinite(np.asarray(out["x"])).all()
    norm_m, glu = params["mlp"]  # the MLP sub-block, checked on its own
    mlp_only = fn.on_x(fn.residual(fn.RMSNorm(epsilon=1e-5), fn.glu_mlp(16, 8)))
    y, _ = mlp_only.apply(params["mlp"], state["mlp"], {"x": x})
    close(y["x"], x + np_glu(np_rms(x, norm_m["scale"], 1e-5), glu, np_silu))


def test_decoder_block_window_equals_a_band_mask(key):
    """``window=W`` on the decoder block is its causal self-attention restricted to the band
    ``j > i - W``: the same as passing that band as the ``(N, T, T)`` mask; the
    cross-attention still sees the whole memory."""
    inputs = {"x": normal(2, 7, 8), "memory": normal(2, 3, 6, seed=1)}
    windowed = fn.TransformerDecoderBlock(2, norm="rms", window=2)
    assert windowed.name == "TransformerDecoderBlock(2, norm='rms', window=2)"
    params, state = windowed.init(key, inputs)
    out, _ = jax.jit(windowed.apply)(params, state, inputs)
    i, j = np.arange(7)[:, None], np.arange(7)[None]
    band = np.broadcast_to(j > i - 2, (2, 7, 7))
    plain = jax.jit(fn.TransformerDecoderBlock(2, norm="rms").apply)
    want, _ = plain(params, state, {**inputs, "mask": band})
    close(out["x"], want["x"])
    full, _ = plain(params, state, inputs)
    assert not np.allclose(out["x"][:, 2:], full["x"][:, 2:], atol=1e-4)
    close(out["x"][:, :2], full["x"][:, :2])  # the first two positions see no farther anyway


def test_parallel_block_against_numpy(key):
    """``parallel=True``: x + attention(norm(x)) + MLP(norm(x)) with one shared RMSNorm."""
    block = fn.TransformerEncoderBlock(2, norm="rms", causal=True, parallel=True, epsilon=1e-6)
    assert block.name == "TransformerEncoderBlock(2, norm='rms', causal=True, parallel=True)"
    x = normal(2, 6, 8)
    params, state = block.init(key, x)
    y, _ = jax.jit(block.apply)(params, state, x)
    norm, ((mha, _), (_, dense1, _, dense2, _)), _ = params["parallel"]
    h = np_rms(x, norm["scale"], 1e-6)
    mlp = np_gelu(h @ np.asarray(dense1["w"]) + np.asarray(dense1["b"])) @ np.asarray(dense2["w"])
    close(y, x + np_attention(h, mha) + mlp + np.asarray(dense2["b"]), 1e-4)


def test_parallel_lm_decodes_with_the_cache(key):
    model = fn.serial(
        fn.Embedding(VOCAB, 16),
        fn.transformer_encoder(2, 4, causal=True, rope=True, norm="rms", parallel=True),
        fn.Dense(VOCAB),
    )
    params, state = model.init(key, SEQ)
    step = jax.jit(model.apply)
    full, _ = step(params, state, SEQ)
    cache = fn.init_cache(model, state, SEQ, max_len=12)
    logits, cache = step(params, cache, SEQ[:, :10])
    close(logits, full[:, :10])
    for t in (10, 11):
        logits, cache = step(params, cache, SEQ[:, t : t + 1])
        close(logits[:, 0], full[:, t])
    with pytest.raises(ValueError, match=r"`parallel=True` shares one norm.*norm='post'"):
        fn.TransformerEncoderBlock(2, norm="post", parallel=True)
