"""Clones across kinds of volumes and SIGKILL in the middle of clones of filesystem volumes (issue 23): the real
appliance (its own Ganesha) against the real control plane, real loop devices, data, owners and modes read back
over NFS.

Kubernetes clones only within a StorageClass; a claim gets a clone of another kind of volume when its class was
deleted and made again with another ``isolation`` (or ``fsType``) since the source was made, as these tests do.
One appliance serves the whole module (it is killed and started again by the SIGKILL tests)."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from nfs_provisioner.volumes import copying, filesystems
from tests.support import filesystem_env, kubecluster, nfsraw, wait
from tests.support.appliance_env import Appliance
from tests.support.clones import fill_source, fill_tree
from tests.support.treesnap import snapshot

pytestmark = [pytest.mark.e2e, pytest.mark.kube, pytest.mark.ganesha]
MiB = 2**20
FS = {"isolation": "filesystem"}


@dataclass
class Env:
    a: Appliance
    core: client.CoreV1Api
    storage: client.StorageV1Api
    namespace: str

    @property
    def root(self) -> Path:
        return self.a.export_root

    def set_class(self, name: str, **parameters: str) -> None:
        """Make StorageClass ``name`` (again) with these parameters, as an administrator would to switch it."""
        with contextlib.suppress(ApiException):
            self.storage.delete_storage_class(name)
        wait.until(lambda: not [c for c in self.storage.list_storage_class().items if c.metadata.name == name],
                   timeout=10, what=f"class {name} deleted")
        self.storage.create_storage_class(client.V1StorageClass(
            metadata=client.V1ObjectMeta(name=name), provisioner=self.a.provisioner, parameters=parameters or None))
        time.sleep(2)  # the appliance's class informer has the new one before a claim of it arrives

    def claim(self, name: str, cls: str, size: str, source: str | None = None) -> str:
        """Create a claim; its PV's name (``pvc-<uid>``)."""
        made = self.core.create_namespaced_persistent_volume_claim(self.namespace, client.V1PersistentVolumeClaim(
            metadata=client.V1ObjectMeta(name=name),
            spec=client.V1PersistentVolumeClaimSpec(
                access_modes=["ReadWriteMany"], storage_class_name=cls,
                data_source=(client.V1TypedLocalObjectReference(kind="PersistentVolumeClaim", name=source)
                             if source else None),
                resources=client.V1VolumeResourceRequirements(requests={"storage": size}))))
        return f"pvc-{made.metadata.uid}"

    def bound(self, name: str, timeout: float = 60) -> Any:
        wait.until(lambda: self.core.read_namespaced_persistent_volume_claim(name, self.namespace).status.phase
                   == "Bound", timeout=timeout, what=lambda: f"claim {name} Bound\n{self.a.log()}")
        pv_name = self.core.read_namespaced_persistent_volume_claim(name, self.namespace).spec.volume_name
        return self.core.read_persistent_volume(pv_name)

    def failures(self, name: str) -> list[str]:
        items = self.core.list_namespaced_event(self.namespace, field_selector=f"involvedObject.name={name}").items
        return [e.message for e in items if e.reason == "ProvisioningFailed"]

    def delete_claim(self, name: str) -> None:
        self.core.delete_namespaced_persistent_volume_claim(name, self.namespace)

    def leftovers(self, pv: str) -> list[str]:
        """Anything of volume ``pv`` in the export root (image, mount point, record, markers, export), its loop
        device, its PV."""
        places = [self.root, *(self.root / d for d in (".images", ".filesystems", ".volumes", ".clones"))]
        found = sorted(str(p.relative_to(self.root)) for d in places if d.is_dir() for p in d.glob(f"*{pv}*"))
        found += [str(p.relative_to(self.root)) for p in (self.root / ".ganesha").rglob(f"*{pv}*")]
        found += [str(d) for d in filesystem_env.devices_under(self.root) if pv in (loop_image(d) or "")]
        found += [v.metadata.name for v in self.core.list_persistent_volume(
            field_selector=f"metadata.name={pv}").items]
        return found


