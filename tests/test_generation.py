"""KV cache and generation: cached decoding == recomputation; generate vs hand-written loops."""

import importlib.util
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import funcnet as fn
from funcnet.core import LayerError
from funcnet.generation import _filter, cache_positions, set_cache_positions
from funcnet.layers.attention import KVCache
from funcnet.layers.transformer import BlockStates

VOCAB = 11


def _example():
    path = Path(__file__).resolve().parents[1] / "examples" / "transformer_lm.py"
    spec = importlib.util.spec_from_file_location("transformer_lm_for_tests", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


LM = _example()


def make_lm(kv_heads=None, rope=False, context=16, layers=2):
    """The example's language model, tiny: width 16, 4 query heads."""
    return LM.make_model(
        VOCAB,
        width=16,
        layers=layers,
        heads=4,
        context=context,
        dropout=0.0,
        kv_heads=kv_heads,
        rope=rope,
    )


def tokens(n, t, seed=1):
    return np.random.default_rng(seed).integers(0, VOCAB, (n, t)).astype(np.int32)


def close(a, b, tol=1e-5):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=tol, atol=tol)


@pytest.fixture(scope="module")
def greedy_lm():
    """A RoPE + grouped-query LM with sharp (scaled-up) logits, so greedy choices are clear."""
    model = make_lm(kv_heads=2, rope=True, layers=1)
    params, state = model.init(jax.random.key(0), tokens(1, 4))
    params = jax.tree.map(lambda a: 3.0 * a, params)
    return model, params, state


# ---------------------------------------------------------------------------------------------
# The cache: decoding == recomputation


@pytest.mark.parametrize("rope", [False, True], ids=["learned", "rope"])
@pytest.mark.parametrize("kv_heads", [None, 2, 1], ids=["mha", "gqa", "mqa"])
def test_cached_decoding_equals_full_recomputation(kv_heads, rope):
    model = make_lm(kv_heads=kv_heads, rope=rope)
    seq = tokens(2, 12)
    params, state = model.init(jax.random.key(0), seq)
    full, _ = jax.jit(model.apply)(params, state, seq)
    cache = fn.init_cache(model, state, seq, max_len=12)
    step = jax.jit(model.apply)
    # a prefill of 3, one chunk of 2, then one token at a time: every position checked
    logits, cache = step(params, cache, seq[:, :3])
    close(logits, full[:, :3])
    logits, cache = step(params, cache, seq[:, 3:5])
    close(logits, full[:, 3:5])
    for t in range(5, 12):
        logits, cache = step(params, cache, seq[:, t : t + 1])
        close(logits[:, 0], full[:, t])
    np.testing.assert_array_equal(cache_positions(cache), [12, 12])
    fresh = fn.init_cache(model, cache, seq, max_len=12)  # a used cache, made empty again
    np.testing.assert_array_equal(cache_positions(fresh), [0, 0])


@pytest.mark.parametrize("rope", [False, True], ids=["learned", "rope"])
def test_ragged_rows_decode_as_each_row_alone(rope):
    model = make_lm(kv_heads=2, rope=rope)
    seq = tokens(3, 10, seed=2)
    lengths = np.array([5, 2, 4])
    params, state = model.init(jax.random.key(0), seq)
    prompts = np.where(np.arange(6) < lengths[:, None], seq[:, :6], 0)  # right-padded
    cache = fn.init_cache(model, state, prompts, max_len=10)
    _, cache = model.apply(params, cache, prompts)
    cache = set_cache_positions(cache, lengths)
    np.testing.assert_array_equal(cache_positions(cache), lengths)
    step = jax.jit(model.apply)
    # causal: position p of a row depends on that row's tokens up to p only, so one pass over
    # the unpadded rows gives each row's logits as if it were alone
    full, _ = step(params, state, seq)
    for i in range(4):  # row r gets its own token at position lengths[r] + i
        new = seq[np.arange(3), lengths + i][:, None]
        logits, cache = step(params, cache, new)
        for r in range(3):
            close(logits[r, 0], full[r, lengths[r] + i])


