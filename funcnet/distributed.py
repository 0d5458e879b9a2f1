"""Many devices and many processes: meshes, shardings, multi-process setup, per-example gradients.

funcnet trains on several devices the way JAX recommends: the pure step is
compiled with ``jax.jit`` over arrays sharded on a :class:`jax.sharding.Mesh`
(the batch split over a ``"data"`` axis, the train state replicated or
FSDP-sharded), and the compiler inserts the collectives. The same code runs
on one device, on N devices and on N processes (``jax.distributed``); one
argument switches it on::

    mesh = distributed.make_mesh()                   # all devices, one "data" axis
    ts, history = fit(model, optimizer, loss, (x, y), batch_size=256, mesh=mesh)

Pieces:

- :func:`make_mesh`: a ``("data",)`` mesh, or ``("data", "fsdp")`` for
  sharded parameters, over all devices, a count or a list.
- :func:`state_shardings` / :func:`place`: replicated or FSDP shardings of a
  pytree (FSDP: every array split along its largest dimension divisible by the
  axis size, replicated when none is) and placing a pytree on them.
- :func:`batch_sharding` / :func:`global_batch` / :func:`local_batches`:
  each process reads only its rows of every global batch and
  :func:`global_batch` assembles the global array
  (``jax.make_array_from_process_local_data``).
- :func:`initialize` / :func:`launch`: ``jax.distributed.initialize`` from
  arguments or environment variables, and starting N local processes (tests,
  a laptop) that fail loudly instead of hanging when one of them dies.
- :func:`per_example_grads` / :func:`per_example_grad_norms`: per-example
  gradients with ``jax.vmap`` (differential privacy, data valuation).

For explicit collectives, :func:`funcnet.train.train_step` takes an
``axis_name`` and then runs under ``jax.shard_map`` or ``jax.pmap``.

Checkpoints with several processes: every process calls ``save`` (gathering
FSDP-sharded arrays is a collective) and only process 0 writes
(:func:`is_main_process`); every process restores the same file and
:func:`place` puts the state back on the mesh.
"""

from __future__ import annotations

import math
import os
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

__all__ = [
    "DATA_AXIS",
    "FSDP_AXIS",
    "ProcessResult",
    "batch_sharding",
    "batch_spec",
    "fsdp_spec",
    "free_port",
    "global_batch",
    "initialize",
    "is_main_process",
    "launch",
    "local_batches",
    "make_mesh",
    "per_device_bytes",
    "per_example_grad_norms",
    "per_example_grads",
    "place",
    "state_shardings",
]

DATA_AXIS = "data"
FSDP_AXIS = "fsdp"
_BATCH_AXES = (DATA_AXIS, FSDP_AXIS)
_SHARDINGS = ("replicated", "fsdp")

Pytree = Any


# ----------------------------------------------------------------------------- meshes


def _axis_type(axis_types) -> AxisType:
    if isinstance(axis_types, AxisType):
        return axis_types
    if isinstance(axis_types, str) and axis_types.lower() in ("auto", "explicit"):
        return AxisType.Auto if axis_types.lower() == "auto" else AxisType.Explicit
    raise ValueError(
        f"make_mesh: `axis_types` must be 'auto', 'explicit' or a jax.sharding.AxisType, got "
        f"{axis_types!r}."
    )


