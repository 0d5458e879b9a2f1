"""CheckpointManager: a directory of numbered checkpoints, the last few and the best."""

from __future__ import annotations

import contextlib
import math
import os
import re
import shutil
import warnings
from collections.abc import Mapping
from typing import Any, NamedTuple

import jax

from funcnet._checks import is_int
from funcnet.checkpoint.async_save import BackgroundWriter
from funcnet.checkpoint.atomic import _remove_stale_temp_files, _temp_name
from funcnet.checkpoint.errors import CheckpointError, CheckpointWarning
from funcnet.checkpoint.format import _prepare, read_metadata
from funcnet.checkpoint.restore import load
from funcnet.checkpoint.sharded import DEFAULT_TIMEOUT, needs_sharded, prepare_sharded

__all__ = ["CheckpointManager", "Restored"]


_STEP_RE = re.compile(r"^step_(\d+)\.safetensors$")
_STEP_DIR_RE = re.compile(r"^step_(\d+)$")
_ASIDE = ".corrupt"  # suffix of a corrupt checkpoint moved aside by restore_latest


class Restored(NamedTuple):
    """What :meth:`CheckpointManager.restore_latest` loaded.

    Attributes:
        step: the step of the checkpoint loaded.
        tree: its contents (see :func:`~funcnet.checkpoint.load`).
        skipped: ``(file, reason)`` for each newer checkpoint that was corrupt,
            newest first (each moved aside to ``<file>.corrupt``); empty when
            the latest one was intact.
    """

    step: int
    tree: Any
    skipped: list[tuple[str, str]]


