"""The feed: how data reaches the compiled steps of ``fit`` / ``evaluate`` / ``predict``.

Data is either arrays ``(x, y)`` / ``(x, y, weights)`` (``x`` may be a
pytree), placed on the device(s) once, or an iterable of such batches (a
list, or a function returning a fresh iterator). :class:`Placement` says
where things go: the default device when there is no mesh, or split over a
mesh's batch axes (rows) and replicated (params, logs). Every caller uses the
same methods either way, so the loop has no branch on the mesh.

Padding (:func:`funcnet.data.pad_rows`) makes every batch one shape: padded
rows get weight 0, so every example counts exactly once.
"""

from __future__ import annotations

import inspect
import itertools
import math
import warnings
from collections.abc import Iterable, Iterator

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from funcnet import distributed
from funcnet import losses as losses_lib
from funcnet.core import output_spec, spec_of
from funcnet.data.batching import pad_rows
from funcnet.distributed.rules import resolve_rules
from funcnet.training import keys
from funcnet.training.fused import fused_runner, logs_add
from funcnet.training.step import TrainState, unpack_batch

__all__ = [
    "ArrayEpochs",
    "BatchEpochs",
    "Placement",
    "check_arrays",
    "batch_check",
    "check_dtypes",
    "eval_chunks",
    "eval_rules",
    "is_arrays",
    "is_batches",
    "iterate",
    "one_batch_spec",
    "param_sharding_arg",
    "split_validation",
    "stack_batches",
    "warn_uint8_inputs",
]


class Placement:
    """Where the loop puts arrays: the default device (``mesh=None``) or a mesh.

    The loop works on an ``Auto``-axes copy of the user's mesh (``Explicit``
    axes break the gathers of the on-device epoch) and hands results back on
    the user's mesh with :meth:`to_user`. Without a mesh every sharding is
    ``None`` (``jax.jit``'s "unspecified") and placing is ``jax.device_put``.

    Attributes:
        mesh: the loop's mesh, or None.
        parts: how many devices a batch is split over (1 without a mesh).
        replicated: the sharding of replicated values (params, logs), or None.
        rows: the sharding of a batch (rows split), or None.
        stacked: the sharding of stacked batches ``(batches, batch, ...)``, or None.
    """

    def __init__(self, mesh, where: str):
        self.user_mesh = mesh
        self.mesh = None
        self.parts = 1
        self.replicated = self.rows = self.stacked = None
        if mesh is not None:
            self.mesh = distributed.auto_mesh(distributed.check_mesh(mesh, where))
            self.parts = distributed.batch_devices(self.mesh)
            self.replicated = NamedSharding(self.mesh, P())
            self.rows = distributed.batch_sharding(self.mesh)
            self.stacked = NamedSharding(self.mesh, P(None, *distributed.batch_spec(self.mesh)))

    @property
    def xp(self):
        """Where padding happens: on the device without a mesh, on the host before placing."""
        return jnp if self.mesh is None else np

    def put(self, tree, sharding):
        """``tree`` on ``sharding`` (on a mesh a copy that never aliases ``tree``)."""
        if self.mesh is None:
            return jax.device_put(tree)
        return distributed.place(tree, sharding)

    def put_rows(self, tree):
        """Host arrays placed with their rows split over the mesh (padded to a multiple of it)."""
        if self.mesh is None:
            return jax.device_put(tree)
        padded, _ = pad_rows(tree, self.parts)
        return jax.device_put(padded, self.rows)

    def model_vars(self, tree):
        """Params/state on the loop's mesh (kept where they already are on it)."""
        return tree if self.mesh is None else distributed.on_mesh(tree, self.mesh)

    def global_batch(self, batch, where: str):
        """A batch of this process's rows as global arrays split over the mesh."""
        return batch if self.mesh is None else distributed.global_batch(batch, self.mesh, where)

    def check_divisible(self, rows: int, where: str, what: str) -> None:
        if self.mesh is not None:
            distributed.check_divisible(rows, self.mesh, where, what)

    def batch_size(self, batch_size: int, n: int) -> int:
        """``min(batch_size, n)`` rounded up to a multiple of the batch's devices."""
        return -(-min(batch_size, n) // self.parts) * self.parts

    def state_shardings(self, tree, param_sharding, model=None, optimizer=None, example=None):
        """Shardings of a ``TrainState`` (or its shapes): ``"replicated"``/``"fsdp"``, or
        sharding rules (params and optimizer moments by the model's logical axis names)."""
        if self.mesh is None:
            return None
        if isinstance(param_sharding, str):
            return distributed.state_shardings(tree, self.mesh, param_sharding)
        return distributed.train_state_shardings(
            tree, optimizer, model, example, self.mesh, param_sharding
        )

    def params_by_rules(self, model, params, example, rules):
        """``params`` placed by sharding ``rules`` (no-op without a mesh or rules)."""
        if self.mesh is None or rules is None or isinstance(rules, str):
            return params
        shardings = distributed.param_shardings(model, example, self.mesh, rules)
        return distributed.place(params, shardings)

    def create(self, model, optimizer, key, example, param_sharding):
        """``TrainState.create``, on a mesh compiled straight into its shardings (FSDP and
        tensor parallelism never hold the state whole); returns ``(train_state, its
        shardings or None)``."""
        if self.mesh is None:
            return TrainState.create(model, optimizer, key, example), None
        impl = jax.random.key_impl(key)

        def create(key_data):
            key = jax.random.wrap_key_data(key_data, impl=impl)
            return TrainState.create(model, optimizer, key, example)

        key_data = np.asarray(jax.random.key_data(key))
        shapes = jax.eval_shape(create, key_data)
        shardings = self.state_shardings(shapes, param_sharding, model, optimizer, example)
        return jax.jit(create, out_shardings=shardings)(key_data), shardings

    def to_user(self, tree):
        """``tree`` back on the caller's mesh when the loop worked on an ``Auto`` copy of it."""
        if self.user_mesh is None or self.user_mesh is self.mesh:
            return tree
        return distributed.place(
            tree, jax.tree.map(lambda a: NamedSharding(self.user_mesh, a.sharding.spec), tree)
        )

    @property
    def block_every(self) -> int:
        """Compiled calls between waits: jax 0.10 on CPU can deadlock with many multi-device
        calls queued; one device only needs to bound the queue."""
        return 16 if self.mesh is None else 8


def one_batch_spec(x, stacked: bool):
    """The spec of one batch of ``x`` (of one of its stacked batches when ``stacked``).

    Examples:
        >>> one_batch_spec(np.zeros((3, 4, 2), np.float32), True)
        ShapeDtypeStruct(shape=(4, 2), dtype=float32)
    """
    cut = 1 if stacked else 0
    return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape[cut:], a.dtype), spec_of(x))


