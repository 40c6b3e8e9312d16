"""Hostile clone sources and what a failing copy must never do (issue 28: D2, D3, D10, D17).

- D2: a source tree deeper than Python's recursion limit is measured, copied and removed without recursion,
  and any unexpected error of a copy thread is a reported failure of the claim, never a clone Pending forever.
- D3: measuring, copying and removing a tree hold a bounded number of descriptors whatever its shape (checked
  at a lowered ``RLIMIT_NOFILE``, in a child process).
- D10: copies in progress reserve the space they will use; concurrent clones that do not fit are refused before
  copying, the others complete, nothing runs out of space mid-copy.
- D17: errors from descriptor-relative operations name the path (a volume record that is a directory).

The unit tests work on real trees in the test's temp directory; the e2e tests run the real appliance (its own
Ganesha) against the local control plane, as the users' claims would.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import resource
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from nfs_provisioner.appliance import clones
from nfs_provisioner.controller.interface import InProgress, ProvisioningError
from nfs_provisioner.volumes import copying, directories, walking
from nfs_provisioner.volumes.directories import VolumeDirectories
from nfs_provisioner.volumes.records import RecordError, VolumeRecords
from tests.support.hostile_clones import deep_tmp, nest, read_nested, wide
from tests.support.paths import REPO

__all__ = ["deep_tmp"]  # the shared fixtures (tests/support/hostile_clones.py)


@pytest.mark.unit
def test_d2_deep_source_is_measured_and_copied_without_recursion(deep_tmp: Path) -> None:
    """1500 nested directories (beyond Python's recursion limit of 1000): measured and copied whole, every
    level's file and symlink (copied as a link, never followed)."""
    src, dst, outside = deep_tmp / "src", deep_tmp / "dst", deep_tmp / "outside"
    for d in (src, dst, outside):
        d.mkdir()
    (outside / "secret").write_text("never read")
    depth = 1500
    assert depth > sys.getrecursionlimit()
    nest(src, depth=depth, outside=outside)

    usage = copying.measure(src)
    assert usage.entries == 3 * depth + 1
    stats = copying.copy_tree(src, dst)
    assert stats.directories == depth and stats.files == depth + 1 and stats.symlinks == depth
    assert read_nested(dst, depth=depth) == read_nested(src, depth=depth)
    assert os.readlink(dst / "d" / "d" / "link") == str(outside)
    assert os.listdir(outside) == ["secret"]


def poll(job: clones.Clones, name: str, target: Path, *, timeout: float) -> str:
    """Ask for the clone until it is done ("done") or failed (the error); raise if it is still in progress
    after ``timeout`` seconds (the stall of D2)."""
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        try:
            job.fill(name=name, target=target, source=None)
            return "done"
        except InProgress as e:
            last = str(e)
        except ProvisioningError as e:
            return str(e)
        time.sleep(0.05)
    raise AssertionError(f"the clone is still in progress after {timeout} s: {last}")


def source_of(path: Path) -> clones.Source:
    return clones.Source(claim_key="ns/live", pv_name="pvc-src", path=path, usage=copying.measure(path))


@pytest.mark.unit
def test_d2_deep_clone_finishes_instead_of_stalling(deep_tmp: Path) -> None:
    """The clone job of a 1500-deep source ends (before the fix its thread died of RecursionError, unseen, and
    every poll said "in progress" forever)."""
    tmp_path = deep_tmp
    src, dst = tmp_path / "src", tmp_path / "pvc-copy"
    src.mkdir()
    dst.mkdir()
    nest(src, depth=1500)
    job = clones.Clones(tmp_path / ".clones", poll=0.05)
    with pytest.raises(InProgress):
        job.fill(name="pvc-copy", target=dst, source=source_of(src))
    assert poll(job, "pvc-copy", dst, timeout=60) == "done"
    assert job.done("pvc-copy") and not job.running("pvc-copy")
    assert read_nested(dst, depth=1500)[-1] == b"the bottom\n"


class Boom(Exception):
    pass


@pytest.mark.unit
@pytest.mark.parametrize("error", [RecursionError("maximum recursion depth exceeded"), MemoryError(),
                                   Boom("a bug"), KeyError("x"), SystemExit(3)],
                         ids=["RecursionError", "MemoryError", "bug", "KeyError", "SystemExit"])
def test_d2_any_unexpected_error_of_a_copy_is_a_reported_failure(tmp_path: Path, error: BaseException,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    """Whatever the copy raises (even what threads end on silently: SystemExit), the next poll fails the clone
    with a ProvisioningError naming it (the controller's event on the claim, rollback, retry), logged once."""
    src, dst = tmp_path / "src", tmp_path / "pvc-copy"
    src.mkdir()
    dst.mkdir()
    (src / "f").write_text("data")

    def copy(source: Path, target: Path, **_: Any) -> copying.Stats:
        (target / "half").write_text("written before the error")
        raise error

    job = clones.Clones(tmp_path / ".clones", poll=0.05, copy=copy)
    caplog.set_level(logging.INFO, logger="nfs_provisioner")
    with pytest.raises(InProgress):
        job.fill(name="pvc-copy", target=dst, source=source_of(src))
    failed = poll(job, "pvc-copy", dst, timeout=10)
    assert failed.startswith("cloning claim ns/live (volume pvc-src) into volume pvc-copy failed: "), failed
    assert type(error).__name__ in failed, failed
    assert not job.running("pvc-copy") and not job.done("pvc-copy")
    lines = [r for r in caplog.records if r.levelno >= logging.ERROR and "pvc-copy" in r.getMessage()]
    assert len(lines) == 1, [r.getMessage() for r in caplog.records]
    assert type(error).__name__ in lines[0].getMessage()
    job.forget("pvc-copy")  # the rollback


CHILD = textwrap.dedent("""
    import os, resource, sys
    from pathlib import Path
    from nfs_provisioner.volumes import copying, directories

    print("limit", resource.getrlimit(resource.RLIMIT_NOFILE)[0], flush=True)
    for name in sys.argv[1:]:
        src = Path(name)
        dst = src.with_name(src.name + "-copy")
        dst.mkdir()
        usage = copying.measure(src)
        stats = copying.copy_tree(src, dst)
        print(src.name, usage.entries, stats.directories, stats.files, flush=True)
        removed = copying.empty_dir(dst)
        assert os.listdir(dst) == [], dst
        directories.remove_tree(src)
        assert not src.exists()
        print(src.name, "removed", removed, flush=True)
""")


@pytest.mark.unit
def test_d3_measure_copy_and_delete_hold_bounded_descriptors(deep_tmp: Path) -> None:
    """A tree of 1500 sibling directories and one 1500 deep, at a soft RLIMIT_NOFILE of 128 (below either):
    measured, copied, emptied and removed (before the fix measure held one descriptor per pending sibling:
    "Too many open files")."""
    tmp_path = deep_tmp
    (tmp_path / "wide").mkdir()
    (tmp_path / "deep").mkdir()
    wide(tmp_path / "wide", dirs=1500)
    nest(tmp_path / "deep", depth=1500)
    soft = 128
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    r = subprocess.run([sys.executable, "-c", CHILD, str(tmp_path / "wide"), str(tmp_path / "deep")], cwd=REPO,
                       capture_output=True, text=True, timeout=300,
                       preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard)))
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.split("\n") == [f"limit {soft}", "wide 3000 1500 1500", "wide removed 1500",
                                    "deep 3001 1500 1501", "deep removed 2", ""], r.stdout


