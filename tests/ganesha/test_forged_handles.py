"""Forged NFS file handles (issue 12, section 1), sent by the suite's raw client (tests/support/nfsraw.py).

A client of volume A takes A's handle and rewrites the export id in it (bytes 2-3) to another export's, or
keeps the handle of a volume that was deleted or archived, then walks with LOOKUPP / LOOKUP ".." and tries
READ, CREATE (v4) and READDIRPLUS, MKDIR (v3). What holds with Ganesha 4.3 (docs/security.md):

- on a dedicated export-root filesystem mounted where the directory above has no file handles (as in the
  appliance's container: the root is overlayfs), nothing outside the export root's filesystem is read or
  created, and a deleted volume's handle is stale;
- between volumes of one filesystem nothing holds: those tests are strict xfails that say so.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import stat
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from nfs_provisioner.ganesha.exports import ExportRequest
from nfs_provisioner.ganesha.server import GaneshaServer
from nfs_provisioner.ganesha.settings import Ports, Squash
from nfs_provisioner.volumes import containment
from nfs_provisioner.volumes.directories import VolumeDirectories
from tests.support import nfsraw
from tests.support.appliance_env import Appliance
from tests.support.ganesha_env import Harness, Netns

pytestmark = pytest.mark.ganesha

CANARY = b"canary: outside the export root's filesystem\n"
SECRET_B = b"volume B's data\n"
ARCHIVED = b"data of an archived volume\n"
UP = 3
"""LOOKUPPs tried above a volume: its export root, the directory above the export root, the test's tmp dir."""


@dataclasses.dataclass
class Layout:
    """Where the export root lives (``kind``): ``container`` = an ext4 of its own mounted on an overlayfs
    (a container's root), ``host-mount`` = an ext4 of its own mounted on a host directory, ``directory`` =
    a plain directory of the host's filesystem. A canary lies right above the export root and one in the
    test's tmp dir."""

    kind: str
    export_root: Path
    above: Path

    def outside_entries(self, tmp_path: Path) -> set[str]:
        return {str(p) for p in self.above.rglob("*") if not p.is_relative_to(self.export_root)} | {
            p.name for p in tmp_path.iterdir()}


def _sh(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True)


@contextlib.contextmanager
def _layout(tmp_path: Path, kind: str) -> Iterator[tuple[Harness, Layout]]:
    above, root = tmp_path / "above", tmp_path / "above" / "export"
    above.mkdir()
    mounts: list[Path] = []
    h = Harness(tmp_path)
    try:
        if kind == "container":
            for d in ("lower", "upper", "work"):
                (tmp_path / d).mkdir()
            _sh("mount", "-t", "overlay", "overlay", "-o",
                f"lowerdir={tmp_path}/lower,upperdir={tmp_path}/upper,workdir={tmp_path}/work", str(above))
            mounts.append(above)
        root.mkdir()
        if kind in ("container", "host-mount"):
            image = tmp_path / "export-root.img"
            _sh("truncate", "-s", "64M", str(image))
            _sh("mkfs.ext4", "-q", str(image))
            _sh("mount", "-o", "loop", str(image), str(root))
            mounts.insert(0, root)
        (above / "canary").write_bytes(CANARY)
        (tmp_path / "canary").write_bytes(CANARY)
        h.export_root = root
        yield h, Layout(kind=kind, export_root=root, above=above)
    finally:
        h.close()  # Ganesha holds descriptors on the export root until it stops
        for m in mounts:
            subprocess.run(["umount", str(m)], check=False, capture_output=True)


@pytest.fixture
def contained(tmp_path: Path) -> Iterator[tuple[Harness, Layout]]:
    with _layout(tmp_path, "container") as hl:
        yield hl


ESCAPES = {
    "host-mount": "open: Ganesha (4.3, 9.14) follows LOOKUPP across the export root's mount and claims the "
                  "filesystem above",
    "directory": "open: the export root's filesystem is the host's, and a handle opens any file of it",
}
LAYOUTS = ["container", *(pytest.param(k, marks=pytest.mark.xfail(strict=True, raises=AssertionError, reason=r))
                          for k, r in ESCAPES.items())]


@pytest.fixture(params=LAYOUTS)
def layout(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Harness, Layout]]:
    with _layout(tmp_path, request.param) as hl:
        yield hl


@dataclasses.dataclass
class Volumes:
    """Volume A (the attacker's), B (another live one), a deleted and an archived one; their kept handles."""

    a_id: int
    b_id: int
    kept: dict[str, bytes]
    """'a', 'deleted', 'archived' -> a handle the client obtained while the volume was served."""


