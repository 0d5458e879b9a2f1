"""Implementations: one training-step runner per library, all built from a Workload.

Each builder returns a :class:`Runner`: ``call()`` runs one compiled call (one
step, or ``fused_steps`` steps for the fused paths) asynchronously and
``sync()`` waits for everything queued. Builders raise
:class:`~bench.workloads._base.Skip` when a library or a funcnet layer is
missing. Every implementation trains with Adam(1e-3) on the same in-memory
float32 data.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from bench.workloads._base import Skip, Workload

LEARNING_RATE = 1e-3

# name -> one-line description, in report order
IMPLS = {
    "jax": "pure JAX: params dict + optax, `jax.jit` per step (donated)",
    "jax_fused": "pure JAX, `fused_steps` steps in one `lax.scan` call (batches gathered inside)",
    "funcnet": "funcnet `train_step` under `jax.jit` (donated), default options",
    "funcnet_fused": "funcnet's `fit` fused path (`steps_per_execution`, `training.fused_runner`)",
    "flax_linen": "Flax Linen + `flax.training.train_state`, `jax.jit` (donated)",
    "flax_nnx": "Flax NNX idiomatic: `nnx.Optimizer`, `nnx.jit`",
    "haiku": "Haiku `hk.transform` + optax, `jax.jit` (donated)",
    "equinox": "Equinox idiomatic: per-example model + `vmap`, `eqx.filter_jit`",
    "torch": "PyTorch eager, `torch.optim.Adam`",
    "torch_compile": "PyTorch, model wrapped in `torch.compile` (optimizer eager)",
}
REFERENCE = "jax"
FUSED = ("jax_fused", "funcnet_fused")


@dataclass
class Runner:
    """A compiled training loop, ready to be timed.

    Attributes:
        call: runs one call (``steps_per_call`` steps), without waiting.
        sync: waits until every queued call has finished.
        steps_per_call: training steps per call.
        flops: ``() -> XLA FLOPs of one call`` (valid after the first call), or None.
        memory: ``() -> XLA's peak-memory estimate of one call in bytes`` (arguments
            + outputs - aliased + temporaries, from ``memory_analysis()``), or None.
        recompile: ``() -> (trace_lower_s, compile_s)`` of a freshly built step, or None.
        note: shown in the report.
    """

    call: Callable[[], Any]
    sync: Callable[[], None]
    steps_per_call: int = 1
    flops: Callable[[], float | None] | None = None
    memory: Callable[[], float | None] | None = None
    recompile: Callable[[], tuple[float, float]] | None = None
    note: str = ""
    extra: dict = field(default_factory=dict)


class Data:
    """A workload's examples on the device: batches for per-step loops, arrays for fused ones."""

    def __init__(self, workload: Workload, fused_steps: int, seed: int = 0):
        self.batch = workload.batch
        self.fused_steps = fused_steps
        n_batches = 2 * fused_steps
        n = n_batches * workload.batch
        self.x, self.y = workload.make_data(np.random.default_rng(seed), n)
        self.dx, self.dy = jax.device_put(self.x), jax.device_put(self.y)
        b = workload.batch
        self.batches = [
            jax.device_put((self.x[i * b : (i + 1) * b], self.y[i * b : (i + 1) * b]))
            for i in range(n_batches)
        ]
        self.perm = jax.device_put(np.random.default_rng(seed + 1).permutation(n).astype(np.int32))
        self.begins = [jax.device_put(np.int32(0)), jax.device_put(np.int32(fused_steps))]

    def example(self):
        return self.batches[0][0]


def _specs(tree):
    def spec(a):
        if isinstance(a, jax.Array):
            return jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding)
        return a

    return jax.tree.map(spec, tree)


def _xla_flops(jitted, specs, static=()) -> float | None:
    """FLOPs of one call from XLA's cost analysis (a cache hit after the first call)."""
    try:
        cost = jitted.lower(*specs, *static).compile().cost_analysis()
    except Exception:  # cost analysis is best effort (backend dependent)
        return None
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else None
    flops = (cost or {}).get("flops")
    return float(flops) if flops is not None and flops > 0 else None


