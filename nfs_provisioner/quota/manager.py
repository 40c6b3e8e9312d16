"""Per-volume XFS projects: add, expand, remove, re-apply on start, usage.

The projects file is the source of truth; it is re-read and rewritten under a
lock by every change, so several worker threads (and a restarted process) see
the same state. Limits given in bytes are applied rounded up to whole
filesystem blocks (XFS keeps limits in blocks); the file keeps the requested
bytes.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from nfs_provisioner.quota import commands, errors, fsxattr, mountinfo, projects

log = logging.getLogger(__name__)

_UNSAFE_PATH = re.compile(r"[\s\"'\\]")  # xfs_quota splits its -c argument on whitespace


@dataclass(frozen=True)
class ProjectUsage:
    """Usage and limit of one volume's project, as the kernel reports them (bytes)."""

    project_id: int
    directory: Path
    used_bytes: int
    limit_bytes: int


@dataclass(frozen=True)
class ReapplyReport:
    """What ``reapply()`` found and did; every discrepancy is also logged."""

    applied: tuple[int, ...] = ()
    """Ids whose limit was (re-)applied."""
    repaired: tuple[int, ...] = ()
    """Ids whose directory was not tagged with the id and was set up again."""
    missing_directories: tuple[projects.ProjectEntry, ...] = ()
    """Entries whose directory no longer exists (kept; ``remove()`` drops them)."""
    limit_mismatches: tuple[tuple[int, int, int], ...] = ()
    """``(id, expected bytes, kernel bytes)`` for limits that differed before re-applying."""
    untracked: tuple[int, ...] = ()
    """Ids the kernel charges (usage or limit) that the file does not know; never allocated."""
    failed: tuple[tuple[int, str], ...] = field(default=())
    """``(id, error)`` for entries that could not be re-applied."""


