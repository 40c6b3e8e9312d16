"""Files written through spares instead of new inodes: ``fileio.swap_write`` (an index shard rewritten again and
again: its two inodes exchanged) and the in-flight journal (a dropped record's file holds the next record). A spare
they did not make is never written through."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from nfs_provisioner import fileio
from nfs_provisioner.controller import inflight

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


def _claim(i: int) -> dict[str, object]:
    return {"metadata": {"name": f"c{i}", "namespace": "ns", "uid": f"0b5e6f1c-0000-4000-8000-{i:012d}"},
            "spec": {"storageClassName": "nfs"}}


def _journal(d: Path) -> inflight.LocalJournal:
    return inflight.LocalJournal(d, legacy=inflight.ClaimFinalizer("f", lambda c, p: c))


def test_a_dropped_journal_record_holds_the_next_one_across_restarts(tmp_path: Path) -> None:
    d = tmp_path / "journal"
    journal = _journal(d)
    journal.begin(_claim(1))
    first = (d / f"{_claim(1)['metadata']['uid']}.json").stat().st_ino  # type: ignore[index]
    journal.end(_claim(1))
    assert [p.name for p in d.iterdir()] == [".spare-1"]
    journal = _journal(d)  # a restart finds the spare
    assert journal.pending() == []
    journal.begin(_claim(2))
    record = d / f"{_claim(2)['metadata']['uid']}.json"  # type: ignore[index]
    assert record.stat().st_ino == first, "written into the spare, not a new file"
    assert oct(record.stat().st_mode & 0o777) == oct(0o600)
    assert journal.last_known(str(_claim(2)["metadata"]["uid"])) is not None  # type: ignore[index]
    assert journal.pending() == [_claim(2)["metadata"]["uid"]]  # type: ignore[index]
    journal.end(_claim(2))
    assert [p.name for p in d.iterdir()] == [".spare-2"]


def test_a_spare_planted_in_the_journal_is_never_written_through(tmp_path: Path) -> None:
    d = tmp_path / "journal"
    d.mkdir()
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    os.symlink(victim, d / ".spare-1")
    os.link(victim, d / ".spare-2")
    journal = _journal(d)
    for i in (1, 2, 3):
        journal.begin(_claim(i))
    assert victim.read_text() == "precious\n"
    assert len(journal.pending()) == 3
    assert (d / ".spare-1").is_symlink() and (d / ".spare-2").stat().st_nlink == 2  # left as they are
