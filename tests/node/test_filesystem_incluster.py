"""Filesystem volumes (`isolation: filesystem`) where users run them: in a pod on the local cluster's kubelet node
(containerd 2.x), from deploy/kube-config/statefulset-isolated.yaml and from the Helm chart with
`isolation=filesystem`. The pod is privileged: its container gets the node's loop devices from containerd, and
makes the ones it adds itself (containerd copies /dev at the container's start; later devices are made from
sysfs). Each check goes over NFS from the node's network namespace: a claim of the class Bound, data written and
read, the size in FSSTAT (what `df` shows), a WRITE past the size answered NFS3ERR_NOSPC, and the pod deleted,
recreated by its controller, the volume mounted again and read with a file handle from before. The shipped
pod.yaml (not privileged) refuses a claim of such a class with one ProvisioningFailed event naming what it lacks.

Data goes over NFSv3 before a restart: NFSv4.0 clients (libnfs) are recorded, and each would hold the next
start's grace period for its whole length (docs/appliance.md, "Availability"). Figures are printed with -s."""

from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from nfs_provisioner.volumes import loops
from tests.support import kubecluster, nfsraw, wait
from tests.support.ganesha_env import Client
from tests.support.helm_env import CHART, Helm
from tests.support.helm_node import claim as helm_claim
from tests.support.helm_node import local_pv
from tests.support.incluster import (
    NAMESPACE,
    appliance_ns,
    describe_pod,
    docs,
    figure,
    kubectl_apply,
    nfs_roundtrip,
    only_pod,
    pod_log,
    wait_ready,
)
from tests.support.kubenode import Node
from tests.support.paths import REPO

pytestmark = [pytest.mark.node, pytest.mark.kube, pytest.mark.container, pytest.mark.ganesha]
__all__ = ["appliance_ns"]  # the fixture: the manifests' namespace, absent before and removed after

MiB = 2**20
MOUNTD_PORT = 20048
CHUNK = 256 * 1024


def bound(core: client.CoreV1Api, namespace: str, name: str, started: float, label: str) -> client.V1PersistentVolume:
    def volume() -> str | None:
        c = core.read_namespaced_persistent_volume_claim(name, namespace)
        return c.spec.volume_name if c.status.phase == "Bound" else None

    def why() -> str:
        events = core.list_namespaced_event(namespace, field_selector=f"involvedObject.name={name}").items
        return f"claim {name} Bound: " + "; ".join(f"{e.reason}: {e.message}" for e in events)

    pv_name = wait.until(volume, timeout=60, what=why)
    figure(f"{label}: claim Bound after create (s)", time.monotonic() - started)
    return core.read_persistent_volume(pv_name)


def image_attachments(image: str) -> list[Path]:
    """The loop devices the host's kernel has attached to ``image`` (the path as the container sees it)."""
    return loops.attachments().get(image, [])


def in_host_mount_table(device: Path) -> bool:
    major_minor = f"{os.major(device.stat().st_rdev)}:{os.minor(device.stat().st_rdev)}"
    return any(line.split()[2] == major_minor for line in Path("/proc/self/mountinfo").read_text().splitlines())


