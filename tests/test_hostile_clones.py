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
import errno
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
from nfs_provisioner.kube import client as kube
from nfs_provisioner.volumes import copying, directories, walking
from nfs_provisioner.volumes.directories import VolumeDirectories
from nfs_provisioner.volumes.records import RecordError, VolumeRecord, VolumeRecords
from tests import kubecluster, smallfs, wait
from tests.appliance_env import Appliance
from tests.test_clones import bound, claim, events, failures, leftovers, make_claim, make_class

REPO = Path(__file__).resolve().parent.parent


# ------------------------------------------------------------------ trees a client can make over NFS

def nest(top: Path, *, depth: int, name: str = "d", outside: Path | None = None) -> None:
    """``depth`` nested directories under ``top`` (made with openat: the path may exceed PATH_MAX), a file
    ``f<i>`` at every level and, if given, a symlink to ``outside`` at every level."""
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for i in range(depth):
            os.mkdir(name, dir_fd=fd)
            f = os.open(f"f{i}", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd)
            os.write(f, b"level %d\n" % i)
            os.close(f)
            if outside is not None:
                os.symlink(outside, "link", dir_fd=fd)
            child = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = child
        f = os.open("bottom", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd)
        os.write(f, b"the bottom\n")
        os.close(f)
    finally:
        os.close(fd)


def read_nested(top: Path, *, depth: int, name: str = "d") -> list[bytes]:
    """The ``f<i>`` of every level and the bottom file of a :func:`nest` tree, read with openat."""
    out = []
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for i in range(depth + 1):
            f = os.open(f"f{i}" if i < depth else "bottom", os.O_RDONLY, dir_fd=fd)
            out.append(os.read(f, 100))
            os.close(f)
            if i < depth:
                child = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
                os.close(fd)
                fd = child
    finally:
        os.close(fd)
    return out


def wide(top: Path, *, dirs: int) -> None:
    """``dirs`` sibling directories with one file each."""
    for i in range(dirs):
        (top / f"s{i:05}").mkdir()
        (top / f"s{i:05}" / "f").write_bytes(b"%d\n" % i)


@pytest.fixture
def deep_tmp(tmp_path: Path) -> Iterator[Path]:
    """``tmp_path`` for trees deeper than the recursion limit: removed (iteratively) after the test, because
    pytest's own clean-up of old temp directories (shutil.rmtree, recursive on Python 3.11) would crash on them
    in every later run on this machine."""
    yield tmp_path
    for entry in tmp_path.iterdir():
        if entry.is_dir() and not entry.is_symlink():
            directories.remove_tree(entry)


# ------------------------------------------------------------------ D2: deep trees, unexpected errors

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


# ------------------------------------------------------------------ D3: bounded descriptors

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


# ------------------------------------------------------------------ D10: reservations

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


# ------------------------------------------------------------------ D17: errors name the path

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


@pytest.mark.fault
def test_d17_a_write_on_a_full_export_root_names_the_file(tmp_path: Path) -> None:
    """ENOSPC from a descriptor's write or fsync names no file; writing a volume record on a full filesystem
    (a real ext4 on a loop device) says which file (before: "[Errno 28] No space left on device" alone)."""
    with smallfs.mounted(tmp_path / "small", image=tmp_path / "small.img") as root:
        records = VolumeRecords(root / ".volumes")
        records.ensure_dir()
        smallfs.fill(root)
        record = VolumeRecord(pv_name="pvc-1", claim_uid="u1", claim_namespace="ns", claim_name="c", identity="id",
                              path=str(root / "pvc-1"), root_squash=False, created=0.0)
        with pytest.raises(RecordError) as e:
            records.write(record)
        assert "No space left on device" in str(e.value) and f"{root}/.volumes/pvc-1.json" in str(e.value), e.value
        assert isinstance(e.value.__cause__, OSError) and e.value.__cause__.errno == errno.ENOSPC
        assert os.listdir(root / ".volumes") == []  # the temp file is gone
        for f in root.glob("fill-*"):
            f.unlink()


# ------------------------------------------------------------------ the real appliance

def appliance_on(cluster: kubecluster.Cluster, root: Path, tmp_path: Path, unique: str, tag: str,
                 **kw: Any) -> Appliance:
    return Appliance(kubeconfig=cluster.kubeconfig, export_root=root, provisioner=f"example.com/{tag}-{unique}",
                     log_dir=tmp_path, **kw)