def test_sinusoidal_and_encoder_decoder_models_decode_with_the_cache(key):
    lm = fn.serial(
        fn.Embedding(VOCAB, 8),
        fn.SinusoidalEncoding(),
        fn.transformer_encoder(1, 2, num_kv_heads=1, causal=True),
        fn.Dense(VOCAB),
    )
    seq = tokens(2, 7)
    params, state = lm.init(key, seq)
    full, _ = lm.apply(params, state, seq)
    cache = fn.init_cache(lm, state, seq, max_len=7)
    apply = jax.jit(lm.apply)
    logits, cache = apply(params, cache, seq[:, :4])
    for t in range(4, 7):
        logits, cache = apply(params, cache, seq[:, t : t + 1])
        close(logits[:, 0], full[:, t])
    # a decoder over a memory: the self-attention caches, the cross-attention reads the memory
    dec = fn.transformer_decoder(2, 2, rope=True)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 5, 8)), jnp.float32)
    memory = jnp.ones((2, 3, 8)) * jnp.arange(8.0)
    params, state = dec.init(key, {"x": x, "memory": memory})
    full, _ = dec.apply(params, state, {"x": x, "memory": memory})
    cache = fn.init_cache(dec, state, {"x": x, "memory": memory}, max_len=5)
    # one state per block while decoding (params stay stacked): no caches copied by a scan
    assert isinstance(cache[0], BlockStates) and len(cache[0].blocks) == 2
    first = cache[0].blocks[0]
    assert isinstance(first["self_attention"][2], KVCache)
    assert first["self_attention"][2].k.shape == (2, 5, 2, 4)
    assert first["cross_attention"][2] == ()
    apply = jax.jit(dec.apply)
    for t in range(5):
        out, cache = apply(params, cache, {"x": x[:, t : t + 1], "memory": memory})
        close(out["x"][:, 0], full["x"][:, t])


def test_init_cache_keeps_other_state_and_sets_dtypes(key):
    model = fn.serial(
        fn.Embedding(VOCAB, 8),
        fn.MultiHeadAttention(2, causal=True),
        fn.BatchNorm(),
        fn.Dense(VOCAB),
    )
    seq = tokens(2, 3)
    params, state = model.init(key, seq)
    state = (*state[:2], {"mean": jnp.arange(8.0), "var": jnp.full(8, 2.0)}, state[3])
    cache = fn.init_cache(model, state, seq, 6, dtype=jnp.bfloat16)
    assert cache[2]["mean"] is state[2]["mean"]  # the BatchNorm statistics, as they were
    assert cache[1].k.dtype == cache[1].v.dtype == jnp.bfloat16
    assert cache[1].positions.max_len == 6 and cache[1].positions.index.dtype == jnp.int32
    again = fn.init_cache(model, cache, seq, 6)  # fresh caches for a cached state
    assert again[1].k.dtype == jnp.float32 and again[2]["var"] is state[2]["var"]
    # the cache is a pytree: it crosses jit and comes back updated
    logits, cache = jax.jit(model.apply)(params, cache, seq)
    assert logits.shape == (2, 3, VOCAB)
    np.testing.assert_array_equal(cache_positions(cache), [3, 3])


# ---------------------------------------------------------------------------------------------
# generate


def argmax_loop(model, params, state, prompt, steps):
    """Greedy decoding by hand: run the whole (uncached) model, take the last argmax."""
    seq = list(prompt)
    for _ in range(steps):
        logits, _ = model.apply(params, state, jnp.asarray([seq], jnp.int32))
        seq.append(int(jnp.argmax(logits[0, -1])))
    return seq[len(prompt) :]


def test_greedy_equals_an_argmax_loop_over_the_uncached_model(greedy_lm):
    model, params, state = greedy_lm
    prompts = tokens(2, 4, seed=3)
    out = fn.generate(model, params, state, prompts, max_new_tokens=8, temperature=0)
    assert out.shape == (2, 8) and out.dtype == jnp.int32
    for r in range(2):
        assert out[r].tolist() == argmax_loop(model, params, state, prompts[r].tolist(), 8)
    uncached = fn.generate(
        model, params, state, prompts, max_new_tokens=8, temperature=0, use_cache=False
    )
    np.testing.assert_array_equal(out, uncached)