class Served:
    """A filesystem volume served by a pod, seen by the raw NFSv3 client from the node's network namespace."""

    def __init__(self, node: Node, server: str, pv: client.V1PersistentVolume, export_root: Path) -> None:
        self.node, self.server, self.pv, self.export_root = node, server, pv, export_root
        self.path = pv.spec.nfs.path
        self.size = int(pv.spec.capacity["storage"].removesuffix("Mi")) * MiB
        self.image = f"/export/.images/{pv.metadata.name}.img"  # inside the container

    def root_fh(self) -> bytes:
        with nfsraw.Mount3(host=self.server, port=MOUNTD_PORT, netns=self.node.netns) as m:
            r = m.mnt(self.path)
        assert r.status == 0, f"MNT {self.path}: {r.status}"
        return r.fh

    def check(self) -> tuple[bytes, bytes]:
        """Everything a filesystem volume promises, once it is served; the handle and data of a file on it."""
        assert self.path == f"/export/.filesystems/{self.pv.metadata.name}", self.path
        annotations = self.pv.metadata.annotations
        assert annotations["nfs-provisioner.io/isolation"] == "filesystem", annotations
        data = nfs_roundtrip(self.node, self.server, self.path, version=3, name="before")

        # The image lies on the export root on the node's disk (sparse), attached to a loop device of the
        # host's kernel that containerd gave the container (or that the appliance made in its /dev); its mount
        # lives only in the container's mount namespace.
        image = self.export_root / ".images" / f"{self.pv.metadata.name}.img"
        assert image.stat().st_size >= self.size and image.stat().st_blocks * 512 < self.size
        (device,) = image_attachments(self.image)
        assert not in_host_mount_table(device), f"{device} is mounted in the host's mount namespace"

        root = self.root_fh()
        with nfsraw.Nfs3(host=self.server, netns=self.node.netns) as c:
            before = c.lookup(root, "before")
            assert before.status == 0
            # df over NFS: the volume's own filesystem, the claim's size less its metadata (ext4: ~89 % at 16Mi).
            space = c.fsstat(root).space
            assert 0.85 * self.size < space["tbytes"] <= self.size, (space, self.size)
            figure(f"FSSTAT of a {self.size // MiB}Mi claim: tbytes / abytes (MiB)",
                   f"{space['tbytes'] / MiB:.1f} / {space['abytes'] / MiB:.1f}")
            # Writes stop at the size, with the error saying why.
            fill = c.create(root, "fill")
            assert fill.status == 0
            written, r = 0, nfsraw.Reply3(status=0)
            chunk = b"\xa5" * CHUNK
            while written <= 2 * self.size:
                r = c.write(fill.fh, chunk, offset=written)
                if r.status != 0:
                    break
                written += r.count
            assert r.status in (nfsraw.NFS3ERR_NOSPC, nfsraw.NFS3ERR_DQUOT), f"WRITE at {written}: {r.status}"
            assert 0.9 * space["abytes"] <= written <= self.size, (written, space)
            figure(f"bytes written before NFS3ERR_NOSPC, {self.size // MiB}Mi claim (MiB)", written / MiB)
            assert c.fsstat(root).space["abytes"] < CHUNK
        return before.fh, data

    def read(self, fh: bytes) -> bytes | None:
        """The file's data by its handle (None while the server is not there)."""
        with nfsraw.Nfs3(host=self.server, netns=self.node.netns) as c:
            r = c.read(fh)
        return r.data if r.status == 0 else None


def restart(core: client.CoreV1Api, node: Node, namespace: str, pod: str, served: Served, fh: bytes,
            data: bytes, label: str) -> None:
    """Delete the pod; its controller recreates it, which mounts the volume again: the file is read with the
    handle from before (the same loop device number: the same filesystem id in the handle), and over NFSv4."""
    first = core.read_namespaced_pod(pod, namespace)
    deleted = time.monotonic()
    core.delete_namespaced_pod(pod, namespace)
    wait.until(lambda: core.read_namespaced_pod(pod, namespace).metadata.uid != first.metadata.uid, timeout=120,
               what=f"{pod} recreated")
    again = wait_ready(core, namespace, pod, node, timeout=180)
    figure(f"{label}: pod deleted to recreated and Ready (s)", time.monotonic() - deleted)
    got = wait.until(lambda: served.read(fh), timeout=60, interval=0.2,
                     what=lambda: f"the file read by its old handle\n{describe_pod(core, namespace, pod, node)}")
    figure(f"{label}: pod deleted to the file read again by its old handle (s)", time.monotonic() - deleted)
    assert got == data
    status = again.status.container_statuses[0]
    assert status.restart_count == 0, (f"the recreated pod's container restarted ({status.last_state}):\n"
                                       f"{pod_log(node, namespace, pod, tail=80)}")
    assert image_attachments(served.image), "the image is not attached again"
    v4 = Client(host=served.server, version=4, netns=node.netns)
    assert v4.cat(f"{served.path}/before").stdout == data


def delete_claim(core: client.CoreV1Api, namespace: str, name: str, served: Served) -> None:
    core.delete_namespaced_persistent_volume_claim(name, namespace)
    image = served.export_root / ".images" / f"{served.pv.metadata.name}.img"
    wait.until(lambda: not image.exists() and not image_attachments(served.image), timeout=60,
               what="the image removed and its loop device detached")
    wait.until(lambda: not core.list_persistent_volume(field_selector=f"metadata.name={served.pv.metadata.name}")
               .items, timeout=60, what="the PV deleted")


