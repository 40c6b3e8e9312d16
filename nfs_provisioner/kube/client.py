"""JSON over HTTP to the API server: one connection pool, one token bucket.

``Client`` is the only object in the project that sends requests to
Kubernetes. Credentials come from :mod:`nfs_provisioner.kube.credentials`
(the service account and plain kubeconfigs read directly, everything else by
the ``kubernetes`` library's loader); the requests themselves go through
:mod:`nfs_provisioner.kube.transport` with plain ``dict`` bodies, because the
generated models cost more CPU than the rest of a provision (and ~30 MB of
memory once imported), and urllib3 half of a provision's API work.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from typing import Any, Literal, overload
from urllib.parse import quote, urlencode

from nfs_provisioner.kube import credentials, errors, transport
from nfs_provisioner.kube.credentials import Credentials
from nfs_provisioner.kube.objects import Object as Object

log = logging.getLogger(__name__)
"""A Kubernetes object as the API server serialises it (``json.loads`` of the body)."""

JSON_PATCH = "application/json-patch+json"
MERGE_PATCH = "application/merge-patch+json"
STRATEGIC_MERGE_PATCH = "application/strategic-merge-patch+json"


@dataclass(frozen=True)
class ClientSettings:
    """How hard and how long to talk to the API server."""

    qps: float = 1000.0
    """Sustained client-side request rate (requests/second; 0 = unlimited). The Go library's default of 5
    caps a provisioner at ~2 claims/s; a provision here costs ~5 requests, so 1000 allows ~200 claims/s. The
    API server protects itself with priority and fairness (429) anyway."""
    burst: int = 2000
    """Requests that may be sent back to back before ``qps`` applies."""
    timeout: float = 30.0
    """Seconds to wait for the answer to one ordinary request."""
    pool_size: int = 32
    """Connections kept open to the API server (workers, watches and events share the pool)."""
    user_agent: str = "nfs-provisioner-controller"
    """Sent with every request; shows up in API server audit logs and metrics."""


class TokenBucket:
    """Thread-safe token bucket: ``acquire()`` blocks until a token is available."""

    def __init__(self, qps: float, burst: int, clock: Any = time.monotonic, sleep: Any = time.sleep) -> None:
        self.qps = qps
        self.burst = max(1, burst)
        self._tokens = float(self.burst)
        self._clock = clock
        self._sleep = sleep
        self._last = clock()
        self._lock = threading.Lock()

    def acquire(self) -> float:
        """Take one token; returns the seconds spent waiting for it."""
        if self.qps <= 0:
            return 0.0
        with self._lock:
            now = self._clock()
            self._tokens = min(self.burst, self._tokens + (now - self._last) * self.qps)
            self._last = now
            self._tokens -= 1
            wait = -self._tokens / self.qps if self._tokens < 0 else 0.0
        if wait > 0:
            self._sleep(wait)
        return wait


class Client:
    """A small, thread-safe JSON client for the Kubernetes API."""

    def __init__(self, credentials: Credentials, settings: ClientSettings | None = None) -> None:
        self.settings = settings or ClientSettings()
        self.host = credentials.host.rstrip("/")
        self._credentials = credentials
        self._bucket = TokenBucket(self.settings.qps, self.settings.burst)
        # Only connections that cannot be opened are retried there (nothing was sent, so safe for every method);
        # anything later is the caller's decision.
        self._transport = transport.Transport(self.host, ca_file=credentials.ca_file, cert_file=credentials.cert_file,
                                              key_file=credentials.key_file, verify=credentials.verify,
                                              pool_size=self.settings.pool_size)
        self._fixed = (f"Accept: application/json\r\nUser-Agent: {_header_value(self.settings.user_agent)}\r\n")
        self._token: str | None = None
        self._token_at = 0.0
        self._token_lock = threading.Lock()
        self._streams: set[transport.Stream] = set()
        self._streams_lock = threading.Lock()

    # ------------------------------------------------------------------ construction

    @classmethod
    def load(cls, kubeconfig: str | None = None, *, context: str | None = None,
             settings: ClientSettings | None = None) -> Client:
        """``kubeconfig`` if given; else in-cluster when running in a pod; else ``$KUBECONFIG``/``~/.kube/config``."""
        return cls(credentials.load(kubeconfig, context=context), settings)

    @property
    def credentials(self) -> Credentials:
        return self._credentials

    def with_host(self, host: str) -> Client:
        """The same credentials and settings against another server URL (``--master``)."""
        return Client(replace(self._credentials, host=host), self.settings)

    def close(self) -> None:
        self.close_streams()
        self._transport.clear()

    # ------------------------------------------------------------------ requests

    def _headers(self, content_type: str | None = None) -> str:
        """The request's header lines but ``Host`` and ``Content-Length``."""
        headers = self._fixed
        if content_type:
            headers += f"Content-Type: {content_type}\r\n"
        if self._credentials.token is not None:
            with self._token_lock:
                if time.monotonic() - self._token_at > 60 or self._token is None:
                    self._token = _header_value(self._credentials.token() or "")
                    self._token_at = time.monotonic()
                if self._token:
                    headers += f"Authorization: {self._token}\r\n"
        return headers

    @staticmethod
    def _target(path: str, query: Mapping[str, Any] | None) -> str:
        if query:
            path += "?" + urlencode({k: _q(v) for k, v in query.items() if v is not None})
        return path

    def request(self, method: str, path: str, *, query: Mapping[str, Any] | None = None,
                body: Any = None, content_type: str = "application/json",
                timeout: float | None = None, answer: bool = True) -> Any:
        """Send one request and return the decoded JSON answer (``None`` for an empty body). ``answer=False``: the
        caller has no use for the object the server sends back (the posted Event, the created PV): it is not
        decoded (a third of a small request's CPU) and None is returned; an error answer raises as ever."""
        self._bucket.acquire()
        data = None if body is None else json.dumps(body, separators=(",", ":")).encode()
        try:
            status, data_in = self._transport.request(
                method, self._target(path, query), headers=self._headers(content_type if data is not None else None),
                body=data, timeout=timeout or self.settings.timeout)
        except OSError as e:
            raise errors.TransportError(f"{method} {path}: {e or type(e).__name__}") from e
        return _decode(status, data_in, method, path, answer=answer)

    def get(self, path: str, **query: Any) -> Object:
        result: Object = self.request("GET", path, query=query)
        return result

    @overload
    def create(self, path: str, obj: Object) -> Object: ...
    @overload
    def create(self, path: str, obj: Object, *, answer: Literal[True]) -> Object: ...
    @overload
    def create(self, path: str, obj: Object, *, answer: Literal[False]) -> None: ...

    def create(self, path: str, obj: Object, *, answer: bool = True) -> Object | None:
        result: Object | None = self.request("POST", path, body=obj, answer=answer)
        return result

    def replace(self, path: str, obj: Object) -> Object:
        result: Object = self.request("PUT", path, body=obj)
        return result

    @overload
    def patch(self, path: str, patch: Any, *, patch_type: str = ...) -> Object: ...
    @overload
    def patch(self, path: str, patch: Any, *, patch_type: str = ..., answer: Literal[True]) -> Object: ...
    @overload
    def patch(self, path: str, patch: Any, *, patch_type: str = ..., answer: Literal[False]) -> None: ...

    def patch(self, path: str, patch: Any, *, patch_type: str = STRATEGIC_MERGE_PATCH,
              answer: bool = True) -> Object | None:
        result: Object | None = self.request("PATCH", path, body=patch, content_type=patch_type, answer=answer)
        return result

    def delete(self, path: str, *, body: Object | None = None, answer: bool = True) -> Object | None:
        result: Object | None = self.request("DELETE", path, body=body, answer=answer)
        return result

    # ------------------------------------------------------------------ watch

    def watch(self, path: str, *, resource_version: str, timeout_seconds: int = 300,
              bookmarks: bool = True, extra: Mapping[str, Any] | None = None) -> WatchStream:
        """Watch events (``{"type": ..., "object": {...}}``) after ``resource_version``; iterate the result.

        The iteration ends when the server closes the stream (after ``timeout_seconds``) or when the
        stream's ``close()`` (or :meth:`close_streams`) is called. A 410 answer raises :class:`errors.Gone`;
        an ``ERROR`` event is yielded as is (its object is a ``Status``)."""
        query: dict[str, Any] = {"watch": "true", "resourceVersion": resource_version,
                                 "timeoutSeconds": timeout_seconds, "allowWatchBookmarks": bookmarks}
        if extra:
            query.update(extra)
        return WatchStream(self, path, query, timeout_seconds)

    def _open_stream(self, path: str, query: Mapping[str, Any], timeout_seconds: int) -> transport.Stream:
        self._bucket.acquire()
        try:
            stream = self._transport.stream(self._target(path, query), headers=self._headers(),
                                            timeout=timeout_seconds + 30)
            if stream.status >= 300:
                try:
                    _decode(stream.status, stream.read(), "WATCH", path)
                finally:
                    stream.close()
        except OSError as e:
            raise errors.TransportError(f"WATCH {path}: {e or type(e).__name__}") from e
        with self._streams_lock:
            self._streams.add(stream)
        return stream

    def _closed_stream(self, stream: transport.Stream) -> None:
        with self._streams_lock:
            self._streams.discard(stream)
        stream.close()

    def close_streams(self) -> None:
        """Abort every open watch stream of this client (used on shutdown)."""
        with self._streams_lock:
            streams = list(self._streams)
        for stream in streams:
            stream.shutdown()