def test_ragged_prompts_continue_as_each_prompt_alone(greedy_lm):
    model, params, state = greedy_lm
    lengths = np.array([4, 1, 3])
    prompts = np.where(np.arange(4) < lengths[:, None], tokens(3, 4, seed=4), 7)
    out = fn.generate(
        model, params, state, prompts, max_new_tokens=6, temperature=0, prompt_lengths=lengths
    )
    uncached = fn.generate(
        model,
        params,
        state,
        prompts,
        max_new_tokens=6,
        temperature=0,
        prompt_lengths=lengths,
        use_cache=False,
    )
    np.testing.assert_array_equal(out, uncached)
    for r in range(3):
        alone = fn.generate(
            model, params, state, prompts[r : r + 1, : lengths[r]], max_new_tokens=6, temperature=0
        )
        np.testing.assert_array_equal(out[r], alone[0])


def test_sampling_is_deterministic_for_a_key_and_top_k_1_or_small_top_p_is_greedy(greedy_lm):
    model, params, state = greedy_lm
    prompts = tokens(3, 3, seed=5)

    def gen(**kw):
        return np.asarray(fn.generate(model, params, state, prompts, max_new_tokens=10, **kw))

    # unscaled logits: a flat distribution, so different keys differ
    flat = jax.tree.map(lambda a: a / 3.0, params)
    a = np.asarray(
        fn.generate(model, flat, state, prompts, max_new_tokens=10, key=jax.random.key(1))
    )
    b = np.asarray(
        fn.generate(model, flat, state, prompts, max_new_tokens=10, key=jax.random.key(1))
    )
    c = np.asarray(
        fn.generate(model, flat, state, prompts, max_new_tokens=10, key=jax.random.key(2))
    )
    np.testing.assert_array_equal(a, b)
    assert (a != c).any()
    assert a.min() >= 0 and a.max() < VOCAB
    greedy = gen(temperature=0)
    np.testing.assert_array_equal(gen(key=jax.random.key(3), top_k=1), greedy)
    np.testing.assert_array_equal(gen(key=jax.random.key(4), top_p=1e-6), greedy)


def test_top_k_and_top_p_keep_the_right_tokens():
    logits = jnp.log(jnp.array([[0.1, 0.4, 0.05, 0.3, 0.15]]))
    kept = lambda out: np.isfinite(np.asarray(out[0])).nonzero()[0].tolist()
    assert kept(_filter(logits, 2, None)) == [1, 3]
    assert kept(_filter(logits, 9, None)) == [0, 1, 2, 3, 4]  # more than the vocabulary
    assert kept(_filter(logits, None, 0.4)) == [1]  # the top token alone has 0.4
    assert kept(_filter(logits, None, 0.41)) == [1, 3]
    assert kept(_filter(logits, None, 0.85)) == [1, 3, 4]  # 0.4 + 0.3 + 0.15
    assert kept(_filter(logits, None, 1.0)) == [0, 1, 2, 3, 4]
    # top-k first, then top-p of the renormalized rest (0.4 / 0.7 = 0.57, then 0.43)
    assert kept(_filter(logits, 2, 0.5)) == [1]
    assert kept(_filter(logits, 2, 0.6)) == [1, 3]
    # sampled frequencies follow the renormalized top-2 distribution (0.4 : 0.3)
    draws = jax.random.categorical(jax.random.key(0), _filter(logits, 2, None)[0], shape=(4000,))
    share = float(jnp.mean(draws == 1))
    assert abs(share - 4 / 7) < 0.03 and set(np.unique(draws).tolist()) == {1, 3}


def test_stop_tokens_stop_rows_independently(greedy_lm):
    model, params, state = greedy_lm
    prompts = tokens(3, 3, seed=6)
    free = np.asarray(fn.generate(model, params, state, prompts, max_new_tokens=8, temperature=0))
    stop = int(free[0, 2])  # row 0 emits it at step 2 (or before); others maybe later, or never
    out = np.asarray(
        fn.generate(
            model,
            params,
            state,
            prompts,
            max_new_tokens=8,
            temperature=0,
            stop_tokens=(stop,),
            pad_id=-1,
        )
    )
    ends = []
    for r in range(3):
        hits = np.nonzero(free[r] == stop)[0]
        ends.append(hits[0] + 1 if len(hits) else 8)
        np.testing.assert_array_equal(out[r, : ends[-1]], free[r, : ends[-1]])
        assert (out[r, ends[-1] :] == -1).all()
    assert len(set(ends)) > 1, ends  # the rows did stop at different steps
    # every row stopped at its first step: the loop ends at once, all pads after
    firsts = tuple(int(t) for t in free[:, 0])
    out = fn.generate(
        model, params, state, prompts, max_new_tokens=8, temperature=0, stop_tokens=firsts
    )
    np.testing.assert_array_equal(out[:, 0], free[:, 0])
    assert (np.asarray(out)[:, 1:] == 0).all()


