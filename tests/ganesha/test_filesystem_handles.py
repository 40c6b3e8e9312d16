"""The boundary of filesystem volumes (issue 23): forged NFS file handles, sent by the suite's raw client
(tests/support/nfsraw.py) to a real NFS-Ganesha, reach nothing outside their own volume.

The export root is a plain directory of the host's disk (the worst layout: pod.yaml's emptyDir, the manifests'
hostPath), with a canary in it and one above it. Volumes A, B, a deleted and an archived one are filesystem
volumes made by ``nfs_provisioner.volumes.filesystems``. The same forgeries that read another volume and the
host's files in tests/ganesha/test_forged_handles.py (strict xfails there for directory volumes) are tried here: A's
handle relabelled with B's export id, LOOKUPP / LOOKUP ".." walks from a volume's root, kept handles of a deleted
and an archived volume, a handle naming the export root's own filesystem.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from nfs_provisioner.ganesha.exports import ExportRequest
from nfs_provisioner.ganesha.server import GaneshaServer
from nfs_provisioner.ganesha.settings import Ports
from nfs_provisioner.volumes.filesystems import FilesystemVolumes
from tests.support import filesystem_env, nfsraw
from tests.support.ganesha_env import Harness

pytestmark = pytest.mark.ganesha

CANARY = b"canary: the export root's filesystem, outside every volume\n"
SECRET_B = b"volume B's data\n"
ARCHIVED = b"data of an archived volume\n"
DELETED = b"data of a deleted volume\n"
UP = 3
MiB = 2**20


@dataclasses.dataclass
class Setup:
    h: Harness
    vols: FilesystemVolumes
    above: Path

    def outside(self) -> dict[str, bytes | None]:
        """Everything under ``above`` except volume A's own files (it may be written through A's real handle):
        the export root, the appliance's own state, volume B's files, the host directory above."""
        found: dict[str, bytes | None] = {}
        for p in sorted(self.above.rglob("*")):
            if p.is_relative_to(self.vols.path_for("vol-a")) or p.is_relative_to(self.h.export_root / ".images"):
                continue
            found[str(p)] = p.read_bytes() if p.is_file() and not p.is_symlink() else None
        return found


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[Setup]:
    above = tmp_path / "above"
    root = above / "export"
    root.mkdir(parents=True)
    (above / "canary").write_bytes(CANARY)
    (root / "canary").write_bytes(CANARY)
    h = Harness(tmp_path)
    h.export_root = root
    with filesystem_env.cleaned(tmp_path):
        try:
            yield Setup(h=h, vols=FilesystemVolumes(root), above=above)
        finally:
            h.close()  # Ganesha holds descriptors on the volumes until it stops


@dataclasses.dataclass
class Volumes:
    a_id: int
    b_id: int
    kept: dict[str, bytes]
    """'a', 'a-sub', 'b', 'deleted', 'archived' -> a handle the client obtained while the volume was served."""


def _make(s: Setup) -> None:
    for name, fs_type, content in VOLUMES:
        path = s.vols.create(name, size=300 * MiB if fs_type == "xfs" else 8 * MiB, fs_type=fs_type, gid=None)
        for fname, data in content.items():
            (path / fname).write_bytes(data)
        (path / "sub").mkdir()


VOLUMES = (("vol-a", "ext4", {"a.txt": b"A's own\n"}), ("vol-b", "xfs", {"b.txt": SECRET_B}),
           ("vol-deleted", "ext4", {"d.txt": DELETED}), ("vol-archived", "ext4", {"c.txt": ARCHIVED}))


def _volumes(s: Setup, srv: GaneshaServer, get_fh: Callable[[Path], bytes],
             unmount_elsewhere: Callable[[Path], None] = lambda p: None) -> Volumes:
    """Export the volumes (made by :func:`_make` unless they exist), keep their handles, then delete one and
    archive another (``unmount_elsewhere``: also unmount in Ganesha's own mount namespace, when it has one)."""
    ids, kept = {}, {}
    if not s.vols.image_for("vol-a").exists():
        _make(s)
    for name, _, _ in VOLUMES:
        path = s.vols.path_for(name)
        ids[name] = srv.exports.add(ExportRequest(name=name, path=path)).export_id
        kept[name] = get_fh(path)
        if name == "vol-a":
            kept["vol-a-sub"] = get_fh(path / "sub")
    for name in ("vol-deleted", "vol-archived"):
        srv.exports.remove(name)
        unmount_elsewhere(s.vols.path_for(name))
    assert s.vols.delete("vol-deleted")
    assert s.vols.archive("vol-archived") is not None
    return Volumes(a_id=ids["vol-a"], b_id=ids["vol-b"],
                   kept={"a": kept["vol-a"], "a-sub": kept["vol-a-sub"], "b": kept["vol-b"],
                         "deleted": kept["vol-deleted"], "archived": kept["vol-archived"]})


def _v4_fh(c: nfsraw.Nfs4, path: Path) -> bytes:
    return c.path_fh(*path.parts[1:])


# --- NFSv4 -----------------------------------------------------------------------------------------------------------


def test_forged_v4_handles_stay_in_their_filesystem_volume(setup: Setup) -> None:
    h = setup.h
    srv = h.server()
    with nfsraw.Nfs4(host="127.0.0.1", port=h.port) as c:
        vols = _volumes(setup, srv, lambda p: _v4_fh(c, p))
        before = setup.outside()

        for kept in ("deleted", "archived"):
            for target in (None, vols.a_id, vols.b_id):
                fh = vols.kept[kept] if target is None else nfsraw.with_export_id(vols.kept[kept], target)
                r = c.compound([c.putfh(fh), c.getattr()])
                assert r.status_name == "NFS4ERR_STALE", f"{kept} volume's handle as export {target}: {r.status_name}"

        for kept in ("a", "a-sub"):
            fh = nfsraw.with_export_id(vols.kept[kept], vols.b_id)
            r = c.compound([c.putfh(fh), c.getattr()])
            assert r.status_name == "NFS4ERR_STALE", f"A's {kept} handle named as export B: {r.status_name}"

        # A's handles relabelled as export B, then walked up and around: nothing of B, of the deleted and the
        # archived volume, of the export root or above it is read.
        read: list[bytes] = []
        for kept in ("a", "a-sub"):
            fh = nfsraw.with_export_id(vols.kept[kept], vols.b_id)
            for k in range(UP + 1):
                ups = [c.lookupp() for _ in range(k)]
                for name in ("canary", "b.txt", "c.txt", "d.txt"):
                    r = c.compound([c.putfh(fh), *ups, c.lookup(name), c.read()])
                    if r.status == nfsraw.NFS4_OK:
                        read.append(r.last(nfsraw.OP_READ).data)
                for name in ("vol-b", "vol-archived", ".images", ".archive"):
                    r = c.compound([c.putfh(fh), *ups, c.lookup(name), c.lookup("b.txt"), c.read()])
                    if r.status == nfsraw.NFS4_OK:
                        read.append(r.last(nfsraw.OP_READ).data)
                c.compound([c.putfh(fh), *ups, c.mkdir(f"forged-{kept}-{k}")])
        assert read == [], read

        # A's own handles walked up: LOOKUPP at A's root leads into the pseudo filesystem (the tree of export
        # paths every client may browse from PUTROOTFH), never to the export root's directory: no canary, no
        # image, no archive there, nothing created.
        for kept, depth in (("a", 1), ("a-sub", 2)):
            ups = [c.lookupp() for _ in range(depth)]
            for name in ("canary", ".images", ".archive", "vol-archived"):
                r = c.compound([c.putfh(vols.kept[kept]), *ups, c.lookup(name)])
                assert r.status_name == "NFS4ERR_NOENT", f"{kept} up {depth}, {name}: {r.status_name}"
            for k in range(depth, UP + 1):
                for name in ("canary", "c.txt", "d.txt"):
                    r = c.compound([c.putfh(vols.kept[kept]), *[c.lookupp() for _ in range(k)], c.lookup(name),
                                    c.read()])
                    assert r.status != nfsraw.NFS4_OK, (kept, k, name)
                c.compound([c.putfh(vols.kept[kept]), *[c.lookupp() for _ in range(k)], c.mkdir(f"up-{kept}-{k}")])

    assert setup.outside() == before, "nothing outside volume A was created, changed or removed"


def _with_fsid_of(fh: bytes, path: Path) -> bytes:
    """The handle naming the filesystem of ``path`` instead (Ganesha's VFS handle with device-based filesystem ids:
    bytes 6-13 are the device's major and minor, little endian; the rest, the kernel's handle of the root inode,
    is kept: an ext4 volume's root is inode 2, as is the host's root directory)."""
    dev = os.stat(path).st_dev
    return fh[:6] + os.major(dev).to_bytes(4, "little") + os.minor(dev).to_bytes(4, "little") + fh[14:]


def test_a_volumes_handle_naming_the_export_roots_or_the_hosts_filesystem_is_stale(setup: Setup) -> None:
    """Measured before the volumes were mounted in a tmpfs of their own: with A mounted straight on the export root
    (a directory of the host's disk), this forgery with A's export id read /etc/hostname of the host."""
    h = setup.h
    srv = h.server()
    with nfsraw.Nfs4(host="127.0.0.1", port=h.port) as c:
        vols = _volumes(setup, srv, lambda p: _v4_fh(c, p))
        assert _v4_fh(c, setup.vols.path_for("vol-a"))[6:14] != _with_fsid_of(vols.kept["a"], h.export_root)[6:14]
        for what, path in (("export root's", h.export_root), ("host's root", Path("/")),
                           ("tmpfs of the mount points'", setup.vols.mounts),
                           ("volume B's", setup.vols.path_for("vol-b"))):
            forged = _with_fsid_of(vols.kept["a"], path)
            for ops in ([c.getattr()], [c.lookup("canary"), c.read()],
                        [c.lookup("etc"), c.lookup("hostname"), c.read()]):
                r = c.compound([c.putfh(forged), *ops])
                assert r.status_name == "NFS4ERR_STALE", f"A's handle with the {what} filesystem id: {r.status_name}"


def test_a_handle_naming_the_export_roots_own_filesystem_is_stale(setup: Setup) -> None:
    """A handle of the export root's own filesystem (taken while a directory there was exported, e.g. a directory
    volume deleted since) opens nothing once no export claims that filesystem, whichever export it names."""
    h = setup.h
    srv = h.server()
    with nfsraw.Nfs4(host="127.0.0.1", port=h.port) as c:
        vols = _volumes(setup, srv, lambda p: _v4_fh(c, p))
        d = h.export_root / "dir-volume"
        d.mkdir()
        srv.exports.add(ExportRequest(name="dir-volume", path=d))
        dir_fh = _v4_fh(c, d)
        srv.exports.remove("dir-volume")
        d.rmdir()
        root_fsid = dir_fh[5:15]
        for target in (vols.a_id, vols.b_id):
            r = c.compound([c.putfh(nfsraw.with_export_id(dir_fh, target)), c.lookupp(), c.lookup("canary"),
                            c.read()])
            assert r.status_name == "NFS4ERR_STALE", f"root filesystem's handle as export {target}: {r.status_name}"
        a = vols.kept["a"]
        r = c.compound([c.putfh(a[:5] + root_fsid + a[15:]), c.getattr()])
        assert r.status_name == "NFS4ERR_STALE", f"A's export id with the root filesystem's id: {r.status_name}"


# --- NFSv3 -----------------------------------------------------------------------------------------------------------


def test_forged_v3_handles_stay_in_their_filesystem_volume(setup: Setup) -> None:
    h = setup.h
    _make(setup)  # before Ganesha's mount namespace is made: it starts with a copy of these mounts
    ns = h.make_netns()
    srv = h.server(netns=ns.path, mountns=ns.mountns, nfsv3=True, bind_addr=None, ports=Ports())
    ports = Ports()

    def unmount_in_ganeshas_namespace(path: Path) -> None:
        subprocess.run(["nsenter", f"--mount={ns.mountns}", "umount", str(path)], check=True)

    with nfsraw.Mount3(host="127.0.0.1", port=ports.mountd, netns=ns.path) as m, \
            nfsraw.Nfs3(host="127.0.0.1", port=ports.nfs, netns=ns.path) as c:
        def mnt(p: Path) -> bytes:
            r = m.mnt(str(p))
            assert r.status == 0, f"MNT {p}: status {r.status}"
            return r.fh

        vols = _volumes(setup, srv, mnt, unmount_in_ganeshas_namespace)
        before = setup.outside()
        for kept in ("deleted", "archived"):
            for target in (vols.a_id, vols.b_id):
                fh = nfsraw.with_export_id(vols.kept[kept], target)
                assert c.readdirplus(fh).status == nfsraw.NFS3ERR_STALE, f"{kept} as {target}"
                assert c.lookup(fh, "..").status == nfsraw.NFS3ERR_STALE
        read: list[bytes] = []
        listed: set[str] = set()
        for target in (vols.a_id, vols.b_id):
            level = nfsraw.with_export_id(vols.kept["a"], target)
            for k in range(UP + 1):
                if k:
                    up = c.lookup(level, "..")
                    if up.status != nfsraw.NFS3_OK:
                        break
                    level = up.fh
                listing = c.readdirplus(level)
                listed |= set(listing.names)
                handles = [fh for fh in listing.names.values() if fh]
                for name in ("canary", "b.txt", "c.txt", "vol-b"):
                    found = c.lookup(level, name)
                    if found.status == nfsraw.NFS3_OK:
                        handles.append(found.fh)
                for child in handles:
                    r = c.read(child)
                    if r.status == nfsraw.NFS3_OK:
                        read.append(r.data)
                c.mkdir(level, f"forged-{target}-{k}")
        assert CANARY not in read and SECRET_B not in read and ARCHIVED not in read, read
        assert not listed & {"canary", "vol-b", ".images", ".archive", "export"}, listed
    assert setup.outside() == before, "nothing outside volume A was created, changed or removed"


# --- what does not hold: directory volumes beside filesystem volumes -------------------------------------------------

MIXED = ("open: directory volumes' exports claim the export root's filesystem, where the images lie; a client of one "
         "that forges handles walks to .images and reads a filesystem volume's image (docs/filesystem-volumes.md, "
         "Limits)")


@pytest.mark.xfail(strict=True, raises=AssertionError, reason=MIXED)
def test_beside_directory_volumes_a_forged_handle_reads_nothing_of_a_filesystem_volume(setup: Setup) -> None:
    h = setup.h
    srv = h.server()
    secret = b"filesystem volume's secret, " * 4
    path = setup.vols.create("vol-fs", size=8 * MiB, fs_type="ext4", gid=None)
    (path / "secret").write_bytes(secret)
    srv.exports.add(ExportRequest(name="vol-fs", path=path))
    ids = {}
    for name in ("dir-1", "dir-2"):
        (h.export_root / name / "sub").mkdir(parents=True)
        ids[name] = srv.exports.add(ExportRequest(name=name, path=h.export_root / name)).export_id
    os.sync()
    with nfsraw.Nfs4(host="127.0.0.1", port=h.port) as c:
        forged = nfsraw.with_export_id(_v4_fh(c, h.export_root / "dir-1" / "sub"), ids["dir-2"])
        image = b""
        for offset in range(0, 8 * MiB, 65536):
            r = c.compound([c.putfh(forged), c.lookupp(), c.lookupp(), c.lookup(".images"), c.lookup("vol-fs.img"),
                            c.read(offset=offset)])
            if r.status != nfsraw.NFS4_OK:
                break
            image += r.last(nfsraw.OP_READ).data
    assert secret not in image, "a directory volume's client read a filesystem volume's data from its image"
