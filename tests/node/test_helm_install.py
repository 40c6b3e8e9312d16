"""`helm install` of deploy/helm/nfs-provisioner on the local cluster's kubelet node, as a user does it: the
pod Ready, a claim of the chart's StorageClass Bound, a file written and read over NFS from the node's
network namespace (through the Service's ClusterIP, as the kubelet mounts it); `helm upgrade` of a flag rolls
the pod and the volume is served again; `helm uninstall` removes every object the chart made and leaves
the data on the export root (a Retain local PV under the test's directory).

Every request to a pod or Service address runs inside the node's network namespace (ganesha_env.Client
with netns=...): those addresses exist nowhere else."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from tests.support import kubecluster, wait
from tests.support.ganesha_env import Client
from tests.support.helm_env import CHART, Helm
from tests.support.helm_node import (
    RELEASE,
    bound,
    claim,
    exists,
    local_pv,
    manifest_objects,
    uninstall_removes_everything,
)
from tests.support.incluster import describe_pod, figure, nfs_roundtrip, pod_ready
from tests.support.kubenode import Node

pytestmark = [pytest.mark.node, pytest.mark.kube, pytest.mark.container, pytest.mark.ganesha, pytest.mark.helm]

FULLNAME = f"{RELEASE}-nfs-provisioner"
POD = f"{FULLNAME}-0"


def test_install_upgrade_uninstall_on_the_node(cluster: kubecluster.Cluster, core: client.CoreV1Api,
                                               kube_node: Node, image: str, namespace: str,
                                               tmp_path: Path) -> None:
    node = kube_node
    helm = Helm(tmp_path / "helm-home", kubeconfig=cluster.kubeconfig)
    # The release namespace must allow DAC_READ_SEARCH (docs/helm.md): Pod Security level privileged.
    cluster.kubectl("label", "namespace", namespace, "pod-security.kubernetes.io/enforce=privileged")
    disk = tmp_path / "disk"
    disk.mkdir()
    export_pv = f"export-{uuid.uuid4().hex[:8]}"
    export_claim = f"export-volume-{POD}"
    klass = f"helm-{uuid.uuid4().hex[:8]}"
    cluster.kubectl("apply", "-f", "-", input=json.dumps(local_pv(export_pv, disk, node, namespace, export_claim)))
    values = tmp_path / "values.json"
    # A short grace period: the upgrade restarts the server with the node's NFS client recorded (90 s by default).
    values.write_text(json.dumps({"gracePeriod": 10, "persistence": {"storageClass": "-"},
                                  "storageClass": {"name": klass}}))
    kept_pvs: list[str] = []
    try:
        # A wrong value is refused at install, with the value and its range, and nothing is installed.
        wrong = helm("install", RELEASE, str(CHART), "-n", namespace, "-f", str(values), "--set", "gracePeriod=500",
                     check=False)
        assert wrong.returncode != 0 and "at '/gracePeriod': maximum: got 500, want 180" in wrong.stderr, wrong.stderr
        assert helm("list", "-n", namespace, "-a", "-q").stdout.strip() == ""
        assert not core.list_namespaced_service_account(namespace, label_selector="app.kubernetes.io/instance="
                                                        + RELEASE).items
        started = time.monotonic()
        out = helm("install", RELEASE, str(CHART), "-n", namespace, "-f", str(values), "--wait", "--timeout", "180s",
                   check=False)
        assert out.returncode == 0, out.stderr + "\n" + describe_pod(core, namespace, POD, node)
        figure("helm install --wait to the StatefulSet Ready (s)", time.monotonic() - started)
        assert f"storageClassName: {klass}" in out.stdout and "pod-security.kubernetes.io/enforce=privileged" \
            in out.stdout, out.stdout  # NOTES.txt: how to make a claim, what the namespace needs
        first = pod_ready(core, namespace, POD)
        assert first is not None and first.spec.node_name == node.name
        identity = (disk / "nfs-provisioner.identity").read_text()
        svc = core.read_namespaced_service(FULLNAME, namespace)

        made = time.monotonic()
        cluster.kubectl("apply", "-f", "-", input=json.dumps(claim("nfs", namespace, klass)))
        pv = bound(core, namespace, "nfs")
        figure("claim of the chart's class Bound after create (s)", time.monotonic() - made)
        kept_pvs.append(pv.metadata.name)
        assert pv.spec.nfs.server == svc.spec.cluster_ip and pv.spec.mount_options == ["vers=4.1"]
        assert pv.spec.nfs.path == f"/export/{pv.metadata.name}"
        data = nfs_roundtrip(node, svc.spec.cluster_ip, pv.spec.nfs.path, name="before")
        assert (disk / pv.metadata.name / "before").read_bytes() == data

        # helm upgrade changing one flag rolls the pod; the volume is served again through the same PV.
        upgraded = time.monotonic()
        helm("upgrade", RELEASE, str(CHART), "-n", namespace, "--reuse-values", "--set", "gracePeriod=5",
             "--wait", "--timeout", "180s")
        second = wait.until(lambda: (p := pod_ready(core, namespace, POD)) and p.metadata.uid != first.metadata.uid
                            and p, timeout=120, what=lambda: describe_pod(core, namespace, POD, node))
        assert "--grace-period=5" in second.spec.containers[0].args
        assert "--grace-period=10" in first.spec.containers[0].args
        assert (disk / "nfs-provisioner.identity").read_text() == identity
        nfs = Client(host=svc.spec.cluster_ip, version=4, netns=node.netns)
        got = wait.until(lambda: nfs.cat(f"{pv.spec.nfs.path}/before").stdout or None, timeout=60, interval=0.5,
                         what=lambda: f"the file written before the upgrade, read after: {nfs.cat(pv.spec.nfs.path)}")
        figure("helm upgrade (gracePeriod 10 -> 5) to the file read again (s)", time.monotonic() - upgraded)
        assert got == data
        cluster.kubectl("apply", "-f", "-", input=json.dumps(claim("after-upgrade", namespace, klass)))
        after = bound(core, namespace, "after-upgrade")
        nfs_roundtrip(node, svc.spec.cluster_ip, after.spec.nfs.path)
        # Deleting a claim still removes its volume (the class's reclaimPolicy Delete, onDelete delete).
        core.delete_namespaced_persistent_volume_claim("after-upgrade", namespace)
        wait.until(lambda: not (disk / after.metadata.name).exists(), timeout=60, what="the deleted volume removed")

        # helm uninstall: every object of the release gone; the export root's claim (the StatefulSet
        # controller's, not the chart's) and its Retain PV keep the identity and the data.
        objects = manifest_objects(helm, namespace)
        assert {k for k, _, _ in objects} == {"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role",
                                              "RoleBinding", "StorageClass", "Service", "StatefulSet"}
        helm("uninstall", RELEASE, "-n", namespace, "--wait", "--timeout", "120s")
        left = [o for o in objects if exists(cluster, *o)]
        assert left == [], left
        wait.until(lambda: not core.list_namespaced_pod(namespace, label_selector=f"app.kubernetes.io/instance="
                                                                                  f"{RELEASE}").items,
                   timeout=90, what="the release's pods gone")
        assert helm("list", "-n", namespace, "-q").stdout.strip() == ""
        assert core.read_namespaced_persistent_volume_claim(export_claim, namespace).status.phase == "Bound"
        assert (disk / "nfs-provisioner.identity").read_text() == identity
        assert (disk / pv.metadata.name / "before").read_bytes() == data
    finally:
        helm("uninstall", RELEASE, "-n", namespace, "--wait", check=False)
        cluster.kubectl("delete", "pvc", "--all", "-n", namespace, "--wait=false", check=False)
        for name in kept_pvs:  # provisioned volumes whose provisioner is gone: only the finalizer holds them
            cluster.kubectl("patch", "pv", name, "--type=merge", "-p", '{"metadata":{"finalizers":null}}', check=False)
            cluster.kubectl("delete", "pv", name, "--wait=false", check=False)
        cluster.kubectl("delete", "pv", export_pv, "--wait=false", check=False)
        cluster.kubectl("delete", "storageclass", klass, "--ignore-not-found", check=False)


def install(helm: Helm, release: str, namespace: str, values: dict[str, Any], tmp_path: Path) -> float:
    """helm install --wait with these values; the seconds it took."""
    f = tmp_path / f"{release}-values.json"
    f.write_text(json.dumps(values))
    started = time.monotonic()
    helm("install", release, str(CHART), "-n", namespace, "-f", str(f), "--wait", "--timeout", "180s")
    return time.monotonic() - started


def test_daemonset_on_a_host_path_serves_on_the_node_s_ports(cluster: kubecluster.Cluster, core: client.CoreV1Api,
                                                            kube_node: Node, image: str, namespace: str,
                                                            tmp_path: Path) -> None:
    node = kube_node
    helm = Helm(tmp_path / "helm-home", kubeconfig=cluster.kubeconfig)
    cluster.kubectl("label", "namespace", namespace, "pod-security.kubernetes.io/enforce=privileged")
    cluster.kubectl("label", "node", node.name, "nfs-provisioner/server=true", "--overwrite")
    root = tmp_path / "root"
    klass = f"helm-ds-{uuid.uuid4().hex[:8]}"
    pvs: list[str] = []
    try:
        took = install(helm, "nfsd", namespace, {
            "kind": "DaemonSet", "persistence": {"enabled": False}, "hostPath": {"path": str(root)},
            "nodeSelector": {"nfs-provisioner/server": "true"}, "storageClass": {"name": klass}}, tmp_path)
        figure("DaemonSet: helm install --wait to Ready (s)", took)
        cluster.kubectl("apply", "-f", "-", input=json.dumps(claim("nfs", namespace, klass)))
        pv = bound(core, namespace, "nfs")
        pvs.append(pv.metadata.name)
        # NODE_NAME mode: the PV names the node; clients reach it on the node's address, host ports.
        assert pv.spec.nfs.server == node.name
        data = nfs_roundtrip(node, node.ip, pv.spec.nfs.path, version=4)
        nfs_roundtrip(node, node.ip, pv.spec.nfs.path, version=3, name="v3")
        uninstall_removes_everything(helm, cluster, core, "nfsd", namespace)
        # The node directory keeps the identity and the volume's data.
        assert (root / "nfs-provisioner.identity").exists()
        assert (root / pv.metadata.name / "roundtrip").read_bytes() == data
    finally:
        helm("uninstall", "nfsd", "-n", namespace, "--wait", check=False)
        cluster.kubectl("label", "node", node.name, "nfs-provisioner/server-", check=False)
        cluster.kubectl("delete", "pvc", "--all", "-n", namespace, "--wait=false", check=False)
        for name in pvs:
            cluster.kubectl("patch", "pv", name, "--type=merge", "-p", '{"metadata":{"finalizers":null}}', check=False)
            cluster.kubectl("delete", "pv", name, "--wait=false", check=False)
        cluster.kubectl("delete", "storageclass", klass, "--ignore-not-found", check=False)


def test_two_replicas_with_leader_election_one_provisions(cluster: kubecluster.Cluster, core: client.CoreV1Api,
                                                          api_client: client.ApiClient, kube_node: Node,
                                                          image: str, namespace: str, tmp_path: Path) -> None:
    node = kube_node
    helm = Helm(tmp_path / "helm-home", kubeconfig=cluster.kubeconfig)
    cluster.kubectl("label", "namespace", namespace, "pod-security.kubernetes.io/enforce=privileged")
    klass = f"helm-le-{uuid.uuid4().hex[:8]}"
    try:
        took = install(helm, "nfsr", namespace, {
            "replicas": 2, "leaderElect": True, "persistence": {"enabled": False}, "gracePeriod": 0,
            "storageClass": {"name": klass, "reclaimPolicy": "Delete"}}, tmp_path)
        figure("two replicas: helm install --wait to both Ready (s)", took)
        pods = {p.metadata.name: p.status.pod_ip for p in core.list_namespaced_pod(namespace).items}
        assert sorted(pods) == ["nfsr-nfs-provisioner-0", "nfsr-nfs-provisioner-1"], pods
        lease = f"nfsr.{namespace}.nfs-provisioner.local-nfs"  # the provisioner name with / -> -
        coordination = client.CoordinationV1Api(api_client)
        holder = wait.until(lambda: coordination.read_namespaced_lease(lease, namespace).spec.holder_identity,
                            timeout=60, what=f"a holder of the Lease {lease}")
        cluster.kubectl("apply", "-f", "-", input=json.dumps(claim("nfs", namespace, klass)))
        pv = bound(core, namespace, "nfs")
        (leader,) = [n for n, ip in pods.items() if ip == pv.spec.nfs.server]
        assert holder.startswith(f"{leader}_"), (holder, leader)
        nfs_roundtrip(node, pv.spec.nfs.server, pv.spec.nfs.path)
        core.delete_namespaced_persistent_volume_claim("nfs", namespace)
        wait.until(lambda: not [v for v in core.list_persistent_volume().items if v.metadata.name == pv.metadata.name],
                   timeout=60, what="the PV deleted")
        uninstall_removes_everything(helm, cluster, core, "nfsr", namespace)
    finally:
        helm("uninstall", "nfsr", "-n", namespace, "--wait", check=False)
        cluster.kubectl("delete", "storageclass", klass, "--ignore-not-found", check=False)
