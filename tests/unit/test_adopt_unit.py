"""The Go nfs-provisioner's layout read as hostile input, and the adoption's decisions, on the real fixture
(tests/fixtures/go-nfs-provisioner, a copy of ../shared/fixtures/go-nfs-provisioner: its vfs.conf and PVs) and
on copies of it broken one thing at a time."""

from __future__ import annotations

import copy
import os
import tarfile
from pathlib import Path
from typing import Any

import pytest
import yaml

from nfs_provisioner.appliance import adoption, golayout
from nfs_provisioner.quota import projects
from nfs_provisioner.volumes.records import VolumeRecords
from tests.support.paths import FIXTURES

pytestmark = [pytest.mark.unit]

FIXTURE = Path(os.environ.get("NFSP_GO_FIXTURE", FIXTURES / "go-nfs-provisioner"))
ROOT = Path("/export")
IDENTITY = "edc408b1-fe92-41bd-a6ca-0a96628c453b"


def _pvs() -> dict[str, dict[str, Any]]:
    items = yaml.safe_load((FIXTURE / "pvs.yaml").read_text())["items"]
    return {pv["spec"]["claimRef"]["name"]: pv for pv in items}


def _config() -> golayout.GoConfig:
    return golayout.go_blocks((FIXTURE / "vfs.conf").read_text())


def test_the_fixture_vfs_conf_gives_its_four_blocks() -> None:
    config = _config()
    assert sorted(config.exports) == [1, 2, 3, 4]
    assert not config.duplicates and not config.bad
    e = config.exports[3]
    assert (e.path, e.pseudo, e.squash, e.filesystem_id, e.fsal) == (
        "/export/pvc-aa6d92cc-1563-4fda-a74f-6ef62897baf4",) * 2 + ("root_id_squash", "3.3", "VFS")
    assert e.root_squash and not config.exports[1].root_squash


@pytest.mark.parametrize("claim, export_id, squash", [("data", 1, False), ("keep", 2, False), ("squashed", 3, True),
                                                      ("shared", 4, False)])
def test_every_fixture_pv_agrees_with_its_block(claim: str, export_id: int, squash: bool) -> None:
    cand = golayout.check(_pvs()[claim], root=ROOT, config=_config(), config_error=None)
    assert isinstance(cand, golayout.Candidate), cand
    assert (cand.export.export_id, cand.export.root_squash, cand.project_id) == (export_id, squash, 0)
    assert golayout.is_go_volume(_pvs()[claim])


def _broken(claim: str, **ann: str) -> dict[str, Any]:
    pv = copy.deepcopy(_pvs()[claim])
    pv["metadata"]["annotations"].update(ann)
    return pv


def _block(pv: dict[str, Any]) -> str:
    return str(pv["metadata"]["annotations"]["EXPORT_block"])


@pytest.mark.parametrize("change, reason", [
    (lambda pv: pv["spec"]["nfs"].update(path="/export/../etc"), "outside the export root"),
    (lambda pv: pv["spec"]["nfs"].update(path="/elsewhere/" + pv["metadata"]["name"]), "outside the export root"),
    (lambda pv: pv["metadata"]["annotations"].update(Export_Id="7"), "disagrees with its EXPORT_block"),
    (lambda pv: pv["metadata"]["annotations"].update(EXPORT_block=_block(pv).replace("no_root", "root_id")),
     "disagree"),
    (lambda pv: pv["metadata"]["annotations"].update(EXPORT_block=_block(pv).replace("no_root", "all")),
     "malformed"),
    (lambda pv: pv["metadata"]["annotations"].update(EXPORT_block=_block(pv)[:-3]), "malformed"),
    (lambda pv: pv["metadata"]["annotations"].update(EXPORT_block="{" * 50), "malformed"),
    (lambda pv: pv["metadata"]["annotations"].update(EXPORT_block=_block(pv) + "#" + "x" * 5000), "(at most 4096)"),
    (lambda pv: pv["metadata"]["annotations"].update(EXPORT_block=_block(pv).replace("1.1", "9.9")), "Filesystem_id"),
    (lambda pv: pv["metadata"]["annotations"].update(EXPORT_block=_block(pv).replace(
        "Path = /export/pvc", "Path = /etc/../export/pvc")), "serves Path"),
    (lambda pv: pv["metadata"]["annotations"].update(Project_Id="12"), "Project_block"),
    (lambda pv: pv["metadata"]["annotations"].update(Project_Id="-1"), "not a project id"),
])
def test_a_pv_broken_one_way_is_refused_with_why(change: Any, reason: str) -> None:
    pv = copy.deepcopy(_pvs()["data"])
    change(pv)
    verdict = golayout.check(pv, root=ROOT, config=_config(), config_error=None)
    assert isinstance(verdict, str) and reason in verdict, verdict


