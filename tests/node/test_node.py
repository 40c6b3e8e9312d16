"""The local cluster's kubelet node is real: the scheduler places pods on it, containerd
runs them with the locally built pause image, they get addresses in the pod CIDR that
exist only inside the node's network namespace, kube-proxy serves ClusterIP Services
there (to the namespace and to pods, the API server's `kubernetes` Service included),
and `hack/cluster down --node` leaves nothing behind.

Every request to a node or pod address runs inside the namespace (Node.ns)."""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from tests.support import kubecluster, wait
from tests.support.kubenode import Node

pytestmark = [pytest.mark.node, pytest.mark.kube]


def _pod(name: str, image: str, args: list[str], *, labels: dict[str, str] | None = None,
         restart: str = "Always") -> client.V1Pod:
    return client.V1Pod(
        metadata=client.V1ObjectMeta(name=name, labels=labels or {}),
        spec=client.V1PodSpec(restart_policy=restart, termination_grace_period_seconds=2, containers=[
            client.V1Container(name="c", image=image, image_pull_policy="Never", args=args)]))


def _ready_pod(core: client.CoreV1Api, namespace: str, name: str, timeout: float = 60) -> client.V1Pod:
    def ready() -> client.V1Pod | None:
        p = core.read_namespaced_pod(name, namespace)
        ok = any(c.type == "Ready" and c.status == "True" for c in p.status.conditions or [])
        return p if ok else None
    return wait.until(ready, timeout=timeout,
                      what=lambda: f"pod {name} Ready: {core.read_namespaced_pod(name, namespace).status}")


def _finished_pod(core: client.CoreV1Api, namespace: str, name: str, timeout: float = 60) -> client.V1Pod:
    def done() -> client.V1Pod | None:
        p = core.read_namespaced_pod(name, namespace)
        return p if p.status.phase in ("Succeeded", "Failed") else None
    return wait.until(done, timeout=timeout, what=f"pod {name} to finish")


def _terminated_message(pod: client.V1Pod) -> str:
    st = pod.status.container_statuses[0].state.terminated
    return str(st.message or "") if st else ""


@pytest.fixture
def web(kube_node: Node, core: client.CoreV1Api, namespace: str) -> Iterator[dict[str, Any]]:
    """A pod serving HTTP (the pause image with -http :8080) and a ClusterIP Service to it."""
    started = time.monotonic()
    core.create_namespaced_pod(namespace, _pod("web", kube_node.pause_image, ["-http", ":8080"],
                                               labels={"app": "web"}))
    pod = _ready_pod(core, namespace, "web")
    ready_s = time.monotonic() - started
    svc = core.create_namespaced_service(namespace, client.V1Service(
        metadata=client.V1ObjectMeta(name="web"),
        spec=client.V1ServiceSpec(selector={"app": "web"},
                                  ports=[client.V1ServicePort(port=80, target_port=8080)])))
    yield {"pod": pod, "ip": pod.status.pod_ip, "ready_s": ready_s, "cluster_ip": svc.spec.cluster_ip}


def test_node_is_ready_with_its_address(kube_node: Node, core: client.CoreV1Api) -> None:
    n = core.read_node(kube_node.name)
    assert {c.type: c.status for c in n.status.conditions}["Ready"] == "True"
    assert {a.type: a.address for a in n.status.addresses}["InternalIP"] == kube_node.ip
    assert n.spec.pod_cidr == kube_node.pod_cidr
    assert n.status.node_info.container_runtime_version.startswith("containerd://2.")
    # the node address is inside the namespace and nowhere on the host
    inside = kube_node.ns(["ip", "-o", "-4", "addr", "show"]).stdout
    host = subprocess.run(["ip", "-o", "-4", "addr", "show"], capture_output=True, text=True, check=True).stdout
    assert f" {kube_node.ip}/" in inside
    assert f" {kube_node.ip}/" not in host
    # and nothing leaves it: the namespace has no default route (a route lookup, no packet sent)
    lookup = kube_node.ns(["ip", "route", "get", "192.0.2.1"])
    assert lookup.returncode != 0 and "unreachable" in lookup.stderr, lookup


def test_pod_gets_an_address_in_the_pod_cidr_reachable_inside_the_namespace(
        kube_node: Node, web: dict[str, Any]) -> None:
    print(f"pod Ready {web['ready_s']:.2f}s after create")
    assert web["pod"].spec.node_name == kube_node.name
    ip = ipaddress.ip_address(web["ip"])
    assert ip in ipaddress.ip_network(kube_node.pod_cidr)
    # (no readiness probe: Ready may come a moment before the server listens)
    body = wait.until(lambda: kube_node.http_get(f"http://{ip}:8080/"), timeout=10, what=f"http://{ip}:8080/")
    assert body.strip() == "web"
    # Only inside: the host has neither the address nor a route of its own to the pod network
    # (checked by reading the host's tables; no packet is sent from the host).
    host_addrs = subprocess.run(["ip", "-o", "-4", "addr", "show"], capture_output=True, text=True).stdout
    assert f" {ip}/" not in host_addrs
    host_routes = subprocess.run(["ip", "-4", "route", "show"], capture_output=True, text=True).stdout
    assert kube_node.pod_cidr not in host_routes and "cni0" not in host_routes
    assert "cni0" in kube_node.ns(["ip", "-4", "route", "show"]).stdout


