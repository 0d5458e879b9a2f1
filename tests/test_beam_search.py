"""beam_search: greedy at beam 1, exact against an exhaustive search, cached == a plain loop."""

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import funcnet as fn

VOCAB = 7
N, P = 3, 4


@functools.cache
def setup():
    """A tiny RoPE LM (vocab 7, width 8, 1 block) with sharpened logits, and its jitted apply."""
    model = fn.serial(
        fn.Embedding(VOCAB, 8),
        fn.transformer_encoder(1, 2, causal=True, rope=True),
        fn.Dense(VOCAB),
    )
    params, state = model.init(jax.random.key(0), tokens(1, P))
    params = jax.tree.map(lambda a: 2.0 * a, params)  # fewer near-ties between sequences
    return model, params, state, jax.jit(model.apply)


def tokens(n, t, seed=1):
    return np.random.default_rng(seed).integers(0, VOCAB, (n, t)).astype(np.int32)


def search(prompts, **kw):
    model, params, state, _ = setup()
    return fn.beam_search(model, params, state, prompts, **kw)


def logprobs(prompt, seqs):
    """The log-probability of each continuation in ``seqs`` ``(S, D)``: one uncached pass."""
    _, params, state, forward = setup()
    seqs = np.asarray(seqs, np.int32)
    s, d = seqs.shape
    rows = np.concatenate([np.broadcast_to(prompt, (s, len(prompt))), seqs], axis=1)
    logits, _ = forward(params, state, rows)
    logp = np.asarray(jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1), np.float64)
    at = len(prompt) - 1 + np.arange(d)  # the position predicting each new token
    return logp[np.arange(s)[:, None], at, seqs].sum(axis=1)


def reference_beam_search(prompt, beam_size, steps, alpha, stop, pad=0, lm=None):
    """Beam search written plainly: a python loop over steps, the whole model rerun each step.

    A beam is ``(tokens, logprob, done)``; a finished beam is its own only continuation.
    Candidates are ranked by ``logprob / len(tokens) ** alpha`` (stable: ties keep the order of
    beam, then token, as ``lax.top_k`` does).
    """
    _, params, state, forward = lm or setup()
    width = P + steps  # prompts of up to P tokens; one shape, one compile
    beams = [((), 0.0, False)]
    for _ in range(steps):
        if all(done for _, _, done in beams):
            break
        rows = np.zeros((beam_size, width), np.int32)
        for j, (toks, _, _) in enumerate(beams):
            rows[j, : len(prompt) + len(toks)] = list(prompt) + list(toks)
        logits, _ = forward(params, state, rows)
        logp = np.asarray(jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1))
        candidates = []
        for j, (toks, lp, done) in enumerate(beams):
            if done:
                candidates.append((toks, lp, True))
                continue
            for v in range(VOCAB):
                step_logp = float(logp[j, len(prompt) + len(toks) - 1, v])
                candidates.append(((*toks, v), lp + step_logp, v in stop))
        score = lambda c: c[1] / len(c[0]) ** alpha
        beams = sorted(candidates, key=lambda c: -score(c))[:beam_size]
    out = [list(toks) + [pad] * (steps - len(toks)) for toks, _, _ in beams]
    return np.array(out), np.array([lp / len(toks) ** alpha for toks, lp, _ in beams])


def test_beam_size_1_is_greedy_decoding():
    model, params, state, _ = setup()
    prompts = tokens(N, P, seed=2)
    lengths = np.array([4, 2, 3])
    beams, scores = search(prompts, beam_size=1, max_new_tokens=5, prompt_lengths=lengths)
    assert beams.shape == (N, 1, 5) and beams.dtype == jnp.int32 and scores.shape == (N, 1)
    greedy = fn.generate(
        model, params, state, prompts, max_new_tokens=5, temperature=0, prompt_lengths=lengths
    )
    np.testing.assert_array_equal(beams[:, 0], greedy)


