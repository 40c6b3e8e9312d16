"""Who may mount: by default only the cluster's Nodes (kubelets mount from their node).

Node objects are created through the real API server (no kubelet here: the status addresses are set with a
status patch); the client is the real libnfs on 127.0.0.1 against the appliance's real Ganesha, so
"refused" is Ganesha's own access check, not a file we read back."""

from __future__ import annotations

import pytest

from nfs_provisioner.appliance import nodes
from nfs_provisioner.ganesha.exports import ExportRequest
from tests.support.ganesha_env import Client, Harness
from tests.support.node_clients import CONTENT


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
