"""One directory per volume, directly under the export root.

The directory name is the PV name, and only the PV name: it is validated as a
Kubernetes DNS-1123 subdomain (no '/', no '..', no leading dot) and must not be
one of the appliance's own files. Deletion refuses symlinks and anything that
is not a directory, and the tree removal (:func:`remove_tree`) works on
directory file descriptors opened with ``O_NOFOLLOW`` and never follows a
symlink inside the tree, so nothing outside the volume's own directory can be
removed. It is iterative and holds a bounded number of descriptors, so no
depth (a client can nest thousands of directories, beyond ``PATH_MAX``) and no
number of entries stops it.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import stat
import time
from dataclasses import dataclass
from pathlib import Path

from nfs_provisioner.volumes import identity

log = logging.getLogger(__name__)

_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
ARCHIVE_DIR = ".archive"
RESERVED = frozenset({identity.FILENAME, "projects", "lost+found"})
MODE_OPEN = 0o777 | stat.S_ISGID
MODE_GROUP = 0o071 | stat.S_ISGID


class DirectoryError(RuntimeError):
    """A volume directory could not be created, checked or removed; the message says why."""


class InvalidVolumeName(DirectoryError):
    """The PV name cannot be a directory name under the export root."""


class InsufficientSpace(DirectoryError):
    pass


def validate_name(name: str) -> str:
    if not name or len(name) > 253 or not all(_LABEL.fullmatch(label) for label in name.split(".")):
        raise InvalidVolumeName(f"volume name {name[:80]!r} is not a DNS-1123 subdomain; refusing to use it as a "
                                "directory name")
    if name in RESERVED:
        raise InvalidVolumeName(f"volume name {name!r} is reserved for the appliance's own files")
    return name


@dataclass(frozen=True)
class VolumeDirectories:
    export_root: Path

    def path_for(self, name: str) -> Path:
        return self.export_root / validate_name(name)

    def free_bytes(self) -> int:
        st = os.statvfs(self.export_root)
        return st.f_bavail * st.f_frsize

    def check_space(self, requested: int) -> None:
        free = self.free_bytes()
        if requested > free:
            raise InsufficientSpace(f"requested {requested} bytes but only {free} bytes are free on the export root")

    def create(self, name: str, *, gid: int | None) -> Path:
        """Create (or, after a crash, adopt) the volume's directory; mode and group per REFERENCE."""
        path = self.path_for(name)
        try:
            os.mkdir(path)
        except FileExistsError:
            self._require_real_dir(path)
        mode = MODE_OPEN if gid is None else MODE_GROUP
        try:
            if gid is not None:
                os.chown(path, -1, gid)
            os.chmod(path, mode)
        except OSError as e:
            raise DirectoryError(f"cannot set owner/mode of {path}: {e.strerror}") from e
        return path

    def exists(self, name: str) -> bool:
        """Whether anything (even a symlink) is at the volume's path."""
        return self._exists(self.path_for(name))

    def delete(self, name: str) -> bool:
        """Remove the volume's directory tree; False if it was already gone."""
        path = self.path_for(name)
        if not self._exists(path):
            return False
        self._require_real_dir(path)
        try:
            remove_tree(path)
        except OSError as e:
            raise DirectoryError(f"cannot remove {path}: {e}") from e
        return True

    def empty(self, name: str) -> bool:
        """Remove everything inside the volume's directory, keeping the directory itself (frees the space of
        a volume that is still exported); False if it was already gone."""
        path = self.path_for(name)
        if not self._exists(path):
            return False
        self._require_real_dir(path)
        try:
            remove_tree(path, keep_top=True)
        except OSError as e:
            raise DirectoryError(f"cannot empty {path}: {e}") from e
        return True

    def archive(self, name: str, *, now: float | None = None) -> Path | None:
        """Rename the directory aside to ``.archive/<name>-<UTC time>``; None if it was already gone."""
        path = self.path_for(name)
        if not self._exists(path):
            return None
        self._require_real_dir(path)
        archive = self.export_root / ARCHIVE_DIR
        archive.mkdir(mode=0o700, exist_ok=True)
        if archive.is_symlink() or not archive.is_dir():
            raise DirectoryError(f"{archive} is not a directory; refusing to archive into it")
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))
        target = archive / f"{name}-{stamp}"
        n = 1
        while self._exists(target):
            target = archive / f"{name}-{stamp}.{n}"
            n += 1
        os.rename(path, target)
        # Root's only: a root-squashed client keeping a handle of the volume cannot list or enter it any more.
        os.chmod(target, 0o700)
        return target

    @staticmethod
    def _exists(path: Path) -> bool:
        try:
            os.lstat(path)
        except FileNotFoundError:
            return False
        return True

    @staticmethod
    def _require_real_dir(path: Path) -> None:
        st = os.lstat(path)
        if not stat.S_ISDIR(st.st_mode):
            kind = "a symlink" if stat.S_ISLNK(st.st_mode) else "not a directory"
            raise DirectoryError(f"{path} is {kind}; refusing to use or remove it as a volume directory")


