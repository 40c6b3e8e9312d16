"""Reading a file's XFS project id with the FS_IOC_FSGETXATTR ioctl (no command needed)."""

from __future__ import annotations

import fcntl
import os
import struct
from pathlib import Path

# _IOR('X', 31, struct fsxattr); struct fsxattr is 5 x __u32 + 8 pad bytes.
FS_IOC_FSGETXATTR = 0x801C581F
_FSXATTR = struct.Struct("=5I8x")
PROJINHERIT = 0x200


def project_id(path: Path) -> int:
    """The project id of ``path`` (not following a final symlink)."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    try:
        raw = fcntl.ioctl(fd, FS_IOC_FSGETXATTR, bytes(_FSXATTR.size))
    finally:
        os.close(fd)
    _xflags, _extsize, _nextents, projid, _cowextsize = _FSXATTR.unpack(raw)
    return int(projid)
