"""Errors of the Ganesha manager.

::

    GaneshaError
    ├── InvalidRequest          bad input (path outside the root, unknown squash, ...);
    │                           nothing was written
    ├── TemplateError           a template is missing, has an unfilled placeholder or
    │                           renders a broken block; nothing was written
    ├── ExportIdsExhausted      no free Export_Id left in the configured range
    ├── ClientsNotLive          Ganesha refused a new client list for some exports (their
    │                           files have it; the next set_clients tries them again)
    ├── ExportConflict          the name or path is already exported differently
    ├── ExportAddError          AddExport (or a step before it) failed; rolled back
    │   └── ExportIdTaken       the id is live in Ganesha for another path (now reserved)
    ├── DBusError               a D-Bus call failed (``name`` and ``message`` of the reply)
    │   ├── DBusRetryable       "another export admin operation is in progress"
    │   ├── ExportAlreadyActive re-add of a live Export_Id
    │   ├── ExportNotFound      "Export id not found"
    │   └── DBusUnavailable     no connection, or Ganesha is not on the bus
    └── GaneshaServerError      a process could not be started / stopped in time
        └── StartCancelled      the caller cancelled the start (a stop signal)

Retryable versus permanent is a type (``DBusRetryable`` is an :class:`nfs_provisioner.errors.Retryable`), not a
flag; the root is an :class:`nfs_provisioner.errors.NFSProvisionerError`.
"""

from __future__ import annotations

from nfs_provisioner.errors import NFSProvisionerError, Retryable


class GaneshaError(NFSProvisionerError):
    """Base class of every error raised by ``nfs_provisioner.ganesha``."""


class InvalidRequest(GaneshaError, ValueError):
    """The caller's input is invalid; nothing was written."""


class TemplateError(GaneshaError):
    """A template could not be rendered into a valid block; nothing was written."""


class ExportIdsExhausted(GaneshaError):
    """Every Export_Id of the configured range is in use."""


class ClientsNotLive(GaneshaError):
    """Ganesha did not take a new client list for some exports (UpdateExport failed); their files have it, and
    the next ``set_clients`` updates them again."""

    def __init__(self, names: tuple[str, ...], clients: tuple[str, ...]) -> None:
        shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
        super().__init__(f"Ganesha refused the client list {','.join(clients) or '(nobody)'} for {len(names)} "
                         f"exports ({shown}); they still serve their previous list")
        self.names = names
        self.clients = clients


class ExportConflict(GaneshaError):
    """An export with this name (or path) exists with a different definition."""


class ExportAddError(GaneshaError):
    """Adding an export failed; every step done so far was undone."""


class ExportIdTaken(ExportAddError):
    """Ganesha already serves this Export_Id for another path (an export we did not write).

    The id is reserved from then on, so a retry of the add gets another one."""


class DBusError(GaneshaError):
    """A D-Bus method call returned an error."""

    def __init__(self, *, method: str, name: str, message: str) -> None:
        super().__init__(f"{method}: {name}: {message}")
        self.method = method
        self.name = name
        self.message = message


class DBusRetryable(DBusError, Retryable):
    """Ganesha is busy with another export admin operation; try again."""


class ExportAlreadyActive(DBusError):
    """AddExport of an Export_Id that is already live."""


class ExportNotFound(DBusError):
    """The Export_Id is not known to Ganesha."""


class DBusUnavailable(DBusError):
    """The bus cannot be reached or Ganesha's name is not on it."""


class GaneshaServerError(GaneshaError):
    """A managed process failed to start, become ready, or stop."""


class StartCancelled(GaneshaServerError):
    """``GaneshaServer.start`` was cancelled by its caller (a stop signal); what it started is stopped."""
