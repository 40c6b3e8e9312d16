"""Filesystem volumes (issue 23, ``isolation: filesystem``) on real loop devices, real ext4 and XFS: the
module (``nfs_provisioner.volumes.filesystems``), the class parameters, the record and the start-up remount.
End-to-end tests through the appliance are in tests/e2e/test_filesystem_e2e.py, the boundary in
tests/ganesha/test_filesystem_handles.py."""

from __future__ import annotations

import errno
import fcntl
import os
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from nfs_provisioner.appliance import recovery
from nfs_provisioner.volumes import filesystems, loops, usage_metrics
from nfs_provisioner.volumes.filesystems import FilesystemError, FilesystemVolumes
from nfs_provisioner.volumes.records import VolumeRecords, new_record
from tests.support import filesystem_env, smallfs

MiB = 2**20


@pytest.fixture
def root(tmp_path: Path) -> Iterator[Path]:
    """An export root (a directory of the host's disk, as pod.yaml's emptyDir); every mount and loop device made
    under it is removed afterwards."""
    r = tmp_path / "export"
    r.mkdir()
    with filesystem_env.cleaned(tmp_path):
        yield r


def _fill(path: Path) -> int:
    return smallfs.fill(path)


@pytest.mark.parametrize(("fs_type", "size"), [("ext4", 16 * MiB), ("xfs", 300 * MiB)])
@pytest.mark.root  # loop devices and mounts
def test_a_volume_is_a_mounted_filesystem_of_the_claims_size(root: Path, fs_type: str, size: int) -> None:
    vols = FilesystemVolumes(root)
    path = vols.create("pvc-one", size=size, fs_type=fs_type, gid=4321)
    assert path == root / ".filesystems" / "pvc-one" and os.path.ismount(path)
    assert os.path.ismount(root / ".filesystems"), "the volumes' mount points lie in a tmpfs of their own"
    device = vols.mounted("pvc-one")
    assert device is not None and loops.backing_file(device.name) == str(root / ".images" / "pvc-one.img")
    st = path.stat()
    assert (st.st_gid, stat.S_IMODE(st.st_mode)) == (4321, 0o2071), "gid and mode as for a directory volume"
    assert stat.S_IMODE((root / ".images").stat().st_mode) == 0o700
    assert stat.S_IMODE((root / ".images" / "pvc-one.img").stat().st_mode) == 0o600
    usage = vols.usage("pvc-one")
    assert usage is not None
    # What df shows: the claim less the filesystem's own metadata (ext4: 1 MiB journal and inode tables;
    # XFS: its 64 MiB log, the least mkfs.xfs makes).
    assert (0.85 if fs_type == "ext4" else 0.75) * size < usage.size <= size, usage
    written = _fill(path)
    assert written <= size and written > (0.8 if fs_type == "ext4" else 0.7) * size, written
    with pytest.raises(OSError) as full:
        (path / "more").write_bytes(b"x" * 65536)
    assert full.value.errno == errno.ENOSPC
    assert (root / ".images" / "pvc-one.img").stat().st_blocks * 512 <= size + MiB, "the image is sparse"
    assert vols.delete("pvc-one")
    assert not path.exists() and not (root / ".images" / "pvc-one.img").exists()
    assert not filesystem_env.devices_under(root), "the loop device is detached"
    assert not vols.delete("pvc-one"), "a second delete finds nothing"


@pytest.mark.root  # loop devices and mounts
def test_create_is_idempotent_and_finishes_what_a_crash_left(root: Path) -> None:
    vols = FilesystemVolumes(root)
    # A crash during mkfs: a half-made image under its temporary name.
    (root / ".images").mkdir(mode=0o700)
    (root / ".images" / ".pvc-c.img.part").write_bytes(b"half a filesystem")
    path = vols.create("pvc-c", size=8 * MiB, fs_type="ext4", gid=None)
    assert not (root / ".images" / ".pvc-c.img.part").exists()
    (path / "data").write_text("kept")
    device = vols.mounted("pvc-c")
    assert vols.create("pvc-c", size=8 * MiB, fs_type="ext4", gid=None) == path, "again: nothing changes"
    assert vols.mounted("pvc-c") == device and (path / "data").read_text() == "kept"
    # A crash (or a container restart) after the image was made, before or after the mount: mounted again, the
    # data kept, on the same loop device when it is free.
    vols.unmount("pvc-c")
    assert not os.path.ismount(path) and not filesystem_env.devices_under(root)
    assert vols.create("pvc-c", size=8 * MiB, fs_type="ext4", gid=None) == path
    assert (path / "data").read_text() == "kept"
    assert vols.mounted("pvc-c") == device, "the same loop device: NFS-Ganesha's file handles depend on it"


