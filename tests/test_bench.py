"""Tests of the benchmark harness (bench/): it runs, and it compares like with like.

Speed is never asserted here (see STYLE.md: benchmarks are not tests). These
check that ``python bench/run.py --quick`` works end to end on one small
workload, that every funcnet workload (built as the README builds it) and its
hand-written pure-JAX reference compute the same loss and gradients from the
same weights (what makes their time ratio meaningful), and that the profile
helper and the GPT benchmark run on CPU with tiny sizes.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench import impls as bench_impls  # noqa: E402
from bench.workloads import NAMES as WORKLOADS  # noqa: E402
from bench.workloads import get as get_workload  # noqa: E402


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
    hand_written = "## Notes (`bench/x.py`, not written by `run.py`)\n\nkept 42\n"
    (tmp_path / "RESULTS.md").write_text("# old run\n\n## Targets\nstale 17\n\n" + hand_written)
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
    # XLA's peak memory of a step holds at least the params, Adam's two moments and a batch
    n_params = 32 * 64 + 64 + 64 * 64 + 64 + 64 + 1
    for name in impls:
        assert rows[name]["xla_peak_bytes"] >= 4 * (3 * n_params + 32 * 33), name
    text = (tmp_path / "RESULTS.md").read_text()
    assert "## Targets" in text and "### tiny_mlp" in text
    assert "tiny_mlp: peak memory funcnet / jax <= 1.05" in text
    # a new run replaces its own sections and keeps the hand-written ones after them
    assert "stale 17" not in text and text.endswith(hand_written)
    assert {(r["workload"], r["devices"]) for r in payload["scaling"]} == {("mlp", 2)}
    assert all(r["step_ms"] > 0 for r in payload["scaling"])
    assert "## Data-parallel scaling" in text


@pytest.mark.parametrize("name", WORKLOADS)
def test_workload_funcnet_equals_reference(name):
    """funcnet's model and the pure-JAX reference: same loss and gradients, same weights."""
    import funcnet as fn

    workload = get_workload(name)
    x, y = workload.make_data(np.random.default_rng(0), 3)
    model = workload.funcnet()
    params, state = model.init(jax.random.key(1), x)
    funcnet_loss = fn.losses.get(bench_impls.funcnet_loss_name(workload))
    ref_loss = bench_impls.loss_fn(workload.loss)

    @jax.jit
    def both(params):
        got = jax.value_and_grad(lambda p: funcnet_loss(model.apply(p, state, x)[0], y))(params)
        ref = jax.value_and_grad(lambda p: ref_loss(workload.jax_apply(p, x), y))(
            workload.from_funcnet(params)
        )
        return got, ref

    (loss, grads), (ref_value, ref_grads) = both(params)
    np.testing.assert_allclose(loss, ref_value, rtol=1e-5)
    grads = workload.from_funcnet(grads)
    assert jax.tree.structure(grads) == jax.tree.structure(ref_grads)
    # tolerance relative to the largest gradient: some (attention key biases) are exactly 0
    scale = max(float(jnp.max(jnp.abs(g))) for g in jax.tree.leaves(ref_grads))
    want = dict(jax.tree_util.tree_leaves_with_path(ref_grads))
    for path, g in jax.tree_util.tree_leaves_with_path(grads):
        np.testing.assert_allclose(g, want[path], rtol=1e-4, atol=1e-6 * scale, err_msg=str(path))
    # the reference is not trivially the same function: other weights give another loss
    shifted = jax.tree.map(lambda a: a + 0.01, workload.from_funcnet(params))
    assert abs(float(ref_loss(workload.jax_apply(shifted, x), y)) - float(ref_value)) > 1e-6


def test_workload_transformer_is_the_readme_stack():
    """The bench's transformer is ``fn.transformer_encoder`` with its defaults (2 blocks: the
    scan over the stacked blocks unrolled)."""
    workload = get_workload("transformer")
    x, _ = workload.make_data(np.random.default_rng(0), 1)
    params, _ = jax.eval_shape(workload.funcnet().init, jax.random.key(0), x)
    (stacked, norm), _, head = params
    assert stacked["mlp"][1]["w"].shape == (2, 128, 512)  # 2 blocks stacked: repeat's params
    assert norm["scale"].shape == (128,) and head["w"].shape == (128, 10)


