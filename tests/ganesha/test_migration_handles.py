"""Clients of the Go nfs-provisioner keep their mounts across the switch (issue 25, docs/migration.md).

A client's handle is Ganesha's wire handle: version, flags, the export id, then the VFS part (the filesystem
identity, here the device numbers with ``fsid_device = true``, and the kernel's handle); neither the export's
path nor its Filesystem_Id is in it (tests/ganesha/test_handle_stability.py). So Debian 12's Ganesha 4.3, which the Go
provisioner's images run, and the 9.14 we run hand out the same handle for the same file of the same export id
on the same filesystem. Proven with the fixture's real export root and its unchanged ``vfs.conf``: handles of
every file, directory and symlink taken from 4.3 over NFSv4 and NFSv3, 4.3 stopped, our Ganesha started on the
same directory with each volume exported under the Go Export_Id, and every handle read again.

Here our side is the Ganesha manager with the exports configured by hand (same Export_Id and squash; the paths
are the extracted root's own, the manager running in the host's mount namespace); the appliance adopting the
volumes itself, at /export, is tests/node/test_migration_node.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from nfs_provisioner.ganesha.exports import ExportRequest
from nfs_provisioner.ganesha.settings import Ports, Squash
from tests.support import go_fixture, nfsraw
from tests.support.ganesha_env import Harness

pytestmark = pytest.mark.ganesha


def test_go_exports_are_the_fixtures_four_volumes() -> None:
    exports = go_fixture.go_exports((go_fixture.FIXTURE / "vfs.conf").read_text())
    assert [(e.export_id, e.squash) for e in exports] == [
        (1, "no_root_squash"), (2, "no_root_squash"), (3, "root_id_squash"), (4, "no_root_squash")]
    assert all(e.path.parent == go_fixture.GO_EXPORT_ROOT and e.name.startswith("pvc-") for e in exports)


def test_handles_from_ganesha_4_3_read_the_same_bytes_from_our_ganesha(h: Harness, tmp_path: Path) -> None:
    assert go_fixture.version_of_host_ganesha().startswith("4."), "the host's Ganesha is the Go images' 4.x"
    root = go_fixture.extract(tmp_path / "root")
    exports = go_fixture.go_exports((root / "vfs.conf").read_text())
    go = go_fixture.GoGanesha(root, tmp_path)
    try:
        go.start()
        v4 = go_fixture.take_v4(exports, port=2049, netns=go.ns.path)
        v3 = go_fixture.take_v3(exports, port=2049, mnt_port=go_fixture.GO_MNT_PORT, netns=go.ns.path)
        go.stop()
        assert len(v4) == 4 * 6 and len(v3) == 4 * 2
        for t in v4:
            vol, rel = t.path.split("/", 1)
            if rel in go_fixture.FILES:
                assert t.data == (root / vol / rel).read_bytes(), f"4.3 read {t.path} as it is on disk"
        assert {nfsraw.handle_export_id(t.fh) for t in v4} == {1, 2, 3, 4}

        h.export_root = root
        srv = h.server(netns=go.ns.path, mountns=go.ns.mountns, nfsv3=True, bind_addr=None, ports=Ports(),
                       device_based_fsids=True)
        for e in exports:
            srv.exports.add(ExportRequest(name=e.name, path=root / e.name, squash=Squash(e.squash),
                                          export_id=e.export_id))
        assert go_fixture.reread_v4(v4, port=2049, netns=go.ns.path) == {t.path: "same" for t in v4}
        assert go_fixture.reread_v3(v3, port=2049, netns=go.ns.path) == {t.path: "same" for t in v3}
        again = go_fixture.take_v4(exports_at(exports, root), port=2049, netns=go.ns.path)
        assert [t.fh for t in again] == [t.fh for t in v4], "9.14 hands out the very same handles"
    finally:
        go.close()


def exports_at(exports: list[go_fixture.GoExport], root: Path) -> list[go_fixture.GoExport]:
    """The same exports at their paths under ``root`` (where the manager's exports' Pseudo paths are)."""
    return [go_fixture.GoExport(e.export_id, root / e.name, e.squash) for e in exports]
