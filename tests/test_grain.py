"""Grain pipelines as fit/evaluate data: conversion, workers, per-epoch order, resume."""

import concurrent.futures

import jax
import numpy as np
import optax
import pytest

import funcnet as fn
from funcnet.data import from_grain

grain = pytest.importorskip("grain.python")

STRICT_DTYPES = False  # optax's Adam is not strict-promotion clean


@pytest.fixture(scope="module", autouse=True)
def absl_flags():
    """Grain's worker processes read absl flags, which only ``absl.app.run`` parses otherwise
    (grain's own tests do the same)."""
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


N, BATCH = 48, 8


def _arrays():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(N, 5)).astype(np.float32)
    y = rng.integers(0, 3, size=N).astype(np.int32)
    return x, y


class ArraySource(grain.RandomAccessDataSource):
    """Records ``{"x": row, "y": label}`` (module level: picklable for worker processes)."""

    def __init__(self):
        self.x, self.y = _arrays()

    def __len__(self):
        return N

    def __getitem__(self, i):
        return {"x": self.x[i], "y": self.y[i]}


class Noise(grain.RandomMapTransform):
    """A random augmentation: drawn in the worker from the record's own seeded rng."""

    def random_map(self, record, rng):
        return {**record, "x": record["x"] + rng.normal(size=record["x"].shape).astype(np.float32)}


def _model_loss():
    return (
        fn.serial(fn.Dense(8), fn.Relu(), fn.Dense(3)),
        fn.losses.sparse_categorical_cross_entropy,
    )


def _records():
    x, y = _arrays()
    return grain.MapDataset.source([(x[i], y[i]) for i in range(N)])


def _per_epoch(epoch):
    return _records().shuffle(seed=10 + epoch).batch(BATCH)


def test_fit_on_grain_equals_fit_on_the_same_batches():
    model, loss = _model_loss()
    data = from_grain(_per_epoch)
    batches = {e: list(_per_epoch(e)) for e in range(2)}

    class Same:
        def for_epoch(self, epoch):
            return batches[epoch]

    kw = dict(epochs=2, key=jax.random.key(0), verbose=0)
    ts_grain, _ = fn.fit(model, optax.adam(1e-2), loss, data, **kw)
    ts_list, _ = fn.fit(model, optax.adam(1e-2), loss, Same(), **kw)
    assert int(ts_grain.step) == 2 * N // BATCH
    for a, b in zip(jax.tree.leaves(ts_grain.params), jax.tree.leaves(ts_list.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    epoch0 = np.concatenate([b[1] for b in data.for_epoch(0)])
    epoch1 = np.concatenate([b[1] for b in data.for_epoch(1)])
    assert not np.array_equal(epoch0, epoch1)  # reshuffled per epoch
    logs = fn.evaluate(model, ts_grain.params, ts_grain.state, data, loss=loss)
    assert np.isfinite(logs["loss"])
    x0 = np.concatenate([b[0] for b in data.for_epoch(0)])
    np.testing.assert_allclose(
        fn.predict(model, ts_grain.params, ts_grain.state, data),
        fn.predict(model, ts_grain.params, ts_grain.state, x0),
        rtol=1e-6,
    )


def test_iter_dataset_and_dict_batches():
    x, y = _arrays()
    ds = grain.MapDataset.source(ArraySource()).to_iter_dataset().batch(BATCH)
    got = list(from_grain(ds, keys=("x", "y")))
    assert len(got) == N // BATCH and isinstance(got[0], tuple)
    np.testing.assert_array_equal(np.concatenate([b[0] for b in got]), x)
    np.testing.assert_array_equal(np.concatenate([b[1] for b in got]), y)


def _loader(workers, seed=0):
    return grain.DataLoader(
        data_source=ArraySource(),
        sampler=grain.IndexSampler(
            N, shard_options=grain.NoSharding(), shuffle=True, num_epochs=1, seed=seed
        ),
        operations=[Noise(), grain.Batch(BATCH)],
        worker_count=workers,
    )


def _batches(workers, seed=0):
    return [
        (np.asarray(a), np.asarray(b))
        for a, b in from_grain(_loader(workers, seed), keys=("x", "y"))
    ]


def _pipeline(workers, seed=0):
    ds = grain.MapDataset.source(ArraySource()).shuffle(seed=seed).random_map(Noise(), seed=seed)
    ds = ds.batch(BATCH).to_iter_dataset()
    if workers:
        ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers))
    return [(np.asarray(a), np.asarray(b)) for a, b in from_grain(ds, keys=("x", "y"))]


