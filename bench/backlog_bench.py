"""Section "backlog" of the provisioning benchmark: catching up after an outage.

N claims are created while the appliance is stopped; once kube-controller-manager has handed every
one of them over (the storage-provisioner annotation is on each), the appliance is started and the
drain is timed from its start (process start: Ganesha, informers, workers all included) until every
PV exists (each export is made before its PV is saved). Claim creation and the binder are outside
the measured span, so this measures the appliance, not the harness. The null provisioner drains
the same backlog (PV + events per claim, no storage work), started after the handover.

The appliance runs under :mod:`bench.step_timer`, so the drain also has a per-step profile.
"""

from __future__ import annotations

import concurrent.futures as cf
import datetime
import re
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from bench import step_timer
from bench.delete_bench import average_profile, cpu_by_role, cpu_diff, cpu_seconds, show_cpu_and_profile
from bench.harness import (
    WORKERS,
    Bench,
    MachineCpu,
    NullProvisioner,
    Watcher,
    claim_body,
    new_namespace,
    pct,
    show_machine_cpu,
    stop,
    wait_for,
)
from nfs_provisioner.kube import client as kube

PROFILE_STEPS = [
    "provision: worker sync (whole)",
    "provision: asset (Provisioner.provision)",
    "provision: ExportManager.add",
    "provision: AddExport (D-Bus)",
    "exports: index shard rewrite",
    "exports: index shard rewrite (locked)",
    "provision: volume record write",
    "provision: directory create",
    "os.fsync",
    "api POST",
    "api PATCH",
    "api GET",
    "api PUT",
]


def make_backlog(b: Bench, n: int, cls: str, prefix: str) -> tuple[str, list[str]]:
    """N claims of ``cls`` in a new namespace, each handed over by the binder; returns (namespace, uids)."""
    ns = new_namespace(b.api, prefix)
    w = Watcher(b.api, ns)
    w.start()
    time.sleep(0.3)
    uids = list(b.pool.map(lambda i: str(b.api.create(kube.claims_path(ns), claim_body(f"c{i}", cls))
                                         ["metadata"]["uid"]), range(n)))
    wait_for(lambda: all(uid in w.annotated for uid in uids), 600, f"{n} claims handed over")
    w.stop()
    return ns, uids


STARTUP_MARKS = {"log_first_s": None, "ganesha_ready_s": "Ganesha ready in", "state_check_s": "state check:",
                 "serving_s": "serving /metrics"}
"""Lines of the appliance's log whose time (seconds after the process start) is reported."""


