"""Filesystem volumes (``isolation: filesystem``) through the Linux kernel NFS client, inside User-Mode Linux: two
steps of tests/support/uml_kclient.py (same boot, same appliance; UML's root has every capability and the ``loop``
module, so the appliance makes real loop devices, ext4 and XFS on its XFS export root).

- :func:`sized_and_grown`: ``df`` on the kernel mount is the claim's size, writes stop with ENOSPC there, and an
  expansion of the claim is seen by the same mount (``df`` grows, writes go on) without a remount.
- :func:`forged_handles`: the kernel client's own file handles (``name_to_handle_at`` on an NFS mount embeds the
  server's handle; ``open_by_handle_at`` sends it to the server in a GETATTR, fs/nfs/export.c) rewritten to name
  another export, another volume's filesystem, the export root's filesystem, or a deleted or archived volume:
  every one is refused by the server; ``..`` above a volume does not leave it.
"""

from __future__ import annotations

import ctypes
import errno
import os
import re
import struct
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tests.support import nfsraw

if TYPE_CHECKING:
    from tests.support.uml_kclient import Flow

MiB = 1 << 20
FS_PARAMS = {"isolation": "filesystem"}
CASES = (("ext4", "16Mi", "32Mi"), ("xfs", "300Mi", "400Mi"))
"""fsType, the claim's size, the size it is expanded to (300Mi: XFS's smallest)."""
LEFT_FOR_THE_CLIENT = 4 * MiB
"""XFS: the bulk of the volume is taken on the server (fallocate); the client fills the rest over NFS."""
AT_FDCWD = -100
HANDLE_BUF = 128
"""MAX_HANDLE_SZ: the most ``name_to_handle_at`` takes (more is EINVAL); the NFS client's handle is 12 bytes of its
own, 2 of size and the server's handle."""
EMBED = 12
"""fs/nfs/export.c: three u32 (fileid high, low, type), then ``struct nfs_fh`` (u16 size, the server's bytes)."""
_libc = ctypes.CDLL(None, use_errno=True)


# ---------------------------------------------------------------------- df, ENOSPC, expansion


def sized_and_grown(flow: Flow) -> dict[str, Any]:
    """Per fsType: a claim of a filesystem class, mounted as the kubelet mounts it; ``df`` on the mount is the
    volume's own filesystem (at most the claim, at least 75% of it; the export root's is another size); writes
    through the mount stop with ENOSPC with no more than the claim written; the claim is expanded and the same
    mount (same superblock, a file open since before still readable) shows the new size and takes more writes."""
    out = {}
    try:
        for fs_type, size, grown in CASES:
            out[fs_type] = _sized_and_grown(flow, fs_type, size, grown)
    finally:  # later steps (the kernel-server mode exports every volume) find none of these
        delete_claims(flow, [f"fs-{fs_type}-kc" for fs_type, _, _ in CASES])
    return out


def delete_claims(flow: Flow, claims: list[str]) -> None:
    """Delete ``claims`` (those that exist) and wait until their PVs are gone (the appliance removed the volumes)."""
    for claim in claims:
        pv = flow.sh("kubectl", "get", "pvc", claim, "-o", "jsonpath={.spec.volumeName}", check=False)
        if pv.returncode != 0:
            continue
        flow.kubectl("delete", "pvc", claim, "--wait=false")
        if pv.stdout:
            name = pv.stdout

            def gone(name: str = name) -> bool:
                return flow.sh("kubectl", "get", "pv", name, check=False).returncode != 0
            flow.until(gone, f"PV {name} of claim {claim} deleted")