def eval_rules(param_sharding, mesh, where: str):
    """``evaluate``/``predict``/``generate``'s sharding rules (None: params stay where they are).

    Examples:
        >>> eval_rules(None, None, "predict") is None
        True
    """
    if param_sharding is None:
        return None
    if mesh is None:
        raise ValueError(
            f"{where}: `param_sharding` needs a `mesh` with the rules' axes, e.g. "
            "`jax.make_mesh((2, 4), ('data', 'model'))`."
        )
    return resolve_rules(param_sharding, where)


def param_sharding_arg(param_sharding, where: str):
    """``fit``'s ``param_sharding``: ``"replicated"``, ``"fsdp"``, or sharding rules (a dict
    becomes ``Rules``); else a clear error.

    Examples:
        >>> param_sharding_arg({"mlp": "model"}, "fit")
        Rules({'mlp': 'model'})
    """
    if isinstance(param_sharding, str):
        if param_sharding not in ("replicated", "fsdp"):
            raise ValueError(
                f"{where}: `param_sharding` must be 'replicated' or 'fsdp' (or sharding rules, "
                f"e.g. `distributed.tensor_parallel()`), got {param_sharding!r}."
            )
        return param_sharding
    return resolve_rules(param_sharding, where)


def _is_array(a) -> bool:
    return isinstance(a, (np.ndarray, jax.Array)) or (
        hasattr(a, "shape") and hasattr(a, "dtype") and hasattr(a, "__array__")
    )


def _as_numpy(a):
    return a if isinstance(a, (np.ndarray, jax.Array)) or not _is_array(a) else np.asarray(a)


