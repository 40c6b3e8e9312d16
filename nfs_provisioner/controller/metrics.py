"""Prometheus metrics with the Go library's names, and the metrics/health HTTP endpoint.

The six ``controller_*`` metrics keep the names and labels of
sig-storage-lib-external-provisioner (no namespace prefix), so existing
dashboards and alerts keep working; ``workqueue_depth{name}`` is client-go's
queue-depth gauge. The registry is injected (tests pass a fresh one).
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)


class Metrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.provision_total = Counter(
            "controller_persistentvolumeclaim_provision_total",
            "Total number of persistent volumes provisioned succesfully. Broken down by storage class name and "
            "source of the claim.", ["class", "source"], registry=registry)
        self.provision_failed_total = Counter(
            "controller_persistentvolumeclaim_provision_failed_total",
            "Total number of persistent volume provision failed attempts. Broken down by storage class name and "
            "source of the claim.", ["class", "source"], registry=registry)
        self.provision_duration = Histogram(
            "controller_persistentvolumeclaim_provision_duration_seconds",
            "Latency in seconds to provision persistent volumes. Failed provisioning attempts are ignored. Broken "
            "down by storage class name and source of the claim.", ["class", "source"], registry=registry)
        self.delete_total = Counter(
            "controller_persistentvolume_delete_total",
            "Total number of persistent volumes deleted succesfully. Broken down by storage class name.",
            ["class"], registry=registry)
        self.delete_failed_total = Counter(
            "controller_persistentvolume_delete_failed_total",
            "Total number of persistent volume delete failed attempts. Broken down by storage class name.",
            ["class"], registry=registry)
        self.delete_duration = Histogram(
            "controller_persistentvolume_delete_duration_seconds",
            "Latency in seconds to delete persistent volumes. Failed deletion attempts are ignored. Broken down by "
            "storage class name.", ["class"], registry=registry)

    def track_queues(self, depths: Callable[[], dict[str, int]]) -> None:
        """Export ``workqueue_depth{name}`` computed at scrape time."""
        self.registry.register(_QueueDepth(depths))


class _QueueDepth(Collector):
    def __init__(self, depths: Callable[[], dict[str, int]]) -> None:
        self._depths = depths

    def collect(self) -> Any:
        g = GaugeMetricFamily("workqueue_depth", "Current depth of the controller's work queues.", labels=["name"])
        for name, depth in self._depths().items():
            g.add_metric([name], depth)
        yield g


class _HTTPServer(ThreadingHTTPServer):
    """``http.server`` with its errors in the log: socketserver prints each failed request's traceback to
    stderr, which broke ``--log-json``; a client that goes away early is routine (DEBUG)."""

    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        exc = sys.exc_info()[1]
        peer = client_address[0] if isinstance(client_address, tuple) else client_address
        if isinstance(exc, (ConnectionError, TimeoutError)):  # BrokenPipe, ConnectionReset/Aborted
            log.debug("http: client %s disconnected early: %s", peer, exc)
        else:
            log.error("http: request from %s failed: %s", peer, exc, exc_info=True)


class Server:
    """Serves ``/metrics``, ``/healthz`` (liveness) and ``/readyz`` (readiness) on ``host:port``."""

    def __init__(self, address: str, registry: CollectorRegistry, *,
                 healthy: Callable[[], tuple[bool, str]], ready: Callable[[], tuple[bool, str]]) -> None:
        host, _, port = address.rpartition(":")
        registry_ = registry

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    self._reply(200, generate_latest(registry_), CONTENT_TYPE_LATEST)
                elif path in ("/healthz", "/livez", "/readyz"):
                    ok, why = (ready if path == "/readyz" else healthy)()
                    self._reply(200 if ok else 503, (why or "ok").encode() + b"\n", "text/plain")
                else:
                    self._reply(404, b"not found\n", "text/plain")

            def _reply(self, code: int, body: bytes, ctype: str) -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                log.debug("http: " + format, *args)

        self._httpd = _HTTPServer((host or "0.0.0.0", int(port)), Handler)
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="metrics-http", daemon=True)

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
