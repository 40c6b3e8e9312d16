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

import subprocess
import sys
from typing import Any

import pytest

from nfs_provisioner.appliance import nodes
from nfs_provisioner.ganesha import config, errors


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


@pytest.mark.unit
def test_d5_a_node_address_that_is_a_network_is_left_out() -> None:
    node = {"metadata": {"name": "n"}, "status": {"addresses": [
        {"type": "InternalIP", "address": "fd00::/120"}, {"type": "InternalIP", "address": "fd00::4"}]}}
    assert nodes.node_addresses(node) == {"fd00::4/128"}
    assert [s.address for s in nodes.skipped_addresses(node)] == ["fd00::/120"]
    assert "network" in nodes.skipped_addresses(node)[0].why
    # The whole list is one Ganesha can take: nothing from a Node can make every export fail.
    assert config.check_clients(nodes.client_list([node], ("127.0.0.0/8",))) == ("127.0.0.0/8", "fd00::4/128")


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
