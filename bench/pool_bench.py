"""Section "pool" of the provisioning benchmark: a pool of three appliance processes (``--pool``) serving one class,
against the bench's one appliance, in the same control plane and on the same machine (issue 29; docs/scaling.md).

- **Rate**: bursts of N claims (the ``--sizes`` up to :data:`MAX_N`; the smallest size if none is), in each repeat one
  burst for the one appliance, then one for the pool: created+exported PVC/s as the ``sizes`` section measures it
  (claim created -> PV exists; the export is made before the PV is saved), Bound, the binder's handover, and
  ``ratio`` = pool / one of each repeat's pair (the median of the pairs: the load of a shared machine drifts
  between repeats more than within one). Latency from the binder's handover (``volume.kubernetes.io/storage-
  provisioner``) to the PV for both; for the pool, split at the claim's assignment (``nfs-provisioner.io/pool-
  member``): handover -> assigned (``routing_*``: the members' placement and its one conditional PATCH of the claim)
  and assigned -> PV (``assign_*``: the member's own provision). CPU ms per claim of the appliance processes with
  their Ganesha and bus (three of each for the pool).
- **Distribution**: claims provisioned by each member in each pool burst, from each member's own
  ``controller_persistentvolumeclaim_provision_total`` (PVs saved); they must add up to N (each claim once).
- **Route-around**: one member SIGKILLed (with its Ganesha and bus, as a node's death would), then
  :data:`ROUTE_CLAIMS` claims created at once. The others still count it up for :data:`LEASE_DURATION` s after its
  last heartbeat and assign it its share; for those claims, seconds from the kill until each was reassigned and
  until its PV, made by another member, existed (``route_around_s``: the last of them). The member is started again
  after each repeat (a different member each time).

Members: each its own export root, Ganesha port and server address 127.0.0.2-4 (what its PVs name), a heartbeat
every :data:`HEARTBEAT` s, down after :data:`LEASE_DURATION` s without one (as tests/e2e/test_pool.py). Both sides run
throughout (the idle side's cost: one appliance's informers; three members' Lease PATCH + list per heartbeat).
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
import uuid
from typing import Any

from bench.delete_bench import cpu_seconds
from bench.harness import (
    Bench,
    Watcher,
    claim_body,
    fmt,
    metric,
    new_namespace,
    pct,
    provision_run,
    put,
    stop,
    wait_for,
)
from nfs_provisioner.controller.pool import ANN_MEMBER
from nfs_provisioner.kube import client as kube
from nfs_provisioner.kube import errors as kube_errors
from tests.support.appliance_env import Appliance

PROVISIONER, CLASS, POOL = "bench.example.com/pool", "bench-pool", "bench"
MEMBERS = 3
HEARTBEAT, LEASE_DURATION = 1, 6
"""Seconds: --leader-elect-retry-period (a member's heartbeat) and --leader-elect-lease-duration (a member silent
that long is down), as tests/e2e/test_pool.py runs its pool (the defaults are 2 and 15)."""
MAX_N = 300
"""Largest ``--sizes`` burst the section runs (make bench: 100 of its 100,1000)."""
ROUTE_CLAIMS = 30
"""Claims created right after a member is killed (about a third go to it; none: 3 * (2/3)**30 = 2e-5)."""
SAVED = "controller_persistentvolumeclaim_provision_total"


def address(i: int) -> str:
    return f"127.0.0.{i + 2}"


class PoolWatcher(Watcher):
    """A :class:`Watcher` that also records the member named on each claim over time and on each PV."""

    def __init__(self, api: kube.Client, namespace: str, *, initial_list: bool = False) -> None:
        super().__init__(api, namespace, initial_list=initial_list)
        self.members: dict[str, list[tuple[float, str]]] = {}
        """claim uid -> (when first seen, member) for each member named on it in turn (2+: reassigned)."""
        self.pv_member: dict[str, str] = {}
        """PV name -> the member that serves it (its annotation)."""

    def _claim(self, kind: str, obj: dict[str, Any]) -> None:
        super()._claim(kind, obj)
        member = (obj["metadata"].get("annotations") or {}).get(ANN_MEMBER)
        if kind != "DELETED" and member:
            seen = self.members.setdefault(obj["metadata"]["uid"], [])
            if not seen or seen[-1][1] != member:
                seen.append((time.monotonic(), member))

    def _pv(self, kind: str, obj: dict[str, Any]) -> None:
        super()._pv(kind, obj)
        member = (obj["metadata"].get("annotations") or {}).get(ANN_MEMBER)
        if kind != "DELETED" and member:
            self.pv_member.setdefault(obj["metadata"]["name"], member)

    def figures(self, names: dict[str, str]) -> dict[str, float]:
        wait_for(lambda: all(uid in self.members for uid in names.values()), 30, "every claim's member seen")
        routing = [self.members[uid][0][0] - self.annotated[uid] for uid in names.values()]
        assigned = [self.pv_seen[name] - self.members[uid][-1][0] for name, uid in names.items()]
        return {"routing_p50_s": pct(routing, 50), "routing_p99_s": pct(routing, 99),
                "assign_p50_s": pct(assigned, 50), "assign_p99_s": pct(assigned, 99),
                "reassigned": float(sum(len(self.members[uid]) > 1 for uid in names.values()))}


class Members:
    """The pool's member processes (started), their identities and lease namespace."""

    def __init__(self, b: Bench, namespace: str) -> None:
        self.b, self.namespace = b, namespace
        self.procs = [Appliance(kubeconfig=b.cluster.kubeconfig, export_root=b.work / f"pool-export-{i}",
                                provisioner=PROVISIONER, log_dir=b.work / f"pool-log-{i}",
                                extra=["--log-level=INFO", *b.appliance_extra, f"--pool={POOL}",
                                       f"--server-hostname={address(i)}", f"--leader-elect-namespace={namespace}",
                                       f"--leader-elect-lease-duration={LEASE_DURATION}s",
                                       f"--leader-elect-retry-period={HEARTBEAT}s"])
                      for i in range(MEMBERS)]

    def start(self) -> None:
        for a in self.procs:
            a.log_dir.mkdir(exist_ok=True)
            a.start(wait_ready=False)
        for a in self.procs:
            a.wait_ready()
        self.wait_all_up()

    def identity(self, i: int) -> str:
        return (self.procs[i].export_root / "nfs-provisioner.identity").read_text().strip()

    def wait_all_up(self) -> None:
        """Until every member counts every member up (its ``nfs_provisioner_pool_member_up``)."""
        want = [f'nfs_provisioner_pool_member_up{{address="{address(i)}",member="{self.identity(i)}",'
                f'pool="{POOL}"}} 1.0' for i in range(MEMBERS)]
        wait_for(lambda: all(w in a.get("/metrics")[1] for a in self.procs for w in want), 60,
                 "every pool member counting the three up")

    def saved(self) -> list[float]:
        """PVs saved by each member since its start."""
        return [metric(a.get("/metrics")[1], SAVED) for a in self.procs]

    def cpu(self) -> float:
        return sum(sum(cpu_seconds(a.proc.pid).values()) for a in self.procs if a.proc is not None)

    def close(self) -> None:
        """SIGTERM every member (each must exit 0), then close each whatever the others did."""
        failed: list[SystemExit] = []
        for a in self.procs:
            try:
                if a.proc is not None and a.proc.poll() is None:
                    stop(a)
            except SystemExit as e:
                failed.append(e)
            finally:
                a.close()
        if failed:
            raise failed[0]


