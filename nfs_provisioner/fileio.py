"""Writing files so that readers see the old or the new content, never a mix; reading them within a bound.

Errors name the file: an OSError of a write, flush or fsync on a descriptor names no file (``[Errno 28] No
space left on device``) or only the descriptor's number; :func:`naming` re-raises it naming the path.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import ctypes
import errno
import os
import stat
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from nfs_provisioner.errors import Permanent


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
        with naming(path):
            try:
                _fill(fd, text, durable=durable, mode=mode)
            finally:
                os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _fill(fd: int, text: str, *, durable: bool, mode: int) -> None:
    """Write all of ``text`` at ``fd``'s offset, fsync it if ``durable``, give the file ``mode``."""
    view = memoryview(text.encode())
    while view:
        view = view[os.write(fd, view):]
    if durable:
        os.fsync(fd)
    os.fchmod(fd, mode)


SPARE_SUFFIX = ".spare"


def swap_write(path: Path, text: str, *, mode: int = 0o644) -> None:
    """Replace the content of ``path``, a small file rewritten again and again (an index shard), as
    :func:`atomic_write` with ``durable=False`` does, without a new inode each time.

    The text goes into a spare file beside it (``.<name>.spare``, the previous content's inode), then the two
    names are exchanged in one step (``renameat2(RENAME_EXCHANGE)``): readers see the old or the new content,
    never a mix, and the old content becomes the next spare. Creating a file is the costly part of a rewrite
    on ext4 (0.27 ms of kernel CPU per inode on the bench machine against 0.06 ms for the whole swap). Where
    names cannot be exchanged (another kernel or filesystem) or ``path`` does not exist yet, the spare is renamed
    onto ``path`` instead (the next rewrite makes a new spare). A spare that is not a plain file of its own (a
    symlink, a directory, a hard link: written by no one but this function) is never written: the rewrite is an
    :func:`atomic_write` then. One writer of ``path`` at a time (the caller's lock)."""
    spare = path.with_name(f".{path.name}{SPARE_SUFFIX}")
    if not fill_spare(spare, text, mode=mode, durable=False, create=True, naming_path=path):
        atomic_write(path, text, durable=False, mode=mode)
        return
    with naming(path):
        if not _exchange(spare, path):
            os.replace(spare, path)


def fill_spare(spare: Path, text: str, *, mode: int, durable: bool, create: bool = False,
               naming_path: Path | None = None) -> bool:
    """Write ``text`` over the content of the file ``spare`` (kept to be renamed onto another name), fsynced if
    ``durable``; ``create``: make it if missing. False, with nothing written, when ``spare`` is missing, cannot be
    opened, or is not a plain file of its own: a symlink is not followed, a hard link (another name of some other
    file) or a directory is not written. Errors while writing name ``naming_path``."""
    flags = os.O_WRONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK | (os.O_CREAT if create else 0)
    try:
        fd = os.open(spare, flags, 0o600)
    except OSError:
        return False
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
            return False
        with naming(naming_path or spare):
            os.ftruncate(fd, 0)
            _fill(fd, text, durable=durable, mode=mode)
        return True
    finally:
        os.close(fd)


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100
_renameat2: list[Any] = []
"""libc's renameat2, once looked up (empty: not looked up yet; [None]: this libc has none)."""


def _exchange(a: Path, b: Path) -> bool:
    """Swap the names ``a`` and ``b`` atomically; False where this libc, kernel or filesystem cannot (or ``b`` is
    missing), OSError for anything else."""
    if not _renameat2:
        try:
            _renameat2.append(ctypes.CDLL(None, use_errno=True).renameat2)
        except (OSError, AttributeError):
            _renameat2.append(None)
    call = _renameat2[0]
    if call is None:
        return False
    if call(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOENT):
        return False
    raise OSError(err, os.strerror(err), os.fspath(b))


class Refused(Permanent, ValueError):
    """A file :func:`read_limited` will not read (larger than allowed, or not a regular file); the message is
    one line naming the file and why. The file is left as it is."""


def read_limited(path: Path, limit: int, *, follow_symlinks: bool = True) -> bytes:
    """The whole content of the regular file ``path``, if it holds at most ``limit`` bytes.

    For the appliance's state under the export root, which NFS clients that forge file handles may write: a
    file of any size (a 3 GiB sparse one costs nothing on disk) is refused by its size before anything is
    read, and at most ``limit + 1`` bytes are ever read (a file growing meanwhile is refused too). Not a
    regular file (a FIFO would block the reader, a directory or a device is no state file): refused.
    Raises :class:`Refused` for those, ``OSError`` when it cannot be opened (``FileNotFoundError``: no file;
    ``ELOOP`` for a symlink with ``follow_symlinks=False``)."""
    flags = os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY | (0 if follow_symlinks else os.O_NOFOLLOW)
    fd = os.open(path, flags)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise Refused(f"{path} is not a regular file; refusing to read it")
        if st.st_size > limit:
            raise Refused(f"{path} is {st.st_size} bytes, more than the {limit} allowed for it; refusing to read "
                          "it (left in place)")
        chunks: list[bytes] = []
        left = limit + 1
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        data = b"".join(chunks)
    finally:
        os.close(fd)
    if len(data) > limit:
        raise Refused(f"{path} grew beyond the {limit} bytes allowed for it while being read; refusing it "
                      "(left in place)")
    return data


def read_text_limited(path: Path, limit: int, *, follow_symlinks: bool = True) -> str:
    """:func:`read_limited` decoded as UTF-8 (``UnicodeDecodeError``, a ``ValueError``, for other bytes)."""
    return read_limited(path, limit, follow_symlinks=follow_symlinks).decode("utf-8")


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


def fsync_dir(path: Path) -> None:
    """Make the entries of directory ``path`` (a rename into or out of it) durable."""
    _fsync_path(str(path))


def _fsync_path(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        with naming(path):
            os.fsync(fd)
    finally:
        os.close(fd)
