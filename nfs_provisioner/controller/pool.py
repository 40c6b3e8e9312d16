"""A pool: several instances with the same provisioner name share one class, each claim served by exactly one.

Members publish themselves: one ``coordination.k8s.io/v1`` Lease each (``nfsp-pool-<pool>-<identity>``, label
``nfs-provisioner.io/pool=<pool>``), renewed every ``heartbeat`` seconds with their free space, capabilities
and server address in annotations. A member is *up* while its Lease keeps changing: a Lease not seen to change
for ``member_timeout`` seconds of local observation (clock skew is never trusted), or deleted (a graceful stop),
is *down*.

A claim is bound to a member by one write on the claim: the annotation :data:`ANN_MEMBER`, set by a merge
patch that carries the claim's ``resourceVersion``: the API server applies the first such write and refuses
every other one made from the same version (409), so of members racing to assign a claim exactly one wins and
the others see the winner's choice. Every member computes the same placement (see ``placement``); the member
chosen writes the assignment to itself and provisions at once, the others wait ``heartbeat`` seconds for it and
only then write the same assignment themselves (the chosen member is slow, or down and not yet counted down, or
sees the pool otherwise): one write per claim in the usual case, not one per member, and never a claim left
unassigned. Only the named member provisions. A claim whose member is down and which has no PV yet is
reassigned the same way (the PV is read from the API server first, not from a cache).

A member that was down and comes back still finds the claims it had begun in its in-flight record: the
controller checks the claim's member before anything else (``Provisioning.sync``) and rolls back what it had
made when the claim went to another member; a member that begins a provision reads the claim again *after* its
in-flight record is written and before it creates anything. Two members can still both make a volume only if
one was considered down while it was working (its own renewals failed for ``member_timeout``: it then stops
starting provisions itself); the PV's deterministic name lets one save win, and the other removes its surplus
volume (``Provisioning._surplus``). Ownership after that is the PV's: deletion, expansion and clones are done
by the member whose identity the PV carries.
"""

from __future__ import annotations

import datetime
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from nfs_provisioner.controller import decisions, outcomes, placement
from nfs_provisioner.controller.outcomes import Outcome
from nfs_provisioner.kube import client as kube
from nfs_provisioner.kube import errors

log = logging.getLogger(__name__)

Object = dict[str, Any]

ANN_MEMBER = "nfs-provisioner.io/pool-member"
"""On a claim: the member that provisions it. On a PV: the member that serves it (its identity)."""
ANN_POOL = "nfs-provisioner.io/pool"
"""On a PV: the pool it was made in."""
LABEL_POOL = "nfs-provisioner.io/pool"
"""On a member's Lease: its pool."""
ANN_PROVISIONER = "nfs-provisioner.io/provisioner"
ANN_FREE = "nfs-provisioner.io/free-bytes"
ANN_CAPABILITIES = "nfs-provisioner.io/capabilities"
ANN_ADDRESS = "nfs-provisioner.io/address"
PARAM_MEMBER = "poolMember"
"""StorageClass parameter pinning its claims to one member (its identity or server address)."""


@dataclass(frozen=True)
class Status:
    """What a member publishes about itself."""

    free_bytes: int
    capabilities: frozenset[str] = field(default_factory=frozenset)
    address: str = ""


@dataclass(frozen=True)
class Demand:
    """What a claim needs from a member."""

    requested: int
    needs: frozenset[str] = field(default_factory=frozenset)
    home: str | None = None
    """The member the claim must go to (a clone: the member serving the source), else None."""
    home_why: str = ""
    """Why (``the clone source ns/name``)."""
    refusal: str | None = None
    """No member can serve it, for this reason (e.g. a clone whose source has no pool member on its PV)."""


@dataclass(frozen=True)
class Route:
    """The answer of :meth:`Pool.route`: provision here (``mine``), or what the work queue does instead."""

    mine: bool
    claim: Object
    outcome: Outcome = outcomes.DONE
    refusal: str | None = None
    """A reason to tell the user on the claim (one member says it: ``report``)."""
    report: bool = False
    held: bool = False
    """Still this member's claim, only not now (its own Lease is not renewed): keep what was begun."""


def lease_name(pool: str, identity: str) -> str:
    return f"nfsp-pool-{pool}-{identity}"


