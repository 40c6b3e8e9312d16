"""The Ganesha manager against a real ganesha.nfsd on a private bus and a real libnfs client."""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psutil
import pytest

from nfs_provisioner.ganesha import config, errors
from nfs_provisioner.ganesha.exports import ExportManager, ExportRequest, temp_files
from nfs_provisioner.ganesha.settings import AccessType, Squash
from tests.support import wait
from tests.support.ganesha_env import Harness, free_port
from tests.support.paths import REPO

pytestmark = pytest.mark.ganesha


def test_add_write_read_remove_then_client_is_refused(h: Harness) -> None:
    srv = h.server()
    vol = h.volume("pvc-1", content={"hello.txt": b"hello from the server\n"})
    export = srv.exports.add(ExportRequest(name="pvc-1", path=vol))
    assert export.export_id == 1
    nfs = h.client()

    # Read what the server side wrote, write through NFS and see it on disk.
    assert nfs.cat(vol / "hello.txt").stdout == b"hello from the server\n"
    payload = os.urandom(3944)  # the largest single NFSv4 WRITE libnfs 4.0 can send
    put = nfs.put(payload, vol / "data.bin")
    assert put.returncode == 0, put.stderr
    assert (vol / "data.bin").read_bytes() == payload
    assert nfs.cat(vol / "data.bin").stdout == payload
    listing = nfs.ls(vol)
    assert b"data.bin" in listing.stdout and b"hello.txt" in listing.stdout

    shown = srv.dbus.display_export(export.export_id)
    assert (shown.path, shown.pseudo, shown.clients) == (str(vol), str(vol), ("*",))
    assert h.registry.get_sample_value("nfs_provisioner_ganesha_exports") == 1

    assert srv.exports.remove("pvc-1") is True
    refused = nfs.cat(vol / "hello.txt")
    assert refused.returncode != 0 and refused.stdout == b""
    assert nfs.ls(vol).returncode != 0
    assert not export.config_file.exists()
    assert srv.exports.index_entries() == []
    assert [e.export_id for e in srv.dbus.show_exports()] == [0]
    assert (vol / "data.bin").read_bytes() == payload, "removing an export never touches the volume"
    assert srv.exports.remove("pvc-1") is False, "remove is idempotent"
    assert h.registry.get_sample_value("nfs_provisioner_ganesha_exports") == 0
    adds = h.registry.get_sample_value(
        "nfs_provisioner_ganesha_dbus_call_duration_seconds_count", {"method": "AddExport"}
    )
    assert adds == 1


def test_bad_requests_are_clear_errors_and_write_nothing(h: Harness, tmp_path: Path) -> None:
    srv = h.server()
    vol = h.volume("vol")
    outside = tmp_path / "outside"
    outside.mkdir()
    (h.export_root / "escape").symlink_to(outside)
    bad = [
        ExportRequest(name="a", path=outside),
        ExportRequest(name="b", path=h.export_root / "vol" / ".." / "vol"),
        ExportRequest(name="c", path=h.export_root / "escape"),
        ExportRequest(name="d", path=h.export_root / "missing"),
        ExportRequest(name="e", path=h.export_root),
        ExportRequest(name="f", path=srv.config_dir),
        ExportRequest(name="../g", path=vol),
        ExportRequest(name="h", path=vol, clients=("not-a-subnet",)),
        ExportRequest(name="i", path=Path("relative/vol")),
    ]
    for req in bad:
        with pytest.raises(errors.InvalidRequest):
            srv.exports.add(req)
            pytest.fail(f"accepted {req}")
    with pytest.raises(errors.InvalidRequest, match="everyone"):
        srv.exports.add(ExportRequest(name="j", path=vol, squash="everyone"))  # type: ignore[arg-type]
    assert list(srv.exports.exports_dir.iterdir()) == []
    assert srv.exports.index_entries() == []
    assert [e.export_id for e in srv.dbus.show_exports()] == [0]
    assert list(outside.iterdir()) == []

    first = srv.exports.add(ExportRequest(name="vol", path=vol, squash=Squash.ROOT_ID_SQUASH))
    assert srv.exports.add(ExportRequest(name="vol", path=vol, squash=Squash.ROOT_ID_SQUASH)) == first
    with pytest.raises(errors.ExportConflict):
        srv.exports.add(ExportRequest(name="vol", path=vol, squash=Squash.NO_ROOT_SQUASH))
    with pytest.raises(errors.ExportConflict):
        srv.exports.add(ExportRequest(name="other", path=vol))
    assert [e.name for e in srv.exports.list_exports()] == ["vol"]


