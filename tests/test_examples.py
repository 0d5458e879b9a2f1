"""The examples run end to end (shortened) and reach a sensible result."""

import importlib.util
import pathlib

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
