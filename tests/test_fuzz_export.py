"""Fuzz: mutated exports and IDX files load as the original data or raise funcnet's error.

Random mutations (bit flips, truncations, appended bytes, header rewrites,
JSON edits of ``model.json``, gzip bombs) of two small exports (parameters
baked in; ``params_as_args`` with dict inputs) and of a small IDX file, raw and
gzip-compressed. Every case runs in one worker subprocess under a memory cap
(``RLIMIT_AS``: the address space the worker holds after starting JAX plus
1 GiB) and a per-case time limit (``SIGALRM``, whose default action ends the
worker); the parent restarts the worker after the case that ended it and
reports that case as a crash or hang.

The oracle:

- an export loads and returns bit-exactly the original outputs, or raises
  :class:`~funcnet.export.ExportError`; any other exception, a crash, a hang or
  other numbers fail;
- an IDX file reads exactly as an independent reference decoder reads it
  (``gzip.decompress`` and a few lines of ``struct``), or, where the reference
  refuses it, raises :class:`~funcnet.datasets.DatasetError`. The IDX format
  has no checksum, so a raw file whose header still matches its size (a flipped
  data byte, int8 for uint8) legitimately reads as other values; the reference
  says which.

``FUNCNET_FUZZ_CASES`` sets the number of cases per target (default 40, a
few seconds); ``FUNCNET_FUZZ_SEED`` the seed (default 0). A failure names the
target, case index and seed, so ``FUNCNET_FUZZ_SEED=s`` reproduces it.
"""

from __future__ import annotations

import gzip
import io
import json
import math
import os
import random
import resource
import shutil
import signal
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).parent.parent
CASES = int(os.environ.get("FUNCNET_FUZZ_CASES", "40"))
SEED = int(os.environ.get("FUNCNET_FUZZ_SEED", "0"))
CASE_SECONDS = 60  # per case, in the worker (a first compile on a busy machine takes seconds)
HEADROOM = 1 << 30  # address space the worker may add to what it holds after starting JAX

# target -> (directory or file under the fixture folder, the file(s) mutated)
EXPORT_TARGETS = {
    "baked": ("model.jaxexport", "model.json"),
    "args": ("model.jaxexport", "model.json", "params.safetensors"),
}
IDX_TARGETS = ("raw", "gz")
_IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


# --------------------------------------------------------------------------- fixtures


def make_fixtures(root: Path) -> None:
    """Two exports, an IDX file (raw and .gz) and the inputs, under ``root``."""
    import jax
    import jax.numpy as jnp

    import funcnet as fn
    from funcnet.export import export

    model = fn.serial(fn.Dense(5), jax.nn.tanh, fn.Dense(2))
    params, state = model.init(jax.random.key(0), jnp.zeros((1, 4)))
    spec = jax.ShapeDtypeStruct((1, 4), jnp.float32)
    export(model, params, state, spec, root / "baked", platforms=("cpu",))  # the worker runs on CPU
    np.save(root / "baked_x.npy", np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4))

    two = fn.serial(lambda d: jnp.concatenate([d["a"], d["b"]], -1), fn.Dense(3), fn.BatchNorm())
    spec = {"a": jnp.zeros((2, 3)), "b": jnp.zeros((2, 1))}
    params, state = two.init(jax.random.key(1), spec)
    export(
        two,
        params,
        state,
        spec,
        root / "args",
        params_as_args=True,
        batch_polymorphic=False,
        platforms=("cpu",),
    )
    x = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.ones((2, 1), np.float32)}
    np.savez(root / "args_x.npz", **x)

    array = np.arange(60, dtype=np.uint8).reshape(3, 4, 5)
    raw = bytes([0, 0, 8, 3]) + struct.pack(">3I", *array.shape) + array.tobytes()
    (root / "raw").write_bytes(raw)
    (root / "gz").write_bytes(gzip.compress(raw))


