"""Issue 28, D1: what deleting a volume does with its data is the policy recorded when the volume was made,
whatever later happens to the PV annotation ``nfs-provisioner.io/on-delete`` (stripped by a hand edit, an
``apply`` without it, a tool; changed; a case variant); a missing or unreadable policy never means delete.

Three levels: the rule itself (every combination of what the record and the annotation say), the appliance's
provisioner against a real Ganesha (records of this and of older versions, corrupt ones), and the whole
appliance through the control plane (annotations removed with a PATCH, claims deleted, the data looked for
on the export root, the events read back).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from nfs_provisioner.appliance import provisioner as prov
from nfs_provisioner.appliance.exporters import GaneshaExporter
from nfs_provisioner.controller.interface import Notice, ProvisionOptions
from nfs_provisioner.volumes import ondelete, params
from nfs_provisioner.volumes.directories import ARCHIVE_DIR, VolumeDirectories
from nfs_provisioner.volumes.records import RECORDS_DIR, VolumeRecords, new_record
from tests import wait
from tests.appliance_env import Appliance
from tests.ganesha_env import Harness

ANN = "nfs-provisioner.io/on-delete"
IDENTITY = "6f1c1c1e-0000-4000-8000-0000000000d1"

# ---------------------------------------------------------------- the rule

ANNOTATIONS: list[object] = [None, "delete", "retain", "archive", "Archive", " RETAIN ", "DELETE", "rm -rf /", ""]
"""What a PV may carry: nothing, each policy, case and space variants, an unknown value, an empty one."""
DECISIONS: dict[str, tuple[object, str]] = {
    # what the record holds -> (that value, the action per annotation above: d/r/a, upper case = with a warning)
    "delete": ("delete", "D d R A A R d R R"),
    "retain": ("retain", "R R r R R r R R R"),
    "archive": ("archive", "A A A a a A A A A"),
    "case variant": ("Archive", "A A A a a A A A A"),
    "older version (none)": (None, "R d r a a r d R R"),
    "unknown word": ("shred", "R R R A A R R R R"),
    "empty": ("", "R R R A A R R R R"),
    "not a string": (5, "R R R A A R R R R"),
    "a list": (["delete"], "R R R A A R R R R"),
}
ACTIONS = {"d": "delete", "r": "retain", "a": "archive"}


@pytest.mark.unit
@pytest.mark.parametrize("record", list(DECISIONS))
def test_d1_the_recorded_policy_decides_and_nothing_unknown_deletes(record: str) -> None:
    recorded, row = DECISIONS[record]
    for annotation, code in zip(ANNOTATIONS, row.split(), strict=True):
        decision = ondelete.decide(recorded=recorded, annotation=annotation)
        assert decision.action == ACTIONS[code.lower()], (record, annotation, decision)
        assert (decision.warning is not None) == code.isupper(), (record, annotation, decision)


@pytest.mark.unit
def test_d1_only_a_readable_delete_policy_deletes() -> None:
    """The invariant behind the table, over every pair: delete only when the record says delete and the PV
    says delete or nothing, or when an older version's record says nothing and the PV says delete."""
    for recorded, _ in DECISIONS.values():
        for annotation in ANNOTATIONS:
            if ondelete.decide(recorded=recorded, annotation=annotation).action != "delete":
                continue
            said = params.on_delete_policy(annotation)
            assert (params.on_delete_policy(recorded) == "delete" and (annotation is None or said == "delete")) \
                or (recorded is None and said == "delete"), (recorded, annotation)


@pytest.mark.unit
def test_d1_warnings_say_what_was_seen_and_why_the_data_is_kept() -> None:
    stripped = ondelete.decide(recorded="archive", annotation=None)
    assert stripped.warning == (f"the PV has no annotation {ANN}; the volume's record says archive (the class's "
                                "onDelete when the volume was made) and decides")
    veto = ondelete.decide(recorded="delete", annotation="Retain")
    assert veto.warning == (f"the PV annotation {ANN} says retain and the volume's record says delete: retain, "
                            "because an annotation may keep data, never delete it")
    unknown = ondelete.decide(recorded=None, annotation="x" * 300_000)
    assert unknown.action == "retain" and unknown.warning is not None
    assert "never means delete" in unknown.warning and len(unknown.warning) < 400  # the value is quoted, cut short
    corrupt = ondelete.decide(recorded={"x": 1}, annotation="delete")
    assert corrupt.warning is not None and "the volume's record holds {'x': 1}, not a deletion policy" \
        in corrupt.warning


