"""Who may mount: by default only the cluster's Nodes (kubelets mount from their node).

Node objects are created through the real API server (no kubelet here: the status addresses are set with a
status patch); the client is the real libnfs on 127.0.0.1 against the appliance's real Ganesha, so
"refused" is Ganesha's own access check, not a file we read back."""

from __future__ import annotations

from typing import Any

import pytest

from nfs_provisioner.appliance import nodes


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