class WatchStream:
    """One watch request; iterate it for events, ``close()`` it from any thread to end it."""

    def __init__(self, client: Client, path: str, query: Mapping[str, Any], timeout_seconds: int) -> None:
        self._client = client
        self._path = path
        self._query = query
        self._timeout = timeout_seconds
        self._resp: transport.Stream | None = None
        self._closed = False

    def close(self) -> None:
        self._closed = True
        if self._resp is not None:
            self._resp.shutdown()

    def __iter__(self) -> Iterator[Object]:
        if self._closed:
            return
        resp = self._resp = self._client._open_stream(self._path, self._query, self._timeout)
        try:
            for line in resp.lines():
                if self._closed:
                    return
                if line.strip():
                    yield json.loads(line)
        except (OSError, ValueError) as e:
            # Closed by close() or dropped by the network: the caller resumes from its last version.
            log.debug("watch %s ended: %s", self._path, e or type(e).__name__)
        finally:
            self._client._closed_stream(resp)


def _header_value(value: str) -> str:
    """``value`` for a header line; a CR or LF in it (a token file's, say) would start another header."""
    if "\r" in value or "\n" in value:
        raise errors.TransportError("a header value (user agent or token) holds a line break")
    return value


def _q(value: Any) -> Any:
    if isinstance(value, bool):
        return "true" if value else "false"
    return value


