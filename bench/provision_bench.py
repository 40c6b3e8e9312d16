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
import concurrent.futures as cf
import contextlib
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from nfs_provisioner.kube import client as kube
from nfs_provisioner.kube import errors as kube_errors
from tests.support import ganesha_env, kubecluster
from tests.support.appliance_env import Appliance

REPO = Path(__file__).resolve().parent.parent
ANN_STORAGE_PROVISIONER = "volume.kubernetes.io/storage-provisioner"
WORKERS = 32  # client threads creating claims (and, for the ceilings, PVs and events)
NULL_PROVISIONER, NULL_CLASS = "bench.example.com/null", "bench-null-class"
PV_FINALIZER = "external-provisioner.volume.kubernetes.io/finalizer"


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def put(row: dict[str, Any], key: str, values: list[float]) -> None:
    """``row[key]`` = the median of ``values`` (results.json's stable keys are plain numbers),
    ``row[key + "_range"]`` = [min, max]."""
    row[key] = statistics.median(values)
    row[f"{key}_range"] = [min(values), max(values)]


def metric(text: str, name: str) -> float:
    """Sum of every sample of ``name`` (any labels) in a Prometheus text exposition."""
    pattern = re.compile(rf"^{re.escape(name)}(?:\{{[^}}]*\}})? (\S+)$", re.MULTILINE)
    return sum(float(v) for v in pattern.findall(text))


def tree_rss(pid: int) -> int:
    p = psutil.Process(pid)
    return int(sum(q.memory_info().rss for q in [p, *p.children(recursive=True)]))


class Watcher:
    """Records when each PV appears/disappears and each claim of a namespace turns Bound."""

    def __init__(self, api: kube.Client, namespace: str, *, initial_list: bool = False) -> None:
        self.api, self.ns = api, namespace
        self.initial_list = initial_list
        """Also handle the objects that exist at start (as ADDED), not only the changes after it."""
        self.pv_seen: dict[str, float] = {}
        self.pv_gone: dict[str, float] = {}
        self.released: dict[str, float] = {}
        """PV name -> when it was first seen Released (its claim deleted, the binder noticed)."""
        self.bound: dict[str, float] = {}
        self.annotated: dict[str, float] = {}
        """claim uid -> when kube-controller-manager handed it to a provisioner (storage-provisioner annotation)."""
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
            if (obj.get("status") or {}).get("phase") == "Released":
                self.released.setdefault(name, now)

    def _claim(self, kind: str, obj: dict[str, Any]) -> None:
        if kind == "DELETED":
            return
        now = time.monotonic()
        if ANN_STORAGE_PROVISIONER in (obj["metadata"].get("annotations") or {}):
            self.annotated.setdefault(obj["metadata"]["uid"], now)
        if (obj.get("status") or {}).get("phase") == "Bound":
            self.bound.setdefault(obj["metadata"]["uid"], now)

    def _run(self, path: str, handle: Callable[[str, dict[str, Any]], None]) -> None:
        if self.initial_list:
            listed = self.api.get(path)
            rv = listed["metadata"]["resourceVersion"]
            for obj in listed["items"]:
                handle("ADDED", obj)
        else:
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


def claim_body(name: str, cls: str, size: str = "1Mi") -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": name},
            "spec": {"storageClassName": cls, "accessModes": ["ReadWriteMany"],
                     "resources": {"requests": {"storage": size}}}}


def new_namespace(api: kube.Client, prefix: str) -> str:
    ns = f"{prefix}-{uuid.uuid4().hex[:8]}"
    api.create("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
    return ns


def pv_body(name: str, *, cls: str, reclaim: str, annotations: dict[str, str],
            claim_ref: dict[str, str] | None = None) -> dict[str, Any]:
    """A 1Mi NFS PV like the appliance's (bound to ``claim_ref`` when given)."""
    spec: dict[str, Any] = {"capacity": {"storage": "1Mi"}, "accessModes": ["ReadWriteMany"],
                            "persistentVolumeReclaimPolicy": reclaim, "storageClassName": cls,
                            "nfs": {"server": "127.0.0.1", "path": f"/export/{name}"}}
    if claim_ref is not None:
        spec["claimRef"] = {"apiVersion": "v1", "kind": "PersistentVolumeClaim", **claim_ref}
    return {"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": name, "annotations": annotations},
            "spec": spec}


