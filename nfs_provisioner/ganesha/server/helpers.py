"""Ganesha's helper daemons: a private ``dbus-daemon``, and with NFSv3 ``rpcbind`` and ``rpc.statd``.

The bus is started before Ganesha and must answer ``ListNames`` first: Ganesha never reconnects to a late bus.
With NFSv3, ``rpcbind -f -w`` is started unless one already answers on 127.0.0.1. With NLM, ``rpc.statd`` then
runs on port 662 (outgoing 2020). It is started again while its random reserved socket sits on a port Ganesha
needs, or while it has not registered with rpcbind in time (:meth:`Helpers.start_statd`).
"""

from __future__ import annotations

import logging
import subprocess
from pathlib import Path

from nfs_provisioner.ganesha import config, errors, portmap, processes
from nfs_provisioner.ganesha.dbus import GaneshaDBus
from nfs_provisioner.ganesha.server.waiting import Waits, final_tail
from nfs_provisioner.ganesha.settings import ServerSettings

log = logging.getLogger(__name__)

STATD_ATTEMPTS = 5
STATD_REGISTER_TIMEOUT = 15.0  # seconds a started rpc.statd has to register with rpcbind (it takes < 1 s)
STATD_PROGRAM = 100024
HELPER_NOFILE = 4096  # rpcbind/statd allocate per-fd tables: a huge limit makes them eat memory