def test_failing_add_export_is_rolled_back(h: Harness, tmp_path: Path) -> None:
    # An operator template naming an FSAL that does not exist passes our own checks,
    # so the failure comes from Ganesha's AddExport itself.
    override = tmp_path / "templates"
    override.mkdir()
    shipped = (REPO / "ganesha" / "export.conf.j2").read_text()
    broken = shipped.replace("Name = VFS;", "Name = NO_SUCH_FSAL;")
    assert broken != shipped
    (override / "export.conf.j2").write_text(broken)
    srv = h.server(template_dir=override)
    vol = h.volume("vol")
    with pytest.raises(errors.ExportAddError, match="AddExport") as info:
        srv.exports.add(ExportRequest(name="vol", path=vol))
    assert isinstance(info.value.__cause__, errors.DBusError)
    assert list(srv.exports.exports_dir.iterdir()) == [], "no export file, no temp file"
    assert srv.exports.index_entries() == []
    assert temp_files(srv.config_dir) == temp_files(srv.exports.shards_dir) == []
    assert srv.exports.get("vol") is None and len(srv.exports) == 0
    assert [e.export_id for e in srv.dbus.show_exports()] == [0]

    # With Ganesha gone, an add fails cleanly too and the id is not leaked.
    srv.stop()
    srv2 = h.server()
    vol2 = h.volume("vol2")
    ok = srv2.exports.add(ExportRequest(name="vol2", path=vol2))
    assert ok.export_id == 1
    srv2.stop()
    with pytest.raises(errors.ExportAddError) as info2:
        srv2.exports.add(ExportRequest(name="vol3", path=h.volume("vol3")))
    assert isinstance(info2.value.__cause__, errors.DBusUnavailable)
    assert sorted(p.name for p in srv2.exports.exports_dir.iterdir()) == ["vol2.conf"]
    assert len(srv2.exports.index_entries()) == 1
    # A remove Ganesha cannot confirm keeps the export (file and index line) for a retry.
    with pytest.raises(errors.DBusUnavailable):
        srv2.exports.remove("vol2")
    assert srv2.exports.get("vol2") == ok and len(srv2.exports.index_entries()) == 1


def test_export_ids_skip_152_and_exhaustion_is_an_immediate_error(h: Harness) -> None:
    srv = h.server(id_range=(150, 153))
    ids = [srv.exports.add(ExportRequest(name=f"v{i}", path=h.volume(f"v{i}"))).export_id for i in range(3)]
    assert ids == [150, 151, 153]
    start = time.monotonic()
    with pytest.raises(errors.ExportIdsExhausted):
        srv.exports.add(ExportRequest(name="v3", path=h.volume("v3")))
    assert time.monotonic() - start < 1.0
    assert not (srv.exports.exports_dir / "v3.conf").exists()
    srv.exports.remove("v1")
    assert srv.exports.add(ExportRequest(name="v3", path=h.volume("v3"))).export_id == 151, "lowest free id reused"
    assert sorted(e.export_id for e in srv.dbus.show_exports()) == [0, 150, 151, 153]


