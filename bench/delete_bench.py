"""Section "delete" of the provisioning benchmark: N claims deleted in one burst.

For each size N: N claims are provisioned by the appliance (and Bound), then all N claims are
deleted at once; the rate is N / (last claim DELETE sent ... every PV gone), with the appliance
doing the real work (Released -> its worker: record check, RemoveExport, index shard rewrite,
directory removal, record removal, PV DELETE, finalizer PATCH). The same burst answered by the
null provisioner (PV DELETE + finalizer PATCH only, appliance stopped) is the ceiling.

The appliance runs under :mod:`bench.step_timer` during this section, so the profile of where
the seconds go comes from wall-clock timers around each step (summed over the worker threads),
plus the claim-delete -> Released -> gone timestamps seen by a watch, plus the CPU seconds of
the appliance process and of Ganesha.
"""

from __future__ import annotations

import json
import re
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import psutil

from bench import step_timer
from bench.harness import (
    WORKERS,
    Bench,
    NullProvisioner,
    Watcher,
    claim_body,
    fmt,
    new_namespace,
    pct,
    provision_run,
    stop,
    wait_for,
)
from nfs_provisioner.kube import client as kube

PROFILE_STEPS = [
    "delete: worker sync (whole)",
    "delete: asset (Provisioner.delete)",
    "delete: ExportManager.remove (with lock wait)",
    "delete: RemoveExport (D-Bus)",
    "exports: index shard rewrite",
    "exports: index shard rewrite (locked)",
    "delete: directory removal",
    "delete: volume record unlink",
    "volume record read",
    "delete: PV finalizer PATCH",
    "api DELETE",
    "api PATCH",
    "api GET",
    "os.fsync",
]


def cpu_seconds(pid: int) -> dict[str, float]:
    """CPU seconds (user + system) of the appliance process and of everything it started."""
    p = psutil.Process(pid)
    own = p.cpu_times()
    children = 0.0
    for c in p.children(recursive=True):
        try:
            t = c.cpu_times()
            children += t.user + t.system
        except psutil.Error:
            pass
    return {"appliance": own.user + own.system, "appliance_system": own.system, "children": children}


def cpu_by_role(pid: int, times: Path) -> dict[str, float]:
    """CPU seconds of the appliance's threads so far, by role: the Python thread name without its number
    (claim-worker, volume-worker, informer-claims, events, MainThread, ...); "exited" for threads gone."""
    try:
        names: dict[str, str] = json.loads(step_timer.threads_file(times).read_text())
    except (OSError, ValueError):
        names = {}
    out: dict[str, float] = {}
    for t in psutil.Process(pid).threads():
        role = re.sub(r"[-_]?\d+$", "", names.get(str(t.id), "other"))
        out[role] = out.get(role, 0.0) + t.user_time + t.system_time
    return out


def cpu_diff(after: dict[str, float], before: dict[str, float], n: int) -> dict[str, float]:
    """ms of CPU per PV by role, largest first."""
    d = {k: (v - before.get(k, 0.0)) * 1000 / n for k, v in after.items()}
    return dict(sorted(((k, v) for k, v in d.items() if v > 0.05), key=lambda kv: -kv[1]))


def burst_delete(b: Bench, ns: str, w: Watcher) -> dict[str, Any]:
    """Delete every claim of ``ns`` at once; wait until each of their PVs is gone."""
    claims = {c["metadata"]["name"]: c["metadata"]["uid"] for c in b.api.get(kube.claims_path(ns))["items"]}
    pvs = {f"pvc-{uid}": name for name, uid in claims.items()}
    n = len(claims)
    sent: dict[str, float] = {}

    def delete(name: str) -> None:
        b.api.delete(kube.claims_path(ns, name))
        sent[name] = time.monotonic()

    t1 = time.monotonic()
    list(b.pool.map(delete, claims))
    t_sent = time.monotonic()
    wait_for(lambda: all(pv in w.pv_gone for pv in pvs), 600, f"{n} PVs deleted")
    t_end = max(w.pv_gone[pv] for pv in pvs)
    to_released = [w.released[pv] - sent[c] for pv, c in pvs.items() if pv in w.released]
    released_to_gone = [w.pv_gone[pv] - w.released[pv] for pv in pvs if pv in w.released]
    return {"per_s": n / (t_end - t1), "delete_claims_s": t_sent - t1,
            "released_p50_s": pct(to_released, 50) if to_released else 0.0,
            "released_p99_s": pct(to_released, 99) if to_released else 0.0,
            "released_last_s": (max(w.released.get(pv, t1) for pv in pvs) - t1),
            "released_to_gone_p50_s": pct(released_to_gone, 50) if released_to_gone else 0.0,
            "released_to_gone_p99_s": pct(released_to_gone, 99) if released_to_gone else 0.0,
            "elapsed_s": t_end - t1}


