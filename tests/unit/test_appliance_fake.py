"""The appliance's provisioner (real directories and records on a temporary export root) driven by the
controller on the in-memory API, exporting through ``appliance.testing.MemoryExporter``: the claim's whole
life, a rejection that exports nothing, and an export failure rolled back, in a second and without Ganesha.
Each test names the test that proves the same with the real appliance, Ganesha and control plane."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from nfs_provisioner.appliance import provisioner as prov
from nfs_provisioner.appliance.exporters import GaneshaExporter
from nfs_provisioner.appliance.testing import MemoryExporter
from nfs_provisioner.controller.testing import FakeApi
from nfs_provisioner.ganesha import config
from nfs_provisioner.ganesha.exports import ExportManager
from nfs_provisioner.ganesha.testing import FakeGaneshaDBus
from nfs_provisioner.kube import client as kube
from nfs_provisioner.volumes.directories import VolumeDirectories
from nfs_provisioner.volumes.records import RECORDS_DIR, VolumeRecords
from tests.support import wait
from tests.support.builders import make_claim, make_class
from tests.support.fakes import NAME, NS, pv_name, reasons, running, volume
from tests.support.treesnap import snapshot

pytestmark = pytest.mark.unit

IDENTITY = "6f1c1c1e-0000-4000-8000-00000000fa4e"


def appliance(root: Path) -> tuple[prov.NFSProvisioner, MemoryExporter]:
    root.mkdir()
    exporter = MemoryExporter()
    p = prov.NFSProvisioner(config=prov.ApplianceConfig(identity=IDENTITY, server=lambda: "192.0.2.10"),
                            directories=VolumeDirectories(root), records=VolumeRecords(root / RECORDS_DIR),
                            exporter=exporter)
    return p, exporter


def test_a_claims_life_directory_record_and_export_then_all_gone(tmp_path: Path) -> None:
    """Real: tests/e2e/test_appliance_e2e.py::test_classic_flow."""
    root = tmp_path / "export"
    p, exporter = appliance(root)
    api = FakeApi()
    make_class("nfs", NAME, mount_options=["vers=4.1"], api=api)
    with running(api, p, in_flight_journal=root / ".provisioning"):
        name = pv_name(make_claim(NS, "data", "nfs", provisioner=NAME, api=api))
        pv = wait.until(lambda: volume(api, name), timeout=5, what="the PV")
        path = root / name
        assert pv["spec"]["nfs"] == {"server": "192.0.2.10", "path": str(path)}
        assert pv["spec"]["mountOptions"] == ["vers=4.1"]
        assert pv["metadata"]["annotations"][prov.ANN_IDENTITY] == IDENTITY
        assert pv["metadata"]["annotations"][prov.ANN_EXPORT_ID] == "1"
        assert stat.S_IMODE(path.stat().st_mode) == 0o2777
        assert exporter.path_of(name) == path and exporter.root_squash(name) is False
        assert (root / RECORDS_DIR / f"{name}.json").is_file()

        api.bind(NS, "data", name)
        api.delete(kube.claims_path(NS, "data"))
        api.release(name)
        wait.until(lambda: volume(api, name) is None, timeout=5, what="the PV gone")
    assert not path.exists() and exporter.exports == {}
    assert not (root / RECORDS_DIR / f"{name}.json").exists()
    assert exporter.calls == [("export", name), ("unexport", name)]


def test_bad_class_parameters_are_one_event_each_and_nothing_is_made_or_exported(tmp_path: Path) -> None:
    """Real: tests/e2e/test_appliance_e2e.py::test_rejections_reach_the_user_as_events_and_leave_nothing and
    tests/ganesha/test_appliance_provisioner.py::test_rejections_leave_nothing_behind."""
    root = tmp_path / "export"
    p, exporter = appliance(root)
    api = FakeApi()
    make_class("bad", NAME, parameters={"onDelete": "shred"}, api=api)
    before = snapshot(root)
    with running(api, p):
        name = pv_name(make_claim(NS, "c", "bad", provisioner=NAME, api=api))
        wait.until(lambda: "ProvisioningFailed" in reasons(api, "c"), timeout=5, what="the refusal")
    failed = [m for _, r, m in api.events_about("c") if r == "ProvisioningFailed"]
    assert failed and all(m == failed[0] for m in failed) and len(failed[0].splitlines()) == 1
    assert failed[0].startswith("StorageClass bad: ") and "onDelete" in failed[0]
    assert snapshot(root) == before and exporter.calls == []
    assert volume(api, name) is None


def test_a_failed_export_rolls_back_the_directory_and_the_retry_makes_the_volume(tmp_path: Path) -> None:
    """Real: tests/ganesha/test_appliance_provisioner.py::test_failed_export_rolls_back_the_directory."""
    root = tmp_path / "export"
    p, exporter = appliance(root)
    exporter.fail("export", times=1000)
    api = FakeApi()
    make_class("nfs", NAME, api=api)
    before = snapshot(root)
    claim = make_claim(NS, "c", "nfs", provisioner=NAME, api=api)
    name = pv_name(claim)
    with running(api, p):
        wait.until(lambda: reasons(api, "c").count("ProvisioningFailed") >= 2, timeout=5, what="two failures")
    after = snapshot(root)
    assert after.pop(RECORDS_DIR) and after == before  # each attempt undid its record and directory ...
    assert list((root / RECORDS_DIR).iterdir()) == []  # ... (the records' directory stays, empty)
    failed = {m for _, r, m in api.events_about("c") if r == "ProvisioningFailed"}
    assert len(failed) == 1 and f"creating volume {name} failed" in failed.pop()
    exporter.recover()
    with running(api, p):
        wait.until(lambda: volume(api, name), timeout=5, what="the PV once exports work")
    assert (root / name).is_dir() and exporter.has(name)


def test_the_whole_export_stack_without_ganesha_file_index_and_live_table(tmp_path: Path) -> None:
    """The appliance's provisioner -> GaneshaExporter -> a real ExportManager -> FakeGaneshaDBus: the export file,
    its index line and the live export follow the claim, and go with it. Real: tests/test_appliance_e2e.py::
    test_classic_flow."""
    root = tmp_path / "export"
    root.mkdir()
    dbus = FakeGaneshaDBus()
    manager = ExportManager(export_root=root, config_dir=root / ".ganesha", dbus=dbus, templates=config.Templates(),
                            durable=False, records_dir=root / RECORDS_DIR)
    manager.load()
    p = prov.NFSProvisioner(config=prov.ApplianceConfig(identity=IDENTITY, server=lambda: "192.0.2.10"),
                            directories=VolumeDirectories(root), records=VolumeRecords(root / RECORDS_DIR),
                            exporter=GaneshaExporter(manager))
    api = FakeApi()
    make_class("nfs", NAME, api=api)
    with running(api, p):
        name = pv_name(make_claim(NS, "data", "nfs", provisioner=NAME, api=api))
        pv = wait.until(lambda: volume(api, name), timeout=5, what="the PV")
        export = manager.get(name)
        assert export is not None and dbus.live == {export.export_id: str(root / name)}
        assert manager.index_entries() == [export.config_file]
        assert 'Path = "' + str(root / name) + '"' in pv["metadata"]["annotations"][prov.ANN_EXPORT_BLOCK]
        api.bind(NS, "data", name)
        api.delete(kube.claims_path(NS, "data"))
        api.release(name)
        wait.until(lambda: volume(api, name) is None, timeout=5, what="the PV gone")
    assert dbus.live == {} and manager.index_entries() == [] and not export.config_file.exists()
    assert not (root / name).exists()