@pytest.mark.root  # loop devices and mounts
def test_something_else_mounted_at_a_volumes_path_is_refused(root: Path, tmp_path: Path) -> None:
    vols = FilesystemVolumes(root)
    vols.ensure_tree()
    with smallfs.mounted(root / ".filesystems" / "pvc-x", image=tmp_path / "other.img"):
        vols.make_image("pvc-x", size=8 * MiB, fs_type="ext4")
        with pytest.raises(FilesystemError, match="is a mount point, but not of the image"):
            vols.mount("pvc-x", fs_type="ext4")
        with pytest.raises(FilesystemError, match="is a mount point, but not of the image"):
            vols.delete("pvc-x")
    assert (tmp_path / "other.img").exists() is False  # smallfs removed its own image; ours is untouched
    assert (root / ".images" / "pvc-x.img").exists()


@pytest.mark.root  # loop devices and mounts
def test_a_symlink_at_a_volumes_path_is_refused(root: Path, tmp_path: Path) -> None:
    (tmp_path / "elsewhere").mkdir()
    vols = FilesystemVolumes(root)
    vols.ensure_tree()
    (root / ".filesystems" / "pvc-l").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(FilesystemError, match="is a symlink; refusing to mount a volume on it"):
        vols.create("pvc-l", size=8 * MiB, fs_type="ext4", gid=None)
    assert not os.path.ismount(tmp_path / "elsewhere")


@pytest.mark.root  # loop devices and mounts
def test_xfs_grows_online(root: Path) -> None:
    vols = FilesystemVolumes(root)
    path = vols.create("pvc-g", size=300 * MiB, fs_type="xfs", gid=None)
    (path / "f").write_text("before")
    before = vols.usage("pvc-g")
    with open(path / "f") as held:  # a file open across the growth: online means it stays usable
        vols.grow("pvc-g", size=600 * MiB, fs_type="xfs")
        assert held.read() == "before"
    after = vols.usage("pvc-g")
    assert before is not None and after is not None and after.size - before.size > 290 * MiB
    vols.grow("pvc-g", size=600 * MiB, fs_type="xfs")  # again (a retry after a crash): nothing to do
    with pytest.raises(FilesystemError, match="shrinking a filesystem volume is not supported"):
        vols.grow("pvc-g", size=300 * MiB, fs_type="xfs")
    assert vols.size("pvc-g") == 600 * MiB


@pytest.mark.root  # loop devices and mounts
def test_ext4_grows_offline_where_online_resize_is_not_allowed(root: Path) -> None:
    vols = FilesystemVolumes(root)
    path = vols.create("pvc-e", size=16 * MiB, fs_type="ext4", gid=None)
    (path / "f").write_text("before")
    device = vols.mounted("pvc-e")
    if vols.grows_online("ext4"):
        vols.grow("pvc-e", size=32 * MiB, fs_type="ext4")
    else:  # this host (and a pod) lacks CAP_SYS_RESOURCE, which ext4's online resize needs
        with pytest.raises(filesystems.OfflineOnly):
            vols.grow("pvc-e", size=32 * MiB, fs_type="ext4")
        vols.unmount("pvc-e")
        vols.grow_offline("pvc-e", size=32 * MiB, fs_type="ext4")
        vols.mount("pvc-e", fs_type="ext4")
    usage = vols.usage("pvc-e")
    assert usage is not None and usage.size > 28 * MiB
    assert (path / "f").read_text() == "before" and vols.mounted("pvc-e") == device


@pytest.mark.parametrize("how", ["archive", "retain"])
@pytest.mark.root  # loop devices and mounts
def test_archive_and_retain_keep_the_image_unmounted(root: Path, how: str) -> None:
    vols = FilesystemVolumes(root)
    path = vols.create("pvc-k", size=8 * MiB, fs_type="ext4", gid=None)
    (path / "f").write_text("kept data")
    kept = vols.archive("pvc-k", now=0) if how == "archive" else vols.retain("pvc-k", now=0)
    assert kept == (root / ".archive" / "pvc-k-19700101T000000Z.img" if how == "archive"
                    else root / ".images" / "pvc-k-19700101T000000Z.retained.img")
    assert not path.exists() and not (root / ".images" / "pvc-k.img").exists()
    assert not filesystem_env.devices_under(root)
    # A new volume of the same name never finds the kept image.
    vols.create("pvc-k", size=8 * MiB, fs_type="ext4", gid=None)
    assert not (path / "f").exists()
    vols.delete("pvc-k")
    # The kept image is a whole filesystem with the data.
    check = root.parent / "check"
    check.mkdir()
    device, fd = loops.attach(kept)
    try:
        loops.mount(device, check, "ext4")
    finally:
        os.close(fd)
    try:
        assert (check / "f").read_text() == "kept data"
    finally:
        loops.unmount(check)