def test_equals_an_exhaustive_search_at_depth_3():
    prompts = tokens(N, P, seed=3)
    every = np.array(list(itertools.product(range(VOCAB), repeat=3)))  # all 343 sequences
    # beam_size = VOCAB**2 is exact at depth 3: the first two steps keep every prefix (7, then
    # all 49), so the last step ranks all 343 sequences, i.e. the true top 49.
    exact = VOCAB**2
    beams, scores = search(prompts, beam_size=exact, max_new_tokens=3, length_penalty=0)
    beams, scores = np.asarray(beams), np.asarray(scores)
    for r in range(N):
        truth = logprobs(prompts[r], every)
        order = np.argsort(-truth, kind="stable")[:exact]
        np.testing.assert_allclose(scores[r], truth[order], atol=1e-5)
        np.testing.assert_array_equal(beams[r], every[order])


@pytest.mark.parametrize(
    "alpha,stop", [(1.0, None), (0.0, "all")], ids=["alpha1-one", "alpha0-all"]
)
def test_cached_equals_a_plain_uncached_beam_search_with_stop_tokens(alpha, stop):
    prompts = tokens(N, P, seed=4)
    free, free_scores = search(prompts, beam_size=3, max_new_tokens=5)
    free, free_scores = np.asarray(free), np.asarray(free_scores)
    for r in range(N):  # a smaller beam: the scores are still the sequences' log-probabilities
        np.testing.assert_allclose(5 * free_scores[r], logprobs(prompts[r], free[r]), atol=1e-5)
        assert (np.diff(free_scores[r]) <= 0).all()  # best first
    # one stop token that some beam emits early; or every token (all beams finish at once, so
    # the loop ends after one step and every later token is the pad)
    stops = {int(free[0, 1, 1])} if stop is None else set(range(VOCAB))
    beams, scores = search(
        prompts, beam_size=3, max_new_tokens=5, length_penalty=alpha, stop_tokens=tuple(stops)
    )
    finished = 0
    for r in range(N):
        want, want_scores = reference_beam_search(prompts[r], 3, 5, alpha, stops)
        np.testing.assert_array_equal(beams[r], want)
        np.testing.assert_allclose(scores[r], want_scores, atol=1e-5)
        finished += int(np.isin(want, list(stops)).any())
    assert finished, "the stop token never ended a beam: the test checks nothing about it"
    if stop == "all":
        assert (np.asarray(beams)[:, :, 1:] == 0).all()


def test_ragged_prompts_search_as_each_prompt_alone():
    lengths = np.array([4, 1, 3])
    prompts = np.where(np.arange(P) < lengths[:, None], tokens(N, P, seed=5), 6)
    beams, scores = search(prompts, beam_size=3, max_new_tokens=5, prompt_lengths=lengths)
    for r in range(N):  # each prompt alone, unpadded, by the plain search (compiled above)
        alone, alone_scores = reference_beam_search(prompts[r, : lengths[r]], 3, 5, 1.0, ())
        np.testing.assert_array_equal(beams[r], alone)
        np.testing.assert_allclose(scores[r], alone_scores, atol=1e-5)
    # and by beam_search itself, on one padded row (1, P): the same compiled program
    r = 1
    alone, alone_scores = search(
        prompts[r : r + 1], beam_size=3, max_new_tokens=5, prompt_lengths=lengths[r : r + 1]
    )
    np.testing.assert_array_equal(beams[r], alone[0])


def test_caches_stacked_by_repeat_are_reordered_along_their_batch_axis():
    # a generic `repeat` keeps one stacked cache (blocks, N, ...), not per-block states
    block = fn.serial(fn.MultiHeadAttention(2, causal=True), fn.Dense(8))
    model = fn.serial(fn.Embedding(VOCAB, 8), fn.repeat(block, 2), fn.Dense(VOCAB))
    prompts = tokens(2, P, seed=7)
    params, state = model.init(jax.random.key(1), prompts)
    params = jax.tree.map(lambda a: 2.0 * a, params)
    assert fn.init_cache(model, state, prompts, 8)[1][0].k.shape == (2, 2, 8, 2, 4)
    beams, scores = fn.beam_search(
        model, params, state, prompts, beam_size=3, max_new_tokens=5, stop_tokens=3
    )
    lm = (model, params, state, jax.jit(model.apply))
    for r in range(2):
        want, want_scores = reference_beam_search(prompts[r], 3, 5, 1.0, {3}, lm=lm)
        np.testing.assert_array_equal(beams[r], want)
        np.testing.assert_allclose(scores[r], want_scores, atol=1e-5)