def post_events(api: kube.Client, ns: str, involved: dict[str, str], *, count: int, pv: str, component: str,
                tag: str) -> None:
    """``count`` ProvisioningSucceeded events about ``involved``, as a provisioner posts them."""
    for e in range(count):
        api.create(kube.events_path(ns), {
            "apiVersion": "v1", "kind": "Event", "metadata": {"name": f"{involved['name']}.{tag}{e}", "namespace": ns},
            "involvedObject": {"apiVersion": "v1", **involved},
            "reason": "ProvisioningSucceeded", "message": f"Successfully provisioned volume {pv}",
            "type": "Normal", "source": {"component": component}})


def provision_run(api: kube.Client, pool: cf.ThreadPoolExecutor, *, n: int, cls: str, provisioner: str,
                  keep: bool = False, size: str = "1Mi") -> tuple[dict[str, float], str]:
    ns = new_namespace(api, "bench")
    w = Watcher(api, ns)
    w.start()
    time.sleep(0.3)  # watches established
    created: dict[str, float] = {}
    t0 = time.monotonic()

    def create(i: int) -> None:
        obj = api.create(kube.claims_path(ns), claim_body(f"c{i}", cls, size))
        created[obj["metadata"]["uid"]] = time.monotonic()

    list(pool.map(create, range(n)))
    t_created_all = time.monotonic()
    names = {f"pvc-{uid}": uid for uid in created}
    wait_for(lambda: all(name in w.pv_seen for name in names), 600, f"{n} PVs")
    t_pv = max(w.pv_seen[name] for name in names)
    wait_for(lambda: all(uid in w.bound for uid in created), 600, f"{n} claims Bound")
    t_bound = max(w.bound[uid] for uid in created)
    events = [e for e in api.get(kube.events_path(ns))["items"]
              if (e.get("source") or {}).get("component") == provisioner]
    lat = [w.pv_seen[name] - created[uid] for name, uid in names.items()]
    own = [w.pv_seen[name] - w.annotated[uid] for name, uid in names.items()]
    t_annotated = max(w.annotated[uid] for uid in created)
    out = {"created_per_s": n / (t_pv - t0), "bound_per_s": n / (t_bound - t0),
           "annotated_per_s": n / (t_annotated - t0),
           "create_claims_s": t_created_all - t0, "p50_s": pct(lat, 50), "p99_s": pct(lat, 99),
           "own_p50_s": pct(own, 50), "own_p99_s": pct(own, 99), "events_per_claim": len(events) / n}
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


