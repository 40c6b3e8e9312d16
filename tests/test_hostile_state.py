"""Hostile review round 3 (issue 28), the appliance's own state: D9 readiness while a volume is not served,
D11 bounded reads of state files, D12 a crash then a failed retry, D13 a symlinked export root, D14 export
files nobody recorded, D15 a cross-namespace ``dataSourceRef`` the API server drops.

Each defect has a fast test on real pieces (a real Ganesha where exports are concerned) and, where a user
sees it through the running appliance, a test against the real appliance process, control plane and
Ganesha."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import resource
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from nfs_provisioner import fileio
from nfs_provisioner import settings as settings_mod
from nfs_provisioner.appliance import recovery
from nfs_provisioner.appliance.exporters import GaneshaExporter
from nfs_provisioner.controller import decisions, inflight, watching
from nfs_provisioner.controller.interface import ProvisioningError, ProvisioningState
from nfs_provisioner.ganesha import processes
from nfs_provisioner.ganesha.exports import Export, ExportRequest
from nfs_provisioner.ganesha.settings import AccessType, Squash
from nfs_provisioner.quota import errors as quota_errors
from nfs_provisioner.quota import projects
from nfs_provisioner.volumes.records import RECORDS_DIR, RecordError, VolumeRecords
from tests import kubecluster, wait
from tests.appliance_env import Appliance
from tests.ganesha_env import Harness
from tests.test_appliance_provisioner import Appliance as ProvAppliance
from tests.test_appliance_provisioner import options
from tests.test_faults import ganesha_pid
from tests.test_state import bound_volume, events_for, make_class, pv_gone, remove_pv

GiB = 1 << 30


def sparse(path: Path, size: int) -> Path:
    """A sparse file of ``size`` bytes (costs nothing on disk): what a forging client can plant."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.truncate(size)
    return path


def max_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ---------------------------------------------------------------- D11: bounded reads


