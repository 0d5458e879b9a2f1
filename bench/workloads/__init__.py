"""The benchmark workloads, by name (each module defines ``WORKLOAD``)."""

from __future__ import annotations

import importlib

NAMES = ("mlp", "cnn", "lstm", "gru", "tiny_mlp", "transformer")


def get(name: str):
    """The :class:`~bench.workloads._base.Workload` called ``name``."""
    if name not in NAMES:
        raise ValueError(f"unknown workload {name!r}; choose from {', '.join(NAMES)}.")
    return importlib.import_module(f"bench.workloads.{name}").WORKLOAD
