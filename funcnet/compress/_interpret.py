"""Run a traced model with its kernels quantized: the jaxpr interpreter behind static int8.

:func:`run` evaluates the jaxpr of ``model.apply`` equation by equation.
The kernels (the params matched by a pattern) enter it as :class:`Kernel`
markers instead of arrays, and each equation that reads one is computed one
of three ways, chosen by :func:`int8_plan` from the equation alone:

- ``dot_general`` / ``conv_general_dilated`` with a floating activation on
  the other side and the kernel's channel axis (its last) among the outputs:
  an **integer op**, ``int8 x int8 -> int32`` (``preferred_element_type``),
  rescaled by ``input_scale * scale[channel]``; in the observe mode of
  calibration, the float op whose activation is handed to an observer;
- a call (``jit``, ``closed_call``, ``checkpoint``, ``custom_jvp_call``):
  the interpreter goes inside;
- anything else (an embedding's ``gather``, a tied output's transpose, a
  ``scan`` over stacked kernels): the kernel is dequantized (``q * scale``)
  and the op runs in float: weight-only quantization.

Like PyTorch's FX graph mode quantization, the rewrite happens on the traced
program, so it reaches kernels wherever a combinator put them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import jax
import jax.numpy as jnp
from jax.extend import core as jcore

__all__ = ["Kernel", "Mode", "int8_plan", "quantize_activation", "run"]

QMAX = 127
_CALLS = {"jit": "jaxpr", "pjit": "jaxpr", "closed_call": "call_jaxpr", "core_call": "call_jaxpr"}
_CALLS_ALSO = {"checkpoint": "jaxpr", "remat": "jaxpr", "custom_jvp_call": "call_jaxpr"}


@dataclass(frozen=True)
class Kernel:
    """A kernel inside the interpreter: its path, its value and the dtype the program casts it to.

    ``value`` is a float array (observe mode) or a quantized node ``{"q",
    "scale"[, "input_scale"]}`` (integer modes).
    """

    path: str
    value: Any
    dtype: Any

    @property
    def ndim(self) -> int:
        """The kernel's number of axes."""
        return jnp.ndim(self.value["q"] if isinstance(self.value, dict) else self.value)

    def materialize(self) -> jax.Array:
        """The kernel as the float array the program expects (dequantized if quantized)."""
        v = self.value
        if isinstance(v, dict):
            v = v["q"].astype(jnp.float32) * v["scale"].astype(jnp.float32)
        return v.astype(self.dtype)


@dataclass
class Mode:
    """What the interpreter does at an integer op.

    ``observe``: a function ``(path, activation)`` called at each op (float
    calibration run); else the integer op, and ``record``, when not None, a
    list that gets ``(path, int8 activation, int32 accumulator)``.
    """

    observe: Callable[[str, jax.Array], None] | None = None
    record: list | None = None


@dataclass(frozen=True)
class Plan:
    """An integer op: which operand is the kernel, where its channel axis lands in the output."""

    kernel_index: int
    out_axis: int


def _free_dims(ndim: int, contracting, batch) -> list[int]:
    return [d for d in range(ndim) if d not in contracting and d not in batch]


def int8_plan(eqn, invals) -> Plan | None:
    """The integer op for ``eqn`` (reading a :class:`Kernel`), or None for weight-only.

    A ``dot_general`` with one kernel operand and one floating array whose
    kernel channel axis (the last) is a free dimension, or a
    ``conv_general_dilated`` whose right-hand side is a kernel with its
    output-feature dimension last and ``batch_group_count == 1``.
    """
    kinds = [isinstance(v, Kernel) for v in invals]
    name = eqn.primitive.name
    if name not in ("dot_general", "conv_general_dilated") or sum(kinds) != 1:
        return None
    k = kinds.index(True)
    other = invals[1 - k]
    if not jnp.issubdtype(jnp.result_type(other), jnp.floating):
        return None
    kernel_ndim = invals[k].ndim
    last = kernel_ndim - 1
    if name == "conv_general_dilated":
        dn = eqn.params["dimension_numbers"]
        if k != 1 or dn.rhs_spec[0] != last or eqn.params["batch_group_count"] != 1:
            return None
        return Plan(1, dn.out_spec[1])
    (contract_l, contract_r), (batch_l, batch_r) = eqn.params["dimension_numbers"]
    contracting, batch = (contract_l, contract_r)[k], (batch_l, batch_r)[k]
    free = _free_dims(kernel_ndim, contracting, batch)
    if last not in free:
        return None
    if k == 0:
        return Plan(0, len(batch_l) + free.index(last))
    lhs_free = _free_dims(jnp.ndim(other), contract_l, batch_l)
    return Plan(1, len(batch_l) + len(lhs_free) + free.index(last))


