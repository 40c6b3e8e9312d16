"""The API client's HTTP/1.1 transport against a loopback server whose every byte the test writes: kept-alive
connections, bodies by length and by chunks, a connection the server closed while idle, watch lines split across
chunks, a watch stopped from another thread, and answers that are not HTTP. The same client against the real
API server: every test marked ``kube``."""

from __future__ import annotations

import itertools
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from nfs_provisioner.kube import client as kube
from nfs_provisioner.kube import errors
from nfs_provisioner.kube.credentials import Credentials

pytestmark = pytest.mark.unit

Handler = Callable[[socket.socket, "Server"], None]


class Server:
    """Accepts connections on loopback; each runs ``handler`` in a thread of its own."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self.requests: list[bytes] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            threading.Thread(target=self.handler, args=(conn, self), daemon=True).start()

    def read_request(self, conn: socket.socket) -> bytes | None:
        """One request's head and body (by Content-Length); None at the connection's end."""
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(65536)
            if not chunk:
                return None
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        while len(body) < length:
            body += conn.recv(65536)
        self.requests.append(head + b"\r\n\r\n" + body)
        return head

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def serve() -> Iterator[Callable[[Handler], tuple[Server, kube.Client]]]:
    made: list[tuple[Server, kube.Client]] = []

    def make(handler: Handler) -> tuple[Server, kube.Client]:
        server = Server(handler)
        creds = Credentials(host=f"http://127.0.0.1:{server.port}", ca_file=None, cert_file=None, key_file=None,
                            verify=True, token=lambda: "Bearer t0ken")
        api = kube.Client(creds, kube.ClientSettings(qps=0, timeout=5))
        made.append((server, api))
        return server, api

    yield make
    for server, api in made:
        api.close()
        server.close()


def answer(body: object, status: str = "200 OK", *, chunks: int = 0, close: bool = False) -> bytes:
    data = json.dumps(body).encode()
    head = f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\n"
    if close:
        head += "Connection: close\r\n"
    if not chunks:
        return (head + f"Content-Length: {len(data)}\r\n\r\n").encode() + data
    step = max(1, len(data) // chunks)
    parts = [data[i:i + step] for i in range(0, len(data), step)]
    return (head + "Transfer-Encoding: chunked\r\n\r\n").encode() + b"".join(
        f"{len(p):x}\r\n".encode() + p + b"\r\n" for p in parts) + b"0\r\n\r\n"


def keep_answering(reply: Callable[[int], bytes]) -> Handler:
    def handler(conn: socket.socket, server: Server) -> None:
        with conn:
            n = 0
            while server.read_request(conn) is not None:
                n += 1
                conn.sendall(reply(n))
    return handler


def test_requests_share_one_kept_alive_connection_and_bodies_come_whole(serve: Callable[..., tuple[Server, kube.Client]]
                                                                        ) -> None:
    big = {"items": [{"name": f"pv-{i}", "pad": "x" * 100} for i in range(500)]}
    server, api = serve(keep_answering(lambda n: answer(big, chunks=7 if n % 2 else 0)))
    for _ in range(4):
        assert api.get("/api/v1/persistentvolumes") == big
    created = api.create("/api/v1/persistentvolumes", {"metadata": {"name": "é"}})
    assert created == big
    assert server.accepted == 1
    post = server.requests[-1]
    assert post.startswith(b"POST /api/v1/persistentvolumes HTTP/1.1\r\n")
    assert b"\r\nAuthorization: Bearer t0ken\r\n" in post and b"\r\nContent-Type: application/json\r\n" in post
    assert post.endswith(json.dumps({"metadata": {"name": "é"}}, separators=(",", ":")).encode())


def test_a_connection_the_server_closed_while_idle_is_not_used(serve: Callable[..., tuple[Server, kube.Client]]
                                                               ) -> None:
    def one_each(conn: socket.socket, server: Server) -> None:
        with conn:  # answers one request, keeps the connection alive, then closes it while idle
            if server.read_request(conn) is not None:
                conn.sendall(answer({"n": server.accepted}))
                time.sleep(0.1)

    server, api = serve(one_each)
    assert api.get("/x") == {"n": 1}
    time.sleep(0.3)
    assert api.get("/x") == {"n": 2}  # no error: the closed connection was seen before sending on it
    assert server.accepted == 2


def test_connection_close_is_honoured_and_errors_are_typed(serve: Callable[..., tuple[Server, kube.Client]]) -> None:
    status = {"kind": "Status", "status": "Failure", "reason": "NotFound", "code": 404, "message": "pv x not found"}
    server, api = serve(keep_answering(lambda n: answer(status, "404 Not Found", close=True)))
    for _ in range(2):
        with pytest.raises(errors.NotFound, match="pv x not found"):
            api.get("/api/v1/persistentvolumes/x")
    assert server.accepted == 2


@pytest.mark.parametrize("reply", [
    b"SSH-2.0-OpenSSH_9.6\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{\"short\":",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: -5\r\n\r\n",
    b"HTTP/1.1 200 OK\r\n" + b"X: y\r\n" * 300 + b"\r\n",
    b"",
], ids=["not-http", "cut-body", "bad-chunk", "negative-length", "header-flood", "closed"])
def test_an_answer_that_is_not_http_is_a_transport_error(serve: Callable[..., tuple[Server, kube.Client]],
                                                         reply: bytes) -> None:
    def handler(conn: socket.socket, server: Server) -> None:
        with conn:
            server.read_request(conn)
            conn.sendall(reply)

    _, api = serve(handler)
    with pytest.raises(errors.TransportError):
        api.get("/x")


def test_a_read_timeout_is_a_transport_error(serve: Callable[..., tuple[Server, kube.Client]]) -> None:
    def silent(conn: socket.socket, server: Server) -> None:
        with conn:
            server.read_request(conn)
            time.sleep(3)

    _, api = serve(silent)
    started = time.monotonic()
    with pytest.raises(errors.TransportError):
        api.request("GET", "/x", timeout=0.3)
    assert time.monotonic() - started < 2


def test_a_header_value_with_a_line_break_is_never_sent(serve: Callable[..., tuple[Server, kube.Client]]) -> None:
    server, _ = serve(keep_answering(lambda n: answer({})))
    creds = Credentials(host=f"http://127.0.0.1:{server.port}", ca_file=None, cert_file=None, key_file=None,
                        verify=True, token=lambda: "Bearer a\r\nX-Evil: 1")
    api = kube.Client(creds, kube.ClientSettings(qps=0))
    with pytest.raises(errors.TransportError, match="line break"):
        api.get("/x")
    assert server.requests == []


def test_watch_lines_split_across_chunks_and_a_watch_stopped_from_another_thread(
        serve: Callable[..., tuple[Server, kube.Client]]) -> None:
    events = [{"type": "ADDED", "object": {"metadata": {"name": f"c{i}", "resourceVersion": str(i)}}}
              for i in range(5)]
    stream = b"".join(json.dumps(e).encode() + b"\n" for e in events)
    cuts = [0, 7, 40, 41, len(stream) - 3, len(stream)]  # a line over three chunks, two lines in one

    def watcher(conn: socket.socket, server: Server) -> None:
        with conn:
            server.read_request(conn)
            conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            for a, b in itertools.pairwise(cuts):
                conn.sendall(f"{b - a:x}\r\n".encode() + stream[a:b] + b"\r\n")
                time.sleep(0.01)
            time.sleep(5)  # then silent: the watch is stopped by close()

    server, api = serve(watcher)
    watch = api.watch("/api/v1/persistentvolumeclaims", resource_version="0")
    got: list[dict[str, object]] = []
    done = threading.Event()

    def consume() -> None:
        got.extend(watch)
        done.set()

    threading.Thread(target=consume, daemon=True).start()
    deadline = time.monotonic() + 3
    while len(got) < len(events) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert got == events
    assert b"watch=true" in server.requests[0] and b"resourceVersion=0" in server.requests[0]
    watch.close()
    assert done.wait(2), "close() did not end the watch"


def test_a_watch_refused_raises_its_status(serve: Callable[..., tuple[Server, kube.Client]]) -> None:
    gone = {"kind": "Status", "code": 410, "reason": "Expired", "message": "too old resource version"}
    _, api = serve(keep_answering(lambda n: answer(gone, "410 Gone")))
    with pytest.raises(errors.Gone):
        list(api.watch("/api/v1/persistentvolumeclaims", resource_version="1"))
