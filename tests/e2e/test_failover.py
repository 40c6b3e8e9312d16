"""Restarts without a blackout (issue 24), out of cluster: NFS is served before the controller has listed the
cluster, and a graceful stop is quick and leaves the recovery records with the export root, where a second
appliance process (another node's, as a rescheduled StatefulSet pod would be) lets the recorded client reclaim.

Real appliance processes, real Ganesha, the shared control plane; the client is the suite's raw NFS client on
127.0.0.1. The in-cluster figures (helm upgrade, a StatefulSet pod deleted) are in tests/node/test_helm_install.py."""

from __future__ import annotations

import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client

from tests.support import kubecluster, nfs42_client, nfsraw, wait
from tests.support.appliance_env import Appliance
from tests.support.builders import NFS41, make_claim, make_class
from tests.support.controller_helpers import PausableProxy

pytestmark = [pytest.mark.e2e, pytest.mark.kube, pytest.mark.ganesha]

CONTENT = b"an existing volume's file\n"
OWNER = b"\x03" * 8 + b"nfsp-failover-test-client"


def read(a: Appliance, path: Path) -> bytes | None:
    """The file over NFS (PUTROOTFH, LOOKUP..., READ with the anonymous stateid); None while not served."""
    try:
        with nfsraw.Nfs4(host="127.0.0.1", port=a.nfs_port) as c:
            c.sock.settimeout(2.0)
            r = c.compound([c.putrootfh(), *(c.lookup(n) for n in path.relative_to("/").parts), c.read()])
    except (OSError, nfsraw.RpcError):
        return None
    return r.last(nfsraw.OP_READ).data if r.status == nfsraw.NFS4_OK else None


class Setup:
    def __init__(self, core: client.CoreV1Api, storage: client.StorageV1Api, a: Appliance) -> None:
        self.core, self.storage, self.a = core, storage, a
        unique = uuid.uuid4().hex[:8]
        self.ns, self.cls = f"failover-{unique}", f"failover-{unique}"
        core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=self.ns)))
        make_class(self.cls, a.provisioner, mount_options=NFS41, api=storage)

    def volume(self) -> Path:
        """A Bound claim's volume holding a file."""
        make_claim(self.ns, "nfs", self.cls, api=self.core)
        wait.until(lambda: self.core.read_namespaced_persistent_volume_claim("nfs", self.ns).status.phase == "Bound",
                   timeout=180, what=lambda: f"claim Bound\n{self.a.log()}")
        vol = self.a.export_root / self.core.read_namespaced_persistent_volume_claim("nfs", self.ns).spec.volume_name
        (vol / "f").write_bytes(CONTENT)
        return vol

    def close(self, a: Appliance) -> None:
        self.core.delete_namespace(self.ns)
        if a.proc is not None and a.proc.poll() is None:
            wait.until(lambda: not any(pv.spec.storage_class_name == self.cls
                                       for pv in self.core.list_persistent_volume().items),
                       timeout=60, what=lambda: f"the test's PV deleted\n{a.log()}")
        self.storage.delete_storage_class(self.cls)


@pytest.fixture
def proxied(cluster: kubecluster.Cluster, tmp_path: Path) -> Iterator[tuple[Appliance, PausableProxy]]:
    proxy = PausableProxy(cluster.api_url)
    a = Appliance(kubeconfig=cluster.kubeconfig, export_root=tmp_path / "export",
                  provisioner=f"example.com/failover-{uuid.uuid4().hex[:8]}", log_dir=tmp_path,
                  extra=["--log-level=INFO", f"--master={proxy.url}"])
    try:
        yield a, proxy
    finally:
        proxy.paused.clear()
        a.close()
        proxy.close()


