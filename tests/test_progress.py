"""Tests for fit's progress output: a live bar only on a terminal, one line per epoch always."""

import io
import sys

import numpy as np
import optax
import pytest

import funcnet as fn


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def _fit(verbose=None):  # None: fit's default (1)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 3)).astype(np.float32)
    y = x.sum(1, keepdims=True)
    options = {} if verbose is None else {"verbose": verbose}
    fn.fit(fn.Dense(1), optax.sgd(1e-2), "mse", (x, y), epochs=3, batch_size=8, **options)


def test_no_bar_when_stderr_is_not_a_terminal(capsys):
    _fit()
    out, err = capsys.readouterr()
    assert err == ""
    lines = out.splitlines()
    assert len(lines) == 3
    assert [line.split()[:2] for line in lines] == [["epoch", f"{e}/3"] for e in (1, 2, 3)]


def test_bar_on_a_terminal(capsys, monkeypatch):
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    _fit()
    assert "epoch 1/3" in terminal.getvalue() and "step" in terminal.getvalue()
    assert "loss " in terminal.getvalue()  # the running loss, from the first call on
    assert "\n" not in terminal.getvalue()  # leave=False: each bar is cleared at its epoch's end
    assert len(capsys.readouterr().out.splitlines()) == 3  # and the epoch's line stays


@pytest.mark.parametrize("verbose", [0, 2])
def test_no_bar_without_verbose_1(capsys, monkeypatch, verbose):
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    _fit(verbose)
    assert terminal.getvalue() == ""
    assert len(capsys.readouterr().out.splitlines()) == (3 if verbose else 0)


def test_a_notebook_bar_is_live_without_a_terminal():
    """``_live_bar``: a tqdm notebook widget draws in a notebook, whose stderr is no terminal;
    another bar class needs a terminal."""
    from funcnet.training.loop import _live_bar

    class Widget:
        pass

    Widget.__module__ = "tqdm.notebook"
    assert _live_bar(Widget)
    assert not _live_bar(type("Text", (), {}))  # pytest's captured stderr is no terminal
