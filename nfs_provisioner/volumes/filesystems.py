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
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import logging
import os
import shutil
import stat
import subprocess
import tempfile
import threading
import time
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from nfs_provisioner import fileio
from nfs_provisioner.errors import NFSProvisionerError
from nfs_provisioner.volumes import containment, copying, loops
from nfs_provisioner.volumes.directories import ARCHIVE_DIR, remove_tree, set_top_mode, validate_name

log = logging.getLogger(__name__)

IMAGES_DIR = ".images"
"""Under the export root: one image per filesystem volume, and retained images."""
MOUNTS_DIR = ".filesystems"
"""Under the export root: a tmpfs holding one mount point per filesystem volume (see the module docstring)."""
MOUNTS_OPTIONS = "size=16m,mode=0755"
"""The tmpfs holds empty directories only (mount points)."""
SUFFIX = ".img"
PART = ".part"
DEVICE = ".loop"
"""``.images/<name>.loop``: the loop device number the image was last attached to, taken again when free (so a
remount keeps the device number, and NFS-Ganesha, which derives file handles from it, keeps clients' handles)."""
CAP_SYS_RESOURCE = 24
FIFREEZE, FITHAW = 0xC0045877, 0xC0045878
MOUNT_DATA = {"xfs": "nouuid"}
"""A clone of an XFS volume has its source's UUID, which XFS would otherwise refuse to mount twice."""
PREFERRED_BASE, PREFERRED_SPAN = 4096, 2**19
"""Loop device numbers asked for first: 4096 to 4096 + 2**19 (the kernel allows minors up to 2**20)."""
MiB = 2**20
MIN_BYTES = {"ext4": 4 * MiB, "xfs": 300 * MiB}
"""The smallest claim per filesystem: mke2fs 1.47 makes no journal below 3 MiB (a margin is kept for other
versions); mkfs.xfs (xfsprogs >= 5.19) refuses filesystems under 300 MiB ("Filesystem must be larger than
300MB"; measured with xfsprogs 6.1: 300 MiB is accepted, 300 MiB - 4 KiB refused)."""
SMALL_JOURNAL_BELOW = 128 * MiB
"""ext4 volumes below this get a 1 MiB journal (mke2fs would give 4 MiB, 6% of a 64 MiB volume)."""
BLOCK = 4096
"""Images are a whole number of these (claims in decimal units, e.g. 100M, are rounded up)."""
TOOLS = {"ext4": ("mkfs.ext4", "resize2fs"), "xfs": ("mkfs.xfs", "xfs_growfs")}
OWN_DIRS = frozenset({"lost+found"})
"""Directories a new filesystem has at its root (ext4's): a tree copied into it leaves them (``copy_tree``)."""

class Runner(Protocol):
    """Runs a command and raises :class:`FilesystemError` with its output when its exit code is not in ``ok``."""

    def __call__(self, argv: Sequence[str], *, ok: tuple[int, ...] = (0,)) -> None: ...


class FilesystemError(NFSProvisionerError, RuntimeError):
    """A filesystem volume could not be made, mounted, grown or removed; the message says why."""


class TooSmall(FilesystemError):
    """The claim is smaller than the filesystem type's minimum (named in the message)."""


class OfflineOnly(FilesystemError):
    """The filesystem cannot grow while mounted here (ext4 without CAP_SYS_RESOURCE); :meth:`grow_offline`."""


