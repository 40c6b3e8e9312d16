"""The appliance's Provisioner with filesystem volumes against a real Ganesha and real loop devices: rollbacks,
and every state a crash between two steps of provision, expand and delete leaves, finished by the next call
(the controller calls again after a restart)."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from nfs_provisioner.appliance import clones
from nfs_provisioner.appliance import provisioner as prov
from nfs_provisioner.appliance.exporters import GaneshaExporter
from nfs_provisioner.controller.interface import InProgress, ProvisioningError
from nfs_provisioner.volumes.directories import VolumeDirectories
from nfs_provisioner.volumes.filesystems import FilesystemVolumes
from nfs_provisioner.volumes.records import RECORDS_DIR
from tests.support import filesystem_env, smallfs
from tests.support.ganesha_env import Harness
from tests.support.provisioner_env import IDENTITY, InProcessAppliance, claimed, options, small_root

pytestmark = pytest.mark.ganesha
__all__ = ["small_root"]  # the fixture, shared with tests/ganesha/test_appliance_provisioner.py
MiB = 2**20
FS = {"isolation": "filesystem"}


class FailingExporter(GaneshaExporter):
    fail = False

    def export(self, *, name: str, path: Path, root_squash: bool, export_id: int | None = None) -> tuple[int, str]:
        if self.fail:
            raise RuntimeError("injected: the export failed")
        return super().export(name=name, path=path, root_squash=root_squash, export_id=export_id)


class Appliance(InProcessAppliance):
    """Filesystem volumes on real loop devices, behind an exporter that can be told to fail."""

    fs: FilesystemVolumes
    exporter: FailingExporter

    def __init__(self, h: Harness) -> None:
        super().__init__(h, exporter=FailingExporter, filesystems=True)

    def nothing_left(self, name: str) -> None:
        assert not self.fs.image_for(name).exists() and not self.fs.path_for(name).exists()
        assert not (self.root / RECORDS_DIR / f"{name}.json").exists()
        assert not self.server.exports.list_exports()
        assert not filesystem_env.devices_under(self.root)
        assert not [p for p in self.root.iterdir() if p.name.startswith("pvc-")], "no directory volume either"


@pytest.fixture
def a(h: Harness, tmp_path: Path) -> Iterator[Appliance]:
    with filesystem_env.cleaned(tmp_path):
        app = Appliance(h)
        try:
            yield app
        finally:
            h.close()


def test_a_failed_export_rolls_everything_back(a: Appliance) -> None:
    a.exporter.fail = True
    with pytest.raises(ProvisioningError, match="injected: the export failed"):
        a.p.provision(options(params=FS, size="8Mi"))
    a.nothing_left("pvc-1")
    a.exporter.fail = False
    pv = a.p.provision(options(params=FS, size="8Mi"))
    assert pv["spec"]["nfs"]["path"] == str(a.fs.path_for("pvc-1"))


def test_a_too_small_or_impossible_claim_makes_nothing(a: Appliance) -> None:
    with pytest.raises(ProvisioningError, match="needs at least 300Mi"):
        a.p.provision(options(params={**FS, "fsType": "xfs"}, size="100Mi"))
    a.nothing_left("pvc-1")
    a.p._probed = {"ext4": "injected: no loop devices", "xfs": None}
    with pytest.raises(ProvisioningError, match="cannot provide: injected: no loop devices; no volume is provisioned"):
        a.p.provision(options(params=FS, size="8Mi"))
    a.nothing_left("pvc-1")


@pytest.mark.parametrize("left", ["record", "image", "mounted", "exported"])
def test_provision_finishes_what_a_crash_left(a: Appliance, left: str) -> None:
    """The states between the steps (record -> image -> mount -> export), made by running the steps by hand, then
    the controller's next call."""
    pv = a.p.provision(options(params=FS, size="8Mi"))
    (a.fs.path_for("pvc-1") / "data").write_text("made before the crash")
    a.server.exports.remove("pvc-1")
    if left in ("record", "image"):
        a.fs.unmount("pvc-1")
    if left == "record":
        a.fs.delete("pvc-1")
    if left == "exported":
        a.p.exporter.export(name="pvc-1", path=a.fs.path_for("pvc-1"), root_squash=False)
    again = a.p.provision(options(params=FS, size="8Mi"))
    assert again["spec"] == pv["spec"]
    assert os.path.ismount(a.fs.path_for("pvc-1")) and a.server.exports.get("pvc-1") is not None
    data = a.fs.path_for("pvc-1") / "data"
    assert (data.exists() and data.read_text() == "made before the crash") == (left != "record")
    put = a.h.client().put(b"after\n", a.fs.path_for("pvc-1") / "after")
    assert put.returncode == 0, put.stderr


