"""Transformer blocks vs numpy and vs the public layers; stacks; a tiny language model trains."""

import math
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import funcnet as fn
from funcnet.core import LayerError
from funcnet.layers.attention import MultiHeadAttention, PositionalEmbedding
from funcnet.layers.transformer import (
    TransformerDecoderBlock,
    TransformerEncoderBlock,
    on_x,
    residual_x,
    select_keys,
    transformer_decoder,
    transformer_encoder,
)

F32 = jnp.float32


# ---------------------------------------------------------------------------------------------
# numpy references, written independently of the library


def np_layer_norm(x, p, eps=1e-5):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * p["scale"] + p["bias"]


_erf = np.vectorize(math.erf)


def np_gelu(x):
    return 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)))


def np_attention(p, x, memory=None, allowed=None, causal=False):
    """Multi-head attention, vectorized; ``allowed`` broadcasts to (N, H, Tq, Tk)."""
    memory = x if memory is None else memory
    q = np.einsum("ntd,dhk->nhtk", x, p["query"]["w"]) + p["query"]["b"][:, None]
    k = np.einsum("nsd,dhk->nhsk", memory, p["key"]["w"]) + p["key"]["b"][:, None]
    v = np.einsum("nsd,dhk->nhsk", memory, p["value"]["w"]) + p["value"]["b"][:, None]
    logits = q @ np.swapaxes(k, -1, -2) / math.sqrt(q.shape[-1])
    ok = np.ones(logits.shape, bool)
    if allowed is not None:
        ok &= allowed
    if causal:
        ok &= np.tril(np.ones(logits.shape[-2:], bool))
    logits = np.where(ok, logits, -np.inf)
    e = np.where(ok, np.exp(logits - logits.max(-1, keepdims=True)), 0.0)
    w = e / e.sum(-1, keepdims=True)
    return np.einsum("nhts,nhsv,hvo->nto", w, v, p["out"]["w"]) + p["out"]["b"]


def np_mlp(x, p1, p2):
    return np_gelu(x @ p1["w"] + p1["b"]) @ p2["w"] + p2["b"]


def np_encoder_pre(params, x, allowed=None, causal=False):
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
    ln1, mha, _ = p["attention"]
    x = x + np_attention(mha, np_layer_norm(x, ln1), allowed=allowed, causal=causal)
    ln2, d1, _, d2, _ = p["mlp"]
    return x + np_mlp(np_layer_norm(x, ln2), d1, d2)


def np_decoder_pre(params, x, memory, mask=None, memory_mask=None):
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
    ln, _, mha, _ = p["self_attention"]
    allowed = None if mask is None else mask[:, None, None, :]
    x = x + np_attention(mha, np_layer_norm(x, ln), allowed=allowed, causal=True)
    ln, _, mha, _ = p["cross_attention"]
    allowed = None if memory_mask is None else memory_mask[:, None, None, :]
    x = x + np_attention(mha, np_layer_norm(x, ln), memory, allowed=allowed)
    ln, d1, _, d2, _ = p["mlp"]
    return x + np_mlp(np_layer_norm(x, ln), d1, d2)


def rand(*shape, seed=0):
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def lengths_mask(lengths, t):
    return np.arange(t)[None, :] < np.asarray(lengths)[:, None]


def close(a, b, tol=5e-5):
    np.testing.assert_allclose(np.asarray(a, np.float64), b, rtol=tol, atol=tol)


def randomize(params, seed=1):
    """Non-trivial LayerNorm scales/biases and attention biases (the inits are 1 and 0)."""
    leaves, treedef = jax.tree.flatten(params)
    rng = np.random.default_rng(seed)
    return jax.tree.unflatten(
        treedef, [a + 0.1 * rng.normal(size=a.shape).astype(np.float32) for a in leaves]
    )


# ---------------------------------------------------------------------------------------------
# Blocks vs references


