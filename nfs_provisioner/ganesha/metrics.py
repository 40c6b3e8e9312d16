"""Prometheus metrics of the Ganesha manager; the registry is passed in (tests use a fresh one).

Names (namespace ``nfs_provisioner`` by default):

- ``nfs_provisioner_ganesha_up``                               1 while Ganesha answers on D-Bus
- ``nfs_provisioner_ganesha_restarts_total``                   restarts after Ganesha exited on its own
- ``nfs_provisioner_ganesha_exports``                          exports managed (pseudo root not counted)
- ``nfs_provisioner_ganesha_dbus_call_duration_seconds{method}`` D-Bus call latency histogram
- ``nfs_provisioner_ganesha_dbus_call_errors_total{method,error}`` D-Bus calls answered with an error
"""

from __future__ import annotations

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class GaneshaMetrics:
    def __init__(self, *, registry: CollectorRegistry = REGISTRY, namespace: str = "nfs_provisioner") -> None:
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

    def observe_dbus(self, method: str, seconds: float, error: str | None) -> None:
        self.dbus_latency.labels(method=method).observe(seconds)
        if error is not None:
            self.dbus_errors.labels(method=method, error=error).inc()

    def set_exports(self, count: int) -> None:
        self.exports.set(count)
