"""Provisioning benchmark of the real appliance on the local control plane
(printed and written to bench/results.json; not a pass/fail test).

For N claims created at once (N = 100, 1000 by default), each repeated R times:
created+exported throughput (claim created -> PV exists; the export is made
before the PV is saved), Bound throughput, the rate at which the binder
(kube-controller-manager) hands claims over (storage-provisioner annotation,
which a provisioner must wait for), per-claim latency p50/p99 from creation and
from handover, deletion throughput. In the same API server, two ceilings: a
tight client loop creating as many PV objects and events as the appliance
writes per claim (the raw API rate), and a "null provisioner" answering the
same burst of claims with PV + events at handover and no storage work (the
most any provisioner gets through this pipeline on this machine). Then, with
1000 volumes present, a cold restart (process start -> /readyz, all exports
served, queues drained, no provision calls) and the appliance's memory (RSS
of its process tree).

    .venv/bin/python -m bench.provision_bench [--sizes 100,1000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import compileall
import concurrent.futures as cf
import json
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import backlog_bench, delete_bench, filesystem_bench, flame, pool_bench, scale_bench
from bench.harness import (
    NULL_CLASS,
    NULL_PROVISIONER,
    REPO,
    WORKERS,
    Bench,
    NullProvisioner,
    claim_body,
    cold_restart,
    fmt,
    new_namespace,
    own_rss_mb,
    post_events,
    provision_run,
    put,
    pv_body,
    split_cpus,
    stop,
    tree_rss,
    wait_for,
)
from nfs_provisioner.kube import client as kube
from tests.support import ganesha_env, kubecluster


def pipeline_run(api: kube.Client, pool: cf.ThreadPoolExecutor, *, n: int, cls: str, provisioner: str,
                 events: int) -> float:
    """Claims created per second through the whole pipeline with :class:`NullProvisioner` answering."""
    ns = new_namespace(api, "bench-null")
    with cf.ThreadPoolExecutor(WORKERS) as answers:
        w = NullProvisioner(api, ns, provisioner=provisioner, cls=cls, events=events, pool=answers)
        w.start()
        time.sleep(0.3)
        t0 = time.monotonic()
        uids = list(pool.map(lambda i: str(api.create(kube.claims_path(ns), claim_body(f"c{i}", cls))
                                           ["metadata"]["uid"]), range(n)))
        wait_for(lambda: all(f"pvc-{uid}" in w.pv_seen for uid in uids), 600, f"{n} null PVs")
        rate = n / (max(w.pv_seen[f"pvc-{uid}"] for uid in uids) - t0)
        w.stop()
    list(pool.map(lambda i: api.delete(kube.claims_path(ns, f"c{i}")), range(n)))
    list(pool.map(lambda uid: api.delete(kube.volumes_path(f"pvc-{uid}")), uids))
    api.delete(f"/api/v1/namespaces/{ns}")
    return rate


def ceiling_run(api: kube.Client, pool: cf.ThreadPoolExecutor, *, n: int, events: int) -> float:
    """PV objects (plus ``events`` events each, as many as the appliance posts per claim) created by a
    tight client loop: what the API server allows."""
    tag = uuid.uuid4().hex[:8]
    ns = "default"

    def one(i: int) -> None:
        name = f"ceiling-{tag}-{i}"
        api.create(kube.volumes_path(), pv_body(
            name, cls="bench-ceiling", reclaim="Delete",
            annotations={"pv.kubernetes.io/provisioned-by": "bench/ceiling", "Provisioner_Id": tag,
                         "Export_Id": str(i)}))
        post_events(api, ns, {"kind": "PersistentVolume", "name": name}, count=events, pv=name,
                    component="bench/ceiling", tag=tag)

    t0 = time.monotonic()
    list(pool.map(one, range(n)))
    rate = n / (time.monotonic() - t0)
    list(pool.map(lambda i: api.delete(kube.volumes_path(f"ceiling-{tag}-{i}")), range(n)))
    return rate

def sizes_section(b: Bench) -> dict[str, Any]:
    """Bursts of N claims: created+exported against the raw API ceiling and the null provisioner's
    pipeline; then 1000 volumes present (memory, cold restarts)."""
    results: dict[str, Any] = {"sizes": {}}
    appliance, api, pool = b.appliance, b.api, b.pool
    assert appliance.proc is not None
    for n in b.sizes:
        runs, ceilings = [], []
        for r in range(b.repeats):
            out, _ = provision_run(api, pool, n=n, cls=b.cls, provisioner=b.provisioner)
            events = max(1, round(out["events_per_claim"]))
            ceilings.append(ceiling_run(api, pool, n=n, events=events))
            out["fraction_of_ceiling"] = out["created_per_s"] / ceilings[-1]
            runs.append(out)
            print(f"N={n} run {r + 1}: {out['created_per_s']:.0f} PVC/s created+exported, "
                  f"{out['bound_per_s']:.0f} Bound/s, handed over {out['annotated_per_s']:.0f}/s, "
                  f"p99 {out['p99_s'] * 1000:.0f} ms (from handover {out['own_p99_s'] * 1000:.0f} ms), "
                  f"ceiling {ceilings[-1]:.0f}/s, delete {out['deleted_per_s']:.0f}/s", file=sys.stderr)
        keys = runs[0].keys()
        row: dict[str, Any] = {}
        for k in keys:
            put(row, k, [x[k] for x in runs])
        put(row, "ceiling_per_s", ceilings)
        results["sizes"][str(n)] = row

    # 1000 volumes present: memory, then a cold restart.
    big = b.present
    _, ns = provision_run(api, pool, n=big, cls=b.cls, provisioner=b.provisioner, keep=True)
    results["volumes_present"] = big
    results["rss_at_volumes_mb"] = tree_rss(appliance.proc.pid) / 2**20
    restarts = []
    for _ in range(b.repeats):
        took, spurious = cold_restart(appliance, big)
        restarts.append(took)
        results.setdefault("restart_spurious_provisions", []).append(spurious)
        print(f"cold restart with {big} volumes: {restarts[-1]:.2f}s, spurious provisions {spurious:.0f}",
              file=sys.stderr)
    put(results, "cold_restart_s", restarts)
    t1 = time.monotonic()
    list(pool.map(lambda i: api.delete(kube.claims_path(ns, f"c{i}")), range(big)))
    wait_for(lambda: not [p for p in api.get(kube.volumes_path())["items"]
                          if p["spec"].get("storageClassName") == b.cls], 600, "cleanup")
    results["cleanup_s"] = time.monotonic() - t1

    # The pipeline without the appliance (stopped, so its caches and CPU take no part): the same
    # bursts answered by the null provisioner.
    stop(appliance)
    for n in b.sizes:
        events = max(1, round(results["sizes"][str(n)]["events_per_claim"]))
        rates = []
        for _ in range(b.repeats):
            rates.append(pipeline_run(api, pool, n=n, cls=b.null_cls, provisioner=b.null_provisioner,
                                      events=events))
            print(f"N={n} null provisioner: {rates[-1]:.0f} PVC/s", file=sys.stderr)
        row = results["sizes"][str(n)]
        put(row, "pipeline_per_s", rates)
        created = row["created_per_s"]
        put(row, "fraction_of_pipeline", [created / rate for rate in rates])
    appliance.start()
    return results


@dataclass(frozen=True)
class Section:
    run: Callable[[Bench], dict[str, Any]]
    """Measures; returns its part of results.json (top-level keys); leaves ``Bench.appliance`` running."""
    show: Callable[[dict[str, Any]], None]
    """Prints its rows of the table from the whole results (a section may be missing: --sections)."""


def sections() -> dict[str, Section]:
    """Every section, in the order ``make bench`` runs them (``scale`` last: as the last section it leaves its
    10,000 volumes to the control plane's teardown)."""
    return {"sizes": Section(sizes_section, show_sizes),
            "delete": Section(delete_bench.delete_section, delete_bench.show_delete),
            "backlog": Section(backlog_bench.backlog_section, backlog_bench.show_backlog),
            "filesystems": Section(filesystem_bench.filesystems_section, filesystem_bench.show_filesystems),
            "pool": Section(pool_bench.pool_section, pool_bench.show_pool),
            "scale": Section(scale_bench.scale_section, scale_bench.show_scale)}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="100,1000")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sections", default=",".join(sections()),
                        help="comma-separated subset of: " + ", ".join(sections()))
    parser.add_argument("--present", type=int, default=1000, help="volumes present for the cold restarts")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results.json")
    parser.add_argument("--scale-max", type=int, default=10000,
                        help="live volumes the scale section provisions up to (in bursts of 1000)")
    parser.add_argument("--fs-clone-mb", type=int, default=1024,
                        help="size of the filesystem volume the filesystems section clones (a quarter of it data)")
    parser.add_argument("--no-flames", dest="flames", action="store_false",
                        help="no py-spy flame graph per section (flame-<section>.svg/.txt beside --out)")
    parser.add_argument("--flames-cpu", action="store_true",
                        help="flame graphs of the interpreter's CPU time (the thread holding the GIL; "
                             "default: wall time)")
    parser.add_argument("--split-cpus", action="store_true",
                        help="the control plane on half the CPUs, the appliance and the null provisioner on the "
                             "other half (as on separate nodes); default: all share all CPUs")
    parser.add_argument("--appliance-args", default="", help="extra flags for the appliance, space separated")
    args = parser.parse_args()
    chosen = args.sections.split(",")
    unknown = sorted(set(chosen) - set(sections()))
    if unknown:
        parser.error(f"unknown sections: {', '.join(unknown)}")
    ganesha_root = ganesha_env.select_ganesha()  # the Ganesha the tests and the image run
    # The image ships compiled bytecode; with PYTHONDONTWRITEBYTECODE set (as here and in the image) and none on
    # disk, each appliance start would compile every module first (0.15 s of CPU), which the backlog counts.
    compileall.compile_dir(str(REPO / "nfs_provisioner"), quiet=1)
    work = Path(tempfile.mkdtemp(prefix="nfsp-bench-"))
    cluster = kubecluster.Cluster(work / "cluster")
    results: dict[str, Any] = {"repeats": args.repeats, "ganesha": str(ganesha_root) if ganesha_root else "installed",
                               "sections": chosen}
    appliance = None
    try:
        t = time.monotonic()
        cluster.up()
        print(f"control plane up in {time.monotonic() - t:.1f}s", file=sys.stderr)
        if args.split_cpus:
            results["split_cpus"] = split_cpus(work)
            print(f"CPUs split: {results['split_cpus']}", file=sys.stderr)
        api = kube.Client.load(str(cluster.kubeconfig), settings=kube.ClientSettings(qps=0, burst=1,
                                                                                     pool_size=WORKERS + 4))
        for name, prov in (("bench-nfs", "bench.example.com/nfs"), (NULL_CLASS, NULL_PROVISIONER)):
            api.create(kube.classes_path(), {"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
                                             "metadata": {"name": name}, "provisioner": prov})
        with cf.ThreadPoolExecutor(WORKERS) as pool:
            b = Bench(api=api, pool=pool, cluster=cluster, work=work, appliance=None,  # type: ignore[arg-type]
                      sizes=[int(s) for s in args.sizes.split(",")], repeats=args.repeats,
                      appliance_extra=args.appliance_args.split(), present=args.present,
                      scale_max=args.scale_max, fs_clone_mb=args.fs_clone_mb)
            appliance = b.appliance = b.new_appliance()
            appliance.start()
            time.sleep(1.0)
            assert appliance.proc is not None
            results["rss_idle_mb"] = own_rss_mb(appliance.proc.pid)
            results["rss_idle_tree_mb"] = tree_rss(appliance.proc.pid) / 2**20
            for i, name in enumerate(chosen):
                b.later_sections = chosen[i + 1:]
                t = time.monotonic()
                with flame.recording(b.appliance_pid, args.out.parent / f"flame-{name}", enabled=args.flames,
                                     idle=not args.flames_cpu):
                    results.update(sections()[name].run(b))
                print(f"section {name}: {time.monotonic() - t:.0f}s", file=sys.stderr)
            appliance = b.appliance
    finally:
        if appliance is not None:
            appliance.close()
        cluster.down()
        shutil.rmtree(work, ignore_errors=True)
    args.out.write_text(json.dumps(results, indent=2, sort_keys=True))
    print(f"\nProvisioning benchmark (median of {results['repeats']} runs)")
    for name in chosen:
        sections()[name].show(results)
    print(f"RSS idle: appliance {results['rss_idle_mb']:.0f} MB; with Ganesha and its bus "
          f"{results['rss_idle_tree_mb']:.0f} MB")
    return 0