def test_a_block_missing_from_vfs_conf_or_twice_in_it_is_refused() -> None:
    text = (FIXTURE / "vfs.conf").read_text()
    first = text.index("EXPORT\n{\n\tExport_Id = 1;")
    without = text[:first] + text[text.index("EXPORT\n{\n\tExport_Id = 2;"):]
    assert "no EXPORT block with Export_Id 1" in str(
        golayout.check(_pvs()["data"], root=ROOT, config=golayout.go_blocks(without), config_error=None))
    twice = text + text[first:text.index("EXPORT\n{\n\tExport_Id = 2;")]
    assert "more than one EXPORT block" in str(
        golayout.check(_pvs()["data"], root=ROOT, config=golayout.go_blocks(twice), config_error=None))
    assert "cannot be read: gone" in str(golayout.check(_pvs()["data"], root=ROOT, config=None, config_error="gone"))


@pytest.mark.parametrize("text", ["EXPORT { Export_Id = 1; ", "}", "EXPORT { = ; }", "A { B { C { D { E { F {"
                                  " } } } } } }", "EXPORT { Path = \"/a\nb\"; }", "key = value;",
                                  "EXPORT { Export_Id = 1; Export_ID = 2; }"])
def test_malformed_configs_raise_one_config_error(text: str) -> None:
    with pytest.raises(golayout.ConfigError):
        golayout.parse_config(text)


def test_the_go_projects_file_is_read_and_checked_against_project_id() -> None:
    # What quota.go's AddProject appends: "\n<id>:<directory>:<bytes>\n" per volume.
    text = "\n1:/export/pvc-a:1048576\n\n2:/export/pvc-b:2097152\n"
    entries = projects.parse_projects(text)
    assert [(e.project_id, str(e.directory), e.limit_bytes) for e in entries] == [
        (1, "/export/pvc-a", 1048576), (2, "/export/pvc-b", 2097152)]
    assert golayout.quota_problem(1, entries, Path("/export/pvc-a")) is None
    assert "gives /export/pvc-a project 1" in str(golayout.quota_problem(2, entries, Path("/export/pvc-a")))
    assert "no line for /export/pvc-c" in str(golayout.quota_problem(3, entries, Path("/export/pvc-c")))
    assert golayout.quota_problem(0, entries, Path("/export/pvc-c")) is None
    assert "is 0 but" in str(golayout.quota_problem(0, entries, Path("/export/pvc-b")))
    ann = {"Project_Id": "2", "Project_block": "\n2:/export/pvc-b:2097152\n"}
    assert golayout._project_id(ann, "/export/pvc-b") == 2
    assert "is not 2:/export/pvc-a" in str(golayout._project_id(ann, "/export/pvc-a"))


class FakeExporter:
    """Records what adoption asks of the exporter (NFS-Ganesha's part is proven in tests/e2e/test_adopt.py)."""

    def __init__(self, taken: dict[int, str] | None = None) -> None:
        self.ids = dict(taken or {})
        self.exports: dict[str, tuple[Path, bool, int]] = {}

    def export_ids(self) -> dict[int, str]:
        return dict(self.ids)

    def export(self, *, name: str, path: Path, root_squash: bool, export_id: int | None = None) -> tuple[int, str]:
        assert export_id is not None and export_id not in self.ids
        self.ids[export_id] = name
        self.exports[name] = (path, root_squash, export_id)
        return export_id, ""

    def has(self, name: str) -> bool:
        return name in self.exports

    def unexport(self, name: str) -> bool:
        return self.exports.pop(name, None) is not None


class Events:
    def __init__(self) -> None:
        self.sent: list[tuple[str, str, str]] = []

    def event(self, obj: dict[str, Any], event_type: str, reason: str, message: str) -> None:
        self.sent.append((obj["metadata"]["name"], reason, message))


