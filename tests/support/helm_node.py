"""The chart on the kubelet node, as the node lane's modules use it: local PVs on the node, claims of the chart's
class, what an install made and that an uninstall removed it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from kubernetes import client

from tests.support import kubecluster, wait
from tests.support.helm_env import Helm
from tests.support.kubenode import Node

RELEASE = "nfsp"


def local_pv(name: str, path: Path, node: Node, claim_namespace: str, claim: str) -> dict[str, Any]:
    """A Retain local PV on the node, bound ahead to the StatefulSet's export-root claim."""
    return {"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": name},
            "spec": {"capacity": {"storage": "10Gi"}, "accessModes": ["ReadWriteOnce"],
                     "persistentVolumeReclaimPolicy": "Retain", "storageClassName": "",
                     "claimRef": {"namespace": claim_namespace, "name": claim},
                     "local": {"path": str(path)},
                     "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                         {"key": "kubernetes.io/hostname", "operator": "In", "values": [node.name]}]}]}}}}


def claim(name: str, namespace: str, storage_class: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": name, "namespace": namespace},
            "spec": {"storageClassName": storage_class, "accessModes": ["ReadWriteMany"],
                     "resources": {"requests": {"storage": "1Mi"}}}}


def bound(core: client.CoreV1Api, namespace: str, name: str) -> client.V1PersistentVolume:
    def volume() -> str | None:
        c = core.read_namespaced_persistent_volume_claim(name, namespace)
        return c.spec.volume_name if c.status.phase == "Bound" else None

    return core.read_persistent_volume(wait.until(volume, timeout=60, what=f"claim {name} Bound"))


def manifest_objects(helm: Helm, namespace: str, release: str = RELEASE) -> list[tuple[str, str, str | None]]:
    """(kind, name, namespace or None) of every object of the release, from `helm get manifest`."""
    docs = [d for d in yaml.safe_load_all(helm("get", "manifest", release, "-n", namespace).stdout) if d]
    cluster_scoped = {"ClusterRole", "ClusterRoleBinding", "StorageClass"}
    return [(d["kind"], d["metadata"]["name"], None if d["kind"] in cluster_scoped else namespace) for d in docs]


def exists(cluster: kubecluster.Cluster, kind: str, name: str, namespace: str | None) -> bool:
    args = ["get", f"{kind.lower()}/{name}", "-o", "name", "--ignore-not-found"]
    out = cluster.kubectl(*args, *(["-n", namespace] if namespace else [])).stdout
    return bool(out.strip())


def uninstall_removes_everything(helm: Helm, cluster: kubecluster.Cluster, core: client.CoreV1Api, release: str,
                                 namespace: str) -> None:
    objects = manifest_objects(helm, namespace, release)
    helm("uninstall", release, "-n", namespace, "--wait", "--timeout", "120s")
    assert [o for o in objects if exists(cluster, *o)] == []
    wait.until(lambda: not core.list_namespaced_pod(namespace, label_selector=f"app.kubernetes.io/instance={release}")
               .items, timeout=90, what=f"the pods of {release} gone")