def _volumes(srv: GaneshaServer, h: Harness, get_fh: Callable[[Path], bytes]) -> Volumes:
    dirs = VolumeDirectories(h.export_root)
    ids, kept = {}, {}
    for name, content in (("vol-a", {"a.txt": b"A's own\n"}), ("vol-b", {"b.txt": SECRET_B}),
                          ("vol-deleted", {"d.txt": b"deleted\n"}), ("vol-archived", {"c.txt": ARCHIVED})):
        d = h.volume(name, content=content)
        ids[name] = srv.exports.add(ExportRequest(name=name, path=d)).export_id
        kept[name] = get_fh(d)
    for name in ("vol-deleted", "vol-archived"):
        srv.exports.remove(name)
    assert dirs.delete("vol-deleted")
    assert dirs.archive("vol-archived") is not None
    return Volumes(a_id=ids["vol-a"], b_id=ids["vol-b"],
                   kept={"a": kept["vol-a"], "deleted": kept["vol-deleted"], "archived": kept["vol-archived"]})


def _v4_fh(c: nfsraw.Nfs4, path: Path) -> bytes:
    return c.path_fh(*path.parts[1:])


# --- NFSv4 -----------------------------------------------------------------------------------------------------------


def _v4_attempts(c: nfsraw.Nfs4, fh: bytes, tag: str) -> list[bytes]:
    """From ``fh`` and up to UP parents: READ every name a test planted outside, and CREATE a directory;
    returns what was read."""
    read = []
    for k in range(UP + 1):
        ups = [c.lookupp() for _ in range(k)]
        for name in ("canary", "b.txt", "c.txt"):
            r = c.compound([c.putfh(fh), *ups, c.lookup(name), c.read()])
            if r.status == nfsraw.NFS4_OK:
                read.append(r.last(nfsraw.OP_READ).data)
        c.compound([c.putfh(fh), *ups, c.mkdir(f"forged-{tag}-{k}")])
    return read


def test_forged_v4_handles_stay_on_the_export_roots_filesystem(
        layout: tuple[Harness, Layout], tmp_path: Path) -> None:
    h, where = layout
    srv = h.server()
    with nfsraw.Nfs4(host="127.0.0.1", port=h.port) as c:
        vols = _volumes(srv, h, lambda p: _v4_fh(c, p))
        before = where.outside_entries(tmp_path)

        stale = c.compound([c.putfh(vols.kept["deleted"]), c.getattr()])
        assert stale.status_name == "NFS4ERR_STALE", "a deleted volume's handle is stale"
        for target in (vols.a_id, vols.b_id):
            forged = c.compound([c.putfh(nfsraw.with_export_id(vols.kept["deleted"], target)), c.getattr()])
            assert forged.status_name == "NFS4ERR_STALE", f"deleted volume's handle as export {target}"

        for kept in ("a", "archived"):
            for target in (vols.a_id, vols.b_id):
                fh = nfsraw.with_export_id(vols.kept[kept], target)
                read = _v4_attempts(c, fh, f"{kept}-as-{target}")
                assert CANARY not in read, f"{kept}'s handle as export {target} read a file outside the export root"

    assert (where.above / "canary").read_bytes() == CANARY
    assert where.outside_entries(tmp_path) == before, "nothing was created outside the export root's filesystem"


# --- NFSv3 -----------------------------------------------------------------------------------------------------------


def _v3_server(h: Harness) -> tuple[GaneshaServer, Netns]:
    ns = h.make_netns()
    # rpcbind insists on 0.0.0.0:111: NFSv3 runs in its own network and mount namespaces, on the standard ports.
    srv = h.server(netns=ns.path, mountns=ns.mountns, nfsv3=True, bind_addr=None, ports=Ports())
    return srv, ns


def _v3_attempts(c: nfsraw.Nfs3, fh: bytes, tag: str) -> tuple[list[bytes], set[str]]:
    """LOOKUP '..' up to UP times; at each level READDIRPLUS, READ every entry and planted name, MKDIR;
    returns what was read and the names listed."""
    read: list[bytes] = []
    listed: set[str] = set()
    level = fh
    for k in range(UP + 1):
        if k:
            up = c.lookup(level, "..")
            if up.status != nfsraw.NFS3_OK:
                break
            level = up.fh
        listing = c.readdirplus(level)
        listed |= set(listing.names)
        handles = [h for h in listing.names.values() if h]
        for name in ("canary", "b.txt", "c.txt"):
            found = c.lookup(level, name)
            if found.status == nfsraw.NFS3_OK:
                handles.append(found.fh)
        for child in handles:
            r = c.read(child)
            if r.status == nfsraw.NFS3_OK:
                read.append(r.data)
        c.mkdir(level, f"forged-{tag}-{k}")
    return read, listed


