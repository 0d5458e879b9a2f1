"""``History``: the per-epoch logs of a ``fit`` run."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["History"]


class History:
    """Per-epoch logs of a :func:`fit` run: ``history["val_loss"]`` is a list, one per epoch.

    Attributes:
        history: ``{name: [value per epoch]}``.
        epoch: the epoch indices, counted from 0 (as Keras' ``History.epoch``);
            the logs and :meth:`plot` number epochs from 1.

    Examples:
        >>> h = History()
        >>> h.append(0, {"loss": 1.0}); h.append(1, {"loss": 0.5})
        >>> h["loss"], h.epoch
        ([1.0, 0.5], [0, 1])
    """

    def __init__(self):
        self.history: dict[str, list] = {}
        self.epoch: list[int] = []

    def append(self, epoch: int, logs: Mapping[str, Any]) -> None:
        self.epoch.append(epoch)
        for k, v in logs.items():
            self.history.setdefault(k, []).append(v)

    def __getitem__(self, key: str) -> list:
        return self.history[key]

    def __repr__(self) -> str:
        last = {k: v[-1] for k, v in self.history.items()}
        return f"History(epochs={len(self.epoch)}, last={last})"

    def plot(self, path: str, keys: Sequence[str] | None = None) -> str:
        """Plot the curves (train and ``val_`` on one axis per quantity) to a PNG; needs matplotlib.

        The x axis numbers epochs from 1, as the logs (``epoch 1/10``) do, with
        integer ticks.

        Returns:
            ``path``.
        """
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError as err:  # pragma: no cover - depends on the environment
            raise ImportError("History.plot needs matplotlib: `pip install matplotlib`.") from err
        names = [k for k in (keys or self.history) if not k.startswith("val_")]
        names = [k for k in names if np.ndim(self.history[k][0]) == 0]
        from matplotlib.ticker import MaxNLocator

        fig, axes = plt.subplots(1, len(names), figsize=(4 * len(names), 3), squeeze=False)
        epochs = [e + 1 for e in self.epoch]  # as the logs: epoch 1, 2, ...
        for ax, name in zip(axes[0], names):
            ax.plot(epochs, self.history[name], label=name)
            if "val_" + name in self.history:
                ax.plot(epochs, self.history["val_" + name], label="val_" + name)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_xlabel("epoch")
            ax.set_title(name)
            ax.legend()
        fig.tight_layout()
        fig.savefig(path)
        plt.close(fig)
        return path
