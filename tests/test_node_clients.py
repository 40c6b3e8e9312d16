"""Who may mount: by default only the cluster's Nodes (kubelets mount from their node).

Node objects are created through the real API server (no kubelet here: the status addresses are set with a
status patch); the client is the real libnfs on 127.0.0.1 against the appliance's real Ganesha, so
"refused" is Ganesha's own access check, not a file we read back."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from nfs_provisioner.appliance import nodes
from nfs_provisioner.ganesha.exports import ExportRequest
from tests import wait
from tests.appliance_env import Appliance
from tests.ganesha_env import Client, Harness
from tests.test_appliance_e2e import make_claim, make_class

CONTENT = b"for the nodes only\n"


class Nodes:
    """Node objects this test creates (deleted afterwards)."""

    def __init__(self, core: client.CoreV1Api, unique: str) -> None:
        self.core, self.unique, self.names = core, unique, []

    def add(self, suffix: str, *addresses: str) -> str:
        name = f"{suffix}-{self.unique}"
        self.core.create_node(client.V1Node(metadata=client.V1ObjectMeta(name=name)))
        self.names.append(name)
        self.set(name, *addresses)
        return name

    def set(self, name: str, *addresses: str) -> None:
        self.core.patch_node_status(name, {"status": {"addresses": [
            {"type": "InternalIP", "address": a} for a in addresses]}})

    def remove(self, name: str) -> None:
        self.core.delete_node(name)
        self.names.remove(name)

    def close(self) -> None:
        for name in list(self.names):
            self.remove(name)


@pytest.fixture
def cluster_nodes(core: client.CoreV1Api, unique: str) -> Iterator[Nodes]:
    n = Nodes(core, unique)
    try:
        yield n
    finally:
        n.close()


def bound_volume(a: Appliance, core: client.CoreV1Api, storage: client.StorageV1Api, namespace: str,
                 unique: str) -> Path:
    """A claim of a fresh class, Bound; returns its volume directory (holding a file)."""
    cls = f"nodes-{unique}"
    make_class(storage, cls, a.provisioner)
    make_claim(core, namespace, cls)
    wait.until(lambda: core.read_namespaced_persistent_volume_claim("nfs", namespace).status.phase == "Bound",
               timeout=60, what=lambda: f"claim Bound\n{a.log()}")
    pv = core.read_namespaced_persistent_volume_claim("nfs", namespace).spec.volume_name
    vol = a.export_root / pv
    (vol / "f").write_bytes(CONTENT)
    return vol


def export_clients(a: Appliance, vol: Path) -> list[str]:
    """The client list in the volume's export file (what Ganesha reads at start and on UpdateExport)."""
    conf = a.export_root / ".ganesha" / "exports.d" / f"{vol.name}.conf"
    header: dict[str, Any] = json.loads(conf.read_text().splitlines()[0].split(": ", 1)[1])
    return list(header["clients"])


def readable(a: Appliance, vol: Path) -> bool:
    r = a.client().cat(vol / "f")
    assert r.returncode != 0 or r.stdout == CONTENT
    return r.returncode == 0


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


@pytest.mark.ganesha
def test_a_node_and_its_pod_cidr_gateway_may_mount_a_pod_may_not(h: Harness) -> None:
    # One network namespace stands for a node: its InternalIP, its bridge's gateway (.1 of its pod CIDR,
    # the source kube-proxy's masquerade gives a kubelet mounting a ClusterIP served on this node) and a
    # pod's address in the same pod CIDR. The client list is computed from a Node object as the appliance
    # does; Ganesha's own access check decides.
    node = {"metadata": {"name": "n1"}, "spec": {"podCIDR": "10.244.1.0/24"},
            "status": {"addresses": [{"type": "InternalIP", "address": "10.77.0.1"},
                                     {"type": "Hostname", "address": "n1"}]}}
    clients = nodes.client_list([node])
    assert clients == ("10.77.0.1/32", "10.244.1.0/31")
    # /32 each: a client connecting to one of them then has that address as its source (with a shared /24
    # the kernel would pick the primary, 10.244.1.1, for all).
    ns = h.make_netns(addresses=("10.77.0.1/32", "10.244.1.1/32", "10.244.1.5/32"))
    srv = h.server(netns=ns.path, mountns=ns.mountns, bind_addr=None, clients=clients)
    vol = h.volume("v", content={"f": CONTENT})
    srv.exports.add(ExportRequest(name="v", path=vol))
    for source, allowed in (("10.77.0.1", True), ("10.244.1.1", True), ("10.244.1.5", False)):
        r = Client(host=source, port=srv.settings.ports.nfs, netns=ns.path).cat(vol / "f")
        assert (r.returncode == 0 and r.stdout == CONTENT) is allowed, (source, r)


@pytest.mark.unit
def test_the_client_list_is_the_nodes_addresses_and_pod_cidr_gateways() -> None:
    def node(*addresses: tuple[str, str], pod_cidrs: tuple[str, ...] = ()) -> dict[str, Any]:
        return {"metadata": {"name": "n"}, "spec": {"podCIDRs": list(pod_cidrs)},
                "status": {"addresses": [{"type": t, "address": a} for t, a in addresses]}}

    a = node(("InternalIP", "10.0.0.4"), ("ExternalIP", "203.0.113.9"), ("Hostname", "a.example"),
             ("InternalDNS", "a.internal"), ("InternalIP", "fd00::4"),
             pod_cidrs=("10.244.1.0/24", "fd00:10:244:1::/64"))
    assert nodes.node_addresses(a) == {"10.0.0.4/32", "203.0.113.9/32", "fd00::4/128", "10.244.1.0/32",
                                       "10.244.1.1/32", "fd00:10:244:1::/128", "fd00:10:244:1::1/128"}
    # Neighbouring IPv4 addresses collapse into one entry (IPv6 not: Ganesha cannot parse IPv6 networks longer
    # than /64); fixed entries are kept; '*' is everyone.
    b = node(("InternalIP", "10.0.0.5"))
    assert nodes.client_list([a, b], ("127.0.0.0/8",)) == (
        "10.0.0.4/31", "10.244.1.0/31", "127.0.0.0/8", "203.0.113.9/32", "fd00::4/128", "fd00:10:244:1::/128",
        "fd00:10:244:1::1/128")
    assert nodes.client_list([a], ("*",)) == ("*",)
    assert nodes.client_list([a], pod_gateways=False) == ("10.0.0.4/32", "203.0.113.9/32", "fd00::4/128")
    assert nodes.client_list([node(("Hostname", "x"))]) == (), "no node address: nobody, never everyone"
