"""Prometheus metrics with the Go library's names, and the metrics/health HTTP endpoint.

The six ``controller_*`` metrics keep the names and labels of
sig-storage-lib-external-provisioner (no namespace prefix), so existing
dashboards and alerts keep working; ``workqueue_depth{name}`` is client-go's
queue-depth gauge. The registry is injected (tests pass a fresh one).

The endpoint (:class:`Server`) is reachable by whoever can reach a liveness probe's port, so its cost is
bounded whatever clients do (:class:`Limits`): one event-loop thread, a bounded number of connections (idle
ones make room for new ones), timeouts on reading a request and on delivering an answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector

from nfs_provisioner import threads

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
        registry.register(_ThreadCrashes())  # the process's background threads, the appliance's included

    def track_queues(self, depths: Callable[[], dict[str, int]]) -> None:
        """Export ``workqueue_depth{name}`` computed at scrape time."""
        self.registry.register(_QueueDepth(depths))


class _ThreadCrashes(Collector):
    """``nfs_provisioner_thread_crashes_total{thread}``: background threads (``nfs_provisioner.threads.spawn``)
    ended by an exception, by kind."""

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily("nfs_provisioner_thread_crashes", "Background threads ended by an exception "
                                     "(each logged with the thread's name), by thread kind.", labels=["thread"])
        for kind, n in sorted(threads.crashes().items()):
            family.add_metric([kind], n)
        yield family


class _QueueDepth(Collector):
    def __init__(self, depths: Callable[[], dict[str, int]]) -> None:
        self._depths = depths

    def collect(self) -> Any:
        g = GaugeMetricFamily("workqueue_depth", "Current depth of the controller's work queues.", labels=["name"])
        for name, depth in self._depths().items():
            g.add_metric([name], depth)
        yield g


@dataclass(frozen=True)
class Limits:
    """What the HTTP endpoint may cost the process, whoever connects. Idle or slow clients (a liveness probe's
    port is reachable by every pod) must never take the descriptors, threads or time the appliance needs."""

    max_connections: int = 64
    """Connections held at once. A connection beyond it makes room by closing the oldest one that has not sent
    a whole request yet (an idle or trickling client), or is itself closed at once when every held one is
    being answered: nothing waits in a queue, and a probe that sends its request at once gets in."""
    max_per_client: int = 16
    """Connections held at once from one client address; beyond it that client's own oldest idle connection is
    closed first, so one client cannot push out the others' (a kubelet's probe, Prometheus)."""
    request_timeout: float = 10.0
    """Seconds from the connection to the end of the request's head (slowloris: one byte now and then)."""
    write_timeout: float = 10.0
    """Seconds to deliver an answer to a client that does not read it."""
    max_request_bytes: int = 8192
    """Request head size; a longer one gets 431 and the connection closed."""
    backlog: int = 128
    """Listen backlog: connections the kernel completes before they are accepted (no descriptor of ours)."""
    workers: int = 2
    """Threads rendering /metrics (collectors run at scrape time); health answers need none."""


