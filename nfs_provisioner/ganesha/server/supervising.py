"""The supervisor: a thread that restarts ganesha.nfsd with backoff whenever it exits on its own (its exports
come back from the files and are reconciled), and starts a new private bus when ours died.

While it restarts (from the exit it saw until the new process serves and its exports are reconciled),
:attr:`Supervisor.restarting` is set. The backoff doubles up to ``restart_backoff_max`` and starts again from
``restart_backoff`` once Ganesha ran ``STABLE_AFTER`` seconds.
"""

from __future__ import annotations

import logging
import subprocess
import threading
import time

from nfs_provisioner.ganesha import errors
from nfs_provisioner.ganesha.exports import ExportManager
from nfs_provisioner.ganesha.metrics import GaneshaMetrics
from nfs_provisioner.ganesha.server.helpers import Helpers
from nfs_provisioner.ganesha.server.nfsd import Nfsd
from nfs_provisioner.ganesha.server.waiting import final_tail
from nfs_provisioner.ganesha.settings import ServerSettings

log = logging.getLogger(__name__)

STABLE_AFTER = 60.0  # seconds of uptime after which the restart backoff resets


class Supervisor:
    """Restarts ``nfsd`` until ``stopping`` is set."""

    def __init__(self, *, settings: ServerSettings, nfsd: Nfsd, helpers: Helpers, exports: ExportManager,
                 metrics: GaneshaMetrics, stopping: threading.Event) -> None:
        self.settings = settings
        self.nfsd = nfsd
        self.helpers = helpers
        self.exports = exports
        self.metrics = metrics
        self.stopping = stopping
        self.restarts = 0
        """Restarts after ganesha.nfsd exited on its own (written under :attr:`_restarted`)."""
        self.restarting = threading.Event()
        """Set from an exit the supervisor saw until the restarted ganesha.nfsd is reconciled."""
        self._restarted = threading.Condition()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="ganesha-supervisor", daemon=True)
        self._thread.start()

    def join(self, timeout: float) -> None:
        """Wait for the thread to end (``stopping`` set first); a call from the thread itself returns at once."""
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=timeout)

    def wait_restarted(self, *, after: int, timeout: float) -> bool:
        """Block until ``restarts > after`` and Ganesha is ready again."""
        deadline = time.monotonic() + timeout
        with self._restarted:
            while self.restarts <= after:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._restarted.wait(left)
        return True

    def _run(self) -> None:
        try:
            self._loop()
        except Exception:
            log.exception("the Ganesha supervisor crashed; Ganesha is no longer restarted")
            self.metrics.up.set(0)
            raise

    def _loop(self) -> None:
        backoff = self.settings.restart_backoff
        while not self.stopping.is_set():
            proc = self.nfsd.proc
            if proc is None:
                return
            started = time.monotonic()
            code = self._wait_exit(proc)
            if code is None or self.stopping.is_set():
                return
            self.restarting.set()
            self.metrics.up.set(0)
            if time.monotonic() - started > STABLE_AFTER:
                backoff = self.settings.restart_backoff
            log.error("ganesha.nfsd (pid %d) exited with code %s; restarting in %.1fs. Log tail:\n%s", proc.pid, code,
                      backoff, final_tail(proc, self.nfsd.log))
            while not self.stopping.wait(backoff):
                try:
                    with self.nfsd.lock:
                        if self.stopping.is_set():
                            return
                        self.helpers.ensure_bus()
                        self.nfsd.start()
                    self.exports.reconcile()
                    self.restarting.clear()
                    break
                except errors.GaneshaError as e:
                    log.error("restarting Ganesha failed: %s", e)
                    self.nfsd.kill()
                    backoff = min(backoff * 2, self.settings.restart_backoff_max)
            else:
                return
            backoff = min(backoff * 2, self.settings.restart_backoff_max)
            with self._restarted:
                self.restarts += 1
                self.metrics.restarts.inc()
                self._restarted.notify_all()

    def _wait_exit(self, proc: subprocess.Popen[bytes]) -> int | None:
        """Wait for Ganesha to exit. If our dbus-daemon dies first, start a new bus and stop
        Ganesha (it never reconnects to a new bus) so the caller restarts it. None = stopping."""
        while not self.stopping.is_set():
            try:
                return proc.wait(timeout=0.5)
            except subprocess.TimeoutExpired:
                pass
            if self.helpers.bus_died() and not self.stopping.is_set():
                try:
                    self.helpers.ensure_bus()
                except errors.GaneshaError as e:
                    log.error("starting a new dbus-daemon failed (retried with Ganesha's restart): %s", e)
                self.nfsd.kill()
        return None
