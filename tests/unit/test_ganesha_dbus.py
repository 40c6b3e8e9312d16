"""The D-Bus facade's error mapping and busy-retry, through a scripted transport (no bus needed).

The facade's transport is an interface (``call``/``close``); this in-test
transport answers with real jeepney messages built from the error names and
strings Ganesha 4.3 sends (see ../shared/ENVIRONMENT.md). The same mapping is
exercised against the real Ganesha in test_ganesha_exports.py.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from jeepney import HeaderFields, Message, new_error, new_method_return

from nfs_provisioner.ganesha import errors
from nfs_provisioner.ganesha.dbus import GaneshaDBus

pytestmark = pytest.mark.unit

Reply = Callable[[Message], Message]
BUSY = "another export admin operation is in progress, try again later"


def error(name: str, text: str) -> Reply:
    return lambda msg: new_error(msg, f"org.freedesktop.DBus.Error.{name}", "s", (text,))


def ok(signature: str | None = None, body: tuple[object, ...] = ()) -> Reply:
    return lambda msg: new_method_return(msg, signature, body)


class ScriptedTransport:
    def __init__(self, replies: list[Reply]) -> None:
        self.replies = replies
        self.calls: list[tuple[str, tuple[object, ...]]] = []

    def call(self, message: Message, *, timeout: float) -> Message:
        self.calls.append((str(message.header.fields[HeaderFields.member]), tuple(message.body)))
        return self.replies.pop(0)(message)

    def close(self) -> None:
        pass


def facade(replies: list[Reply], **kw: object) -> tuple[GaneshaDBus, ScriptedTransport, list[tuple[str, str | None]]]:
    t = ScriptedTransport(replies)
    seen: list[tuple[str, str | None]] = []
    d = GaneshaDBus(
        address="unix:path=/nonexistent",
        bus_name="x.org.ganesha.nfsd",
        transport=t,
        observer=lambda method, seconds, err: seen.append((method, err)),
        **kw,  # type: ignore[arg-type]
    )
    return d, t, seen


def test_busy_is_retried_until_success() -> None:
    d, t, seen = facade([error("InvalidArgs", BUSY), error("InvalidArgs", BUSY), ok("s", ("1 exports added",))])
    assert d.add_export(config_file=Path("/c/a.conf"), export_id=9) == "1 exports added"
    assert t.calls == [("AddExport", ("/c/a.conf", "EXPORT(Export_Id=9)"))] * 3
    assert seen == [
        ("AddExport", "org.freedesktop.DBus.Error.InvalidArgs"),
        ("AddExport", "org.freedesktop.DBus.Error.InvalidArgs"),
        ("AddExport", None),
    ]


def test_busy_for_too_long_is_a_retryable_error() -> None:
    d, t, _ = facade([error("InvalidArgs", BUSY)] * 100, busy_retry_for=0.05)
    with pytest.raises(errors.DBusRetryable):
        d.remove_export(3)
    assert 1 < len(t.calls) < 100


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        (error("InvalidFileContent", "Selected entries in /c/a.conf already active!!!"), errors.ExportAlreadyActive),
        (error("InvalidArgs", "lookup_export failed with Export id not found"), errors.ExportNotFound),
        (error("ServiceUnknown", "The name is not activatable"), errors.DBusUnavailable),
        (error("InvalidArgs", "error 2 (No such file or directory) when attempting to stat"), errors.DBusError),
    ],
)
def test_error_mapping(reply: Reply, expected: type[errors.DBusError]) -> None:
    d, _, _ = facade([reply])
    with pytest.raises(expected) as info:
        d.add_export(config_file=Path("/c/a.conf"), export_id=1)
    assert type(info.value) is expected
    assert info.value.method == "AddExport" and info.value.message


def test_typed_replies() -> None:
    clients = [("10.0.0.0/8", 0, 0, 0, 0, 0, 0, 0, 0, 0)]
    d, _, _ = facade(
        [
            ok("qsssa(siyyiuuuuu)", (5, "/e/v", "/e/v", "", clients)),
            ok("(tt)a(sb)", ((1, 2), [])),  # a shape-compatible reply is enough for the parser
            ok("bbs", (True, True, "get grace success")),
            ok("bs", (False, "shutdown refused")),
        ]
    )
    shown = d.display_export(5)
    assert (shown.export_id, shown.path, shown.pseudo, shown.clients) == (5, "/e/v", "/e/v", ("10.0.0.0/8",))
    assert d.show_exports() == []
    assert d.get_grace() is True
    with pytest.raises(errors.DBusError, match="shutdown refused"):
        d.shutdown()
    with pytest.raises(errors.InvalidRequest):
        d.remove_export(0)
