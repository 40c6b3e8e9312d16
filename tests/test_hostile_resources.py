"""Issue 28, resources an outsider can exhaust: the metrics/health endpoint's connections (D6), the logs a
client that is not even on the client list makes Ganesha write (D7), and what a SIGKILLed appliance leaves
in the temporary directory (D18). Each against the real thing: the endpoint's server, a real Ganesha flooded
with garbage RPC records, the real appliance killed with SIGKILL."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client
from prometheus_client import CollectorRegistry

from nfs_provisioner.controller import metrics
from nfs_provisioner.ganesha import errors as ganesha_errors
from nfs_provisioner.ganesha import processes
from nfs_provisioner.ganesha.exports import ExportRequest
from nfs_provisioner.ganesha.server import READY_MARK
from nfs_provisioner.ganesha.settings import Ports
from nfs_provisioner.kube import credentials
from tests import kubecluster, wait
from tests.appliance_env import Appliance
from tests.ganesha_env import Harness
from tests.test_appliance_e2e import make_class

REPO = Path(__file__).resolve().parent.parent


def fds() -> int:
    return len(os.listdir("/proc/self/fd"))


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


# --------------------------------------------------------------------------------------------- D6: endpoint


@pytest.mark.unit
def test_d6_idle_connections_cost_the_endpoint_no_descriptor_or_thread_each() -> None:
    registry = CollectorRegistry()
    metrics.Metrics(registry)
    server = metrics.Server("127.0.0.1:0", registry, healthy=lambda: (True, "ok"), ready=lambda: (True, "ok"))
    server.start()
    socks: list[socket.socket] = []
    try:
        assert get(server.port, "/healthz")[:2] == (200, "ok\n")
        fds0, threads0 = fds(), threading.active_count()
        socks = idle_connections(server.port, 400) + idle_connections(server.port, 100, source="127.0.0.1")
        time.sleep(1.0)  # every connection accepted (or closed) by now
        held = fds() - fds0 - len(socks)  # the endpoint's descriptors for them (ours are the 500 sockets)
        status, body, took = get(server.port, "/healthz")
        assert (status, body) == (200, "ok\n") and took < 1.0, (status, body, took)
        status, body, _ = get(server.port, "/metrics")
        assert status == 200 and "controller_persistentvolumeclaim_provision_total" in body
        # Before: one thread and one descriptor per connection (500 of each), listen backlog 5.
        assert held <= 64, f"the endpoint holds {held} descriptors for 500 idle connections"
        assert threading.active_count() - threads0 <= 4, f"{threading.active_count() - threads0} more threads"
    finally:
        for s in socks:
            s.close()
        server.stop()


@pytest.mark.unit
def test_d6_a_trickling_client_is_closed_and_an_oversized_request_refused() -> None:
    registry = CollectorRegistry()
    limits = metrics.Limits(request_timeout=1.0, max_request_bytes=1024)
    server = metrics.Server("127.0.0.1:0", registry, healthy=lambda: (True, "ok"), ready=lambda: (False, "no"),
                            limits=limits)
    server.start()
    try:
        slow = socket.create_connection(("127.0.0.1", server.port))
        slow.sendall(b"GET /healthz HTTP/1.1\r\n")  # and never the end of the head
        slow.settimeout(5)
        started = time.monotonic()
        assert slow.recv(100) == b""  # closed by the server
        assert 0.5 < time.monotonic() - started < 3
        big = socket.create_connection(("127.0.0.1", server.port))
        big.sendall(b"GET /healthz HTTP/1.1\r\nX: " + b"a" * 4096)
        big.settimeout(5)
        assert big.recv(100).startswith(b"HTTP/1.1 431 ")
        assert get(server.port, "/readyz")[:2] == (503, "no\n")
        assert get(server.port, "/nope")[0] == 404
        wait.until(lambda: server.connections == 0, timeout=5, what="every connection closed")
    finally:
        server.stop()


LOW_LIMIT_CHILD = r"""
import json, os, sys, time, threading
from prometheus_client import CollectorRegistry
from nfs_provisioner.controller import metrics
server = metrics.Server("127.0.0.1:0", CollectorRegistry(), healthy=lambda: (True, "ok"), ready=lambda: (True, "ok"))
server.start()
print(server.port, flush=True)
failures = []
def work():  # the appliance's own work: files and sockets, all the time
    while True:
        try:
            with open("/proc/self/status") as f:
                f.read()
        except OSError as e:
            failures.append(str(e))
        time.sleep(0.02)