def _decode(status: int, data: bytes, method: str, path: str, *, answer: bool = True) -> Any:
    if status >= 300:
        try:
            body = json.loads(data) if data else {}
        except ValueError:
            body = {"message": data[:500].decode(errors="replace")}
        if not isinstance(body, dict):
            body = {"message": str(body)}
        err = errors.from_status(status, body)
        log.debug("%s %s -> %s", method, path, err)
        raise err
    if not data or not answer:
        return None
    return json.loads(data)


# ---------------------------------------------------------------------- paths


def _seg(name: str) -> str:
    return quote(name, safe="")


def claims_path(namespace: str | None = None, name: str | None = None) -> str:
    if namespace is None:
        return "/api/v1/persistentvolumeclaims"
    base = f"/api/v1/namespaces/{_seg(namespace)}/persistentvolumeclaims"
    return f"{base}/{_seg(name)}" if name else base


def read_claim(api: Client, namespace: str, name: str) -> Object | None:
    """The claim as it is now, or None. A list by name: the appliance's RBAC grants claims list/watch/patch,
    not get (tests/e2e/test_rbac.py proves every verb it uses is granted)."""
    items = api.get(claims_path(namespace), fieldSelector=f"metadata.name={name}").get("items") or []
    return dict(items[0]) if items else None


def volumes_path(name: str | None = None) -> str:
    return f"/api/v1/persistentvolumes/{_seg(name)}" if name else "/api/v1/persistentvolumes"


def classes_path(name: str | None = None) -> str:
    base = "/apis/storage.k8s.io/v1/storageclasses"
    return f"{base}/{_seg(name)}" if name else base


def nodes_path(name: str) -> str:
    return f"/api/v1/nodes/{_seg(name)}"


def events_path(namespace: str) -> str:
    return f"/api/v1/namespaces/{_seg(namespace)}/events"


def leases_path(namespace: str, name: str | None = None) -> str:
    base = f"/apis/coordination.k8s.io/v1/namespaces/{_seg(namespace)}/leases"
    return f"{base}/{_seg(name)}" if name else base


def jitter(seconds: float, factor: float = 0.2) -> float:
    """``seconds`` spread by ±``factor`` so many watchers do not reconnect in lock step."""
    return seconds * (1 + random.uniform(-factor, factor))