def remove_cluster_rbac(cluster: kubecluster.Cluster) -> None:
    """The ClusterRole and ClusterRoleBinding of rbac.yaml (and pod.yaml): deleting the namespace leaves them, and
    the next `kubectl create -f pod.yaml` (tests/node/test_incluster.py) would find them."""
    for obj in docs("rbac.yaml"):
        if obj["kind"].startswith("Cluster"):
            cluster.kubectl("delete", obj["kind"].lower(), obj["metadata"]["name"], "--ignore-not-found", check=False)


def test_statefulset_isolated_yaml_serves_filesystem_volumes_from_a_privileged_pod(
        cluster: kubecluster.Cluster, core: client.CoreV1Api, storage: client.StorageV1Api, kube_node: Node,
        appliance_ns: str, namespace: str, tmp_path: Path) -> None:
    node = kube_node
    disk = tmp_path / "disk"
    disk.mkdir()
    pv_name = f"export-{uuid.uuid4().hex[:8]}"
    export_pv = local_pv(pv_name, disk, node, NAMESPACE, "export-volume-nfs-provisioner-0")
    objs = docs("namespace.yaml") + docs("rbac.yaml") + docs("statefulset-isolated.yaml")
    (klass,) = [o for o in objs if o["kind"] == "StorageClass"]
    remove_cluster_rbac(cluster)  # leftovers of an earlier test (tests/node/test_incluster.py leaves them)
    try:
        started = time.monotonic()
        kubectl_apply(cluster, [export_pv, *objs])
        pod = only_pod(core, appliance_ns, node, timeout=180)
        figure("statefulset-isolated.yaml: pod Ready after apply (s)", time.monotonic() - started)
        assert pod.spec.containers[0].security_context.privileged is True
        assert "filesystem volumes (ext4): supported" in pod_log(node, appliance_ns, pod.metadata.name, tail=400)
        svc = core.read_namespaced_service("nfs-provisioner", appliance_ns)

        claim = docs("claim-isolated.yaml")[0]
        claim["metadata"]["namespace"] = namespace
        made = time.monotonic()
        kubectl_apply(cluster, [claim])
        pv = bound(core, namespace, "nfs-isolated", made, "statefulset-isolated.yaml")
        assert pv.spec.nfs.server == svc.spec.cluster_ip and pv.spec.capacity == {"storage": "64Mi"}
        served = Served(node, svc.spec.cluster_ip, pv, disk)
        fh, data = served.check()
        restart(core, node, appliance_ns, pod.metadata.name, served, fh, data, "statefulset-isolated.yaml")
        delete_claim(core, namespace, "nfs-isolated", served)
    finally:
        cluster.kubectl("delete", "storageclass", klass["metadata"]["name"], "--ignore-not-found", check=False)
        cluster.kubectl("delete", "statefulset", "nfs-provisioner", "-n", appliance_ns, "--wait=true", check=False)
        cluster.kubectl("delete", "pvc", "--all", "-n", appliance_ns, "--wait=false", check=False)
        cluster.kubectl("delete", "pv", pv_name, "--wait=false", check=False)
        remove_cluster_rbac(cluster)