class NullProvisioner(Watcher):
    """Answers each claim handed to ``provisioner`` at once from a thread pool: its PV (claimRef set)
    and ``events`` events, no storage work. The same burst through this loop measures what any
    provisioner could reach in this pipeline (claim creation, the binder, one API server, 2 cores).

    With ``reclaim="Delete"`` its PVs carry the provisioner finalizer (as the appliance's do) and a
    Released PV of its class is deleted at once: PV DELETE, then the finalizer PATCH, no storage work
    (the most any provisioner's deletion gets through this pipeline)."""

    def __init__(self, api: kube.Client, namespace: str, *, provisioner: str, cls: str, events: int,
                 pool: cf.ThreadPoolExecutor, reclaim: str = "Retain", initial_list: bool = False,
                 finalizer: bool = True) -> None:
        super().__init__(api, namespace, initial_list=initial_list)
        self.provisioner, self.cls, self.events, self.pool = provisioner, cls, events, pool
        self.reclaim = reclaim
        self.finalizer = finalizer and reclaim == "Delete"
        """Its Delete PVs carry the provisioner finalizer (as the appliance's); False: as the Go library's
        default (no finalizer: the delete is one PV DELETE)."""
        self._taken: set[str] = set()
        self._deleting: set[str] = set()

    def _pv(self, kind: str, obj: dict[str, Any]) -> None:
        super()._pv(kind, obj)
        m = obj["metadata"]
        if (kind != "DELETED" and self.reclaim == "Delete" and (obj.get("status") or {}).get("phase") == "Released"
                and (m.get("annotations") or {}).get("pv.kubernetes.io/provisioned-by") == self.provisioner
                and m["name"] not in self._deleting):
            self._deleting.add(m["name"])
            self.pool.submit(self._delete, m["name"])

    def _delete(self, name: str) -> None:
        self.api.delete(kube.volumes_path(name))
        if not self.finalizer:
            return
        with contextlib.suppress(kube_errors.NotFound):
            self.api.patch(kube.volumes_path(name),
                           {"metadata": {"$deleteFromPrimitiveList/finalizers": [PV_FINALIZER]}})

    def _claim(self, kind: str, obj: dict[str, Any]) -> None:
        super()._claim(kind, obj)
        m = obj["metadata"]
        if (kind != "DELETED" and (m.get("annotations") or {}).get(ANN_STORAGE_PROVISIONER) == self.provisioner
                and not obj["spec"].get("volumeName") and m["uid"] not in self._taken):
            self._taken.add(m["uid"])
            self.pool.submit(self._provision, m["namespace"], m["name"], m["uid"])

    def _provision(self, ns: str, name: str, uid: str) -> None:
        pv = f"pvc-{uid}"
        body = pv_body(pv, cls=self.cls, reclaim=self.reclaim,
                       annotations={"pv.kubernetes.io/provisioned-by": self.provisioner},
                       claim_ref={"namespace": ns, "name": name, "uid": uid})
        if self.finalizer:
            body["metadata"]["finalizers"] = [PV_FINALIZER]
        self.api.create(kube.volumes_path(), body)
        post_events(self.api, ns, {"kind": "PersistentVolumeClaim", "name": name, "namespace": ns, "uid": uid},
                    count=self.events, pv=pv, component=self.provisioner, tag=uid[:8])


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


@dataclass
class Bench:
    """What every section of the benchmark shares: one control plane, one client, one appliance
    (started; a section may stop, restart or replace it, and leaves it running), the classes."""

    api: kube.Client
    pool: cf.ThreadPoolExecutor
    cluster: kubecluster.Cluster
    work: Path
    appliance: Appliance
    sizes: list[int]
    repeats: int
    cls: str = "bench-nfs"
    provisioner: str = "bench.example.com/nfs"
    null_cls: str = NULL_CLASS
    null_provisioner: str = NULL_PROVISIONER
    appliance_extra: list[str] = field(default_factory=list)
    present: int = 1000
    """Volumes present for the memory and cold-restart figures of the sizes section."""
    scale_max: int = 10000
    """Live volumes the ``scale`` section provisions up to (bench/scale_bench.py)."""
    fs_clone_mb: int = 1024
    """Size of the filesystem volume the ``filesystems`` section clones (a quarter of it data)."""
    later_sections: list[str] = field(default_factory=list)
    """The sections still to run after the current one (none: it need not clean up after itself)."""

    def new_appliance(self, export_root: Path | None = None, extra: list[str] | None = None,
                      step_times: Path | None = None,
                      wrapper: Callable[[list[str]], list[str]] | None = None) -> Appliance:
        """An appliance (not started) of the bench class; the section stops and closes it.

        ``step_times``: run it under :mod:`bench.step_timer`, which writes per-step wall-clock totals there;
        ``wrapper``: turns its argv into the command run (e.g. in a mount namespace of its own)."""
        env = None
        if step_times is not None:
            outer = wrapper

            def timed(argv: list[str]) -> list[str]:
                argv = [argv[0], "-m", "bench.step_timer", *argv[3:]]  # instead of -m nfs_provisioner
                return argv if outer is None else outer(argv)
            wrapper = timed
            env = {"NFSP_STEP_TIMES": str(step_times), "PYTHONPATH": str(REPO)}
        return Appliance(kubeconfig=self.cluster.kubeconfig, export_root=export_root or self.work / "export",
                         provisioner=self.provisioner, log_dir=self.work,
                         extra=["--log-level=INFO", *self.appliance_extra, *(extra or [])], wrapper=wrapper, env=env)

    def replace_appliance(self, new: Appliance) -> None:
        """Stop (and close) the running appliance, start ``new`` on the same export root in its place."""
        stop(self.appliance)
        self.appliance.close()
        new.start()
        self.appliance = new