def test_500_exports_ids_recovered_after_manager_restart(h: Harness) -> None:
    srv = h.server()
    added = {}
    for i in range(500):
        e = srv.exports.add(ExportRequest(name=f"pvc-{i:03d}", path=h.volume(f"pvc-{i:03d}")))
        added[e.name] = e.export_id
    assert sorted(added.values()) == [i for i in range(1, 502) if i != 152]
    assert len(srv.exports.index_entries()) == 500
    assert len(srv.dbus.show_exports()) == 501
    (h.export_root / "pvc-321" / "f").write_bytes(b"321")
    srv.stop()

    srv2 = h.server()
    assert {e.name: e.export_id for e in srv2.exports.list_exports()} == added
    live = {e.export_id: e.path for e in srv2.dbus.show_exports()}
    assert len(live) == 501, "Ganesha loaded every export from the index at start"
    assert live[added["pvc-321"]] == str(h.export_root / "pvc-321")
    assert h.client().cat(h.export_root / "pvc-321" / "f").stdout == b"321"
    # The next id is the lowest free one, not a counter.
    srv2.exports.remove("pvc-007")
    assert srv2.exports.add(ExportRequest(name="new", path=h.volume("new"))).export_id == added["pvc-007"]

    for e in srv2.exports.list_exports():
        srv2.exports.remove(e.name)
    assert [e.export_id for e in srv2.dbus.show_exports()] == [0]
    assert list(srv2.exports.exports_dir.iterdir()) == []
    assert srv2.exports.index_entries() == []


def test_ganesha_killed_is_restarted_with_all_exports(h: Harness, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger="nfs_provisioner.ganesha.server")
    srv = h.server()
    for i in range(3):
        vol = h.volume(f"vol{i}", content={"f": f"data {i}".encode()})
        srv.exports.add(ExportRequest(name=f"vol{i}", path=vol))
    old_pid = srv.ganesha_pid
    assert old_pid is not None
    os.kill(old_pid, signal.SIGKILL)
    assert srv.wait_restarted(after=0, timeout=30), "supervisor restarted Ganesha"
    assert srv.ganesha_pid not in (None, old_pid)
    exit_logs = [r.getMessage() for r in caplog.records if "exited with code -9" in r.getMessage()]
    assert exit_logs and "NFS SERVER INITIALIZED" in exit_logs[0], "exit code and Ganesha's log tail are logged"
    assert srv.ready()
    nfs = h.client()
    for i in range(3):
        got = wait.until(lambda i=i: nfs.cat(h.export_root / f"vol{i}" / "f").stdout, timeout=10, what=f"vol{i}")
        assert got == f"data {i}".encode()
    assert h.registry.get_sample_value("nfs_provisioner_ganesha_restarts_total") == 1
    assert h.registry.get_sample_value("nfs_provisioner_ganesha_up") == 1
    # Exports keep working after the restart: add and remove still go through.
    srv.exports.add(ExportRequest(name="late", path=h.volume("late")))
    assert srv.exports.remove("vol0")
    assert sorted(e.export_id for e in srv.dbus.show_exports()) == [0, 2, 3, 4]


def test_reconcile_readds_missing_and_reserves_foreign_ids(h: Harness, tmp_path: Path) -> None:
    srv = h.server()
    a = srv.exports.add(ExportRequest(name="a", path=h.volume("a")))
    # Removed behind the manager's back: reconcile adds it again from its file.
    srv.dbus.remove_export(a.export_id)
    # An export someone else added with id 2: never reused by the manager.
    foreign_dir = h.volume("foreign")
    foreign_conf = tmp_path / "foreign.conf"
    foreign_conf.write_text(
        f'EXPORT {{ Export_Id = 2; Path = "{foreign_dir}"; Pseudo = "{foreign_dir}"; Access_Type = RW;'
        " FSAL { Name = VFS; } }\n"
    )
    srv.dbus.add_export(config_file=foreign_conf, export_id=2)
    with pytest.raises(errors.ExportAlreadyActive):
        srv.dbus.add_export(config_file=foreign_conf, export_id=2)
    with pytest.raises(errors.ExportNotFound):
        srv.dbus.remove_export(4242)
    result = srv.exports.reconcile()
    assert result.readded == (a.export_id,) and result.foreign == (2,) and result.failed == ()
    assert srv.exports.add(ExportRequest(name="b", path=h.volume("b"))).export_id == 3
    assert h.client().ls(h.export_root / "a").returncode == 0


