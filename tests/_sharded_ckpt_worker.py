"""One process of the sharded-checkpoint test (2 processes x 2 CPU devices, gloo).

``python tests/_sharded_ckpt_worker.py OUT_DIR`` (started by
``funcnet.distributed.launch``): on a ("data", "model") mesh of the 4 devices
of both processes,

0. checks that saving to a different path in each process fails in both;
1. saves :func:`tree` as step 1 with a ``CheckpointManager`` (sharded by
   itself: ``params/a`` is split over all 4 devices);
2. restores it in both processes onto other shardings, checks every local
   shard against :func:`values` (numpy), and records which saved shards each
   process read (``OUT_DIR/result_<process>.json``);
3. starts an asynchronous save of step 2 in which process 1 kills itself
   (SIGKILL) in the middle of writing its shard file; process 0's main thread
   records that ``save`` returned while the write went on, then waits for
   the write, which never completes: the launcher stops it.

``tests/test_sharded_checkpoint.py`` then checks that step 1 is intact and
restorable and that no step 2 is listed.
"""

import json
import os
import signal
import sys
import time

import numpy as np

from funcnet import distributed


def values() -> dict:
    """The arrays saved (independent numpy reference); ``key`` is the key's data."""
    rng = np.random.default_rng(7)
    return {
        "a": rng.normal(size=(8, 6)).astype(np.float32),  # over all 4 devices
        "b": rng.integers(-100, 100, size=(4, 6)).astype(np.int32),  # over "data" only
        "scale": np.float32(3.5),  # replicated scalar
        "key": np.array([0, 42], np.uint32),  # jax.random.key(42) (threefry)
    }


def tree(mesh):
    """The saved tree, placed on ``mesh``."""
    import jax
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    v = values()

    def put(x, spec):
        return jax.make_array_from_callback(x.shape, NamedSharding(mesh, spec), lambda i: x[i])

    key = jax.random.wrap_key_data(put(v["key"], P()), impl="threefry2x32")
    params = {"a": put(v["a"], P("data", "model")), "b": put(v["b"], P("data", None))}
    return {"params": params, "scale": put(v["scale"], P()), "key": key, "step": 7}


def check_local(x, expected: np.ndarray) -> None:
    for shard in x.addressable_shards:
        np.testing.assert_array_equal(np.asarray(shard.data), expected[shard.index])


def restore_elsewhere(manager, mesh) -> list:
    """Step 1 onto other shardings, checked; the saved shards this process read."""
    import jax
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    from funcnet.checkpoint import sharded_read

    reads, read = [], sharded_read.ShardReader.shard

    def counted(self, name, k):
        reads.append([name, k])
        return read(self, name, k)

    sharded_read.ShardReader.shard = counted
    like = jax.tree.map(jax.numpy.zeros_like, tree(mesh))
    like["params"]["a"] = jax.device_put(like["params"]["a"], NamedSharding(mesh, P("data")))
    like["params"]["b"] = jax.device_put(like["params"]["b"], NamedSharding(mesh, P()))
    like["step"] = 0
    back = manager.restore(1, like=like)
    sharded_read.ShardReader.shard = read
    v = values()
    check_local(back["params"]["a"], v["a"])
    check_local(back["params"]["b"], v["b"])
    check_local(back["scale"], v["scale"])
    check_local(jax.random.key_data(back["key"]), v["key"])
    assert back["step"] == 7 and back["params"]["a"].sharding.spec == P("data")
    return sorted({tuple(r) for r in reads})


def main(out_dir: str) -> None:
    process, count = distributed.initialize(initialization_timeout=60, heartbeat_timeout_seconds=10)
    import jax
    from jax.sharding import AxisType

    from funcnet.checkpoint import CheckpointManager, save, sharded

    # JAX's runtime catches SIGTERM (preemption notices); let the launcher's stop be immediate
    signal.signal(signal.SIGTERM, signal.SIG_DFL)

    mesh = jax.make_mesh((2, 2), ("data", "model"), axis_types=(AxisType.Explicit,) * 2)
    directory = os.path.join(out_dir, "ckpt")
    try:  # each process its own path: all fail at once (none waits for the others' shards)
        save(os.path.join(out_dir, f"own_{process}"), tree(mesh), sharded=True)
    except ValueError as err:
        assert "the processes save to different paths" in str(err), err
    else:
        raise AssertionError("saving to different paths should raise")
    manager = CheckpointManager(directory, max_to_keep=None)
    manager.save(1, tree(mesh), metrics={"loss": 0.5})
    reads = restore_elsewhere(manager, mesh)
    result = {"process": process, "count": count, "reads": reads, "steps": manager.all_steps()}
    with open(os.path.join(out_dir, f"result_{process}.json"), "w") as f:
        json.dump(result, f)
    print(f"process {process}: saved and restored step 1", flush=True)

    later = CheckpointManager(directory, max_to_keep=None, async_save=True)
    if process == 1:  # killed in the middle of writing its shard file
        sharded._write_hook = lambda path, k: os.kill(os.getpid(), signal.SIGKILL)
    else:  # a slow write: the main thread goes on meanwhile
        sharded._write_hook = lambda path, k: time.sleep(0.2)
    start = time.monotonic()
    later.save(2, tree(mesh))
    timing = {"save_returned_s": time.monotonic() - start, "busy_after_save": later._writer.busy}
    with open(os.path.join(out_dir, f"async_{process}.json"), "w") as f:
        json.dump(timing, f)
    print(f"process {process}: waiting for the background save", flush=True)
    later.wait_until_finished()  # never returns in process 0: process 1 is gone
    sys.exit(5)


if __name__ == "__main__":
    main(sys.argv[1])
