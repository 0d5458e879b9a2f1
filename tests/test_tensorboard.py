"""Tests for the TensorBoard callback: write during a tiny fit, read the event files back."""

import sys

import jax.numpy as jnp
import numpy as np
import optax
import pytest

import funcnet as fn
from funcnet.training.callbacks import TensorBoard

pytest.importorskip("tensorboardX")
event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")


def _data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 3)).astype(np.float32)
    y = (x @ np.array([1.0, -2.0, 0.5], np.float32))[:, None]
    return x, y


def _fit(callback, epochs=3):
    x, y = _data()
    opt = optax.inject_hyperparams(optax.sgd)(learning_rate=1e-2)
    return fn.fit(
        fn.Dense(1),
        opt,
        "mse",
        (x, y),
        epochs=epochs,
        batch_size=16,
        metrics=["mae"],
        validation_split=0.25,
        callbacks=callback if isinstance(callback, list) else [callback],
        verbose=0,
    )


def _read(log_dir):
    acc = event_accumulator.EventAccumulator(
        str(log_dir), size_guidance={event_accumulator.HISTOGRAMS: 0, event_accumulator.SCALARS: 0}
    )
    return acc.Reload()


def test_scalars_equal_history_at_one_based_epochs(tmp_path):
    _, history = _fit(TensorBoard(tmp_path))
    acc = _read(tmp_path)
    tags = set(acc.Tags()["scalars"])
    assert tags == {"loss", "mae", "val_loss", "val_mae", "learning_rate"}
    for tag in tags:
        events = acc.Scalars(tag)
        assert [e.step for e in events] == [1, 2, 3]
        np.testing.assert_allclose([e.value for e in events], history[tag], rtol=1e-6)
    assert acc.Tags()["histograms"] == []


def test_x_axis_step(tmp_path):
    _fit(TensorBoard(tmp_path, x_axis="step"))
    events = _read(tmp_path).Scalars("loss")
    assert [e.step for e in events] == [3, 6, 9]  # 48 training rows / 16 per batch


@pytest.mark.parametrize(("every", "steps"), [(True, [1, 2, 3]), (2, [2])])
def test_histograms_when_asked(tmp_path, every, steps):
    ts, _ = _fit(TensorBoard(tmp_path, histograms=every))
    acc = _read(tmp_path)
    assert sorted(acc.Tags()["histograms"]) == ["params/b", "params/w"]
    events = acc.Histograms("params/w")
    assert [e.step for e in events] == steps
    last = events[-1].histogram_value
    assert last.num == 3
    if steps[-1] == 3:  # written at the last epoch: the final parameters
        np.testing.assert_allclose(last.sum, float(jnp.sum(ts.params["w"])), rtol=1e-5)


def _text(acc, tag="model/summary/text_summary"):  # tensorboardX adds the suffix
    (event,) = acc.Tensors(tag)
    return event.tensor_proto.string_val[0].decode()


def test_summary_text_params_table_by_default(tmp_path):
    _fit(TensorBoard(tmp_path))
    text = _text(_read(tmp_path))
    assert "w" in text and "(3, 1)" in text and "params: 4" in text


def test_summary_text_from_model(tmp_path):
    x, _ = _data()
    _fit(TensorBoard(tmp_path, model=fn.Dense(1), inputs=x[:8]))
    text = _text(_read(tmp_path))
    assert "Dense(1)" in text and "(8, 1)" in text and "params: 4" in text


def test_no_summary(tmp_path):
    _fit(TensorBoard(tmp_path, summary=False))
    assert _read(tmp_path).Tags()["tensors"] == []


def test_hparams_plugin_data(tmp_path):
    from tensorboard.plugins.hparams import plugin_data_pb2

    _fit(TensorBoard(tmp_path, hparams={"lr": 1e-2, "optimizer": "adam", "batch_size": 16}))
    acc = _read(tmp_path)
    content = acc.PluginTagToContent("hparams")
    assert set(content) == {
        "_hparams_/experiment",
        "_hparams_/session_start_info",
        "_hparams_/session_end_info",
    }
    start = plugin_data_pb2.HParamsPluginData.FromString(
        content["_hparams_/session_start_info"]
    ).session_start_info
    assert start.hparams["lr"].number_value == pytest.approx(1e-2)
    assert start.hparams["optimizer"].string_value == "adam"
    experiment = plugin_data_pb2.HParamsPluginData.FromString(
        content["_hparams_/experiment"]
    ).experiment
    metrics = {m.name.tag for m in experiment.metric_infos}
    assert metrics == {"loss", "mae", "val_loss", "val_mae", "learning_rate"}
    assert metrics <= set(acc.Tags()["scalars"])  # the plugin shows each one's last value


def test_update_every_writes_step_learning_rate(tmp_path):
    _fit(TensorBoard(tmp_path, update_every=2))
    events = _read(tmp_path).Scalars("step/learning_rate")
    assert [e.step for e in events] == [2, 4, 6, 8]
    np.testing.assert_allclose([e.value for e in events], 1e-2, rtol=1e-6)