def appliance_run(b: Bench, n: int, times: Path) -> dict[str, Any]:
    out, ns = provision_run(b.api, b.pool, n=n, cls=b.cls, provisioner=b.provisioner, keep=True)
    w = Watcher(b.api, ns)
    w.start()
    time.sleep(0.3)
    assert b.appliance.proc is not None
    time.sleep(0.6)  # the step timer writes twice a second: the snapshot includes the provisions
    roles0 = cpu_by_role(b.appliance.proc.pid, times)
    before, cpu0, t0 = step_timer.read(times), cpu_seconds(b.appliance.proc.pid), time.monotonic()
    res = burst_delete(b, ns, w)
    elapsed = time.monotonic() - t0
    cpu1 = cpu_seconds(b.appliance.proc.pid)
    roles = cpu_diff(cpu_by_role(b.appliance.proc.pid, times), roles0, n)
    time.sleep(0.6)
    steps = step_timer.diff(step_timer.read(times), before)
    w.stop()
    b.api.delete(f"/api/v1/namespaces/{ns}")
    res["created_per_s"] = out["created_per_s"]
    res["cpu_appliance_ms_per_pv"] = (cpu1["appliance"] - cpu0["appliance"]) * 1000 / n
    res["cpu_ganesha_ms_per_pv"] = (cpu1["children"] - cpu0["children"]) * 1000 / n
    res["cpu_appliance_fraction_of_core"] = (cpu1["appliance"] - cpu0["appliance"]) / elapsed
    res["steps"] = steps
    res["cpu_ms_per_pv_by_thread"] = roles
    return res


def null_run(b: Bench, n: int, *, finalizer: bool = True, files: Path | None = None) -> dict[str, Any]:
    """The null provisioner's delete rate on the same burst (reclaim Delete; its PVs carry the finalizer,
    as the appliance's do, unless ``finalizer=False``: then as the Go library's default, one PV DELETE).
    ``files``: each volume's files are made there and removed before its PV DELETE (see ``NullProvisioner``)."""
    import concurrent.futures as cf

    ns = new_namespace(b.api, "bench-nulldel")
    with cf.ThreadPoolExecutor(WORKERS) as answers:
        w = NullProvisioner(b.api, ns, provisioner=b.null_provisioner, cls=b.null_cls, events=1, pool=answers,
                            reclaim="Delete", finalizer=finalizer, files=files)
        w.start()
        time.sleep(0.3)
        uids = list(b.pool.map(lambda i: str(b.api.create(kube.claims_path(ns), claim_body(f"c{i}", b.null_cls))
                                             ["metadata"]["uid"]), range(n)))
        wait_for(lambda: all(uid in w.bound for uid in uids), 600, f"{n} null claims Bound")
        res = burst_delete(b, ns, w)
        w.stop()
    b.api.delete(f"/api/v1/namespaces/{ns}")
    if files is not None:
        shutil.rmtree(files)
    return res


