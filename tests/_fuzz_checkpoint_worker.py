"""The checkpoint fuzzer's worker: load mutated checkpoints, print one JSON line per case.

Run by ``tests/test_fuzz_checkpoint.py``; by hand (from the repository root)::

    python tests/_fuzz_checkpoint_worker.py OUT_DIR SEED FIRST COUNT

It saves a small checkpoint holding every kind of leaf to ``OUT_DIR``, caps
its own address space (what jax has reserved plus ``FUZZ_HEADROOM`` bytes,
1 GiB by default), then for each case ``FIRST .. FIRST+COUNT-1`` (reproducible
from ``SEED`` and the case number) writes a mutation of the file and reads it
three ways: ``load``, ``load(like=tree)`` and ``read_metadata``, under a
10-second alarm. Before each case it prints ``{"case", "start"}``, after it
``{"case", "what", "forged", "load", "like", "meta"}`` where each outcome is

- ``"same"``: exactly the saved data (types, dtypes, shapes, bytes);
- ``"error"``: a ``CheckpointError`` naming the file;
- ``"forged"``: other, well-formed data from a forged file (its checksum was
  recomputed), which a checksum cannot detect;
- ``"ok"``: ``read_metadata`` returned a dict (it does not verify the data);
- ``"BAD: ..."``: anything else (another exception, a hang, different or
  malformed data); the mutated file is kept as ``OUT_DIR/case<N>.safetensors``.

Mutations: bit flips, byte changes, truncations, insertions, deletions, a
rewritten length field, splices (30% of them with corrupted data as well,
which must then never load); JSON-level edits of the header's tensor table,
funcnet's description or its tree with the checksum recomputed (a forger), or
of the metadata strings with the data corrupted (never loads); and plausible
forgeries (a dtype of the same size, a reshape, another leaf kind, two arrays'
data swapped) that often pass every check.
"""

import copy
import hashlib
import json
import os
import random
import resource
import signal
import struct
import sys
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from funcnet.checkpoint import CheckpointError, load, read_metadata, save


class Pair(NamedTuple):
    a: object
    b: object


def make_tree():
    return {
        "w": jnp.arange(6.0).reshape(2, 3),
        "half": jnp.array([1.5, -2.0, 3.25], jnp.bfloat16),
        "ints": jnp.array([3, -4], jnp.int32),
        "flag": True,
        "n": 7,
        "lr": 0.5,
        "np": np.arange(3, dtype=np.int16),
        "np0": np.float32(2.5),
        "key": jax.random.key(0),
        "seq": [jnp.zeros(()), (jnp.array([True, False]), None)],
        "pair": Pair(jnp.ones(2, jnp.float16), jnp.array([1 + 2j], jnp.complex64)),
        "by_int": {1: jnp.ones(1), 2: jnp.zeros((0, 4))},
    }


# ----------------------------------------------------------------------------- comparing


def describe(x):
    if isinstance(x, (bool, int, float)):
        return (type(x).__name__, repr(x))
    if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
        return ("key", str(x.dtype), x.shape, np.asarray(jax.random.key_data(x)).tobytes())
    if not isinstance(x, (jax.Array, np.ndarray, np.generic)):
        raise TypeError(f"a leaf of type {type(x).__name__}")
    a = np.asarray(x)
    kind = "jax" if isinstance(x, jax.Array) else type(x).__name__
    return (kind, a.dtype.str, a.shape, a.tobytes())


def summary(tree):
    leaves, treedef = jax.tree.flatten(tree)
    return treedef, [describe(x) for x in leaves]


def spec(tree):
    """The tree structure and each leaf's kind, dtype and shape, not its values."""
    treedef, leaves = summary(tree)
    return treedef, [d[:1] if d[0] in ("bool", "int", "float") else d[:3] for d in leaves]


def outcome(read, expected, forged: bool) -> str:
    """How ``read()`` went: see the module docstring."""
    try:
        got = read()
    except CheckpointError as err:
        return "error" if "checkpoint `" in str(err) else f"BAD: unnamed error {err}"
    except Exception as err:  # anything else is a finding
        return f"BAD: {type(err).__name__}: {str(err)[:300]}"
    if expected is None:  # read_metadata
        return "ok" if isinstance(got, dict) else f"BAD: read_metadata gave {type(got)}"
    try:
        same = summary(got) == expected[0]
        well_formed = spec(got) == expected[1] if expected[1] else True
    except Exception as err:  # e.g. dict keys that do not sort: not a well-formed tree
        return f"BAD: a malformed result: {type(err).__name__}: {str(err)[:200]}"
    if same:
        return "same"
    return "forged" if forged and well_formed else "BAD: different data"


# ----------------------------------------------------------------------------- mutations

