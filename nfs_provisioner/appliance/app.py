"""The appliance process: Ganesha + the provision controller + /metrics and health.

Start order: export root -> its lock and the no-symlink check of the appliance's own state (see
``appliance.state``) -> identity -> (quota checks) -> API client, who may mount,
server address -> Ganesha (bus, helpers, the export files loaded; while
ganesha.nfsd starts, the controller's lists and watches of claims and PVs start:
nothing acts on them yet) -> the state check against the listed PVs
(``appliance.recovery``: adopt, rebuild, warn) -> the controller's workers. Stop
(SIGTERM/SIGINT) runs the other way round: the controller stops taking work and
finishes what runs, then the rest is stopped, last started first, Ganesha after what uses it. Every part
registers its stop in one ``lifecycle.Stack`` as soon as it has started: a failed start-up and the stop unwind
the same list. Signals have one owner (``appliance.lifecycle``): a stop signal
during start-up ends it at the next step or wait (exit 0, everything started is stopped), later it stops the
controller.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import CollectorRegistry

from nfs_provisioner import settings as settings_mod
from nfs_provisioner import tempdirs
from nfs_provisioner.appliance import (
    address,
    adoption,
    clones,
    exporters,
    health,
    lifecycle,
    nodes,
    pool_member,
    recovery,
    state,
)
from nfs_provisioner.appliance import provisioner as prov
from nfs_provisioner.appliance.derived import IN_FLIGHT_DIR, client_settings, controller_settings, ganesha_settings
from nfs_provisioner.appliance.kernel_exports import KernelExporter
from nfs_provisioner.controller import controller as ctl
from nfs_provisioner.controller import metrics as ctl_metrics
from nfs_provisioner.controller import resizing
from nfs_provisioner.controller.watching import Informer
from nfs_provisioner.errors import NFSProvisionerError, Permanent
from nfs_provisioner.ganesha.metrics import GaneshaMetrics
from nfs_provisioner.ganesha.server import GaneshaServer
from nfs_provisioner.kube import client as kube
from nfs_provisioner.kube.errors import ApiError, KubeError, TransportError
from nfs_provisioner.quota.manager import ProjectQuotas
from nfs_provisioner.quota.metrics import ProjectQuotaCollector
from nfs_provisioner.volumes import containment, filesystems, identity, usage_metrics
from nfs_provisioner.volumes.directories import ARCHIVE_DIR, RESERVED, VolumeDirectories
from nfs_provisioner.volumes.records import RECORDS_DIR, VolumeRecords

log = logging.getLogger(__name__)

class StartupError(Permanent, RuntimeError):
    """The appliance cannot start; the message is one line for the user."""


STARTUP_ERRORS = NFSProvisionerError
"""Failures during start-up that end the process with their message (exit 1), not a traceback: the root of the
package's errors (``nfs_provisioner.errors``)."""

CONFIG_DIR = ".ganesha"
"""Ganesha's config, export files and recovery data under the export root (``ServerSettings.config_path``)."""


@dataclass
class Parts:
    """What a running appliance is made of (exposed for tests and the benchmark)."""

    identity: str
    ganesha: GaneshaServer | None
    provisioner: prov.NFSProvisioner
    controller: ctl.ProvisionController
    resizer: resizing.Resizer
    registry: CollectorRegistry
    http: ctl_metrics.Server | None
    run_dir: Path
    lock: state.RootLock
    recovered: recovery.Report
    stops: lifecycle.Stack
    """The stop of every started part, unwound by :func:`teardown` (last started first)."""
    nodes: nodes.NodeClients | None = None
    """Follows the Nodes' addresses into every export's client list (None: a fixed ``--export-subnet``)."""
    ganesha_health: health.BackgroundHealth | None = None
    """Ganesha's health, checked in the background (None: no Ganesha)."""


