"""What tests/{e2e,ganesha,unit}/test_hostile_resources.py share (one module per lane: the tests of one module
needed different things)."""

from __future__ import annotations

import contextlib
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest


def get(port: int, path: str, *, timeout: float = 5.0) -> tuple[int, str, float]:
    """(status, body, seconds) of one GET to 127.0.0.1:port."""
    started = time.monotonic()
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as r:
            return r.status, r.read().decode(), time.monotonic() - started
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(), time.monotonic() - started


def idle_connections(port: int, n: int, *, source: str = "127.0.0.2") -> list[socket.socket]:
    """``n`` connections that never send a byte (from ``source``, another pod as the endpoint sees it), opened
    one after the other as a client would. A server that no longer accepts (out of descriptors) makes connects
    time out: after three of those no more are tried."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < n + 256:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, n + 1024), hard))
    socks: list[socket.socket] = []
    timeouts = 0
    while len(socks) < n and timeouts < 3:
        s = socket.socket()
        s.bind((source, 0))
        s.settimeout(2)
        try:
            s.connect(("127.0.0.1", port))
        except OSError:  # TimeoutError included
            s.close()
            timeouts += 1
            continue
        socks.append(s)
    return socks


def on_disk(log: Path) -> int:
    return sum(p.stat().st_size for p in log.parent.glob(log.name + "*"))


def files_containing(top: Path, needle: bytes) -> list[Path]:
    found = []
    for where, _dirs, names in os.walk(top):
        for n in names:
            p = Path(where) / n
            with contextlib.suppress(OSError):
                if not p.is_symlink() and p.is_file() and needle in p.read_bytes():
                    found.append(p)
    return found


@pytest.fixture
def private_tmp(tmp_path: Path) -> Iterator[Path]:
    """``tempfile``'s directory for this test only (TMPDIR of the processes it starts, too)."""
    d = Path(tempfile.mkdtemp(prefix="d18-"))  # short: an appliance's bus socket lives under it
    old = tempfile.tempdir
    tempfile.tempdir = str(d)
    try:
        yield d
    finally:
        tempfile.tempdir = old
        subprocess.run(["rm", "-rf", str(d)], check=False)


def garbage(host: str, port: int, *, source: str, seconds: float, procs: int = 2) -> None:
    """ONC RPC records of garbage (a CALL with a random RPC version and body), one per connection, from
    ``source`` for ``seconds``, in ``procs`` processes; what the issue's reviewer sent."""
    script = r"""
import os, socket, struct, sys, time
host, port, source, seconds = sys.argv[1], int(sys.argv[2]), sys.argv[3], float(sys.argv[4])
end, n = time.monotonic() + seconds, 0
while time.monotonic() < end:
    try:
        s = socket.socket(); s.bind((source, 0)); s.settimeout(1)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.connect((host, port))
        body = struct.pack(">II", n, 0) + os.urandom(40)
        s.sendall(struct.pack(">I", 0x80000000 | len(body)) + body)
        s.close(); n += 1
    except OSError:
        time.sleep(0.001)
"""
    kids = [subprocess.Popen([sys.executable, "-c", script, host, str(port), source, str(seconds)])
            for _ in range(procs)]
    for k in kids:
        k.wait(seconds + 30)
