"""The projects file ``<export root>/projects``: one ``<id>:<directory>:<bytes>``
line per volume (the format of the Go nfs-provisioner, so its files are read
as they are). Pure parsing plus an atomic write; blank lines and ``#`` comments
are accepted when reading and not written back.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from nfs_provisioner import fileio
from nfs_provisioner.quota import errors

FILE_NAME = "projects"
MIN_PROJECT_ID = 1
MAX_PROJECT_ID = 2**32 - 2  # 0 is the default project; xfs_quota refuses 2**32 - 1
MAX_BYTES = 32 * 1024 * 1024
"""One line of ~100 bytes per volume (at most 65535 exports): a bigger file is refused, never read whole."""


@dataclass(frozen=True)
class ProjectEntry:
    """One volume's project: its id, absolute directory, and the requested limit in bytes."""

    project_id: int
    directory: Path
    limit_bytes: int

    def line(self) -> str:
        return f"{self.project_id}:{self.directory}:{self.limit_bytes}"


def parse_projects(text: str, *, source: str = FILE_NAME) -> list[ProjectEntry]:
    """Parse the file's text. Malformed lines raise ``QuotaStateError`` (never
    dropped silently: the next write would lose a volume's record)."""
    entries: list[ProjectEntry] = []
    seen: set[int] = set()
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        try:
            id_text, rest = line.split(":", 1)
            directory, limit_text = rest.rsplit(":", 1)
            entry = ProjectEntry(project_id=int(id_text), directory=Path(directory), limit_bytes=int(limit_text))
        except ValueError as e:
            raise errors.QuotaStateError(f"{source}:{number}: expected <id>:<directory>:<bytes>, got {raw!r}") from e
        if not MIN_PROJECT_ID <= entry.project_id <= MAX_PROJECT_ID:
            raise errors.QuotaStateError(f"{source}:{number}: project id {entry.project_id} out of range")
        if not entry.directory.is_absolute() or entry.limit_bytes < 0:
            raise errors.QuotaStateError(f"{source}:{number}: bad directory or size in {raw!r}")
        if entry.project_id in seen:
            raise errors.QuotaStateError(f"{source}:{number}: project id {entry.project_id} appears twice")
        seen.add(entry.project_id)
        entries.append(entry)
    return entries


def format_projects(entries: Iterable[ProjectEntry]) -> str:
    return "".join(e.line() + "\n" for e in sorted(entries, key=lambda e: e.project_id))


def read_projects(path: Path) -> list[ProjectEntry]:
    """The file's entries; a missing file is an empty list."""
    try:
        text = fileio.read_text_limited(path, MAX_BYTES)
    except FileNotFoundError:
        return []
    except (fileio.Refused, UnicodeDecodeError) as e:
        raise errors.QuotaStateError(str(e) if isinstance(e, fileio.Refused) else f"{path} is not text: {e}") from e
    except OSError as e:
        raise errors.QuotaStateError(f"cannot read {path}: {e}") from e
    return parse_projects(text, source=str(path))


def write_projects(path: Path, entries: Iterable[ProjectEntry]) -> None:
    """Replace the file atomically: temp file in the same directory, fsync,
    rename, fsync the directory; the temp file is removed on any error."""
    data = format_projects(entries).encode()
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with fileio.naming(path), os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with fileio.naming(path.parent):
            os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