def _sized_and_grown(flow: Flow, fs_type: str, size: str, grown: str) -> dict[str, Any]:
    name = f"fs-{fs_type}-kc"
    pv = flow.class_and_claim(name, params={**FS_PARAMS, "fsType": fs_type}, size=size, expand=True)
    server = Path(pv["spec"]["nfs"]["path"])
    claim, claim_grown = _bytes(size), _bytes(grown)
    r: dict[str, Any] = {"server_path": str(server)}
    with flow.mounted(pv) as mnt:
        r["df_on_mount_bytes"] = _df(mnt)
        r["df_on_server_volume_bytes"] = _df(server)
        r["df_of_export_root_bytes"] = _df(flow.export)
        r["client_block_bytes"] = os.statvfs(mnt).f_frsize
        # The client counts the server's bytes in its own blocks, rounded up (fs/nfs/super.c, nfs_statfs).
        assert 0 <= r["df_on_mount_bytes"] - r["df_on_server_volume_bytes"] < r["client_block_bytes"], r
        assert 0.75 * claim < r["df_on_mount_bytes"] <= claim, f"df on the mount is not the claim's {size}: {r}"
        assert r["df_of_export_root_bytes"] != r["df_on_mount_bytes"], r
        kept = open(mnt / "kept-open", "w+b")  # noqa: SIM115 - held across the expansion
        try:
            kept.write(b"written before the expansion\n")
            kept.flush()
            os.fsync(kept.fileno())
            device = os.stat(mnt).st_dev
            if fs_type == "xfs":  # the bulk on the server, the rest over NFS
                _fallocate_all_but(server / "bulk", LEFT_FOR_THE_CLIENT)
            started = time.monotonic()
            r["write_error"], r["written_by_client"] = flow.fill(mnt / "fill-1")
            r["fill_seconds"] = round(time.monotonic() - started, 1)
            r["used_when_full_bytes"] = _used(server)
            assert r["write_error"] == "ENOSPC", f"writes did not stop with ENOSPC: {r}"
            assert r["used_when_full_bytes"] <= claim, f"the volume holds more than the claim: {r}"
            assert r["written_by_client"] >= (MiB if fs_type == "xfs" else claim // 2), r
            offset = _log_size(flow)
            flow.kubectl("patch", "pvc", name, "-p",
                         f'{{"spec":{{"resources":{{"requests":{{"storage":"{grown}"}}}}}}}}')
            patched = time.monotonic()
            flow.until(lambda: flow.kubectl("get", "pvc", name, "-o", "jsonpath={.status.capacity.storage}")
                       == grown, f"claim capacity {grown}")

            def df_grown() -> bool:
                r["df_on_mount_after_expansion_bytes"] = _df(mnt)
                return bool(r["df_on_mount_after_expansion_bytes"] > claim)
            flow.until(df_grown, f"df on the mount showing the grown {grown}", timeout=60)
            r["seconds_patch_to_df_grown"] = round(time.monotonic() - patched, 2)
            assert 0.75 * claim_grown < r["df_on_mount_after_expansion_bytes"] <= claim_grown, r
            r["how_grown"] = _how_grown(flow, offset, pv["metadata"]["name"])
            assert os.stat(mnt).st_dev == device, "the mount changed (a remount) during the expansion"
            kept.seek(0)
            assert kept.read() == b"written before the expansion\n", "a file open since before reads otherwise"
            if fs_type == "xfs":  # writes go on (refilling 100 MiB through UML's client would be slow)
                more = os.urandom(4 * MiB)
                (mnt / "after-expansion").write_bytes(more)
                assert (server / "after-expansion").read_bytes() == more
                r["written_after_expansion"] = len(more)
            else:  # writes go on, up to the new size
                r["error_after_expansion"], r["written_after_expansion"] = flow.fill(mnt / "fill-2")
                r["used_when_full_again_bytes"] = _used(server)
                assert r["error_after_expansion"] == "ENOSPC", r
                assert r["written_after_expansion"] >= (claim_grown - claim) // 2, r
                assert r["used_when_full_again_bytes"] <= claim_grown, r
        finally:
            kept.close()
    return r


def _bytes(quantity: str) -> int:
    return int(quantity.removesuffix("Mi")) * MiB


def _df(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_blocks * st.f_frsize


def _used(path: Path) -> int:
    st = os.statvfs(path)
    return (st.f_blocks - st.f_bfree) * st.f_frsize


def _fallocate_all_but(path: Path, left: int) -> None:
    st = os.statvfs(path.parent)
    with open(path, "wb") as f:
        os.posix_fallocate(f.fileno(), 0, max(MiB, st.f_bavail * st.f_frsize - left))


def _log_size(flow: Flow) -> int:
    return flow.log.stat().st_size if flow.log.exists() else 0


def _how_grown(flow: Flow, offset: int, pv_name: str) -> str:
    """The appliance's log line that says how the volume grew (online, or offline with its export withdrawn)."""
    with flow.log.open("rb") as f:
        f.seek(offset)
        text = f.read().decode(errors="replace")
    lines = [ln for ln in text.splitlines() if pv_name in ln and re.search(r"grown|growing", ln)]
    assert lines, f"no log line about growing {pv_name}:\n{text[-2000:]}"
    return " | ".join(ln.split(" ", 3)[-1][:200] for ln in lines)


# ---------------------------------------------------------------------- forged handles


def name_to_handle(path: Path) -> tuple[int, bytes]:
    """``name_to_handle_at(2)``: (handle type, handle bytes)."""
    buf = ctypes.create_string_buffer(8 + HANDLE_BUF)
    struct.pack_into("=Ii", buf, 0, HANDLE_BUF, 0)
    mount_id = ctypes.c_int()
    if _libc.name_to_handle_at(AT_FDCWD, os.fsencode(path), buf, ctypes.byref(mount_id), 0) != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"name_to_handle_at {path}: {os.strerror(e)}")
    size, kind = struct.unpack_from("=Ii", buf, 0)
    return kind, buf.raw[8:8 + size]


def open_by_handle(mount: Path, kind: int, handle: bytes, flags: int) -> int:
    """``open_by_handle_at(2)`` on the mount at ``mount``: a descriptor, or OSError."""
    mfd = os.open(mount, os.O_RDONLY | os.O_DIRECTORY)
    try:
        buf = ctypes.create_string_buffer(struct.pack("=Ii", len(handle), kind) + handle)
        fd = int(_libc.open_by_handle_at(mfd, buf, flags))
        if fd < 0:
            e = ctypes.get_errno()
            raise OSError(e, os.strerror(e))
        return fd
    finally:
        os.close(mfd)


def server_fh(handle: bytes) -> bytes:
    """The server's handle the NFS client embeds in its own."""
    (size,) = struct.unpack_from("=H", handle, EMBED)
    return handle[EMBED + 2:EMBED + 2 + size]


def with_server_fh(handle: bytes, fh: bytes) -> bytes:
    """The client's handle carrying ``fh`` (same length) instead of the server's."""
    assert len(fh) == len(server_fh(handle))
    return handle[:EMBED + 2] + fh + handle[EMBED + 2 + len(fh):]


def with_fsid_of(fh: bytes, path: Path) -> bytes:
    """Ganesha's handle naming the filesystem of ``path`` (device-based filesystem ids: bytes 6-13 are the device's
    major and minor, little endian; the rest, the kernel's handle of the inode, kept), as
    tests/ganesha/test_filesystem_handles.py forges it."""
    dev = os.stat(path).st_dev
    return fh[:6] + os.major(dev).to_bytes(4, "little") + os.minor(dev).to_bytes(4, "little") + fh[14:]


def attempt(mount: Path, kind: int, handle: bytes, *, directory: bool) -> list[Any]:
    """Open ``handle`` through ``mount`` and list or read it: ["ok", what was seen] or ["error", errno name]."""
    try:
        fd = open_by_handle(mount, kind, handle, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    except OSError as e:
        return ["error", errno.errorcode.get(e.errno or 0, str(e.errno))]
    try:
        if directory:
            return ["ok", sorted(os.listdir(fd))]
        return ["ok", os.read(fd, 4096).decode(errors="replace")]
    except OSError as e:
        return ["error after open", errno.errorcode.get(e.errno or 0, str(e.errno))]
    finally:
        os.close(fd)


def forged_handles(flow: Flow) -> dict[str, Any]:
    """Volumes A and B (ext4: their roots are both inode 2, so A's root handle naming B's filesystem is B's root
    but for the export), C deleted and D archived while a handle of each is kept. Through a kernel mount of A,
    with each of vers=4.1 and vers=3: A's own handle taken from an earlier mount opens A's file (the client sends
    it to the server: the control); every forgery is refused and shows nothing: A's handles naming B's export,
    A's export naming B's filesystem, the export root's, the mount points' tmpfs; C's and D's kept handles, as
    themselves and naming A's export. ``..`` from A's root is the client's own directory, and a mount of
    ``<A>/..`` or ``<A>/../..`` shows none of the appliance's files (v3: nor B)."""
    # The forgeries of a filesystem's id below are Ganesha's device-based ids (its default): an earlier step may
    # have left the appliance running with --device-based-fsids=false.
    flow.stop_appliance()
    flow.start_appliance()
    try:
        return _forged_handles(flow)
    finally:  # later steps (the kernel-server mode exports every volume) find none of these
        delete_claims(flow, [f"forge-{v}" for v in "abcd"])


def _forged_handles(flow: Flow) -> dict[str, Any]:
    from tests.support.uml_kclient import OWN_NAMES

    pvs = {v: flow.class_and_claim(f"forge-{v}", params={**FS_PARAMS, "onDelete": "archive" if v == "d" else
                                                          "delete"}, size="8Mi") for v in "abcd"}
    path = {v: Path(pv["spec"]["nfs"]["path"]) for v, pv in pvs.items()}
    secrets = {v: f"volume {v.upper()}'s own data {os.urandom(6).hex()}" for v in "abcd"}
    for v in "abcd":
        (path[v] / "secret").write_text(secrets[v])  # on the server
    versions = ("vers=4.1", "vers=3")
    kept = {label: _kept_handles(flow, pvs, label) for label in versions}  # while every volume is served
    a_dev = os.stat(path["a"]).st_dev
    for label in versions:
        a_fh = server_fh(kept[label]["a"][1])
        assert a_fh[6:14] == os.major(a_dev).to_bytes(4, "little") + os.minor(a_dev).to_bytes(4, "little"), (
            f"A's handle {a_fh.hex()} ({label}) does not carry its device {os.major(a_dev)}:{os.minor(a_dev)} at "
            "bytes 6-13: the forgeries below would not mean what they say")
    delete_claims(flow, ["forge-c", "forge-d"])  # C deleted, D archived (its class's onDelete)
    out: dict[str, Any] = {"server_handle_bytes": len(server_fh(kept["vers=4.1"]["a"][1]))}
    others = [secrets[v] for v in "bcd"]
    for label in versions:
        seen: dict[str, Any] = {}
        with flow.mounted(pvs["a"], [label]) as mnt:
            Path("/proc/sys/vm/drop_caches").write_text("3\n")
            control = attempt(mnt, *kept[label]["a-file"], directory=False)
            assert control == ["ok", secrets["a"]], f"A's own handle through a new mount of A ({label}): {control}"
            seen["control: A's own file handle, taken from an earlier mount"] = control[0]
            for what, ((kind, handle), directory) in _forgeries(kept[label], path, flow.export).items():
                seen[what] = attempt(mnt, kind, handle, directory=directory)
            dotdot = sorted(os.listdir(mnt / ".."))
            assert dotdot == sorted(os.listdir(flow.mounts)), f"'..' of the mount is not the client's: {dotdot}"
            seen["'..' of the mount root"] = "the client's own mount directory"
        text = repr(seen)
        assert not any(s in text for s in others), f"another volume's data through A's {label} mount: {seen}"
        refused = {k: v for k, v in seen.items() if isinstance(v, list)}
        assert all(v[0] == "error" for v in refused.values()), f"a forged handle was opened ({label}): {refused}"
        out[label] = seen
    own = {*OWN_NAMES, ".images", "secret"}
    out["mounts above A"] = {label: {rel: flow.try_mount(f"{path['a']}/{rel}", [label],
                                                         (own | {path['b'].name}) if label == "vers=3" else own)
                                     for rel in ("..", "../..")} for label in ("vers=4.1", "vers=3")}
    return out


def _kept_handles(flow: Flow, pvs: dict[str, dict[str, Any]], label: str) -> dict[str, tuple[int, bytes]]:
    """The client's handles of each volume's root and its file ``secret``, from mounts with ``label``."""
    kept: dict[str, tuple[int, bytes]] = {}
    for v in "abcd":
        with flow.mounted(pvs[v], [label]) as mnt:
            kept[v], kept[f"{v}-file"] = name_to_handle(mnt), name_to_handle(mnt / "secret")
    return kept


def _forgeries(kept: dict[str, tuple[int, bytes]], path: dict[str, Path],
               export_root: Path) -> dict[str, tuple[tuple[int, bytes], bool]]:
    """What is tried through A's mount: label -> ((handle type, the client's handle), whether a directory)."""
    a_fh = server_fh(kept["a"][1])
    a_id, b_id = nfsraw.handle_export_id(a_fh), nfsraw.handle_export_id(server_fh(kept["b"][1]))

    def relabel(key: str, fh: bytes) -> tuple[int, bytes]:
        return kept[key][0], with_server_fh(kept[key][1], fh)

    def as_export(key: str, export_id: int) -> tuple[int, bytes]:
        return relabel(key, nfsraw.with_export_id(server_fh(kept[key][1]), export_id))

    return {
        "A's root naming B's export": (as_export("a", b_id), True),
        "A's file naming B's export": (as_export("a-file", b_id), False),
        "A's export naming B's filesystem (B's root inode)": (relabel("a", with_fsid_of(a_fh, path["b"])), True),
        "A's export naming the export root's filesystem": (relabel("a", with_fsid_of(a_fh, export_root)), True),
        "A's export naming the mount points' tmpfs": (relabel("a", with_fsid_of(a_fh, path["a"].parent)), True),
        "deleted C's kept root": (kept["c"], True),
        "deleted C's kept file": (kept["c-file"], False),
        "deleted C's root naming A's export": (as_export("c", a_id), True),
        "archived D's kept root": (kept["d"], True),
        "archived D's kept file": (kept["d-file"], False),
        "archived D's root naming A's export": (as_export("d", a_id), True),
    }
