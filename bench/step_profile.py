"""Where a benchmark step's time goes: XLA's compiled program and PyTorch's profile.

For one workload and implementation (``jax``, ``funcnet``, ``funcnet_fused``):
the optimized HLO of the compiled training step
(``jax.jit(...).lower(...).compile().as_text()``), its operations counted by
kind (the kernels XLA runs: fusions, dots, convolutions, while loops,
copies/transposes; dots and convolutions also inside fusions), XLA's memory
analysis (argument/output/temporary bytes) and the compile time; and, when
torch is installed, PyTorch eager's training step under ``torch.profiler``
(the top operators by self CPU time per step). Prints a short markdown report.

(Not ``bench/profile.py``: run as a script, any ``bench/*.py`` puts ``bench/``
first on ``sys.path``, where a ``profile.py`` would shadow the standard
library's ``profile`` module that ``cProfile`` and ``torch`` import.)

Usage::

    python bench/step_profile.py transformer                   # funcnet, + torch
    python bench/step_profile.py lstm --impl jax --hlo /tmp/lstm_jax.hlo
    python bench/step_profile.py cnn --impl funcnet_fused --no-torch
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from collections import Counter
from pathlib import Path

if __package__ in (None, ""):  # run as a script: python bench/step_profile.py
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax
import numpy as np
import optax

from bench import impls as impls_lib
from bench.workloads import NAMES, get

__all__ = ["IMPLS", "count_ops", "main", "render", "torch_profile", "xla_profile"]

IMPLS = ("jax", "funcnet", "funcnet_fused")

_COMPUTATION = re.compile(r"^(ENTRY\s+)?%?([\w.\-]+)")
_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%?[\w.\-]+\s*=\s*(.*)$")
_OPCODE = re.compile(r"(?<![\w.\-%])([a-z][a-z0-9\-]*)\(")
_CALLS = re.compile(r"(calls|to_apply)=%?([\w.\-]+)")
GROUPS = {
    "fusion": ("fusion",),
    "dot": ("dot",),
    "convolution": ("convolution",),
    "while": ("while",),
    "copy/transpose": ("copy", "transpose", "copy-start", "copy-done"),
    "custom-call": ("custom-call",),
}


def _computations(hlo: str) -> dict[str, list[str]]:
    """``{computation name: [opcode, ...]}`` of an HLO module's text (``"ENTRY"`` first)."""
    comps: dict[str, list[str]] = {}
    current = None
    for line in hlo.splitlines():
        head = _COMPUTATION.match(line)
        if head and line.rstrip().endswith("{") and not line.startswith("HloModule"):
            current = "ENTRY" if head.group(1) else head.group(2)
            comps[current] = []
            continue
        body = _INSTRUCTION.match(line) if current else None
        if body:
            opcode = _OPCODE.search(body.group(1))
            if opcode:
                comps[current].append(opcode.group(1))
                comps.setdefault("_calls", []).extend(
                    f"{opcode.group(1) if kind == 'calls' else kind}:{c}"
                    for kind, c in _CALLS.findall(body.group(1))
                )
    return comps


