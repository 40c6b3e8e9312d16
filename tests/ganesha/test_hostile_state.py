"""Hostile review round 3 (issue 28), the appliance's own state: D9 readiness while a volume is not served,
D11 bounded reads of state files, D12 a crash then a failed retry, D13 a symlinked export root, D14 export
files nobody recorded, D15 a cross-namespace ``dataSourceRef`` the API server drops.

Each defect has a fast test on real pieces (a real Ganesha where exports are concerned) and, where a user
sees it through the running appliance, a test against the real appliance process, control plane and
Ganesha."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import pytest

from nfs_provisioner.appliance import recovery
from nfs_provisioner.appliance.exporters import GaneshaExporter
from nfs_provisioner.controller.interface import ProvisioningError, ProvisioningState
from nfs_provisioner.ganesha.exports import Export, ExportRequest
from nfs_provisioner.ganesha.settings import AccessType, Squash
from tests.support.ganesha_env import Harness
from tests.support.hostile_state import GiB, max_rss_mib, pv, sparse
from tests.support.provisioner_env import InProcessAppliance, options


@pytest.mark.ganesha
def test_d11_a_3gib_export_file_is_refused_and_the_others_served(h: Harness,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    srv = h.server()
    srv.exports.add(ExportRequest(name="vol", path=h.volume("vol", content={"f": b"data"})))
    srv.stop()
    big = sparse(srv.exports.exports_dir / "planted.conf", 3 * GiB)
    caplog.set_level(logging.ERROR, logger="nfs_provisioner.ganesha.exports")
    rss_before = max_rss_mib()
    srv2 = h.server()
    assert max_rss_mib() - rss_before < 100
    assert f"export file {big} is unreadable, left out of the index: {big} is {3 * GiB} bytes" in caplog.text
    assert big.stat().st_size == 3 * GiB
    assert [e.name for e in srv2.exports.list_exports()] == ["vol"]
    assert h.client().cat(h.export_root / "vol" / "f").stdout == b"data"


def live_paths(srv: Any) -> set[str]:
    return {e.path for e in srv.dbus.show_exports() if e.export_id != 0}


@pytest.mark.ganesha
def test_d9_an_export_whose_directory_is_gone_or_a_symlink_is_unserved_until_it_is_back(
        h: Harness, tmp_path: Path) -> None:
    srv = h.server()
    for name in ("gone", "linked", "fine"):
        srv.exports.add(ExportRequest(name=name, path=h.volume(name, content={"f": name.encode()})))
    srv.stop()
    root = h.export_root
    (root / "gone").rename(tmp_path / "gone-aside")
    (root / "linked").rename(tmp_path / "linked-aside")
    (tmp_path / "secret").mkdir()
    (tmp_path / "secret" / "f").write_text("secret")
    (root / "linked").symlink_to(tmp_path / "secret")

    srv2 = h.server()
    unserved = srv2.exports.unserved()
    assert unserved == {"gone": f"its directory {root / 'gone'} is missing",
                        "linked": f"{root / 'linked'} is a symlink (to {tmp_path / 'secret'}), not a directory; "
                                  "never followed"}
    assert live_paths(srv2) == {str(root / "fine")}
    assert not any("linked" in str(p) or "gone" in str(p) for p in srv2.exports.index_entries())
    assert h.client().cat(root / "linked" / "f").returncode != 0, "the symlink's target is never served"
    assert srv2.exports.serve_again("gone") == f"its directory {root / 'gone'} is missing"

    (tmp_path / "gone-aside").rename(root / "gone")
    (root / "linked").unlink()
    (tmp_path / "linked-aside").rename(root / "linked")
    assert srv2.exports.serve_again("gone") is None
    assert srv2.exports.serve_again("linked") is None
    assert srv2.exports.unserved() == {}
    assert live_paths(srv2) == {str(root / n) for n in ("gone", "linked", "fine")}
    assert h.client().cat(root / "linked" / "f").stdout == b"linked"
    assert len(srv2.exports.index_entries()) == 3, "in the index again: the next start serves them"
    srv2.stop()
    srv3 = h.server()
    assert srv3.exports.unserved() == {} and len(live_paths(srv3)) == 3


@pytest.mark.ganesha
def test_d14_an_export_file_without_a_record_is_kept_but_never_served(
        h: Harness, caplog: pytest.LogCaptureFixture) -> None:
    a = InProcessAppliance(h)
    a.p.provision(options("pvc-1"))
    a.server.stop()
    # A file with a valid header (as the manager writes it) for a directory nobody recorded.
    planted_dir = h.volume("pvc-planted", content={"f": b"not a volume"})
    header = Export(name="pvc-planted", export_id=77, path=planted_dir, squash=Squash.NO_ROOT_SQUASH,
                    access_type=AccessType.RW, clients=("*",), config_file=Path()).header()
    planted = a.server.exports.exports_dir / "pvc-planted.conf"
    planted.write_text(header + "EXPORT { Export_Id = 77; }\n")

    caplog.set_level(logging.WARNING, logger="nfs_provisioner.ganesha.exports")
    for _ in range(2):  # at every start
        srv = h.server()
        assert live_paths(srv) == {str(h.export_root / "pvc-1")}
        assert "no volume record" in srv.exports.unserved()["pvc-planted"]
        assert h.client().cat(planted_dir / "f").returncode != 0
        assert planted.exists()
        srv.stop()
    lines = [r.getMessage() for r in caplog.records if "pvc-planted" in r.getMessage()]
    assert len(lines) == 2 and all(f"its file {planted} is kept" in line for line in lines), lines


def leftovers(a: InProcessAppliance, name: str, *, claim_uid: str) -> None:
    """The record (as the appliance writes them: the one of pvc-1, renamed) and the directory of ``name``."""
    record = a.p.records.read("pvc-1")
    assert record is not None
    a.p.records.write(dataclasses.replace(record, pv_name=name, claim_uid=claim_uid, path=str(a.root / name)))
    a.p.directories.create(name, gid=None)


@pytest.mark.ganesha
def test_d12_a_retry_that_fails_finally_removes_what_a_crashed_attempt_left(h: Harness) -> None:
    a = InProcessAppliance(h, max_exports=1)
    a.p.provision(options("pvc-1"))
    # What a SIGKILL between the directory's creation and the PV's save leaves (before the export): the
    # record, then the directory (the e2e test below makes it with a real SIGKILL).
    opts = options("pvc-2")
    leftovers(a, "pvc-2", claim_uid="2")
    with pytest.raises(ProvisioningError, match=r"maximum number of exports \(1\) is reached") as e:
        a.p.provision(opts)
    assert e.value.state is ProvisioningState.FINISHED
    assert not (a.root / "pvc-2").exists()
    assert a.p.records.read("pvc-2") is None
    assert (a.root / "pvc-1").is_dir() and a.p.records.read("pvc-1") is not None


@pytest.mark.ganesha
def test_a_retry_never_removes_what_another_claim_left(h: Harness) -> None:
    a = InProcessAppliance(h, max_exports=1)
    a.p.provision(options("pvc-1"))
    leftovers(a, "pvc-2", claim_uid="someone-else")
    with pytest.raises(ProvisioningError, match="maximum number of exports"):
        a.p.provision(options("pvc-2"))
    assert (a.root / "pvc-2").is_dir() and a.p.records.read("pvc-2") is not None


@pytest.mark.ganesha
def test_d9_readiness_fails_while_a_bound_volume_is_not_served_and_recovers(
        h: Harness, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    a = InProcessAppliance(h)
    for name in ("pvc-gone", "pvc-fine", "pvc-released"):
        a.p.provision(options(name))
    a.server.stop()
    root = h.export_root
    (root / "pvc-gone").rename(tmp_path / "aside")
    (root / "pvc-released").rmdir()
    volumes = [pv("pvc-gone", root=root, identity=a.p.config.identity),
               pv("pvc-fine", root=root, identity=a.p.config.identity),
               pv("pvc-released", root=root, identity=a.p.config.identity, phase="Released")]
    srv = h.server()
    caplog.set_level(logging.INFO, logger="nfs_provisioner.appliance.recovery")
    report = recovery.Recovery(
        api=None,  # type: ignore[arg-type]  # the PVs come from ``volumes``, as the controller's cache gives them
        names=frozenset({"example.com/nfs"}), identity=a.p.config.identity, directories=a.p.directories,
        records=a.p.records, exporter=GaneshaExporter(srv.exports), server=lambda: "127.0.0.1",
        volumes=lambda: volumes).run()
    try:
        assert report.watch is not None
        ok, why = report.health()
        assert not ok
        assert why == f"1 Bound volume(s) of this appliance are not served: pvc-gone: its directory " \
                      f"{root / 'pvc-gone'} is missing", why
        assert "volume pvc-gone is Bound but not served by NFS-Ganesha" in caplog.text
        # Fixed: served again at the next look, readiness back.
        (tmp_path / "aside").rename(root / "pvc-gone")
        report.watch.check()
        assert report.health() == (True, "ok")
        assert h.client().ls(root / "pvc-gone").returncode == 0
        assert "volume pvc-gone: served again" in caplog.text
        # Replaced by a symlink (the export is withdrawn when Ganesha restarts): not served; deleted: ready.
        srv.stop()
        (root / "pvc-gone").rename(tmp_path / "aside")
        (root / "pvc-gone").symlink_to("/etc")
        srv = h.server()
        report.watch.exporter = GaneshaExporter(srv.exports)
        report.watch.check()
        assert "pvc-gone: /" in report.health()[1] and "is a symlink (to /etc)" in report.health()[1]
        volumes[0]["status"]["phase"] = "Released"
        report.watch.check()
        assert report.health() == (True, "ok")
        assert "volume pvc-gone: no longer a Bound volume of this appliance" in caplog.text
    finally:
        report.stop()
