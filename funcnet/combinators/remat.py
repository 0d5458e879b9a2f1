"""``remat``: rematerialisation (gradient checkpointing) of a layer's ``apply``.

Here, with the combinators rather than in ``layers/``, because ``repeat``
(a combinator) takes ``remat=`` and imports only go downward.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import numpy as np

from funcnet.core import Layer, as_layer

__all__ = ["REMAT_POLICIES", "remat"]

REMAT_POLICIES: dict[str, Callable] = {
    name: getattr(jax.checkpoint_policies, name)
    for name in (
        "nothing_saveable",
        "everything_saveable",
        "dots_saveable",
        "dots_with_no_batch_dims_saveable",
        "checkpoint_dots",
        "checkpoint_dots_with_no_batch_dims",
    )
}
"""The policy names ``remat`` takes, mapped to :mod:`jax.checkpoint_policies`."""


def resolve_policy(owner: str, policy) -> Callable | None:
    """``policy`` (``None``, a name of :data:`REMAT_POLICIES` or a function), checked."""
    if policy is None or (callable(policy) and not isinstance(policy, str)):
        return policy
    if isinstance(policy, str) and policy in REMAT_POLICIES:
        return REMAT_POLICIES[policy]
    raise ValueError(
        f"{owner}: unknown remat policy {policy!r}; use None (save nothing), one of "
        f"{sorted(REMAT_POLICIES)} or a function from `jax.checkpoint_policies`."
    )


def _is_array(leaf) -> bool:
    return isinstance(leaf, (jax.Array, np.ndarray, np.generic))


def _checkpointed(apply: Callable, policy: Callable | None, train: bool) -> Callable:
    """``apply`` under ``jax.checkpoint``; non-array leaves of the arguments stay static."""

    def call(params, state, inputs, key):
        leaves, tree = jax.tree.flatten((params, state, inputs, key))
        dynamic = [i for i, leaf in enumerate(leaves) if _is_array(leaf)]

        def run(arrays):
            full = list(leaves)
            for i, a in zip(dynamic, arrays):
                full[i] = a
            p, s, x, k = jax.tree.unflatten(tree, full)
            return apply(p, s, x, key=k, train=train)

        return jax.checkpoint(run, policy=policy)([leaves[i] for i in dynamic])

    return call


def remat(layer: Layer | Callable, policy: str | Callable | None = None) -> Layer:
    """``layer`` whose activations are recomputed in the backward pass instead of stored.

    Wraps ``apply`` in :func:`jax.checkpoint`: same outputs, same gradients,
    less memory for the backward pass (more compute). Params, state, inputs
    and outputs are the layer's own (``init`` is unchanged), so a remat'ed
    layer swaps in anywhere, including decoding with a KV cache. ``policy``
    says what may be saved: ``None`` (nothing; recompute all), a name of
    :data:`REMAT_POLICIES` (e.g. ``"dots_saveable"``: keep matmul outputs) or
    a function from :mod:`jax.checkpoint_policies`. ``repeat(..., remat=...)``
    and the Transformer helpers apply it per block.

    Raises:
        ValueError: for an unknown policy name.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> from funcnet import Dense, serial
        >>> mlp = remat(serial(Dense(8), jnp.tanh, Dense(2)), "dots_saveable")
        >>> mlp.name
        "remat(serial, policy='dots_saveable')"
        >>> params, state = mlp.init(jax.random.key(0), jnp.ones((3, 4)))
        >>> loss = lambda p: mlp.apply(p, state, jnp.ones((3, 4)))[0].sum()
        >>> jax.tree.map(jnp.shape, jax.grad(loss)(params))[2]
        {'b': (2,), 'w': (8, 2)}
    """
    layer = as_layer(layer)
    fn = resolve_policy("remat", policy)

    def apply(params, state, inputs, *, key=None, train=False):
        return _checkpointed(layer.apply, fn, bool(train))(params, state, inputs, key)

    label = "" if policy is None else f", policy={getattr(policy, '__name__', policy)!r}"
    return Layer(layer.init, apply, f"remat({layer.name}{label})", (layer,))
