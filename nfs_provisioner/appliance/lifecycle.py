"""The one owner of the appliance's signals, from start-up to exit.

SIGTERM and SIGINT never raise: the handler records the first signal, sets ``stopping`` and calls what asked to
be told (the controller's ``stop``). Start-up looks at ``stopping`` between its steps and in each of its waits
(``check``, ``sleep``, and Ganesha's start watches the same event) and ends with :class:`Terminated`, which the
appliance turns into a clean stop and exit 0. Nothing is ever unwound by an exception raised from inside a
handler, so a signal at any moment (between two statements, inside a ``finally``, while a child is spawned)
cannot leave half a teardown or lose a started Ganesha.

SIGHUP, SIGUSR1 and SIGUSR2 would kill the process by default without stopping Ganesha; they are logged and
ignored.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
HARMLESS_SIGNALS = (signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2)
"""Their default action would kill the process without stopping Ganesha; the appliance has nothing to reload."""


class Terminated(Exception):
    """A stop signal ended start-up (not an error: the process stops what started and exits 0)."""

    def __init__(self, signum: int | None) -> None:
        self.signum = signum
        super().__init__(f"{_name(signum)} during start-up")


def _name(signum: int | None) -> str:
    return signal.Signals(signum).name if signum is not None else "a stop request"


class Signals:
    """SIGTERM/SIGINT as an event. ``install()`` from the main thread; everything else from any thread."""

    def __init__(self) -> None:
        self.stopping = threading.Event()
        self.signum: int | None = None
        """The first stop signal received (None: none yet, or ``request_stop()``)."""
        self._callbacks: list[Callable[[], object]] = []

    def install(self) -> None:
        for sig in STOP_SIGNALS:
            signal.signal(sig, self._handle)
        for sig in HARMLESS_SIGNALS:  # a handler, not SIG_IGN: children get the default back on exec
            signal.signal(sig, _harmless)

    @property
    def name(self) -> str:
        return _name(self.signum)

    def _handle(self, signum: int, frame: object) -> None:
        # No logging here: the handler may run in the middle of a write to the same stream.
        if self.signum is None:
            self.signum = signum
        self.request_stop()

    def request_stop(self) -> None:
        """What a stop signal does (also for tests and embedders)."""
        self.stopping.set()
        for callback in list(self._callbacks):
            callback()

    def on_stop(self, callback: Callable[[], object]) -> None:
        """Call ``callback`` on the (next) stop request, or at once if one was made already. It may be called
        twice (a signal between the two steps here): it must be idempotent and must not block."""
        self._callbacks.append(callback)
        if self.stopping.is_set():
            callback()

    def check(self) -> None:
        """Raise :class:`Terminated` once a stop was requested."""
        if self.stopping.is_set():
            raise Terminated(self.signum)

    def sleep(self, seconds: float) -> None:
        """Wait ``seconds``; raise :class:`Terminated` as soon as a stop is requested."""
        if self.stopping.wait(seconds):
            raise Terminated(self.signum)


def _harmless(signum: int, frame: object) -> None:
    log.warning("received %s: ignored (the appliance has nothing to reload; SIGTERM stops it)",
                signal.Signals(signum).name)
