"""Writing files so that readers see the old or the new content, never a mix."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


def atomic_write(path: Path, text: str, *, durable: bool = True, mode: int = 0o644) -> None:
    """Write ``text`` to ``path`` via a temp file in the same directory and a rename.

    Readers see the old or the new content, never a mix; the temp file is
    removed on any error."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def private_dir(path: Path, *, mode: int = 0o700) -> None:
    """Create directory ``path`` (and its parents) if missing and give it ``mode``; a symlink at ``path`` is
    refused (OSError ELOOP), never followed.

    For the appliance's own directories under the export root: a client that forges NFS file handles
    reaches the export root, and with a squashed root it cannot walk into a 0700 directory of root's."""
    path.mkdir(parents=True, exist_ok=True, mode=mode)
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        os.fchmod(fd, mode)
    finally:
        os.close(fd)