def drain(b: Bench, ns: str, n: int, cls: str) -> None:
    """Delete the claims c0..c<n-1> of ``ns``; wait until no PV of ``cls`` is left; delete ``ns``."""
    list(b.pool.map(lambda i: b.api.delete(kube.claims_path(ns, f"c{i}")), range(n)))
    wait_for(lambda: not [p for p in b.api.get(kube.volumes_path())["items"]
                          if p["spec"].get("storageClassName") == cls], 600, f"the PVs of {cls} deleted")
    b.api.delete(f"/api/v1/namespaces/{ns}")


def one_burst(b: Bench, n: int) -> dict[str, float]:
    appliance = b.appliance
    assert appliance.proc is not None
    cpu = sum(cpu_seconds(appliance.proc.pid).values())
    run, ns = provision_run(b.api, b.pool, n=n, cls=b.cls, provisioner=b.provisioner, keep=True)
    run["cpu_ms_per_claim"] = (sum(cpu_seconds(appliance.proc.pid).values()) - cpu) * 1000 / n
    drain(b, ns, n, b.cls)
    return run


def pool_burst(b: Bench, members: Members, n: int) -> tuple[dict[str, float], list[int]]:
    saved, cpu = members.saved(), members.cpu()
    run, ns = provision_run(b.api, b.pool, n=n, cls=CLASS, provisioner=PROVISIONER, keep=True, watcher=PoolWatcher)
    run["cpu_ms_per_claim"] = (members.cpu() - cpu) * 1000 / n
    counts = [round(after - before) for after, before in zip(members.saved(), saved, strict=True)]
    if sum(counts) != n:
        raise SystemExit(f"bench: the pool's members saved {counts} PVs for {n} claims")
    drain(b, ns, n, CLASS)
    return run, counts