class Server:
    """Serves ``/metrics``, ``/healthz`` and ``/livez`` (liveness) and ``/readyz`` (readiness) on ``host:port``.

    One thread runs an event loop that owns every connection (one descriptor each, no thread each), within
    :class:`Limits`; ``/metrics`` is rendered by a small pool of threads. ``healthy`` and ``ready`` must
    answer at once without I/O (the appliance's are cached verdicts). Every answer closes its connection."""

    def __init__(self, address: str, registry: CollectorRegistry, *,
                 healthy: Callable[[], tuple[bool, str]], ready: Callable[[], tuple[bool, str]],
                 limits: Limits | None = None) -> None:
        host, _, port = address.rpartition(":")
        host = host.strip("[]") or "0.0.0.0"
        self.limits = limits or Limits()
        self._registry = registry
        self._healthy, self._ready = healthy, ready
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._sock = socket.create_server((host, int(port)), family=family, backlog=self.limits.backlog)
        self._loop = asyncio.new_event_loop()
        self._loop.set_exception_handler(_log_loop_error)
        self._pool = ThreadPoolExecutor(max_workers=self.limits.workers, thread_name_prefix="metrics-render")
        self._conns: dict[_Connection, None] = {}
        """Open connections, oldest first (a dict keeps insertion order)."""
        self._thread: threading.Thread | None = None
        self._started = threading.Event()

    @property
    def port(self) -> int:
        return int(self._sock.getsockname()[1])

    @property
    def connections(self) -> int:
        """Connections held now (for tests and debugging)."""
        return len(self._conns)

    def start(self) -> None:
        self._thread = threads.spawn(self._run, name="metrics-http")
        self._started.wait(10)

    def stop(self) -> None:
        if self._thread is None or not self._thread.is_alive():  # never started (or already stopped)
            self._sock.close()
            self._pool.shutdown(wait=False)
            if not self._loop.is_closed() and not self._loop.is_running():
                self._loop.close()
            return
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._pool.shutdown(wait=False, cancel_futures=True)

    # ------------------------------------------------------------------ the loop's thread

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._sock.setblocking(False)
            self._loop.add_reader(self._sock.fileno(), self._accept)
            self._started.set()
            self._loop.run_forever()
        finally:
            self._started.set()
            with contextlib.suppress(Exception):
                self._loop.remove_reader(self._sock.fileno())
            for conn in list(self._conns):
                conn.abort()
            self._sock.close()
            self._loop.run_until_complete(asyncio.sleep(0))  # the aborted transports close their sockets
            self._loop.close()

    def _accept(self) -> None:
        """One connection per turn of the loop, admitted (or closed) before the next is accepted: the
        descriptors held never exceed the limit by more than the one or two being closed."""
        try:
            sock, addr = self._sock.accept()
        except (BlockingIOError, InterruptedError):
            return
        except OSError as e:  # out of descriptors or memory: no busy loop, try again in a second
            log.warning("http: accepting a connection failed: %s; pausing for 1s", e)
            self._loop.remove_reader(self._sock.fileno())
            self._loop.call_later(1.0, self._loop.add_reader, self._sock.fileno(), self._accept)
            return
        conn = _Connection(self, peer=str(addr[0]) if isinstance(addr, tuple) else str(addr))
        if not self._admit(conn):
            sock.close()
            return
        sock.setblocking(False)
        self._loop.create_task(self._attach(conn, sock))

    async def _attach(self, conn: _Connection, sock: socket.socket) -> None:
        try:
            await self._loop.connect_accepted_socket(lambda: conn, sock)
        except OSError as e:
            log.debug("http: connection from %s lost at once: %s", conn.peer, e)
            self._forget(conn)
            sock.close()

    def _admit(self, conn: _Connection) -> bool:
        """Hold ``conn`` within the limits (closing an older idle one if needed); False: close it at once."""
        lim = self.limits
        same = [c for c in self._conns if c.peer == conn.peer]
        if len(same) >= lim.max_per_client and not self._evict(same):
            log.debug("http: client %s holds %d connections, all busy: closing the new one", conn.peer, len(same))
            return False
        if len(self._conns) >= lim.max_connections and not self._evict(list(self._conns)):
            log.debug("http: %d connections, all busy: closing the new one from %s", len(self._conns), conn.peer)
            return False
        self._conns[conn] = None
        return True

    def _forget(self, conn: _Connection) -> None:
        self._conns.pop(conn, None)

    def _evict(self, conns: list[_Connection]) -> bool:
        """Close the oldest of ``conns`` still waiting for its request; False if every one is being answered."""
        for c in conns:
            if not c.answering and c.attached:
                log.debug("http: closing an idle connection from %s to make room", c.peer)
                self._forget(c)  # at once: its connection_lost comes later
                c.abort()
                return True
        return False

    def _answer(self, conn: _Connection, method: str, target: str) -> None:
        path = target.split("?", 1)[0]
        if method != "GET":
            conn.reply(405, b"only GET\n", "text/plain", extra=(("Allow", "GET"),))
        elif path == "/metrics":
            future = self._loop.run_in_executor(self._pool, generate_latest, self._registry)
            future.add_done_callback(lambda f: _rendered(conn, f))
        elif path in ("/healthz", "/livez", "/readyz"):
            ok, why = (self._ready if path == "/readyz" else self._healthy)()
            conn.reply(200 if ok else 503, (why or "ok").encode() + b"\n", "text/plain")
        else:
            conn.reply(404, b"not found\n", "text/plain")