class Helpers:
    """Starts, watches and stops the helper daemons of one server, by PID."""

    def __init__(self, *, settings: ServerSettings, launcher: processes.Launcher, templates: config.Templates,
                 dbus: GaneshaDBus, waits: Waits, bus_socket: Path) -> None:
        self.settings = settings
        self.launcher = launcher
        self.templates = templates
        self.dbus = dbus
        self.waits = waits
        self.run_dir = settings.run_dir
        self.bus_socket = bus_socket
        self.bus_proc: subprocess.Popen[bytes] | None = None
        self.rpcbind_proc: subprocess.Popen[bytes] | None = None
        self.statd_proc: subprocess.Popen[bytes] | None = None
        self.bus_log: processes.ChildLog | None = None

    def pids(self) -> dict[str, int]:
        procs = {"dbus-daemon": self.bus_proc, "rpcbind": self.rpcbind_proc, "rpc.statd": self.statd_proc}
        return {k: p.pid for k, p in procs.items() if p is not None and p.poll() is None}

    # --- the private bus ---------------------------------------------------------------------------------------

    def start_bus(self) -> None:
        conf = self.run_dir / "dbus-bus.conf"
        config.atomic_write(conf, self.templates.render_bus(socket_path=self.bus_socket), durable=False)
        self.bus_socket.unlink(missing_ok=True)
        self.bus_log = self.waits.child_log(self.run_dir / "dbus-daemon.log", "dbus-daemon")
        self.bus_proc = self.launcher.spawn(
            ["dbus-daemon", f"--config-file={conf}", "--nofork", "--nopidfile"],
            output=self.bus_log,
        )
        self.waits.until("the private D-Bus daemon", self._bus_answers, proc=self.bus_proc, timeout=10.0,
                         output=self.bus_log)

    def bus_died(self) -> bool:
        """Whether our private bus was started and has exited."""
        bus = self.bus_proc
        return bus is not None and bus.poll() is not None

    def ensure_bus(self) -> None:
        """Start a new private bus if ours died (Ganesha exits when its bus goes away)."""
        bus = self.bus_proc
        if bus is None or bus.poll() is None:
            return
        log.error("dbus-daemon (pid %d) exited with code %s; starting a new one. Log tail:\n%s", bus.pid,
                  bus.returncode, final_tail(bus, self.bus_log))
        self.start_bus()

    def _bus_answers(self) -> bool:
        try:
            self.dbus.list_names()
            return True
        except errors.GaneshaError:
            return False

    # --- rpcbind and rpc.statd ---------------------------------------------------------------------------------

    def start_rpc(self) -> None:
        """rpcbind (unless one answers), then rpc.statd when NLM is on."""
        if not self._rpcbind_answers():
            rpcbind_log = self.waits.child_log(self.run_dir / "rpcbind.log", "rpcbind")
            self.rpcbind_proc = self.launcher.spawn(["rpcbind", "-f", "-w"], output=rpcbind_log,
                                                    nofile=HELPER_NOFILE)
            self.waits.until("rpcbind", self._rpcbind_answers, proc=self.rpcbind_proc, timeout=10.0,
                             output=rpcbind_log)
        else:
            log.info("rpcbind already answers on 127.0.0.1; using it")
        if self.settings.nlm:
            self.start_statd()
        else:
            log.info("NFSv3 without NLM (--nfsv3-locking=false): no rpc.statd; v3 clients mount with nolock")

    def start_statd(self) -> None:
        p = self.settings.ports
        statd_dir = self.settings.config_path / "statd"
        (statd_dir / "sm").mkdir(parents=True, exist_ok=True)
        (statd_dir / "sm.bak").mkdir(parents=True, exist_ok=True)
        # statd binds one more UDP socket, on a random reserved port of 127.0.0.1 (its socket to the
        # kernel's lockd, whatever -o says). That can be rquota's 875, and Ganesha then exits at once
        # ("Cannot bind RQUOTA udp6 socket ... Address already in use"): start it again until it is not.
        ganesha_ports = {p.nfs, p.mountd, p.nlm, p.rquota}
        for attempt in range(1, STATD_ATTEMPTS + 1):
            # -d: statd's messages go to its log file (without it they go to syslog, which a container lacks).
            statd_log = self.waits.child_log(self.run_dir / "statd.log", "rpc.statd")
            proc = self.launcher.spawn(
                ["rpc.statd", "-F", "-d", "--no-notify", "-p", str(p.statd), "-o", str(p.statd_outgoing),
                 "-P", str(statd_dir)],
                output=statd_log,
                nofile=HELPER_NOFILE,
            )
            self.statd_proc = proc
            # Registered with rpcbind means past statd_get_socket(): every socket it will hold is bound.
            try:
                self.waits.until("rpc.statd", self._statd_registered, proc=proc, timeout=STATD_REGISTER_TIMEOUT,
                                 output=statd_log)
            except errors.StartCancelled:
                raise
            except errors.ServerError as e:
                if proc.poll() is not None or attempt == STATD_ATTEMPTS:
                    raise
                log.warning("%s; starting it again (%d/%d)", e, attempt, STATD_ATTEMPTS)
                processes.stop(proc, what="rpc.statd", timeout=self.settings.stop_timeout)
                continue
            clash = processes.bound_ports(proc.pid) & ganesha_ports
            if not clash:
                return
            log.info("rpc.statd took port %s, which Ganesha needs; starting it again (%d/%d)",
                     ",".join(map(str, sorted(clash))), attempt, STATD_ATTEMPTS)
            processes.stop(proc, what="rpc.statd", timeout=self.settings.stop_timeout)
        raise errors.ServerError(f"rpc.statd took a port Ganesha needs in {STATD_ATTEMPTS} starts in a row")

    def _registrations(self) -> set[tuple[int, int, str, int]]:
        """What rpcbind on 127.0.0.1 has registered (portmap.PortmapError if it does not answer)."""
        return self.launcher.call(lambda: portmap.dump("127.0.0.1", timeout=2.0))

    def _rpcbind_answers(self) -> bool:
        try:
            self._registrations()
            return True
        except portmap.PortmapError:
            return False

    def _statd_registered(self) -> bool:
        try:
            return any(prog == STATD_PROGRAM for prog, *_ in self._registrations())
        except portmap.PortmapError as e:
            log.debug("rpcbind: %s", e)
            return False

    # --- stop --------------------------------------------------------------------------------------------------

    def stop(self) -> list[errors.ServerError]:
        """Stop statd, rpcbind and the bus, in that order, each with a bounded wait; what failed (every one is
        tried)."""
        failed: list[errors.ServerError] = []
        for helper, what in ((self.statd_proc, "rpc.statd"), (self.rpcbind_proc, "rpcbind"),
                             (self.bus_proc, "dbus-daemon")):
            try:
                processes.stop(helper, what=what, timeout=self.settings.stop_timeout)
            except errors.ServerError as e:  # keep stopping the others
                log.error("%s", e)
                failed.append(e)
        return failed
