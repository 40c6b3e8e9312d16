"""Faults under the running appliance, with real processes and real signals."""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import json
import os
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from kubernetes import client

from nfs_provisioner.controller.inflight import LocalJournal
from tests.support import kubecluster, wait
from tests.support.appliance_env import Appliance, ganesha_pid
from tests.support.builders import NFS41, make_class

pytestmark = [pytest.mark.fault, pytest.mark.e2e, pytest.mark.kube, pytest.mark.ganesha]


def claims(core: client.CoreV1Api, namespace: str, cls: str, n: int) -> list[str]:
    names = [f"c{i}" for i in range(n)]
    body = {"storageClassName": cls, "accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": "1Mi"}}}

    def create(name: str) -> None:
        core.create_namespaced_persistent_volume_claim(namespace, {
            "apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": name}, "spec": body})
    with cf.ThreadPoolExecutor(16) as pool:
        list(pool.map(create, names))
    return names


def bound(core: client.CoreV1Api, namespace: str) -> dict[str, str]:
    return {c.metadata.name: c.spec.volume_name for c in core.list_namespaced_persistent_volume_claim(namespace).items
            if c.status.phase == "Bound"}


def test_sigkill_ganesha_under_the_appliance(appliance: Appliance, core: client.CoreV1Api,
                                             storage: client.StorageV1Api, namespace: str, unique: str) -> None:
    cls = f"fault-{unique}"
    make_class(cls, appliance.provisioner, mount_options=NFS41, api=storage)
    appliance.start()
    names = claims(core, namespace, cls, 5)
    wait.until(lambda: len(bound(core, namespace)) == 5, timeout=60, what="5 claims Bound")
    nfs = appliance.client()
    payloads = {}
    for _name, pv in bound(core, namespace).items():
        payloads[pv] = os.urandom(2000)
        assert nfs.put(payloads[pv], appliance.export_root / pv / "data").returncode == 0

    victim = ganesha_pid(appliance)
    os.kill(victim, signal.SIGKILL)
    wait.until(lambda: ganesha_pid(appliance) != victim, timeout=60, what="Ganesha restarted")
    wait.until(lambda: appliance.get("/readyz")[0] == 200, timeout=60, what="ready again")
    for pv, data in payloads.items():
        assert nfs.cat(appliance.export_root / pv / "data").stdout == data
    # The counter moves once the restarted Ganesha is reconciled, which may be just after /readyz turns 200.
    wait.until(lambda: re.search(r"^nfs_provisioner_ganesha_restarts_total 1\.0$", appliance.get("/metrics")[1],
                                 re.M), timeout=30, what="the restart counted")
    _, metrics = appliance.get("/metrics")
    assert re.search(r"^nfs_provisioner_ganesha_exports 5\.0$", metrics, re.M)
    assert len(names) == 5
    storage.delete_storage_class(cls)


def volumes_made(a: Appliance) -> int:
    """Volume directories on ``a``'s export root: the appliance's own progress (Bound lags it, the binder being
    slower than the appliance)."""
    return len([d for d in a.export_root.iterdir() if d.name.startswith("pvc-")])


def test_sigkill_the_appliance_mid_burst_loses_and_duplicates_nothing(
        appliance: Appliance, core: client.CoreV1Api, storage: client.StorageV1Api, namespace: str,
        unique: str) -> None:
    n = 200
    cls = f"burst-{unique}"
    make_class(cls, appliance.provisioner, mount_options=NFS41, api=storage)
    appliance.start()
    names = claims(core, namespace, cls, n)
    wait.until(lambda: volumes_made(appliance) >= 20, timeout=60, what="the burst under way")
    appliance.kill()
    partial = volumes_made(appliance)
    assert partial < n, "the burst finished before the kill; nothing was tested"

    appliance.start()
    wait.until(lambda: len(bound(core, namespace)) == n, timeout=180, what=f"{n} claims Bound after the restart")
    pvs = [p for p in core.list_persistent_volume().items if p.spec.storage_class_name == cls]
    assert len(pvs) == n and len({p.spec.claim_ref.uid for p in pvs}) == n
    volume_names = {p.metadata.name for p in pvs}
    wait.until(lambda: {d.name for d in appliance.export_root.iterdir() if d.name.startswith("pvc-")}
               == volume_names, timeout=30, what="exactly one directory per PV")
    exports = {f.stem for f in (appliance.export_root / ".ganesha" / "exports.d").glob("*.conf")}
    assert exports == volume_names
    _, metrics = appliance.get("/metrics")
    assert re.search(rf"^nfs_provisioner_ganesha_exports {n}\.0$", metrics, re.M)
    for c in core.list_namespaced_persistent_volume_claim(namespace).items:
        assert not [f for f in c.metadata.finalizers or [] if f.startswith("provisioning.nfs-provisioner.io/")]
    assert len(names) == n and partial >= 20
    wait.until(lambda: not LocalJournal.record_names(appliance.export_root / ".provisioning"), timeout=30,
               what="no in-flight record left")
    storage.delete_storage_class(cls)


