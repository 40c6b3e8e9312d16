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

import ipaddress
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from nfs_provisioner.appliance import exporters, nodes
from nfs_provisioner.ganesha import config, errors
from nfs_provisioner.ganesha.exports import HEADER, ExportRequest
from nfs_provisioner.kube import client as kube
from tests import nfsraw, wait
from tests.appliance_env import Appliance
from tests.ganesha_env import Harness
from tests.test_appliance_e2e import make_claim, make_class
from tests.test_node_clients import CONTENT, Nodes, cluster_nodes, export_clients, readable

__all__ = ["cluster_nodes"]  # the fixture, used by name below

STRANGER = "127.77.0.9"
"""A local process that is no Node: it must never read a volume."""


# --- helpers ---------------------------------------------------------------------------------------------------


def read_from(source: str, port: int, path: Path) -> bytes | str:
    """Read ``path`` over NFSv4 from the local address ``source``: its bytes, or the NFS status Ganesha answered
    (PUTROOTFH, LOOKUP down the pseudo filesystem, READ with the anonymous stateid: one COMPOUND)."""
    with nfsraw.Nfs4(host="127.0.0.1", port=port, source=source) as c:
        r = c.compound([c.putrootfh(), *(c.lookup(n) for n in path.parts[1:]), c.read()])
        return r.last(nfsraw.OP_READ).data if r.status == nfsraw.NFS4_OK else r.status_name


def bound(a: Appliance, core: client.CoreV1Api, namespace: str, cls: str, name: str) -> Path:
    """A claim of ``cls``, Bound; its volume directory, holding CONTENT in ``f``."""
    make_claim(core, namespace, cls, name=name)
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


def covers(clients: list[str] | tuple[str, ...], address: str) -> bool:
    """Whether a client list lets ``address`` in (the shared cluster's other Nodes may merge entries)."""
    return any(c == "*" or ipaddress.ip_address(address) in ipaddress.ip_network(c) for c in clients)


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


# --- D4: IPv6 zone ids ------------------------------------------------------------------------------------------


