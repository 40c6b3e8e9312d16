"""The export manager (files, index shards, ids, its locking rules) against an in-memory Ganesha
(``ganesha.testing.FakeGaneshaDBus``): fast, no server. Each test names the test that proves the same against
the real Ganesha (tests/ganesha/test_ganesha_exports.py)."""

from __future__ import annotations

import concurrent.futures
import dataclasses
import threading
import time
from pathlib import Path

import pytest

from nfs_provisioner.appliance.exporters import GaneshaExporter
from nfs_provisioner.ganesha import config, errors
from nfs_provisioner.ganesha.exports import ExportManager, ExportRequest, temp_files
from nfs_provisioner.ganesha.testing import FakeGaneshaDBus

pytestmark = pytest.mark.unit


class Env:
    def __init__(self, tmp: Path) -> None:
        self.root = tmp / "export"
        self.root.mkdir()
        self.config_dir = tmp / "config"
        self.dbus = FakeGaneshaDBus()
        self.m = self.manager()

    def manager(self, dbus: FakeGaneshaDBus | None = None) -> ExportManager:
        m = ExportManager(export_root=self.root, config_dir=self.config_dir, dbus=dbus or self.dbus,
                          templates=config.Templates(), durable=False)
        m.load()
        return m

    def volume(self, name: str) -> Path:
        p = self.root / name
        p.mkdir()
        return p

    def live(self) -> dict[int, str]:
        return {i.export_id: i.path for i in self.dbus.show_exports() if i.export_id}


@pytest.fixture
def env(tmp_path: Path) -> Env:
    return Env(tmp_path)


def in_thread(fn: object, *args: object) -> tuple[threading.Thread, list[object]]:
    out: list[object] = []

    def run() -> None:
        try:
            out.append(fn(*args))  # type: ignore[operator]
        except Exception as e:  # noqa: BLE001 - handed to the test
            out.append(e)
    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, out


def test_add_is_file_index_and_live_export_and_remove_takes_all_three_back(env: Env) -> None:
    """Real: test_add_write_read_remove_then_client_is_refused and
    test_bad_requests_are_clear_errors_and_write_nothing."""
    vol = env.volume("a")
    e = env.m.add(ExportRequest(name="a", path=vol))
    assert e.export_id == 1 and env.live() == {1: str(vol)}
    assert e.config_file.read_text().startswith("# nfs-provisioner-export: ")
    assert env.m.index_entries() == [e.config_file]
    assert env.m.add(ExportRequest(name="a", path=vol)) == e  # the same request again: the same export
    assert [c for c in env.dbus.calls if c[0] == "AddExport"] == [("AddExport", 1)]
    with pytest.raises(errors.ExportConflict):
        env.m.add(ExportRequest(name="a", path=env.volume("other")))
    with pytest.raises(errors.ExportConflict):
        env.m.add(ExportRequest(name="b", path=vol))
    with pytest.raises(errors.InvalidRequest):
        env.m.add(ExportRequest(name="c", path=env.root.parent / "config"))
    assert env.m.remove("a") and not env.m.remove("a")
    assert env.live() == {} and env.m.index_entries() == [] and not e.config_file.exists()


def test_a_failed_add_export_leaves_nothing_and_a_failed_remove_keeps_everything(env: Env) -> None:
    """Real: test_failing_add_export_is_rolled_back."""
    env.dbus.fail("AddExport", errors.DBusError(method="AddExport", name="org.freedesktop.DBus.Error.InvalidArgs",
                                                message="no such FSAL"))
    with pytest.raises(errors.ExportAddError, match="no such FSAL"):
        env.m.add(ExportRequest(name="a", path=env.volume("a")))
    assert list(env.m.exports_dir.iterdir()) == [] and env.m.index_entries() == [] and len(env.m) == 0
    assert temp_files(env.config_dir) == temp_files(env.m.shards_dir) == []
    ok = env.m.add(ExportRequest(name="a", path=env.root / "a"))
    assert ok.export_id == 1  # the failed add's id was not leaked
    env.dbus.fail("RemoveExport")
    with pytest.raises(errors.DBusUnavailable):
        env.m.remove("a")
    assert env.m.get("a") == ok and env.m.index_entries() == [ok.config_file] and env.live() == {1: str(ok.path)}


def test_a_remove_that_fails_after_removeexport_keeps_the_index_line_and_a_retry_finishes(env: Env) -> None:
    """The remove's undo list: its file cannot be deleted (a directory in its place), so the export stays known and
    in its index shard, and the remove's own pending mark is gone (a retry does not wait forever)."""
    e = env.m.add(ExportRequest(name="a", path=env.volume("a")))
    e.config_file.unlink()
    e.config_file.mkdir()
    with pytest.raises(IsADirectoryError):
        env.m.remove("a")
    assert env.m.get("a") == e and env.m.index_entries() == [e.config_file] and env.live() == {}
    e.config_file.rmdir()
    assert env.m.remove("a") and env.m.get("a") is None and env.m.index_entries() == []