def _root(tmp_path: Path) -> tuple[Path, list[dict[str, Any]]]:
    """The fixture's export root extracted under tmp_path, and its PVs with /export mapped there."""
    root = tmp_path / "export"
    root.mkdir()
    with tarfile.open(FIXTURE / "export-root.tar") as tar:
        tar.extractall(root, filter="fully_trusted")
    text = (FIXTURE / "pvs.yaml").read_text().replace("/export/", f"{root}/")
    (root / "vfs.conf").write_text((root / "vfs.conf").read_text().replace("/export/", f"{root}/"))
    return root, yaml.safe_load(text)["items"]


def _adoption(root: Path, exporter: FakeExporter, events: Events) -> adoption.Adoption:
    return adoption.Adoption(root=root, identity=IDENTITY, names=frozenset({"example.com/nfs"}),
                             records=VolumeRecords(root / ".volumes"), exporter=exporter, events=events)


def test_adoption_writes_records_exports_once_and_keeps_vfs_conf(tmp_path: Path) -> None:
    root, pvs = _root(tmp_path)
    before = (root / "vfs.conf").read_bytes()
    exporter, events = FakeExporter(), Events()
    report = _adoption(root, exporter, events).run(pvs)
    assert sorted(report.adopted) == sorted(pv["metadata"]["name"] for pv in pvs) and not report.refused
    assert {n: (e[1], e[2]) for n, e in exporter.exports.items()} == {
        pv["metadata"]["name"]: (pv["metadata"]["annotations"]["Export_Id"] == "3",
                                 int(pv["metadata"]["annotations"]["Export_Id"])) for pv in pvs}
    record = VolumeRecords(root / ".volumes").read(pvs[0]["metadata"]["name"])
    assert record is not None and record.adopted and record.on_delete == "delete"
    assert not (root / "vfs.conf").exists()
    assert (root / "vfs.conf.go-nfs-provisioner").read_bytes() == before
    again = _adoption(root, exporter, events).run(pvs)  # a restart: nothing done twice
    assert not again.adopted and len(again.earlier) == 4 and again.kept is None
    assert not events.sent


def test_a_crash_between_record_and_export_is_finished_at_the_next_start(tmp_path: Path) -> None:
    root, pvs = _root(tmp_path)
    first = FakeExporter()
    _adoption(root, first, Events()).run(pvs[:2])
    # As if killed after the record of pvs[2], before its export: the record is there, no export.
    name = pvs[2]["metadata"]["name"]
    second = FakeExporter({i: n for n, (_, _, i) in first.exports.items()})
    second.exports = dict(first.exports)
    a = _adoption(root, second, Events())
    cand = golayout.check(pvs[2], root=root, config=a._config()[0], config_error=None)
    assert isinstance(cand, golayout.Candidate)
    a.records.write(adoption.new_record(pv_name=name, claim={"metadata": {"uid": pvs[2]["spec"]["claimRef"]["uid"]}},
                                        identity=IDENTITY, path=root / name, root_squash=cand.export.root_squash,
                                        on_delete="delete", adopted=True))
    written = (root / ".volumes" / f"{name}.json").read_bytes()
    report = a.run(pvs)
    assert (root / ".volumes" / f"{name}.json").read_bytes() == written  # finished, not written again
    assert sorted(report.adopted) == sorted(p["metadata"]["name"] for p in pvs[2:])
    assert len(report.earlier) == 2 and not report.refused
    assert second.exports[name][2] == int(pvs[2]["metadata"]["annotations"]["Export_Id"])


