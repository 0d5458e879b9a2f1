"""Smoke test of the benchmark harness (bench/): it runs and writes finite numbers.

Speed is never asserted here (see STYLE.md: benchmarks are not tests); this
only checks that ``python bench/run.py --quick`` works end to end on one small
workload with funcnet and pure JAX, so the harness does not rot.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_bench_quick_smoke(tmp_path):
    impls = ["jax", "jax_fused", "funcnet", "funcnet_fused"]
    cmd = [
        sys.executable,
        str(REPO / "bench" / "run.py"),
        "--quick",
        "--workloads",
        "tiny_mlp",
        "--impls",
        *impls,
        "--rounds",
        "2",
        "--depths",
        "--scaling",
        "2",
        "--out",
        str(tmp_path),
    ]
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env, cwd=REPO)
    assert proc.returncode == 0, proc.stdout + proc.stderr

    payload = json.loads((tmp_path / "results.json").read_text())
    rows = {r["impl"]: r for r in payload["rows"]}
    assert set(rows) == set(impls)
    for name, row in rows.items():
        assert row["status"] == "ok", (name, row.get("reason"))
        for field in ("step_ms", "compile_s", "vs_jax", "gflops", "pct_peak"):
            assert math.isfinite(row[field]) and row[field] >= 0, (name, field, row[field])
        assert row["samples_ms"] and all(math.isfinite(v) for v in row["samples_ms"])
    assert payload["matmul_peak"]["gflops"] > 0
    text = (tmp_path / "RESULTS.md").read_text()
    assert "## Targets" in text and "### tiny_mlp" in text
    assert {(r["workload"], r["devices"]) for r in payload["scaling"]} == {("mlp", 2)}
    assert all(r["step_ms"] > 0 for r in payload["scaling"])
    assert "## Data-parallel scaling" in text
