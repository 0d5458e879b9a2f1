"""Meshes, shardings and placing pytrees on them (replicated or FSDP)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

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


def check_mesh(mesh, where: str) -> Mesh:
    """``mesh`` when it is a :class:`~jax.sharding.Mesh` with a ``"data"`` axis; else a
    clear error starting with ``where``.

    Examples:
        >>> check_mesh(make_mesh(1), "fit").axis_names
        ('data',)
        >>> check_mesh("cpu", "fit")
        Traceback (most recent call last):
        ...
        TypeError: fit: `mesh` must be a jax.sharding.Mesh (...), got str.
    """
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


def auto_mesh(mesh: Mesh) -> Mesh:
    """The same devices and axes with ``Auto`` axis types (fit's internal mesh).

    Examples:
        >>> auto_mesh(make_mesh(1, axis_types="explicit")).axis_types == (AxisType.Auto,)
        True
    """
    if all(t == AxisType.Auto for t in mesh.axis_types):
        return mesh
    return Mesh(mesh.devices, mesh.axis_names, axis_types=(AxisType.Auto,) * len(mesh.axis_names))


def _batch_axes(mesh: Mesh) -> tuple[str, ...]:
    return tuple(a for a in _BATCH_AXES if a in mesh.axis_names)


def batch_devices(mesh: Mesh) -> int:
    """How many parts the batch is split into (the product of the batch axes' sizes).

    Examples:
        >>> batch_devices(make_mesh(1))
        1
    """
    return math.prod(mesh.shape[a] for a in _batch_axes(mesh))


def batch_spec(mesh: Mesh) -> P:
    """The ``PartitionSpec`` of a batch: the leading axis split over ``"data"`` (and ``"fsdp"``).

    Examples:
        >>> tuple(batch_spec(make_mesh(1)))
        ('data',)
    """
    axes = _batch_axes(check_mesh(mesh, "batch_spec"))
    return P(axes[0]) if len(axes) == 1 else P(axes)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """The ``NamedSharding`` of a batch on ``mesh`` (see :func:`batch_spec`).

    Examples:
        >>> batch_sharding(make_mesh(1)).spec == P("data")
        True
    """
    return NamedSharding(mesh, batch_spec(mesh))


def check_divisible(rows: int, mesh: Mesh, where: str, what: str, hint: str = "") -> None:
    """Raise a ValueError (``where: what rows is not divisible ...``, with the nearest
    fitting sizes and ``hint``) unless ``rows`` splits evenly over the batch devices."""
    parts = batch_devices(mesh)
    if rows % parts:
        low = max(parts, rows // parts * parts)
        raise ValueError(
            f"{where}: {what} {rows} is not divisible by the {parts} devices the batch is split "
            f"over (mesh axes {_batch_axes(mesh)}); use a multiple of {parts}, e.g. {low} or "
            f"{low + parts}{hint}."
        )


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


def on_mesh(tree: Pytree, mesh: Mesh) -> Pytree:
    """``tree`` on ``mesh``: leaves already there kept, those on an equal mesh of another axis
    type moved with their spec, all others placed replicated.

    Examples:
        >>> mesh = make_mesh(1)
        >>> tuple(on_mesh({"w": jnp.ones(2)}, mesh)["w"].sharding.spec)
        ()
    """
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
