"""How far a forged NFS file handle reaches from the export root, said once at start.

NFS-Ganesha's VFS backend opens a client's file handle with ``open_by_handle_at``
on the filesystem the handle names: no subtree check, so any handle of a
filesystem that holds an export opens any file of that filesystem, and
``LOOKUPP`` walks up from a volume's directory. Measured with Ganesha 4.3
(docs/security.md, tests/ganesha/test_forged_handles.py):

- the export root is a directory of a larger filesystem (a hostPath, the
  node's disk): forged handles read and create files anywhere on it;
- the export root is a filesystem of its own but the directory above it
  serves file handles too (a host directory): ``LOOKUPP`` from the export
  root's top crosses the mount and Ganesha claims the filesystem above;
- the export root is a filesystem of its own mounted on one that has no
  file handles (a container's overlay root): forged handles stay on the
  export root's filesystem.

This module only finds out which case applies; the appliance logs it.
"""

from __future__ import annotations

import ctypes
import dataclasses
import errno
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

MOUNTINFO = Path("/proc/self/mountinfo")
MAX_HANDLE_SZ = 128


@dataclasses.dataclass(frozen=True)
class Mount:
    mount_point: Path
    root: str
    """The directory of the filesystem mounted here ('/' unless a bind mount of a subdirectory)."""
    fstype: str
    source: str


def _unescape(field: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as \\ooo."""
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and field[i + 1:i + 4].isdigit():
            out.append(chr(int(field[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def mount_of(path: Path, *, mountinfo: Path = MOUNTINFO) -> Mount:
    """The mount that ``path`` (resolved) lies on: the last-listed mount with the longest mount point above it."""
    target = path.resolve()
    best: Mount | None = None
    for line in mountinfo.read_text().splitlines():
        left, _, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if len(fields) < 5 or len(tail) < 2:
            continue
        m = Mount(mount_point=Path(_unescape(fields[4])), root=_unescape(fields[3]), fstype=tail[0],
                  source=_unescape(tail[1]))
        if target.is_relative_to(m.mount_point) and (
                best is None or len(m.mount_point.parts) >= len(best.mount_point.parts)):
            best = m
    if best is None:
        raise OSError(errno.ENOENT, f"no mount holds {target} in {mountinfo}")
    return best


def _name_to_handle(path: Path) -> ctypes.Array[ctypes.c_char]:
    """``name_to_handle_at(2)`` of ``path``: the ``struct file_handle`` bytes, or OSError with its errno."""
    libc = ctypes.CDLL(None, use_errno=True)
    buf = ctypes.create_string_buffer(8 + MAX_HANDLE_SZ)
    ctypes.c_uint.from_buffer(buf).value = MAX_HANDLE_SZ
    mount_id = ctypes.c_int()
    at_fdcwd = -100
    if libc.name_to_handle_at(at_fdcwd, os.fsencode(path), buf, ctypes.byref(mount_id), 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return buf


def serves_handles(path: Path) -> bool:
    """Whether the kernel makes a file handle for ``path`` (what Ganesha needs to serve a filesystem)."""
    try:
        _name_to_handle(path)
    except OSError:
        return False
    return True


CAP_DAC_READ_SEARCH = 2
RUNTIME_HINT = ("the container runtime's seccomp profile forbids it (containerd before 2.0 does under "
                "RuntimeDefault); use containerd >= 2.0 or CRI-O, or a profile that allows name_to_handle_at and "
                "open_by_handle_at (docs/appliance.md, Container runtime)")


def _has_capability(cap: int, *, status: Path = Path("/proc/self/status")) -> bool:
    for line in status.read_text().splitlines():
        if line.startswith("CapEff:"):
            return bool(int(line.split()[1], 16) >> cap & 1)
    return False


def handle_problem(export_root: Path) -> str | None:
    """Why Ganesha's VFS backend could not serve ``export_root`` (one line), or None: it needs
    ``name_to_handle_at(2)`` (a file handle for every file it serves) and ``open_by_handle_at(2)`` (which needs
    CAP_DAC_READ_SEARCH). Found out at start-up, before any export would fail with a Ganesha log line only."""
    what = f"name_to_handle_at(2) on export root {export_root}"
    try:
        handle = _name_to_handle(export_root)
    except OSError as e:
        if e.errno in (errno.EPERM, errno.EACCES, errno.ENOSYS):
            return f"{what} failed ({errno.errorcode[e.errno]}): {RUNTIME_HINT}"
        if e.errno == errno.EOPNOTSUPP:
            fs = mount_of(export_root).fstype
            return (f"{what} failed (EOPNOTSUPP): its filesystem ({fs}) makes no file handles, so NFS-Ganesha "
                    "cannot export it; put the export root on a filesystem that does (ext4, xfs, btrfs, ...)")
        return f"{what} failed: {e}"
    libc = ctypes.CDLL(None, use_errno=True)
    mount_fd = os.open(export_root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fd = libc.open_by_handle_at(mount_fd, handle, os.O_RDONLY | os.O_DIRECTORY)
        err = ctypes.get_errno()
    finally:
        os.close(mount_fd)
    if fd >= 0:
        os.close(fd)
        return None
    what = f"open_by_handle_at(2) on export root {export_root}"
    if err == errno.EPERM and not _has_capability(CAP_DAC_READ_SEARCH):
        return (f"{what} failed (EPERM): the process lacks CAP_DAC_READ_SEARCH, which NFS-Ganesha needs to open "
                "files by handle; add it (securityContext.capabilities.add: [DAC_READ_SEARCH], podman/docker "
                "--cap-add DAC_READ_SEARCH)")
    if err in (errno.EPERM, errno.EACCES, errno.ENOSYS):
        return f"{what} failed ({errno.errorcode[err]}): {RUNTIME_HINT}"
    return f"{what} failed: {os.strerror(err)}"


def problems(export_root: Path, *, mountinfo: Path = MOUNTINFO) -> list[str]:
    """What a forged file handle can reach beyond the export root; empty when it stays on the export root's own
    filesystem. Each entry is one log line, naming the remedy."""
    root = export_root.resolve()
    m = mount_of(root, mountinfo=mountinfo)
    if m.mount_point != root or m.root != "/":
        where = f"directory {os.path.normpath(os.path.join(m.root, os.path.relpath(root, m.mount_point)))}"
        return [f"export root {root} is not a filesystem of its own (it is {where} of the {m.fstype} filesystem "
                f"{m.source} mounted at {m.mount_point}): a client that forges NFS file handles can read and "
                "create files anywhere on that filesystem; mount a dedicated filesystem at the export root "
                "(docs/security.md)"]
    if root.parent != root and serves_handles(root.parent):
        above = mount_of(root.parent, mountinfo=mountinfo)
        return [f"export root {root} is a filesystem of its own, but the directory above it ({root.parent}, "
                f"{above.fstype} {above.source}) serves file handles: a client that forges NFS file handles can "
                "walk up (LOOKUPP) into that filesystem; run the appliance in a container, whose root filesystem has "
                "no file handles (docs/security.md)"]
    return []


def warn(export_root: Path) -> list[str]:
    """Log :func:`problems` as warnings (one line each) and return them; a failure to find out is logged, too."""
    try:
        found = problems(export_root)
    except OSError as e:
        found = [f"cannot tell which filesystem holds export root {export_root}: {e}; forged NFS file handles may "
                 "reach beyond it (docs/security.md)"]
    for line in found:
        log.warning("%s", line)
    return found