def test_health_heartbeat_grace_and_graceful_stop(h: Harness) -> None:
    srv = h.server()
    assert srv.ready()
    assert srv.dbus.wait_heartbeat(timeout=5) is True
    assert srv.dbus.get_grace() is False, "grace_period=0 is Graceless"
    assert srv.ganesha_pid is not None
    fds = h.registry.get_sample_value("nfs_provisioner_ganesha_open_fds")
    assert fds is not None and 5 < fds < 1000
    rss = h.registry.get_sample_value("nfs_provisioner_ganesha_resident_memory_bytes")
    assert rss is not None and rss > 1_000_000
    limits = psutil.Process(srv.ganesha_pid).rlimit(psutil.RLIMIT_NOFILE)
    assert limits == (srv.settings.nofile_limit, srv.settings.nofile_limit) == (16384, 16384), "bounded, not 1M"
    pids = [srv.ganesha_pid, *srv.helper_pids().values()]
    assert None not in pids and len(pids) == 2
    srv.stop()
    assert srv.ganesha_pid is None and srv.helper_pids() == {}
    for pid in pids:
        assert pid is not None
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert "shutdown" in srv.settings.log_path.read_text().lower()
    assert h.registry.get_sample_value("nfs_provisioner_ganesha_up") == 0
    assert h.registry.get_sample_value("nfs_provisioner_ganesha_open_fds") is None, "no process, no sample"


def test_update_changes_clients_of_a_live_export(h: Harness) -> None:
    srv = h.server()
    vol = h.volume("v", content={"f": b"x"})
    export = srv.exports.add(ExportRequest(name="v", path=vol))
    nfs = h.client()
    assert nfs.cat(vol / "f").stdout == b"x"
    restricted = srv.exports.update(ExportRequest(name="v", path=vol, clients=("10.0.0.0/8",)))
    assert restricted.export_id == export.export_id and restricted.clients == ("10.0.0.0/8",)
    assert srv.dbus.display_export(export.export_id).clients == ("10.0.0.0/8",)
    assert nfs.cat(vol / "f").returncode != 0, "127.0.0.1 is outside 10.0.0.0/8"
    srv.exports.update(ExportRequest(name="v", path=vol, clients=("127.0.0.0/8",)))
    assert nfs.cat(vol / "f").stdout == b"x"
    with pytest.raises(errors.ExportConflict):
        srv.exports.update(ExportRequest(name="v", path=h.volume("w")))
    # The update survives a restart of the manager: it lives in the export file.
    srv.stop()
    srv2 = h.server()
    assert srv2.exports.get("v") == dataclasses.replace(restricted, clients=("127.0.0.0/8",))
    assert srv2.dbus.display_export(export.export_id).clients == ("127.0.0.0/8",)


def test_sighup_reload_keeps_exports_added_over_dbus(h: Harness) -> None:
    # SIGHUP drops exports added over D-Bus that are not in the config; ours are in the index.
    srv = h.server()
    for i in range(3):
        srv.exports.add(ExportRequest(name=f"v{i}", path=h.volume(f"v{i}", content={"f": b"%d" % i})))
    pid = srv.ganesha_pid
    assert pid is not None
    for i in range(3, 12):
        offset = srv.settings.log_path.stat().st_size
        os.kill(pid, signal.SIGHUP)
        wait.until(lambda offset=offset: "Reread exports complete" in _log_since(srv.settings.log_path, offset),
                   timeout=10, what="Ganesha finished the reload")
        srv.exports.add(ExportRequest(name=f"v{i}", path=h.volume(f"v{i}", content={"f": b"%d" % i})))
    assert len(srv.dbus.show_exports()) == 13
    assert srv.ganesha_pid == pid and srv.restarts == 0
    nfs = h.client()
    for i in (0, 2, 11):
        assert nfs.cat(h.export_root / f"v{i}" / "f").stdout == b"%d" % i


