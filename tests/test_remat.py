"""Remat: same outputs and gradients, lower compiled temp memory, decoding with a KV cache."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import funcnet as fn

VOCAB = 11


def close(a, b, tol=1e-6):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=tol, atol=tol)


def lm(remat, layers=2, **kw):
    """A tiny causal LM: embedding, learned positions, a Transformer stack, logits."""
    return fn.serial(
        fn.Embedding(VOCAB, 16),
        fn.PositionalEmbedding(16),
        fn.transformer_encoder(layers, 4, num_kv_heads=2, causal=True, remat=remat, **kw),
        fn.Dense(VOCAB),
    )


def tokens(n, t, seed=1):
    return np.random.default_rng(seed).integers(0, VOCAB, (n, t)).astype(np.int32)


def loss_fn(model, state, x):
    def loss(params):
        logits, _ = model.apply(params, state, x)
        return jnp.mean(jax.nn.logsumexp(logits, -1) - logits[..., 0])

    return loss


@pytest.mark.parametrize("policy", [True, "nothing_saveable", "dots_saveable"])
def test_transformer_remat_same_outputs_and_gradients(policy, key):
    plain, checkpointed = lm(False), lm(policy)
    x = tokens(2, 8)
    params, state = plain.init(key, x)
    params_r, _ = checkpointed.init(key, x)
    jax.tree.map(np.testing.assert_array_equal, params, params_r)  # same params tree
    y, _ = jax.jit(plain.apply)(params, state, x)
    y_r, _ = jax.jit(checkpointed.apply)(params, state, x)
    close(y, y_r)
    grads = jax.jit(jax.grad(loss_fn(plain, state, x)))(params)
    grads_r = jax.jit(jax.grad(loss_fn(checkpointed, state, x)))(params)
    jax.tree.map(close, grads, grads_r)


POLICIES = [None, "everything_saveable", "dots_with_no_batch_dims_saveable"]


@pytest.mark.parametrize("policy", POLICIES)
def test_remat_wrapper_and_repeat(policy, key):
    block = fn.serial(fn.Dense(8), jnp.tanh, fn.Dropout(0.5))
    x = jnp.asarray(np.random.default_rng(0).normal(size=(3, 8)), jnp.float32)
    for plain, wrapped in [
        (block, fn.remat(block, policy)),
        (fn.repeat(block, 3), fn.repeat(block, 3, remat=policy or True)),
    ]:
        params, state = plain.init(key, x)
        k = jax.random.key(1)

        def loss(p, layer, state=state, k=k):
            return jnp.sum(layer.apply(p, state, x, key=k, train=True)[0] ** 2)

        close(loss(params, plain), loss(params, wrapped))  # same dropout mask from the key
        g, g_r = jax.grad(loss)(params, plain), jax.grad(loss)(params, wrapped)
        jax.tree.map(close, g, g_r)
        assert wrapped.apply(params, state, x)[0].shape == x.shape


def test_transformer_block_remat_option(key):
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 5, 8)), jnp.float32)
    plain = fn.TransformerEncoderBlock(2)
    wrapped = fn.TransformerEncoderBlock(2, remat="dots_saveable")
    assert wrapped.name.startswith("remat(TransformerEncoderBlock(2)")
    params, state = plain.init(key, x)

    def loss(p, layer):
        return jnp.sum(layer.apply(p, state, x)[0] ** 2)

    jax.tree.map(close, jax.grad(loss)(params, plain), jax.grad(loss)(params, wrapped))
    inputs = {"x": x, "memory": x[:, :3]}
    dec, dec_r = fn.transformer_decoder(2, 2), fn.transformer_decoder(2, 2, remat=True)
    params, state = dec.init(key, inputs)
    close(dec.apply(params, state, inputs)[0]["x"], dec_r.apply(params, state, inputs)[0]["x"])


def _temp_bytes(model, params, state, x) -> int:
    grad_fn = jax.grad(loss_fn(model, state, x))
    compiled = jax.jit(grad_fn).lower(params).compile()
    return compiled.memory_analysis().temp_size_in_bytes


def test_remat_lowers_compiled_temp_memory_of_12_blocks(key):
    x = tokens(4, 16)
    plain = lm(False, layers=12)
    params, state = plain.init(key, x)
    without = _temp_bytes(plain, params, state, x)
    with_remat = _temp_bytes(lm(True, layers=12), params, state, x)
    print(f"temp bytes: {without} without remat, {with_remat} with; ratio {with_remat / without}")
    assert with_remat < 0.8 * without


@pytest.mark.parametrize("policy", [True, "dots_saveable"])
def test_remat_model_decodes_with_kv_cache(policy, key):
    model = lm(policy)
    seq = tokens(2, 10)
    params, state = model.init(key, seq)
    full, _ = jax.jit(lm(False).apply)(params, state, seq)
    cache = fn.init_cache(model, state, seq, max_len=10)
    step = jax.jit(model.apply)
    logits, cache = step(params, cache, seq[:, :4])
    close(logits, full[:, :4], 1e-5)
    for t in range(4, 10):
        logits, cache = step(params, cache, seq[:, t : t + 1])
        close(logits[:, 0], full[:, t], 1e-5)
    prompts = seq[:, :3]
    out = fn.generate(model, params, state, prompts, max_new_tokens=4, key=key, temperature=0.0)
    out_plain = fn.generate(
        lm(False), params, state, prompts, max_new_tokens=4, key=key, temperature=0.0
    )
    np.testing.assert_array_equal(np.asarray(out), np.asarray(out_plain))
    recomputed = fn.generate(
        model, params, state, prompts, max_new_tokens=4, key=key, temperature=0.0, use_cache=False
    )
    np.testing.assert_array_equal(np.asarray(out), np.asarray(recomputed))


def test_remat_errors():
    with pytest.raises(ValueError, match=r"^remat: unknown remat policy 'dots'; use None .*"):
        fn.remat(fn.Dense(2), "dots")
    listed = r"^repeat: unknown remat policy 'bogus'.*'dots_saveable', 'dots_with_no_batch_dims_sa"
    with pytest.raises(ValueError, match=listed):
        fn.repeat(fn.Dense(2), 2, remat="bogus")
    with pytest.raises(ValueError, match=r"^remat: unknown remat policy 3"):
        fn.transformer_encoder(2, 2, remat=3)
