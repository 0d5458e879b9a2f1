"""Dense (fully connected) and Embedding layers."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from funcnet import initializers
from funcnet._checks import array_of, check_positive_int, compute_dtype, fmt_shape
from funcnet.core import Layer, LayerError, declare

__all__ = ["Dense", "Embedding"]


def Dense(
    features: int,
    *,
    use_bias: bool = True,
    w_init: str | initializers.Initializer = "glorot_uniform",
    b_init: str | initializers.Initializer = "zeros",
    dtype=None,
    param_dtype=jnp.float32,
    axes: tuple[str | None, str | None] = ("embed", "mlp"),
) -> Layer:
    """A fully connected layer: ``y = x @ w + b`` over the last axis.

    Inputs ``(..., in)``, outputs ``(..., features)``. Params ``{"w": (in,
    features), "b": (features,)}`` (no ``"b"`` when ``use_bias=False``); no
    state; no key. Defaults: ``w`` Glorot-uniform (as Keras), ``b`` zeros.

    ``axes`` names what the input and output axes of ``w`` mean, for sharding
    rules (:mod:`funcnet.distributed.rules`); ``b`` gets the output's name.
    The default ``("embed", "mlp")`` reads a Dense as widening the model's
    stream (column-parallel under tensor-parallel rules); a layer that goes
    back to the stream (row-parallel) is ``axes=("mlp", "embed")``, an output
    head ``axes=("embed", "vocab")``, and ``(None, None)`` keeps it replicated.

    Args:
        features: output size.
        use_bias: add a bias.
        w_init, b_init: initializers (functions or names, see :mod:`funcnet.initializers`).
        dtype: computation dtype; default: the promotion of the inputs' and the
            params' dtypes (params are cast, e.g. to bfloat16, when given).
        param_dtype: dtype of the params.
        axes: the logical names of ``w``'s two axes (strings or ``None``).

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> layer = Dense(3)
        >>> params, state = layer.init(jax.random.key(0), jnp.zeros((2, 4)))
        >>> jax.tree.map(jnp.shape, params)
        {'b': (3,), 'w': (4, 3)}
        >>> layer.apply(params, state, jnp.ones((2, 4)))[0].shape
        (2, 3)
    """
    features = check_positive_int("Dense", "features", features)
    w_init, b_init = initializers.get(w_init), initializers.get(b_init)
    axes = _check_axes("Dense", axes, 2)

    def init(key, inputs):
        shape, _ = array_of(inputs)
        if len(shape) < 1:
            raise LayerError(f"expected inputs with at least one axis, got shape {shape}.")
        k_w, k_b = jax.random.split(key)
        params = {"w": w_init(k_w, (shape[-1], features), param_dtype)}
        if use_bias:
            params["b"] = b_init(k_b, (features,), param_dtype)
        return declare(params, {"w": axes, "b": axes[1:]}), ()

    def apply(params, state, inputs, *, key=None, train=False):
        del key, train
        shape, x_dtype = array_of(inputs)
        w = params["w"]
        if len(shape) < 1 or shape[-1] != w.shape[0]:
            raise LayerError(
                f"expected inputs with last dimension {w.shape[0]}, got shape {fmt_shape(shape)}."
            )
        dt = compute_dtype(x_dtype, w.dtype, dtype)
        y = jnp.matmul(inputs.astype(dt), w.astype(dt))
        if use_bias:
            y = y + params["b"].astype(dt)
        return y, state

    return Layer(init, apply, f"Dense({features})")


def _check_axes(owner: str, axes, n: int) -> tuple:
    """``axes`` as a tuple of ``n`` logical names (strings or None), else a clear error."""
    ok = isinstance(axes, (tuple, list)) and len(axes) == n
    if not ok or not all(a is None or isinstance(a, str) for a in axes):
        raise ValueError(
            f"{owner}: `axes` must be {n} logical axis names (strings or None), got {axes!r}; "
            f"e.g. `axes=('embed', 'mlp')`."
        )
    return tuple(axes)


def Embedding(
    num_embeddings: int,
    features: int,
    *,
    w_init: str | initializers.Initializer | None = None,
    param_dtype=jnp.float32,
) -> Layer:
    """A lookup table from integer ids to vectors, also usable as the tied output projection.

    Integer inputs ``(...)`` give ``(..., features)``: row ``i`` of the table
    for id ``i``. Floating inputs ``(..., features)`` give logits ``(...,
    num_embeddings)`` = ``x @ table.T`` — the table reused as the output
    projection of a language model (weight tying; combine with
    :func:`funcnet.shared`). Params ``{"table": (num_embeddings, features)}``
    (axes named ``("vocab", "embed")``);
    default init normal with stddev ``1 / sqrt(features)``. Ids outside
    ``[0, num_embeddings)`` give rows of NaN (JAX's ``fill`` gather mode), which
    the training step's NaN guard reports; they cannot be checked under ``jit``.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> emb = Embedding(100, 8)
        >>> params, state = emb.init(jax.random.key(0), jnp.zeros((2, 5), jnp.int32))
        >>> jax.tree.map(jnp.shape, params)
        {'table': (100, 8)}
        >>> vectors, _ = emb.apply(params, state, jnp.array([[1, 2, 3]]))
        >>> vectors.shape
        (1, 3, 8)
        >>> emb.apply(params, state, vectors)[0].shape  # tied output projection
        (1, 3, 100)
    """
    num = check_positive_int("Embedding", "num_embeddings", num_embeddings)
    features = check_positive_int("Embedding", "features", features)
    table_init = initializers.get(
        w_init if w_init is not None else initializers.normal(stddev=features**-0.5)
    )

    def check(inputs):
        shape, x_dtype = array_of(inputs)
        if jnp.issubdtype(x_dtype, jnp.floating):
            if len(shape) < 1 or shape[-1] != features:
                raise LayerError(
                    f"floating inputs are projected onto the table (tied output) and need last "
                    f"dimension {features}, got shape {fmt_shape(shape)}; for a lookup pass "
                    "integer ids (`x.astype(jnp.int32)`)."
                )
        elif not jnp.issubdtype(x_dtype, jnp.integer):
            raise LayerError(f"expected integer ids, got dtype {x_dtype}.")
        return x_dtype

    def init(key, inputs):
        check(inputs)
        table = table_init(key, (num, features), param_dtype)
        return {"table": declare(table, ("vocab", "embed"))}, ()

    def apply(params, state, inputs, *, key=None, train=False):
        del key, train
        x_dtype = check(inputs)
        table = params["table"]
        if jnp.issubdtype(x_dtype, jnp.floating):
            dt = jnp.promote_types(x_dtype, table.dtype)
            return jnp.matmul(inputs.astype(dt), table.astype(dt).T), state
        return jnp.take(table, inputs, axis=0), state

    return Layer(init, apply, f"Embedding({num}, {features})")
