"""Who may mount: by default only the cluster's Nodes (kubelets mount from their node).

Node objects are created through the real API server (no kubelet here: the status addresses are set with a
status patch); the client is the real libnfs on 127.0.0.1 against the appliance's real Ganesha, so
"refused" is Ganesha's own access check, not a file we read back."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from kubernetes import client

from tests.support import wait
from tests.support.appliance_env import Appliance
from tests.support.builders import NFS41, make_claim, make_class
from tests.support.node_clients import CONTENT, Nodes, cluster_nodes, export_clients, readable

__all__ = ["cluster_nodes"]  # the fixture (tests/support/node_clients.py)


def bound_volume(a: Appliance, core: client.CoreV1Api, storage: client.StorageV1Api, namespace: str,
                 unique: str) -> Path:
    """A claim of a fresh class, Bound; returns its volume directory (holding a file)."""
    cls = f"nodes-{unique}"
    make_class(cls, a.provisioner, mount_options=NFS41, api=storage)
    make_claim(namespace, "nfs", cls, api=core)
    wait.until(lambda: core.read_namespaced_persistent_volume_claim("nfs", namespace).status.phase == "Bound",
               timeout=60, what=lambda: f"claim Bound\n{a.log()}")
    pv = core.read_namespaced_persistent_volume_claim("nfs", namespace).spec.volume_name
    vol = a.export_root / pv
    (vol / "f").write_bytes(CONTENT)
    return vol


def until_access(a: Appliance, vol: Path, allowed: bool, *, since: float) -> float:
    """Wait until the libnfs client on 127.0.0.1 is let in (or refused); the seconds it took."""
    wait.until(lambda: readable(a, vol) == allowed, timeout=30,
               what=lambda: f"127.0.0.1 {'allowed' if allowed else 'refused'}; clients {export_clients(a, vol)}"
                            f"\n{a.log()}")
    return time.monotonic() - since


@pytest.mark.e2e
@pytest.mark.kube
@pytest.mark.ganesha
def test_only_nodes_may_mount_and_node_changes_reach_live_exports(
        appliance: Appliance, cluster_nodes: Nodes, core: client.CoreV1Api, storage: client.StorageV1Api,
        namespace: str, unique: str) -> None:
    node = cluster_nodes.add("kubelet", "127.0.0.1")
    appliance.extra.append("--export-subnet=nodes")
    appliance.start()
    vol = bound_volume(appliance, core, storage, namespace, unique)
    assert "127.0.0.1/32" in export_clients(appliance, vol)
    assert readable(appliance, vol), "the node's own address may mount"

    # The node's address changes: the live export follows, and 127.0.0.1 is refused by Ganesha.
    t0 = time.monotonic()
    cluster_nodes.set(node, "127.0.0.2")
    took = until_access(appliance, vol, False, since=t0)
    assert "127.0.0.1/32" not in export_clients(appliance, vol) and "127.0.0.2/32" in export_clients(appliance, vol)
    print(f"address change -> refused in {took:.2f}s")

    # Another node with 127.0.0.1 joins: let in again; it is deleted: refused again.
    t0 = time.monotonic()
    other = cluster_nodes.add("joiner", "127.0.0.1")
    print(f"node added -> allowed in {until_access(appliance, vol, True, since=t0):.2f}s")
    t0 = time.monotonic()
    cluster_nodes.remove(other)
    print(f"node removed -> refused in {until_access(appliance, vol, False, since=t0):.2f}s")
    def changes() -> int:  # logged once a new list is applied: after the files and every UpdateExport
        return appliance.log_file.read_text().count("NFS clients changed")
    wait.until(lambda: changes() >= 3, timeout=30, what="the three changes logged")
    log = appliance.log_file.read_text()
    assert "who may mount: the cluster's nodes (--export-subnet)" in log

    # A burst of 20 nodes joining is applied in a few batches (debounced), not 40 times (create + status).
    before = changes()
    t0 = time.monotonic()
    for i in range(20):
        cluster_nodes.add(f"burst{i}", f"10.99.0.{i + 1}")
    wait.until(lambda: "10.99.0.16/30" in export_clients(appliance, vol) and "10.99.0.20/32" in export_clients(
        appliance, vol), timeout=30, what=lambda: f"20 node addresses\n{export_clients(appliance, vol)}")
    wait.until(lambda: changes() > before, timeout=30, what="the burst's update logged")
    time.sleep(6)  # the debounce's longest wait (5 s): a batch still pending would show now
    applies = changes() - before
    print(f"20 nodes in {time.monotonic() - t0:.2f}s, {applies} client list updates")
    assert 1 <= applies <= 4, applies


@pytest.mark.e2e
@pytest.mark.kube
@pytest.mark.ganesha
def test_explicit_subnet_ignores_nodes_and_a_narrower_one_narrows_existing_exports(
        appliance: Appliance, cluster_nodes: Nodes, core: client.CoreV1Api, storage: client.StorageV1Api,
        namespace: str, unique: str) -> None:
    cluster_nodes.add("ignored", "127.0.0.1")
    appliance.extra.append("--export-subnet=*")
    appliance.start()
    vol = bound_volume(appliance, core, storage, namespace, unique)
    assert export_clients(appliance, vol) == ["*"] and readable(appliance, vol)
    assert appliance.stop() == 0

    # Restarted with a narrower list: the existing export is narrowed before Ganesha serves it, and the
    # node with 127.0.0.1 does not widen a list given explicitly.
    appliance.extra[-1] = "--export-subnet=10.0.0.0/8"
    appliance.start()
    assert export_clients(appliance, vol) == ["10.0.0.0/8"]
    assert not readable(appliance, vol), "127.0.0.1 is outside 10.0.0.0/8"
    assert "NFS clients: 10.0.0.0/8 (fixed, Node changes are not followed)" in appliance.log_file.read_text()
    assert "client list of 1 exports set to 10.0.0.0/8 (files only, before Ganesha serves them)" in \
        appliance.log_file.read_text()
    assert appliance.stop() == 0

    # The default out of cluster: the nodes' addresses plus loopback (what make demo relies on).
    appliance.extra.pop()
    appliance.start()
    clients = export_clients(appliance, vol)
    assert "127.0.0.0/8" in clients and "::1/128" in clients and "10.0.0.0/8" not in clients
    assert readable(appliance, vol)
    assert "who may mount: the cluster's nodes, 127.0.0.0/8, ::1/128 (default out of cluster" in \
        appliance.log_file.read_text()
