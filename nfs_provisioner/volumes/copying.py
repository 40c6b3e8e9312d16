"""Copying one volume directory's tree into another's (volume clones).

Everything is opened relative to its parent's directory file descriptor with
``O_NOFOLLOW`` (openat-style), so a symlink anywhere in the source is copied as
a link and never followed, and nothing outside the source directory is read or
anything outside the target directory written. Copied: file contents, modes,
owners, timestamps (atime/mtime, nanoseconds), symlinks, hard links (as links
within the copy), holes of sparse files, FIFOs and device nodes, and extended
attributes where the filesystem has them. Sockets are skipped (they cannot be
copied; counted in :class:`Stats`).

File data is shared where the filesystem can (``FICLONE``: XFS with
``reflink=1``, btrfs), else copied with ``copy_file_range`` one data extent at
a time (``SEEK_DATA``/``SEEK_HOLE``, so holes stay holes), else with
``pread``/``pwrite``.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import logging
import os
import stat
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from nfs_provisioner.errors import NFSProvisionerError
from nfs_provisioner.volumes import directories, walking

log = logging.getLogger(__name__)

FICLONE = 0x40049409
"""``_IOW(0x94, 9, int)``: make the target file share all of the source file's blocks."""
CHUNK = 8 << 20
"""Bytes copied per system call when blocks are not shared (progress and cancel are checked in between)."""
_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_NO_SHARE = frozenset({errno.EOPNOTSUPP, errno.ENOTTY, errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EBADF})
_NO_XATTR = frozenset({errno.EOPNOTSUPP, errno.EPERM, errno.EACCES, errno.ENODATA, errno.E2BIG})


class CopyError(NFSProvisionerError, RuntimeError):
    """The copy failed; the message names the file and why."""


class Cancelled(CopyError):
    pass


@dataclass
class Stats:
    files: int = 0
    directories: int = 0
    symlinks: int = 0
    hard_links: int = 0
    specials: int = 0
    skipped_sockets: int = 0
    bytes: int = 0
    """Apparent bytes of the regular files copied (holes included)."""
    reflinked_files: int = 0


@dataclass(frozen=True)
class Usage:
    apparent_bytes: int
    """Sum of regular files' sizes (each hard-linked file once): what progress counts."""
    allocated_bytes: int
    """Blocks the tree occupies (``st_blocks`` of its files, each hard-linked file once, directories and
    symlinks): what a full copy needs, about."""
    entries: int


def open_dir(path: Path) -> int:
    """A directory fd for ``path`` itself, refusing a symlink at ``path``."""
    return os.open(path, _DIR)


def measure(path: Path) -> Usage:
    """Walk ``path`` (never following symlinks, without recursion, with bounded descriptors: see
    :mod:`~nfs_provisioner.volumes.walking`) and add up what a copy will move. Entries that vanish while it
    walks are skipped (a live volume changes); OSError naming the path for anything else."""
    seen: set[tuple[int, int]] = set()
    apparent = allocated = entries = 0
    with walking.OpenPath(path) as walk:
        with walk.naming():
            pending = [os.listdir(walk.fd)]
        while pending:
            if not pending[-1]:
                pending.pop()
                if pending:
                    with walk.naming():
                        walk.leave()
                continue
            name = pending[-1].pop()
            with walk.naming(name):
                try:
                    st = os.stat(name, dir_fd=walk.fd, follow_symlinks=False)
                except FileNotFoundError:
                    continue
                entries += 1
                if stat.S_ISREG(st.st_mode):
                    if (st.st_dev, st.st_ino) in seen:
                        continue
                    if st.st_nlink > 1:
                        seen.add((st.st_dev, st.st_ino))
                    apparent += st.st_size
                allocated += st.st_blocks * 512  # directories' and symlinks' blocks too: a copy makes them
                if not stat.S_ISDIR(st.st_mode):
                    continue
                try:
                    walk.enter(name)
                except OSError as e:
                    if e.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
                        continue  # removed, or replaced by a file or a symlink, since it was listed
                    raise
            with walk.naming():
                pending.append(os.listdir(walk.fd))
    return Usage(apparent_bytes=apparent, allocated_bytes=allocated, entries=entries)


