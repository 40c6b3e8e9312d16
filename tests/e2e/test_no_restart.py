"""Nothing restarts NFS-Ganesha needlessly (issue 24): a StorageClass change, a change of who may mount (Nodes)
and a change of the log level leave the same ganesha.nfsd serving, and a client's state goes on.

One real appliance (its own Ganesha) on the shared control plane, out of cluster: its clients are the Nodes and
loopback, so a Node this test adds, re-addresses and deletes (named uniquely, deleted afterwards) changes every
export's client list while the test's client on 127.0.0.1 stays allowed. The client state that proves Ganesha
was not restarted: an NFSv4.2 session on one TCP connection (a restarted Ganesha closes the connection and forgets
the session) renewed every second, and a file handle read with PUTFH + READ on a fresh connection."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from tests.support import kubecluster, nfs42_client, nfsraw, wait
from tests.support.appliance_env import Appliance
from tests.support.builders import NFS41, make_claim, make_class

pytestmark = [pytest.mark.e2e, pytest.mark.kube, pytest.mark.ganesha]

CONTENT = b"served on across changes\n"
NODE_ADDRESS = "10.97.31.7"


class Renewing:
    """An NFSv4.2 session kept alive (a SEQUENCE every ``period`` s); any failure is kept and raised by
    :meth:`check`."""

    def __init__(self, port: int, period: float = 1.0) -> None:
        self.client = nfs42_client.Client(host="127.0.0.1", port=port)
        self.period = period
        self.renewals = 0
        self.failure: BaseException | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="renewing", daemon=True)
        self._thread.start()

    def renew(self) -> None:
        with self._lock:
            self.client.renew()
            self.renewals += 1

    def _loop(self) -> None:
        while not self._stop.wait(self.period):
            try:
                self.renew()
            except BaseException as e:  # noqa: BLE001 - reported by check()
                self.failure = e
                return

    def check(self) -> None:
        """The session still works now, and every renewal since the start did."""
        if self.failure is not None:
            raise AssertionError(f"the NFSv4.2 session failed: {self.failure!r}")
        self.renew()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.client.close()


class Served:
    """The appliance, its volume, the file's handle and the session; what each check compares with."""

    def __init__(self, a: Appliance, vol: Path, fh: bytes, session: Renewing) -> None:
        self.a, self.vol, self.fh, self.session = a, vol, fh, session
        self.pid = ganesha_pid(a)

    def assert_not_restarted(self, what: str) -> None:
        assert ganesha_pid(self.a) == self.pid, f"{what}: ganesha.nfsd was restarted\n{self.a.log()}"
        assert "; restarting in" not in self.a.text(), f"{what}: the supervisor restarted Ganesha\n{self.a.log()}"
        self.session.check()
        with nfsraw.Nfs4(host="127.0.0.1", port=self.a.nfs_port) as c:
            r = c.compound([c.putfh(self.fh), c.read()])
            assert r.status == nfsraw.NFS4_OK, f"{what}: the file handle: {r.status_name}"
            assert r.last(nfsraw.OP_READ).data == CONTENT
        assert self.a.get("/readyz")[0] == 200, f"{what}: not ready\n{self.a.log()}"


def ganesha_pid(a: Appliance) -> int:
    import psutil

    assert a.proc is not None
    pids = [p.pid for p in psutil.Process(a.proc.pid).children(recursive=True) if "ganesha.nfsd" in " ".join(
        p.cmdline())]
    assert len(pids) == 1, pids
    return pids[0]


def export_clients(a: Appliance, vol: Path) -> list[str]:
    conf = a.export_root / ".ganesha" / "exports.d" / f"{vol.name}.conf"
    header: dict[str, Any] = json.loads(conf.read_text().splitlines()[0].split(": ", 1)[1])
    return list(header["clients"])