def route_around(b: Bench, members: Members, victim: int) -> dict[str, float]:
    """SIGKILL member ``victim``, create :data:`ROUTE_CLAIMS` claims; seconds from the kill (see the module doc)."""
    dead = members.identity(victim)
    ns = new_namespace(b.api, "bench-pool-route")
    w = PoolWatcher(b.api, ns)
    w.start()
    time.sleep(0.3)  # watches established
    members.procs[victim].kill()
    killed = time.monotonic()
    uids = list(b.pool.map(lambda i: str(b.api.create(kube.claims_path(ns), claim_body(f"c{i}", CLASS))
                                         ["metadata"]["uid"]), range(ROUTE_CLAIMS)))
    wait_for(lambda: all(f"pvc-{uid}" in w.pv_seen and f"pvc-{uid}" in w.pv_member and uid in w.members
                         for uid in uids), 300, f"{ROUTE_CLAIMS} PVs with a member killed")
    if any(w.pv_member[f"pvc-{uid}"] == dead for uid in uids):
        raise SystemExit("bench: a PV names the killed member as its server")
    stranded = [uid for uid in uids if w.members[uid][0][1] == dead]
    if not stranded:
        raise SystemExit(f"bench: none of {ROUTE_CLAIMS} claims went to the killed member (counted down before the "
                         "binder handed them over?): nothing measured")
    # their PVs are another member's: their reassignment comes on the claims' watch, maybe after the PV's
    wait_for(lambda: all(len(w.members[uid]) > 1 for uid in stranded), 30, "the reassignments seen")
    w.stop()
    others = [w.pv_seen[f"pvc-{uid}"] - killed for uid in uids if uid not in stranded]
    out = {"stranded": float(len(stranded)),
           "reassigned_first_s": min(w.members[uid][1][0] for uid in stranded) - killed,
           "reassigned_last_s": max(w.members[uid][1][0] for uid in stranded) - killed,
           "route_around_s": max(w.pv_seen[f"pvc-{uid}"] for uid in stranded) - killed,
           "others_last_s": max(others) if others else 0.0}
    print(f"pool: member {address(victim)} killed: {len(stranded)} of {ROUTE_CLAIMS} claims first assigned to it, "
          f"reassigned {out['reassigned_first_s']:.1f}-{out['reassigned_last_s']:.1f} s after the kill, the last one's"
          f" PV at {out['route_around_s']:.1f} s; the other claims' PVs by {out['others_last_s']:.1f} s",
          file=sys.stderr)
    drain(b, ns, ROUTE_CLAIMS, CLASS)
    members.procs[victim].start()
    members.wait_all_up()
    return out


def pool_section(b: Bench) -> dict[str, Any]:
    sizes = [n for n in b.sizes if n <= MAX_N] or [min(b.sizes)]
    out: dict[str, Any] = {"members": MEMBERS, "heartbeat_s": HEARTBEAT, "lease_duration_s": LEASE_DURATION,
                           "route_claims": ROUTE_CLAIMS, "cpus": os.cpu_count(), "loadavg_start": os.getloadavg()}
    with contextlib.suppress(kube_errors.AlreadyExists):  # an earlier run of the section made it
        b.api.create(kube.classes_path(), {"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
                                           "metadata": {"name": CLASS}, "provisioner": PROVISIONER})
    lease_ns = f"bench-pool-leases-{uuid.uuid4().hex[:8]}"
    b.api.create("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": lease_ns}})
    members = Members(b, lease_ns)
    try:
        members.start()
        for n in sizes:
            ones, pools, distribution = [], [], []
            for r in range(b.repeats):
                ones.append(one_burst(b, n))
                run, counts = pool_burst(b, members, n)
                pools.append(run)
                distribution.append(counts)
                print(f"pool N={n} run {r + 1}: pool {run['created_per_s']:.0f} PVC/s created+exported, one appliance "
                      f"{ones[-1]['created_per_s']:.0f}; per member {counts}; handover -> assigned p50 "
                      f"{run['routing_p50_s'] * 1000:.0f} ms, assigned -> PV p50 {run['assign_p50_s'] * 1000:.0f} ms",
                      file=sys.stderr)
            out[str(n)] = row(ones, pools, distribution)
        routes = [route_around(b, members, r % MEMBERS) for r in range(b.repeats)]
        for k in routes[0]:
            put(out, k, [x[k] for x in routes])
    finally:
        members.close()
        b.api.delete(f"/api/v1/namespaces/{lease_ns}")
    out["loadavg_end"] = os.getloadavg()
    return {"pool": out}