# --------------------------------------------------------------------------- mutations


def flip_bits(data: bytes, rng: random.Random, lo: int = 0, hi: int | None = None) -> bytes:
    out = bytearray(data)
    hi = len(out) if hi is None else min(hi, len(out))
    for _ in range(rng.randint(1, 3)):
        if hi > lo:
            out[rng.randrange(lo, hi)] ^= 1 << rng.randrange(8)
    return bytes(out)


def truncate(data: bytes, rng: random.Random) -> bytes:
    return data[: rng.randrange(len(data))] if data else data


def append(data: bytes, rng: random.Random) -> bytes:
    return data + bytes(rng.randrange(256) for _ in range(rng.randint(1, 64)))


def splice(data: bytes, rng: random.Random) -> bytes:
    """Overwrite a random run with random bytes."""
    if not data:
        return data
    start = rng.randrange(len(data))
    run = bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
    return data[:start] + run + data[start + len(run) :]


_JSON_VALUES = [
    None, True, False, 0, 1, -1, 2, 4, 2**63, 1.5, float("nan"), "", "b", "1", "float32",
    "int32", "cpu", "0" * 64, [], {}, [1, "b"], ["b", 4], [{"path": "", "shape": [], "dtype": ""}],
]  # fmt: skip


def _nodes(tree, out):
    """Every (container, key) pair of a JSON tree."""
    items = tree.items() if isinstance(tree, dict) else enumerate(tree)
    for key, value in items:
        out.append((tree, key))
        if isinstance(value, (dict, list)):
            _nodes(value, out)
    return out


def edit_json(data: bytes, rng: random.Random) -> bytes:
    """One structural edit of ``model.json``: delete, replace, bump or reshape a value."""
    tree = json.loads(data)
    if rng.random() < 0.05:
        key = rng.choice(sorted(tree))
        text = json.dumps(tree)
        nested = "[" * 100_000 + "]" * 100_000 if rng.random() < 0.5 else "1" * 5000
        return text.replace(f'"{key}": ', f'"{key}": {nested}, "_was": ', 1).encode()
    container, key = rng.choice(_nodes(tree, []))
    value, op = container[key], rng.randrange(6)
    if op == 0 and isinstance(container, dict):
        del container[key]
    elif op == 0:
        container.pop(key)
    elif op == 1 and isinstance(value, bool):
        container[key] = not value
    elif op == 1 and isinstance(value, (int, float)):
        container[key] = value + rng.choice([-1, 1, 0.5])
    elif op == 2 and isinstance(value, str):
        container[key] = value + rng.choice(["x", "0", " "]) if value else "x"
    elif op == 3 and isinstance(value, list) and value:
        container[key] = [*value, rng.choice(value)] if rng.random() < 0.5 else value[::-1]
    elif op == 4 and isinstance(container, dict):
        container[f"extra{rng.randrange(9)}"] = rng.choice(_JSON_VALUES)
    else:
        container[key] = rng.choice(_JSON_VALUES)
    return json.dumps(tree, indent=rng.choice([None, 2])).encode()


def mutate_export(files: dict[str, bytes], rng: random.Random) -> tuple[dict, str]:
    """One mutation of one file of an export; returns the files and what was done."""
    name = rng.choice(sorted(files))
    ops = [flip_bits, truncate, append, splice] + ([edit_json] * 4 if name == "model.json" else [])
    op = rng.choice(ops)
    if rng.random() < 0.03:
        return {k: v for k, v in files.items() if k != name}, f"remove {name}"
    return {**files, name: op(files[name], rng)}, f"{op.__name__} {name}"