threading.Thread(target=work, daemon=True).start()
for line in sys.stdin:
    print(json.dumps({"failures": failures[:3], "count": len(failures), "fds": len(os.listdir("/proc/self/fd")),
                      "threads": threading.active_count()}), flush=True)
"""


@pytest.mark.unit
def test_d6_at_a_soft_limit_of_256_open_files_idle_connections_starve_nothing() -> None:
    """The issue's case (1018 idle connections at a soft limit of 1024) at a quarter of the size."""
    child = subprocess.Popen(
        ["prlimit", "--nofile=256:256", sys.executable, "-c", LOW_LIMIT_CHILD],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    socks: list[socket.socket] = []
    try:
        assert child.stdout is not None and child.stdin is not None
        port = int(child.stdout.readline())
        socks = idle_connections(port, 400)
        time.sleep(1.5)
        status, body, took = get(port, "/healthz", timeout=5)
        assert (status, body) == (200, "ok\n") and took < 1.0, (status, body, took)
        child.stdin.write("report\n")
        child.stdin.flush()
        report = json.loads(child.stdout.readline())
        assert report["count"] == 0, report  # before: "[Errno 24] Too many open files"
        assert report["fds"] < 128, report
    finally:
        for s in socks:
            s.close()
        child.kill()
        child.wait()


@pytest.mark.unit
def test_d6_the_soft_open_files_limit_is_raised_to_the_hard_one() -> None:
    script = ("import logging, resource; logging.basicConfig(level=logging.INFO, format='%(message)s')\n"
              "from nfs_provisioner.appliance import limits\n"
              "print(limits.raise_open_files()); print(resource.getrlimit(resource.RLIMIT_NOFILE))\n")
    out = subprocess.run(["prlimit", "--nofile=1024:4096", sys.executable, "-c", script], cwd=REPO,
                         capture_output=True, text=True, check=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert out.stdout.splitlines() == ["(1024, 4096)", "(4096, 4096)"], out
    assert "open files limit raised: 1024 -> 4096 (the hard limit)" in out.stderr


# ------------------------------------------------------------------------------------------------ D7: logs


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


def on_disk(log: Path) -> int:
    return sum(p.stat().st_size for p in log.parent.glob(log.name + "*"))


@pytest.mark.ganesha
def test_d7_garbage_rpc_from_an_unlisted_address_leaves_ganesha_log_bounded(h: Harness) -> None:
    log = h.export_root / ".ganesha" / "ganesha.log"
    srv = h.server(clients=("127.0.0.1",))  # 127.0.0.9 is not a client
    srv.exports.add(ExportRequest(name="v1", path=h.volume("v1", content={"f": b"still served"})))
    assert READY_MARK in log.read_text(errors="replace")  # the ready line reached the file too
    started = time.monotonic()
    garbage("127.0.0.1", h.port, source="127.0.0.9", seconds=20)
    took = time.monotonic() - started
    size = on_disk(log)
    cap = 1 << 20  # ServerSettings.log_max_bytes' default
    chunk = 256 * 1024  # the relay writes what one read of the pipe gives, then rotates
    print(f"Ganesha's log on the export root after {took:.1f}s of garbage: {size} bytes")
    # Before: ganesha.log grew by 27 MB in 20 s (the issue), by 41-70 MB here.
    assert size <= 2 * (cap + chunk), f"{size} bytes of Ganesha's log on the export root after {took:.0f}s"
    assert srv.settings.log_max_bytes == cap
    glog = srv.ganesha_log
    assert glog is not None
    print(f"Ganesha wrote {glog.received} bytes of log in {took:.1f}s; on disk: {size} bytes")
    assert glog.received > 4 * cap, "the flood made Ganesha log too little to test the cap"
    assert "rm_call.cb_rpcvers" in log.read_text(errors="replace")  # the log is still written
    assert len((log.parent / "ganesha.log.old").read_bytes()) <= cap + chunk
    assert srv.ready()
    assert h.client().cat(h.export_root / "v1" / "f").stdout == b"still served"


@pytest.mark.ganesha
def test_d7_garbage_at_statd_leaves_its_log_bounded(h: Harness) -> None:
    """rpc.statd runs with -d (its messages to its log, not syslog) and has no client list: a connection to 662
    that sends garbage costs a line ("Waiting for client connections"): 23.7 MB in 20 s here before the cap. Its
    log in the run directory goes through the same capped relay as Ganesha's."""
    ns = h.make_netns(addresses=("10.77.0.1/24",))
    srv = h.server(netns=ns.path, mountns=ns.mountns, nfsv3=True, bind_addr=None, ports=Ports(),
                   export_subnet="10.77.0.0/24")
    log = srv.run_dir / "statd.log"
    started = time.monotonic()
    subprocess.run(["nsenter", f"--net={ns.path}", sys.executable, "-c",
                    "from tests.test_hostile_resources import garbage; garbage('127.0.0.1', 662, source='127.0.0.1', "
                    "seconds=20)"], cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, check=True, timeout=120)
    size = on_disk(log)
    print(f"statd's log after {time.monotonic() - started:.1f}s of garbage: {size} bytes")
    cap, chunk = 1 << 20, 256 * 1024
    assert size <= 2 * (cap + chunk), f"{size} bytes of statd's log"
    assert "Waiting for client connections" in log.read_text(errors="replace")
    assert srv.helper_pids().get("rpc.statd")


@pytest.mark.ganesha
def test_d7_ganesha_start_up_errors_still_reach_the_error_message(h: Harness, tmp_path: Path) -> None:
    """What Ganesha says when it cannot start is in the error (its log is no longer read back from a file)."""
    templates = tmp_path / "templates"
    templates.mkdir()
    shipped = (REPO / "nfs_provisioner" / "ganesha_templates" / "ganesha.conf.j2").read_text()
    assert "allow_set_io_flusher_fail = true;" in shipped
    (templates / "ganesha.conf.j2").write_text(shipped.replace("allow_set_io_flusher_fail = true;",
                                                               "allow_set_io_flusher_fail = false;"))
    with pytest.raises(ganesha_errors.GaneshaServerError) as e:
        h.server(template_dir=templates)  # no CAP_SYS_RESOURCE here: Ganesha exits at once
    assert "ganesha.nfsd exited with code 2 while starting; log tail:" in str(e.value)
    assert "Failed to PR_SET_IO_FLUSHER with EPERM" in str(e.value)


@pytest.mark.unit
def test_d7_a_helpers_output_is_capped_on_disk_and_its_marks_and_tail_kept(tmp_path: Path) -> None:
    """What rpc.statd -d, rpcbind and dbus-daemon write goes through the same relay as Ganesha's log."""
    out = processes.ChildLog(tmp_path / "statd.log", what="statd", max_bytes=256 * 1024, marks=("MARK-IN-THE-MIDDLE",))
    script = ("import sys\nw = sys.stdout.buffer\n"
              "for i in range(100000):\n"
              "    w.write(b'x' * 80 + b'\\n')\n"
              "    if i == 50000: w.write(b'MARK-IN-THE-MIDDLE\\n')\n"
              "w.write(b'the last line\\n')\n")
    proc = processes.Launcher().spawn([sys.executable, "-c", script], output=out)
    assert proc.wait(30) == 0
    out.join(10)
    assert out.received > 8_000_000
    size = on_disk(tmp_path / "statd.log")
    assert size <= 2 * (256 * 1024 + 262144), size
    assert out.seen("MARK-IN-THE-MIDDLE")
    assert out.tail(1) == "the last line"
    assert (tmp_path / "statd.log").read_bytes().endswith(b"the last line\n")
    assert oct((tmp_path / "statd.log").stat().st_mode & 0o777) == "0o600"


@pytest.mark.unit
def test_d7_an_unbounded_log_left_by_an_older_version_is_cut_to_the_cap(tmp_path: Path) -> None:
    log = tmp_path / "ganesha.log"
    log.write_bytes(b"an unbounded log of an older version\n" * 150_000 + b"its last line\n")  # 5.5 MB
    out = processes.ChildLog(log, what="ganesha.nfsd", max_bytes=256 * 1024)
    proc = processes.Launcher().spawn(["echo", "the first line of this start"], output=out)
    assert proc.wait(10) == 0
    out.join(10)
    assert log.read_bytes() == b"the first line of this start\n"
    old = (tmp_path / "ganesha.log.old").read_bytes()
    assert len(old) == 256 * 1024 and old.endswith(b"its last line\n")


# ----------------------------------------------------------------------------------- D18: what a kill leaves


def key_pair(tmp_path: Path) -> tuple[Path, Path]:
    key, cert = tmp_path / "client.key", tmp_path / "client.crt"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "1", "-subj", "/CN=test"], check=True, capture_output=True)
    return key, cert


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


