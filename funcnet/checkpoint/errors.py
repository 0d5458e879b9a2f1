"""The errors of checkpoint loading: CheckpointError, LoadReport, CheckpointWarning."""

from __future__ import annotations

from typing import NamedTuple

from funcnet.core import FuncnetError

__all__ = ["CheckpointError", "CheckpointWarning", "LoadReport"]


class CheckpointError(FuncnetError, ValueError):
    """A checkpoint cannot be read or does not fit the template; the message names the file.

    A :class:`~funcnet.core.FuncnetError` and a ``ValueError``.

    Attributes:
        report: for a template mismatch, the :class:`LoadReport`; else ``None``.
        corrupt: ``True`` when the file itself is bad (missing, not a regular
            file, truncated, a checksum mismatch, a malformed header or tree),
            so an older checkpoint may be the one to use; ``False`` when the
            file is intact but cannot be used here (it does not fit the
            template, or a newer funcnet wrote it).
    """

    def __init__(self, message: str, report: LoadReport | None = None, *, corrupt: bool = False):
        super().__init__(message)
        self.report = report
        self.corrupt = corrupt


class LoadReport(NamedTuple):
    """What did not match when loading into a template (paths as ``params/0/w``).

    It is truthy when anything did not match.

    Attributes:
        missing: template paths the file does not have.
        unexpected: file paths the template does not have.
        mismatched: ``"path: expected float32[3,4], got float32[5,4]"`` entries.
    """

    missing: list[str]
    unexpected: list[str]
    mismatched: list[str]

    def __bool__(self) -> bool:  # true when something did not match
        return bool(self.missing or self.unexpected or self.mismatched)

    def describe(self) -> str:
        lines = []
        for name, items in zip(self._fields, self):
            if items:
                lines.append(f"  {name} ({len(items)}): " + ", ".join(items))
        return "\n".join(lines)


class CheckpointWarning(UserWarning):
    """Something was skipped: entries by ``load(..., strict=False)``, or corrupt checkpoints.

    Attributes:
        report: for ``load(..., strict=False)``, the :class:`LoadReport` of the
            skipped entries; ``None`` for :meth:`CheckpointManager.restore_latest`,
            whose message names each skipped file and why.
    """

    def __init__(self, message: str, report: LoadReport | None = None):
        super().__init__(message)
        self.report = report