def test_generate_runs_under_jit_and_with_a_bfloat16_cache(greedy_lm):
    model, params, state = greedy_lm
    prompts = tokens(2, 3, seed=7)
    eager = fn.generate(model, params, state, prompts, max_new_tokens=5, temperature=0)
    jitted = jax.jit(
        lambda p, x, n: fn.generate(
            model, p, state, x, max_new_tokens=5, temperature=0, prompt_lengths=n
        )
    )(params, prompts, jnp.array([3, 3]))
    np.testing.assert_array_equal(eager, jitted)
    half = fn.generate(
        model, params, state, prompts, max_new_tokens=5, temperature=0, cache_dtype=jnp.bfloat16
    )
    assert half.shape == (2, 5)


# ---------------------------------------------------------------------------------------------
# Errors


def test_generate_argument_errors(greedy_lm):
    model, params, state = greedy_lm
    prompts = tokens(2, 3)

    def gen(**kw):
        kw = {"max_new_tokens": 4, "temperature": 0, **kw}
        return fn.generate(model, params, state, kw.pop("prompts", prompts), **kw)

    cases = [
        ({"prompts": prompts[0]}, r"`prompts` of shape \(N, P\) .*got shape \(3,\)"),
        ({"prompts": prompts.astype(np.float32)}, r"integer token ids in `prompts`, got dtype"),
        ({"max_new_tokens": 0}, r"generate: `max_new_tokens` must be an int >= 1, got 0"),
        ({"temperature": -1.0}, r"generate: `temperature` must be >= 0"),
        ({"temperature": float("nan")}, r"generate: `temperature` must be a finite number"),
        (
            {"temperature": 1.0},
            r"generate: sampling \(`temperature=1.0` > 0\) needs a random `key`",
        ),
        ({"top_k": 0}, r"generate: `top_k` must be an int >= 1, got 0"),
        ({"top_p": 0.0}, r"generate: `top_p` must be a number > 0"),
        ({"top_p": 1.5}, r"generate: `top_p` must be in \(0, 1\], got 1.5"),
        ({"stop_tokens": ("a",)}, r"generate: `stop_tokens` must be token ids"),
        ({"pad_id": 0.5}, r"generate: `pad_id` must be an int"),
        ({"prompt_lengths": np.array([3, 4])}, r"`prompt_lengths` must be in \[1, 3\].*\[3, 4\]"),
        ({"prompt_lengths": np.array([0, 2])}, r"`prompt_lengths` must be in \[1, 3\]"),
        ({"prompt_lengths": np.array([3])}, r"expected `prompt_lengths` of 2 integers"),
        ({"max_len": 5}, r"`max_len=5` is too short for prompts of width 3 .*`max_len >= 6`"),
    ]
    for kwargs, match in cases:
        with pytest.raises(ValueError, match=match):
            gen(**kwargs)


def test_models_that_cannot_decode_fail_clearly(key):
    seq = tokens(2, 4)
    learned = make_lm(context=6)  # a learned table of 6 positions
    params, state = learned.init(key, seq)
    with pytest.raises(
        LayerError,
        match=r"^serial\[1\] PositionalEmbedding\(6\): a decoding state of `max_len=7` positions"
        r".*`max_len >= 7`",
    ):
        fn.generate(learned, params, state, seq, max_new_tokens=4, temperature=0)
    encoder = fn.serial(fn.Embedding(VOCAB, 8), fn.MultiHeadAttention(2), fn.Dense(VOCAB))
    params, state = encoder.init(key, seq)
    with pytest.raises(
        LayerError, match=r"^serial\[1\] MultiHeadAttention\(2\): a KV cache needs causal"
    ):
        fn.init_cache(encoder, state, seq, 8)
    # but it can generate without a cache (it is then a bidirectional model, rerun each step)
    out = fn.generate(encoder, params, state, seq, max_new_tokens=2, temperature=0, use_cache=False)
    assert out.shape == (2, 2)
    mlp = fn.serial(fn.Embedding(VOCAB, 8), fn.Dense(VOCAB))
    params, state = mlp.init(key, seq)
    with pytest.raises(ValueError, match=r"init_cache: the model serial has no layer that keeps"):
        fn.init_cache(mlp, state, seq, 8)
    with pytest.raises(ValueError, match=r"generate: expected the model to map tokens"):
        flat = fn.serial(
            fn.Embedding(VOCAB, 8), fn.MultiHeadAttention(2, causal=True), lambda x: x[..., 0]
        )
        p, s = flat.init(key, seq)
        fn.generate(flat, p, s, seq, max_new_tokens=2, temperature=0)