@pytest.mark.unit
def test_d18_an_inline_client_key_is_never_written_to_disk(tmp_path: Path, private_tmp: Path) -> None:
    import ssl

    key, cert = key_pair(tmp_path)
    doc = {"apiVersion": "v1", "kind": "Config", "current-context": "c",
           "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:1"}}],
           "users": [{"name": "u", "user": {"client-certificate-data": base64.b64encode(cert.read_bytes()).decode(),
                                            "client-key-data": base64.b64encode(key.read_bytes()).decode()}}],
           "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}]}
    path = tmp_path / "kubeconfig"
    path.write_text(json.dumps(doc))
    secret = key.read_bytes().splitlines()[1]  # a line of the key's base64 body
    key.unlink()
    creds = credentials.load(str(path))
    assert creds.key_file is not None and creds.cert_file is not None
    ssl.create_default_context().load_cert_chain(creds.cert_file, creds.key_file)  # TLS loads it
    assert not files_containing(private_tmp, secret), "the private key was copied to a file"  # before: client-key-*
    # The library's loader (an exec plugin, a proxy: fields read only by it) writes files: read back and removed.
    doc["clusters"][0]["cluster"]["proxy-url"] = "http://127.0.0.1:3"  # type: ignore[index]
    path.write_text(json.dumps(doc))
    with pytest.raises(credentials.Unsupported):
        credentials._from_kubeconfig(path, None)
    lib = credentials.load(str(path))
    assert lib.key_file is not None and lib.cert_file is not None
    ssl.create_default_context().load_cert_chain(lib.cert_file, lib.key_file)
    assert not files_containing(private_tmp, secret), "the library's copy of the private key was kept"