def build(s: settings_mod.Settings, environ: Mapping[str, str], signals: lifecycle.Signals | None = None) -> Parts:
    """Create and start everything except the controller's workers; undone on failure (and on a stop request
    through ``signals``, which ends it with ``lifecycle.Terminated`` at the next step or wait)."""
    signals = signals or lifecycle.Signals()
    root = s.export_root
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise StartupError(f"export root {root}: {e}") from e
    stops = lifecycle.Stack()
    # Before anything under the root is read or written: one appliance per root, no symlinked own state.
    lock = state.RootLock.acquire(root, environ=environ)
    stops.push("export root's lock", lock.release)
    try:
        return _build(s, environ, lock, signals, stops)
    except BaseException:
        stops.close()
        raise


def _build(s: settings_mod.Settings, environ: Mapping[str, str], lock: state.RootLock,
           signals: lifecycle.Signals, stops: lifecycle.Stack) -> Parts:
    root = s.export_root
    state.refuse_symlinks(root, names=(CONFIG_DIR, IN_FLIGHT_DIR, RECORDS_DIR, ARCHIVE_DIR, clones.CLONES_DIR,
                                       filesystems.IMAGES_DIR, filesystems.MOUNTS_DIR, *sorted(RESERVED)),
                          walk=(CONFIG_DIR, IN_FLIGHT_DIR, RECORDS_DIR, filesystems.IMAGES_DIR))
    try:
        ident = identity.load_or_create(root)
    except (OSError, identity.IdentityError) as e:
        raise StartupError(f"export root {root}: {e}") from e
    log.info("identity %s, export root %s", ident, root)
    containment.warn(root)
    if s.use_ganesha and s.run_server and (problem := containment.handle_problem(root)):
        raise StartupError(problem)

    registry = CollectorRegistry()
    quotas = None
    if s.enable_xfs_quota:
        quotas = ProjectQuotas.open(export_root=root)
        report = quotas.reapply()
        log.info("XFS project quotas: %d limits re-applied, %d directories re-tagged, %d directories missing, "
                 "%d failed", len(report.applied), len(report.repaired), len(report.missing_directories),
                 len(report.failed))
        ProjectQuotaCollector(quotas, registry=registry)
    run_dir = state.make_run_dir()  # short: the bus socket path is limited to 108 bytes
    stops.push("run directory", lambda: tempdirs.release(run_dir))
    ganesha: GaneshaServer | None = None
    ganesha_ok: health.BackgroundHealth | None = None
    checks = _Checks()
    http = None
    if s.metrics_address:  # from now on: /readyz says what start-up waits for
        http = ctl_metrics.Server(s.metrics_address, registry, healthy=lambda: checks.healthy(),
                                  ready=lambda: checks.ready())
        stops.push("metrics endpoint", http.stop)
        http.start()
    api = kube.Client.load(str(s.kubeconfig) if s.kubeconfig else None, settings=client_settings(s))
    if s.master:
        api = api.with_host(s.master)
    wait_for_api(api, checks, signals)
    # Who may mount is known before Ganesha serves anything: export files written with another list
    # (e.g. a wider --export-subnet before a restart) are rewritten first.
    node_clients, clients = who_may_mount(s, api)
    if node_clients is not None:
        stops.push("Node watch", node_clients.stop)
    signals.check()
    exporter: prov.Exporter
    if s.use_ganesha:
        gsettings = ganesha_settings(s, run_dir=run_dir, clients=clients, environ=environ)
        ganesha = GaneshaServer(gsettings, metrics=GaneshaMetrics(registry=registry))
        if s.run_server:
            stops.push("Ganesha", ganesha.stop)  # safe on a server that never or only half started
        exporter = exporters.GaneshaExporter(ganesha.exports)
    else:
        exporter = KernelExporter(clients=clients)
        log.info("exporting through the kernel NFS server (/etc/exports, exportfs -r)")
    server = address.resolve(environ=environ, api=api, out_of_cluster=s.out_of_cluster,
                             server_hostname=s.server_hostname, nfs_port=s.nfs_port, pause=signals.sleep)
    log.info("NFS server address in PVs: %s", server)
    directories = VolumeDirectories(root)
    records = VolumeRecords(root / RECORDS_DIR)
    records.ensure_dir()
    fs_volumes = filesystems.FilesystemVolumes(root)
    usage_metrics.FilesystemUsageCollector(fs_volumes, registry=registry)
    provisioner = prov.NFSProvisioner(
        config=prov.ApplianceConfig(identity=ident, server=lambda: server, max_exports=s.max_exports),
        directories=directories,
        records=records,
        exporter=exporter,
        quotas=quotas,
        sources=clones.KubeSources(api),
        clones=clones.Clones(root / clones.CLONES_DIR),
        filesystems=fs_volumes,
    )
    # Before Ganesha loads the exports: an export of a filesystem volume must serve its mount.
    unmountable = recovery.remount(records=records, filesystems=fs_volumes, identity=ident)
    signals.check()
    csettings = controller_settings(s, identity=ident)
    pool = pool_member.build(s, api=api, identity=ident, provisioner=provisioner, server=lambda: server,
                             registry=registry, environ=environ)
    controller = ctl.ProvisionController(provisioner, csettings, api=api, registry=registry, pool=pool)
    resizer = controller.resize_with(provisioner, owns=provisioner.owns)
    # The claims and PVs are listed while ganesha.nfsd starts (10,000 of each take seconds, and so does
    # Ganesha with 10,000 exports), after the export files are loaded (the lists would slow that down:
    # one interpreter); nothing acts on them before the state check below and the workers.
    stops.push("watches", functools.partial(stop_watching, controller.informers))
    if ganesha is not None and s.run_server:
        ganesha.start(loaded=controller.watch, cancel=signals.stopping)
    elif ganesha is not None:
        ganesha.exports.load()
        controller.watch()
        ganesha.exports.reconcile()
        ganesha.exports.set_clients(clients)  # a Ganesha run elsewhere already serves the files
    else:
        controller.watch()
        exporter.set_clients(clients)
    if node_clients is not None:
        stops.push("Node watch's client lists", node_clients.stop_following)  # before what they go to
        node_clients.follow(exporter.set_clients)
    provisioner.probe_filesystems()  # once NFS is served (a loop mount: half a second on a busy machine)
    signals.check()
    wait_listed(controller.volumes, checks, signals)
    went = adoption.adopt(volumes=controller.volumes.items, root=root, identity=ident,  # the Go provisioner's
                          names=frozenset({s.provisioner}), records=records, exporter=exporter,
                          events=controller.recorder, quotas=quotas, registry=registry)
    done = recovery.Recovery(
        api=api, names=frozenset({s.provisioner}), identity=ident, directories=directories, records=records,
        exporter=exporter, server=lambda: server, volumes=controller.volumes.items, filesystems=fs_volumes,
        refused=went.refused).run()
    stops.push("volume serving watch", done.stop)
    recovery.withdraw(unmountable, exporter=exporter, filesystems=fs_volumes, report=done,
                      volumes=controller.volumes.items())
    signals.check()
    if ganesha is not None:
        checked = ganesha
        ganesha_ok = health.BackgroundHealth(lambda: checked.probe(timeout=HEALTH_TIMEOUT, managed=s.run_server),
                                             live=checked.supervised_state if s.run_server else None)
        stops.push("Ganesha health check", ganesha_ok.stop)
        ganesha_ok.start()
    checks.healthy = lambda: _both(ganesha_health(ganesha_ok), controller.healthy())
    checks.ready = lambda: went.annotate(_both(_both(ganesha_health(ganesha_ok), done.health()),
                                               _both(nodes.health(node_clients), controller.ready())))
    if http is not None:
        log.info("serving /metrics, /healthz, /readyz on %s", s.metrics_address)
    return Parts(identity=ident, ganesha=ganesha, provisioner=provisioner, controller=controller,
                 resizer=resizer, registry=registry, http=http, run_dir=run_dir, lock=lock, recovered=done,
                 stops=stops, nodes=node_clients, ganesha_health=ganesha_ok)


