"""What every section of the provisioning benchmark (bench/provision_bench.py) shares: the :class:`Bench` (one
control plane, one client, one appliance), a burst of claims timed through the whole pipeline
(:func:`provision_run`, with the :class:`Watcher` that sees each PV and claim change), the null provisioner, the
cold restart, and the medians and formatting of results.json's figures.

Sections import this module; bench/provision_bench.py imports the sections (no import cycle).
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import os
import re
import statistics
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from nfs_provisioner import fileio
from nfs_provisioner.kube import client as kube
from nfs_provisioner.kube import errors as kube_errors
from nfs_provisioner.volumes.records import RECORDS_DIR, VolumeRecords, new_record
from tests.support import kubecluster
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


CONTROL_PLANE = ("kube-apiserver", "etcd", "kube-controller-manager", "kube-scheduler")


class MachineCpu:
    """Where the machine's CPU went between :meth:`start` and :meth:`stop`: cores busy in all, and by the control
    plane's processes and this bench process (ptrace-free: /proc through psutil)."""

    def __init__(self) -> None:
        self._t0 = 0.0
        self._before: dict[str, float] = {}

    def _sample(self) -> dict[str, float]:
        t = psutil.cpu_times()
        out = {"machine": t.user + t.nice + t.system + getattr(t, "irq", 0.0) + getattr(t, "softirq", 0.0)}
        for name in CONTROL_PLANE:
            out[name] = 0.0
        for proc in psutil.process_iter(["name"]):
            try:
                if proc.info["name"] in CONTROL_PLANE:
                    c = proc.cpu_times()
                    out[proc.info["name"]] += c.user + c.system
            except psutil.Error:
                continue
        me = psutil.Process().cpu_times()
        out["bench"] = me.user + me.system
        return out

    def start(self) -> None:
        self._before, self._t0 = self._sample(), time.monotonic()

    def stop(self) -> dict[str, float]:
        """Cores used on average over the interval, by key (``machine``: all of it; ``cores``: how many exist;
        ``seconds``: the interval)."""
        after, elapsed = self._sample(), max(1e-9, time.monotonic() - self._t0)
        used = {k: (v - self._before.get(k, 0.0)) / elapsed for k, v in after.items()}
        used["cores"] = float(psutil.cpu_count() or 1)
        used["seconds"] = elapsed
        return used


def split_cpus(work: Path) -> str:
    """Give the control plane started under ``work`` (its processes name files there) the first half of the
    machine's CPUs and this bench process (so every provisioner it runs or starts: the appliance, its Ganesha,
    the null provisioner's threads) the other half, as in a cluster, where the API server does not share a node's
    cores with a provisioner. Every thread of each process is moved (Go runtimes already run several; threads
    made later inherit it). Returns what was done, for the output."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        raise SystemExit("bench: --split-cpus needs at least 2 CPUs")
    plane, rest = set(cpus[:len(cpus) // 2]), set(cpus[len(cpus) // 2:])
    moved = []
    for proc in psutil.process_iter(["name", "cmdline"]):
        try:
            if proc.info["name"] in CONTROL_PLANE and str(work) in " ".join(proc.info["cmdline"] or ()):
                _pin(proc.pid, plane)
                moved.append(proc.info["name"])
        except (psutil.Error, OSError):
            continue
    _pin(os.getpid(), rest)
    return f"control plane ({', '.join(sorted(moved))}) on CPUs {sorted(plane)}, provisioners on {sorted(rest)}"


def _pin(pid: int, cpus: set[int]) -> None:
    for tid in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(ProcessLookupError):
            os.sched_setaffinity(int(tid), cpus)


def show_machine_cpu(used: dict[str, float]) -> str:
    """One line: cores busy in all (of how many), then by process group, largest first."""
    parts = sorted(((k, v) for k, v in used.items() if k not in ("machine", "cores", "seconds")), key=lambda kv: -kv[1])
    return (f"{used['machine']:.2f} of {used['cores']:.0f} cores busy: "
            + ", ".join(f"{k} {v:.2f}" for k, v in parts if v >= 0.005))


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

    def figures(self, names: dict[str, str]) -> dict[str, float]:
        """Figures of its own for a burst (PV name -> claim uid), added to :func:`provision_run`'s; none here."""
        return {}

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
            "type": "Normal", "source": {"component": component}}, answer=False)