@pytest.mark.helm
def test_helm_isolation_filesystem_serves_filesystem_volumes_from_a_privileged_pod(
        cluster: kubecluster.Cluster, core: client.CoreV1Api, kube_node: Node, image: str, namespace: str,
        tmp_path: Path) -> None:
    node = kube_node
    helm = Helm(tmp_path / "helm-home", kubeconfig=cluster.kubeconfig)
    cluster.kubectl("label", "namespace", namespace, "pod-security.kubernetes.io/enforce=privileged")
    release, disk = "nfsfs", tmp_path / "disk"
    pod = f"{release}-nfs-provisioner-0"
    disk.mkdir()
    export_pv = f"export-{uuid.uuid4().hex[:8]}"
    klass = f"helm-fs-{uuid.uuid4().hex[:8]}"
    cluster.kubectl("apply", "-f", "-", input=json.dumps(local_pv(export_pv, disk, node, namespace,
                                                                  f"export-volume-{pod}")))
    values = tmp_path / "values.json"
    values.write_text(json.dumps({"isolation": "filesystem", "persistence": {"storageClass": "-"},
                                  "storageClass": {"name": klass}}))
    provisioned: list[str] = []
    try:
        started = time.monotonic()
        out = helm("install", release, str(CHART), "-n", namespace, "-f", str(values), "--wait", "--timeout", "180s",
                   check=False)
        assert out.returncode == 0, out.stderr + "\n" + describe_pod(core, namespace, pod, node)
        figure("helm isolation=filesystem: install --wait to Ready (s)", time.monotonic() - started)
        assert "The pod is privileged (isolation: filesystem" in out.stdout, out.stdout
        svc = core.read_namespaced_service(f"{release}-nfs-provisioner", namespace)
        claim: dict[str, Any] = helm_claim("fs", namespace, klass)
        claim["spec"]["resources"]["requests"]["storage"] = "16Mi"
        made = time.monotonic()
        cluster.kubectl("apply", "-f", "-", input=json.dumps(claim))
        pv = bound(core, namespace, "fs", made, "helm isolation=filesystem")
        provisioned.append(pv.metadata.name)
        assert pv.spec.nfs.server == svc.spec.cluster_ip
        served = Served(node, svc.spec.cluster_ip, pv, disk)
        fh, data = served.check()
        restart(core, node, namespace, pod, served, fh, data, "helm isolation=filesystem")
        delete_claim(core, namespace, "fs", served)
    finally:
        helm("uninstall", release, "-n", namespace, "--wait", check=False)
        cluster.kubectl("delete", "pvc", "--all", "-n", namespace, "--wait=false", check=False)
        for name in provisioned:
            cluster.kubectl("patch", "pv", name, "--type=merge", "-p", '{"metadata":{"finalizers":null}}', check=False)
            cluster.kubectl("delete", "pv", name, "--wait=false", check=False)
        cluster.kubectl("delete", "pv", export_pv, "--wait=false", check=False)
        cluster.kubectl("delete", "storageclass", klass, "--ignore-not-found", check=False)


def test_pod_yaml_without_privileges_refuses_a_filesystem_claim_with_one_clear_event(
        cluster: kubecluster.Cluster, core: client.CoreV1Api, storage: client.StorageV1Api, kube_node: Node,
        appliance_ns: str, namespace: str) -> None:
    """The quick start's pod (not privileged: containerd gives it no loop device) and the isolated class: the
    claim stays Pending with a ProvisioningFailed event saying what is missing, and no directory is made instead."""
    node = kube_node
    (klass,) = [d for d in docs("statefulset-isolated.yaml") if d["kind"] == "StorageClass"]
    remove_cluster_rbac(cluster)  # tests/node/test_incluster.py leaves them, and `kubectl create` would find them
    try:
        cluster.kubectl("create", "-f", str(REPO / "deploy" / "kube-config"
                                            / "pod.yaml"))
        pod = wait_ready(core, appliance_ns, "nfs-provisioner", node)
        assert "filesystem volumes (ext4): not possible here: /dev/loop-control is missing" \
            in pod_log(node, appliance_ns, "nfs-provisioner", tail=400)
        claim = docs("claim-isolated.yaml")[0]
        claim["metadata"]["namespace"] = namespace
        kubectl_apply(cluster, [klass, claim])

        def failed() -> list[str]:
            return [e.message for e in core.list_namespaced_event(
                namespace, field_selector="involvedObject.name=nfs-isolated").items if e.reason == "ProvisioningFailed"]

        messages = wait.until(failed, timeout=60, what="a ProvisioningFailed event")
        want = ("StorageClass example-nfs-isolated asks for isolation: filesystem (ext4), which this appliance cannot "
                "provide: /dev/loop-control is missing: filesystem volumes need loop devices")
        assert all(want in m and len(m.splitlines()) == 1 for m in messages), messages
        figure("pod.yaml: the event", messages[0])
        assert core.read_namespaced_persistent_volume_claim("nfs-isolated", namespace).status.phase == "Pending"
        # This claim's PVs only: an earlier test's failure can leave a Released PV of the class behind.
        assert not [p for p in core.list_persistent_volume().items
                    if p.spec.storage_class_name == "example-nfs-isolated"
                    and p.spec.claim_ref is not None and p.spec.claim_ref.namespace == namespace]
        # Nothing in the pod's export root (its emptyDir on the node) but the appliance's own state.
        empty_dir = (node.state_dir / "node" / "kubelet" / "pods" / pod.metadata.uid / "volumes"
                     / "kubernetes.io~empty-dir" / "export-volume")
        assert empty_dir.is_dir() and not list(empty_dir.glob("pvc-*")), sorted(os.listdir(empty_dir))
        assert not list((empty_dir / ".images").iterdir())
    finally:
        cluster.kubectl("delete", "storageclass", klass["metadata"]["name"], "--ignore-not-found", check=False)
        remove_cluster_rbac(cluster)
