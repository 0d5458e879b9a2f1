"""Memory-mapped .npy shards: write, open, batch order, fit equality, errors."""

import json

import jax
import numpy as np
import optax
import pytest

import funcnet as fn
from funcnet.data import ShardedArrays, write_shards

STRICT_DTYPES = False  # optax's Adam is not strict-promotion clean


def _data(n=50):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 6)).astype(np.float32)
    y = rng.integers(0, 3, size=n).astype(np.int32)
    return x, y


@pytest.fixture
def shard_dir(tmp_path):
    x, y = _data()
    write_shards(tmp_path, (x, y), rows_per_shard=16)
    return tmp_path


def test_write_shards_files_and_index(shard_dir):
    index = json.loads((shard_dir / "index.json").read_text())
    assert [s["rows"] for s in index["shards"]] == [16, 16, 16, 2]
    assert index["dtypes"] == {"x": "<f4", "y": "<i4"} and index["shapes"]["x"] == [6]
    assert (shard_dir / "y_00003.npy").is_file()


def test_batches_in_file_order_are_the_arrays(shard_dir):
    x, y = _data()
    data = ShardedArrays(shard_dir, batch_size=7)
    got = list(data)
    assert len(got) == len(data) == 8
    np.testing.assert_array_equal(np.concatenate([b[0] for b in got]), x)
    np.testing.assert_array_equal(np.concatenate([b[1] for b in got]), y)
    assert len(list(ShardedArrays(shard_dir, batch_size=7, drop_remainder=True))) == 7


def test_reads_through_memmaps_never_a_whole_shard(shard_dir, monkeypatch):
    data = ShardedArrays(shard_dir, batch_size=5, seed=0)
    assert all(isinstance(a, np.memmap) for s in data.shards for a in s.values())
    largest = []
    real_read = data._read

    def read(rows):
        largest.append(len(rows))
        return real_read(rows)

    monkeypatch.setattr(data, "_read", read)
    batches = list(data.for_epoch(0))
    assert max(largest) == 5 < 16
    assert not any(isinstance(a, np.memmap) for b in batches for a in b)  # copies of rows only


def test_shuffle_per_epoch_within_shards(shard_dir):
    _, y = _data()
    data = ShardedArrays(shard_dir, batch_size=8, seed=3)
    o0, o1 = data.order(0), data.order(1)
    assert sorted(o0.tolist()) == list(range(50)) and not np.array_equal(o0, o1)
    np.testing.assert_array_equal(data.order(1), o1)  # a function of (seed, epoch)
    shard_of = o0 // 16
    assert (np.diff(shard_of) != 0).sum() == 3  # each shard visited in one run
    got = np.concatenate([b[1] for b in data.for_epoch(1)])
    np.testing.assert_array_equal(got, y[o1])
    default = data.batch_list()  # epoch 0's batches
    np.testing.assert_array_equal(np.concatenate(default), o0)
    assert not np.array_equal(np.concatenate(data.batch_list(1)), o0)


def test_fit_on_shards_equals_fit_on_in_memory_batches(shard_dir):
    x, y = _data()
    data = ShardedArrays(shard_dir, batch_size=8, seed=1, drop_remainder=True)
    model = fn.serial(fn.Dense(8), fn.Relu(), fn.Dense(3))
    loss = fn.losses.sparse_categorical_cross_entropy
    key = jax.random.key(0)

    class InMemory:  # the same batches, built from the arrays in memory
        def for_epoch(self, epoch):
            return [(x[r], y[r]) for r in data.batch_list(epoch)]

    kw = dict(epochs=3, key=key, verbose=0)
    ts_shards, _ = fn.fit(model, optax.adam(1e-2), loss, data, **kw)
    ts_mem, _ = fn.fit(model, optax.adam(1e-2), loss, InMemory(), **kw)
    assert int(ts_shards.step) == 3 * 6
    for a, b in zip(jax.tree.leaves(ts_shards.params), jax.tree.leaves(ts_mem.params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-6)
    logs = fn.evaluate(model, ts_shards.params, ts_shards.state, data, loss=loss)
    assert np.isfinite(logs["loss"])


def test_predict_on_batches_equals_predict_on_arrays(shard_dir):
    """predict over ShardedArrays (uneven last batch), a generator of bare inputs and dict
    inputs: the same outputs, in order, as predict on the arrays; computed independently
    with numpy from the params."""
    x, _ = _data()
    model = fn.serial(fn.Dense(4), fn.Relu(), fn.Dense(3))
    params, state = model.init(jax.random.key(0), x[:1])
    want = np.maximum(x @ params[0]["w"] + params[0]["b"], 0) @ params[2]["w"] + params[2]["b"]
    np.testing.assert_allclose(fn.predict(model, params, state, x), want, rtol=1e-5, atol=1e-5)
    got = fn.predict(model, params, state, ShardedArrays(shard_dir, batch_size=7))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert isinstance(got, np.ndarray) and got.shape == (50, 3)
    gen = (x[i : i + 20] for i in range(0, 50, 20))  # 20, 20, 10 rows
    np.testing.assert_allclose(fn.predict(model, params, state, gen), want, rtol=1e-5, atol=1e-5)
    pick = fn.serial(lambda d: d["a"], model)
    params2, state2 = pick.init(jax.random.key(0), {"a": x[:1]})
    dicts = iter([({"a": x[:30]}, None), ({"a": x[30:]}, None)])
    np.testing.assert_allclose(
        fn.predict(pick, params2, state2, dicts),
        fn.predict(pick, params2, state2, {"a": x}),
        rtol=1e-6,
    )


def test_predict_on_batches_errors(shard_dir):
    x, _ = _data()
    model = fn.Dense(2)
    params, state = model.init(jax.random.key(0), x[:1])
    with pytest.raises(ValueError, match=r"predict: `mesh` needs the inputs as arrays"):
        fn.predict(model, params, state, iter([x]), mesh=fn.distributed.make_mesh(1))
    with pytest.raises(ValueError, match="gave no batch"):
        fn.predict(model, params, state, iter([]))
    with pytest.raises(TypeError, match=r"batch 1 of the iterable is a float64 without a batch"):
        fn.predict(model, params, state, iter([x, np.float64(1.0)]))


def test_missing_index_names_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"ShardedArrays: no index file .*index\.json"):
        ShardedArrays(tmp_path, batch_size=4)