def _xla_memory(jitted, specs, static=()) -> float | None:
    """Bytes live at once in one call: arguments + outputs - donated aliases + temporaries."""
    try:
        mem = jitted.lower(*specs, *static).compile().memory_analysis()
        return float(
            mem.argument_size_in_bytes
            + mem.output_size_in_bytes
            - mem.alias_size_in_bytes
            + mem.temp_size_in_bytes
        )
    except Exception:  # memory analysis is best effort (backend dependent)
        return None


def workload_flops(workload: Workload, data: Data) -> float | None:
    """FLOPs of one training step: XLA's count for the pure-JAX reference, loops unrolled."""
    apply = workload.flops_apply or workload.jax_apply
    opt = optax.adam(LEARNING_RATE)
    params = workload.jax_init(jax.random.key(0))
    step = jax.jit(make_jax_step(apply, loss_fn(workload.loss), opt))
    try:
        cost = step.lower(params, opt.init(params), *data.batches[0]).cost_analysis()
    except Exception:
        return None
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else None
    flops = (cost or {}).get("flops")
    return float(flops) if flops else None


def _aot_time(jitted, specs, static=()) -> tuple[float, float]:
    t0 = time.perf_counter()
    lowered = jitted.lower(*specs, *static)
    t1 = time.perf_counter()
    lowered.compile()
    return t1 - t0, time.perf_counter() - t1


def loss_fn(kind: str):
    if kind == "xent":
        return lambda out, y: optax.softmax_cross_entropy_with_integer_labels(out, y).mean()
    if kind == "mse":
        return lambda out, y: jnp.mean(jnp.square(out - y))
    raise ValueError(f"unknown loss {kind!r}")


def fused_unroll(workload: Workload) -> bool:
    """The rule funcnet's ``fit`` uses: unroll fused steps of conv models on CPU."""
    return workload.has_conv and jax.default_backend() == "cpu"


# ----------------------------------------------------------------------------- pure JAX


def make_jax_step(apply, loss, opt):
    """The pure-JAX reference step ``(params, opt_state, x, y) -> (params, opt_state, loss)``."""

    def step(params, opt_state, x, y):
        value, grads = jax.value_and_grad(lambda p: loss(apply(p, x), y))(params)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, value

    return step


def _params_runner(params, apply, workload: Workload, data: Data) -> Runner:
    """A per-step ``jax.jit`` loop over ``(params, opt_state)`` (pure JAX, Haiku)."""
    opt = optax.adam(LEARNING_RATE)
    loss = loss_fn(workload.loss)

    def fresh():
        return jax.jit(make_jax_step(apply, loss, opt), donate_argnums=(0, 1))

    jstep = fresh()
    state = [params, opt.init(params)]
    specs = _specs((*state, *data.batches[0]))
    batches = itertools.cycle(data.batches)

    def call():
        x, y = next(batches)
        state[0], state[1], _ = jstep(state[0], state[1], x, y)

    return Runner(
        call,
        lambda: jax.block_until_ready(state),
        flops=lambda: _xla_flops(jstep, specs),
        memory=lambda: _xla_memory(jstep, specs),
        recompile=lambda: _aot_time(fresh(), specs),
    )


def _params_fused_runner(params, apply, workload: Workload, data: Data) -> Runner:
    opt = optax.adam(LEARNING_RATE)
    loss = loss_fn(workload.loss)
    k, bs = data.fused_steps, data.batch
    unroll = fused_unroll(workload)

    def make():
        step = make_jax_step(apply, loss, opt)

        def run(params, opt_state, x_all, y_all, perm, begin):
            def body(carry, i):
                p, o, total = carry
                idx = jax.lax.dynamic_slice_in_dim(perm, (begin + i) * bs, bs)
                x, y = jnp.take(x_all, idx, axis=0), jnp.take(y_all, idx, axis=0)
                p, o, value = step(p, o, x, y)
                return (p, o, total + value), None

            carry = (params, opt_state, jnp.zeros((), jnp.float32))
            steps = jnp.arange(k, dtype=jnp.int32)
            (p, o, total), _ = jax.lax.scan(body, carry, steps, unroll=k if unroll else 1)
            return p, o, total

        return jax.jit(run, donate_argnums=(0, 1))

    jrun = make()
    state = [params, opt.init(params)]
    specs = _specs((*state, data.dx, data.dy, data.perm, data.begins[0]))
    begins = itertools.cycle(data.begins)

    def call():
        state[0], state[1], _ = jrun(state[0], state[1], data.dx, data.dy, data.perm, next(begins))

    return Runner(
        call,
        lambda: jax.block_until_ready(state),
        steps_per_call=k,
        flops=lambda: _xla_flops(jrun, specs),
        memory=lambda: _xla_memory(jrun, specs),
        recompile=lambda: _aot_time(make(), specs),
        note=f"{k} steps/call" + (", unrolled" if unroll else ""),
    )