@pytest.fixture(scope="module")
def served(cluster: kubecluster.Cluster, core: client.CoreV1Api, storage: client.StorageV1Api,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    unique = uuid.uuid4().hex[:8]
    work = tmp_path_factory.mktemp("no-restart")
    a = Appliance(kubeconfig=cluster.kubeconfig, export_root=work / "export", provisioner=f"example.com/nr-{unique}",
                  log_dir=work, extra=["--log-level=INFO"])
    ns, cls = f"no-restart-{unique}", f"nr-{unique}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=ns)))
    session: Renewing | None = None
    try:
        make_class(cls, a.provisioner, mount_options=NFS41, api=storage)
        a.start()
        make_claim(ns, "nfs", cls, api=core)
        wait.until(lambda: core.read_namespaced_persistent_volume_claim("nfs", ns).status.phase == "Bound",
                   timeout=60, what=lambda: f"claim Bound\n{a.log()}")
        vol = a.export_root / core.read_namespaced_persistent_volume_claim("nfs", ns).spec.volume_name
        (vol / "f").write_bytes(CONTENT)
        with nfsraw.Nfs4(host="127.0.0.1", port=a.nfs_port) as c:
            fh = c.path_fh(*vol.relative_to("/").parts, "f")
        session = Renewing(a.nfs_port)
        yield Served(a, vol, fh, session)
    finally:
        if session is not None:
            session.close()
        core.delete_namespace(ns)
        wait.until(lambda: not any(pv.spec.storage_class_name == cls for pv in core.list_persistent_volume().items),
                   timeout=60, what=lambda: f"the test's PV deleted\n{a.log()}")
        a.close()
        storage.delete_storage_class(cls)


def test_storage_class_changes_do_not_restart_ganesha(served: Served, storage: client.StorageV1Api) -> None:
    a, unique = served.a, uuid.uuid4().hex[:8]
    for name, provisioner in ((f"nr-mine-{unique}", a.provisioner), (f"nr-other-{unique}", "example.com/other")):
        make_class(name, provisioner, parameters={"gid": "1234"}, mount_options=NFS41, api=storage)
        storage.patch_storage_class(name, {"metadata": {"labels": {"changed": "yes"}}})
        storage.delete_storage_class(name)
    wait.until(lambda: "classes" in a.text(), timeout=5, what="the class informer")
    time.sleep(2)  # the informer has seen the three events of each class by now (watch latency: milliseconds)
    served.assert_not_restarted("StorageClass created, updated, deleted")


def test_node_changes_do_not_restart_ganesha(served: Served, core: client.CoreV1Api) -> None:
    a, vol = served.a, served.vol
    name = f"nr-node-{uuid.uuid4().hex[:8]}"
    changes = a.text().count("NFS clients changed")
    core.create_node(client.V1Node(metadata=client.V1ObjectMeta(name=name)))
    try:
        for address in (NODE_ADDRESS, "10.97.31.8"):  # added (with its address), then re-addressed
            core.patch_node_status(name, {"status": {"addresses": [{"type": "InternalIP", "address": address}]}})
            wait.until(lambda address=address: f"{address}/32" in export_clients(a, vol), timeout=30,
                       what=lambda address=address: f"{address} in the clients: {export_clients(a, vol)}\n{a.log()}")
            served.assert_not_restarted(f"Node {name} at {address}")
    finally:
        core.delete_node(name)
    wait.until(lambda: not any(c.startswith("10.97.31.") for c in export_clients(a, vol)), timeout=30,
               what=lambda: f"the removed Node's address gone: {export_clients(a, vol)}\n{a.log()}")
    wait.until(lambda: a.text().count("NFS clients changed") >= changes + 3, timeout=30,
               what="three client list changes applied (UpdateExport)")
    served.assert_not_restarted(f"Node {name} removed")


def test_log_level_signals_do_not_restart_ganesha(served: Served) -> None:
    """SIGUSR1: the appliance logs at DEBUG; SIGUSR2: back to its --log-level (INFO here)."""
    a = served.a
    assert a.proc is not None

    def debug_lines() -> int:
        return sum(" DEBUG " in line for line in a.text().splitlines())

    before = debug_lines()
    a.get("/readyz")
    assert debug_lines() == before, "INFO: no DEBUG lines"
    os.kill(a.proc.pid, signal.SIGUSR1)
    wait.until(lambda: "received SIGUSR1: log level DEBUG" in a.text(), timeout=5, what="SIGUSR1 logged")
    wait.until(lambda: a.get("/readyz") and debug_lines() > before, timeout=5, what=lambda: f"DEBUG lines\n{a.log()}")
    served.assert_not_restarted("SIGUSR1")
    os.kill(a.proc.pid, signal.SIGUSR2)
    wait.until(lambda: "received SIGUSR2: log level INFO" in a.text(), timeout=5, what="SIGUSR2 logged")
    time.sleep(0.2)
    after = debug_lines()
    for _ in range(3):
        a.get("/readyz")
    time.sleep(0.5)
    assert debug_lines() == after, "back at INFO: no more DEBUG lines"
    served.assert_not_restarted("SIGUSR2")