def test_refusals_send_one_event_each_and_change_nothing(tmp_path: Path) -> None:
    root, pvs = _root(tmp_path)
    by_claim = {pv["spec"]["claimRef"]["name"]: pv for pv in pvs}
    os.rename(root / by_claim["data"]["metadata"]["name"], tmp_path / "moved")  # directory missing
    by_claim["keep"]["metadata"]["annotations"]["Provisioner_Id"] = "11111111-2222-3333-4444-555555555555"
    exporter, events = FakeExporter({3: "pvc-ours"}), Events()  # squashed's id is taken
    listing = sorted(os.listdir(root))
    report = _adoption(root, exporter, events).run(pvs)
    assert report.adopted == [by_claim["shared"]["metadata"]["name"]]
    why = {n: w for n, w in report.refused.items()}
    assert "is missing" in why[by_claim["data"]["metadata"]["name"]]
    assert "not this export root's identity" in why[by_claim["keep"]["metadata"]["name"]]
    assert "Export_Id 3 is taken" in why[by_claim["squashed"]["metadata"]["name"]]
    assert sorted(n for n, _, _ in events.sent) == sorted(why) and {r for _, r, _ in events.sent} == {adoption.REASON}
    assert VolumeRecords(root / ".volumes").names() == [by_claim["shared"]["metadata"]["name"]]
    kept = [n for n in listing if n != "vfs.conf"] + ["vfs.conf.go-nfs-provisioner", ".volumes"]
    assert sorted(os.listdir(root)) == sorted(kept)
    assert sorted(n for n in os.listdir(root) if n.startswith("pvc-")) == [n for n in listing if n.startswith("pvc-")]


def test_this_appliances_own_pvs_are_never_taken_for_the_go_provisioners() -> None:
    ours = {"metadata": {"name": "pvc-1", "annotations": {
        "EXPORT_block": 'EXPORT {\n    Export_Id = 7;\n    Path = "/export/pvc-1";\n}\n', "Export_Id": "7",
        "Provisioner_Id": IDENTITY}}}
    assert not golayout.is_go_volume(ours)  # an old version's PV: no on-delete annotation, its own block form
    ours["metadata"]["annotations"]["nfs-provisioner.io/on-delete"] = "delete"
    assert not golayout.is_go_volume(ours)
    assert not golayout.is_go_volume({**_pvs()["data"], "metadata": {**_pvs()["data"]["metadata"], "annotations": {
        **_pvs()["data"]["metadata"]["annotations"], "nfs-provisioner.io/on-delete": "delete"}}})


def test_a_go_pv_whose_name_this_appliance_exports_without_a_record_is_left_to_the_state_check(
        tmp_path: Path) -> None:
    root, pvs = _root(tmp_path)
    name = pvs[0]["metadata"]["name"]
    exporter, events = FakeExporter({9: name}), Events()
    exporter.exports[name] = (root / name, False, 9)
    report = _adoption(root, exporter, events).run(pvs)
    assert name not in report.adopted and name not in report.refused and len(report.adopted) == 3
    assert not events.sent and exporter.exports[name][2] == 9


class Quotas:
    """What adoption reads of ``quota.manager.ProjectQuotas``: the projects file's lines."""

    def __init__(self, text: str) -> None:
        self.text = text

    def recorded(self) -> list[projects.ProjectEntry]:
        return projects.parse_projects(self.text)


def test_with_quotas_the_go_projects_file_must_agree_with_project_id(tmp_path: Path) -> None:
    root, pvs = _root(tmp_path)
    by_claim = {pv["spec"]["claimRef"]["name"]: pv for pv in pvs}
    data, keep = (by_claim[c]["metadata"]["name"] for c in ("data", "keep"))
    for claim, pid in (("data", 1), ("keep", 2)):
        name = by_claim[claim]["metadata"]["name"]
        by_claim[claim]["metadata"]["annotations"].update(Project_Id=str(pid),
                                                          Project_block=f"\n{pid}:{root}/{name}:1048576\n")
    # As quota.go's AddProject appends them: the second line gives keep's directory another id than its PV.
    text = f"\n1:{root}/{data}:1048576\n\n3:{root}/{keep}:2097152\n"
    a = adoption.Adoption(root=root, identity=IDENTITY, names=frozenset({"example.com/nfs"}),
                          records=VolumeRecords(root / ".volumes"), exporter=FakeExporter(), events=Events(),
                          quotas=Quotas(text))  # type: ignore[arg-type]
    report = a.run(pvs)
    assert data in report.adopted and len(report.adopted) == 3
    assert list(report.refused) == [keep]
    assert f"its Project_Id is 2 but the projects file gives {root}/{keep} project 3" in report.refused[keep]
    broken = adoption.Adoption(root=root, identity=IDENTITY, names=frozenset({"example.com/nfs"}),
                               records=VolumeRecords(root / ".volumes"), exporter=FakeExporter(), events=Events(),
                               quotas=Quotas("1:relative:5\n")).run(pvs)  # type: ignore[arg-type]
    assert "the projects file cannot be read" in broken.refused[keep]
