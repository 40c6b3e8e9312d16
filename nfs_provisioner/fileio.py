"""Writing files so that readers see the old or the new content, never a mix.

Errors name the file: an OSError of a write, flush or fsync on a descriptor names no file (``[Errno 28] No
space left on device``) or only the descriptor's number; :func:`naming` re-raises it naming the path.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path


@contextlib.contextmanager
def naming(path: str | os.PathLike[str]) -> Iterator[None]:
    """Re-raise an OSError raised inside that names no file, or only a descriptor number, as the same error
    (class and errno) naming ``path``; any other error is left as it is."""
    try:
        yield
    except OSError as e:
        if e.filename is not None and not isinstance(e.filename, int):
            raise
        raise type(e)(e.errno, e.strerror or str(e), os.fspath(path)) from e


def atomic_write(path: Path, text: str, *, durable: bool = True, mode: int = 0o644) -> None:
    """Write ``text`` to ``path`` via a temp file in the same directory and a rename.

    Readers see the old or the new content, never a mix; the temp file is
    removed on any error, which names ``path``."""
    with naming(path):
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with naming(path), os.fdopen(fd, "w", encoding="utf-8") as f:
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
        with naming(path):
            os.fchmod(fd, mode)
    finally:
        os.close(fd)


def atomic_write_many(files: Sequence[tuple[Path, str]], *, durable: bool = True, mode: int = 0o644,
                      fsync_threads: int = 8) -> None:
    """:func:`atomic_write` for many files at once, durable, in a fraction of the time.

    Every temp file is written first, then they are fsynced in parallel (the filesystem's journal commits
    concurrent fsyncs together), then renamed, then each parent directory is fsynced once. A failure
    before the renames leaves every target as it was; the temp files are always removed."""
    temps: list[tuple[str, Path]] = []
    try:
        for path, text in files:
            with naming(path):
                fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
            temps.append((tmp, path))
            with naming(path), os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
            os.chmod(tmp, mode)
        if durable and temps:
            with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, min(fsync_threads, len(temps)))) as pool:
                list(pool.map(_fsync_path, [tmp for tmp, _ in temps]))
        for tmp, path in temps:
            os.replace(tmp, path)  # a temp already renamed is skipped below (FileNotFoundError)
        for directory in {path.parent for path, _ in files} if durable else ():
            _fsync_path(str(directory))
    finally:
        for tmp, _ in temps:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)  # left only by a failure


def _fsync_path(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        with naming(path):
            os.fsync(fd)
    finally:
        os.close(fd)