def build_jax(workload: Workload, data: Data) -> Runner:
    params = workload.jax_init(jax.random.key(0))
    return _params_runner(params, workload.jax_apply, workload, data)


def build_jax_fused(workload: Workload, data: Data) -> Runner:
    params = workload.jax_init(jax.random.key(0))
    return _params_fused_runner(params, workload.jax_apply, workload, data)


# ----------------------------------------------------------------------------- funcnet


def funcnet_loss_name(workload: Workload) -> str:
    """The funcnet loss name of a workload's loss kind."""
    return {"xent": "sparse_categorical_cross_entropy", "mse": "mean_squared_error"}[workload.loss]


def _funcnet_parts(workload: Workload, data: Data, step_options: dict):
    import funcnet as fn

    model = workload.funcnet()
    opt = optax.adam(LEARNING_RATE)
    ts = fn.TrainState.create(model, opt, jax.random.key(0), data.example())

    def make_step():
        return fn.train_step(model, funcnet_loss_name(workload), opt, **step_options)

    return ts, make_step


def build_funcnet(workload: Workload, data: Data, **step_options) -> Runner:
    ts, make_step = _funcnet_parts(workload, data, step_options)

    def fresh():
        return jax.jit(make_step(), donate_argnums=0)

    jstep = fresh()
    state = [ts]
    specs = _specs((ts, data.batches[0]))
    batches = itertools.cycle(data.batches)

    def call():
        state[0], _ = jstep(state[0], next(batches))

    return Runner(
        call,
        lambda: jax.block_until_ready(state),
        flops=lambda: _xla_flops(jstep, specs),
        memory=lambda: _xla_memory(jstep, specs),
        recompile=lambda: _aot_time(fresh(), specs),
    )


def build_funcnet_fused(workload: Workload, data: Data, **step_options) -> Runner:
    from funcnet.training import fused_runner, logs_init

    ts, make_step = _funcnet_parts(workload, data, step_options)
    k = data.fused_steps
    unroll = fused_unroll(workload)

    def fresh():
        return fused_runner(make_step(), {}, data.batch, unroll=unroll)

    run = fresh()
    state = [ts, logs_init({})]
    batch_arrays = (data.dx, data.dy, None)
    specs = _specs((ts, state[1], batch_arrays, data.perm, data.begins[0]))
    begins = itertools.cycle(data.begins)

    def call():
        state[0], state[1] = run(state[0], state[1], batch_arrays, data.perm, next(begins), k)

    unroll = fused_unroll(workload)
    return Runner(
        call,
        lambda: jax.block_until_ready(state),
        steps_per_call=k,
        flops=lambda: _xla_flops(run, specs, (k,)),
        memory=lambda: _xla_memory(run, specs, (k,)),
        recompile=lambda: _aot_time(fresh(), specs, (k,)),
        note=f"{k} steps/call" + (", unrolled" if unroll is True else ""),
    )


# ----------------------------------------------------------------------------- peers


def _need(workload: Workload, attr: str):
    fn_ = getattr(workload, attr)
    if fn_ is None:
        raise Skip(f"no {attr} version of this workload")
    return fn_


def build_flax_linen(workload: Workload, data: Data) -> Runner:
    try:
        from flax.training import train_state
    except ImportError as err:
        raise Skip("flax is not installed") from err
    module = _need(workload, "linen")()
    params = module.init(jax.random.key(0), data.example())["params"]
    loss = loss_fn(workload.loss)

    def make():
        def step(ts, x, y):
            value, grads = jax.value_and_grad(lambda p: loss(ts.apply_fn({"params": p}, x), y))(
                ts.params
            )
            return ts.apply_gradients(grads=grads), value

        return jax.jit(step, donate_argnums=0)

    jstep = make()
    state = [
        train_state.TrainState.create(
            apply_fn=module.apply, params=params, tx=optax.adam(LEARNING_RATE)
        )
    ]
    specs = _specs((state[0], *data.batches[0]))
    batches = itertools.cycle(data.batches)

    def call():
        state[0], _ = jstep(state[0], *next(batches))

    return Runner(
        call,
        lambda: jax.block_until_ready(state),
        flops=lambda: _xla_flops(jstep, specs),
    )


