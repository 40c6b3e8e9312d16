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
from pathlib import Path

import pytest

from nfs_provisioner.volumes import ondelete, params
from nfs_provisioner.volumes.records import RECORDS_DIR, VolumeRecords, new_record
from tests.support.hostile_policy import ANN, IDENTITY

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