def test_sighup_racing_adds_loses_no_export(h: Harness) -> None:
    """Ganesha 6.5 can crash (SIGSEGV) when a SIGHUP reload races an AddExport; 4.3 did not.
    An add that fails that way raises a typed error and leaves no file; retried once Ganesha is
    back (as the controller does), it succeeds, and in the end every export is served."""
    srv = h.server(restart_backoff_max=0.5)
    failures = 0
    for i in range(30):
        name = f"v{i}"
        request = ExportRequest(name=name, path=h.volume(name, content={"f": name.encode()}))
        pid = srv.ganesha_pid
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGHUP)
        try:
            srv.exports.add(request)
        except errors.ExportAddError:
            failures += 1
            assert not (srv.config_dir / "exports.d" / f"{name}.conf").exists(), "a failed add leaves no file"
            wait.until(srv.ready, timeout=30, what="Ganesha serving again")
            srv.exports.add(request)
    wanted = {str(h.export_root / f"v{i}") for i in range(30)}

    def all_served() -> bool:  # the last reload may still crash a Ganesha busy re-adding exports
        try:
            return wanted <= {e.path for e in srv.dbus.show_exports()}
        except errors.GaneshaError:
            return False

    wait.until(all_served, timeout=30, what=lambda: f"all 30 exports served ({failures} adds failed)")
    nfs = h.client()
    for name in ("v0", "v29"):  # right after a restart a read may need a retry (as after SIGKILL)
        got = wait.until(lambda name=name: nfs.cat(h.export_root / name / "f").stdout, timeout=10, what=name)
        assert got == name.encode()


def _log_since(path: Path, offset: int) -> str:
    with path.open("rb") as f:
        f.seek(offset)
        return f.read().decode("utf-8", "replace")


def test_sigterm_stops_ganesha_and_helpers_gracefully(h: Harness) -> None:
    run_dir = h.run_root / "cli"
    metrics_port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "nfs_provisioner.ganesha",
            "--export-root", str(h.export_root), "--run-dir", str(run_dir),
            "--nfs-port", str(h.port), "--bind-addr", "127.0.0.1",
            "--dbus-name-prefix", h.prefix, "--grace-period", "0", "--metrics-port", str(metrics_port),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    pids: dict[str, int] = {}
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line, proc.stderr.read() if proc.stderr else ""
        report = json.loads(line)
        pids = report["pids"]
        assert report["ready"] and set(pids) == {"ganesha.nfsd", "dbus-daemon"}
        assert h.client().ls("/").returncode == 0, "the pseudo root is served"
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as r:
            scraped = r.read().decode()
        assert "nfs_provisioner_ganesha_up 1.0" in scraped
        assert "nfs_provisioner_ganesha_exports 0.0" in scraped
        assert 'nfs_provisioner_ganesha_dbus_call_duration_seconds_count{method="ShowExports"}' in scraped
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        for pid in pids.values():
            with pytest.raises(ProcessLookupError):
                os.kill(pid, 0)
        log = (h.export_root / ".ganesha" / "ganesha.log").read_text()
        assert "shutdown" in log.lower()
    finally:
        for pid in [proc.pid, *pids.values()]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        proc.wait(timeout=10)


def test_adds_and_removes_from_many_threads(h: Harness) -> None:
    srv = h.server()
    vols = [h.volume(f"t{i:03d}") for i in range(160)]

    def work(chunk: list[Path]) -> list[int]:
        ids = [srv.exports.add(ExportRequest(name=v.name, path=v)).export_id for v in chunk]
        for v in chunk[::2]:
            srv.exports.remove(v.name)
        return ids

    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(work, [vols[i::8] for i in range(8)]))
    all_ids = [i for ids in results for i in ids]
    assert len(all_ids) == 160 and 152 not in all_ids
    remaining = {e.name: e.export_id for e in srv.exports.list_exports()}
    assert len(remaining) == 80 and len(set(remaining.values())) == 80
    live = {e.export_id: e.path for e in srv.dbus.show_exports() if e.export_id != 0}
    assert live == {i: str(h.export_root / n) for n, i in remaining.items()}
    assert len(srv.exports.index_entries()) == 80


