"""A pool of three appliance processes (``--pool``) on one class, out of cluster, against the real control plane
and real Ganesha servers: every claim provisioned exactly once, also when a member is SIGKILLed mid-burst and
restarted; ownership of deletion by the member on the PV; the figures (rate, distribution, route-around time).

Each member has its own export root, Ganesha port and server address (127.0.0.2-4: what its PVs name)."""

from __future__ import annotations

import collections
import contextlib
import datetime
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
from kubernetes import client

from nfs_provisioner.controller import pool as pool_mod
from tests import kubecluster, wait
from tests.appliance_env import Appliance
from tests.test_faults import ganesha_pid

pytestmark = [pytest.mark.e2e, pytest.mark.kube, pytest.mark.ganesha, pytest.mark.fault]

LEASE_DURATION = 6
"""Seconds without a heartbeat after which a member is down (--leader-elect-lease-duration)."""


@dataclass
class Pool:
    members: list[Appliance]
    provisioner: str
    name: str
    namespace: str
    cls: str
    core: client.CoreV1Api

    def identity(self, a: Appliance) -> str:
        return (a.export_root / "nfs-provisioner.identity").read_text().strip()


def _make_claims(core: client.CoreV1Api, namespace: str, cls: str, names: list[str]) -> None:
    def one(n: str) -> None:
        core.create_namespaced_persistent_volume_claim(namespace, client.V1PersistentVolumeClaim(
            metadata=client.V1ObjectMeta(name=n),
            spec=client.V1PersistentVolumeClaimSpec(
                access_modes=["ReadWriteMany"], storage_class_name=cls,
                resources=client.V1VolumeResourceRequirements(requests={"storage": "1Mi"}))))
    with ThreadPoolExecutor(8) as ex:
        list(ex.map(one, names))


def _claims(core: client.CoreV1Api, namespace: str, prefix: str) -> list[client.V1PersistentVolumeClaim]:
    return [c for c in core.list_namespaced_persistent_volume_claim(namespace).items
            if c.metadata.name.startswith(prefix)]


def _bound(core: client.CoreV1Api, namespace: str, prefix: str, n: int) -> bool:
    claims = _claims(core, namespace, prefix)
    return len(claims) == n and all(c.status.phase == "Bound" for c in claims)


def _volumes(root: Path) -> dict[str, set[str]]:
    """What a member's root holds of each kind: directories, records, export files, in-flight records."""
    def names(d: Path, suffix: str = "") -> set[str]:
        return {p.name.removesuffix(suffix) for p in d.iterdir() if p.name.startswith("pvc-")} if d.is_dir() else set()
    journal = root / ".provisioning"  # <claim uid>.json: named here as the claim's PV would be
    in_flight = {f"pvc-{p.name.removesuffix('.json')}" for p in journal.iterdir()
                 if p.name.endswith(".json") and not p.name.startswith(".")} if journal.is_dir() else set()
    return {"directories": names(root), "records": names(root / ".volumes", ".json"),
            "exports": names(root / ".ganesha" / "exports.d", ".conf"), "in flight": in_flight}


@pytest.fixture(scope="module")
def pool(cluster: kubecluster.Cluster, core: client.CoreV1Api, storage: client.StorageV1Api,
         tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pool]:
    unique = uuid.uuid4().hex[:8]
    namespace, cls, provisioner, name = f"pool-{unique}", f"pool-{unique}", f"example.com/pool-{unique}", f"p{unique}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=namespace)))
    storage.create_storage_class(client.V1StorageClass(metadata=client.V1ObjectMeta(name=cls),
                                                       provisioner=provisioner))
    tmp = tmp_path_factory.mktemp("pool")
    members = [Appliance(kubeconfig=cluster.kubeconfig, export_root=tmp / f"export-{i}", provisioner=provisioner,
                         log_dir=tmp / f"log-{i}",
                         extra=[f"--pool={name}", f"--server-hostname=127.0.0.{i + 2}",
                                f"--leader-elect-namespace={namespace}",
                                f"--leader-elect-lease-duration={LEASE_DURATION}s", "--leader-elect-retry-period=1s",
                                "--log-level=INFO"])
               for i in range(3)]
    try:
        for a in members:
            a.log_dir.mkdir()
            a.start(wait_ready=False)
        for a in members:
            a.wait_ready()
        yield Pool(members, provisioner, name, namespace, cls, core)
    finally:
        for a in members:
            a.close()
        with contextlib.suppress(Exception):
            storage.delete_storage_class(cls)
        with contextlib.suppress(Exception):
            core.delete_namespace(namespace)