@pytest.mark.parametrize("left", ["unexported", "unmounted", "image removed"])
def test_delete_finishes_what_a_crash_left(a: Appliance, left: str) -> None:
    pv = claimed(a.p.provision(options(params=FS, size="8Mi")))
    a.server.exports.remove("pvc-1")
    if left in ("unmounted", "image removed"):
        a.fs.unmount("pvc-1")
    if left == "image removed":
        a.fs.image_for("pvc-1").unlink()
    a.p.delete(pv)
    a.nothing_left("pvc-1")
    a.p.delete(pv)  # again: nothing to do


@pytest.mark.parametrize("on_delete", ["retain", "archive"])
def test_a_kept_volumes_deletion_retried_after_a_crash_finds_it_done(a: Appliance, on_delete: str) -> None:
    """As for directory volumes (tests/ganesha/test_appliance_provisioner.py): the controller calls delete again when it
    crashed before deleting the PV; the kept image is left as it is and the retry succeeds."""
    pv = claimed(a.p.provision(options(params={**FS, "onDelete": on_delete}, size="8Mi")))
    a.p.delete(pv)
    def files() -> list[str]:
        return sorted(str(p.relative_to(a.root)) for p in a.root.rglob("*")
                      if ".ganesha" not in p.parts and p.is_file())
    kept = files()
    assert [f for f in kept if f.endswith(".img")], kept
    assert a.p.delete(pv) is None
    assert files() == kept
    assert not filesystem_env.devices_under(a.root)


def test_expand_grows_and_refuses_to_shrink(a: Appliance) -> None:
    pv: dict[str, Any] = claimed(a.p.provision(options(params=FS, size="8Mi")))
    (a.fs.path_for("pvc-1") / "f").write_text("kept")
    a.p.expand(pv, 24 * MiB)
    a.p.expand(pv, 24 * MiB)  # the resizer's retry: nothing to do
    st = os.statvfs(a.fs.path_for("pvc-1"))
    assert st.f_blocks * st.f_frsize > 20 * MiB
    assert (a.fs.path_for("pvc-1") / "f").read_text() == "kept" and a.server.exports.get("pvc-1") is not None
    with pytest.raises(RuntimeError, match="shrinking a filesystem volume is not supported"):
        a.p.expand(pv, 8 * MiB)
    assert a.server.exports.get("pvc-1") is not None and os.path.ismount(a.fs.path_for("pvc-1"))


def test_gid_root_squash_and_mount_options_as_for_a_directory_volume(a: Appliance) -> None:
    opts = options(params={**FS, "gid": "2345", "rootSquash": "true"}, size="8Mi", mount_options=["vers=4.1"])
    pv = a.p.provision(opts)
    path = a.fs.path_for("pvc-1")
    assert pv["spec"]["mountOptions"] == ["vers=4.1"]
    assert pv["metadata"]["annotations"][prov.ANN_GID] == "2345"
    assert (path.stat().st_gid, path.stat().st_mode & 0o7777) == (2345, 0o2071)
    assert a.exporter.root_squash("pvc-1") is True
    assert "root_id_squash" in pv["metadata"]["annotations"][prov.ANN_EXPORT_BLOCK].lower()


def test_a_claim_larger_than_the_export_roots_free_space_makes_nothing(small_root: Path, h: Harness) -> None:
    """The export root is an 8 MiB ext4 of its own (tests/support/smallfs.py; unmounted after the server stops)."""
    a = Appliance(h)
    with pytest.raises(ProvisioningError, match="bytes are free on the export root"):
        a.p.provision(options(params=FS, size="16Mi"))
    a.nothing_left("pvc-1")
    assert not (a.root / ".images").exists() or list((a.root / ".images").iterdir()) == []


