"""NFS-Ganesha's health for ``/healthz`` and ``/readyz``, checked in the background.

The HTTP handlers must answer at once, whatever Ganesha does: a stopped (SIGSTOP) or wedged Ganesha never
answers D-Bus, and a check made inside the handler would hang it for the D-Bus timeout. A thread checks every
``interval`` seconds with ``timeout`` per D-Bus call and keeps the last verdict; a check that has not finished
for ``stale_after`` seconds is itself a failure. With ``--run-server=false`` the Ganesha run elsewhere is
checked on its bus the same way.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from nfs_provisioner import threads

log = logging.getLogger(__name__)

Probe = Callable[[], tuple[bool, str]]


class BackgroundHealth:
    def __init__(self, probe: Probe, *, interval: float = 1.0, stale_after: float = 3.0,
                 clock: Callable[[], float] = time.monotonic, live: Probe | None = None) -> None:
        self.probe = probe
        self.live = live
        """Asked at every answer, before the last verdict (no I/O): a Ganesha the supervisor is restarting is
        not healthy even while the last D-Bus check, made before it died, is fresh."""
        self.interval = interval
        self.stale_after = stale_after
        self.clock = clock
        self._verdict: tuple[bool, str] = (False, "NFS-Ganesha not checked yet")
        self._at = clock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def start(self) -> None:
        """Check once (so the first answer is real), then keep checking in a thread."""
        self._check()
        self._thread = threads.spawn(self._loop, name="ganesha-health")

    def stop(self) -> None:
        self._stop.set()

    def get(self) -> tuple[bool, str]:
        if self.live is not None:
            now = self.live()
            if not now[0]:
                return now
        with self._lock:
            verdict, at = self._verdict, self._at
        age = self.clock() - at
        if age > self.stale_after:
            return False, f"the NFS-Ganesha health check has not finished for {age:.1f}s"
        return verdict

    def _check(self) -> None:
        try:
            verdict = self.probe()
        except Exception as e:  # noqa: BLE001 - a crashing check is an unhealthy answer, not a dead thread
            verdict = (False, f"the NFS-Ganesha health check failed: {e}")
        with self._lock:
            changed = verdict != self._verdict
            self._verdict, self._at = verdict, self.clock()
        if changed:
            (log.info if verdict[0] else log.warning)("NFS-Ganesha health: %s", verdict[1])

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self._check()