SYNTAX = [*b'"{}[]:,\\ -.0123456789eE+tfnul', 0, 0x7F, 0x80, 0xFF]
VALUES = [
    *(-1, 0, 1, 2, 3, 2**31, 2**53 + 1, 2**63, 2**64, 10**40, 1.5, -0.0, 1e308),
    *("", "x", "F32", "BOOL", "I64", "U32", "key", "dict", "array", "int", "list", "none"),
    *("threefry2x32", "rbg", "w", "n", None, True, False, [], {}, [1], [[]], {"a": 1}),
    *([1] * 64, [1] * 65, [0, 2**62], [3, 2], [6], [], -(2**63), "\ud800", "é/ü", "a/b"),
    *(["none"], ["array", "w"], ["int", "n"], ["key", "key", "x"], ["key", "key", "rbg"]),
    *("DEEP", "DEEPTREE"),
]
DEEP = {  # sentinels replaced in the JSON text (json.dumps would recurse)
    '"DEEP"': "[" * 5000 + "]" * 5000,
    '"DEEPTREE"': '["list",[' * 150 + '["none"]' + "]]" * 150,
}
BYTE_KINDS = ["flip", "flip", "set", "truncate", "insert", "delete", "length", "splice"]


def byte_mutation(rng: random.Random, raw: bytes, n: int) -> tuple[bytes, str]:
    data, kind = bytearray(raw), rng.choice(BYTE_KINDS)
    if rng.random() < 0.3:  # corrupt the data too: then it must never load
        data[rng.randrange(8 + n, len(raw))] ^= 1 << rng.randrange(8)

    def where() -> int:  # mostly in the header, where the structure is
        return rng.randrange(8 + n if rng.random() < 0.8 else len(data))

    if kind == "flip":
        for _ in range(rng.choice([1, 1, 1, 2, 3])):
            data[where()] ^= 1 << rng.randrange(8)
    elif kind == "set":
        data[where()] = rng.choice([*SYNTAX, rng.randrange(256)])
    elif kind == "truncate":
        del data[rng.randrange(len(data)) :]
    elif kind == "insert":
        i = where()
        data[i:i] = bytes(rng.choice(SYNTAX) for _ in range(rng.randint(1, 8)))
    elif kind == "delete":
        i = where()
        del data[i : i + rng.randint(1, 8)]
    elif kind == "length":
        m = rng.choice([n + rng.randint(-16, 16), rng.randrange(2**64), 0, 2**63, len(raw)])
        data[:8] = struct.pack("<Q", max(m, 0))
    else:
        i, j = where(), where()
        data[i:i] = data[j : j + rng.randint(1, 32)]
    return bytes(data), kind


def slots(doc) -> list:
    """Every ``(container, key)`` of a JSON document."""
    found, stack = [], [doc]
    while stack:
        node = stack.pop()
        for k in list(node) if isinstance(node, dict) else range(len(node)):
            found.append((node, k))
            if isinstance(node[k], (dict, list)):
                stack.append(node[k])
    return found


def edit(rng: random.Random, doc) -> str:
    """Change one place of ``doc`` in place; the kind of change."""
    places = slots(doc)
    if not places:
        return "none"
    node, k = rng.choice(places)
    other, k2 = rng.choice(places)
    # fresh copies only: no value is shared with VALUES or another place (no cycles)
    value = copy.deepcopy(rng.choice([*VALUES, node[k], other[k2]]))
    op = rng.choice(["replace", "replace", "replace", "delete", "insert", "swap"])
    if op == "replace":
        node[k] = value
    elif op == "delete":
        node.pop(k)
    elif op == "insert" and isinstance(node, dict):
        node[rng.choice(["x", "w", "dtype", "extra", "step", "1"])] = value
    elif op == "insert":
        node.insert(rng.randint(0, len(node)), value)
    else:  # a node may be swapped with its own child: through copies
        node[k], other[k2] = copy.deepcopy(other[k2]), copy.deepcopy(node[k])
    return op


def deepen(text: str) -> str:
    for sentinel, deep in DEEP.items():
        text = text.replace(sentinel, deep)
    return text


def digest(table: dict, info: str, data: bytes) -> str:
    """The checksum, computed as a forger would (not with funcnet's code)."""
    h = hashlib.sha256(json.dumps(table, sort_keys=True, separators=(",", ":")).encode())
    h.update(b"\n" + info.encode("utf-8", "surrogatepass") + b"\n" + data)
    return h.hexdigest()


def json_mutation(rng: random.Random, raw: bytes, n: int) -> tuple[bytes, str, bool]:
    """1-3 edits of the table, the description or the tree, with the checksum recomputed;
    or one of the metadata strings, with the data corrupted. Returns (file, what, forged)."""
    header, data = json.loads(raw[8 : 8 + n]), raw[8 + n :]
    meta = header.pop("__metadata__")
    info = json.loads(meta["funcnet"])
    forged = rng.random() > 1 / 7
    edits = []
    for _ in range(rng.choice([1, 1, 2, 3]) if forged else 1):
        target = (
            rng.choice(["table", "table", "info", "tree", "tree", "tree"]) if forged else "meta"
        )
        doc = {"table": header, "info": info, "tree": info.get("tree"), "meta": meta}[target]
        op = edit(rng, doc) if isinstance(doc, (dict, list)) else "none"
        edits.append(f"{target}-{op}")
    if forged:
        meta["funcnet"] = deepen(json.dumps(info, separators=(",", ":")))
        meta["sha256"] = digest(header, meta["funcnet"], data)
    else:
        corrupted = bytearray(data)
        corrupted[rng.randrange(len(data))] ^= 1
        data = bytes(corrupted)
    header["__metadata__"] = meta
    text = deepen(json.dumps(header, separators=(",", ":"))).encode()
    return struct.pack("<Q", len(text)) + text + data, "+".join(edits), forged