def show_sizes(r: dict[str, Any]) -> None:
    for n, s in r["sizes"].items():
        print(f"N={n}")
        print(f"  created+exported  {fmt(s, 'created_per_s', unit=' PVC/s')}")
        print(f"  Bound             {fmt(s, 'bound_per_s', unit=' PVC/s')}")
        print(f"  binder handover   {fmt(s, 'annotated_per_s', unit=' PVC/s')}")
        print(f"  ceiling (raw API) {fmt(s, 'ceiling_per_s', unit=' PV+events/s')}"
              f"  ({s['events_per_claim']:.0f} events per PV, as the appliance posts)")
        print(f"  fraction          {fmt(s, 'fraction_of_ceiling', 100, ' %')}")
        print(f"  null provisioner  {fmt(s, 'pipeline_per_s', unit=' PVC/s')}  (same bursts, appliance stopped)")
        print(f"  appliance/null    {fmt(s, 'fraction_of_pipeline', 100, ' %')}  (median created+exported / each)")
        print(f"  latency p50       {fmt(s, 'p50_s', 1000, ' ms')}  (claim created -> PV created)")
        print(f"  latency p99       {fmt(s, 'p99_s', 1000, ' ms')}")
        print(f"  from handover p50 {fmt(s, 'own_p50_s', 1000, ' ms')}  (binder's annotation -> PV created)")
        print(f"  from handover p99 {fmt(s, 'own_p99_s', 1000, ' ms')}")
        print(f"  deletion          {fmt(s, 'deleted_per_s', unit=' PV/s')}")
    print(f"cold restart with {r['volumes_present']} volumes  {fmt(r, 'cold_restart_s', unit=' s')}"
          f"  spurious provisions {r['restart_spurious_provisions']}")
    print(f"RSS (appliance + Ganesha + bus) with {r['volumes_present']} volumes {r['rss_at_volumes_mb']:.0f} MB")


if __name__ == "__main__":
    sys.exit(main())
