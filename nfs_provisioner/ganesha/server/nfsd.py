"""``ganesha.nfsd`` itself: which binary, its ``ganesha.conf`` for this start (with the grace decision), its
start (retried while a fixed port is busy), its readiness, and its stop.

Grace: a start with no client state to reclaim is graceless (:meth:`Nfsd.write_config` says why). Ready: its
log says the server is initialized, its name is on the bus and ShowExports answers.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from nfs_provisioner.ganesha import binary, config, errors, processes
from nfs_provisioner.ganesha.dbus import GaneshaDBus
from nfs_provisioner.ganesha.exports import ExportManager
from nfs_provisioner.ganesha.metrics import GaneshaMetrics
from nfs_provisioner.ganesha.server.waiting import Waits
from nfs_provisioner.ganesha.settings import ServerSettings

log = logging.getLogger(__name__)

READY_MARK = "NFS SERVER INITIALIZED"
BIND_WINDOW = 75.0
NODE_DIR = re.compile(r"node\d+")


class Nfsd:
    """One ``ganesha.nfsd`` process at a time (the supervisor starts the next one through :meth:`start`)."""

    def __init__(self, *, settings: ServerSettings, launcher: processes.Launcher, templates: config.Templates,
                 dbus: GaneshaDBus, exports: ExportManager, metrics: GaneshaMetrics, waits: Waits,
                 main_config: Path, bus_address: str) -> None:
        self.settings = settings
        self.launcher = launcher
        self.templates = templates
        self.dbus = dbus
        self.exports = exports
        self.metrics = metrics
        self.waits = waits
        self.main_config = main_config
        self.bus_address = bus_address
        self.binary = binary.Ganesha()
        self.version: tuple[int, int, int] | None = None
        """Set by :meth:`find` from ``ganesha.nfsd -v``."""
        self.proc: subprocess.Popen[bytes] | None = None
        self.log: processes.ChildLog | None = None
        """The size-capped log of the latest ganesha.nfsd (its stderr, read by this process)."""
        self.lock = threading.Lock()
        """Held while the process is started or stopped (the supervisor and ``stop`` both do)."""
        self.spawned: Callable[[], None] | None = None
        """Called once, after the next spawn of ganesha.nfsd (``GaneshaServer.start``'s ``loaded``)."""

    @property
    def pid(self) -> int | None:
        proc = self.proc
        return proc.pid if proc is not None and proc.poll() is None else None

    def find(self) -> None:
        """Which Ganesha (installed, or an unpacked tree) and its version; an old one is refused with one line."""
        self.binary = binary.locate(self.settings.ganesha_tree)

        def run(argv: Sequence[str]) -> tuple[int, str]:
            done = self.launcher.run(argv)
            return done.returncode, done.stdout + done.stderr

        self.version = binary.version(self.binary, run=run)
        binary.check_version(self.version)
        log.info("NFS-Ganesha %s: %s", ".".join(map(str, self.version)), " ".join(self.binary.command))

    # --- grace -------------------------------------------------------------------------------------------------

    def reclaimable_state(self) -> tuple[int, int]:
        """(NFSv4 client records in the recovery directory, NLM hosts statd monitors): the state a grace
        period would let clients of the previous run reclaim."""
        def entries(d: Path) -> list[Path]:
            try:
                return list(d.iterdir())
            except OSError:
                return []

        v4 = 0
        for top in ("v4recov", "v4old"):  # the fs backend's records: one directory per client (per node<N>)
            for e in entries(self.settings.recovery_path / top):
                v4 += len(entries(e)) if e.is_dir() and NODE_DIR.fullmatch(e.name) else 1
        nlm = 0
        if self.settings.nfsv3 and self.settings.nlm:  # without NLM, statd's hosts have nothing to reclaim
            nlm = sum(len(entries(self.settings.config_path / "statd" / sub)) for sub in ("sm", "sm.bak"))
        return v4, nlm

    def write_config(self) -> None:
        """ganesha.conf for this start. With NLM on Ganesha never ends the grace period early (NLM clients
        cannot say they are done), so a start with nothing to reclaim would refuse every new OPEN and lock
        for the whole period: then this start is graceless. Any recorded client restores the period (with
        NLM off it then ends once every recorded NFSv4.1+ client has reclaimed). Without NLM a start with
        nothing to reclaim is graceless too: Ganesha would otherwise wait for its reaper's next run."""
        s = self.settings
        grace = s.grace_period
        if grace:
            v4, nlm = self.reclaimable_state()
            if v4 == 0 and nlm == 0:
                log.info("no client state to reclaim (no NFSv4 client records, no NLM hosts): this start has no "
                         "grace period")
                grace = 0
            else:
                log.info("client state to reclaim (%d NFSv4 client records, %d NLM hosts): grace period %ds",
                         v4, nlm, grace)
        config.atomic_write(
            self.main_config,
            self.templates.render_main(dataclasses.replace(s, grace_period=grace),
                                       export_index=self.exports.index_file, plugins_dir=self.binary.plugins_dir),
            durable=s.durable_writes,
        )

    # --- start -------------------------------------------------------------------------------------------------

    def start_binding(self) -> None:
        """Start Ganesha; again when it exits at once because one of its fixed ports is busy for a while: a
        helper's outgoing RPC (to rpcbind, statd, a client's callback) takes a random reserved port such as
        rquota's 875, and a closed TCP connection keeps it in TIME_WAIT for 60 s. Retried for up to
        ``BIND_WINDOW`` seconds, each attempt logged."""
        started, delay, attempt = time.monotonic(), 1.0, 0
        while True:
            attempt += 1
            try:
                self.start()
                return
            except errors.ServerError as e:
                busy = [line for line in str(e).splitlines() if "Address already in use" in line]
                if not busy or time.monotonic() - started + delay > BIND_WINDOW:
                    raise
                log.warning("ganesha.nfsd could not bind a port (%s); starting it again in %.0fs (attempt %d)",
                            busy[0].split(":")[-1].strip(), delay, attempt)
                if self.waits.cancel.wait(delay):
                    raise errors.StartCancelled("ganesha.nfsd: start cancelled") from e
                delay = min(delay * 2, 10.0)

    def start(self) -> None:
        """Write ganesha.conf, spawn ganesha.nfsd and return once it serves."""
        s = self.settings
        self.write_config()
        # Ganesha logs to its stderr, read by this process into a size-capped file (processes.ChildLog): its
        # own file logging has no cap, and a client that is not even on the client list can make it log a
        # line per garbage RPC record.
        glog = self.waits.child_log(s.log_path, "ganesha.nfsd", marks=(READY_MARK,))
        self.log = glog
        proc = self.launcher.spawn(
            [
                *self.binary.command,
                "-F",
                "-L",
                "STDERR",
                "-f",
                str(self.main_config),
                "-p",
                str(s.run_dir / "ganesha.pid"),
                "-N",
                s.log_level,
            ],
            env={"DBUS_SYSTEM_BUS_ADDRESS": self.bus_address},
            output=glog,
            nofile=s.nofile_limit,
        )
        self.proc = proc
        started = time.monotonic()
        spawned, self.spawned = self.spawned, None
        if spawned is not None:
            spawned()

        def serving() -> bool:
            if not glog.seen(READY_MARK):
                return False
            if not self.dbus.on_bus():
                return False
            self.dbus.show_exports()
            return True

        timeout = s.ready_timeout + s.ready_timeout_per_export * len(self.exports)
        self.waits.until("ganesha.nfsd", serving, proc=proc, timeout=timeout, output=glog)
        self.metrics.up.set(1)
        log.info("Ganesha ready in %.2fs: %s", time.monotonic() - started, processes.describe(proc.pid))

    # --- stop --------------------------------------------------------------------------------------------------

    def stop(self) -> errors.ServerError | None:
        """Admin shutdown over D-Bus, then signals, under :attr:`lock`; the error if it would not stop (logged)."""
        timeout = self.settings.stop_timeout
        with self.lock:
            proc = self.proc
            if proc is not None and proc.poll() is None:
                try:
                    self.dbus.shutdown()
                    proc.wait(timeout=timeout)
                except (errors.GaneshaError, subprocess.TimeoutExpired) as e:
                    log.warning("Ganesha did not shut down over D-Bus (%s); signalling it", e)
            try:
                processes.stop(proc, what="ganesha.nfsd", timeout=timeout)
            except errors.ServerError as e:
                log.error("%s", e)
                return e
        return None

    def kill(self) -> None:
        """Stop the process by signals, under :attr:`lock` (no D-Bus: it failed to start, or its bus is gone)."""
        with self.lock:
            processes.stop(self.proc, what="ganesha.nfsd", timeout=self.settings.stop_timeout)
