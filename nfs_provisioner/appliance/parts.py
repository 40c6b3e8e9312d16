"""What :class:`~nfs_provisioner.appliance.provisioner.NFSProvisioner` is made of: the interfaces it needs from an
NFS server (:class:`Exporter`) and from the quota manager (:class:`Quotas`), its :class:`ApplianceConfig`, and
:class:`VolumeParts`, the collaborators its deletion (``appliance.removal``) and expansion
(``appliance.expansion``) paths work with. No I/O here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from nfs_provisioner.appliance import clones as clones_mod
from nfs_provisioner.volumes import filesystems as fs_mod
from nfs_provisioner.volumes.directories import VolumeDirectories
from nfs_provisioner.volumes.records import VolumeRecords


class Exporter(Protocol):
    """What the provisioner needs from an NFS server (Ganesha, or the kernel's exportfs)."""

    def export(self, *, name: str, path: Path, root_squash: bool, export_id: int | None = None) -> tuple[int, str]:
        """Export ``path`` as ``name`` (idempotent); returns (export id, a description of the block).

        ``export_id``: the id to reuse if it is free (rebuilding a lost export), where ids are chosen."""

    def unexport(self, name: str) -> bool:
        """Withdraw export ``name``; False if there was none."""

    def set_clients(self, clients: tuple[str, ...]) -> None:
        """Who may mount every export, from now on (``nfs_provisioner.appliance.nodes``); empty = nobody. Raises
        when the list is not in force for every export (the caller calls again with backoff)."""

    def count(self) -> int:
        """Volumes exported now (the pseudo root does not count)."""

    def has(self, name: str) -> bool:
        """Whether export ``name`` exists."""

    def root_squash(self, name: str) -> bool | None:
        """Whether export ``name`` squashes root (None: no such export)."""

    def path_of(self, name: str) -> Path | None:
        """The directory export ``name`` serves (None: no such export)."""

    def unserved(self) -> dict[str, str]:
        """Exports that exist but the NFS server does not serve now, each with why (no I/O: asked often)."""

    def serve_again(self, name: str) -> str | None:
        """Serve export ``name`` if it is unserved and its cause is gone; None: served (or no such export), else
        why it still is not."""


class Quotas(Protocol):
    """What the provisioner needs from the XFS project quota manager."""

    def add(self, directory: Path, limit_bytes: int) -> int:
        """Give ``directory`` a project with a hard block limit (idempotent); returns the project id."""

    def remove_directory(self, directory: Path) -> bool:
        """Remove the project of ``directory``, if any."""

    def project_of(self, directory: Path) -> int | None:
        """The project id recorded for ``directory``."""

    def set_limit(self, project_id: int, limit_bytes: int) -> None:
        """Change a project's hard block limit (refuses going below its usage)."""


@dataclass(frozen=True)
class ApplianceConfig:
    identity: str
    """This instance's UUID (stored on every PV as ``Provisioner_Id``)."""
    server: Callable[[], str]
    """The NFS server address to put into PVs (resolved lazily, may depend on the cluster)."""
    max_exports: int = -1
    """-1 = no limit; counts volumes only."""

@dataclass(frozen=True)
class VolumeParts:
    """The provisioner's collaborators as they are at one call (tests may replace them on the provisioner)."""

    config: ApplianceConfig
    directories: VolumeDirectories
    records: VolumeRecords
    exporter: Exporter
    quotas: Quotas | None
    clones: clones_mod.Clones | None
    filesystems: fs_mod.FilesystemVolumes | None