def test_corrupt_index_names_the_file(shard_dir):
    (shard_dir / "index.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"index file .*index\.json' is not valid JSON"):
        ShardedArrays(shard_dir, batch_size=4)
    (shard_dir / "index.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match=r"is not a funcnet shard index"):
        ShardedArrays(shard_dir, batch_size=4)


def test_an_index_of_a_newer_version_is_refused(shard_dir):
    """The index records its layout's version (1); a reader refuses a newer one by name."""
    path = shard_dir / "index.json"
    index = json.loads(path.read_text())
    assert index["version"] == 1
    path.write_text(json.dumps({**index, "version": 2}))
    with pytest.raises(ValueError, match=r"index.json' has version 2, newer than this funcnet"):
        ShardedArrays(shard_dir, batch_size=4)


def test_missing_or_corrupt_shard_names_the_file(shard_dir):
    (shard_dir / "x_00001.npy").unlink()
    with pytest.raises(FileNotFoundError, match=r"shard file .*x_00001\.npy' .* is missing"):
        ShardedArrays(shard_dir, batch_size=4)
    (shard_dir / "x_00001.npy").write_bytes(b"garbage")
    with pytest.raises(ValueError, match=r"x_00001\.npy' is not a readable \.npy"):
        ShardedArrays(shard_dir, batch_size=4)
    np.save(shard_dir / "x_00001.npy", np.zeros((16, 5), np.float32))
    with pytest.raises(ValueError, match=r"x_00001\.npy' holds float32 \(16, 5\), but"):
        ShardedArrays(shard_dir, batch_size=4)


def test_constructor_errors(shard_dir):
    with pytest.raises(ValueError, match="ShardedArrays: `batch_size`"):
        ShardedArrays(shard_dir, batch_size=0)
    with pytest.raises(TypeError, match="`seed` must be an integer or None, got str"):
        ShardedArrays(shard_dir, batch_size=4, seed="0")
    with pytest.raises(ValueError, match="leaves no batch of the 50 examples"):
        ShardedArrays(shard_dir, batch_size=51, drop_remainder=True)
    whole = ShardedArrays(shard_dir, batch_size=50, drop_remainder=True)  # one batch: allowed
    (batch,) = list(whole)
    np.testing.assert_array_equal(batch[0], _data()[0])


def test_write_shards_errors(tmp_path):
    x, y = _data()
    with pytest.raises(TypeError, match=r"must be a tuple `\(x, y\)`.*got list of length 2"):
        write_shards(tmp_path, [x, y], 10)
    with pytest.raises(TypeError, match="`y` must be an array with a leading row axis"):
        write_shards(tmp_path, (x, 3), 10)
    with pytest.raises(TypeError, match="`y` must be an array with a leading row axis"):
        write_shards(tmp_path, (x, np.float32(3)), 10)  # a shape, but no row axis
    with pytest.raises(ValueError, match="different numbers of rows"):
        write_shards(tmp_path, (x, y[:10]), 10)
    with pytest.raises(ValueError, match="0 rows"):
        write_shards(tmp_path, (x[:0], y[:0]), 10)
    with pytest.raises(ValueError, match="write_shards: `rows_per_shard`"):
        write_shards(tmp_path, (x, y), 0)


class _Crash(Exception):
    pass


class _CrashAt:
    def __init__(self, step):
        self.step = step

    def on_steps_end(self, step, ts):
        del ts
        if step == self.step:
            raise _Crash


def test_fit_killed_mid_epoch_resumes_at_the_same_example(shard_dir, tmp_path, monkeypatch):
    """2 epochs uninterrupted == a run stopped in epoch 2 and resumed from its checkpoint."""
    data = ShardedArrays(shard_dir, batch_size=8, seed=1, drop_remainder=True)
    model = fn.serial(fn.Dense(8), fn.Relu(), fn.Dense(3))
    loss = fn.losses.sparse_categorical_cross_entropy
    kw = dict(epochs=2, key=jax.random.key(0), verbose=0, checkpoint_every=2)
    reference, _ = fn.fit(model, optax.adam(1e-2), loss, data, checkpoint=str(tmp_path / "a"), **kw)
    run = str(tmp_path / "b")
    with pytest.raises(_Crash):  # 6 steps per epoch: stopped 3 steps into epoch 2
        fn.fit(model, optax.adam(1e-2), loss, data, checkpoint=run, callbacks=[_CrashAt(9)], **kw)
    reads = []
    read = ShardedArrays._read
    monkeypatch.setattr(
        ShardedArrays, "_read", lambda self, rows: reads.append(1) or read(self, rows)
    )
    resumed, _ = fn.fit(model, optax.adam(1e-2), loss, data, checkpoint=run, **kw)
    # the shapes from a first batch, then epoch 2's last 4 (none read to skip)
    assert len(reads) == 1 + 4
    assert int(resumed.step) == int(reference.step) == 12
    for a, b in zip(jax.tree.leaves(reference.params), jax.tree.leaves(resumed.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
