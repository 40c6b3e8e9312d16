"""Pure logic of the controller: decisions, queues, backoff, token bucket, lease namespace, errors."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest

from nfs_provisioner.controller import ControllerSettings, ProvisionOptions, RetrySettings, decisions, leadership
from nfs_provisioner.controller.decisions import Verdict
from nfs_provisioner.controller.queueing import RateLimiter, ShutDown, WorkQueue
from nfs_provisioner.kube import client as kube
from nfs_provisioner.kube import errors

pytestmark = pytest.mark.unit

US = frozenset({"example.com/us"})


def claim(**kw: Any) -> dict[str, Any]:
    ann = kw.pop("annotations", {})
    spec = {"storageClassName": "cls", "accessModes": ["ReadWriteOnce"],
            "resources": {"requests": {"storage": "1Gi"}}, **kw}
    return {"metadata": {"name": "c", "namespace": "ns", "uid": "u-1", "resourceVersion": "7", "annotations": ann},
            "spec": spec}


def cls(**kw: Any) -> dict[str, Any]:
    return {"metadata": {"name": "cls"}, "provisioner": "example.com/us", **kw}


GA = decisions.ANN_STORAGE_PROVISIONER
BETA = decisions.ANN_BETA_STORAGE_PROVISIONER


@pytest.mark.parametrize(("annotations", "verdict"), [
    ({GA: "example.com/us"}, Verdict.PROVISION),
    ({BETA: "example.com/us"}, Verdict.PROVISION),
    ({GA: "example.com/us", BETA: "other/x"}, Verdict.PROVISION),
    ({GA: "other/x", BETA: "example.com/us"}, Verdict.SKIP),  # the GA annotation wins
    ({}, Verdict.SKIP),
])
def test_storage_provisioner_annotations(annotations: dict[str, str], verdict: Verdict) -> None:
    assert decisions.should_provision(claim(annotations=annotations), cls(), US) is verdict


def test_bound_claims_classes_and_wait_for_first_consumer() -> None:
    ours = {GA: "example.com/us"}
    assert decisions.should_provision(claim(annotations=ours, volumeName="pv"), cls(), US) is Verdict.SKIP
    assert decisions.should_provision(claim(annotations=ours), None, US) is Verdict.NO_CLASS
    assert decisions.should_provision(claim(annotations=ours), cls(provisioner="x/y"), US) is Verdict.CLASS_NOT_OURS
    wffc = cls(volumeBindingMode="WaitForFirstConsumer")
    assert decisions.should_provision(claim(annotations=ours), wffc, US) is Verdict.WAIT_FOR_NODE
    with_node = {**ours, decisions.ANN_SELECTED_NODE: "n1"}
    assert decisions.should_provision(claim(annotations=with_node), wffc, US) is Verdict.PROVISION


def test_claim_class_prefers_the_beta_annotation() -> None:
    assert decisions.claim_class(claim()) == "cls"
    assert decisions.claim_class(claim(annotations={decisions.ANN_BETA_STORAGE_CLASS: "old"})) == "old"
    assert decisions.claim_class(claim(storageClassName=None)) == ""


def volume(phase: str = "Released", policy: str = "Delete", by: str = "example.com/us", **meta: Any) -> dict[str, Any]:
    return {"metadata": {"name": "pv", "annotations": {decisions.ANN_PROVISIONED_BY: by}, **meta},
            "spec": {"persistentVolumeReclaimPolicy": policy}, "status": {"phase": phase}}


def test_should_delete_rules() -> None:
    assert decisions.should_delete(volume(), US)
    assert not decisions.should_delete(volume(phase="Bound"), US)
    assert not decisions.should_delete(volume(policy="Retain"), US)
    assert not decisions.should_delete(volume(policy="Recycle"), US)
    assert not decisions.should_delete(volume(by="other/x"), US)
    migrated = volume(by="kubernetes.io/nfs")
    migrated["metadata"]["annotations"][decisions.ANN_MIGRATED_TO] = "example.com/us"
    assert decisions.should_delete(migrated, US)
    # Being deleted: only while our finalizer still says the asset exists.
    assert not decisions.should_delete(volume(deletionTimestamp="now"), US)
    assert decisions.should_delete(volume(deletionTimestamp="now", finalizers=[decisions.PV_FINALIZER]), US)


def test_pv_finalizer_changes() -> None:
    assert decisions.finalizer_change(volume(phase="Bound"), US, add_finalizer=True) is True
    assert decisions.finalizer_change(volume(phase="Bound"), US, add_finalizer=False) is None
    assert decisions.finalizer_change(volume(phase="Bound", policy="Retain",
                                             finalizers=[decisions.PV_FINALIZER]), US, add_finalizer=True) is False
    assert decisions.finalizer_change(volume(phase="Bound", finalizers=[decisions.PV_FINALIZER]), US,
                                      add_finalizer=True) is None
    assert decisions.finalizer_change(volume(phase="Bound", by="x/y"), US, add_finalizer=True) is None


def test_complete_volume_sets_what_the_library_owns() -> None:
    c = claim()
    pv = decisions.complete_volume({"metadata": {"annotations": {"mine": "1"}},
                                    "spec": {"persistentVolumeReclaimPolicy": "Delete"}},
                                   claim=c, pv_name="pvc-u-1", provisioner="example.com/us", add_finalizer=True)
    assert pv["metadata"]["name"] == "pvc-u-1"
    assert pv["metadata"]["annotations"] == {"mine": "1", decisions.ANN_PROVISIONED_BY: "example.com/us"}
    assert pv["metadata"]["finalizers"] == [decisions.PV_FINALIZER]
    assert pv["spec"]["claimRef"] == {"kind": "PersistentVolumeClaim", "apiVersion": "v1", "namespace": "ns",
                                      "name": "c", "uid": "u-1", "resourceVersion": "7"}
    assert pv["spec"]["storageClassName"] == "cls"
    retain = decisions.complete_volume({"spec": {"persistentVolumeReclaimPolicy": "Retain"}}, claim=c,
                                       pv_name="p", provisioner="x/y", add_finalizer=True)
    assert "finalizers" not in retain["metadata"]
    with pytest.raises(ValueError, match="expected 'p'"):
        decisions.complete_volume({"metadata": {"name": "q"}}, claim=c, pv_name="p", provisioner="x/y",
                                  add_finalizer=False)


def test_names_and_options() -> None:
    assert decisions.lease_name("example.com/nfs") == "example.com-nfs"
    assert decisions.default_volume_name(claim()) == "pvc-u-1"
    assert decisions.claim_finalizer("node-1") == "provisioning.nfs-provisioner.io/node-1"
    o = ProvisionOptions(storage_class=cls(parameters={"a": "b"}, mountOptions=["vers=4.1"]), pv_name="p",
                         claim=claim(), selected_node={"metadata": {"name": "n"}})
    assert (o.parameters, o.reclaim_policy, o.mount_options) == ({"a": "b"}, "Delete", ["vers=4.1"])
    assert (o.access_modes, o.requested_storage, o.volume_mode, o.selected_node_name) == (
        ["ReadWriteOnce"], "1Gi", "Filesystem", "n")
    with pytest.raises(ValueError, match="vendor"):
        ControllerSettings(provisioner_name="noslash")


def test_backoff_is_exponential_capped_or_fixed() -> None:
    lim = RateLimiter(RetrySettings(overall_qps=0))
    assert [lim.when("k") for _ in range(8)] == [15, 30, 60, 120, 240, 480, 960, 1000]
    assert lim.failures("k") == 8
    lim.forget("k")
    assert lim.when("k") == 15
    fixed = RateLimiter(RetrySettings(exponential_backoff=False, fixed_delay=15))
    assert [fixed.when("k") for _ in range(3)] == [15, 15, 15]


def test_overall_bucket_limits_retry_storms() -> None:
    now = [0.0]
    lim = RateLimiter(RetrySettings(base_delay=0.001, overall_qps=10, overall_burst=2), clock=lambda: now[0])
    assert lim.when("a") == 0.001
    assert lim.when("b") == 0.001
    assert lim.when("c") == pytest.approx(0.1)  # bucket empty: 1/qps


def test_work_queue_dedupes_and_never_runs_a_key_twice_at_once() -> None:
    q = WorkQueue("t", RateLimiter(RetrySettings()))
    q.add("a")
    q.add("a")
    q.add("b")
    assert len(q) == 2
    assert q.get(0) == "a"
    q.add("a")  # re-added while processing: held back until done
    assert q.get(0) == "b"
    assert q.get(0) is None
    q.done("a")
    assert q.get(0) == "a"
    q.done("a")
    q.done("b")
    assert len(q) == 0


def test_work_queue_delays_and_shutdown() -> None:
    q = WorkQueue("t", RateLimiter(RetrySettings(base_delay=0.2, overall_qps=0)))
    t0 = time.monotonic()
    assert q.add_rate_limited("x") == 0.2
    assert q.get(0.05) is None
    assert q.get(2) == "x"
    assert 0.18 <= time.monotonic() - t0 < 1.0
    q.done("x")
    got: list[Any] = []

    def worker() -> None:
        try:
            q.get()
        except ShutDown as e:
            got.append(e)
    t = threading.Thread(target=worker)
    t.start()
    q.shut_down()
    t.join(2)
    assert got and not t.is_alive()


def test_token_bucket_enforces_qps_after_burst() -> None:
    now = [0.0]
    slept: list[float] = []
    b = kube.TokenBucket(qps=100, burst=3, clock=lambda: now[0], sleep=slept.append)
    for _ in range(3):
        assert b.acquire() == 0
    assert b.acquire() == pytest.approx(0.01)
    assert slept == [pytest.approx(0.01)]
    assert kube.TokenBucket(qps=0, burst=1).acquire() == 0


def test_lease_namespace_order(tmp_path: Path) -> None:
    sa = tmp_path / "namespace"
    assert leadership.default_namespace({"POD_NAMESPACE": "pods"}, str(sa)) == "pods"
    assert leadership.default_namespace({}, str(sa)) == "default"
    sa.write_text("from-sa\n")
    assert leadership.default_namespace({}, str(sa)) == "from-sa"


def test_api_errors_are_typed() -> None:
    assert isinstance(errors.from_status(409, {"reason": "AlreadyExists"}), errors.AlreadyExists)
    assert isinstance(errors.from_status(409, {"reason": "Conflict"}), errors.Conflict)
    assert not isinstance(errors.from_status(409, {"reason": "Conflict"}), errors.AlreadyExists)
    assert isinstance(errors.from_status(410, {}), errors.Gone)
    assert isinstance(errors.from_status(404, {}), errors.NotFound)
    e = errors.from_status(503, {"message": "etcd down"})
    assert isinstance(e, errors.ServerError) and e.retryable and "etcd down" in str(e)
    assert not errors.from_status(422, {}).retryable
    assert kube.claims_path("a b", "c/d") == "/api/v1/namespaces/a%20b/persistentvolumeclaims/c%2Fd"


class ScriptedApi:
    """Answers an Informer's list/watch calls from a script (pure logic of the informer loop)."""

    def __init__(self, watches: list[Any]) -> None:
        self.lists = 0
        self.watch_from: list[str] = []
        self._watches = watches

    def get(self, path: str, **query: Any) -> dict[str, Any]:
        self.lists += 1
        rv = str(100 * self.lists)
        return {"metadata": {"resourceVersion": rv},
                "items": [{"metadata": {"name": f"listed-{self.lists}", "resourceVersion": rv}}]}

    def watch(self, path: str, *, resource_version: str, timeout_seconds: int) -> Any:
        self.watch_from.append(resource_version)
        step = self._watches.pop(0) if self._watches else []
        if isinstance(step, Exception):
            raise step
        return ScriptedStream(step)


