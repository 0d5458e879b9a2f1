"""The examples run end to end (shortened) and reach a sensible result."""

import importlib.util
import pathlib
import struct

import numpy as np
import pytest

STRICT_DTYPES = False  # optax.adam is not strict-clean

EXAMPLES = pathlib.Path(__file__).resolve().parent.parent / "examples"


def load(name):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_quickstart_learns_digits(capsys):
    pytest.importorskip("sklearn")
    acc = load("quickstart").main(epochs=8)
    assert acc > 0.9
    assert "test accuracy" in capsys.readouterr().out


def write_idx(path, array):
    """An IDX file: magic ``0x0000 08 ndim``, big-endian dimensions, unsigned bytes."""
    array = np.asarray(array, np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.tobytes())


def write_fake_mnist(folder):
    """The four MNIST files made of scikit-learn's digits, upscaled 3x and padded to 28x28."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.kron(digits.images, np.ones((3, 3)))  # (1797, 24, 24), values 0..16
    images = np.pad(images, ((0, 0), (2, 2), (2, 2))) * (255 / 16)
    labels = digits.target
    for stem, part in (("train", slice(0, 1400)), ("t10k", slice(1400, None))):
        write_idx(folder / f"{stem}-images-idx3-ubyte", np.round(images[part]))
        write_idx(folder / f"{stem}-labels-idx1-ubyte", labels[part])
    return folder


def test_binary_classifier_fit_and_hand_written_loop_agree(capsys):
    result = load("binary_classifier").main(epochs=5, n_train=4000, lr=1e-2)
    # logistic regression gets ~0.57 on this XOR-like task; the best possible is 0.95
    assert result["fit_accuracy"] > 0.8
    assert result["manual_accuracy"] > 0.8
    assert abs(result["fit_accuracy"] - result["manual_accuracy"]) < 0.1
    assert "test accuracy:" in capsys.readouterr().out.splitlines()[-1]


def test_mlp_digits_learns(capsys):
    pytest.importorskip("sklearn")
    result = load("mlp_digits").main(epochs=5)
    assert result["test_accuracy"] > 0.9
    assert capsys.readouterr().out.splitlines()[-1].startswith("test accuracy: ")


def test_mlp_reads_mnist_idx_files(tmp_path, capsys):
    pytest.importorskip("sklearn")
    result = load("mlp_digits").main(epochs=3, hidden=128, mnist=str(write_fake_mnist(tmp_path)))
    assert result["test_accuracy"] > 0.85
    assert "data: MNIST, 1260 train, 140 val, 397 test, 784 features" in capsys.readouterr().out


def test_cnn_digits_learns_with_augmentation(capsys):
    pytest.importorskip("sklearn")
    result = load("cnn_digits").main(epochs=6, log_every=2)
    assert result["test_accuracy"] > 0.85
    assert result["seconds_per_epoch"] > 0
    out = capsys.readouterr().out
    assert "val_accuracy" in out
    assert out.splitlines()[-1].startswith("test accuracy: ")


def test_gan_covers_modes_and_saves_png(tmp_path, capsys):
    png = tmp_path / "gan.png"
    result = load("gan").main(steps=1600, seed=1, n_eval=1000, out=str(png))
    # a collapsed generator covers 1 or 2 of the 8 modes; the full run covers 8
    assert result["modes"] >= 5
    assert result["high_quality"] > 0.2
    out = capsys.readouterr().out
    assert "modes covered:" in out and out.splitlines()[-1].startswith("high-quality samples: ")
    if importlib.util.find_spec("matplotlib") is not None:
        assert result["png"] == str(png) and png.stat().st_size > 1000


def test_vae_elbo_improves_and_saves_png(tmp_path, capsys):
    pytest.importorskip("sklearn")
    png = tmp_path / "vae.png"
    result = load("vae").main(epochs=15, out=str(png), log_every=5)
    assert result["test_elbo"] == pytest.approx(-(result["reconstruction"] + result["kl"]))
    assert result["kl"] > 0
    assert result["floor"] < result["reconstruction"] < 35  # an untrained decoder gives ~44
    assert capsys.readouterr().out.splitlines()[-1].startswith("test ELBO: ")
    if importlib.util.find_spec("matplotlib") is not None:
        assert result["png"] == str(png) and png.stat().st_size > 1000
