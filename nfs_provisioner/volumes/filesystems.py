"""A filesystem of its own per volume (``isolation: filesystem``): a sparse image, a loop device, a mount.

Layout (docs/filesystem-volumes.md): the image of PV ``<name>`` is ``<export root>/.images/<name>.img``
(directory 0700, image 0600: the appliance's own state, never under an export); it is attached to a loop
device (:mod:`nfs_provisioner.volumes.loops`, autoclear) and mounted (nosuid, nodev, noexec) at
``<export root>/.filesystems/<name>``, the path the volume's export serves. ``.filesystems`` is a tmpfs of the
appliance's own: NFS-Ganesha accepts a file handle of every filesystem *above* an exported one up to the first it
cannot serve (measured: a handle with a volume's export id and the export root's or the host's filesystem id
opened their files when the volume was mounted straight on the export root), and it serves no tmpfs, so a tmpfs
between the export root and the volumes ends the chain at each volume's own filesystem.

Every step can be run again from any point a crash left (what exists is reused, what is half made is
removed first):

- an image is formatted under a temporary name (``.images/.<name>.img.part``) and renamed when ``mkfs`` has
  finished, so ``<name>.img`` is always a whole filesystem (a ``.part`` left by a crash is removed and made
  again);
- mounting looks first whether the image is mounted at its path already (``st_dev`` of the path against the
  devices attached to the image); a loop device attached but not mounted is impossible after a crash (the
  autoclear device goes with the process that held it);
- unmounting waits until the kernel has detached the loop device (it does so asynchronously) and detaches
  one that stays attached to the image, so an image is never removed or moved while still in use.

Nothing here knows about exports: the caller exports a volume only once :meth:`FilesystemVolumes.mounted`
says so, and withdraws the export before :meth:`FilesystemVolumes.unmount`.

Beside this module: ``fstypes`` (per filesystem type: sizes, ``mkfs``, growth, the probe; the errors),
``imagecopy`` (a frozen image's copy for a clone) and ``loopnumbers`` (the loop device number kept per image).
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import logging
import os
import stat
import threading
import time
from pathlib import Path

from nfs_provisioner.volumes import containment, fstypes, imagecopy, loopnumbers, loops
from nfs_provisioner.volumes.directories import ARCHIVE_DIR, remove_tree, set_top_mode, validate_name
from nfs_provisioner.volumes.fstypes import (
    BLOCK,
    CAP_SYS_RESOURCE,
    MIN_BYTES,
    SMALL_JOURNAL_BELOW,
    TOOLS,
    FilesystemError,
    MiB,
    OfflineOnly,
    Runner,
    TooSmall,
    check_size,
    ext4_bytes,
    image_bytes,
    mkfs_argv,
    run,
)
from nfs_provisioner.volumes.imagecopy import FIFREEZE, FITHAW

__all__ = [  # what moved to fstypes and imagecopy stays importable from here
    "BLOCK", "CAP_SYS_RESOURCE", "FIFREEZE", "FITHAW", "MIN_BYTES", "SMALL_JOURNAL_BELOW", "TOOLS", "FilesystemError",
    "FilesystemVolumes", "MiB", "OfflineOnly", "Runner", "TooSmall", "Usage", "check_size", "ext4_bytes",
    "image_bytes", "mkfs_argv", "run",
]

log = logging.getLogger(__name__)

IMAGES_DIR = ".images"
"""Under the export root: one image per filesystem volume, and retained images."""
MOUNTS_DIR = ".filesystems"
"""Under the export root: a tmpfs holding one mount point per filesystem volume (see the module docstring)."""
MOUNTS_OPTIONS = "size=16m,mode=0755"
"""The tmpfs holds empty directories only (mount points)."""
SUFFIX = ".img"
PART = ".part"
MOUNT_DATA = {"xfs": "nouuid"}
"""A clone of an XFS volume has its source's UUID, which XFS would otherwise refuse to mount twice."""
OWN_DIRS = frozenset({"lost+found"})
"""Directories a new filesystem has at its root (ext4's): a tree copied into it leaves them (``copy_tree``)."""

@dataclasses.dataclass(frozen=True)
class Usage:
    size: int
    """Bytes the filesystem offers (statvfs f_blocks), what ``df`` shows."""
    used: int
    free: int
    """Bytes an unprivileged writer can still use (f_bavail)."""