def row(ones: list[dict[str, float]], pools: list[dict[str, float]], distribution: list[list[int]]) -> dict[str, Any]:
    r: dict[str, Any] = {"distribution_runs": distribution}
    for k in ("created_per_s", "bound_per_s", "annotated_per_s", "p50_s", "p99_s", "own_p50_s", "own_p99_s",
              "routing_p50_s", "routing_p99_s", "assign_p50_s", "assign_p99_s", "cpu_ms_per_claim", "reassigned"):
        put(r, k, [x[k] for x in pools])
    for k in ("created_per_s", "bound_per_s", "annotated_per_s", "p50_s", "p99_s", "own_p50_s", "own_p99_s",
              "cpu_ms_per_claim"):
        put(r, f"one_{k}", [x[k] for x in ones])
    put(r, "ratio", [p["created_per_s"] / o["created_per_s"] for p, o in zip(pools, ones, strict=True)])
    put(r, "max_min", [max(c) / min(c) if min(c) else float("inf") for c in distribution])
    return r


def show_pool(r: dict[str, Any]) -> None:
    p = r.get("pool")
    if not p:
        return
    load = f"load average {p['loadavg_start'][0]:.1f} at its start, {p['loadavg_end'][0]:.1f} at its end"
    print(f"pool of {p['members']} appliance processes vs one appliance (same control plane, {p['cpus']} cores; "
          f"{load})")
    for n, s in p.items():
        if not n.isdigit():
            continue
        print(f"  N={n} created+exported  pool {fmt(s, 'created_per_s', unit=' PVC/s')}")
        print(f"  N={n}                   one  {fmt(s, 'one_created_per_s', unit=' PVC/s')}")
        print(f"  N={n} pool/one          {fmt(s, 'ratio', unit='x')}  (median of the repeats' pairs)")
        print(f"  N={n} binder handover   pool {fmt(s, 'annotated_per_s', unit=' PVC/s')}; one "
              f"{s['one_annotated_per_s']:.1f}")
        print(f"  N={n} from handover p50 pool {fmt(s, 'own_p50_s', 1000, ' ms')}; one "
              f"{s['one_own_p50_s'] * 1000:.0f} ms  (binder's annotation -> PV created)")
        print(f"  N={n} from handover p99 pool {fmt(s, 'own_p99_s', 1000, ' ms')}; one "
              f"{s['one_own_p99_s'] * 1000:.0f} ms")
        print(f"  N={n}   handover -> assigned p50 {fmt(s, 'routing_p50_s', 1000, ' ms')}, p99 "
              f"{s['routing_p99_s'] * 1000:.0f} ms  (the pool's placement + conditional PATCH)")
        print(f"  N={n}   assigned -> PV p50 {fmt(s, 'assign_p50_s', 1000, ' ms')}, p99 "
              f"{s['assign_p99_s'] * 1000:.0f} ms  (the member's provision)")
        print(f"  N={n} CPU per claim     pool {fmt(s, 'cpu_ms_per_claim', unit=' ms')}; one "
              f"{s['one_cpu_ms_per_claim']:.1f} ms  (appliance processes with their Ganesha and bus)")
        counts = ", ".join("/".join(str(c) for c in d) for d in s["distribution_runs"])
        print(f"  N={n} per member        {counts}  (127.0.0.2/3/4; max/min median {s['max_min']:.2f})")
    print(f"  route-around: a member SIGKILLed, then {p['route_claims']} claims (heartbeat {p['heartbeat_s']} s, down "
          f"after {p['lease_duration_s']} s without one): {fmt(p, 'stranded')} first assigned to it")
    print(f"    reassigned from {fmt(p, 'reassigned_first_s', unit=' s')} to {fmt(p, 'reassigned_last_s', unit=' s')}"
          " after the kill")
    print(f"    all of them provisioned by another member {fmt(p, 'route_around_s', unit=' s')} after the kill; "
          f"the other claims by {p['others_last_s']:.1f} s")

