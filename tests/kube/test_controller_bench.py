"""Throughput of the hostPath example on this machine: 200 claims, measured against the raw API create rate."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from nfs_provisioner.controller import ClientSettings, ProvisionController, decisions
from nfs_provisioner.kube import client as kube
from tests.support import kubecluster, wait
from tests.support.builders import make_claim, make_class
from tests.support.controller_helpers import Recording, purge, settings
from tests.support.paths import REPO

pytestmark = pytest.mark.kube

CLAIMS = 200
THREADS = 16


def test_hostpath_provisions_200_claims_fast(cluster: kubecluster.Cluster, kapi: kube.Client, namespace: str,
                                             unique: str, tmp_path: Path) -> None:
    name = f"example.com/bench-{unique}"
    cls = f"bench-{unique}"
    make_class(cls, name, api=kapi)
    with ThreadPoolExecutor(THREADS) as pool:
        list(pool.map(lambda i: make_claim(namespace, f"c{i}", cls, api=kapi), range(CLAIMS)))

    def annotated() -> bool:
        items = kapi.get(kube.claims_path(namespace))["items"]
        return sum(decisions.ANN_STORAGE_PROVISIONER in decisions.annotations_of(c) for c in items) == CLAIMS
    wait.until(annotated, timeout=60, what="kube-controller-manager to annotate every claim")

    # The controller: from start (list + sync included) to the last PV saved.
    registry = CollectorRegistry()
    c = ProvisionController(Recording(tmp_path / "pv"), replace(settings(name, threadiness=THREADS),
                                                                 client=ClientSettings()),
                            api=kube.Client.load(str(cluster.kubeconfig)), registry=registry)
    started = time.monotonic()
    c.start()
    try:
        for informer in c.informers:
            informer.synced.wait(60)
        synced = time.monotonic()
        wait.until(lambda: registry.get_sample_value("controller_persistentvolumeclaim_provision_total",
                                                     {"class": cls, "source": ""}) == CLAIMS,
                   timeout=120, what=f"{CLAIMS} provisions", interval=0.02)
        elapsed = time.monotonic() - started
    finally:
        c.stop(wait=True)
        purge(kapi, name)
    rate = CLAIMS / elapsed
    after_sync = CLAIMS / (started + elapsed - synced)
    assert len(list((tmp_path / "pv").iterdir())) == CLAIMS

    # The raw API server create rate with the same client and concurrency (PV objects, no controller).
    def create_pv(i: int) -> None:
        kapi.create(kube.volumes_path(), {
            "apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": f"raw-{unique}-{i}"},
            "spec": {"capacity": {"storage": "1Mi"}, "accessModes": ["ReadWriteOnce"], "storageClassName": "raw",
                     "persistentVolumeReclaimPolicy": "Retain", "hostPath": {"path": "/tmp/raw"}}})
    t0 = time.monotonic()
    with ThreadPoolExecutor(THREADS) as pool:
        list(pool.map(create_pv, range(CLAIMS)))
    raw = CLAIMS / (time.monotonic() - t0)
    with ThreadPoolExecutor(THREADS) as pool:
        list(pool.map(lambda i: kapi.delete(kube.volumes_path(f"raw-{unique}-{i}")), range(CLAIMS)))

    result = {"claims": CLAIMS, "threadiness": THREADS, "seconds": round(elapsed, 2), "pvc_per_second": round(rate, 1),
              "sync_seconds": round(synced - started, 2), "pvc_per_second_after_sync": round(after_sync, 1),
              "raw_pv_creates_per_second": round(raw, 1), "ratio": round(rate / raw, 2)}
    out = REPO / "_output" / "bench"
    out.mkdir(parents=True, exist_ok=True)
    (out / "controller_hostpath.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nhostPath controller: {result}")
    # Measured 100-155 PVC/s on an idle 2-core VM, ~50 when other test suites load it; the floor catches a
    # throttled or serialised controller (Go's QPS 5 would give ~2 PVC/s) without flaking on a busy machine.
    assert rate >= 25, result
