"""Hostile addresses and labels (issue 28: D4, D5, D8, D16).

Who may mount comes from two places an adversary or a slip can reach: ``--export-subnet`` and the Nodes'
``status.addresses`` (strings the API server does not check). Whatever is written there, the appliance must
keep serving, keep the client list current, never let a network in as a "node address", and survive a
restart. Node objects are made through the real API server; "let in" and "refused" are real Ganesha's own
access checks, seen by a client that connects from a chosen loopback source address (any 127.0.0.0/8
address is this host's, so a stranger at 127.77.0.9 is one ``bind()`` away).

D16: label values of the controller's metrics come from claims (class names, data-source kinds), which any
tenant writes; they are bounded to what this provisioner serves.
"""

from __future__ import annotations

import os
import re
import signal

import pytest

from nfs_provisioner.appliance import exporters
from nfs_provisioner.ganesha import errors
from nfs_provisioner.ganesha.exports import ExportRequest
from tests.support.ganesha_env import Harness
from tests.support.hostile_addresses import STRANGER, read_from
from tests.support.node_clients import CONTENT


@pytest.mark.ganesha
def test_d4_a_client_list_with_a_zone_id_changes_nothing_and_ganesha_restarts(h: Harness) -> None:
    srv = h.server(clients=("127.0.0.1",))
    vol = h.volume("v", content={"f": CONTENT})
    srv.exports.add(ExportRequest(name="v", path=vol))
    # Before: written to the file, UpdateExport refused ("Unexpected character (%)"), and the next start failed.
    with pytest.raises(errors.InvalidRequest, match="zone id"):
        srv.exports.set_clients(("127.0.0.1/32", "fe80::1%x/128"))
    assert srv.exports.default_clients == ("127.0.0.1/32",)
    assert "%" not in (srv.exports.get("v") or pytest.fail("export gone")).config_file.read_text()
    other = h.volume("w", content={"f": CONTENT})
    srv.exports.add(ExportRequest(name="w", path=other))  # a new claim's export
    srv.stop()
    srv.start()
    assert h.client().cat(vol / "f").stdout == CONTENT and h.client().cat(other / "f").stdout == CONTENT


@pytest.mark.ganesha
def test_d4_an_export_ganesha_did_not_update_is_updated_again_with_the_same_list(h: Harness) -> None:
    # Before: the file had the new list, so the next call with the same list saw nothing to change and the
    # export served the old list until some other change came.
    srv = h.server(clients=("127.0.0.1",))
    srv.exports.add(ExportRequest(name="v", path=h.volume("v", content={"f": CONTENT})))
    srv.dbus.timeout = 1.0
    pid = srv.ganesha_pid
    assert pid is not None
    new = ("127.0.0.1/32", "127.0.0.45/32")
    os.kill(pid, signal.SIGSTOP)
    try:
        first = srv.exports.set_clients(new)
    finally:
        os.kill(pid, signal.SIGCONT)
    assert first.changed == ("v",) and first.failed == ("v",), first
    again = srv.exports.set_clients(new)
    assert again.changed == ("v",) and again.failed == (), again
    assert srv.exports.set_clients(new).changed == (), "once live, nothing to do"
    # The appliance's adapter says so, so that the Node watch does not count the list as applied.
    os.kill(pid, signal.SIGSTOP)
    try:
        refused = re.escape("refused the client list 127.0.0.1/32 for 1 exports (v)")
        with pytest.raises(errors.ClientsNotLive, match=refused):
            exporters.GaneshaExporter(srv.exports).set_clients(("127.0.0.1/32",))
    finally:
        os.kill(pid, signal.SIGCONT)


@pytest.mark.ganesha
def test_d5_a_list_ganesha_cannot_take_changes_nothing_and_new_exports_still_work(h: Harness) -> None:
    # Before: the default list was replaced first, then rendering refused it: every later add (every new claim)
    # failed until the list changed again.
    srv = h.server(clients=("127.0.0.1",))
    srv.exports.add(ExportRequest(name="v", path=h.volume("v", content={"f": CONTENT})))
    with pytest.raises(errors.InvalidRequest, match="longer than /64"):
        srv.exports.set_clients(("127.0.0.1/32", "fd00::/120"))
    assert srv.exports.default_clients == ("127.0.0.1/32",)
    vol = h.volume("w", content={"f": CONTENT})
    assert srv.exports.add(ExportRequest(name="w", path=vol)).clients == ("127.0.0.1/32",)
    assert h.client().cat(vol / "f").stdout == CONTENT


@pytest.mark.ganesha
def test_ganesha_reads_a_client_0000_as_everyone(h: Harness) -> None:
    """Why 0.0.0.0 is refused: written by hand into an export file, a client at 127.77.0.9 reads."""
    srv = h.server(clients=("127.0.0.1",))
    vol = h.volume("v", content={"f": CONTENT})
    export = srv.exports.add(ExportRequest(name="v", path=vol))
    assert read_from(STRANGER, h.port, vol / "f") != CONTENT
    text = export.config_file.read_text()
    export.config_file.write_text(text.replace("Clients = 127.0.0.1;", "Clients = 0.0.0.0;"))
    srv.dbus.update_export(config_file=export.config_file, export_id=export.export_id)
    assert read_from(STRANGER, h.port, vol / "f") == CONTENT
    assert srv.dbus.display_export(export.export_id).clients == ("*",)