def _rewrite_header(raw: bytes, rng: random.Random) -> bytes:
    out = bytearray(raw)
    ndim = out[3]
    what = rng.randrange(3)
    if what == 0:
        out[2] = rng.choice([*_IDX_TYPES, 0, 7, 0x0A, 0xFF])
    elif what == 1:
        out[3] = rng.choice([0, 1, 2, 3, 4, 33, 255])
    elif ndim:
        i = 4 + 4 * rng.randrange(ndim)
        value = rng.choice([0, 1, 2, 3, 4, 5, 6, 12, 20, 60, 2**16, 2**31, 2**32 - 1])
        out[i : i + 4] = struct.pack(">I", value)
    return bytes(out)


def _bomb(raw: bytes, rng: random.Random) -> bytes:
    """The file followed (or announced as followed) by megabytes of zeros, compressed."""
    zeros = rng.choice([1 << 20, 8 << 20])
    out = io.BytesIO()
    with gzip.GzipFile(fileobj=out, mode="wb") as f:
        f.write(raw if rng.random() < 0.5 else raw[:16])
        f.write(bytes(zeros))
    return out.getvalue()


def mutate_idx(raw: bytes, compressed: bool, rng: random.Random) -> tuple[bytes, str]:
    raw_ops = [flip_bits, truncate, append, splice, _rewrite_header, _rewrite_header]
    if compressed and rng.random() < 0.1:
        return _bomb(raw, rng), "bomb"
    if compressed and rng.random() < 0.5:
        op = rng.choice([flip_bits, truncate, append, splice])
        return op(gzip.compress(raw, mtime=0), rng), f"{op.__name__} of the gzip bytes"
    op = rng.choice(raw_ops)
    mutated = op(raw, rng)
    return (gzip.compress(mutated, mtime=0) if compressed else mutated), op.__name__


def reference_idx(data: bytes) -> np.ndarray | None:
    """An independent IDX decoder: the array, or None where the file is invalid."""
    if data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        except Exception:  # any failure of the reference is a file it refuses
            return None
    if len(data) < 4 or data[0] or data[1] or data[2] not in _IDX_TYPES or data[3] > 32:
        return None
    ndim, dtype = data[3], np.dtype(_IDX_TYPES[data[2]])
    if len(data) < 4 + 4 * ndim:
        return None
    shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    if len(data) - 4 - 4 * ndim != math.prod(shape) * dtype.itemsize:
        return None
    array = np.frombuffer(data[4 + 4 * ndim :], dtype).reshape(shape)
    return array.astype(dtype.newbyteorder("="))


# --------------------------------------------------------------------------- worker


def _cap_memory() -> int:
    """Limit the address space to what the process holds now plus HEADROOM; returns the cap."""
    with open("/proc/self/status") as f:
        held = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:"))
    cap = held + HEADROOM
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    return cap


def _same(a, b) -> bool:
    import jax

    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    return jax.tree.structure(a) == jax.tree.structure(b) and all(
        np.asarray(x).dtype == np.asarray(y).dtype
        and np.asarray(x).shape == np.asarray(y).shape
        and np.asarray(x).tobytes() == np.asarray(y).tobytes()
        for x, y in zip(la, lb)
    )


def _export_case(root: Path, target: str, rng: random.Random, reference, x) -> dict:
    from funcnet.export import ExportError, load_exported

    base = root / target
    files = {name: (base / name).read_bytes() for name in EXPORT_TARGETS[target]}
    files, what = mutate_export(files, rng)
    scratch = root / "scratch"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir()
    for name, data in files.items():
        (scratch / name).write_bytes(data)
    try:
        got = load_exported(scratch)(x)
    except ExportError as err:
        return {"what": what, "outcome": "error", "message": str(err)[:300]}
    except Exception as err:  # reported: the parent fails the test
        return {"what": what, "outcome": "wrong", "message": f"{type(err).__name__}: {err}"[:2000]}
    same = _same(got, reference)
    return {"what": what, "outcome": "same" if same else "wrong", "message": "other numbers"}


