"""HTTP/1.1 to one API server over kept-alive connections: what :class:`kube.client.Client` sends requests with.

A request is one ``sendall`` of its head and body; the answer's status line and headers are read with the
buffered reader's ``readline`` and only three headers are looked at (``Content-Length``, ``Transfer-Encoding``,
``Connection``). urllib3 and ``http.client`` cost about 0.5 ms of CPU per request here (URL parsing, pool keys,
retry and timeout objects, an ``email`` parser for the headers), half of a provision's API work; this costs about
a quarter of that (``bench/`` measures it). Nothing else is spoken: no proxies (the kubeconfig loader refuses
them), no compression (``Accept-Encoding`` is never sent), no ``Expect``.

Connections are pooled, last used first. One found closed by the server while idle (readable before a request is
sent: an end of file) is dropped, not used. A connection is only ever retried when it could not be opened (three
tries, as urllib3's ``Retry(connect=2)`` did); a request that failed after it was sent is the caller's to retry,
since the server may have acted on it.
"""

from __future__ import annotations

import contextlib
import io
import select
import socket
import ssl
import threading
from collections.abc import Iterator
from urllib.parse import urlsplit

from nfs_provisioner.errors import NFSProvisionerError

MAX_LINE = 64 * 1024
"""Longest status or header line accepted."""
MAX_HEADERS = 200
MAX_INTERIM = 8
"""Interim (1xx) answers skipped before the final one (none is asked for: no ``Expect`` is sent)."""
CONNECT_TRIES = 3
CONNECT_TIMEOUT = 10.0


class ProtocolError(NFSProvisionerError, OSError):
    """The server's answer is not HTTP/1.1 as spoken here, or the connection ended in the middle of it."""


class _Connection:
    __slots__ = ("rfile", "sock")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.rfile: io.BufferedReader = sock.makefile("rb", buffering=65536)  # type: ignore[assignment]

    def idle_closed(self) -> bool:
        """Whether the server closed (or wrote to) this idle connection: readable before any request."""
        poller = select.poll()  # not select(): descriptors above 1023 are common here (the open files limit is raised)
        try:
            poller.register(self.sock, select.POLLIN)
            ready = poller.poll(0)
        except (OSError, ValueError):
            return True
        return bool(ready) or (isinstance(self.sock, ssl.SSLSocket) and self.sock.pending() > 0)

    def close(self) -> None:
        for closing in (self.rfile.close, self.sock.close):
            with contextlib.suppress(OSError):
                closing()

    def shutdown(self) -> None:
        """End a blocked read in another thread (a watch being stopped)."""
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)


class _Head:
    __slots__ = ("chunked", "close", "length", "status")

    def __init__(self, status: int, length: int | None, chunked: bool, close: bool) -> None:
        self.status, self.length, self.chunked, self.close = status, length, chunked, close


class Transport:
    """Requests to the server of ``url`` (``https://host:port[/prefix]`` or ``http://...``), thread-safe."""

    def __init__(self, url: str, *, ca_file: str | None = None, cert_file: str | None = None,
                 key_file: str | None = None, verify: bool = True, pool_size: int = 32) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"API server URL {url!r}: expected http(s)://host[:port]")
        self.host = parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        host = f"[{self.host}]" if ":" in self.host else self.host
        self.host_header = host if parts.port is None else f"{host}:{parts.port}"
        self.prefix = parts.path.rstrip("/")
        self.pool_size = pool_size
        self._tls = parts.scheme == "https"
        self._ca_file, self._cert_file, self._key_file, self._verify = ca_file, cert_file, key_file, verify
        self._idle: list[_Connection] = []
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ connections

    def _context(self) -> ssl.SSLContext:
        """A TLS context with the files as they are now: each new connection reads them again (as urllib3 did),
        so a rotated CA bundle or client certificate is used from the next connection on."""
        if not self._verify:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        else:
            ctx = ssl.create_default_context(cafile=self._ca_file)
        if self._cert_file:
            ctx.load_cert_chain(self._cert_file, self._key_file)
        return ctx

    def _open(self) -> _Connection:
        error: OSError | None = None
        for _ in range(CONNECT_TRIES):
            try:
                sock = socket.create_connection((self.host, self.port), timeout=CONNECT_TIMEOUT)
            except OSError as e:
                error = e
                continue
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                if self._tls:
                    sock = self._context().wrap_socket(sock, server_hostname=self.host)
            except BaseException:
                sock.close()
                raise
            return _Connection(sock)
        assert error is not None
        raise error

    def _take(self) -> _Connection:
        while True:
            with self._lock:
                conn = self._idle.pop() if self._idle else None
            if conn is None:
                return self._open()
            if not conn.idle_closed():
                return conn
            conn.close()

    def _give_back(self, conn: _Connection) -> None:
        with self._lock:
            if len(self._idle) < self.pool_size:
                self._idle.append(conn)
                return
        conn.close()

    def clear(self) -> None:
        """Close every idle connection."""
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    # ------------------------------------------------------------------ requests

    def _send(self, conn: _Connection, method: str, target: str, headers: str, body: bytes | None,
              timeout: float) -> _Head:
        head = f"{method} {self.prefix}{target} HTTP/1.1\r\nHost: {self.host_header}\r\n{headers}"
        if body is not None:
            head += f"Content-Length: {len(body)}\r\n"
        conn.sock.settimeout(timeout)
        data = (head + "\r\n").encode("latin-1")
        conn.sock.sendall(data + body if body else data)
        for _ in range(MAX_INTERIM):
            parsed = _read_head(conn.rfile)
            if not 100 <= parsed.status < 200:
                return parsed
        raise ProtocolError(f"more than {MAX_INTERIM} interim (1xx) answers")

    def request(self, method: str, target: str, *, headers: str, body: bytes | None,
                timeout: float) -> tuple[int, bytes]:
        """Send one request (``headers``: complete ``Name: value\\r\\n`` lines) and read the whole answer: its
        status and body. OSError (``ProtocolError`` among them, ``TimeoutError`` for ``timeout``) when there is
        no complete answer."""
        conn = self._take()
        try:
            head = self._send(conn, method, target, headers, body, timeout)
            data = b"" if head.status in (204, 304) or method == "HEAD" else _read_body(conn.rfile, head)
        except BaseException:
            conn.close()
            raise
        if head.close or (head.length is None and not head.chunked):
            conn.close()
        else:
            self._give_back(conn)
        return head.status, data

    def stream(self, target: str, *, headers: str, timeout: float) -> Stream:
        """A GET whose body is read as it comes (a watch). Its connection is never reused."""
        conn = self._take()
        try:
            head = self._send(conn, "GET", target, headers, None, timeout)
        except BaseException:
            conn.close()
            raise
        return Stream(conn, head)