@pytest.mark.parametrize("causal", [False, True])
def test_pre_ln_encoder_block_matches_numpy(key, causal):
    x = rand(3, 6, 8)
    pad = lengths_mask([6, 4, 1], 6)
    block = TransformerEncoderBlock(2, mlp_ratio=3, causal=causal)
    params, state = block.init(key, x)
    params = randomize(params)
    assert params["mlp"][1]["w"].shape == (8, 24)
    y, _ = jax.jit(block.apply)(params, state, x)
    close(y, np_encoder_pre(params, x, causal=causal))
    out, _ = jax.jit(block.apply)(params, state, {"x": x, "mask": pad})
    close(out["x"], np_encoder_pre(params, x, allowed=pad[:, None, None, :], causal=causal))
    np.testing.assert_array_equal(out["mask"], pad)


def test_post_ln_encoder_block_equals_the_public_layers(key):
    x = rand(2, 5, 8)
    block = TransformerEncoderBlock(4, norm="post", activation=jax.nn.relu, epsilon=1e-3)
    params, state = block.init(key, x)
    params = randomize(params)
    assert sorted(params) == ["attention", "attention_norm", "mlp", "mlp_norm"]
    mha, norm = MultiHeadAttention(4), fn.LayerNorm(epsilon=1e-3)
    dense1, dense2 = fn.Dense(32), fn.Dense(8)
    h = x + mha.apply(params["attention"][0], (), x)[0]
    h = norm.apply(params["attention_norm"], (), h)[0]
    m = dense1.apply(params["mlp"][0], (), h)[0]
    m = dense2.apply(params["mlp"][2], (), jax.nn.relu(m))[0]
    ref = norm.apply(params["mlp_norm"], (), h + m)[0]
    close(block.apply(params, state, x)[0], np.asarray(ref), tol=1e-5)


def test_pre_ln_decoder_block_matches_numpy(key):
    x, memory = rand(2, 5, 8), rand(2, 7, 6, seed=1)
    mask, memory_mask = lengths_mask([5, 3], 5), lengths_mask([7, 2], 7)
    block = TransformerDecoderBlock(2)
    inputs = {"x": x, "memory": memory, "mask": mask, "memory_mask": memory_mask}
    params, state = block.init(key, inputs)
    params = randomize(params)
    assert params["cross_attention"][2]["key"]["w"].shape == (6, 2, 4)
    out, _ = jax.jit(block.apply)(params, state, inputs)
    assert sorted(out) == sorted(inputs)
    assert out["memory"] is inputs["memory"] or np.array_equal(out["memory"], memory)
    close(out["x"], np_decoder_pre(params, x, memory, mask, memory_mask))
    out, _ = block.apply(params, state, {"x": x, "memory": memory})
    close(out["x"], np_decoder_pre(params, x, memory))


@pytest.mark.parametrize("norm", ["pre", "post"])
def test_causal_decoder_output_at_t_does_not_depend_on_later_inputs(key, norm):
    x, memory = rand(2, 6, 8), rand(2, 4, 8, seed=1)
    block = TransformerDecoderBlock(2, norm=norm)
    params, state = block.init(key, {"x": x, "memory": memory})
    apply = jax.jit(block.apply)
    y = np.asarray(apply(params, state, {"x": x, "memory": memory})[0]["x"])
    for t in (0, 2, 4):
        changed = x.copy()
        changed[:, t + 1 :] += rand(2, 5 - t, 8, seed=t + 2)
        y2 = np.asarray(apply(params, state, {"x": changed, "memory": memory})[0]["x"])
        np.testing.assert_allclose(y2[:, : t + 1], y[:, : t + 1], atol=1e-6)
        assert not np.allclose(y2[:, t + 1 :], y[:, t + 1 :])
    # Every output position depends on the memory.
    y3 = np.asarray(apply(params, state, {"x": x, "memory": memory + 1.0})[0]["x"])
    assert (np.abs(y3 - y).max(-1) > 1e-4).all()