def _call(where: str) -> str:
    """How the user passes the data to the function named by ``where``."""
    if where.startswith("fit ("):  # fit's validation_data
        return "`fit(..., validation_data=(x, y))`"
    if where.startswith("evaluate"):
        return "`evaluate(model, params, state, (x, y), ...)`"
    return "`fit(model, optimizer, loss, (x, y), ...)`"


def _check_not_misplaced(data, where: str) -> None:
    """Reject the two shapes of data a new user reaches for: ``[x, y]`` and a bare ``x``."""
    if _is_array(data):
        raise TypeError(
            f"{where}: got a single array of shape {tuple(data.shape)} where inputs and targets "
            f"were expected: the targets are missing. Pass them together as a tuple, e.g. "
            f"{_call(where)}; for outputs without targets use `predict(model, params, state, x)`."
        )
    if (
        isinstance(data, list)
        and len(data) in (2, 3)
        and all(_is_array(part) or isinstance(part, dict) for part in data)
    ):
        names = "`(x, y)`" if len(data) == 2 else "`(x, y, weights)`"
        raise TypeError(
            f"{where}: got a list of {len(data)} arrays; a list is read as a sequence of "
            f"batches, so pass the arrays as a tuple {names} instead of a list: "
            f"{_call(where)}, or `tuple(data)`."
        )


def is_batches(x) -> bool:
    """True when ``x`` (``predict``'s inputs) is an iterable of batches rather than a pytree
    of arrays: an object with ``for_epoch``, an iterator or generator, or another iterable
    that is neither an array nor a dict, tuple or list (pytrees of inputs)."""
    if hasattr(x, "for_epoch") or isinstance(x, Iterator):
        return True
    return isinstance(x, Iterable) and not (
        _is_array(x) or isinstance(x, (dict, tuple, list, str, bytes))
    )


def is_arrays(data, where: str = "fit") -> bool:
    """True for a tuple ``(x, y)`` / ``(x, y, weights)`` of arrays (a list is batches).

    Raises:
        TypeError: for such a tuple holding Python lists or numbers instead of arrays,
            a list ``[x, y]`` of arrays (pass a tuple), or a bare array (the targets
            are missing).
    """
    _check_not_misplaced(data, where)
    if not (isinstance(data, tuple) and len(data) in (2, 3)):
        return False
    leaves = jax.tree.leaves(data)
    if leaves and all(_is_array(leaf) for leaf in leaves):
        return True
    numbers = (int, float, complex, bool)
    for name, part in zip(("x", "y", "weights"), data):
        if any(isinstance(leaf, numbers) for leaf in jax.tree.leaves(part)):
            what = "number" if isinstance(part, numbers) else f"{type(part).__name__} of numbers"
            raise TypeError(
                f"{where}: `{name}` is a Python {what}, not an array: the data must be arrays "
                f"with one row per example. Convert it first, e.g. `{name} = "
                f"np.asarray({name}, np.float32)`."
            )
    return False


def check_arrays(data, where: str):
    """``data`` as ``(x, y, w_or_None, n)``; clear errors for bad input (NaN/Inf included).
    Arrays that are neither numpy nor jax (a pandas Series, a torch tensor: anything with
    ``__array__``) come back as numpy arrays."""
    x, y, *rest = jax.tree.map(_as_numpy, tuple(data))
    w = rest[0] if rest else None
    check_dtypes((x, y, w), where)
    leaves = jax.tree_util.tree_flatten_with_path({"x": x, "y": y, "weights": w})[0]
    lengths = {}
    for path, leaf in leaves:
        name = jax.tree_util.keystr(path)
        if np.ndim(leaf) == 0:
            raise ValueError(
                f"{where}: {name} is a scalar; every array needs a leading batch axis."
            )
        lengths[name] = np.shape(leaf)[0]
    if len(set(lengths.values())) > 1:
        raise ValueError(
            f"{where}: the arrays have different numbers of examples: {lengths}. x, y (and "
            "weights) must have the same length along axis 0."
        )
    n = next(iter(lengths.values()))
    if n == 0:
        raise ValueError(f"{where}: the dataset is empty (0 examples).")
    for path, leaf in leaves:
        _check_finite_rows(np.asarray(leaf), n, jax.tree_util.keystr(path), where)
    return x, y, w, n