def stop_watching(informers: tuple[Informer, ...]) -> None:
    """Stop the controller's watches still running: ``controller.run`` stops them once it has run, this is for a
    failed start (a closed watch stream is not closed twice)."""
    running = [informer for informer in informers if informer.alive()]
    for informer in running:
        informer.stop()
    for informer in running:  # their last log lines before what the caller says next
        informer.join(5)


class _Checks:
    """What /healthz and /readyz answer: while starting, alive but not ready (saying what it waits for)."""

    def __init__(self) -> None:
        self.healthy: Callable[[], tuple[bool, str]] = lambda: (True, "starting")
        self.ready: Callable[[], tuple[bool, str]] = lambda: (False, "starting")


API_RETRY = 3.0
"""Seconds between attempts to reach an API server that does not answer at start."""


def _not_ready(why: str) -> tuple[bool, str]:
    return False, why


def wait_for_api(api: kube.Client, checks: _Checks, signals: lifecycle.Signals, *, retry: float = API_RETRY) -> None:
    """Return once the API server answers (any HTTP answer: what it refuses, later steps report). Until then a
    WARNING line per attempt and /readyz 503 with the same reason; SIGTERM ends the wait."""
    while True:
        try:
            api.get("/version")
            return
        except TransportError as e:
            why = f"cannot reach the API server {api.credentials.host}: {e}; retrying every {retry:.0f}s"
        except KubeError:
            return
        checks.ready = functools.partial(_not_ready, why)
        log.warning("%s", why)
        signals.sleep(retry)