def test_forged_v3_handles_stay_on_the_export_roots_filesystem(
        layout: tuple[Harness, Layout], tmp_path: Path) -> None:
    h, where = layout
    srv, ns = _v3_server(h)
    ports = Ports()
    with nfsraw.Mount3(host="127.0.0.1", port=ports.mountd, netns=ns.path) as m, \
            nfsraw.Nfs3(host="127.0.0.1", port=ports.nfs, netns=ns.path) as c:
        def mnt(p: Path) -> bytes:
            r = m.mnt(str(p))
            assert r.status == 0, f"MNT {p}: status {r.status}"
            return r.fh

        vols = _volumes(srv, h, mnt)
        before = where.outside_entries(tmp_path)
        for target in (vols.a_id, vols.b_id):
            stale = nfsraw.with_export_id(vols.kept["deleted"], target)
            assert c.readdirplus(stale).status == nfsraw.NFS3ERR_STALE, "a deleted volume's handle is stale"
            assert c.lookup(stale, "..").status == nfsraw.NFS3ERR_STALE
        for kept in ("a", "archived"):
            for target in (vols.a_id, vols.b_id):
                fh = nfsraw.with_export_id(vols.kept[kept], target)
                read, listed = _v3_attempts(c, fh, f"{kept}-as-{target}")
                assert CANARY not in read, f"{kept}'s handle as export {target} read a file outside the export root"
                assert "canary" not in listed, f"{kept}'s handle as export {target} listed the directory above"

    assert (where.above / "canary").read_bytes() == CANARY
    assert where.outside_entries(tmp_path) == before, "nothing was created outside the export root's filesystem"


# --- root-squashed clients and the appliance's own directories ------------------------------------------------------


def test_root_squashed_forgers_cannot_enter_the_appliances_state_or_an_archived_volume(
        contained: tuple[Harness, Layout]) -> None:
    """When every export squashes root, a forged handle reaches the export root as the anonymous user:
    the appliance's own directories and archived volumes are root's only (0700)."""
    h, _ = contained
    srv = h.server()
    dirs = VolumeDirectories(h.export_root)
    ids = {}
    with nfsraw.Nfs4(host="127.0.0.1", port=h.port) as c:
        for name in ("vol-a", "vol-b", "vol-archived"):
            d = h.volume(name, content={"f.txt": f"{name}\n".encode()})
            ids[name] = srv.exports.add(ExportRequest(name=name, path=d, squash=Squash.ROOT_ID_SQUASH)).export_id
        archived_fh = _v4_fh(c, h.export_root / "vol-archived")
        srv.exports.remove("vol-archived")
        assert dirs.archive("vol-archived") is not None
        forged_root = [c.putfh(nfsraw.with_export_id(_v4_fh(c, h.export_root / "vol-a"), ids["vol-b"])), c.lookupp()]

        assert c.compound([*forged_root, c.lookup("vol-b"), c.lookup("f.txt"), c.read()]).status == nfsraw.NFS4_OK, \
            "the export root itself is reachable (one filesystem, see the xfails below)"
        for own in (".ganesha", ".archive"):
            r = c.compound([*forged_root, c.lookup(own), c.lookup("exports.d" if own == ".ganesha" else "x")])
            assert r.status_name == "NFS4ERR_ACCESS", f"{own}: {r.status_name}"
        kept = c.compound([c.putfh(nfsraw.with_export_id(archived_fh, ids["vol-b"])), c.lookup("f.txt"), c.read()])
        assert kept.status_name == "NFS4ERR_ACCESS", "an archived volume's kept handle enters it no more"
    for state_dir in (srv.settings.config_path, srv.settings.recovery_path):
        assert stat.S_IMODE(state_dir.stat().st_mode) == 0o700, state_dir


# --- what does not hold: volumes of one filesystem -------------------------------------------------------------------

OPEN = ("open with Ganesha 4.3 and 9.14: all volumes are directories of one filesystem, a handle names an inode of "
        "it and Ganesha has no subtree check (docs/security.md)")


