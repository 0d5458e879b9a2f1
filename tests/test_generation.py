"""KV cache and generation: cached decoding == recomputation; generate vs hand-written loops."""

import functools
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

# One set of shapes for the cache tests (N rows of T tokens; a prefill and a chunk of C) and one
# for generate (prompts (N, P), NEW new tokens): each distinct shape is one more compile.
N, T, C = 3, 10, 4
P, NEW = 4, 6


@functools.cache
def make_lm(kv_heads=None, rope=False, context=16, layers=2):
    """The example's language model, tiny: width 16, 4 query heads (one object per options)."""
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


@functools.cache
def lm_setup(kv_heads=None, rope=False, layers=2):
    """``(model, params, state, jitted apply)``, shared by the tests of one model."""
    model = make_lm(kv_heads=kv_heads, rope=rope, layers=layers)
    params, state = model.init(jax.random.key(0), tokens(N, T))
    return model, params, state, jax.jit(model.apply)


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
    return model, params, state, jax.jit(model.apply)


# ---------------------------------------------------------------------------------------------
# The cache: decoding == recomputation


# RoPE rotates the cached keys of each key/value head, so it runs with every head grouping;
# learned positions are a layer of their own, before the attention: one grouping is enough.
@pytest.mark.parametrize(
    "kv_heads,rope",
    [(None, True), (2, True), (1, True), (2, False)],
    ids=["mha-rope", "gqa-rope", "mqa-rope", "gqa-learned"],
)
def test_cached_decoding_equals_full_recomputation(kv_heads, rope):
    model, params, state, step = lm_setup(kv_heads, rope)
    seq = tokens(N, T)
    full, _ = step(params, state, seq)
    cache = fn.init_cache(model, state, seq, max_len=T)
    # a prefill of C, one more chunk of C, then one token at a time: every position checked
    logits, cache = step(params, cache, seq[:, :C])
    close(logits, full[:, :C])
    logits, cache = step(params, cache, seq[:, C : 2 * C])
    close(logits, full[:, C : 2 * C])
    for t in range(2 * C, T):
        logits, cache = step(params, cache, seq[:, t : t + 1])
        close(logits[:, 0], full[:, t])
    np.testing.assert_array_equal(cache_positions(cache), [T] * N)
    fresh = fn.init_cache(model, cache, seq, max_len=T)  # a used cache, made empty again
    np.testing.assert_array_equal(cache_positions(fresh), [0] * N)


@pytest.mark.parametrize("rope", [False, True], ids=["learned", "rope"])
def test_ragged_rows_decode_as_each_row_alone(rope):
    # the shapes (and so the compiled programs) of the test above
    model, params, state, step = lm_setup(2, rope)
    seq = tokens(N, T, seed=2)
    lengths = np.array([4, 1, 3])
    prompts = np.where(np.arange(C) < lengths[:, None], seq[:, :C], 0)  # right-padded
    cache = fn.init_cache(model, state, prompts, max_len=T)
    _, cache = step(params, cache, prompts)
    cache = set_cache_positions(cache, lengths)
    np.testing.assert_array_equal(cache_positions(cache), lengths)
    # causal: position p of a row depends on that row's tokens up to p only, so one pass over
    # the unpadded rows gives each row's logits as if it were alone
    full, _ = step(params, state, seq)
    for i in range(4):  # row r gets its own token at position lengths[r] + i
        new = seq[np.arange(N), lengths + i][:, None]
        logits, cache = step(params, cache, new)
        for r in range(N):
            close(logits[r, 0], full[r, lengths[r] + i])


def test_sinusoidal_and_encoder_decoder_models_decode_with_the_cache(key):
    lm = fn.serial(
        fn.Embedding(VOCAB, 8),
        fn.SinusoidalEncoding(),
        fn.transformer_encoder(1, 2, num_kv_heads=1, causal=True),
        fn.Dense(VOCAB),
    )
    seq = tokens(2, 6)
    params, state = lm.init(key, seq)
    apply = jax.jit(lm.apply)
    full, _ = apply(params, state, seq)
    cache = fn.init_cache(lm, state, seq, max_len=6)
    logits, cache = apply(params, cache, seq[:, :4])
    close(logits, full[:, :4])
    for t in range(4, 6):
        logits, cache = apply(params, cache, seq[:, t : t + 1])
        close(logits[:, 0], full[:, t])
    # a decoder over a memory: the self-attention caches, the cross-attention reads the memory
    dec = fn.transformer_decoder(2, 2, rope=True)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 5, 8)), jnp.float32)
    memory = jnp.ones((2, 3, 8)) * jnp.arange(8.0)
    params, state = dec.init(key, {"x": x, "memory": memory})
    apply = jax.jit(dec.apply)
    full, _ = apply(params, state, {"x": x, "memory": memory})
    cache = fn.init_cache(dec, state, {"x": x, "memory": memory}, max_len=5)
    # one state per block while decoding (params stay stacked): no caches copied by a scan
    assert isinstance(cache[0], BlockStates) and len(cache[0].blocks) == 2
    first = cache[0].blocks[0]
    assert isinstance(first["self_attention"][2], KVCache)
    assert first["self_attention"][2].k.shape == (2, 5, 2, 4)
    assert first["cross_attention"][2] == ()
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