OWNER_CHILD = ("import sys, time\nfrom nfs_provisioner.appliance import state\n"
               "print(state.make_run_dir(), flush=True)\ntime.sleep(600)\n")


@pytest.mark.unit
def test_d18_run_dirs_of_dead_appliances_are_removed_and_live_ones_kept(private_tmp: Path) -> None:
    from nfs_provisioner.appliance import state

    env = {**os.environ, "PYTHONPATH": str(REPO), "TMPDIR": str(private_tmp)}
    live, dead = (subprocess.Popen([sys.executable, "-c", OWNER_CHILD], stdout=subprocess.PIPE, text=True, env=env)
                  for _ in range(2))
    try:
        assert live.stdout is not None and dead.stdout is not None
        live_dir, dead_dir = Path(live.stdout.readline().strip()), Path(dead.stdout.readline().strip())
        (dead_dir / "dbus.sock").write_text("left behind")
        dead.send_signal(signal.SIGKILL)
        dead.wait()
        foreign = private_tmp / "nfsp-not-ours"  # no owner file: made by someone else (or an older version)
        foreign.mkdir()
        (private_tmp / "nfsp-link").symlink_to(dead_dir)
        mine = state.make_run_dir()
        assert mine.parent == private_tmp and mine.name.startswith("nfsp-") and mine.is_dir()
        assert oct(mine.stat().st_mode & 0o777) == "0o700"
        assert not dead_dir.exists()
        assert live_dir.is_dir() and foreign.is_dir() and (private_tmp / "nfsp-link").is_symlink()
        assert f"pid {live.pid} " in (live_dir / "owner").read_text()
    finally:
        live.kill()
        live.wait()
        dead.kill()
        dead.wait()