def shares_blocks(directory: Path) -> bool:
    """Whether files in ``directory`` can share blocks (``FICLONE`` works there); probed with two unnamed
    files (``O_TMPFILE``), so nothing is left behind."""
    flags = os.O_RDWR | os.O_TMPFILE | os.O_CLOEXEC
    try:
        a = os.open(directory, flags, 0o600)
    except OSError:
        return False
    try:
        b = os.open(directory, flags, 0o600)
        try:
            os.write(a, b"\0" * 4096)
            fcntl.ioctl(b, FICLONE, a)
            return True
        except OSError:
            return False
        finally:
            os.close(b)
    finally:
        os.close(a)


def syncfs(path: Path) -> None:
    """Flush the filesystem holding ``path`` (the copy is durable before it is declared done)."""
    fd = open_dir(path)
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.syncfs(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err), str(path))
    except AttributeError:
        os.sync()
    finally:
        os.close(fd)


def copy_tree(source: Path, target: Path, *, on_bytes: Callable[[int], None] | None = None,
              on_written: Callable[[int], None] | None = None, cancel: threading.Event | None = None,
              keep: frozenset[str] = frozenset()) -> Stats:
    """Copy the contents and metadata of directory ``source`` into the existing, empty directory ``target``
    (whose own owner, mode, times and xattrs become the source's too).

    ``keep``: directories the target may hold at its top already, its filesystem's own (a new ext4's
    ``lost+found``); they stay, and a source directory of the same name is copied into them.

    Without recursion and with bounded descriptors, whatever the tree's depth and breadth
    (:mod:`~nfs_provisioner.volumes.walking`). ``on_bytes``: apparent bytes done (progress, holes included);
    ``on_written``: bytes of data actually written to the target (what it now occupies, for the space
    reserved for the copy). Raises :class:`CopyError` naming the entry (relative to ``source``), or OSError
    naming ``source`` or ``target`` when they cannot be opened."""
    nothing: Callable[[int], None] = lambda n: None  # noqa: E731
    copier = _Copier(on_bytes or nothing, on_written or nothing, cancel or threading.Event(), keep)
    with walking.OpenPath(source) as src, walking.OpenPath(target) as dst:
        with dst.naming():
            if any(name not in keep or not _is_dir(dst.fd, name) for name in os.listdir(dst.fd)):
                raise CopyError(f"{target} is not empty; refusing to copy into it")
        copier.run(src, dst)
    return copier.stats


def empty_dir(path: Path, *, keep: frozenset[str] = frozenset()) -> int:
    """Remove everything inside directory ``path`` (never following symlinks, without recursion, with bounded
    descriptors: :func:`~nfs_provisioner.volumes.directories.remove_tree`), keeping ``path`` itself (and with
    it its quota project); returns the number of entries there were directly in ``path``. ``keep``: directories
    at the top that are emptied, not removed (a filesystem's own ``lost+found``: see :func:`copy_tree`)."""
    fd = open_dir(path)
    try:
        names = os.listdir(fd)
        kept = [name for name in names if name in keep and _is_dir(fd, name)]
    finally:
        os.close(fd)
    if not kept:
        directories.remove_tree(path, keep_top=True)
        return len(names)
    for name in names:
        if name in kept:
            directories.remove_tree(path / name, keep_top=True)
        elif os.path.isdir(path / name) and not os.path.islink(path / name):
            directories.remove_tree(path / name)
        else:
            os.unlink(path / name)
    return len(names)


def _is_dir(dir_fd: int, name: str) -> bool:
    return stat.S_ISDIR(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)


def _shown(path: str, limit: int = 200) -> str:
    """A relative path for a message: a deep one keeps its first and last parts."""
    return path if len(path) <= limit else f"{path[:limit // 3]}/.../{path[-(limit * 2 // 3):]}"