def _idx_case(root: Path, target: str, rng: random.Random) -> dict:
    from funcnet.datasets import DatasetError, read_idx

    raw = (root / "raw").read_bytes()
    data, what = mutate_idx(raw, target == "gz", rng)
    path = root / f"scratch-idx{'.gz' if target == 'gz' else ''}"
    path.write_bytes(data)
    expected = reference_idx(data)
    try:
        got = read_idx(path)
    except DatasetError as err:
        outcome = "error" if expected is None else "wrong"
        return {"what": what, "outcome": outcome, "message": str(err)[:300]}
    except Exception as err:
        return {"what": what, "outcome": "wrong", "message": f"{type(err).__name__}: {err}"[:2000]}
    if expected is None or not _same(got, expected):
        return {"what": what, "outcome": "wrong", "message": f"read {got.dtype}{got.shape}"}
    return {"what": what, "outcome": "same" if _same(got, reference_idx(raw)) else "reference"}


def worker(root: Path, cases: list[list]) -> None:
    """Run ``cases`` ``[id, target, index, seed]``, printing a JSON line before and after each."""
    import jax

    from funcnet.export import load_exported

    jax.config.update("jax_platforms", "cpu")
    inputs = {"baked": np.load(root / "baked_x.npy"), "args": dict(np.load(root / "args_x.npz"))}
    references = {t: load_exported(root / t)(x) for t, x in inputs.items()}
    print(json.dumps({"cap": _cap_memory()}), flush=True)
    for case, target, index, seed in cases:
        print(json.dumps({"start": case}), flush=True)
        rng = random.Random(f"{seed}/{target}/{index}")
        signal.alarm(CASE_SECONDS)
        if target in EXPORT_TARGETS:
            result = _export_case(root, target, rng, references[target], inputs[target])
        else:
            result = _idx_case(root, target, rng)
        signal.alarm(0)
        print(json.dumps({"case": case, **result}), flush=True)


def run_worker(root: Path, cases: list[list]) -> list[dict]:
    """Run the cases in a worker; a case that ends the worker is reported and skipped."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
    results: list[dict] = []
    todo = list(cases)
    while todo:
        (root / "cases.json").write_text(json.dumps(todo))
        proc = subprocess.run(
            [sys.executable, __file__, str(root)],
            env=env,
            capture_output=True,
            text=True,
            timeout=CASE_SECONDS * 2 + 60 + 2 * len(todo),
        )
        lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
        done = [line for line in lines if "outcome" in line]
        results += done
        started = [line["start"] for line in lines if "start" in line]
        if len(done) == len(todo):
            break
        if not started or len(started) == len(done):  # failed before the first case
            raise AssertionError(f"fuzz worker failed:\n{proc.stderr[-3000:]}")
        results.append(
            {
                "case": started[-1],
                "what": "?",
                "outcome": "wrong",
                "message": f"worker ended (exit {proc.returncode}: crash, memory or time limit): "
                f"{proc.stderr[-500:]}",
            }
        )
        todo = todo[len(done) + 1 :]
    return results


# --------------------------------------------------------------------------- test


def test_fuzz(tmp_path):
    make_fixtures(tmp_path)
    targets = (*EXPORT_TARGETS, *IDX_TARGETS)
    cases = [
        [i * len(targets) + j, t, i, SEED] for i in range(CASES) for j, t in enumerate(targets)
    ]
    results = {r["case"]: r for r in run_worker(tmp_path, cases)}
    assert sorted(results) == [case[0] for case in cases]
    wrong = [
        f"{target} case {index} seed {seed} ({results[case]['what']}): {results[case]['message']}"
        for case, target, index, seed in cases
        if results[case]["outcome"] == "wrong"
    ]
    assert not wrong, "\n".join(wrong)
    outcomes = {r["outcome"] for r in results.values()}
    assert {"error", "same"} <= outcomes  # the mutations reach both ends


if __name__ == "__main__":
    folder = Path(sys.argv[1])
    worker(folder, json.loads((folder / "cases.json").read_text()))
