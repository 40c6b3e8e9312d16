"""--use-ganesha=false: volumes exported through /etc/exports and the real
exportfs (from Debian's nfs-kernel-server, unpacked by hack/install-deps).

This kernel has no NFS server, so what can be proven here is everything up to
the kernel: the appliance writes /etc/exports, and exportfs accepts it and
writes its export table (/var/lib/nfs/etab). Both paths are private to the test:
the appliance runs in its own mount namespace over a copy of /etc."""

from __future__ import annotations

import os
import shlex
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client

from nfs_provisioner.appliance.kernel_exports import MARK
from tests.support import kubecluster, wait
from tests.support.appliance_env import Appliance
from tests.support.builders import NFS41, make_claim, make_class
from tests.support.kernel_exports import OPERATOR_DIR, OPERATOR_LINE

CACHE = Path(os.environ.get("NFSP_CACHE_DIR", Path.home() / ".cache" / "nfs-provisioner"))


SBIN = CACHE / "nfs-kernel-server" / "root" / "usr" / "sbin"


class Namespace:
    """A private view of /etc (a copy) and /var/lib/nfs for the appliance and exportfs."""

    def __init__(self, tmp: Path) -> None:
        if not (SBIN / "exportfs").exists():
            raise AssertionError(f"{SBIN / 'exportfs'} missing: run hack/install-deps")
        self.etc, self.varlib = tmp / "etc", tmp / "varlib"
        shutil.copytree("/etc", self.etc, symlinks=True)  # symlinks stay symlinks into the host's tree
        (self.etc / "exports").write_text(OPERATOR_LINE + "\n")
        self.varlib.mkdir()

    def wrap(self, argv: list[str]) -> list[str]:
        script = f"mount --bind {self.varlib} /var/lib/nfs && mount --bind {self.etc} /etc && exec {shlex.join(argv)}"
        return ["unshare", "--mount", "--propagation", "private", "sh", "-c", script]

    @property
    def exports(self) -> str:
        return (self.etc / "exports").read_text()

    @property
    def etab(self) -> str:
        etab = self.varlib / "etab"
        return etab.read_text() if etab.exists() else ""


@pytest.fixture
def kernel_appliance(cluster: kubecluster.Cluster, tmp_path: Path,
                     unique: str) -> Iterator[tuple[Appliance, Namespace]]:
    ns = Namespace(tmp_path)
    a = Appliance(kubeconfig=cluster.kubeconfig, export_root=tmp_path / "export", log_dir=tmp_path,
                  provisioner=f"example.com/kernel-{unique}", extra=["--use-ganesha=false", "--run-server=false"],
                  wrapper=ns.wrap, env={"PATH": f"{SBIN}:{os.environ['PATH']}"})
    try:
        yield a, ns
    finally:
        a.close()


@pytest.mark.e2e
@pytest.mark.kube
def test_kernel_exports_flow(kernel_appliance: tuple[Appliance, Namespace], core: client.CoreV1Api,
                             storage: client.StorageV1Api, namespace: str, unique: str) -> None:
    a, ns = kernel_appliance
    cls = f"kernel-{unique}"
    make_class(cls, a.provisioner, parameters={"rootSquash": "true"}, mount_options=NFS41, api=storage)
    a.start()
    make_claim(namespace, "nfs", cls, api=core)
    wait.until(lambda: core.read_namespaced_persistent_volume_claim("nfs", namespace).status.phase == "Bound",
               timeout=60, what="claim Bound")
    pv = core.read_persistent_volume(core.read_namespaced_persistent_volume_claim("nfs", namespace).spec.volume_name)
    path = a.export_root / pv.metadata.name
    lines = ns.exports.splitlines()
    assert lines[0] == OPERATOR_LINE  # the operator's line is kept verbatim
    opts = "(rw,sync,no_subtree_check,root_squash,fsid=2)"
    # Out of cluster the default clients are the Nodes' addresses (the session's kubelet node, if it is up)
    # plus loopback.
    assert lines[1].startswith(f"{path} ") and f" 127.0.0.0/8{opts} " in lines[1]
    assert lines[1].endswith(f"  {MARK}{pv.metadata.name}")
    assert f" ::1/128{opts}" in lines[1]
    assert pv.metadata.annotations["Export_Id"] == "2"
    etab = ns.etab
    assert f"{path}\t127.0.0.0/8(" in etab and "fsid=2" in etab and "root_squash" in etab, etab  # exportfs took it
    assert f"{OPERATOR_DIR}\t10.9.0.0/16(ro," in etab

    # A Node appears: its address is added to the volume's line (and exportfs re-run); it goes: removed.
    node = f"kernel-node-{unique}"
    core.create_node(client.V1Node(metadata=client.V1ObjectMeta(name=node)))
    try:
        core.patch_node_status(node, {"status": {"addresses": [{"type": "InternalIP", "address": "10.9.8.7"}]}})
        wait.until(lambda: f" 10.9.8.7/32{opts}" in ns.exports.splitlines()[1] and f"{path}\t10.9.8.7/32(" in ns.etab,
                   timeout=30, what=lambda: f"the node's address in /etc/exports and etab\n{ns.exports}\n{a.log()}")
    finally:
        core.delete_node(node)
    wait.until(lambda: "10.9.8.7" not in ns.exports and "10.9.8.7" not in ns.etab, timeout=30,
               what=lambda: f"the node's address gone\n{ns.exports}")
    assert ns.exports.splitlines()[0] == OPERATOR_LINE

    core.delete_namespaced_persistent_volume_claim("nfs", namespace)
    wait.until(lambda: not core.list_persistent_volume(field_selector=f"metadata.name={pv.metadata.name}").items,
               timeout=60, what="PV deleted")
    assert ns.exports.splitlines() == [OPERATOR_LINE]
    assert str(path) not in ns.etab and not path.exists()
    storage.delete_storage_class(cls)