@pytest.mark.xfail(strict=True, raises=AssertionError, reason=OPEN)
def test_a_forged_v4_handle_reads_nothing_of_another_live_volume(contained: tuple[Harness, Layout]) -> None:
    h, _ = contained
    srv = h.server()
    with nfsraw.Nfs4(host="127.0.0.1", port=h.port) as c:
        vols = _volumes(srv, h, lambda p: _v4_fh(c, p))
        r = c.compound([c.putfh(nfsraw.with_export_id(vols.kept["a"], vols.b_id)), c.lookupp(),
                        c.lookup("vol-b"), c.lookup("b.txt"), c.read()])
        assert r.last(r.ops[-1].op).data != SECRET_B


@pytest.mark.xfail(strict=True, raises=AssertionError, reason=OPEN)
def test_a_handle_kept_from_an_archived_volume_reads_nothing(contained: tuple[Harness, Layout]) -> None:
    h, _ = contained
    srv = h.server()
    with nfsraw.Nfs4(host="127.0.0.1", port=h.port) as c:
        vols = _volumes(srv, h, lambda p: _v4_fh(c, p))
        r = c.compound([c.putfh(nfsraw.with_export_id(vols.kept["archived"], vols.a_id)),
                        c.lookup("c.txt"), c.read()])
        assert r.last(r.ops[-1].op).data != ARCHIVED


# --- the option that would hold: a filesystem per volume -----------------------------------------------------------


def test_with_a_filesystem_per_volume_relabelled_handles_are_stale(tmp_path: Path) -> None:
    """Not what the appliance does (one filesystem for all volumes): the measurement behind docs/security.md's
    'a filesystem per volume holds'. Ganesha checks that a handle's filesystem is one the named export claims."""
    h = Harness(tmp_path)
    mounts: list[Path] = []
    try:
        for name in ("vol-a", "vol-b"):
            image = tmp_path / f"{name}.img"
            _sh("truncate", "-s", "32M", str(image))
            _sh("mkfs.ext4", "-q", str(image))
            d = h.volume(name)
            _sh("mount", "-o", "loop", str(image), str(d))
            mounts.append(d)
            (d / "sub").mkdir()
        (h.export_root / "canary").write_bytes(CANARY)
        srv = h.server()
        ids = {n: srv.exports.add(ExportRequest(name=n, path=h.export_root / n)).export_id for n in ("vol-a", "vol-b")}
        with nfsraw.Nfs4(host="127.0.0.1", port=h.port) as c:
            a, a_sub, b = (_v4_fh(c, h.export_root / p) for p in ("vol-a", "vol-a/sub", "vol-b"))
            for fh in (a, a_sub):
                r = c.compound([c.putfh(nfsraw.with_export_id(fh, ids["vol-b"])), c.getattr()])
                assert r.status_name == "NFS4ERR_STALE", "A's handle named as export B"
            b_fsid = b[5:15]
            r = c.compound([c.putfh(a[:5] + b_fsid + a[15:]), c.getattr()])
            assert r.status_name == "NFS4ERR_STALE", "A's export id with B's filesystem id"
            r = c.compound([c.putfh(a_sub), c.lookupp(), c.lookupp(), c.lookup("canary")])
            assert r.status_name == "NFS4ERR_NOENT", "LOOKUPP at A's root goes to the pseudo filesystem"
    finally:
        h.close()
        for m in mounts:
            subprocess.run(["umount", str(m)], check=False, capture_output=True)


# --- the start-up warning --------------------------------------------------------------------------------------------


def test_an_export_root_that_is_a_mere_directory_is_named_in_a_start_up_warning(appliance: Appliance) -> None:
    appliance.start()
    lines = [line for line in appliance.text().splitlines() if "forges NFS file handles" in line]
    assert len(lines) == 1, appliance.log()
    assert "WARNING" in lines[0] and f"export root {appliance.export_root.resolve()} is not a filesystem of its own" \
        in lines[0]
    for own in (".ganesha", ".provisioning"):
        assert stat.S_IMODE((appliance.export_root / own).stat().st_mode) == 0o700, own


def test_the_containment_check_tells_the_three_layouts_apart(contained: tuple[Harness, Layout],
                                                             tmp_path: Path) -> None:
    _, where = contained
    assert containment.problems(where.export_root) == [], "own filesystem, overlay above: contained"
    assert "is not a filesystem of its own" in containment.problems(tmp_path)[0]
    host_mount = tmp_path / "on-host"
    host_mount.mkdir()
    _sh("mount", "-o", "loop", str(tmp_path / "export-root.img"), str(host_mount))
    try:
        (found,) = containment.problems(host_mount)
        assert f"the directory above it ({tmp_path}," in found and "walk up (LOOKUPP)" in found
    finally:
        _sh("umount", str(host_mount))
    assert os.path.ismount(where.export_root)