@pytest.mark.unit
def test_d1_policy_values_ignore_case_and_space_and_nothing_else() -> None:
    assert [params.on_delete_policy(v) for v in ("Archive", " retain\n", "DELETE")] == ["archive", "retain", "delete"]
    assert [params.on_delete_policy(v) for v in ("archived", "re tain", "", None, 1, b"delete")] == [None] * 6
    assert params.parse({"onDelete": " Retain "}).on_delete == "retain"


@pytest.mark.unit
def test_d1_records_keep_the_policy_and_older_records_still_read(tmp_path: Path) -> None:
    records = VolumeRecords(tmp_path / RECORDS_DIR, durable=False)
    claim = {"metadata": {"uid": "u1", "namespace": "ns", "name": "c"}}
    records.write(new_record(pv_name="pvc-1", claim=claim, identity=IDENTITY, path=tmp_path / "pvc-1",
                             root_squash=False, on_delete="archive"))
    assert json.loads((tmp_path / RECORDS_DIR / "pvc-1.json").read_text())["on_delete"] == "archive"
    assert records.read("pvc-1").on_delete == "archive"
    old = json.loads((tmp_path / RECORDS_DIR / "pvc-1.json").read_text())
    del old["on_delete"]  # what a record of an older version looks like
    (tmp_path / RECORDS_DIR / "pvc-1.json").write_text(json.dumps(old))
    assert records.read("pvc-1").on_delete is None


# ---------------------------------------------------------------- the provisioner, real Ganesha


