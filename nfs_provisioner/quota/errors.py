"""Errors of the XFS project quota component.

::

    QuotaError
    ├── QuotaUnavailableError       start-up check failed; the message says what to fix
    │   ├── NotXfsError             the export root is not on an XFS filesystem
    │   ├── ProjectQuotaOffError    XFS, but not mounted with prjquota/pquota (enforced)
    │   └── QuotaToolMissingError   ``xfs_quota`` is not installed / not on PATH
    ├── QuotaCommandError           an external command failed (exit code or stderr)
    ├── InvalidQuotaRequest         bad directory, project id or size; nothing was changed
    ├── ProjectNotFound             no project with that id in the projects file
    ├── ProjectMismatch             the id belongs to another directory than the caller said
    ├── QuotaShrinkRefused          new limit below what the project already uses
    ├── ProjectIdsExhausted         no free project id left
    └── QuotaStateError             the projects file or xfs_quota's report is unreadable

The root is an :class:`nfs_provisioner.errors.NFSProvisionerError`. Invalid requests are also ``ValueError``s.
Nothing here is retryable by type:
a ``QuotaCommandError`` carries the command, exit code and stderr for the log.
"""

from __future__ import annotations

from collections.abc import Sequence

from nfs_provisioner.errors import NFSProvisionerError


class QuotaError(NFSProvisionerError):
    """Base class of every error raised by ``nfs_provisioner.quota``."""


class QuotaUnavailableError(QuotaError):
    """Project quotas cannot be used on this export root / machine."""


class NotXfsError(QuotaUnavailableError):
    """The export root is not on XFS."""


class ProjectQuotaOffError(QuotaUnavailableError):
    """The export root is on XFS without enforced project quotas."""


class QuotaToolMissingError(QuotaUnavailableError):
    """``xfs_quota`` cannot be run."""


class QuotaCommandError(QuotaError):
    """An external command failed: non-zero exit, output on stderr, or a timeout."""

    def __init__(self, argv: Sequence[str], *, returncode: int | None, stderr: str, reason: str = "") -> None:
        self.argv = tuple(argv)
        self.returncode = returncode
        self.stderr = stderr
        detail = reason or (f"exit code {returncode}" if returncode else "error output")
        text = stderr.strip() or "(no error output)"
        super().__init__(f"command {' '.join(self.argv)!r} failed ({detail}): {text}")


class InvalidQuotaRequest(QuotaError, ValueError):
    """Bad input; nothing was changed."""


class ProjectNotFound(QuotaError, KeyError):
    """No project with that id is recorded."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class ProjectMismatch(QuotaError):
    """The project id is recorded for another directory than the caller expected."""


class QuotaShrinkRefused(QuotaError):
    """The requested limit is below the project's current usage."""


class ProjectIdsExhausted(QuotaError):
    """Every project id in range is taken."""


class QuotaStateError(QuotaError):
    """The projects file or xfs_quota's report cannot be parsed."""
