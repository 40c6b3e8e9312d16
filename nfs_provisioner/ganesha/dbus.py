"""Typed facade over Ganesha's D-Bus API: one Python method per Ganesha method used.

The only module that builds D-Bus messages. ``JeepneyTransport`` keeps a few
connections open (pure Python, no ``dbus-send``), lends one to each call so
several threads may share them, and reconnects once if a socket breaks. A
different transport only needs ``call()`` and ``close()``. Every call reports
its latency and error name to an optional observer (the metrics).
"""

from __future__ import annotations

import dataclasses
import logging
import queue
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from jeepney import DBusAddress, HeaderFields, Message, MessageType, new_method_call
from jeepney.bus_messages import MatchRule, message_bus
from jeepney.io.blocking import DBusConnection, open_dbus_connection

from nfs_provisioner.ganesha import errors

log = logging.getLogger(__name__)

EXPORTMGR_PATH = "/org/ganesha/nfsd/ExportMgr"
EXPORTMGR_IFACE = "org.ganesha.nfsd.exportmgr"
ADMIN_PATH = "/org/ganesha/nfsd/admin"
ADMIN_IFACE = "org.ganesha.nfsd.admin"
HEARTBEAT_PATH = "/org/ganesha/nfsd/heartbeat"

#: observer(method, seconds, error name or None)
Observer = Callable[[str, float, "str | None"], None]

_UNAVAILABLE = {
    "org.freedesktop.DBus.Error.ServiceUnknown",
    "org.freedesktop.DBus.Error.NameHasNoOwner",
    "org.freedesktop.DBus.Error.NoReply",
    "org.freedesktop.DBus.Error.Disconnected",
    "org.freedesktop.DBus.Error.NoServer",
}


class Transport(Protocol):
    def call(self, message: Message, *, timeout: float) -> Message: ...

    def close(self) -> None: ...


class _Connection:
    """One bus connection, opened on first use and again after it broke."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.conn: DBusConnection | None = None

    def open(self) -> DBusConnection:
        if self.conn is None:
            try:
                self.conn = open_dbus_connection(bus=self.address)
            except (OSError, ValueError) as e:
                raise errors.DBusUnavailable(method="connect", name=type(e).__name__, message=str(e)) from e
        return self.conn

    def drop(self) -> None:
        if self.conn is not None:
            try:
                self.conn.close()
            except OSError:
                log.debug("closing a broken D-Bus connection failed", exc_info=True)
            self.conn = None


class JeepneyTransport:
    """A few blocking jeepney connections shared by threads: each call borrows an idle one, so calls
    from several threads overlap (Ganesha still runs them one at a time, but the bus hops, the
    (de)serialisation and the waits for a CPU do not queue behind each other)."""

    def __init__(self, address: str, *, connections: int = 4) -> None:
        if connections < 1:
            raise ValueError("connections must be >= 1")
        self.address = address
        self._all = [_Connection(address) for _ in range(connections)]
        self._idle: queue.LifoQueue[_Connection] = queue.LifoQueue()
        for c in self._all:
            self._idle.put(c)

    def call(self, message: Message, *, timeout: float) -> Message:
        c = self._idle.get()
        try:
            for attempt in (1, 2):
                conn = c.open()
                try:
                    reply: Message = conn.send_and_get_reply(message, timeout=timeout)
                    return reply
                except TimeoutError as e:
                    c.drop()  # a late reply must not be read as the answer to the next call
                    raise errors.DBusUnavailable(
                        method=str(message.header.fields.get(HeaderFields.member)),
                        name="Timeout",
                        message=f"no reply within {timeout}s",
                    ) from e
                except OSError as e:  # the bus went away: reconnect once
                    c.drop()
                    if attempt == 2:
                        raise errors.DBusUnavailable(method="call", name=type(e).__name__, message=str(e)) from e
            raise AssertionError("unreachable")
        finally:
            self._idle.put(c)

    def close(self) -> None:
        """Close every connection (waits for calls in progress to return theirs)."""
        taken = [self._idle.get() for _ in self._all]
        for c in taken:
            c.drop()
        for c in taken:
            self._idle.put(c)


@dataclasses.dataclass(frozen=True)
class ExportInfo:
    """One entry of ShowExports."""

    export_id: int
    path: str


@dataclasses.dataclass(frozen=True)
class DisplayedExport:
    """DisplayExport's reply: id, path, pseudo, tag and the client list."""

    export_id: int
    path: str
    pseudo: str
    tag: str
    clients: tuple[str, ...]