def test_adds_and_removes_sharing_one_index_shard_keep_it_exact(h: Harness) -> None:
    """Shard files are rewritten outside the manager's lock: threads adding and removing exports of one
    shard (ids 1, 257, 513, ...) at once must leave that shard listing exactly the exports that exist."""
    srv = h.server()
    vols = [h.volume(f"s{i:03d}") for i in range(48)]
    wanted = {v.name: 1 + 256 * i for i, v in enumerate(vols)}

    def work(chunk: list[Path]) -> None:
        for v in chunk:
            assert srv.exports.add(ExportRequest(name=v.name, path=v, export_id=wanted[v.name])).export_id == \
                wanted[v.name]
        for v in chunk[::2]:
            assert srv.exports.remove(v.name)
        for v in chunk[::4]:  # added again: same shard once more
            srv.exports.add(ExportRequest(name=v.name, path=v, export_id=wanted[v.name]))

    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(work, [vols[i::8] for i in range(8)]))
    exports = srv.exports.list_exports()
    assert len(exports) == 8 * (6 - 3 + 2)  # per chunk of 6: 3 removed, 2 of those added again
    assert srv.exports.index_entries() == sorted(e.config_file for e in exports)
    live = {e.export_id: e.path for e in srv.dbus.show_exports() if e.export_id != 0}
    assert live == {e.export_id: str(e.path) for e in exports}
    assert {e.export_id % 256 for e in exports} == {1}


def test_dbus_daemon_killed_restarts_bus_and_ganesha(h: Harness) -> None:
    srv = h.server()
    vol = h.volume("v", content={"f": b"still here"})
    srv.exports.add(ExportRequest(name="v", path=vol))
    old_bus = srv.helper_pids()["dbus-daemon"]
    old_ganesha = srv.ganesha_pid
    os.kill(old_bus, signal.SIGKILL)
    assert srv.wait_restarted(after=0, timeout=30)
    assert srv.helper_pids()["dbus-daemon"] != old_bus and srv.ganesha_pid != old_ganesha
    assert srv.ready(), "the facade reconnected to the new bus and Ganesha is on it"
    assert srv.exports.add(ExportRequest(name="w", path=h.volume("w"))).export_id == 2
    assert h.client().cat(vol / "f").stdout == b"still here"


def test_external_bus_is_used_and_left_running(h: Harness) -> None:
    bus_dir = h.run_root / "extbus"
    bus_dir.mkdir()
    (bus_dir / "bus.conf").write_text(config.Templates().render_bus(socket_path=bus_dir / "bus.sock"))
    bus = subprocess.Popen(["dbus-daemon", f"--config-file={bus_dir / 'bus.conf'}", "--nofork", "--nopidfile"])
    try:
        wait.until(lambda: (bus_dir / "bus.sock").exists(), timeout=10, what="external bus socket")
        srv = h.server(dbus_address=f"unix:path={bus_dir / 'bus.sock'}")
        assert srv.helper_pids() == {}, "no private bus started"
        vol = h.volume("v", content={"f": b"via external bus"})
        srv.exports.add(ExportRequest(name="v", path=vol))
        assert h.client().cat(vol / "f").stdout == b"via external bus"
        srv.stop()
        assert bus.poll() is None, "a bus we did not start is not stopped"
    finally:
        bus.kill()
        bus.wait(timeout=10)


