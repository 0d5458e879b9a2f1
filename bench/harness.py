"""Timing and reporting: interleaved windows, medians, ratios, FLOP rates, the results files.

Method (see README.md): every implementation is compiled by its first call
(timed: ``compile_s`` = first call minus one steady call), warmed up, and
calibrated to a window of about ``window_s`` seconds. Then, round after round,
each implementation runs one window (the order rotates every round, so slow
drifts of a shared machine hit all of them alike). A window is ``n`` calls
queued back to back and one wait at the end; its time divided by the steps it
ran is one sample. Reported: the median sample, the spread (interquartile
range / median) and the ratio to the pure-JAX reference, taken as the median
over rounds of the per-round ratio (paired, so load that changes between
rounds cancels).
"""

from __future__ import annotations

import datetime as _dt
import gc
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from bench import impls as impls_lib
from bench.workloads._base import Skip, Workload

REPO = Path(__file__).resolve().parents[1]


@dataclass
class Settings:
    quick: bool = False
    window_s: float = 0.25
    rounds: int = 9
    recompiles: int = 3  # fresh AOT compiles of the jax/funcnet steps, for compile-time ratios

    @classmethod
    def make(cls, quick: bool) -> Settings:
        if quick:
            return cls(quick=True, window_s=0.03, rounds=3, recompiles=0)
        return cls()

    def fused_steps(self, workload: Workload) -> int:
        k = workload.fused_steps
        return max(2, k // 5) if self.quick else k


# ----------------------------------------------------------------------------- machine


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def _version(module: str) -> str | None:
    try:
        from importlib.metadata import version

        return version(module)
    except Exception:
        return None


def _git() -> str | None:
    try:
        rev = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        return f"{rev}{' (uncommitted changes)' if dirty else ''}" if rev else None
    except Exception:
        return None


def machine_info() -> dict:
    device = jax.devices()[0]
    info = {
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "memory_gib": _memory_gib(),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "backend": jax.default_backend(),
        "device": f"{device.platform}:{device.device_kind}",
        "device_count": jax.device_count(),
        "git": _git(),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "versions": {
            name: _version(dist)
            for name, dist in (
                ("funcnet", "funcnet"),
                ("jax", "jax"),
                ("jaxlib", "jaxlib"),
                ("optax", "optax"),
                ("numpy", "numpy"),
                ("flax", "flax"),
                ("dm-haiku", "dm-haiku"),
                ("equinox", "equinox"),
                ("torch", "torch"),
            )
        },
    }
    if hasattr(os, "getloadavg"):
        info["loadavg_start"] = [round(v, 2) for v in os.getloadavg()]
    return info


def matmul_peak(quick: bool) -> dict:
    """The best float32 matmul rate XLA reaches here (GFLOP/s), over a few square sizes."""
    sizes = (512, 1024, 2048) if jax.default_backend() == "cpu" else (2048, 4096, 8192)
    if quick:
        sizes = sizes[1:2]
    matmul = jax.jit(jnp.matmul)
    best, per_size = 0.0, {}
    for n in sizes:
        a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
        b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
        matmul(a, b).block_until_ready()
        t0 = time.perf_counter()
        matmul(a, b).block_until_ready()
        reps = max(1, int(0.1 / max(time.perf_counter() - t0, 1e-6)))
        rates = []
        for _ in range(3 if quick else 7):
            t0 = time.perf_counter()
            for _ in range(reps):
                c = matmul(a, b)
            c.block_until_ready()
            rates.append(2 * n**3 * reps / (time.perf_counter() - t0) / 1e9)
        per_size[n] = round(statistics.median(rates), 1)
        best = max(best, per_size[n])
    return {"gflops": round(best, 1), "per_size": per_size}


# ----------------------------------------------------------------------------- timing


def _window(runner: impls_lib.Runner, calls: int) -> float:
    enabled = gc.isenabled()
    gc.disable()
    try:
        t0 = time.perf_counter()
        for _ in range(calls):
            runner.call()
        runner.sync()
        return time.perf_counter() - t0
    finally:
        if enabled:
            gc.enable()


def _calibrate(runner: impls_lib.Runner, window_s: float) -> tuple[int, float]:
    """Calls per window, and the time of one call."""
    calls = 1
    while True:
        dt = _window(runner, calls)
        if dt >= 0.25 * window_s or calls >= 100_000:
            break
        calls *= 4
    per_call = dt / calls
    return max(1, round(window_s / per_call)), per_call


def _quantile(xs, q):
    return float(np.quantile(np.asarray(xs), q))


def measure_workload(
    workload: Workload, impl_names: list[str], settings: Settings, log=print
) -> list[dict]:
    """Build, compile, calibrate and time every implementation of ``workload``; one row each."""
    k = settings.fused_steps(workload)
    data = impls_lib.Data(workload, k)
    rows, live = [], []
    for name in impl_names:
        row = {"workload": workload.name, "impl": name, "status": "ok"}
        rows.append(row)
        try:
            runner = impls_lib.BUILDERS[name](workload, data)
            row.update(prepare(name, runner, settings, workload.name))
        except Skip as err:
            row.update(status="skipped", reason=str(err))
            log(f"  {name:14s} skipped: {err}")
            continue
        except Exception as err:  # an implementation that breaks must not stop the others
            row.update(status="error", reason=f"{type(err).__name__}: {err}".splitlines()[0])
            log(f"  {name:14s} ERROR: {row['reason']}")
            if os.environ.get("BENCH_DEBUG"):
                traceback.print_exc()
            continue
        live.append((row, runner))
        log(f"  {name:14s} compiled in {row['compile_s']:.2f}s, {row['window_calls']} calls/window")

    time_rounds(live, settings)
    flops = impls_lib.workload_flops(workload, data)
    if settings.recompiles:
        for row, runner in live:
            if runner.recompile is None or row["impl"] not in ("jax", "funcnet"):
                continue
            times = [runner.recompile() for _ in range(settings.recompiles)]
            row["recompile_lower_s"] = statistics.median(t[0] for t in times)
            row["recompile_compile_s"] = statistics.median(t[1] for t in times)
            row["recompile_total_s"] = statistics.median(t[0] + t[1] for t in times)

    _summarize(rows, flops)
    return rows


def time_rounds(live: list[tuple[dict, impls_lib.Runner]], settings: Settings) -> None:
    """Interleaved windows: every round, each runner once, in an order rotating by round."""
    gc.collect()
    for r in range(settings.rounds):
        shift = r % len(live) if live else 0
        for row, runner in live[shift:] + live[:shift]:
            dt = _window(runner, row["window_calls"])
            row["samples_ms"].append(1e3 * dt / (row["window_calls"] * row["steps_per_call"]))


def prepare(name: str, runner: impls_lib.Runner, settings: Settings, workload: str = "") -> dict:
    """First call (compile), warm-up and calibration of one runner; its row."""
    t0 = time.perf_counter()
    runner.call()
    runner.sync()
    first = time.perf_counter() - t0
    runner.call()
    runner.sync()
    calls, per_call = _calibrate(runner, settings.window_s)
    return {
        "workload": workload,
        "impl": name,
        "status": "ok",
        "steps_per_call": runner.steps_per_call,
        "window_calls": calls,
        "first_call_s": first,
        "compile_s": max(first - per_call, 0.0),
        "xla_flops_per_call": runner.flops() if runner.flops is not None else None,
        "xla_peak_bytes": runner.memory() if runner.memory is not None else None,
        "note": runner.note,
        "samples_ms": [],
    }


def compare(runners: dict, settings: Settings, reference: str) -> list[dict]:
    """Time named runners against ``reference`` (for scratch studies); rows with ``vs_ref``."""
    live = [(prepare(name, r, settings), r) for name, r in runners.items()]
    time_rounds(live, settings)
    rows = [row for row, _ in live]
    _summarize(rows)
    ref = next(r for r in rows if r["impl"] == reference)
    for row in rows:
        pairs = zip(row["samples_ms"], ref["samples_ms"])
        row["vs_ref"] = statistics.median(a / b for a, b in pairs)
    return rows


def _summarize(rows: list[dict], flops: float | None = None) -> None:
    """Medians, spreads, paired ratios to the reference, FLOP rates (``flops`` per step)."""
    ok = [r for r in rows if r["status"] == "ok" and r.get("samples_ms")]
    for row in ok:
        s = row["samples_ms"]
        row["step_ms"] = statistics.median(s)
        row["spread_pct"] = 100 * (_quantile(s, 0.75) - _quantile(s, 0.25)) / row["step_ms"]
    ref = next((r for r in ok if r["impl"] == impls_lib.REFERENCE), None)
    for row in ok:
        if ref is not None:
            pairs = zip(row["samples_ms"], ref["samples_ms"])
            row["vs_jax"] = statistics.median(a / b for a, b in pairs)
    # FLOPs of one step: the reference's per-step computation (the same math for everybody)
    for row in ok:
        row["flops_per_step"] = flops
        if flops:
            row["gflops"] = flops / (row["step_ms"] * 1e-3) / 1e9


def add_peak_fraction(rows: list[dict], peak_gflops: float) -> None:
    for row in rows:
        if row.get("gflops") and peak_gflops:
            row["pct_peak"] = 100 * row["gflops"] / peak_gflops


# ----------------------------------------------------------------------------- repeat depth


def repeat_depth(depths: tuple[int, ...], log=print) -> list[dict]:
    """Compile time of a train step vs depth: funcnet ``repeat`` and ``serial``, pure JAX.

    The block is ``residual(Dense(128), relu, Dense(128))``; batch 128, width
    128, a Dense(10) head, Adam. Each point is a fresh trace + lower + XLA compile.
    """
    import optax

    import funcnet as fn

    width, batch = 128, 128
    x = jnp.zeros((batch, width), jnp.float32)
    y = jnp.zeros((batch,), jnp.int32)
    opt = optax.adam(1e-3)
    xent = impls_lib.loss_fn("xent")

    def block():
        return fn.residual(fn.Dense(width), jax.nn.relu, fn.Dense(width))

    def funcnet_case(model):
        ts = fn.TrainState.create(model, opt, jax.random.key(0), x)
        step = jax.jit(fn.train_step(model, "sparse_categorical_cross_entropy", opt))
        return step, (ts, (x, y))

    def jax_case(n, scan):
        keys = jax.random.split(jax.random.key(0), 2)
        w = jax.random.normal(keys[0], (n, 2, width, width)) * 0.05
        params = {"w": w, "b": jnp.zeros((n, 2, width)), "head": jnp.zeros((width, 10))}

        def one(x, p):
            w, b = p
            return x + jax.nn.relu(x @ w[0] + b[0]) @ w[1] + b[1]

        def apply(p, x):
            if scan:
                x, _ = jax.lax.scan(lambda c, q: (one(c, q), None), x, (p["w"], p["b"]))
            else:
                for i in range(n):
                    x = one(x, (p["w"][i], p["b"][i]))
            return x @ p["head"]

        step = jax.jit(_jax_step(apply, xent, opt))
        return step, (params, opt.init(params), x, y)

    cases = {
        "funcnet repeat": lambda n: funcnet_case(fn.serial(fn.repeat(block(), n), fn.Dense(10))),
        "funcnet serial": lambda n: funcnet_case(
            fn.serial(*[block() for _ in range(n)], fn.Dense(10))
        ),
        "jax lax.scan": lambda n: jax_case(n, True),
        "jax python loop": lambda n: jax_case(n, False),
    }
    rows = []
    for name, make in cases.items():
        for n in depths:
            step, args = make(n)
            lower_s, compile_s = impls_lib._aot_time(step, args)
            rows.append(
                {"case": name, "depth": n, "trace_lower_s": lower_s, "compile_s": compile_s}
            )
            log(f"  {name:16s} depth {n:3d}: trace+lower {lower_s:.2f}s, compile {compile_s:.2f}s")
    return rows


def _jax_step(apply, loss, opt):
    return impls_lib.make_jax_step(apply, loss, opt)


# ----------------------------------------------------------------------------- report


def _fmt(v, spec=".2f", none="-"):
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return none
    return format(v, spec)


def _ms(v):
    if v is None:
        return "-"
    if v < 0.1:
        return f"{v * 1e3:.1f} µs"
    if v < 10:
        return f"{v:.3f}"
    return f"{v:.1f}"


def _get(rows, workload, impl):
    return next(
        (
            r
            for r in rows
            if r["workload"] == workload and r["impl"] == impl and r["status"] == "ok"
        ),
        None,
    )


def target_checks(rows: list[dict], depth_rows: list[dict]) -> list[tuple[str, str, str]]:
    """``(target, measured, verdict)`` for each target of the benchmark issue."""
    out = []
    workloads = sorted({r["workload"] for r in rows}, key=lambda w: _ORDER.get(w, 99))

    def ratio(w, a, b):
        ra, rb = _get(rows, w, a), _get(rows, w, b)
        if ra is None or rb is None:
            return None
        if b == impls_lib.REFERENCE:
            return ra.get("vs_jax")
        pairs = zip(ra["samples_ms"], rb["samples_ms"])
        return statistics.median(x / y for x, y in pairs)

    def verdict(ok):
        return "-" if ok is None else ("met" if ok else "**not met**")

    for w in workloads:
        v = ratio(w, "funcnet", "jax")
        out.append(
            (
                f"{w}: funcnet / jax <= 1.05",
                _fmt(v, ".3f"),
                verdict(None if v is None else v <= 1.05),
            )
        )
        v = ratio(w, "funcnet_fused", "jax_fused")
        out.append(
            (
                f"{w}: funcnet_fused / jax_fused <= 1.05",
                _fmt(v, ".3f"),
                verdict(None if v is None else v <= 1.05),
            )
        )
        a, b = _get(rows, w, "funcnet"), _get(rows, w, "jax")
        if a and b and a.get("recompile_total_s") and b.get("recompile_total_s"):
            v = a["recompile_total_s"] / b["recompile_total_s"]
            out.append(
                (
                    f"{w}: compile funcnet / jax <= 1.10 (fresh trace+lower+compile)",
                    f"{v:.2f} ({a['recompile_total_s']:.2f}s / {b['recompile_total_s']:.2f}s)",
                    verdict(v <= 1.10),
                )
            )
    if any(r["workload"] == "tiny_mlp" for r in rows):
        v = ratio("tiny_mlp", "jax", "funcnet_fused")
        out.append(
            (
                "tiny_mlp: funcnet_fused >= 3x faster than jax per call",
                _fmt(v, ".1f", "-") + "x",
                verdict(None if v is None else v >= 3),
            )
        )
        v = ratio("tiny_mlp", "flax_nnx", "funcnet_fused")
        out.append(
            (
                "tiny_mlp: funcnet_fused >= 10x faster than flax_nnx",
                _fmt(v, ".1f", "-") + "x",
                verdict(None if v is None else v >= 10),
            )
        )
    for w in workloads:
        for impl, ref in (("funcnet", "jax"), ("funcnet_fused", "jax_fused")):
            a, b = _get(rows, w, impl), _get(rows, w, ref)
            if a and b and a.get("xla_peak_bytes") and b.get("xla_peak_bytes"):
                v = a["xla_peak_bytes"] / b["xla_peak_bytes"]
                out.append(
                    (
                        f"{w}: peak memory {impl} / {ref} <= 1.05 (XLA memory analysis)",
                        f"{v:.3f} ({a['xla_peak_bytes'] / 2**20:.2f} / "
                        f"{b['xla_peak_bytes'] / 2**20:.2f} MiB)",
                        verdict(v <= 1.05),
                    )
                )
    for w in ("cnn", "lstm", "transformer"):
        for impl in ("funcnet", "funcnet_fused"):
            v = ratio(w, impl, "torch")
            if v is not None:
                out.append(
                    (
                        f"{w}: {impl} faster than torch eager",
                        f"{v:.2f}x torch's time",
                        verdict(v < 1),
                    )
                )
    rep = {(r["depth"]): r for r in depth_rows if r["case"] == "funcnet repeat"}
    if len(rep) >= 2:
        lo, hi = min(rep), max(rep)
        t_lo = rep[lo]["trace_lower_s"] + rep[lo]["compile_s"]
        t_hi = rep[hi]["trace_lower_s"] + rep[hi]["compile_s"]
        out.append(
            (
                f"repeat: compile time flat from {lo} to {hi} blocks",
                f"{t_lo:.2f}s -> {t_hi:.2f}s ({t_hi / t_lo:.2f}x)",
                verdict(t_hi / t_lo <= 1.5),
            )
        )
    return out


_ORDER = {"mlp": 0, "cnn": 1, "lstm": 2, "gru": 3, "tiny_mlp": 4, "transformer": 5}


def render_markdown(
    info: dict, peak: dict, rows: list[dict], depth_rows: list[dict], settings
) -> str:
    v = info["versions"]
    lines = [
        "# funcnet benchmark results",
        "",
        f"Written by `python bench/run.py{' --quick' if settings.quick else ''}` on "
        f"{info['date']}. See `bench/README.md` for the method and how to read this.",
        "",
        "## Machine",
        "",
        f"- CPU: {info['cpu']}, {info['cores']} cores, {info['memory_gib']} GiB; {info['os']}",
        f"- JAX backend: {info['backend']} ({info['device']}, {info['device_count']} device(s))",
        f"- Python {info['python']}; "
        + ", ".join(f"{k} {val}" for k, val in v.items() if val is not None),
        f"- not installed: {', '.join(k for k, val in v.items() if val is None) or 'none'}",
        f"- funcnet commit: {info.get('git') or 'unknown'}; XLA_FLAGS: "
        f"`{info.get('xla_flags') or '(none)'}`",
        f"- load average (1/5/15 min) at start {info.get('loadavg_start')}, "
        f"at end {info.get('loadavg_end')}",
        f"- float32 matmul peak (XLA, measured): **{peak['gflops']} GFLOP/s** "
        f"(by size: {peak['per_size']})",
        f"- settings: {settings.rounds} interleaved rounds, windows of ~{settings.window_s}s, "
        f"{'quick mode (fewer fused steps, fewer rounds)' if settings.quick else 'full run'}",
        "",
        "## Targets",
        "",
        "| target | measured | |",
        "|---|---|---|",
    ]
    for target, measured, verdict in target_checks(rows, depth_rows):
        lines.append(f"| {target} | {measured} | {verdict} |")
    lines += [
        "",
        "## Training step, per workload",
        "",
        "`ms/step`: median over rounds (µs where marked); `±`: interquartile range of the "
        "rounds / median; `vs jax`: median of the per-round ratios to the pure-JAX per-step "
        "reference (lower is faster); `GFLOP/s`: the reference step's XLA FLOP count / time; "
        "`compile`: first call minus one steady call (trace + compile + first run).",
        "",
    ]
    workloads = sorted({r["workload"] for r in rows}, key=lambda w: _ORDER.get(w, 99))
    for w in workloads:
        wrows = [r for r in rows if r["workload"] == w]
        from bench.workloads import get

        lines += [f"### {w}", "", get(w).description + "."]
        step_flops = next((r.get("flops_per_step") for r in wrows if r.get("flops_per_step")), None)
        if step_flops:
            lines += [
                "",
                f"{step_flops / 1e9:.3f} GFLOP per training step (XLA's count for the "
                "pure-JAX reference, loops unrolled).",
            ]
        lines.append("")
        lines += [
            "| impl | compile s | ms/step | ± % | vs jax | GFLOP/s | % peak | note |",
            "|---|---:|---:|---:|---:|---:|---:|---|",
        ]
        for r in wrows:
            if r["status"] != "ok":
                lines.append(f"| {r['impl']} | | | | | | | {r['status']}: {r.get('reason', '')} |")
                continue
            lines.append(
                f"| {r['impl']} | {_fmt(r['compile_s'])} | {_ms(r['step_ms'])} | "
                f"{_fmt(r['spread_pct'], '.0f')} | {_fmt(r.get('vs_jax'), '.3f')} | "
                f"{_fmt(r.get('gflops'), '.1f')} | {_fmt(r.get('pct_peak'), '.1f')} | "
                f"{r.get('note', '')} |"
            )
        flop_notes = [
            f"{r['impl']} {r['xla_flops_per_call'] / 1e9:.3f}"
            for r in wrows
            if r["status"] == "ok" and r.get("xla_flops_per_call") and r["steps_per_call"] == 1
        ]
        if flop_notes:
            lines += [
                "",
                "XLA GFLOP per compiled step (same math check; a loop body counts once): "
                f"{', '.join(flop_notes)}.",
            ]
        rec = [
            f"{r['impl']} {r['recompile_lower_s']:.2f}s trace+lower + "
            f"{r['recompile_compile_s']:.2f}s compile"
            for r in wrows
            if r.get("recompile_total_s")
        ]
        if rec:
            lines += ["", f"Fresh compile (median of {settings.recompiles}): {'; '.join(rec)}."]
        lines.append("")
    if depth_rows:
        depths = sorted({r["depth"] for r in depth_rows})
        lines += [
            "## Compile time vs depth",
            "",
            "Train step (Adam) of `residual(Dense(128), relu, Dense(128))` blocks, batch 128; "
            "trace+lower / XLA compile, seconds, one fresh compile each.",
            "",
            "| case | " + " | ".join(f"{d} blocks" for d in depths) + " |",
            "|---|" + "---:|" * len(depths),
        ]
        for case in dict.fromkeys(r["case"] for r in depth_rows):
            cells = []
            for d in depths:
                r = next((x for x in depth_rows if x["case"] == case and x["depth"] == d), None)
                cells.append(
                    "-" if r is None else f"{r['trace_lower_s']:.2f} / {r['compile_s']:.2f}"
                )
            lines.append(f"| {case} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def write_results(out_dir: Path, info, peak, rows, depth_rows, settings) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    if hasattr(os, "getloadavg"):
        info["loadavg_end"] = [round(v, 2) for v in os.getloadavg()]
    payload = {
        "machine": info,
        "matmul_peak": peak,
        "settings": settings.__dict__,
        "impls": impls_lib.IMPLS,
        "rows": rows,
        "repeat_depth": depth_rows,
        "argv": sys.argv,
    }
    (out_dir / "results.json").write_text(json.dumps(payload, indent=1, default=str) + "\n")
    path = out_dir / "RESULTS.md"
    kept = kept_sections(path.read_text()) if path.exists() else ""
    path.write_text(render_markdown(info, peak, rows, depth_rows, settings) + kept)


def kept_sections(text: str) -> str:
    """The hand-written tail of an old RESULTS.md, which a new run keeps: everything from
    the first ``## ...`` heading that says ``not written by `run.py```."""
    lines = text.splitlines(keepends=True)
    for i, line in enumerate(lines):
        if line.startswith("## ") and "not written by `run.py`" in line:
            return "\n" + "".join(lines[i:])
    return ""