def argmax_loop(forward, params, state, prompt, steps, width=P + NEW):
    """Greedy decoding by hand: run the whole (uncached) model, take the last argmax.

    The tokens so far sit in a row of zeros of a fixed ``width`` (one compile of ``forward``);
    the model is causal, so the positions after them change nothing.
    """
    seq = list(prompt)
    for _ in range(steps):
        row = np.zeros((1, width), np.int32)
        row[0, : len(seq)] = seq
        logits, _ = forward(params, state, row)
        seq.append(int(np.argmax(np.asarray(logits)[0, len(seq) - 1])))
    return seq[len(prompt) :]


def generate(lm, prompts, **kw):
    """``fn.generate`` of the shared greedy LM, ``NEW`` tokens (compiled once per options)."""
    model, params, state, _ = lm
    return fn.generate(model, kw.pop("params", params), state, prompts, max_new_tokens=NEW, **kw)


def test_greedy_equals_an_argmax_loop_over_the_uncached_model(greedy_lm):
    _, params, state, forward = greedy_lm
    prompts = tokens(N, P, seed=3)
    out = generate(greedy_lm, prompts, temperature=0)
    assert out.shape == (N, NEW) and out.dtype == jnp.int32
    for r in range(N):
        assert out[r].tolist() == argmax_loop(forward, params, state, prompts[r].tolist(), NEW)
    uncached = generate(greedy_lm, prompts, temperature=0, use_cache=False)
    np.testing.assert_array_equal(out, uncached)


def test_ragged_prompts_continue_as_each_prompt_alone(greedy_lm):
    _, params, state, forward = greedy_lm
    lengths = np.array([4, 1, 3])
    prompts = np.where(np.arange(P) < lengths[:, None], tokens(N, P, seed=4), 7)
    # the programs of the test above: prompt_lengths is an argument, not an option
    out = generate(greedy_lm, prompts, temperature=0, prompt_lengths=lengths)
    uncached = generate(greedy_lm, prompts, temperature=0, prompt_lengths=lengths, use_cache=False)
    np.testing.assert_array_equal(out, uncached)
    for r in range(N):  # each prompt alone, unpadded, decoded by hand
        alone = argmax_loop(forward, params, state, prompts[r, : lengths[r]].tolist(), NEW)
        assert out[r].tolist() == alone


def test_sampling_is_deterministic_for_a_key_and_top_k_1_or_small_top_p_is_greedy(greedy_lm):
    params = greedy_lm[1]
    prompts = tokens(N, P, seed=5)

    def gen(**kw):
        return np.asarray(generate(greedy_lm, prompts, **kw))

    # unscaled logits: a flat distribution, so different keys differ
    flat = jax.tree.map(lambda a: a / 3.0, params)
    a = gen(params=flat, key=jax.random.key(1))
    b = gen(params=flat, key=jax.random.key(1))
    c = gen(params=flat, key=jax.random.key(2))
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
    prompts = tokens(N, P, seed=6)
    free = np.asarray(generate(greedy_lm, prompts, temperature=0))
    stop = int(free[0, 2])  # row 0 emits it at step 2 (or before); others maybe later, or never
    out = np.asarray(generate(greedy_lm, prompts, temperature=0, stop_tokens=(stop,), pad_id=-1))
    ends = []
    for r in range(N):
        hits = np.nonzero(free[r] == stop)[0]
        ends.append(hits[0] + 1 if len(hits) else NEW)
        np.testing.assert_array_equal(out[r, : ends[-1]], free[r, : ends[-1]])
        assert (out[r, ends[-1] :] == -1).all()
    assert len(set(ends)) > 1, ends  # the rows did stop at different steps
    # every row stopped at its first step: the loop ends at once, all pads after
    firsts = tuple(int(t) for t in free[:, 0])
    out = generate(greedy_lm, prompts, temperature=0, stop_tokens=firsts)
    np.testing.assert_array_equal(out[:, 0], free[:, 0])
    assert (np.asarray(out)[:, 1:] == 0).all()


def test_generate_runs_under_jit_and_with_a_bfloat16_cache(greedy_lm):
    model, params, state, _ = greedy_lm
    prompts = tokens(N, P, seed=7)
    eager = generate(greedy_lm, prompts, temperature=0)
    jitted = jax.jit(
        lambda p, x, n: fn.generate(
            model, p, state, x, max_new_tokens=NEW, temperature=0, prompt_lengths=n
        )
    )(params, prompts, jnp.array([P] * N))
    np.testing.assert_array_equal(eager, jitted)
    half = generate(greedy_lm, prompts, temperature=0, cache_dtype=jnp.bfloat16)
    assert half.shape == (N, NEW)


# ---------------------------------------------------------------------------------------------
# Errors


def test_generate_argument_errors(greedy_lm):
    model, params, state, _ = greedy_lm
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
