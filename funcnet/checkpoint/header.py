"""The safetensors header of a checkpoint, parsed and checked before any data is trusted.

Every check here raises through ``fail(what)``, which the reader turns into a
:class:`~funcnet.checkpoint.CheckpointError` naming the file. The header is
untrusted input: nothing in it may cause an unbounded allocation, a
``RecursionError`` or a raw ``TypeError``/``KeyError``.

How a funcnet checkpoint is told apart from a foreign safetensors file: the
header's ``__metadata__`` of a funcnet file has three keys, ``format``
(:data:`FORMAT`), ``funcnet`` (the JSON description) and ``sha256`` (the
checksum). A file is foreign only when *none* of them says funcnet: neither
``funcnet`` nor ``sha256`` is a key and ``format`` is not :data:`FORMAT`. One
corrupted byte changes at most one of the three, so the other two still mark
the file as ours, and a file that is ours must then have all three, well
formed, and its checksum must match: no single corrupted byte can turn
verification off.
"""

from __future__ import annotations

import json
import math
import re
import reprlib
from collections.abc import Callable
from typing import Any, NoReturn

import jax.numpy as jnp
import numpy as np

FORMAT = "funcnet.checkpoint"
FORMAT_VERSION = 1
MAX_HEADER = 100_000_000  # bytes, as the safetensors library; a larger length is corrupt
# numpy's limit on dimensions (np.zeros((1,) * 65) raises under numpy 2, 33 under numpy 1)
MAX_NDIM = 64 if np.lib.NumpyVersion(np.__version__) >= "2.0.0" else 32
_MAX_BYTES = 2**63  # numpy refuses arrays whose size (zeros skipped) * itemsize reaches this
_META_KEYS = ("format", "funcnet", "sha256")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")

# safetensors dtype codes <-> numpy dtypes
DTYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "U8": np.dtype(np.uint8),
    "I8": np.dtype(np.int8),
    "U16": np.dtype(np.uint16),
    "I16": np.dtype(np.int16),
    "U32": np.dtype(np.uint32),
    "I32": np.dtype(np.int32),
    "U64": np.dtype(np.uint64),
    "I64": np.dtype(np.int64),
    "F16": np.dtype(np.float16),
    "BF16": np.dtype(jnp.bfloat16),
    "F32": np.dtype(np.float32),
    "F64": np.dtype(np.float64),
    "C64": np.dtype(np.complex64),
    "F8_E4M3": np.dtype(jnp.float8_e4m3fn),
    "F8_E5M2": np.dtype(jnp.float8_e5m2),
}

Fail = Callable[[str], NoReturn]

_repr = reprlib.Repr()
_repr.maxstring = _repr.maxother = 60
_repr.maxlevel = 3
_repr.maxlist = _repr.maxdict = 6


def short(x: Any) -> str:
    """A bounded repr of untrusted data (never huge, never a RecursionError)."""
    return _repr.repr(x)


def clip(text: str, limit: int = 100) -> str:
    """``text`` cut to about ``limit`` characters (the start and the end kept)."""
    return text if len(text) <= limit else f"{text[: limit - 40]}...{text[-30:]}"


def name_str(name: Any) -> str:
    """A name from the file for a message in backticks: as is when short and printable."""
    ok = isinstance(name, str) and len(name) <= 80 and name.isprintable()
    return name if ok else short(name)


_JSON_TYPES = (
    (bool, "a boolean"),
    ((int, float), "a number"),
    (str, "a string"),
    (list, "an array"),
)


def json_type(x: Any) -> str:
    """What ``x`` was in JSON: ``"an array"``, ``"a string"``, ``"null"``, ..."""
    if x is None:
        return "null"
    return next((name for t, name in _JSON_TYPES if isinstance(x, t)), "an object")


def is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


class _DuplicateKey(ValueError):
    pass


def _unique_keys(pairs: list) -> dict:
    out = dict(pairs)
    if len(out) != len(pairs):
        seen: set = set()
        dupe = next(k for k, _ in pairs if k in seen or seen.add(k))
        raise _DuplicateKey(f"the key {short(dupe)} appears twice in one object")
    return out


def parse_json(text: bytes | str, what: str, fail: Fail) -> Any:
    """``text`` as JSON; duplicate keys, bad UTF-8, deep nesting and huge numbers fail."""
    try:
        if isinstance(text, bytes):
            text = text.decode("utf-8")
        return json.loads(text, object_pairs_hook=_unique_keys)
    except _DuplicateKey as err:
        fail(f"{what} is malformed: {err}")
    except RecursionError:
        fail(f"{what} is nested too deeply to be a checkpoint's")
    except ValueError as err:  # JSONDecodeError, UnicodeDecodeError, ints of > 4300 digits
        fail(f"{what} is not valid JSON ({clip(str(err))})")