@pytest.mark.unit
@pytest.mark.parametrize("value", ["127.0.0.1,fe80::1%eth0", "fe80::%eth0/64", "nodes, fe80::1%25eth0"])
def test_d4_a_zone_id_in_export_subnet_exits_2_with_one_line(value: str) -> None:
    # Before: accepted, written into every export file; Ganesha refused each one (every claim failed, the next
    # start exited 1). Now refused where it enters, as every other settings error (exit 2, one line).
    r = subprocess.run([sys.executable, "-m", "nfs_provisioner", "--kubeconfig=/nonexistent/kubeconfig",
                        f"--export-subnet={value}"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2, r.stderr
    assert r.stderr.startswith("nfs-provisioner: error: --export-subnet: ") and r.stderr.count("\n") == 1
    assert "IPv6 zone id" in r.stderr, r.stderr


@pytest.mark.unit
def test_d4_a_node_address_with_a_zone_id_is_left_out() -> None:
    node = {"metadata": {"name": "n"}, "status": {"addresses": [
        {"type": "InternalIP", "address": "fe80::1%x"}, {"type": "ExternalIP", "address": "fe80::2%eth0"},
        {"type": "InternalIP", "address": "10.0.0.4"}]}}
    assert nodes.node_addresses(node) == {"10.0.0.4/32"}
    assert [(s.type, s.address) for s in nodes.skipped_addresses(node)] == [
        ("InternalIP", "fe80::1%x"), ("ExternalIP", "fe80::2%eth0")]
    assert "zone id" in nodes.skipped_addresses(node)[0].why
    assert nodes.client_list([node]) == ("10.0.0.4/32",)
    with pytest.raises(errors.InvalidRequest, match="zone id"):  # and never in an export file, however it comes
        config.check_clients(["fe80::1%x/128"])


@pytest.mark.ganesha
def test_d4_a_client_list_with_a_zone_id_changes_nothing_and_ganesha_restarts(h: Harness) -> None:
    srv = h.server(clients=("127.0.0.1",))
    vol = h.volume("v", content={"f": CONTENT})
    srv.exports.add(ExportRequest(name="v", path=vol))
    # Before: written to the file, UpdateExport refused ("Unexpected character (%)"), and the next start failed.
    with pytest.raises(errors.InvalidRequest, match="zone id"):
        srv.exports.set_clients(("127.0.0.1/32", "fe80::1%x/128"))
    assert srv.exports.default_clients == ("127.0.0.1/32",)
    assert "%" not in (srv.exports.get("v") or pytest.fail("export gone")).config_file.read_text()
    other = h.volume("w", content={"f": CONTENT})
    srv.exports.add(ExportRequest(name="w", path=other))  # a new claim's export
    srv.stop()
    srv.start()
    assert h.client().cat(vol / "f").stdout == CONTENT and h.client().cat(other / "f").stdout == CONTENT


@pytest.mark.kube
@pytest.mark.ganesha
def test_d4_a_client_list_ganesha_refuses_is_not_counted_as_applied(
        h: Harness, kapi: kube.Client, core: client.CoreV1Api, cluster_nodes: Nodes) -> None:
    # A Ganesha that does not take the new list (stopped here: UpdateExport times out) must not have it counted
    # as applied: before, the Node watch logged "NFS clients changed" and never tried again, so the exports kept
    # the old list for good while readiness said ok.
    srv = h.server(clients=("127.0.0.1",))
    vol = h.volume("v", content={"f": CONTENT})
    export = srv.exports.add(ExportRequest(name="v", path=vol))
    srv.dbus.timeout = 1.0
    watcher = nodes.NodeClients(kapi, fixed=("127.0.0.1/32",), debounce=0.1, max_delay=0.5)
    watcher.start()
    try:
        watcher.follow(exporters.GaneshaExporter(srv.exports).set_clients)
        pid = srv.ganesha_pid
        assert pid is not None
        os.kill(pid, signal.SIGSTOP)
        try:
            cluster_nodes.add("joiner", "127.0.0.44")
            wait.until(lambda: covers((srv.exports.get("v") or export).clients, "127.0.0.44"), timeout=30,
                       what="the new list in the export file")
            time.sleep(srv.dbus.timeout + 1.0)  # UpdateExport has timed out by now
            assert watcher.applies == 0, "a list Ganesha did not take was counted as applied"
            ok, why = watcher.health()
            assert not ok and "Ganesha refused the client list" in why and "retrying" in why, why
            assert not nodes.health(watcher)[0]
        finally:
            os.kill(pid, signal.SIGCONT)
        # Ganesha answers again: the same list is handed again and made live; readiness follows.
        wait.until(lambda: watcher.applies >= 1 and watcher.health()[0], timeout=60,
                   what=lambda: f"the list applied after SIGCONT: {watcher.health()}")
        wait.until(lambda: covers(srv.dbus.display_export(export.export_id).clients, "127.0.0.44"), timeout=10,
                   what=lambda: f"the live list has the node: {srv.dbus.display_export(export.export_id)}")
    finally:
        watcher.stop()


@pytest.mark.ganesha
def test_d4_an_export_ganesha_did_not_update_is_updated_again_with_the_same_list(h: Harness) -> None:
    # Before: the file had the new list, so the next call with the same list saw nothing to change and the
    # export served the old list until some other change came.
    srv = h.server(clients=("127.0.0.1",))
    srv.exports.add(ExportRequest(name="v", path=h.volume("v", content={"f": CONTENT})))
    srv.dbus.timeout = 1.0
    pid = srv.ganesha_pid
    assert pid is not None
    new = ("127.0.0.1/32", "127.0.0.45/32")
    os.kill(pid, signal.SIGSTOP)
    try:
        first = srv.exports.set_clients(new)
    finally:
        os.kill(pid, signal.SIGCONT)
    assert first.changed == ("v",) and first.failed == ("v",), first
    again = srv.exports.set_clients(new)
    assert again.changed == ("v",) and again.failed == (), again
    assert srv.exports.set_clients(new).changed == (), "once live, nothing to do"
    # The appliance's adapter says so, so that the Node watch does not count the list as applied.
    os.kill(pid, signal.SIGSTOP)
    try:
        refused = re.escape("refused the client list 127.0.0.1/32 for 1 exports (v)")
        with pytest.raises(errors.ClientsNotLive, match=refused):
            exporters.GaneshaExporter(srv.exports).set_clients(("127.0.0.1/32",))
    finally:
        os.kill(pid, signal.SIGCONT)


# --- D5: a Node network longer than /64 --------------------------------------------------------------------------


@pytest.mark.unit
def test_d5_a_node_address_that_is_a_network_is_left_out() -> None:
    node = {"metadata": {"name": "n"}, "status": {"addresses": [
        {"type": "InternalIP", "address": "fd00::/120"}, {"type": "InternalIP", "address": "fd00::4"}]}}
    assert nodes.node_addresses(node) == {"fd00::4/128"}
    assert [s.address for s in nodes.skipped_addresses(node)] == ["fd00::/120"]
    assert "network" in nodes.skipped_addresses(node)[0].why
    # The whole list is one Ganesha can take: nothing from a Node can make every export fail.
    assert config.check_clients(nodes.client_list([node], ("127.0.0.0/8",))) == ("127.0.0.0/8", "fd00::4/128")


@pytest.mark.ganesha
def test_d5_a_list_ganesha_cannot_take_changes_nothing_and_new_exports_still_work(h: Harness) -> None:
    # Before: the default list was replaced first, then rendering refused it: every later add (every new claim)
    # failed until the list changed again.
    srv = h.server(clients=("127.0.0.1",))
    srv.exports.add(ExportRequest(name="v", path=h.volume("v", content={"f": CONTENT})))
    with pytest.raises(errors.InvalidRequest, match="longer than /64"):
        srv.exports.set_clients(("127.0.0.1/32", "fd00::/120"))
    assert srv.exports.default_clients == ("127.0.0.1/32",)
    vol = h.volume("w", content={"f": CONTENT})
    assert srv.exports.add(ExportRequest(name="w", path=vol)).clients == ("127.0.0.1/32",)
    assert h.client().cat(vol / "f").stdout == CONTENT


# --- D8: a Node address written as a network ---------------------------------------------------------------------


def one_bad(address: object) -> dict[str, Any]:
    return {"metadata": {"name": "n"}, "status": {"addresses": [
        {"type": "InternalIP", "address": address}, {"type": "InternalIP", "address": "10.0.0.4"}]}}


@pytest.mark.unit
@pytest.mark.parametrize("address", ["127.0.0.0/8", "10.0.0.7/32", "0.0.0.0/0", "0.0.0.0", "::", "224.0.0.1",
                                     "255.255.255.255", "ff02::1"])
def test_d8_only_plain_host_addresses_of_a_node_may_mount(address: str) -> None:
    # Before: each became a client entry (127.0.0.0/8: every local process; 0.0.0.0: Ganesha's '*').
    assert nodes.node_addresses(one_bad(address), pod_gateways=False) == {"10.0.0.4/32"}
    assert [s.address for s in nodes.skipped_addresses(one_bad(address))] == [address]


@pytest.mark.unit
@pytest.mark.parametrize("address", ["a.example", "", " ", "10.0.0.256", "010.0.0.1", 7, None])
def test_what_is_no_address_at_all_is_left_out_and_reported_too(address: object) -> None:
    assert nodes.node_addresses(one_bad(address), pod_gateways=False) == {"10.0.0.4/32"}
    assert [s.why for s in nodes.skipped_addresses(one_bad(address))] == ["not an IP address"]


@pytest.mark.unit
def test_d8_odd_shapes_and_pod_cidrs_never_widen_the_list() -> None:
    # Types the API would not store, and a pod CIDR whose first address is 0.0.0.0 (which Ganesha reads as '*').
    odd: dict[str, Any] = {"metadata": {"name": "n"}, "spec": {"podCIDRs": ["0.0.0.0/24"]},
                           "status": {"addresses": ["10.0.0.9", {"type": "InternalIP"}]}}
    assert nodes.node_addresses(odd) == {"0.0.0.1/32"}
    assert nodes.client_list([odd, {"status": {"addresses": "10.0.0.1"}}]) == ("0.0.0.1/32",)


@pytest.mark.unit
@pytest.mark.parametrize("value", ["0.0.0.0", "0.0.0.0/32"])
def test_d8_an_export_subnet_ganesha_reads_as_everyone_exits_2(value: str) -> None:
    # Measured: Ganesha 9.14 shows a CLIENT "0.0.0.0" as "*". Whoever means everyone writes '*' or 0.0.0.0/0.
    r = subprocess.run([sys.executable, "-m", "nfs_provisioner", "--kubeconfig=/nonexistent/kubeconfig",
                        f"--export-subnet={value}"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "every client" in r.stderr and r.stderr.count("\n") == 1, r.stderr


@pytest.mark.ganesha
def test_ganesha_reads_a_client_0000_as_everyone(h: Harness) -> None:
    """Why 0.0.0.0 is refused: written by hand into an export file, a client at 127.77.0.9 reads."""
    srv = h.server(clients=("127.0.0.1",))
    vol = h.volume("v", content={"f": CONTENT})
    export = srv.exports.add(ExportRequest(name="v", path=vol))
    assert read_from(STRANGER, h.port, vol / "f") != CONTENT
    text = export.config_file.read_text()
    export.config_file.write_text(text.replace("Clients = 127.0.0.1;", "Clients = 0.0.0.0;"))
    srv.dbus.update_export(config_file=export.config_file, export_id=export.export_id)
    assert read_from(STRANGER, h.port, vol / "f") == CONTENT
    assert srv.dbus.display_export(export.export_id).clients == ("*",)


# --- against the real appliance: D4, D5, D8 --------------------------------------------------------------------


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
    make_class(storage, cls, appliance.provisioner)
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
    make_class(storage, cls, appliance.provisioner)
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
    make_class(storage, cls, appliance.provisioner)
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


# --- D16: metric labels ------------------------------------------------------------------------------------------


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
    make_class(storage, served, appliance.provisioner)
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


@pytest.mark.unit
def test_metric_labels_name_only_what_is_served() -> None:
    from nfs_provisioner.controller import decisions

    us = frozenset({"example.com/us"})
    ours = {"metadata": {"name": "gold"}, "provisioner": "example.com/us"}
    theirs = {"metadata": {"name": "gold"}, "provisioner": "other.io/x"}

    def claim(cls: str, kind: str | None = None, group: str = "") -> dict[str, Any]:
        spec: dict[str, Any] = {"storageClassName": cls}
        if kind:
            spec["dataSource"] = {"kind": kind, "name": "s", **({"apiGroup": group} if group else {})}
        return {"metadata": {"name": "c"}, "spec": spec}

    labels = decisions.provision_labels
    assert labels(claim("gold"), storage_class=ours, names=us) == ("gold", "")
    assert labels(claim("gold", "PersistentVolumeClaim"), storage_class=ours, names=us) == ("gold",
                                                                                          "PersistentVolumeClaim")
    assert labels(claim("gold", "VolumeSnapshot", "snapshot.storage.k8s.io"), storage_class=ours,
                  names=us) == ("gold", "VolumeSnapshot")
    assert labels(claim("made-up-7"), storage_class=None, names=us) == ("(other)", "")
    assert labels(claim("gold"), storage_class=theirs, names=us) == ("(other)", "")
    assert labels(claim("gold", "Made7", "example.com"), storage_class=ours, names=us) == ("gold", "(other)")
    assert labels(claim("gold", "Backup", "example.com"), storage_class=ours, names=us,
                  supported_source=True) == ("gold", "Backup")
