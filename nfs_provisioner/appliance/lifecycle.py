"""The one owner of the appliance's signals, from start-up to exit.

SIGTERM and SIGINT never raise and their handlers take no lock: Python's C-level handler writes the signal's
number to a pipe (``signal.set_wakeup_fd``) and a thread of this module reads it, records the first signal, sets
``stopping`` and calls what asked to be told (the controller's ``stop``). Setting an ``Event`` from a Python
handler would not do: the handler runs in the main thread, which may hold that very event's lock inside
``wait()`` (a second SIGTERM during shutdown hung the appliance that way). Start-up looks at ``stopping``
between its steps and in each of its waits (``check``, ``sleep``; Ganesha's start watches the same event) and
ends with :class:`Terminated`, which the appliance turns into a clean stop and exit 0. Nothing is ever unwound
by an exception raised from inside a handler, so a signal at any moment (between two statements, inside a
``finally``, while a child is spawned) cannot leave half a teardown or lose a started Ganesha. ``finish()``
ignores both signals once everything is stopped: a signal during the interpreter's exit would otherwise take
the default action (Python restores it then) and turn exit 0 into death by signal.

What has started is stopped by one :class:`Stack` (``contextlib.ExitStack``'s habit): each part registers its stop
as soon as it has started, and the stop of the appliance, or a failed start-up, unwinds them, last first.

SIGUSR1 and SIGUSR2 change the appliance's log level at run time, without a restart of anything: SIGUSR1 makes it
DEBUG, SIGUSR2 puts back the level it started with (``--log-level``); each is logged at WARNING. SIGHUP would kill
the process by default without stopping Ganesha; it is logged and ignored (there is nothing to reload).
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Callable

from nfs_provisioner import threads

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
HARMLESS_SIGNALS = (signal.SIGHUP,)
"""Its default action would kill the process without stopping Ganesha; the appliance has nothing to reload."""
LOG_SIGNALS = (signal.SIGUSR1, signal.SIGUSR2)
"""SIGUSR1: log at DEBUG; SIGUSR2: back to the level of the start (:func:`change_log_level`)."""


class Terminated(Exception):
    """A stop signal ended start-up (not an error: the process stops what started and exits 0)."""

    def __init__(self, signum: int | None) -> None:
        self.signum = signum
        super().__init__(f"{_name(signum)} during start-up")


def _name(signum: int | None) -> str:
    return signal.Signals(signum).name if signum is not None else "a stop request"


class Signals:
    """SIGTERM/SIGINT as an event. ``install()`` and ``finish()`` from the main thread; the rest from any."""

    def __init__(self) -> None:
        self.stopping = threading.Event()
        self.signum: int | None = None
        """The first stop signal received (None: none yet, or ``request_stop()``)."""
        self._callbacks: list[Callable[[], object]] = []
        self._pipe: tuple[int, int] | None = None
        self._started_level: int | None = None
        """The root logger's level before the first SIGUSR1 (what SIGUSR2 restores)."""

    def install(self) -> None:
        r, w = os.pipe2(os.O_CLOEXEC)
        os.set_blocking(w, False)  # the C handler must never block; a full pipe only drops repeats
        signal.set_wakeup_fd(w, warn_on_full_buffer=False)
        self._pipe = (r, w)
        # A handler, not SIG_IGN: children get the default back.
        for sig in (*STOP_SIGNALS, *HARMLESS_SIGNALS, *LOG_SIGNALS):
            signal.signal(sig, _recorded_by_the_pipe)
        threads.spawn(self._read_signals, r, name="signals")

    def finish(self) -> None:
        """Everything is stopped: from now on a stop signal changes nothing (and cannot kill the exiting
        interpreter)."""
        for sig in STOP_SIGNALS:
            signal.signal(sig, signal.SIG_IGN)

    @property
    def name(self) -> str:
        return _name(self.signum)

    def _read_signals(self, fd: int) -> None:
        while True:
            try:
                data = os.read(fd, 64)
            except OSError as e:
                log.error("cannot read the signal pipe (%s): stop signals are no longer seen", e)
                return
            if not data:
                return
            for signum in data:
                if signum in STOP_SIGNALS:
                    if self.signum is None:
                        self.signum = signum
                        log.info("received %s: stopping", signal.Signals(signum).name)
                    self.request_stop()
                elif signum in HARMLESS_SIGNALS:
                    log.warning("received %s: ignored (the appliance has nothing to reload; SIGTERM stops it)",
                                signal.Signals(signum).name)
                elif signum in LOG_SIGNALS:
                    self.change_log_level(debug=signum == signal.SIGUSR1)

    def change_log_level(self, *, debug: bool) -> None:
        """What SIGUSR1 (``debug``) and SIGUSR2 do: the appliance's own log level, nothing else (NFS-Ganesha and
        the controller go on as they are; Ganesha's own log keeps its level)."""
        root = logging.getLogger()
        if self._started_level is None:
            self._started_level = root.level
        level = logging.DEBUG if debug else self._started_level
        root.setLevel(level)
        log.warning("received %s: log level %s (SIGUSR1: DEBUG, SIGUSR2: back to %s)",
                    "SIGUSR1" if debug else "SIGUSR2", logging.getLevelName(level),
                    logging.getLevelName(self._started_level))

    def request_stop(self) -> None:
        """What a stop signal does (also for tests and embedders)."""
        self.stopping.set()
        for callback in list(self._callbacks):
            callback()

    def on_stop(self, callback: Callable[[], object]) -> None:
        """Call ``callback`` on the (next) stop request, or at once if one was made already. It may be called
        twice (a stop between the two steps here): it must be idempotent and must not block."""
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


class Stack:
    """What has started, stopped the other way round. Each part registers its stop as soon as it has started
    (``push``); ``close()`` runs every registered stop, last first, each once, whatever the one before did (a
    failing stop is logged with what it was stopping). The appliance's start-up and its stop share one
    ``Stack``: a failed start unwinds what it started so far, a finished run all of it."""

    def __init__(self) -> None:
        self._stops: list[tuple[str, Callable[[], object]]] = []
        self._lock = threading.Lock()

    def push(self, what: str, stop: Callable[[], object]) -> None:
        """Run ``stop`` at ``close()``, before every stop pushed earlier; ``what`` names it in the log."""
        with self._lock:
            self._stops.append((what, stop))

    def close(self) -> None:
        """Run the stops, last pushed first; a stop that raises is logged and the next one runs."""
        while True:
            with self._lock:
                if not self._stops:
                    return
                what, stop = self._stops.pop()
            try:
                stop()
            except Exception:
                log.exception("stopping the %s failed", what)

    def __len__(self) -> int:
        with self._lock:
            return len(self._stops)


def _recorded_by_the_pipe(signum: int, frame: object) -> None:
    """Nothing to do in the main thread: the wakeup pipe carries the signal to the ``signals`` thread."""
