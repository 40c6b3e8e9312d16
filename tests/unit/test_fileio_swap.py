"""``fileio.swap_write``: a small file rewritten again and again through a spare beside it, its two inodes
exchanged instead of a new one made per rewrite; a spare it did not make is never written through."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from nfs_provisioner import fileio

pytestmark = pytest.mark.unit


def test_rewrites_alternate_between_two_inodes_and_readers_see_whole_files(tmp_path: Path) -> None:
    shard = tmp_path / "007.conf"
    fileio.swap_write(shard, "one\n")  # no file yet: the spare becomes it
    assert shard.read_text() == "one\n"
    inodes = set()
    for i in range(6):
        fileio.swap_write(shard, f"text {i}\n" * (i + 1))
        assert shard.read_text() == f"text {i}\n" * (i + 1)
        assert oct(shard.stat().st_mode & 0o777) == oct(0o644)
        inodes.add(shard.stat().st_ino)
    spare = tmp_path / ".007.conf.spare"
    assert spare.read_text() == "text 4\n" * 5  # the previous content, the next rewrite's inode
    assert len(inodes) <= 2 or not _can_exchange(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".007.conf.spare", "007.conf"]


def test_a_spare_that_is_a_link_to_another_file_is_never_written_through(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    shard = tmp_path / "001.conf"
    shard.write_text("old\n")
    os.symlink(victim, tmp_path / ".001.conf.spare")
    fileio.swap_write(shard, "new\n")
    assert shard.read_text() == "new\n" and victim.read_text() == "precious\n"
    (tmp_path / ".001.conf.spare").unlink()
    os.link(victim, tmp_path / ".001.conf.spare")  # a hard link: the same inode under the spare's name
    fileio.swap_write(shard, "newer\n")
    assert shard.read_text() == "newer\n" and victim.read_text() == "precious\n"
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_a_spare_that_is_a_directory_leaves_the_rewrite_to_a_temp_file(tmp_path: Path) -> None:
    shard = tmp_path / "002.conf"
    (tmp_path / ".002.conf.spare").mkdir()
    fileio.swap_write(shard, "x\n")
    fileio.swap_write(shard, "y\n")
    assert shard.read_text() == "y\n"
    assert (tmp_path / ".002.conf.spare").is_dir()


def _can_exchange(directory: Path) -> bool:
    a, b = directory / ".probe-a", directory / ".probe-b"
    a.write_text("a")
    b.write_text("b")
    try:
        return fileio._exchange(a, b)
    finally:
        a.unlink()
        b.unlink()