def check_dtypes(batch, where: str) -> None:
    """No strings or objects in ``(x, y, weights)``: JAX arrays are numbers."""
    flat = jax.tree_util.tree_flatten_with_path(dict(zip(("x", "y", "weights"), batch)))[0]
    for path, leaf in flat:
        kind = np.dtype(getattr(leaf, "dtype", np.asarray(leaf).dtype)).kind
        if kind in "USOV":
            name = jax.tree_util.keystr(path)
            fix = (
                "encode class names as integers with `funcnet.data.encode_labels(y)`"
                if name.startswith("['y']")
                else "convert it to numbers first (e.g. `funcnet.data.encode_labels` for "
                "categories)"
            )
            raise TypeError(
                f"{where}: {name} has dtype {leaf.dtype} (not numbers); JAX arrays hold "
                f"numbers: {fix}."
            )


def _check_finite_rows(a: np.ndarray, n: int, name: str, where: str) -> None:
    if not (np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.complexfloating)):
        return
    bad = ~np.isfinite(a.reshape(n, -1)).all(1)
    if bad.any():
        rows = np.flatnonzero(bad)
        raise ValueError(
            f"{where}: {name} contains NaN or Inf in {len(rows)} example(s) (first at index "
            f"{rows[0]}). Drop or impute them first (see funcnet.data), training on them would "
            "silently corrupt the model."
        )


def batch_check(model, loss_fn):
    """``check(x, y, w, where)`` for every input of fit/evaluate: no strings, and integer labels
    of a sparse loss must index the model's outputs (the class count is found once)."""
    base = getattr(loss_fn, "func", loss_fn)  # functools.partial(..., from_logits=False)
    sparse = base is losses_lib.sparse_categorical_cross_entropy
    classes = []

    def check(x, y, w, where: str) -> None:
        check_dtypes((x, y, w), where)
        if not sparse or not _is_array(y) or not np.issubdtype(y.dtype, np.integer):
            return
        if isinstance(y, jax.Array) and not y.is_fully_addressable:
            return  # a global array of several processes: each checked its own rows
        if not classes:
            spec = jax.tree.map(lambda a: jax.ShapeDtypeStruct((1, *a.shape[1:]), a.dtype), x)
            out = output_spec(model, spec)
            ok = isinstance(out, jax.ShapeDtypeStruct) and out.ndim > 1  # (batch, ..., classes)
            classes.append(out.shape[-1] if ok else None)
        _check_label_range(np.asarray(y), classes[0], where)

    return check


def _check_label_range(y: np.ndarray, classes: int | None, where: str) -> None:
    if classes is None or y.size == 0:
        return
    low, high = int(y.min()), int(y.max())
    if low < 0 or high >= classes:
        raise ValueError(
            f"{where}: labels must be in [0, {classes}) for a model with {classes} outputs, got "
            f"labels in [{low}, {high}]. Re-encode the labels (`funcnet.data.encode_labels`) "
            "or give the last layer as many outputs as there are classes."
        )


def iterate(data, where: str, epoch: int = 0, start: int = 0):
    """Batches of an iterable from batch ``start`` on (a callable is called each time for a
    fresh iterator; an object with ``for_epoch(epoch)``, e.g.
    :class:`funcnet.data.ShardedArrays`, gives that epoch's batches, so a resumed run sees
    the same order; with ``for_epoch(epoch, start)`` it skips to ``start`` itself, without
    reading the batches before; other iterables are read and the first ``start`` dropped)."""
    if hasattr(data, "for_epoch"):
        if start and "start" in inspect.signature(data.for_epoch).parameters:
            return iter(data.for_epoch(epoch, start=start))
        it = data.for_epoch(epoch)
    elif callable(data):
        it = data()
    else:
        it = data
    if not isinstance(it, Iterable):
        raise TypeError(
            f"{where}: expected arrays `(x, y)` / `(x, y, weights)` or an iterable of such "
            f"batches, got {type(data).__name__}."
        )
    return itertools.islice(it, start, None) if start else iter(it)