class ScriptedStream(list[Any]):
    def close(self) -> None:
        pass


def test_informer_relists_on_both_shapes_of_410_and_resumes_otherwise() -> None:
    from nfs_provisioner.controller import watching

    def obj(name: str, rv: str) -> dict[str, Any]:
        return {"metadata": {"name": name, "resourceVersion": rv}}
    api = ScriptedApi([
        [{"type": "ADDED", "object": obj("a", "101")}, {"type": "BOOKMARK", "object": obj("", "150")}],
        errors.Gone(410, "Expired", "too old"),  # HTTP 410 on the watch request
        [{"type": "ERROR", "object": {"kind": "Status", "code": 410, "message": "too old resource version"}}],
        [{"type": "DELETED", "object": obj("listed-3", "301")}],
    ])
    changes: list[tuple[str | None, str | None]] = []
    inf = watching.Informer(api, name="t", path="/x", kind="Thing", api_version="v1",  # type: ignore[arg-type]
                            key=lambda o: o["metadata"]["name"],
                            on_change=lambda old, new: changes.append(
                                (old and old["metadata"]["name"], new and new["metadata"]["name"])))
    inf.start()
    wait_for = time.monotonic() + 5
    while len(api.watch_from) < 5 and time.monotonic() < wait_for:
        time.sleep(0.01)
    inf.stop()
    inf.join(2)
    # list@100, watch@100 (a, bookmark 150), watch@150 -> 410, list@200, watch@200 -> ERROR 410, list@300, ...
    assert api.watch_from[:5] == ["100", "150", "200", "300", "301"]
    assert api.lists == 3 and inf.relists == 2
    assert inf.cache == {} and inf.resource_version == "301"
    assert ("listed-1", None) in changes and ("listed-2", None) in changes  # re-list reports what vanished
    assert (None, "a") in changes and ("listed-3", None) in changes
    assert inf.cache.get("listed-1") is None


