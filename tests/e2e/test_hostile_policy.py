"""Issue 28, D1: what deleting a volume does with its data is the policy recorded when the volume was made,
whatever later happens to the PV annotation ``nfs-provisioner.io/on-delete`` (stripped by a hand edit, an
``apply`` without it, a tool; changed; a case variant); a missing or unreadable policy never means delete.

Three levels: the rule itself (every combination of what the record and the annotation say), the appliance's
provisioner against a real Ganesha (records of this and of older versions, corrupt ones), and the whole
appliance through the control plane (annotations removed with a PATCH, claims deleted, the data looked for
on the export root, the events read back).
"""

from __future__ import annotations

import json

import pytest
from kubernetes import client

from nfs_provisioner.volumes.directories import ARCHIVE_DIR
from tests.support import wait
from tests.support.appliance_env import Appliance
from tests.support.builders import make_class
from tests.support.hostile_policy import ANN, volumes, where

__all__ = ["volumes"]  # the shared fixtures (tests/support/hostile_policy.py)


def bound_volume(core: client.CoreV1Api, namespace: str, cls: str, claim: str) -> str:
    """Create a claim of ``cls``, wait for it to be Bound; its PV's name."""
    core.create_namespaced_persistent_volume_claim(namespace, {
        "apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": claim},
        "spec": {"storageClassName": cls, "accessModes": ["ReadWriteMany"],
                 "resources": {"requests": {"storage": "1Mi"}}}})
    wait.until(lambda: core.read_namespaced_persistent_volume_claim(claim, namespace).status.phase == "Bound",
               timeout=60, what=f"claim {claim} Bound")
    return str(core.read_namespaced_persistent_volume_claim(claim, namespace).spec.volume_name)


def set_annotation(core: client.CoreV1Api, pv: str, value: str | None) -> None:
    """What a hand edit or a tool does to the PV: the annotation changed, or removed (a merge patch with null)."""
    core.patch_persistent_volume(pv, {"metadata": {"annotations": {ANN: value}}})
    assert (core.read_persistent_volume(pv).metadata.annotations or {}).get(ANN) == value


def pv_gone(core: client.CoreV1Api, name: str) -> bool:
    return not core.list_persistent_volume(field_selector=f"metadata.name={name}").items


def events_for(core: client.CoreV1Api, obj: str) -> list[client.CoreV1Event]:
    return core.list_event_for_all_namespaces(field_selector=f"involvedObject.name={obj}").items


def delete_claims(core: client.CoreV1Api, namespace: str, volumes: dict[str, str], a: Appliance) -> None:
    for claim in volumes:
        core.delete_namespaced_persistent_volume_claim(claim, namespace)
    for pv in volumes.values():
        wait.until(lambda p=pv: pv_gone(core, p), timeout=60, what=lambda p=pv: f"PV {p} deleted\n{a.log()}")


def policy_event(core: client.CoreV1Api, pv: str, *texts: str) -> client.CoreV1Event:
    return wait.until(lambda: next((e for e in events_for(core, pv) if e.reason == "OnDeletePolicy" and e.type ==
                                    "Warning" and all(t in e.message for t in texts)), None),
                      timeout=30, what=lambda: f"an OnDeletePolicy event on {pv} with {texts}: "
                                               f"{[(e.reason, e.message) for e in events_for(core, pv)]}")