@pytest.mark.e2e
@pytest.mark.kube
@pytest.mark.ganesha
def test_d2_clone_of_a_deep_volume_is_bound_and_served(cluster: kubecluster.Cluster, kapi: kube.Client,
                                                        namespace: str, unique: str, deep_tmp: Path) -> None:
    """A tenant nests 600 directories in its volume, then clones it: the clone is Bound with every level (before
    the fix: Pending forever, "0 % ... after N s" every second)."""
    tmp_path = deep_tmp
    root = tmp_path / "export"
    root.mkdir()
    a = appliance_on(cluster, root, tmp_path, unique, "deep")
    cls = f"deep-{unique}"
    make_class(kapi, cls, a.provisioner)
    a.start()
    try:
        make_claim(kapi, namespace, "live", cls)
        src = root / bound(kapi, namespace, "live")["spec"]["volumeName"]
        nest(src, depth=600)
        make_claim(kapi, namespace, "copy", cls, source="live")
        c = bound(kapi, namespace, "copy", timeout=60, what=lambda: f"clone Bound\n{a.log()}")
        dst = root / c["spec"]["volumeName"]
        assert read_nested(dst, depth=600) == read_nested(src, depth=600)
        nfs = a.client()
        assert nfs.cat(dst / "d" / "d" / "f2").stdout == b"level 2\n"
        assert not failures(kapi, namespace, "copy"), events(kapi, namespace, "copy")
    finally:
        a.close()
        kapi.delete(kube.classes_path(cls))


def under_nofile(limit: int) -> Callable[[list[str]], list[str]]:
    """Run the appliance with soft and hard RLIMIT_NOFILE ``limit`` (a pod's common default is 1024)."""
    return lambda argv: ["prlimit", f"--nofile={limit}:{limit}", "--", *argv]


@pytest.mark.e2e
@pytest.mark.kube
@pytest.mark.ganesha
def test_d3_clone_of_many_sibling_directories_at_1024_descriptors(cluster: kubecluster.Cluster,
                                                                  kapi: kube.Client, namespace: str, unique: str,
                                                                  tmp_path: Path) -> None:
    """1500 sibling directories in the source, the appliance at a descriptor limit of 1024: the clone is Bound
    (before the fix: refused on every retry with "Too many open files")."""
    root = tmp_path / "export"
    root.mkdir()
    a = appliance_on(cluster, root, tmp_path, unique, "wide", wrapper=under_nofile(1024))
    cls = f"wide-{unique}"
    make_class(kapi, cls, a.provisioner)
    a.start()
    try:
        make_claim(kapi, namespace, "live", cls)
        src = root / bound(kapi, namespace, "live")["spec"]["volumeName"]
        wide(src, dirs=1500)
        make_claim(kapi, namespace, "copy", cls, source="live")
        c = bound(kapi, namespace, "copy", timeout=90, what=lambda: f"clone Bound\n{a.log()}")
        dst = root / c["spec"]["volumeName"]
        assert sorted(os.listdir(dst)) == sorted(os.listdir(src))
        assert (dst / "s01499" / "f").read_bytes() == b"1499\n"
        assert not failures(kapi, namespace, "copy"), events(kapi, namespace, "copy")
    finally:
        a.close()
        kapi.delete(kube.classes_path(cls))


@pytest.fixture
def root_96m(tmp_path: Path) -> Iterator[Path]:
    """A 96 MiB ext4 on a loop device (no shared blocks), unmounted afterwards."""
    with smallfs.mounted(tmp_path / "small", image=tmp_path / "small.img", size=96 << 20) as mnt:
        yield mnt / "export"