@pytest.mark.unit
def test_d3_open_path_holds_at_most_its_limit_and_notices_a_moved_directory(tmp_path: Path) -> None:
    nest(tmp_path, depth=100)
    with walking.OpenPath(tmp_path, limit=8) as walk:
        for i in range(1, 101):
            walk.enter("d")
            assert walk.open_count() <= 9
            fd = os.open(f"f{i}" if i < 100 else "bottom", os.O_RDONLY, dir_fd=walk.fd)
            assert os.read(fd, 100) == (b"level %d\n" % i if i < 100 else b"the bottom\n")
            os.close(fd)
        for _ in range(99):
            walk.leave()
            assert walk.open_count() <= 9
        assert walk.names == ["d"] and os.path.samestat(os.fstat(walk.fd), os.stat(tmp_path / "d"))
        for _ in range(20):
            walk.enter("d")
        # A client moves a directory the walk has closed behind it: coming back through ".." is refused.
        os.rename(tmp_path / "d" / "d" / "d", tmp_path / "moved")
        with pytest.raises(walking.TreeChanged, match=re.escape(f"{tmp_path}/d/d")):
            for _ in range(20):
                walk.leave()


@pytest.mark.unit
def test_d10_reservations_hold_back_space_from_every_check_until_released(tmp_path: Path) -> None:
    dirs = VolumeDirectories(tmp_path)
    free = dirs.free_bytes()
    room = free - (1 << 30)  # leave 1 GiB: other writers on this disk may use some meanwhile
    assert room > 4 << 30, "the test needs a few GiB free"
    promise = dirs.reserve("pvc-a", room, what="a full copy of pvc-src")
    assert dirs.reserved() == room
    with pytest.raises(directories.InsufficientSpace, match=r"reserved for copies in progress"):
        dirs.check_space(2 << 30)  # a plain volume's check sees the reservation
    with pytest.raises(directories.InsufficientSpace, match=r"a full copy of pvc-src2 needs \d+ bytes but only"):
        dirs.reserve("pvc-b", 2 << 30, what="a full copy of pvc-src2")
    promise.use(room - (1 << 20))  # what the copy wrote is on the disk now: only the rest stays reserved
    assert dirs.reserved() == 1 << 20
    dirs.release("pvc-a")
    assert dirs.reserved() == 0
    dirs.check_space(2 << 30)
    dirs.reserve("pvc-b", 2 << 30, what="a full copy of pvc-src2")
    dirs.release("pvc-b")
    dirs.release("pvc-b")  # idempotent
    assert dirs.reserved() == 0


