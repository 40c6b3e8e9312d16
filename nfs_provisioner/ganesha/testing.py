"""An in-memory NFS-Ganesha behind the D-Bus facade, shipped for tests: :class:`FakeGaneshaDBus`.

It is a :class:`~nfs_provisioner.ganesha.dbus.GaneshaDBus` whose export methods answer from a table of live
exports instead of a bus, as Ganesha answers them: ``AddExport`` reads the export file it is given (the
``Export_Id`` must match, the file must exist) and refuses a live id (``ExportAlreadyActive``);
``RemoveExport``, ``UpdateExport`` and ``DisplayExport`` of an unknown id raise ``ExportNotFound``;
``ShowExports`` lists the pseudo root (id 0) and every live export. A test can make the next calls of a
method fail (:meth:`FakeGaneshaDBus.fail`) or hold them until it lets them go (:meth:`FakeGaneshaDBus.hold`),
which is how the export manager's locking rules are exercised without a server. What it is not: an NFS
server (nothing is served), nor a check of the block's options beyond its id and path; the ``ganesha``
tests prove the same behaviour against the real Ganesha.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from nfs_provisioner.ganesha import config, errors
from nfs_provisioner.ganesha.dbus import DisplayedExport, ExportInfo, GaneshaDBus


class _NoBus:
    """The transport of a facade that never reaches a bus (every method that would is overridden)."""

    def call(self, message: Any, *, timeout: float) -> Any:
        raise errors.DBusUnavailable(method="call", name="NoBus", message="FakeGaneshaDBus has no bus")

    def close(self) -> None:
        pass


class Hold:
    """Calls of one method wait here until :meth:`release`; :attr:`entered` is set once one is waiting."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.released = threading.Event()

    def release(self) -> None:
        self.released.set()


class FakeGaneshaDBus(GaneshaDBus):
    """Ganesha's export table in memory (see the module). Thread-safe."""

    def __init__(self) -> None:
        super().__init__(address="unix:path=/nonexistent/fake-ganesha", transport=_NoBus())
        self.live: dict[int, str] = {}
        """Export id -> path of every live export (the pseudo root aside)."""
        self.calls: list[tuple[str, int]] = []
        """(method, export id) of every export call, in order."""
        self._lock = threading.Lock()
        self._failures: dict[str, list[Exception]] = {}
        self._holds: dict[str, Hold] = {}

    # ------------------------------------------------------------------ what tests use

    def fail(self, method: str, error: Exception | None = None, *, times: int = 1) -> None:
        """The next ``times`` calls of ``method`` (``AddExport``, ``RemoveExport``, ``UpdateExport``, ...) raise
        ``error`` (default: ``DBusUnavailable``, as when Ganesha is not on the bus)."""
        err = error or errors.DBusUnavailable(method=method, name="org.freedesktop.DBus.Error.ServiceUnknown",
                                              message="The name org.ganesha.nfsd was not provided")
        with self._lock:
            self._failures.setdefault(method, []).extend([err] * times)

    def hold(self, method: str) -> Hold:
        """Calls of ``method`` from now on wait until the returned hold is released."""
        h = self._holds[method] = Hold()
        return h

    # ------------------------------------------------------------------ GaneshaDBus

    def _enter(self, method: str, export_id: int) -> None:
        with self._lock:
            self.calls.append((method, export_id))
            queued = self._failures.get(method)
            error = queued.pop(0) if queued else None
        hold = self._holds.get(method)
        if hold is not None:
            hold.entered.set()
            hold.released.wait(30)
        if error is not None:
            raise error

    def add_export(self, *, config_file: Path, export_id: int) -> str:
        self._enter("AddExport", export_id)
        path = self._read(config_file, export_id, "AddExport")
        with self._lock:
            if export_id in self.live:
                raise errors.ExportAlreadyActive(method="AddExport", name="org.freedesktop.DBus.Error.InvalidArgs",
                                                 message=f"Export with id {export_id} already active")
            self.live[export_id] = path
        return f"{path} exported at {path}"

    def update_export(self, *, config_file: Path, export_id: int) -> str:
        self._enter("UpdateExport", export_id)
        self._known(export_id, "UpdateExport")
        self._read(config_file, export_id, "UpdateExport")
        return "updated"

    def remove_export(self, export_id: int) -> None:
        if export_id == 0:
            raise errors.InvalidRequest("Export_Id 0 is the pseudo root and cannot be removed")
        self._enter("RemoveExport", export_id)
        with self._lock:
            self._known(export_id, "RemoveExport")
            del self.live[export_id]

    def display_export(self, export_id: int) -> DisplayedExport:
        self._enter("DisplayExport", export_id)
        path = self._known(export_id, "DisplayExport")
        return DisplayedExport(export_id=export_id, path=path, pseudo=path, tag="", clients=())

    def show_exports(self, *, timeout: float | None = None) -> list[ExportInfo]:
        self._enter("ShowExports", 0)
        with self._lock:
            return [ExportInfo(export_id=0, path="/"), *(ExportInfo(export_id=i, path=p)
                                                          for i, p in sorted(self.live.items()))]

    def list_names(self, *, timeout: float = 2.0) -> list[str]:
        return ["org.freedesktop.DBus", self.bus_name]

    def grace(self, event: str = "0") -> None:
        pass

    def get_grace(self, *, timeout: float | None = None) -> bool:
        return False

    def shutdown(self) -> None:
        pass

    def wait_heartbeat(self, *, timeout: float) -> bool:
        return True

    # ------------------------------------------------------------------ helpers

    def _known(self, export_id: int, method: str) -> str:
        path = self.live.get(export_id)
        if path is None:
            raise errors.ExportNotFound(method=method, name="org.freedesktop.DBus.Error.InvalidArgs",
                                        message=f"Export id not found: {export_id}")
        return path

    @staticmethod
    def _read(config_file: Path, export_id: int, method: str) -> str:
        """The block's ``Path``, as Ganesha reads the file (its ``Export_Id`` must be the one asked for)."""
        try:
            text = config_file.read_text()
            block = config.parse_block("\n".join(line for line in text.splitlines() if not line.startswith("#")))
        except (OSError, errors.TemplateError) as e:
            raise errors.DBusError(method=method, name="org.freedesktop.DBus.Error.InvalidFileArguments",
                                   message=f"cannot read {config_file}: {e}") from e
        if block.get("export_id") != str(export_id):
            raise errors.DBusError(method=method, name="org.freedesktop.DBus.Error.InvalidArgs",
                                   message=f"no EXPORT with Export_Id {export_id} in {config_file}")
        return block.get("path", "").strip('"')
