"""Copying a mounted filesystem volume's image for a clone (``nfs_provisioner.volumes.filesystems``): with its
filesystem frozen, a reflink where the export root's filesystem shares blocks, else a sparse copy; and thawing a
filesystem a crash left frozen.
"""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path

from nfs_provisioner.volumes import copying

FIFREEZE, FITHAW = 0xC0045877, 0xC0045878


def copy_frozen(image: Path, mount_point: Path, fd: int) -> str:
    """Copy ``image`` (mounted at ``mount_point``) into ``fd`` with its filesystem frozen (FIFREEZE: its writers
    wait, none fails; the frozen filesystem's journal is clean, so the copy is a whole, consistent filesystem).
    A reflink (FICLONE, constant time) where the export root's filesystem shares blocks, else a sparse copy of
    the image's data extents. Returns which."""
    src = os.open(image, os.O_RDONLY | os.O_CLOEXEC)
    frozen = os.open(mount_point, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
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
    return how


def thaw(mount_point: Path) -> bool:
    """Thaw the filesystem mounted at ``mount_point`` if it is frozen; whether it was."""
    fd = os.open(mount_point, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.ioctl(fd, FITHAW, 0)
    except OSError as e:
        if e.errno == errno.EINVAL:  # not frozen
            return False
        raise
    finally:
        os.close(fd)
    return True


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
