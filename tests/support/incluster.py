"""What the node lane's modules share: the manifests' namespace, pods and their logs, an NFS round trip from the
node's network namespace, and the figures printed with -s."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from kubernetes import client

from tests.support import kubecluster, wait
from tests.support.ganesha_env import Client
from tests.support.kubenode import Node
from tests.support.paths import REPO

DEPLOY = REPO / "deploy" / "kube-config"


NAMESPACE = "nfs-provisioner"


FIGURES: dict[str, float | str] = {}


def figure(name: str, value: float | str) -> None:
    FIGURES[name] = round(value, 2) if isinstance(value, float) else value
    print(f"[in-cluster] {name}: {FIGURES[name]}")


def docs(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((DEPLOY / name).read_text()) if d]


def kubectl_apply(cluster: kubecluster.Cluster, objs: list[dict[str, Any]], *, verb: str = "apply") -> str:
    return cluster.kubectl(verb, "-f", "-", input=yaml.safe_dump_all(objs)).stdout


def namespace_gone(core: client.CoreV1Api, name: str) -> bool:
    try:
        core.read_namespace(name)
    except client.ApiException as e:
        return e.status == 404
    return False


@pytest.fixture
def appliance_ns(cluster: kubecluster.Cluster, core: client.CoreV1Api, image: str) -> Iterator[str]:
    """The manifests' namespace, absent before (another test may be deleting it) and removed after, with
    every pod in it gone and cluster-scoped leftovers (classes, PVs of its provisioner) deleted."""
    wait.until(lambda: namespace_gone(core, NAMESPACE), timeout=180, what=f"namespace {NAMESPACE} gone")
    yield NAMESPACE
    cluster.kubectl("delete", "namespace", NAMESPACE, "--wait=false", check=False)
    wait.until(lambda: namespace_gone(core, NAMESPACE), timeout=180, what=f"namespace {NAMESPACE} gone after")


def pod_ready(core: client.CoreV1Api, namespace: str, name: str) -> client.V1Pod | None:
    try:
        pod = core.read_namespaced_pod(name, namespace)
    except client.ApiException:
        return None
    conds = {c.type: c.status for c in (pod.status.conditions or [])}
    return pod if conds.get("Ready") == "True" else None


def pod_log(node: Node, namespace: str, name: str, *, tail: int = 40) -> str:
    """The last lines of the pod's container logs, read from the kubelet's podLogsDir (the API server cannot
    reach the kubelet: its address exists only inside the node's namespace)."""
    out = []
    for f in sorted((node.state_dir / "node" / "pod-logs").glob(f"{namespace}_{name}_*/*/*.log")):
        lines = f.read_text(errors="replace").splitlines()[-tail:]
        out.append(f"--- {f.parent.name}/{f.name}\n" + "\n".join(lines))
    return "\n".join(out) or f"(no container log for {namespace}/{name})"


def describe_pod(core: client.CoreV1Api, namespace: str, name: str, node: Node) -> str:
    try:
        pod = core.read_namespaced_pod(name, namespace)
    except client.ApiException as e:
        return f"pod {namespace}/{name}: {e.status}"
    events = core.list_namespaced_event(namespace, field_selector=f"involvedObject.name={name}").items
    lines = [f"pod {namespace}/{name} phase={pod.status.phase} statuses={pod.status.container_statuses}"]
    lines += [f"event {e.reason}: {e.message}" for e in events]
    lines.append(pod_log(node, namespace, name))
    return "\n".join(lines)


def wait_ready(core: client.CoreV1Api, namespace: str, name: str, node: Node, timeout: float = 120) -> client.V1Pod:
    return wait.until(lambda: pod_ready(core, namespace, name), timeout=timeout,
                      what=lambda: describe_pod(core, namespace, name, node))


def nfs_roundtrip(node: Node, server: str, path: str, *, version: int = 4, name: str = "roundtrip") -> bytes:
    data = os.urandom(2000)
    nfs = Client(host=server, version=version, netns=node.netns)
    # A Service or host port leads to the pod once kube-proxy or CNI portmap has synced it (a second or so).
    wait.until(lambda: nfs.ls(path).returncode == 0, timeout=30, interval=0.2,
               what=lambda: f"{path} served at {server} (NFSv{version}): {nfs.ls(path)}")
    put = nfs.put(data, f"{path}/{name}")
    assert put.returncode == 0, put.stderr
    got = nfs.cat(f"{path}/{name}")
    assert got.stdout == data, got.stderr
    return data


def only_pod(core: client.CoreV1Api, namespace: str, node: Node, timeout: float = 120) -> client.V1Pod:
    def one_ready() -> client.V1Pod | None:
        pods = [p for p in core.list_namespaced_pod(namespace).items if p.metadata.deletion_timestamp is None]
        return pods[0] if len(pods) == 1 and pod_ready(core, namespace, pods[0].metadata.name) else None

    return wait.until(one_ready, timeout=timeout, what=lambda: "\n".join(
        describe_pod(core, namespace, p.metadata.name, node) for p in core.list_namespaced_pod(namespace).items))