class Volumes:
    """The appliance's provisioner on a real Ganesha (as tests/test_appliance_provisioner.py builds it)."""

    def __init__(self, h: Harness) -> None:
        self.root = h.export_root
        self.server = h.server()
        self.p = prov.NFSProvisioner(
            config=prov.ApplianceConfig(identity=IDENTITY, server=lambda: "127.0.0.1"),
            directories=VolumeDirectories(self.root),
            records=VolumeRecords(self.root / RECORDS_DIR),
            exporter=GaneshaExporter(self.server.exports),
        )

    def make(self, name: str, on_delete: str) -> dict[str, Any]:
        """A Bound volume of a class with ``onDelete: on_delete``, holding one file; returns its PV."""
        sc = {"metadata": {"name": "c"}, "provisioner": "example.com/nfs", "reclaimPolicy": "Delete",
              "parameters": {"onDelete": on_delete}}
        claim = {"metadata": {"name": "claim", "namespace": "ns", "uid": f"uid-{name}"},
                 "spec": {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": "1Mi"}}}}
        pv = copy.deepcopy(self.p.provision(ProvisionOptions(storage_class=sc, pv_name=name, claim=claim)))
        pv["spec"]["claimRef"] = {"namespace": "ns", "name": "claim", "uid": f"uid-{name}"}
        (self.root / name / "precious").write_text(f"data of {name}")
        return pv

    def set_record(self, name: str, **fields: object) -> None:
        """Rewrite fields of a record by hand (``on_delete=...``); a field set to ``...`` is dropped."""
        path = self.root / RECORDS_DIR / f"{name}.json"
        data = json.loads(path.read_text())
        for key, value in fields.items():
            if value is ...:
                data.pop(key, None)
            else:
                data[key] = value
        path.write_text(json.dumps(data))

    def where(self, name: str) -> str:
        """Where the volume's data is now: "kept" (its directory), "archived", or "deleted"."""
        archived = list((self.root / ARCHIVE_DIR).glob(f"{name}-*/precious"))
        kept = (self.root / name / "precious").exists()
        assert len(archived) + kept <= 1, (archived, kept)
        for found in [*archived, *([self.root / name / "precious"] if kept else [])]:
            assert found.read_text() == f"data of {name}"
        return "archived" if archived else "kept" if kept else "deleted"


def annotated(pv: dict[str, Any], value: str | None) -> dict[str, Any]:
    """The PV with its on-delete annotation set to ``value`` (None: removed)."""
    pv = copy.deepcopy(pv)
    pv["metadata"]["annotations"].pop(ANN)
    if value is not None:
        pv["metadata"]["annotations"][ANN] = value
    return pv


@pytest.fixture
def volumes(h: Harness) -> Iterator[Volumes]:
    yield Volumes(h)


@pytest.mark.ganesha
@pytest.mark.parametrize(("on_delete", "annotation", "where", "notice"), [
    ("retain", None, "kept", "the PV has no annotation"),
    ("archive", None, "archived", "the PV has no annotation"),
    ("delete", None, "deleted", "the PV has no annotation"),
    ("archive", "Archive", "archived", None),
    ("retain", "delete", "kept", "the volume's record says retain"),
    ("archive", "shred", "archived", "is 'shred', not delete, retain or archive"),
    ("delete", "retain", "kept", "an annotation may keep data, never delete it"),
    ("delete", "DELETE", "deleted", None),
])
def test_d1_the_record_made_at_provisioning_decides(volumes: Volumes, on_delete: str, annotation: str | None,
                                                    where: str, notice: str | None) -> None:
    pv = volumes.make("pvc-1", on_delete)
    assert pv["metadata"]["annotations"][ANN] == on_delete
    got = volumes.p.delete(annotated(pv, annotation))
    assert volumes.where("pvc-1") == where
    assert volumes.server.exports.list_exports() == []
    assert not (volumes.root / RECORDS_DIR / "pvc-1.json").exists()
    if notice is None:
        assert got is None
    else:
        assert isinstance(got, Notice) and got.reason == "OnDeletePolicy" and notice in got.message, got


@pytest.mark.ganesha
@pytest.mark.parametrize(("annotation", "where"), [
    ("archive", "archived"), ("Retain", "kept"), ("delete", "deleted"), (None, "kept"), ("rm -rf /", "kept")])
def test_d1_records_of_older_versions_follow_a_known_annotation_else_keep(
        volumes: Volumes, annotation: str | None, where: str) -> None:
    pv = volumes.make("pvc-1", "delete")
    volumes.set_record("pvc-1", on_delete=...)
    got = volumes.p.delete(annotated(pv, annotation))
    assert volumes.where("pvc-1") == where
    assert (got is None) == (where != "kept" or annotation == "Retain"), got


@pytest.mark.ganesha
@pytest.mark.parametrize("recorded", ["shred", "", 7, None, ["delete"]])
def test_d1_an_unreadable_recorded_policy_never_deletes(volumes: Volumes, recorded: object) -> None:
    pv = volumes.make("pvc-1", "delete")
    volumes.set_record("pvc-1", on_delete=recorded)  # None: written as null, as an older version reads
    got = volumes.p.delete(pv)  # the annotation says delete, as it always did
    if recorded is None:  # a null is no policy: the PV's delete decides, as for an older version's record
        assert volumes.where("pvc-1") == "deleted" and got is None
    else:
        assert volumes.where("pvc-1") == "kept"
        assert got is not None and "not a deletion policy" in got.message and "kept" in got.message


@pytest.mark.ganesha
def test_d1_a_retried_provision_keeps_the_recorded_policy_or_records_one(volumes: Volumes) -> None:
    """A retry (after a crash before the PV was saved) finds the first attempt's record: its policy stands and
    the PV shows it; a record of an older version gets the class's."""
    first = volumes.make("pvc-1", "archive")
    again = volumes.make("pvc-1", "delete")  # the same claim, its class since made again with another onDelete
    assert again["metadata"]["annotations"][ANN] == "archive" == first["metadata"]["annotations"][ANN]
    volumes.make("pvc-2", "retain")
    volumes.set_record("pvc-2", on_delete=...)  # as an older version's attempt left it
    assert volumes.make("pvc-2", "retain")["metadata"]["annotations"][ANN] == "retain"
    assert json.loads((volumes.root / RECORDS_DIR / "pvc-2.json").read_text())["on_delete"] == "retain"
    assert volumes.p.delete(annotated(again, None)) is not None
    assert volumes.where("pvc-1") == "archived"


# ---------------------------------------------------------------- the appliance, control plane and Ganesha


def make_class(storage: client.StorageV1Api, name: str, provisioner: str, on_delete: str) -> None:
    storage.create_storage_class({"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
                                  "metadata": {"name": name}, "provisioner": provisioner,
                                  "parameters": {"onDelete": on_delete}})


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


def where(root: Path, pv: str, text: str) -> str:
    """Where a volume's file is now: "kept" (its directory), "archived" (under .archive/) or "deleted"."""
    archived = [p for p in (root / ARCHIVE_DIR).glob(f"{pv}-*/precious") if p.read_text() == text]
    kept = (root / pv / "precious").exists() and (root / pv / "precious").read_text() == text
    return "archived" if archived else "kept" if kept else "deleted"


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
        make_class(storage, cls, appliance.provisioner, policy)
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
        make_class(storage, cls, appliance.provisioner, policy)
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