def stop(appliance: Appliance) -> None:
    """SIGTERM the appliance; it must exit 0 (an earlier exit or crash is reported with its log's tail)."""
    rc = appliance.stop()
    if rc != 0:
        raise SystemExit(f"bench: the appliance exited with {rc}; its log ends:\n{appliance.log()[-4000:]}")


def own_rss_mb(pid: int) -> float:
    return float(psutil.Process(pid).memory_info().rss) / 2**20


def cold_restart(appliance: Appliance, exports: int, timeout: float = 120,
                 stopped: bool = False) -> tuple[float, float]:
    """Stop the appliance (unless ``stopped``), start it again: seconds from process start until /readyz answers
    200, Ganesha serves all ``exports`` and the work queues are empty; and the provision calls it made (0 = none
    spurious, counted 1 s later)."""
    if not stopped:
        stop(appliance)
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
        return metric(m, "nfs_provisioner_ganesha_exports") == exports and metric(m, "workqueue_depth") == 0
    wait_for(reconciled, timeout, "cold restart")
    took = time.monotonic() - t
    time.sleep(1.0)
    _, m = appliance.get("/metrics")
    return took, metric(m, "controller_persistentvolumeclaim_provision_total")


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
    """Every section, in the order ``make bench`` runs them."""
    from bench import backlog_bench, delete_bench, filesystem_bench, scale_bench  # they import this module's helpers

    return {"sizes": Section(sizes_section, show_sizes),
            "delete": Section(delete_bench.delete_section, delete_bench.show_delete),
            "backlog": Section(backlog_bench.backlog_section, backlog_bench.show_backlog),
            "filesystems": Section(filesystem_bench.filesystems_section, filesystem_bench.show_filesystems),
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
    parser.add_argument("--appliance-args", default="", help="extra flags for the appliance, space separated")
    args = parser.parse_args()
    chosen = args.sections.split(",")
    unknown = sorted(set(chosen) - set(sections()))
    if unknown:
        parser.error(f"unknown sections: {', '.join(unknown)}")
    ganesha_root = ganesha_env.select_ganesha()  # the Ganesha the tests and the image run
    work = Path(tempfile.mkdtemp(prefix="nfsp-bench-"))
    cluster = kubecluster.Cluster(work / "cluster")
    results: dict[str, Any] = {"repeats": args.repeats, "ganesha": str(ganesha_root) if ganesha_root else "installed",
                               "sections": chosen}
    appliance = None
    try:
        t = time.monotonic()
        cluster.up()
        print(f"control plane up in {time.monotonic() - t:.1f}s", file=sys.stderr)
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


def fmt(row: dict[str, Any], key: str, scale: float = 1.0, unit: str = "") -> str:
    """``row[key]`` (a median) with its ``_range`` when there was more than one run."""
    text = f"{row[key] * scale:8.1f}{unit}"
    low, high = row.get(f"{key}_range", (row[key], row[key]))
    return text if low == high else f"{text} (min {low * scale:.1f}, max {high * scale:.1f})"


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