class _Copier:
    def __init__(self, on_bytes: Callable[[int], None], on_written: Callable[[int], None],
                 cancel: threading.Event, keep: frozenset[str] = frozenset()) -> None:
        self.on_bytes = on_bytes
        self.on_written = on_written
        self.cancel = cancel
        self.keep = keep
        """Directories at the target's top that exist already (copy_tree's ``keep``)."""
        self.stats = Stats()
        self.links: dict[tuple[int, int], str] = {}
        """(st_dev, st_ino) of a multiply-linked source file -> its first copy's path relative to the target."""

    def run(self, src: walking.OpenPath, dst: walking.OpenPath) -> None:
        """Depth first, one directory's listing per level kept as names (never descriptors); a directory's own
        metadata is set once everything in it is copied (its mode may forbid writing, its mtime would change)."""
        pending = [self._listing(src)]
        while True:
            if pending[-1]:
                name = pending[-1].pop()
                if self.cancel.is_set():
                    raise Cancelled("the copy was cancelled")
                with self._naming(src, name):
                    if self._entry(src, dst, name):
                        pending.append(self._listing(src))
                continue
            pending.pop()
            with self._naming(src, None):
                _metadata(src.fd, dst.fd, os.fstat(src.fd), src.relative())
                if not pending:
                    return
                src.leave()
                dst.leave()
            self.stats.directories += 1

    @staticmethod
    def _listing(src: walking.OpenPath) -> list[str]:
        """The current source directory's names, last first (popped in order)."""
        return sorted(os.listdir(src.fd), reverse=True)

    @staticmethod
    @contextlib.contextmanager
    def _naming(src: walking.OpenPath, name: str | None) -> Iterator[None]:
        """An OSError inside becomes a CopyError naming entry ``name`` of the directory current when the block
        began (or that directory), relative to the source."""
        depth = src.depth
        try:
            yield
        except CopyError:
            raise
        except OSError as e:
            raise CopyError(f"cannot copy {_shown(src.relative(name, depth=depth))}: {e.strerror or e}") from e

    def _entry(self, src: walking.OpenPath, dst: walking.OpenPath, name: str) -> bool:
        """Copy entry ``name`` of the current directory; True when it is a directory, made in the target and
        entered on both sides (its contents come next)."""
        sfd, dfd = src.fd, dst.fd
        st = os.stat(name, dir_fd=sfd, follow_symlinks=False)
        mode = st.st_mode
        if stat.S_ISDIR(mode):
            try:
                os.mkdir(name, 0o700, dir_fd=dfd)
            except FileExistsError:
                if src.depth or name not in self.keep:
                    raise
            src.enter(name)
            try:
                dst.enter(name)
            except BaseException:
                src.leave()
                raise
            return True
        if stat.S_ISLNK(mode):
            os.symlink(os.readlink(name, dir_fd=sfd), name, dir_fd=dfd)
            os.chown(name, st.st_uid, st.st_gid, dir_fd=dfd, follow_symlinks=False)
            os.utime(name, ns=(st.st_atime_ns, st.st_mtime_ns), dir_fd=dfd, follow_symlinks=False)
            self.stats.symlinks += 1
        elif stat.S_ISREG(mode):
            key = (st.st_dev, st.st_ino)
            if st.st_nlink > 1 and key in self.links:
                os.link(self.links[key], name, src_dir_fd=dst.top, dst_dir_fd=dfd, follow_symlinks=False)
                self.stats.hard_links += 1
                return False
            self._file(sfd, dfd, name, src.relative(name))
            if st.st_nlink > 1:
                self.links[key] = dst.relative(name)
        elif stat.S_ISFIFO(mode) or stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
            os.mknod(name, stat.S_IFMT(mode) | 0o600, st.st_rdev, dir_fd=dfd)
            # Made just now in a target no client can reach yet: nothing can have swapped it for a symlink.
            os.chown(name, st.st_uid, st.st_gid, dir_fd=dfd, follow_symlinks=False)
            os.chmod(name, stat.S_IMODE(mode), dir_fd=dfd)
            os.utime(name, ns=(st.st_atime_ns, st.st_mtime_ns), dir_fd=dfd, follow_symlinks=False)
            self.stats.specials += 1
        else:
            log.info("copy: skipping socket %s (sockets cannot be copied)", _shown(src.relative(name)))
            self.stats.skipped_sockets += 1
        return False

    def _file(self, sfd: int, dfd: int, name: str, path: str) -> None:
        src = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NOCTTY | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=sfd)
        try:
            st = os.fstat(src)
            if not stat.S_ISREG(st.st_mode):  # swapped between stat and open
                raise CopyError(f"{_shown(path)} changed while it was copied")
            dst = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                          dir_fd=dfd)
            try:
                if self._data(src, dst, st.st_size):
                    self.stats.reflinked_files += 1
                _metadata(src, dst, st, path)
            finally:
                os.close(dst)
        finally:
            os.close(src)
        self.stats.files += 1
        self.stats.bytes += st.st_size

    def _data(self, src: int, dst: int, size: int) -> bool:
        """Copy the data; True when the blocks are shared (reflink)."""
        if size == 0:
            return False
        try:
            fcntl.ioctl(dst, FICLONE, src)
            self.on_bytes(size)
            return True
        except OSError as e:
            if e.errno not in _NO_SHARE:
                raise
        pos = 0
        for start, end in data_extents(src, size):
            self.on_bytes(start - pos)
            self._range(src, dst, start, end)
            pos = end
        self.on_bytes(size - pos)
        os.ftruncate(dst, size)
        return False

    def _range(self, src: int, dst: int, start: int, end: int) -> None:
        pos = start
        use_cfr = True
        while pos < end:
            if self.cancel.is_set():
                raise Cancelled("the copy was cancelled")
            count = min(CHUNK, end - pos)
            n = 0
            if use_cfr:
                try:
                    n = os.copy_file_range(src, dst, count, pos, pos)
                except OSError as e:
                    if e.errno not in _NO_SHARE:
                        raise
                    use_cfr = False
            if not use_cfr:
                data = os.pread(src, count, pos)
                n = len(data)
                view = memoryview(data)
                written = 0
                while written < n:
                    written += os.pwrite(dst, view[written:], pos + written)
            if n == 0:  # the file shrank while it was copied
                return
            self.on_bytes(n)
            self.on_written(n)
            pos += n