def test_after_a_kill_nfs_is_served_before_the_controller_has_listed(
        proxied: tuple[Appliance, PausableProxy], core: client.CoreV1Api, storage: client.StorageV1Api) -> None:
    """The API server stops answering (a proxy that relays nothing) once the restarted appliance has its Nodes
    (who may mount): the claims and PVs are never listed, and yet the existing volume is read over NFS. Then the
    API server answers again: listed, ready."""
    a, proxy = proxied
    a.start()
    setup = Setup(core, storage, a)
    try:
        vol = setup.volume()
        assert read(a, vol / "f") == CONTENT
        a.kill()
        killed = time.monotonic()
        a.start(wait_ready=False)
        wait.until(lambda: "NFS clients:" in a.text(), timeout=30, interval=0.005, what=lambda: a.log())
        proxy.paused.set()
        wait.until(lambda: read(a, vol / "f") == CONTENT, timeout=30, interval=0.05,
                   what=lambda: f"the volume read over NFS while the lists hang\n{a.log()}")
        served = time.monotonic() - killed
        text = a.text()
        assert "volumes: listed" not in text and "claims: listed" not in text, text[-3000:]
        assert a.get("/readyz")[0] == 503
        time.sleep(1.0)
        assert "volumes: listed" not in a.text() and read(a, vol / "f") == CONTENT
        proxy.paused.clear()
        a.wait_ready()
        print(f"kill -> first NFS read {served:.2f} s (the lists held; listed and ready once the API server "
              f"answers: {time.monotonic() - killed:.2f} s)")
    finally:
        proxy.paused.clear()
        setup.close(a)


def ganesha_log(a: Appliance) -> str:
    return (a.export_root / ".ganesha" / "ganesha.log").read_text(errors="replace")


def test_sigterm_is_quick_and_another_appliance_on_the_export_root_lets_the_client_reclaim(
        cluster: kubecluster.Cluster, core: client.CoreV1Api, storage: client.StorageV1Api, tmp_path: Path) -> None:
    """A client holding a session (recorded in <export root>/.ganesha/recovery); SIGTERM: exit 0 quickly. A
    second appliance process (other ports, its own run directory: another node's pod) on the same export root
    starts in grace because of that record, and the grace period (90 s) ends within a reaper period (3 s) of the
    client's reclaim: the records live with the export root."""
    provisioner = f"example.com/failover-{uuid.uuid4().hex[:8]}"
    extra = ["--log-level=INFO", "--grace-period=90"]
    first = Appliance(kubeconfig=cluster.kubeconfig, export_root=tmp_path / "export", provisioner=provisioner,
                      log_dir=tmp_path / "first", extra=extra)
    second = Appliance(kubeconfig=cluster.kubeconfig, export_root=tmp_path / "export", provisioner=provisioner,
                       log_dir=tmp_path / "second", extra=extra)
    first.log_dir.mkdir()
    second.log_dir.mkdir()
    first.start()
    setup = Setup(core, storage, first)
    try:
        vol = setup.volume()
        nfs42_client.Client(host="127.0.0.1", port=first.nfs_port, owner=OWNER).close()  # recorded
        assert list((first.export_root / ".ganesha" / "recovery").rglob("*")), "no client record"
        t = time.monotonic()
        assert first.stop(signal.SIGTERM) == 0
        stopped = time.monotonic() - t
        assert not first.leftovers()
        second.start()
        restarted = time.monotonic() - t
        assert "client state to reclaim (1 NFSv4 client records" in second.text(), second.log()
        assert read(second, vol / "f") == CONTENT, "served by the second appliance"
        lifted_before = ganesha_log(second).count("NOT IN GRACE")
        nfs42_client.Client(host="127.0.0.1", port=second.nfs_port, owner=OWNER).close()  # reclaims
        reclaimed = time.monotonic()
        wait.until(lambda: ganesha_log(second).count("NOT IN GRACE") > lifted_before, timeout=10, interval=0.1,
                   what=lambda: f"grace lifted after the reclaim\n{ganesha_log(second)[-3000:]}")
        lifted = time.monotonic() - reclaimed
        print(f"SIGTERM -> exit {stopped:.2f} s, SIGTERM -> the second appliance ready {restarted:.2f} s, "
              f"reclaim -> grace lifted {lifted:.2f} s")
        assert lifted < 4.0, lifted
        assert stopped < 5.0, f"SIGTERM -> exit took {stopped:.2f} s\n{first.log()}"
    finally:
        setup.close(second)
        second.close()
        first.close()