def test_beam_search_errors():
    prompts = tokens(2, 3)
    cases = [
        ({"beam_size": 0}, r"beam_search: `beam_size` must be an int >= 1, got 0"),
        ({"max_new_tokens": 0}, r"beam_search: `max_new_tokens` must be an int >= 1, got 0"),
        ({"length_penalty": float("nan")}, r"beam_search: `length_penalty` must be a finite"),
        (
            {"beam_size": VOCAB + 1, "max_new_tokens": 1},
            r"beam_search: `beam_size=8` is more than the 7 distinct sequences of "
            r"`max_new_tokens=1` tokens .*`beam_size <= 7`",
        ),
        (
            {"beam_size": 40, "max_new_tokens": 2, "stop_tokens": (0, 1)},
            r"beam_search: `beam_size=40` is more than the 37 distinct",  # 2 + 5 * 2 + 5 * 5
        ),
        ({"prompts": prompts[0]}, r"^beam_search: expected `prompts` of shape \(N, P\)"),
        ({"stop_tokens": ("a",)}, r"^beam_search: `stop_tokens` must be token ids"),
        ({"prompt_lengths": np.array([0, 2])}, r"^beam_search: `prompt_lengths` must be in"),
        ({"max_len": 3}, r"^beam_search: `max_len=3` is too short"),
    ]
    for kwargs, match in cases:
        kwargs = {"beam_size": 2, "max_new_tokens": 2, **kwargs}
        with pytest.raises(ValueError, match=match):
            search(kwargs.pop("prompts", prompts), **kwargs)
    flat = fn.serial(
        fn.Embedding(VOCAB, 8), fn.MultiHeadAttention(2, causal=True), lambda x: x[..., 0]
    )
    params, state = flat.init(jax.random.key(0), prompts)
    with pytest.raises(ValueError, match=r"^beam_search: expected the model to map tokens"):
        fn.beam_search(flat, params, state, prompts, beam_size=2, max_new_tokens=2)


def test_matches_transformers_beam_search_on_a_random_gpt2(tmp_path):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from funcnet.interop import hf

    config = transformers.GPT2Config(
        vocab_size=61, n_positions=16, n_embd=16, n_layer=2, n_head=2, eos_token_id=None
    )
    torch.manual_seed(0)
    theirs = transformers.AutoModelForCausalLM.from_config(config)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():  # weights far from HF's tiny initial ones
        for p in theirs.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    theirs.eval().save_pretrained(tmp_path)
    model, params, state, _ = hf.from_pretrained(tmp_path)
    prompts = np.random.default_rng(0).integers(1, 61, (2, 4)).astype(np.int32)
    with torch.no_grad():
        out = theirs.generate(
            torch.from_numpy(prompts).long(),
            attention_mask=torch.ones(prompts.shape, dtype=torch.long),
            max_new_tokens=6,
            num_beams=3,
            num_return_sequences=3,
            do_sample=False,
            early_stopping=False,
            length_penalty=1.0,
            return_dict_in_generate=True,
            output_scores=True,
        )
    with jax.default_matmul_precision("highest"):  # true float32 on GPUs too
        beams, scores = fn.beam_search(model, params, state, prompts, beam_size=3, max_new_tokens=6)
    np.testing.assert_array_equal(beams, out.sequences[:, 4:].numpy().reshape(2, 3, 6))
    # their score: the sum of log-probabilities over the number of new tokens, as ours
    np.testing.assert_allclose(scores, out.sequences_scores.numpy().reshape(2, 3), atol=1e-4)
