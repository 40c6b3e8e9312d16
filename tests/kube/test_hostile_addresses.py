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
import signal
import time

import pytest
from kubernetes import client

from nfs_provisioner.appliance import exporters, nodes
from nfs_provisioner.ganesha.exports import ExportRequest
from nfs_provisioner.kube import client as kube
from tests.support import wait
from tests.support.ganesha_env import Harness
from tests.support.hostile_addresses import covers
from tests.support.node_clients import CONTENT, Nodes, cluster_nodes

__all__ = ["cluster_nodes"]  # the fixture, used by name below


@pytest.mark.kube
@pytest.mark.ganesha
def test_d4_a_client_list_ganesha_refuses_is_not_counted_as_applied(
        h: Harness, kapi: kube.Client, core: client.CoreV1Api, cluster_nodes: Nodes) -> None:
    # A Ganesha that does not take the new list (stopped here: UpdateExport times out) must not have it counted
    # as applied: before, the Node watch logged "NFS clients changed" and never tried again, so the exports kept
    # the old list for good while readiness said ok.
    srv = h.server(clients=("127.0.0.1",))
    vol = h.volume("v", content={"f": CONTENT})
    export = srv.exports.add(ExportRequest(name="v", path=vol))
    srv.dbus.timeout = 1.0
    watcher = nodes.NodeClients(kapi, fixed=("127.0.0.1/32",), debounce=0.1, max_delay=0.5)
    watcher.start()
    try:
        watcher.follow(exporters.GaneshaExporter(srv.exports).set_clients)
        pid = srv.ganesha_pid
        assert pid is not None
        os.kill(pid, signal.SIGSTOP)
        try:
            cluster_nodes.add("joiner", "127.0.0.44")
            wait.until(lambda: covers((srv.exports.get("v") or export).clients, "127.0.0.44"), timeout=30,
                       what="the new list in the export file")
            time.sleep(srv.dbus.timeout + 1.0)  # UpdateExport has timed out by now
            assert watcher.applies == 0, "a list Ganesha did not take was counted as applied"
            ok, why = watcher.health()
            assert not ok and "Ganesha refused the client list" in why and "retrying" in why, why
            assert not nodes.health(watcher)[0]
        finally:
            os.kill(pid, signal.SIGCONT)
        # Ganesha answers again: the same list is handed again and made live; readiness follows.
        wait.until(lambda: watcher.applies >= 1 and watcher.health()[0], timeout=60,
                   what=lambda: f"the list applied after SIGCONT: {watcher.health()}")
        wait.until(lambda: covers(srv.dbus.display_export(export.export_id).clients, "127.0.0.44"), timeout=10,
                   what=lambda: f"the live list has the node: {srv.dbus.display_export(export.export_id)}")
    finally:
        watcher.stop()
