"""Beam search over a language model with a KV cache: :func:`beam_search`.

The prompts run once (prefill); their cache is then repeated for the beams
(row ``i * beam_size + b`` is beam ``b`` of prompt ``i``), and one
``lax.while_loop`` adds a token per step: each prompt keeps the best
``beam_size`` of its ``beam_size * vocab`` continuations, and every KV cache
and position in the state is gathered along its batch axis by the parent
beam of each kept continuation.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from funcnet import generation
from funcnet._checks import check_number, check_positive_int
from funcnet.core import Layer, Params, State, as_layer
from funcnet.generation import init_cache, set_cache_positions, split_stacks
from funcnet.layers.attention import KVCache
from funcnet.layers.positional import Positions

__all__ = ["beam_search"]


def _checked(check, *args):
    """``check(*args)``, one of :func:`~funcnet.generate`'s checks, its errors naming us."""
    try:
        return check(*args)
    except ValueError as err:
        message = str(err).removeprefix("generate: ")
        raise ValueError(f"beam_search: {message}") from None


class _BeamOptions(NamedTuple):
    """The static options of one compiled beam search."""

    beam_size: int
    max_new_tokens: int
    max_len: int
    length_penalty: float
    stop_tokens: tuple[int, ...]
    pad_id: int
    cache_dtype: Any


def _reorder(state: State, rows: jax.Array) -> State:
    """``state`` with the batch axis of every cache and position gathered at ``rows``.

    A :class:`KVCache` holds keys and values ``(..., N, L, G, K)`` (a leading
    axis of blocks where a ``repeat`` stacks them) and :class:`Positions`
    ``(..., N)``; other entries of the state (e.g. normalization statistics)
    have no batch axis and are kept. Per-block states
    (:class:`~funcnet.layers.transformer.BlockStates`) are walked into.
    """

    def positions(p: Positions) -> Positions:
        return Positions(jnp.take(p.index, rows, axis=-1), p.max_len)

    def gather(node):
        if isinstance(node, Positions):
            return positions(node)
        if isinstance(node, KVCache):
            k, v = (jnp.take(a, rows, axis=a.ndim - 4) for a in (node.k, node.v))
            return node._replace(k=k, v=v, positions=positions(node.positions))
        return node

    is_node = lambda x: isinstance(x, (KVCache, Positions))
    return jax.tree.map(gather, state, is_leaf=is_node)


def _count_sequences(vocab: int, steps: int, stop_tokens: tuple[int, ...]) -> int:
    """The number of distinct outputs of ``steps`` tokens (a stop token ends one, pads follow)."""
    s = len({t for t in stop_tokens if t < vocab})
    return sum((vocab - s) ** (t - 1) * s for t in range(1, steps + 1)) + (vocab - s) ** steps


def _check_beams(opts: _BeamOptions, vocab: int) -> None:
    count = _count_sequences(vocab, opts.max_new_tokens, opts.stop_tokens)
    if opts.beam_size > count:
        raise ValueError(
            f"beam_search: `beam_size={opts.beam_size}` is more than the {count} distinct "
            f"sequences of `max_new_tokens={opts.max_new_tokens}` tokens over a vocabulary of "
            f"{vocab} (with {len(opts.stop_tokens)} stop tokens); pass `beam_size <= {count}`."
        )


class _Beams(NamedTuple):
    """The beams of each prompt, ``(N, B)`` each, best first; ``out`` ``(N, B, max_new_tokens)``."""

    logprob: jax.Array  # the sum of the log-probabilities of the beam's tokens
    length: jax.Array  # its number of tokens (up to and including a stop token)
    done: jax.Array  # whether it has emitted a stop token
    out: jax.Array


def _score(opts: _BeamOptions, logprob: jax.Array, length: jax.Array) -> jax.Array:
    """``logprob / length ** length_penalty`` (GNMT; 0: the plain sum)."""
    if opts.length_penalty == 0:
        return logprob
    return logprob / length.astype(jnp.float32) ** jnp.float32(opts.length_penalty)


