"""``--log-json``: every line the appliance writes is one JSON object, also while clients of its HTTP endpoint
(/metrics, /healthz) disconnect early. The audit counted 19 JSON lines out of 124; the rest were raw
``http.server`` BrokenPipe/ConnectionReset tracebacks. Real control plane, real appliance with its Ganesha."""

from __future__ import annotations

import json
import socket
import struct
import threading
import time
from pathlib import Path

import pytest

from tests.support import kubecluster
from tests.support.appliance_env import Appliance

pytestmark = [pytest.mark.e2e, pytest.mark.kube, pytest.mark.ganesha]

REQUEST = b"GET /metrics HTTP/1.1\r\nHost: appliance\r\n\r\n"


def rude_client(port: int, how: int) -> None:
    """One client that goes away early: 0 = reset right after the request, 1 = reset after the first bytes of
    the answer, 2 = half a request then reset, 3 = connect and close, 4 = a request for /healthz then reset."""
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
        if how in (0, 1):
            s.sendall(REQUEST)
        elif how == 2:
            s.sendall(REQUEST[:10])
        elif how == 4:
            s.sendall(REQUEST.replace(b"/metrics", b"/healthz"))
        if how == 1:
            s.recv(64)
        # SO_LINGER 0: close sends RST, so the server's next read or write fails (ECONNRESET/EPIPE).
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    finally:
        s.close()


def test_every_line_is_json_while_clients_disconnect_early(cluster: kubecluster.Cluster, tmp_path: Path,
                                                           unique: str) -> None:
    a = Appliance(kubeconfig=cluster.kubeconfig, export_root=tmp_path / "export",
                  provisioner=f"example.com/json-{unique}", log_dir=tmp_path, extra=["--log-json", "-v=4"])
    try:
        a.start()
        errors: list[BaseException] = []

        def hammer(offset: int) -> None:
            for i in range(60):
                try:
                    rude_client(a.metrics_port, (i + offset) % 5)
                except OSError as e:  # a refused or reset connect is the server's business, not the test's
                    errors.append(e)

        threads = [threading.Thread(target=hammer, args=(n,)) for n in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert a.get("/metrics")[0] == 200, "still serving after 480 rude clients"
        time.sleep(0.5)
    finally:
        a.close()
    lines = a.log_file.read_text().splitlines()
    bad = [line for line in lines if not _is_json_object(line)]
    assert not bad, f"{len(bad)} of {len(lines)} lines are not JSON, e.g.:\n" + "\n".join(bad[:20])
    entries = [json.loads(line) for line in lines]
    disconnects = [e for e in entries if "disconnected early" in e["msg"]]
    assert disconnects, "no early disconnect was seen: the test did not test anything"
    assert {e["level"] for e in disconnects} == {"debug"}, "a client closing early is DEBUG at most"
    assert not [e for e in entries if e["logger"].endswith("metrics") and e["level"] in ("error", "critical")]
    assert [e["msg"] for e in entries if "glog flag" in e["msg"]] == [
        "-v=4 is a glog flag of the Go provisioner: log level DEBUG (use --log-level)"]


def _is_json_object(line: str) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except ValueError:
        return False
