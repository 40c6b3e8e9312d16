"""Checks that need real XFS project quotas; run inside User-Mode Linux by
tests/uml/test_quota_uml.py (one boot for all of them).

    python -m tests.support.uml_quota_checks --xfs MNT --plain MNT2 --results FILE.json [NAME ...]

``--xfs`` is an XFS mounted with prjquota, ``--plain`` one mounted without
quotas. Every check gets its own export root on the quota filesystem, runs the
real component with the real xfs_quota and writes, and ends in
``{name: {"ok", "seconds", "detail"}}`` in the results file; the exit code is 0
only if all passed. Project ids are shared by the whole filesystem, so checks
compare ids relative to what they allocated, never to fixed numbers.
"""

from __future__ import annotations

import argparse
import errno
import io
import json
import logging
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import CollectorRegistry

from nfs_provisioner.quota import commands, errors, fsxattr, manager, metrics, projects
from tests.support import ganesha_env

MiB = 1024 * 1024
CHUNK = 64 * 1024


@dataclass(frozen=True)
class Context:
    export_root: Path
    """A fresh directory on the prjquota XFS, only for this check."""
    plain: Path
    """A directory on an XFS mounted without quotas."""


Check = Callable[[Context], None]
CHECKS: dict[str, Check] = {}


def check(fn: Check) -> Check:
    CHECKS[fn.__name__] = fn
    return fn


# -- helpers ----------------------------------------------------------------------


def open_quotas(ctx: Context, runner: commands.Runner | None = None) -> manager.ProjectQuotas:
    return manager.ProjectQuotas.open(export_root=ctx.export_root, runner=runner)


def volume(ctx: Context, name: str) -> Path:
    path = ctx.export_root / name
    path.mkdir()
    return path


def write_until_full(path: Path, *, limit: int) -> int:
    """Append zeros in 64 KiB chunks until ENOSPC (failing if it never comes); returns bytes written."""
    written = 0
    chunk = b"\0" * CHUNK
    with path.open("ab") as f:
        try:
            while written <= limit + 4 * MiB:
                written += os.write(f.fileno(), chunk)
                os.fsync(f.fileno())
        except OSError as e:
            assert e.errno == errno.ENOSPC, f"expected ENOSPC, got {e!r}"
            return written
    raise AssertionError(f"wrote {written} bytes to {path} without hitting a limit of {limit}")