class CheckpointManager:
    """A directory of numbered checkpoints: keep the last few and the best, find the latest.

    Files are named ``step_<step>.safetensors`` (zero-padded to 8 digits), or
    ``step_<step>/`` for a sharded checkpoint (a directory in which each
    process writes its own shards, see :mod:`funcnet.checkpoint.sharded`), and
    are the only record: the step and metrics of each live in its header, so
    a crash at any moment (during a save, or between a save and the removal
    of old files) leaves a consistent directory. Steps are expected to grow;
    the "last" checkpoints are those with the highest steps.

    With ``async_save=True`` a save copies the arrays to host memory and
    returns; the files are written in a background thread while training
    goes on (the arrays may be donated at once). The next save, :meth:`restore`,
    :meth:`restore_latest`, :meth:`wait_until_finished` and :meth:`close` (and
    leaving a ``with CheckpointManager(...)`` block) wait for it and raise its
    error if it failed; the interpreter also waits for it before exiting.

    Args:
        directory: where the checkpoints live (created if needed). Temporary
            files left in it by killed processes on this host are removed.
        max_to_keep: how many of the most recent checkpoints to keep (``None``
            keeps all); the best one is kept in addition.
        best_metric: the name of a metric given to :meth:`save` (e.g.
            ``"val_loss"``) that decides which checkpoint is best.
        best_mode: ``"min"`` or ``"max"``: whether a smaller or a larger value
            of ``best_metric`` is better. Ties keep the earlier step.
        on_corrupt: what :meth:`restore_latest` (and so :func:`funcnet.fit`
            resuming) does when the latest checkpoint is corrupt:
            ``"fallback"`` (the default: a long job resumes from the newest
            intact checkpoint, with a :class:`CheckpointWarning` naming each
            skipped file and why) or ``"raise"`` (stop with its error).
        sharded: ``True`` saves sharded checkpoints (each process writes its
            own shards; needed for arrays sharded over several processes),
            ``False`` one file written by process 0; ``None`` (the default)
            picks sharded when one process cannot write some array whole, or
            for a background save in several processes.
        async_save: write in a background thread (see above).
        timeout: seconds a sharded save waits for every process's shards
            before it gives up (a process died); the step is then not
            committed.

    Examples:
        >>> import tempfile, jax.numpy as jnp
        >>> manager = CheckpointManager(tempfile.mkdtemp(), max_to_keep=2, best_metric="loss")
        >>> for step, loss in [(10, 0.5), (20, 0.2), (30, 0.4), (40, 0.3)]:
        ...     _ = manager.save(step, {"w": jnp.full(2, step)}, metrics={"loss": loss})
        >>> manager.all_steps(), manager.latest_step(), manager.best_step()
        ([20, 30, 40], 40, 20)
        >>> manager.restore()["w"].tolist()
        [40, 40]
    """

    def __init__(
        self,
        directory: str | os.PathLike,
        *,
        max_to_keep: int | None = 3,
        best_metric: str | None = None,
        best_mode: str = "min",
        on_corrupt: str = "fallback",
        sharded: bool | None = None,
        async_save: bool = False,
        timeout: float = DEFAULT_TIMEOUT,
    ):
        if max_to_keep is not None and (not is_int(max_to_keep) or max_to_keep < 1):
            raise ValueError(
                f"CheckpointManager: `max_to_keep` must be an int >= 1 or None (keep all), got "
                f"{max_to_keep!r}."
            )
        if best_mode not in ("min", "max"):
            raise ValueError(
                f"CheckpointManager: `best_mode` must be 'min' or 'max', got {best_mode!r}."
            )
        if on_corrupt not in ("fallback", "raise"):
            raise ValueError(
                f"CheckpointManager: `on_corrupt` must be 'fallback' (resume from the newest "
                f"intact checkpoint) or 'raise', got {on_corrupt!r}."
            )
        if best_metric is not None and not isinstance(best_metric, str):
            raise TypeError(
                f"CheckpointManager: `best_metric` must be a metric name (str), got "
                f"{type(best_metric).__name__}."
            )
        if sharded is not None and not isinstance(sharded, bool):
            raise TypeError(
                f"CheckpointManager: `sharded` must be True, False or None (pick by itself), got "
                f"{sharded!r}."
            )
        if not isinstance(async_save, bool):
            raise TypeError(
                f"CheckpointManager: `async_save` must be True or False, got {async_save!r}."
            )
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
            raise ValueError(
                f"CheckpointManager: `timeout` must be a number of seconds > 0, got {timeout!r}."
            )
        self.directory = os.path.abspath(os.fspath(directory))
        self.sharded, self.async_save, self.timeout = sharded, async_save, timeout
        self._writer = BackgroundWriter(f"CheckpointManager({self.directory!r})")
        self.max_to_keep = max_to_keep
        self.best_metric = best_metric
        self.best_mode = best_mode
        self.on_corrupt = on_corrupt
        os.makedirs(self.directory, exist_ok=True)
        _remove_stale_temp_files(self.directory)

    def __repr__(self) -> str:
        return (
            f"CheckpointManager({self.directory!r}, max_to_keep={self.max_to_keep}, "
            f"best_metric={self.best_metric!r}, best_mode={self.best_mode!r}, "
            f"on_corrupt={self.on_corrupt!r}, sharded={self.sharded!r}, "
            f"async_save={self.async_save!r})"
        )

    def __enter__(self) -> CheckpointManager:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def wait_until_finished(self) -> None:
        """Wait for a background save to be written (raising its error if it failed)."""
        self._writer.wait()

    def close(self) -> None:
        """Wait for a background save (as :meth:`wait_until_finished`); the manager stays usable."""
        self._writer.wait()

    def path(self, step: int) -> str:
        """The checkpoint of ``step``: its directory when it is sharded, else its file."""
        folder = os.path.join(self.directory, f"step_{int(step):08d}")
        return folder if os.path.isdir(folder) else folder + ".safetensors"

    def all_steps(self) -> list[int]:
        """The steps that have a (committed) checkpoint, ascending."""
        steps = set()
        for name in os.listdir(self.directory):
            m = _STEP_RE.match(name)
            if m is None:
                m = _STEP_DIR_RE.match(name)
                if m is None or not os.path.isdir(os.path.join(self.directory, name)):
                    continue
            steps.add(int(m[1]))
        return sorted(steps)

    def latest_step(self) -> int | None:
        """The highest saved step, or ``None`` when there is none."""
        steps = self.all_steps()
        return steps[-1] if steps else None

    def metrics(self, step: int) -> dict:
        """The metrics saved with ``step`` (``{}`` when none; header only, no checksum check)."""
        return read_metadata(self.path(step)).get("metrics") or {}

    def best_step(self) -> int | None:
        """The step with the best ``best_metric``, or ``None`` (no metric, or none saved)."""
        if self.best_metric is None:
            return None
        best = None
        for step in self.all_steps():
            try:
                value = self.metrics(step).get(self.best_metric)
            except CheckpointError:
                continue
            if not isinstance(value, (int, float)) or not math.isfinite(value):
                continue
            better = best is None or (
                value < best[1] if self.best_mode == "min" else value > best[1]
            )
            if better:
                best = (step, value)
        return None if best is None else best[0]

    def save(
        self,
        step: int,
        tree: Any,
        *,
        metrics: Mapping[str, Any] | None = None,
        metadata: Mapping | None = None,
    ) -> str:
        """Save ``tree`` as checkpoint ``step`` (replacing one of the same step), then prune.

        Args:
            step: a non-negative int (e.g. ``int(train_state.step)``).
            tree: the pytree to save (see :func:`save`).
            metrics: numbers such as an epoch's logs; ``best_metric`` is read
                from them. Non-scalar values are stored as lists.
            metadata: JSON data stored with it.

        Returns:
            The checkpoint written (with ``async_save``: being written).

        Raises:
            ValueError: for a negative step, or metrics without ``best_metric``.
            CheckpointError, OSError: with ``async_save``, the error of the
                previous save, if it failed.
        """
        if not is_int(step) or step < 0:
            raise ValueError(
                f"CheckpointManager.save: `step` must be an int >= 0, got {step!r}; pass "
                "`int(train_state.step)`."
            )
        if metrics is not None and self.best_metric is not None and self.best_metric not in metrics:
            raise ValueError(
                f"CheckpointManager.save: `best_metric={self.best_metric!r}` is not among the "
                f"metrics {sorted(metrics)}; log it (e.g. give fit validation data for "
                "'val_loss') or choose one of these."
            )
        extra = {"step": int(step), "metrics": dict(metrics) if metrics is not None else None}
        self._writer.wait()  # the previous save is complete (or raises) before the next starts
        sharded = self.sharded
        if sharded is None:
            sharded = needs_sharded(tree) or (self.async_save and jax.process_count() > 1)
        base = os.path.join(self.directory, f"step_{int(step):08d}")
        path, other = (base, base + ".safetensors") if sharded else (base + ".safetensors", base)
        if sharded:
            write = prepare_sharded(
                path, tree, metadata, extra, copy=self.async_save, timeout=self.timeout
            ).run
        else:
            write = _prepare(path, tree, metadata, extra, copy=self.async_save)

        def save_and_prune():
            write()
            if jax.process_index() == 0:  # one process removes old files (others may read them)
                _remove(other)  # the same step in the other format, saved before
                self._prune()

        if self.async_save:
            self._writer.submit(save_and_prune)
        else:
            save_and_prune()
        return path

    def _prune(self) -> None:
        steps = self.all_steps()
        if self.max_to_keep is None or len(steps) <= self.max_to_keep:
            return
        keep = set(steps[-self.max_to_keep :])
        best = self.best_step()
        if best is not None:
            keep.add(best)
        for step in steps:
            if step not in keep:
                _remove(self.path(step))

    def restore(self, step: int | None = None, like: Any = None, *, strict: bool = True) -> Any:
        """Load checkpoint ``step`` (default: the latest); see :func:`load` for ``like``/``strict``.

        Raises:
            CheckpointError: when there is no checkpoint, no checkpoint of that
                step, or the file is bad.
        """
        self._writer.wait()
        steps = self.all_steps()
        if step is None:
            if not steps:
                raise CheckpointError(
                    f"CheckpointManager: no checkpoints in `{self.directory}`; save one first "
                    "(or check the directory)."
                )
            step = steps[-1]
        elif int(step) not in steps:
            raise CheckpointError(
                f"CheckpointManager: no checkpoint for step {step} in `{self.directory}`; the "
                f"saved steps are {steps}."
            )
        return load(self.path(step), like=like, strict=strict)

    def restore_latest(self, like: Any = None, *, strict: bool = True) -> Restored | None:
        """Load the newest intact checkpoint: what :func:`funcnet.fit` resumes from.

        Checkpoints are tried newest first. A corrupt one (truncated, a checksum
        mismatch, a malformed header or tree, not a regular file: a
        :class:`CheckpointError` whose ``corrupt`` is true) is, with
        ``on_corrupt="fallback"``, skipped; once an intact one loads, the
        skipped files are renamed to ``<file>.corrupt`` (by process 0), so that
        :meth:`latest_step` and pruning no longer count them and new saves are
        kept, and a :class:`CheckpointWarning` names each and why. With
        ``on_corrupt="raise"`` the first corrupt one raises. A checkpoint that
        is intact but unusable raises at once either way: one that does not fit
        ``like`` (the model changed) or that a newer funcnet wrote; an older
        checkpoint would not be the answer.

        Args:
            like, strict: as for :func:`~funcnet.checkpoint.load`.

        Returns:
            A :class:`Restored` ``(step, tree, skipped)``, or ``None`` when the
            directory has no checkpoint.

        Raises:
            CheckpointError: when every checkpoint is corrupt (listing each and
                why; nothing is moved, and training does not silently start
                over), with ``on_corrupt="raise"`` for a corrupt latest one, and
                for the errors above.

        Examples:
            >>> import tempfile, warnings, jax.numpy as jnp
            >>> manager = CheckpointManager(tempfile.mkdtemp())
            >>> for step in (1, 2):
            ...     _ = manager.save(step, {"w": jnp.full(2, step)})
            >>> with open(manager.path(2), "r+b") as f:  # corrupt the newest one's last byte
            ...     _ = f.seek(-1, 2)
            ...     _ = f.write(b"x")
            >>> with warnings.catch_warnings(record=True) as caught:
            ...     restored = manager.restore_latest()
            >>> restored.step, restored.tree["w"].tolist(), manager.all_steps()
            (1, [1, 1], [1])
            >>> restored.skipped[0][1].split(": ")[1]
            'the checksum does not match'
        """
        self._writer.wait()
        skipped: list[tuple[str, str]] = []
        for step in reversed(self.all_steps()):
            try:
                tree = load(self.path(step), like=like, strict=strict)
            except CheckpointError as err:
                if not err.corrupt or self.on_corrupt == "raise":
                    raise
                skipped.append((self.path(step), str(err)))
                continue
            if skipped:
                self._set_aside(step, skipped)
            return Restored(step, tree, skipped)
        if skipped:
            raise CheckpointError(
                f"CheckpointManager: every checkpoint in `{self.directory}` is corrupt "
                f"({len(skipped)}):\n{_reasons(skipped)}\nRestore one from a backup, or move "
                "them away to start from scratch.",
                corrupt=True,
            )
        return None

    def _set_aside(self, step: int, skipped: list[tuple[str, str]]) -> None:
        """Rename the corrupt ``skipped`` files to ``*.corrupt`` and warn, naming them."""
        moved = True
        if jax.process_index() == 0:  # one process renames (the others skip the same files)
            for path, _ in skipped:
                try:
                    os.replace(path, path + _ASIDE)
                except OSError:
                    moved = False
        where = f"renamed to `<file>{_ASIDE}`" if moved else "could not all be renamed"
        warnings.warn(
            CheckpointWarning(
                f"CheckpointManager: resuming from step {step} (`{self.path(step)}`), the newest "
                f"intact checkpoint; skipped {len(skipped)} newer corrupt one(s), {where}:\n"
                f"{_reasons(skipped)}\nTo stop instead of falling back, use "
                "`CheckpointManager(..., on_corrupt='raise')`."
            ),
            stacklevel=3,
        )


def _remove(path: str) -> None:
    """Remove a checkpoint file or sharded directory (nothing when it is not there)."""
    if os.path.isdir(path) and not os.path.islink(path):
        aside = _temp_name(path)  # renamed first, so no reader ever sees a half-removed one
        try:
            os.replace(path, aside)
        except FileNotFoundError:
            return
        shutil.rmtree(aside, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)


def _reasons(skipped: list[tuple[str, str]]) -> str:
    return "\n".join(f"  `{path}`: {reason}" for path, reason in skipped)
