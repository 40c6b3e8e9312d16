"""The clone copy (``nfs_provisioner.volumes.copying``) on a real directory tree (ext4 here: no shared
blocks, so the sparse-aware copy path; the reflink path is checked on XFS inside UML by test_clone_uml.py)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from nfs_provisioner.volumes import copying
from tests.support.treesnap import snapshot

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