def test_retry_policy_thresholds_zero_forever_and_give_up() -> None:
    from nfs_provisioner.controller import outcomes
    from nfs_provisioner.controller.controller import ProvisionController

    def run(threshold: int, outcome: outcomes.Outcome, failures: int) -> tuple[int, list[str], WorkQueue]:
        q = WorkQueue("t", RateLimiter(RetrySettings(base_delay=1000, overall_qps=0)))
        given_up: list[str] = []
        requeued = 0
        for _ in range(failures):
            before = q.delayed()
            ProvisionController._handle(q, "k", outcome, threshold, given_up.append)
            requeued += q.delayed() - before
        return requeued, given_up, q

    fail = outcomes.retry("boom")
    assert run(0, fail, 50)[:2] == (50, [])  # 0 = retry forever
    requeued, given_up, q = run(2, fail, 3)
    assert (requeued, given_up) == (2, ["k"])  # first attempt + 2 retries, then give up
    assert q.num_requeues("k") == 2  # not forgotten: a later change retries once more, as in Go
    assert run(2, outcomes.retry_forever("asset exists"), 10)[:2] == (10, [])
    requeued, given_up, q = run(2, outcomes.retry_after(1000, "save"), 5)
    assert (requeued, given_up, q.num_requeues("k")) == (5, [], 0)  # not a provisioner failure
    q = WorkQueue("t", RateLimiter(RetrySettings(overall_qps=0)))
    q.limiter.when("k")
    ProvisionController._handle(q, "k", outcomes.DONE, 2, None)
    assert q.num_requeues("k") == 0