def test_cluster_ip_service_answers_in_the_namespace_and_to_pods(
        kube_node: Node, web: dict[str, Any], core: client.CoreV1Api, namespace: str) -> None:
    url = f"http://{web['cluster_ip']}/"
    started = time.monotonic()
    body = wait.until(lambda: kube_node.http_get(url), timeout=30, what=f"{url} inside the node namespace")
    print(f"ClusterIP answered {time.monotonic() - started:.2f}s after the Service was created")
    assert body.strip() == "web"
    # From a pod: the same Service, and the API server through the `kubernetes` Service with the
    # pod's service account (what an in-cluster client does).
    core.create_namespaced_pod(namespace, _pod("client", kube_node.pause_image, [
        "-get", url, "-get", "https://10.0.0.1/readyz"], restart="Never"))
    pod = _finished_pod(core, namespace, "client")
    msg = _terminated_message(pod)
    assert pod.status.phase == "Succeeded", msg
    assert f"{url} 200 web" in msg
    assert "https://10.0.0.1/readyz 200 ok" in msg
    # kube-proxy's rules live in the node's namespace, not the host's
    assert "KUBE-SERVICES" in kube_node.ns(["iptables-save", "-t", "nat"]).stdout
    host = subprocess.run(["iptables-save"], capture_output=True, text=True).stdout
    assert "KUBE-" not in host


def test_an_image_imported_from_podman_runs(kube_node: Node, core: client.CoreV1Api, namespace: str,
                                             tmp_path: Path) -> None:
    """Node.import_image: podman save | ctr import, then a pod of it (here the pause image, loaded into
    a private podman store under another name)."""
    run = Path(tempfile.mkdtemp(prefix="nfsp-podman-"))  # podman refuses a runroot of more than 50 chars
    store = ["--root", str(tmp_path / "podman"), "--runroot", str(run)]
    tar = Path(json.loads((kube_node.state_dir / "node" / "node.json").read_text())["pause_tar"])
    ref = "localhost/nfsp-imported:test"
    subprocess.run(["podman", *store, "load", "-i", str(tar)], check=True, capture_output=True, timeout=120)
    subprocess.run(["podman", *store, "tag", kube_node.pause_image, ref], check=True, capture_output=True)
    started = time.monotonic()
    kube_node.import_image(store, ref)
    print(f"podman save | ctr import: {time.monotonic() - started:.2f}s")
    core.create_namespaced_pod(namespace, _pod("imported", ref, ["-http", ":8080"]))
    pod = _ready_pod(core, namespace, "imported")
    url = f"http://{pod.status.pod_ip}:8080/"
    assert wait.until(lambda: kube_node.http_get(url), timeout=10, what=url).strip() == "imported"
    subprocess.run(["podman", *store, "rmi", "-a", "-f"], capture_output=True)
    shutil.rmtree(run, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_down_leaves_nothing_behind_and_up_again(
        kube_node: Node, cluster: kubecluster.Cluster, web: dict[str, Any]) -> None:
    """Last in this module: takes the node down and brings it up again for whoever comes next."""
    record = json.loads((kube_node.state_dir / "node" / "record.json").read_text())
    pids = {n: p for n, p in cluster.pids().items()
            if n in ("kube-scheduler", "nfsp-relay", "containerd", "kubelet", "kube-proxy")}
    assert len(pids) == 5, pids
    pod_pids = set()
    for procs in Path("/sys/fs/cgroup").glob(f"*/{kube_node.netns.name}/**/cgroup.procs"):
        pod_pids.update(int(x) for x in procs.read_text().split())
    assert pod_pids, "a running pod has processes in the node's cgroups"
    shims = set()
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and os.readlink(proc / "exe").endswith("/containerd-shim-runc-v2") and \
                    os.readlink(proc / "cwd").startswith(str(kube_node.state_dir / "node") + "/"):
                shims.add(int(proc.name))
        except OSError:
            continue
    assert shims, "the running pod has a containerd shim"
    changed = {k: v for k, v in record["sysctls"].items()
               if Path("/proc/sys", k).read_text().strip() != v}
    if not changed:  # a node of another run, of the first version, restored them under us
        print("the host's sysctls were restored by someone else while this node ran")
    # kube-proxy left the host-global conntrack settings alone (conntrack maxPerCore/min/timeouts 0)
    assert {p: Path(p).read_text().strip() for p in record["conntrack"]} == record["conntrack"]

    down = cluster.down_node()
    # Host-wide state is restored by the last node down: nodes of other clusters (other test runs
    # on this machine) may be up too.
    others = "left to the last node down" in down.stderr
    assert [n for n, p in pids.items() if _alive(p)] == []
    assert [p for p in pod_pids | shims if _alive(p)] == []
    if others:
        print(f"other nodes up: the host's sysctls and paths are theirs to restore ({down.stderr.strip()})")
    else:
        assert {k: Path("/proc/sys", k).read_text().strip() for k in record["sysctls"]} == record["sysctls"]
        assert [p for p in record["absent"] if os.path.lexists(p)] == []
    assert not kube_node.netns.exists()
    assert list(Path("/sys/fs/cgroup").glob(f"*/{kube_node.netns.name}")) == []
    node_dir = str(kube_node.state_dir / "node")
    assert [ln for ln in Path("/proc/self/mountinfo").read_text().splitlines() if node_dir in ln] == []
    assert cluster.kubectl("get", "node", kube_node.name, check=False).returncode != 0  # deregistered

    started = time.monotonic()
    cluster.up_node()
    print(f"node up again (warm) in {time.monotonic() - started:.2f}s")
    assert Node.load(cluster) == kube_node