SAME_SIZE = [["BOOL", "U8", "I8", "F8_E4M3", "F8_E5M2"], ["U16", "I16", "F16", "BF16"],
             ["U32", "I32", "F32"], ["U64", "I64", "F64", "C64"]]  # fmt: skip
LEAF_KINDS = ["array", "numpy", "int", "float", "bool", "key"]


def leaves_of(tree) -> list:
    """The leaf nodes (``[kind, name, ...]`` lists) of a stored tree structure."""
    found, stack = [], [tree]
    while stack:
        node = stack.pop()
        leaf = isinstance(node, list) and len(node) > 1 and node[0] in LEAF_KINDS
        if leaf and isinstance(node[1], str):  # (not a dict item ["key", node])
            found.append(node)
        elif isinstance(node, list):
            stack.extend(x for x in node if isinstance(x, list))
    return found


def plausible_forgery(rng: random.Random, raw: bytes, n: int) -> tuple[bytes, str, bool]:
    """1-2 consistent edits (a dtype of the same size, a reshape, another leaf kind, two
    arrays' data swapped), checksum recomputed: forgeries that often pass every check."""
    header, data = json.loads(raw[8 : 8 + n]), raw[8 + n :]
    meta = header.pop("__metadata__")
    info = json.loads(meta["funcnet"])
    names, edits = sorted(header), []
    name = rng.choice(names)  # the edits go to one array and its leaf
    entry, leaf = header[name], next(x for x in leaves_of(info["tree"]) if x[1] == name)
    for _ in range(rng.choice([1, 1, 2])):
        op = rng.choice(["retype", "reshape", "rekind", "rekind", "swap"])
        if op == "retype":
            entry["dtype"] = rng.choice(next(g for g in SAME_SIZE if entry["dtype"] in g))
        elif op == "reshape":
            size = int(np.prod(entry["shape"]))
            entry["shape"] = rng.choice([[size], [], [1, size], entry["shape"][::-1]])
        elif op == "rekind":
            leaf[0] = rng.choice(LEAF_KINDS)
            leaf[2:] = (
                [rng.choice(["threefry2x32", "rbg", "unsafe_rbg"])] if leaf[0] == "key" else []
            )
        else:
            other = header[rng.choice(names)]
            entry["data_offsets"], other["data_offsets"] = (
                other["data_offsets"],
                entry["data_offsets"],
            )
        edits.append(op)
    meta["funcnet"] = json.dumps(info, separators=(",", ":"))
    meta["sha256"] = digest(header, meta["funcnet"], data)
    header["__metadata__"] = meta
    text = json.dumps(header, separators=(",", ":")).encode()
    return struct.pack("<Q", len(text)) + text + data, "plausible-" + "+".join(edits), True


# ----------------------------------------------------------------------------- the loop


def _cap_memory() -> None:
    """Limit the address space to what jax reserved so far plus FUZZ_HEADROOM bytes."""
    with open("/proc/self/status") as f:
        size = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize"))
    cap = size + int(os.environ.get("FUZZ_HEADROOM", 2**30))
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))


def _hang(signum, frame):
    raise TimeoutError("the case ran past its 10 s alarm")


def main(out: str, seed: int, first: int, count: int) -> None:
    tree = make_tree()
    original = os.path.join(out, "original.safetensors")
    save(original, tree, metadata={"note": "fuzz", "list": [1, 2.5, None]})
    with open(original, "rb") as f:
        raw = f.read()
    n = struct.unpack("<Q", raw[:8])[0]
    expected = (summary(load(original)), None)
    expected_like = (summary(load(original, like=tree)), spec(tree))
    _cap_memory()  # after jax started: its threads and arenas are reserved
    signal.signal(signal.SIGALRM, _hang)
    path = os.path.join(out, "case.safetensors")
    for case in range(first, first + count):
        rng = random.Random(f"{seed}-{case}")
        forged, draw = False, rng.random()
        if draw < 0.55:
            mutated, what = byte_mutation(rng, raw, n)
        elif draw < 0.85:
            mutated, what, forged = json_mutation(rng, raw, n)
        else:
            mutated, what, forged = plausible_forgery(rng, raw, n)
        with open(path, "wb") as f:
            f.write(mutated)
        print(json.dumps({"case": case, "start": what}), flush=True)
        signal.alarm(10)
        results = {
            "load": outcome(lambda: load(path), expected, forged),
            "like": outcome(lambda: load(path, like=tree), expected_like, forged),
            "meta": outcome(lambda: read_metadata(path), None, forged),
        }
        signal.alarm(0)
        if any(r.startswith("BAD") for r in results.values()):
            os.replace(path, os.path.join(out, f"case{case}.safetensors"))
        print(json.dumps({"case": case, "what": what, "forged": forged, **results}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))