class Stream:
    """The body of one streamed answer: :meth:`lines` to read it, :meth:`shutdown` (any thread) to end it."""

    def __init__(self, conn: _Connection, head: _Head) -> None:
        self._conn = conn
        self._head = head
        self.status = head.status

    def read(self) -> bytes:
        """The whole body (an error answer)."""
        return _read_body(self._conn.rfile, self._head)

    def lines(self) -> Iterator[bytes]:
        """The body's lines (without their ``\\n``), as each arrives. Ends at the body's end; OSError if the
        connection fails first."""
        rfile, head = self._conn.rfile, self._head
        if not head.chunked:
            if head.length is None:
                yield from (line.rstrip(b"\n") for line in rfile)
                return
            yield from _read_exactly(rfile, head.length).splitlines()
            return
        partial = b""
        for data in _chunks(rfile):
            if partial:
                data = partial + data
            *complete, partial = data.split(b"\n")
            yield from complete
        if partial:
            yield partial

    def shutdown(self) -> None:
        self._conn.shutdown()

    def close(self) -> None:
        self._conn.close()


# ---------------------------------------------------------------------- reading


def _line(rfile: io.BufferedReader) -> bytes:
    line = rfile.readline(MAX_LINE + 1)
    if len(line) > MAX_LINE:
        raise ProtocolError("a line of the answer is too long")
    return line


def _read_head(rfile: io.BufferedReader) -> _Head:
    line = _line(rfile)
    if not line:
        raise ProtocolError("the server closed the connection without an answer")
    version, _, rest = line.partition(b" ")
    code = rest[:3]
    if not version.startswith(b"HTTP/1.") or not code.isdigit():
        raise ProtocolError(f"not an HTTP/1.x status line: {line[:80]!r}")
    length: int | None = None
    chunked = False
    close = version == b"HTTP/1.0"
    for _ in range(MAX_HEADERS):
        header = _line(rfile)
        if header in (b"\r\n", b"\n"):
            break
        if not header:
            raise ProtocolError("the answer's headers were cut short")
        name, _, value = header.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            try:
                length = int(value)
            except ValueError:
                raise ProtocolError(f"bad Content-Length {value.strip()[:40]!r}") from None
            if length < 0:
                raise ProtocolError("negative Content-Length")
        elif name == b"transfer-encoding":
            chunked = b"chunked" in value.lower()
        elif name == b"connection":
            close = b"close" in value.lower()
    else:
        raise ProtocolError(f"more than {MAX_HEADERS} header lines")
    return _Head(int(code), length, chunked, close)


def _read_exactly(rfile: io.BufferedReader, n: int) -> bytes:
    data = rfile.read(n)
    if len(data) < n:
        raise ProtocolError(f"the answer ended after {len(data)} of {n} bytes")
    return data


def _chunk_size(rfile: io.BufferedReader) -> int:
    line = _line(rfile)
    try:
        return int(line.split(b";", 1)[0], 16)
    except ValueError:
        raise ProtocolError(f"bad chunk size line {line[:40]!r}") from None


def _chunk_end(rfile: io.BufferedReader) -> None:
    if _line(rfile) not in (b"\r\n", b"\n"):
        raise ProtocolError("a chunk did not end with CRLF")


def _skip_trailers(rfile: io.BufferedReader) -> None:
    for _ in range(MAX_HEADERS):
        line = _line(rfile)
        if line in (b"\r\n", b"\n", b""):
            return
    raise ProtocolError("too many trailer lines")


def _chunks(rfile: io.BufferedReader) -> Iterator[bytes]:
    """The data of each chunk of a chunked body, as it arrives; the trailers after the last are skipped."""
    while (size := _chunk_size(rfile)) > 0:
        data = _read_exactly(rfile, size)
        _chunk_end(rfile)
        yield data
    _skip_trailers(rfile)


def _read_body(rfile: io.BufferedReader, head: _Head) -> bytes:
    if head.chunked:
        return b"".join(_chunks(rfile))
    if head.length is not None:
        return _read_exactly(rfile, head.length)
    return rfile.read()  # up to the end of the connection