def test_deleting_a_filesystem_volume_frees_a_full_export_root(small_root: Path, h: Harness,
                                                                   tmp_path: Path) -> None:
    """The export root (8 MiB) is full, mostly with the volume's image: its delete must free the space (the export
    index rewrite needs space itself), as for a directory volume (test_delete_frees_a_full_export_root)."""
    with filesystem_env.cleaned(tmp_path / "export"):  # before small_root unmounts the export root
        a = Appliance(h)
        pv = claimed(a.p.provision(options("pvc-full", params=FS, size="4Mi")))
        assert smallfs.fill(a.fs.path_for("pvc-full")) > 2 * MiB
        smallfs.fill(a.root / ".images" / "..")  # the rest of the export root, from outside every volume
        with pytest.raises(OSError, match="No space left"):
            (a.root / "probe").write_bytes(b"x" * 4096)
        free_before = VolumeDirectories(a.root).free_bytes()
        a.p.delete(pv)
        a.nothing_left("pvc-full")
        assert VolumeDirectories(a.root).free_bytes() > free_before + 2 * MiB
        h.close()


@pytest.mark.parametrize("left", ["unexported", "unmounted", "image grown"])
def test_expand_finishes_what_a_crash_left(a: Appliance, left: str) -> None:
    """ext4 grown offline (this host has no CAP_SYS_RESOURCE): the states between unexport -> unmount -> image
    grown -> resize -> mount -> export, then the resizer's next call."""
    if FilesystemVolumes.grows_online("ext4"):
        pytest.skip("ext4 grows online here: no offline steps")
    pv: dict[str, Any] = claimed(a.p.provision(options(params=FS, size="8Mi")))
    (a.fs.path_for("pvc-1") / "f").write_text("kept")
    a.server.exports.remove("pvc-1")
    if left in ("unmounted", "image grown"):
        a.fs.unmount("pvc-1")
    if left == "image grown":
        os.truncate(a.fs.image_for("pvc-1"), 24 * MiB)
    a.p.expand(pv, 24 * MiB)
    assert os.path.ismount(a.fs.path_for("pvc-1")) and a.server.exports.get("pvc-1") is not None
    st = os.statvfs(a.fs.path_for("pvc-1"))
    assert st.f_blocks * st.f_frsize > 20 * MiB
    assert (a.fs.path_for("pvc-1") / "f").read_text() == "kept"


class OneSource:
    """The source claim ``ns/src`` Bound to PV ``pvc-src`` of this appliance (the uid its record holds)."""

    def claim(self, namespace: str, name: str) -> dict[str, Any] | None:
        return None if name != "src" else {
            "metadata": {"namespace": namespace, "name": name, "uid": "src"},
            "spec": {"volumeName": "pvc-src", "storageClassName": "example-nfs"}, "status": {"phase": "Bound"}}

    def volume(self, name: str) -> dict[str, Any] | None:
        return {"metadata": {"name": name, "annotations": {prov.ANN_IDENTITY: IDENTITY}},
                "spec": {"capacity": {"storage": "8Mi"}}}


def test_a_directory_clone_of_a_filesystem_volume_copies_its_mounted_tree_and_refuses_an_unmounted_one(
        a: Appliance) -> None:
    """The tree is read from the source's mount, never from the bare mount point: a source not mounted (its
    remount failed at start) is refused with one event and nothing is made; mounted again, the clone copies it."""
    a.p.provision(options("pvc-src", params=FS, size="8Mi"))
    (a.fs.path_for("pvc-src") / "f").write_text("in the source's filesystem")
    a.server.exports.remove("pvc-src")  # as a failed remount at start withdraws it
    a.fs.unmount("pvc-src")
    a.p.sources = OneSource()
    a.p.clones = clones.Clones(a.root / clones.CLONES_DIR, poll=0.05)
    source = {"dataSource": {"kind": "PersistentVolumeClaim", "name": "src"}, "storageClassName": "example-nfs"}
    clone = options("pvc-2", size="8Mi", claim_spec=source)
    with pytest.raises(ProvisioningError, match=r"^cannot clone: the source volume pvc-src is a filesystem volume that "
                                                r"is not mounted; no volume is provisioned$"):
        a.p.provision(clone)
    assert not (a.root / "pvc-2").exists() and not (a.root / RECORDS_DIR / "pvc-2.json").exists()
    a.fs.mount("pvc-src", fs_type="ext4")
    deadline = time.monotonic() + 30
    while True:
        try:
            pv = a.p.provision(clone)
            break
        except InProgress:
            assert time.monotonic() < deadline, "the copy did not end"
            time.sleep(0.05)
    assert pv["spec"]["nfs"]["path"] == str(a.root / "pvc-2")
    assert (a.root / "pvc-2" / "f").read_text() == "in the source's filesystem"
    assert (a.root / "pvc-2" / "lost+found").is_dir(), "the source's tree as it is"
