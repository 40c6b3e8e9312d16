"""Hostile addresses and labels (issue 28: D4, D5, D8, D16).

Who may mount comes from two places an adversary or a slip can reach: ``--export-subnet`` and the Nodes'
``status.addresses`` (strings the API server does not check). Whatever is written there, the appliance must
keep serving, keep the client list current, never let a network in as a "node address", and survive a
restart. Node objects are made through the real API server; "let in" and "refused" are real Ganesha's own
access checks, seen by a client that connects from a chosen loopback source address (any 127.0.0.0/8
address is this host's, so a stranger at 127.77.0.9 is one ``bind()`` away).

D16: label values of the controller's metrics come from claims (class names, data-source kinds), which any
tenant writes; they are bounded to what this provisioner serves.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from nfs_provisioner.appliance import nodes
from nfs_provisioner.ganesha.exports import HEADER
from tests.support import wait
from tests.support.appliance_env import Appliance
from tests.support.builders import NFS41, make_claim, make_class
from tests.support.hostile_addresses import STRANGER, covers, read_from
from tests.support.node_clients import CONTENT, Nodes, cluster_nodes, export_clients, readable

__all__ = ["cluster_nodes"]  # the fixture, used by name below


def bound(a: Appliance, core: client.CoreV1Api, namespace: str, cls: str, name: str) -> Path:
    """A claim of ``cls``, Bound; its volume directory, holding CONTENT in ``f``."""
    make_claim(namespace, name, cls, api=core)
    wait.until(lambda: core.read_namespaced_persistent_volume_claim(name, namespace).status.phase == "Bound",
               timeout=60, what=lambda: f"claim {name} Bound\n{a.log()}")
    vol = a.export_root / core.read_namespaced_persistent_volume_claim(name, namespace).spec.volume_name
    (vol / "f").write_bytes(CONTENT)
    return vol


def node_events(core: client.CoreV1Api, node: str) -> list[client.CoreV1Event]:
    """Our InvalidNodeAddress events about ``node`` (Events about cluster-scoped objects live in ``default``)."""
    return [e for e in core.list_namespaced_event("default", field_selector=f"involvedObject.name={node}").items
            if e.reason == nodes.INVALID_NODE_ADDRESS]


def warned(core: client.CoreV1Api, a: Appliance, node: str, address: str) -> None:
    """Wait for the one Warning Event on the Node naming ``address``; the log has one warning line for it."""
    wait.until(lambda: any(address in e.message and e.type == "Warning" and e.involved_object.kind == "Node"
                           for e in node_events(core, node)),
               timeout=30, what=lambda: f"InvalidNodeAddress event on {node} naming {address!r}\n{a.log()}")
    lines = [line for line in a.text().splitlines() if f"node {node}: left out of the NFS client list" in line]
    assert len(lines) == 1 and address in lines[0] and "WARNING" in lines[0], lines


def export_files(a: Appliance) -> dict[str, str]:
    return {f.name: f.read_text() for f in (a.export_root / ".ganesha" / "exports.d").glob("*.conf")}


def restart(a: Appliance) -> None:
    """Stop (exit 0) and start again: Ganesha reads every export file at start and must accept each."""
    assert a.stop() == 0, a.log()
    a.start()


def write_header_clients(conf: Path, clients: list[str]) -> None:
    """Rewrite an export file's header and CLIENT line as an earlier version wrote them (what the next start
    reads), e.g. with a zone id in it."""
    text = conf.read_text()
    head, _, body = text.partition("\n")
    data = head[len(HEADER):].replace(re.search(r'"clients": (\[[^]]*\])', head)[1],  # type: ignore[index]
                                      "[" + ", ".join(f'"{c}"' for c in clients) + "]")
    body = re.sub(r"Clients = [^;]*;", "Clients = " + ", ".join(c.split("/")[0] for c in clients) + ";", body)
    conf.write_text(HEADER + data + "\n" + body)


def e2e(fn: Any) -> Any:
    for mark in (pytest.mark.e2e, pytest.mark.kube, pytest.mark.ganesha, pytest.mark.fault):
        fn = mark(fn)
    return fn


@e2e
def test_d4_a_zone_id_node_is_left_out_claims_go_on_and_a_restart_serves(
        appliance: Appliance, cluster_nodes: Nodes, core: client.CoreV1Api, storage: client.StorageV1Api,
        namespace: str, unique: str) -> None:
    bad = "fe80::1%x"
    cluster_nodes.add("kubelet", "127.0.0.1")
    appliance.extra.append("--export-subnet=nodes")
    appliance.start()
    cls = f"zone-{unique}"
    make_class(cls, appliance.provisioner, mount_options=NFS41, api=storage)
    one = bound(appliance, core, namespace, cls, "one")

    # A Node whose InternalIP has a zone id, and a good one beside it: the good one counts, the bad one is
    # left out with one warning line and one Event on the Node.
    zoned = cluster_nodes.add("zoned", bad, "127.0.33.2")
    # Before: Ganesha refused every export file with the zone id in it, so the live list never changed.
    wait.until(lambda: read_from("127.0.33.2", appliance.nfs_port, one / "f") == CONTENT, timeout=30,
               what=lambda: f"the zoned Node's good address let in by Ganesha\n{appliance.log()}")
    assert not any("%" in text for text in export_files(appliance).values())
    two = bound(appliance, core, namespace, cls, "two")  # new claims go on
    assert readable(appliance, one) and readable(appliance, two)
    warned(core, appliance, zoned, bad)
    core.patch_node(zoned, {"metadata": {"labels": {"poked": "yes"}}})  # a change, same addresses: no 2nd warning
    time.sleep(2)
    assert len(node_events(core, zoned)) == 1
    assert appliance.text().count(f"node {zoned}: left out of the NFS client list") == 1

    # What an earlier version left: the zone id in an export file's header and CLIENT block. The next start
    # leaves it out (the export is kept) and Ganesha accepts every file.
    assert appliance.stop() == 0
    write_header_clients(appliance.export_root / ".ganesha" / "exports.d" / f"{one.name}.conf",
                         ["127.0.0.1/32", f"{bad}/128"])
    appliance.start()
    assert "client entries left out (Ganesha cannot take them)" in appliance.text()
    assert "differed from its own header" not in appliance.text()  # one line says what happened, not two
    assert not any("%" in text for text in export_files(appliance).values())
    assert readable(appliance, one) and readable(appliance, two)
    bound(appliance, core, namespace, cls, "three")
    restart(appliance)
    assert readable(appliance, one)


@e2e
def test_d5_a_network_node_is_left_out_and_the_list_stays_current(
        appliance: Appliance, cluster_nodes: Nodes, core: client.CoreV1Api, storage: client.StorageV1Api,
        namespace: str, unique: str) -> None:
    cluster_nodes.add("kubelet", "127.0.0.1")
    leaving = cluster_nodes.add("leaving", "127.0.33.3")
    appliance.extra.append("--export-subnet=nodes")
    appliance.start()
    cls = f"net-{unique}"
    make_class(cls, appliance.provisioner, mount_options=NFS41, api=storage)
    one = bound(appliance, core, namespace, cls, "one")
    assert read_from("127.0.33.3", appliance.nfs_port, one / "f") == CONTENT

    # Before: from here on every claim failed and the list froze (the deleted Node kept its access); the next
    # start exited 1.
    net = cluster_nodes.add("net6", "fd00::/120")
    cluster_nodes.remove(leaving)
    wait.until(lambda: not covers(export_clients(appliance, one), "127.0.33.3"), timeout=30,
               what=lambda: f"the deleted Node's address gone from the list\n{appliance.log()}")
    wait.until(lambda: read_from("127.0.33.3", appliance.nfs_port, one / "f") != CONTENT, timeout=30,
               what="the deleted Node refused by Ganesha")
    two = bound(appliance, core, namespace, cls, "two")
    warned(core, appliance, net, "fd00::/120")
    assert not any("fd00::" in text for text in export_files(appliance).values())
    restart(appliance)
    assert readable(appliance, one) and readable(appliance, two)
    assert read_from("127.0.33.3", appliance.nfs_port, two / "f") != CONTENT


@e2e
def test_d8_a_node_address_written_as_a_network_lets_no_stranger_in(
        appliance: Appliance, cluster_nodes: Nodes, core: client.CoreV1Api, storage: client.StorageV1Api,
        namespace: str, unique: str) -> None:
    cluster_nodes.add("kubelet", "127.0.0.1")
    cidr = cluster_nodes.add("cidr", "127.0.0.0/8")
    anyone = cluster_nodes.add("anyone", "0.0.0.0")
    appliance.extra.append("--export-subnet=nodes")  # no loopback by default: only the Nodes
    appliance.start()
    cls = f"cidr-{unique}"
    make_class(cls, appliance.provisioner, mount_options=NFS41, api=storage)
    vol = bound(appliance, core, namespace, cls, "one")
    # The same client: from a Node's address it reads, from anywhere else Ganesha refuses it. Before, the two
    # "addresses" let every local process in.
    assert read_from("127.0.0.1", appliance.nfs_port, vol / "f") == CONTENT
    refused = read_from(STRANGER, appliance.nfs_port, vol / "f")
    assert refused != CONTENT and str(refused).startswith("NFS4ERR_"), refused
    clients = export_clients(appliance, vol)
    assert covers(clients, "127.0.0.1") and not covers(clients, STRANGER), clients
    warned(core, appliance, cidr, "127.0.0.0/8")
    warned(core, appliance, anyone, "0.0.0.0")
    restart(appliance)
    assert read_from(STRANGER, appliance.nfs_port, vol / "f") != CONTENT
    assert read_from("127.0.0.1", appliance.nfs_port, vol / "f") == CONTENT


FAILED = "controller_persistentvolumeclaim_provision_failed_total"


def series(text: str, metric: str) -> dict[str, float]:
    """``{labels: value}`` of one metric in Prometheus text format."""
    out = {}
    for line in text.splitlines():
        if line.startswith(metric + "{"):
            labels, _, value = line[len(metric):].rpartition(" ")
            out[labels] = float(value)
    return out


@e2e
def test_d16_made_up_class_names_and_kinds_add_no_metric_series(
        appliance: Appliance, core: client.CoreV1Api, storage: client.StorageV1Api, namespace: str,
        unique: str) -> None:
    served = f"served-{unique}"
    make_class(served, appliance.provisioner, mount_options=NFS41, api=storage)
    appliance.start()
    made_up = 100
    for i in range(made_up):  # classes nobody made, asked of us by annotation; half with a made-up source kind
        spec: dict[str, Any] = {"storageClassName": f"made-up-{i}-{unique}", "accessModes": ["ReadWriteMany"],
                                "resources": {"requests": {"storage": "1Mi"}}}
        if i % 2:
            spec["dataSourceRef"] = {"apiGroup": "example.com", "kind": f"Made{i}", "name": "x"}
        core.create_namespaced_persistent_volume_claim(namespace, {
            "apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": {"name": f"c{i}", "annotations": {
                "volume.kubernetes.io/storage-provisioner": appliance.provisioner}},
            "spec": spec})
    vol = bound(appliance, core, namespace, served, "real")
    assert vol.is_dir()

    def failures() -> dict[str, float]:
        status, text = appliance.get("/metrics")
        assert status == 200
        return series(text, FAILED)

    wait.until(lambda: sum(failures().values()) >= made_up, timeout=60,
               what=lambda: f"{made_up} failures counted: {failures()}")
    seen = failures()
    print(f"{len(seen)} series of {FAILED} after {made_up} made-up classes: {sorted(seen)}")
    assert set(seen) <= {'{class="(other)",source=""}', '{class="(other)",source="(other)"}'}, sorted(seen)
    provisioned = series(appliance.get("/metrics")[1], "controller_persistentvolumeclaim_provision_total")
    assert provisioned == {f'{{class="{served}",source=""}}': 1.0}, provisioned