def test_stale_in_flight_records_never_delete_a_volume_whose_pv_exists(
        appliance: Appliance, core: client.CoreV1Api, storage: client.StorageV1Api, namespace: str,
        unique: str) -> None:
    """SIGKILL mid-burst with reclaimPolicy Retain leaves in-flight records of volumes whose PV was
    already saved; their claims are deleted while the appliance is down. The restart must roll back
    only what has no PV: every volume with a PV keeps its directory and the user's files (its reclaim
    policy decides), and nothing else is left."""
    n = 100
    cls = f"retain-{unique}"
    make_class(cls, appliance.provisioner, reclaim="Retain", mount_options=NFS41, api=storage)
    appliance.start()
    claims(core, namespace, cls, n)
    wait.until(lambda: volumes_made(appliance) >= 30, timeout=60, what="the burst under way")
    appliance.kill()
    journal = appliance.export_root / ".provisioning"

    def saved() -> list[client.V1PersistentVolume]:
        return [p for p in core.list_persistent_volume().items if p.spec.storage_class_name == cls]
    # A PV create the appliance sent just before its death may still land: wait until the set is settled.
    seen: list[set[str]] = []

    def settled() -> bool:  # the same set for 1.5 s
        seen.append({p.metadata.name for p in saved()})
        return len(seen) > 3 and seen[-1] == seen[-4]
    wait.until(settled, timeout=30, interval=0.5, what="the PVs saved before the kill settled")
    pvs = saved()
    assert pvs, "no PV was saved before the kill; nothing was tested"
    for pv in pvs:
        (appliance.export_root / pv.metadata.name / "user-data").write_text(f"data of {pv.metadata.name}\n")
        ref = pv.spec.claim_ref
        record = journal / f"{ref.uid}.json"
        if not record.exists():  # the window between the PV save and the record's removal, made certain
            record.write_text(json.dumps({
                "apiVersion": "v1", "kind": "PersistentVolumeClaim",
                "metadata": {"name": ref.name, "namespace": ref.namespace, "uid": ref.uid},
                "spec": {"storageClassName": cls, "accessModes": ["ReadWriteMany"],
                         "resources": {"requests": {"storage": "1Mi"}}}}))
    for name in [c.metadata.name for c in core.list_namespaced_persistent_volume_claim(namespace).items]:
        core.delete_namespaced_persistent_volume_claim(name, namespace)
    wait.until(lambda: not core.list_namespaced_persistent_volume_claim(namespace).items, timeout=60,
               what="every claim gone while the appliance is down")

    appliance.start()
    wait.until(lambda: not LocalJournal.record_names(journal), timeout=60, what="every in-flight record handled")
    kept = {p.metadata.name for p in core.list_persistent_volume().items if p.spec.storage_class_name == cls}
    assert kept == {p.metadata.name for p in pvs}, "a PV appeared or vanished"
    for name in kept:
        assert (appliance.export_root / name / "user-data").read_text() == f"data of {name}\n"
    assert {d.name for d in appliance.export_root.iterdir() if d.name.startswith("pvc-")} == kept, \
        "a volume without a PV was not rolled back"
    for pv in kept:
        core.delete_persistent_volume(pv)
    storage.delete_storage_class(cls)


def test_claims_deleted_while_being_provisioned_leave_nothing(
        appliance: Appliance, core: client.CoreV1Api, storage: client.StorageV1Api, namespace: str,
        unique: str) -> None:
    n = 60
    cls = f"churn-{unique}"
    make_class(cls, appliance.provisioner, mount_options=NFS41, api=storage)
    appliance.start()
    names = claims(core, namespace, cls, n)
    with cf.ThreadPoolExecutor(16) as pool:  # delete them at once, most before or during their provision
        list(pool.map(lambda name: core.delete_namespaced_persistent_volume_claim(name, namespace), names))
    wait.until(lambda: not core.list_namespaced_persistent_volume_claim(namespace).items, timeout=120,
               what="every claim gone (no in-flight finalizer left behind)")
    wait.until(lambda: not [p for p in core.list_persistent_volume().items if p.spec.storage_class_name == cls],
               timeout=120, what="every PV deleted")
    wait.until(lambda: not [d for d in appliance.export_root.iterdir() if d.name.startswith("pvc-")], timeout=60,
               what="no volume directory left")
    assert list((appliance.export_root / ".ganesha" / "exports.d").glob("*.conf")) == []
    _, metrics = appliance.get("/metrics")
    assert re.search(r"^nfs_provisioner_ganesha_exports 0\.0$", metrics, re.M)
    storage.delete_storage_class(cls)