def average_profile(runs: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """The step timer's totals of each run (``run["steps"]``), averaged per run, with ms per call."""
    steps: dict[str, dict[str, float]] = {}
    for x in runs:
        for k, v in x["steps"].items():
            s = steps.setdefault(k, {"seconds": 0.0, "calls": 0.0})
            s["seconds"] += v["seconds"] / len(runs)
            s["calls"] += v["calls"] / len(runs)
    return {k: {"seconds": v["seconds"], "calls": v["calls"], "ms_per_call": v["seconds"] * 1000 / v["calls"]}
            for k, v in sorted(steps.items())}


def show_cpu_and_profile(row: dict[str, Any], steps: list[str], *, threads_note: str, profile_note: str) -> None:
    """The CPU lines and the step profile of a delete or backlog row."""
    print(f"  CPU per PV: appliance {row['cpu_appliance_ms_per_pv']:.1f} ms "
          f"({row['cpu_appliance_fraction_of_core'] * 100:.0f} % of a core), "
          f"Ganesha+bus {row['cpu_ganesha_ms_per_pv']:.1f} ms")
    print(f"  CPU ms per PV by appliance thread{threads_note}: " + ", ".join(
        f"{k} {v:.2f}" for k, v in (row.get("cpu_ms_per_pv_by_thread") or {}).items()))
    print(f"  profile (wall seconds summed over worker threads{profile_note}; step_timer):")
    prof = row["profile"]
    for k in steps:
        if k in prof:
            p = prof[k]
            print(f"    {k:46s} {p['seconds']:7.2f} s  {p['calls']:6.0f} calls  {p['ms_per_call']:6.2f} ms/call")


def delete_section(b: Bench) -> dict[str, Any]:
    times = b.work / "step-times-delete.json"
    b.replace_appliance(b.new_appliance(step_times=times))
    results: dict[str, Any] = {}
    for n in b.sizes:
        runs, rates, nulls, bare, with_files = [], [], [], [], []
        for r in range(b.repeats):  # alternating, so a noisy neighbour hits both alike
            runs.append(appliance_run(b, n, times))
            x = runs[-1]
            print(f"delete N={n} run {r + 1}: {x['per_s']:.0f} PV/s deleted (created {x['created_per_s']:.0f}/s), "
                  f"last Released after {x['released_last_s']:.1f}s, appliance CPU "
                  f"{x['cpu_appliance_ms_per_pv']:.1f} ms/PV, Ganesha {x['cpu_ganesha_ms_per_pv']:.1f} ms/PV",
                  file=sys.stderr)
            # The null provisioner with the appliance stopped (its informers would take CPU from the 2 cores).
            stop(b.appliance)
            nulls.append(null_run(b, n))
            rates.append(nulls[-1]["per_s"])
            print(f"delete N={n} null provisioner: {rates[-1]:.0f} PV/s, last Released after "
                  f"{nulls[-1]['released_last_s']:.1f}s", file=sys.stderr)
            bare.append(null_run(b, n, finalizer=False)["per_s"])
            print(f"delete N={n} null provisioner without the PV finalizer: {bare[-1]:.0f} PV/s", file=sys.stderr)
            with_files.append(null_run(b, n, files=b.null_files)["per_s"])
            print(f"delete N={n} null provisioner removing each volume's files: {with_files[-1]:.0f} PV/s",
                  file=sys.stderr)
            b.appliance.start()
        row: dict[str, Any] = {k: statistics.median([x[k] for x in runs]) for k in runs[0]
                               if k not in ("steps", "cpu_ms_per_pv_by_thread")}
        row["cpu_ms_per_pv_by_thread"] = runs[len(runs) // 2]["cpu_ms_per_pv_by_thread"]
        row["per_s_runs"] = [x["per_s"] for x in runs]
        row["created_per_s_runs"] = [x["created_per_s"] for x in runs]
        row["profile"] = average_profile(runs)
        row["null_per_s"] = statistics.median(rates)
        row["null_per_s_runs"] = rates
        row["null_no_finalizer_per_s"] = statistics.median(bare)
        row["null_no_finalizer_per_s_runs"] = bare
        for k in ("released_last_s", "released_p50_s", "released_to_gone_p50_s", "released_to_gone_p99_s"):
            row[f"null_{k}"] = statistics.median([x[k] for x in nulls])
        row["fraction_of_null"] = row["per_s"] / row["null_per_s"]
        row["null_files_per_s"] = statistics.median(with_files)
        row["null_files_per_s_runs"] = with_files
        row["null_files_fraction_of_null"] = row["null_files_per_s"] / row["null_per_s"]
        results[str(n)] = row
    stop(b.appliance)
    b.appliance.close()
    b.appliance = b.new_appliance()
    b.appliance.start()
    return {"delete": results}


def show_delete(r: dict[str, Any]) -> None:
    for n, row in (r.get("delete") or {}).items():
        sized = (r.get("sizes") or {}).get(n)
        print(f"delete N={n}")
        runs = ", ".join(f"{x:.0f}" for x in row["per_s_runs"])
        print(f"  deleted (appliance) {row['per_s']:8.1f} PV/s  runs {runs}")
        print(f"  null provisioner    {row['null_per_s']:8.1f} PV/s  (PV DELETE + finalizer PATCH only)")
        print(f"  appliance/null      {row['fraction_of_null'] * 100:8.1f} %")
        if "null_no_finalizer_per_s" in row:
            print(f"  null, no finalizer  {row['null_no_finalizer_per_s']:8.1f} PV/s  (one PV DELETE, as the Go "
                  "library's default)")
        if "null_files_per_s" in row:
            print(f"  null + volume files {row['null_files_per_s']:8.1f} PV/s  "
                  f"({row['null_files_fraction_of_null'] * 100:.1f} % of null; removes a directory, record and "
                  "export file per PV, no export)")
        print(f"  created, same burst {row['created_per_s']:8.1f} PVC/s"
              + (f"; sizes section: {fmt(sized, 'created_per_s', unit=' PVC/s')}" if sized else ""))
        print(f"  claim DELETE -> Released p50 {row['released_p50_s'] * 1000:.0f} ms, p99 "
              f"{row['released_p99_s'] * 1000:.0f} ms, last Released at {row['released_last_s']:.2f}s of "
              f"{row['elapsed_s']:.2f}s; Released -> gone p50 {row['released_to_gone_p50_s'] * 1000:.0f} ms")
        print(f"  null provisioner: last Released at {row['null_released_last_s']:.2f}s; Released -> gone p50 "
              f"{row['null_released_to_gone_p50_s'] * 1000:.0f} ms, p99 "
              f"{row['null_released_to_gone_p99_s'] * 1000:.0f} ms (appliance p99 "
              f"{row['released_to_gone_p99_s'] * 1000:.0f} ms)")
        show_cpu_and_profile(row, PROFILE_STEPS, threads_note="", profile_note=", per burst")
