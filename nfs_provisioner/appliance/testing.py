"""An in-memory :class:`~nfs_provisioner.appliance.provisioner.Exporter`, shipped for tests: :class:`MemoryExporter`.

It keeps what the appliance's provisioner exported (name -> id, path, root squash) and the client list, answers
the Exporter protocol as :class:`~nfs_provisioner.appliance.exporters.GaneshaExporter` does (an identical export
again is the same export, another definition under the name or another name for the path is an
``ExportConflict``, ids are the lowest free ones, 152 skipped), and can be told to fail the next calls of a
method (:meth:`MemoryExporter.fail`) or to hold an export unserved (:meth:`MemoryExporter.unserve`). Nothing is
served: the ``ganesha`` and ``e2e`` tests prove the same behaviour against the real Ganesha.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

from nfs_provisioner.appliance.provisioner import Exporter
from nfs_provisioner.ganesha import errors
from nfs_provisioner.ganesha.settings import RESERVED_EXPORT_IDS


@dataclass(frozen=True)
class Exported:
    export_id: int
    path: Path
    root_squash: bool


class MemoryExporter:
    """The Exporter protocol over a dict (see the module). Thread-safe."""

    def __init__(self, *, clients: tuple[str, ...] = ("*",)) -> None:
        self.exports: dict[str, Exported] = {}
        self.clients = clients
        self.calls: list[tuple[str, str]] = []
        """(method, export name) of every call that changes something (``set_clients``: its list), in order."""
        self._failures: dict[str, list[Exception]] = {}
        self._unserved: dict[str, str] = {}
        self._lock = threading.Lock()

    def fail(self, method: str, error: Exception | None = None, *, times: int = 1) -> None:
        """The next ``times`` calls of ``method`` (``export``, ``unexport``, ``set_clients``) raise ``error``
        (default: an ``ExportAddError``, as when Ganesha refused the export)."""
        with self._lock:
            err = error or errors.ExportAddError(f"{method} failed (MemoryExporter told to fail)")
            self._failures.setdefault(method, []).extend([err] * times)

    def recover(self) -> None:
        """Forget the failures still queued by :meth:`fail`."""
        with self._lock:
            self._failures.clear()

    def unserve(self, name: str, why: str) -> None:
        """Mark export ``name`` as existing but not served (as a held export: its directory went away)."""
        with self._lock:
            self._unserved[name] = why

    def _enter(self, method: str, what: str) -> None:
        with self._lock:
            self.calls.append((method, what))
            queued = self._failures.get(method)
            error = queued.pop(0) if queued else None
        if error is not None:
            raise error

    # ------------------------------------------------------------------ Exporter

    def export(self, *, name: str, path: Path, root_squash: bool, export_id: int | None = None) -> tuple[int, str]:
        self._enter("export", name)
        with self._lock:
            existing = self.exports.get(name)
            if existing is not None:
                if (existing.path, existing.root_squash) != (path, root_squash):
                    raise errors.ExportConflict(f"export {name!r} exists with a different definition "
                                                f"(id {existing.export_id})")
                return existing.export_id, self._block(existing)
            for other, e in self.exports.items():
                if e.path == path:
                    raise errors.ExportConflict(f"path {str(path)!r} is already exported as {other!r}")
            taken = {e.export_id for e in self.exports.values()} | RESERVED_EXPORT_IDS
            if export_id is None or export_id in taken or not 1 <= export_id <= 65535:
                export_id = next(i for i in range(1, 65536) if i not in taken)
            made = self.exports[name] = Exported(export_id, path, root_squash)
            return export_id, self._block(made)

    def unexport(self, name: str) -> bool:
        self._enter("unexport", name)
        with self._lock:
            self._unserved.pop(name, None)
            return self.exports.pop(name, None) is not None

    def set_clients(self, clients: tuple[str, ...]) -> None:
        self._enter("set_clients", ",".join(clients))
        with self._lock:
            self.clients = tuple(clients)

    def count(self) -> int:
        with self._lock:
            return len(self.exports)

    def has(self, name: str) -> bool:
        with self._lock:
            return name in self.exports

    def root_squash(self, name: str) -> bool | None:
        with self._lock:
            e = self.exports.get(name)
            return None if e is None else e.root_squash

    def path_of(self, name: str) -> Path | None:
        with self._lock:
            e = self.exports.get(name)
            return None if e is None else e.path

    def unserved(self) -> dict[str, str]:
        with self._lock:
            return {n: why for n, why in self._unserved.items() if n in self.exports}

    def serve_again(self, name: str) -> str | None:
        with self._lock:
            if name not in self.exports:
                return None
            why = self._unserved.get(name)
            if why is not None and self.exports[name].path.is_dir():
                del self._unserved[name]
                return None
            return why

    def _block(self, e: Exported) -> str:
        squash = "Root_Id_Squash" if e.root_squash else "No_Root_Squash"
        return (f'EXPORT {{\n    Export_Id = {e.export_id};\n    Path = "{e.path}";\n    Squash = {squash};\n'
                f"    CLIENT {{ Clients = {', '.join(self.clients)}; }}\n}}\n")


def _is_an_exporter(e: MemoryExporter) -> Exporter:
    """mypy checks here that MemoryExporter keeps the Exporter protocol."""
    return e