def test_padded_memory_and_padded_tokens_do_not_leak(key):
    x, memory = rand(2, 6, 8), rand(2, 5, 8, seed=1)
    mask, memory_mask = lengths_mask([6, 4], 6), lengths_mask([5, 2], 5)
    stack = transformer_decoder(2, 2)
    inputs = {"x": x, "memory": memory, "mask": mask, "memory_mask": memory_mask}
    params, state = stack.init(key, inputs)
    apply = jax.jit(stack.apply)
    y = np.asarray(apply(params, state, inputs)[0]["x"])
    changed_memory = memory.copy()
    changed_memory[1, 2:] = 50.0
    changed_x = x.copy()
    changed_x[1, 4:] = -50.0
    y2 = apply(params, state, {**inputs, "memory": changed_memory, "x": changed_x})[0]["x"]
    close(np.asarray(y2)[1, :4], y[1, :4], tol=1e-5)
    close(np.asarray(y2)[0], y[0], tol=0)


# ---------------------------------------------------------------------------------------------
# Stacks


def test_repeat_stack_equals_blocks_one_after_another(key):
    x = rand(2, 5, 8)
    pad = lengths_mask([5, 3], 5)
    block = TransformerEncoderBlock(2)
    stack = fn.repeat(block, 3)
    params, state = stack.init(key, {"x": x, "mask": pad})
    assert params["attention"][1]["query"]["w"].shape == (3, 8, 2, 4)
    out, _ = jax.jit(stack.apply)(params, state, {"x": x, "mask": pad})
    h = {"x": x, "mask": pad}
    apply_block = jax.jit(block.apply)
    for i in range(3):
        p_i = jax.tree.map(lambda a, i=i: a[i], params)
        s_i = jax.tree.map(lambda a, i=i: a[i], state)
        h, _ = apply_block(p_i, s_i, h)
    close(out["x"], np.asarray(h["x"]), tol=1e-5)
    # Padded tokens do not leak into the valid ones through the stack.
    changed = x.copy()
    changed[1, 3:] = 30.0
    out2, _ = jax.jit(stack.apply)(params, state, {"x": changed, "mask": pad})
    close(np.asarray(out2["x"])[1, :3], np.asarray(out["x"])[1, :3], tol=1e-5)


def test_transformer_encoder_has_a_final_norm_for_pre_ln(key):
    x = rand(2, 4, 8)
    enc = transformer_encoder(2, 2)
    params, state = enc.init(key, x)
    y, _ = enc.apply(params, state, x)
    np.testing.assert_allclose(np.asarray(y).mean(-1), 0.0, atol=1e-5)
    blocks_only = transformer_encoder(2, 2, norm="post")
    params, _ = blocks_only.init(key, x)
    assert isinstance(params, dict)  # repeat's params only, no final norm


def test_default_unroll_is_full_up_to_three_blocks_and_changes_no_number(key):
    """``unroll=None``: no while loop up to 3 blocks, one rolled loop beyond; the same params,
    outputs and gradients as ``unroll=1``."""
    x = rand(2, 4, 8)
    for n, rolled in ((3, False), (4, True)):
        default, scanned = transformer_encoder(n, 2), transformer_encoder(n, 2, unroll=1)
        params, state = default.init(key, x)
        jax.tree.map(np.testing.assert_array_equal, params, scanned.init(key, x)[0])

        def loss(enc, p, state=state):
            return jnp.sum(jnp.sin(enc.apply(p, state, x)[0]))

        for enc, want in ((default, 2 if rolled else 0), (scanned, 2)):  # forward and backward
            hlo = jax.jit(jax.grad(partial(loss, enc))).lower(params).as_text()
            assert hlo.count("stablehlo.while") == want, (n, enc)
        close(default.apply(params, state, x)[0], scanned.apply(params, state, x)[0], tol=1e-6)
        g1, g2 = (jax.grad(partial(loss, enc))(params) for enc in (default, scanned))
        jax.tree.map(lambda a, b: close(a, b, tol=1e-5), g1, g2)