def test_already_active_is_success_only_for_the_same_path(env: Env) -> None:
    """Real: test_already_active_is_success_only_for_the_same_path."""
    vol = env.volume("a")
    env.dbus.live[1] = str(vol)  # live before the manager adds it (e.g. Ganesha read its file at start)
    assert env.m.add(ExportRequest(name="a", path=vol)).export_id == 1
    env.dbus.live[2] = "/elsewhere"
    with pytest.raises(errors.ExportIdTaken):
        env.m.add(ExportRequest(name="b", path=env.volume("b"), export_id=2))
    assert env.m.add(ExportRequest(name="b", path=env.root / "b", export_id=2)).export_id == 3  # 2 is reserved


def test_reconcile_readds_missing_exports_and_reserves_foreign_ids(env: Env) -> None:
    """Real: test_reconcile_readds_missing_and_reserves_foreign_ids."""
    a = env.m.add(ExportRequest(name="a", path=env.volume("a")))
    env.m.add(ExportRequest(name="b", path=env.volume("b")))
    del env.dbus.live[a.export_id]
    env.dbus.live[7] = "/foreign"
    result = env.m.reconcile()
    assert (result.readded, result.failed, result.foreign) == ((a.export_id,), (), (7,))
    assert env.live()[a.export_id] == str(a.path)
    assert env.m.add(ExportRequest(name="c", path=env.volume("c"), export_id=7)).export_id == 3


def test_load_holds_an_export_whose_directory_is_gone_until_it_is_back(env: Env) -> None:
    """Real: test_export_whose_directory_vanished_is_reported_and_still_removable and
    test_500_exports_ids_recovered_after_manager_restart."""
    a = env.m.add(ExportRequest(name="a", path=env.volume("a")))
    b = env.m.add(ExportRequest(name="b", path=env.volume("b")))
    b.path.rmdir()
    again = env.manager(FakeGaneshaDBus())  # a restart: ids and definitions come back from the files
    assert [(e.name, e.export_id) for e in again.list_exports()] == [("a", a.export_id), ("b", b.export_id)]
    assert "missing" in again.unserved()["b"] and again.index_entries() == [a.config_file]
    assert again.serve_again("b") is not None
    b.path.mkdir()
    assert again.serve_again("b") is None and again.unserved() == {}
    assert again.index_entries() == sorted([a.config_file, b.config_file])


def test_an_add_holds_no_lock_during_addexport_and_a_remove_of_its_name_waits_for_it(env: Env) -> None:
    """The manager's lock covers only bookkeeping: while an add waits in AddExport, other exports are listed and
    removed; a remove of the same name waits for the add's outcome, then removes it. Real:
    test_adds_and_removes_from_many_threads."""
    other = env.m.add(ExportRequest(name="other", path=env.volume("other")))
    hold = env.dbus.hold("AddExport")
    adding, added = in_thread(env.m.add, ExportRequest(name="a", path=env.volume("a")))
    assert hold.entered.wait(5)
    assert env.m.get("a") is not None  # reserved: name, path and id taken ...
    assert env.m.index_entries() == [other.config_file]  # ... but not in the index before Ganesha has it
    removing_other, removed_other = in_thread(env.m.remove, "other")
    removing_other.join(2)
    assert removed_other == [True]  # no lock is held across the D-Bus call
    removing, removed = in_thread(env.m.remove, "a")
    time.sleep(0.2)
    assert removing.is_alive() and adding.is_alive()  # the remove waits for the add in flight
    hold.release()
    adding.join(5)
    removing.join(5)
    assert removed == [True] and not isinstance(added[0], Exception)
    assert env.live() == {} and env.m.index_entries() == [] and len(env.m) == 0


def test_set_clients_waits_for_adds_in_flight_and_updates_them_too(env: Env) -> None:
    """Real: tests/e2e/test_node_clients.py::test_only_nodes_may_mount_and_node_changes_reach_live_exports."""
    env.m.add(ExportRequest(name="old", path=env.volume("old")))
    hold = env.dbus.hold("AddExport")
    adding, _ = in_thread(env.m.add, ExportRequest(name="a", path=env.volume("a")))
    assert hold.entered.wait(5)
    setting, result = in_thread(env.m.set_clients, ("10.0.0.0/24",))
    time.sleep(0.2)
    assert setting.is_alive()
    hold.release()
    adding.join(5)
    setting.join(5)
    assert sorted(result[0].changed) == ["a", "old"] and result[0].failed == ()  # type: ignore[attr-defined]
    for e in env.m.list_exports():
        assert e.clients == ("10.0.0.0/24",) and "10.0.0.0/24" in e.config_file.read_text()
    assert sorted(c for c in env.dbus.calls if c[0] == "UpdateExport") == [("UpdateExport", 1), ("UpdateExport", 2)]


