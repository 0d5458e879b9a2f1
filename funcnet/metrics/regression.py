"""Regression metrics: mean absolute error and R²."""

from __future__ import annotations

import jax.numpy as jnp

from funcnet.metrics._base import (
    Metric,
    _check_int,
    _floating,
    _mean_metric,
    _safe_div,
    _same_shape,
    _shape,
    _weights,
    labels_of,
)

__all__ = ["mean_absolute_error", "r2"]


def mean_absolute_error(*, name: str = "mean_absolute_error") -> Metric:
    """Mean of ``|outputs - targets|`` over every element (scikit-learn's ``mean_absolute_error``).

    ``outputs`` and ``targets`` have the same shape; ``weights`` cover their
    leading axes. Over several outputs this is the uniform average of the
    per-output errors, as scikit-learn's default.

    Examples:
        >>> m = mean_absolute_error()
        >>> m.compute(m.update(m.init(), jnp.array([1.0, 2.0]), jnp.array([2.0, 2.0])))
        Array(0.5, dtype=float32)
    """

    def values_fn(outputs, targets):
        if targets is None:
            raise TypeError(f"{name}: `update` needs `targets`.")
        outputs = _floating(name, "outputs", outputs)
        targets = _floating(name, "targets", labels_of(name, targets))
        _same_shape(name, outputs, targets)
        return jnp.abs(outputs - targets)

    return _mean_metric(name, values_fn)


# ----------------------------------------------------------------------------- R²


def r2(
    num_outputs: int | None = None,
    *,
    multioutput: str = "uniform_average",
    name: str = "r2",
) -> Metric:
    """The coefficient of determination R² (scikit-learn's ``r2_score``).

    ``R² = 1 - SS_res / SS_tot`` with ``SS_res = sum w (y - ŷ)²`` and
    ``SS_tot = sum w (y - ȳ)²``. The state holds, per output, the total weight
    ``n``, the running mean of the targets and ``SS_tot`` (merged with Chan's
    parallel formula: stable where ``sum y²`` - ``(sum y)² / n`` in float32
    would cancel catastrophically for targets far from 0) and ``SS_res``.

    As scikit-learn (``force_finite=True``): constant targets give 1.0 if the
    predictions are perfect, else 0.0. No data gives NaN.

    Args:
        num_outputs: ``None``: ``outputs`` and ``targets`` of any equal shape
            are one output (every entry a sample). An int ``d``: shape
            ``(..., d)``, one R² per output.
        multioutput: ``"uniform_average"`` (the mean of the per-output R²) or
            ``"raw_values"`` (shape ``(d,)``).
        name: the metric's name.

    Examples:
        >>> m = r2()
        >>> s = m.update(m.init(), jnp.array([1.0, 2.0, 2.5]), jnp.array([1.0, 2.0, 3.0]))
        >>> m.compute(s)
        Array(0.875, dtype=float32)
    """
    if num_outputs is not None:
        num_outputs = _check_int(name, "num_outputs", num_outputs, 1)
    if multioutput not in ("uniform_average", "raw_values"):
        raise ValueError(
            f"{name}: `multioutput` must be 'uniform_average' or 'raw_values', got {multioutput!r}."
        )
    shape = () if num_outputs is None else (num_outputs,)

    def init():
        zeros = jnp.zeros(shape, jnp.float32)
        return {"n": zeros, "mean": zeros, "ss_tot": zeros, "ss_res": zeros}

    def merge(a, b):
        n = a["n"] + b["n"]
        delta = b["mean"] - a["mean"]
        frac = _safe_div(b["n"], n)
        return {
            "n": n,
            "mean": a["mean"] + delta * frac,
            "ss_tot": a["ss_tot"] + b["ss_tot"] + delta * delta * a["n"] * frac,
            "ss_res": a["ss_res"] + b["ss_res"],
        }

    def update(state, outputs, targets, *, weights=None):
        outputs = _floating(name, "outputs", outputs)
        targets = _floating(name, "targets", labels_of(name, targets))
        _same_shape(name, outputs, targets)
        if num_outputs is not None and (outputs.ndim < 1 or outputs.shape[-1] != num_outputs):
            raise ValueError(
                f"{name}: expected `outputs` of shape (..., {num_outputs}) for num_outputs="
                f"{num_outputs}, got {_shape(outputs.shape)}."
            )
        axes = tuple(range(outputs.ndim - len(shape)))
        w = _weights(name, weights, outputs.shape, jnp.float32)
        keep = w != 0
        y = jnp.where(keep, targets, 0)
        res = jnp.where(keep, targets - outputs, 0)
        n = jnp.sum(w, axis=axes)
        mu = _safe_div(jnp.sum(w * y, axis=axes), n)
        batch = {
            "n": n,
            "mean": mu,
            "ss_tot": jnp.sum(w * jnp.where(keep, y - mu, 0) ** 2, axis=axes),
            "ss_res": jnp.sum(w * res * res, axis=axes),
        }
        return merge(state, batch)

    def compute(state):
        ss_tot, ss_res = state["ss_tot"], state["ss_res"]
        score = jnp.where(
            ss_tot != 0,
            1 - _safe_div(ss_res, ss_tot),
            jnp.where(ss_res == 0, 1.0, 0.0),
        )
        score = jnp.where(state["n"] > 0, score, jnp.nan)
        return score if multioutput == "raw_values" else jnp.mean(score)

    return Metric(init, update, merge, compute, name)
