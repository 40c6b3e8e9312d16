"""Kubernetes Events about claims and volumes, posted in the background.

Workers never wait for an event: ``EventRecorder.event`` queues it and a
sender thread posts it (``core/v1`` Events, as ``kubectl describe`` shows
them). Like client-go's recorder, a per-object token bucket (burst 25, one
more every 5 minutes) stops a retry loop from flooding the API server.
Events about cluster-scoped objects (PVs) go to the ``default`` namespace.
"""

from __future__ import annotations

import datetime
import logging
import queue
import threading
import time
from collections.abc import Callable

from nfs_provisioner import threads
from nfs_provisioner.kube import client as kube
from nfs_provisioner.kube import errors
from nfs_provisioner.kube.objects import Object

log = logging.getLogger(__name__)

NORMAL = "Normal"
WARNING = "Warning"

PROVISIONING = "Provisioning"
PROVISIONING_SUCCEEDED = "ProvisioningSucceeded"
PROVISIONING_FAILED = "ProvisioningFailed"
PROVISIONING_CLEANUP_FAILED = "ProvisioningCleanupFailed"
VOLUME_FAILED_DELETE = "VolumeFailedDelete"


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class EventRecorder:
    """Queues events and posts them from ``senders`` background threads."""

    def __init__(self, api: kube.Client, *, component: str, host: str = "", senders: int = 2,
                 burst: int = 25, refill_seconds: float = 300.0, max_queued: int = 10000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.api = api
        self.component = component
        self.host = host
        self.burst = burst
        self.refill_seconds = refill_seconds
        self._clock = clock
        self._queue: queue.Queue[Object | None] = queue.Queue(max_queued)
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()
        self._senders = senders
        self._threads: list[threading.Thread] = []
        self._started = False
        self.posted = 0
        self.dropped = 0

    def start(self) -> None:
        if not self._started:
            self._started = True
            self._threads = [threads.spawn(self._send_loop, name=f"events-{i}") for i in range(self._senders)]

    def stop(self, timeout: float = 5.0) -> None:
        """Post what is queued (up to ``timeout`` seconds), then stop the senders."""
        if not self._started:
            return
        for _ in self._threads:
            try:
                self._queue.put(None, timeout=timeout)
            except queue.Full:
                break
        threads.join(self._threads, timeout)

    def _allow(self, uid: str) -> bool:
        now = self._clock()
        with self._lock:
            tokens, last = self._buckets.get(uid, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - last) / self.refill_seconds)
            if tokens < 1:
                self._buckets[uid] = (tokens, now)
                return False
            self._buckets[uid] = (tokens - 1, now)
            return True

    def event(self, obj: Object, event_type: str, reason: str, message: str) -> None:
        """Record ``reason``/``message`` about ``obj`` (a claim or volume dict)."""
        m = obj.get("metadata") or {}
        uid = str(m.get("uid") or m.get("name"))
        if not self._allow(uid):
            log.debug("event %s for %s suppressed by the spam filter", reason, m.get("name"))
            return
        ns = m.get("namespace") or "default"
        ts = _now()
        ev: Object = {
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"name": f"{m.get('name')}.{time.time_ns():x}", "namespace": ns},
            "involvedObject": {"apiVersion": obj.get("apiVersion", "v1"), "kind": obj.get("kind"),
                               "name": m.get("name"), "namespace": m.get("namespace"), "uid": m.get("uid"),
                               "resourceVersion": m.get("resourceVersion")},
            "reason": reason, "message": message[:1024], "type": event_type,
            "source": {"component": self.component, "host": self.host} if self.host else
                      {"component": self.component},
            "firstTimestamp": ts, "lastTimestamp": ts, "count": 1,
            "reportingComponent": self.component, "reportingInstance": self.host,
        }
        try:
            self._queue.put_nowait(ev)
        except queue.Full:
            self.dropped += 1
            log.warning("event queue full: dropped %s for %s/%s", reason, ns, m.get("name"))

    def _send_loop(self) -> None:
        while True:
            ev = self._queue.get()
            if ev is None:
                return
            try:
                self.api.create(kube.events_path(ev["metadata"]["namespace"]), ev, answer=False)
                self.posted += 1
            except errors.KubeError as e:
                self.dropped += 1
                log.warning("cannot post event %s about %s: %s", ev["reason"], ev["involvedObject"]["name"], e)
