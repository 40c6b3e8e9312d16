"""``ProvisionController``: wires informers, queues, workers, events, metrics and leader election.

Lifecycle: ``start()`` begins watching (and campaigning for the Lease when
leader election is on); workers run only while this instance may work.
``stop()`` (also on SIGTERM inside ``run()``) stops taking work, lets running
operations finish for ``shutdown_grace`` seconds, releases the Lease and
closes the watches. Whatever is abandoned is still recorded in flight (claim
finalizer or local journal), so the next run (or the next leader) finishes it.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry

from nfs_provisioner import threads
from nfs_provisioner.controller import decisions, deleting, events, leadership, outcomes, provisioning, resizing
from nfs_provisioner.controller.interface import Provisioner
from nfs_provisioner.controller.metrics import Metrics, Server
from nfs_provisioner.controller.pool import Pool
from nfs_provisioner.controller.queueing import RateLimiter, ShutDown, WorkQueue
from nfs_provisioner.controller.settings import ControllerSettings
from nfs_provisioner.controller.watching import Informer
from nfs_provisioner.kube import client as kube
from nfs_provisioner.kube.objects import Object

log = logging.getLogger(__name__)


class ProvisionController:
    """Runs a :class:`Provisioner` against the cluster.

    :param provisioner: your implementation.
    :param settings: see :class:`ControllerSettings`.
    :param api: a :class:`nfs_provisioner.kube.client.Client`; by default one is loaded from
        ``kubeconfig`` (or in-cluster credentials) with ``settings.client``.
    :param registry: Prometheus registry for the metrics (a fresh one by default, see ``.registry``).
    :param volume_name: hook naming the PV of a claim (default ``pvc-<claim uid>``); must be deterministic.
    :param pool: makes this instance a member of a pool (``controller.pool``): it provisions only the claims
        assigned to it; incompatible with leader election.
    """

    def __init__(self, provisioner: Provisioner, settings: ControllerSettings, *, api: kube.Client | None = None,
                 kubeconfig: str | None = None, registry: CollectorRegistry | None = None,
                 volume_name: Callable[[Object], str] = decisions.default_volume_name,
                 pool: Pool | None = None) -> None:
        if pool is not None and settings.leader_election.enabled:
            raise ValueError("a pool member works on its own claims and volumes: leader election must be off")
        self.provisioner = provisioner
        self.pool = pool
        self.settings = settings
        self.api = api or kube.Client.load(kubeconfig, settings=settings.client)
        self.registry = registry if registry is not None else CollectorRegistry()
        self.metrics = Metrics(self.registry)
        le = settings.leader_election
        self.identity = le.identity or leadership.default_identity()
        self.recorder = events.EventRecorder(self.api, component=settings.provisioner_name, host=self.identity)
        self._claim_finalizer = decisions.claim_finalizer(settings.instance_name)

        self.claims = Informer(self.api, name="claims", path=kube.claims_path(), kind="PersistentVolumeClaim",
                               api_version="v1", key=lambda o: str(o["metadata"]["uid"]),
                               on_change=self._claim_changed, watch_timeout=settings.watch_timeout)
        self.volumes = Informer(self.api, name="volumes", path=kube.volumes_path(), kind="PersistentVolume",
                                api_version="v1", key=lambda o: str(o["metadata"]["name"]),
                                on_change=self._volume_changed, watch_timeout=settings.watch_timeout)
        self.classes = Informer(self.api, name="classes", path=kube.classes_path(), kind="StorageClass",
                                api_version="storage.k8s.io/v1", key=lambda o: str(o["metadata"]["name"]),
                                on_change=self._class_changed, watch_timeout=settings.watch_timeout)
        self.informers = (self.claims, self.volumes, self.classes)
        self.claim_queue = WorkQueue("claims", RateLimiter(settings.retry))
        self.volume_queue = WorkQueue("volumes", RateLimiter(settings.retry))
        self.metrics.track_queues(lambda: {"claims": len(self.claim_queue), "volumes": len(self.volume_queue)})

        self.provisioning = provisioning.Provisioning(
            api=self.api, provisioner=provisioner, settings=settings, claims=self.claims, volumes=self.volumes,
            classes=self.classes, recorder=self.recorder, metrics=self.metrics, volume_name=volume_name, pool=pool)
        self.deleting = deleting.Deleting(api=self.api, provisioner=provisioner, settings=settings,
                                          volumes=self.volumes, recorder=self.recorder, metrics=self.metrics)

        self._stopping = threading.Event()
        self._stopped = threading.Event()
        self._work_stop = threading.Event()
        self._workers: list[threading.Thread] = []
        self._workers_lock = threading.Lock()
        self._started = False
        self._watching = False
        self.elector: leadership.LeaderElector | None = None
        self.resizer: resizing.Resizer | None = None
        """Set by :meth:`resize_with`; started and stopped with the controller."""
        self._elector_thread: threading.Thread | None = None
        self.server: Server | None = None
        if settings.serving.address:
            self.server = Server(settings.serving.address, self.registry, healthy=self.healthy, ready=self.ready)
        if le.enabled:
            self.elector = leadership.LeaderElector(
                self.api, le, name=le.name or decisions.lease_name(settings.provisioner_name),
                namespace=le.namespace or leadership.default_namespace(), identity=self.identity,
                on_started=self._start_workers, on_stopped=self._stop_workers)

    # ------------------------------------------------------------------ event handlers (watch threads)

    def _claim_changed(self, old: Object | None, new: Object | None) -> None:
        if old is not None and new is not None and decisions.only_finalizer_changed(old, new, self._claim_finalizer):
            return  # our own in-flight finalizer patch: the worker that made it already has the claim
        obj = new if new is not None else old
        if obj is not None and (new is None or self.provisioning.interesting(obj)):
            self.claim_queue.add(str(obj["metadata"]["uid"]))

    def _volume_changed(self, old: Object | None, new: Object | None) -> None:
        if new is not None and self.deleting.interesting(new):
            self.volume_queue.add(str(new["metadata"]["name"]))

    def _class_changed(self, old: Object | None, new: Object | None) -> None:
        if new is None:
            return
        if new.get("provisioner") in self.provisioning.names:
            self.provisioning.remember_class(new)
        if old is None and self.claims.synced.is_set():
            name = new["metadata"]["name"]
            for claim in self.claims.items():
                if decisions.claim_class(claim) == name and self.provisioning.interesting(claim):
                    self.claim_queue.add(str(claim["metadata"]["uid"]))

    def resize_with(self, expander: resizing.Expander, *,
                    owns: Callable[[Object], bool | None] = lambda volume: None) -> resizing.Resizer:
        """Also finish expansions (:mod:`nfs_provisioner.controller.resizing`): a bound claim of ours asking for more
        than it has, in a class allowing expansion, is grown by ``expander.expand`` while this instance leads.
        ``owns`` (e.g. ``Provisioner.owns``): ``False`` for a volume another instance made, left to it. Call once,
        before :meth:`start`; the resizer starts and stops with the controller."""
        if self.resizer is not None or self._started:
            raise RuntimeError("resize_with: call it once, before start()")
        self.resizer = resizing.Resizer(
            api=self.api, expander=expander, names=self.provisioning.names, claims=self.claims,
            volumes=self.volumes, classes=self.classes, recorder=self.recorder, retry=self.settings.retry,
            leading=lambda: self.leading, owns=owns)
        self.claims.on_change = resizing.chain(self._claim_changed, self.resizer.on_claim)
        return self.resizer

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Start watching, serving and (with leader election) campaigning; returns at once."""
        if self._started:
            return
        self._started = True
        self.recorder.start()
        if self.resizer is not None:
            self.resizer.start()
        self.watch()
        if self.server is not None:
            self.server.start()
        threads.spawn(self._resync_loop, name="resync")
        if self.pool is not None:
            self.pool.start()
        if self.elector is not None:
            self._elector_thread = threads.spawn(self.elector.run, name="leader-election")
        else:
            self._start_workers()

    def watch(self) -> None:
        """Start listing and watching only (changes queue up until workers run); ``start()`` does it too.

        Lets an application list while it prepares other things (the appliance: while Ganesha starts)."""
        with self._workers_lock:
            if self._watching:
                return
            self._watching = True
        for informer in self.informers:
            informer.start()

    def run(self, *, handle_signals: bool = True) -> None:
        """``start()``, then block until ``stop()`` or SIGTERM/SIGINT, then shut down gracefully."""
        if handle_signals and threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, lambda signum, frame: self.stop())
        self.start()
        while not self._stopping.wait(0.5):
            pass
        self._shutdown()

    def stop(self, wait: bool = False) -> None:
        """Ask the controller to stop (safe from signal handlers); ``wait=True`` also shuts down here."""
        self._stopping.set()
        if wait:
            self._shutdown()

    def _shutdown(self) -> None:
        if self._stopped.is_set():
            return
        self._stopped.set()
        log.info("shutting down: no new work, waiting up to %.0fs for running operations",
                 self.settings.shutdown_grace)
        if self.elector is not None:
            self.elector.stop()
            if self._elector_thread is not None:
                self._elector_thread.join(self.settings.shutdown_grace + 5)
        # Shut down first: an idle worker's get() then ends at once (else it waits out its 0.5 s poll); a running
        # sync finishes (``done`` and re-adds on a shut-down queue are no-ops).
        self.claim_queue.shut_down()
        self.volume_queue.shut_down()
        self._stop_workers()
        if self.resizer is not None and self._started:
            self.resizer.stop()
        if self.pool is not None and self._started:
            self.pool.stop()  # after the workers: the others route around this member from now on
        for informer in self.informers:
            informer.stop()
        for informer in self.informers:
            informer.join(5)
        self.recorder.stop()
        if self.server is not None and self._started:
            self.server.stop()
        log.info("stopped")

    @property
    def leading(self) -> bool:
        return self.elector is None or self.elector.leading.is_set()

    # ------------------------------------------------------------------ workers

    def _start_workers(self) -> None:
        with self._workers_lock:
            if self._workers or self._stopping.is_set():
                return
            self._work_stop = threading.Event()
            stop = self._work_stop
            for i in range(self.settings.threadiness):
                for queue, sync, threshold, give_up, kind in (
                        (self.claim_queue, self.provisioning.sync, self.settings.retry.failed_provision_threshold,
                         self.provisioning.give_up, "claim"),
                        (self.volume_queue, self.deleting.sync, self.settings.retry.failed_delete_threshold,
                         None, "volume")):
                    self._workers.append(threads.spawn(self._work, queue, sync, threshold, give_up, stop,
                                                       name=f"{kind}-worker-{i}"))
        threads.spawn(self._enqueue_all, name="initial-sync")

    def _stop_workers(self) -> None:
        with self._workers_lock:
            self._work_stop.set()
            workers, self._workers = self._workers, []
        stuck = threads.join(workers, self.settings.shutdown_grace)
        if stuck:
            log.warning("abandoning running operations in %s; their in-flight records keep them for the next run",
                        ", ".join(stuck))

    def _work(self, queue: WorkQueue, sync: Callable[[str], outcomes.Outcome], threshold: int,
              give_up: Callable[[str], None] | None, stop: threading.Event) -> None:
        for informer in self.informers:
            while not informer.synced.wait(0.2):
                if stop.is_set():
                    return
        while not stop.is_set():
            try:
                key = queue.get(timeout=0.5)
            except ShutDown:
                return
            if key is None:
                continue
            try:
                try:
                    outcome = sync(key)
                except Exception as e:
                    log.exception("%s %s: sync failed", queue.name, key)
                    outcome = outcomes.retry(str(e))
                self._handle(queue, key, outcome, threshold, give_up)
            finally:
                queue.done(key)

    @staticmethod
    def _handle(queue: WorkQueue, key: str, outcome: outcomes.Outcome, threshold: int,
                give_up: Callable[[str], None] | None) -> None:
        if outcome.next is outcomes.Next.DONE:
            queue.forget(key)
        elif outcome.next is outcomes.Next.RETRY_AFTER:
            queue.add_after(key, outcome.delay)
        elif outcome.next is outcomes.Next.RETRY_FOREVER or threshold == 0 or queue.num_requeues(key) < threshold:
            delay = queue.add_rate_limited(key)
            log.info("%s %s: retry in %.1fs (failures: %d): %s", queue.name, key, delay, queue.num_requeues(key),
                     outcome.reason)
        else:
            log.warning("%s %s: giving up after %d failures (threshold %d): %s", queue.name, key,
                        queue.num_requeues(key) + 1, threshold, outcome.reason)
            if give_up is not None:
                give_up(key)

    # ------------------------------------------------------------------ resync, health

    def _enqueue_all(self) -> None:
        for informer in self.informers:
            informer.synced.wait()
        for claim in self.claims.items():
            if self.provisioning.interesting(claim):
                self.claim_queue.add(str(claim["metadata"]["uid"]))
        for uid in self.provisioning.inflight.pending():  # includes records of claims deleted meanwhile
            self.claim_queue.add(uid)
        for volume in self.volumes.items():
            if self.deleting.interesting(volume):
                self.volume_queue.add(str(volume["metadata"]["name"]))

    def _resync_loop(self) -> None:
        while not self._stopping.wait(kube.jitter(self.settings.resync_period, 0.1)):
            try:
                self._resync()
            except Exception:  # a bug in one round must not end the resyncs (the next round tries again)
                log.exception("resync failed; the next one in about %.0fs", self.settings.resync_period)

    def _resync(self) -> None:
        if self.leading:
            self._enqueue_all()
        self.provisioning.forget_saved(max(self.settings.resync_period, 300.0))
        self.deleting.forget_deleted(max(self.settings.resync_period, 300.0))

    def healthy(self) -> tuple[bool, str]:
        """Liveness: every watch thread runs and has heard from the API server recently."""
        now = time.monotonic()
        for informer in self.informers:
            if not informer.alive() and not self._stopping.is_set():
                return False, f"{informer.name} watch is not running"
            if now - informer.last_ok > self.settings.serving.watch_stale_after:
                return False, f"{informer.name} watch has not succeeded for {now - informer.last_ok:.0f}s"
        return True, "ok"

    def ready(self) -> tuple[bool, str]:
        """Readiness: healthy and every cache has been filled once."""
        ok, why = self.healthy()
        if not ok:
            return ok, why
        for informer in self.informers:
            if not informer.synced.is_set():
                return False, f"{informer.name} not synced yet"
        return True, "ok" if self.leading else "ok (standby)"
