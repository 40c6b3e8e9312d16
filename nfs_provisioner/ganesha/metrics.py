"""Prometheus metrics of the Ganesha manager; the registry is passed in (tests use a fresh one).

Names (namespace ``nfs_provisioner`` by default):

- ``nfs_provisioner_ganesha_up``                               1 while Ganesha answers on D-Bus
- ``nfs_provisioner_ganesha_restarts_total``                   restarts after Ganesha exited on its own
- ``nfs_provisioner_ganesha_exports``                          exports managed (pseudo root not counted)
- ``nfs_provisioner_ganesha_dbus_call_duration_seconds{method}`` D-Bus call latency histogram
- ``nfs_provisioner_ganesha_dbus_call_errors_total{method,error}`` D-Bus calls answered with an error
- ``nfs_provisioner_ganesha_export_add_duration_seconds``       one export add of the manager, whole: its
  file (fsynced), AddExport over D-Bus and its index shard (successful adds only)
- ``nfs_provisioner_ganesha_open_fds``, ``..._resident_memory_bytes``, ``..._threads``: the live
  ganesha.nfsd process, read with psutil at scrape time (absent while Ganesha is down)
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import psutil
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_ADD_BUCKETS = (0.0005, 0.001, 0.0015, 0.002, 0.003, 0.004, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0, 5.0)


class ProcessCollector(Collector):
    """Open fds, RSS and threads of the process ``pid()`` names, computed at scrape time."""

    def __init__(self, pid: Callable[[], int | None], *, namespace: str) -> None:
        self.pid = pid
        self.prefix = f"{namespace}_ganesha" if namespace else "ganesha"

    def describe(self) -> Iterator[GaugeMetricFamily]:
        """Names only, so registering never reads the process."""
        for suffix in ("open_fds", "resident_memory_bytes", "threads"):
            yield GaugeMetricFamily(f"{self.prefix}_{suffix}", "")

    def collect(self) -> Iterator[GaugeMetricFamily]:
        pid = self.pid()
        if pid is None:
            return
        try:
            p = psutil.Process(pid)
            with p.oneshot():
                fds, rss, threads = p.num_fds(), p.memory_info().rss, p.num_threads()
        except psutil.Error:
            return
        yield GaugeMetricFamily(f"{self.prefix}_open_fds", "Open file descriptors of ganesha.nfsd", value=fds)
        yield GaugeMetricFamily(f"{self.prefix}_resident_memory_bytes", "RSS of ganesha.nfsd", value=rss)
        yield GaugeMetricFamily(f"{self.prefix}_threads", "Threads of ganesha.nfsd", value=threads)


class GaneshaMetrics:
    def __init__(self, *, registry: CollectorRegistry = REGISTRY, namespace: str = "nfs_provisioner") -> None:
        self.registry = registry
        self.namespace = namespace
        self._process: ProcessCollector | None = None
        self.up = Gauge("ganesha_up", "1 while NFS-Ganesha answers on D-Bus", namespace=namespace, registry=registry)
        self.restarts = Counter(
            "ganesha_restarts",
            "Times NFS-Ganesha was restarted after it exited on its own",
            namespace=namespace,
            registry=registry,
        )
        self.exports = Gauge(
            "ganesha_exports", "Exports managed (the pseudo root not counted)", namespace=namespace, registry=registry
        )
        self.dbus_latency = Histogram(
            "ganesha_dbus_call_duration_seconds",
            "Latency of D-Bus calls to NFS-Ganesha",
            ["method"],
            namespace=namespace,
            registry=registry,
            buckets=_BUCKETS,
        )
        self.dbus_errors = Counter(
            "ganesha_dbus_call_errors",
            "D-Bus calls to NFS-Ganesha answered with an error",
            ["method", "error"],
            namespace=namespace,
            registry=registry,
        )

        self.export_add = Histogram(
            "ganesha_export_add_duration_seconds",
            "Duration of one export add: its file, AddExport over D-Bus and its index shard",
            namespace=namespace,
            registry=registry,
            buckets=_ADD_BUCKETS,
        )

    def observe_dbus(self, method: str, seconds: float, error: str | None) -> None:
        self.dbus_latency.labels(method=method).observe(seconds)
        if error is not None:
            self.dbus_errors.labels(method=method, error=error).inc()

    def observe_add(self, seconds: float) -> None:
        self.export_add.observe(seconds)

    def set_exports(self, count: int) -> None:
        self.exports.set(count)

    def watch_process(self, pid: Callable[[], int | None]) -> None:
        """Export fds/RSS/threads of the process ``pid()`` returns (registered once)."""
        if self._process is None:
            self._process = ProcessCollector(pid, namespace=self.namespace)
            self.registry.register(self._process)
        else:
            self._process.pid = pid


def unscraped() -> GaneshaMetrics:
    """Metrics that nothing reads: a registry of their own, never served. A server built without metrics keeps
    them here, so that it never has to test whether it has any (a few microseconds per D-Bus call)."""
    return GaneshaMetrics(registry=CollectorRegistry())
