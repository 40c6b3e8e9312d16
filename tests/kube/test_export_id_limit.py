"""The hard limit of Export_Ids (16-bit: 1..65535 without 152), reached for real with a small range: the
claim past it gets a ProvisioningFailed event naming the limit and one warning line per attempt, retried with
backoff (no busy loop), nothing is left on disk, and the claim is provisioned once a volume frees an id.

The appliance's controller, provisioner and a real Ganesha run in this process (the range is a parameter of
the Ganesha manager, not a flag of the appliance: the real range is the protocol's)."""

from __future__ import annotations

import itertools
import logging
import time
from dataclasses import replace
from pathlib import Path

import pytest

from nfs_provisioner.appliance import provisioner as prov
from nfs_provisioner.appliance.app import IN_FLIGHT_DIR
from nfs_provisioner.appliance.exporters import GaneshaExporter
from nfs_provisioner.controller import decisions
from nfs_provisioner.controller.inflight import LocalJournal
from nfs_provisioner.kube import client as kube
from nfs_provisioner.volumes.directories import VolumeDirectories
from nfs_provisioner.volumes.records import RECORDS_DIR, VolumeRecords
from tests.support import wait
from tests.support.builders import make_claim, make_class
from tests.support.controller_helpers import (
    FAST_RETRY,
    controller,
    delete_claim,
    events_about,
    get_claim,
    provisioner_fixture,
    pv_name,
    settings,
    wait_bound,
)
from tests.support.ganesha_env import Harness
from tests.support.treesnap import snapshot

pytestmark = [pytest.mark.kube, pytest.mark.ganesha]

IDENTITY = "6f1c1c1e-0000-4000-8000-0000000000aa"


name = provisioner_fixture("ids")


def test_no_free_export_id_is_a_clear_event_with_backoff_and_leaves_nothing(
        h: Harness, kapi: kube.Client, namespace: str, name: str, unique: str,
        caplog: pytest.LogCaptureFixture) -> None:
    srv = h.server(id_range=(1, 2))
    root: Path = h.export_root
    p = prov.NFSProvisioner(config=prov.ApplianceConfig(identity=IDENTITY, server=lambda: "127.0.0.1"),
                            directories=VolumeDirectories(root), records=VolumeRecords(root / RECORDS_DIR),
                            exporter=GaneshaExporter(srv.exports))
    cls = f"ids-{unique}"
    make_class(cls, name, api=kapi)
    # As the appliance runs it (provisions in flight journaled beside the volumes), retried for as long as it
    # takes (threshold 0): the claim must get the id a deleted volume frees.
    s = settings(name, retry=replace(FAST_RETRY, failed_provision_threshold=0), instance_name=IDENTITY,
                 in_flight_journal=root / IN_FLIGHT_DIR)
    with controller(kapi, p, s):
        first = [wait_bound(kapi, namespace, make_claim(namespace, f"c{i}", cls, api=kapi)["metadata"]["name"])
                 for i in range(2)]
        before = _without_spares(snapshot(root))
        caplog.clear()
        with caplog.at_level(logging.INFO):
            third = make_claim(namespace, "c2", cls, api=kapi)
            failed = wait.until(lambda: [e for e in events_about(kapi, namespace, "c2")
                                         if e["reason"] == "ProvisioningFailed"] or None,
                                timeout=30, what="a ProvisioningFailed event for c2")
            time.sleep(4.0)  # retries meanwhile: backoff from 0.2 s doubling to 1 s (FAST_RETRY)
            records = list(caplog.records)
        message = failed[0]["message"]
        assert "no free Export_Id in 1..2" in message and "16-bit" in message, message
        assert failed[0]["type"] == "Warning"
        warnings = [r for r in records if r.levelno >= logging.WARNING]
        attempts = [r for r in warnings if "c2" in r.getMessage() and "no free Export_Id" in r.getMessage()]
        assert warnings == attempts, [r.getMessage() for r in warnings]  # one line per attempt, nothing else
        gaps = [b.created - a.created for a, b in itertools.pairwise(attempts)]
        assert len(attempts) >= 4 and min(gaps) >= 0.15 and gaps[-1] >= 0.8, f"not backing off: {gaps}"
        assert not any(r.exc_info for r in caplog.records), "no traceback"
        assert _without_spares(snapshot(root)) == before, "a refused claim leaves no directory, record or export file"
        assert len(srv.exports) == 2 and get_claim(kapi, namespace, "c2")["status"].get("phase") == "Pending"
        assert not [f for f in decisions.finalizers(get_claim(kapi, namespace, "c2") or {})
                    if f.startswith(decisions.CLAIM_FINALIZER_PREFIX)]
        assert not list((root / IN_FLIGHT_DIR).glob("*.json")), "no provision left in flight"

        # A deleted volume frees its id: the waiting claim gets it on its next retry.
        delete_claim(kapi, namespace, first[0]["metadata"]["name"])
        bound = wait_bound(kapi, namespace, "c2", timeout=30)
        volume = kapi.get(kube.volumes_path(pv_name(bound)))
        assert volume["metadata"]["annotations"][prov.ANN_EXPORT_ID] in ("1", "2")
        assert pv_name(third) == pv_name(bound)


def _without_spares(tree: dict[str, object]) -> dict[str, object]:
    """The tree less the in-flight journal's spare files (a dropped record's file, kept for the next record)."""
    return {k: v for k, v in tree.items() if not Path(k).name.startswith(LocalJournal.SPARE_PREFIX)}