class GaneshaDBus:
    """Ganesha's ExportMgr and admin interfaces, and its heartbeat signal."""

    def __init__(
        self,
        *,
        address: str,
        bus_name: str = "org.ganesha.nfsd",
        transport: Transport | None = None,
        observer: Observer | None = None,
        timeout: float = 10.0,
        busy_retry_for: float = 10.0,
    ) -> None:
        self.address = address
        self.bus_name = bus_name
        self.transport: Transport = transport or JeepneyTransport(address)
        self.observer = observer
        self.timeout = timeout
        self.busy_retry_for = busy_retry_for
        self._exportmgr = DBusAddress(EXPORTMGR_PATH, bus_name=bus_name, interface=EXPORTMGR_IFACE)
        self._admin = DBusAddress(ADMIN_PATH, bus_name=bus_name, interface=ADMIN_IFACE)

    # --- plumbing ----------------------------------------------------------------------------------------------

    def _call(self, method: str, message: Message, *, timeout: float | None = None) -> tuple[Any, ...]:
        start = time.perf_counter()
        error: str | None = None
        try:
            reply = self.transport.call(message, timeout=timeout or self.timeout)
            if reply.header.message_type == MessageType.error:
                name = str(reply.header.fields.get(HeaderFields.error_name, "unknown"))
                text = str(reply.body[0]) if reply.body else ""
                error = name
                raise _error_for(method=method, name=name, message=text)
            return tuple(reply.body)
        except errors.DBusError as e:
            error = error or e.name
            raise
        finally:
            if self.observer is not None:
                self.observer(method, time.perf_counter() - start, error)

    def _export_call(self, method: str, signature: str, args: tuple[Any, ...], *,
                     timeout: float | None = None) -> tuple[Any, ...]:
        """ExportMgr calls retry while Ganesha says another admin operation is in progress."""
        deadline = time.monotonic() + self.busy_retry_for
        delay = 0.005
        while True:
            msg = new_method_call(self._exportmgr, method, signature, args) if signature else new_method_call(
                self._exportmgr, method
            )
            try:
                return self._call(method, msg, timeout=timeout)
            except errors.DBusRetryable:
                if time.monotonic() + delay > deadline:
                    raise
                log.debug("%s: Ganesha busy with another admin operation, retrying in %.3fs", method, delay)
                time.sleep(delay)
                delay = min(delay * 2, 0.2)

    def _admin_call(self, method: str, signature: str = "", args: tuple[Any, ...] = (), *,
                    timeout: float | None = None) -> tuple[Any, ...]:
        msg = new_method_call(self._admin, method, signature, args) if signature else new_method_call(
            self._admin, method
        )
        body = self._call(method, msg, timeout=timeout)
        # Admin replies end with a (bool success, string message) status pair.
        if len(body) >= 2 and body[-2] is False:
            raise errors.DBusError(method=method, name="StatusFalse", message=str(body[-1]))
        return body

    # --- the bus itself ----------------------------------------------------------------------------------------

    def list_names(self, *, timeout: float = 2.0) -> list[str]:
        body = self._call("ListNames", message_bus.ListNames(), timeout=timeout)
        return list(body[0])

    def on_bus(self, *, timeout: float = 2.0) -> bool:
        """Is Ganesha's name owned on the bus?"""
        return self.bus_name in self.list_names(timeout=timeout)

    # --- ExportMgr ---------------------------------------------------------------------------------------------

    def add_export(self, *, config_file: Path, export_id: int) -> str:
        """``AddExport(s path, s expr) -> s``: load ``EXPORT(Export_Id=N)`` from ``config_file``."""
        body = self._export_call("AddExport", "ss", (str(config_file), f"EXPORT(Export_Id={export_id})"))
        return str(body[0]) if body else ""

    def update_export(self, *, config_file: Path, export_id: int) -> str:
        """``UpdateExport(s path, s expr) -> s``: re-read the block's dynamic options."""
        body = self._export_call("UpdateExport", "ss", (str(config_file), f"EXPORT(Export_Id={export_id})"))
        return str(body[0]) if body else ""

    def remove_export(self, export_id: int) -> None:
        """``RemoveExport(q id)``; unknown ids raise ``ExportNotFound``."""
        if export_id == 0:
            raise errors.InvalidRequest("Export_Id 0 is the pseudo root and cannot be removed")
        self._export_call("RemoveExport", "q", (export_id,))

    def display_export(self, export_id: int) -> DisplayedExport:
        """``DisplayExport(q id) -> (q, s, s, s, a(...))``."""
        body = self._export_call("DisplayExport", "q", (export_id,))
        clients = tuple(str(c[0]) for c in body[4]) if len(body) > 4 else ()
        return DisplayedExport(
            export_id=int(body[0]), path=str(body[1]), pseudo=str(body[2]), tag=str(body[3]), clients=clients
        )

    def show_exports(self, *, timeout: float | None = None) -> list[ExportInfo]:
        """``ShowExports() -> ((tt), a(...))``: every live export, the pseudo root (id 0) included."""
        body = self._export_call("ShowExports", "", (), timeout=timeout)
        return [ExportInfo(export_id=int(e[0]), path=str(e[1])) for e in body[1]]

    # --- admin -------------------------------------------------------------------------------------------------

    def grace(self, event: str = "0") -> None:
        """``grace(s) -> (b, s)``: start a grace period (``event`` as Ganesha parses it)."""
        self._admin_call("grace", "s", (event,))

    def get_grace(self, *, timeout: float | None = None) -> bool:
        """``get_grace() -> (b, b, s)``: is the server in its grace period? (Also the health probe: a reply
        of constant size, whatever the number of exports.)"""
        return bool(self._admin_call("get_grace", timeout=timeout)[0])

    def shutdown(self) -> None:
        """``shutdown() -> (b, s)``: ask Ganesha to exit cleanly."""
        self._admin_call("shutdown")

    # --- heartbeat ---------------------------------------------------------------------------------------------

    def wait_heartbeat(self, *, timeout: float) -> bool:
        """Wait for one ``heartbeat(b healthy)`` signal; return its value (False on timeout)."""
        start = time.perf_counter()
        rule = MatchRule(type="signal", path=HEARTBEAT_PATH)
        try:
            conn = open_dbus_connection(bus=self.address)
        except (OSError, ValueError) as e:
            raise errors.DBusUnavailable(method="heartbeat", name=type(e).__name__, message=str(e)) from e
        try:
            conn.send_and_get_reply(message_bus.AddMatch(rule), timeout=2.0)
            with conn.filter(rule) as queue:
                try:
                    msg = conn.recv_until_filtered(queue, timeout=timeout)
                except TimeoutError:
                    return False
            return bool(msg.body[0]) if msg.body else True
        finally:
            conn.close()
            if self.observer is not None:
                self.observer("heartbeat", time.perf_counter() - start, None)

    def close(self) -> None:
        self.transport.close()


def _error_for(*, method: str, name: str, message: str) -> errors.DBusError:
    low = message.lower()
    if "admin operation is in progress" in low:
        return errors.DBusRetryable(method=method, name=name, message=message)
    if "already active" in low:
        return errors.ExportAlreadyActive(method=method, name=name, message=message)
    if "export id not found" in low:
        return errors.ExportNotFound(method=method, name=name, message=message)
    if name in _UNAVAILABLE:
        return errors.DBusUnavailable(method=method, name=name, message=message)
    return errors.DBusError(method=method, name=name, message=message)
