"""Running ``xfs_quota``: an injectable command runner and a typed facade.

One Python method per xfs_quota command the component uses. xfs_quota exits 0
after most failures ("cannot setup path for project dir ...: No such file or
directory"), so anything on stderr counts as a failure too.
"""

from __future__ import annotations

import logging
import os
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from nfs_provisioner.quota import errors, report

log = logging.getLogger(__name__)

XFS_QUOTA = "xfs_quota"


@dataclass(frozen=True)
class CommandResult:
    """What a finished command left behind."""

    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str


class Runner(Protocol):
    """Runs one command to completion.

    Raises ``FileNotFoundError`` when the program does not exist and
    ``errors.QuotaCommandError`` on a timeout; any exit code is returned."""

    def __call__(self, argv: Sequence[str]) -> CommandResult: ...


@dataclass(frozen=True)
class SubprocessRunner:
    """The default runner: ``subprocess.run`` with a timeout (seconds) and an
    optional environment (``None`` inherits this process's)."""

    timeout: float = 120.0
    env: Mapping[str, str] | None = None

    def __call__(self, argv: Sequence[str]) -> CommandResult:
        args = [str(a) for a in argv]
        try:
            proc = subprocess.run(
                args,
                capture_output=True,
                text=True,
                timeout=self.timeout,
                env=dict(self.env) if self.env is not None else None,
                check=False,
            )
        except subprocess.TimeoutExpired as e:
            stderr = e.stderr.decode(errors="replace") if isinstance(e.stderr, bytes) else (e.stderr or "")
            raise errors.QuotaCommandError(
                args, returncode=None, stderr=stderr, reason=f"timed out after {self.timeout}s"
            ) from e
        return CommandResult(argv=tuple(args), returncode=proc.returncode, stdout=proc.stdout, stderr=proc.stderr)


@dataclass(frozen=True)
class XfsQuota:
    """``xfs_quota -x`` in expert mode against one mounted XFS filesystem.

    ``-D /dev/null`` keeps the host's /etc/projects out of every command: the
    component passes directories and ids explicitly."""

    mount_point: Path
    runner: Runner

    def version(self) -> str:
        """``xfs_quota -V``; ``QuotaToolMissingError`` when it cannot be run."""
        try:
            result = self.runner([XFS_QUOTA, "-V"])
        except FileNotFoundError as e:
            raise errors.QuotaToolMissingError(
                f"{XFS_QUOTA} is not installed or not on PATH ({e}); install xfsprogs "
                "(Debian: apt-get install xfsprogs) or run without XFS quotas"
            ) from e
        if result.returncode != 0:
            raise errors.QuotaToolMissingError(
                f"{XFS_QUOTA} -V failed with exit code {result.returncode}: {result.stderr.strip()}"
            )
        return result.stdout.strip()

    def setup_project(self, directory: Path, project_id: int) -> None:
        """``project -s -p DIR ID``: tag DIR (recursively) with ID and set the inherit flag."""
        self._run(f"project -s -p {directory} {project_id}")

    def clear_project(self, directory: Path, project_id: int) -> None:
        """``project -C -p DIR ID``: put DIR (recursively) back into project 0."""
        self._run(f"project -C -p {directory} {project_id}")

    def set_block_hard_limit(self, project_id: int, limit_bytes: int) -> None:
        """``limit -p bhard=BYTES ID``; 0 removes the limit."""
        self._run(f"limit -p bhard={limit_bytes} {project_id}")

    def report(self) -> dict[int, report.ReportEntry]:
        """``report -p -b -n -N``: block usage and limits of every project the kernel knows."""
        result = self._run("report -p -b -n -N")
        return report.parse_report(result.stdout)

    def _run(self, command: str) -> CommandResult:
        argv = [XFS_QUOTA, "-x", "-D", os.devnull, "-c", command, str(self.mount_point)]
        try:
            result = self.runner(argv)
        except FileNotFoundError as e:
            raise errors.QuotaToolMissingError(f"{XFS_QUOTA} is not installed or not on PATH ({e})") from e
        if result.returncode != 0 or result.stderr.strip():
            raise errors.QuotaCommandError(argv, returncode=result.returncode, stderr=result.stderr)
        log.debug("ran %s", " ".join(argv))
        return result