def _rendered(conn: _Connection, future: asyncio.Future[bytes]) -> None:
    if future.cancelled():
        conn.abort()
    elif (e := future.exception()) is not None:
        log.error("http: rendering /metrics failed: %s", e, exc_info=e)
        conn.reply(500, b"internal error\n", "text/plain")
    else:
        conn.reply(200, future.result(), CONTENT_TYPE_LATEST)


def _log_loop_error(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    exc = context.get("exception")
    if isinstance(exc, (ConnectionError, TimeoutError)):
        log.debug("http: %s: %s", context.get("message"), exc)
    else:
        log.error("http: %s", context.get("message"), exc_info=exc)


REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
           408: "Request Timeout", 431: "Request Header Fields Too Large", 500: "Internal Server Error",
           503: "Service Unavailable"}


class _Connection(asyncio.Protocol):
    """One client connection: its request head is gathered within the limits, then one answer, then closed."""

    def __init__(self, server: Server, *, peer: str) -> None:
        self.server = server
        self.peer = peer
        self.answering = False
        self._transport: asyncio.Transport | None = None
        self._buf = bytearray()
        self._timer: asyncio.TimerHandle | None = None
        self._aborted = False

    @property
    def attached(self) -> bool:
        """Whether its transport exists (made on the loop's next turn after the accept)."""
        return self._transport is not None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        self._timer = self.server._loop.call_later(self.server.limits.request_timeout, self._too_slow)

    def data_received(self, data: bytes) -> None:
        if self.answering:
            return  # a body, or a pipelined request: ignored (the answer closes the connection)
        self._buf += data
        end = self._buf.find(b"\r\n\r\n")
        if end < 0 and len(self._buf) > self.server.limits.max_request_bytes:
            self.reply(431, b"request head too large\n", "text/plain")
            return
        if end < 0:
            return
        line = bytes(self._buf[:self._buf.find(b"\r\n")]).decode("latin-1")
        self._buf.clear()
        parts = line.split()
        if len(parts) != 3 or not parts[2].startswith("HTTP/"):
            self.reply(400, b"bad request\n", "text/plain")
            return
        self.answering = True
        self._cancel_timer()
        lim = self.server.limits
        self._timer = self.server._loop.call_later(lim.request_timeout + lim.write_timeout, self.abort)
        self.server._answer(self, parts[0], parts[1])

    def reply(self, code: int, body: bytes, ctype: str, *, extra: tuple[tuple[str, str], ...] = ()) -> None:
        t = self._transport
        if t is None or t.is_closing():
            return
        self.answering = True
        head = [f"HTTP/1.1 {code} {REASONS.get(code, '')}", f"Content-Type: {ctype}",
                f"Content-Length: {len(body)}", "Connection: close", *(f"{k}: {v}" for k, v in extra)]
        t.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body)
        log.debug("http: %s %d", self.peer, code)
        self._cancel_timer()
        self._timer = self.server._loop.call_later(self.server.limits.write_timeout, self.abort)
        t.close()  # after the buffer is written; abort() above if the client never reads it

    def abort(self) -> None:
        self._aborted = True
        if self._transport is not None:
            self._transport.abort()

    def _too_slow(self) -> None:
        log.debug("http: client %s sent no whole request in %.0fs: closing", self.peer,
                  self.server.limits.request_timeout)
        self.abort()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timer()
        self.server._forget(self)
        if exc is not None or not (self.answering or self._aborted):  # a client going away early is routine
            log.debug("http: client %s disconnected early: %s", self.peer, exc or "closed before its request")
