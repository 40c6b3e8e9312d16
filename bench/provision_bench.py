"""Provisioning benchmark of the real appliance on the local control plane
(printed and written to bench/results.json; not a pass/fail test).

For N claims created at once (N = 100, 1000 by default), each repeated R times:
created+exported throughput (claim created -> PV exists; the export is made
before the PV is saved), Bound throughput, per-claim latency p50/p99, deletion
throughput; in the same API server, the ceiling: a tight client loop creating
the same number of PV objects and events. Then, with 1000 volumes present, a
cold restart (process start -> /readyz, all exports served, queues drained, no
provision calls) and the appliance's memory (RSS of its process tree).

    .venv/bin/python -m bench.provision_bench [--sizes 100,1000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import re
import shutil
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

from nfs_provisioner.kube import client as kube
from tests import kubecluster
from tests.appliance_env import Appliance

REPO = Path(__file__).resolve().parent.parent
WORKERS = 32  # client threads creating claims (and, for the ceiling, PVs and events)


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def summary(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def metric(text: str, name: str) -> float:
    """Sum of every sample of ``name`` (any labels) in a Prometheus text exposition."""
    pattern = re.compile(rf"^{re.escape(name)}(?:\{{[^}}]*\}})? (\S+)$", re.MULTILINE)
    return sum(float(v) for v in pattern.findall(text))


def tree_rss(pid: int) -> int:
    p = psutil.Process(pid)
    return int(sum(q.memory_info().rss for q in [p, *p.children(recursive=True)]))


class Watcher:
    """Records when each PV appears/disappears and each claim of a namespace turns Bound."""

    def __init__(self, api: kube.Client, namespace: str) -> None:
        self.api, self.ns = api, namespace
        self.pv_seen: dict[str, float] = {}
        self.pv_gone: dict[str, float] = {}
        self.bound: dict[str, float] = {}
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(kube.volumes_path(), self._pv), daemon=True),
                         threading.Thread(target=self._run, args=(kube.claims_path(namespace), self._claim),
                                          daemon=True)]

    def start(self) -> None:
        for t in self._threads:
            t.start()

    def stop(self) -> None:
        self._stop.set()
        self.api.close_streams()

    def _pv(self, kind: str, obj: dict[str, Any]) -> None:
        name = obj["metadata"]["name"]
        now = time.monotonic()
        if kind == "DELETED":
            self.pv_gone.setdefault(name, now)
        else:
            self.pv_seen.setdefault(name, now)

    def _claim(self, kind: str, obj: dict[str, Any]) -> None:
        if kind != "DELETED" and (obj.get("status") or {}).get("phase") == "Bound":
            self.bound.setdefault(obj["metadata"]["uid"], time.monotonic())

    def _run(self, path: str, handle: Callable[[str, dict[str, Any]], None]) -> None:
        rv = self.api.get(path, limit=1)["metadata"]["resourceVersion"]
        while not self._stop.is_set():
            try:
                for ev in self.api.watch(path, resource_version=rv, timeout_seconds=300):
                    if ev["type"] == "BOOKMARK":
                        rv = ev["object"]["metadata"]["resourceVersion"]
                        continue
                    if ev["type"] == "ERROR":
                        break
                    rv = ev["object"]["metadata"]["resourceVersion"]
                    handle(ev["type"], ev["object"])
            except Exception:  # noqa: BLE001 - stream closed on stop, or renewed
                if self._stop.is_set():
                    return


def wait_for(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise SystemExit(f"bench: timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


def claim_body(name: str, cls: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": name},
            "spec": {"storageClassName": cls, "accessModes": ["ReadWriteMany"],
                     "resources": {"requests": {"storage": "1Mi"}}}}


def provision_run(api: kube.Client, pool: cf.ThreadPoolExecutor, *, n: int, cls: str,
                  keep: bool = False) -> tuple[dict[str, float], str]:
    ns = f"bench-{uuid.uuid4().hex[:8]}"
    api.create("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
    w = Watcher(api, ns)
    w.start()
    time.sleep(0.3)  # watches established
    created: dict[str, float] = {}
    t0 = time.monotonic()

    def create(i: int) -> None:
        obj = api.create(kube.claims_path(ns), claim_body(f"c{i}", cls))
        created[obj["metadata"]["uid"]] = time.monotonic()

    list(pool.map(create, range(n)))
    t_created_all = time.monotonic()
    names = {f"pvc-{uid}": uid for uid in created}
    wait_for(lambda: all(name in w.pv_seen for name in names), 600, f"{n} PVs")
    t_pv = max(w.pv_seen[name] for name in names)
    wait_for(lambda: all(uid in w.bound for uid in created), 600, f"{n} claims Bound")
    t_bound = max(w.bound[uid] for uid in created)
    lat = [w.pv_seen[name] - created[uid] for name, uid in names.items()]
    out = {"created_per_s": n / (t_pv - t0), "bound_per_s": n / (t_bound - t0),
           "create_claims_s": t_created_all - t0, "p50_s": pct(lat, 50), "p99_s": pct(lat, 99)}
    if keep:
        w.stop()
        return out, ns
    t1 = time.monotonic()
    list(pool.map(lambda i: api.delete(kube.claims_path(ns, f"c{i}")), range(n)))
    wait_for(lambda: all(name in w.pv_gone for name in names), 600, f"{n} PVs deleted")
    out["deleted_per_s"] = n / (max(w.pv_gone[name] for name in names) - t1)
    w.stop()
    api.delete(f"/api/v1/namespaces/{ns}")
    return out, ns


def ceiling_run(api: kube.Client, pool: cf.ThreadPoolExecutor, *, n: int) -> float:
    """PV objects (plus one event each) created by a tight client loop: what the API server allows."""
    tag = uuid.uuid4().hex[:8]
    ns = "default"

    def one(i: int) -> None:
        name = f"ceiling-{tag}-{i}"
        api.create(kube.volumes_path(), {
            "apiVersion": "v1", "kind": "PersistentVolume",
            "metadata": {"name": name, "annotations": {"pv.kubernetes.io/provisioned-by": "bench/ceiling",
                                                       "Provisioner_Id": tag, "Export_Id": str(i)}},
            "spec": {"capacity": {"storage": "1Mi"}, "accessModes": ["ReadWriteMany"],
                     "persistentVolumeReclaimPolicy": "Delete", "storageClassName": "bench-ceiling",
                     "nfs": {"server": "127.0.0.1", "path": f"/export/{name}"}}})
        api.create(kube.events_path(ns), {
            "apiVersion": "v1", "kind": "Event", "metadata": {"name": f"{name}.{tag}", "namespace": ns},
            "involvedObject": {"kind": "PersistentVolume", "name": name, "apiVersion": "v1"},
            "reason": "ProvisioningSucceeded", "message": f"Successfully provisioned volume {name}",
            "type": "Normal", "source": {"component": "bench/ceiling"}})

    t0 = time.monotonic()
    list(pool.map(one, range(n)))
    rate = n / (time.monotonic() - t0)
    list(pool.map(lambda i: api.delete(kube.volumes_path(f"ceiling-{tag}-{i}")), range(n)))
    return rate


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="100,1000")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results.json")
    parser.add_argument("--appliance-args", default="", help="extra flags for the appliance, space separated")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    work = Path(tempfile.mkdtemp(prefix="nfsp-bench-"))
    cluster = kubecluster.Cluster(work / "cluster")
    results: dict[str, Any] = {"sizes": {}, "repeats": args.repeats}
    appliance = None
    try:
        t = time.monotonic()
        cluster.up()
        print(f"control plane up in {time.monotonic() - t:.1f}s", file=sys.stderr)
        api = kube.Client.load(str(cluster.kubeconfig), settings=kube.ClientSettings(qps=0, burst=1,
                                                                                     pool_size=WORKERS + 4))
        provisioner = "bench.example.com/nfs"
        cls = "bench-nfs"
        api.create(kube.classes_path(), {"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
                                         "metadata": {"name": cls}, "provisioner": provisioner})
        appliance = Appliance(kubeconfig=cluster.kubeconfig, export_root=work / "export", provisioner=provisioner,
                              log_dir=work, extra=["--log-level=INFO", *args.appliance_args.split()])
        appliance.start()
        time.sleep(1.0)
        assert appliance.proc is not None
        results["rss_idle_mb"] = tree_rss(appliance.proc.pid) / 2**20
        with cf.ThreadPoolExecutor(WORKERS) as pool:
            for n in sizes:
                runs, ceilings = [], []
                for r in range(args.repeats):
                    out, _ = provision_run(api, pool, n=n, cls=cls)
                    ceilings.append(ceiling_run(api, pool, n=n))
                    out["fraction_of_ceiling"] = out["created_per_s"] / ceilings[-1]
                    runs.append(out)
                    print(f"N={n} run {r + 1}: {out['created_per_s']:.0f} PVC/s created+exported, "
                          f"{out['bound_per_s']:.0f} Bound/s, p99 {out['p99_s'] * 1000:.0f} ms, "
                          f"ceiling {ceilings[-1]:.0f}/s, delete {out['deleted_per_s']:.0f}/s", file=sys.stderr)
                keys = runs[0].keys()
                results["sizes"][str(n)] = {k: summary([x[k] for x in runs]) for k in keys}
                results["sizes"][str(n)]["ceiling_per_s"] = summary(ceilings)

            # 1000 volumes present: memory, then a cold restart.
            big = max(1000, max(sizes))
            _, ns = provision_run(api, pool, n=big, cls=cls, keep=True)
            results["volumes_present"] = big
            results["rss_at_volumes_mb"] = tree_rss(appliance.proc.pid) / 2**20
            restarts = []
            for _ in range(args.repeats):
                assert appliance.stop() == 0
                t = time.monotonic()
                appliance.start(wait_ready=False)

                def reconciled() -> bool:
                    try:
                        code, _ = appliance.get("/readyz")
                        if code != 200:
                            return False
                        _, m = appliance.get("/metrics")
                    except OSError:
                        return False
                    return (metric(m, "nfs_provisioner_ganesha_exports") == big
                            and metric(m, "workqueue_depth") == 0)
                wait_for(reconciled, 120, "cold restart")
                restarts.append(time.monotonic() - t)
                time.sleep(1.0)
                _, m = appliance.get("/metrics")
                spurious = metric(m, "controller_persistentvolumeclaim_provision_total")
                results.setdefault("restart_spurious_provisions", []).append(spurious)
                print(f"cold restart with {big} volumes: {restarts[-1]:.2f}s, spurious provisions {spurious:.0f}",
                      file=sys.stderr)
            results["cold_restart_s"] = summary(restarts)
            t1 = time.monotonic()
            list(pool.map(lambda i: api.delete(kube.claims_path(ns, f"c{i}")), range(big)))
            wait_for(lambda: not [p for p in api.get(kube.volumes_path())["items"]
                                  if p["spec"].get("storageClassName") == cls], 600, "cleanup")
            results["cleanup_s"] = time.monotonic() - t1
    finally:
        if appliance is not None:
            appliance.close()
        cluster.down()
        shutil.rmtree(work, ignore_errors=True)
    args.out.write_text(json.dumps(results, indent=2, sort_keys=True))
    print_table(results)
    return 0


def print_table(r: dict[str, Any]) -> None:
    def fmt(s: dict[str, float], scale: float = 1.0, unit: str = "") -> str:
        return f"{s['median'] * scale:8.1f}{unit} (min {s['min'] * scale:.1f}, max {s['max'] * scale:.1f})"

    print(f"\nProvisioning benchmark (median of {r['repeats']} runs)")
    for n, s in r["sizes"].items():
        print(f"N={n}")
        print(f"  created+exported  {fmt(s['created_per_s'], unit=' PVC/s')}")
        print(f"  Bound             {fmt(s['bound_per_s'], unit=' PVC/s')}")
        print(f"  ceiling (raw API) {fmt(s['ceiling_per_s'], unit=' PV+event/s')}")
        print(f"  fraction          {fmt(s['fraction_of_ceiling'], 100, ' %')}")
        print(f"  latency p50       {fmt(s['p50_s'], 1000, ' ms')}")
        print(f"  latency p99       {fmt(s['p99_s'], 1000, ' ms')}")
        print(f"  deletion          {fmt(s['deleted_per_s'], unit=' PV/s')}")
    print(f"cold restart with {r['volumes_present']} volumes  {fmt(r['cold_restart_s'], unit=' s')}"
          f"  spurious provisions {r['restart_spurious_provisions']}")
    print(f"RSS (appliance + Ganesha + bus)  idle {r['rss_idle_mb']:.0f} MB, "
          f"with {r['volumes_present']} volumes {r['rss_at_volumes_mb']:.0f} MB")


if __name__ == "__main__":
    sys.exit(main())
