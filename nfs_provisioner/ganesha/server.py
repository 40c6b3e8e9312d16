"""Run NFS-Ganesha: private D-Bus daemon, rpcbind/statd for NFSv3, ganesha.nfsd; supervise; stop.

Start sequence (``GaneshaServer.start``):

0. which Ganesha (installed, or an unpacked tree: ``binary``) and its version; older than
   ``binary.MIN_VERSION`` is refused with one line;
1. directories under the export root (config, recovery) and the run directory;
2. a private ``dbus-daemon`` (own config and socket) unless ``dbus_address`` is given;
   wait until it answers ``ListNames`` (Ganesha never reconnects to a late bus);
3. with NFSv3: ``rpcbind -f -w`` unless one already answers, then (with NLM) ``rpc.statd`` on port 662
   (outgoing 2020), started again while its random reserved socket sits on a port Ganesha needs;
4. the export index rebuilt from the export files;
5. ganesha.conf rendered for this start (graceless when there is no client state to reclaim), then
   ``ganesha.nfsd -F`` with a bounded RLIMIT_NOFILE, logging to its stderr; ready when its
   name is on the bus, ShowExports answers and its log says the server is initialized;
6. the export files are cross-checked against ShowExports; a supervisor thread restarts
   Ganesha with backoff whenever it exits (exports come back from the files).

``stop()`` asks Ganesha to shut down over D-Bus, then signals it, then stops the
helpers, each with a bounded wait, all by PID.

Every child's stdout and stderr is read by this process into a size-capped file
(``processes.ChildLog``): Ganesha's ``ganesha.log`` in the config directory, the
helpers' in the run directory; none grows without bound, whatever clients do.
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

from nfs_provisioner import fileio
from nfs_provisioner.ganesha import binary, config, errors, portmap, processes
from nfs_provisioner.ganesha.dbus import GaneshaDBus
from nfs_provisioner.ganesha.exports import ExportManager
from nfs_provisioner.ganesha.metrics import GaneshaMetrics
from nfs_provisioner.ganesha.settings import ServerSettings

log = logging.getLogger(__name__)

READY_MARK = "NFS SERVER INITIALIZED"
STATD_ATTEMPTS = 5
STATD_REGISTER_TIMEOUT = 15.0  # seconds a started rpc.statd has to register with rpcbind (it takes < 1 s)
STATD_PROGRAM = 100024
BIND_WINDOW = 75.0
NODE_DIR = re.compile(r"node\d+")
HELPER_NOFILE = 4096  # rpcbind/statd allocate per-fd tables: a huge limit makes them eat memory
PID_FILE = "processes.json"
"""In the config directory: the children of the running server, so that a start after a crash stops those left."""
STABLE_AFTER = 60.0  # seconds of uptime after which the restart backoff resets


class GaneshaServer:
    """Owns one Ganesha instance and its helpers. ``exports`` is the API the appliance uses.

    One-shot: after ``stop()`` build a new ``GaneshaServer`` to start again (exports and
    their ids come back from the files)."""

    def __init__(
        self,
        settings: ServerSettings,
        *,
        metrics: GaneshaMetrics | None = None,
        templates: config.Templates | None = None,
        id_range: tuple[int, int] = (config.EXPORT_ID_MIN, config.EXPORT_ID_MAX),
        launcher: processes.Launcher | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.templates = templates or config.Templates(override_dir=settings.templates_override)
        self.run_dir = settings.run_dir
        self.config_dir = settings.config_path
        self.launcher = launcher or processes.Launcher(netns=settings.netns, mountns=settings.mountns,
                                                       pid_file=processes.PidFile(self.config_dir / PID_FILE))
        self.main_config = self.config_dir / "ganesha.conf"
        self.bus_socket = self.run_dir / "dbus.sock"
        self.bus_address = settings.dbus_address or f"unix:path={self.bus_socket}"
        self.dbus = GaneshaDBus(
            address=self.bus_address,
            bus_name=settings.bus_name,
            observer=metrics.observe_dbus if metrics else None,
        )
        self.exports = ExportManager(
            export_root=settings.export_root,
            config_dir=self.config_dir,
            dbus=self.dbus,
            templates=self.templates,
            nfsv3=settings.nfsv3,
            default_clients=settings.clients if settings.clients is not None else tuple(
                c.strip() for c in settings.export_subnet.split(",") if c.strip()),
            id_range=id_range,
            durable=settings.durable_writes,
            on_count=metrics.set_exports if metrics else None,
            on_add=metrics.observe_add if metrics else None,
            records_dir=settings.records_path,
        )
        self.restarts = 0
        self.restarting = False
        """Set by the supervisor from an exit it saw until the restarted ganesha.nfsd is reconciled."""
        self.ganesha_version: tuple[int, int, int] | None = None
        """Set by ``start()`` from ``ganesha.nfsd -v``."""
        self._binary = binary.Ganesha()
        self._bus_proc: subprocess.Popen[bytes] | None = None
        self._rpcbind_proc: subprocess.Popen[bytes] | None = None
        self._statd_proc: subprocess.Popen[bytes] | None = None
        self._ganesha: subprocess.Popen[bytes] | None = None
        self._ganesha_log: processes.ChildLog | None = None
        self._bus_log: processes.ChildLog | None = None
        self._ganesha_lock = threading.Lock()
        self._stopping = threading.Event()
        self._cancel = threading.Event()
        """Set by the caller of ``start()`` to end the start at its next wait (``errors.StartCancelled``)."""
        self._supervisor: threading.Thread | None = None
        self._restarted = threading.Condition()
        self._spawned: Callable[[], None] | None = None
        """Called once, after the first spawn of ganesha.nfsd (``start``'s ``loaded``)."""
        if metrics is not None:
            metrics.watch_process(lambda: self.ganesha_pid)

    # --- public ------------------------------------------------------------------------------------------------

    @property
    def ganesha_pid(self) -> int | None:
        proc = self._ganesha
        return proc.pid if proc is not None and proc.poll() is None else None

    def helper_pids(self) -> dict[str, int]:
        procs = {"dbus-daemon": self._bus_proc, "rpcbind": self._rpcbind_proc, "rpc.statd": self._statd_proc}
        return {k: p.pid for k, p in procs.items() if p is not None and p.poll() is None}

    def start(self, *, loaded: Callable[[], None] | None = None, cancel: threading.Event | None = None) -> None:
        """Start everything and return once Ganesha serves; on failure stop what was started.

        ``loaded``: called once the export files are loaded and ganesha.nfsd is spawned, before it serves (its
        own start takes seconds with thousands of exports, in its own process: the caller may do other work
        meanwhile, in its own threads). Not before the spawn: threads of this interpreter would slow down the
        steps before it (the config, the spawn itself: 0.7 s with 1000 exports on a loaded machine).
        ``cancel``: once set, the start ends at its next wait with ``errors.StartCancelled`` (a stop signal)."""
        if cancel is not None:
            self._cancel = cancel
        try:
            self._find_ganesha()
            self._prepare_dirs()
            if self.launcher.pid_file is not None:
                self.launcher.pid_file.stop_leftovers(timeout=self.settings.stop_timeout)
            if self.settings.dbus_address is None:
                self._start_bus()
            if self.settings.nfsv3:
                self._start_rpc_helpers()
            self.exports.load()
            if self.settings.clients is not None:
                self.exports.set_clients(self.settings.clients, live=False)
            self._spawned = loaded
            self._start_ganesha_binding()
            self.exports.reconcile()
        except BaseException:
            self.stop()
            raise
        self._supervisor = threading.Thread(target=self._supervise, name="ganesha-supervisor", daemon=True)
        self._supervisor.start()

    def ready(self) -> bool:
        """Health: the bus answers, Ganesha is on it and ShowExports works."""
        try:
            ok = self.ganesha_pid is not None and self.dbus.on_bus()
            if ok:
                self.dbus.show_exports()
        except errors.GaneshaError:
            ok = False
        if self.metrics is not None:
            self.metrics.up.set(1 if ok else 0)
        return ok

    def supervised_state(self) -> tuple[bool, str]:
        """Without I/O: not ok while ganesha.nfsd is not running or the supervisor is restarting it (from the
        exit it saw until the new process serves and its exports are reconciled)."""
        if self.ganesha_pid is None:
            return False, "ganesha.nfsd is not running (the supervisor restarts it)"
        if self.restarting:
            return False, "ganesha.nfsd is restarting (its exports are reconciled before it is ready)"
        return True, "ok"

    def probe(self, *, timeout: float, managed: bool = True) -> tuple[bool, str]:
        """Health within ``timeout`` seconds per D-Bus call: (ok, why not). ``managed=False``: a Ganesha run
        elsewhere (no process of ours to look at), reached on its bus."""
        state = self.supervised_state() if managed else (True, "ok")
        if not state[0]:
            ok, why = state
        else:
            try:
                if not self.dbus.on_bus(timeout=timeout):
                    ok, why = False, f"NFS-Ganesha ({self.settings.bus_name}) is not on its D-Bus"
                else:
                    # Any answer proves Ganesha's D-Bus thread works; get_grace's is a few bytes, where
                    # ShowExports lists every export (~20 ms of this process's CPU per second at 1000).
                    self.dbus.get_grace(timeout=timeout)
                    ok, why = True, "ok"
            except errors.GaneshaError as e:
                ok, why = False, f"NFS-Ganesha is not answering on D-Bus: {e}"
        if self.metrics is not None:
            self.metrics.up.set(1 if ok else 0)
        return ok, why

    def wait_restarted(self, *, after: int, timeout: float) -> bool:
        """Block until ``restarts > after`` and Ganesha is ready again (for tests and the appliance)."""
        deadline = time.monotonic() + timeout
        with self._restarted:
            while self.restarts <= after:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._restarted.wait(left)
        return True

    def stop(self) -> None:
        """Admin shutdown over D-Bus, then signals; then the helpers. Bounded waits; safe to call twice."""
        self._stopping.set()
        timeout = self.settings.stop_timeout
        failed: list[errors.ServerError] = []
        with self._ganesha_lock:
            proc = self._ganesha
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
                failed.append(e)
        if self._supervisor is not None and self._supervisor is not threading.current_thread():
            self._supervisor.join(timeout=timeout)
        if self.metrics is not None:
            self.metrics.up.set(0)
        self.dbus.close()
        for helper, what in (
            (self._statd_proc, "rpc.statd"),
            (self._rpcbind_proc, "rpcbind"),
            (self._bus_proc, "dbus-daemon"),
        ):
            try:
                processes.stop(helper, what=what, timeout=timeout)
            except errors.ServerError as e:  # keep stopping the others
                log.error("%s", e)
                failed.append(e)
        if failed:
            raise failed[0]
        if self.launcher.pid_file is not None:
            self.launcher.pid_file.clear()

    # --- start steps -------------------------------------------------------------------------------------------

    def _find_ganesha(self) -> None:
        self._binary = binary.locate(self.settings.ganesha_tree)

        def run(argv: Sequence[str]) -> tuple[int, str]:
            done = self.launcher.run(argv)
            return done.returncode, done.stdout + done.stderr

        self.ganesha_version = binary.version(self._binary, run=run)
        binary.check_version(self.ganesha_version)
        log.info("NFS-Ganesha %s: %s", ".".join(map(str, self.ganesha_version)), " ".join(self._binary.command))

    def _prepare_dirs(self) -> None:
        s = self.settings
        if not s.export_root.is_dir():
            raise errors.ServerError(f"export root {s.export_root} is not a directory")
        for d in (self.run_dir, self.config_dir, s.recovery_path, s.log_path.parent):
            if d.is_relative_to(s.export_root):
                fileio.private_dir(d)  # NFS clients reach the export root (docs/security.md)
            else:
                d.mkdir(parents=True, exist_ok=True)

    def _start_bus(self) -> None:
        conf = self.run_dir / "dbus-bus.conf"
        config.atomic_write(conf, self.templates.render_bus(socket_path=self.bus_socket), durable=False)
        self.bus_socket.unlink(missing_ok=True)
        self._bus_log = self._child_log(self.run_dir / "dbus-daemon.log", "dbus-daemon")
        self._bus_proc = self.launcher.spawn(
            ["dbus-daemon", f"--config-file={conf}", "--nofork", "--nopidfile"],
            output=self._bus_log,
        )
        self._wait(
            "the private D-Bus daemon",
            self._bus_answers,
            proc=self._bus_proc,
            timeout=10.0,
            output=self._bus_log,
        )

    def _bus_answers(self) -> bool:
        try:
            self.dbus.list_names()
            return True
        except errors.GaneshaError:
            return False

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

    def _start_rpc_helpers(self) -> None:
        if not self._rpcbind_answers():
            rpcbind_log = self._child_log(self.run_dir / "rpcbind.log", "rpcbind")
            self._rpcbind_proc = self.launcher.spawn(["rpcbind", "-f", "-w"], output=rpcbind_log, nofile=HELPER_NOFILE)
            self._wait(
                "rpcbind",
                self._rpcbind_answers,
                proc=self._rpcbind_proc,
                timeout=10.0,
                output=rpcbind_log,
            )
        else:
            log.info("rpcbind already answers on 127.0.0.1; using it")
        if self.settings.nlm:
            self._start_statd()
        else:
            log.info("NFSv3 without NLM (--nfsv3-locking=false): no rpc.statd; v3 clients mount with nolock")

    def _start_statd(self) -> None:
        p = self.settings.ports
        statd_dir = self.config_dir / "statd"
        (statd_dir / "sm").mkdir(parents=True, exist_ok=True)
        (statd_dir / "sm.bak").mkdir(parents=True, exist_ok=True)
        # statd binds one more UDP socket, on a random reserved port of 127.0.0.1 (its socket to the
        # kernel's lockd, whatever -o says). That can be rquota's 875, and Ganesha then exits at once
        # ("Cannot bind RQUOTA udp6 socket ... Address already in use"): start it again until it is not.
        ganesha_ports = {p.nfs, p.mountd, p.nlm, p.rquota}
        for attempt in range(1, STATD_ATTEMPTS + 1):
            # -d: statd's messages go to its log file (without it they go to syslog, which a container lacks).
            statd_log = self._child_log(self.run_dir / "statd.log", "rpc.statd")
            proc = self.launcher.spawn(
                ["rpc.statd", "-F", "-d", "--no-notify", "-p", str(p.statd), "-o", str(p.statd_outgoing),
                 "-P", str(statd_dir)],
                output=statd_log,
                nofile=HELPER_NOFILE,
            )
            self._statd_proc = proc
            # Registered with rpcbind means past statd_get_socket(): every socket it will hold is bound.
            try:
                self._wait("rpc.statd", self._statd_registered, proc=proc, timeout=STATD_REGISTER_TIMEOUT,
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
            nlm = sum(len(entries(self.config_dir / "statd" / sub)) for sub in ("sm", "sm.bak"))
        return v4, nlm

    def _write_main_config(self) -> None:
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
                                       export_index=self.exports.index_file, plugins_dir=self._binary.plugins_dir),
            durable=s.durable_writes,
        )

    def _start_ganesha_binding(self) -> None:
        """Start Ganesha; again when it exits at once because one of its fixed ports is busy for a while: a
        helper's outgoing RPC (to rpcbind, statd, a client's callback) takes a random reserved port such as
        rquota's 875, and a closed TCP connection keeps it in TIME_WAIT for 60 s. Retried for up to
        ``BIND_WINDOW`` seconds, each attempt logged."""
        started, delay, attempt = time.monotonic(), 1.0, 0
        while True:
            attempt += 1
            try:
                self._start_ganesha()
                return
            except errors.ServerError as e:
                busy = [line for line in str(e).splitlines() if "Address already in use" in line]
                if not busy or time.monotonic() - started + delay > BIND_WINDOW:
                    raise
                log.warning("ganesha.nfsd could not bind a port (%s); starting it again in %.0fs (attempt %d)",
                            busy[0].split(":")[-1].strip(), delay, attempt)
                if self._cancel.wait(delay):
                    raise errors.StartCancelled("ganesha.nfsd: start cancelled") from e
                delay = min(delay * 2, 10.0)

    def _start_ganesha(self) -> None:
        s = self.settings
        self._write_main_config()
        # Ganesha logs to its stderr, read by this process into a size-capped file (processes.ChildLog): its
        # own file logging has no cap, and a client that is not even on the client list can make it log a
        # line per garbage RPC record.
        glog = self._child_log(s.log_path, "ganesha.nfsd", marks=(READY_MARK,))
        self._ganesha_log = glog
        proc = self.launcher.spawn(
            [
                *self._binary.command,
                "-F",
                "-L",
                "STDERR",
                "-f",
                str(self.main_config),
                "-p",
                str(self.run_dir / "ganesha.pid"),
                "-N",
                s.log_level,
            ],
            env={"DBUS_SYSTEM_BUS_ADDRESS": self.bus_address},
            output=glog,
            nofile=s.nofile_limit,
        )
        self._ganesha = proc
        started = time.monotonic()
        spawned, self._spawned = self._spawned, None
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
        self._wait("ganesha.nfsd", serving, proc=proc, timeout=timeout, output=glog)
        if self.metrics is not None:
            self.metrics.up.set(1)
        log.info("Ganesha ready in %.2fs: %s", time.monotonic() - started, processes.describe(proc.pid))

    def _child_log(self, path: Path, what: str, *, marks: Sequence[str] = ()) -> processes.ChildLog:
        return processes.ChildLog(path, what=what, max_bytes=self.settings.log_max_bytes, marks=marks)

    def _wait(
        self,
        what: str,
        check: Callable[[], bool],
        *,
        proc: subprocess.Popen[bytes] | None,
        timeout: float,
        output: processes.ChildLog | None = None,
    ) -> None:
        deadline = time.monotonic() + timeout
        delay = 0.005
        while True:
            if self._cancel.is_set():
                raise errors.StartCancelled(f"{what}: start cancelled")
            if proc is not None and proc.poll() is not None:
                raise errors.ServerError(
                    f"{what} exited with code {proc.returncode} while starting; log tail:\n"
                    + (self._final_tail(proc, output) if output else "(no log)")
                )
            try:
                if check():
                    return
            except errors.GaneshaError as e:
                log.debug("%s not ready yet: %s", what, e)
            if time.monotonic() >= deadline:
                raise errors.ServerError(f"{what} not ready after {timeout}s"
                                         + (f"; log tail:\n{output.tail()}" if output else ""))
            self._cancel.wait(delay)
            delay = min(delay * 2, 0.1)

    @staticmethod
    def _final_tail(proc: subprocess.Popen[bytes] | None, output: processes.ChildLog) -> str:
        """The last lines of a child that exited: once its pipe is read to the end (briefly waited for)."""
        if proc is not None and proc.poll() is not None:
            output.join(1.0)
        return output.tail()

    # --- supervision -------------------------------------------------------------------------------------------

    def _wait_exit(self, proc: subprocess.Popen[bytes]) -> int | None:
        """Wait for Ganesha to exit. If our dbus-daemon dies first, start a new bus and stop
        Ganesha (it never reconnects to a new bus) so the caller restarts it. None = stopping."""
        while not self._stopping.is_set():
            try:
                return proc.wait(timeout=0.5)
            except subprocess.TimeoutExpired:
                pass
            bus = self._bus_proc
            if bus is not None and bus.poll() is not None and not self._stopping.is_set():
                try:
                    self._ensure_bus()
                except errors.GaneshaError as e:
                    log.error("starting a new dbus-daemon failed (retried with Ganesha's restart): %s", e)
                with self._ganesha_lock:
                    processes.stop(proc, what="ganesha.nfsd", timeout=self.settings.stop_timeout)
        return None

    def _ensure_bus(self) -> None:
        """Start a new private bus if ours died (Ganesha exits when its bus goes away)."""
        bus = self._bus_proc
        if bus is None or bus.poll() is None:
            return
        log.error(
            "dbus-daemon (pid %d) exited with code %s; starting a new one. Log tail:\n%s",
            bus.pid,
            bus.returncode,
            self._final_tail(bus, self._bus_log) if self._bus_log else "(no log)",
        )
        self._start_bus()

    def _supervise(self) -> None:
        try:
            self._supervise_loop()
        except Exception:
            log.exception("the Ganesha supervisor crashed; Ganesha is no longer restarted")
            if self.metrics is not None:
                self.metrics.up.set(0)
            raise

    def _supervise_loop(self) -> None:
        backoff = self.settings.restart_backoff
        while not self._stopping.is_set():
            proc = self._ganesha
            if proc is None:
                return
            started = time.monotonic()
            code = self._wait_exit(proc)
            if code is None or self._stopping.is_set():
                return
            self.restarting = True
            if self.metrics is not None:
                self.metrics.up.set(0)
            if time.monotonic() - started > STABLE_AFTER:
                backoff = self.settings.restart_backoff
            log.error(
                "ganesha.nfsd (pid %d) exited with code %s; restarting in %.1fs. Log tail:\n%s",
                proc.pid,
                code,
                backoff,
                self._final_tail(proc, self._ganesha_log) if self._ganesha_log else "(no log)",
            )
            while not self._stopping.wait(backoff):
                try:
                    with self._ganesha_lock:
                        if self._stopping.is_set():
                            return
                        self._ensure_bus()
                        self._start_ganesha()
                    self.exports.reconcile()
                    self.restarting = False
                    break
                except errors.GaneshaError as e:
                    log.error("restarting Ganesha failed: %s", e)
                    with self._ganesha_lock:
                        processes.stop(self._ganesha, what="ganesha.nfsd", timeout=self.settings.stop_timeout)
                    backoff = min(backoff * 2, self.settings.restart_backoff_max)
            else:
                return
            backoff = min(backoff * 2, self.settings.restart_backoff_max)
            with self._restarted:
                self.restarts += 1
                if self.metrics is not None:
                    self.metrics.restarts.inc()
                self._restarted.notify_all()
