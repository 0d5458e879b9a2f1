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
- :mod:`~funcnet.distributed.rules`: logical axis names on every param
  (:func:`logical_axes`), :class:`Rules` mapping them to mesh axes (presets
  :func:`data_parallel`, :func:`fsdp_rules`, :func:`tensor_parallel`), and the
  resulting shardings (:func:`param_shardings`, :func:`train_state_shardings`);
  ``fit(..., mesh=, param_sharding=rules)`` trains on a ``("data", "model")``
  mesh with them.

For explicit collectives, :func:`funcnet.training.train_step` takes an
``axis_name`` and then runs under ``jax.shard_map`` or ``jax.pmap``.

Checkpoints with several processes: every process calls ``save`` with the
same tree. State replicated over the processes is written once, by process 0
(:func:`is_main_process`); state sharded over the processes (FSDP, tensor
parallel) becomes a sharded checkpoint, a directory in which each process
writes only its own shards, committed atomically, restorable onto any mesh
and process count (see :mod:`funcnet.checkpoint`).
"""

from funcnet.distributed.batches import global_batch, local_batches
from funcnet.distributed.grads import per_example_grad_norms, per_example_grads
from funcnet.distributed.mesh import (
    DATA_AXIS,
    FSDP_AXIS,
    auto_mesh,
    batch_devices,
    batch_sharding,
    batch_spec,
    check_divisible,
    check_mesh,
    fsdp_spec,
    make_mesh,
    on_mesh,
    per_device_bytes,
    place,
    state_shardings,
)
from funcnet.distributed.processes import (
    ProcessResult,
    detect_cluster,
    free_port,
    initialize,
    is_main_process,
    launch,
)
from funcnet.distributed.rules import (
    LOGICAL_AXES,
    Rules,
    data_parallel,
    fsdp_rules,
    logical_axes,
    opt_state_specs,
    param_shardings,
    param_specs,
    resolve_rules,
    tensor_parallel,
    train_state_shardings,
)

__all__ = [
    "DATA_AXIS",
    "FSDP_AXIS",
    "LOGICAL_AXES",
    "ProcessResult",
    "Rules",
    "auto_mesh",
    "batch_devices",
    "batch_sharding",
    "batch_spec",
    "check_divisible",
    "check_mesh",
    "data_parallel",
    "detect_cluster",
    "fsdp_rules",
    "fsdp_spec",
    "free_port",
    "global_batch",
    "initialize",
    "is_main_process",
    "launch",
    "local_batches",
    "logical_axes",
    "make_mesh",
    "on_mesh",
    "opt_state_specs",
    "param_shardings",
    "param_specs",
    "per_device_bytes",
    "per_example_grad_norms",
    "per_example_grads",
    "place",
    "resolve_rules",
    "state_shardings",
    "tensor_parallel",
    "train_state_shardings",
]