def applied_limit(limit_bytes: int, block_size: int) -> int:
    """The limit XFS enforces for a requested size: rounded up to whole blocks."""
    return -(-limit_bytes // block_size) * block_size


class ProjectQuotas:
    """The per-volume project manager for one export root (see the package docstring)."""

    def __init__(
        self,
        *,
        filesystem: mountinfo.QuotaFilesystem,
        runner: commands.Runner | None = None,
        projects_file: Path | None = None,
    ) -> None:
        self.filesystem = filesystem
        self.export_root = filesystem.export_root
        self.projects_file = projects_file or self.export_root / projects.FILE_NAME
        self.xfs = commands.XfsQuota(mount_point=filesystem.mount_point, runner=runner or commands.SubprocessRunner())
        self._lock = threading.Lock()

    @classmethod
    def open(
        cls,
        *,
        export_root: Path,
        runner: commands.Runner | None = None,
        mountinfo_path: Path = mountinfo.MOUNTINFO,
    ) -> ProjectQuotas:
        """Run the start-up check and return a manager (call ``reapply()`` next)."""
        runner = runner or commands.SubprocessRunner()
        fs = mountinfo.check_export_root(export_root, runner=runner, mountinfo=mountinfo_path)
        return cls(filesystem=fs, runner=runner)

    # -- reading -------------------------------------------------------------

    def recorded(self) -> list[projects.ProjectEntry]:
        """The recorded projects, sorted by id."""
        with self._lock:
            return sorted(self._read(), key=lambda e: e.project_id)

    def usage(self) -> list[ProjectUsage]:
        """Used and enforced bytes of every recorded project (one xfs_quota call)."""
        entries = self.recorded()
        kernel = self.xfs.report()
        result = []
        for e in entries:
            k = kernel.get(e.project_id)
            result.append(
                ProjectUsage(
                    project_id=e.project_id,
                    directory=e.directory,
                    used_bytes=k.used_bytes if k else 0,
                    limit_bytes=k.hard_limit_bytes if k else 0,
                )
            )
        return result

    # -- changing ------------------------------------------------------------

    def add(self, directory: Path, limit_bytes: int) -> int:
        """Give ``directory`` its own project with a hard block limit; return the id.

        Idempotent per directory: a directory already recorded keeps its id and
        gets ``limit_bytes`` (the same rules as ``set_limit``). On failure every
        step done so far is undone: no line, no project on the directory, no limit."""
        path = self._validate_directory(directory)
        _validate_size(limit_bytes)
        with self._lock:
            entries = self._read()
            for e in entries:
                if e.directory == path:
                    log.info("project %d for %s already recorded; setting its limit", e.project_id, path)
                    self._ensure_tagged(e)
                    self._set_limit_locked(entries, e.project_id, limit_bytes)
                    return e.project_id
                if e.directory in path.parents or path in e.directory.parents:
                    raise errors.InvalidQuotaRequest(
                        f"{path} is nested with {e.directory} (project {e.project_id}); projects cannot nest"
                    )
            project_id = self._allocate(entries, self.xfs.report().keys())
            entry = projects.ProjectEntry(project_id=project_id, directory=path, limit_bytes=limit_bytes)
            undo: list[tuple[str, Callable[[], None]]] = []
            try:
                # The line goes first: a crash after it leaves a record that reapply() repairs.
                self._write([*entries, entry])
                undo.append(("drop the projects line", lambda: self._write(entries)))
                self.xfs.setup_project(path, project_id)
                undo.append(("clear the project", lambda: self.xfs.clear_project(path, project_id)))
                self.xfs.set_block_hard_limit(project_id, self._applied(limit_bytes))
            except BaseException as e:
                undo.append(("clear the limit", lambda: self.xfs.set_block_hard_limit(project_id, 0)))
                _roll_back(undo, e, what=f"project {project_id} for {path}")
                raise
        log.info("project %d for %s: hard limit %d bytes", project_id, path, limit_bytes)
        return project_id

    def set_limit(self, project_id: int, limit_bytes: int) -> None:
        """Change a project's hard limit (expansion). Lowering is allowed only
        down to what the project already uses (``QuotaShrinkRefused``); refusing
        a smaller claim altogether is the caller's policy."""
        _validate_id(project_id)
        _validate_size(limit_bytes)
        with self._lock:
            self._set_limit_locked(self._read(), project_id, limit_bytes)

    def remove(self, project_id: int, *, directory: Path | None = None) -> bool:
        """Drop a project: clear the directory's tag (recursively, if it still
        exists and carries this id), clear the limit, drop the line. Idempotent;
        returns whether the id was recorded. With ``directory`` the call is
        refused (``ProjectMismatch``) if the id is recorded for another directory.

        Call it before renaming a directory aside; on a deleted directory only
        the limit and the line are cleared, and an id the kernel still charges
        (files kept open) is never handed out again until it is free."""
        _validate_id(project_id)
        with self._lock:
            return self._remove_locked(project_id, directory=directory)

    def project_of(self, directory: Path) -> int | None:
        """The project id recorded for ``directory`` (final symlink not followed), or None."""
        path = _normalize(directory)
        with self._lock:
            return next((e.project_id for e in self._read() if e.directory == path), None)

    def remove_directory(self, directory: Path) -> bool:
        """``remove()`` by directory: idempotent, False if nothing was recorded for it."""
        path = _normalize(directory)
        with self._lock:
            entry = next((e for e in self._read() if e.directory == path), None)
            if entry is None:
                log.info("no project recorded for %s; nothing to remove", path)
                return False
            return self._remove_locked(entry.project_id, directory=path)

    def reapply(self) -> ReapplyReport:
        """On start: re-apply every recorded limit, re-tag directories that lost
        their id, and cross-check the file with the kernel's report."""
        applied: list[int] = []
        repaired: list[int] = []
        missing: list[projects.ProjectEntry] = []
        mismatches: list[tuple[int, int, int]] = []
        failed: list[tuple[int, str]] = []
        with self._lock:
            entries = self._read()
            kernel = self.xfs.report()
            for e in sorted(entries, key=lambda e: e.project_id):
                want = self._applied(e.limit_bytes)
                have = kernel[e.project_id].hard_limit_bytes if e.project_id in kernel else 0
                if have != want:
                    mismatches.append((e.project_id, want, have))
                    log.warning("project %d (%s): kernel limit %d, file says %d", e.project_id, e.directory, have, want)
                try:
                    if not self._inside_root(e.directory):
                        raise errors.InvalidQuotaRequest(f"{e.directory} is not inside {self.export_root}")
                    if e.directory.is_symlink() or not e.directory.is_dir():
                        missing.append(e)
                        log.warning("project %d: directory %s is missing", e.project_id, e.directory)
                    elif self._ensure_tagged(e):
                        repaired.append(e.project_id)
                    self.xfs.set_block_hard_limit(e.project_id, want)
                    applied.append(e.project_id)
                except (errors.QuotaError, OSError) as err:
                    failed.append((e.project_id, str(err)))
                    log.error("project %d (%s): cannot re-apply: %s", e.project_id, e.directory, err)
            known = {e.project_id for e in entries}
            untracked = sorted(
                k.project_id
                for k in kernel.values()
                if k.project_id != 0 and k.project_id not in known and (k.used_bytes or k.hard_limit_bytes)
            )
            for pid in untracked:
                log.warning("project %d is charged in the kernel but not in %s", pid, self.projects_file)
        return ReapplyReport(
            applied=tuple(applied),
            repaired=tuple(repaired),
            missing_directories=tuple(missing),
            limit_mismatches=tuple(mismatches),
            untracked=tuple(untracked),
            failed=tuple(failed),
        )

    # -- internals (lock held) -------------------------------------------------

    def _remove_locked(self, project_id: int, *, directory: Path | None) -> bool:
        entries = self._read()
        entry = next((e for e in entries if e.project_id == project_id), None)
        if entry is None:
            log.info("project %d is not recorded; clearing its limit only", project_id)
            self.xfs.set_block_hard_limit(project_id, 0)
            return False
        if directory is not None and _normalize(directory) != entry.directory:
            raise errors.ProjectMismatch(
                f"project {project_id} belongs to {entry.directory}, not {directory}; nothing removed"
            )
        if not self._inside_root(entry.directory):
            log.warning("project %d: recorded directory %s is outside %s; not touching it",
                        project_id, entry.directory, self.export_root)
        elif _tagged_with(entry.directory) == project_id:
            self.xfs.clear_project(entry.directory, project_id)
        else:
            log.info("project %d: %s is gone or untagged; not clearing it", project_id, entry.directory)
        self.xfs.set_block_hard_limit(project_id, 0)
        self._write([e for e in entries if e.project_id != project_id])
        log.info("project %d for %s removed", project_id, entry.directory)
        return True

    def _read(self) -> list[projects.ProjectEntry]:
        return projects.read_projects(self.projects_file)

    def _write(self, entries: Iterable[projects.ProjectEntry]) -> None:
        projects.write_projects(self.projects_file, entries)

    def _applied(self, limit_bytes: int) -> int:
        return applied_limit(limit_bytes, self.filesystem.block_size)

    def _set_limit_locked(self, entries: list[projects.ProjectEntry], project_id: int, limit_bytes: int) -> None:
        entry = next((e for e in entries if e.project_id == project_id), None)
        if entry is None:
            raise errors.ProjectNotFound(f"project {project_id} is not recorded in {self.projects_file}")
        current = self.xfs.report().get(project_id)
        used = current.used_bytes if current else 0
        if self._applied(limit_bytes) < used:
            raise errors.QuotaShrinkRefused(
                f"project {project_id} ({entry.directory}) already uses {used} bytes; refusing a limit of "
                f"{limit_bytes} bytes"
            )
        old = current.hard_limit_bytes if current else 0
        self.xfs.set_block_hard_limit(project_id, self._applied(limit_bytes))
        if entry.limit_bytes == limit_bytes:
            return
        updated = projects.ProjectEntry(project_id=project_id, directory=entry.directory, limit_bytes=limit_bytes)
        try:
            self._write([updated if e.project_id == project_id else e for e in entries])
        except BaseException as e:
            restore = ("restore the limit", lambda: self.xfs.set_block_hard_limit(project_id, old))
            _roll_back([restore], e, what=f"limit of project {project_id}")
            raise
        log.info("project %d (%s): limit %d -> %d bytes", project_id, entry.directory, entry.limit_bytes, limit_bytes)

    def _ensure_tagged(self, entry: projects.ProjectEntry) -> bool:
        """Set the project up on its directory if the directory lost the id; True if it did."""
        if _tagged_with(entry.directory) == entry.project_id:
            return False
        log.warning("project %d: %s is not tagged with it; setting it up", entry.project_id, entry.directory)
        self.xfs.setup_project(entry.directory, entry.project_id)
        return True

    def _allocate(self, entries: list[projects.ProjectEntry], kernel_ids: Iterable[int]) -> int:
        taken = {e.project_id for e in entries} | set(kernel_ids)
        project_id = projects.MIN_PROJECT_ID
        while project_id in taken:
            project_id += 1
        if project_id > projects.MAX_PROJECT_ID:
            raise errors.ProjectIdsExhausted("every XFS project id is taken")
        return project_id

    def _inside_root(self, path: Path) -> bool:
        """``path`` (final component not followed) lies strictly inside the export root."""
        return self.export_root in _normalize(path).parents

    def _validate_directory(self, directory: Path) -> Path:
        raw = Path(directory)
        if not raw.is_absolute():
            raw = self.export_root / raw
        if _UNSAFE_PATH.search(str(raw)):
            raise errors.InvalidQuotaRequest(f"directory {str(raw)!r} contains whitespace or quotes")
        if raw.is_symlink():
            raise errors.InvalidQuotaRequest(f"directory {raw} is a symlink")
        try:
            path = raw.resolve(strict=True)
        except (OSError, RuntimeError) as e:
            raise errors.InvalidQuotaRequest(f"directory {raw} does not exist: {e}") from e
        if not path.is_dir():
            raise errors.InvalidQuotaRequest(f"{path} is not a directory")
        if self.export_root not in path.parents:
            raise errors.InvalidQuotaRequest(f"directory {raw} resolves to {path}, outside {self.export_root}")
        return path


def _validate_id(project_id: int) -> None:
    if isinstance(project_id, bool) or not isinstance(project_id, int):
        raise errors.InvalidQuotaRequest(f"project id must be an integer, got {project_id!r}")
    if not projects.MIN_PROJECT_ID <= project_id <= projects.MAX_PROJECT_ID:
        raise errors.InvalidQuotaRequest(
            f"project id {project_id} out of range {projects.MIN_PROJECT_ID}..{projects.MAX_PROJECT_ID}"
        )


def _validate_size(limit_bytes: int) -> None:
    if isinstance(limit_bytes, bool) or not isinstance(limit_bytes, int) or limit_bytes <= 0:
        raise errors.InvalidQuotaRequest(f"limit must be a positive number of bytes, got {limit_bytes!r}")


def _normalize(directory: Path) -> Path:
    """Absolute path with the parents resolved and the final component kept as is."""
    path = Path(os.path.abspath(directory))
    return Path(os.path.realpath(path.parent)) / path.name


def _tagged_with(directory: Path) -> int | None:
    """The directory's project id, or None if it is gone."""
    try:
        return fsxattr.project_id(directory)
    except OSError as e:
        if e.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):  # gone, or replaced by a symlink
            return None
        raise


def _roll_back(undo: list[tuple[str, Callable[[], None]]], cause: BaseException, *, what: str) -> None:
    """Run undo steps in reverse; a failing step is logged and noted on ``cause``."""
    for name, step in reversed(undo):
        try:
            step()
        except Exception as e:  # noqa: BLE001 - keep undoing; the original error is raised
            log.error("rolling back %s: cannot %s: %s", what, name, e)
            cause.add_note(f"rollback of {what} could not {name}: {e}")
        else:
            log.info("rolled back %s: %s", what, name)
