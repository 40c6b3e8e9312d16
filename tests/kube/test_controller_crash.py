"""Crash safety, leader election, PV-save failures, 410 Gone and SIGTERM, with real processes.

The hostPath example (wrapped by tests/support/controller_crashy.py) runs as a real
controller process and is killed with SIGKILL at the dangerous moments."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from nfs_provisioner.controller import (
    LeaderElectionSettings,
    ProvisionController,
    ServingSettings,
    decisions,
    watching,
)
from nfs_provisioner.kube import client as kube
from nfs_provisioner.kube import errors
from tests.support import kubecluster, wait
from tests.support.builders import make_claim, make_class
from tests.support.controller_helpers import (
    CRASHY_SCRIPT,
    PausableProxy,
    Recording,
    controller,
    delete_claim,
    get_claim,
    get_volume,
    provisioner_fixture,
    pv_name,
    settings,
    wait_bound,
    wait_gone,
)

pytestmark = pytest.mark.kube


name = provisioner_fixture("crash")


class Proc:
    """A controller process (tests/support/controller_crashy.py) with its log."""

    def __init__(self, cluster: kubecluster.Cluster, tmp: Path, provisioner: str, *, node: str = "node-crash",
                 extra: tuple[str, ...] = (), env: dict[str, str] | None = None, tag: str = "p") -> None:
        self.log_path = tmp / f"{tag}-{time.monotonic_ns()}.log"
        self.markers = tmp / "markers"
        self.markers.mkdir(exist_ok=True)
        self.log = self.log_path.open("w")
        self.popen = subprocess.Popen(
            [sys.executable, str(CRASHY_SCRIPT), "--kubeconfig", str(cluster.kubeconfig), "--provisioner-name",
             provisioner, "--pv-dir", str(tmp / "pv"), "--retry-delay", "0.3", "--failed-retry-threshold", "0",
             "--resync-period", "30", "-v", *extra],
            env={**os.environ, "NODE_NAME": node, "CRASHY_MARKERS": str(self.markers),
                 "CRASHY_HANG_PROVISION": str(tmp / "hang-provision"), "CRASHY_HANG_DELETE": str(tmp / "hang-delete"),
                 **(env or {})},
            stdout=self.log, stderr=subprocess.STDOUT)

    def kill(self) -> None:
        self.popen.send_signal(signal.SIGKILL)
        self.popen.wait(10)

    def terminate(self, timeout: float = 20) -> int:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
        try:
            return self.popen.wait(timeout)
        finally:
            if self.popen.poll() is None:
                self.kill()
            self.log.close()

    def output(self) -> str:
        return self.log_path.read_text()


@pytest.fixture
def procs() -> Iterator[list[Proc]]:
    started: list[Proc] = []
    yield started
    for p in started:
        if p.popen.poll() is None:
            p.kill()
        p.log.close()


def ours(api: kube.Client, provisioner: str) -> list[str]:
    return [v["metadata"]["name"] for v in api.get(kube.volumes_path())["items"]
            if decisions.annotations_of(v).get(decisions.ANN_PROVISIONED_BY) == provisioner]


FIN = decisions.claim_finalizer("node-crash")
RECORDS = ["finalizer", "journal"]
"""Where the in-flight record is kept: the claim finalizer (default) or ``--in-flight-journal``."""


def record_args(record: str, tmp: Path) -> tuple[str, ...]:
    return ("--in-flight-journal", str(tmp / "journal")) if record == "journal" else ()


def recorded(record: str, tmp: Path, kapi: kube.Client, namespace: str, claim: dict[str, Any]) -> bool:
    if record == "journal":
        return (tmp / "journal" / f"{claim['metadata']['uid']}.json").is_file()
    return FIN in decisions.finalizers(get_claim(kapi, namespace, claim["metadata"]["name"]) or {})


@pytest.mark.parametrize("record", RECORDS)
def test_killed_between_provision_and_pv_save_finishes_after_restart(
        cluster: kubecluster.Cluster, kapi: kube.Client, namespace: str, name: str, unique: str,
        tmp_path: Path, procs: list[Proc], record: str) -> None:
    make_class(f"c-{unique}", name, api=kapi)
    (tmp_path / "hang-provision").touch()
    extra = record_args(record, tmp_path)
    procs.append(Proc(cluster, tmp_path, name, extra=extra))
    claim = make_claim(namespace, "c", f"c-{unique}", api=kapi)
    pv = pv_name(claim)
    wait.until(lambda: (procs[0].markers / f"provisioned-{pv}").exists(), timeout=30, what="asset created")
    assert recorded(record, tmp_path, kapi, namespace, claim)
    if record == "journal":  # the journal replaces the finalizer: the claim is not written to
        assert FIN not in decisions.finalizers(get_claim(kapi, namespace, "c") or {})
    procs[0].kill()
    assert get_volume(kapi, pv) is None and (tmp_path / "pv" / pv).is_dir()

    (tmp_path / "hang-provision").unlink()
    procs.append(Proc(cluster, tmp_path, name, extra=extra))
    bound = wait_bound(kapi, namespace, "c")
    assert bound["spec"]["volumeName"] == pv
    assert ours(kapi, name) == [pv]  # exactly one PV: no duplicate
    assert os.listdir(tmp_path / "pv") == [pv]
    wait.until(lambda: not recorded(record, tmp_path, kapi, namespace, claim), timeout=10,
               what="in-flight record dropped")
    delete_claim(kapi, namespace, "c")
    wait_gone(lambda: get_volume(kapi, pv), "PV deleted")
    assert os.listdir(tmp_path / "pv") == []
    assert procs[1].terminate() == 0


@pytest.mark.parametrize("record", RECORDS)
def test_claim_deleted_while_controller_dead_mid_provision_leaves_no_orphan(
        cluster: kubecluster.Cluster, kapi: kube.Client, namespace: str, name: str, unique: str,
        tmp_path: Path, procs: list[Proc], record: str) -> None:
    make_class(f"c-{unique}", name, api=kapi)
    (tmp_path / "hang-provision").touch()
    extra = record_args(record, tmp_path)
    procs.append(Proc(cluster, tmp_path, name, extra=extra))
    claim = make_claim(namespace, "c", f"c-{unique}", api=kapi)
    pv = pv_name(claim)
    wait.until(lambda: (procs[0].markers / f"provisioned-{pv}").exists(), timeout=30, what="asset created")
    procs[0].kill()
    delete_claim(kapi, namespace, "c")
    if record == "journal":  # nothing holds the claim: it goes at once, its last state is in the journal
        wait_gone(lambda: get_claim(kapi, namespace, "c"), "claim deleted")
        assert recorded(record, tmp_path, kapi, namespace, claim)
    else:
        time.sleep(1)
        left = get_claim(kapi, namespace, "c")
        assert left is not None and left["metadata"].get("deletionTimestamp"), "the finalizer keeps the claim"
    assert (tmp_path / "pv" / pv).is_dir()

    (tmp_path / "hang-provision").unlink()
    procs.append(Proc(cluster, tmp_path, name, extra=extra))
    wait_gone(lambda: get_claim(kapi, namespace, "c"), "claim gone after roll-back")
    wait.until(lambda: os.listdir(tmp_path / "pv") == [], timeout=30, what="the orphan asset removed")
    wait.until(lambda: not recorded(record, tmp_path, kapi, namespace, claim), timeout=10,
               what="in-flight record dropped")
    assert ours(kapi, name) == []  # and no PV
    assert procs[1].terminate() == 0


def test_killed_mid_delete_and_pv_deleted_meanwhile_still_removes_the_asset(
        cluster: kubecluster.Cluster, kapi: kube.Client, namespace: str, name: str, unique: str,
        tmp_path: Path, procs: list[Proc]) -> None:
    make_class(f"c-{unique}", name, api=kapi)
    procs.append(Proc(cluster, tmp_path, name, env={"CRASHY_HANG_DELETE_BEFORE": "1"}))
    claim = make_claim(namespace, "c", f"c-{unique}", api=kapi)
    pv = pv_name(claim)
    wait_bound(kapi, namespace, "c")
    (tmp_path / "hang-delete").touch()
    delete_claim(kapi, namespace, "c")
    wait.until(lambda: (procs[0].markers / f"deleting-{pv}").exists(), timeout=30, what="delete started")
    procs[0].kill()
    assert (tmp_path / "pv" / pv).is_dir()
    # An admin deletes the PV object while no controller runs: the finalizer keeps it.
    kapi.delete(kube.volumes_path(pv))
    time.sleep(1)
    stuck = get_volume(kapi, pv)
    assert stuck is not None and decisions.PV_FINALIZER in decisions.finalizers(stuck)

    (tmp_path / "hang-delete").unlink()
    procs.append(Proc(cluster, tmp_path, name))
    wait_gone(lambda: get_volume(kapi, pv), "PV gone after restart")
    assert os.listdir(tmp_path / "pv") == []
    assert procs[1].terminate() == 0


def test_pv_save_failure_keeps_the_asset_and_retries_until_saved(
        cluster: kubecluster.Cluster, kapi: kube.Client, namespace: str, name: str, unique: str,
        tmp_path: Path) -> None:
    """A ValidatingAdmissionPolicy makes the API server refuse our PV: the Go library would delete the
    asset after N failures; we keep it and keep trying."""
    cls = f"c-{unique}"
    make_class(cls, name, api=kapi)
    policy = f"deny-pv-{unique}"
    kapi.create("/apis/admissionregistration.k8s.io/v1/validatingadmissionpolicies", {
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicy",
        "metadata": {"name": policy},
        "spec": {"failurePolicy": "Fail",
                 "matchConstraints": {"resourceRules": [{"apiGroups": [""], "apiVersions": ["v1"],
                                                         "operations": ["CREATE"],
                                                         "resources": ["persistentvolumes"]}]},
                 "validations": [{"expression": f"object.spec.storageClassName != '{cls}'",
                                  "message": "PV writes are refused for this test"}]}})
    binding_path = "/apis/admissionregistration.k8s.io/v1/validatingadmissionpolicybindings"
    kapi.create(binding_path, {"apiVersion": "admissionregistration.k8s.io/v1",
                               "kind": "ValidatingAdmissionPolicyBinding", "metadata": {"name": policy},
                               "spec": {"policyName": policy, "validationActions": ["Deny"]}})
    probe = {"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": f"probe-{unique}"},
             "spec": {"capacity": {"storage": "1Mi"}, "accessModes": ["ReadWriteOnce"], "storageClassName": cls,
                      "hostPath": {"path": "/tmp/x"}}}

    def refused() -> bool:
        try:
            kapi.create(kube.volumes_path(), probe)
        except errors.ApiError as e:
            return "PV writes are refused" in e.message
        kapi.delete(kube.volumes_path(probe["metadata"]["name"]))
        return False
    wait.until(refused, timeout=30, what="the policy to be active")

    p = Recording(tmp_path)
    try:
        with controller(kapi, p, settings(name)):
            claim = make_claim(namespace, "c", cls, api=kapi)
            pv = pv_name(claim)
            wait.until(lambda: any("could not be saved" in e["message"] for e in kapi.get(
                kube.events_path(namespace), fieldSelector="involvedObject.name=c")["items"]),
                timeout=30, what="ProvisioningFailed about the PV save")
            time.sleep(3)  # ~10 save retries at 0.3 s
            assert (tmp_path / pv).is_dir()
            assert p.deletes == []
            assert len(p.provisions) == 1  # the saved result is retried, not provisioned again
            assert FIN_DEFAULT in decisions.finalizers(get_claim(kapi, namespace, "c") or {})
            kapi.delete(f"{binding_path}/{policy}")
            wait_bound(kapi, namespace, "c", timeout=60)
            assert (tmp_path / pv).is_dir()
    finally:
        for path in (f"{binding_path}/{policy}",
                     f"/apis/admissionregistration.k8s.io/v1/validatingadmissionpolicies/{policy}"):
            with contextlib.suppress(errors.NotFound):
                kapi.delete(path)


FIN_DEFAULT = decisions.claim_finalizer("default")


def test_leader_election_only_the_leader_provisions_and_failover(
        cluster: kubecluster.Cluster, kapi: kube.Client, namespace: str, name: str, unique: str,
        tmp_path: Path) -> None:
    cls = f"c-{unique}"
    make_class(cls, name, api=kapi)
    le = LeaderElectionSettings(enabled=True, namespace=namespace, lease_duration=3, renew_deadline=2,
                                retry_period=0.3)
    a, b = Recording(tmp_path / "a"), Recording(tmp_path / "b")
    ca = ProvisionController(a, settings(name, leader_election=le.__class__(**{**le.__dict__, "identity": "a"})),
                             api=kapi, registry=CollectorRegistry())
    cb = ProvisionController(b, settings(name, leader_election=le.__class__(**{**le.__dict__, "identity": "b"})),
                             api=kube.Client.load(str(cluster.kubeconfig)), registry=CollectorRegistry())
    ca.start()
    wait.until(lambda: ca.leading, timeout=20, what="a leads")
    cb.start()
    try:
        lease = kapi.get(kube.leases_path(namespace, name.replace("/", "-")))
        assert lease["spec"]["holderIdentity"] == "a"
        claim = make_claim(namespace, "one", cls, api=kapi)
        wait_bound(kapi, namespace, "one")
        assert [o.pv_name for o in a.provisions] == [pv_name(claim)]
        time.sleep(1)
        assert b.provisions == [] and not cb.leading

        ca.stop(wait=True)  # graceful: releases the lease
        wait.until(lambda: cb.leading, timeout=10, what="b takes over")
        claim2 = make_claim(namespace, "two", cls, api=kapi)
        wait_bound(kapi, namespace, "two")
        assert [o.pv_name for o in b.provisions] == [pv_name(claim2)]
        assert len(a.provisions) == 1
        assert kapi.get(kube.leases_path(namespace, name.replace("/", "-")))["spec"]["holderIdentity"] == "b"
    finally:
        ca.stop(wait=True)
        cb.stop(wait=True)


def test_leader_killed_standby_takes_over_after_lease_expiry(
        cluster: kubecluster.Cluster, kapi: kube.Client, namespace: str, name: str, unique: str,
        tmp_path: Path, procs: list[Proc]) -> None:
    cls = f"c-{unique}"
    make_class(cls, name, api=kapi)
    lease_args = ("--leader-elect", "--lease-duration", "3", "--renew-deadline", "2", "--retry-period", "0.3")
    env = {"POD_NAMESPACE": namespace}
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    procs.append(Proc(cluster, tmp_path / "one", name, extra=(*lease_args, "--identity", "one"), env=env))
    lease_path = kube.leases_path(namespace, name.replace("/", "-"))
    wait.until(lambda: kapi.get(lease_path)["spec"]["holderIdentity"] == "one", timeout=30, what="one leads")
    procs.append(Proc(cluster, tmp_path / "two", name, extra=(*lease_args, "--identity", "two"), env=env))
    c1 = make_claim(namespace, "first", cls, api=kapi)
    wait_bound(kapi, namespace, "first")
    assert os.listdir(tmp_path / "one" / "pv") == [pv_name(c1)]
    assert not (tmp_path / "two" / "pv").exists()

    procs[0].kill()
    killed_at = time.monotonic()
    c2 = make_claim(namespace, "second", cls, api=kapi)
    wait_bound(kapi, namespace, "second", timeout=60)
    assert time.monotonic() - killed_at >= 2.0  # not before the lease could expire
    assert os.listdir(tmp_path / "two" / "pv") == [pv_name(c2)]
    assert kapi.get(lease_path)["spec"]["holderIdentity"] == "two"

    # SIGTERM: graceful exit, and the lease is released for the next one.
    assert procs[1].terminate() == 0, procs[1].output()
    assert kapi.get(lease_path)["spec"]["holderIdentity"] == ""
    assert "released lease" in procs[1].output()


def test_informer_resumes_each_watch_from_the_last_resource_version(kapi: kube.Client, namespace: str,
                                                                    unique: str) -> None:
    seen: list[str] = []
    inf = watching.Informer(kapi, name="test-claims", path=kube.claims_path(namespace), kind="PersistentVolumeClaim",
                            api_version="v1", key=lambda o: o["metadata"]["name"], watch_timeout=1,
                            on_change=lambda old, new: seen.append((new or old or {})["metadata"]["name"]))
    inf.start()
    try:
        assert inf.synced.wait(30)
        for i in range(4):
            make_claim(namespace, f"c{i}", f"none-{unique}", api=kapi)
            time.sleep(0.8)  # the server ends each watch after ~1 s; the next one resumes where it stopped
        wait.until(lambda: len(inf.cache) == 4, timeout=10, what="all claims seen")
        wait.until(lambda: inf.watches >= 3, timeout=10, what="three watch renewals")
        assert inf.relists == 0
        assert sorted(set(seen)) == ["c0", "c1", "c2", "c3"]
        assert inf.cache["c0"]["kind"] == "PersistentVolumeClaim"
        delete_claim(kapi, namespace, "c0")
        wait.until(lambda: "c0" not in inf.cache, timeout=10, what="deletion seen")
    finally:
        inf.stop()
        inf.join(5)
        assert not inf.alive()


def _watch_is_gone(kapi: kube.Client, path: str, resource_version: str) -> bool:
    """Whether a watch from ``resource_version`` is answered 410 Gone (HTTP status or an ERROR event)."""
    try:
        for event in kapi.watch(path, resource_version=resource_version, timeout_seconds=1):
            return bool(event["type"] == "ERROR" and event["object"].get("code") == 410)
    except errors.Gone:
        return True
    return False


def test_informer_relists_after_410_gone(kapi: kube.Client, namespace: str, unique: str) -> None:
    """A real 410 from the API server. The API server answers watches from its watch cache (compacting etcd
    changes nothing there: measured), and the cache still serves resourceVersion "1" while it holds every claim
    event since it was filled (a fresh cluster). It drops its oldest events only once they are older than its
    history window (75 s) and its buffer is full, so: one claim event, 76 s, then claim updates until a watch
    from "1" is 410 Gone (100 updates were enough, measured). On a cluster that ran a while it is 410 at once.
    (The unit tests cover both 410 shapes deterministically.)"""
    path = kube.claims_path(namespace)
    make_claim(namespace, "churn", f"none-{unique}", api=kapi)
    if not _watch_is_gone(kapi, path, "1"):
        time.sleep(76)
        deadline, updates = time.monotonic() + 120, 0
        while not _watch_is_gone(kapi, path, "1"):
            assert time.monotonic() < deadline, f"still no 410 for resourceVersion 1 after {updates} claim updates"
            for _ in range(50):
                kapi.patch(f"{path}/churn", {"metadata": {"labels": {"n": str(updates)}}})
                updates += 1
    make_claim(namespace, "seen", f"none-{unique}", api=kapi)
    inf = watching.Informer(kapi, name="test-claims", path=kube.claims_path(namespace), kind="PersistentVolumeClaim",
                            api_version="v1", key=lambda o: o["metadata"]["name"], on_change=lambda old, new: None)
    inf.resource_version = "1"
    inf.start()
    try:
        assert inf.synced.wait(30)
        assert inf.relists == 1
        assert "seen" in inf.cache
        make_claim(namespace, "later", f"none-{unique}", api=kapi)
        wait.until(lambda: "later" in inf.cache, timeout=10, what="watch resumed after the re-list")
    finally:
        inf.stop()
        inf.join(5)


def test_unreachable_api_server_makes_the_leader_step_down_then_lead_again(
        cluster: kubecluster.Cluster, kapi: kube.Client, namespace: str, name: str, unique: str,
        tmp_path: Path) -> None:
    """No crash loop: losing the lease stops the workers, the process stays, and it campaigns again."""
    cls = f"c-{unique}"
    make_class(cls, name, api=kapi)
    proxy = PausableProxy(cluster.api_url)
    api = kube.Client(dataclasses.replace(kapi.credentials, host=proxy.url), kube.ClientSettings(timeout=5))
    le = LeaderElectionSettings(enabled=True, namespace=namespace, identity="flaky", lease_duration=3,
                                renew_deadline=2, retry_period=0.3)
    p = Recording(tmp_path)
    c = ProvisionController(p, settings(name, leader_election=le), api=api, registry=CollectorRegistry())
    c.start()
    try:
        wait.until(lambda: c.leading, timeout=20, what="leader")
        assert c.elector is not None
        proxy.paused.set()
        wait.until(lambda: not c.leading, timeout=20, what="stepping down while the API server hangs")
        assert c.elector is not None and c._elector_thread is not None and c._elector_thread.is_alive()
        assert not c._workers  # work stopped cleanly
        proxy.paused.clear()
        wait.until(lambda: c.leading, timeout=30, what="leading again")
        assert c.elector.transitions == 2
        claim = make_claim(namespace, "after", cls, api=kapi)
        wait_bound(kapi, namespace, "after")
        assert [o.pv_name for o in p.provisions] == [pv_name(claim)]
    finally:
        proxy.paused.clear()
        c.stop(wait=True)
        proxy.close()


def test_health_endpoint_reflects_watch_health(cluster: kubecluster.Cluster, kapi: kube.Client, name: str,
                                               tmp_path: Path) -> None:
    proxy = PausableProxy(cluster.api_url)
    api = kube.Client(dataclasses.replace(kapi.credentials, host=proxy.url), kube.ClientSettings(timeout=5))
    s = settings(name, watch_timeout=1, serving=ServingSettings(address="127.0.0.1:0", watch_stale_after=3))
    c = ProvisionController(Recording(tmp_path), s, api=api, registry=CollectorRegistry())
    c.start()

    def status(path: str) -> int:
        assert c.server is not None
        try:
            return int(urllib.request.urlopen(f"http://127.0.0.1:{c.server.port}{path}", timeout=5).status)
        except urllib.error.HTTPError as e:
            return int(e.code)
    try:
        wait.until(lambda: status("/readyz") == 200, timeout=20, what="ready")
        assert status("/healthz") == 200
        proxy.paused.set()  # watches can neither renew nor receive anything
        wait.until(lambda: status("/healthz") == 503, timeout=20, what="unhealthy while watches are stuck")
        assert status("/readyz") == 503
        proxy.paused.clear()
        wait.until(lambda: status("/healthz") == 200, timeout=30, what="healthy again")
    finally:
        proxy.paused.clear()
        c.stop(wait=True)
        proxy.close()


def test_sigterm_hands_back_a_running_provision_to_the_next_run(
        cluster: kubecluster.Cluster, kapi: kube.Client, namespace: str, name: str, unique: str,
        tmp_path: Path, procs: list[Proc]) -> None:
    make_class(f"c-{unique}", name, api=kapi)
    (tmp_path / "hang-provision").touch()
    procs.append(Proc(cluster, tmp_path, name, extra=("--shutdown-grace", "1")))
    claim = make_claim(namespace, "c", f"c-{unique}", api=kapi)
    pv = pv_name(claim)
    wait.until(lambda: (procs[0].markers / f"provisioned-{pv}").exists(), timeout=30, what="provision running")
    began = time.monotonic()
    assert procs[0].terminate(timeout=15) == 0, procs[0].output()
    assert time.monotonic() - began < 10
    assert "abandoning running operations" in procs[0].output()
    assert FIN in decisions.finalizers(get_claim(kapi, namespace, "c") or {})  # handed back, durably
    assert get_volume(kapi, pv) is None

    (tmp_path / "hang-provision").unlink()
    procs.append(Proc(cluster, tmp_path, name))
    assert wait_bound(kapi, namespace, "c")["spec"]["volumeName"] == pv
    assert ours(kapi, name) == [pv]
    assert procs[1].terminate() == 0