def quantize_activation(x: jax.typing.ArrayLike, scale: jax.typing.ArrayLike) -> jax.Array:
    """``clip(round(x / scale), -127, 127)`` as int8 (symmetric, one scale; 0 where ``scale`` is 0).

    Examples:
        >>> import jax.numpy as jnp
        >>> quantize_activation(jnp.array([0.5, -1.0, 9.0]), 0.01).tolist()
        [50, -100, 127]
    """
    x32 = jnp.asarray(x).astype(jnp.float32)
    scale = jnp.asarray(scale, jnp.float32)
    safe = jnp.where(scale > 0, scale, 1.0)
    return jnp.clip(jnp.round(x32 / safe), -QMAX, QMAX).astype(jnp.int8)


def _integer_op(eqn, invals, plan: Plan, mode: Mode):
    kernel = invals[plan.kernel_index]
    x = invals[1 - plan.kernel_index]
    node = kernel.value
    qx = quantize_activation(x, node["input_scale"])
    operands = [qx, qx]
    operands[plan.kernel_index] = node["q"]
    params = dict(eqn.params, preferred_element_type=jnp.int32)
    if "precision" in params:
        params["precision"] = None
    acc = eqn.primitive.bind(*operands, **params)
    if mode.record is not None:
        mode.record.append((kernel.path, qx, acc))
    shape = [1] * acc.ndim
    shape[plan.out_axis] = acc.shape[plan.out_axis]
    rescale = node["input_scale"].astype(jnp.float32) * node["scale"].astype(jnp.float32)
    y = acc.astype(jnp.float32) * rescale.reshape(shape)
    return y.astype(eqn.outvars[0].aval.dtype)


def _bind(eqn, invals):
    params = eqn.primitive.get_bind_params(eqn.params)
    subfuns = ()
    if isinstance(params, tuple):  # older jax: (subfuns, params)
        subfuns, params = params
    with eqn.ctx.manager:
        out = eqn.primitive.bind(*subfuns, *invals, **params)
    return out if eqn.primitive.multiple_results else [out]


def _sub_jaxpr(eqn):
    """The called jaxpr of a call-like equation (and its consts), or None."""
    name = eqn.primitive.name
    key = _CALLS.get(name) or _CALLS_ALSO.get(name)
    if key is None or key not in eqn.params:
        return None
    sub = eqn.params[key]
    if isinstance(sub, jcore.ClosedJaxpr):
        return sub.jaxpr, sub.consts
    if isinstance(sub, jcore.Jaxpr):
        return sub, ()
    return None


def _step(eqn, invals, mode: Mode) -> list:
    """The outputs of one equation that reads a kernel."""
    plan = int8_plan(eqn, invals)
    if plan is not None:
        kernel = invals[plan.kernel_index]
        if mode.observe is not None:
            mode.observe(kernel.path, invals[1 - plan.kernel_index])
        elif "input_scale" in kernel.value:
            return [_integer_op(eqn, invals, plan, mode)]
    if eqn.primitive.name == "convert_element_type" and isinstance(invals[0], Kernel):
        new = eqn.params["new_dtype"]
        if jnp.issubdtype(new, jnp.floating):
            return [replace(invals[0], dtype=new)]
    sub = _sub_jaxpr(eqn) if plan is None else None
    if sub is not None:
        jaxpr, consts = sub
        return run(jaxpr, consts, invals, mode)
    vals = [v.materialize() if isinstance(v, Kernel) else v for v in invals]
    return _bind(eqn, vals)


def run(jaxpr, consts, args, mode: Mode) -> list:
    """Evaluate ``jaxpr`` on ``args`` (arrays or :class:`Kernel`s) in ``mode``; the outputs.

    Kernels left in the outputs are materialized (dequantized).
    """
    env: dict = {}

    def read(v):
        return v.val if isinstance(v, jcore.Literal) else env[v]

    for var, val in zip(jaxpr.constvars, consts):
        env[var] = val
    for var, val in zip(jaxpr.invars, args):
        env[var] = val
    for eqn in jaxpr.eqns:
        invals = [read(v) for v in eqn.invars]
        if any(isinstance(v, Kernel) for v in invals):
            outs = _step(eqn, invals, mode)
        else:
            outs = _bind(eqn, invals)
        for var, val in zip(eqn.outvars, outs):
            if not isinstance(var, jcore.DropVar):
                env[var] = val
    outs = [read(v) for v in jaxpr.outvars]
    return [v.materialize() if isinstance(v, Kernel) else v for v in outs]
