"""One directory per volume, directly under the export root.

The directory name is the PV name, and only the PV name: it is validated as a
Kubernetes DNS-1123 subdomain (no '/', no '..', no leading dot) and must not be
one of the appliance's own files. Deletion refuses symlinks and anything that
is not a directory, and the tree removal (:func:`remove_tree`) works on
directory file descriptors opened with ``O_NOFOLLOW`` and never follows a
symlink inside the tree, so nothing outside the volume's own directory can be
removed. It is iterative and holds a bounded number of descriptors
(``volumes.walking``), so no depth (a client can nest thousands of
directories, beyond ``PATH_MAX``) and no number of entries stops it; its
errors name the full path of what could not be removed.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path

from nfs_provisioner.errors import NFSProvisionerError
from nfs_provisioner.volumes import identity, space, walking

log = logging.getLogger(__name__)

_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
ARCHIVE_DIR = ".archive"
RESERVED = frozenset({identity.FILENAME, "projects", "lost+found"})
MODE_OPEN = 0o777 | stat.S_ISGID
MODE_GROUP = 0o071 | stat.S_ISGID


class DirectoryError(NFSProvisionerError, RuntimeError):
    """A volume directory could not be created, checked or removed; the message says why."""


class InvalidVolumeName(DirectoryError):
    """The PV name cannot be a directory name under the export root."""


class InsufficientSpace(DirectoryError):
    pass


def _held(free: int, held: int) -> str:
    return f" ({free} free, {held} of them reserved for copies in progress)" if held else \
        " (none of it reserved for copies in progress)"


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
    ledger: space.Ledger = field(init=False, repr=False, compare=False)
    """Space promised to copies in progress (``volumes.space``): every free-space check here holds it back."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "ledger", space.Ledger(self._statvfs_free))

    def path_for(self, name: str) -> Path:
        return self.export_root / validate_name(name)

    def _statvfs_free(self) -> int:
        st = os.statvfs(self.export_root)
        return st.f_bavail * st.f_frsize

    def free_bytes(self) -> int:
        """Bytes free on the export root and not promised to a copy in progress."""
        free, held = self.ledger.free()
        return max(0, free - held)

    def reserved(self) -> int:
        """Bytes promised to copies in progress and not written yet."""
        return self.ledger.held()

    def check_space(self, requested: int) -> None:
        free, held = self.ledger.free()
        if requested > free - held:
            raise InsufficientSpace(f"requested {requested} bytes but only {max(0, free - held)} bytes are free on "
                                    f"the export root{_held(free, held)}")

    def reserve(self, name: str, nbytes: int, *, what: str) -> space.Reservation:
        """Promise ``nbytes`` of the export root to the copy into volume ``name`` (``what`` it is, for the
        refusal) until :meth:`release`; InsufficientSpace when they are not free beyond earlier promises."""
        try:
            return self.ledger.reserve(name, nbytes)
        except space.NoRoom as e:
            raise InsufficientSpace(f"{what} needs {nbytes} bytes but only {e.available} are free on the export "
                                    f"root{_held(e.free, e.held)}") from e

    def release(self, name: str, *, only: space.Reservation | None = None) -> bool:
        """The copy into volume ``name`` ended, failed or was abandoned: its promise is void (idempotent)."""
        return self.ledger.release(name, only=only)

    def create(self, name: str, *, gid: int | None) -> Path:
        """Create (or, after a crash, adopt) the volume's directory; mode and group per REFERENCE."""
        path = self.path_for(name)
        try:
            os.mkdir(path)
        except FileExistsError:
            self._require_real_dir(path)
        try:
            set_top_mode(path, gid)
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
    stays inside ``path`` whatever a client renames meanwhile. At most
    :data:`~nfs_provisioner.volumes.walking.MAX_OPEN_DIRS` descriptors are open below ``path`` (see
    :class:`~nfs_provisioner.volumes.walking.OpenPath`: a directory moved meanwhile stops the removal rather
    than being walked elsewhere). ``keep_top``: empty ``path`` but keep it. OSError naming the full path of
    what could not be removed (the tree is then partly removed)."""
    with walking.OpenPath(path) as walk:
        while True:
            with walk.naming():
                sub = _first_subdir(walk.fd)
            if sub is not None:
                with walk.naming(sub):
                    try:
                        walk.enter(sub)
                    except FileNotFoundError:
                        continue
                    except OSError as e:
                        if e.errno not in (errno.ELOOP, errno.ENOTDIR):
                            raise
                        os.unlink(sub, dir_fd=walk.fd)  # swapped for a symlink or a file since it was listed
                continue
            if not walk.depth:
                break
            name = walk.names[-1]
            with walk.naming():
                walk.leave()
            with walk.naming(name), contextlib.suppress(FileNotFoundError):
                os.rmdir(name, dir_fd=walk.fd)
    if not keep_top:
        os.rmdir(path)


def set_top_mode(path: Path, gid: int | None) -> None:
    """A volume's top directory (a directory volume's, or a filesystem volume's root): MODE_OPEN, or MODE_GROUP
    with the class's ``gid`` as its group. Raises OSError as the calls do."""
    if gid is not None:
        os.chown(path, -1, gid)
    os.chmod(path, MODE_OPEN if gid is None else MODE_GROUP)