@pytest.mark.unit
def test_d10_a_copy_uses_up_and_releases_its_reservation_when_it_ends_fails_or_is_abandoned(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "data").write_bytes(os.urandom(3 << 20))
    dirs = VolumeDirectories(tmp_path)
    source = source_of(src)
    written: list[int] = []

    def copy(source: Path, target: Path, *, on_written: Callable[[int], None] | None = None,
             cancel: threading.Event | None = None, **kw: Any) -> copying.Stats:
        assert on_written is not None and cancel is not None
        if target.name == "pvc-abandoned":
            cancel.wait(30)
            raise copying.Cancelled("the copy was cancelled")
        if target.name == "pvc-failing":
            raise OSError(5, "Input/output error")

        def count(n: int) -> None:
            on_written(n)
            written.append(dirs.reserved())

        return copying.copy_tree(source, target, on_written=count, cancel=cancel, **kw)

    job = clones.Clones(tmp_path / ".clones", poll=0.05, copy=copy)
    for name in ("pvc-done", "pvc-failing", "pvc-abandoned"):
        (tmp_path / name).mkdir()
        reservation = dirs.reserve(name, source.usage.allocated_bytes, what="a copy")
        with pytest.raises(InProgress):
            job.fill(name=name, target=tmp_path / name, source=source, reservation=reservation)
        if name == "pvc-abandoned":
            assert dirs.reserved() == source.usage.allocated_bytes  # held while the copy runs
            job.forget(name)
        else:
            assert poll(job, name, tmp_path / name, timeout=10) == ("done" if name == "pvc-done" else
                                                                    f"cloning {source.describe()} into volume "
                                                                    f"{name} failed: [Errno 5] Input/output error")
        assert dirs.reserved() == 0, name
    # While the real copy wrote, what it had written was no longer held back.
    assert written and written[-1] <= source.usage.allocated_bytes - (3 << 20)


@pytest.mark.unit
def test_d17_a_record_that_is_a_directory_is_named(tmp_path: Path) -> None:
    records = VolumeRecords(tmp_path / ".volumes")
    records.ensure_dir()
    (tmp_path / ".volumes" / "pvc-1.json").mkdir()
    with pytest.raises(RecordError) as e:
        records.read("pvc-1")
    msg = str(e.value)
    assert str(tmp_path / ".volumes" / "pvc-1.json") in msg, msg
    assert "not a regular file" in msg and not re.search(r": \d+$", msg), msg


@contextlib.contextmanager
def immutable(path: Path) -> Iterator[None]:
    """``path`` cannot be removed (``chattr +i``, even by root) inside the block."""
    if subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode != 0:
        pytest.skip(f"chattr +i is not supported on {path}'s filesystem")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=True)


@pytest.mark.unit
def test_d17_errors_deep_inside_a_tree_name_the_full_path(tmp_path: Path) -> None:
    """A file that cannot be removed (immutable) three directories down: the error names its full path, not
    the bare name the descriptor-relative unlink saw."""
    root = tmp_path / "export"
    root.mkdir()
    dirs = VolumeDirectories(root)
    vol = dirs.create("pvc-1", gid=None)
    (vol / "a" / "b").mkdir(parents=True)
    stuck = vol / "a" / "b" / "stuck"
    stuck.write_text("x")
    with immutable(stuck):
        with pytest.raises(directories.DirectoryError) as e:
            dirs.delete("pvc-1")
        assert f"{vol}/a/b/stuck" in str(e.value), str(e.value)
        assert stuck.read_text() == "x"
    dirs.delete("pvc-1")
    assert not vol.exists()
