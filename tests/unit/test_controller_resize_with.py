"""``ProvisionController.resize_with``: the controller runs the Resizer it is given (the appliance's one call),
its own claim handler still provisioning, the resizer started and stopped with it. The resize itself:
tests/test_controller_fake.py::test_a_bigger_request_is_resized_through_a_conflict_and_a_smaller_one_refused;
real: tests/test_appliance_e2e.py::test_expansion_is_finished_the_way_kubernetes_expects."""

from __future__ import annotations

import time
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from nfs_provisioner.controller import ClientSettings, ControllerSettings, ProvisionController
from nfs_provisioner.controller.testing import FakeApi, MemoryProvisioner
from nfs_provisioner.kube import client as kube
from tests.support import wait
from tests.support.builders import make_claim, make_class
from tests.support.fakes import FAST, NAME, NS, pv_name, reasons, volume

pytestmark = pytest.mark.unit


class Growing:
    """An Expander recording what it was asked to grow."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int]] = []

    def expand(self, volume: dict[str, Any], new_bytes: int) -> None:
        self.calls.append((volume["metadata"]["name"], new_bytes))


def controller(api: FakeApi) -> ProvisionController:
    s = ControllerSettings(provisioner_name=NAME, threadiness=1, resync_period=30.0, retry=FAST, shutdown_grace=2.0,
                           client=ClientSettings(qps=0))
    return ProvisionController(MemoryProvisioner(), s, api=api, registry=CollectorRegistry())


def test_the_controller_provisions_and_resizes_and_stops_its_resizer() -> None:
    api, grower = FakeApi(), Growing()
    make_class("c", NAME, expansion=True, api=api)
    c = controller(api)
    owned: list[str] = []
    resizer = c.resize_with(grower, owns=lambda v: owned.append(v["metadata"]["name"]) or None)
    assert c.resizer is resizer and resizer.names == (NAME,)
    c.start()
    try:
        name = pv_name(make_claim(NS, "c", "c", provisioner=NAME, api=api))
        wait.until(lambda: volume(api, name), timeout=5, what="the PV (the controller's own claim handler)")
        api.bind(NS, "c", name)
        api.patch(kube.claims_path(NS, "c"), {"spec": {"resources": {"requests": {"storage": "2Mi"}}}})
        wait.until(lambda: "VolumeResizeSuccessful" in reasons(api, "c"), timeout=5, what="the resize")
        assert set(grower.calls) == {(name, 2 * 1024 * 1024)} and name in owned
        with pytest.raises(RuntimeError, match="before start"):
            c.resize_with(grower)
    finally:
        c.stop(wait=True)
    assert resizer._thread is not None and not resizer._thread.is_alive()  # stopped with the controller


def test_without_resize_with_nothing_is_resized() -> None:
    api = FakeApi()
    make_class("c", NAME, expansion=True, api=api)
    c = controller(api)
    c.start()
    try:
        name = pv_name(make_claim(NS, "c", "c", provisioner=NAME, api=api))
        wait.until(lambda: volume(api, name), timeout=5, what="the PV")
        api.bind(NS, "c", name)
        api.patch(kube.claims_path(NS, "c"), {"spec": {"resources": {"requests": {"storage": "2Mi"}}}})
        time.sleep(0.5)  # the resize above takes milliseconds
    finally:
        c.stop(wait=True)
    assert c.resizer is None and not [r for r in reasons(api, "c") if "Resiz" in r]