def count_ops(hlo: str) -> dict[str, int]:
    """Count the operations of optimized HLO text by kind.

    Kernel-level counts are over the computations XLA runs as such (the entry,
    loop bodies and conditions, called computations), not inside fusions or
    reductions' lambdas;
    ``dot (all)`` and ``convolution (all)`` also count those inside fusions.

    Examples:
        >>> hlo = '''HloModule m
        ... %fused_computation (p: f32[2,2]) -> f32[2,2] {
        ...   %p = f32[2,2]{1,0} parameter(0)
        ...   ROOT %d = f32[2,2]{1,0} dot(%p, %p), lhs_contracting_dims={1}
        ... }
        ... ENTRY %main (a: f32[2,2]) -> f32[2,2] {
        ...   %a = f32[2,2]{1,0} parameter(0)
        ...   %t = f32[2,2]{0,1} transpose(%a), dimensions={1,0}
        ...   ROOT %f = f32[2,2]{1,0} fusion(%t), kind=kOutput, calls=%fused_computation
        ... }'''
        >>> c = count_ops(hlo)
        >>> c["fusion"], c["dot"], c["dot (all)"], c["copy/transpose"], c["instructions"]
        (1, 0, 1, 1, 2)
    """
    comps = _computations(hlo)
    calls = comps.pop("_calls", [])
    # fused computations and reductions' scalar lambdas are not kernels of their own
    fused = {c.split(":", 1)[1] for c in calls if c.startswith(("fusion:", "to_apply:"))}
    kernel_ops = Counter(
        op
        for name, ops in comps.items()
        if name not in fused
        for op in ops
        if op not in ("parameter", "constant", "tuple", "get-tuple-element", "bitcast")
    )
    all_ops = Counter(op for ops in comps.values() for op in ops)
    out = {group: sum(kernel_ops[o] for o in opcodes) for group, opcodes in GROUPS.items()}
    out["dot (all)"] = all_ops["dot"]
    out["convolution (all)"] = all_ops["convolution"]
    out["instructions"] = sum(kernel_ops.values())
    out["top"] = dict(kernel_ops.most_common(8))
    return out


def _step_and_args(workload, impl: str, data: impls_lib.Data):
    """The jitted step of ``impl`` and the arguments of one call (static last)."""
    opt = optax.adam(impls_lib.LEARNING_RATE)
    if impl == "jax":
        params = workload.jax_init(jax.random.key(0))
        step = impls_lib.make_jax_step(workload.jax_apply, impls_lib.loss_fn(workload.loss), opt)
        return jax.jit(step, donate_argnums=(0, 1)), (params, opt.init(params), *data.batches[0])
    import funcnet as fn
    from funcnet.training import fused_runner, logs_init

    model = workload.funcnet()
    ts = fn.TrainState.create(model, opt, jax.random.key(0), data.example())
    step = fn.train_step(model, impls_lib.funcnet_loss_name(workload), opt)
    if impl == "funcnet":
        return jax.jit(step, donate_argnums=0), (ts, data.batches[0])
    if impl == "funcnet_fused":
        run = fused_runner(step, {}, data.batch, unroll=impls_lib.fused_unroll(workload))
        arrays = (data.dx, data.dy, None)
        return run, (ts, logs_init({}), arrays, data.perm, data.begins[0], data.fused_steps)
    raise ValueError(f"unknown implementation {impl!r}; choose from {', '.join(IMPLS)}.")


def xla_profile(name: str, impl: str = "funcnet", fused_steps: int | None = None) -> dict:
    """Compile ``impl``'s step of workload ``name``: HLO text, op counts, memory, times.

    Examples:
        >>> p = xla_profile("tiny_mlp", "jax")
        >>> p["ops"]["dot (all)"] > 0, p["memory"]["argument_bytes"] > 0
        (True, True)
    """
    if impl not in IMPLS:
        raise ValueError(f"unknown implementation {impl!r}; choose from {', '.join(IMPLS)}.")
    workload = get(name)
    data = impls_lib.Data(workload, fused_steps or workload.fused_steps)
    jitted, args = _step_and_args(workload, impl, data)
    static = args[-1:] if impl == "funcnet_fused" else ()
    specs = jax.tree.map(
        lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype) if isinstance(a, jax.Array) else a,
        args[: len(args) - len(static)],
    )
    t0 = time.perf_counter()
    lowered = jitted.lower(*specs, *static)
    t1 = time.perf_counter()
    compiled = lowered.compile()
    t2 = time.perf_counter()
    hlo = compiled.as_text()
    mem = compiled.memory_analysis()
    fields = ("argument", "output", "temp", "alias", "generated_code")
    memory = {f"{f}_bytes": int(getattr(mem, f"{f}_size_in_bytes", 0) or 0) for f in fields}
    return {
        "workload": name,
        "impl": impl,
        "backend": jax.default_backend(),
        "lower_s": t1 - t0,
        "compile_s": t2 - t1,
        "memory": memory,
        "ops": count_ops(hlo),
        "hlo": hlo,
    }


