"""Tests for JSONLLogger: lines equal the history; a slow disk does not hold up the epochs."""

import json
import time

import jax
import numpy as np
import optax
import pytest

import funcnet as fn
from funcnet.training.callbacks import JSONLLogger


def _read(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


def test_lines_equal_history(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 3)).astype(np.float32)
    y = x.sum(1, keepdims=True)
    path = tmp_path / "log.jsonl"
    _, history = fn.fit(
        fn.Dense(1),
        optax.sgd(1e-2),
        "mse",
        (x, y),
        epochs=3,
        batch_size=16,
        metrics=["mae"],
        validation_split=0.25,
        callbacks=[JSONLLogger(path)],
        verbose=0,
    )
    rows = _read(path)
    assert [r["epoch"] for r in rows] == [0, 1, 2]
    for key, values in history.history.items():
        assert [r[key] for r in rows] == pytest.approx(values)


def test_slow_disk_does_not_slow_the_epochs(tmp_path, monkeypatch):
    delay = 0.3

    def slow_write(self, f, line):
        time.sleep(delay)
        f.write(line)
        f.flush()

    monkeypatch.setattr(JSONLLogger, "_write", slow_write)
    path = tmp_path / "log.jsonl"
    log = JSONLLogger(path)
    log.on_train_begin(None)
    start = time.perf_counter()
    for epoch in range(4):
        log.on_epoch_end(epoch, {"loss": 1.0 / (epoch + 1)}, None)
    queued = time.perf_counter() - start
    log.on_train_end(None)
    assert queued < delay  # 4 writes take 4 * delay; queueing them takes far less
    assert _read(path) == [{"epoch": e, "loss": 1.0 / (e + 1)} for e in range(4)]


def test_append_and_reuse(tmp_path):
    path = tmp_path / "log.jsonl"
    path.write_text('{"epoch": -1}\n')
    log = JSONLLogger(path, append=True)
    for run in range(2):
        log.on_train_begin(None)
        log.on_epoch_end(0, {"loss": float(run)}, None)
        log.on_train_end(None)
    assert _read(path) == [{"epoch": -1}, {"epoch": 0, "loss": 0.0}, {"epoch": 0, "loss": 1.0}]
    log = JSONLLogger(path)  # the default rewrites the file
    log.on_train_begin(None)
    log.on_epoch_end(0, {"loss": 2.0}, None)
    log.on_train_end(None)
    assert _read(path) == [{"epoch": 0, "loss": 2.0}]


def test_write_error_is_raised_in_training_thread(tmp_path, monkeypatch):
    def failing_write(self, f, line):
        raise OSError("disk full")

    monkeypatch.setattr(JSONLLogger, "_write", failing_write)
    log = JSONLLogger(tmp_path / "log.jsonl")
    log.on_train_begin(None)
    log.on_epoch_end(0, {"loss": 1.0}, None)
    with pytest.raises(OSError, match=r"JSONLLogger: writing .* failed: disk full"):
        log.on_train_end(None)


def test_epoch_end_before_train_begin(tmp_path):
    with pytest.raises(RuntimeError, match="`on_train_begin` must be called"):
        JSONLLogger(tmp_path / "log.jsonl").on_epoch_end(0, {}, None)


class _Recorder(fn.callbacks.Callback):
    def __init__(self):
        self.errors, self.ended = [], False

    def on_exception(self, error):
        self.errors.append(error)

    def on_train_end(self, train_state):
        self.ended = True


class _FailingCleanup(fn.callbacks.Callback):
    def on_exception(self, error):
        raise OSError("cleanup failed")


def test_fit_error_reaches_every_on_exception_and_flushes_the_log(tmp_path, monkeypatch):
    """A NaN loss in epoch 2: every callback's on_exception gets the error (even after one
    whose cleanup fails, noted on the error), on_train_end is not called, and the JSONL lines
    of the epoch that ran are on disk although the writer thread is slow."""

    def slow_write(self, f, line):
        time.sleep(0.2)
        f.write(line)
        f.flush()

    monkeypatch.setattr(JSONLLogger, "_write", slow_write)
    x = np.ones((16, 3), np.float32)
    y = np.ones((16, 1), np.float32)
    recorder, path = _Recorder(), tmp_path / "log.jsonl"
    poison = fn.callbacks.LambdaCallback(
        on_epoch_end=lambda e, logs, ts: ts._replace(
            params=jax.tree.map(lambda p: p * np.nan, ts.params)
        )
    )
    with pytest.raises(FloatingPointError) as info:
        fn.fit(
            fn.Dense(1),
            optax.sgd(1e-2),
            "mse",
            (x, y),
            epochs=3,
            batch_size=8,
            verbose=0,
            # object(): a callback without hooks (they are optional) before the recorder
            callbacks=[JSONLLogger(path), poison, _FailingCleanup(), object(), recorder],
        )
    assert recorder.errors == [info.value] and not recorder.ended
    assert any("_FailingCleanup.on_exception failed" in n for n in info.value.__notes__)
    assert [r["epoch"] for r in _read(path)] == [0]
