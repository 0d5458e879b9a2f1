"""Remat: same outputs and gradients, lower compiled temp memory, decoding with a KV cache."""

import functools

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


PLAIN = lm(False)  # one object, so its compiled programs are shared by the tests


def tokens(n, t, seed=1):
    return np.random.default_rng(seed).integers(0, VOCAB, (n, t)).astype(np.int32)


@functools.cache
def outputs_and_gradients(model):
    """One compiled program per model: ``(params, state, x) -> (logits, gradients of the loss)``.

    The temp-memory test compiles the same programs, for the same shapes.
    """

    def run(params, state, x):
        def loss(p):
            logits, _ = model.apply(p, state, x)
            return jnp.mean(jax.nn.logsumexp(logits, -1) - logits[..., 0]), logits

        (_, logits), grads = jax.value_and_grad(loss, has_aux=True)(params)
        return logits, grads

    return jax.jit(run)


@functools.cache
def deep_lm(remat):
    """The 12-block LM of the remat tests of outputs, gradients and temp memory."""
    return lm(remat, layers=12)


X12 = tokens(4, 16)


@pytest.mark.parametrize("policy", [True, "nothing_saveable", "dots_saveable"])
def test_transformer_remat_same_outputs_and_gradients(policy, key):
    plain, checkpointed = deep_lm(False), deep_lm(policy)
    params, state = plain.init(key, X12)
    params_r, _ = checkpointed.init(key, X12)
    jax.tree.map(np.testing.assert_array_equal, params, params_r)  # same params tree
    y, grads = outputs_and_gradients(plain)(params, state, X12)
    y_r, grads_r = outputs_and_gradients(checkpointed)(params, state, X12)
    close(y, y_r)
    jax.tree.map(close, grads, grads_r)


POLICIES = [None, "everything_saveable", "dots_with_no_batch_dims_saveable"]
BLOCK = fn.serial(fn.Dense(8), jnp.tanh, fn.Dropout(0.5))
REPEATED = fn.repeat(BLOCK, 3)


@jax.jit
def dropout_loss_and_grad(layer, params, state, x, k):
    """The loss in training mode (dropout from ``k``) and its gradient, compiled per layer."""

    def loss(p):
        return jnp.sum(layer.apply(p, state, x, key=k, train=True)[0] ** 2)

    return jax.value_and_grad(loss)(params)


@pytest.mark.parametrize("policy", POLICIES)
def test_remat_wrapper_and_repeat(policy, key):
    x = jnp.asarray(np.random.default_rng(0).normal(size=(3, 8)), jnp.float32)
    for plain, wrapped in [
        (BLOCK, fn.remat(BLOCK, policy)),
        (REPEATED, fn.repeat(BLOCK, 3, remat=policy or True)),
    ]:
        params, state = plain.init(key, x)
        k = jax.random.key(1)
        value, g = dropout_loss_and_grad(plain, params, state, x, k)
        value_r, g_r = dropout_loss_and_grad(wrapped, params, state, x, k)
        close(value, value_r)  # same dropout mask from the key
        jax.tree.map(close, g, g_r)
        assert jax.eval_shape(wrapped.apply, params, state, x)[0].shape == x.shape


def test_transformer_block_remat_option(key):
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 5, 8)), jnp.float32)
    plain = fn.TransformerEncoderBlock(2)
    wrapped = fn.TransformerEncoderBlock(2, remat="dots_saveable")
    assert wrapped.name.startswith("remat(TransformerEncoderBlock(2)")
    params, state = plain.init(key, x)

    @jax.jit
    def grad(layer, p):
        return jax.grad(lambda p: jnp.sum(layer.apply(p, state, x)[0] ** 2))(p)

    jax.tree.map(close, grad(plain, params), grad(wrapped, params))
    inputs = {"x": x, "memory": x[:, :3]}
    dec, dec_r = fn.transformer_decoder(2, 2), fn.transformer_decoder(2, 2, remat=True)
    params, state = dec.init(key, inputs)
    apply = jax.jit(lambda layer, p: layer.apply(p, state, inputs)[0]["x"])
    close(apply(dec, params), apply(dec_r, params))


def _temp_bytes(model, params, state, x) -> int:
    """The compiled temp memory of the outputs and gradients; the arguments may be shapes."""
    compiled = outputs_and_gradients(model).lower(params, state, x).compile()
    return compiled.memory_analysis().temp_size_in_bytes


def test_remat_lowers_compiled_temp_memory_of_12_blocks(key):
    plain = deep_lm(False)
    params, state = jax.eval_shape(plain.init, key, X12)  # shapes: nothing to run, only compile
    without = _temp_bytes(plain, params, state, X12)
    with_remat = _temp_bytes(deep_lm(True), params, state, X12)
    print(f"temp bytes: {without} without remat, {with_remat} with; ratio {with_remat / without}")
    assert with_remat < 0.8 * without


def test_remat_model_decodes_with_kv_cache(key):
    # decoding runs no backward pass, so the remat policy changes nothing here: one policy
    # (the gradients of each are checked in test_transformer_remat_same_outputs_and_gradients)
    model = lm("dots_saveable")
    seq = tokens(2, 7)
    params, state = model.init(key, seq)
    full, _ = jax.jit(PLAIN.apply)(params, state, seq)
    cache = fn.init_cache(model, state, seq, max_len=7)
    step = jax.jit(model.apply)
    logits, cache = step(params, cache, seq[:, :4])
    close(logits, full[:, :4], 1e-5)
    for t in range(4, 7):
        logits, cache = step(params, cache, seq[:, t : t + 1])
        close(logits[:, 0], full[:, t], 1e-5)
    prompts = seq[:, :3]
    out = fn.generate(model, params, state, prompts, max_new_tokens=4, key=key, temperature=0.0)
    out_plain = fn.generate(
        PLAIN, params, state, prompts, max_new_tokens=4, key=key, temperature=0.0
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