def test_leader_election_one_provisions_and_the_other_takes_over(
        cluster: kubecluster.Cluster, core: client.CoreV1Api, storage: client.StorageV1Api, namespace: str,
        unique: str, tmp_path: Path) -> None:
    provisioner = f"example.com/ha-{unique}"
    le = ["--leader-elect", "--leader-elect-lease-duration=3s", "--leader-elect-renew-deadline=2s",
          "--leader-elect-retry-period=500ms", f"--leader-elect-namespace={namespace}"]
    pair = [Appliance(kubeconfig=cluster.kubeconfig, export_root=tmp_path / f"export-{i}", provisioner=provisioner,
                      log_dir=tmp_path / f"log-{i}", extra=le) for i in range(2)]
    cls = f"ha-{unique}"
    make_class(cls, provisioner, mount_options=NFS41, api=storage)
    try:
        for a in pair:
            a.log_dir.mkdir()
            a.start()
        wait.until(lambda: any("became leader" in a.text() for a in pair), timeout=30, what="a leader")
        leader = next(a for a in pair if "became leader" in a.text())
        standby = next(a for a in pair if a is not leader)
        claims(core, namespace, cls, 100)
        wait.until(lambda: volumes_made(leader) >= 10, timeout=60, what="the burst under way")
        leader.kill()
        assert volumes_made(leader) < 100, "the burst finished before the kill; nothing was tested"
        wait.until(lambda: "became leader" in standby.text(), timeout=30, what="the standby took over")
        wait.until(lambda: len(bound(core, namespace)) == 100, timeout=180, what="all 100 Bound")
        pvs = [p for p in core.list_persistent_volume().items if p.spec.storage_class_name == cls]
        assert len(pvs) == 100 and len({p.spec.claim_ref.uid for p in pvs}) == 100
        names = {p.metadata.name for p in pvs}

        def dirs(a: Appliance) -> set[str]:
            return {d.name for d in a.export_root.iterdir() if d.name.startswith("pvc-")}

        assert dirs(standby) <= names
        # What the killed leader had in flight is in its journal (<export root>/.provisioning); when it runs
        # (and leads) again it removes its unused volumes and drops the records.
        assert standby.stop() == 0  # releases the Lease
        leader.start()
        wait.until(lambda: "became leader" in leader.text(), timeout=30, what="the old leader leads again")
        wait.until(lambda: not dirs(leader) & dirs(standby) and dirs(leader) | dirs(standby) == names,
                   timeout=60, what="one directory per PV, on the appliance named on it")
        wait.until(lambda: not [c for c in core.list_namespaced_persistent_volume_claim(namespace).items
                                if any(f.startswith("provisioning.nfs-provisioner.io/")
                                       for f in c.metadata.finalizers or [])],
                   timeout=60, what="no in-flight finalizer left")
        wait.until(lambda: not LocalJournal.record_names(leader.export_root / ".provisioning"), timeout=30,
                   what="no in-flight record left on the old leader")
    finally:
        for a in pair:
            a.close()
        storage.delete_storage_class(cls)