def split_header(header: Any, fail: Fail) -> tuple[dict, dict]:
    """The tensor table and the ``__metadata__`` strings of a parsed header."""
    if not isinstance(header, dict):
        fail(f"the header is {json_type(header)}, expected an object")
    table = dict(header)
    meta = table.pop("__metadata__", {})
    if not isinstance(meta, dict):
        fail(f"the header's `__metadata__` is {json_type(meta)}, expected an object of strings")
    for key, value in meta.items():
        if not isinstance(value, str):
            fail(
                f"the header's `__metadata__[{short(key)}]` is {json_type(value)}, "
                "expected a string"
            )
    return table, meta


def _check_entry(name: str, entry: Any, fail: Fail) -> tuple[int, int]:
    """``(begin, end)`` of a tensor entry, after checking its dtype, shape and offsets."""
    where = f"the entry `{name_str(name)}`"
    if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
        got = short(sorted(entry)) if isinstance(entry, dict) else json_type(entry)
        fail(f"{where} is malformed: expected keys dtype, shape, data_offsets, got {got}")
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if not isinstance(dtype, str) or dtype not in DTYPES:
        fail(
            f"{where} has the unsupported dtype {short(dtype)}; expected one of {', '.join(DTYPES)}"
        )
    if not isinstance(shape, list) or not all(is_int(d) and d >= 0 for d in shape):
        fail(f"{where} has the shape {short(shape)}, expected a list of non-negative ints")
    if len(shape) > MAX_NDIM:
        fail(f"{where} has {len(shape)} dimensions, more than numpy allows ({MAX_NDIM})")
    itemsize = DTYPES[dtype].itemsize
    if math.prod(max(d, 1) for d in shape) * itemsize >= _MAX_BYTES:
        fail(f"{where} ({dtype}{short(shape)}) is larger than any array can be")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(is_int(o) for o in offsets)):
        fail(f"{where} has the data offsets {short(offsets)}, expected [begin, end] (two ints)")
    begin, end = offsets
    if not 0 <= begin <= end or end - begin != math.prod(shape) * itemsize:
        fail(
            f"{where} ({dtype}{shape}) has data offsets [{begin}, {end}] that do not match "
            f"its size ({math.prod(shape) * itemsize} bytes)"
        )
    return begin, end


def check_table(table: dict, fail: Fail) -> int:
    """Check every entry and that their data tile ``[0, size)`` exactly; return the size."""
    spans = sorted((*_check_entry(name, entry, fail), name) for name, entry in table.items())
    expected = 0
    for begin, end, name in spans:
        if begin != expected:
            how = "overlapping the previous array" if begin < expected else "leaving a gap"
            fail(
                f"the data of `{name_str(name)}` starts at byte {begin}, expected {expected}, {how}"
            )
        expected = end
    return expected


def is_ours(meta: dict) -> bool:
    """Whether ``__metadata__`` marks a funcnet checkpoint (see the module docstring)."""
    return "funcnet" in meta or "sha256" in meta or meta.get("format") == FORMAT


def check_marker(meta: dict, fail: Fail) -> None:
    """A funcnet file's ``__metadata__``: exactly format, funcnet and sha256, well formed."""
    missing = [k for k in _META_KEYS if k not in meta]
    extra = sorted(set(meta) - set(_META_KEYS))
    if missing or extra:
        fail(
            f"its funcnet `__metadata__` is damaged: expected the keys {list(_META_KEYS)}, "
            f"missing {missing}, unexpected {short(extra)}"
        )
    if meta["format"] != FORMAT:
        fail(f"its format marker is {short(meta['format'])}, expected {FORMAT!r}")
    if not _SHA256.match(meta["sha256"]):
        fail(f"its sha256 is {short(meta['sha256'])}, expected 64 lowercase hex digits")


_INFO_TYPES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "funcnet_version": (lambda v: isinstance(v, str), "a string"),
    "jax_version": (lambda v: isinstance(v, str), "a string"),
    "tree": (lambda v: isinstance(v, list), "a list"),
    "step": (lambda v: v is None or (is_int(v) and v >= 0), "an int >= 0 or null"),
    "metrics": (lambda v: v is None or isinstance(v, dict), "an object or null"),
}
_REQUIRED = ("funcnet_version", "jax_version", "metadata", "tree")


def parse_info(text: str, fail: Fail) -> tuple[dict, int]:
    """funcnet's JSON description (``__metadata__["funcnet"]``) and its format version.

    Only the version is checked here, so that a file of a newer format can say so; the
    caller compares it with :data:`FORMAT_VERSION`, then calls :func:`check_info`.
    """
    info = parse_json(text, "its funcnet metadata", fail)
    if not isinstance(info, dict):
        fail(f"its funcnet metadata is {json_type(info)}, expected an object")
    version = info.get("format_version")
    if not is_int(version) or version < 1:
        fail(f"its funcnet metadata has `format_version` = {short(version)}, expected an int >= 1")
    return info, version


def check_info(info: dict, fail: Fail) -> None:
    """The fields of funcnet's description that this version reads, by type."""
    missing = [k for k in _REQUIRED if k not in info]
    if missing:
        fail(f"its funcnet metadata is missing {missing}")
    for key, (ok, expected) in _INFO_TYPES.items():
        if key in info and not ok(info[key]):
            fail(f"its funcnet metadata has `{key}` = {short(info[key])}, expected {expected}")
