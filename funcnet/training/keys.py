"""The key scheme: every random number of a run comes from the one key the user gives.

One place says how keys are derived, so that a run is reproducible from its
key, a resumed run draws exactly the numbers of one that never stopped, and
no two uses ever share a key:

===========================  ==============================================
use                          key
===========================  ==============================================
model init                   ``fold_in(key, 0)``           (:func:`init_key`)
the run (stored in state)    ``run = fold_in(key, 1)``      (:func:`run_key`)
step ``s``                   ``fold_in(run, s)``            (:func:`step_key`)
device ``d`` (axis_name)     ``fold_in(step_key, d)``
augmentation of a step       ``split(step_key)[1]``; the model gets ``[0]``
micro-batch ``i``            ``fold_in(model_key, i)``      (accumulation)
child ``i`` of a combinator  ``fold_in(parent_key, i)``     (funcnet.combinators)
fit's shuffle of epoch ``e`` ``fold_in(key, 1_000_003 + e)`` (:func:`epoch_key`)
===========================  ==============================================

Examples:
    >>> import jax
    >>> key = jax.random.key(0)
    >>> bool((jax.random.key_data(step_key(run_key(key), 3))
    ...       == jax.random.key_data(jax.random.fold_in(jax.random.fold_in(key, 1), 3))).all())
    True
"""

from __future__ import annotations

import jax

__all__ = ["epoch_key", "init_key", "run_key", "step_key"]

_EPOCH_OFFSET = 1_000_003  # far from the small integers folded in elsewhere


def init_key(key: jax.Array) -> jax.Array:
    """The key the model's ``init`` gets."""
    return jax.random.fold_in(key, 0)


def run_key(key: jax.Array) -> jax.Array:
    """The run's base key, stored in ``TrainState.key``."""
    return jax.random.fold_in(key, 1)


def step_key(run: jax.Array, step) -> jax.Array:
    """The key of update number ``step`` (so a resumed run draws the same numbers)."""
    return jax.random.fold_in(run, step)


def epoch_key(key: jax.Array, epoch: int) -> jax.Array:
    """The key of ``fit``'s shuffle in ``epoch`` (from the user's key, not the run key)."""
    return jax.random.fold_in(key, _EPOCH_OFFSET + epoch)