def _select(opts: _BeamOptions, i, beams: _Beams, logits: jax.Array):
    """Step ``i``: the best ``B`` of the ``B * vocab`` continuations of each prompt's beams.

    ``logits`` ``(N, B, vocab)``. A finished beam has one continuation: itself,
    unchanged (its score and length kept), emitting ``pad_id``. Returns the new
    beams, the token each row feeds back ``(N * B,)`` and the parent row of
    each ``(N * B,)``, to reorder the cache with.
    """
    n, b, vocab = logits.shape
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    live = beams.logprob[..., None] + logp
    kept = jnp.where(jnp.arange(vocab) == 0, beams.logprob[..., None], -jnp.inf)
    logprob = jnp.where(beams.done[..., None], kept, live)
    length = jnp.where(beams.done, beams.length, i + 1)[..., None]
    score = _score(opts, logprob, length).reshape(n, b * vocab)
    _, best = jax.lax.top_k(score, b)  # (N, B), best first
    parent, token = best // vocab, best % vocab
    take = lambda a: jnp.take_along_axis(a, parent, axis=1)
    done = take(beams.done)
    token = jnp.where(done, opts.pad_id, token).astype(beams.out.dtype)
    out = jnp.take_along_axis(beams.out, parent[..., None], axis=1)
    out = jax.lax.dynamic_update_slice_in_dim(out, token[..., None], i, axis=2)
    new = _Beams(
        logprob=jnp.take_along_axis(logprob.reshape(n, b * vocab), best, axis=1),
        length=jnp.where(done, take(beams.length), i + 1),
        done=done | jnp.isin(token, jnp.asarray(opts.stop_tokens, token.dtype)),
        out=out,
    )
    rows = (jnp.arange(n)[:, None] * b + parent).reshape(-1)
    return new, token.reshape(-1), rows


def _beam_search(model: Layer, opts: _BeamOptions, params, state, prompts, lengths):
    """Prefill once per prompt, repeat the cache for the beams, then one ``lax.while_loop``."""
    (n, p), b, m = prompts.shape, opts.beam_size, opts.max_new_tokens
    cache = init_cache(model, state, prompts, opts.max_len, dtype=opts.cache_dtype)
    logits, cache = model.apply(params, cache, prompts)
    _checked(generation._check_logits, logits, n, p)
    vocab = logits.shape[-1]
    _check_beams(opts, vocab)
    cache = _reorder(set_cache_positions(cache, lengths), jnp.repeat(jnp.arange(n), b))
    params = split_stacks(params, cache)  # once, not at every token
    logits = jnp.repeat(logits[jnp.arange(n), lengths - 1][:, None], b, axis=1)
    # all beams start as the prompt; only the first counts, so the first step keeps distinct tokens
    first = jnp.where(jnp.arange(b) == 0, 0.0, -jnp.inf).astype(jnp.float32)
    beams = _Beams(
        logprob=jnp.broadcast_to(first, (n, b)),
        length=jnp.zeros((n, b), jnp.int32),
        done=jnp.zeros((n, b), bool),
        out=jnp.full((n, b, m), opts.pad_id, prompts.dtype),
    )
    beams, token, rows = _select(opts, 0, beams, logits)

    def cond(carry):
        i, _, beams, _, _ = carry
        return (i < m) & ~jnp.all(beams.done)

    def body(carry):
        i, cache, beams, token, rows = carry
        logits, cache = model.apply(params, _reorder(cache, rows), token[:, None])
        beams, token, rows = _select(opts, i, beams, logits[:, 0].reshape(n, b, vocab))
        return i + 1, cache, beams, token, rows

    _, _, beams, _, _ = jax.lax.while_loop(cond, body, (jnp.int32(1), cache, beams, token, rows))
    return beams.out, _score(opts, beams.logprob, beams.length)


_beam_search_jit = jax.jit(_beam_search, static_argnums=(0, 1))