def wait_listed(informer: Informer, checks: _Checks, signals: lifecycle.Signals) -> None:
    """Until ``informer`` has its first list (/readyz says so meanwhile). A refusal (401, 403) ends start-up like
    any API error at start; anything else the informer retries (logged)."""
    checks.ready = functools.partial(_not_ready, f"listing {informer.name}")
    while not informer.synced.wait(0.1):
        signals.check()
        e = informer.last_error
        if isinstance(e, ApiError) and e.status in (401, 403):
            raise e


def who_may_mount(s: settings_mod.Settings, api: kube.Client) -> tuple[nodes.NodeClients | None, tuple[str, ...]]:
    """The client list to start with, and the Node watch that keeps it current (None: a fixed list)."""
    policy = settings_mod.client_policy(s)
    source = "--export-subnet" if s.export_subnet is not None else (
        "default out of cluster: the nodes and loopback" if s.out_of_cluster else "default: the nodes")
    log.info("who may mount: %s (%s)", policy.describe(), source)
    if not policy.nodes:
        log.info("NFS clients: %s (fixed, Node changes are not followed)", ",".join(policy.fixed))
        return None, policy.fixed
    watcher = nodes.NodeClients(api, fixed=policy.fixed, pod_gateways=policy.pod_gateways)
    return watcher, watcher.start()


HEALTH_TIMEOUT = 0.5
"""Seconds per D-Bus call of the background health check (Ganesha answers ShowExports in milliseconds)."""


def ganesha_health(checked: health.BackgroundHealth | None) -> tuple[bool, str]:
    return (True, "ok") if checked is None else checked.get()


def _both(a: tuple[bool, str], b: tuple[bool, str]) -> tuple[bool, str]:
    return (a[0] and b[0], a[1] if not a[0] else b[1])


def run(s: settings_mod.Settings, environ: Mapping[str, str], signals: lifecycle.Signals | None = None) -> int:
    """The appliance until a stop signal (or a start-up error, raised). 0 after a stop, at any moment.
    ``signals``: installed by the caller (the CLI, as early as it can); None: installed here."""
    if signals is None:
        signals = lifecycle.Signals()
        signals.install()
        try:
            return _run(s, environ, signals)
        finally:
            signals.finish()
    return _run(s, environ, signals)


def _run(s: settings_mod.Settings, environ: Mapping[str, str], signals: lifecycle.Signals) -> int:
    try:
        parts = build(s, environ, signals)
    except lifecycle.Terminated as e:
        log.info("%s: stopped what had started", e)
        return 0
    except Exception as e:
        if not signals.stopping.is_set():
            raise
        # A step cut short by the stop (e.g. Ganesha's start, cancelled) fails: the stop is what happened.
        log.info("%s during start-up (the step it interrupted ended with: %s): stopped what had started",
                 signals.name, e)
        return 0
    try:
        signals.on_stop(parts.controller.stop)
        parts.controller.run(handle_signals=False)
    finally:
        teardown(parts)
    return 0


def teardown(parts: Parts) -> None:
    """Stop what ``build`` (and ``run``) started, last started first; the controller's workers excepted
    (``controller.run`` ends them)."""
    parts.stops.close()