def test_members_publish_themselves(pool: Pool, kapi: object) -> None:
    from nfs_provisioner.kube import client as kube

    assert isinstance(kapi, kube.Client)
    leases = kapi.get(kube.leases_path(pool.namespace), labelSelector=f"{pool_mod.LABEL_POOL}={pool.name}")["items"]
    published = {lease["spec"]["holderIdentity"]: lease["metadata"]["annotations"] for lease in leases}
    assert set(published) == {pool.identity(a) for a in pool.members}
    for i, a in enumerate(pool.members):
        ann = published[pool.identity(a)]
        assert ann[pool_mod.ANN_ADDRESS] == f"127.0.0.{i + 2}"
        assert int(ann[pool_mod.ANN_FREE]) > 0
        assert ann[pool_mod.ANN_PROVISIONER] == pool.provisioner
    def all_up() -> bool:  # each member sees all three (the first one started listed before the others published)
        texts = [a.get("/metrics")[1] for a in pool.members]
        return all(f'nfs_provisioner_pool_member_up{{address="127.0.0.{i + 2}",member="{pool.identity(a)}",'
                   f'pool="{pool.name}"}} 1.0' in text for text in texts for i, a in enumerate(pool.members))
    wait.until(all_up, timeout=10, what=lambda: pool.members[0].get("/metrics")[1][-3000:])


