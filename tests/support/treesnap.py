"""A picture of a directory tree, to prove an operation touched nothing it should not."""

from __future__ import annotations

import os
from collections.abc import Collection
from pathlib import Path

Entry = tuple[int, int, bytes]


def snapshot(root: Path, *, contents: bool = False, ignore: Collection[str] = ()) -> dict[str, Entry]:
    """relative path -> (mode, size, content if ``contents``) for everything under ``root`` (symlinks not
    followed); paths with a component in ``ignore`` (files that change on their own, e.g. logs) are left out."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            p = Path(dirpath, n)
            rel = p.relative_to(root)
            if ignore and set(rel.parts) & set(ignore):
                continue
            st = os.lstat(p)
            data = p.read_bytes() if contents and p.is_file() and not p.is_symlink() else b""
            out[str(rel)] = (st.st_mode, st.st_size, data)
    return out