def test_gpt_tiny_runs_and_implementations_agree():
    """``bench/gpt.py --size tiny`` in-process: same step-0 loss, tokens/s and MFU reported."""
    from bench import gpt, gpt_models

    cfg = gpt.CONFIGS["tiny"]
    assert gpt_models.param_count(cfg) == 137216  # funcnet's own count of the same model
    impls = ["funcnet", "jax", "flax_linen"]
    args = ["--size", "tiny", "--rounds", "1", "--window", "0.01", "--peak-tflops", "2"]
    with jax.numpy_dtype_promotion("standard"):  # as users run it (optax's Adam needs it)
        report = gpt.main([*args, "--impls", *impls])
    losses = report["initial_losses"]
    # random init over 256 tokens: the loss is near log(256), and the three agree to bf16 rounding
    assert abs(losses["funcnet"] - np.log(256)) < 0.5
    for name, value in losses.items():
        np.testing.assert_allclose(value, losses["funcnet"], rtol=5e-3, err_msg=name)
    rows = {r["impl"]: r for r in report["rows"]}
    for name in ("funcnet", "jax"):
        row = rows[name]
        assert row["status"] == "ok", row
        tokens = cfg.batch * cfg.seq / (row["step_ms"] / 1e3)
        np.testing.assert_allclose(row["tokens_per_s"], tokens, rtol=1e-9)
        flops = gpt.flops_per_token(cfg) * tokens
        np.testing.assert_allclose(row["mfu"], flops / 2e12, rtol=1e-9)
    if rows["flax_linen"]["status"] == "skipped":
        assert "flax" in rows["flax_linen"]["reason"]
    assert "| funcnet |" in gpt.render(report) and "MFU" in gpt.render(report)


def test_gpt_flops_and_peak_table():
    from bench import gpt

    cfg = gpt.GPTConfig(layers=1, width=4, heads=1, vocab=10, seq=3, batch=1)
    # block: q, k, v, out 4x4 + 4x16 + 16x4 = 192 weights, biases 4*4 + 16 + 4 = 36, two
    # norms 16; final norm 8; head 4x10 + 10: N = 192 + 36 + 16 + 8 + 50 = 302
    assert gpt.flops_per_token(cfg) == 6 * 302 + 12 * 1 * 4 * 3
    assert gpt.peak_tflops("NVIDIA H200") == 989.0
    assert gpt.peak_tflops("NVIDIA A100-SXM4-80GB") == 312.0
    assert gpt.peak_tflops("TFRT_CPU_0") is None


def test_profile_tiny_mlp(tmp_path):
    """``bench/step_profile.py``: HLO op counts, XLA's memory analysis, PyTorch's top ops."""
    from bench import step_profile as profile

    hlo_path = tmp_path / "step.hlo"
    with jax.numpy_dtype_promotion("standard"):  # as users run it (optax's Adam needs it)
        report = profile.main(["tiny_mlp", "--impl", "funcnet", "--hlo", str(hlo_path)])
    xla, text, hlo = report["xla"], report["markdown"], hlo_path.read_text()
    assert hlo == xla["hlo"] and "ENTRY" in hlo
    ops = xla["ops"]
    # a plain count of the text: every dot, fused or not; no loops in a single step
    assert ops["dot (all)"] == len(re.findall(r"= f32\[[\d,]*\]\{[\d,]*\} dot\(", hlo)) > 0
    assert ops["while"] == 0 and ops["fusion"] > 0
    assert ops["instructions"] >= ops["fusion"] + ops["dot"] + ops["copy/transpose"]
    # arguments: params 32*64+64 + 64*64+64 + 64+1, Adam's mu and nu the same, float32;
    # the batch (32x32 + 32x1 float32), step and Adam count (int32), the key (2 x uint32)
    n_params = 32 * 64 + 64 + 64 * 64 + 64 + 64 + 1
    assert xla["memory"]["argument_bytes"] == 4 * (3 * n_params + 32 * 33 + 2 + 2)
    assert xla["memory"]["temp_bytes"] > 0 and xla["compile_s"] > 0
    assert "| count |" in text and "argument MiB" in text
    if importlib.util.find_spec("torch") is not None:
        assert "| `aten::" in text
        top = report["torch"]
        assert any(r["op"] in ("aten::mm", "aten::addmm") for r in top["top"])
        assert all(r["self_ms"] >= 0 for r in top["top"]) and top["step_ms"] > 0


def test_profile_bad_impl():
    from bench import step_profile as profile

    with pytest.raises(ValueError, match="unknown implementation 'flax'; choose from jax"):
        profile.xla_profile("tiny_mlp", "flax")


def test_unroll_table_and_its_section(tmp_path):
    """``bench/unroll.py`` at depth 1: three builds, ratios to ``unrolled``, and ``--write``
    replaces only its own section of a results file."""
    from bench import unroll

    with jax.numpy_dtype_promotion("standard"):  # as users run it (optax's Adam needs it)
        rows = unroll.measure([1], rounds=1, calls=1, log=lambda *_: None)
    assert [r["build"] for r in rows] == list(unroll.BUILDS)
    assert [r["vs_unrolled"] for r in rows if r["build"] == "unrolled"] == [1.0]
    assert all(r["step_ms"] > 0 and r["compile_s"] > 0 for r in rows)
    path = tmp_path / "RESULTS.md"
    path.write_text(f"# r\n\n{unroll.SECTION}, old)\n\nstale\n\n## Other (x)\n\nkept\n")
    unroll.write_section(path, unroll.markdown(rows), unroll.SECTION)
    text = path.read_text()
    assert "stale" not in text and "| 1 | serial |" in text
    assert text.endswith("## Other (x)\n\nkept\n")
