"""Walking a directory tree with a bounded number of descriptors, whatever its depth and breadth.

:class:`OpenPath` is the chain of directories from a top directory down to the one being worked on, each
opened relative to the one above (``openat`` with ``O_NOFOLLOW``, a name never containing ``/``), so a
symlink is never followed and the walk never leaves the top. It holds the top's descriptor and at most
:data:`MAX_OPEN_DIRS` below it: going deeper closes the shallowest; climbing back to a closed one re-opens it
through ``..`` of the directory being left and checks that it is the very directory it left (device and
inode), so a tree changed meanwhile (a client renaming directories of a live volume) raises
:class:`TreeChanged` and is never walked somewhere else. Siblings still to visit are names, never
descriptors: the caller lists a directory once and keeps its names. Copying, measuring and removing volume
trees (``volumes.copying``, ``volumes.directories``) all walk this way, without recursion.

Errors name the path: every :class:`OSError` raised from the walk's own descriptor-relative calls is
re-raised naming ``<top>/<relative path>`` (:meth:`OpenPath.naming`), never a bare name or a descriptor
number.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
"""How every directory of a walk is opened: a symlink in place of a directory is ELOOP, never followed."""
MAX_OPEN_DIRS = 32
"""Directory descriptors held below the top at once (the deepest ones); deeper ancestors are closed and
re-opened through ``..`` when the walk climbs back to them."""


class TreeChanged(OSError):
    """A directory the walk left and came back to through ``..`` is not the one it left (moved or replaced
    meanwhile)."""


def _identity(fd: int) -> tuple[int, int]:
    st = os.fstat(fd)
    return st.st_dev, st.st_ino


class OpenPath:
    """The directories from a top directory down to the current one, with bounded descriptors.

    ``fd`` is the current (deepest) directory's descriptor, ``top`` the top's; both stay open and valid until
    the next :meth:`enter`/:meth:`leave` (``top`` until :meth:`close`). Use as a context manager."""

    def __init__(self, top: Path, *, limit: int = MAX_OPEN_DIRS) -> None:
        """Open ``top`` itself (a symlink at ``top`` is refused: OSError ELOOP naming it)."""
        if limit < 1:
            raise ValueError("limit must be at least 1")
        self.path = top
        self.limit = limit
        self.names: list[str] = []
        """The current directory relative to the top, one name per level."""
        fd = os.open(top, DIR_FLAGS)
        try:
            self._ids = [_identity(fd)]
        except BaseException:
            os.close(fd)
            raise
        self._fds: list[int | None] = [fd]
        """``_fds[i]``: the directory ``names[:i]``; ``_fds[1:_low]`` are closed (None), the rest open."""
        self._low = 1

    # ------------------------------------------------------------------ where

    @property
    def fd(self) -> int:
        fd = self._fds[-1]
        assert fd is not None  # the deepest level is always open
        return fd

    @property
    def top(self) -> int:
        fd = self._fds[0]
        assert fd is not None  # the top is always open
        return fd

    @property
    def depth(self) -> int:
        return len(self.names)

    def relative(self, name: str | None = None, *, depth: int | None = None) -> str:
        """The current directory (or its entry ``name``) relative to the top, ``.`` for the top itself;
        ``depth``: of the directory that was current at that depth instead (an error reported after moving)."""
        parts = self.names if depth is None else self.names[:depth]
        if name is not None:
            parts = [*parts, name]
        return "/".join(parts) or "."

    def where(self, name: str | None = None, *, depth: int | None = None) -> str:
        """:meth:`relative` as a path: the top's path joined with the names."""
        rel = self.relative(name, depth=depth)
        return str(self.path) if rel == "." else f"{self.path}/{rel}"

    @contextlib.contextmanager
    def naming(self, name: str | None = None) -> Iterator[None]:
        """Re-raise an OSError raised inside as the same error (errno and class) naming a path (:meth:`where`)
        instead of a bare name or a descriptor number: entry ``name`` of the directory current when the block
        began; without ``name``, the entry the error names (a call relative to that directory's descriptor names
        just the entry) or else that directory. An error already naming an absolute path is left as it is."""
        depth = len(self.names)
        try:
            yield
        except OSError as e:
            filename = e.filename
            if isinstance(filename, str) and filename.startswith("/"):
                raise
            if name is None and isinstance(filename, str) and filename not in ("", ".", "..") \
                    and "/" not in filename:
                name = filename
            raise type(e)(e.errno, e.strerror or str(e), self.where(name, depth=depth)) from e

    # ------------------------------------------------------------------ moving

    def enter(self, name: str) -> int:
        """Open the current directory's subdirectory ``name`` and make it current; its descriptor.

        OSError (the entry's own, not renamed: ELOOP for a symlink, ENOTDIR for a file, ENOENT when gone) when
        it cannot be entered; the current directory is then unchanged."""
        fd = os.open(name, DIR_FLAGS, dir_fd=self.fd)
        try:
            ident = _identity(fd)
        except BaseException:
            os.close(fd)
            raise
        self._fds.append(fd)
        self._ids.append(ident)
        self.names.append(name)
        if len(self._fds) - self._low > self.limit:
            old = self._fds[self._low]
            assert old is not None
            os.close(old)
            self._fds[self._low] = None
            self._low += 1
        return fd

    def leave(self) -> int:
        """Make the parent directory current again (re-opened through ``..`` if its descriptor was closed, then
        checked to be the directory left: :class:`TreeChanged` otherwise); its descriptor."""
        if not self.names:
            raise ValueError("the walk is at its top; there is nothing to leave")
        child = self.fd
        parent = len(self._fds) - 2
        if self._fds[parent] is None:
            fd = os.open("..", DIR_FLAGS, dir_fd=child)
            try:
                same = _identity(fd) == self._ids[parent]
            except BaseException:
                os.close(fd)
                raise
            if not same:
                os.close(fd)
                raise TreeChanged(errno.ESTALE, "moved or replaced while it was walked",
                                  f"{self.path}/{'/'.join(self.names[:parent])}")  # parent >= 1: the top stays open
            self._fds[parent] = fd
            self._low = parent
        self._fds.pop()
        self._ids.pop()
        self.names.pop()
        os.close(child)
        return self.fd

    def open_count(self) -> int:
        """Descriptors held now (the top's included)."""
        return sum(fd is not None for fd in self._fds)

    def close(self) -> None:
        for i, fd in enumerate(self._fds):
            if fd is not None:
                os.close(fd)
                self._fds[i] = None

    def __enter__(self) -> OpenPath:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