def test_adds_and_removes_sharing_one_index_shard_keep_it_exact(env: Env) -> None:
    """Shard files are rewritten outside the manager's lock. Real: the test of the same name."""
    vols = [env.volume(f"s{i:03d}") for i in range(48)]
    wanted = {v.name: 1 + 256 * i for i, v in enumerate(vols)}

    def work(chunk: list[Path]) -> None:
        for v in chunk:
            assert env.m.add(ExportRequest(name=v.name, path=v, export_id=wanted[v.name])).export_id == wanted[v.name]
        for v in chunk[::2]:
            assert env.m.remove(v.name)
        for v in chunk[::4]:
            env.m.add(ExportRequest(name=v.name, path=v, export_id=wanted[v.name]))

    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(work, [vols[i::8] for i in range(8)]))
    exports = env.m.list_exports()
    assert len(exports) == 8 * (6 - 3 + 2)
    assert env.m.index_entries() == sorted(e.config_file for e in exports)
    assert env.live() == {e.export_id: str(e.path) for e in exports}


def test_update_rewrites_the_file_and_keeps_the_old_one_when_ganesha_refuses(env: Env) -> None:
    """Real: test_update_changes_clients_of_a_live_export."""
    vol = env.volume("v")
    e = env.m.add(ExportRequest(name="v", path=vol))
    narrowed = env.m.update(ExportRequest(name="v", path=vol, clients=("10.0.0.0/8",)))
    assert narrowed.export_id == e.export_id and "10.0.0.0/8" in e.config_file.read_text()
    before = e.config_file.read_text()
    env.dbus.fail("UpdateExport", errors.DBusError(method="UpdateExport", name="x", message="refused"))
    with pytest.raises(errors.ExportAddError, match="old block kept"):
        env.m.update(ExportRequest(name="v", path=vol, clients=("192.168.0.0/16",)))
    assert e.config_file.read_text() == before and env.m.get("v") == narrowed
    with pytest.raises(errors.ExportConflict):
        env.m.update(ExportRequest(name="v", path=env.volume("w")))
    assert env.manager(FakeGaneshaDBus()).get("v") == narrowed  # it lives in the file


def test_a_client_list_ganesha_refused_is_not_counted_as_applied_and_is_sent_again(env: Env) -> None:
    """Real: tests/kube/test_hostile_addresses.py::test_d4_a_client_list_ganesha_refuses_is_not_counted_as_applied and
    test_d4_an_export_ganesha_did_not_update_is_updated_again_with_the_same_list."""
    a = env.m.add(ExportRequest(name="a", path=env.volume("a")))
    env.m.add(ExportRequest(name="b", path=env.volume("b")))
    exporter = GaneshaExporter(env.m)
    env.dbus.fail("UpdateExport", errors.DBusError(method="UpdateExport", name="x", message="Unexpected character"))
    with pytest.raises(errors.ClientsNotLive) as info:
        exporter.set_clients(("10.1.0.0/16",))
    assert len(info.value.names) == 1
    refused = info.value.names[0]
    calls = len(env.dbus.calls)
    exporter.set_clients(("10.1.0.0/16",))  # the same list again: only the refused export is sent again
    assert env.dbus.calls[calls:] == [("UpdateExport", env.m.get(refused).export_id)]  # type: ignore[union-attr]
    assert all(e.clients == ("10.1.0.0/16",) for e in env.m.list_exports())
    with pytest.raises(errors.InvalidRequest):
        exporter.set_clients(("fe80::1%eth0/128",))  # a list Ganesha cannot take changes nothing
    assert env.m.get("a") == dataclasses.replace(a, clients=("10.1.0.0/16",))


def test_an_export_without_a_volume_record_is_held_and_never_given_to_ganesha(env: Env) -> None:
    """With the appliance's records directory, an export file without its record is kept but not served. Real:
    tests/ganesha/test_hostile_state.py::test_d14_an_export_file_without_a_record_is_kept_but_never_served."""
    records = env.root / ".volumes"
    records.mkdir()
    (records / "a.json").write_text("{}")
    env.m.add(ExportRequest(name="a", path=env.volume("a")))
    env.m.add(ExportRequest(name="b", path=env.volume("b")))
    fresh = FakeGaneshaDBus()
    m = ExportManager(export_root=env.root, config_dir=env.config_dir, dbus=fresh, templates=config.Templates(),
                      durable=False, records_dir=records)
    m.load()
    assert "no volume record" in m.unserved()["b"] and m.index_entries() == [m.get("a").config_file]  # type: ignore[union-attr]
    result = m.reconcile()
    assert result.readded == (m.get("a").export_id,) and fresh.live == {1: str(env.root / "a")}  # type: ignore[union-attr]
    (records / "b.json").write_text("{}")
    assert m.serve_again("b") is None and sorted(fresh.live) == [1, 2]