def test_watched_objects_are_compacted_once_the_watch_has_brought_them() -> None:
    """Objects from watch events share their strings in the cache (compacted when the watch ends, or a second
    after the last compaction), as a list page's do; what the handlers saw is equal to what is cached."""
    import json as json_mod

    from nfs_provisioner.controller.watching import Informer

    lines = [json_mod.dumps({"type": "ADDED", "object": {"metadata": {"name": f"pv-{i}", "resourceVersion": str(i)},
                                                          "spec": {"accessModes": ["ReadWriteMany"]}}})
             for i in range(3)]

    class Api:
        def watch(self, path: str, **kw: object) -> list[dict[str, object]]:
            return [json_mod.loads(line) for line in lines]  # each its own strings, as decoded events are

    seen: list[dict[str, object]] = []
    informer = Informer(Api(), name="volumes", path="/api/v1/persistentvolumes",  # type: ignore[arg-type]
                        kind="PersistentVolume", api_version="v1", key=lambda o: o["metadata"]["name"],
                        on_change=lambda old, new: seen.append(new) if new is not None else None)
    informer._watch()
    cached = [informer.cache[f"pv-{i}"] for i in range(3)]
    assert cached == seen
    modes = [c["spec"]["accessModes"][0] for c in cached]
    assert modes[0] is modes[1] is modes[2]
    assert informer.resource_version == "2"
