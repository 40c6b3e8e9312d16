"""Filesystem volumes (issue 23, ``isolation: filesystem``) on real loop devices, real ext4 and XFS: the
module (``nfs_provisioner.volumes.filesystems``), the class parameters, the record and the start-up remount.
End-to-end tests through the appliance are in tests/e2e/test_filesystem_e2e.py, the boundary in
tests/ganesha/test_filesystem_handles.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from nfs_provisioner.volumes import filesystems, params
from nfs_provisioner.volumes.records import VolumeRecords, new_record
from tests.support.paths import REPO

MiB = 2**20


@pytest.mark.unit
def test_isolation_and_fs_type_parameters() -> None:
    assert params.parse({}).isolation == "directory" and params.parse({}).fs_type is None
    p = params.parse({"isolation": "filesystem"})
    assert (p.isolation, p.fs_type) == ("filesystem", "ext4")
    assert params.parse({"isolation": "Filesystem", "fsType": "XFS"}).fs_type == "xfs"
    for bad, message in (({"isolation": "block"}, "parameter isolation: want directory or filesystem"),
                         ({"isolation": "filesystem", "fsType": "btrfs"}, "parameter fsType: want ext4 or xfs"),
                         ({"fsType": "xfs"}, "fsType needs isolation: filesystem")):
        with pytest.raises(params.InvalidParameter, match=message):
            params.parse(bad)


@pytest.mark.unit
def test_the_record_says_which_filesystem_and_old_records_read_as_directories(tmp_path: Path) -> None:
    records = VolumeRecords(tmp_path / ".volumes", durable=False)
    claim = {"metadata": {"uid": "u1", "namespace": "ns", "name": "c"}}
    records.write(new_record(pv_name="pvc-a", claim=claim, identity="i", path=tmp_path / "pvc-a", root_squash=False,
                             on_delete="delete", filesystem="xfs"))
    records.write(new_record(pv_name="pvc-b", claim=claim, identity="i", path=tmp_path / "pvc-b", root_squash=False,
                             on_delete="delete"))
    a, b = records.read("pvc-a"), records.read("pvc-b")
    assert a is not None and a.filesystem == "xfs"
    assert b is not None and b.filesystem is None
    old = (tmp_path / ".volumes" / "pvc-b.json").read_text().replace(', "filesystem": null', "")
    assert "filesystem" not in old
    (tmp_path / ".volumes" / "pvc-b.json").write_text(old)
    assert (records.read("pvc-b") or a).filesystem is None, "a record written before the field existed"


@pytest.mark.unit
def test_claims_below_the_filesystems_minimum_are_refused_naming_it() -> None:
    with pytest.raises(filesystems.TooSmall, match=r"a xfs volume needs at least 300Mi.*or use fsType: ext4"):
        filesystems.check_size("xfs", 300 * MiB - 4096)
    filesystems.check_size("xfs", 300 * MiB)
    with pytest.raises(filesystems.TooSmall, match=r"a ext4 volume needs at least 4Mi; the claim requests 1048576"):
        filesystems.check_size("ext4", MiB)
    filesystems.check_size("ext4", 4 * MiB)
    doc = (REPO / "docs" / "filesystem-volumes.md").read_text()
    assert "**4Mi for\next4**" in doc and "**300Mi for XFS**" in doc, "the documented minimums are these"
