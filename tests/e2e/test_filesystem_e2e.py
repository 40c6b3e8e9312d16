"""Filesystem volumes (issue 23) end to end: the real appliance (its own Ganesha) against the real control plane,
data over NFS with the libnfs client and the suite's raw client, real loop devices, ext4 and XFS."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from prometheus_client.parser import text_string_to_metric_families

from nfs_provisioner.volumes import loops
from nfs_provisioner.volumes.filesystems import FilesystemVolumes
from tests.support import filesystem_env, nfsraw, wait
from tests.support.appliance_env import Appliance
from tests.support.builders import make_claim, make_class

pytestmark = [pytest.mark.e2e, pytest.mark.kube, pytest.mark.ganesha]
MiB = 2**20


@pytest.fixture
def fs_appliance(appliance: Appliance, tmp_path: Path) -> Iterator[Appliance]:
    """The appliance; afterwards stopped, and every mount and loop device under the test's directory removed.
    Clients: loopback only (the shared control plane's Nodes, made by other tests, are not followed)."""
    appliance.extra.append("--export-subnet=127.0.0.0/8")
    try:
        yield appliance
    finally:
        appliance.close()
        filesystem_env.clean(tmp_path)


def bound_volume(core: client.CoreV1Api, namespace: str, a: Appliance, name: str = "data") -> Any:
    wait.until(lambda: core.read_namespaced_persistent_volume_claim(name, namespace).status.phase == "Bound",
               timeout=60, what=lambda: f"claim Bound\n{a.log()}")
    return core.read_persistent_volume(core.read_namespaced_persistent_volume_claim(name, namespace).spec.volume_name)


def events(core: client.CoreV1Api, namespace: str, name: str = "data") -> list[Any]:
    return list(core.list_namespaced_event(namespace, field_selector=f"involvedObject.name={name}").items)


def fill_over_nfs(a: Appliance, path: Path) -> int:
    """Fill the volume from the appliance's side to ~64 KiB of its end, then write 3900-byte files over NFSv4 until
    one fails (nfs-cp says only "Failed to write"); it is for want of space: once the bulk is removed, the same
    write succeeds. The bytes the volume held when full."""
    free = os.statvfs(path).f_bavail * os.statvfs(path).f_frsize
    with open(path / "bulk", "wb") as f:
        f.write(b"\0" * max(0, free - 64 * 1024))
    nfs = a.client()
    for n in range(200):
        put = nfs.put(os.urandom(3900), path / f"small-{n}")
        if put.returncode != 0:
            st = os.statvfs(path)
            assert st.f_bavail * st.f_frsize <= 256 * 1024, "it failed while space was left"
            held = (st.f_blocks - st.f_bfree) * st.f_frsize
            (path / "bulk").unlink()
            again = nfs.put(os.urandom(3900), path / "after-freeing")
            assert again.returncode == 0, again.stderr
            return held
    raise AssertionError("200 writes of 3900 bytes over NFS after the volume was nearly full all succeeded")


@pytest.mark.parametrize(("fs_type", "size", "df_at_least"), [("ext4", "16Mi", 0.85), ("xfs", "300Mi", 0.75)])
def test_a_filesystem_volume_is_served_sized_and_deleted(fs_appliance: Appliance, core: client.CoreV1Api,
                                                         storage: client.StorageV1Api, namespace: str, unique: str,
                                                         fs_type: str, size: str, df_at_least: float) -> None:
    a = fs_appliance
    cls = f"fs-{fs_type}-{unique}"
    make_class(cls, a.provisioner, expansion=True, api=storage,
               parameters={"isolation": "filesystem", "fsType": fs_type, "gid": "2345"})
    a.start()
    make_claim(namespace, "data", cls, size=size, api=core)
    pv = bound_volume(core, namespace, a)
    path = a.export_root / ".filesystems" / pv.metadata.name
    assert pv.spec.nfs.path == str(path) and pv.spec.capacity == {"storage": size}
    ann = pv.metadata.annotations
    assert (ann["nfs-provisioner.io/isolation"], ann["nfs-provisioner.io/fs-type"]) == ("filesystem", fs_type)
    assert os.path.ismount(path) and filesystem_env.devices_under(a.export_root)
    assert path.stat().st_gid == 2345
    record = (a.export_root / ".volumes" / f"{pv.metadata.name}.json").read_text()
    assert f'"filesystem": "{fs_type}"' in record

    nfs = a.client()
    payload = os.urandom(3900)
    assert nfs.put(payload, path / "hello").returncode == 0
    assert nfs.cat(path / "hello").stdout == payload
    claim_bytes = int(size.removesuffix("Mi")) * MiB
    st = os.statvfs(path)  # what Ganesha answers a client's statfs with: the volume's own filesystem
    assert df_at_least * claim_bytes < st.f_blocks * st.f_frsize <= claim_bytes
    assert fill_over_nfs(a, path) <= claim_bytes, "the volume holds no more than the claim"
    status, metrics = a.get("/metrics")
    assert status == 200
    samples = {(s.name, s.labels.get("volume")): s.value for f in text_string_to_metric_families(metrics)
               for s in f.samples}
    st = os.statvfs(path)
    assert samples[("nfs_provisioner_volume_filesystem_size_bytes", pv.metadata.name)] == st.f_blocks * st.f_frsize
    assert samples[("nfs_provisioner_volume_filesystem_free_bytes", pv.metadata.name)] == st.f_bavail * st.f_frsize

    core.delete_namespaced_persistent_volume_claim("data", namespace)
    wait.until(lambda: not core.list_persistent_volume(field_selector=f"metadata.name={pv.metadata.name}").items,
               timeout=60, what=lambda: f"PV deleted\n{a.log()}")
    assert not path.exists() and not (a.export_root / ".images" / f"{pv.metadata.name}.img").exists()
    assert not filesystem_env.devices_under(a.export_root), "its loop device is detached"
    assert nfs.cat(path / "hello").returncode != 0
    storage.delete_storage_class(cls)


@pytest.mark.parametrize("on_delete", ["archive", "retain"])
def test_archive_and_retain_keep_the_image_unmounted(fs_appliance: Appliance, core: client.CoreV1Api,
                                                     storage: client.StorageV1Api, namespace: str, unique: str,
                                                     on_delete: str) -> None:
    a = fs_appliance
    cls = f"fs-{on_delete}-{unique}"
    make_class(cls, a.provisioner, expansion=True, api=storage,
               parameters={"isolation": "filesystem", "onDelete": on_delete})
    a.start()
    make_claim(namespace, "data", cls, size="8Mi", api=core)
    pv = bound_volume(core, namespace, a)
    path = Path(pv.spec.nfs.path)
    assert a.client().put(b"keep me\n", path / "kept").returncode == 0
    core.delete_namespaced_persistent_volume_claim("data", namespace)
    wait.until(lambda: not core.list_persistent_volume(field_selector=f"metadata.name={pv.metadata.name}").items,
               timeout=60, what=lambda: f"PV deleted\n{a.log()}")
    where = a.export_root / (".archive" if on_delete == "archive" else ".images")
    (kept,) = [p for p in where.iterdir() if p.name.startswith(f"{pv.metadata.name}-") and p.suffix == ".img"]
    assert not path.exists() and not filesystem_env.devices_under(a.export_root), "unmounted, detached"
    assert not (a.export_root / ".volumes" / f"{pv.metadata.name}.json").exists()
    check = a.export_root.parent / "check"
    check.mkdir()
    subprocess.run(["mount", "-o", "loop,ro", str(kept), str(check)], check=True)
    try:
        assert (check / "kept").read_bytes() == b"keep me\n"
    finally:
        subprocess.run(["umount", str(check)], check=True)
    storage.delete_storage_class(cls)


@pytest.mark.parametrize(("fs_type", "size", "grown", "more"), [("ext4", "16Mi", "48Mi", 28 * MiB),
                                                                   ("xfs", "300Mi", "600Mi", 290 * MiB)])
def test_expansion_is_seen_through_nfs_with_handles_kept(fs_appliance: Appliance, core: client.CoreV1Api,
                                                         storage: client.StorageV1Api, namespace: str,
                                                         unique: str, fs_type: str, size: str, grown: str,
                                                         more: int) -> None:
    """XFS grows online (the export stays); ext4 offline here (no CAP_SYS_RESOURCE: unexported for the resize,
    exported again with the same id on the same loop device). A handle the client held before still works."""
    a = fs_appliance
    cls = f"fs-grow-{unique}"
    make_class(cls, a.provisioner, expansion=True, api=storage,
               parameters={"isolation": "filesystem", "fsType": fs_type})
    a.start()
    make_claim(namespace, "data", cls, size=size, api=core)
    pv = bound_volume(core, namespace, a)
    path = Path(pv.spec.nfs.path)
    assert a.client().put(b"before\n", path / "f").returncode == 0
    with nfsraw.Nfs4(host="127.0.0.1", port=a.nfs_port) as c:
        fh = c.path_fh(*path.parts[1:], "f")
    before = os.statvfs(path).f_blocks * os.statvfs(path).f_frsize
    core.patch_namespaced_persistent_volume_claim("data", namespace,
                                                  {"spec": {"resources": {"requests": {"storage": grown}}}})
    wait.until(lambda: (core.read_namespaced_persistent_volume_claim("data", namespace).status.capacity or {})
               .get("storage") == grown, timeout=60, what=lambda: f"claim capacity {grown}\n{a.log()}")
    after = os.statvfs(path).f_blocks * os.statvfs(path).f_frsize
    assert after > before + more, (before, after)
    assert a.client().cat(path / "f").stdout == b"before\n"
    with nfsraw.Nfs4(host="127.0.0.1", port=a.nfs_port) as c:
        r = c.compound([c.putfh(fh), c.read()])
        assert r.status_name == "NFS4_OK" and r.last(nfsraw.OP_READ).data == b"before\n", r.status_name
    reasons = [e.reason for e in events(core, namespace)]
    assert "VolumeResizeSuccessful" in reasons
    offline = "growing it offline (unexported meanwhile)" in a.text()
    assert offline == (fs_type == "ext4" and not FilesystemVolumes.grows_online("ext4")), a.log()
    storage.delete_storage_class(cls)


def test_after_sigkill_and_a_fresh_mount_namespace_volumes_are_mounted_and_served_again(
        fs_appliance: Appliance, core: client.CoreV1Api, storage: client.StorageV1Api, namespace: str,
        unique: str, tmp_path: Path) -> None:
    """Clients keep their file handles: the volumes are mounted on the same loop devices again, though another
    program attached one meanwhile (Ganesha's filesystem id in a handle is the device number)."""
    a = fs_appliance
    cls = f"fs-restart-{unique}"
    make_class(cls, a.provisioner, parameters={"isolation": "filesystem"}, expansion=True, api=storage)
    a.start()
    for n in ("one", "two"):
        make_claim(namespace, n, cls, size="8Mi", api=core)
    pvs = [bound_volume(core, namespace, a, n) for n in ("one", "two")]
    paths = [Path(pv.spec.nfs.path) for pv in pvs]
    for p in paths:
        assert a.client().put(p.name.encode(), p / "f").returncode == 0
    with nfsraw.Nfs4(host="127.0.0.1", port=a.nfs_port) as c:
        handles = [c.path_fh(*p.parts[1:], "f") for p in paths]

    a.kill()
    # As a container's restart would: no mount survives (a host keeps them; that case is the plain restart).
    for p in [*paths, a.export_root / ".filesystems"]:  # busy until the killed Ganesha is gone
        wait.until(lambda p=p: subprocess.run(["umount", str(p)], capture_output=True).returncode == 0,  # type: ignore[misc]
                   timeout=10, what=f"umount {p}")
    wait.until(lambda: not filesystem_env.devices_under(a.export_root), timeout=10, what="loop devices detached")
    # Meanwhile another program attaches a loop device (the lowest free one, as losetup -f does).
    scratch = tmp_path / "other-program.img"
    with open(scratch, "wb") as f:
        f.truncate(MiB)
    _, held = loops.attach(scratch)
    try:
        a.start()
        assert "filesystem volumes: 2 mounted again, 0 failed" in a.text(), a.log()
        for p in paths:
            assert os.path.ismount(p)
            assert a.client().cat(p / "f").stdout == p.name.encode()
        with nfsraw.Nfs4(host="127.0.0.1", port=a.nfs_port) as c:
            for p, fh in zip(paths, handles, strict=True):
                r = c.compound([c.putfh(fh), c.read()])
                assert r.status_name == "NFS4_OK" and r.last(nfsraw.OP_READ).data == p.name.encode(), r.status_name
    finally:
        os.close(held)  # autoclear: detached
    storage.delete_storage_class(cls)


REFUSALS = [
    ({"fsType": "xfs"}, "100Mi", "a xfs volume needs at least 300Mi"),
    ({"fsType": "btrfs"}, "8Mi", "invalid value 'btrfs' for parameter fsType: want ext4 or xfs"),
    ({"isolation": "block"}, "8Mi", "invalid value 'block' for parameter isolation"),
]


@pytest.mark.parametrize(("parameters", "size", "message"), REFUSALS)
def test_bad_filesystem_claims_get_one_clear_event_and_leave_nothing(
        fs_appliance: Appliance, core: client.CoreV1Api, storage: client.StorageV1Api, namespace: str, unique: str,
        parameters: dict[str, str], size: str, message: str) -> None:
    a = fs_appliance
    cls = f"fs-bad-{unique}"
    make_class(cls, a.provisioner, parameters={"isolation": "filesystem", **parameters}, expansion=True, api=storage)
    a.start()
    before = sorted(p.name for p in a.export_root.iterdir())
    make_claim(namespace, "data", cls, size=size, api=core)
    text = wait.until(lambda: next((e.message for e in events(core, namespace)
                                    if e.reason == "ProvisioningFailed" and message in e.message), None),
                      timeout=30, what=lambda: f"ProvisioningFailed with {message!r}\n{a.log()}")
    assert len(text.splitlines()) == 1
    assert sorted(p.name for p in a.export_root.iterdir()) == before
    assert not list((a.export_root / ".images").iterdir()) and not filesystem_env.devices_under(a.export_root)
    storage.delete_storage_class(cls)


def test_an_appliance_that_cannot_make_filesystems_says_so_and_makes_no_directory_instead(
        fs_appliance: Appliance, core: client.CoreV1Api, storage: client.StorageV1Api, namespace: str, unique: str,
        tmp_path: Path) -> None:
    """Its PATH has no mkfs.ext4 / mkfs.xfs (as an image without e2fsprogs)."""
    a = fs_appliance
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for d in os.environ["PATH"].split(":"):
        if not os.path.isdir(d):
            continue
        for entry in os.listdir(d):
            if not entry.startswith("mkfs") and not (bin_dir / entry).exists():
                (bin_dir / entry).symlink_to(Path(d) / entry)
    assert shutil.which("mkfs.ext4", path=str(bin_dir)) is None
    a.env["PATH"] = str(bin_dir)
    cls = f"fs-cannot-{unique}"
    make_class(cls, a.provisioner, parameters={"isolation": "filesystem"}, expansion=True, api=storage)
    a.start()
    assert "filesystem volumes (ext4): not possible here: mkfs.ext4 not found in PATH (install e2fsprogs)" \
        in a.text(), a.log()
    make_claim(namespace, "data", cls, size="8Mi", api=core)
    want = "asks for isolation: filesystem (ext4), which this appliance cannot provide: mkfs.ext4 not found in PATH"
    wait.until(lambda: any(e.reason == "ProvisioningFailed" and want in e.message for e in events(core, namespace)),
               timeout=30, what=lambda: f"ProvisioningFailed naming mkfs.ext4\n{a.log()}")
    assert core.read_namespaced_persistent_volume_claim("data", namespace).status.phase == "Pending"
    assert not [p for p in a.export_root.iterdir() if p.name.startswith("pvc-")], "no directory volume instead"
    assert not [p for p in core.list_persistent_volume().items if p.spec.storage_class_name == cls]
    storage.delete_storage_class(cls)


def test_a_clone_of_a_filesystem_volume_is_its_data_in_a_filesystem_of_its_own(
        fs_appliance: Appliance, core: client.CoreV1Api, storage: client.StorageV1Api, namespace: str,
        unique: str) -> None:
    a = fs_appliance
    cls = f"fs-clone-{unique}"
    make_class(cls, a.provisioner, parameters={"isolation": "filesystem"}, expansion=True, api=storage)
    a.start()
    make_claim(namespace, "source", cls, size="8Mi", api=core)
    src = bound_volume(core, namespace, a, "source")
    src_path = Path(src.spec.nfs.path)
    nfs = a.client()
    assert nfs.put(b"source data\n", src_path / "f").returncode == 0
    core.create_namespaced_persistent_volume_claim(namespace, client.V1PersistentVolumeClaim(
        metadata=client.V1ObjectMeta(name="clone"),
        spec=client.V1PersistentVolumeClaimSpec(
            access_modes=["ReadWriteMany"], storage_class_name=cls,
            data_source=client.V1TypedLocalObjectReference(kind="PersistentVolumeClaim", name="source"),
            resources=client.V1VolumeResourceRequirements(requests={"storage": "16Mi"}))))
    clone = bound_volume(core, namespace, a, "clone")
    path = Path(clone.spec.nfs.path)
    assert clone.metadata.annotations["nfs-provisioner.io/cloned-from"] == "source"
    assert os.path.ismount(path) and os.stat(path).st_dev != os.stat(src_path).st_dev, "a filesystem of its own"
    assert nfs.cat(path / "f").stdout == b"source data\n"
    assert nfs.put(b"clone's own\n", path / "g").returncode == 0
    assert nfs.cat(src_path / "g").returncode != 0, "the source does not see the clone's writes"
    st = os.statvfs(path)
    assert st.f_blocks * st.f_frsize > 13 * MiB, "grown to the claim (the 8Mi source: < 8 MiB)"
    assert "sparse copy" in a.text() or "reflink" in a.text()
    storage.delete_storage_class(cls)


def test_sigkill_while_provisioning_and_deleting_leaves_no_orphan(
        fs_appliance: Appliance, core: client.CoreV1Api, storage: client.StorageV1Api, namespace: str,
        unique: str) -> None:
    """SIGKILL while claims are being provisioned (and again while they are deleted), then a restart: every claim
    is Bound to a mounted, served volume, and after the deletes no image, mount point, loop device or record is
    left."""
    a = fs_appliance
    cls = f"fs-kill-{unique}"
    make_class(cls, a.provisioner, parameters={"isolation": "filesystem"}, expansion=True, api=storage)
    a.start()
    names = [f"c{i}" for i in range(8)]
    for n in names:
        make_claim(namespace, n, cls, size="8Mi", api=core)
    wait.until(lambda: "mounted at" in a.text(), timeout=30, what="a first volume mounted")
    a.kill()
    a.start()
    pvs = [bound_volume(core, namespace, a, n) for n in names]
    for pv in pvs:
        path = Path(pv.spec.nfs.path)
        assert os.path.ismount(path)
        assert a.client().put(b"x", path / "f").returncode == 0
    images = {p.name for p in (a.export_root / ".images").iterdir() if p.suffix == ".img"}
    assert images == {f"{pv.metadata.name}.img" for pv in pvs}, "one image per volume, no orphan"
    assert len(filesystem_env.devices_under(a.export_root)) == len(pvs)

    for n in names:
        core.delete_namespaced_persistent_volume_claim(n, namespace)
    wait.until(lambda: "onDelete" in a.text() or "removed: id" in a.text(), timeout=30, what="a first delete")
    a.kill()
    a.start()
    wait.until(lambda: not [p for p in core.list_persistent_volume().items if p.spec.storage_class_name == cls],
               timeout=90, what=lambda: f"all PVs deleted\n{a.log()}")
    assert list((a.export_root / ".images").iterdir()) == []
    assert list((a.export_root / ".filesystems").iterdir()) == []
    # (A record's temporary file, ".<pv>.json.<random>.tmp", may stay when the kill hit fileio.atomic_write: the
    # records' own matter, not the filesystem volumes'.)
    assert [p for p in (a.export_root / ".volumes").iterdir() if not p.name.endswith(".tmp")] == []
    assert not filesystem_env.devices_under(a.export_root)
    storage.delete_storage_class(cls)


def test_a_bound_volume_whose_image_is_lost_fails_readiness_and_is_not_served(
        fs_appliance: Appliance, core: client.CoreV1Api, storage: client.StorageV1Api, namespace: str,
        unique: str) -> None:
    """Never the bare mount point instead: its export is withdrawn and /readyz names the volume."""
    a = fs_appliance
    cls = f"fs-lost-{unique}"
    make_class(cls, a.provisioner, parameters={"isolation": "filesystem"}, expansion=True, api=storage)
    a.start()
    make_claim(namespace, "data", cls, size="8Mi", api=core)
    pv = bound_volume(core, namespace, a)
    path = Path(pv.spec.nfs.path)
    assert a.client().put(b"data", path / "f").returncode == 0
    assert a.stop() == 0
    for p in (path, a.export_root / ".filesystems"):  # a container restart
        subprocess.run(["umount", str(p)], check=True)
    (a.export_root / ".images" / f"{pv.metadata.name}.img").unlink()
    a.start(wait_ready=False)

    def not_ready() -> str | None:
        status, text = a.get("/readyz")
        return text if status == 503 and pv.metadata.name in text else None

    text = wait.until(not_ready, timeout=60, what=lambda: f"/readyz 503 naming the volume\n{a.log()}")
    assert "image" in text and "missing" in text, text
    assert f"volume {pv.metadata.name}: Bound, and its filesystem cannot be mounted" in a.text()
    assert a.client().ls(path).returncode != 0, "nothing is served at its path"
    storage.delete_storage_class(cls)
