"""``GaneshaServer``: builds the parts of one server (helpers, nfsd, supervisor, health, exports), starts them in
order and stops them in reverse (the start sequence is in the package's docstring)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from nfs_provisioner import fileio
from nfs_provisioner.ganesha import config, errors, processes
from nfs_provisioner.ganesha.dbus import GaneshaDBus
from nfs_provisioner.ganesha.exports import ExportManager
from nfs_provisioner.ganesha.metrics import GaneshaMetrics, unscraped
from nfs_provisioner.ganesha.server.health import Health
from nfs_provisioner.ganesha.server.helpers import Helpers
from nfs_provisioner.ganesha.server.nfsd import Nfsd
from nfs_provisioner.ganesha.server.supervising import Supervisor
from nfs_provisioner.ganesha.server.waiting import Waits
from nfs_provisioner.ganesha.settings import ServerSettings

log = logging.getLogger(__name__)

PID_FILE = "processes.json"
"""In the config directory: the children of the running server, so that a start after a crash stops those left."""


class GaneshaServer:
    """Owns one Ganesha instance and its helpers. ``exports`` is the API the appliance uses.

    One-shot: after ``stop()`` build a new ``GaneshaServer`` to start again (exports and
    their ids come back from the files). ``metrics``: None keeps them where nothing reads them
    (``metrics.unscraped``)."""

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
        self.metrics = metrics if metrics is not None else unscraped()
        self.templates = templates or config.Templates(override_dir=settings.templates_override)
        self.run_dir = settings.run_dir
        self.config_dir = settings.config_path
        self.launcher = launcher or processes.Launcher(netns=settings.netns, mountns=settings.mountns,
                                                       pid_file=processes.PidFile(self.config_dir / PID_FILE))
        self.main_config = self.config_dir / "ganesha.conf"
        self.bus_socket = self.run_dir / "dbus.sock"
        self.bus_address = settings.dbus_address or f"unix:path={self.bus_socket}"
        self.dbus = GaneshaDBus(address=self.bus_address, bus_name=settings.bus_name,
                                observer=self.metrics.observe_dbus)
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
            on_count=self.metrics.set_exports,
            on_add=self.metrics.observe_add,
            records_dir=settings.records_path,
        )
        self._waits = Waits(log_max_bytes=settings.log_max_bytes)
        self._stopping = threading.Event()
        self._helpers = Helpers(settings=settings, launcher=self.launcher, templates=self.templates, dbus=self.dbus,
                                waits=self._waits, bus_socket=self.bus_socket)
        self._nfsd = Nfsd(settings=settings, launcher=self.launcher, templates=self.templates, dbus=self.dbus,
                          exports=self.exports, metrics=self.metrics, waits=self._waits, main_config=self.main_config,
                          bus_address=self.bus_address)
        self._supervisor = Supervisor(settings=settings, nfsd=self._nfsd, helpers=self._helpers, exports=self.exports,
                                      metrics=self.metrics, stopping=self._stopping)
        self._health = Health(dbus=self.dbus, metrics=self.metrics, bus_name=settings.bus_name,
                              pid=lambda: self.ganesha_pid, restarting=self._supervisor.restarting.is_set)
        self.metrics.watch_process(lambda: self.ganesha_pid)

    # --- public ------------------------------------------------------------------------------------------------

    @property
    def ganesha_pid(self) -> int | None:
        return self._nfsd.pid

    @property
    def ganesha_version(self) -> tuple[int, int, int] | None:
        """Set by ``start()`` from ``ganesha.nfsd -v``."""
        return self._nfsd.version

    @property
    def ganesha_log(self) -> processes.ChildLog | None:
        """The size-capped log of the latest ganesha.nfsd (None before the first start)."""
        return self._nfsd.log

    @property
    def restarts(self) -> int:
        """Restarts after ganesha.nfsd exited on its own."""
        return self._supervisor.restarts

    @property
    def restarting(self) -> bool:
        """True from an exit the supervisor saw until the restarted ganesha.nfsd is reconciled."""
        return self._supervisor.restarting.is_set()

    def helper_pids(self) -> dict[str, int]:
        return self._helpers.pids()

    def reclaimable_state(self) -> tuple[int, int]:
        """(NFSv4 client records in the recovery directory, NLM hosts statd monitors): the state a grace
        period would let clients of the previous run reclaim."""
        return self._nfsd.reclaimable_state()

    def start(self, *, loaded: Callable[[], None] | None = None, cancel: threading.Event | None = None) -> None:
        """Start everything and return once Ganesha serves; on failure stop what was started.

        ``loaded``: called once the export files are loaded and ganesha.nfsd is spawned, before it serves (its
        own start takes seconds with thousands of exports, in its own process: the caller may do other work
        meanwhile, in its own threads). Not before the spawn: threads of this interpreter would slow down the
        steps before it (the config, the spawn itself: 0.7 s with 1000 exports on a loaded machine).
        ``cancel``: once set, the start ends at its next wait with ``errors.StartCancelled`` (a stop signal)."""
        if cancel is not None:
            self._waits.cancel = cancel
        try:
            self._nfsd.find()
            self._prepare_dirs()
            if self.launcher.pid_file is not None:
                self.launcher.pid_file.stop_leftovers(timeout=self.settings.stop_timeout)
            if self.settings.dbus_address is None:
                self._helpers.start_bus()
            if self.settings.nfsv3:
                self._helpers.start_rpc()
            self.exports.load()
            if self.settings.clients is not None:
                self.exports.set_clients(self.settings.clients, live=False)
            self._nfsd.spawned = loaded
            self._nfsd.start_binding()
            self.exports.reconcile()
        except BaseException:
            self.stop()
            raise
        self._supervisor.start()

    def ready(self) -> bool:
        """Health: the bus answers, Ganesha is on it and ShowExports works."""
        return self._health.ready()

    def supervised_state(self) -> tuple[bool, str]:
        """Without I/O: not ok while ganesha.nfsd is not running or the supervisor is restarting it."""
        return self._health.supervised_state()

    def probe(self, *, timeout: float, managed: bool = True) -> tuple[bool, str]:
        """Health within ``timeout`` seconds per D-Bus call: (ok, why not). ``managed=False``: a Ganesha run
        elsewhere (no process of ours to look at), reached on its bus."""
        return self._health.probe(timeout=timeout, managed=managed)

    def wait_restarted(self, *, after: int, timeout: float) -> bool:
        """Block until ``restarts > after`` and Ganesha is ready again (for tests and the appliance)."""
        return self._supervisor.wait_restarted(after=after, timeout=timeout)

    def stop(self) -> None:
        """Admin shutdown over D-Bus, then signals; then the helpers. Bounded waits; safe to call twice."""
        self._stopping.set()
        failed = [e for e in (self._nfsd.stop(),) if e is not None]
        self._supervisor.join(timeout=self.settings.stop_timeout)
        self.metrics.up.set(0)
        self.dbus.close()
        failed += self._helpers.stop()
        if failed:
            raise failed[0]
        if self.launcher.pid_file is not None:
            self.launcher.pid_file.clear()

    def _prepare_dirs(self) -> None:
        s = self.settings
        if not s.export_root.is_dir():
            raise errors.ServerError(f"export root {s.export_root} is not a directory")
        for d in (self.run_dir, self.config_dir, s.recovery_path, s.log_path.parent):
            if d.is_relative_to(s.export_root):
                fileio.private_dir(d)  # NFS clients reach the export root (docs/security.md)
            else:
                d.mkdir(parents=True, exist_ok=True)
