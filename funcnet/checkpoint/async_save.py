"""Background writes: one save at a time in a thread, the next one waits for it."""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable

__all__ = ["BackgroundWriter"]


class BackgroundWriter:
    """Runs one write at a time in a background thread; errors surface on the next wait.

    :meth:`submit` first waits for the previous write (raising its error, if
    it failed), then starts the new one. The thread is not a daemon, so the
    interpreter waits for a running write before it exits.

    Examples:
        >>> writer = BackgroundWriter("demo")
        >>> done = []
        >>> writer.submit(lambda: done.append(1))
        >>> writer.wait()
        >>> done, writer.busy
        ([1], False)
    """

    def __init__(self, name: str = "funcnet-checkpoint"):
        self.name = name
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    @property
    def busy(self) -> bool:
        """Whether a write is running now."""
        return self._thread is not None and self._thread.is_alive()

    def wait(self) -> None:
        """Wait for the running write, if any; raise its error once if it failed."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        error, self._error = self._error, None
        if error is not None:
            raise error

    def submit(self, write: Callable[[], object]) -> None:
        """Wait for the previous write, then run ``write()`` in a new background thread."""
        self.wait()

        def run():
            try:
                write()
            except BaseException as err:  # kept for the next wait, and told now
                self._error = err
                print(
                    f"{self.name}: a background checkpoint write failed: {type(err).__name__}: "
                    f"{err} (raised again by the next save or wait)",
                    file=sys.stderr,
                    flush=True,
                )

        self._thread = threading.Thread(target=run, name=self.name, daemon=False)
        self._thread.start()