def split_validation(data, fraction: float):
    """The last ``fraction`` of the examples as validation data (before any shuffling), as Keras."""
    x, y, w, n = check_arrays(data, "fit")
    n_val = round(n * fraction)
    if not 0 < n_val < n:
        raise ValueError(
            f"fit: `validation_split={fraction}` of {n} examples leaves no training or no "
            "validation data; use a fraction in (0, 1) that keeps both non-empty."
        )
    parts = [t for t in (x, y, w) if t is not None]
    train = tuple(jax.tree.map(lambda a: a[: n - n_val], t) for t in parts)
    val = tuple(jax.tree.map(lambda a: a[n - n_val :], t) for t in parts)
    return train, val


def stack_batches(tree, n: int, batch_size: int, xp=jnp):
    """Pad the leaves to a multiple of ``batch_size``; reshape to ``(batches, batch_size, ...)``.

    Returns the stacked tree and the row mask of the same leading shape.
    """
    padded, mask = pad_rows(tree, batch_size, xp)
    nb = math.ceil(n / batch_size)
    stacked = jax.tree.map(lambda a: a.reshape(nb, batch_size, *a.shape[1:]), padded)
    return stacked, mask.reshape(nb, batch_size)


def _masked_weights(w, mask, xp):
    """Weights that are 0 on padded rows: the mask itself (boolean, so that integer-counting
    metrics accept it) or the given weights where the mask is set."""
    if w is None:
        return mask
    w = xp.asarray(w)
    m = mask.reshape(mask.shape + (1,) * (w.ndim - mask.ndim))
    return xp.where(m, w, xp.zeros((), w.dtype))


def eval_chunks(data, batch_size: int, placement: Placement, where: str, check=None):
    """The evaluation data as chunks ``((x, y, weights), stacked)`` for one compiled call each.

    Arrays give one chunk of all batches stacked ``(batches, batch, ...)``,
    padded, weighted 0 where padded and placed once (a list, reusable every
    epoch). An iterable gives a generator of its batches, each padded to a
    multiple of this process's devices and assembled into global arrays.
    ``check(x, y, w, where)`` (see :func:`batch_check`) sees every batch.
    """
    check = check or (lambda x, y, w, where: check_dtypes((x, y, w), where))
    if is_arrays(data, where):
        x, y, w, n = check_arrays(data, where)
        check(x, y, w, where)
        bs = placement.batch_size(batch_size, n)
        (xb, yb, wb), mask = stack_batches((x, y, w), n, bs, placement.xp)
        chunk = (xb, yb, _masked_weights(wb, mask, placement.xp))
        return [(placement.put(chunk, placement.stacked), True)]
    return _batch_chunks(data, placement, where, check)


