"""``controller.testing.FakeApi`` answers as the API server does: one contract, run against the fake (unit)
and against the real control plane (kube), so the fake cannot drift from what it stands for."""

from __future__ import annotations

import threading

import pytest

from nfs_provisioner.controller.testing import FakeApi
from nfs_provisioner.kube import client as kube
from nfs_provisioner.kube import errors
from tests.support import wait
from tests.support.fake_api import EXPECTED, Object, contract, lease


@pytest.mark.unit
def test_the_fake_keeps_the_api_servers_contract() -> None:
    assert contract(FakeApi(), "default") == EXPECTED


@pytest.mark.unit
def test_watches_resume_from_a_version_and_expire_with_410_in_both_shapes() -> None:
    """The two shapes of "too old" the informer handles (tests/test_controller_crash.py::
    test_informer_relists_after_410_gone proves them against the real API server)."""
    api = FakeApi()
    a = api.create(kube.leases_path("ns"), lease("ns", "a"))
    b = api.create(kube.leases_path("ns"), lease("ns", "b"))
    api.create(kube.leases_path("other"), lease("other", "c"))
    events = list(api.watch(kube.leases_path("ns"), resource_version=a["metadata"]["resourceVersion"],
                            timeout_seconds=0))
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [("ADDED", "b")]
    everywhere = list(api.watch("/apis/coordination.k8s.io/v1/leases", resource_version="1", timeout_seconds=0))
    assert [e["object"]["metadata"]["name"] for e in everywhere] == ["a", "b", "c"]

    stream = api.watch(kube.leases_path("ns"), resource_version=b["metadata"]["resourceVersion"],
                       timeout_seconds=30)
    got: list[Object] = []
    reader = threading.Thread(target=lambda: got.extend(stream), daemon=True)
    reader.start()
    wait.until(lambda: api._watches, timeout=5, what="the watch open")
    api.expire_watches()
    reader.join(5)
    assert [e["type"] for e in got] == ["ERROR"] and got[0]["object"]["code"] == 410
    with pytest.raises(errors.Gone):
        list(api.watch(kube.leases_path("ns"), resource_version=a["metadata"]["resourceVersion"],
                       timeout_seconds=0))


@pytest.mark.unit
def test_injected_failures_hit_only_matching_requests_and_can_lose_an_answer() -> None:
    api = FakeApi()
    api.fail(errors.ServerError(500, "InternalError", "boom"), method="POST", resource="leases")
    with pytest.raises(errors.ServerError):
        api.create(kube.leases_path("ns"), lease("ns", "a"))
    assert api.objects("leases") == []
    api.fail(errors.TransportError("reset"), method="POST", after=True)
    with pytest.raises(errors.TransportError):
        api.create(kube.leases_path("ns"), lease("ns", "a"))
    assert [o["metadata"]["name"] for o in api.objects("leases")] == ["a"]  # applied, its answer lost
    with pytest.raises(errors.AlreadyExists):
        api.create(kube.leases_path("ns"), lease("ns", "a"))