def loop_image(device: Path) -> str | None:
    from nfs_provisioner.volumes import loops
    return loops.backing_file(device.name)


@pytest.fixture(scope="module")
def env(cluster: kubecluster.Cluster, core: client.CoreV1Api, storage: client.StorageV1Api,
        tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    tmp = tmp_path_factory.mktemp("fsclones")
    suffix = uuid.uuid4().hex[:8]
    a = Appliance(kubeconfig=cluster.kubeconfig, export_root=tmp / "export", provisioner=f"example.com/fsc-{suffix}",
                  log_dir=tmp, extra=["--export-subnet=127.0.0.0/8"])
    namespace = f"fs-clones-{suffix}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=namespace)))
    e = Env(a=a, core=core, storage=storage, namespace=namespace)
    a.start()
    try:
        yield e
    finally:
        a.close()
        for mount in filesystem_env.mounts_under(tmp / "export" / ".filesystems"):
            thaw(mount)
        filesystem_env.clean(tmp)
        core.delete_namespace(namespace)
        for c in storage.list_storage_class().items:
            if c.provisioner == a.provisioner:
                storage.delete_storage_class(c.metadata.name)


@pytest.fixture(autouse=True)
def running(env: Env) -> None:
    """A test that failed between a kill and the next start left the appliance down: the next test starts it."""
    if env.a.proc is None or env.a.proc.poll() is not None:
        env.a.start()


def nfs_stat(a: Appliance, path: Path) -> tuple[int, int, int]:
    """(mode, uid, gid) of ``path`` as an NFSv4 client sees them."""
    with nfsraw.Nfs4(host="127.0.0.1", port=a.nfs_port) as c:
        r = c.compound([c.putfh(c.path_fh(*path.parts[1:])), c.stat()])
        assert r.status_name == "NFS4_OK", (path, r.status_name)
        attrs = r.last(nfsraw.OP_GETATTR).attrs
        return attrs["mode"], attrs["uid"], attrs["gid"]


def assert_same_tree(e: Env, src: Path, dst: Path, files: dict[str, bytes]) -> None:
    """``dst`` holds ``src``'s files: contents, owners and modes over NFS; links, holes and xattrs on disk."""
    nfs = e.a.client()
    for rel, data in {**files, "hard.bin": files["sub/data.bin"], "link": files["sub/data.bin"]}.items():
        got = nfs.cat(dst / rel)
        assert got.returncode == 0 and got.stdout == data, (dst / rel, got.stderr)
    for rel in ("hello.txt", "sub", "sub/deeper", "."):
        st = os.lstat(src / rel)
        assert nfs_stat(e.a, dst / rel) == (st.st_mode & 0o7777, st.st_uid, st.st_gid), rel
    assert nfs_stat(e.a, dst / "hello.txt") == (0o640, 1000, 2000)
    assert nfs_stat(e.a, dst / "sub") == (0o750, 1001, 1002)
    assert os.stat(dst / "hard.bin").st_ino == os.stat(dst / "sub" / "data.bin").st_ino
    assert os.readlink(dst / "link") == "sub/data.bin"
    assert os.stat(dst / "sparse.img").st_size == 16 * MiB and os.stat(dst / "sparse.img").st_blocks * 512 < MiB
    assert hashlib.sha256((dst / "sparse.img").read_bytes()).digest() == \
        hashlib.sha256((src / "sparse.img").read_bytes()).digest()
    assert os.getxattr(dst / "hello.txt", "user.origin") == b"source"
    assert os.stat(dst / "hello.txt").st_mtime_ns == os.stat(src / "hello.txt").st_mtime_ns


def test_clones_between_directory_and_filesystem_volumes_copy_the_tree(env: Env) -> None:
    """directory -> ext4 -> directory, and ext4 -> XFS (another filesystem type: the tree too, not the image)."""
    e = env
    cls = f"cross-{uuid.uuid4().hex[:6]}"
    e.set_class(cls)
    src_pv = e.claim("dir", cls, "16Mi")
    e.bound("dir")
    src = e.root / src_pv
    files = fill_source(src)
    os.chown(src / "sub", 1001, 1002)
    os.chmod(src / "sub", 0o750)
    assert e.a.client().put(b"written over NFS", src / "over-nfs.txt").returncode == 0
    files["over-nfs.txt"] = b"written over NFS"
    before = snapshot(src, contents=True)

    e.set_class(cls, **FS)
    e.claim("fs", cls, "32Mi", source="dir")
    fs = e.bound("fs")
    dst = Path(fs.spec.nfs.path)
    assert dst == e.root / ".filesystems" / fs.metadata.name and os.path.ismount(dst)
    assert fs.metadata.annotations["nfs-provisioner.io/fs-type"] == "ext4"
    assert fs.metadata.annotations["nfs-provisioner.io/cloned-from"] == "dir"
    assert_same_tree(e, src, dst, files)
    assert (dst / "lost+found").is_dir(), "the new ext4's own lost+found stays"
    st = os.statvfs(dst)
    assert st.f_blocks * st.f_frsize > 28 * MiB, "a filesystem of the claim's size"
    assert e.a.client().put(b"only in the clone", dst / "new.txt").returncode == 0
    assert not (src / "new.txt").exists() and snapshot(src, contents=True) == before, "the source untouched"
    assert f"volume {fs.metadata.name}: cloned from claim {e.namespace}/dir" in e.a.text()

    e.set_class(cls)  # and back: the filesystem volume's tree (from its mount) into a directory volume
    e.claim("back", cls, "32Mi", source="fs")
    back = e.bound("back")
    back_path = Path(back.spec.nfs.path)
    assert back_path == e.root / back.metadata.name
    assert_same_tree(e, dst, back_path, {**files, "new.txt": b"only in the clone"})
    assert (back_path / "lost+found").is_dir(), "the source's tree as it is, its lost+found too"

    e.set_class(cls, **FS, fsType="xfs")  # ext4 -> XFS: another filesystem type, so the tree is copied
    e.claim("xfs", cls, "300Mi", source="fs")
    xfs = e.bound("xfs")
    xfs_path = Path(xfs.spec.nfs.path)
    assert os.path.ismount(xfs_path) and os.stat(xfs_path).st_dev != os.stat(dst).st_dev
    assert_same_tree(e, dst, xfs_path, {**files, "new.txt": b"only in the clone"})
    assert os.path.ismount(dst) and not os.listdir(e.root / ".images").count(f".{xfs.metadata.name}.img.part")
    images = sorted(p.name for p in (e.root / ".images").iterdir() if p.suffix == ".img")
    assert images == sorted([f"{fs.metadata.name}.img", f"{xfs.metadata.name}.img"])
    for claim in ("dir", "fs", "back", "xfs"):
        e.delete_claim(claim)
    for pv in (src_pv, fs.metadata.name, back.metadata.name, xfs.metadata.name):
        wait.until(lambda pv=pv: not e.leftovers(pv), timeout=60,  # type: ignore[misc]
                   what=lambda pv=pv: f"volume {pv} removed: {e.leftovers(pv)}\n{e.a.log()}")  # type: ignore[misc]


def test_a_filesystem_too_small_for_the_source_is_refused_and_leaves_nothing(env: Env) -> None:
    """Known before anything is made (the source's data exceeds the claim), or once the new filesystem is made
    (more entries than it has inodes: it is removed again)."""
    e = env
    cls = f"small-{uuid.uuid4().hex[:6]}"
    e.set_class(cls)
    big = e.root / e.claim("big", cls, "8Mi")
    many = e.root / e.claim("many", cls, "8Mi")
    e.bound("big")
    e.bound("many")
    (big / "data").write_bytes(b"x" * 12 * MiB)  # a directory volume without quotas holds more than its claim
    for i in range(3000):
        (many / f"f{i}").touch()
    e.set_class(cls, **FS)
    copies = {"big-copy": e.claim("big-copy", cls, "8Mi", source="big"),
              "many-copy": e.claim("many-copy", cls, "8Mi", source="many")}
    wants = {"big-copy": "more than a ext4 filesystem of the claim's 8388608 bytes can hold (ask for a larger claim)",
             "many-copy": "in 3000 entries; the claim's new ext4 filesystem has room for"}
    for name, want in wants.items():
        message = wait.until(lambda name=name, want=want: next(  # type: ignore[misc]
            (m for m in e.failures(name) if want in m), None), timeout=30,
            what=lambda name=name: f"ProvisioningFailed of {name}: {e.failures(name)}\n{e.a.log()}")  # type: ignore[misc]
        assert message.startswith("cannot clone: the source volume pvc-") and len(message.splitlines()) == 1
        # (waited for: the claim is retried with backoff, and a retry of many-copy makes and removes it again)
        wait.until(lambda name=name: not e.leftovers(copies[name]), timeout=10,  # type: ignore[misc]
                   what=lambda name=name: f"nothing of {name}: {e.leftovers(copies[name])}")  # type: ignore[misc]
    assert e.core.read_namespaced_persistent_volume_claim("many-copy", e.namespace).status.phase == "Pending"
    wait.until(lambda: not filesystem_env.devices_under(e.root), timeout=10, what="no loop device")
    for claim in ("big", "many", "big-copy", "many-copy"):
        e.delete_claim(claim)


def copying_under_way(e: Env, pv: str) -> bool:
    target = e.root / ".filesystems" / pv
    return ((e.root / ".clones" / f"{pv}.copying").exists() and os.path.ismount(target)
            and len(set(os.listdir(target)) - {"lost+found"}) >= 5)


def test_sigkill_in_the_middle_of_tree_copies_into_filesystem_volumes(env: Env) -> None:
    """Clones of a directory volume of 20 000 files into ext4 volumes, the appliance SIGKILLed in the middle of
    the copy, twice (one copy at a time, so each is cut for sure): the first clone's claim is deleted while the
    appliance is down, and after the start the clone is rolled back; the second is copied again from the start
    and Bound. No orphan image, loop device or mount; the source untouched. Then a clone whose source grows beyond
    the new filesystem during the copy fails with one clear event and leaves nothing."""
    e = env
    cls = f"kill-tree-{uuid.uuid4().hex[:6]}"
    e.set_class(cls)
    src = e.root / e.claim("live", cls, "64Mi")
    e.bound("live")
    fill_tree(src, dirs=100, files=200, content=lambda d, i: b"%d/%d\n" % (d, i) * 20)
    (src / "zz").mkdir()  # copied last (names in order): the later clone's source grows here
    before = snapshot(src)
    e.set_class(cls, **FS)
    pvs = {}
    for name in ("deleted", "kept"):
        pv = pvs[name] = e.claim(name, cls, "128Mi", source="live")
        wait.until(lambda pv=pv: copying_under_way(e, pv), timeout=120, interval=0.02,  # type: ignore[misc]
                   what=lambda: f"the copy under way\n{e.a.log()}")
        e.a.kill()
        assert len(os.listdir(e.root / ".filesystems" / pv)) < 102, "the copy finished before the kill"
        assert not (e.root / ".clones" / f"{pv}.done").exists()
        assert not list((e.root / ".ganesha").rglob(f"*{pv}*")), "never exported"
        if name == "deleted":
            e.delete_claim(name)
        e.a.start()
        if name == "deleted":
            wait.until(lambda pv=pv: not e.leftovers(pv), timeout=60,  # type: ignore[misc]
                       what=lambda pv=pv: f"the deleted claim's clone rolled back: {e.leftovers(pv)}\n"  # type: ignore[misc]
                                          f"{e.a.log()}")
            assert "clone cancelled, its claim is deleted" in e.a.text()
    kept = e.bound("kept", timeout=240)
    assert kept.metadata.name == pvs["kept"] and "copying again from the start" in e.a.text()
    dst = Path(kept.spec.nfs.path)
    nfs = e.a.client()
    assert sorted(os.listdir(dst)) == sorted([*os.listdir(src), "lost+found"])
    assert sum(len(os.listdir(dst / d)) for d in os.listdir(src)) == 100 * 200
    for d, i in ((0, 0), (49, 150), (99, 199)):
        rel = f"d{d:03}/f{i:03}"
        assert nfs.cat(dst / rel).stdout == (src / rel).read_bytes(), rel
    images = [p.name for p in (e.root / ".images").iterdir() if p.suffix in (".img", ".part")]
    assert images == [f"{pvs['kept']}.img"], "no orphan image"
    assert [loop_image(d) for d in filesystem_env.devices_under(e.root)] == [str(e.root / ".images" / images[0])]
    assert [p.name for p in filesystem_env.mounts_under(e.root / ".filesystems")] == [pvs["kept"], ".filesystems"]
    assert snapshot(src) == before, "the source untouched"

    # The source grows beyond the new filesystem (128 MiB) while it is copied: the copy fails for want of space.
    full = e.claim("full", cls, "128Mi", source="live")
    wait.until(lambda: copying_under_way(e, full), timeout=60, interval=0.02,
               what=lambda: f"copy under way\n{e.a.log()}")
    with open(src / "zz" / "big", "wb") as f:
        for _ in range(16):
            f.write(b"z" * 8 * MiB)
    message = wait.until(lambda: next((m for m in e.failures("full") if "No space left" in m), None), timeout=120,
                         what=lambda: f"ProvisioningFailed for want of space\n{e.a.log()}")
    assert message.startswith(f"cloning claim {e.namespace}/live (volume {src.name}) into volume {full} failed: "
                              "cannot copy zz/big: No space left on device; the new volume has no room for the "
                              "source's data (ask for a larger claim), or the export root is full"), message
    wait.until(lambda: not e.leftovers(full), timeout=60,
               what=lambda: f"the failed clone removed: {e.leftovers(full)}\n{e.a.log()}")
    assert e.core.read_namespaced_persistent_volume_claim("full", e.namespace).status.phase == "Pending"
    for claim in ("live", "kept", "full"):
        e.delete_claim(claim)
    wait.until(lambda: not e.leftovers(pvs["kept"]), timeout=60, what=lambda: f"clone deleted\n{e.a.log()}")


def part_copying(e: Env, pv: str) -> bool:
    """The image copy under way: its temporary image has data already."""
    try:
        return os.stat(e.root / ".images" / f".{pv}.img.part").st_blocks > 0
    except FileNotFoundError:
        return False


def thaw(mount: Path) -> None:
    """Thaw a filesystem a failed test may have left frozen (a process blocked on it would stay so for good)."""
    with contextlib.suppress(OSError):
        fd = os.open(mount, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.ioctl(fd, filesystems.FITHAW, 0)
        finally:
            os.close(fd)


@contextlib.contextmanager
def frozen_writer(path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A process creating ``path``: it waits while the filesystem is frozen (thawed if it still waits at the end)."""
    writer = subprocess.Popen([sys.executable, "-c", f"open({str(path)!r}, 'w').write('after the kill')"])
    try:
        yield writer
    finally:
        if writer.poll() is None:
            thaw(path.parent)
            writer.wait(30)


def test_sigkill_in_the_middle_of_an_image_copy_thaws_the_source_and_clones_again(env: Env) -> None:
    """A 256Mi ext4 volume holding 192 MiB cloned by a sparse copy of its image (this host's ext4 shares no
    blocks), the appliance SIGKILLed while its source is frozen for the copy: the source stays frozen (a
    writer waits) until the next start thaws it, the clone is made again and Bound. A second clone killed the same
    way whose claim is deleted meanwhile is rolled back. No orphan image, loop device or mount; the source's data
    untouched."""
    e = env
    if copying.shares_blocks(e.root):
        pytest.skip("the export root shares blocks: the image copy is a reflink, too quick to be cut")
    cls = f"kill-image-{uuid.uuid4().hex[:6]}"
    e.set_class(cls, **FS)
    src_pv = e.claim("disk", cls, "256Mi")
    src = Path(e.bound("disk").spec.nfs.path)
    digest = hashlib.sha256()
    with open(src / "data", "wb") as f:
        for n in range(24):
            chunk = bytes([n + 1]) * 8 * MiB
            digest.update(chunk)
            f.write(chunk)
    assert e.a.client().put(b"small file\n", src / "f").returncode == 0
    copying.syncfs(src)

    for name, delete in (("copy", False), ("gone", True)):
        pv = e.claim(name, cls, "256Mi", source="disk")
        wait.until(lambda pv=pv: part_copying(e, pv), timeout=60, interval=0.002,  # type: ignore[misc]
                   what=lambda: f"the image copy under way\n{e.a.log()}")
        e.a.kill()
        assert (e.root / ".images" / f".{pv}.img.part").exists() and not (e.root / ".images" / f"{pv}.img").exists()
        with frozen_writer(src / f"after-kill-{name}") as writer:
            time.sleep(1)
            assert writer.poll() is None, "the source is frozen: a crash in the middle of the copy left it so"
            if delete:
                e.delete_claim(name)
            e.a.start()
            assert writer.wait(30) == 0, "thawed at the start"
        assert f"volume {src_pv}: its filesystem was frozen (a clone interrupted); thawed" in e.a.text()
        if delete:
            wait.until(lambda pv=pv: not e.leftovers(pv), timeout=60,  # type: ignore[misc]
                       what=lambda pv=pv: f"the clone rolled back: {e.leftovers(pv)}\n{e.a.log()}")  # type: ignore[misc]
            continue
        made = e.bound(name, timeout=120)
        dst = Path(made.spec.nfs.path)
        assert e.a.client().cat(dst / "f").stdout == b"small file\n"
        copied = hashlib.sha256()
        with open(dst / "data", "rb") as f:
            while chunk := f.read(8 * MiB):
                copied.update(chunk)
        assert copied.digest() == digest.digest()

    images = sorted(p.name for p in (e.root / ".images").iterdir() if p.suffix in (".img", ".part"))
    copy_pv = e.bound("copy").metadata.name
    assert images == sorted([f"{src_pv}.img", f"{copy_pv}.img"]), "no orphan image"
    assert sorted(loop_image(d) or "" for d in filesystem_env.devices_under(e.root)) == \
        sorted(str(e.root / ".images" / i) for i in images)
    assert sorted(p.name for p in filesystem_env.mounts_under(e.root / ".filesystems")) == \
        sorted([src_pv, copy_pv, ".filesystems"])
    check = hashlib.sha256()
    with open(src / "data", "rb") as f:
        while chunk := f.read(8 * MiB):
            check.update(chunk)
    assert check.digest() == digest.digest(), "the source's data untouched"
    assert (src / "after-kill-copy").read_text() == "after the kill"
    for claim in ("disk", "copy"):
        e.delete_claim(claim)
    for pv in (src_pv, copy_pv):
        wait.until(lambda pv=pv: not e.leftovers(pv), timeout=60,  # type: ignore[misc]
                   what=lambda pv=pv: f"volume {pv} deleted: {e.leftovers(pv)}\n{e.a.log()}")  # type: ignore[misc]
