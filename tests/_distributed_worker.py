"""One process of the multi-process test, and the training runs it shares with that test.

``python tests/_distributed_worker.py OUT_DIR [--die]`` (started by
``funcnet.distributed.launch``, which sets the ``JAX_*`` variables that
``distributed.initialize`` reads): joins the other processes, trains the model
below data-parallel on the mesh of every process's devices (in memory, and
from per-process batches) and writes the parameters to
``OUT_DIR/params_<process>.npz``. ``tests/test_distributed.py`` runs the same
functions on one device as the reference. With ``--die`` process 1 exits with
code 3 instead, to test that the launcher stops the others.
"""

import os
import sys

import numpy as np
import optax

import funcnet as fn
from funcnet import distributed

LOSS = "sparse_categorical_cross_entropy"


def data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(96, 6)).astype(np.float32)
    y = (x[:, 0] + x[:, 1] > 0).astype(np.int32)
    return x, y


def model():
    return fn.serial(fn.Dense(16), fn.BatchNorm(), fn.relu, fn.Dense(2))


def fit_in_memory(mesh=None):
    """Two epochs on arrays (the same on every process), two steps fused per call."""
    ts, _ = fn.fit(
        model(), optax.sgd(0.1), LOSS, data(), epochs=2, batch_size=16, mesh=mesh,
        steps_per_execution=2, verbose=0,
    )  # fmt: skip
    return ts


def fit_local_batches(mesh=None, process=0, count=1):
    """One epoch in which each process reads only its rows of every global batch of 16."""
    import jax

    batches = list(
        distributed.local_batches(
            data(), 16, key=jax.random.key(3), shuffle=True, process_index=process,
            process_count=count,
        )
    )  # fmt: skip
    ts, _ = fn.fit(model(), optax.sgd(0.1), LOSS, batches, mesh=mesh, verbose=0)
    return ts


def param_leaves(ts):
    import jax

    return [np.asarray(a) for a in jax.tree.leaves((ts.params, ts.state))]


def main(out_dir: str, die: bool) -> None:
    process, count = distributed.initialize(initialization_timeout=60, heartbeat_timeout_seconds=10)
    if die and process == 1:
        os._exit(3)
    mesh = distributed.make_mesh(axis_types="explicit")
    leaves = param_leaves(fit_in_memory(mesh)) + param_leaves(
        fit_local_batches(mesh, process, count)
    )
    np.savez(os.path.join(out_dir, f"params_{process}.npz"), *leaves)
    print(f"process {process} of {count} on {mesh.devices.size} devices: done", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], "--die" in sys.argv[2:])