def run(argv: Sequence[str], *, ok: tuple[int, ...] = (0,)) -> None:
    try:
        done = subprocess.run(list(argv), capture_output=True, text=True, timeout=600, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise FilesystemError(f"{argv[0]}: {e}") from e
    if done.returncode not in ok:
        out = " ".join((done.stderr or done.stdout).split())[:500]
        raise FilesystemError(f"{' '.join(argv)} failed (exit {done.returncode}): {out}")


def image_bytes(size: int) -> int:
    """The image size for a claim of ``size`` bytes: rounded up to :data:`BLOCK`."""
    return -(-size // BLOCK) * BLOCK


def check_size(fs_type: str, size: int) -> None:
    """Raise :class:`TooSmall` when ``size`` is below what ``fs_type`` can be made in."""
    least = MIN_BYTES[fs_type]
    if size < least:
        raise TooSmall(f"a {fs_type} volume needs at least {least // MiB}Mi; the claim requests {size} bytes "
                       f"(ask for {least // MiB}Mi or more{', or use fsType: ext4' if fs_type == 'xfs' else ''})")


def mkfs_argv(fs_type: str, image: Path, size: int) -> list[str]:
    """``mkfs`` for a fresh sparse image: no discard (nothing to discard), and for ext4 no zeroing of the
    journal (the image reads as zeroes already), no blocks reserved for root, a small journal when small."""
    if fs_type == "ext4":
        journal = ["-J", "size=1"] if size < SMALL_JOURNAL_BELOW else []
        return ["mkfs.ext4", "-q", "-F", "-E", "nodiscard,lazy_journal_init=1", "-m", "0", *journal, str(image)]
    if fs_type == "xfs":
        return ["mkfs.xfs", "-q", "-f", "-K", str(image)]
    raise FilesystemError(f"unknown filesystem type {fs_type!r}")


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
        (FIFREEZE: its writers wait, none fails; the frozen filesystem's journal is clean, so the copy is a whole,
        consistent filesystem). A reflink (FICLONE, constant time) where the export root's filesystem shares
        blocks, else a sparse copy of the image's data extents. Returns which."""
        if self.mounted(source) is None:
            raise FilesystemError(f"the clone source {source} is not mounted")
        src = os.open(self.image_for(source), os.O_RDONLY | os.O_CLOEXEC)
        frozen = os.open(self.path_for(source), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            fcntl.ioctl(frozen, FIFREEZE, 0)
            try:
                try:
                    fcntl.ioctl(fd, copying.FICLONE, src)
                    how = "reflink"
                except OSError:
                    _sparse_copy(src, fd)
                    how = "sparse copy"
            finally:
                fcntl.ioctl(frozen, FITHAW, 0)
            os.fsync(fd)
        finally:
            os.close(frozen)
            os.close(src)
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
        fd = os.open(self.path_for(name), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            fcntl.ioctl(fd, FITHAW, 0)
        except OSError as e:
            if e.errno == errno.EINVAL:  # not frozen
                return False
            raise
        finally:
            os.close(fd)
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
        device, fd = loops.attach(image, prefer=self._last_device(name))
        try:
            loops.mount(device, path, fs_type, data=MOUNT_DATA.get(fs_type, ""))
        except OSError as e:
            raise FilesystemError(f"volume {name}: {e}") from e
        finally:
            os.close(fd)  # mounted: the mount holds the device; not mounted: the device detaches itself
        log.info("volume %s: %s mounted at %s (%s)", name, image, path, device)
        self._remember_device(name, device)
        return path

    def _last_device(self, name: str) -> int:
        """The loop device number to ask for: the one the image had last, else one derived from the name, far
        above the numbers ``LOOP_CTL_GET_FREE`` hands out (the lowest free ones), so that after a restart it is
        still free (measured: with first-free numbers, another program took the number meanwhile and the
        clients' handles went stale)."""
        try:
            return int((self.images / f"{name}{DEVICE}").read_text())
        except (FileNotFoundError, ValueError):
            return PREFERRED_BASE + zlib.crc32(name.encode()) % PREFERRED_SPAN

    def _forget_device(self, name: str) -> None:
        """After the volume is unmounted for good: remove its loop device from the kernel when it is one of the
        numbers this module asks for (a device made for it), and the remembered number."""
        number = self._last_device(name)
        if PREFERRED_BASE <= number < PREFERRED_BASE + PREFERRED_SPAN and not loops.backing_file(f"loop{number}"):
            loops.remove(number)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.images / f"{name}{DEVICE}")

    def _remember_device(self, name: str, device: Path) -> None:
        if not (self.images / f"{name}{DEVICE}").exists() or self._last_device(name) != loops.device_number(device):
            fileio.atomic_write(self.images / f"{name}{DEVICE}", f"{loops.device_number(device)}\n", mode=0o600,
                               durable=False)  # a hint

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

    @staticmethod
    def grows_online(fs_type: str, *, status: Path = Path("/proc/self/status")) -> bool:
        """Whether a mounted ``fs_type`` can grow here: XFS always; ext4's online resize needs CAP_SYS_RESOURCE
        (the kernel's ext4_resize_begin), which containers and this project's hosts lack by default."""
        if fs_type != "ext4":
            return True
        for line in status.read_text().splitlines():
            if line.startswith("CapEff:"):
                return bool(int(line.split()[1], 16) >> CAP_SYS_RESOURCE & 1)
        return False

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
        self._forget_device(name)
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
        self._forget_device(name)
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
        it again."""
        try:
            self.ensure_dir()
        except OSError as e:
            problem: str | None = f"cannot make {self.images}: {e}"
            return dict.fromkeys(TOOLS, problem)
        problem = self._probe_mount()
        found: dict[str, str | None] = {}
        for fs_type, tools in TOOLS.items():
            missing = [t for t in tools if shutil.which(t) is None]
            found[fs_type] = problem or (f"{', '.join(missing)} not found in PATH (install "
                                         f"{'e2fsprogs' if fs_type == 'ext4' else 'xfsprogs'})" if missing else None)
        return found

    def _probe_mount(self) -> str | None:
        if not loops.LOOP_CONTROL.exists():
            return (f"{loops.LOOP_CONTROL} is missing: filesystem volumes need loop devices (in Kubernetes a "
                    "privileged pod: deploy/kube-config/statefulset-isolated.yaml or Helm isolation=filesystem)")
        if shutil.which("mkfs.ext4") is None:
            return "mkfs.ext4 not found in PATH (install e2fsprogs)"
        where = Path(tempfile.mkdtemp(prefix=".probe-", dir=self.images))
        image, mnt = where / "probe.img", where / "mnt"
        mnt.mkdir()
        try:
            with open(image, "wb") as f:
                f.truncate(MIN_BYTES["ext4"])
            self.run(mkfs_argv("ext4", image, MIN_BYTES["ext4"]))
            try:
                device, fd = loops.attach(image)
            except OSError as e:
                return f"cannot attach a loop device ({e}): filesystem volumes need CAP_SYS_ADMIN and /dev/loop*"
            try:
                loops.mount(device, mnt, "ext4")
            except OSError as e:
                return f"cannot mount a filesystem ({e}): filesystem volumes need CAP_SYS_ADMIN"
            finally:
                os.close(fd)
            loops.unmount(mnt)
            loops.wait_detached(image)
            return None
        except (OSError, FilesystemError) as e:
            return f"probe failed: {e}"
        finally:
            with contextlib.suppress(OSError):
                if os.path.ismount(mnt):
                    loops.unmount(mnt)
            shutil.rmtree(where, ignore_errors=True)


def ext4_bytes(image: Path) -> int:
    """The size of the ext4 filesystem in ``image`` from its superblock (offset 1024: s_blocks_count_lo at 4,
    s_log_block_size at 24, s_feature_incompat at 96 with 64bit = 0x80, s_blocks_count_hi at 336)."""
    with open(image, "rb") as f:
        sb = os.pread(f.fileno(), 1024, 1024)
    if len(sb) < 340 or int.from_bytes(sb[56:58], "little") != 0xEF53:
        raise FilesystemError(f"{image} holds no ext4 superblock")
    blocks = int.from_bytes(sb[4:8], "little")
    if int.from_bytes(sb[96:100], "little") & 0x80:
        blocks |= int.from_bytes(sb[336:340], "little") << 32
    return blocks * (1024 << int.from_bytes(sb[24:28], "little"))


def _sparse_copy(src: int, dst: int) -> None:
    """Copy the data extents of ``src`` into ``dst`` at the same offsets (holes stay holes)."""
    size = os.fstat(src).st_size
    os.ftruncate(dst, size)
    for start, end in copying.data_extents(src, size):
        position = start
        while position < end:
            n = os.copy_file_range(src, dst, end - position, position, position)
            if n == 0:
                break
            position += n


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