def provision_run(api: kube.Client, pool: cf.ThreadPoolExecutor, *, n: int, cls: str, provisioner: str,
                  keep: bool = False, size: str = "1Mi",
                  watcher: type[Watcher] = Watcher) -> tuple[dict[str, float], str]:
    """N claims of ``cls`` created at once in a new namespace, timed until every PV exists and every claim is
    Bound (and, unless ``keep``, until every PV is gone after the claims are deleted): the figures and the
    namespace. ``watcher``: a :class:`Watcher` class whose :meth:`Watcher.figures` adds figures of its own."""
    ns = new_namespace(api, "bench")
    w = watcher(api, ns)
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
           "own_p50_s": pct(own, 50), "own_p99_s": pct(own, 99), "events_per_claim": len(events) / n,
           **w.figures(names)}
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
    (the most any provisioner's deletion gets through this pipeline).

    With ``files`` (a directory on the export root's filesystem) each claim also gets the files every volume
    of the appliance is made of, written as the appliance writes them (``fileio.atomic_write``, fsynced)
    before its PV is posted: its directory, a volume record and an export file; no export is added. Its drain
    is the most a provisioner that keeps a volume's state in files could reach on this machine; with
    ``reclaim="Delete"`` a Released PV's files are removed before its PV DELETE."""

    def __init__(self, api: kube.Client, namespace: str, *, provisioner: str, cls: str, events: int,
                 pool: cf.ThreadPoolExecutor, reclaim: str = "Retain", initial_list: bool = False,
                 finalizer: bool = True, files: Path | None = None) -> None:
        super().__init__(api, namespace, initial_list=initial_list)
        self.provisioner, self.cls, self.events, self.pool = provisioner, cls, events, pool
        self.reclaim = reclaim
        self.files = files
        self.records: VolumeRecords | None = None
        if files is not None:
            (files / "exports.d").mkdir(parents=True, exist_ok=True)
            self.records = VolumeRecords(files / RECORDS_DIR)
            self.records.ensure_dir()
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
        if self.files is not None and self.records is not None:  # as the appliance: export file, directory, record
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.files / "exports.d" / f"{name}.conf")
            with contextlib.suppress(FileNotFoundError):
                os.rmdir(self.files / name)
            self.records.remove(name)
        self.api.delete(kube.volumes_path(name), answer=False)  # as the appliance: answers it has no use for are
        if not self.finalizer:                                 # not decoded
            return
        with contextlib.suppress(kube_errors.NotFound):
            self.api.patch(kube.volumes_path(name),
                           {"metadata": {"$deleteFromPrimitiveList/finalizers": [PV_FINALIZER]}}, answer=False)

    def _claim(self, kind: str, obj: dict[str, Any]) -> None:
        super()._claim(kind, obj)
        m = obj["metadata"]
        if (kind != "DELETED" and (m.get("annotations") or {}).get(ANN_STORAGE_PROVISIONER) == self.provisioner
                and not obj["spec"].get("volumeName") and m["uid"] not in self._taken):
            self._taken.add(m["uid"])
            self.pool.submit(self._provision, m["namespace"], m["name"], m["uid"])

    def _provision(self, ns: str, name: str, uid: str) -> None:
        pv = f"pvc-{uid}"
        if self.files is not None:
            self._volume_files(pv, ns, name, uid)
        body = pv_body(pv, cls=self.cls, reclaim=self.reclaim,
                       annotations={"pv.kubernetes.io/provisioned-by": self.provisioner},
                       claim_ref={"namespace": ns, "name": name, "uid": uid})
        if self.finalizer:
            body["metadata"]["finalizers"] = [PV_FINALIZER]
        self.api.create(kube.volumes_path(), body, answer=False)
        post_events(self.api, ns, {"kind": "PersistentVolumeClaim", "name": name, "namespace": ns, "uid": uid},
                    count=self.events, pv=pv, component=self.provisioner, tag=uid[:8])

    def _volume_files(self, pv: str, ns: str, name: str, uid: str) -> None:
        """A volume's record (the appliance's code), its directory, its export file (the same order)."""
        assert self.files is not None and self.records is not None
        path = self.files / pv
        claim = {"metadata": {"namespace": ns, "name": name, "uid": uid}}
        self.records.write(new_record(pv_name=pv, claim=claim, identity="00000000-0000-4000-8000-000000000000",
                                      path=path, root_squash=False, on_delete="delete"))
        path.mkdir()
        os.chmod(path, 0o2777)
        export = (f"EXPORT {{\n  Export_Id = 1;\n  Path = \"{path}\";\n  Pseudo = \"/{pv}\";\n"
                  "  Filesystem_Id = 1.1;\n  Protocols = 4;\n  Transports = TCP;\n  Squash = No_Root_Squash;\n"
                  "  Access_Type = RW;\n  FSAL {\n    Name = VFS;\n  }\n}\n")
        fileio.atomic_write(self.files / "exports.d" / f"{pv}.conf", export)




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

    @property
    def null_files(self) -> Path:
        """Where the null provisioner writes its volumes' files (``NullProvisioner(files=...)``), beside the export
        root on the same filesystem; each run removes it."""
        return self.work / "null-volume-files"

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

    def appliance_pid(self) -> int | None:
        """The running appliance's process id (None: stopped); what the flame graphs follow."""
        proc = self.appliance.proc if self.appliance is not None else None
        return proc.pid if proc is not None and proc.poll() is None else None

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



def fmt(row: dict[str, Any], key: str, scale: float = 1.0, unit: str = "") -> str:
    """``row[key]`` (a median) with its ``_range`` when there was more than one run."""
    text = f"{row[key] * scale:8.1f}{unit}"
    low, high = row.get(f"{key}_range", (row[key], row[key]))
    return text if low == high else f"{text} (min {low * scale:.1f}, max {high * scale:.1f})"
