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


class _LateEndpoints:
    """A Service whose EndpointSlice lists the pod only from the ``listed_from``-th look (as the EndpointSlice
    controller does a moment after a recreated pod has its address)."""

    def __init__(self, listed_from: int | None) -> None:
        self.listed_from, self.looks = listed_from, 0

    def get(self, path: str, **query: object) -> dict[str, object]:
        if path.endswith("/endpointslices"):
            self.looks += 1
            listed = self.listed_from is not None and self.looks >= self.listed_from
            return {"items": [{"endpoints": [{"addresses": ["10.244.0.6"] if listed else ["10.244.0.5"]}]}]}
        return {"spec": {"clusterIP": "10.0.0.40", "ports": [{"port": 2049, "protocol": "TCP"}]}}


SERVICE_ENV = {"SERVICE_NAME": "nfs-provisioner", "POD_NAMESPACE": "ns", "POD_IP": "10.244.0.6"}


def test_a_pod_started_before_its_endpoint_is_listed_waits_for_it() -> None:
    api, pauses = _LateEndpoints(listed_from=4), []
    got = address.resolve(environ=SERVICE_ENV, api=api, out_of_cluster=False, server_hostname=None,
                          pause=pauses.append)
    assert got == "10.0.0.40" and api.looks == 4 and pauses == [address.ENDPOINT_POLL] * 3


def test_a_service_that_never_lists_the_pod_is_one_clear_error_after_the_wait() -> None:
    api = _LateEndpoints(listed_from=None)
    with pytest.raises(address.AddressError) as e:
        address.service_address(api, namespace="ns", service="nfs-provisioner", pod_ip="10.244.0.6", nfs_port=2049,
                                pause=lambda s: None, patience=0.05)
    assert str(e.value).startswith("Service ns/nfs-provisioner has no endpoint for this pod (10.244.0.6) after 0s;")
    assert len(str(e.value).splitlines()) == 1 and api.looks >= 1


def test_a_stop_ends_the_wait_for_the_endpoint() -> None:
    class Stopped(Exception):
        pass

    def pause(seconds: float) -> None:
        raise Stopped

    api = _LateEndpoints(listed_from=None)
    with pytest.raises(Stopped):
        address.resolve(environ=SERVICE_ENV, api=api, out_of_cluster=False, server_hostname=None, pause=pause)
    assert api.looks == 1
