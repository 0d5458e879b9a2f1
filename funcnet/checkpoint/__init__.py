"""Checkpoints: pytrees of arrays in safetensors files, saved atomically, loaded without code.

A checkpoint is one `safetensors <https://github.com/huggingface/safetensors>`_
file: an 8-byte little-endian header length, a JSON header, the raw bytes of
every array. Arrays are stored under their pytree path (``params/0/w``, as
:func:`funcnet.core.path_str` writes it); the header's ``__metadata__`` holds
funcnet's JSON description (format version, funcnet and jax versions, the tree
structure, the user's metadata) and a SHA-256 checksum of the tensor table,
that description and all array bytes. Any safetensors reader can open the
file; nothing in it is ever executed (no pickle).

- :func:`save` writes atomically: a temporary file in the same directory,
  flushed and ``fsync``-ed, renamed over the target with ``os.replace``, then
  the directory is ``fsync``-ed. A process killed during a save leaves the
  previous file intact (and at worst a hidden ``.*.tmp`` file, removed by the
  next :class:`CheckpointManager` on that directory).
- :func:`load` checks the file before building anything: a truncated,
  corrupted or modified file raises :class:`CheckpointError` naming the file
  and the problem. With ``like=`` (a template tree, e.g. a fresh
  ``TrainState``) it returns a tree of the template's structure and types,
  placed with the template's shardings, and reports every missing, unexpected
  and mismatched path at once; ``strict=False`` loads what matches.
- :class:`CheckpointManager` keeps a directory of numbered checkpoints (the
  last ``max_to_keep`` plus the best by a metric) and is what
  :func:`funcnet.fit` uses to resume; :meth:`CheckpointManager.restore_latest`
  falls back past corrupt checkpoints to the newest intact one.

What a load verifies, and what not: the SHA-256 checksum covers the tensor
table, funcnet's description and all array bytes, so corruption is detected;
a funcnet file is told apart from a foreign safetensors file (which has no
checksum) so that no single corrupted byte can turn the check off (see
:mod:`funcnet.checkpoint.header`). Everything in the header and the tree
description is then checked as untrusted input (types, shapes, offsets,
depth, sizes bounded by the file's), so a malformed file raises
:class:`CheckpointError`, never another exception, and only regular files are
read (a FIFO or a device is refused). The checksum is not a signature: a
forger can recompute it and make a valid checkpoint of other numbers. Loading
never executes anything from the file.

Leaves that can be stored: JAX arrays (also sharded over a mesh, when every
shard is addressable by this process), typed PRNG keys (stored as their key
data plus the implementation name and rewrapped on load), numpy arrays and
scalars, and Python ``bool``/``int``/``float``. Supported dtypes are the
safetensors ones: bool, (u)int8/16/32/64, float16, bfloat16, float32,
float64, complex64, float8_e4m3fn and float8_e5m2.

Multi-host: every process calls :func:`save` (or ``CheckpointManager.save``)
with the same tree, and the directory must be one that all processes see (a
shared file system). Arrays replicated over the processes (data-parallel
params) fit one file, written once, by process 0, from its local copy; every
process returns only when the file is complete (a barrier). Arrays *sharded*
over several processes (FSDP, tensor parallelism) make a *sharded
checkpoint* (picked by itself, or ``save(..., sharded=True)``): a directory in
which each process writes only its own shards to its own safetensors file,
plus a global ``index.json`` (every array's shape, dtype and shards, with
SHA-256 checksums), committed atomically by process 0 (see
:mod:`funcnet.checkpoint.sharded` and :mod:`funcnet.checkpoint.index`).
:func:`load` restores it onto any mesh, sharding and process count: each
process reads only the saved shards its own target shards overlap
(:mod:`funcnet.checkpoint.sharded_read`). Restoring a one-file checkpoint into
a multi-host ``like=`` template builds each process's shards with
``jax.make_array_from_callback`` from the file (every process must be able to
read it). Tested with two CPU processes of two devices each on one host.

Background saves: ``CheckpointManager(..., async_save=True)`` copies the
arrays to host memory in ``save`` and writes them in a background thread
(:mod:`funcnet.checkpoint.async_save`); the next save waits for the previous.

Examples:
    >>> import os, tempfile, jax, jax.numpy as jnp
    >>> tree = {"w": jnp.ones((2, 3), jnp.bfloat16), "step": 7, "key": jax.random.key(0)}
    >>> path = save(os.path.join(tempfile.mkdtemp(), "model.safetensors"), tree,
    ...             metadata={"note": "demo"})
    >>> back = load(path)
    >>> back["w"].dtype, back["step"], back["key"].dtype
    (dtype(bfloat16), 7, key<fry>)
    >>> read_metadata(path)["metadata"]
    {'note': 'demo'}
"""

from __future__ import annotations

from funcnet.checkpoint.atomic import atomic_write
from funcnet.checkpoint.errors import CheckpointError, CheckpointWarning, LoadReport
from funcnet.checkpoint.format import FORMAT, FORMAT_VERSION, read_metadata, save
from funcnet.checkpoint.manager import CheckpointManager, Restored
from funcnet.checkpoint.restore import load

# Documented (and shown in tracebacks and reprs) as funcnet.checkpoint.<name>.
for _cls in (CheckpointError, CheckpointManager, CheckpointWarning, LoadReport, Restored):
    _cls.__module__ = __name__
del _cls

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "CheckpointError",
    "CheckpointManager",
    "CheckpointWarning",
    "LoadReport",
    "Restored",
    "atomic_write",
    "load",
    "read_metadata",
    "save",
]
