"""The MLPs of a Transformer block: the classic two-layer MLP and gated (GLU) MLPs."""

from __future__ import annotations

from collections.abc import Callable

import jax

from funcnet._checks import check_positive_int
from funcnet.combinators import fanout, serial
from funcnet.core import Layer
from funcnet.layers.activations import gelu
from funcnet.layers.dense import Dense
from funcnet.layers.dropout import Dropout

__all__ = ["GLU_ACTIVATIONS", "MLP_KINDS", "glu_mlp"]

GLU_ACTIVATIONS: dict[str, Callable] = {
    "silu": jax.nn.silu,
    "gelu": gelu,
    "sigmoid": jax.nn.sigmoid,
}
"""The activation names :func:`glu_mlp` takes: SwiGLU, GeGLU and the original GLU."""

MLP_KINDS = {"mlp": None, "swiglu": "silu", "geglu": "gelu"}
"""The ``mlp=`` choices of the Transformer blocks, with their GLU activation."""


def _multiply(pair):
    gate, up = pair
    return gate * up


def glu_mlp(
    hidden: int,
    features: int,
    *,
    activation: str | Callable = "silu",
    use_bias: bool = False,
    drop_rate: float = 0.0,
) -> Layer:
    """A gated MLP (Shazeer, 2020): ``Dense(act(x W_gate) * (x W_up)) W_down``.

    ``activation="silu"`` is SwiGLU (LLaMA, Mistral), ``"gelu"`` GeGLU
    (Gemma; exact GELU), ``"sigmoid"`` the original GLU; or pass a function.
    Inputs ``(..., D)`` -> ``(..., features)``; no state; needs ``key`` only
    with ``train=True`` and ``drop_rate > 0``. Built as::

        serial(
            gate_up=fanout(serial(Dense(hidden), activation), Dense(hidden)),
            multiply=lambda gate_up: gate_up[0] * gate_up[1],
            down=Dense(features, axes=("mlp", "embed")),
            dropout=Dropout(drop_rate),
        )

    The up and gate projections are column-parallel (``w`` axes ``("embed",
    "mlp")``), the down projection row-parallel (``("mlp", "embed")``).

    Raises:
        ValueError: for a bad ``hidden``/``features`` or an unknown activation name.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> swiglu = glu_mlp(12, 8)
        >>> params, state = swiglu.init(jax.random.key(0), jnp.ones((2, 5, 8)))
        >>> jax.tree.map(jnp.shape, params)  # doctest: +NORMALIZE_WHITESPACE
        {'down': {'w': (12, 8)}, 'dropout': (), 'gate_up': (({'w': (8, 12)}, ()), {'w': (8, 12)}),
         'multiply': ()}
        >>> swiglu.apply(params, state, jnp.ones((2, 5, 8)))[0].shape
        (2, 5, 8)
    """
    hidden = check_positive_int("glu_mlp", "hidden", hidden)
    features = check_positive_int("glu_mlp", "features", features)
    if isinstance(activation, str):
        if activation not in GLU_ACTIVATIONS:
            raise ValueError(
                f"glu_mlp: unknown `activation={activation!r}`; use one of "
                f"{sorted(GLU_ACTIVATIONS)} (silu: SwiGLU, gelu: GeGLU) or a function."
            )
        activation = GLU_ACTIVATIONS[activation]
    elif not callable(activation):
        raise ValueError(f"glu_mlp: `activation` must be a name or a function, got {activation!r}.")
    return serial(
        gate_up=fanout(
            serial(Dense(hidden, use_bias=use_bias), activation), Dense(hidden, use_bias=use_bias)
        ),
        multiply=_multiply,
        down=Dense(features, use_bias=use_bias, axes=("mlp", "embed")),
        dropout=Dropout(drop_rate),
    )


def block_mlp(kind: str, width: int, hidden: int, activation, drop_rate: float) -> list:
    """The MLP layers of a block of width ``width``: ``mlp``, ``swiglu`` or ``geglu``."""
    if MLP_KINDS[kind] is None:
        return [Dense(hidden), activation, Dense(width, axes=("mlp", "embed")), Dropout(drop_rate)]
    return [glu_mlp(hidden, width, activation=MLP_KINDS[kind], drop_rate=drop_rate)]
