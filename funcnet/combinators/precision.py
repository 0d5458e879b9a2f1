"""Precision policies: the dtypes a layer keeps its params in, computes in, and returns.

A :class:`Policy` is three dtypes, as in Keras' ``mixed_precision.Policy``
and DeepMind's ``jmp``: ``param_dtype`` (what ``init`` returns and the
optimizer updates), ``compute_dtype`` (what the params and float inputs are
cast to for ``apply``) and ``output_dtype`` (what float outputs are cast to,
so the loss sees them). :func:`with_policy` wraps any layer in one, so a
policy can cover the whole model or parts of it: ``serial(with_policy(body,
"mixed_bfloat16"), head)`` keeps the head in float32. Policies do not nest
(the outer one would cast the inner one's params): wrap the parts side by
side. Integer inputs (token ids) and the layer's state pass through
unchanged; the state comes back in the dtypes it went in.

funcnet's normalization layers and attention softmax already compute their
statistics in at least float32 whatever the compute dtype, so a
``"mixed_bfloat16"`` model keeps float32 params, bfloat16 matmuls and float32
statistics and loss. ``float16`` needs loss scaling; see
:func:`funcnet.training.dynamic_loss_scale` (``fit(policy="mixed_float16")``
adds it).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from funcnet.core import Layer, as_layer

__all__ = ["POLICIES", "Policy", "get_policy", "with_policy"]


class Policy(NamedTuple):
    """The dtypes of params, of the computation and of the outputs; None leaves a dtype as is."""

    param_dtype: Any = None
    compute_dtype: Any = None
    output_dtype: Any = None

    def __repr__(self) -> str:
        names = (None if d is None else jnp.dtype(d).name for d in self)
        return "Policy(params={}, compute={}, output={})".format(*names)


_F32, _BF16, _F16 = jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16)

POLICIES: dict[str, Policy] = {
    "float32": Policy(_F32, _F32, _F32),
    "mixed_bfloat16": Policy(_F32, _BF16, _F32),
    "mixed_float16": Policy(_F32, _F16, _F32),
    "bfloat16": Policy(_BF16, _BF16, _BF16),
    "float16": Policy(_F16, _F16, _F16),
}
"""Named policies (Keras' names); ``"f32"``, ``"bf16"``, ``"fp16"`` name the first three."""

_ALIASES = {"f32": "float32", "bf16": "mixed_bfloat16", "fp16": "mixed_float16"}
_KEYS = {"params": "param_dtype", "compute": "compute_dtype", "output": "output_dtype"}


def _float_dtype(where: str, name: str, value) -> jnp.dtype:
    try:
        dt = jnp.dtype(value)
    except TypeError:
        dt = None
    if dt is None or not jnp.issubdtype(dt, jnp.floating):
        raise ValueError(f"{where}: `{name}` must be a float dtype, got {value!r}.")
    return dt


def _parse(where: str, text: str) -> Policy:
    """``"params=float32,compute=bfloat16,output=float32"`` (jmp's form) as a Policy."""
    fields = {}
    for part in text.split(","):
        name, _, value = part.partition("=")
        name = name.strip()
        if name not in _KEYS or not value.strip():
            raise ValueError(
                f"{where}: unknown precision policy {text!r}; use one of "
                f"{sorted(POLICIES) + sorted(_ALIASES)}, a Policy, or "
                "'params=float32,compute=bfloat16,output=float32'."
            )
        fields[_KEYS[name]] = _float_dtype(where, name, value.strip())
    return Policy(**fields)


def get_policy(policy: str | Policy | None, where: str = "get_policy") -> Policy | None:
    """``policy`` as a :class:`Policy`: a name of :data:`POLICIES`, an alias, jmp's
    ``"params=...,compute=...,output=..."`` form, or a Policy (checked); None stays None.

    Raises:
        ValueError: for an unknown name or a dtype that is not a float dtype.

    Examples:
        >>> get_policy("bf16")
        Policy(params=float32, compute=bfloat16, output=float32)
        >>> get_policy("params=float32,compute=float16")
        Policy(params=float32, compute=float16, output=None)
    """
    if policy is None:
        return None
    if isinstance(policy, Policy):
        return Policy(
            *(
                None if d is None else _float_dtype(where, f, d)
                for f, d in zip(Policy._fields, policy)
            )
        )
    if not isinstance(policy, str):
        raise TypeError(
            f"{where}: a precision policy is a name such as 'mixed_bfloat16' or a Policy, "
            f"got {type(policy).__name__}."
        )
    name = _ALIASES.get(policy, policy)
    return POLICIES[name] if name in POLICIES else _parse(where, policy)


def cast_floats(tree, dtype):
    """Cast the float leaves of ``tree`` to ``dtype`` (None: unchanged); others pass through."""
    if dtype is None:
        return tree

    def cast(a):
        if not hasattr(a, "dtype") or not jnp.issubdtype(a.dtype, jnp.floating):
            return a
        if isinstance(a, jax.ShapeDtypeStruct):  # init from a spec (TrainState.create)
            return jax.ShapeDtypeStruct(a.shape, dtype, sharding=a.sharding)
        return a if a.dtype == dtype else jnp.asarray(a).astype(dtype)

    return jax.tree.map(cast, tree)


def _like(new, old):
    """``new`` with each float leaf in the dtype of the matching leaf of ``old``."""
    try:
        return jax.tree.map(
            lambda n, o: n.astype(o.dtype) if hasattr(o, "dtype") and hasattr(n, "dtype") else n,
            new,
            old,
        )
    except ValueError:  # the layer changed the state's structure: nothing to match
        return new


def policy_apply(apply: Callable, policy: Policy) -> Callable:
    """``apply`` run under ``policy``: params and float inputs cast to the compute dtype,
    float outputs to the output dtype, the state returned in its own dtypes."""

    def run(params, state, inputs, *, key=None, train=False):
        outputs, new_state = apply(
            cast_floats(params, policy.compute_dtype),
            state,
            cast_floats(inputs, policy.compute_dtype),
            key=key,
            train=train,
        )
        return cast_floats(outputs, policy.output_dtype), _like(new_state, state)

    run.policy = policy  # how with_policy finds a policy nested inside another
    return run


def _nested_policy(layer: Layer) -> str | None:
    """The name of a layer under ``layer`` that has a policy of its own, if any."""
    todo = list(layer.children)
    while todo:
        child = todo.pop()
        if isinstance(child, Layer):
            if getattr(getattr(child.apply, "fn", None), "policy", None) is not None:
                return child.name
            todo.extend(child.children)
    return None


def with_policy(layer: Layer | Callable, policy: str | Policy) -> Layer:
    """``layer`` under a precision ``policy`` (see :func:`get_policy` for the names).

    ``init`` returns the params in the policy's ``param_dtype`` (float leaves
    only); ``apply`` casts the params and float inputs to its
    ``compute_dtype`` and the float outputs to its ``output_dtype``. The
    layer's state (BatchNorm statistics, a KV cache) keeps its dtypes.
    Gradients with respect to float32 params are float32: the casts are
    differentiable. To keep a part of a model in float32, wrap the other
    parts: ``serial(with_policy(body, "mixed_bfloat16"), head)``.

    Raises:
        ValueError: for an unknown policy, or a layer that already has a
            policy inside (the outer casts would override the inner ones).

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> from funcnet import Dense
        >>> layer = with_policy(Dense(3), "mixed_bfloat16")
        >>> params, state = layer.init(jax.random.key(0), jnp.ones((2, 4)))
        >>> params["w"].dtype, layer.apply(params, state, jnp.ones((2, 4)))[0].dtype
        (dtype('float32'), dtype('float32'))
        >>> inner = with_policy(Dense(3), "bfloat16")
        >>> inner.apply(*inner.init(jax.random.key(0), jnp.ones((2, 4))), jnp.ones((2, 4)))[0].dtype
        dtype(bfloat16)
    """
    layer = as_layer(layer)
    pol = get_policy(policy, "with_policy")
    if pol is None:
        raise ValueError("with_policy: give a policy such as 'mixed_bfloat16', not None.")
    inner = _nested_policy(layer)
    if inner is not None:
        raise ValueError(
            f"with_policy: {layer.name} already contains {inner}; policies do not nest (the "
            "outer one would cast the inner one's params). Wrap the parts side by side, e.g. "
            "serial(with_policy(body, 'mixed_bfloat16'), head)."
        )

    def init(key, inputs):
        # The inputs as they are: with float32 params made by the layer and bfloat16 inputs,
        # the shapes a combinator's init infers would mix dtypes (a residual branch would
        # give float32 for a bfloat16 stream); apply casts both alike.
        params, state = layer.init(key, inputs)
        return cast_floats(params, pol.param_dtype), state

    label = repr(policy) if isinstance(policy, str) else repr(pol)
    return Layer(init, policy_apply(layer.apply, pol), f"with_policy({label})", (layer,))