def _micro_now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _age(renew_time: object) -> float:
    """Seconds since a Lease's ``renewTime`` by the wall clock (0 when unreadable or in the future)."""
    try:
        t = datetime.datetime.strptime(str(renew_time), "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=datetime.UTC)
    except ValueError:
        return 0.0
    return max(0.0, (datetime.datetime.now(datetime.UTC) - t).total_seconds())


class Pool:
    """One member's view of its pool: publishes itself, watches the others, routes claims."""

    def __init__(self, api: kube.Client, *, pool: str, provisioner: str, identity: str, namespace: str,
                 status: Callable[[], Status], demand: Callable[[Object, Object], Demand],
                 heartbeat: float = 2.0, member_timeout: float = 15.0, owner: Object | None = None,
                 registry: CollectorRegistry | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.api, self.pool, self.provisioner, self.identity = api, pool, provisioner, identity
        self.namespace = namespace
        self.owner = owner
        """An ownerReference (an object in ``namespace``) our Lease carries: deleted with it by the garbage
        collector, e.g. the member's own Service at ``helm uninstall``, when this member may no longer delete
        its Lease itself."""
        self.status, self.demand = status, demand
        self.heartbeat, self.member_timeout = heartbeat, member_timeout
        self._clock = clock
        self._lock = threading.Lock()
        self._members: dict[str, placement.Member] = {}
        self._seen: dict[str, tuple[str, float]] = {}
        """member -> (its Lease's resourceVersion, local time it was first seen with it)."""
        self._renewed = -1e18
        """Local time of our last successful renewal."""
        self._deferred: dict[str, float] = {}
        """claim uid -> local time this member first left its assignment to the member placed (see :meth:`_defer`)."""
        self._listed = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.assignments = Counter("nfs_provisioner_pool_assignments", "Claims this member assigned to a pool "
                                   "member (first assignments and reassignments), by member.",
                                   ["pool", "member", "kind"], registry=registry)
        if registry is not None:
            registry.register(_MemberCollector(self))

    # ------------------------------------------------------------------ membership

    def start(self) -> None:
        """Publish and list once (so the first claims are routed with a view), then keep doing it."""
        self._tick()
        self._thread = threading.Thread(target=self._loop, name="pool", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop renewing and delete our Lease: the others route around this member at once."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
        try:
            self.api.delete(kube.leases_path(self.namespace, lease_name(self.pool, self.identity)))
        except errors.KubeError as e:
            log.info("pool %s: could not delete this member's Lease (it expires instead): %s", self.pool, e)

    def _loop(self) -> None:
        while not self._stop.wait(self.heartbeat):
            self._tick()

    def _tick(self) -> None:
        try:
            self._renew()
        except (errors.KubeError, OSError) as e:
            log.warning("pool %s: cannot renew this member's Lease: %s", self.pool, e)
        try:
            self._refresh()
        except (errors.KubeError, OSError) as e:
            log.warning("pool %s: cannot list the members: %s", self.pool, e)

    def _lease(self, status: Status) -> Object:
        lease: Object = {
            "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": lease_name(self.pool, self.identity), "namespace": self.namespace,
                         "labels": {LABEL_POOL: self.pool},
                         "annotations": {ANN_PROVISIONER: self.provisioner, ANN_FREE: str(status.free_bytes),
                                         ANN_CAPABILITIES: ",".join(sorted(status.capabilities)),
                                         ANN_ADDRESS: status.address}},
            "spec": {"holderIdentity": self.identity, "leaseDurationSeconds": max(1, round(self.member_timeout)),
                     "renewTime": _micro_now()},
        }
        if self.owner is not None:
            lease["metadata"]["ownerReferences"] = [self.owner]
        return lease

    def _renew(self) -> None:
        started = self._clock()
        lease = self._lease(self.status())
        path = kube.leases_path(self.namespace, lease["metadata"]["name"])
        try:
            meta = {k: v for k, v in lease["metadata"].items() if k in ("annotations", "ownerReferences")}
            self.api.patch(path, {"metadata": meta, "spec": lease["spec"]}, patch_type=kube.MERGE_PATCH)
        except errors.NotFound:
            self.api.create(kube.leases_path(self.namespace), lease)
        self._renewed = started

    def _refresh(self) -> None:
        listed = self.api.get(kube.leases_path(self.namespace), labelSelector=f"{LABEL_POOL}={self.pool}")
        now = self._clock()
        members: dict[str, placement.Member] = {}
        seen: dict[str, tuple[str, float]] = {}
        for lease in listed.get("items") or []:
            ann = decisions.annotations_of(lease)
            name = str((lease.get("spec") or {}).get("holderIdentity") or "")
            if not name or ann.get(ANN_PROVISIONER) != self.provisioner:
                continue
            version = str(decisions.meta(lease).get("resourceVersion", ""))
            before = self._seen.get(name)
            if before is not None and before[0] == version:
                seen[name] = before
            elif before is not None:
                seen[name] = (version, now)
            else:  # first sight: as old as its renewTime says, never older than a timeout
                age = min(_age((lease.get("spec") or {}).get("renewTime")), self.member_timeout)
                seen[name] = (version, now - age)
            try:
                free = int(ann.get(ANN_FREE, "0"))
            except ValueError:
                free = 0
            caps = frozenset(c for c in ann.get(ANN_CAPABILITIES, "").split(",") if c)
            up = name == self.identity or now - seen[name][1] < self.member_timeout
            members[name] = placement.Member(name=name, free_bytes=free, capabilities=caps,
                                             address=ann.get(ANN_ADDRESS, ""), up=up)
        with self._lock:
            self._members, self._seen = members, seen
        self._listed.set()

    def members(self) -> list[placement.Member]:
        """The last view of the pool; this member always counts as up with its current status."""
        with self._lock:
            members = dict(self._members)
        mine = members.get(self.identity)
        status = self.status()
        members[self.identity] = placement.Member(
            name=self.identity, free_bytes=status.free_bytes, capabilities=status.capabilities,
            address=status.address or (mine.address if mine else ""), up=True)
        return list(members.values())

    def _down_in(self, member: str) -> float:
        """Seconds until ``member`` is counted down if its Lease stops changing now (at most a timeout)."""
        with self._lock:
            seen = self._seen.get(member)
        if seen is None:
            return self.member_timeout
        return min(self.member_timeout, max(0.0, self.member_timeout - (self._clock() - seen[1])))

    def fresh(self) -> bool:
        """Whether our own Lease was renewed recently enough that no other member can count us down."""
        return self._clock() - self._renewed < self.member_timeout - self.heartbeat

    # ------------------------------------------------------------------ routing

    def route(self, claim: Object, storage_class: Object, pv_name: str) -> Route:
        """Whether this member provisions ``claim`` now; assigns it (or reassigns it from a member that is down)
        when needed, by one conditional write on the claim."""
        assigned = decisions.annotations_of(claim).get(ANN_MEMBER)
        uid = str(decisions.meta(claim).get("uid", ""))
        if assigned:
            with self._lock:
                self._deferred.pop(uid, None)
        if assigned == self.identity:
            if not self.fresh():
                return Route(False, claim, outcomes.retry_after(
                    self.heartbeat, f"pool {self.pool}: this member's Lease is not renewed; not starting provisions"),
                    held=True)
            return Route(True, claim)
        members = {m.name: m for m in self.members()}
        if assigned:
            member = members.get(assigned)
            if member is not None and member.up:  # look again when it could be counted down
                return Route(False, claim, outcomes.retry_after(self._down_in(assigned) + self.heartbeat,
                                                                f"pool {self.pool}: assigned to member {assigned}"))
            try:
                self.api.get(kube.volumes_path(pv_name))
                return Route(False, claim)  # provisioned: the PV's owner serves it from now on
            except errors.NotFound:
                pass
        demand = self.demand(claim, storage_class)
        if demand.refusal is not None:
            return self._refused(claim, demand.refusal, list(members.values()))
        pinned = str((storage_class.get("parameters") or {}).get(PARAM_MEMBER) or "") or None
        if demand.home is not None and pinned is not None and pinned not in (
                demand.home, members.get(demand.home, placement.Member(demand.home, 0)).address):
            return self._refused(claim, f"{demand.home_why} is served by member {demand.home}, but the class pins "
                                 f"member {pinned}: a clone is made on its source's member; copying between members "
                                 "is not supported", list(members.values()))
        chosen = placement.place(uid, members.values(), requested=demand.requested, needs=demand.needs,
                                 pinned=demand.home or pinned,
                                 pinned_by=demand.home_why if demand.home else "the class's poolMember")
        if chosen.member is None:
            return self._refused(claim, f"pool {self.pool}: {chosen.reason}", list(members.values()))
        if chosen.member != self.identity and (wait := self._defer(uid)) > 0:
            return Route(False, claim, outcomes.retry_after(
                wait, f"pool {self.pool}: placed on member {chosen.member}, which assigns it to itself"))
        return self._assign(claim, chosen.member, previous=assigned)

    def _defer(self, uid: str) -> float:
        """Seconds this member still leaves the assignment of claim ``uid`` to the member placement chose (one
        ``heartbeat`` from the first time it did); 0: write it now. The entry of a claim is dropped once the claim
        names a member (:meth:`route`, :meth:`_assign`); entries of claims deleted unassigned, once more than 1024
        are kept and they are a member timeout old."""
        now = self._clock()
        with self._lock:
            first = self._deferred.setdefault(uid, now)
            if len(self._deferred) > 1024:
                self._deferred = {u: t for u, t in self._deferred.items() if now - t < self.member_timeout}
                self._deferred.setdefault(uid, first)
        return max(0.0, first + self.heartbeat - now)

    def _refused(self, claim: Object, reason: str, members: list[placement.Member]) -> Route:
        up = sorted(m.name for m in members if m.up)
        return Route(False, claim, outcomes.retry(reason), refusal=reason, report=bool(up) and up[0] == self.identity)

    def _assign(self, claim: Object, member: str, *, previous: str | None) -> Route:
        m = decisions.meta(claim)
        patch = {"metadata": {"resourceVersion": m.get("resourceVersion"), "annotations": {ANN_MEMBER: member}}}
        try:
            updated = self.api.patch(kube.claims_path(m["namespace"], m["name"]), patch, patch_type=kube.MERGE_PATCH)
        except errors.NotFound:
            return Route(False, claim)
        except errors.Conflict:  # another member assigned it first (or the claim changed): look again
            return Route(False, claim, outcomes.retry_after(0.2, "claim changed while assigning it"))
        with self._lock:
            self._deferred.pop(str(m.get("uid", "")), None)
        updated.setdefault("kind", "PersistentVolumeClaim")
        updated.setdefault("apiVersion", "v1")
        kind = "reassigned" if previous else "assigned"
        self.assignments.labels(self.pool, member, kind).inc()
        key = decisions.claim_key(claim)
        if previous:
            log.info("claim %s: member %s is down and made no PV; reassigned to %s", key, previous, member)
        else:
            log.info("claim %s: assigned to pool member %s", key, member)
        if member == self.identity:
            return Route(True, updated)
        return Route(False, updated, outcomes.retry_after(self._down_in(member) + self.heartbeat,
                                                          f"assigned to member {member}"))

    def confirm(self, claim: Object) -> bool:
        """After the in-flight record is written, before anything is made: does the claim, read from the API
        server, still name this member? (A member counted down meanwhile may have lost it.)"""
        m = decisions.meta(claim)
        current = kube.read_claim(self.api, m["namespace"], m["name"])
        return (current is not None and decisions.meta(current).get("uid") == m.get("uid")
                and decisions.annotations_of(current).get(ANN_MEMBER) == self.identity)


class _MemberCollector(Collector):
    """``nfs_provisioner_pool_member_up`` and ``..._free_bytes`` per member, as this member sees them."""

    def __init__(self, pool: Pool) -> None:
        self._pool = pool

    def collect(self) -> Iterator[GaugeMetricFamily]:
        up = GaugeMetricFamily("nfs_provisioner_pool_member_up", "1 while a pool member's Lease keeps being "
                               "renewed, 0 once it is counted down.", labels=["pool", "member", "address"])
        free = GaugeMetricFamily("nfs_provisioner_pool_member_free_bytes", "Free bytes a pool member published.",
                                 labels=["pool", "member"])
        for m in self._pool.members():
            up.add_metric([self._pool.pool, m.name, m.address], 1 if m.up else 0)
            free.add_metric([self._pool.pool, m.name], m.free_bytes)
        yield up
        yield free
