"""Waiting for a started process to be ready: bounded, cancellable, with the child's own last lines on failure.

Every start step (the bus, rpcbind, rpc.statd, ganesha.nfsd) waits through one :class:`Waits`. Its ``cancel`` event,
set by the caller of ``GaneshaServer.start`` (a stop signal), ends every wait at once with
``errors.StartCancelled``.
"""

from __future__ import annotations

import logging
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from nfs_provisioner.ganesha import errors, processes

log = logging.getLogger(__name__)


class Waits:
    """The waits of one server's start steps and restarts. ``log_max_bytes``: the cap of each child's log file."""

    def __init__(self, *, log_max_bytes: int) -> None:
        self.log_max_bytes = log_max_bytes
        self.cancel = threading.Event()
        """Once set, every wait ends with ``errors.StartCancelled`` (``start`` may replace it with its caller's)."""

    def child_log(self, path: Path, what: str, *, marks: Sequence[str] = ()) -> processes.ChildLog:
        return processes.ChildLog(path, what=what, max_bytes=self.log_max_bytes, marks=marks)

    def until(
        self,
        what: str,
        check: Callable[[], bool],
        *,
        proc: subprocess.Popen[bytes] | None,
        timeout: float,
        output: processes.ChildLog | None = None,
    ) -> None:
        """Return once ``check()`` is true. ``errors.ServerError`` (with ``output``'s last lines) if ``proc`` exits
        first or ``timeout`` seconds pass; a ``GaneshaError`` from ``check`` counts as not ready yet."""
        deadline = time.monotonic() + timeout
        delay = 0.005
        while True:
            if self.cancel.is_set():
                raise errors.StartCancelled(f"{what}: start cancelled")
            if proc is not None and proc.poll() is not None:
                raise errors.ServerError(
                    f"{what} exited with code {proc.returncode} while starting; log tail:\n{final_tail(proc, output)}")
            try:
                if check():
                    return
            except errors.GaneshaError as e:
                log.debug("%s not ready yet: %s", what, e)
            if time.monotonic() >= deadline:
                raise errors.ServerError(f"{what} not ready after {timeout}s"
                                         + (f"; log tail:\n{output.tail()}" if output else ""))
            self.cancel.wait(delay)
            delay = min(delay * 2, 0.1)


def final_tail(proc: subprocess.Popen[bytes] | None, output: processes.ChildLog | None) -> str:
    """The last lines of a child that exited: once its pipe is read to the end (briefly waited for)."""
    if output is None:
        return "(no log)"
    if proc is not None and proc.poll() is not None:
        output.join(1.0)
    return output.tail()
