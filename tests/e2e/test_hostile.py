"""Hostile input through the real API: bad class parameters, bad claims, and
hand-made or tampered PVs that name this appliance. Each case gets a clear event,
and nothing outside a volume's own directory changes: the whole export root is
snapshotted before and after (only volumes the test itself deletes may go)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from nfs_provisioner.controller.inflight import LocalJournal
from tests.support import treesnap, wait
from tests.support.appliance_env import Appliance

pytestmark = [pytest.mark.fault, pytest.mark.e2e, pytest.mark.kube, pytest.mark.ganesha]

VOLATILE = ("ganesha.log", "recovery")  # Ganesha's own log and NFSv4 client records change by themselves


def snapshot(root: Path) -> dict[str, treesnap.Entry]:
    """The export root, less what changes by itself and the in-flight journal's spare files (a dropped record's
    file, kept to hold the next record: each provision attempt, a refused one too, leaves one)."""
    return {k: v for k, v in treesnap.snapshot(root, contents=True, ignore=VOLATILE).items()
            if not Path(k).name.startswith(LocalJournal.SPARE_PREFIX)}


def remove_pv(core: client.CoreV1Api, name: str) -> None:
    """Delete a hand-made PV even if it carries a finalizer nobody will remove any more."""
    if core.list_persistent_volume(field_selector=f"metadata.name={name}").items:
        core.patch_persistent_volume(name, {"metadata": {"finalizers": None}})
        core.delete_persistent_volume(name)


BAD_CLASSES: list[tuple[str, dict[str, Any], str]] = [
    ("unknown", {"parameters": {"path": "../../etc"}}, "invalid parameter 'path'"),
    ("gid-zero", {"parameters": {"gid": "0"}}, "for parameter gid"),
    ("gid-negative", {"parameters": {"gid": "-1"}}, "for parameter gid"),
    ("gid-huge", {"parameters": {"gid": "4294967296"}}, "for parameter gid"),
    ("gid-text", {"parameters": {"gid": "$(id -g)"}}, "for parameter gid"),
    ("squash", {"parameters": {"rootSquash": "sometimes"}}, "for parameter rootSquash"),
    ("ondelete", {"parameters": {"onDelete": "../other"}}, "for parameter onDelete"),
    ("mountopt", {"parameters": {"mountOptions": "vers=4.1,rw ; rm -rf /"}}, "invalid mount option"),
    ("mountopt-both", {"parameters": {"mountOptions": "hard"}, "mountOptions": ["vers=4.1"]},
     "both on the class and as a parameter"),
]
BAD_CLAIMS: list[tuple[str, dict[str, Any], str]] = [
    ("selector", {"selector": {"matchLabels": {"tier": "gold"}}}, "claim Selector is not supported"),
    ("absurd", {"resources": {"requests": {"storage": "8Ei"}}}, "bytes are free on the export root"),
    ("block", {"volumeMode": "Block"}, "does not support block volume provisioning"),
]


def test_hostile_input_gets_events_and_touches_nothing_else(
        appliance: Appliance, core: client.CoreV1Api, storage: client.StorageV1Api, namespace: str,
        unique: str) -> None:
    good = f"good-{unique}"
    storage.create_storage_class({"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
                                  "metadata": {"name": good}, "provisioner": appliance.provisioner})
    for name, extra, _ in BAD_CLASSES:
        storage.create_storage_class({"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
                                      "metadata": {"name": f"{name}-{unique}"}, "provisioner": appliance.provisioner,
                                      **extra})
    appliance.start()
    root = appliance.export_root

    def claim(name: str, cls: str, **spec: Any) -> None:
        body = {"storageClassName": cls, "accessModes": ["ReadWriteMany"],
                "resources": {"requests": {"storage": "1Mi"}}, **spec}
        core.create_namespaced_persistent_volume_claim(namespace, {
            "apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": name}, "spec": body})

    # Two real volumes with data: the victims every tampered PV below points at.
    for v in ("victim", "mine"):
        claim(v, good)
    wait.until(lambda: all(core.read_namespaced_persistent_volume_claim(v, namespace).status.phase == "Bound"
                           for v in ("victim", "mine")), timeout=60, what="the two real volumes Bound")
    victim = core.read_persistent_volume(core.read_namespaced_persistent_volume_claim("victim", namespace)
                                         .spec.volume_name)
    (root / victim.metadata.name / "precious").write_text("keep me")
    (root / "outside-every-volume").write_text("keep me too")
    identity = (root / "nfs-provisioner.identity").read_text().strip()
    before = snapshot(root)

    expectations: dict[str, str] = {}
    for name, _, message in BAD_CLASSES:
        claim(f"class-{name}", f"{name}-{unique}")
        expectations[f"class-{name}"] = message
    for name, spec, message in BAD_CLAIMS:
        claim(f"claim-{name}", good, **spec)
        expectations[f"claim-{name}"] = message

    # Hand-made PVs that claim to be ours, Released (their claim is gone), reclaim policy Delete.
    ann_ok = {"pv.kubernetes.io/provisioned-by": appliance.provisioner, "Provisioner_Id": identity,
              "nfs-provisioner.io/on-delete": "delete"}
    victim_ann = victim.metadata.annotations
    tampered: list[tuple[str, dict[str, str], str, str]] = [
        # (PV name, annotations, spec.nfs.path, expected event text or "" for silently ignored)
        ("nfs-provisioner.identity", ann_ok, str(root), "reserved for the appliance's own files"),
        ("projects", ann_ok, str(root), "reserved for the appliance's own files"),
        (f"forged-{unique}", {**ann_ok, "Provisioner_Id": "00000000-0000-4000-8000-000000000000"},
         str(root / victim.metadata.name), ""),
        (f"noid-{unique}", {k: v for k, v in ann_ok.items() if k != "Provisioner_Id"},
         str(root / victim.metadata.name), "identity annotation Provisioner_Id not found"),
        (f"export-{unique}", {**ann_ok, "Export_Id": victim_ann["Export_Id"],
                              "EXPORT_block": victim_ann["EXPORT_block"]}, str(root / victim.metadata.name), "ok"),
        (f"root-{unique}", {**ann_ok, "Export_Id": "0"}, "/", "ok"),
        (f"project-{unique}", {**ann_ok, "Project_Id": "1", "Project_block": f"1:{root}:1"}, str(root), "ok"),
        (f"archive-{unique}", {**ann_ok, "nfs-provisioner.io/on-delete": "archive"}, str(root / ".."), "ok"),
        (f"retain-{unique}", {**ann_ok, "nfs-provisioner.io/on-delete": "../../"}, str(root), "ok"),
    ]
    for pv_name, *_ in tampered:  # left over by an earlier, interrupted run?
        remove_pv(core, pv_name)
    for pv_name, ann, path, _ in tampered:
        core.create_persistent_volume({
            "apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": pv_name, "annotations": ann},
            "spec": {"capacity": {"storage": "1Mi"}, "accessModes": ["ReadWriteMany"],
                     "persistentVolumeReclaimPolicy": "Delete", "storageClassName": good,
                     "nfs": {"server": "127.0.0.1", "path": path},
                     "claimRef": {"namespace": namespace, "name": f"gone-{pv_name[:20]}", "uid": "0-gone"}}})
    assert len(expectations) + len(tampered) >= 20

    def events_for(obj: str, ns: str | None) -> list[client.CoreV1Event]:
        sel = f"involvedObject.name={obj}"
        return (core.list_namespaced_event(ns, field_selector=sel) if ns else
                core.list_event_for_all_namespaces(field_selector=sel)).items

    for obj, message in expectations.items():
        wait.until(lambda o=obj, m=message: any(e.reason == "ProvisioningFailed" and m in e.message
                                                for e in events_for(o, namespace)),
                   timeout=60,
                   what=lambda o=obj, m=message: f"ProvisioningFailed for {o} with {m!r}\n{appliance.log()}")
        assert core.read_namespaced_persistent_volume_claim(obj, namespace).status.phase == "Pending"
    for pv_name, _, _, message in tampered:
        if message == "ok":  # our identity, a fine name: its own (missing) directory is all it may remove
            wait.until(lambda n=pv_name: not core.list_persistent_volume(field_selector=f"metadata.name={n}").items,
                       timeout=60, what=f"PV {pv_name} deleted")
        elif message:
            wait.until(lambda n=pv_name, m=message: any(e.reason == "VolumeFailedDelete" and m in e.message
                                                        for e in events_for(n, None)),
                       timeout=60, what=f"VolumeFailedDelete for {pv_name} with {message!r}")
    time.sleep(2)  # let any delete in flight finish before the final look
    forged = core.read_persistent_volume(f"forged-{unique}")
    assert forged.status.phase == "Released"  # another instance's: ignored, kept

    after = snapshot(root)
    changed = {k for k in set(before) | set(after) if before.get(k) != after.get(k)}
    assert changed <= {".archive"}, sorted(changed)  # an empty archive dir may appear; nothing else
    assert (root / victim.metadata.name / "precious").read_text() == "keep me"
    assert (root / "outside-every-volume").read_text() == "keep me too"
    assert appliance.client().cat(root / victim.metadata.name / "precious").stdout == b"keep me"
    for pv_name, *_ in tampered:
        remove_pv(core, pv_name)
    for cls in [good] + [f"{n}-{unique}" for n, _, _ in BAD_CLASSES]:
        storage.delete_storage_class(cls)