@pytest.mark.root  # loop devices and mounts
def test_the_probe_says_what_is_missing(root: Path) -> None:
    assert FilesystemVolumes(root).probe() == {"ext4": None, "xfs": None}
    assert not filesystem_env.devices_under(root) and list((root / ".images").iterdir()) == []

    def no_mkfs(argv: object, *, ok: tuple[int, ...] = (0,)) -> None:
        raise FilesystemError("mkfs.ext4: [Errno 2] No such file or directory")

    found = FilesystemVolumes(root, runner=no_mkfs).probe()
    assert found["ext4"] is not None and "mkfs.ext4" in found["ext4"], found


@pytest.mark.root  # loop devices and mounts
def test_remount_at_start_mounts_every_filesystem_volume_of_this_identity(root: Path,
                                                                         caplog: pytest.LogCaptureFixture) -> None:
    vols = FilesystemVolumes(root)
    records = VolumeRecords(root / ".volumes", durable=False)
    claim = {"metadata": {"uid": "u", "namespace": "ns", "name": "c"}}
    for name, identity, fs in (("pvc-1", "me", "ext4"), ("pvc-2", "me", "xfs"), ("pvc-3", "other", "ext4")):
        records.write(new_record(pv_name=name, claim=claim, identity=identity, path=vols.path_for(name),
                                 root_squash=False, on_delete="delete", filesystem=fs))
        vols.create(name, size=300 * MiB if fs == "xfs" else 8 * MiB, fs_type=fs, gid=None)
        (vols.path_for(name) / "f").write_text(name)
        vols.unmount(name)
    # pvc-4: a provision a crash cut short after the record; pvc-5: a volume whose image was lost. Both are not
    # mounted (withdraw() makes a readiness problem of those whose PV is Bound).
    for name in ("pvc-4", "pvc-5"):
        records.write(new_record(pv_name=name, claim=claim, identity="me", path=vols.path_for(name),
                                 root_squash=False, on_delete="delete", filesystem="ext4"))
    vols.create("pvc-5", size=8 * MiB, fs_type="ext4", gid=None)
    vols.unmount("pvc-5")
    vols.image_for("pvc-5").unlink()
    loops.unmount(root / ".filesystems")  # a container's fresh mount namespace: the tmpfs is gone too
    failed = recovery.remount(records=records, filesystems=vols, identity="me")
    assert set(failed) == {"pvc-4", "pvc-5"} and "image" in failed["pvc-5"] and "missing" in failed["pvc-5"], failed
    assert (vols.path_for("pvc-1") / "f").read_text() == "pvc-1"
    assert (vols.path_for("pvc-2") / "f").read_text() == "pvc-2"
    assert not os.path.ismount(vols.path_for("pvc-3")), "another identity's volume is not this appliance's to mount"
    assert recovery.remount(records=records, filesystems=vols, identity="me").keys() == {"pvc-4", "pvc-5"}
    assert "beside filesystem volumes" not in caplog.text
    records.write(new_record(pv_name="pvc-dir", claim=claim, identity="me", path=root / "pvc-dir",
                             root_squash=False, on_delete="delete"))
    recovery.remount(records=records, filesystems=vols, identity="me")
    assert "directory volumes beside filesystem volumes: a client of a directory volume that forges" in caplog.text