def test_broken_or_tampered_export_files_are_left_out_on_start(h: Harness) -> None:
    srv = h.server()
    good = srv.exports.add(ExportRequest(name="good", path=h.volume("good", content={"f": b"ok"})))
    srv.stop()
    exports_dir = srv.exports.exports_dir
    (exports_dir / "garbage.conf").write_text("EXPORT { this is not a config\n")
    tampered = good.config_file.read_text().replace(str(h.export_root / "good"), "/etc")
    (exports_dir / "tampered.conf").write_text(tampered.replace('"name": "good"', '"name": "tampered"'))

    srv2 = h.server()
    assert [e.name for e in srv2.exports.list_exports()] == ["good"]
    assert srv2.exports.index_entries() == [good.config_file]
    assert sorted(e.path for e in srv2.dbus.show_exports()) == ["/", str(h.export_root / "good")]
    assert h.client().cat(h.export_root / "good" / "f").stdout == b"ok"
    with pytest.raises(errors.ExportConflict):
        srv2.exports.add(ExportRequest(name="garbage", path=h.volume("garbage")))
    assert (exports_dir / "garbage.conf").read_text() == "EXPORT { this is not a config\n", "never overwritten"


def test_failed_restarts_back_off_until_ganesha_can_start(h: Harness, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger="nfs_provisioner.ganesha.server")
    srv = h.server(ready_timeout=10.0)
    vol = h.volume("v", content={"f": b"back"})
    srv.exports.add(ExportRequest(name="v", path=vol))
    pid = srv.ganesha_pid
    assert pid is not None
    # Hold Ganesha's port so that its restarts fail until we let go.
    blocker = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        os.kill(pid, signal.SIGKILL)
        wait.until(lambda: srv.ganesha_pid is None, timeout=10, what="Ganesha gone")
        wait.until(lambda: _try_bind(blocker, h.port), timeout=10, what="port free to block")
        blocker.listen()
        wait.until(
            lambda: sum("restarting Ganesha failed" in r.getMessage() for r in caplog.records) >= 2,
            timeout=30,
            what="two failed restarts",
        )
        assert srv.restarts == 0 and not srv.ready()
    finally:
        blocker.close()
    assert srv.wait_restarted(after=0, timeout=60)
    assert h.client().cat(vol / "f").stdout == b"back"
    delays = [r.getMessage() for r in caplog.records if "exited with code -9" in r.getMessage()]
    assert len(delays) == 1


def _try_bind(sock: socket.socket, port: int) -> bool:
    try:
        sock.bind(("127.0.0.1", port))
        return True
    except OSError:
        return False


def test_already_active_is_success_only_for_the_same_path(h: Harness, tmp_path: Path) -> None:
    srv = h.server()
    shared = h.volume("shared", content={"f": b"shared"})
    srv.exports.add(ExportRequest(name="shared", path=shared))  # id 1, live
    srv.exports.add(ExportRequest(name="other", path=h.volume("other")))  # id 2, live
    # A second manager over its own config dir talks to the same Ganesha, unaware of those ids.
    second = ExportManager(
        export_root=h.export_root,
        config_dir=tmp_path / "second",
        dbus=srv.dbus,
        templates=config.Templates(),
    )
    second.load()
    same = second.add(ExportRequest(name="shared", path=shared))
    assert same.export_id == 1, "AddExport said 'already active'; DisplayExport showed the same path: success"
    with pytest.raises(errors.ExportIdTaken, match="already live"):
        second.add(ExportRequest(name="mine", path=h.volume("mine")))  # gets id 2, live for another path
    assert second.get("mine") is None
    assert second.index_entries() == [same.config_file]
    assert sorted(p.name for p in second.exports_dir.iterdir()) == ["shared.conf"]
    assert srv.dbus.display_export(2).path == str(h.export_root / "other"), "the live export was not touched"
    # The taken id is now reserved: a retry gets the next free one.
    assert second.add(ExportRequest(name="mine", path=h.volume("mine"))).export_id == 3