def test_dropout_in_blocks_needs_a_key_and_is_deterministic_given_one(key):
    x = rand(2, 5, 8)
    block = TransformerEncoderBlock(2, drop_rate=0.2, attention_drop_rate=0.2)
    params, state = block.init(key, x)
    with pytest.raises(
        LayerError,
        match=r"^TransformerEncoderBlock\(2, drop_rate=0.2, attention_drop_rate=0.2\) "
        r"serial\[attention\] residual_x\[1\] MultiHeadAttention\(2, drop_rate=0.2\): needs a "
        r"random `key`",
    ):
        block.apply(params, state, x, train=True)
    apply = jax.jit(block.apply, static_argnames="train")
    y1 = apply(params, state, x, key=jax.random.key(3), train=True)[0]
    y2 = apply(params, state, x, key=jax.random.key(3), train=True)[0]
    y3 = apply(params, state, x, key=jax.random.key(4), train=True)[0]
    eval_y = apply(params, state, x, key=jax.random.key(3))[0]
    np.testing.assert_array_equal(y1, y2)
    assert not np.allclose(y1, y3) and not np.allclose(y1, eval_y)


def test_helpers_route_the_dict(key):
    inputs = {"x": rand(2, 3, 4), "mask": lengths_mask([3, 1], 3)}
    picked, _ = select_keys("x", "memory").apply((), (), inputs)
    assert sorted(picked) == ["x"]
    layer = on_x(fn.Dense(4))
    params, state = layer.init(key, inputs)
    out, _ = layer.apply(params, state, inputs)
    close(out["x"], inputs["x"] @ np.asarray(params["w"]) + np.asarray(params["b"]), tol=1e-6)
    skip = residual_x(lambda d: jnp.where(d["mask"][..., None], d["x"], 0.0))
    out, _ = skip.apply(*skip.init(key, inputs), inputs)
    close(out["x"], inputs["x"] * (1 + inputs["mask"][..., None]), tol=0)
    with pytest.raises(LayerError, match=r"^residual_x: the branch must return an array shaped"):
        residual_x(fn.Dense(3)).init(key, inputs["x"])
    with pytest.raises(LayerError, match=r"^on_x Dense\(3\): expected inputs with last dimension"):
        on_x(fn.Dense(3)).apply({"w": jnp.ones((5, 3)), "b": jnp.ones(3)}, (), inputs)
    with pytest.raises(ValueError, match=r"select_keys: unknown key 'length'"):
        select_keys("x", "length")
    with pytest.raises(ValueError, match=r"residual_x: needs at least one layer"):
        residual_x()


# ---------------------------------------------------------------------------------------------
# Errors


def test_constructor_errors():
    for kwargs, message in [
        ({"num_heads": 0}, r"TransformerEncoderBlock: `num_heads` must be an int >= 1, got 0"),
        ({"mlp_ratio": 0}, r"`mlp_ratio` must be a number > 0, got 0"),
        ({"drop_rate": 1.2}, r"`drop_rate` must be a number in \[0, 1\], got 1.2"),
        ({"attention_drop_rate": -0.1}, r"`attention_drop_rate` must be a number in \[0, 1\]"),
        ({"norm": "middle"}, r"`norm` must be 'pre' .* or 'post' .*got 'middle'"),
        ({"epsilon": 0.0}, r"`epsilon` must be a number > 0, got 0.0"),
        ({"activation": "relu"}, r"`activation` must be a function or a layer, got 'relu'"),
    ]:
        kwargs = {"num_heads": 2, **kwargs}
        with pytest.raises(ValueError, match=message):
            TransformerEncoderBlock(**kwargs)
    with pytest.raises(ValueError, match=r"TransformerDecoderBlock: `norm` must be 'pre'"):
        TransformerDecoderBlock(2, norm="sandwich")
    with pytest.raises(ValueError, match=r"transformer_encoder: `num_layers` must be an int >= 1"):
        transformer_encoder(0, 2)