def build_flax_nnx(workload: Workload, data: Data) -> Runner:
    try:
        from flax import nnx
    except ImportError as err:
        raise Skip("flax is not installed") from err
    model = _need(workload, "nnx")(nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, optax.adam(LEARNING_RATE), wrt=nnx.Param)
    loss = loss_fn(workload.loss)

    @nnx.jit
    def step(model, optimizer, x, y):
        value, grads = nnx.value_and_grad(lambda m: loss(m(x), y))(model)
        optimizer.update(model, grads)
        return value

    last = [None]
    batches = itertools.cycle(data.batches)

    def call():
        last[0] = step(model, optimizer, *next(batches))

    return Runner(call, lambda: jax.block_until_ready(last[0]))


def build_haiku(workload: Workload, data: Data) -> Runner:
    try:
        import haiku as hk
    except ImportError as err:
        raise Skip("dm-haiku is not installed") from err
    forward = hk.without_apply_rng(hk.transform(_need(workload, "haiku")))
    params = forward.init(jax.random.key(0), data.example())
    return _params_runner(params, forward.apply, workload, data)


def build_equinox(workload: Workload, data: Data) -> Runner:
    try:
        import equinox as eqx
    except ImportError as err:
        raise Skip("equinox is not installed") from err
    model = _need(workload, "equinox")(jax.random.key(0))
    opt = optax.adam(LEARNING_RATE)
    loss = loss_fn(workload.loss)

    @eqx.filter_jit
    def step(model, opt_state, x, y):
        value, grads = eqx.filter_value_and_grad(lambda m: loss(jax.vmap(m)(x), y))(model)
        updates, opt_state = opt.update(grads, opt_state, eqx.filter(model, eqx.is_array))
        return eqx.apply_updates(model, updates), opt_state, value

    state = [model, opt.init(eqx.filter(model, eqx.is_array))]
    batches = itertools.cycle(data.batches)

    def call():
        state[0], state[1], _ = step(state[0], state[1], *next(batches))

    return Runner(call, lambda: jax.block_until_ready(eqx.filter(state, eqx.is_array)))


def _build_torch(workload: Workload, data: Data, compiled: bool) -> Runner:
    try:
        import torch
    except ImportError as err:
        raise Skip("torch is not installed") from err
    make = _need(workload, "torch")
    device = "cuda" if jax.default_backend() == "gpu" and torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    model = make().to(device)
    forward = torch.compile(model) if compiled else model
    opt = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)
    b = data.batch
    x = torch.from_numpy(workload.torch_layout(data.x)).to(device)
    if workload.loss == "xent":
        y = torch.from_numpy(data.y.astype(np.int64)).to(device)
        loss = torch.nn.functional.cross_entropy
    else:
        y = torch.from_numpy(data.y).to(device)
        loss = torch.nn.functional.mse_loss
    batches = itertools.cycle(
        [(x[i * b : (i + 1) * b], y[i * b : (i + 1) * b]) for i in range(len(data.batches))]
    )

    def call():
        xb, yb = next(batches)
        opt.zero_grad(set_to_none=True)
        value = loss(forward(xb), yb)
        value.backward()
        opt.step()

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    note = f"{torch.get_num_threads()} threads" if device == "cpu" else "cuda"
    return Runner(call, sync, note=note)


def build_torch(workload: Workload, data: Data) -> Runner:
    return _build_torch(workload, data, compiled=False)


def build_torch_compile(workload: Workload, data: Data) -> Runner:
    return _build_torch(workload, data, compiled=True)


BUILDERS: dict[str, Callable[[Workload, Data], Runner]] = {
    "jax": build_jax,
    "jax_fused": build_jax_fused,
    "funcnet": build_funcnet,
    "funcnet_fused": build_funcnet_fused,
    "flax_linen": build_flax_linen,
    "flax_nnx": build_flax_nnx,
    "haiku": build_haiku,
    "equinox": build_equinox,
    "torch": build_torch,
    "torch_compile": build_torch_compile,
}