@pytest.mark.root  # loop devices and mounts
def test_the_tmpfs_of_the_mount_points_is_mounted_once_when_many_threads_need_it(root: Path) -> None:
    """The start-up remount and the provision workers make mount points in parallel: the tmpfs is mounted once, and
    no mount point is made in the export root's directory under it (measured before the fix: with 1000 volumes
    remounted by 8 threads, one volume's mount point went under a second tmpfs mounted over the first, and its mount
    failed with ENOENT)."""
    import threading

    for attempt in range(10):
        vols = FilesystemVolumes(root)
        start = threading.Barrier(16)

        def make(i: int, vols: FilesystemVolumes = vols, start: threading.Barrier = start) -> None:
            start.wait()
            vols._mount_point(vols.path_for(f"pvc-{i}"))

        threads = [threading.Thread(target=make, args=(i,)) for i in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        top = root / ".filesystems"
        stacked = [p for p in filesystem_env.mounts_under(root) if p == top]
        assert len(stacked) == 1, f"attempt {attempt}: {len(stacked)} tmpfs mounted at {top}"
        assert sorted(os.listdir(top)) == sorted(f"pvc-{i}" for i in range(16)), f"attempt {attempt}"
        loops.unmount(top)
        for name in os.listdir(top):  # what went under the tmpfs (none, unless the race struck)
            os.rmdir(top / name)


@pytest.mark.root  # loop devices and mounts
def test_usage_gauges_are_each_mounted_volumes_statvfs(root: Path) -> None:
    vols = FilesystemVolumes(root)
    registry = CollectorRegistry()
    usage_metrics.FilesystemUsageCollector(vols, registry=registry)
    assert registry.get_sample_value(usage_metrics.SIZE, {"volume": "pvc-m"}) is None
    path = vols.create("pvc-m", size=16 * MiB, fs_type="ext4", gid=None)
    vols.create("pvc-n", size=8 * MiB, fs_type="ext4", gid=None)
    (path / "f").write_bytes(os.urandom(3 * MiB))
    os.sync()
    st = os.statvfs(path)
    assert registry.get_sample_value(usage_metrics.SIZE, {"volume": "pvc-m"}) == st.f_blocks * st.f_frsize
    used = registry.get_sample_value(usage_metrics.USED, {"volume": "pvc-m"})
    assert used is not None and 3 * MiB <= used < 4 * MiB
    assert registry.get_sample_value(usage_metrics.FREE, {"volume": "pvc-m"}) == st.f_bavail * st.f_frsize
    assert registry.get_sample_value(usage_metrics.SIZE, {"volume": "pvc-n"}) is not None
    vols.unmount("pvc-n")
    assert registry.get_sample_value(usage_metrics.SIZE, {"volume": "pvc-n"}) is None, "not mounted: no sample"


@pytest.mark.root  # loop devices and mounts
def test_a_clone_is_a_consistent_copy_grown_to_its_claim(root: Path) -> None:
    """The host's ext4 shares no blocks: a sparse copy of the frozen source."""
    vols = FilesystemVolumes(root)
    src = vols.create("pvc-src", size=16 * MiB, fs_type="ext4", gid=None)
    (src / "f").write_bytes(b"x" * (2 * MiB))
    with open(src / "open-for-writing", "wb") as writer:  # a writer keeps going after the copy
        path = vols.create("pvc-clone", size=32 * MiB, fs_type="ext4", gid=None, clone_of="pvc-src")
        writer.write(b"after the copy")
    assert (path / "f").read_bytes() == b"x" * (2 * MiB)
    assert (path / "open-for-writing").read_bytes() == b"", "the clone is the source as it was when frozen"
    usage = vols.usage("pvc-clone")
    assert usage is not None and usage.size > 28 * MiB, "grown to the claim"
    assert (root / ".images" / "pvc-clone.img").stat().st_blocks * 512 < 8 * MiB, "the copy stays sparse"
    assert not vols.thaw("pvc-src"), "the source is thawed"
    (src / "g").write_text("the source is writable")


@pytest.mark.root  # loop devices and mounts
def test_a_clone_on_an_export_root_that_shares_blocks_is_a_reflink(tmp_path: Path) -> None:
    root = tmp_path / "xfs-root"
    root.mkdir()
    image = tmp_path / "xfs-root.img"
    with open(image, "wb") as f:
        f.truncate(1024 * MiB)
    subprocess.run(["mkfs.xfs", "-q", "-m", "reflink=1", str(image)], check=True)
    with filesystem_env.cleaned(tmp_path):
        subprocess.run(["mount", "-o", "loop", str(image), str(root)], check=True)
        vols = FilesystemVolumes(root)
        for fs_type, size in (("ext4", 8 * MiB), ("xfs", 300 * MiB)):
            src = vols.create(f"pvc-{fs_type}", size=size, fs_type=fs_type, gid=None)
            (src / "f").write_text(fs_type)
            part = os.open(root / "copy", os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                assert vols.copy_image(f"pvc-{fs_type}", part) == "reflink"
            finally:
                os.close(part)
                os.unlink(root / "copy")
            clone = vols.create(f"pvc-{fs_type}-clone", size=size, fs_type=fs_type, gid=None,
                                clone_of=f"pvc-{fs_type}")
            assert (clone / "f").read_text() == fs_type
            assert os.path.ismount(src) and os.path.ismount(clone), "XFS: the clone has a UUID of its own"
            vols.delete(f"pvc-{fs_type}-clone")
            vols.delete(f"pvc-{fs_type}")


@pytest.mark.root  # loop devices and mounts
def test_a_volume_left_frozen_is_thawed(root: Path) -> None:
    vols = FilesystemVolumes(root)
    path = vols.create("pvc-f", size=8 * MiB, fs_type="ext4", gid=None)
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.ioctl(fd, filesystems.FIFREEZE, 0)  # as a crash in the middle of a clone's copy leaves it
    finally:
        os.close(fd)
    assert vols.thaw("pvc-f") and not vols.thaw("pvc-f")
    (path / "f").write_text("writable")
