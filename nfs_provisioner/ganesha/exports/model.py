"""What the export manager works with: a request, an export as its file records it, and the results of the
batch calls. Plain data, no I/O."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from nfs_provisioner.ganesha.settings import AccessType, Squash

HEADER = "# nfs-provisioner-export: "
"""The first line of every export file: this prefix and the export as JSON (:meth:`Export.header`)."""


@dataclasses.dataclass(frozen=True)
class ExportRequest:
    """What the appliance asks for: export ``path`` (a directory inside the export root) as ``name``."""

    name: str
    path: Path
    squash: Squash = Squash.NO_ROOT_SQUASH
    access_type: AccessType = AccessType.RW
    clients: tuple[str, ...] | None = None
    """Client list (``*`` or CIDRs); None = the manager's default (``--export-subnet``)."""
    export_id: int | None = None
    """The id to use if it is free (rebuilding a lost export keeps clients' handles valid); else the lowest free."""


@dataclasses.dataclass(frozen=True)
class Export:
    """A live export, as stored in its file."""

    name: str
    export_id: int
    path: Path
    squash: Squash
    access_type: AccessType
    clients: tuple[str, ...]
    config_file: Path

    @property
    def fsid(self) -> str:
        return f"{self.export_id}.{self.export_id}"

    def same_definition(self, other: Export) -> bool:
        return (self.path, self.squash, self.access_type, self.clients) == (
            other.path,
            other.squash,
            other.access_type,
            other.clients,
        )

    def header(self) -> str:
        data = {
            "name": self.name,
            "export_id": self.export_id,
            "path": str(self.path),
            "squash": self.squash.value,
            "access_type": self.access_type.value,
            "clients": list(self.clients),
        }
        return HEADER + json.dumps(data, sort_keys=True) + "\n"


@dataclasses.dataclass(frozen=True)
class ReconcileResult:
    readded: tuple[int, ...]
    """Ids of our exports Ganesha did not have, added again."""
    failed: tuple[int, ...]
    """Ids of our exports not served: Ganesha refused to add them again, or they are held (see the log)."""
    foreign: tuple[int, ...]
    """Ids live in Ganesha that are not ours (kept reserved, never reused)."""


@dataclasses.dataclass(frozen=True)
class ClientsResult:
    changed: tuple[str, ...]
    """Exports whose client list was rewritten (files, and live with ``live=True``)."""
    failed: tuple[str, ...]
    """Exports Ganesha refused to update live (see the log); their files have the new list."""
