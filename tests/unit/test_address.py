"""Server address precedence (pure logic; the Service path is proven against the
real API server in tests/e2e/test_rbac.py)."""

from __future__ import annotations

import pytest

from nfs_provisioner.appliance import address

pytestmark = pytest.mark.unit


def test_out_of_cluster_uses_server_hostname_or_the_host() -> None:
    assert address.resolve(environ={"NODE_NAME": "n"}, api=None, out_of_cluster=True,
                           server_hostname="nfs.example") == "nfs.example"
    host = address.resolve(environ={}, api=None, out_of_cluster=True, server_hostname=None)
    assert host and host.count(".") == 3


def test_node_name_wins_then_pod_ip() -> None:
    env = {"NODE_NAME": "node-1", "POD_IP": "10.1.2.3"}
    assert address.resolve(environ=env, api=None, out_of_cluster=False, server_hostname=None) == "node-1"
    assert address.resolve(environ={"POD_IP": "10.1.2.3"}, api=None, out_of_cluster=False,
                           server_hostname=None) == "10.1.2.3"


@pytest.mark.parametrize(("env", "message"), [
    ({}, "no server address"),
    ({"SERVICE_NAME": "svc", "POD_IP": "10.1.2.3"}, "POD_NAMESPACE or POD_IP is not"),
])
def test_missing_environment_is_a_clear_error(env: dict[str, str], message: str) -> None:
    with pytest.raises(address.AddressError, match=message):
        address.resolve(environ=env, api=None, out_of_cluster=False, server_hostname=None)


class _Services:
    """The API server's answer for one Service (the real one: tests/node/test_pool_incluster.py)."""

    def __init__(self) -> None:
        self.paths: list[str] = []

    def get(self, path: str, **query: object) -> dict[str, object]:
        self.paths.append(path)
        return {"metadata": {"name": path.rsplit("/", 1)[1], "uid": "u-1"}}


@pytest.mark.parametrize(("env", "owned"), [
    ({"SERVICE_NAME": "nfs-0", "POD_NAMESPACE": "ns"}, True),
    ({"SERVICE_NAME": "nfs-0", "POD_NAMESPACE": "other"}, False),  # a Lease elsewhere: no owner (GC would delete it)
    ({"SERVICE_NAME": "nfs-0", "POD_NAMESPACE": "ns", "NODE_NAME": "n"}, False),  # a DaemonSet: no Service
    ({"POD_NAMESPACE": "ns"}, False),
])
def test_a_pool_member_s_lease_is_owned_by_its_service_in_its_namespace(env: dict[str, str], owned: bool) -> None:
    from nfs_provisioner.appliance import pool_member

    api = _Services()
    got = pool_member.lease_owner(api, environ=env, namespace="ns")  # type: ignore[arg-type]
    if owned:
        assert got == {"apiVersion": "v1", "kind": "Service", "name": "nfs-0", "uid": "u-1"}
        assert api.paths == ["/api/v1/namespaces/ns/services/nfs-0"]
    else:
        assert got is None and api.paths == []