def test_squash_options_decide_who_owns_files_written_by_root(h: Harness) -> None:
    srv = h.server()
    squashed = h.volume("squashed")
    trusted = h.volume("trusted")
    for d in (squashed, trusted):
        d.chmod(0o777)
    srv.exports.add(ExportRequest(name="squashed", path=squashed, squash=Squash.ROOT_ID_SQUASH))
    srv.exports.add(ExportRequest(name="trusted", path=trusted, squash=Squash.NO_ROOT_SQUASH))
    nfs = h.client()  # the libnfs client sends AUTH_SYS uid 0 (we run as root)
    assert nfs.put(b"as root", squashed / "f").returncode == 0
    assert nfs.put(b"as root", trusted / "f").returncode == 0
    assert (trusted / "f").stat().st_uid == 0
    assert (squashed / "f").stat().st_uid != 0, "root_id_squash maps root to the anonymous user"
    assert (squashed / "f").read_bytes() == b"as root"


def test_read_only_access_type_refuses_writes(h: Harness) -> None:
    srv = h.server()
    vol = h.volume("ro", content={"f": b"read me"})
    vol.chmod(0o777)
    srv.exports.add(ExportRequest(name="ro", path=vol, access_type=AccessType.RO))
    nfs = h.client()
    assert nfs.cat(vol / "f").stdout == b"read me"
    assert nfs.put(b"nope", vol / "new").returncode != 0
    assert not (vol / "new").exists()


def test_export_whose_directory_vanished_is_reported_and_still_removable(h: Harness) -> None:
    srv = h.server()
    keep = srv.exports.add(ExportRequest(name="keep", path=h.volume("keep", content={"f": b"k"})))
    gone = srv.exports.add(ExportRequest(name="gone", path=h.volume("gone")))
    srv.stop()
    (h.export_root / "gone").rmdir()

    srv2 = h.server()  # Ganesha skips the broken export; the manager reports it
    live = {e.export_id for e in srv2.dbus.show_exports()}
    assert keep.export_id in live and gone.export_id not in live
    assert srv2.exports.reconcile().failed == (gone.export_id,)
    assert h.client().cat(h.export_root / "keep" / "f").stdout == b"k"
    assert srv2.exports.remove("gone") is True
    assert not gone.config_file.exists() and srv2.exports.index_entries() == [keep.config_file]


def test_ipv6_hosts_do_not_void_the_client_list(h: Harness) -> None:
    # Ganesha 4.3 drops a whole Clients list (nobody gets in, UpdateExport still succeeds) when an IPv6
    # entry carries a prefix longer than /64 (::1/128): hosts are written without a prefix.
    srv = h.server()
    vol = h.volume("v6", content={"f": b"x"})
    export = srv.exports.add(ExportRequest(name="v6", path=vol, clients=("127.0.0.0/8", "::1/128", "fd00::4/128")))
    assert "Clients = 127.0.0.0/8, ::1, fd00::4;" in export.config_file.read_text()
    assert srv.dbus.display_export(export.export_id).clients == ("127.0.0.0/8", "::1/128", "fd00::4/128")
    assert h.client().cat(vol / "f").stdout == b"x"
    with pytest.raises(errors.InvalidRequest, match="longer than /64"):
        srv.exports.update(ExportRequest(name="v6", path=vol, clients=("127.0.0.0/8", "fd00::/127")))
    assert h.client().cat(vol / "f").stdout == b"x", "the refused update left the export as it was"
    # Bulk: the manager's client list changes for every export at once, live.
    srv.exports.set_clients(("10.0.0.0/8",))
    assert srv.dbus.display_export(export.export_id).clients == ("10.0.0.0/8",)
    assert h.client().cat(vol / "f").returncode != 0
    srv.exports.set_clients(())
    assert srv.dbus.display_export(export.export_id).clients == ()
    assert "CLIENT {" not in export.config_file.read_text()
    srv.exports.set_clients(("127.0.0.1/32",))
    assert h.client().cat(vol / "f").stdout == b"x"
