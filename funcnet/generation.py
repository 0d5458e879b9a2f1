"""Generating sequences: a KV cache as explicit state, and :func:`generate`.

A language model here is any layer that maps integer tokens ``(N, T)`` to
logits ``(N, T, vocab)`` with causal attention, e.g.::

    serial(Embedding(vocab, d), transformer_encoder(layers, heads, causal=True, rope=True),
           Dense(vocab))

**The cache lives in the model's state.** :func:`init_cache` returns the
model's ``state`` in which every causal self-attention layer holds a
:class:`~funcnet.layers.attention.KVCache` and every positional layer the
:class:`~funcnet.layers.positional.Positions` of each row. ``state`` is what
every combinator already threads through (``repeat`` stacks it per block and
scans over it), so the model decodes with its ordinary ``apply``: given new
tokens ``(N, T)`` and that state it returns their logits and the updated
state. No combinator, and no user-written block built from them, needs to
know about caches. (The stacks of :func:`~funcnet.transformer_encoder` and
:func:`~funcnet.transformer_decoder` keep one state per block while
decoding, rather than ``repeat``'s stacked state, so that no cache is
copied in and out of a scan at every token; their params are unchanged.)

**Ragged batches are right-padded.** Row ``i`` of a batch of prompts
``(N, P)`` holds its ``lengths[i]`` tokens first and padding after. The
prefill runs all ``P`` columns (causal attention keeps the padding out of the
real tokens' outputs), then :func:`set_cache_positions` moves each row back
to its length, so its next token is written over the padding at position
``lengths[i]``: positions have no gaps, and RoPE and learned position tables
see the same numbers as in one forward pass over the row alone.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from funcnet import distributed
from funcnet._checks import check_number, check_positive_int, is_int
from funcnet.core import Layer, Params, State, as_layer, spec_of
from funcnet.layers.attention import KVCache
from funcnet.layers.positional import CacheRequest, Positions, requesting_cache
from funcnet.layers.transformer import BlockStates, SplitParams

__all__ = ["cache_positions", "generate", "init_cache", "set_cache_positions", "split_stacks"]


def _is_node(x) -> bool:
    return isinstance(x, (KVCache, Positions, BlockStates))


def init_cache(
    model: Layer, state: State, inputs: Any, max_len: int, *, dtype: Any = None
) -> State:
    """``state`` with an empty KV cache in every causal self-attention layer of ``model``.

    The model's ``init`` is traced (nothing is allocated but the caches)
    while a :class:`~funcnet.layers.positional.CacheRequest` is active, so
    each layer that decodes returns its decoding state; every other entry
    of ``state`` is kept. A state that already holds caches gets fresh ones.

    Args:
        model: the model (a :class:`~funcnet.Layer`).
        state: the model's state (from ``init`` or training).
        inputs: inputs of the model (arrays or :class:`jax.ShapeDtypeStruct`),
            e.g. the prompts ``(N, P)``; only their shapes are read, and the
            batch size ``N`` of the cache is theirs.
        max_len: the positions each row can hold: the longest prompt plus the
            tokens to generate.
        dtype: dtype of the cached keys and values; default: each layer's
            computation dtype.

    Returns:
        The state to pass to ``model.apply`` with new tokens.

    Raises:
        ValueError: for a bad ``max_len``, a ``state`` that is not this
            model's, or a model with no layer that keeps a cache.
        LayerError: from a layer that cannot decode (non-causal
            self-attention; a position table shorter than ``max_len``).

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> import funcnet as fn
        >>> lm = fn.serial(fn.Embedding(10, 8), fn.MultiHeadAttention(2, causal=True),
        ...                fn.Dense(10))
        >>> tokens = jnp.array([[1, 2, 3]])
        >>> params, state = lm.init(jax.random.key(0), tokens)
        >>> cache = fn.init_cache(lm, state, tokens, max_len=8)
        >>> cache[1].k.shape  # (N, max_len, kv heads, head size)
        (1, 8, 2, 4)
        >>> logits, cache = lm.apply(params, cache, tokens)  # the prompt
        >>> logits, cache = lm.apply(params, cache, jnp.array([[4]]))  # one more token
        >>> full, _ = lm.apply(params, state, jnp.array([[1, 2, 3, 4]]))
        >>> bool(jnp.allclose(logits[:, 0], full[:, 3], atol=1e-6))
        True
    """
    layer = as_layer(model)
    max_len = check_positive_int("init_cache", "max_len", max_len)
    if dtype is not None:
        dtype = jnp.dtype(dtype)
    spec = spec_of(inputs)
    with requesting_cache(CacheRequest(max_len, dtype)):
        # a function object of our own: JAX must not reuse a trace made outside the request
        _, cached = jax.eval_shape(lambda k, x: layer.init(k, x), jax.random.key(0), spec)
    is_cache = lambda x: isinstance(x, KVCache)
    nodes = [x for x in jax.tree.leaves(cached, is_leaf=is_cache) if is_cache(x)]
    if not nodes:
        raise ValueError(
            f"init_cache: the model {layer.name} has no layer that keeps a KV cache (a "
            "`MultiHeadAttention(..., causal=True)` used as self-attention), so it cannot be "
            "decoded token by token. Use `generate(..., use_cache=False)`."
        )

    try:
        return _merge(cached, state)
    except ValueError as err:
        raise ValueError(
            f"init_cache: `state` does not have the structure of the state of {layer.name} "
            f"({err}). Pass the state returned by `model.init` (or by training)."
        ) from None


def _zeros(spec):
    return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), spec)


def _merge(new, old):
    """The decoding state ``new`` (specs) with the entries of the model's ``old`` state.

    A decoding state (a cache, positions, a stack's per-block states) is
    zeros; elsewhere the two must have one structure and ``old``'s arrays are
    kept.
    """
    if _is_node(new):
        stateful = not isinstance(old, BlockStates) and jax.tree.leaves(old)
        if isinstance(new, BlockStates) and stateful:
            raise ValueError("a stack of blocks with state of their own cannot decode")
        return _zeros(new)
    if isinstance(new, jax.ShapeDtypeStruct):
        if jnp.shape(old) != new.shape:
            raise ValueError(f"an entry of shape {jnp.shape(old)} where {new.shape} was expected")
        return old
    one_level = lambda tree: jax.tree_util.tree_flatten(tree, is_leaf=lambda x: x is not tree)
    new_children, new_def = one_level(new)
    old_children, old_def = one_level(old)
    if new_def != old_def:
        raise ValueError(f"{old_def} where {new_def} was expected")
    return new_def.unflatten([_merge(a, b) for a, b in zip(new_children, old_children)])


def set_cache_positions(state: State, lengths: jax.typing.ArrayLike) -> State:
    """``state`` with every row's position set to ``lengths`` ``(N,)`` (e.g. after a prefill).

    The slots at and after a row's position are ignored from then on and
    overwritten by its next tokens.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> import funcnet as fn
        >>> mha = fn.MultiHeadAttention(2, causal=True)
        >>> cache = fn.init_cache(mha, (), jnp.zeros((2, 3, 4)), max_len=6)
        >>> cache_positions(set_cache_positions(cache, jnp.array([3, 1])))
        Array([3, 1], dtype=int32)
    """
    lengths = jnp.asarray(lengths, jnp.int32)

    def move(p):
        if not isinstance(p, Positions):
            return p
        return Positions(jnp.broadcast_to(lengths, jnp.shape(p.index)), p.max_len)

    return jax.tree.map(move, state, is_leaf=lambda x: isinstance(x, Positions))


def cache_positions(state: State) -> jax.Array:
    """The position ``(N,)`` of each row's next token, from the first positions in ``state``.

    Raises:
        ValueError: if ``state`` holds no cache (see :func:`init_cache`).
    """
    for p in jax.tree.leaves(state, is_leaf=lambda x: isinstance(x, Positions)):
        if isinstance(p, Positions):
            return jnp.reshape(p.index, (-1, jnp.shape(p.index)[-1]))[0]
    raise ValueError("cache_positions: `state` holds no cache; make it with `init_cache`.")


# ---------------------------------------------------------------------------------------------
# generate: argument checks


def split_stacks(params: Params, state: State) -> Params:
    """``params`` with the stacked params of every block stack split per block (decoding).

    Where the decoding ``state`` (from :func:`init_cache`) holds a
    :class:`~funcnet.layers.transformer.BlockStates`, the params at the same
    place (a stack of :func:`~funcnet.transformer_encoder` or
    :func:`~funcnet.transformer_decoder`) become a
    :class:`~funcnet.layers.transformer.SplitParams` of one tree per block:
    the stack's ``apply`` then uses them as they are instead of slicing the
    stacked arrays at every call. :func:`generate` does this once before its
    token loop (inside the compiled program). Params and state are walked
    together through tuples and dicts; anything else is left as it is.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> import funcnet as fn
        >>> stack = fn.transformer_encoder(2, 2, causal=True, rope=True)
        >>> lm = fn.serial(fn.Embedding(11, 8), stack)
        >>> ids = jnp.zeros((1, 4), jnp.int32)
        >>> params, state = lm.init(jax.random.key(0), ids)
        >>> cache = init_cache(lm, state, ids, max_len=8)
        >>> split = split_stacks(params, cache)
        >>> type(split[1][0]).__name__, len(split[1][0].blocks)
        ('SplitParams', 2)
        >>> a, _ = lm.apply(params, cache, ids)
        >>> b, _ = lm.apply(split, cache, ids)
        >>> bool(jnp.allclose(a, b))
        True
    """
    if isinstance(state, BlockStates):
        n = len(state.blocks)
        leaves = jax.tree.leaves(params)
        if isinstance(params, SplitParams) or not all(
            jnp.ndim(a) >= 1 and jnp.shape(a)[0] == n for a in leaves
        ):
            return params
        return SplitParams(tuple(jax.tree.map(lambda a, i=i: a[i], params) for i in range(n)))
    if type(state) is dict and type(params) is dict and state.keys() == params.keys():
        return {k: split_stacks(params[k], state[k]) for k in params}
    if type(state) in (tuple, list) and type(params) is type(state) and len(params) == len(state):
        return type(params)(split_stacks(p, s) for p, s in zip(params, state))
    return params


class _Options(NamedTuple):
    """The static options of one compiled generation program."""

    max_new_tokens: int
    max_len: int
    temperature: float
    top_k: int | None
    top_p: float | None
    stop_tokens: tuple[int, ...]
    pad_id: int
    use_cache: bool
    cache_dtype: Any


def _check_prompts(prompts) -> jax.Array:
    if not hasattr(prompts, "shape"):
        prompts = np.asarray(prompts)
    if len(prompts.shape) != 2 or prompts.shape[0] < 1 or prompts.shape[1] < 1:
        raise ValueError(
            f"generate: expected `prompts` of shape (N, P) (a batch of right-padded token ids), "
            f"got shape {tuple(prompts.shape)}; for one prompt pass `prompts[None]`."
        )
    if not jnp.issubdtype(prompts.dtype, jnp.integer):
        raise ValueError(
            f"generate: expected integer token ids in `prompts`, got dtype {prompts.dtype}; "
            "pass `prompts.astype(jnp.int32)`."
        )
    return jnp.asarray(prompts)


def _check_lengths(prompt_lengths, n: int, p: int) -> jax.Array:
    if prompt_lengths is None:
        return jnp.full((n,), p, jnp.int32)
    lengths = jnp.asarray(prompt_lengths)
    if lengths.shape != (n,) or not jnp.issubdtype(lengths.dtype, jnp.integer):
        raise ValueError(
            f"generate: expected `prompt_lengths` of {n} integers (one per prompt), got "
            f"{lengths.dtype} of shape {lengths.shape}."
        )
    try:
        values = np.asarray(lengths)
    except jax.errors.TracerArrayConversionError:  # under jit: cannot be checked
        return lengths.astype(jnp.int32)
    if values.min() < 1 or values.max() > p:
        raise ValueError(
            f"generate: `prompt_lengths` must be in [1, {p}] (the prompts' width "
            f"`prompts.shape[1]`), got {values.tolist()}."
        )
    return lengths.astype(jnp.int32)


def _check_sampling(temperature, top_k, top_p, key) -> tuple[float, int | None, float | None]:
    temperature = check_number("generate", "temperature", temperature, finite=True)
    if temperature < 0:
        raise ValueError(f"generate: `temperature` must be >= 0 (0: greedy), got {temperature}.")
    if top_k is not None:
        top_k = check_positive_int("generate", "top_k", top_k)
    if top_p is not None:
        top_p = check_number("generate", "top_p", top_p, above=0)
        if top_p > 1:
            raise ValueError(f"generate: `top_p` must be in (0, 1], got {top_p}.")
    if temperature > 0 and key is None:
        raise ValueError(
            f"generate: sampling (`temperature={temperature}` > 0) needs a random `key`; pass "
            "`key=jax.random.key(seed)`, or `temperature=0` for greedy decoding."
        )
    return temperature, top_k, top_p


def _check_stop(stop_tokens, pad_id) -> tuple[tuple[int, ...], int]:
    if is_int(stop_tokens):
        stop_tokens = (stop_tokens,)
    stop = tuple(stop_tokens)
    if not all(is_int(t) and t >= 0 for t in stop):
        raise ValueError(
            f"generate: `stop_tokens` must be token ids (ints >= 0), got {stop_tokens!r}."
        )
    if not is_int(pad_id):
        raise ValueError(f"generate: `pad_id` must be an int, got {pad_id!r}.")
    return tuple(int(t) for t in stop), int(pad_id)


def _check_max_len(max_len, p: int, new: int) -> int:
    needed = p + new - 1  # the last new token is never fed back
    if max_len is None:
        return needed
    max_len = check_positive_int("generate", "max_len", max_len)
    if max_len < needed:
        raise ValueError(
            f"generate: `max_len={max_len}` is too short for prompts of width {p} "
            f"(`prompts.shape[1]`) and `max_new_tokens={new}`: positions up to {needed - 1} are "
            f"used. Pass `max_len >= {needed}` (or leave it None), shorter prompts or fewer "
            "new tokens."
        )
    return max_len


# ---------------------------------------------------------------------------------------------
# generate: the compiled program


def _filter(logits: jax.Array, top_k: int | None, top_p: float | None) -> jax.Array:
    """Logits outside the ``top_k`` largest, or outside the nucleus of mass ``top_p``, at -inf."""
    floor = jnp.asarray(-jnp.inf, logits.dtype)
    if top_k is not None and top_k < logits.shape[-1]:
        kth = jax.lax.top_k(logits, top_k)[0][..., -1:]
        logits = jnp.where(logits < kth, floor, logits)
    if top_p is not None and top_p < 1:
        ordered = -jnp.sort(-logits, axis=-1)  # descending
        probs = jax.nn.softmax(ordered, axis=-1)
        before = jnp.cumsum(probs, axis=-1) - probs  # the mass of the more likely tokens
        keep = before < top_p  # the smallest set of mass >= top_p (the top token always)
        threshold = jnp.min(jnp.where(keep, ordered, jnp.inf), axis=-1, keepdims=True)
        logits = jnp.where(logits < threshold, floor, logits)
    return logits


def _pick(opts: _Options, logits: jax.Array, key: jax.Array, i) -> jax.Array:
    """The next token ``(N,)`` from the logits ``(N, vocab)`` of each row's last position."""
    logits = logits.astype(jnp.float32)
    if opts.temperature == 0:
        return jnp.argmax(logits, axis=-1)
    logits = _filter(logits / opts.temperature, opts.top_k, opts.top_p)
    return jax.random.categorical(jax.random.fold_in(key, i), logits, axis=-1)


def _check_logits(logits, n: int, t: int) -> None:
    if not hasattr(logits, "shape") or logits.ndim != 3 or logits.shape[:2] != (n, t):
        got = tuple(logits.shape) if hasattr(logits, "shape") else type(logits).__name__
        raise ValueError(
            f"generate: expected the model to map tokens (N, T) = ({n}, {t}) to logits "
            f"(N, T, vocab), got {got}."
        )


def _cached_steps(model: Layer, opts: _Options, params, state, prompts, lengths):
    """Prefill with a KV cache: ``(logits of each row's last token, context, decode)``."""
    n, p = prompts.shape
    cache = init_cache(model, state, prompts, opts.max_len, dtype=opts.cache_dtype)
    logits, cache = model.apply(params, cache, prompts)
    _check_logits(logits, n, p)
    cache = set_cache_positions(cache, lengths)
    params = split_stacks(params, cache)  # once, not at every token

    def decode(cache, tokens):
        logits, cache = model.apply(params, cache, tokens[:, None])
        return logits[:, 0], cache

    return logits[jnp.arange(n), lengths - 1], cache, decode


def _uncached_steps(model: Layer, opts: _Options, params, state, prompts, lengths):
    """The same without a cache: every step runs the model over the whole ``(N, max_len)``."""
    n, p = prompts.shape
    rows = jnp.arange(n)
    tokens = jnp.zeros((n, opts.max_len), prompts.dtype).at[:, :p].set(prompts)

    def last_logits(tokens, positions):
        logits, _ = model.apply(params, state, tokens)
        _check_logits(logits, n, opts.max_len)
        return logits[rows, positions - 1]

    def decode(context, new):
        tokens, positions = context
        tokens = tokens.at[rows, positions].set(new)
        return last_logits(tokens, positions + 1), (tokens, positions + 1)

    return last_logits(tokens, lengths), (tokens, lengths), decode


def _generate(model: Layer, opts: _Options, params, state, prompts, lengths, key):
    """Prefill, then one ``lax.while_loop`` over the new tokens; ``(N, max_new_tokens)``."""
    n, m = prompts.shape[0], opts.max_new_tokens
    steps = _cached_steps if opts.use_cache else _uncached_steps
    logits, context, decode = steps(model, opts, params, state, prompts, lengths)
    stop = jnp.asarray(opts.stop_tokens, prompts.dtype)
    pad = jnp.asarray(opts.pad_id, prompts.dtype)

    def emit(i, logits, done, out):
        token = jnp.where(done, pad, _pick(opts, logits, key, i).astype(prompts.dtype))
        out = jax.lax.dynamic_update_slice_in_dim(out, token[:, None], i, axis=1)
        return token, done | jnp.isin(token, stop), out

    out = jnp.full((n, m), pad, prompts.dtype)
    token, done, out = emit(0, logits, jnp.zeros((n,), bool), out)

    def cond(carry):
        i, _, _, done, _ = carry
        return (i < m) & ~jnp.all(done)

    def body(carry):
        i, context, token, done, out = carry
        logits, context = decode(context, token)
        token, done, out = emit(i, logits, done, out)
        return i + 1, context, token, done, out

    carry = (jnp.int32(1), context, token, done, out)
    return jax.lax.while_loop(cond, body, carry)[-1]


_generate_jit = jax.jit(_generate, static_argnums=(0, 1))


def generate(
    model: Layer,
    params: Params,
    state: State,
    prompts: jax.typing.ArrayLike,
    *,
    max_new_tokens: int,
    key: jax.Array | None = None,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    stop_tokens: int | tuple[int, ...] = (),
    prompt_lengths: jax.typing.ArrayLike | None = None,
    pad_id: int = 0,
    max_len: int | None = None,
    use_cache: bool = True,
    cache_dtype: Any = None,
    mesh: jax.sharding.Mesh | None = None,
    param_sharding=None,
) -> jax.Array:
    """Continue a batch of prompts token by token: one compiled program (prefill + a loop).

    ``model`` maps token ids ``(N, T)`` to logits ``(N, T, vocab)`` with causal
    attention. The prompts are **right-padded**: row ``i`` is
    ``prompts[i, :prompt_lengths[i]]``. With ``use_cache=True`` (default) the
    state gets a KV cache (:func:`init_cache`), the prompts run once
    (prefill), and each new token costs one call of the model on that token
    alone; ``use_cache=False`` runs the whole sequence again for every token
    (the same tokens, much slower; for models that cannot decode with a
    cache). Both run as one ``jax.jit`` program (compiled once per model,
    options and shapes) whose token loop is a ``lax.while_loop`` that ends
    when every row has stopped.

    Each step draws token ``i`` of every row from its last logits: the argmax
    when ``temperature == 0`` (greedy; no key needed), else a sample of
    ``softmax(logits / temperature)`` restricted to the ``top_k`` most likely
    tokens and then to the smallest set of them with probability ``>=
    top_p`` (nucleus sampling), with the key ``fold_in(key, i)``: the same key
    gives the same tokens. A row stops after emitting one of
    ``stop_tokens`` (included in its output); after that it emits ``pad_id``.

    Args:
        model, params, state: the model, its params and state (from ``init``
            or training; used in inference mode).
        prompts: ``(N, P)`` integer token ids, right-padded.
        max_new_tokens: the number of tokens to generate per row.
        key: random key; needed when ``temperature > 0``.
        temperature: softmax temperature; 0 for greedy decoding.
        top_k: sample among the ``top_k`` most likely tokens only.
        top_p: sample from the smallest set of most likely tokens whose
            probabilities add up to at least ``top_p`` (in ``(0, 1]``).
        stop_tokens: token ids that end a row.
        prompt_lengths: ``(N,)`` lengths of the prompts (in ``[1, P]``);
            default: every prompt has ``P`` tokens.
        pad_id: the token emitted by rows that have stopped.
        max_len: the positions the cache holds; default (and minimum)
            ``P + max_new_tokens - 1``. A larger one only costs time.
        use_cache: decode with a KV cache (default) or recompute everything.
        cache_dtype: dtype of the cached keys and values (default: each
            attention layer's computation dtype).
        mesh, param_sharding: decode tensor-parallel: the params placed on
            ``mesh`` by sharding rules (e.g. ``distributed.tensor_parallel()``
            on a ``("data", "model")`` mesh, see :func:`funcnet.fit`), the
            prompts replicated; the compiler splits the attention heads (and
            so the KV cache) and MLPs as the params are split. The tokens
            equal those of one device.

    Returns:
        The new tokens ``(N, max_new_tokens)``, in the prompts' dtype.

    Raises:
        ValueError: for bad arguments (each names the argument) and a model
            whose outputs are not logits ``(N, T, vocab)``.
        LayerError: from a layer that cannot decode with a cache (e.g. a
            learned position table shorter than ``max_len``).

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> import funcnet as fn
        >>> lm = fn.serial(fn.Embedding(10, 8),
        ...                fn.transformer_encoder(1, 2, causal=True, rope=True), fn.Dense(10))
        >>> prompts = jnp.array([[1, 2, 3], [4, 5, 0]])  # the second has 2 tokens
        >>> params, state = lm.init(jax.random.key(0), prompts)
        >>> new = fn.generate(lm, params, state, prompts, prompt_lengths=jnp.array([3, 2]),
        ...                   max_new_tokens=4, temperature=0)
        >>> new.shape, new.dtype
        ((2, 4), dtype('int32'))
        >>> alone = fn.generate(lm, params, state, prompts[1:, :2], max_new_tokens=4,
        ...                     temperature=0)
        >>> bool((alone[0] == new[1]).all())
        True
    """
    model = as_layer(model)
    prompts = _check_prompts(prompts)
    n, p = prompts.shape
    new = check_positive_int("generate", "max_new_tokens", max_new_tokens)
    temperature, top_k, top_p = _check_sampling(temperature, top_k, top_p, key)
    stop, pad = _check_stop(stop_tokens, pad_id)
    opts = _Options(
        max_new_tokens=new,
        max_len=_check_max_len(max_len, p, new),
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        stop_tokens=stop,
        pad_id=pad,
        use_cache=bool(use_cache),
        cache_dtype=None if cache_dtype is None else jnp.dtype(cache_dtype),
    )
    lengths = _check_lengths(prompt_lengths, n, p)
    key = jax.random.key(0) if key is None else key
    if mesh is not None or param_sharding is not None:
        params, state, prompts, lengths = _on_mesh(
            model, params, state, prompts, lengths, mesh, param_sharding
        )
    return _generate_jit(model, opts, params, state, prompts, lengths, key)


def _on_mesh(model, params, state, prompts, lengths, mesh, param_sharding):
    """Params placed by the rules on ``mesh``; state, prompts and lengths replicated."""
    if mesh is None or param_sharding is None:
        raise ValueError(
            "generate: give `mesh` and `param_sharding` together, e.g. `mesh=jax.make_mesh((1, "
            "4), ('data', 'model')), param_sharding=distributed.tensor_parallel()`."
        )
    rules = distributed.resolve_rules(param_sharding, "generate")
    mesh = distributed.auto_mesh(distributed.check_mesh(mesh, "generate"))  # as fit's loop
    shardings = distributed.param_shardings(model, prompts, mesh, rules)
    replicated = NamedSharding(mesh, P())
    params = distributed.place(params, shardings)
    state, prompts, lengths = distributed.place((state, prompts, lengths), replicated)
    return params, state, prompts, lengths
