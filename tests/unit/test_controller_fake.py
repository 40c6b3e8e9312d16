"""The provision controller's state machines against the in-memory API (``controller.testing``): fast, no
servers. Each test names the real-control-plane test that proves the same behaviour (the fake is never the only
proof); tests/kube/test_fake_api.py holds the fake to the API server's contract."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from nfs_provisioner.controller import (
    LeaderElectionSettings,
    ProvisionController,
    ProvisioningError,
    ProvisioningState,
    ProvisionOptions,
    RetrySettings,
    decisions,
    inflight,
    resizing,
)
from nfs_provisioner.controller.testing import FakeApi, MemoryProvisioner
from nfs_provisioner.kube import client as kube
from nfs_provisioner.kube import errors
from tests.support import wait
from tests.support.builders import make_claim, make_class
from tests.support.fakes import NAME, NS, claim_of, pv_name, reasons, running, volume

pytestmark = pytest.mark.unit

CLAIM_FINALIZER = decisions.claim_finalizer("default")


def test_claim_becomes_a_volume_held_by_finalizers_and_its_deletion_removes_the_asset() -> None:
    """Claim -> PV (claimRef, class, provisioned-by, PV finalizer) with the claim finalizer held only while the
    provision runs; claim deleted -> Released -> asset, PV and finalizer gone. Real: tests/test_controller.py::
    test_guide_flow_end_to_end_with_the_hostpath_example and
    test_claim_finalizer_is_held_while_provisioning_and_pv_finalizer_until_deleted."""
    api, p = FakeApi(), MemoryProvisioner()
    held: list[list[str]] = []
    p.on_provision = lambda o: held.append(decisions.finalizers(claim_of(api, "data") or {}))
    make_class("c", NAME, api=api)
    with running(api, p):
        claim = make_claim(NS, "data", "c", provisioner=NAME, api=api)
        name = pv_name(claim)
        pv = wait.until(lambda: volume(api, name), timeout=5, what="the PV")
        assert held == [[CLAIM_FINALIZER]]
        assert pv["spec"]["claimRef"]["uid"] == claim["metadata"]["uid"]
        assert pv["spec"]["storageClassName"] == "c"
        assert pv["metadata"]["annotations"][decisions.ANN_PROVISIONED_BY] == NAME
        assert decisions.finalizers(pv) == [decisions.PV_FINALIZER]
        assert pv["spec"]["capacity"] == {"storage": "1Mi"}
        wait.until(lambda: reasons(api, "data") == ["Provisioning", "ProvisioningSucceeded"], timeout=5,
                   what="the two events")
        wait.until(lambda: decisions.finalizers(claim_of(api, "data") or {"metadata": {"finalizers": ["x"]}}) == [],
                   timeout=5, what="the claim finalizer dropped")

        api.bind(NS, "data", name)
        api.delete(kube.claims_path(NS, "data"))
        assert claim_of(api, "data") is None
        time.sleep(0.3)
        assert p.deleted == []  # Bound: never deleted before the binder releases it
        api.release(name)
        wait.until(lambda: volume(api, name) is None, timeout=5, what="the PV gone")
        assert p.deleted == [name] and p.assets == {}
        assert p.provisioned == [name]


def test_retain_volume_keeps_no_finalizer_and_is_never_deleted() -> None:
    """Real: tests/kube/test_controller.py::test_retain_volume_is_never_deleted."""
    api, p = FakeApi(), MemoryProvisioner()
    make_class("keep", NAME, reclaim="Retain", api=api)
    with running(api, p):
        name = pv_name(make_claim(NS, "c", "keep", provisioner=NAME, api=api))
        pv = wait.until(lambda: volume(api, name), timeout=5, what="the PV")
        assert pv["spec"]["persistentVolumeReclaimPolicy"] == "Retain"
        assert decisions.PV_FINALIZER not in decisions.finalizers(pv)
        api.bind(NS, "c", name)
        api.delete(kube.claims_path(NS, "c"))
        api.release(name)
        time.sleep(0.5)
        assert p.deleted == [] and name in p.assets and volume(api, name) is not None


def test_a_rejected_claim_gets_one_event_per_attempt_no_pv_and_no_record_meanwhile() -> None:
    """A provisioner's refusal (bad class parameters) is a Warning event per attempt, retried with backoff until
    it succeeds; no PV and no claim finalizer meanwhile. Real: tests/test_controller.py::
    test_a_failing_claim_backs_off_although_its_finalizer_comes_and_goes and
    tests/e2e/test_appliance_e2e.py::test_rejections_reach_the_user_as_events_and_leave_nothing."""
    api, p = FakeApi(), MemoryProvisioner()
    p.provision_errors = [ProvisioningError("StorageClass c: invalid parameter 'size'")] * 2
    make_class("c", NAME, api=api)
    with running(api, p):
        name = pv_name(make_claim(NS, "bad", "c", provisioner=NAME, api=api))
        wait.until(lambda: volume(api, name), timeout=5, what="the PV once the refusals stop")
        wait.until(lambda: reasons(api, "bad").count("ProvisioningSucceeded") == 1, timeout=5, what="success")
    failed = [(t, m) for t, r, m in api.events_about("bad") if r == "ProvisioningFailed"]
    assert failed == [("Warning", "StorageClass c: invalid parameter 'size'")] * 2
    assert p.provisioned == [name] * 3
    assert decisions.finalizers(claim_of(api, "bad") or {}) == []


def test_failure_threshold_gives_up_until_the_claim_changes() -> None:
    """Real: tests/kube/test_controller.py::test_failure_thresholds_stop_retries."""
    api, p = FakeApi(), MemoryProvisioner()
    p.provision_errors = [RuntimeError("no space")] * 100
    make_class("c", NAME, api=api)
    with running(api, p, retry=RetrySettings(base_delay=0.02, max_delay=0.05, overall_qps=0,
                                             failed_provision_threshold=2)):
        make_claim(NS, "c", "c", provisioner=NAME, api=api)
        wait.until(lambda: len(p.provisioned) == 3, timeout=5, what="three attempts")
        time.sleep(0.4)
        assert len(p.provisioned) == 3  # the first attempt and two retries, then given up
        api.patch(kube.claims_path(NS, "c"), {"metadata": {"labels": {"changed": "yes"}}})
        wait.until(lambda: len(p.provisioned) == 4, timeout=5, what="one more attempt after a change")


def test_block_claim_without_support_fails_once() -> None:
    """Real: tests/kube/test_controller.py::test_block_claim_without_support_fails_once."""
    api, p = FakeApi(), MemoryProvisioner()
    make_class("c", NAME, api=api)
    with running(api, p):
        make_claim(NS, "blk", "c", provisioner=NAME, block=True, api=api)
        wait.until(lambda: reasons(api, "blk") == ["ProvisioningFailed"], timeout=5, what="one event")
        time.sleep(0.3)
    assert api.events_about("blk") == [("Warning", "ProvisioningFailed",
                                        f"{NAME} does not support block volume provisioning")]
    assert p.provisioned == [] and api.objects("persistentvolumes") == []


def test_conflicts_and_lost_answers_are_retried_without_provisioning_twice() -> None:
    """A 409 on the claim's in-flight PATCH is retried; a PV create whose answer is lost is found saved
    (AlreadyExists) and the asset is neither made again nor deleted. Real: tests/test_controller_crash.py::
    test_pv_save_failure_keeps_the_asset_and_retries_until_saved."""
    api, p = FakeApi(), MemoryProvisioner()
    api.fail(errors.Conflict(409, "Conflict", "the object has been modified"), method="PATCH",
             resource="persistentvolumeclaims")
    api.fail(errors.TransportError("connection reset"), method="POST", resource="persistentvolumes", after=True)
    make_class("c", NAME, api=api)
    with running(api, p):
        name = pv_name(make_claim(NS, "c", "c", provisioner=NAME, api=api))
        wait.until(lambda: "ProvisioningSucceeded" in reasons(api, "c"), timeout=10, what="saved")
    assert p.provisioned == [name] and p.deleted == []
    assert [r for r in reasons(api, "c") if r != "Provisioning"] == ["ProvisioningFailed", "ProvisioningSucceeded"]
    assert "could not be saved; the volume is kept" in api.events_about("c")[1][2]
    assert [o["metadata"]["name"] for o in api.objects("persistentvolumes")] == [name]


@pytest.mark.parametrize("record", ["finalizer", "journal"])
def test_claim_deleted_mid_provision_is_finished_then_rolled_back(record: str, tmp_path: Path) -> None:
    """An IN_BACKGROUND failure, then the claim is deleted: provision is called again (rolling back) and the asset
    deleted; no PV. The journal costs no claim write and lets the claim go at once. Real: tests/kube/test_controller.py
    ::test_in_background_provision_is_finished_and_rolled_back_after_the_claim_is_deleted and
    tests/kube/test_controller_crash.py::test_claim_deleted_while_controller_dead_mid_provision_leaves_no_orphan."""
    api, p = FakeApi(), MemoryProvisioner()
    journal = tmp_path / "journal"
    calls: list[ProvisionOptions] = []

    def first_deletes_the_claim(o: ProvisionOptions) -> None:
        calls.append(o)
        if len(calls) == 1:
            if record == "journal":
                assert inflight.LocalJournal.record_names(journal) == [f"{o.claim['metadata']['uid']}.json"]
            api.delete(kube.claims_path(NS, "gone"))
            # The retry must see the deletion (the worker's backoff is shorter than a busy machine's event delivery)
            uid = o.claim["metadata"]["uid"]
            wait.until(lambda: decisions.is_deleting(controllers[0].claims.get(uid) or {"metadata": {
                "deletionTimestamp": "gone"}}), timeout=5, what="the deletion in the cache")
            raise ProvisioningError("still copying", ProvisioningState.IN_BACKGROUND)
    p.on_provision = first_deletes_the_claim
    make_class("c", NAME, api=api)
    controllers: list[ProvisionController] = []
    with running(api, p, in_flight_journal=journal if record == "journal" else None) as c:
        controllers.append(c)
        name = pv_name(make_claim(NS, "gone", "c", provisioner=NAME, api=api))
        wait.until(lambda: p.deleted == [name], timeout=5, what="the asset rolled back")
        wait.until(lambda: claim_of(api, "gone") is None, timeout=5, what="the claim gone")
    assert [o.rolling_back for o in calls] == [False, True]
    assert p.assets == {} and api.objects("persistentvolumes") == []
    claim_writes = [m for m, path in api.requests if m in ("PATCH", "PUT") and "persistentvolumeclaims" in path]
    if record == "journal":
        assert claim_writes == [] and inflight.LocalJournal.record_names(journal) == []
    else:
        assert claim_writes == ["PATCH", "PATCH"]  # finalizer added, then removed (which deletes the claim)


def test_a_journal_record_left_by_a_dead_run_is_rolled_back_on_start(tmp_path: Path) -> None:
    """A record whose claim is gone: the asset is learned by provisioning again and deleted, the record dropped.
    Real: tests/kube/test_controller_crash.py::test_claim_deleted_while_controller_dead_mid_provision_leaves_no_orphan
    [journal]."""
    api, p = FakeApi(), MemoryProvisioner()
    make_class("c", NAME, api=api)
    claim = make_claim(NS, "lost", "c", provisioner=NAME)
    claim["metadata"]["uid"] = "0b7e5a52-1111-4222-8333-444455556666"
    journal = tmp_path / "journal"
    inflight.LocalJournal(journal, legacy=inflight.ClaimFinalizer(CLAIM_FINALIZER, lambda c, _: c)).begin(claim)
    p.assets[pv_name(claim)] = {"metadata": {"name": pv_name(claim)}}
    with running(api, p, in_flight_journal=journal):
        wait.until(lambda: not inflight.LocalJournal.record_names(journal), timeout=5, what="the record dropped")
    assert p.deleted == [pv_name(claim)] and p.assets == {}
    assert api.objects("persistentvolumes") == []


def test_an_expired_watch_relists_and_misses_nothing() -> None:
    """Real: tests/kube/test_controller_crash.py::test_informer_relists_after_410_gone."""
    api, p = FakeApi(), MemoryProvisioner()
    make_class("c", NAME, api=api)
    with running(api, p) as c:
        wait.until(lambda: all(i._stream is not None for i in c.informers), timeout=5, what="watches open")
        api.expire_watches()
        name = pv_name(make_claim(NS, "after", "c", provisioner=NAME, api=api))
        wait.until(lambda: volume(api, name), timeout=5, what="the PV of a claim made after the expiry")
        assert all(i.relists >= 1 for i in c.informers)


def test_a_failed_delete_is_reported_on_the_volume_and_retried_with_its_finalizer_kept() -> None:
    """Real: tests/kube/test_controller.py::test_failure_thresholds_stop_retries (VolumeFailedDelete) and
    tests/kube/test_controller_crash.py::test_killed_mid_delete_and_pv_deleted_meanwhile_still_removes_the_asset."""
    api, p = FakeApi(), MemoryProvisioner()
    p.delete_errors = [RuntimeError("device busy")]
    make_class("c", NAME, api=api)
    with running(api, p):
        name = pv_name(make_claim(NS, "c", "c", provisioner=NAME, api=api))
        wait.until(lambda: volume(api, name), timeout=5, what="the PV")
        api.bind(NS, "c", name)
        api.delete(kube.claims_path(NS, "c"))
        api.delete(kube.volumes_path(name))  # someone deletes the PV too: its finalizer keeps it until done
        api.release(name)
        wait.until(lambda: volume(api, name) is None, timeout=5, what="the PV gone after a retry")
    assert p.deleted == [name, name] and p.assets == {}
    assert api.events_about(name) == [("Warning", "VolumeFailedDelete", "device busy")]


def test_only_the_leader_provisions_and_a_standby_takes_over_when_it_stops() -> None:
    """Real: tests/kube/test_controller_crash.py::test_leader_election_only_the_leader_provisions_and_failover."""
    api = FakeApi()
    make_class("c", NAME, api=api)
    a, b = MemoryProvisioner(), MemoryProvisioner()

    def election(identity: str) -> LeaderElectionSettings:
        return LeaderElectionSettings(enabled=True, namespace="kube-system", name="fake-lease", identity=identity,
                                      lease_duration=1.0, renew_deadline=0.6, retry_period=0.1)
    with running(api, a, leader_election=election("a")) as first:
        wait.until(lambda: first.leading, timeout=5, what="a leading")
        with running(api, b, leader_election=election("b")) as second:
            name = pv_name(make_claim(NS, "one", "c", provisioner=NAME, api=api))
            wait.until(lambda: volume(api, name), timeout=5, what="the PV")
            assert a.provisioned == [name] and b.provisioned == [] and not second.leading
            first.stop(wait=True)  # releases the Lease: the standby need not wait for it to expire
            wait.until(lambda: second.leading, timeout=5, what="b leading")
            other = pv_name(make_claim(NS, "two", "c", provisioner=NAME, api=api))
            wait.until(lambda: volume(api, other), timeout=5, what="the second PV")
            assert b.provisioned == [other] and a.provisioned == [name]
    assert api.get(kube.leases_path("kube-system", "fake-lease"))["spec"]["holderIdentity"] == ""  # b released it


def stored_claim(api: FakeApi) -> dict[str, Any]:
    """The one claim as stored (read without a request: the test's own reads would hide the resizer's)."""
    [claim] = api.objects("persistentvolumeclaims", NS)
    return claim


class Growing:
    """An Expander recording what it was asked to grow (``controller.resizing.Expander``)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int]] = []

    def expand(self, volume: dict[str, Any], new_bytes: int) -> None:
        self.calls.append((volume["metadata"]["name"], new_bytes))