def _decoded(event) -> np.ndarray:
    import io

    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(event.encoded_image_string)))


def test_images_read_back_as_written(tmp_path):
    """A grey map from the params, an RGB uint8 batch and a float batch: the PNGs decode to
    the pixels written (floats scaled by 255 and clipped), at the epochs asked for."""
    seen = []

    def images(ts):
        seen.append(int(ts.step))
        w = np.asarray(ts.params["w"])[:, 0]
        grey = np.clip(np.abs(np.outer(w, w)) / np.abs(w).max() ** 2, 0, 1)  # (3, 3) in [0, 1]
        rgb = np.arange(2 * 4 * 5 * 3, dtype=np.uint8).reshape(2, 4, 5, 3)
        rgba = np.full((3, 2, 4), 200, np.uint8)  # (H, W, 4): one image with alpha
        return {"grey": grey, "rgb": rgb, "clipped": np.full((2, 2, 1), 7.0), "rgba": rgba}

    ts, _ = _fit(TensorBoard(tmp_path, images=images, images_every=3), epochs=6)
    acc = event_accumulator.EventAccumulator(
        str(tmp_path), size_guidance={event_accumulator.IMAGES: 0}
    ).Reload()
    assert seen == [9, 18]  # epochs 3 and 6 (3 steps each)
    assert sorted(acc.Tags()["images"]) == ["clipped", "grey", "rgb", "rgba"]
    np.testing.assert_array_equal(_decoded(acc.Images("rgba")[0]), np.full((3, 2, 4), 200))
    grey = acc.Images("grey")
    assert [e.step for e in grey] == [3, 6]
    w = np.asarray(ts.params["w"])[:, 0]
    want = np.round(np.abs(np.outer(w, w)) / np.abs(w).max() ** 2 * 255)
    np.testing.assert_allclose(_decoded(grey[-1]).reshape(3, 3, -1)[..., 0], want, atol=1)
    # a batch is tiled into one grid image; its first tile is the first image
    tiled = _decoded(acc.Images("rgb")[0])
    np.testing.assert_array_equal(tiled[:4, :5, :3], np.arange(60, dtype=np.uint8).reshape(4, 5, 3))
    assert _decoded(acc.Images("clipped")[0]).max() == 255


@pytest.mark.parametrize(
    ("image", "error", "match"),
    [
        (np.zeros((3, 8, 8)), ValueError, r"'bad' has shape \(3, 8, 8\).*channel axis last"),
        (np.zeros((8,)), ValueError, "expected \\(H, W\\)"),
        (np.zeros((4, 4), np.int32), TypeError, "dtype int32"),
    ],
)
def test_bad_images_say_what_to_do(tmp_path, image, error, match):
    with pytest.raises(error, match=match):
        _fit(TensorBoard(tmp_path, images=lambda ts: {"bad": image}), epochs=1)


def test_images_must_be_a_function_returning_a_dict(tmp_path):
    with pytest.raises(TypeError, match="`images` must be a function"):
        TensorBoard(tmp_path, images=np.zeros((2, 2)))
    for every in (0, 1.5):  # a count of epochs, at least 1
        with pytest.raises(ValueError, match=r"`images_every` must be a number of epochs >= 1"):
            TensorBoard(tmp_path, images=lambda ts: {}, images_every=every)
    with pytest.raises(TypeError, match="must return a dict"):
        _fit(TensorBoard(tmp_path, images=lambda ts: np.zeros((2, 2))), epochs=1)


def test_event_file_closed_and_readable_when_fit_raises(tmp_path):
    """fit fails in epoch 2 (a callback raises): on_exception closes the writer, so epoch 1's
    scalars are on disk, and the training error is what propagates."""
    tb = TensorBoard(tmp_path)

    def boom(epoch, logs, ts):
        if epoch == 1:
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        _fit([tb, fn.callbacks.LambdaCallback(on_epoch_end=boom)])
    assert tb.writer.file_writer is None  # what tensorboardX's close() leaves
    assert [e.step for e in _read(tmp_path).Scalars("loss")] == [1, 2]


def test_missing_tensorboardx_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "tensorboardX", None)
    with pytest.raises(ImportError, match=r"pip install 'funcnet\[tensorboard\]'"):
        TensorBoard(tmp_path)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"histograms": -1}, ValueError, "`histograms`"),
        ({"histograms": 1.5}, ValueError, "`histograms`"),
        ({"update_every": 0}, ValueError, "`update_every`"),
        ({"x_axis": "time"}, ValueError, "`x_axis`"),
        ({"model": fn.Dense(1)}, ValueError, "needs `inputs`"),
        ({"hparams": {"layers": [1, 2]}}, TypeError, "'layers' is a list"),
    ],
)
def test_bad_arguments(tmp_path, kwargs, error, match):
    with pytest.raises(error, match=match):
        TensorBoard(tmp_path, **kwargs)


def test_exported_from_callbacks():
    assert fn.callbacks.TensorBoard is TensorBoard