def beam_search(
    model: Layer,
    params: Params,
    state: State,
    prompts: jax.typing.ArrayLike,
    *,
    beam_size: int,
    max_new_tokens: int,
    prompt_lengths: jax.typing.ArrayLike | None = None,
    length_penalty: float = 1.0,
    stop_tokens: int | tuple[int, ...] = (),
    pad_id: int = 0,
    max_len: int | None = None,
    cache_dtype: Any = None,
) -> tuple[jax.Array, jax.Array]:
    """The ``beam_size`` most likely continuations of each prompt, by beam search.

    ``model`` maps token ids ``(N, T)`` to logits ``(N, T, vocab)`` with causal
    attention and a KV cache (see :func:`~funcnet.generate`, whose prompt
    conventions this shares: right-padded rows, ``prompt_lengths``). One
    ``jax.jit`` program runs the prompts once, repeats their cache for the
    beams, then loops over the new tokens: at each step every prompt keeps
    the ``beam_size`` best of its ``beam_size * vocab`` continuations, ranked
    by ``score = logprob / length ** length_penalty`` (GNMT), where
    ``logprob`` is the sum of the log-probabilities of the new tokens and
    ``length`` their number. A beam that emits one of ``stop_tokens``
    (included) is finished: it keeps its score and length and emits
    ``pad_id`` after. The loop ends after ``max_new_tokens`` steps or once
    every beam of every prompt is finished.

    Args:
        model, params, state: the model, its params and state (inference mode).
        prompts: ``(N, P)`` integer token ids, right-padded.
        beam_size: the beams kept per prompt (1: greedy decoding).
        max_new_tokens: the most tokens to add per beam.
        prompt_lengths: ``(N,)`` lengths of the prompts (in ``[1, P]``);
            default: every prompt has ``P`` tokens.
        length_penalty: the exponent ``alpha`` of the length in the score; 0
            ranks by the plain sum of log-probabilities, larger values favour
            longer beams. Only matters when beams differ in length (stop tokens).
        stop_tokens: token ids that finish a beam.
        pad_id: the token emitted by finished beams.
        max_len: the positions the cache holds; default (and minimum)
            ``P + max_new_tokens - 1``.
        cache_dtype: dtype of the cached keys and values.

    Returns:
        ``(tokens, scores)``: the new tokens ``(N, beam_size, max_new_tokens)``
        (the prompts' dtype) and the beams' scores ``(N, beam_size)``
        (float32), best first.

    Raises:
        ValueError: for bad arguments (each names the argument), a
            ``beam_size`` larger than the number of distinct outputs (e.g.
            than ``vocab`` when ``max_new_tokens=1``), or a model whose
            outputs are not logits ``(N, T, vocab)``.
        LayerError: from a layer that cannot decode with a cache.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> import funcnet as fn
        >>> lm = fn.serial(fn.Embedding(10, 8),
        ...                fn.transformer_encoder(1, 2, causal=True, rope=True), fn.Dense(10))
        >>> prompts = jnp.array([[1, 2, 3], [4, 5, 0]])  # the second has 2 tokens
        >>> params, state = lm.init(jax.random.key(0), prompts)
        >>> tokens, scores = fn.beam_search(lm, params, state, prompts, beam_size=3,
        ...                                 max_new_tokens=4, prompt_lengths=jnp.array([3, 2]))
        >>> tokens.shape, scores.shape
        ((2, 3, 4), (2, 3))
        >>> bool((scores[:, :-1] >= scores[:, 1:]).all())  # best first
        True
        >>> greedy = fn.generate(lm, params, state, prompts, max_new_tokens=4, temperature=0,
        ...                      prompt_lengths=jnp.array([3, 2]))
        >>> one, _ = fn.beam_search(lm, params, state, prompts, beam_size=1, max_new_tokens=4,
        ...                         prompt_lengths=jnp.array([3, 2]))
        >>> bool((one[:, 0] == greedy).all())
        True
    """
    model = as_layer(model)
    prompts = _checked(generation._check_prompts, prompts)
    n, p = prompts.shape
    new = check_positive_int("beam_search", "max_new_tokens", max_new_tokens)
    stop, pad = _checked(generation._check_stop, stop_tokens, pad_id)
    opts = _BeamOptions(
        beam_size=check_positive_int("beam_search", "beam_size", beam_size),
        max_new_tokens=new,
        max_len=_checked(generation._check_max_len, max_len, p, new),
        length_penalty=check_number("beam_search", "length_penalty", length_penalty, finite=True),
        stop_tokens=stop,
        pad_id=pad,
        cache_dtype=None if cache_dtype is None else jnp.dtype(cache_dtype),
    )
    lengths = _checked(generation._check_lengths, prompt_lengths, n, p)
    return _beam_search_jit(model, opts, params, state, prompts, lengths)