def _batch_chunks(data, placement: Placement, where: str, check):
    parts = max(1, placement.parts // jax.process_count())
    for batch in iterate(data, where):
        x, y, w = unpack_batch(batch, where)
        check(x, y, w, where)
        (x, y, w), mask = pad_rows((x, y, w), parts, placement.xp)
        batch = (x, y, _masked_weights(w, mask, placement.xp))
        yield placement.global_batch(batch, where), False


# ----------------------------------------------------------------------------- fit's epochs


def warn_uint8_inputs(example, where: str) -> None:
    """Warn (once per call) when training inputs are uint8: raw pixels seen as 0..255.

    Integer token ids (int32/int64, for an embedding) are not warned about;
    byte ids given as uint8 are, and the message says how to silence it.
    """
    leaves = jax.tree_util.tree_flatten_with_path(example)[0]
    names = [f"`x{jax.tree_util.keystr(p)}`" for p, a in leaves if np.dtype(a.dtype) == np.uint8]
    if names:
        warnings.warn(
            f"{where}: the training inputs {', '.join(names)} are uint8 (raw pixels?), so the "
            "model sees values 0..255; scale them to floats first, e.g. "
            "`x = x.astype(np.float32) / 255`. (For integer ids, e.g. of an embedding, cast "
            "them to `np.int32` to silence this.)",
            UserWarning,
            stacklevel=4,
        )


class ArrayEpochs:
    """fit's epochs over arrays on the device: a permutation per epoch, K steps per call."""

    def __init__(self, data, batch_size: int, placement: Placement, where: str = "fit"):
        x, y, w, n = data
        if batch_size > n:
            raise ValueError(
                f"{where}: `batch_size={batch_size}` is larger than the {n} training examples; "
                f"use a batch size <= {n}."
            )
        placement.check_divisible(batch_size, where, "`batch_size`")
        self.batch_size, self.n, self.steps = batch_size, n, n // batch_size
        self.placement = placement
        self.example = jax.tree.map(
            lambda a: jax.ShapeDtypeStruct((batch_size, *a.shape[1:]), a.dtype), x
        )
        warn_uint8_inputs(self.example, where)
        self.data = placement.put_rows((x, y, w))

    def compile(self, step, metrics, ts_shardings, *, unroll, steps_per_execution):
        p = self.placement
        shardings = None if p.mesh is None else (ts_shardings, p.rows, p.replicated)
        self.run = fused_runner(step, metrics, self.batch_size, unroll=unroll, shardings=shardings)
        self.k = steps_per_execution
        self.block_every = p.block_every if p.mesh is None else max(1, 8 // steps_per_execution)

    def epoch(self, ts, acc, key, epoch: int, first: int, shuffle: bool):
        """Run the epoch's steps from ``first`` on; yield ``(ts, acc, steps, last)`` per call."""
        perm = jax.random.permutation(keys.epoch_key(key, epoch), self.n) if shuffle else None
        perm = self.placement.put(
            jnp.arange(self.n) if perm is None else perm, self.placement.replicated
        )
        for call, begin in enumerate(range(first, self.steps, self.k)):
            k = min(self.k, self.steps - begin)
            # a Python int: jnp.int32(begin) would dispatch an op per call (~60 µs on CPU)
            ts, acc = self.run(ts, acc, self.data, perm, begin, k)
            if call % self.block_every == self.block_every - 1:
                jax.block_until_ready(acc)
            yield ts, acc, k, begin + k == self.steps


class BatchEpochs:
    """fit's epochs over an iterable of batches: one compiled step per batch."""

    def __init__(self, data, placement: Placement, check):
        batches = iterate(data, "fit")
        first = next(batches, None)
        if first is None:
            raise ValueError("fit: `train_data` yielded no batches.")
        if batches is data:  # a one-shot iterator: the batch read for its shapes goes back
            data = itertools.chain([first], batches)
        # the batches an epoch has, when known without reading them (a list): for the
        # progress bar's total, and so that a checkpoint_every step ending an epoch is
        # saved once, by the epoch-end save
        steps = len(data) if isinstance(data, list) else None
        self.data, self.placement, self.steps, self.check = data, placement, steps, check
        self.example = spec_of(first[0])
        warn_uint8_inputs(self.example, "fit")

    def compile(self, step, metrics, ts_shardings, **_):
        def step_and_add(ts, acc, batch):  # the logs are accumulated inside the compiled call
            ts, logs = step(ts, batch)
            return ts, logs_add(metrics, acc, logs, 1.0, ts.step - 1)

        out = None if self.placement.mesh is None else (ts_shardings, self.placement.replicated)
        self.run = jax.jit(step_and_add, donate_argnums=(0, 1), out_shardings=out)

    def count_steps(self) -> None:
        """The batches of an epoch (to know where a resumed run restarts): the ``len()`` of
        a list of batches or of an object with ``for_epoch`` (funcnet's protocol: its
        ``len`` counts batches) when it has one, else counted by reading an epoch."""
        try:
            if isinstance(data := self.data, list) or hasattr(data, "for_epoch"):
                self.steps = len(data)
                return
        except TypeError:
            pass
        self.steps = sum(1 for _ in iterate(self.data, "fit"))

    def epoch(self, ts, acc, key, epoch: int, first: int, shuffle: bool):
        del key, shuffle  # an iterable brings its own order
        count, every = 0, self.placement.block_every
        for i, batch in enumerate(iterate(self.data, "fit", epoch, first), first):
            count += 1
            self.check(*unpack_batch(batch, "fit"), f"fit (batch {i + 1} of epoch {epoch + 1})")
            ts, acc = self.run(ts, acc, self.placement.global_batch(batch, "fit"))
            if i % every == every - 1:
                jax.block_until_ready(acc)
            yield ts, acc, 1, self.steps is not None and i + 1 == self.steps
        if count == 0:
            raise ValueError(
                f"fit: `train_data` yielded no batches in epoch {epoch + 1}; a one-shot "
                "iterator is used up after one epoch. Pass a list or a function that "
                "returns a fresh iterator."
            )
