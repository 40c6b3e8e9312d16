"""Hostile review round 3 (issue 28), the appliance's own state: D9 readiness while a volume is not served,
D11 bounded reads of state files, D12 a crash then a failed retry, D13 a symlinked export root, D14 export
files nobody recorded, D15 a cross-namespace ``dataSourceRef`` the API server drops.

Each defect has a fast test on real pieces (a real Ganesha where exports are concerned) and, where a user
sees it through the running appliance, a test against the real appliance process, control plane and
Ganesha."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from kubernetes import client

from tests.support import kubecluster, wait
from tests.support.appliance_env import Appliance, ganesha_pid
from tests.support.builders import make_class
from tests.support.hostile_state import GiB, sparse
from tests.support.state import bound_volume, events_for, pv_gone, remove_pv


def e2e(test: Callable[..., None]) -> Callable[..., None]:
    """The whole appliance against the control plane and Ganesha."""
    return pytest.mark.e2e(pytest.mark.kube(pytest.mark.ganesha(test)))


LOOPBACK = "--export-subnet=127.0.0.0/8"
"""Who may mount in these tests: a fixed list, so Nodes other tests leave in the shared cluster play no part."""


def readyz_503(a: Appliance, needle: str) -> Callable[[], str | None]:
    def check() -> str | None:
        status, body = a.get("/readyz")
        return body if status == 503 and needle in body else None
    return check


def readyz_ok(a: Appliance) -> bool:
    return a.get("/readyz")[0] == 200


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmHWM for pid {pid}")


def stop_and_clean(appliance: Appliance, core: client.CoreV1Api, storage: client.StorageV1Api, cls: str) -> None:
    """The end of an end-to-end test: the appliance stopped, then every PV of class ``cls`` and the class."""
    appliance.stop()
    for pv in core.list_persistent_volume().items:
        if pv.spec.storage_class_name == cls:
            remove_pv(core, pv.metadata.name)
    storage.delete_storage_class(cls)


@e2e
def test_d9_readyz_fails_while_a_bound_volume_is_not_served_until_fixed_or_deleted(
        appliance: Appliance, core: client.CoreV1Api, storage: client.StorageV1Api, namespace: str,
        unique: str, tmp_path: Path) -> None:
    cls = f"state-{unique}"
    make_class(cls, appliance.provisioner, api=storage)
    appliance.extra = [LOOPBACK]
    appliance.start()
    try:
        vol = bound_volume(core, namespace, cls, "data")
        name, path = vol.metadata.name, Path(vol.spec.nfs.path)
        nfs = appliance.client()
        assert nfs.put(b"precious", path / "f").returncode == 0

        # The directory is gone (moved aside) at a start: not ready, saying which volume and why.
        assert appliance.stop() == 0
        path.rename(tmp_path / "aside")
        appliance.start(wait_ready=False)
        body = wait.until(readyz_503(appliance, name), timeout=60, what=lambda: f"/readyz 503\n{appliance.log()}")
        assert f"1 Bound volume(s) of this appliance are not served: {name}: its directory {path} is missing" \
            in body, body
        assert f"volume {name} is Bound but not served by NFS-Ganesha" in appliance.text()
        # Fixed: served again within the watch's interval, ready again.
        (tmp_path / "aside").rename(path)
        wait.until(lambda: readyz_ok(appliance), timeout=30, what=lambda: f"/readyz 200\n{appliance.log()}")
        assert nfs.cat(path / "f").stdout == b"precious"
        assert f"volume {name}: served again" in appliance.text()

        # Replaced by a symlink: never followed, not ready; the claim deleted: ready again.
        assert appliance.stop() == 0
        path.rename(tmp_path / "aside")
        (tmp_path / "secret").mkdir()
        (tmp_path / "secret" / "f").write_text("not for clients")
        path.symlink_to(tmp_path / "secret")
        appliance.start(wait_ready=False)
        body = wait.until(readyz_503(appliance, "is a symlink"), timeout=60,
                          what=lambda: f"/readyz 503\n{appliance.log()}")
        assert f"{name}: {path} is a symlink (to {tmp_path / 'secret'}), not a directory" in body, body
        assert nfs.cat(path / "f").returncode != 0
        core.delete_namespaced_persistent_volume_claim("data", namespace)
        wait.until(lambda: readyz_ok(appliance), timeout=60, what=lambda: f"/readyz 200\n{appliance.log()}")
        assert (tmp_path / "secret" / "f").read_text() == "not for clients"
    finally:
        stop_and_clean(appliance, core, storage, cls)


@e2e
def test_d11_gigabyte_state_files_are_refused_at_start_without_reading_them(
        appliance: Appliance, core: client.CoreV1Api, storage: client.StorageV1Api, namespace: str,
        unique: str, tmp_path: Path) -> None:
    cls = f"state-{unique}"
    make_class(cls, appliance.provisioner, api=storage)
    root = appliance.export_root
    appliance.extra = [LOOPBACK]
    appliance.start()
    try:
        vol = bound_volume(core, namespace, cls, "data")
        assert appliance.stop() == 0
        record = root / ".volumes" / f"{vol.metadata.name}.json"
        record.rename(tmp_path / "record")
        planted = {
            root / ".provisioning" / "0b5e6f1c-0000-4000-8000-00000000dead.json": 1048576,  # a claim gone
            root / ".ganesha" / "exports.d" / "planted.conf": 1048576,
            root / ".ganesha" / "processes.json": 1048576,
            record: 65536,
        }
        for f in planted:
            sparse(f, GiB)
        appliance.start(wait_ready=False)
        assert appliance.proc is not None
        body = wait.until(readyz_503(appliance, "could not be rebuilt"), timeout=60,
                          what=lambda: f"/readyz 503\n{appliance.log()}")
        wait.until(lambda: "in-flight record" in appliance.text(), timeout=30, what="the journal record reported")
        peak = peak_rss_mib(appliance.proc.pid)
        assert peak < 300, f"peak RSS {peak:.0f} MiB"
        assert f"{vol.metadata.name}: {record} is {GiB} bytes, more than the 65536 allowed" in body, body
        text = appliance.text()
        for f, limit in planted.items():
            assert f"{f} is {GiB} bytes, more than the {limit} allowed" in text, (f, appliance.log())
            assert f.stat().st_size == GiB, f"{f} left in place"
        # The record put back: ready at the next start, the volume served.
        assert appliance.stop() == 0
        record.unlink()
        (tmp_path / "record").rename(record)
        appliance.start()
        assert appliance.client().ls(vol.spec.nfs.path).returncode == 0
    finally:
        stop_and_clean(appliance, core, storage, cls)


@e2e
def test_d12_sigkill_between_directory_and_pv_then_a_final_failure_leaves_nothing(
        appliance: Appliance, core: client.CoreV1Api, storage: client.StorageV1Api, namespace: str,
        unique: str) -> None:
    cls = f"state-{unique}"
    make_class(cls, appliance.provisioner, api=storage)
    root = appliance.export_root
    appliance.extra = [LOOPBACK, "--max-exports=2"]
    appliance.start()
    try:
        bound_volume(core, namespace, cls, "first")
        # Ganesha stopped: the next provision makes its record and directory, then waits on AddExport; the
        # appliance is killed there, as a node's death would (SIGKILL, Ganesha with it).
        os.kill(ganesha_pid(appliance), signal.SIGSTOP)
        claim = core.create_namespaced_persistent_volume_claim(namespace, {
            "apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "second"},
            "spec": {"storageClassName": cls, "accessModes": ["ReadWriteMany"],
                     "resources": {"requests": {"storage": "1Mi"}}}})
        uid = claim.metadata.uid
        directory, record, journal = (root / f"pvc-{uid}", root / ".volumes" / f"pvc-{uid}.json",
                                      root / ".provisioning" / f"{uid}.json")
        export_file = root / ".ganesha" / "exports.d" / f"pvc-{uid}.conf"
        wait.until(export_file.exists, timeout=30, interval=0.01, what=lambda: f"{export_file}\n{appliance.log()}")
        appliance.kill()
        assert directory.is_dir() and record.exists() and journal.exists(), "what the crash left"
        # A kill a moment earlier (between the directory and the export file, where nothing waits to be hit)
        # leaves the same without the export file: the state of the issue.
        export_file.unlink()

        # The retry fails finally (the limit is reached now): it removes what the crashed attempt left.
        appliance.extra = [LOOPBACK, "--max-exports=1"]
        appliance.start()
        wait.until(lambda: any(e.reason == "ProvisioningFailed" and "maximum number of exports (1) is reached"
                               in e.message for e in events_for(core, "second")),
                   timeout=60, what=lambda: f"ProvisioningFailed\n{appliance.log()}")
        wait.until(lambda: not directory.exists() and not record.exists() and not journal.exists(), timeout=30,
                   what=lambda: f"the crashed attempt's directory, record and journal gone\n{appliance.log()}")
        assert f"pvc-{uid}: this attempt failed finally (the maximum number of exports (1) is reached); removing " \
               f"what an earlier attempt for claim {namespace}/second left" in appliance.text()
        core.delete_namespaced_persistent_volume_claim("second", namespace)
        time.sleep(2)
        assert not directory.exists() and not record.exists()
        assert sorted(p.name for p in root.iterdir() if p.name.startswith("pvc-")) == \
            [core.read_namespaced_persistent_volume_claim("first", namespace).spec.volume_name]
    finally:
        stop_and_clean(appliance, core, storage, cls)


@e2e
def test_d13_an_export_root_through_a_symlink_is_resolved_and_serves(
        cluster: kubecluster.Cluster, core: client.CoreV1Api, storage: client.StorageV1Api, namespace: str,
        unique: str, tmp_path: Path) -> None:
    given, real = tmp_path / "export", tmp_path / "disk" / "export"
    real.mkdir(parents=True)
    given.symlink_to(real)  # e.g. a hostPath or a mount point reached through a link
    a = Appliance(kubeconfig=cluster.kubeconfig, export_root=given, provisioner=f"example.com/nfs-{unique}",
                  log_dir=tmp_path, extra=[LOOPBACK])
    cls = f"state-{unique}"
    make_class(cls, a.provisioner, api=storage)
    try:
        a.start()
        assert f"--export-root {given} goes through a symlink; using {real}" in a.text()
        vol = bound_volume(core, namespace, cls, "data")
        assert vol.spec.nfs.path == str(real / vol.metadata.name)
        assert a.client().put(b"through the link", Path(vol.spec.nfs.path) / "f").returncode == 0
        assert (real / vol.metadata.name / "f").read_bytes() == b"through the link"
        # A restart through the same symlink keeps serving the volume at the path its PV names.
        assert a.stop() == 0
        a.start()
        assert a.client().cat(Path(vol.spec.nfs.path) / "f").stdout == b"through the link"
        core.delete_namespaced_persistent_volume_claim("data", namespace)
        wait.until(lambda: pv_gone(core, vol.metadata.name), timeout=60, what="PV deleted")
        assert not (real / vol.metadata.name).exists()
    finally:
        a.close()
        storage.delete_storage_class(cls)


@e2e
def test_d14_an_export_file_nobody_recorded_is_not_served_at_any_start(
        appliance: Appliance, core: client.CoreV1Api, storage: client.StorageV1Api, namespace: str,
        unique: str) -> None:
    cls = f"state-{unique}"
    make_class(cls, appliance.provisioner, api=storage)
    root = appliance.export_root
    appliance.extra = [LOOPBACK]
    appliance.start()
    try:
        vol = bound_volume(core, namespace, cls, "data")
        assert appliance.stop() == 0
        # What a client with forged handles could write under .ganesha: a well-formed export file.
        target = root / "pvc-planted"
        target.mkdir()
        (target / "f").write_text("never a volume")
        own = (root / ".ganesha" / "exports.d" / f"{vol.metadata.name}.conf").read_text()
        header = json.loads(own.split("\n", 1)[0].removeprefix("# nfs-provisioner-export: "))
        header.update(name="pvc-planted", export_id=4242, path=str(target))
        planted = root / ".ganesha" / "exports.d" / "pvc-planted.conf"
        planted.write_text("# nfs-provisioner-export: " + json.dumps(header, sort_keys=True) + "\n")
        before = planted.read_bytes()
        for start in (1, 2):
            appliance.start()
            assert appliance.client().cat(target / "f").returncode != 0, f"start {start}: not served"
            lines = [line for line in appliance.text().splitlines() if "pvc-planted" in line]
            assert len(lines) == 1 and "export pvc-planted (id 4242" in lines[0] and "no volume record" in lines[0] \
                and f"its file {planted} is kept" in lines[0], (start, lines)
            assert appliance.client().ls(vol.spec.nfs.path).returncode == 0
            assert planted.read_bytes() == before
            assert appliance.stop() == 0
    finally:
        stop_and_clean(appliance, core, storage, cls)


@e2e
def test_d15_a_claim_whose_cross_namespace_source_was_dropped_gets_no_empty_volume(
        appliance: Appliance, core: client.CoreV1Api, storage: client.StorageV1Api, namespace: str,
        unique: str) -> None:
    cls = f"state-{unique}"
    make_class(cls, appliance.provisioner, api=storage)
    appliance.extra = [LOOPBACK]
    appliance.start()
    try:
        bound_volume(core, namespace, cls, "plain")  # a claim without a data source is provisioned as ever
        core.create_namespaced_persistent_volume_claim(namespace, {
            "apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "xns"},
            "spec": {"storageClassName": cls, "accessModes": ["ReadWriteMany"],
                     "resources": {"requests": {"storage": "1Mi"}},
                     "dataSourceRef": {"apiGroup": "", "kind": "PersistentVolumeClaim", "name": "src",
                                       "namespace": "default"}}})
        stored = core.read_namespaced_persistent_volume_claim("xns", namespace)
        assert stored.spec.data_source_ref is None and stored.spec.data_source is None, "what the API server does"
        event = wait.until(lambda: next((e for e in events_for(core, "xns") if e.reason == "ProvisioningFailed"),
                                        None), timeout=60, what=lambda: f"ProvisioningFailed\n{appliance.log()}")
        assert "spec.dataSourceRef named another namespace (set by" in event.message
        assert "no volume is provisioned" in event.message
        time.sleep(2)
        assert core.read_namespaced_persistent_volume_claim("xns", namespace).status.phase == "Pending"
        assert not [e for e in events_for(core, "xns") if e.reason == "ProvisioningSucceeded"]
    finally:
        stop_and_clean(appliance, core, storage, cls)
