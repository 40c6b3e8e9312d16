"""The clone copy (``nfs_provisioner.volumes.copying``) on a real directory tree (ext4 here: no shared
blocks, so the sparse-aware copy path; the reflink path is checked on XFS inside UML by test_clone_uml.py)."""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

import pytest

from nfs_provisioner.volumes import copying

pytestmark = pytest.mark.unit


def test_copy_refuses_a_symlinked_source_or_a_non_empty_target_and_can_be_cancelled(tmp_path: Path) -> None:
    real, dst = tmp_path / "real", tmp_path / "dst"
    real.mkdir()
    dst.mkdir()
    (real / "f").write_bytes(b"x" * (copying.CHUNK * 3))
    os.symlink(real, tmp_path / "link")
    with pytest.raises(OSError):
        copying.copy_tree(tmp_path / "link", dst)
    (dst / "leftover").write_text("half copy")
    with pytest.raises(copying.CopyError, match="not empty"):
        copying.copy_tree(real, dst)
    assert copying.empty_dir(dst) == 1 and os.listdir(dst) == []
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(copying.Cancelled):
        copying.copy_tree(real, dst, cancel=cancel)


def test_shares_blocks_is_false_on_ext4(tmp_path: Path) -> None:
    import subprocess

    fstype = subprocess.run(["stat", "-f", "-c", "%T", str(tmp_path)], capture_output=True, text=True).stdout.strip()
    if fstype not in ("ext2/ext3", "tmpfs"):  # ext4 reports ext2/ext3
        pytest.skip(f"the test's temp directory is on {fstype}, which may share blocks (XFS/btrfs: test_clone_uml)")
    assert copying.shares_blocks(tmp_path) is False
    assert os.listdir(tmp_path) == []


def test_clone_check_refuses_a_source_in_another_namespace_before_reading_anything(tmp_path: Path) -> None:
    """``dataSourceRef.namespace`` needs the CrossNamespaceVolumeDataSource gate (alpha, off in the test
    cluster, whose API server drops the field), so this refusal is checked on the validation itself."""
    from nfs_provisioner.appliance import clones
    from nfs_provisioner.controller.interface import DataSource
    from nfs_provisioner.controller.interface import ProvisioningError as PE
    from nfs_provisioner.volumes.directories import VolumeDirectories
    from nfs_provisioner.volumes.records import VolumeRecords

    class Nothing:
        def __init__(self) -> None:
            self.asked: list[str] = []

        def claim(self, namespace: str, name: str) -> None:
            self.asked.append(f"{namespace}/{name}")

        def volume(self, name: str) -> None:
            self.asked.append(name)

    sources = Nothing()
    claim = {"metadata": {"namespace": "team-a", "name": "copy", "uid": "u1"}, "spec": {"storageClassName": "c"}}
    with pytest.raises(PE, match=r"^cannot clone: the source claim team-b/live is in another namespace than "
                                 r"team-a/copy .*; no volume is provisioned$"):
        clones.check(claim=claim, source=DataSource(kind="PersistentVolumeClaim", name="live", namespace="team-b"),
                     requested_bytes=1 << 20, sources=sources, identity="id", records=VolumeRecords(tmp_path / "r"),
                     directories=VolumeDirectories(tmp_path))
    assert sources.asked == []
    assert os.listdir(tmp_path) == []


def test_a_target_filesystems_own_directories_are_kept_and_a_source_of_the_same_name_copied_into_them(
        tmp_path: Path) -> None:
    """``keep`` (a new ext4's lost+found in a clone's target): the target may hold it, a source directory of that
    name is copied into it, and emptying the target for a new start empties it but keeps it; anything else in the
    target (or a kept name that is not a directory) is still refused."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    (dst / "lost+found").mkdir(parents=True)
    (src / "f").write_text("data")
    keep = frozenset({"lost+found"})
    copying.copy_tree(src, dst, keep=keep)
    assert sorted(os.listdir(dst)) == ["f", "lost+found"] and os.listdir(dst / "lost+found") == []

    (src / "lost+found").mkdir(mode=0o700)
    (src / "lost+found" / "#12").write_text("found by e2fsck")
    assert copying.empty_dir(dst, keep=keep) == 2
    assert os.listdir(dst) == ["lost+found"]
    copying.copy_tree(src, dst, keep=keep)
    assert (dst / "lost+found" / "#12").read_text() == "found by e2fsck"
    assert stat.S_IMODE(os.stat(dst / "lost+found").st_mode) == 0o700
    assert copying.empty_dir(dst, keep=keep) == 2 and os.listdir(dst) == ["lost+found"]
    assert os.listdir(dst / "lost+found") == []

    (dst / "other").mkdir()
    with pytest.raises(copying.CopyError, match="not empty"):
        copying.copy_tree(src, dst, keep=keep)
    (dst / "other").rmdir()
    with pytest.raises(copying.CopyError, match="not empty"):
        copying.copy_tree(src, dst)  # without keep, lost+found is an entry like any other
    (dst / "lost+found").rmdir()
    (dst / "lost+found").write_text("a file, not the filesystem's directory")
    with pytest.raises(copying.CopyError, match="not empty"):
        copying.copy_tree(src, dst, keep=keep)
    (dst / "sub" / "deeper").mkdir(parents=True)
    os.symlink("/", dst / "link")
    assert copying.empty_dir(dst, keep=keep) == 3 and os.listdir(dst) == []
