"""One directory per volume, directly under the export root.

The directory name is the PV name, and only the PV name: it is validated as a
Kubernetes DNS-1123 subdomain (no '/', no '..', no leading dot) and must not be
one of the appliance's own files. Deletion refuses symlinks and anything that
is not a directory, and ``shutil.rmtree`` never follows symlinks inside the
tree, so nothing outside the volume's own directory can be removed.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
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

        shutil.rmtree(path, onerror=_raise_directory_error)
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


def _raise_directory_error(
    func: object, path: str, exc_info: tuple[type[BaseException], BaseException, object]
) -> None:
    raise DirectoryError(f"cannot remove {path}: {exc_info[1]}") from exc_info[1]