_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
MAX_OPEN_DIRS = 32
"""Directory descriptors held at once while removing a tree; deeper ancestors are re-opened by name from the
top when the walk climbs back to them."""


def _first_subdir(fd: int) -> str | None:
    """Unlink every non-directory in the directory ``fd`` up to its first subdirectory; that subdirectory's
    name, or None when the directory is empty now."""
    with os.scandir(fd) as entries:
        for entry in entries:
            try:
                is_dir = entry.is_dir(follow_symlinks=False)
            except FileNotFoundError:
                continue
            if not is_dir:
                try:
                    os.unlink(entry.name, dir_fd=fd)
                    continue
                except FileNotFoundError:
                    continue
                except IsADirectoryError:
                    pass  # replaced by a directory since it was listed
            return entry.name
    return None


def remove_tree(path: Path, *, keep_top: bool = False) -> None:
    """Remove the directory ``path`` and everything in it, depth first, without recursion.

    Every step is relative to a descriptor of the directory above (``unlinkat``/``openat`` with
    ``O_NOFOLLOW``): a symlink is removed, never followed, and names never contain ``/`` or ``..``, so the walk
    stays inside ``path`` whatever a client renames meanwhile. At most :data:`MAX_OPEN_DIRS` descriptors are
    open (the shallowest are closed first); when the walk climbs back to a closed one, the directories are
    re-opened by name from ``path``. ``keep_top``: empty ``path`` but keep it. OSError on failure (the tree is
    then partly removed)."""
    names: list[str] = []  # the current directory, relative to path
    fds: list[int | None] = [os.open(path, _DIR_FLAGS)]  # fds[i]: directory names[:i]; fds[1:low] are closed
    low = 1

    def push(fd: int) -> None:
        nonlocal low
        fds.append(fd)
        if len(fds) - low > MAX_OPEN_DIRS:
            old = fds[low]
            assert old is not None
            os.close(old)
            fds[low] = None
            low += 1

    def current() -> int:
        nonlocal low
        if len(fds) <= low:  # climbed back into the closed part: re-open it from the top
            del fds[1:]
            low = 1
            for name in names:
                parent = fds[-1]
                assert parent is not None
                push(os.open(name, _DIR_FLAGS, dir_fd=parent))
        fd = fds[-1]
        assert fd is not None
        return fd

    try:
        while True:
            fd = current()
            sub = _first_subdir(fd)
            if sub is not None:
                try:
                    child = os.open(sub, _DIR_FLAGS, dir_fd=fd)
                except FileNotFoundError:
                    continue
                except OSError as e:
                    if e.errno not in (errno.ELOOP, errno.ENOTDIR):
                        raise
                    os.unlink(sub, dir_fd=fd)  # swapped for a symlink or a file since it was listed
                    continue
                names.append(sub)
                push(child)
                continue
            if not names:
                break
            os.close(fd)
            fds.pop()
            name = names.pop()
            with contextlib.suppress(FileNotFoundError):
                os.rmdir(name, dir_fd=current())
    finally:
        for held in fds:
            if held is not None:
                os.close(held)
    if not keep_top:
        os.rmdir(path)