def make_mesh(
    devices: int | Sequence[jax.Device] | None = None,
    *,
    fsdp: int = 1,
    axis_types: str | AxisType = "auto",
) -> Mesh:
    """A data-parallel mesh: a ``"data"`` axis, plus an ``"fsdp"`` axis when ``fsdp > 1``.

    With ``fsdp > 1`` the mesh is ``(len(devices) // fsdp, fsdp)`` over
    ``("data", "fsdp")``: the batch is split over both axes (every device
    computes on its own rows) and parameters sharded with
    ``param_sharding="fsdp"`` are split over ``"fsdp"``.

    Args:
        devices: ``None`` for every device (of every process), a count ``n``
            for the first ``n`` of ``jax.devices()``, or a list of devices.
        fsdp: size of the ``"fsdp"`` axis; must divide the number of devices.
        axis_types: ``"auto"`` (the compiler propagates shardings; the default
            here), ``"explicit"`` (shardings are part of the array types,
            JAX's own default since 0.9) or a ``jax.sharding.AxisType``.
            :func:`funcnet.fit` gives the same results with both.

    Returns:
        A :class:`jax.sharding.Mesh`.

    Raises:
        ValueError: for a device count outside ``[1, len(jax.devices())]``, an
            empty list, or an ``fsdp`` that does not divide the device count.

    Examples:
        >>> mesh = make_mesh(1)
        >>> mesh.axis_names, mesh.devices.shape
        (('data',), (1,))
        >>> make_mesh(1, axis_types="explicit").axis_types
        (Explicit,)
    """
    available = jax.devices()
    if devices is None:
        chosen = list(available)
    elif isinstance(devices, (int, np.integer)) and not isinstance(devices, bool):
        if not 1 <= devices <= len(available):
            raise ValueError(
                f"make_mesh: asked for {devices} devices, but {len(available)} are available; "
                f"pass a count in [1, {len(available)}] (on CPU, more virtual devices come from "
                "`XLA_FLAGS=--xla_force_host_platform_device_count=N` or "
                "`jax.config.update('jax_num_cpu_devices', N)` before JAX starts)."
            )
        chosen = available[: int(devices)]
    else:
        chosen = list(devices)
        if not chosen:
            raise ValueError("make_mesh: `devices` is an empty list; pass None for all devices.")
    if isinstance(fsdp, bool) or not isinstance(fsdp, (int, np.integer)) or fsdp < 1:
        raise ValueError(f"make_mesh: `fsdp` must be an int >= 1, got {fsdp!r}.")
    if len(chosen) % fsdp:
        raise ValueError(
            f"make_mesh: `fsdp={fsdp}` does not divide the {len(chosen)} devices; use a divisor "
            f"of {len(chosen)}."
        )
    kind = _axis_type(axis_types)
    if fsdp == 1:
        shape, names = (len(chosen),), (DATA_AXIS,)
    else:
        shape, names = (len(chosen) // fsdp, int(fsdp)), (DATA_AXIS, FSDP_AXIS)
    return jax.make_mesh(shape, names, axis_types=(kind,) * len(names), devices=chosen)


def _check_mesh(mesh, where: str) -> Mesh:
    if not isinstance(mesh, Mesh):
        raise TypeError(
            f"{where}: `mesh` must be a jax.sharding.Mesh (e.g. `distributed.make_mesh()`), got "
            f"{type(mesh).__name__}."
        )
    if DATA_AXIS not in mesh.axis_names:
        raise ValueError(
            f"{where}: the mesh needs a {DATA_AXIS!r} axis to split the batch over, got axes "
            f"{mesh.axis_names}; build it with `distributed.make_mesh()` or name an axis "
            f"{DATA_AXIS!r}."
        )
    return mesh


def _auto_mesh(mesh: Mesh) -> Mesh:
    """The same devices and axes with ``Auto`` axis types (fit's internal mesh)."""
    if all(t == AxisType.Auto for t in mesh.axis_types):
        return mesh
    return Mesh(mesh.devices, mesh.axis_names, axis_types=(AxisType.Auto,) * len(mesh.axis_names))


def _batch_axes(mesh: Mesh) -> tuple[str, ...]:
    return tuple(a for a in _BATCH_AXES if a in mesh.axis_names)


def _batch_devices(mesh: Mesh) -> int:
    """How many parts the batch is split into (the product of the batch axes' sizes)."""
    return math.prod(mesh.shape[a] for a in _batch_axes(mesh))


def batch_spec(mesh: Mesh) -> P:
    """The ``PartitionSpec`` of a batch: the leading axis split over ``"data"`` (and ``"fsdp"``).

    Examples:
        >>> tuple(batch_spec(make_mesh(1)))
        ('data',)
    """
    axes = _batch_axes(_check_mesh(mesh, "batch_spec"))
    return P(axes[0]) if len(axes) == 1 else P(axes)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """The ``NamedSharding`` of a batch on ``mesh`` (see :func:`batch_spec`).

    Examples:
        >>> batch_sharding(make_mesh(1)).spec == P("data")
        True
    """
    return NamedSharding(mesh, batch_spec(mesh))


def _check_divisible(rows: int, mesh: Mesh, where: str, what: str, hint: str = "") -> None:
    parts = _batch_devices(mesh)
    if rows % parts:
        low = max(parts, rows // parts * parts)
        raise ValueError(
            f"{where}: {what} {rows} is not divisible by the {parts} devices the batch is split "
            f"over (mesh axes {_batch_axes(mesh)}); use a multiple of {parts}, e.g. {low} or "
            f"{low + parts}{hint}."
        )


# ----------------------------------------------------------------------------- shardings


def fsdp_spec(shape: Sequence[int], size: int, axis: str = FSDP_AXIS) -> P:
    """Split an array of ``shape`` over ``axis`` along its largest dimension divisible by ``size``.

    Ties go to the first such dimension; an array with no divisible dimension
    (scalars, odd sizes) is replicated (``P()``).

    Examples:
        >>> tuple(fsdp_spec((784, 512), 4))
        ('fsdp', None)
        >>> tuple(fsdp_spec((3, 512), 4, axis="data"))
        (None, 'data')
        >>> tuple(fsdp_spec((3,), 4))
        ()
    """
    shape = tuple(int(d) for d in shape)
    if size <= 1:
        return P()
    best = None
    for i, d in enumerate(shape):
        if d % size == 0 and d >= size and (best is None or d > shape[best]):
            best = i
    if best is None:
        return P()
    return P(*(axis if i == best else None for i in range(len(shape))))


def _is_key(leaf) -> bool:
    return isinstance(leaf, jax.Array) and jnp.issubdtype(leaf.dtype, jax.dtypes.prng_key)


def state_shardings(tree: Pytree, mesh: Mesh, mode: str = "replicated") -> Pytree:
    """A ``NamedSharding`` for every leaf of ``tree`` (e.g. a ``TrainState``).

    Args:
        tree: a pytree of arrays (or ``jax.ShapeDtypeStruct``).
        mesh: the mesh.
        mode: ``"replicated"``: every device holds every array (``P()``).
            ``"fsdp"``: every array is split along its largest dimension
            divisible by the size of the ``"fsdp"`` axis (or of ``"data"`` when
            the mesh has no ``"fsdp"`` axis) and replicated over the other
            axes; arrays without such a dimension are replicated.

    Memory: with ``"fsdp"`` over ``k`` devices the params and the optimizer
    state (Adam: two more copies of the params) take about ``1/k`` of their
    replicated size on each device between steps; during a step the compiler
    gathers the parameters a layer needs (the activations are split over the
    batch either way). :func:`per_device_bytes` measures it: an MLP of 784-512-
    512-10 with Adam holds 8.0 MB per device replicated and 2.0 MB with
    ``fsdp=4``.

    Raises:
        ValueError: for an unknown ``mode``.

    Examples:
        >>> mesh = make_mesh(1)
        >>> s = state_shardings({"w": jnp.zeros((4, 2))}, mesh, "fsdp")
        >>> tuple(s["w"].spec)  # one device: nothing to split
        ()
    """
    if mode not in _SHARDINGS:
        raise ValueError(
            f"state_shardings: `mode` must be 'replicated' or 'fsdp', got {mode!r}; 'fsdp' "
            "splits every array over the mesh's 'fsdp' axis (or 'data' without one)."
        )
    if mode == "replicated":
        return jax.tree.map(lambda _: NamedSharding(mesh, P()), tree)
    axis = FSDP_AXIS if FSDP_AXIS in mesh.axis_names else DATA_AXIS
    size = mesh.shape[axis]
    return jax.tree.map(lambda a: NamedSharding(mesh, fsdp_spec(np.shape(a), size, axis)), tree)


def place(tree: Pytree, shardings: Pytree | jax.sharding.Sharding) -> Pytree:
    """A copy of ``tree`` placed on ``shardings`` (one sharding, or a tree of them).

    Unlike a bare ``jax.device_put`` the result never aliases ``tree``'s
    buffers, so it can be donated to a compiled step without deleting the
    caller's arrays; typed random keys are placed through their key data.
    With several processes every process must pass the same values (host
    arrays or replicated arrays).

    Examples:
        >>> mesh = make_mesh(1)
        >>> tree = {"w": jnp.ones(3), "key": jax.random.key(0)}
        >>> placed = place(tree, NamedSharding(mesh, P()))
        >>> tuple(placed["w"].sharding.spec), placed["w"] is tree["w"]
        ((), False)
    """
    if isinstance(shardings, jax.sharding.Sharding):
        shardings = jax.tree.map(lambda _: shardings, tree)

    def put(leaf, sharding):
        if _is_key(leaf):
            data = place(jax.random.key_data(leaf), sharding)
            return jax.random.wrap_key_data(data, impl=jax.random.key_impl(leaf))
        if isinstance(leaf, jax.Array):
            if leaf.is_fully_addressable:
                leaf = jnp.copy(leaf)
            elif leaf.sharding == sharding:
                return jax.jit(jnp.copy, out_shardings=sharding)(leaf)
        else:
            leaf = np.array(leaf)
        return jax.device_put(leaf, sharding)

    return jax.tree.map(put, tree, shardings)


def _on_mesh(tree: Pytree, mesh: Mesh) -> Pytree:
    """``tree`` on ``mesh``: leaves already there kept, those on an equal mesh of another axis
    type moved with their spec, all others placed replicated."""
    rep = NamedSharding(mesh, P())

    def fix(leaf):
        sharding = getattr(leaf, "sharding", None)
        if isinstance(sharding, NamedSharding):
            if sharding.mesh == mesh:
                return leaf
            other = sharding.mesh
            if other.axis_names == mesh.axis_names and np.array_equal(other.devices, mesh.devices):
                return place(leaf, NamedSharding(mesh, sharding.spec))
        return place(leaf, rep)

    return jax.tree.map(fix, tree)


def per_device_bytes(tree: Pytree) -> int:
    """The largest number of bytes of ``tree``'s arrays held by any one device.

    Examples:
        >>> per_device_bytes({"w": jnp.zeros((4, 2)), "b": jnp.zeros(2)})
        40
    """
    totals: dict = {}
    for leaf in jax.tree.leaves(tree):
        if _is_key(leaf):
            leaf = jax.random.key_data(leaf)
        for shard in leaf.addressable_shards:
            totals[shard.device] = totals.get(shard.device, 0) + shard.data.nbytes
    return max(totals.values(), default=0)


# ----------------------------------------------------------------------------- batches


def global_batch(local: Pytree, mesh: Mesh) -> Pytree:
    """The global batch array from this process's rows, split over the mesh's batch axes.

    With one process ``local`` is the whole batch; with several, each process
    passes its own consecutive block of rows (process ``p`` holds rows
    ``p * n_local`` to ``(p + 1) * n_local`` of the global batch, see
    :func:`local_batches`) and the global leading size is
    ``n_local * jax.process_count()``. Built with
    ``jax.make_array_from_process_local_data``.

    Raises:
        ValueError: when the global batch size is not divisible by the number
            of devices the batch is split over.

    Examples:
        >>> batch = global_batch((np.ones((4, 2), np.float32), np.zeros(4, np.int32)), make_mesh(1))
        >>> batch[0].shape, tuple(batch[0].sharding.spec)
        ((4, 2), ('data',))
    """
    return _global_batch(local, mesh, "global_batch")


def _global_batch(local: Pytree, mesh: Mesh, where: str) -> Pytree:
    sharding = batch_sharding(_check_mesh(mesh, where))
    leaves = jax.tree.leaves(local)
    if not leaves:
        raise ValueError(f"{where}: the batch has no arrays.")
    rows = {np.shape(a)[0] if np.ndim(a) else None for a in leaves}
    if None in rows or len(rows) != 1:
        raise ValueError(
            f"{where}: every array of the batch needs the same leading (batch) size, got "
            f"{sorted(map(str, rows))}."
        )
    total = rows.pop() * jax.process_count()
    hint = " (for the last batch of an epoch: `batches(..., drop_remainder=True)`)"
    _check_divisible(total, mesh, where, "the global batch size", hint)

    def make(a):
        if isinstance(a, jax.Array) and not a.is_fully_addressable:
            return a  # already global
        return jax.make_array_from_process_local_data(sharding, np.asarray(a))

    return jax.tree.map(make, local)


def local_batches(
    arrays: Pytree,
    global_batch_size: int,
    *,
    key: jax.Array | None = None,
    shuffle: bool = False,
    process_index: int | None = None,
    process_count: int | None = None,
) -> Iterator[Pytree]:
    """This process's rows of every global batch; only those rows of ``arrays`` are read.

    All processes draw the same order (the same ``key``), cut it into global
    batches of ``global_batch_size`` and process ``p`` of ``P`` takes rows
    ``p * b`` to ``(p + 1) * b`` of each, ``b = global_batch_size // P``;
    pass each to :func:`global_batch`. ``arrays`` may be numpy memory maps, so
    a process reads only its part of a dataset on disk. The last partial
    global batch is dropped (every process needs equally many rows).

    Args:
        arrays: a pytree of equally long arrays, e.g. ``(x, y)``.
        global_batch_size: rows per global batch, a multiple of the process count.
        key: a random key (needed for ``shuffle=True``; the same on every process).
        shuffle: use ``jax.random.permutation(key, n)`` as the order.
        process_index, process_count: default ``jax.process_index()`` and
            ``jax.process_count()``.

    Raises:
        ValueError: for a bad batch size, one not divisible by the process
            count, ``shuffle`` without ``key`` or arrays of different lengths.

    Examples:
        >>> x = np.arange(10)
        >>> [b.tolist() for b in local_batches(x, 4, process_index=1, process_count=2)]
        [[2, 3], [6, 7]]
    """
    p = jax.process_index() if process_index is None else int(process_index)
    count = jax.process_count() if process_count is None else int(process_count)
    if isinstance(global_batch_size, bool) or not isinstance(global_batch_size, int):
        raise ValueError(
            f"local_batches: `global_batch_size` must be an int, got {global_batch_size!r}."
        )
    if global_batch_size < count or global_batch_size % count:
        fix = max(count, global_batch_size // count * count)
        raise ValueError(
            f"local_batches: `global_batch_size={global_batch_size}` must be a positive "
            f"multiple of the {count} processes; use e.g. {fix}."
        )
    if not 0 <= p < count:
        raise ValueError(f"local_batches: `process_index={p}` is not in [0, {count}).")
    leaves, treedef = jax.tree.flatten(arrays)
    lengths = {len(a) for a in leaves}
    if len(lengths) != 1:
        raise ValueError(
            f"local_batches: the arrays must have the same length, got lengths {sorted(lengths)}."
        )
    n = lengths.pop()
    if shuffle and key is None:
        raise ValueError("local_batches: `shuffle=True` needs a `key` (the same on every process).")
    order = np.asarray(jax.random.permutation(key, n)) if shuffle else np.arange(n)
    per = global_batch_size // count

    def generate():
        for start in range(0, n - global_batch_size + 1, global_batch_size):
            rows = order[start + p * per : start + (p + 1) * per]
            yield treedef.unflatten([leaf[rows] for leaf in leaves])

    return generate()


# ----------------------------------------------------------------------------- per example


def per_example_grads(loss_fn: Callable, params: Pytree, batch: Pytree) -> Pytree:
    """The gradient of ``loss_fn`` for every example of ``batch`` separately, with ``jax.vmap``.

    ``loss_fn(params, batch) -> scalar`` is called on batches of one example
    (each leaf keeps a leading axis of size 1, so models and losses that
    expect a batch work unchanged). The result has the structure of ``params``
    with a leading axis of the batch size. Memory grows with batch size x
    parameter count; for large models split the batch.

    Examples:
        >>> import funcnet as fn
        >>> model = fn.Dense(1)
        >>> params, state = model.init(jax.random.key(0), jnp.zeros((1, 3)))
        >>> def loss_fn(p, batch):
        ...     x, y = batch
        ...     return fn.losses.mean_squared_error(model.apply(p, state, x)[0], y)
        >>> x, y = jnp.ones((5, 3)), jnp.zeros((5, 1))
        >>> grads = per_example_grads(loss_fn, params, (x, y))
        >>> grads["w"].shape
        (5, 3, 1)
        >>> mean = jax.tree.map(lambda g: g.mean(0), grads)  # == the batch gradient
        >>> bool(jnp.allclose(mean["w"], jax.grad(loss_fn)(params, (x, y))["w"]))
        True
        >>> per_example_grad_norms(grads).shape
        (5,)
    """
    if not callable(loss_fn):
        raise TypeError(
            f"per_example_grads: `loss_fn` must be a function `(params, batch) -> scalar`, got "
            f"{type(loss_fn).__name__}."
        )
    leaves = jax.tree.leaves(batch)
    if not leaves or any(np.ndim(a) == 0 for a in leaves):
        raise ValueError(
            "per_example_grads: every array of `batch` needs a leading batch axis, got "
            f"shapes {[np.shape(a) for a in leaves]}."
        )
    grad = jax.grad(loss_fn)

    def one(example):
        return grad(params, jax.tree.map(lambda a: a[None], example))

    return jax.vmap(one)(batch)


def per_example_grad_norms(grads: Pytree) -> jax.Array:
    """The global L2 norm of each example's gradient (over every leaf), shape ``(batch,)``.

    ``grads`` is the output of :func:`per_example_grads`.

    Examples:
        >>> per_example_grad_norms({"w": jnp.array([[3.0, 4.0], [0.0, 1.0]])})
        Array([5., 1.], dtype=float32)
    """
    leaves = jax.tree.leaves(grads)
    if not leaves:
        raise ValueError("per_example_grad_norms: `grads` has no arrays.")
    squares = [jnp.sum(jnp.reshape(g, (g.shape[0], -1)) ** 2, axis=1) for g in leaves]
    return jnp.sqrt(sum(squares[1:], squares[0]))


# ----------------------------------------------------------------------------- processes


def _env_int(name: str, value, where: str) -> int | None:
    if value is not None:
        return value
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return None
    try:
        return int(raw)
    except ValueError:
        raise ValueError(
            f"{where}: environment variable {name}={raw!r} is not an integer; set it to a number."
        ) from None


def initialize(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    *,
    coordinator_bind_address: str | None = None,
    cpu_devices: int | None = None,
    initialization_timeout: int = 300,
    heartbeat_timeout_seconds: int = 100,
) -> tuple[int, int]:
    """Start JAX's multi-process runtime (``jax.distributed.initialize``); ``(process_id, count)``.

    Each argument left None is read from the environment:
    ``JAX_COORDINATOR_ADDRESS`` (``host:port`` of process 0),
    ``JAX_NUM_PROCESSES``, ``JAX_PROCESS_ID`` and ``JAX_COORDINATOR_BIND_ADDRESS``
    (JAX itself reads ``JAX_NUM_CPU_DEVICES`` when it is imported). Without a coordinator
    address and a process count (or with one process) nothing is started and
    the program runs as one process, so the same script serves both. Call it
    first, before any other JAX operation. CPU processes use the gloo
    collectives.

    Args:
        coordinator_address: ``"host:port"`` of process 0's coordinator.
        num_processes: how many processes take part.
        process_id: this process's index in ``[0, num_processes)``.
        coordinator_bind_address: the address process 0 listens on (e.g.
            ``"127.0.0.1:PORT"`` to stay on the loopback interface).
        cpu_devices: virtual CPU devices for this process (CPU only).
        initialization_timeout: seconds to wait for every process to join.
        heartbeat_timeout_seconds: seconds after which a silent process is
            declared dead (and the others stop with an error).

    Returns:
        ``(jax.process_index(), jax.process_count())``.

    Raises:
        ValueError: for an incomplete or inconsistent setting, or
            ``cpu_devices`` asked for after JAX started.

    Examples:
        >>> initialize()  # nothing configured: one process
        (0, 1)
    """
    where = "initialize"
    coordinator_address = coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS") or None
    coordinator_bind_address = (
        coordinator_bind_address or os.environ.get("JAX_COORDINATOR_BIND_ADDRESS") or None
    )
    num_processes = _env_int("JAX_NUM_PROCESSES", num_processes, where)
    process_id = _env_int("JAX_PROCESS_ID", process_id, where)
    if cpu_devices is not None and cpu_devices != jax.config.jax_num_cpu_devices:
        if cpu_devices < 1:
            raise ValueError(f"{where}: `cpu_devices` must be >= 1, got {cpu_devices}.")
        try:
            jax.config.update("jax_num_cpu_devices", int(cpu_devices))
        except RuntimeError as err:
            raise ValueError(
                f"{where}: `cpu_devices={cpu_devices}` must be set before JAX starts ({err}); "
                "call `initialize` first in the program."
            ) from None
    if jax.distributed.is_initialized():
        return jax.process_index(), jax.process_count()
    if num_processes is None and coordinator_address is None:
        return 0, 1
    if num_processes is not None and num_processes < 1:
        raise ValueError(f"{where}: `num_processes` must be >= 1, got {num_processes}.")
    if num_processes == 1:
        return 0, 1
    missing = [
        name
        for name, value in (
            ("coordinator_address (JAX_COORDINATOR_ADDRESS)", coordinator_address),
            ("num_processes (JAX_NUM_PROCESSES)", num_processes),
            ("process_id (JAX_PROCESS_ID)", process_id),
        )
        if value is None
    ]
    if missing:
        raise ValueError(
            f"{where}: several processes need a coordinator address, a process count and a "
            f"process id; missing {', '.join(missing)}. Pass them or set the environment "
            "variables."
        )
    if not 0 <= process_id < num_processes:
        raise ValueError(
            f"{where}: `process_id={process_id}` must be in [0, {num_processes}) for "
            f"`num_processes={num_processes}`."
        )
    jax.distributed.initialize(
        coordinator_address=coordinator_address,
        num_processes=num_processes,
        process_id=process_id,
        coordinator_bind_address=coordinator_bind_address,
        initialization_timeout=initialization_timeout,
        heartbeat_timeout_seconds=heartbeat_timeout_seconds,
    )
    return jax.process_index(), jax.process_count()


def is_main_process() -> bool:
    """True in process 0 (the one that writes checkpoints, logs and files).

    Examples:
        >>> is_main_process()
        True
    """
    return jax.process_index() == 0


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that is free now (for a local coordinator).

    Examples:
        >>> 0 < free_port() < 65536
        True
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class ProcessResult(NamedTuple):
    """One process of :func:`launch`: its id, exit code and output (stdout and stderr)."""

    process_id: int
    returncode: int
    output: str


def _tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def launch(
    argv: Sequence[str],
    num_processes: int = 2,
    *,
    cpu_devices: int | None = None,
    timeout: float = 300.0,
    port: int | None = None,
    env: Mapping[str, str] | None = None,
) -> list[ProcessResult]:
    """Run ``argv`` as ``num_processes`` processes on this machine, joined by ``127.0.0.1``.

    Each process gets ``JAX_COORDINATOR_ADDRESS``,
    ``JAX_COORDINATOR_BIND_ADDRESS`` (``127.0.0.1:port``, a free port by
    default), ``JAX_NUM_PROCESSES``, ``JAX_PROCESS_ID`` and, with
    ``cpu_devices``, ``JAX_NUM_CPU_DEVICES``, so a script that calls
    :func:`initialize` first joins the others. For tests and trying
    multi-process code on one machine; on a cluster start one process per host
    with the same variables.

    When a process exits with an error the others are stopped (only the
    processes started here) and a ``RuntimeError`` names it and shows the end
    of its output, instead of the others waiting for it until JAX's own
    timeouts.

    Args:
        argv: the command, e.g. ``[sys.executable, "train.py"]``.
        num_processes: how many processes.
        cpu_devices: virtual CPU devices per process.
        timeout: seconds for the whole run.
        port: the coordinator's port (default: a free one).
        env: extra environment variables.

    Returns:
        One :class:`ProcessResult` per process, in process order, all with
        exit code 0.

    Raises:
        RuntimeError: when a process fails (the others are stopped).
        TimeoutError: when the run takes longer than ``timeout`` (all stopped).
        ValueError: for ``num_processes < 1`` or an empty ``argv``.
    """
    if isinstance(num_processes, bool) or not isinstance(num_processes, int) or num_processes < 1:
        raise ValueError(f"launch: `num_processes` must be an int >= 1, got {num_processes!r}.")
    argv = [str(a) for a in argv]
    if not argv:
        raise ValueError("launch: `argv` is empty; pass a command, e.g. [sys.executable, 'x.py'].")
    port = free_port() if port is None else int(port)
    base = dict(os.environ)
    base.update(env or {})
    address = f"127.0.0.1:{port}"
    base.update(
        JAX_COORDINATOR_ADDRESS=address,
        JAX_COORDINATOR_BIND_ADDRESS=address,
        JAX_NUM_PROCESSES=str(num_processes),
    )
    if cpu_devices is not None:
        base["JAX_NUM_CPU_DEVICES"] = str(int(cpu_devices))
    logs, procs = [], []
    try:
        for i in range(num_processes):
            log = tempfile.TemporaryFile(mode="w+b")  # noqa: SIM115 - closed below
            logs.append(log)
            procs.append(
                subprocess.Popen(
                    argv,
                    env={**base, "JAX_PROCESS_ID": str(i)},
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                )
            )
        deadline = time.monotonic() + timeout
        failed = None
        while True:
            codes = [p.poll() for p in procs]
            failed = next((i for i, c in enumerate(codes) if c not in (None, 0)), None)
            if failed is not None or all(c == 0 for c in codes):
                break
            if time.monotonic() > deadline:
                break
            time.sleep(0.05)
    finally:
        for p in procs:  # only the processes started above
            if p.poll() is None:
                p.terminate()
        for p in procs:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
    outputs = []
    for log in logs:
        log.seek(0)
        outputs.append(log.read().decode(errors="replace"))
        log.close()
    results = [ProcessResult(i, p.returncode, o) for i, (p, o) in enumerate(zip(procs, outputs))]
    if failed is not None:
        r = results[failed]
        raise RuntimeError(
            f"launch: process {failed} of {num_processes} exited with code {r.returncode}; "
            f"stopped the other processes. Its output ended with:\n{_tail(r.output)}"
        )
    if any(r.returncode != 0 for r in results):
        raise TimeoutError(
            f"launch: the {num_processes} processes did not finish within {timeout} s; stopped "
            f"them. Process 0's output ended with:\n{_tail(results[0].output)}"
        )
    return results
