"""The provision controller against the real control plane: one test per rule of the contract."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import replace
from pathlib import Path
from typing import ClassVar

import pytest
from prometheus_client import CollectorRegistry

from nfs_provisioner.controller import (
    DataSource,
    IgnoredError,
    InProgress,
    ProvisioningError,
    ProvisioningState,
    ProvisionOptions,
    ServingSettings,
    decisions,
)
from nfs_provisioner.kube import client as kube
from tests.support import kubecluster, wait
from tests.support.builders import make_claim, make_class
from tests.support.controller_helpers import (
    FAST_RETRY,
    HOSTPATH_SCRIPT,
    Recording,
    controller,
    delete_claim,
    get_claim,
    get_volume,
    provisioner_fixture,
    purge,
    pv_name,
    reasons,
    settings,
    wait_bound,
    wait_gone,
)

pytestmark = pytest.mark.kube


name = provisioner_fixture("t")


def test_guide_flow_end_to_end_with_the_hostpath_example(
        cluster: kubecluster.Cluster, kapi: kube.Client, namespace: str, unique: str, tmp_path: Path) -> None:
    """class.yaml + claim.yaml -> PV -> bound -> data written -> claim deleted -> Released -> dir and PV gone."""
    here = HOSTPATH_SCRIPT.parent
    provisioner = f"example.com/hostpath-{unique}"
    cls = f"example-hostpath-{unique}"
    class_yaml = (here / "class.yaml").read_text().replace("example-hostpath", cls).replace(
        "example.com/hostpath", provisioner)
    claim_yaml = (here / "claim.yaml").read_text().replace("example-hostpath", cls)
    pv_dir = tmp_path / "hostpath-provisioner"
    proc = subprocess.Popen([sys.executable, str(HOSTPATH_SCRIPT), "--kubeconfig", str(cluster.kubeconfig),
                             "--provisioner-name", provisioner, "--pv-dir", str(pv_dir)],
                            env={**os.environ, "NODE_NAME": "node-guide"}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        cluster.kubectl("create", "-f", "-", input=class_yaml)
        cluster.kubectl("create", "-n", namespace, "-f", "-", input=claim_yaml)
        claim = wait_bound(kapi, namespace, "hostpath")
        name = claim["spec"]["volumeName"]
        assert name == pv_name(claim)
        pv = kapi.get(kube.volumes_path(name))
        assert pv["spec"]["capacity"] == {"storage": "1Mi"}
        assert pv["spec"]["accessModes"] == ["ReadWriteMany"]
        assert pv["spec"]["persistentVolumeReclaimPolicy"] == "Delete"
        assert pv["spec"]["storageClassName"] == cls
        assert pv["spec"]["hostPath"]["path"] == str(pv_dir / name)
        assert pv["spec"]["claimRef"]["name"] == "hostpath"
        assert pv["spec"]["claimRef"]["namespace"] == namespace
        assert pv["spec"]["claimRef"]["uid"] == claim["metadata"]["uid"]
        assert pv["metadata"]["annotations"]["pv.kubernetes.io/provisioned-by"] == provisioner
        assert pv["metadata"]["annotations"]["hostPathProvisionerIdentity"] == "node-guide"
        assert decisions.PV_FINALIZER in pv["metadata"]["finalizers"]
        assert pv["status"]["phase"] == "Bound"
        # "a pod writes to it": the directory is the volume
        (pv_dir / name / "SUCCESS").write_text("ok")
        assert os.listdir(pv_dir) == [name]
        wait.until(lambda: reasons(kapi, namespace, "hostpath", provisioner)
                   == ["Provisioning", "ProvisioningSucceeded"], timeout=10, what="events")

        cluster.kubectl("delete", "pvc", "--all", "-n", namespace)
        wait_gone(lambda: get_volume(kapi, name), "PV deleted after its claim")
        assert os.listdir(pv_dir) == []
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=30)
        purge(kapi, provisioner)
    assert proc.returncode == 0, out


def test_claim_of_another_provisioner_is_ignored(kapi: kube.Client, namespace: str, name: str, unique: str,
                                                 tmp_path: Path) -> None:
    p = Recording(tmp_path)
    make_class(f"other-{unique}", f"other.example/x-{unique}", api=kapi)
    with controller(kapi, p, settings(name)):
        make_claim(namespace, "c", f"other-{unique}", api=kapi)
        claim = wait.until(lambda: (c := get_claim(kapi, namespace, "c")) and
                           decisions.ANN_STORAGE_PROVISIONER in decisions.annotations_of(c) and c,
                           timeout=30, what="kube-controller-manager annotating the claim")
        assert decisions.claim_provisioner(claim) == f"other.example/x-{unique}"
        time.sleep(2)
        assert p.provisions == []
        assert get_volume(kapi, pv_name(claim)) is None
        assert reasons(kapi, namespace, "c", name) == []


def test_both_storage_provisioner_annotations_are_honoured(kapi: kube.Client, namespace: str, name: str,
                                                           unique: str, tmp_path: Path) -> None:
    """kube-controller-manager writes the GA and the beta annotation; the class is named in spec or the beta
    annotation. Both claims are provisioned (the precedence rules are unit-tested)."""
    p = Recording(tmp_path)
    make_class(f"c-{unique}", name, api=kapi)
    with controller(kapi, p, settings(name)):
        make_claim(namespace, "spec-class", f"c-{unique}", api=kapi)
        beta = make_claim(namespace, "beta-class", "", annotations={
            decisions.ANN_BETA_STORAGE_CLASS: f"c-{unique}"}, api=kapi)
        for claim_name in ("spec-class", "beta-class"):
            claim = wait_bound(kapi, namespace, claim_name)
            ann = decisions.annotations_of(claim)
            assert ann[decisions.ANN_STORAGE_PROVISIONER] == name
            assert ann[decisions.ANN_BETA_STORAGE_PROVISIONER] == name
        pv = kapi.get(kube.volumes_path(pv_name(beta)))
        assert pv["spec"]["storageClassName"] == f"c-{unique}"


def test_wait_for_first_consumer_needs_a_selected_node(kapi: kube.Client, namespace: str, name: str,
                                                       unique: str, tmp_path: Path) -> None:
    p = Recording(tmp_path)
    cls = f"wffc-{unique}"
    make_class(cls, name, binding="WaitForFirstConsumer", api=kapi)
    node = f"node-{unique}"
    kapi.create("/api/v1/nodes", {"apiVersion": "v1", "kind": "Node", "metadata": {"name": node}})
    try:
        with controller(kapi, p, settings(name)):
            # Without selected-node nothing happens, even if the claim names us.
            claim = make_claim(namespace, "c", cls, annotations={decisions.ANN_STORAGE_PROVISIONER: name}, api=kapi)
            time.sleep(2)
            assert p.provisions == []
            # The scheduler's annotation arrives: provisioned for that node.
            kapi.patch(kube.claims_path(namespace, "c"),
                       {"metadata": {"annotations": {decisions.ANN_SELECTED_NODE: node}}})
            wait.until(lambda: get_volume(kapi, pv_name(claim)), timeout=30, what="PV for the WFFC claim")
            assert p.provisions[0].selected_node_name == node
            assert p.provisions[0].selected_node is not None

            # A selected node that does not exist: reschedule (annotation removed), ProvisioningFailed.
            claim2 = make_claim(namespace, "c2", cls, annotations={
                decisions.ANN_STORAGE_PROVISIONER: name, decisions.ANN_SELECTED_NODE: "no-such-node"}, api=kapi)
            wait.until(lambda: decisions.ANN_SELECTED_NODE not in decisions.annotations_of(
                get_claim(kapi, namespace, "c2") or {}), timeout=30, what="selected-node removed")
            assert get_volume(kapi, pv_name(claim2)) is None
            wait.until(lambda: "ProvisioningFailed" in reasons(kapi, namespace, "c2", name), timeout=10,
                       what="ProvisioningFailed event")

            # The provisioner asks for a reschedule itself.
            def refuse(o: ProvisionOptions) -> None:
                if o.claim["metadata"]["name"] == "c3":
                    raise ProvisioningError("node is full", ProvisioningState.RESCHEDULE)
            p.on_provision = refuse
            claim3 = make_claim(namespace, "c3", cls, annotations={
                decisions.ANN_STORAGE_PROVISIONER: name, decisions.ANN_SELECTED_NODE: node}, api=kapi)
            wait.until(lambda: decisions.ANN_SELECTED_NODE not in decisions.annotations_of(
                get_claim(kapi, namespace, "c3") or {}), timeout=30, what="selected-node removed on Reschedule")
            c3 = get_claim(kapi, namespace, "c3") or {}
            assert decisions.claim_finalizer("default") not in decisions.finalizers(c3)
            assert get_volume(kapi, pv_name(claim3)) is None
    finally:
        kapi.delete(f"/api/v1/nodes/{node}")


def test_block_claim_without_support_fails_once(kapi: kube.Client, namespace: str, name: str, unique: str,
                                               tmp_path: Path) -> None:
    p = Recording(tmp_path)
    make_class(f"c-{unique}", name, api=kapi)
    with controller(kapi, p, settings(name)):
        claim = make_claim(namespace, "blk", f"c-{unique}", block=True, api=kapi)
        wait.until(lambda: "ProvisioningFailed" in reasons(kapi, namespace, "blk", name), timeout=30,
                   what="ProvisioningFailed for Block")
        ev = [e for e in kube_events(kapi, namespace, "blk") if e["reason"] == "ProvisioningFailed"]
        assert ev[0]["message"] == f"{name} does not support block volume provisioning"
        assert ev[0]["type"] == "Warning"
        time.sleep(2)  # fast retries are on: a retry would show up as a second event / a provision call
        assert len([r for r in reasons(kapi, namespace, "blk", name) if r == "ProvisioningFailed"]) == 1
        assert p.provisions == []
        assert get_volume(kapi, pv_name(claim)) is None
        # With support the same kind of claim is provisioned.
        p.block = True
        c2 = make_claim(namespace, "blk2", f"c-{unique}", block=True, api=kapi)
        wait.until(lambda: get_volume(kapi, pv_name(c2)), timeout=30, what="Block PV when supported")


def kube_events(api: kube.Client, namespace: str, obj: str) -> list[dict[str, object]]:
    items: list[dict[str, object]] = api.get(kube.events_path(namespace),
                                             fieldSelector=f"involvedObject.name={obj}")["items"]
    return items


def test_retain_volume_is_never_deleted(kapi: kube.Client, namespace: str, name: str, unique: str,
                                        tmp_path: Path) -> None:
    p = Recording(tmp_path)
    make_class(f"keep-{unique}", name, reclaim="Retain", api=kapi)
    with controller(kapi, p, settings(name)):
        claim = make_claim(namespace, "c", f"keep-{unique}", api=kapi)
        wait_bound(kapi, namespace, "c")
        pv = kapi.get(kube.volumes_path(pv_name(claim)))
        assert pv["spec"]["persistentVolumeReclaimPolicy"] == "Retain"
        assert decisions.PV_FINALIZER not in decisions.finalizers(pv)
        delete_claim(kapi, namespace, "c")
        wait.until(lambda: (get_volume(kapi, pv_name(claim)) or {}).get("status", {}).get("phase") == "Released",
                   timeout=30, what="Retain PV Released")
        time.sleep(2)
        assert p.deletes == []
        assert (tmp_path / pv_name(claim)).is_dir()
        assert get_volume(kapi, pv_name(claim)) is not None
    kapi.delete(kube.volumes_path(pv_name(claim)))


def test_volume_provisioned_by_someone_else_is_not_deleted(kapi: kube.Client, namespace: str, name: str,
                                                           unique: str, tmp_path: Path) -> None:
    p = Recording(tmp_path)
    pv = f"foreign-{unique}"
    kapi.create(kube.volumes_path(), {
        "apiVersion": "v1", "kind": "PersistentVolume",
        "metadata": {"name": pv, "annotations": {decisions.ANN_PROVISIONED_BY: f"other.example/{unique}",
                                                "hostPathProvisionerIdentity": "node-a"}},
        "spec": {"capacity": {"storage": "1Mi"}, "accessModes": ["ReadWriteOnce"],
                 "persistentVolumeReclaimPolicy": "Delete", "hostPath": {"path": str(tmp_path / pv)},
                 "claimRef": {"namespace": namespace, "name": "gone", "uid": "00000000-0000-0000-0000-000000000000"}}})
    try:
        with controller(kapi, p, settings(name)):
            wait.until(lambda: (get_volume(kapi, pv) or {}).get("status", {}).get("phase") == "Released",
                       timeout=30, what="foreign PV Released")
            time.sleep(2)
            assert p.deletes == []
            assert get_volume(kapi, pv) is not None
    finally:
        kapi.delete(kube.volumes_path(pv))


def test_ignored_error_is_silent_and_not_retried(kapi: kube.Client, namespace: str, name: str, unique: str,
                                                 tmp_path: Path) -> None:
    p = Recording(tmp_path)

    def not_mine(o: ProvisionOptions) -> None:
        raise IgnoredError("another instance serves this claim")
    p.on_provision = not_mine
    make_class(f"c-{unique}", name, api=kapi)
    with controller(kapi, p, settings(name)):
        claim = make_claim(namespace, "c", f"c-{unique}", api=kapi)
        wait.until(lambda: len(p.provisions) == 1, timeout=30, what="one provision call")
        time.sleep(2)
        assert len(p.provisions) == 1
        assert reasons(kapi, namespace, "c", name) == ["Provisioning"]  # nothing after the attempt itself
        c = get_claim(kapi, namespace, "c") or {}
        assert decisions.claim_finalizer("default") not in decisions.finalizers(c)
        assert get_volume(kapi, pv_name(claim)) is None

        # delete(): IgnoredError leaves the PV alone, without an event.
        p.on_provision = None
        p.identity = "node-a"
        claim2 = make_claim(namespace, "d", f"c-{unique}", api=kapi)
        wait_bound(kapi, namespace, "d")
        p.identity = "node-b"  # the PV now belongs to "another instance"
        delete_claim(kapi, namespace, "d")
        wait.until(lambda: len(p.deletes) >= 1, timeout=30, what="delete called")
        time.sleep(1.5)
        pv = get_volume(kapi, pv_name(claim2))
        assert pv is not None and pv["status"]["phase"] == "Released"
        assert len(p.deletes) == 1
        assert reasons(kapi, "default", pv_name(claim2)) == []
        p.identity = "node-a"
        kapi.patch(kube.volumes_path(pv_name(claim2)), {"metadata": {"labels": {"poke": "1"}}})
        wait_gone(lambda: get_volume(kapi, pv_name(claim2)), "PV deleted by its owner")


def test_failure_thresholds_stop_retries(kapi: kube.Client, namespace: str, name: str, unique: str,
                                         tmp_path: Path) -> None:
    p = Recording(tmp_path)

    def broken(o: ProvisionOptions) -> None:
        raise RuntimeError("backend unavailable: check the storage server")
    p.on_provision = broken
    make_class(f"c-{unique}", name, api=kapi)
    registry = CollectorRegistry()
    s = settings(name)
    s = type(s)(**{**s.__dict__, "retry": type(s.retry)(**{**s.retry.__dict__, "failed_provision_threshold": 2,
                                                           "failed_delete_threshold": 1})})
    with controller(kapi, p, s, registry) as c:
        claim = make_claim(namespace, "c", f"c-{unique}", api=kapi)
        wait.until(lambda: len(p.provisions) >= 3, timeout=30, what="3 provision attempts")
        time.sleep(2.5)
        assert len(p.provisions) == 3  # the first attempt + threshold retries, like the Go library
        wait.until(lambda: reasons(kapi, namespace, "c", name).count("ProvisioningFailed") == 3, timeout=10,
                   what="three ProvisioningFailed events")
        failed = [e for e in kube_events(kapi, namespace, "c") if e["reason"] == "ProvisioningFailed"]
        assert failed[0]["message"] == "backend unavailable: check the storage server"
        assert registry.get_sample_value("controller_persistentvolumeclaim_provision_failed_total",
                                         {"class": f"c-{unique}", "source": ""}) == 3
        # Given up: nothing is in flight, so the claim is released (it can be deleted freely).
        wait.until(lambda: decisions.claim_finalizer("default") not in decisions.finalizers(
            get_claim(kapi, namespace, "c") or {}), timeout=10, what="in-flight finalizer removed on give-up")
        assert get_volume(kapi, pv_name(claim)) is None

        # Delete threshold: 1 -> two delete attempts, VolumeFailedDelete each time.
        p.on_provision = None

        def undeletable(v: dict[str, object]) -> None:
            raise RuntimeError("directory is busy")
        p.on_delete = undeletable
        claim2 = make_claim(namespace, "d", f"c-{unique}", api=kapi)
        wait_bound(kapi, namespace, "d")
        delete_claim(kapi, namespace, "d")
        wait.until(lambda: len(p.deletes) >= 2, timeout=30, what="2 delete attempts")
        time.sleep(2)
        assert len(p.deletes) == 2
        pvn = pv_name(claim2)
        wait.until(lambda: reasons(kapi, "default", pvn).count("VolumeFailedDelete") == 2, timeout=10,
                   what="VolumeFailedDelete events")
        assert get_volume(kapi, pvn) is not None
        assert c.registry.get_sample_value("controller_persistentvolume_delete_failed_total",
                                           {"class": f"c-{unique}"}) == 2
        p.on_delete = None
    kapi.delete(kube.volumes_path(pvn))
    wait.until(lambda: (v := get_volume(kapi, pvn)) is None or v["metadata"].get("deletionTimestamp"),
               timeout=10, what="PV deleting")
    kapi.patch(kube.volumes_path(pvn), {"metadata": {"$deleteFromPrimitiveList/finalizers": [decisions.PV_FINALIZER]}})


def test_a_failing_claim_backs_off_although_its_finalizer_comes_and_goes(kapi: kube.Client, namespace: str,
                                                                         name: str, unique: str,
                                                                         tmp_path: Path) -> None:
    """Finalizer mode: each attempt adds the in-flight finalizer and a failure removes it again. Those two
    patches are our own echo, not a change of the claim: they must not requeue it past its backoff (before,
    they did: ~60 attempts a second, the backoff and the failure threshold never applied)."""
    p = Recording(tmp_path)

    def broken(o: ProvisionOptions) -> None:
        raise RuntimeError("backend unavailable")
    p.on_provision = broken
    make_class(f"c-{unique}", name, api=kapi)
    slow = replace(FAST_RETRY, base_delay=1.0, max_delay=1.0, failed_provision_threshold=0)
    with controller(kapi, p, settings(name, retry=slow)):
        make_claim(namespace, "c", f"c-{unique}", api=kapi)
        wait.until(lambda: len(p.provisions) >= 1, timeout=30, what="a first provision attempt")
        time.sleep(4.0)
        assert 2 <= len(p.provisions) <= 7, len(p.provisions)  # one attempt a second, not one per patch
        wait.until(lambda: reasons(kapi, namespace, "c", name).count("ProvisioningFailed") >= 2, timeout=10,
                   what="ProvisioningFailed events")


def test_claim_finalizer_is_held_while_provisioning_and_pv_finalizer_until_deleted(
        kapi: kube.Client, namespace: str, name: str, unique: str, tmp_path: Path) -> None:
    p = Recording(tmp_path)
    release = threading.Event()
    seen: list[list[str]] = []

    def hold(o: ProvisionOptions) -> None:
        seen.append(decisions.finalizers(get_claim(kapi, namespace, o.claim["metadata"]["name"]) or {}))
        release.wait(20)
    p.after_provision = hold
    make_class(f"c-{unique}", name, api=kapi)
    with controller(kapi, p, settings(name)):
        claim = make_claim(namespace, "c", f"c-{unique}", api=kapi)
        wait.until(lambda: seen, timeout=30, what="provision running")
        assert decisions.claim_finalizer("default") in seen[0]  # recorded before provision was called
        release.set()
        wait_bound(kapi, namespace, "c")
        wait.until(lambda: decisions.claim_finalizer("default") not in decisions.finalizers(
            get_claim(kapi, namespace, "c") or {}), timeout=10, what="claim finalizer removed")
        pv = kapi.get(kube.volumes_path(pv_name(claim)))
        assert decisions.PV_FINALIZER in decisions.finalizers(pv)
        delete_claim(kapi, namespace, "c")
        wait_gone(lambda: get_volume(kapi, pv_name(claim)), "PV deleted (finalizer removed)")
        assert not (tmp_path / pv_name(claim)).exists()

    # add_finalizer=False: the PV is created without it and still deleted cleanly.
    p2 = Recording(tmp_path / "nofin")
    with controller(kapi, p2, settings(name, add_finalizer=False)):
        claim = make_claim(namespace, "n", f"c-{unique}", api=kapi)
        wait_bound(kapi, namespace, "n")
        assert decisions.PV_FINALIZER not in decisions.finalizers(kapi.get(kube.volumes_path(pv_name(claim))))
        delete_claim(kapi, namespace, "n")
        wait_gone(lambda: get_volume(kapi, pv_name(claim)), "PV deleted without add_finalizer")
        assert not (tmp_path / "nofin" / pv_name(claim)).exists()


def test_metrics_and_health_are_served(kapi: kube.Client, namespace: str, name: str, unique: str,
                                       tmp_path: Path) -> None:
    p = Recording(tmp_path)
    cls = f"c-{unique}"
    make_class(cls, name, api=kapi)
    fail_once = {"f"}

    def flaky(o: ProvisionOptions) -> None:
        if o.claim["metadata"]["name"] in fail_once:
            fail_once.clear()
            raise RuntimeError("transient")
    p.on_provision = flaky
    registry = CollectorRegistry()
    with controller(kapi, p, settings(name, serving=ServingSettings(address="127.0.0.1:0")), registry) as c:
        for n in ("a", "b", "f"):
            make_claim(namespace, n, cls, api=kapi)
        for n in ("a", "b", "f"):
            wait_bound(kapi, namespace, n)
        labels = {"class": cls, "source": ""}
        assert registry.get_sample_value("controller_persistentvolumeclaim_provision_total", labels) == 3
        assert registry.get_sample_value("controller_persistentvolumeclaim_provision_failed_total", labels) == 1
        assert registry.get_sample_value("controller_persistentvolumeclaim_provision_duration_seconds_count",
                                         labels) == 3
        for n in ("a", "b"):
            delete_claim(kapi, namespace, n)
        wait.until(lambda: registry.get_sample_value("controller_persistentvolume_delete_total",
                                                     {"class": cls}) == 2, timeout=30, what="2 deletes counted")
        assert registry.get_sample_value("controller_persistentvolume_delete_duration_seconds_count",
                                         {"class": cls}) == 2
        assert c.server is not None
        base = f"http://127.0.0.1:{c.server.port}"
        text = urllib.request.urlopen(f"{base}/metrics", timeout=5).read().decode()
        assert f'controller_persistentvolumeclaim_provision_total{{class="{cls}",source=""}} 3.0' in text
        assert 'workqueue_depth{name="claims"}' in text
        assert urllib.request.urlopen(f"{base}/healthz", timeout=5).status == 200
        assert urllib.request.urlopen(f"{base}/readyz", timeout=5).status == 200


def test_no_change_on_a_first_attempt_is_not_in_progress(kapi: kube.Client, namespace: str, name: str,
                                                          unique: str, tmp_path: Path) -> None:
    """NoChange with no earlier attempt: nothing is in progress (as in the Go library, where the claim is then
    not in claimsInProgress), so the failure threshold applies and the in-flight record is dropped."""
    p = Recording(tmp_path)

    def unchanged(o: ProvisionOptions) -> None:
        raise ProvisioningError("backend busy, nothing done", ProvisioningState.NO_CHANGE)
    p.on_provision = unchanged
    make_class(f"c-{unique}", name, api=kapi)
    s = settings(name)
    s = type(s)(**{**s.__dict__, "retry": type(s.retry)(**{**s.retry.__dict__, "failed_provision_threshold": 2})})
    with controller(kapi, p, s):
        make_claim(namespace, "nc", f"c-{unique}", api=kapi)
        wait.until(lambda: len(p.provisions) >= 3, timeout=30, what="3 provision attempts")
        time.sleep(2.5)
        assert len(p.provisions) == 3  # the first attempt + threshold retries: given up
        wait.until(lambda: decisions.claim_finalizer("default") not in decisions.finalizers(
            get_claim(kapi, namespace, "nc") or {}), timeout=10, what="in-flight finalizer removed")
        assert not list(tmp_path.iterdir())


def test_in_background_provision_is_finished_and_rolled_back_after_the_claim_is_deleted(
        kapi: kube.Client, namespace: str, name: str, unique: str, tmp_path: Path) -> None:
    """InBackground: the provisioner is called again even though the claim was deleted, and the asset it
    reports is removed (a failing removal gives ProvisioningCleanupFailed and is retried)."""
    p = Recording(tmp_path)

    def background(o: ProvisionOptions) -> None:
        if not o.claim["metadata"].get("deletionTimestamp"):
            raise ProvisioningError("volume is still being created", ProvisioningState.IN_BACKGROUND)
    p.after_provision = background
    fail_delete = ["busy"]

    def flaky_delete(v: dict[str, object]) -> None:
        if fail_delete:
            raise RuntimeError(f"directory is {fail_delete.pop()}")
    p.on_delete = flaky_delete
    make_class(f"c-{unique}", name, api=kapi)
    with controller(kapi, p, settings(name)):
        claim = make_claim(namespace, "bg", f"c-{unique}", api=kapi)
        pv = pv_name(claim)
        wait.until(lambda: len(p.provisions) >= 2, timeout=30, what="provision retried while in background")
        assert (tmp_path / pv).is_dir()
        delete_claim(kapi, namespace, "bg")
        wait_gone(lambda: get_claim(kapi, namespace, "bg"), "claim released after roll-back")
        assert not (tmp_path / pv).exists()
        assert get_volume(kapi, pv) is None
        assert p.provisions[-1].claim["metadata"].get("deletionTimestamp")
        assert len(p.deletes) == 2
        wait.until(lambda: "ProvisioningCleanupFailed" in reasons(kapi, namespace, "bg", name), timeout=10,
                   what="ProvisioningCleanupFailed event")
        failed = [e for e in kube_events(kapi, namespace, "bg") if e["reason"] == "ProvisioningCleanupFailed"]
        assert "directory is busy" in str(failed[0]["message"])
        assert "ProvisioningFailed" in reasons(kapi, namespace, "bg", name)


def test_volume_name_hook_and_deletion_guard(kapi: kube.Client, namespace: str, name: str, unique: str,
                                             tmp_path: Path) -> None:
    class Guarded(Recording):
        keep: ClassVar[set[str]] = set()

        def should_delete(self, volume: dict[str, object]) -> bool:
            return volume["metadata"]["name"] not in self.keep  # type: ignore[index]

    p = Guarded(tmp_path)
    make_class(f"c-{unique}", name, api=kapi)
    with controller(kapi, p, settings(name), volume_name=lambda c: f"{unique}-{c['metadata']['name']}"):
        make_claim(namespace, "a", f"c-{unique}", api=kapi)
        make_claim(namespace, "b", f"c-{unique}", api=kapi)
        assert wait_bound(kapi, namespace, "a")["spec"]["volumeName"] == f"{unique}-a"
        assert wait_bound(kapi, namespace, "b")["spec"]["volumeName"] == f"{unique}-b"
        assert sorted(os.listdir(tmp_path)) == [f"{unique}-a", f"{unique}-b"]
        p.keep.add(f"{unique}-a")
        delete_claim(kapi, namespace, "a")
        delete_claim(kapi, namespace, "b")
        wait_gone(lambda: get_volume(kapi, f"{unique}-b"), "unguarded PV deleted")
        time.sleep(1)
        kept = get_volume(kapi, f"{unique}-a")
        assert kept is not None and kept["status"]["phase"] == "Released"  # the guard said no
        assert os.listdir(tmp_path) == [f"{unique}-a"]
        p.keep.clear()
        kapi.patch(kube.volumes_path(f"{unique}-a"), {"metadata": {"labels": {"poke": "1"}}})
        wait_gone(lambda: get_volume(kapi, f"{unique}-a"), "PV deleted once the guard allows it")
        assert os.listdir(tmp_path) == []


def _claim_with_source(api: kube.Client, namespace: str, name: str, cls: str, *,
                       data_source: dict[str, str] | None = None,
                       data_source_ref: dict[str, str] | None = None) -> dict[str, object]:
    spec: dict[str, object] = {"accessModes": ["ReadWriteMany"], "storageClassName": cls,
                               "resources": {"requests": {"storage": "1Mi"}}}
    if data_source is not None:
        spec["dataSource"] = data_source
    if data_source_ref is not None:
        spec["dataSourceRef"] = data_source_ref
    created: dict[str, object] = api.create(kube.claims_path(namespace), {
        "apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": name}, "spec": spec})
    return created


def test_data_sources_the_provisioner_does_not_declare_are_never_provisioned_empty(
        kapi: kube.Client, namespace: str, name: str, unique: str, tmp_path: Path) -> None:
    """The hostPath example declares no data source: a clone or snapshot claim gets one ProvisioningFailed,
    a populator's claim one Normal event; provision() is never called; a change to the claim is looked at
    again (and refused again, once)."""
    p = Recording(tmp_path)

    def mine(claim: str) -> list[dict[str, object]]:
        return [e for e in kube_events(kapi, namespace, claim)
                if (e.get("source") or {}).get("component") == name]  # type: ignore[union-attr]
    make_class(f"c-{unique}", name, api=kapi)
    make_claim(namespace, "live", f"c-{unique}", api=kapi)
    with controller(kapi, p, settings(name)):
        wait_bound(kapi, namespace, "live")
        clone = _claim_with_source(kapi, namespace, "clone", f"c-{unique}",
                                   data_source={"kind": "PersistentVolumeClaim", "name": "live"})
        snap = _claim_with_source(kapi, namespace, "snap", f"c-{unique}", data_source_ref={
            "apiGroup": "snapshot.storage.k8s.io", "kind": "VolumeSnapshot", "name": "daily"})
        pop = _claim_with_source(kapi, namespace, "pop", f"c-{unique}", data_source_ref={
            "apiGroup": "hello.example.com", "kind": "Hello", "name": "world"})
        for claim in ("clone", "snap", "pop"):
            wait.until(lambda c=claim: len(mine(c)) >= 1, timeout=30, what=f"event on {claim}")
        time.sleep(2)  # fast retries and resyncs: a second attempt would show up as a second event
        ev = {c: [(e["type"], e["reason"], e["message"]) for e in mine(c)]
              for c in ("clone", "snap", "pop")}
        assert ev["clone"] == [("Warning", "ProvisioningFailed",
                                f"{name} does not support cloning volumes (data source PersistentVolumeClaim live); "
                                "no volume is provisioned")]
        assert ev["snap"] == [("Warning", "ProvisioningFailed",
                               "cannot restore snapshot.storage.k8s.io/VolumeSnapshot daily: volume snapshots need a "
                               f"CSI driver, which {name} is not; no volume is provisioned")]
        assert ev["pop"] == [("Normal", "Provisioning",
                              "Assuming an external populator will provision the volume: data source "
                              f"hello.example.com/Hello world is not handled by {name}")]
        assert [o.pv_name for o in p.provisions] == [pv_name(get_claim(kapi, namespace, "live") or {})]
        for c in (clone, snap, pop):
            assert get_volume(kapi, pv_name(c)) is None
            assert decisions.claim_finalizer("default") not in decisions.finalizers(
                get_claim(kapi, namespace, str(c["metadata"]["name"])) or {})  # type: ignore[index]
        # Someone changes the claim: looked at again, refused again with one more event.
        kapi.patch(kube.claims_path(namespace, "clone"), {"metadata": {"labels": {"poke": "1"}}})
        wait.until(lambda: len(mine("clone")) == 2, timeout=30, what="second refusal")
        time.sleep(1.5)
        assert len(mine("clone")) == 2
        assert len(p.provisions) == 1


def test_declared_data_source_reaches_provision_in_typed_form(kapi: kube.Client, namespace: str, name: str,
                                                              unique: str, tmp_path: Path) -> None:
    class Cloning(Recording):
        def supports_data_source(self, kind: str, api_group: str) -> bool:
            return (kind, api_group) == ("PersistentVolumeClaim", "")

    p = Cloning(tmp_path)
    make_class(f"c-{unique}", name, api=kapi)
    make_claim(namespace, "live", f"c-{unique}", api=kapi)
    with controller(kapi, p, settings(name)):
        wait_bound(kapi, namespace, "live")
        _claim_with_source(kapi, namespace, "clone", f"c-{unique}",
                           data_source={"kind": "PersistentVolumeClaim", "name": "live"})
        wait_bound(kapi, namespace, "clone")
        o = next(o for o in p.provisions if o.claim["metadata"]["name"] == "clone")
        # The API server mirrors dataSource into dataSourceRef (AnyVolumeDataSource is GA).
        assert o.data_source == DataSource(kind="PersistentVolumeClaim", name="live")
        assert o.data_source_ref == DataSource(kind="PersistentVolumeClaim", name="live")
        assert o.source == DataSource(kind="PersistentVolumeClaim", name="live") and o.source.is_claim
        # Still refused: a snapshot (not declared).
        _claim_with_source(kapi, namespace, "snap", f"c-{unique}", data_source={
            "apiGroup": "snapshot.storage.k8s.io", "kind": "VolumeSnapshot", "name": "daily"})
        wait.until(lambda: "ProvisioningFailed" in reasons(kapi, namespace, "snap"), timeout=30, what="refusal")
        assert all(o.claim["metadata"]["name"] != "snap" for o in p.provisions)


def test_in_progress_is_polled_without_backoff_or_failure_events(kapi: kube.Client, namespace: str, name: str,
                                                                 unique: str, tmp_path: Path) -> None:
    """InProgress: provision() is asked again after retry_after (not the backoff), no ProvisioningFailed, a
    Normal event only when the provisioner reports, no failure threshold (here 1) even after many polls."""
    p = Recording(tmp_path)
    polls: list[float] = []

    def working(o: ProvisionOptions) -> None:
        polls.append(time.monotonic())
        if len(polls) < 6:
            raise InProgress(f"step {len(polls)} of 6", retry_after=0.3, report=len(polls) % 2 == 1)
    p.on_provision = working
    make_class(f"c-{unique}", name, api=kapi)
    slow_backoff = replace(FAST_RETRY, base_delay=30.0, max_delay=30.0, failed_provision_threshold=1)
    with controller(kapi, p, settings(name, retry=slow_backoff)):
        make_claim(namespace, "c", f"c-{unique}", api=kapi)
        wait_bound(kapi, namespace, "c", timeout=30)
        assert len(polls) == 6
        assert polls[-1] - polls[0] < 10  # polled every 0.3 s, not after the 30 s backoff
        evs = [(e["type"], e["reason"], e["message"]) for e in kube_events(kapi, namespace, "c")
               if (e.get("source") or {}).get("component") == name]  # type: ignore[union-attr]
        assert [m for t, r, m in evs if r == "Provisioning"] == [
            f'External provisioner is provisioning volume for claim "{namespace}/c"', "step 1 of 6", "step 3 of 6",
            "step 5 of 6"]
        assert all(t == "Normal" for t, _, _ in evs)
        assert "ProvisioningSucceeded" in [r for _, r, _ in evs]