@pytest.mark.fault
@pytest.mark.e2e
@pytest.mark.kube
@pytest.mark.ganesha
def test_d18_a_sigkilled_appliance_leaves_no_key_and_its_run_dir_goes_at_the_next_start(
        cluster: kubecluster.Cluster, tmp_path: Path, unique: str, private_tmp: Path) -> None:
    kubeconfig = json.loads(cluster.kubeconfig.read_text())
    key = base64.b64decode(kubeconfig["users"][0]["user"]["client-key-data"])
    secret = key.splitlines()[1]
    env = {"TMPDIR": str(private_tmp)}
    first, other = (Appliance(kubeconfig=cluster.kubeconfig, export_root=tmp_path / f"export-{i}",
                              provisioner=f"example.com/d18-{i}-{unique}", log_dir=tmp_path / f"log-{i}", env=env)
                    for i in range(2))
    try:
        for a in (first, other):
            a.log_dir.mkdir()
            a.start()
        def run_dirs_now() -> set[Path]:
            return {p for p in private_tmp.iterdir() if p.name.startswith("nfsp-") and "kubeconfig" not in p.name}

        run_dirs = run_dirs_now()
        assert len(run_dirs) == 2, run_dirs
        assert not files_containing(private_tmp, secret)  # before: nfsp-kubeconfig-*/client-key-*
        first.kill()
        assert not files_containing(private_tmp, secret)
        first.start()  # the next start removes the dead one's run directory, never the other live one's
        now = run_dirs_now()
        assert len(now) == 2 and len(now & run_dirs) == 1, (run_dirs, now)
        assert "no longer running" in first.text()
        assert other.get("/readyz")[0] == 200
    finally:
        for a in (first, other):
            a.close()


@pytest.mark.fault
@pytest.mark.e2e
@pytest.mark.kube
@pytest.mark.ganesha
def test_d6_the_appliance_at_1024_open_files_survives_1100_idle_connections(
        cluster: kubecluster.Cluster, tmp_path: Path, unique: str, core: client.CoreV1Api,
        storage: client.StorageV1Api, namespace: str) -> None:
    a = Appliance(kubeconfig=cluster.kubeconfig, export_root=tmp_path / "export",
                  provisioner=f"example.com/d6-{unique}", log_dir=tmp_path,
                  extra=["--export-subnet=127.0.0.1"],  # not the shared cluster's Nodes, whatever tests made them
                  wrapper=lambda argv: ["prlimit", "--nofile=1024:1024", *argv])
    cls = f"d6-{unique}"
    make_class(storage, cls, a.provisioner)
    socks: list[socket.socket] = []
    try:
        a.start()
        socks = idle_connections(a.metrics_port, 1100)
        time.sleep(2)
        status, _, took = get(a.metrics_port, "/healthz")
        assert status == 200 and took < 1.0, (status, took)
        core.create_namespaced_persistent_volume_claim(namespace, {
            "apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "after"},
            "spec": {"storageClassName": cls, "accessModes": ["ReadWriteMany"],
                     "resources": {"requests": {"storage": "1Mi"}}}})
        wait.until(lambda: core.read_namespaced_persistent_volume_claim("after", namespace).status.phase == "Bound",
                   timeout=60, what=lambda: f"the claim Bound while 1100 connections idle\n{a.log()}")
        assert a.proc is not None
        held = len(os.listdir(f"/proc/{a.proc.pid}/fd"))
        print(f"{len(socks)} idle connections: /healthz in {took * 1000:.0f} ms, the appliance holds {held} fds")
        assert held < 400
        assert "Too many open files" not in a.text()
        status, _, took = get(a.metrics_port, "/healthz")
        assert status == 200 and took < 1.0, (status, took)
    finally:
        for s in socks:
            s.close()
        a.close()
        storage.delete_storage_class(cls)


@pytest.mark.e2e
@pytest.mark.kube
@pytest.mark.ganesha
def test_d6_the_appliance_raises_its_soft_open_files_limit(cluster: kubecluster.Cluster, tmp_path: Path,
                                                           unique: str) -> None:
    a = Appliance(kubeconfig=cluster.kubeconfig, export_root=tmp_path / "export",
                  provisioner=f"example.com/d6r-{unique}", log_dir=tmp_path,
                  wrapper=lambda argv: ["prlimit", "--nofile=1024:8192", *argv])
    try:
        a.start()
        assert a.proc is not None
        limits = Path(f"/proc/{a.proc.pid}/limits").read_text()
        line = next(x for x in limits.splitlines() if x.startswith("Max open files"))
        assert line.split()[3:5] == ["8192", "8192"], line
        assert "open files limit raised: 1024 -> 8192 (the hard limit)" in a.text()
        # A SIGTERM right after /readyz turns 200, before the controller's handler is installed, can be lost
        # (app.py's start-up handler raising inside a weakref callback; the lead is reworking it): not tested here.
        time.sleep(2)
    finally:
        a.close()