@pytest.mark.e2e
@pytest.mark.kube
@pytest.mark.ganesha
def test_d10_concurrent_clones_that_do_not_fit_are_refused_before_copying(
        cluster: kubecluster.Cluster, kapi: kube.Client, namespace: str, unique: str, tmp_path: Path,
        root_96m: Path) -> None:
    """Six clones of a 20 MiB volume at once on a 96 MiB export root: those that fit are Bound, the others
    refused with an event naming the reserved space, before a byte is copied; no copy runs out of space and the
    export root is never full (before the fix all six passed the check and failed mid-copy with ENOSPC, filling
    the disk under the other tenants)."""
    a = appliance_on(cluster, root_96m, tmp_path, unique, "room")
    cls = f"room-{unique}"
    make_class(kapi, cls, a.provisioner)
    a.start()
    try:
        make_claim(kapi, namespace, "live", cls)
        src = root_96m / bound(kapi, namespace, "live")["spec"]["volumeName"]
        for i in range(20):  # 20 MiB in 20 files: copies take a while and overlap
            (src / f"part{i:02}").write_bytes(os.urandom(1 << 20))
        os.sync()
        names = [f"copy{i}" for i in range(6)]
        start = threading.Barrier(len(names))
        made: dict[str, dict[str, Any]] = {}

        def create(n: str) -> None:
            start.wait()
            made[n] = make_claim(kapi, namespace, n, cls, source="live")

        threads = [threading.Thread(target=create, args=(n,)) for n in names]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

        def settled() -> dict[str, str] | None:
            state = {}
            for n in names:
                if claim(kapi, namespace, n)["status"].get("phase") == "Bound":
                    state[n] = "Bound"
                elif failures(kapi, namespace, n):
                    state[n] = "refused"
                else:
                    return None
            return state

        state = wait.until(settled, timeout=120, what=lambda: f"every clone Bound or refused\n{a.log()}")
        time.sleep(3)  # any copy still going would fail now
        bound_ = [n for n in names if claim(kapi, namespace, n)["status"].get("phase") == "Bound"]
        refused = [n for n in names if n not in bound_]
        st = os.statvfs(root_96m)
        print(f"bound {bound_}, refused {refused}, {st.f_bavail * st.f_frsize} bytes free")
        assert bound_ and refused, state
        for n in refused:
            for msg in failures(kapi, namespace, n):
                assert msg.startswith("cannot clone: a full copy of ") and "reserved for copies in progress" in msg \
                    and msg.endswith("no volume is provisioned"), msg
            assert leftovers(root_96m, f"pvc-{made[n]['metadata']['uid']}") == [], n
        for n in bound_:
            assert not failures(kapi, namespace, n), events(kapi, namespace, n)
            dst = root_96m / claim(kapi, namespace, n)["spec"]["volumeName"]
            assert (dst / "part19").read_bytes() == (src / "part19").read_bytes()
        text = a.text()
        assert "No space left on device" not in text, a.log()
        assert not re.search(r"copy from .* failed", text), a.log()
        assert st.f_bavail > 0  # the copies never filled the filesystem under the other tenants
    finally:
        a.close()
        kapi.delete(kube.classes_path(cls))


@pytest.mark.e2e
@pytest.mark.kube
@pytest.mark.ganesha
def test_d17_failed_delete_of_a_record_that_is_a_directory_names_it(
        cluster: kubecluster.Cluster, kapi: kube.Client, namespace: str, unique: str, tmp_path: Path) -> None:
    """The volume record replaced by a directory: the VolumeFailedDelete event names the record's path (before
    the fix: "[Errno 21] Is a directory: 10", a descriptor number) and nothing is deleted; the record put back,
    the volume is deleted."""
    root = tmp_path / "export"
    root.mkdir()
    a = appliance_on(cluster, root, tmp_path, unique, "record")
    cls = f"record-{unique}"
    make_class(kapi, cls, a.provisioner)
    a.start()
    try:
        make_claim(kapi, namespace, "vol", cls)
        pv = bound(kapi, namespace, "vol")["spec"]["volumeName"]
        (root / pv / "data").write_text("keep me")
        record = root / ".volumes" / f"{pv}.json"
        saved = record.read_text()
        record.unlink()
        record.mkdir()
        kapi.delete(kube.claims_path(namespace, "vol"))

        def failed() -> list[str]:
            items = kapi.get(kube.events_path("default"), fieldSelector=f"involvedObject.name={pv}")["items"]
            return [e["message"] for e in items if e["reason"] == "VolumeFailedDelete"]

        msgs = wait.until(failed, timeout=60, what=lambda: f"VolumeFailedDelete for {pv}\n{a.log()}")
        assert str(record) in msgs[0] and not re.search(r"Errno 21\] Is a directory: \d+", msgs[0]), msgs
        assert (root / pv / "data").read_text() == "keep me"
        record.rmdir()
        record.write_text(saved)
        wait.until(lambda: not (root / pv).exists(), timeout=60, what=lambda: f"{pv} deleted\n{a.log()}")
    finally:
        a.close()
        kapi.delete(kube.classes_path(cls))
