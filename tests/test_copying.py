"""The clone copy (``nfs_provisioner.volumes.copying``) on a real directory tree (ext4 here: no shared
blocks, so the sparse-aware copy path; the reflink path is checked on XFS inside UML by test_clone_uml.py)."""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

import pytest

from nfs_provisioner.volumes import copying
from tests.treesnap import snapshot

pytestmark = pytest.mark.unit


def build_source(src: Path, outside: Path) -> None:
    """Every kind of entry a volume may hold, with odd owners, modes and times."""
    (src / "dir" / "deep").mkdir(parents=True)
    (src / "dir" / "deep" / "f.txt").write_bytes(b"hello\n" * 1000)
    (src / "big.bin").write_bytes(os.urandom(3 << 20))
    with open(src / "sparse.img", "wb") as f:  # 64 MiB apparent, two small data extents
        f.write(b"head" * 1024)
        f.seek(40 << 20)
        f.write(b"middle" * 1024)
        f.truncate(64 << 20)
    (src / "empty").write_bytes(b"")
    os.link(src / "big.bin", src / "dir" / "big-link.bin")
    os.symlink("../big.bin", src / "dir" / "rel-link")
    os.symlink(str(outside / "secret"), src / "abs-link")  # must be copied as a link, never followed
    os.symlink("dangling-target", src / "dangling")
    os.mkfifo(src / "fifo", 0o640)
    os.chown(src / "dir" / "deep" / "f.txt", 1234, 5678)
    os.chown(src / "abs-link", 4321, 8765, follow_symlinks=False)
    os.chmod(src / "dir" / "deep" / "f.txt", 0o4751)
    os.chmod(src / "dir", 0o2750)
    os.setxattr(src / "big.bin", "user.color", b"blue")
    os.setxattr(src / "dir", "trusted.note", b"dir-xattr")
    os.utime(src / "dir" / "deep" / "f.txt", ns=(1_000_000_123, 2_000_000_456))
    os.utime(src / "dir" / "deep", ns=(3_000_000_000, 4_000_000_789))
    os.utime(src / "abs-link", ns=(5_000_000_000, 6_000_000_000), follow_symlinks=False)


def describe(root: Path) -> dict[str, tuple[object, ...]]:
    """What a clone must reproduce, per relative path (inode numbers replaced by link groups)."""
    out: dict[str, tuple[object, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            p = Path(dirpath) / n
            st = os.lstat(p)
            rel = str(p.relative_to(root))
            content: object = None
            if stat.S_ISREG(st.st_mode):
                content = p.read_bytes()
            elif stat.S_ISLNK(st.st_mode):
                content = os.readlink(p)
            xattrs = {} if stat.S_ISLNK(st.st_mode) else {a: os.getxattr(p, a) for a in os.listxattr(p)}
            out[rel] = (stat.filemode(st.st_mode), st.st_uid, st.st_gid, st.st_size, st.st_nlink,
                        None if stat.S_ISDIR(st.st_mode) else st.st_mtime_ns, content, xattrs)
    return out


@pytest.mark.root  # chown to other owners
def test_copy_reproduces_every_kind_of_entry_and_never_follows_symlinks(tmp_path: Path) -> None:
    src, dst, outside = tmp_path / "src", tmp_path / "dst", tmp_path / "outside"
    src.mkdir()
    dst.mkdir()
    outside.mkdir()
    (outside / "secret").write_text("never read")
    build_source(src, outside)
    os.chmod(src, 0o2777)
    before_outside = snapshot(outside)
    before_src = describe(src)
    usage = copying.measure(src)
    assert usage.apparent_bytes == (3 << 20) + (64 << 20) + 6000
    seen: list[int] = []
    stats = copying.copy_tree(src, dst, on_bytes=seen.append)

    assert describe(dst) == before_src
    assert describe(src) == before_src  # the source is untouched
    assert snapshot(outside) == before_outside
    assert sum(seen) == usage.apparent_bytes
    assert stats.files == 4 and stats.hard_links == 1 and stats.symlinks == 3 and stats.specials == 1
    # Hard link kept as a link inside the copy, not to the source.
    assert os.stat(dst / "big.bin").st_ino == os.stat(dst / "dir" / "big-link.bin").st_ino
    assert os.stat(dst / "big.bin").st_ino != os.stat(src / "big.bin").st_ino
    # Holes stay holes: the 64 MiB sparse file occupies about what its two extents need.
    assert os.stat(dst / "sparse.img").st_blocks * 512 < (1 << 20)
    # Directory times (set after their contents) and the root's own metadata.
    assert os.stat(dst / "dir" / "deep").st_mtime_ns == 4_000_000_789
    assert stat.S_IMODE(os.stat(dst).st_mode) == 0o2777
    assert os.getxattr(dst / "dir", "trusted.note") == b"dir-xattr"
    # Writing to the copy leaves the source alone.
    (dst / "big.bin").write_bytes(b"changed")
    assert (src / "big.bin").read_bytes() != b"changed"


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