def test_input_errors_name_the_path(key):
    block = TransformerEncoderBlock(4)
    with pytest.raises(
        LayerError,
        match=r"^TransformerEncoderBlock\(4\): `num_heads=4` does not divide the model width 6",
    ):
        block.init(key, jnp.ones((2, 3, 6)))
    with pytest.raises(LayerError, match=r"^repeat TransformerEncoderBlock\(4\): `num_heads=4`"):
        fn.repeat(block, 2).init(key, jnp.ones((2, 3, 6)))
    with pytest.raises(LayerError, match=r"^TransformerEncoderBlock\(4\): expected 'x' of shape"):
        block.init(key, jnp.ones((3, 8)))
    with pytest.raises(
        LayerError, match=r"unknown input keys \['memory'\]; .*keys \['x', 'mask'\]"
    ):
        block.init(key, {"x": jnp.ones((2, 3, 8)), "memory": jnp.ones((2, 3, 8))})
    with pytest.raises(
        LayerError,
        match=r"^TransformerEncoderBlock\(4\) serial\[attention\] residual_x\[1\] "
        r"MultiHeadAttention\(4\): expected `mask` of shape",
    ):
        block.init(key, {"x": jnp.ones((2, 3, 8)), "mask": jnp.ones((2, 4), bool)})
    params, state = block.init(key, jnp.ones((2, 3, 8)))
    with pytest.raises(
        LayerError,
        match=r"^TransformerEncoderBlock\(4\) serial\[attention\] residual_x\[0\] on_x LayerNorm: "
        r"expected inputs with 8 features",
    ):
        block.apply(params, state, jnp.ones((2, 3, 12)))
    post = TransformerEncoderBlock(4, norm="post")
    params, state = post.init(key, jnp.ones((2, 3, 8)))
    with pytest.raises(
        LayerError,
        match=r"^TransformerEncoderBlock\(4, norm='post'\) serial\[attention\] residual_x\[0\] "
        r"MultiHeadAttention\(4\): expected 'x' with 8 features \(the query",
    ):
        post.apply(params, state, jnp.ones((2, 3, 12)))
    decoder = TransformerDecoderBlock(2)
    with pytest.raises(
        LayerError,
        match=r"^TransformerDecoderBlock\(2\): expected a dict with keys \['x', 'memory'\]",
    ):
        decoder.init(key, jnp.ones((2, 3, 8)))
    with pytest.raises(LayerError, match=r"needs the keys \['memory'\]"):
        decoder.init(key, {"x": jnp.ones((2, 3, 8)), "mask": jnp.ones((2, 3), bool)})
    with pytest.raises(
        LayerError,
        match=r"^TransformerDecoderBlock\(2\) serial\[cross_attention\] residual_x\[2\] "
        r"MultiHeadAttention\(2\): expected `memory_mask` of shape \(N, S\) = \(2, 5\)",
    ):
        decoder.init(
            key,
            {
                "x": jnp.ones((2, 3, 8)),
                "memory": jnp.ones((2, 5, 8)),
                "memory_mask": jnp.ones((2, 3), bool),
            },
        )


# ---------------------------------------------------------------------------------------------
# A tiny causal language model learns


def test_small_causal_language_model_learns_to_copy(key):
    # Sequences [a1..a6, 0, a1..a6]: the second half can only be predicted by attending back.
    vocab, half, batch, steps = 8, 6, 32, 250
    rng = np.random.default_rng(0)
    first = rng.integers(1, vocab, (steps, batch, half))
    seqs = np.concatenate([first, np.zeros((steps, batch, 1), int), first], axis=-1)
    inputs, targets = seqs[..., :-1].astype(np.int32), seqs[..., 1:].astype(np.int32)
    weights = np.zeros(inputs.shape[1:], np.float32)
    weights[:, half:] = 1.0  # score the copied half only
    model = fn.serial(
        fn.Embedding(vocab, 32),
        PositionalEmbedding(16),
        fn.repeat(TransformerEncoderBlock(4, causal=True, mlp_ratio=2), 2),
        fn.LayerNorm(),
        fn.Dense(vocab),
    )
    optimizer = optax.adam(3e-3)
    with jax.numpy_dtype_promotion("standard"):  # optax's Adam is not strict-clean
        ts = fn.TrainState.create(model, optimizer, key, inputs[0])
        step = jax.jit(fn.train_step(model, "sparse_categorical_cross_entropy", optimizer))
        losses = []
        for i in range(steps):
            ts, logs = step(ts, (inputs[i], targets[i], weights))
            losses.append(logs["loss"])
        losses = np.asarray(jax.device_get(losses))
    start, end = losses[:10].mean(), losses[-10:].mean()
    assert start > 1.5  # about log(7) for a uniform guess
    assert end < 0.3 * start, (start, end)