@pytest.mark.unit
def test_d11_every_state_reader_refuses_a_3gib_file_and_leaves_it(tmp_path: Path,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    rss_before = max_rss_mib()
    # A volume record.
    records = VolumeRecords(tmp_path / RECORDS_DIR)
    records.ensure_dir()
    big_record = sparse(records.directory / "pvc-1.json", 3 * GiB)
    with pytest.raises(RecordError, match=rf"{big_record} is {3 * GiB} bytes, more than the 65536 allowed"):
        records.read("pvc-1")
    # An in-flight journal record (read at start for a claim that is gone).
    journal_dir = tmp_path / ".provisioning"
    journal_dir.mkdir()
    uid = "0b5e6f1c-0000-4000-8000-000000000001"
    big_journal = sparse(journal_dir / f"{uid}.json", 3 * GiB)
    journal = inflight.LocalJournal(journal_dir, legacy=inflight.ClaimFinalizer("f", lambda c, p: c))
    assert journal.last_known(uid) is None
    assert f"{big_journal} is {3 * GiB} bytes, more than the 1048576 allowed" in caplog.text
    # Ganesha's PID file: not read, not replaced, not removed.
    pid_file = processes.PidFile(sparse(tmp_path / ".ganesha" / "processes.json", 3 * GiB))
    assert pid_file.stop_leftovers(timeout=1) == []
    pid_file.add(os.getpid(), ["me"])
    pid_file.clear()
    assert caplog.text.count("processes.json is 3221225472 bytes") == 1, "said once"
    # The quota projects file.
    big_projects = sparse(tmp_path / "projects", 3 * GiB)
    with pytest.raises(quota_errors.QuotaStateError, match="is 3221225472 bytes, more than the"):
        projects.read_projects(big_projects)
    # A FIFO where a state file should be never blocks the reader.
    os.mkfifo(records.directory / "pvc-2.json")
    with pytest.raises(RecordError, match="is not a regular file"):
        records.read("pvc-2")

    assert max_rss_mib() - rss_before < 100, "nothing was read whole"
    for f in (big_record, big_journal, pid_file.path, big_projects):
        assert f.stat().st_size == 3 * GiB, f"{f} left in place"


@pytest.mark.unit
def test_d11_read_limited_reads_at_most_the_limit(tmp_path: Path) -> None:
    f = tmp_path / "f"
    f.write_bytes(b"x" * 100)
    assert fileio.read_limited(f, 100) == b"x" * 100
    with pytest.raises(fileio.Refused, match=f"{f} is 100 bytes, more than the 99 allowed"):
        fileio.read_limited(f, 99)
    (tmp_path / "link").symlink_to(f)
    with pytest.raises(OSError, match="Too many levels of symbolic links"):
        fileio.read_limited(tmp_path / "link", 100, follow_symlinks=False)


@pytest.mark.ganesha
def test_d11_a_3gib_export_file_is_refused_and_the_others_served(h: Harness,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    srv = h.server()
    srv.exports.add(ExportRequest(name="vol", path=h.volume("vol", content={"f": b"data"})))
    srv.stop()
    big = sparse(srv.exports.exports_dir / "planted.conf", 3 * GiB)
    caplog.set_level(logging.ERROR, logger="nfs_provisioner.ganesha.exports")
    rss_before = max_rss_mib()
    srv2 = h.server()
    assert max_rss_mib() - rss_before < 100
    assert f"export file {big} is unreadable, left out of the index: {big} is {3 * GiB} bytes" in caplog.text
    assert big.stat().st_size == 3 * GiB
    assert [e.name for e in srv2.exports.list_exports()] == ["vol"]
    assert h.client().cat(h.export_root / "vol" / "f").stdout == b"data"


# ---------------------------------------------------------------- D9: exports Ganesha does not serve


def live_paths(srv: Any) -> set[str]:
    return {e.path for e in srv.dbus.show_exports() if e.export_id != 0}


@pytest.mark.ganesha
def test_d9_an_export_whose_directory_is_gone_or_a_symlink_is_unserved_until_it_is_back(
        h: Harness, tmp_path: Path) -> None:
    srv = h.server()
    for name in ("gone", "linked", "fine"):
        srv.exports.add(ExportRequest(name=name, path=h.volume(name, content={"f": name.encode()})))
    srv.stop()
    root = h.export_root
    (root / "gone").rename(tmp_path / "gone-aside")
    (root / "linked").rename(tmp_path / "linked-aside")
    (tmp_path / "secret").mkdir()
    (tmp_path / "secret" / "f").write_text("secret")
    (root / "linked").symlink_to(tmp_path / "secret")

    srv2 = h.server()
    unserved = srv2.exports.unserved()
    assert unserved == {"gone": f"its directory {root / 'gone'} is missing",
                        "linked": f"{root / 'linked'} is a symlink (to {tmp_path / 'secret'}), not a directory; "
                                  "never followed"}
    assert live_paths(srv2) == {str(root / "fine")}
    assert not any("linked" in str(p) or "gone" in str(p) for p in srv2.exports.index_entries())
    assert h.client().cat(root / "linked" / "f").returncode != 0, "the symlink's target is never served"
    assert srv2.exports.serve_again("gone") == f"its directory {root / 'gone'} is missing"

    (tmp_path / "gone-aside").rename(root / "gone")
    (root / "linked").unlink()
    (tmp_path / "linked-aside").rename(root / "linked")
    assert srv2.exports.serve_again("gone") is None
    assert srv2.exports.serve_again("linked") is None
    assert srv2.exports.unserved() == {}
    assert live_paths(srv2) == {str(root / n) for n in ("gone", "linked", "fine")}
    assert h.client().cat(root / "linked" / "f").stdout == b"linked"
    assert len(srv2.exports.index_entries()) == 3, "in the index again: the next start serves them"
    srv2.stop()
    srv3 = h.server()
    assert srv3.exports.unserved() == {} and len(live_paths(srv3)) == 3


# ---------------------------------------------------------------- D14: export files without a record


@pytest.mark.ganesha
def test_d14_an_export_file_without_a_record_is_kept_but_never_served(
        h: Harness, caplog: pytest.LogCaptureFixture) -> None:
    a = ProvAppliance(h)
    a.p.provision(options("pvc-1"))
    a.server.stop()
    # A file with a valid header (as the manager writes it) for a directory nobody recorded.
    planted_dir = h.volume("pvc-planted", content={"f": b"not a volume"})
    header = Export(name="pvc-planted", export_id=77, path=planted_dir, squash=Squash.NO_ROOT_SQUASH,
                    access_type=AccessType.RW, clients=("*",), config_file=Path()).header()
    planted = a.server.exports.exports_dir / "pvc-planted.conf"
    planted.write_text(header + "EXPORT { Export_Id = 77; }\n")

    caplog.set_level(logging.WARNING, logger="nfs_provisioner.ganesha.exports")
    for _ in range(2):  # at every start
        srv = h.server()
        assert live_paths(srv) == {str(h.export_root / "pvc-1")}
        assert "no volume record" in srv.exports.unserved()["pvc-planted"]
        assert h.client().cat(planted_dir / "f").returncode != 0
        assert planted.exists()
        srv.stop()
    lines = [r.getMessage() for r in caplog.records if "pvc-planted" in r.getMessage()]
    assert len(lines) == 2 and all(f"its file {planted} is kept" in line for line in lines), lines


# ---------------------------------------------------------------- D12: a retry owns what a crash left


def leftovers(a: ProvAppliance, name: str, *, claim_uid: str) -> None:
    """The record (as the appliance writes them: the one of pvc-1, renamed) and the directory of ``name``."""
    record = a.p.records.read("pvc-1")
    assert record is not None
    a.p.records.write(dataclasses.replace(record, pv_name=name, claim_uid=claim_uid, path=str(a.root / name)))
    a.p.directories.create(name, gid=None)


@pytest.mark.ganesha
def test_d12_a_retry_that_fails_finally_removes_what_a_crashed_attempt_left(h: Harness) -> None:
    a = ProvAppliance(h, max_exports=1)
    a.p.provision(options("pvc-1"))
    # What a SIGKILL between the directory's creation and the PV's save leaves (before the export): the
    # record, then the directory (the e2e test below makes it with a real SIGKILL).
    opts = options("pvc-2")
    leftovers(a, "pvc-2", claim_uid="2")
    with pytest.raises(ProvisioningError, match=r"maximum number of exports \(1\) is reached") as e:
        a.p.provision(opts)
    assert e.value.state is ProvisioningState.FINISHED
    assert not (a.root / "pvc-2").exists()
    assert a.p.records.read("pvc-2") is None
    assert (a.root / "pvc-1").is_dir() and a.p.records.read("pvc-1") is not None


@pytest.mark.ganesha
def test_a_retry_never_removes_what_another_claim_left(h: Harness) -> None:
    a = ProvAppliance(h, max_exports=1)
    a.p.provision(options("pvc-1"))
    leftovers(a, "pvc-2", claim_uid="someone-else")
    with pytest.raises(ProvisioningError, match="maximum number of exports"):
        a.p.provision(options("pvc-2"))
    assert (a.root / "pvc-2").is_dir() and a.p.records.read("pvc-2") is not None


def pv(name: str, *, root: Path, identity: str, phase: str = "Bound") -> dict[str, Any]:
    """A PV of this appliance as the API server holds it (plain data, as the informer's cache gives it)."""
    return {"metadata": {"name": name, "annotations": {"pv.kubernetes.io/provisioned-by": "example.com/nfs",
                                                       "Provisioner_Id": identity}},
            "spec": {"nfs": {"server": "127.0.0.1", "path": str(root / name)},
                     "claimRef": {"namespace": "ns", "name": "claim", "uid": name[4:]}},
            "status": {"phase": phase}}


@pytest.mark.ganesha
def test_d9_readiness_fails_while_a_bound_volume_is_not_served_and_recovers(
        h: Harness, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    a = ProvAppliance(h)
    for name in ("pvc-gone", "pvc-fine", "pvc-released"):
        a.p.provision(options(name))
    a.server.stop()
    root = h.export_root
    (root / "pvc-gone").rename(tmp_path / "aside")
    (root / "pvc-released").rmdir()
    volumes = [pv("pvc-gone", root=root, identity=a.p.config.identity),
               pv("pvc-fine", root=root, identity=a.p.config.identity),
               pv("pvc-released", root=root, identity=a.p.config.identity, phase="Released")]
    srv = h.server()
    caplog.set_level(logging.INFO, logger="nfs_provisioner.appliance.recovery")
    report = recovery.Recovery(
        api=None,  # type: ignore[arg-type]  # the PVs come from ``volumes``, as the controller's cache gives them
        names=frozenset({"example.com/nfs"}), identity=a.p.config.identity, directories=a.p.directories,
        records=a.p.records, exporter=GaneshaExporter(srv.exports), server=lambda: "127.0.0.1",
        volumes=lambda: volumes).run()
    try:
        assert report.watch is not None
        ok, why = report.health()
        assert not ok
        assert why == f"1 Bound volume(s) of this appliance are not served: pvc-gone: its directory " \
                      f"{root / 'pvc-gone'} is missing", why
        assert "volume pvc-gone is Bound but not served by NFS-Ganesha" in caplog.text
        # Fixed: served again at the next look, readiness back.
        (tmp_path / "aside").rename(root / "pvc-gone")
        report.watch.check()
        assert report.health() == (True, "ok")
        assert h.client().ls(root / "pvc-gone").returncode == 0
        assert "volume pvc-gone: served again" in caplog.text
        # Replaced by a symlink (the export is withdrawn when Ganesha restarts): not served; deleted: ready.
        srv.stop()
        (root / "pvc-gone").rename(tmp_path / "aside")
        (root / "pvc-gone").symlink_to("/etc")
        srv = h.server()
        report.watch.exporter = GaneshaExporter(srv.exports)
        report.watch.check()
        assert "pvc-gone: /" in report.health()[1] and "is a symlink (to /etc)" in report.health()[1]
        volumes[0]["status"]["phase"] = "Released"
        report.watch.check()
        assert report.health() == (True, "ok")
        assert "volume pvc-gone: no longer a Bound volume of this appliance" in caplog.text
    finally:
        report.stop()


@pytest.mark.unit
def test_d9_readiness_names_at_most_three_volumes_and_bounds_each_reason() -> None:
    report = recovery.Report(problems=[f"pvc-{i}: " + "x" * 5000 for i in range(1000)])
    ok, why = report.health()
    assert not ok and len(why) < 400 and why.startswith("1000 volume(s) of this appliance are not exported")


# ---------------------------------------------------------------- D13: an export root through a symlink


@pytest.mark.unit
def test_d13_an_export_root_through_a_symlink_is_resolved_once_and_said(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    s = settings_mod.Settings(export_root=tmp_path / "link" / "export")
    resolved, line = settings_mod.resolve_export_root(s)
    assert resolved.export_root == tmp_path / "real" / "export"
    assert line is not None and line.startswith(f"--export-root {tmp_path / 'link' / 'export'} goes through a "
                                                f"symlink; using {tmp_path / 'real' / 'export'}")
    assert settings_mod.resolve_export_root(resolved) == (resolved, None)
    kernel = settings_mod.Settings(export_root=tmp_path / "link", use_ganesha=False, run_server=False)
    assert settings_mod.resolve_export_root(kernel) == (kernel, None), "the kernel server follows symlinks"


# ---------------------------------------------------------------- through the real appliance (e2e)

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
    make_class(storage, cls, appliance.provisioner)
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
    make_class(storage, cls, appliance.provisioner)
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
    make_class(storage, cls, appliance.provisioner)
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
    make_class(storage, cls, a.provisioner)
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
    make_class(storage, cls, appliance.provisioner)
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


# ---------------------------------------------------------------- D15: a cross-namespace data source dropped


def stored_claim(*, spec_ref: dict[str, Any] | None, managed_ref: dict[str, Any] | None) -> dict[str, Any]:
    """A claim as kube-apiserver 1.35 stores it (measured: kubectl create of a claim whose dataSourceRef names a
    namespace, with the CrossNamespaceVolumeDataSource gate off: spec without it, managedFields with it)."""
    spec: dict[str, Any] = {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": "1Mi"}},
                            "storageClassName": "nfs", "volumeMode": "Filesystem"}
    if spec_ref is not None:
        spec["dataSourceRef"] = spec_ref
    fields: dict[str, Any] = {"f:accessModes": {}, "f:storageClassName": {}}
    if managed_ref is not None:
        fields["f:dataSourceRef"] = managed_ref
    return {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": {"name": "xns", "namespace": "ns", "uid": "u", "managedFields": [
                {"apiVersion": "v1", "fieldsType": "FieldsV1", "fieldsV1": {"f:spec": fields},
                 "manager": "kubectl-create", "operation": "Update"}]},
            "spec": spec}


@pytest.mark.unit
def test_d15_a_dropped_cross_namespace_source_is_seen_in_managed_fields() -> None:
    with_ns = {".": {}, "f:apiGroup": {}, "f:kind": {}, "f:name": {}, "f:namespace": {}}
    dropped = stored_claim(spec_ref=None, managed_ref=with_ns)
    assert decisions.dropped_source(dropped) == "kubectl-create"
    # What the informer caches keeps that much of managedFields (and drops the rest).
    informer = watching.Informer(None, name="claims", path="/", kind="PersistentVolumeClaim",  # type: ignore[arg-type]
                                 api_version="v1", key=lambda o: "", on_change=lambda a, b: None)
    cached = informer._normalise(json.loads(json.dumps(dropped)))
    assert decisions.dropped_source(cached) == "kubectl-create"
    assert cached["metadata"]["managedFields"] == [{"manager": "kubectl-create", "operation": "Update",
                                                    "fieldsV1": {"f:spec": {"f:dataSourceRef": with_ns}}}]
    ordinary = informer._normalise(stored_claim(spec_ref=None, managed_ref=None))
    assert "managedFields" not in ordinary["metadata"]
    # Not dropped: kept with its namespace (the gate on), an empty namespace (the claim's own), none asked.
    src = {"apiGroup": "", "kind": "PersistentVolumeClaim", "name": "src"}
    assert decisions.dropped_source(stored_claim(spec_ref={**src, "namespace": "other"}, managed_ref=with_ns)) is None
    assert decisions.dropped_source(stored_claim(spec_ref={**src, "namespace": ""}, managed_ref=with_ns)) is None
    no_ns = {k: v for k, v in with_ns.items() if k != "f:namespace"}
    assert decisions.dropped_source(stored_claim(spec_ref=src, managed_ref=no_ns)) is None


@e2e
def test_d15_a_claim_whose_cross_namespace_source_was_dropped_gets_no_empty_volume(
        appliance: Appliance, core: client.CoreV1Api, storage: client.StorageV1Api, namespace: str,
        unique: str) -> None:
    cls = f"state-{unique}"
    make_class(storage, cls, appliance.provisioner)
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
