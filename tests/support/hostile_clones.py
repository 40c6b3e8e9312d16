"""What tests/{e2e,root,unit}/test_hostile_clones.py share (one module per lane: the tests of one module
needed different things)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from nfs_provisioner.volumes import directories


def nest(top: Path, *, depth: int, name: str = "d", outside: Path | None = None) -> None:
    """``depth`` nested directories under ``top`` (made with openat: the path may exceed PATH_MAX), a file
    ``f<i>`` at every level and, if given, a symlink to ``outside`` at every level."""
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for i in range(depth):
            os.mkdir(name, dir_fd=fd)
            f = os.open(f"f{i}", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd)
            os.write(f, b"level %d\n" % i)
            os.close(f)
            if outside is not None:
                os.symlink(outside, "link", dir_fd=fd)
            child = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = child
        f = os.open("bottom", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd)
        os.write(f, b"the bottom\n")
        os.close(f)
    finally:
        os.close(fd)


def read_nested(top: Path, *, depth: int, name: str = "d") -> list[bytes]:
    """The ``f<i>`` of every level and the bottom file of a :func:`nest` tree, read with openat."""
    out = []
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for i in range(depth + 1):
            f = os.open(f"f{i}" if i < depth else "bottom", os.O_RDONLY, dir_fd=fd)
            out.append(os.read(f, 100))
            os.close(f)
            if i < depth:
                child = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
                os.close(fd)
                fd = child
    finally:
        os.close(fd)
    return out


def wide(top: Path, *, dirs: int) -> None:
    """``dirs`` sibling directories with one file each."""
    for i in range(dirs):
        (top / f"s{i:05}").mkdir()
        (top / f"s{i:05}" / "f").write_bytes(b"%d\n" % i)


@pytest.fixture
def deep_tmp(tmp_path: Path) -> Iterator[Path]:
    """``tmp_path`` for trees deeper than the recursion limit: removed (iteratively) after the test, because
    pytest's own clean-up of old temp directories (shutil.rmtree, recursive on Python 3.11) would crash on them
    in every later run on this machine."""
    yield tmp_path
    for entry in tmp_path.iterdir():
        if entry.is_dir() and not entry.is_symlink():
            directories.remove_tree(entry)