def _in_thread(f, *args):
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(f, *args).result(timeout=120)


def _assert_same(a, b):
    assert len(a) == len(b) == N // BATCH
    for (xa, ya), (xb, yb) in zip(a, b):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)


def test_two_worker_processes_give_the_batches_of_none():
    """Dataset API: ``mp_prefetch`` with 2 workers == no workers, for a seed."""
    single = _pipeline(0)
    _assert_same(_in_thread(_pipeline, 2), single)
    assert not np.array_equal(single[0][1], _pipeline(0, seed=1)[0][1])


def _rows(batches):
    x = np.concatenate([x for x, _ in batches])
    return x[np.lexsort(x.T)]


def test_data_loader_workers_deterministic_per_seed():
    """DataLoader: each worker batches its own records, so the batches of ``worker_count=2``
    differ from ``worker_count=0``'s, but are the same on every run for a seed, and hold
    the same (identically augmented) examples."""
    two = _in_thread(_batches, 2)
    _assert_same(two, _in_thread(_batches, 2))
    single = _batches(0)
    np.testing.assert_array_equal(_rows(two), _rows(single))
    assert not np.array_equal(single[0][1], _batches(0, seed=1)[0][1])


class _Crash(Exception):
    pass


class _CrashAt:
    def __init__(self, step):
        self.step = step

    def on_steps_end(self, step, ts):
        del ts
        if step == self.step:
            raise _Crash


