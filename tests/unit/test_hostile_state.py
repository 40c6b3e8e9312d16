"""Hostile review round 3 (issue 28), the appliance's own state: D9 readiness while a volume is not served,
D11 bounded reads of state files, D12 a crash then a failed retry, D13 a symlinked export root, D14 export
files nobody recorded, D15 a cross-namespace ``dataSourceRef`` the API server drops.

Each defect has a fast test on real pieces (a real Ganesha where exports are concerned) and, where a user
sees it through the running appliance, a test against the real appliance process, control plane and
Ganesha."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import pytest

from nfs_provisioner import fileio
from nfs_provisioner import settings as settings_mod
from nfs_provisioner.appliance import recovery
from nfs_provisioner.controller import decisions, inflight, watching
from nfs_provisioner.ganesha import processes
from nfs_provisioner.quota import errors as quota_errors
from nfs_provisioner.quota import projects
from nfs_provisioner.volumes.records import RECORDS_DIR, RecordError, VolumeRecords
from tests.support.hostile_state import GiB, max_rss_mib, sparse


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


@pytest.mark.unit
def test_d9_readiness_names_at_most_three_volumes_and_bounds_each_reason() -> None:
    report = recovery.Report(problems=[f"pvc-{i}: " + "x" * 5000 for i in range(1000)])
    ok, why = report.health()
    assert not ok and len(why) < 400 and why.startswith("1000 volume(s) of this appliance are not exported")


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
