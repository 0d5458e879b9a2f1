"""Tests for funcnet.training.History: the plot numbers epochs from 1, as the logs."""

import numpy as np
import pytest

from funcnet.training import History


def test_plot_x_axis_starts_at_epoch_one(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    from matplotlib.figure import Figure

    saved = []
    original = Figure.savefig

    def savefig(self, *args, **kwargs):
        saved.append(self)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", savefig)
    h = History()
    for epoch, (loss, val) in enumerate([(1.0, 1.2), (0.5, 0.9), (0.25, 0.8)]):
        per_class = np.array([0.5, 0.25])  # not a scalar: no curve
        logs = {"loss": loss, "val_loss": val, "accuracy": 0.5 + epoch / 10, "recall": per_class}
        h.append(epoch, logs)
    path = h.plot(str(tmp_path / "curves.png"))
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    (fig,) = saved
    assert [ax.get_title() for ax in fig.axes] == ["loss", "accuracy"]
    labels = [[line.get_label() for line in ax.get_lines()] for ax in fig.axes]
    assert labels == [["loss", "val_loss"], ["accuracy"]]  # val_ on its quantity's axis
    np.testing.assert_array_equal(fig.axes[0].get_lines()[1].get_ydata(), [1.2, 0.9, 0.8])
    for ax in fig.axes:
        for line in ax.get_lines():
            np.testing.assert_array_equal(line.get_xdata(), [1, 2, 3])
        ticks = [t for t in ax.get_xticks() if 1 <= t <= 3]
        assert all(float(t).is_integer() for t in ticks)
    assert h.epoch == [0, 1, 2]  # the attribute keeps Keras' 0-based indices


def test_plot_of_one_epoch(tmp_path):
    """One epoch of logs plots (each quantity's first value says whether it is a scalar)."""
    pytest.importorskip("matplotlib")
    h = History()
    h.append(0, {"loss": 1.0, "val_loss": 1.2})
    with open(h.plot(str(tmp_path / "one.png")), "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