def test_resume_from_checkpoint_continues_at_the_same_example(tmp_path):
    """2 epochs uninterrupted == a run killed in epoch 2, resumed from its checkpoint."""
    model, loss = _model_loss()
    data = from_grain(_per_epoch)
    kw = dict(epochs=2, key=jax.random.key(0), verbose=0, checkpoint_every=2)
    reference, _ = fn.fit(
        model, optax.adam(1e-2), loss, data, checkpoint=str(tmp_path / "ref"), **kw
    )
    run = str(tmp_path / "run")
    with pytest.raises(_Crash):  # 6 steps per epoch: killed 3 steps into epoch 2
        fn.fit(model, optax.adam(1e-2), loss, data, checkpoint=run, callbacks=[_CrashAt(9)], **kw)
    assert fn.checkpoint.CheckpointManager(run).latest_step() == 8
    resumed, _ = fn.fit(model, optax.adam(1e-2), loss, data, checkpoint=run, **kw)
    assert int(resumed.step) == int(reference.step) == 12
    for a, b in zip(jax.tree.leaves(reference.params), jax.tree.leaves(resumed.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


class _Counted(grain.MapTransform):
    """Counts the records it maps (in this process: no workers)."""

    seen = 0

    def map(self, record):
        _Counted.seen += 1
        return record


@pytest.mark.parametrize("kind", ["map", "iter", "plain"])
def test_resumed_epoch_starts_at_the_batch_without_reading_the_ones_before(kind):
    """for_epoch(e, start=k) gives the batches k.. of epoch e: a MapDataset is sliced and
    an IterDataset iterator moved with set_state (neither maps a skipped record); a plain
    iterable is read and the skipped batches dropped. fit's len() comes from the MapDataset."""

    def pipeline(epoch):
        ds = _records().shuffle(seed=10 + epoch).map(_Counted()).batch(BATCH)
        if kind == "iter":
            return ds.to_iter_dataset()
        return ds if kind == "map" else list(ds)

    data = from_grain(pipeline)
    want = [b[1].tolist() for b in data.for_epoch(1)][4:]
    _Counted.seen = 0
    got = [b[1].tolist() for b in data.for_epoch(1, start=4)]
    assert got == want and len(got) == N // BATCH - 4
    assert _Counted.seen == (N if kind == "plain" else 2 * BATCH)
    if kind == "map":
        assert len(data) == N // BATCH


def test_png_folder_decoded_and_augmented_in_workers(tmp_path):
    image = pytest.importorskip("PIL.Image")
    rng = np.random.default_rng(0)
    labels = []
    for i in range(16):
        label = i % 2
        pixels = rng.integers(0, 100, (12, 12), dtype=np.uint8) + 150 * label
        image.fromarray(pixels.astype(np.uint8)).save(tmp_path / f"{i:03d}_{label}.png")
        labels.append(label)
    files = sorted(str(p) for p in tmp_path.glob("*.png"))

    loader = grain.DataLoader(
        data_source=files,
        sampler=grain.IndexSampler(
            len(files), shard_options=grain.NoSharding(), shuffle=True, num_epochs=1, seed=0
        ),
        operations=[DecodePng(), RandomFlip(), grain.Batch(4, drop_remainder=True)],
        worker_count=2,
    )
    data = from_grain(loader, keys=("image", "label"))
    model = fn.serial(fn.Conv(4, (3, 3)), fn.Relu(), fn.Flatten(), fn.Dense(2))
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        batches = pool.submit(lambda: list(fn.data.prefetch_to_device(data))).result(timeout=120)
    assert len(batches) == 4 and batches[0][0].shape == (4, 12, 12, 1)
    _, history = fn.fit(
        model, optax.adam(1e-2), fn.losses.sparse_categorical_cross_entropy, batches, verbose=0
    )
    assert np.isfinite(history.history["loss"][-1])


class DecodePng(grain.MapTransform):
    def map(self, path):
        from PIL import Image

        pixels = np.asarray(Image.open(path), np.float32)[..., None] / 255.0
        return {"image": pixels, "label": np.int32(path.rsplit("_", 1)[1][0])}


class RandomFlip(grain.RandomMapTransform):
    def random_map(self, record, rng):
        flip = rng.random() < 0.5
        return {**record, "image": record["image"][:, ::-1] if flip else record["image"]}


def test_errors():
    ds = grain.MapDataset.source(ArraySource()).batch(BATCH)
    with pytest.raises(TypeError, match=r"from_grain: batch 0 is a dict with keys \['x', 'y'\]"):
        next(iter(from_grain(ds)))
    with pytest.raises(KeyError, match=r"not \['label'\] of `keys=\('x', 'label'\)`"):
        next(iter(from_grain(ds, keys=("x", "label"))))
    with pytest.raises(TypeError, match="from_grain: batch 0 is a ndarray; expected a tuple"):
        next(iter(from_grain(grain.MapDataset.range(10).batch(4))))
    with pytest.raises(TypeError, match="`keys` must name 2 or 3 entries"):
        from_grain(ds, keys="xy")
    with pytest.raises(ValueError, match="from_grain: `prefetch` must be an int >= 0, got -1"):
        from_grain(ds, keys=("x", "y"), prefetch=-1)


def test_prefetch_gives_the_same_batches_on_the_device():
    ds = grain.MapDataset.source(ArraySource()).batch(BATCH)
    plain = list(from_grain(ds, keys=("x", "y")))
    ahead = list(from_grain(ds, keys=("x", "y"), prefetch=2))
    assert isinstance(ahead[0][0], jax.Array) and len(ahead) == len(plain)
    for (xa, ya), (xb, yb) in zip(plain, ahead):
        np.testing.assert_array_equal(xa, np.asarray(xb))
        np.testing.assert_array_equal(ya, np.asarray(yb))
