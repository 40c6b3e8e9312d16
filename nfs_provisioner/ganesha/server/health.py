"""Health of a server: :meth:`Health.ready` (a running ganesha.nfsd that lists its exports over D-Bus) and
:meth:`Health.probe` (the appliance's check: the supervisor's view, then a cheap D-Bus call within a timeout).

Both end in one check (:meth:`Health._answers`) and both keep the ``ganesha_up`` gauge current.
:meth:`Health.supervised_state` needs no I/O.
"""

from __future__ import annotations

from collections.abc import Callable

from nfs_provisioner.ganesha import errors
from nfs_provisioner.ganesha.dbus import GaneshaDBus
from nfs_provisioner.ganesha.metrics import GaneshaMetrics

READY_BUS_TIMEOUT = 2.0
"""Seconds ``ready()`` waits for the bus to list its names (the facade's default for that call)."""


class Health:
    def __init__(self, *, dbus: GaneshaDBus, metrics: GaneshaMetrics, bus_name: str,
                 pid: Callable[[], int | None], restarting: Callable[[], bool]) -> None:
        self.dbus = dbus
        self.metrics = metrics
        self.bus_name = bus_name
        self.pid = pid
        self.restarting = restarting

    def ready(self) -> bool:
        """The bus answers, Ganesha is on it and ShowExports works."""
        running = self.pid() is not None
        return self._answers((running, "ganesha.nfsd is not running"), call=self.dbus.show_exports,
                             timeout=READY_BUS_TIMEOUT)[0]

    def supervised_state(self) -> tuple[bool, str]:
        """Without I/O: not ok while ganesha.nfsd is not running or the supervisor is restarting it (from the
        exit it saw until the new process serves and its exports are reconciled)."""
        if self.pid() is None:
            return False, "ganesha.nfsd is not running (the supervisor restarts it)"
        if self.restarting():
            return False, "ganesha.nfsd is restarting (its exports are reconciled before it is ready)"
        return True, "ok"

    def probe(self, *, timeout: float, managed: bool = True) -> tuple[bool, str]:
        """Health within ``timeout`` seconds per D-Bus call: (ok, why not). ``managed=False``: a Ganesha run
        elsewhere (no process of ours to look at), reached on its bus."""
        state = self.supervised_state() if managed else (True, "ok")
        # Any answer proves Ganesha's D-Bus thread works; get_grace's is a few bytes, where
        # ShowExports lists every export (~20 ms of this process's CPU per second at 1000).
        return self._answers(state, call=lambda: self.dbus.get_grace(timeout=timeout), timeout=timeout)

    def _answers(self, state: tuple[bool, str], *, call: Callable[[], object], timeout: float) -> tuple[bool, str]:
        """``state`` if it is not ok; else whether Ganesha is on its bus (within ``timeout``) and ``call`` is
        answered. The ``ganesha_up`` gauge is set from the outcome."""
        ok, why = state
        if ok:
            try:
                if not self.dbus.on_bus(timeout=timeout):
                    ok, why = False, f"NFS-Ganesha ({self.bus_name}) is not on its D-Bus"
                else:
                    call()
            except errors.GaneshaError as e:
                ok, why = False, f"NFS-Ganesha is not answering on D-Bus: {e}"
        self.metrics.up.set(1 if ok else 0)
        return ok, why