class FilesystemVolumes:
    """The filesystem volumes under one export root (safe from any thread for distinct volumes)."""

    def __init__(self, export_root: Path, *, runner: Runner = run) -> None:
        self.export_root = export_root
        self.images = export_root / IMAGES_DIR
        self.mounts = export_root / MOUNTS_DIR
        self.archive_dir = export_root / ARCHIVE_DIR
        self.run = runner
        self._tree_lock = threading.Lock()
        self._tree_dev: int | None = None
        """The device of the tmpfs :meth:`ensure_tree` mounted or checked (checked once, not per volume)."""

    # ------------------------------------------------------------------ paths

    def path_for(self, name: str) -> Path:
        """Where the volume is mounted (and exported): ``<export root>/.filesystems/<name>``."""
        return self.mounts / validate_name(name)

    def is_path(self, path: Path) -> bool:
        """Whether ``path`` is where a filesystem volume is mounted (``<export root>/.filesystems/<a name>``)."""
        return path.parent == self.mounts

    def ensure_tree(self) -> Path:
        """The tmpfs the volumes are mounted in, mounted when it is not (a fresh mount namespace after a container
        restart); refuses anything but a tmpfs there. One thread at a time (the start-up remount and the provision
        workers call it in parallel: two would stack two tmpfs, and a mount point made meanwhile would end up under
        the second), and the mount table is read only when the device there is new (it holds a line per volume)."""
        top = self.mounts
        with self._tree_lock:
            with contextlib.suppress(FileExistsError):
                os.mkdir(top, 0o755)
            st = os.lstat(top)
            if not stat.S_ISDIR(st.st_mode):
                raise FilesystemError(f"{top} is not a directory; refusing to mount filesystem volumes in it")
            if st.st_dev == os.lstat(self.export_root).st_dev:
                try:
                    loops.mount(Path("nfsp-filesystems"), top, "tmpfs", data=MOUNTS_OPTIONS)
                except OSError as e:
                    raise FilesystemError(f"cannot mount a tmpfs at {top}: {e}") from e
                log.info("filesystem volumes: tmpfs mounted at %s", top)
                self._tree_dev = os.lstat(top).st_dev
            elif st.st_dev != self._tree_dev:
                if (fs := containment.mount_of(top).fstype) != "tmpfs":
                    raise FilesystemError(f"{top} is a {fs} mount, not the appliance's tmpfs; refusing to mount "
                                          "filesystem volumes in it")
                self._tree_dev = st.st_dev
        return top

    def image_for(self, name: str) -> Path:
        return self.images / f"{validate_name(name)}{SUFFIX}"

    def ensure_dir(self) -> None:
        with contextlib.suppress(FileExistsError):
            os.mkdir(self.images, 0o700)
        st = os.lstat(self.images)
        if not stat.S_ISDIR(st.st_mode):
            raise FilesystemError(f"{self.images} is not a directory; refusing to keep volume images in it")
        if stat.S_IMODE(st.st_mode) != 0o700:
            os.chmod(self.images, 0o700)

    # ------------------------------------------------------------------ create and mount

    def create(self, name: str, *, size: int, fs_type: str, gid: int | None, clone_of: str | None = None) -> Path:
        """Make (or, after a crash, finish) the volume: image (new, or a copy of volume ``clone_of``), mount point,
        mount, root's group and mode. Returns the mount point."""
        check_size(fs_type, size)
        self.make_image(name, size=size, fs_type=fs_type, clone_of=clone_of)
        path = self.mount(name, fs_type=fs_type)
        if clone_of is not None and fs_type == "xfs" and self.needs_growth(name, size, fs_type):
            self.grow(name, size=size, fs_type=fs_type)  # the copy is the source's size; XFS grows mounted
        try:
            set_top_mode(path, gid)
        except OSError as e:
            raise FilesystemError(f"cannot set owner/mode of {path}: {e.strerror}") from e
        return path

    def make_image(self, name: str, *, size: int, fs_type: str, clone_of: str | None = None) -> Path:
        """The volume's formatted image (kept when it exists: a whole filesystem, see the module docstring);
        ``clone_of``: a copy of that mounted volume's filesystem instead of a new one (:meth:`copy_image`)."""
        image = self.image_for(name)
        if _exists(image):
            _require_file(image)
            return image
        self.ensure_dir()
        part = self.images / f".{name}{SUFFIX}{PART}"
        with contextlib.suppress(FileNotFoundError):
            os.unlink(part)  # a crash's half-formatted image
        fd = os.open(part, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            if clone_of is not None:
                self.copy_image(clone_of, fd)
            os.ftruncate(fd, max(image_bytes(size), os.fstat(fd).st_size))
        except BaseException as e:
            os.close(fd)
            os.unlink(part)
            if isinstance(e, OSError):
                raise FilesystemError(f"cannot create the image {part}: {e.strerror or e}") from e
            raise
        os.close(fd)
        try:
            if clone_of is None:
                self.run(mkfs_argv(fs_type, part, size))
            else:
                self._adjust_clone(part, fs_type)
            fd = os.open(part, os.O_RDONLY | os.O_CLOEXEC)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(part, image)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(part)
            raise
        _fsync_dir(self.images)
        log.info("volume %s: %s image of %d bytes made (%s)", name, fs_type, image_bytes(size), image)
        return image

    def copy_image(self, source: str, fd: int) -> str:
        """Copy the image of the mounted volume ``source`` into ``fd``, with the source's filesystem frozen
        (:func:`imagecopy.copy_frozen`: a reflink or a sparse copy). Returns which."""
        if self.mounted(source) is None:
            raise FilesystemError(f"the clone source {source} is not mounted")
        how = imagecopy.copy_frozen(self.image_for(source), self.path_for(source), fd)
        log.info("volume image of %s copied (%s)", source, how)
        return how

    def _adjust_clone(self, part: Path, fs_type: str) -> None:
        """A copied ext4 grown to its image (the claim may be larger than the source; XFS grows once mounted).
        A copied XFS keeps the source's UUID (its log is not clean after a freeze, so ``xfs_admin -U`` refuses):
        XFS volumes are mounted with ``nouuid``."""
        if fs_type == "ext4" and ext4_bytes(part) < os.lstat(part).st_size:
            self.run(["e2fsck", "-f", "-p", str(part)], ok=(0, 1))
            self.run(["resize2fs", str(part)])

    def thaw(self, name: str) -> bool:
        """Thaw the volume's filesystem if a crash left it frozen during a clone; whether it was frozen."""
        if not imagecopy.thaw(self.path_for(name)):
            return False
        log.warning("volume %s: its filesystem was frozen (a clone interrupted); thawed", name)
        return True

    def mounted(self, name: str) -> Path | None:
        """The loop device of the volume's image mounted at its path; None when it is not mounted there.
        Raises FilesystemError when something else is mounted there."""
        path = self.path_for(name)
        try:
            dev = os.lstat(path).st_dev
            parent = os.lstat(path.parent).st_dev
        except FileNotFoundError:
            return None
        if dev == parent:
            return None
        device = loops.device_of(dev)
        if device is not None and loops.backing_file(device.name) == str(self.image_for(name)):
            return device
        raise FilesystemError(f"{path} is a mount point, but not of the image {self.image_for(name)}; refusing "
                              "to use it")

    def mount(self, name: str, *, fs_type: str, attached: dict[str, list[Path]] | None = None) -> Path:
        """Mount the volume's image at its path (nothing to do when it is); returns the path. ``attached``: every
        attached loop device by image (``loops.attachments()``, read once when many volumes are mounted)."""
        path = self.path_for(name)
        image = self.image_for(name)
        if not _exists(image):
            raise FilesystemError(f"volume {name}: its image {image} is missing")
        _require_file(image)
        self._mount_point(path)
        if self.mounted(name) is not None:
            return path
        stale = attached.get(str(image), []) if attached is not None else loops.backing_devices(image)
        for device in stale:  # attached but not mounted here: detached, unless it is in use
            log.warning("volume %s: %s is attached to its image but not mounted here; detaching it", name, device)
            loops.detach(device)
            if not loops.wait_device_detached(device, image, timeout=2.0):
                raise FilesystemError(f"volume {name}: its image {image} is attached to {device}, which is in use "
                                      "(mounted in another mount namespace?); refusing to mount it twice")
        device, fd = loops.attach(image, prefer=loopnumbers.last_device(self.images, name))
        try:
            loops.mount(device, path, fs_type, data=MOUNT_DATA.get(fs_type, ""))
        except OSError as e:
            raise FilesystemError(f"volume {name}: {e}") from e
        finally:
            os.close(fd)  # mounted: the mount holds the device; not mounted: the device detaches itself
        log.info("volume %s: %s mounted at %s (%s)", name, image, path, device)
        loopnumbers.remember_device(self.images, name, device)
        return path

    def _mount_point(self, path: Path) -> None:
        """The directory the image is mounted on: root's only (0700) underneath the mount."""
        self.ensure_tree()
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            st = os.lstat(path)
            if not stat.S_ISDIR(st.st_mode):
                kind = "a symlink" if stat.S_ISLNK(st.st_mode) else "not a directory"
                raise FilesystemError(f"{path} is {kind}; refusing to mount a volume on it") from None

    # ------------------------------------------------------------------ grow

    def size(self, name: str) -> int:
        return os.lstat(self.image_for(name)).st_size

    def check_growth(self, name: str, size: int) -> int:
        """The image size for growing to ``size`` bytes; raises FilesystemError for a shrink."""
        target = image_bytes(size)
        current = self.size(name)
        if target < current:
            raise FilesystemError(f"volume {name} is {current} bytes; shrinking a filesystem volume is not "
                                  f"supported (asked for {size} bytes)")
        return target

    def needs_growth(self, name: str, size: int, fs_type: str) -> bool:
        """Whether the volume's filesystem is smaller than ``size`` (its ext4 superblock says; XFS: the image),
        so a repeated expansion (the resizer retries, a restart) does not unexport and unmount it again."""
        target = image_bytes(size)
        if self.size(name) < target:
            return True
        if fs_type != "ext4":
            return True  # xfs_growfs on a grown filesystem changes nothing, online
        return ext4_bytes(self.image_for(name)) < target

    grows_online = staticmethod(fstypes.grows_online)

    def grow(self, name: str, *, size: int, fs_type: str) -> None:
        """Grow the mounted volume to ``size`` bytes online (image, loop device, then the filesystem); running it
        again after a crash at any step finishes it. Shrinking is refused; :class:`OfflineOnly` when the
        filesystem cannot grow mounted (then :meth:`grow_offline`, unexported and unmounted)."""
        image = self.image_for(name)
        target = self.check_growth(name, size)
        if not self.grows_online(fs_type):
            raise OfflineOnly(f"volume {name}: {fs_type} cannot grow while mounted without CAP_SYS_RESOURCE")
        device = self.mounted(name)
        if device is None:
            raise FilesystemError(f"volume {name} is not mounted; cannot grow it")
        if target > self.size(name):
            os.truncate(image, target)
        loops.set_capacity(device)
        if fs_type == "ext4":
            self.run(["resize2fs", str(device)])
        else:
            self.run(["xfs_growfs", "-d", str(self.path_for(name))])
        log.info("volume %s: grown to %d bytes", name, target)

    def grow_offline(self, name: str, *, size: int, fs_type: str) -> None:
        """Grow the volume's unmounted image to ``size`` bytes (check, then resize); the caller unmounted it and
        mounts it again. Running it again after a crash finishes it."""
        target = self.check_growth(name, size)
        if self.mounted(name) is not None:
            raise FilesystemError(f"volume {name} is mounted; unmount it before growing it offline")
        image = self.image_for(name)
        if target > self.size(name):
            os.truncate(image, target)
        if fs_type == "ext4":
            self.run(["e2fsck", "-f", "-p", str(image)], ok=(0, 1))  # 1: errors corrected
            self.run(["resize2fs", str(image)])
        else:
            raise FilesystemError(f"volume {name}: {fs_type} grows only mounted")
        log.info("volume %s: grown offline to %d bytes", name, target)

    # ------------------------------------------------------------------ unmount, delete, archive, retain

    def unmount(self, name: str) -> bool:
        """Unmount the volume and wait until its loop device is detached; False when it was not mounted."""
        path = self.path_for(name)
        image = self.image_for(name)
        device = self.mounted(name)
        was = device is not None
        if device is not None:
            try:
                loops.unmount(path)
            except OSError as e:
                raise FilesystemError(f"volume {name}: {e}") from e
            if loops.wait_device_detached(device, image):
                return True
        for left in loops.wait_detached(image):
            log.warning("volume %s: %s still attached to its image after unmount; detaching it", name, left)
            loops.detach(left)
        if loops.wait_detached(image, timeout=2.0):
            raise FilesystemError(f"volume {name}: a loop device stays attached to {image}")
        return was

    def _remove_mount_point(self, name: str) -> None:
        path = self.path_for(name)
        if not _exists(path):
            return
        st = os.lstat(path)
        if not stat.S_ISDIR(st.st_mode):
            raise FilesystemError(f"{path} is not a directory; refusing to remove it")
        try:
            os.rmdir(path)
        except OSError as e:
            if e.errno != errno.ENOTEMPTY:
                raise
            remove_tree(path)  # written while unmounted (only the appliance could): the mount point's own

    def delete(self, name: str) -> bool:
        """Unmount, remove the image, remove the mount point; False when there was nothing."""
        self.unmount(name)
        image = self.image_for(name)
        found = _exists(image) or _exists(self.path_for(name))
        with contextlib.suppress(FileNotFoundError):
            _require_file(image)
            os.unlink(image)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.images / f".{name}{SUFFIX}{PART}")
        loopnumbers.forget_device(self.images, name)
        self._remove_mount_point(name)
        return found

    def archive(self, name: str, *, now: float | None = None) -> Path | None:
        """Unmount and move the image to ``.archive/<name>-<UTC time>.img`` (kept, not mounted); the mount point
        is removed. None when there was no image."""
        return self._set_aside(name, self.archive_dir, now=now)

    def retain(self, name: str, *, now: float | None = None) -> Path | None:
        """Unmount and keep the image as ``.images/<name>-<UTC time>.retained.img`` (no longer this PV's: a new
        volume of the same name never finds it). None when there was no image."""
        return self._set_aside(name, self.images, now=now, tag=".retained")

    def _set_aside(self, name: str, where: Path, *, now: float | None, tag: str = "") -> Path | None:
        self.unmount(name)
        image = self.image_for(name)
        target = None
        if _exists(image):
            _require_file(image)
            with contextlib.suppress(FileExistsError):
                os.mkdir(where, 0o700)
            if os.path.islink(where) or not os.path.isdir(where):
                raise FilesystemError(f"{where} is not a directory; refusing to move {image} into it")
            stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))
            target = where / f"{name}-{stamp}{tag}{SUFFIX}"
            n = 1
            while _exists(target):
                target = where / f"{name}-{stamp}.{n}{tag}{SUFFIX}"
                n += 1
            os.rename(image, target)
            _fsync_dir(where)
        loopnumbers.forget_device(self.images, name)
        self._remove_mount_point(name)
        return target

    # ------------------------------------------------------------------ usage and the start-up probe

    def usage(self, name: str) -> Usage | None:
        """The mounted volume's size and use (statvfs: what ``df`` shows); None when it is not mounted."""
        if self.mounted(name) is None:
            return None
        st = os.statvfs(self.path_for(name))
        return Usage(size=st.f_blocks * st.f_frsize, used=(st.f_blocks - st.f_bfree) * st.f_frsize,
                     free=st.f_bavail * st.f_frsize)

    def probe(self) -> dict[str, str | None]:
        """Whether filesystem volumes can be made here, per filesystem type: None = yes, else what is missing
        (one line). Attaches and mounts a 4 MiB ext4 image in a temporary directory of ``.images`` and removes
        it again (:func:`fstypes.probe`)."""
        try:
            self.ensure_dir()
        except OSError as e:
            return dict.fromkeys(TOOLS, f"cannot make {self.images}: {e}")
        return fstypes.probe(self.images, self.run)



def _exists(path: Path) -> bool:
    try:
        os.lstat(path)
    except FileNotFoundError:
        return False
    return True


def _require_file(path: Path) -> None:
    if not stat.S_ISREG(os.lstat(path).st_mode):
        raise FilesystemError(f"{path} is not a regular file; refusing to use it as a volume image")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