@pytest.mark.e2e
@pytest.mark.kube
@pytest.mark.ganesha
def test_d1_stripped_annotation_keeps_retained_and_archived_data(
        appliance: Appliance, core: client.CoreV1Api, storage: client.StorageV1Api, namespace: str,
        unique: str) -> None:
    classes = {policy: f"d1-{policy}-{unique}" for policy in ("retain", "archive", "delete")}
    for policy, cls in classes.items():
        make_class(cls, appliance.provisioner, parameters={"onDelete": policy}, api=storage)
    try:
        appliance.start()
        root = appliance.export_root
        nfs = appliance.client()
        # (claim, class, what the PV annotation becomes, where the data must end up)
        cases = [("retained", "retain", None, "kept"), ("archived", "archive", None, "archived"),
                 ("archived-case", "archive", "Delete", "archived"), ("deleted", "delete", None, "deleted")]
        volumes = {claim: bound_volume(core, namespace, classes[policy], claim) for claim, policy, _, _ in cases}
        for claim, policy, value, _ in cases:
            pv = volumes[claim]
            assert core.read_persistent_volume(pv).metadata.annotations[ANN] == policy
            put = nfs.put(f"data of {claim}".encode(), root / pv / "precious")  # a user's data, over NFS
            assert put.returncode == 0, put.stderr
            set_annotation(core, pv, value)

        delete_claims(core, namespace, volumes, appliance)
        assert {claim: where(root, volumes[claim], f"data of {claim}") for claim in volumes} == \
            {claim: expected for claim, _, _, expected in cases}, appliance.log()
        assert not any((root / ".volumes" / f"{pv}.json").exists() for pv in volumes.values())
        policy_event(core, volumes["retained"], f"the PV has no annotation {ANN}", "record says retain",
                     f"kept {root / volumes['retained']}")
        policy_event(core, volumes["archived"], f"the PV has no annotation {ANN}", "record says archive",
                     f"moved to {root / ARCHIVE_DIR / volumes['archived']}-")
        policy_event(core, volumes["archived-case"], f"the PV annotation {ANN} says delete", "record says archive")
        policy_event(core, volumes["deleted"], f"the PV has no annotation {ANN}", "record says delete",
                     f"deleted {root / volumes['deleted']}")
        assert f"volume {volumes['retained']}: the PV has no annotation {ANN}; the volume's record says retain" \
            in appliance.text()
    finally:
        for cls in classes.values():
            storage.delete_storage_class(cls)


@pytest.mark.e2e
@pytest.mark.kube
@pytest.mark.ganesha
def test_d1_records_of_older_versions_get_their_policy_at_start_and_unknown_keeps(
        appliance: Appliance, core: client.CoreV1Api, storage: client.StorageV1Api, namespace: str,
        unique: str) -> None:
    classes = {policy: f"d1-old-{policy}-{unique}" for policy in ("archive", "delete")}
    for policy, cls in classes.items():
        make_class(cls, appliance.provisioner, parameters={"onDelete": policy}, api=storage)
    try:
        appliance.start()
        root = appliance.export_root
        volumes = {"archived": bound_volume(core, namespace, classes["archive"], "archived"),
                   "adopted": bound_volume(core, namespace, classes["archive"], "adopted"),
                   "unknown": bound_volume(core, namespace, classes["delete"], "unknown"),
                   "deleted": bound_volume(core, namespace, classes["delete"], "deleted")}
        for claim, pv in volumes.items():
            (root / pv / "precious").write_text(f"data of {claim}")
        assert appliance.stop() == 0
        for pv in volumes.values():  # what an export root of an older version looks like: no policy recorded
            record = root / ".volumes" / f"{pv}.json"
            data = json.loads(record.read_text())
            data.pop("on_delete", None)
            record.write_text(json.dumps(data))
        (root / ".volumes" / f"{volumes['adopted']}.json").unlink()  # and of one before records existed
        set_annotation(core, volumes["adopted"], "Archive")  # a hand edit in another case
        set_annotation(core, volumes["unknown"], None)  # stripped while the older version ran

        appliance.start()
        log = appliance.text()
        for claim, policy in (("archived", "archive"), ("deleted", "delete")):
            assert f"volume {volumes[claim]}: deletion policy {policy} recorded from its PV" in log, log
            assert json.loads((root / ".volumes" / f"{volumes[claim]}.json").read_text())["on_delete"] == policy
        assert f"volume {volumes['adopted']}: adopted (made before volume records)" in log, log
        assert json.loads((root / ".volumes" / f"{volumes['adopted']}.json").read_text())["on_delete"] == "archive"
        assert (f"volume {volumes['unknown']}, once deleted: the volume's record names no deletion policy "
                f"(the volume was made by an older version) and the PV has no annotation {ANN}: retain") in log, log
        assert "1 adopted, 2 deletion policies recorded" in log
        for claim in ("archived", "adopted"):
            set_annotation(core, volumes[claim], None)  # from now on the annotation changes nothing

        delete_claims(core, namespace, volumes, appliance)
        assert {claim: where(root, pv, f"data of {claim}") for claim, pv in volumes.items()} == \
            {"archived": "archived", "adopted": "archived", "unknown": "kept", "deleted": "deleted"}, appliance.log()
        policy_event(core, volumes["unknown"], "never means delete", f"kept {root / volumes['unknown']}")
    finally:
        for cls in classes.values():
            storage.delete_storage_class(cls)