def _metadata(src: int, dst: int, st: os.stat_result, path: str) -> None:
    """Owner, xattrs, mode, then times (in that order: chown clears set-id bits, a POSIX ACL sets mode bits,
    anything written changes mtime)."""
    os.fchown(dst, st.st_uid, st.st_gid)
    with contextlib.suppress(OSError):
        for attr in os.listxattr(src):
            try:
                os.setxattr(dst, attr, os.getxattr(src, attr))
            except OSError as e:
                if e.errno not in _NO_XATTR:
                    raise CopyError(f"cannot copy extended attribute {attr} of {path or '.'}: {e.strerror}") from e
                log.debug("copy: extended attribute %s of %s not copied: %s", attr, path or ".", e.strerror)
    os.fchmod(dst, stat.S_IMODE(st.st_mode))
    os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns))


def data_extents(fd: int, size: int) -> Iterator[tuple[int, int]]:
    """The data extents ``(start, end)`` of the first ``size`` bytes of ``fd``, in order (holes are skipped;
    a filesystem without SEEK_DATA reports the whole file as data)."""
    pos = 0
    while pos < size:
        try:
            start = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError as e:
            if e.errno == errno.ENXIO:  # only a hole is left
                return
            raise
        end = min(os.lseek(fd, start, os.SEEK_HOLE), size)
        yield start, end
        pos = end
