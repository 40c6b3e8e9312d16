"""Private temporary directories that record their owner, and the removal of those whose owner is dead.

The appliance keeps its run directory (bus socket, rendered bus config, pid files, helper logs) in
``$TMPDIR/nfsp-*``. A process killed with SIGKILL cleans nothing, so each directory made here carries an
``owner`` file: the owner's pid and start time for people, and an exclusive ``flock`` on it held for the
owner's whole life for the machine (the kernel drops it when the owner dies, whatever the pid becomes
later). :func:`remove_dead` removes a directory of the prefix only when its ``owner`` file is there and
its lock can be taken: a live appliance's directory (several may run on one host) is never touched, nor
anything without an ``owner`` file (made by something else, or by an older version).

A directory is built under a hidden name (``.nfsp-XXXX``) and renamed once its lock is held, so no other
process ever sees it without its lock. Nothing else in the package knows about this layout.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import shutil
import stat
import tempfile
import threading
import time
from pathlib import Path

log = logging.getLogger(__name__)

OWNER = "owner"
"""The file in each directory: ``pid <pid> started <epoch seconds>``, flock'ed by its owner."""
STAGING_GRACE = 60.0
"""Seconds an empty staging directory (``.<prefix>XXXX``, no owner file yet) is left alone: another process
may be between ``mkdtemp`` and its lock."""

_held: dict[Path, int] = {}
"""Directory -> the descriptor holding its lock, for this process's life (or until :func:`release`)."""
_held_lock = threading.Lock()


def create(prefix: str, *, parent: Path | None = None) -> Path:
    """A new private (0700) directory ``<parent>/<prefix>XXXXXXXX`` owned by this process.

    ``parent`` defaults to :func:`tempfile.gettempdir` (``$TMPDIR`` or ``/tmp``)."""
    where = Path(parent) if parent is not None else Path(tempfile.gettempdir())
    _forget_removed()
    while True:
        staging = Path(tempfile.mkdtemp(prefix=f".{prefix}", dir=where))
        fd = -1
        try:
            fd = os.open(staging / OWNER, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                         0o600)
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.write(fd, f"pid {os.getpid()} started {_started(os.getpid()):.2f}\n".encode())
            final = where / staging.name[1:]
            if final.exists() or final.is_symlink():  # a name mkdtemp(prefix) handed to someone else
                raise FileExistsError(errno.EEXIST, "taken", str(final))
            os.rename(staging, final)
        except FileExistsError:
            if fd >= 0:
                os.close(fd)
            shutil.rmtree(staging, ignore_errors=True)
            continue
        except BaseException:
            if fd >= 0:
                os.close(fd)
            shutil.rmtree(staging, ignore_errors=True)
            raise
        with _held_lock:
            _held[final] = fd
        return final


def release(path: Path) -> None:
    """Drop this process's lock on ``path`` (made by :func:`create`) and remove the directory."""
    with _held_lock:
        fd = _held.pop(Path(path), None)
    shutil.rmtree(path, ignore_errors=True)
    if fd is not None:
        os.close(fd)


def remove_dead(prefix: str, *, parent: Path | None = None) -> list[Path]:
    """Remove every ``<parent>/<prefix>*`` directory (and its staging form) made by :func:`create` whose owner
    no longer runs; one INFO line each. Returns what was removed. Never follows a symlink, never removes a
    directory without an ``owner`` file or one whose owner holds its lock."""
    where = Path(parent) if parent is not None else Path(tempfile.gettempdir())
    removed: list[Path] = []
    try:
        names = sorted(os.listdir(where))
    except OSError as e:
        log.warning("cannot list %s for run directories left by dead appliances: %s", where, e)
        return removed
    for name in names:
        if not (name.startswith(prefix) or name.startswith(f".{prefix}")):
            continue
        path = where / name
        with _held_lock:
            if path in _held:
                continue
        owner = _dead_owner(path, staging=name.startswith("."))
        if owner is None:
            continue
        shutil.rmtree(path, ignore_errors=True)
        if not os.path.lexists(path):
            removed.append(path)
            log.info("removed %s, left by %s (no longer running)", path, owner)
    return removed


def _dead_owner(path: Path, *, staging: bool) -> str | None:
    """Who made ``path`` if it is a directory of ours whose owner is dead (its lock is free); else None."""
    try:
        st = os.lstat(path)
    except OSError:
        return None
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():
        return None
    try:
        fd = os.open(path / OWNER, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        # A staging directory with no owner file yet: its maker was killed right after mkdtemp, or is
        # just now between mkdtemp and its lock. Only an old one is taken as dead.
        if staging and time.time() - st.st_mtime > STAGING_GRACE and not os.listdir(path):
            return "a process killed while making it"
        return None
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return None  # its owner runs
        return os.pread(fd, 200, 0).decode(errors="replace").strip() or "an unknown process"
    finally:
        os.close(fd)  # drops the lock taken above (removal goes on without it: the owner is gone for good)


def _started(pid: int) -> float:
    """The process's start time (seconds since the epoch), for the owner line; 0 if unknown."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks = int(fields[19])
        boot = next(float(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                    if line.startswith("btime "))
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    return 0.0


def _forget_removed() -> None:
    """Close the locks of directories of ours that were removed by other means (``shutil.rmtree``)."""
    with _held_lock:
        gone = [p for p in _held if not os.path.lexists(p)]
        for p in gone:
            os.close(_held.pop(p))