def test_api_server_restart_during_a_burst(tmp_path: Path, unique: str) -> None:
    from kubernetes import config

    own = kubecluster.Cluster(tmp_path / "cluster")  # its API server goes down: not the shared one
    a = None
    try:
        own.up()
        api = config.new_client_from_config(config_file=str(own.kubeconfig))
        core, storage = client.CoreV1Api(api), client.StorageV1Api(api)
        a = Appliance(kubeconfig=own.kubeconfig, export_root=tmp_path / "export",
                      provisioner=f"example.com/restart-{unique}", log_dir=tmp_path)
        cls = f"restart-{unique}"
        make_class(cls, a.provisioner, mount_options=NFS41, api=storage)
        a.start()
        claims(core, "default", cls, 100)
        wait.until(lambda: volumes_made(a) >= 10, timeout=60, what="the burst under way")
        apiserver = own.pids()["kube-apiserver"]
        os.kill(apiserver, signal.SIGKILL)
        assert volumes_made(a) < 100, "burst already over"
        wait.until(lambda: not psutil.pid_exists(apiserver) or psutil.Process(apiserver).status() == "zombie",
                   timeout=10, what="kube-apiserver gone")
        time.sleep(3)  # the appliance sees the server gone: watches and writes fail
        own.up()  # restarts the missing API server on its port
        wait.until(lambda: len(bound(core, "default")) == 100, timeout=180, what="all 100 Bound after the restart")
        pvs = [p for p in core.list_persistent_volume().items if p.spec.storage_class_name == cls]
        assert len(pvs) == 100 and len({p.spec.claim_ref.uid for p in pvs}) == 100
        wait.until(lambda: {d.name for d in a.export_root.iterdir() if d.name.startswith("pvc-")}
                   == {p.metadata.name for p in pvs}, timeout=30, what="one directory per PV")
        assert a.proc is not None and a.proc.poll() is None, "the appliance must recover by itself"
    finally:
        if a is not None:
            a.close()
        own.down()


@pytest.fixture
def small_export_root(tmp_path: Path) -> Iterator[Path]:
    """A 64 MiB ext4 on a loop device, unmounted (by the test) afterwards."""
    import subprocess

    image, mnt = tmp_path / "small.img", tmp_path / "small"
    mnt.mkdir()
    with image.open("wb") as f:
        f.truncate(64 * 2**20)
    subprocess.run(["mkfs.ext4", "-q", str(image)], check=True)
    subprocess.run(["mount", "-o", "loop", str(image), str(mnt)], check=True)
    try:
        yield mnt / "export"
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_export_root_full(cluster: kubecluster.Cluster, core: client.CoreV1Api, storage: client.StorageV1Api,
                          namespace: str, unique: str, tmp_path: Path, small_export_root: Path) -> None:
    a = Appliance(kubeconfig=cluster.kubeconfig, export_root=small_export_root,
                  provisioner=f"example.com/full-{unique}", log_dir=tmp_path)
    cls = f"full-{unique}"
    make_class(cls, a.provisioner, mount_options=NFS41, api=storage)
    try:
        a.start()
        claims(core, namespace, cls, 1)
        wait.until(lambda: len(bound(core, namespace)) == 1, timeout=60, what="the first claim Bound")
        pv = bound(core, namespace)["c0"]
        nfs = a.client()
        data = os.urandom(3000)
        assert nfs.put(data, small_export_root / pv / "before").returncode == 0
        # Fill the filesystem from inside the existing volume, as a greedy client would.
        with (small_export_root / pv / "filler").open("wb") as f, contextlib.suppress(OSError):
            while True:
                f.write(b"\0" * 2**20)
        def tree() -> list[str]:
            """Everything but the filler, Ganesha's log and the in-flight records (checked below)."""
            return sorted(str(p.relative_to(small_export_root)) for p in small_export_root.rglob("*")
                          if "filler" not in p.name and p.name != "ganesha.log" and p.parent != journal)
        journal = small_export_root / ".provisioning"
        before = tree()
        more = core.create_namespaced_persistent_volume_claim(namespace, {
            "apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "more"},
            "spec": {"storageClassName": cls, "accessModes": ["ReadWriteMany"],
                     "resources": {"requests": {"storage": "1Mi"}}}})

        def event() -> str | None:
            for e in core.list_namespaced_event(namespace, field_selector="involvedObject.name=more").items:
                if e.reason == "ProvisioningFailed" and "bytes are free on the export root" in e.message:
                    return str(e.message)
            return None
        wait.until(event, timeout=30, what="ProvisioningFailed: not enough space")
        assert tree() == before, "a half-made volume was left behind"
        assert core.read_namespaced_persistent_volume_claim("more", namespace).status.phase == "Pending"
        assert nfs.cat(small_export_root / pv / "before").stdout == data  # the existing volume is still served
        assert a.get("/healthz")[0] == 200
        # A failed attempt leaves nothing, so no in-flight record stays between the retries either.
        assert LocalJournal.record_names(journal) in ([], [f"{more.metadata.uid}.json"])
        core.delete_namespaced_persistent_volume_claim("more", namespace)
        wait.until(lambda: not LocalJournal.record_names(journal), timeout=30, what="the in-flight record dropped")
    finally:
        a.close()
        storage.delete_storage_class(cls)