def torch_profile(name: str, steps: int = 5, top: int = 10) -> dict | None:
    """PyTorch eager's training step of workload ``name`` under ``torch.profiler``:
    the ``top`` operators by self CPU time (ms per step); None without torch."""
    try:
        import torch
        from torch.profiler import ProfilerActivity, profile
    except ImportError:
        return None
    workload = get(name)
    if workload.torch is None:
        return None
    torch.manual_seed(0)
    model = workload.torch()
    opt = torch.optim.Adam(model.parameters(), lr=impls_lib.LEARNING_RATE)
    x, y = workload.make_data(np.random.default_rng(0), workload.batch)
    xb = torch.from_numpy(workload.torch_layout(x))
    if workload.loss == "xent":
        yb, loss = torch.from_numpy(y.astype(np.int64)), torch.nn.functional.cross_entropy
    else:
        yb, loss = torch.from_numpy(y), torch.nn.functional.mse_loss

    def step():
        opt.zero_grad(set_to_none=True)
        loss(model(xb), yb).backward()
        opt.step()

    step()  # warm-up
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        wall = (time.perf_counter() - t0) / steps
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    rows = [
        {
            "op": e.key,
            "self_ms": e.self_cpu_time_total / 1e3 / steps,
            "calls": e.count / steps,
        }
        for e in events[:top]
    ]
    return {
        "workload": name,
        "step_ms": 1e3 * wall,
        "threads": torch.get_num_threads(),
        "top": rows,
    }


def render(xla: dict, torch_prof: dict | None = None) -> str:
    """The profiles as a short markdown report."""
    mib = 2.0**20
    mem, ops = xla["memory"], xla["ops"]
    lines = [
        f"### {xla['workload']}: {xla['impl']} ({xla['backend']})",
        "",
        "| compile | lower s | compile s | argument MiB | output MiB | temp MiB | alias MiB |",
        "|---|---:|---:|---:|---:|---:|---:|",
        f"| XLA | {xla['lower_s']:.2f} | {xla['compile_s']:.2f} | "
        f"{mem['argument_bytes'] / mib:.2f} | {mem['output_bytes'] / mib:.2f} | "
        f"{mem['temp_bytes'] / mib:.2f} | {mem['alias_bytes'] / mib:.2f} |",
        "",
        "| kernels | " + " | ".join(GROUPS) + " | dot (all) | conv (all) | instructions |",
        "|---|" + "---:|" * (len(GROUPS) + 3),
        "| count | "
        + " | ".join(str(ops[g]) for g in GROUPS)
        + f" | {ops['dot (all)']} | {ops['convolution (all)']} | {ops['instructions']} |",
        "",
        "Top kernel opcodes: " + ", ".join(f"{k} {v}" for k, v in ops["top"].items()),
    ]
    if torch_prof:
        lines += [
            "",
            f"PyTorch eager: {torch_prof['step_ms']:.2f} ms/step under the profiler, "
            f"{torch_prof['threads']} threads",
            "",
            "| torch op | self CPU ms/step | calls/step |",
            "|---|---:|---:|",
        ]
        lines += [
            f"| `{r['op']}` | {r['self_ms']:.3f} | {r['calls']:g} |" for r in torch_prof["top"]
        ]
    return "\n".join(lines)


def main(argv=None) -> dict:
    """Command line (see the module docstring); prints the markdown, returns
    ``{"xla": xla_profile(...), "torch": torch_profile(...) or None, "markdown": text}``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("workload", choices=NAMES)
    parser.add_argument("--impl", choices=IMPLS, default="funcnet")
    parser.add_argument("--fused-steps", type=int, help="steps per call of funcnet_fused")
    parser.add_argument("--hlo", type=Path, help="write the optimized HLO text here")
    parser.add_argument("--no-torch", action="store_true", help="skip the PyTorch profile")
    args = parser.parse_args(argv)
    xla = xla_profile(args.workload, args.impl, args.fused_steps)
    if args.hlo:
        args.hlo.write_text(xla["hlo"])
    torch_prof = None if args.no_torch else torch_profile(args.workload, steps=3)
    text = render(xla, torch_prof)
    print(text)
    return {"xla": xla, "torch": torch_prof, "markdown": text}


if __name__ == "__main__":
    main()