def startup_timeline(log: str, wall0: float) -> dict[str, float]:
    """When the appliance logged its first line (imports done), Ganesha ready, the state check, serving."""
    out: dict[str, float] = {}
    for line in log.splitlines():
        m = re.match(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ", line)
        if not m:
            continue
        at = datetime.datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp() - wall0
        for key, mark in STARTUP_MARKS.items():
            if key not in out and (mark is None or mark in line):
                out[key] = at
    return out


def settled_events(b: Bench, ns: str, component: str, timeout: float = 30.0) -> int:
    """Events of ``component`` in ``ns`` once their number stops growing (they are posted in the background)."""
    last, deadline = -1, time.monotonic() + timeout
    while time.monotonic() < deadline:
        count = len([e for e in b.api.get(kube.events_path(ns))["items"]
                     if (e.get("source") or {}).get("component") == component])
        if count == last:
            return count
        last = count
        time.sleep(1.0)
    return last


def appliance_run(b: Bench, n: int, times: Path) -> dict[str, Any]:
    stop(b.appliance)
    ns, uids = make_backlog(b, n, b.cls, "bench-backlog")
    w = Watcher(b.api, ns)
    w.start()
    time.sleep(0.3)
    before = step_timer.read(times)  # the previous process's last snapshot: a new process starts from zero
    machine = MachineCpu()
    machine.start()
    t0, wall0 = time.monotonic(), time.time()
    b.appliance.start(wait_ready=False)
    assert b.appliance.proc is not None
    ready = None
    while ready is None or not all(f"pvc-{uid}" in w.pv_seen for uid in uids):
        if ready is None:
            try:
                if b.appliance.get("/readyz")[0] == 200:
                    ready = time.monotonic()
            except OSError:
                pass
        if b.appliance.proc.poll() is not None:
            raise SystemExit(f"bench: the appliance exited during the backlog:\n{b.appliance.log()}")
        if time.monotonic() - t0 > 600:
            raise SystemExit("bench: timed out waiting for the backlog to drain")
        time.sleep(0.02)
    seen = [w.pv_seen[f"pvc-{uid}"] for uid in uids]
    t_end = max(seen)
    cpu = cpu_seconds(b.appliance.proc.pid)
    used = machine.stop()
    used["appliance"] = (cpu["appliance"] + cpu["children"]) / used["seconds"]
    roles = cpu_diff(cpu_by_role(b.appliance.proc.pid, times), {}, n)
    time.sleep(0.6)
    steps = step_timer.read(times)
    if steps == before:
        steps = {}
    events = settled_events(b, ns, b.provisioner)
    startup = startup_timeline(b.appliance.log_file.read_text(errors="replace"), wall0)
    w.stop()
    # Clean up with the appliance (it deletes its volumes), then the namespace.
    list(b.pool.map(lambda i: b.api.delete(kube.claims_path(ns, f"c{i}")), range(n)))
    wait_for(lambda: not [p for p in b.api.get(kube.volumes_path())["items"]
                          if p["spec"].get("storageClassName") == b.cls], 600, "backlog cleanup")
    b.api.delete(f"/api/v1/namespaces/{ns}")
    return {"drain_per_s": n / (t_end - t0), "start_to_ready_s": ready - t0, "first_pv_s": min(seen) - t0,
            "last_pv_s": t_end - t0, "after_first_per_s": (n - 1) / max(1e-9, t_end - min(seen)),
            "p50_pv_s": pct([s - t0 for s in seen], 50),
            "cpu_appliance_ms_per_pv": cpu["appliance"] * 1000 / n,
            "cpu_appliance_system_ms_per_pv": cpu["appliance_system"] * 1000 / n,
            "cpu_ganesha_ms_per_pv": cpu["children"] * 1000 / n,
            "cpu_appliance_fraction_of_core": cpu["appliance"] / (t_end - t0),
            "events_per_claim": events / n, **startup, "steps": steps,
            "cpu_ms_per_pv_by_thread": roles, "machine_cpu": used}


def null_run(b: Bench, n: int, events: int, *, files: Path | None = None) -> tuple[float, float, dict[str, float]]:
    """The null provisioner's drain rate of the same backlog, its CPU (the bench process's, ms per PV) and the
    machine's (cores used, by process group). ``files``: it also writes each volume's files there (see
    ``NullProvisioner``), removed afterwards."""
    ns, uids = make_backlog(b, n, b.null_cls, "bench-nullbacklog")
    with cf.ThreadPoolExecutor(WORKERS) as answers:
        machine = MachineCpu()
        machine.start()
        t0 = time.monotonic()
        w = NullProvisioner(b.api, ns, provisioner=b.null_provisioner, cls=b.null_cls, events=events, pool=answers,
                            initial_list=True, files=files)
        w.start()
        wait_for(lambda: all(f"pvc-{uid}" in w.pv_seen for uid in uids), 600, f"{n} null PVs")
        rate = n / (max(w.pv_seen[f"pvc-{uid}"] for uid in uids) - t0)
        used = machine.stop()
        w.stop()
    cpu_ms = used["bench"] * used["seconds"] * 1000 / n
    list(b.pool.map(lambda i: b.api.delete(kube.claims_path(ns, f"c{i}")), range(n)))
    list(b.pool.map(lambda uid: b.api.delete(kube.volumes_path(f"pvc-{uid}")), uids))
    b.api.delete(f"/api/v1/namespaces/{ns}")
    if files is not None:
        shutil.rmtree(files)
    return rate, cpu_ms, used


def backlog_section(b: Bench) -> dict[str, Any]:
    times = b.work / "step-times-backlog.json"
    b.replace_appliance(b.new_appliance(step_times=times))
    results: dict[str, Any] = {}
    for n in b.sizes:
        runs, rates, null_cpu, files_rates, files_cpu = [], [], [], [], []
        null_machine: list[dict[str, float]] = []
        for r in range(b.repeats):  # alternating, so a noisy neighbour hits both alike
            runs.append(appliance_run(b, n, times))
            x = runs[-1]
            print(f"backlog N={n} run {r + 1}: {x['drain_per_s']:.0f} PVC/s from process start (ready at "
                  f"{x['start_to_ready_s']:.2f}s, first PV {x['first_pv_s']:.2f}s, last {x['last_pv_s']:.2f}s; "
                  f"{x['after_first_per_s']:.0f}/s after the first), appliance CPU "
                  f"{x['cpu_appliance_ms_per_pv']:.1f} ms/PV ({x['cpu_appliance_system_ms_per_pv']:.1f} in the kernel)",
                  file=sys.stderr)
            stop(b.appliance)
            print(f"  machine: {show_machine_cpu(x['machine_cpu'])}", file=sys.stderr)
            rate, cpu_ms, used = null_run(b, n, max(1, round(x["events_per_claim"])))
            rates.append(rate)
            null_cpu.append(cpu_ms)
            null_machine.append(used)
            print(f"backlog N={n} null provisioner: {rate:.0f} PVC/s, CPU {cpu_ms:.1f} ms/PV (the bench process)\n"
                  f"  machine: {show_machine_cpu(used)}", file=sys.stderr)
            # The same with each volume's files written (on the export root's filesystem): the ceiling of a
            # provisioner that keeps its volumes' state in files, on this machine.
            f_rate, f_cpu, f_used = null_run(b, n, max(1, round(x["events_per_claim"])),
                                             files=b.null_files)
            files_rates.append(f_rate)
            files_cpu.append(f_cpu)
            print(f"backlog N={n} null provisioner writing each volume's files: {f_rate:.0f} PVC/s, CPU "
                  f"{f_cpu:.1f} ms/PV\n  machine: {show_machine_cpu(f_used)}", file=sys.stderr)
        row: dict[str, Any] = {k: statistics.median([x[k] for x in runs]) for k in runs[0]
                               if k not in ("steps", "cpu_ms_per_pv_by_thread", "machine_cpu")}
        row["cpu_ms_per_pv_by_thread"] = runs[len(runs) // 2]["cpu_ms_per_pv_by_thread"]
        row["drain_per_s_runs"] = [x["drain_per_s"] for x in runs]
        row["profile"] = average_profile(runs)
        row["null_drain_per_s"] = statistics.median(rates)
        row["null_drain_per_s_runs"] = rates
        row["null_cpu_ms_per_pv"] = statistics.median(null_cpu)
        row["machine_cpu"] = {k: statistics.median([x["machine_cpu"].get(k, 0.0) for x in runs])
                              for k in runs[0]["machine_cpu"]}
        row["null_machine_cpu"] = {k: statistics.median([u.get(k, 0.0) for u in null_machine])
                                   for k in null_machine[0]}
        row["fraction_of_null"] = row["drain_per_s"] / row["null_drain_per_s"]
        row["null_files_drain_per_s"] = statistics.median(files_rates)
        row["null_files_drain_per_s_runs"] = files_rates
        row["null_files_cpu_ms_per_pv"] = statistics.median(files_cpu)
        row["null_files_fraction_of_null"] = row["null_files_drain_per_s"] / row["null_drain_per_s"]
        results[str(n)] = row
    b.appliance.close()
    b.appliance = b.new_appliance()
    b.appliance.start()
    return {"backlog": results}


def show_backlog(r: dict[str, Any]) -> None:
    for n, row in (r.get("backlog") or {}).items():
        print(f"backlog N={n} (claims handed over while the appliance was stopped)")
        print(f"  drained (appliance) {row['drain_per_s']:8.1f} PVC/s from process start  runs "
              f"{', '.join(f'{x:.0f}' for x in row['drain_per_s_runs'])}")
        print(f"  null provisioner    {row['null_drain_per_s']:8.1f} PVC/s")
        print(f"  appliance/null      {row['fraction_of_null'] * 100:8.1f} %")
        if "null_files_drain_per_s" in row:
            print(f"  null + volume files {row['null_files_drain_per_s']:8.1f} PVC/s "
                  f"({row['null_files_fraction_of_null'] * 100:.1f} % of null; directory, record, export file "
                  f"per claim, no export: the ceiling of a file-backed provisioner here)")
        if "null_cpu_ms_per_pv" in row:
            print(f"  CPU per PV: appliance {row['cpu_appliance_ms_per_pv']:.1f} ms "
                  f"({row['cpu_appliance_system_ms_per_pv']:.1f} in the kernel), null provisioner "
                  f"{row['null_cpu_ms_per_pv']:.1f} ms (the bench process)")
            print(f"  machine while the appliance drained: {show_machine_cpu(row['machine_cpu'])}")
            print(f"  machine while the null provisioner drained: {show_machine_cpu(row['null_machine_cpu'])}")
        marks = ", ".join(f"{k.removesuffix('_s').replace('_', ' ')} {row[k]:.2f}s" for k in STARTUP_MARKS if k in row)
        print(f"  start-up: {marks}")
        print(f"  ready at {row['start_to_ready_s']:.2f}s, first PV at {row['first_pv_s']:.2f}s, last at "
              f"{row['last_pv_s']:.2f}s ({row['after_first_per_s']:.0f} PVC/s after the first)")
        show_cpu_and_profile(row, PROFILE_STEPS, threads_note=" (start-up included)", profile_note="")