def test_a_bigger_request_is_resized_through_a_conflict_and_a_smaller_one_refused() -> None:
    """The claim's status in progress, the asset grown, the PV's and the claim's capacity set, a 409 on the claim's
    status retried from the fresh claim; shrinking refused with one event. Real: tests/test_appliance_e2e.py::
    test_expansion_is_finished_the_way_kubernetes_expects and tests/test_stalls.py::
    test_expansion_reports_no_conflict_and_refuses_an_impossible_size."""
    api, p, grower = FakeApi(), MemoryProvisioner(), Growing()
    make_class("c", NAME, expansion=True, api=api)
    with running(api, p) as c:
        resizer = resizing.Resizer(api=api, expander=grower, names=(NAME,), claims=c.claims, volumes=c.volumes,
                                   classes=c.classes, recorder=c.recorder, retry=c.settings.retry)
        c.claims.on_change = resizing.chain(c.claims.on_change, resizer.on_claim)  # as the appliance wires it
        resizer.start()
        try:
            name = pv_name(make_claim(NS, "c", "c", provisioner=NAME, api=api))
            wait.until(lambda: volume(api, name), timeout=5, what="the PV")
            api.bind(NS, "c", name)
            api.fail(errors.Conflict(409, "Conflict", "the object has been modified"), method="PATCH",
                     resource="persistentvolumeclaims", name="c", subresource="status")
            api.patch(kube.claims_path(NS, "c"), {"spec": {"resources": {"requests": {"storage": "2Mi"}}}})
            wait.until(lambda: stored_claim(api)["status"].get("capacity") == {"storage": "2Mi"}
                       and stored_claim(api)["status"].get("allocatedResourceStatuses") is None, timeout=5,
                       what="the claim's capacity, the resize finished")
            # Once or twice: a sync that runs before the cache has the finished status grows it again (idempotent).
            assert grower.calls and set(grower.calls) == {(name, 2 * 1024 * 1024)}
            assert ("GET", kube.claims_path(NS)) in api.requests  # the 409's retry read the claim afresh (by list)
            assert (volume(api, name) or {})["spec"]["capacity"] == {"storage": "2Mi"}
            assert stored_claim(api)["status"]["allocatedResources"] == {"storage": "2Mi"}
            api.patch(kube.claims_path(NS, "c"), {"spec": {"resources": {"requests": {"storage": "1Mi"}}}})
            wait.until(lambda: "VolumeResizeFailed" in reasons(api, "c"), timeout=5, what="the refusal")
        finally:
            resizer.stop()
    resizes = [r for r in reasons(api, "c") if "Resiz" in r]
    assert resizes[:2] == ["Resizing", "VolumeResizeSuccessful"] and resizes.count("VolumeResizeFailed") == 1
    refusal = next(m for _, r, m in api.events_about("c") if r == "VolumeResizeFailed")
    assert "shrinking is not supported" in refusal and set(grower.calls) == {(name, 2 * 1024 * 1024)}
