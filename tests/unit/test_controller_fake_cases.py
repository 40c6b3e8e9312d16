"""The controller's special cases against the in-memory API: WaitForFirstConsumer, data sources it does not
declare, InProgress polling, "not mine", claims and volumes of others. Each test names the test that proves the
same against the real control plane (tests/kube/test_controller.py)."""

from __future__ import annotations

import time

import pytest

from nfs_provisioner.controller import (
    IgnoredError,
    InProgress,
    ProvisioningError,
    ProvisioningState,
    ProvisionOptions,
    RetrySettings,
    decisions,
)
from nfs_provisioner.controller.testing import FakeApi, MemoryProvisioner
from nfs_provisioner.kube import client as kube
from tests.support import wait
from tests.support.builders import make_claim, make_class
from tests.support.fakes import NAME, NS, claim_of, pv_name, reasons, running, volume

pytestmark = pytest.mark.unit


def test_wait_for_first_consumer_needs_an_existing_selected_node() -> None:
    """Real: test_wait_for_first_consumer_needs_a_selected_node."""
    api, p = FakeApi(), MemoryProvisioner()
    make_class("wffc", NAME, binding="WaitForFirstConsumer", api=api)
    api.create("/api/v1/nodes", {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1"}})
    seen: list[ProvisionOptions] = []

    def record(o: ProvisionOptions) -> None:
        seen.append(o)
        if o.claim["metadata"]["name"] == "full":
            raise ProvisioningError("node is full", ProvisioningState.RESCHEDULE)
    p.on_provision = record
    with running(api, p):
        claim = make_claim(NS, "c", "wffc", provisioner=NAME, api=api)
        time.sleep(0.3)
        assert p.provisioned == []  # no node selected yet
        api.patch(kube.claims_path(NS, "c"), {"metadata": {"annotations": {decisions.ANN_SELECTED_NODE: "n1"}}})
        wait.until(lambda: volume(api, pv_name(claim)), timeout=5, what="the PV for n1")
        assert seen[0].selected_node_name == "n1"
        for name, node in (("nowhere", "no-such-node"), ("full", "n1")):
            other = make_claim(NS, name, "wffc", provisioner=NAME, selected_node=node, api=api)
            wait.until(lambda n=name: decisions.ANN_SELECTED_NODE not in decisions.annotations_of(
                claim_of(api, n) or {}), timeout=5, what=f"{name}: selected-node removed")
            wait.until(lambda n=name: "ProvisioningFailed" in reasons(api, n), timeout=5, what=f"{name}: event")
            assert volume(api, pv_name(other)) is None
            assert decisions.claim_finalizer("default") not in decisions.finalizers(claim_of(api, name) or {})


def test_data_sources_it_does_not_declare_are_never_provisioned_empty() -> None:
    """Real: test_data_sources_the_provisioner_does_not_declare_are_never_provisioned_empty."""
    api, p = FakeApi(), MemoryProvisioner()
    make_class("c", NAME, api=api)
    sources = {"clone": {"kind": "PersistentVolumeClaim", "name": "live"},
               "snap": {"apiGroup": "snapshot.storage.k8s.io", "kind": "VolumeSnapshot", "name": "daily"},
               "pop": {"apiGroup": "hello.example.com", "kind": "Hello", "name": "world"}}
    with running(api, p):
        for name, source in sources.items():
            make_claim(NS, name, "c", provisioner=NAME, data_source=source, api=api)
        for name in sources:
            wait.until(lambda n=name: api.events_about(n), timeout=5, what=f"the event on {name}")
        time.sleep(0.3)  # a retry would be a second event
        assert api.events_about("clone") == [("Warning", "ProvisioningFailed", f"{NAME} does not support cloning "
                                              "volumes (data source PersistentVolumeClaim live); no volume is "
                                              "provisioned")]
        assert [r for _, r, _ in api.events_about("snap")] == ["ProvisioningFailed"]
        assert api.events_about("pop") == [("Normal", "Provisioning", "Assuming an external populator will "
                                            "provision the volume: data source hello.example.com/Hello world is "
                                            f"not handled by {NAME}")]
        api.patch(kube.claims_path(NS, "clone"), {"metadata": {"labels": {"poke": "1"}}})
        wait.until(lambda: len(api.events_about("clone")) == 2, timeout=5, what="refused again after a change")
    assert p.provisioned == [] and api.objects("persistentvolumes") == []


def test_in_progress_is_polled_without_backoff_or_failure_events() -> None:
    """Real: test_in_progress_is_polled_without_backoff_or_failure_events."""
    api, p = FakeApi(), MemoryProvisioner()
    p.provision_errors = [InProgress(f"step {i} of 4", retry_after=0.05, report=i % 2 == 1) for i in (1, 2, 3)]
    make_class("c", NAME, api=api)
    with running(api, p, retry=RetrySettings(base_delay=30, max_delay=30, overall_qps=0,
                                             failed_provision_threshold=1)):
        name = pv_name(make_claim(NS, "c", "c", provisioner=NAME, api=api))
        wait.until(lambda: volume(api, name), timeout=5, what="the PV after three polls")
        wait.until(lambda: "ProvisioningSucceeded" in reasons(api, "c"), timeout=5, what="success")
    assert len(p.provisioned) == 4
    assert [(t, m) for t, r, m in api.events_about("c") if r == "Provisioning"] == [
        ("Normal", f'External provisioner is provisioning volume for claim "{NS}/c"'), ("Normal", "step 1 of 4"),
        ("Normal", "step 3 of 4")]
    assert "ProvisioningFailed" not in reasons(api, "c")


def test_not_mine_is_silent_and_claims_of_other_provisioners_are_left_alone() -> None:
    """Real: test_ignored_error_is_silent_and_not_retried and test_claim_of_another_provisioner_is_ignored."""
    api, p = FakeApi(), MemoryProvisioner()
    p.provision_errors = [IgnoredError("another instance serves this claim")]
    make_class("c", NAME, api=api)
    make_class("theirs", "other.example/nfs", api=api)
    with running(api, p):
        make_claim(NS, "mine", "c", provisioner=NAME, api=api)
        make_claim(NS, "theirs", "theirs", provisioner="other.example/nfs", api=api)
        wait.until(lambda: len(p.provisioned) == 1, timeout=5, what="one attempt")
        time.sleep(0.4)
    assert len(p.provisioned) == 1 and api.objects("persistentvolumes") == []
    assert [r for r in reasons(api, "mine") if r != "Provisioning"] == [] and api.events_about("theirs") == []
    assert decisions.finalizers(claim_of(api, "mine") or {}) == []


def test_volumes_of_others_and_guarded_volumes_are_never_deleted() -> None:
    """Real: test_volume_provisioned_by_someone_else_is_not_deleted and test_volume_name_hook_and_deletion_guard."""
    api = FakeApi()

    class Guarded(MemoryProvisioner):
        def should_delete(self, volume: dict[str, object]) -> bool:
            return "keep" not in str(volume["metadata"]["name"])  # type: ignore[index]
    p = Guarded()
    for name, by in (("foreign", "other.example/nfs"), ("keep-me", NAME)):
        api.create(kube.volumes_path(), {"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {
            "name": name, "annotations": {decisions.ANN_PROVISIONED_BY: by}}, "spec": {
            "capacity": {"storage": "1Mi"}, "accessModes": ["ReadWriteOnce"],
            "persistentVolumeReclaimPolicy": "Delete", "nfs": {"server": "x", "path": f"/{name}"}}})
        api.release(name)
    with running(api, p):
        time.sleep(0.5)
    assert p.deleted == [] and sorted(v["metadata"]["name"] for v in api.objects("persistentvolumes")) == [
        "foreign", "keep-me"]
