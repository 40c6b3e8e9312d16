"""Exporters: how a volume directory becomes an NFS export.

:class:`GaneshaExporter` adapts the Ganesha manager (one file per export +
live AddExport/RemoveExport) to the provisioner's ``Exporter`` protocol.
"""

from __future__ import annotations

from pathlib import Path

from nfs_provisioner.ganesha import errors, exports
from nfs_provisioner.ganesha.settings import Squash


class GaneshaExporter:
    """Every export gets the manager's client list (``default_clients``), which :meth:`set_clients` changes."""

    def __init__(self, manager: exports.ExportManager) -> None:
        self.manager = manager

    def set_clients(self, clients: tuple[str, ...]) -> None:
        """Who may mount, from now on and for every live export (an empty tuple: nobody). Raises
        ``errors.ClientsNotLive`` when Ganesha refused the list for some exports (a later call retries them), and
        ``errors.InvalidRequest`` for a list Ganesha cannot take (nothing changed)."""
        result = self.manager.set_clients(clients)
        if result.failed:
            raise errors.ClientsNotLive(result.failed, clients)

    def export(self, *, name: str, path: Path, root_squash: bool, export_id: int | None = None) -> tuple[int, str]:
        squash = Squash.ROOT_ID_SQUASH if root_squash else Squash.NO_ROOT_SQUASH
        export = self.manager.add(exports.ExportRequest(name=name, path=path, squash=squash, export_id=export_id))
        text = exports.read_export_file(export.config_file)
        block = "".join(line for line in text.splitlines(keepends=True) if not line.startswith(exports.HEADER))
        return export.export_id, block

    def unexport(self, name: str) -> bool:
        return self.manager.remove(name)

    def count(self) -> int:
        return len(self.manager.list_exports())

    def has(self, name: str) -> bool:
        return self.manager.get(name) is not None

    def root_squash(self, name: str) -> bool | None:
        export = self.manager.get(name)
        return None if export is None else export.squash is not Squash.NO_ROOT_SQUASH

    def path_of(self, name: str) -> Path | None:
        export = self.manager.get(name)
        return None if export is None else export.path

    def export_ids(self) -> dict[int, str]:
        """Export_Id -> name of every export (held ones included: their ids are taken)."""
        return {e.export_id: e.name for e in self.manager.list_exports()}

    def reserve_ids(self, export_ids: list[int]) -> list[int]:
        """Keep these ids from new exports (see ``ExportManager.reserve``); returns those reserved."""
        return self.manager.reserve(export_ids)

    def unserved(self) -> dict[str, str]:
        return self.manager.unserved()

    def serve_again(self, name: str) -> str | None:
        return self.manager.serve_again(name)
