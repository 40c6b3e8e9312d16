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
from typing import Any

import pytest

from nfs_provisioner.controller.interface import Notice
from nfs_provisioner.volumes.records import RECORDS_DIR
from tests.support.hostile_policy import ANN, Volumes, volumes

__all__ = ["volumes"]  # the shared fixtures (tests/support/hostile_policy.py)


def annotated(pv: dict[str, Any], value: str | None) -> dict[str, Any]:
    """The PV with its on-delete annotation set to ``value`` (None: removed)."""
    pv = copy.deepcopy(pv)
    pv["metadata"]["annotations"].pop(ANN)
    if value is not None:
        pv["metadata"]["annotations"][ANN] = value
    return pv


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