def write_bytes(path: Path, size: int) -> None:
    """Write ``size`` bytes (synced); any error fails the check."""
    with path.open("wb") as f:
        for _ in range(size // CHUNK):
            f.write(b"\0" * CHUNK)
        f.flush()
        os.fsync(f.fileno())


def kernel_report(quotas: manager.ProjectQuotas) -> dict[int, int]:
    """id -> hard limit bytes, straight from xfs_quota."""
    return {pid: e.hard_limit_bytes for pid, e in quotas.xfs.report().items()}


def expect(error: type[BaseException], fn: Callable[[], object], text: str = "") -> BaseException:
    try:
        fn()
    except error as e:
        assert text in str(e), f"{error.__name__} without {text!r}: {e}"
        return e
    raise AssertionError(f"expected {error.__name__}")


# -- checks -----------------------------------------------------------------------


@check
def startup_check_accepts_prjquota_xfs(ctx: Context) -> None:
    quotas = open_quotas(ctx)
    fs = quotas.filesystem
    assert fs.mount.fstype == "xfs" and "prjquota" in fs.mount.super_options, fs
    assert fs.export_root == ctx.export_root.resolve() and ctx.export_root.is_relative_to(fs.mount_point)
    assert quotas.reapply() == manager.ReapplyReport(), "a fresh export root has nothing to re-apply"


@check
def startup_check_refuses_xfs_without_prjquota(ctx: Context) -> None:
    e = expect(errors.ProjectQuotaOffError, lambda: manager.ProjectQuotas.open(export_root=ctx.plain), "prjquota")
    assert str(ctx.plain) in str(e) and "project quotas are off" in str(e), e


@check
def startup_check_refuses_missing_xfs_quota(ctx: Context) -> None:
    no_tools = commands.SubprocessRunner(env={"PATH": "/nonexistent"})
    expect(errors.QuotaToolMissingError, lambda: open_quotas(ctx, no_tools), "apt-get install xfsprogs")


@check
def writes_stop_at_the_limit(ctx: Context) -> None:
    quotas = open_quotas(ctx)
    vol = volume(ctx, "pvc-limit")
    pid = quotas.add(vol, 1 * MiB)
    assert fsxattr.project_id(vol) == pid
    assert projects.read_projects(quotas.projects_file) == [projects.ProjectEntry(pid, vol, 1 * MiB)]
    assert write_until_full(vol / "data", limit=1 * MiB) == 1 * MiB
    assert fsxattr.project_id(vol / "data") == pid, "new files inherit the project"
    st = os.statvfs(vol)  # what `df` in the volume shows: the limit, not the filesystem
    assert st.f_blocks * st.f_frsize == 1 * MiB and st.f_bavail == 0, (st.f_blocks, st.f_frsize, st.f_bavail)
    assert quotas.usage() == [manager.ProjectUsage(pid, vol, used_bytes=1 * MiB, limit_bytes=1 * MiB)]


@check
def raising_the_limit_lets_more_be_written(ctx: Context) -> None:
    quotas = open_quotas(ctx)
    vol = volume(ctx, "pvc-grow")
    pid = quotas.add(vol, 1 * MiB)
    assert write_until_full(vol / "a", limit=1 * MiB) == 1 * MiB
    quotas.set_limit(pid, 3 * MiB)
    assert write_until_full(vol / "b", limit=2 * MiB) == 2 * MiB
    assert kernel_report(quotas)[pid] == 3 * MiB
    assert projects.read_projects(quotas.projects_file)[0].limit_bytes == 3 * MiB
    expect(errors.QuotaShrinkRefused, lambda: quotas.set_limit(pid, 2 * MiB), "already uses 3145728 bytes")
    assert kernel_report(quotas)[pid] == 3 * MiB, "a refused shrink changes nothing"
    (vol / "b").unlink()
    quotas.set_limit(pid, 2 * MiB)  # lowering to at least the usage is allowed
    assert write_until_full(vol / "c", limit=1 * MiB) == 1 * MiB
    # add() on a recorded directory is idempotent: same id, new limit.
    assert quotas.add(vol, 4 * MiB) == pid and kernel_report(quotas)[pid] == 4 * MiB


@check
def remove_clears_the_project(ctx: Context) -> None:
    quotas = open_quotas(ctx)
    vol = volume(ctx, "pvc-gone")
    other = volume(ctx, "pvc-other")
    pid = quotas.add(vol, 1 * MiB)
    other_pid = quotas.add(other, 1 * MiB)
    (vol / "sub").mkdir()
    (vol / "sub" / "f").write_bytes(b"x" * 300_000)
    expect(errors.ProjectMismatch, lambda: quotas.remove(pid, directory=other), "nothing removed")
    assert quotas.remove(pid, directory=vol) is True
    for path in (vol, vol / "sub", vol / "sub" / "f"):
        assert fsxattr.project_id(path) == 0, f"{path} still in a project"
    assert pid not in kernel_report(quotas), "the kernel still knows the project"
    assert [e.project_id for e in quotas.recorded()] == [other_pid]
    write_bytes(vol / "big", 3 * MiB)  # three times the old limit
    (vol / "big").unlink()
    assert quotas.remove(pid) is False, "remove is idempotent"
    assert quotas.remove_directory(other) is True and quotas.remove_directory(other) is False
    assert quotas.recorded() == [] and fsxattr.project_id(other) == 0


@check
def restart_recovers_ids_and_reapplies_limits(ctx: Context) -> None:
    first = open_quotas(ctx)
    vols = [volume(ctx, f"pvc-{i}") for i in range(3)]
    ids = [first.add(v, (i + 1) * MiB) for i, v in enumerate(vols)]
    assert ids == sorted(ids) and len(set(ids)) == 3
    first.remove(ids[1])
    # Behind the manager's back: lose vols[0]'s limit and vols[2]'s tag, and leak a project.
    first.xfs.set_block_hard_limit(ids[0], 0)
    first.xfs.clear_project(vols[2], ids[2])
    stray = volume(ctx, "stray")
    leaked = max(ids) + 1000
    first.xfs.setup_project(stray, leaked)
    first.xfs.set_block_hard_limit(leaked, MiB)

    second = open_quotas(ctx)  # "restart": a new instance knows only the file and the kernel
    rep = second.reapply()
    assert rep.applied == (ids[0], ids[2]), rep
    assert rep.repaired == (ids[2],), rep
    assert rep.limit_mismatches == ((ids[0], 1 * MiB, 0),), rep
    # Ids are per filesystem: other checks' projects are "untracked" here too.
    assert leaked in rep.untracked and not set(rep.untracked) & set(ids), rep
    assert rep.missing_directories == () and rep.failed == (), rep
    assert fsxattr.project_id(vols[2]) == ids[2]
    assert write_until_full(vols[0] / "f", limit=1 * MiB) == 1 * MiB
    assert write_until_full(vols[2] / "f", limit=3 * MiB) == 3 * MiB
    new = volume(ctx, "pvc-new")
    assert second.add(new, MiB) == ids[1], "the lowest free id is reused"
    first.xfs.clear_project(stray, leaked)
    first.xfs.set_block_hard_limit(leaked, 0)


@check
def ids_still_charged_in_the_kernel_are_not_reused(ctx: Context) -> None:
    quotas = open_quotas(ctx)
    vol = volume(ctx, "pvc-archived")
    pid = quotas.add(vol, MiB)
    (vol / "f").write_bytes(b"x" * 8192)
    os.rename(vol, ctx.export_root / "archived")  # renamed aside *before* remove: files keep the id
    assert quotas.remove(pid) is True
    assert pid in quotas.xfs.report(), "the archived files are still charged to the id"
    nxt = quotas.add(volume(ctx, "pvc-next"), MiB)
    assert nxt != pid, f"id {pid} handed out again while files still carry it"


@check
def failed_limit_step_rolls_back(ctx: Context) -> None:
    real = commands.SubprocessRunner()

    def failing_limit(argv: Sequence[str]) -> commands.CommandResult:
        if any(a.startswith("limit -p bhard=") and not a.startswith("limit -p bhard=0 ") for a in argv):
            return commands.CommandResult(tuple(argv), 1, "", "injected failure of the limit step")
        return real(argv)

    quotas = open_quotas(ctx, failing_limit)
    before = set(quotas.xfs.report())
    vol = volume(ctx, "pvc-fail")
    e = expect(errors.QuotaCommandError, lambda: quotas.add(vol, MiB), "injected failure")
    assert not getattr(e, "__notes__", []), f"an undo step failed: {e.__notes__}"
    assert fsxattr.project_id(vol) == 0, "the project was left on the directory"
    assert quotas.projects_file.read_text() == "", "the projects line was left behind"
    assert set(quotas.xfs.report()) <= before | {0}, "the kernel still knows a new project"
    # A natural failure of the project step: a directory on another filesystem (tmpfs) inside the root.
    foreign = volume(ctx, "pvc-tmpfs")
    assert os.system(f"mount -t tmpfs tmpfs {foreign}") == 0
    try:
        healthy = open_quotas(ctx)
        expect(errors.QuotaCommandError, lambda: healthy.add(foreign, MiB), "project -s")
        assert healthy.recorded() == []
    finally:
        os.system(f"umount {foreign}")
    assert open_quotas(ctx).add(vol, MiB) >= 1, "the same directory can be added after the failure"


@check
def tampered_projects_file_never_touches_outside_the_root(ctx: Context) -> None:
    quotas = open_quotas(ctx)
    vol = volume(ctx, "pvc-swapped")
    pid = quotas.add(vol, MiB)
    outside = ctx.export_root.parent / f"{ctx.export_root.name}-outside"  # same XFS, not ours
    outside.mkdir()
    target = ctx.export_root.parent / f"{ctx.export_root.name}-target"
    target.mkdir()
    quotas.xfs.clear_project(vol, pid)
    vol.rmdir()
    vol.symlink_to(target)  # the volume directory swapped for a symlink out of the root
    with quotas.projects_file.open("a") as f:
        f.write(f"{pid + 1000}:{outside}:{MiB}\n")
    rep = quotas.reapply()
    assert [p for p, _ in rep.failed] == [pid + 1000] and "not inside" in rep.failed[0][1], rep
    assert [e.project_id for e in rep.missing_directories] == [pid], rep
    assert fsxattr.project_id(outside) == 0 and fsxattr.project_id(target) == 0
    assert quotas.remove(pid + 1000) is True and quotas.remove(pid) is True
    assert fsxattr.project_id(outside) == 0 and fsxattr.project_id(target) == 0
    assert quotas.recorded() == []


@check
def concurrent_adds_from_worker_threads(ctx: Context) -> None:
    quotas = open_quotas(ctx)
    vols = [volume(ctx, f"pvc-t{i:02}") for i in range(8)]
    results: dict[Path, int] = {}
    failures: list[BaseException] = []

    def worker(v: Path) -> None:
        try:
            results[v] = quotas.add(v, MiB)
        except BaseException as e:  # noqa: BLE001 - reported below
            failures.append(e)

    threads = [threading.Thread(target=worker, args=(v,)) for v in vols]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures, failures
    assert len(set(results.values())) == len(vols), results
    assert {(e.project_id, e.directory) for e in quotas.recorded()} == {(p, v) for v, p in results.items()}
    assert all(fsxattr.project_id(v) == p for v, p in results.items())
    assert all(kernel_report(quotas)[p] == MiB for p in results.values())


@check
def metrics_show_usage_and_limit_at_scrape_time(ctx: Context) -> None:
    quotas = open_quotas(ctx)
    vol = volume(ctx, "pvc-metrics")
    pid = quotas.add(vol, 2 * MiB)
    registry = CollectorRegistry()
    metrics.ProjectQuotaCollector(quotas, registry=registry)
    labels = {"volume": "pvc-metrics", "project_id": str(pid)}
    assert registry.get_sample_value(metrics.USED, labels) == 0
    with (vol / "f").open("wb") as f:
        f.write(b"x" * 300 * 1024)
        f.flush()
        os.fsync(f.fileno())
    assert registry.get_sample_value(metrics.USED, labels) == 300 * 1024
    assert registry.get_sample_value(metrics.LIMIT, labels) == 2 * MiB
    assert registry.get_sample_value(metrics.UP) == 1
    quotas.set_limit(pid, 5 * MiB)
    assert registry.get_sample_value(metrics.LIMIT, labels) == 5 * MiB


GANESHA_CONF = """NFS_CORE_PARAM {{ Protocols = 3, 4; Enable_NLM = false; Enable_RQUOTA = false;
    allow_set_io_flusher_fail = true; {plugins} }}
NFSV4 {{ Graceless = true; RecoveryRoot = {recovery}; Only_Numeric_Owners = true; }}
EXPORT {{
    Export_Id = 1; Path = {path}; Pseudo = /{name}; Access_Type = RW; Squash = no_root_squash;
    Protocols = 3, 4; FSAL {{ Name = VFS; }}
}}
"""


@check
def nfs_writes_through_ganesha_stop_at_the_limit(ctx: Context) -> None:
    """The user's view: an NFSv3 client (libnfs nfs-cp) writing through a real
    Ganesha into the volume is stopped at the limit, and gets more after set_limit."""
    quotas = open_quotas(ctx)
    vol = volume(ctx, "pvc-nfs")
    pid = quotas.add(vol, 2 * MiB)
    state = Path(tempfile.mkdtemp(prefix="ganesha-"))  # on UML's /run tmpfs (TMPDIR)
    (state / "recovery").mkdir()
    conf = state / "ganesha.conf"
    ganesha = ganesha_env.ganesha()  # the one the image ships (an unpacked tree on a bookworm host)
    plugins = f'Plugins_Dir = "{ganesha.plugins_dir}";' if ganesha.plugins_dir else ""
    conf.write_text(GANESHA_CONF.format(recovery=state / "recovery", path=vol, name=vol.name, plugins=plugins))
    source = state / "three-mib"
    source.write_bytes(b"\0" * 3 * MiB)
    url = f"nfs://127.0.0.1{vol}"
    # UML is its own kernel and network: rpcbind on 0.0.0.0:111 and NFS on 2049 stay inside it.
    procs = [subprocess.Popen(["rpcbind", "-f", "-w"])]
    try:
        time.sleep(0.3)
        procs.append(subprocess.Popen(
            [*ganesha.command, "-F", "-L", str(state / "ganesha.log"), "-f", str(conf),
             "-p", str(state / "ganesha.pid"), "-N", "NIV_EVENT"]
        ))
        deadline = time.monotonic() + 30
        while subprocess.run(["nfs-ls", url], capture_output=True).returncode != 0:
            assert time.monotonic() < deadline, "Ganesha did not serve the export within 30s:\n" + (
                (state / "ganesha.log").read_text() if (state / "ganesha.log").exists() else "(no log)")
            time.sleep(0.2)
        started = (state / "ganesha.log").read_text()
        version = re.search(r"Starting: Ganesha Version (\d+)\.(\d+)", started)
        assert version and (int(version[1]), int(version[2])) >= (9, 14), "the Ganesha the image ships (9.14+) serves"
        first = subprocess.run(["nfs-cp", str(source), f"{url}/a"], capture_output=True, text=True)
        assert first.returncode != 0, "a 3 MiB NFS write into a 2 MiB volume succeeded"
        assert (vol / "a").stat().st_size == 2 * MiB, (vol / "a").stat().st_size
        quotas.set_limit(pid, 4 * MiB)
        second = subprocess.run(["nfs-cp", str(source), f"{url}/b"], capture_output=True, text=True)
        assert second.returncode != 0 and (vol / "b").stat().st_size == 2 * MiB, (vol / "b").stat().st_size
        assert quotas.usage()[0].used_bytes == 4 * MiB
    finally:
        for proc in reversed(procs):
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


# -- runner -----------------------------------------------------------------------


def run_checks(names: Sequence[str], *, xfs: Path, plain: Path) -> dict[str, dict[str, object]]:
    results: dict[str, dict[str, object]] = {}
    for name in names:
        log_stream = io.StringIO()
        handler = logging.StreamHandler(log_stream)
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        logging.getLogger().addHandler(handler)
        ctx = Context(export_root=xfs / name, plain=plain / name)
        ctx.export_root.mkdir()
        ctx.plain.mkdir()
        started = time.monotonic()
        try:
            CHECKS[name](ctx)
        except BaseException:  # noqa: BLE001 - every check reports, one failure does not stop the rest
            ok, detail = False, traceback.format_exc()
        else:
            ok, detail = True, ""
        finally:
            logging.getLogger().removeHandler(handler)
        results[name] = {
            "ok": ok,
            "seconds": round(time.monotonic() - started, 3),
            "detail": detail + ("\n--- log ---\n" + log_stream.getvalue() if log_stream.getvalue() else ""),
        }
        print(f"{'PASS' if ok else 'FAIL'} {name} ({results[name]['seconds']}s)", flush=True)
        if not ok:
            print(results[name]["detail"], flush=True)
    return results


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--xfs", type=Path, required=True)
    parser.add_argument("--plain", type=Path, required=True)
    parser.add_argument("--results", type=Path, required=True)
    parser.add_argument("names", nargs="*", default=list(CHECKS))
    args = parser.parse_args(argv)
    logging.getLogger().setLevel(logging.INFO)
    results = run_checks(args.names, xfs=args.xfs, plain=args.plain)
    args.results.write_text(json.dumps(results, indent=2))
    return 0 if all(r["ok"] for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