def test_rate_of_a_pool_of_three_vs_one_appliance(pool: Pool, cluster: kubecluster.Cluster,
                                                  storage: client.StorageV1Api, tmp_path: Path) -> None:
    n, core = 100, pool.core
    started = time.monotonic()
    _make_claims(core, pool.namespace, pool.cls, [f"rate-{i}" for i in range(n)])
    wait.until(lambda: _bound(core, pool.namespace, "rate-", n), timeout=400, interval=0.5,
               what=f"{n} claims Bound by the pool")
    pool_s = time.monotonic() - started
    per_member = collections.Counter(c.metadata.annotations.get(pool_mod.ANN_MEMBER)
                                     for c in _claims(core, pool.namespace, "rate-"))

    single = f"{pool.cls}-one"
    provisioner = f"{pool.provisioner}-one"
    storage.create_storage_class(client.V1StorageClass(metadata=client.V1ObjectMeta(name=single),
                                                       provisioner=provisioner))
    one = Appliance(kubeconfig=cluster.kubeconfig, export_root=tmp_path / "export", provisioner=provisioner,
                    log_dir=tmp_path, extra=["--log-level=INFO"])
    try:
        one.start()
        started = time.monotonic()
        _make_claims(core, pool.namespace, single, [f"one-{i}" for i in range(n)])
        wait.until(lambda: _bound(core, pool.namespace, "one-", n), timeout=400, interval=0.5,
                   what=f"{n} claims Bound by one appliance")
        one_s = time.monotonic() - started
        print(f"\nFIGURE rate: {n} claims Bound by a pool of 3 in {pool_s:.1f}s ({n / pool_s:.1f}/s), "
              f"by one appliance in {one_s:.1f}s ({n / one_s:.1f}/s); pool distribution {dict(per_member)}")
        for prefix in ("rate-", "one-"):
            for c in _claims(core, pool.namespace, prefix):
                core.delete_namespaced_persistent_volume_claim(c.metadata.name, pool.namespace)
        wait.until(lambda: not [p for p in core.list_persistent_volume().items
                                if p.spec.storage_class_name in (pool.cls, single)],
                   timeout=400, interval=0.5, what="the rate test's PVs deleted")
    finally:
        one.close()
        storage.delete_storage_class(single)
    assert len(per_member) == 3 and all(v >= n // 6 for v in per_member.values()), per_member


def test_300_claims_exactly_once_with_a_member_killed_mid_burst(pool: Pool) -> None:
    core, ns, n = pool.core, pool.namespace, 300
    identities = [pool.identity(a) for a in pool.members]
    victim = pool.members[1]
    dead = identities[1]
    names = [f"c{i:03d}" for i in range(n)]
    started = time.monotonic()
    _make_claims(core, ns, pool.cls, names[: n // 2])
    # Halfway through the burst: freeze the victim's Ganesha, so that its provisions stop inside AddExport with
    # their in-flight record, directory and volume record written and no PV; then SIGKILL it all, as a node's
    # death would. Its claims must go to the others, and on its return it must undo exactly those.
    ganesha = psutil.Process(ganesha_pid(victim))
    wait.until(lambda: any(c.status.phase == "Bound" for c in _claims(core, ns, "c")), timeout=60, interval=0.05,
               what="the burst under way")
    ganesha.suspend()
    with ThreadPoolExecutor(1) as ex:  # the second half of the burst arrives meanwhile
        second_half = ex.submit(_make_claims, core, ns, pool.cls, names[n // 2:])
        wait.until(lambda: len(_volumes(victim.export_root)["in flight"]) >= 3, timeout=60, interval=0.01,
                   what="provisions of the victim in flight")
        victim.kill()
        in_flight_at_kill = _volumes(victim.export_root)["in flight"]
        killed, killed_at = time.monotonic(), datetime.datetime.now()  # the logs' clock: local time
        second_half.result()

    def stranded() -> list[str]:
        return [c.metadata.name for c in _claims(core, ns, "c")
                if c.status.phase != "Bound" and (c.metadata.annotations or {}).get(pool_mod.ANN_MEMBER) == dead]
    first_stranded = stranded()
    wait.until(lambda: not stranded(), timeout=120, interval=0.2, what=lambda: f"claims of the dead member "
               f"reassigned (still {stranded()[:5]}...)")
    seen_routed = time.monotonic() - killed
    wait.until(lambda: _bound(core, ns, "c", n), timeout=600, interval=0.5,
               what=lambda: f"{n} claims Bound ({sum(c.status.phase == 'Bound' for c in _claims(core, ns, 'c'))})")
    all_bound = time.monotonic() - started
    victim.start()  # back: it must undo what it had begun for claims that went elsewhere, and nothing more
    wait.until(lambda: not _volumes(victim.export_root)["in flight"], timeout=60, interval=0.2,
               what=lambda: f"the restarted member's in-flight records settled: {_volumes(victim.export_root)}")
    undone = victim.text().count("rolled back volume")  # its claims' PVs were saved by others meanwhile
    assert 1 <= undone <= len(in_flight_at_kill), victim.log()

    claims = _claims(core, ns, "c")
    pvs = {p.metadata.name: p for p in core.list_persistent_volume().items if p.spec.storage_class_name == pool.cls}
    assert len(claims) == n and all(c.status.phase == "Bound" for c in claims)
    assert len(pvs) == n
    for c in claims:  # exactly once: the claim's one PV, by its deterministic name
        assert c.spec.volume_name == f"pvc-{c.metadata.uid}"
        pv = pvs[c.spec.volume_name]
        owner = pv.metadata.annotations["Provisioner_Id"]
        assert pv.metadata.annotations[pool_mod.ANN_MEMBER] == owner
        assert pv.metadata.annotations[pool_mod.ANN_POOL] == pool.name
        assert pv.spec.nfs.server == f"127.0.0.{identities.index(owner) + 2}"
    # Every root holds exactly the volumes its PVs name: no second directory, record or export anywhere.
    for i, a in enumerate(pool.members):
        want = {name for name, pv in pvs.items() if pv.metadata.annotations["Provisioner_Id"] == identities[i]}
        wait.until(lambda a=a, want=want: _volumes(a.export_root) == {
            "directories": want, "records": want, "exports": want, "in flight": set()}, timeout=30,
            what=lambda a=a, want=want: f"member {a.export_root.name} holding exactly its "
                                        f"{len(want)} volumes: {_summary(_volumes(a.export_root), want)}")
    per_member = collections.Counter(pv.metadata.annotations["Provisioner_Id"] for pv in pvs.values())
    moves = [datetime.datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f") for a in pool.members
             for line in a.text().splitlines() if "reassigned to" in line]
    reassigned = len(moves)
    first, last = ((min(moves) - killed_at).total_seconds(), (max(moves) - killed_at).total_seconds()) if moves \
        else (-1.0, -1.0)
    print(f"\nFIGURE burst: {n} claims, member {dead[:8]} SIGKILLed after {n // 2} were created; "
          f"{len(first_stranded)} of its claims were pending at the kill, {len(in_flight_at_kill)} in flight in "
          f"its journal, {undone} of those undone after its restart; its claims reassigned from "
          f"{first:.1f}s to {last:.1f}s after the kill (member timeout {LEASE_DURATION}s, heartbeat 1s; the test saw "
          f"none left {seen_routed:.1f}s after it); all {n} Bound in {all_bound:.1f}s; "
          f"volumes per member {[per_member[i] for i in identities]}; {reassigned} reassignments logged")
    assert all(per_member[i] > 0 for i in identities)
    assert first_stranded and reassigned, "the kill stranded no claim: nothing was proven about routing around it"
    # never before the member could be counted down (its last heartbeat was at most 1 s before the kill), and soon
    assert first >= LEASE_DURATION - 1 and last < 4 * LEASE_DURATION, (first, last)

    # Deletion by each volume's owner: every PV and every volume gone from every root.
    for c in claims:
        core.delete_namespaced_persistent_volume_claim(c.metadata.name, ns)
    wait.until(lambda: not [p for p in core.list_persistent_volume().items if p.spec.storage_class_name == pool.cls],
               timeout=600, interval=0.5, what="every PV deleted")
    for a in pool.members:
        assert _volumes(a.export_root) == {"directories": set(), "records": set(), "exports": set(),
                                           "in flight": set()}


def _summary(have: dict[str, set[str]], want: set[str]) -> str:
    return "; ".join(f"{k}: {len(v)} (extra {sorted(v - want)[:3]}, missing {sorted(want - v)[:3]})"
                     for k, v in have.items())