def test_cache_errors(key):
    mha = fn.MultiHeadAttention(2, num_kv_heads=1, causal=True)
    x = jnp.ones((2, 3, 4))
    params, _ = mha.init(key, x)
    cache = fn.init_cache(mha, (), x, 4)
    name = r"^MultiHeadAttention\(2, num_kv_heads=1, causal=True\): "
    with pytest.raises(LayerError, match=name + r"got 5 new tokens for a KV cache of `max_len=4`"):
        mha.apply(params, cache, jnp.ones((2, 5, 4)))
    with pytest.raises(LayerError, match=name + r"the KV cache has keys/values of shapes"):
        mha.apply(params, cache, jnp.ones((3, 1, 4)))
    with pytest.raises(LayerError, match=name + r"got a `mask` while decoding with a KV cache"):
        mha.apply(params, cache, {"x": x, "mask": jnp.ones((2, 3), bool)})
    with pytest.raises(LayerError, match=name + r"got a `mask` while decoding"):
        fn.init_cache(mha, (), {"x": x, "mask": jnp.ones((2, 3), bool)}, 4)
    with pytest.raises(ValueError, match=r"init_cache: `max_len` must be an int >= 1, got 0"):
        fn.init_cache(mha, (), x, 0)
    model = fn.serial(fn.Dense(4), mha)
    with pytest.raises(ValueError, match=r"init_cache: `state` does not have the structure"):
        fn.init_cache(model, ((), (), ()), x, 4)
    positional = fn.PositionalEmbedding(8)
    p, _ = positional.init(key, x)
    cache = fn.init_cache(fn.serial(positional, mha), ((), ()), x, 4)
    with pytest.raises(
        LayerError, match=r"PositionalEmbedding\(8\): the decoding state holds positions for 2 rows"
    ):
        positional.apply(p, cache[0], jnp.ones((3, 1, 4)))
    with pytest.raises(
        LayerError, match=r"PositionalEmbedding\(8\): got 5 new tokens for a decoding state of "
    ):
        positional.apply(p, cache[0], jnp.ones((2, 5, 4)))
    with pytest.raises(LayerError, match=name + r"got a KV cache and `memory`"):
        mha.apply(params, cache[1], {"x": x, "memory": x})
    with pytest.raises(ValueError, match=r"cache_positions: `state` holds no cache"):
        cache_positions(((), ()))


def test_stack_decoding_state_errors(key):
    lm = make_lm(layers=2)
    seq = tokens(2, 3)
    params, state = lm.init(key, seq)
    cache = fn.init_cache(lm, state, seq, 6)
    stack = cache[2][0]
    short = (*cache[:2], (BlockStates(stack.blocks[:1]), cache[2][1]), cache[3])
    with pytest.raises(
        LayerError, match=r"serial\[2\] serial\[0\] repeat: expected a decoding state of 2 blocks"
    ):
        lm.apply(params, short, seq)
    stateful = (*state[:2], ({"stats": jnp.zeros(2)}, state[2][1]), state[3])
    with pytest.raises(ValueError, match=r"`state` does not .* blocks with state of their own"):
        fn.init_cache(lm, stateful, seq, 6)
    bn = fn.serial(fn.Embedding(VOCAB, 8), fn.MultiHeadAttention(2, causal=True), fn.BatchNorm())
    params, state = bn.init(key, seq)
    wrong = (*state[:2], {"mean": jnp.zeros(3), "var": jnp.ones(8)})
    with pytest.raises(ValueError, match=r"an entry of shape \(3,\) where \(8,\) was expected"):
        fn.init_cache(bn, wrong, seq, 6)
