"""A pool of pods on the local kubelet node (issue 29): `helm install` with replicas=3 and pool=NAME, each
member's export root a local PV of its own. Each member's PVs name its own Service's ClusterIP (a Service per
StatefulSet pod); claims of the one class go to exactly one member each; data written and read from the node's
network namespace through each member's Service; one member's pod deleted: its volumes are served again at the
same address once it is back; the member kept down (scaled down): claims made meanwhile go to the other members.
Only the chart's RBAC is used: the pool's Lease verbs (create, list, patch, delete) are each seen to work.

Every request to a pod or Service address runs inside the node's network namespace: those addresses exist
nowhere else."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import pytest
from kubernetes import client

from nfs_provisioner.controller.pool import ANN_ADDRESS, ANN_MEMBER, LABEL_POOL, lease_name
from tests.support import kubecluster, wait
from tests.support.ganesha_env import Client
from tests.support.helm_env import CHART, Helm
from tests.support.helm_node import claim, local_pv, manifest_objects, uninstall_removes_everything
from tests.support.incluster import describe_pod, figure, nfs_roundtrip, pod_log, pod_ready
from tests.support.kubenode import Node

pytestmark = [pytest.mark.node, pytest.mark.kube, pytest.mark.container, pytest.mark.ganesha, pytest.mark.helm]

RELEASE = "nfspool"
FULLNAME = f"{RELEASE}-nfs-provisioner"
POOL = "store"
MEMBERS = 3
CLAIMS = 20
"""Enough that each member gets some: a member gets none with probability 3 * (2/3)^20 < 0.1 %."""
DURING = 3
"""Claims made while the last member is down."""
PODS = [f"{FULLNAME}-{i}" for i in range(MEMBERS)]


def bound_all(core: client.CoreV1Api, namespace: str, names: list[str]) -> dict[str, client.V1PersistentVolume]:
    """Claim name -> its PV, once every claim is Bound."""
    def volumes() -> dict[str, str] | None:
        claims = {c.metadata.name: c for c in core.list_namespaced_persistent_volume_claim(namespace).items}
        got = {n: claims[n].spec.volume_name for n in names if n in claims and claims[n].status.phase == "Bound"}
        return got if len(got) == len(names) else None

    return {n: core.read_persistent_volume(pv) for n, pv in wait.until(
        volumes, timeout=120, what=lambda: f"claims {names} Bound").items()}


def member_up(node: Node, pod_ip: str, member: str) -> str | None:
    """``nfs_provisioner_pool_member_up`` of ``member`` as the member at ``pod_ip`` sees it (None: not listed),
    from its /metrics, inside the node's network namespace."""
    for line in node.http_get(f"http://{pod_ip}:9090/metrics").splitlines():
        if line.startswith("nfs_provisioner_pool_member_up{") and f'member="{member}"' in line:
            return line.rsplit(" ", 1)[1]
    return None


def read_again(node: Node, server: str, files: list[tuple[str, bytes]]) -> None:
    """Each volume's file written before, read again through ``server`` (retried while the server comes up)."""
    nfs = Client(host=server, version=4, netns=node.netns)
    for path, data in files:
        got = wait.until(lambda p=path: nfs.cat(f"{p}/before").stdout or None, timeout=60, interval=0.2,
                         what=lambda p=path: f"{p}/before read again through {server}: {nfs.cat(f'{p}/before')}")
        assert got == data, path


def pool_leases(coordination: client.CoordinationV1Api, namespace: str) -> dict[str, client.V1Lease]:
    return {lease.metadata.name: lease for lease in coordination.list_namespaced_lease(
        namespace, label_selector=f"{LABEL_POOL}={POOL}").items}


def test_a_pool_of_three_pods_each_behind_its_own_service(
        cluster: kubecluster.Cluster, core: client.CoreV1Api, api_client: client.ApiClient, kube_node: Node,
        image: str, namespace: str, tmp_path: Path) -> None:
    node = kube_node
    coordination = client.CoordinationV1Api(api_client)
    helm = Helm(tmp_path / "helm-home", kubeconfig=cluster.kubeconfig)
    cluster.kubectl("label", "namespace", namespace, "pod-security.kubernetes.io/enforce=privileged")
    disks = [tmp_path / f"disk{i}" for i in range(MEMBERS)]
    export_pvs = [f"export-{uuid.uuid4().hex[:8]}" for _ in range(MEMBERS)]
    for disk, pv_name, pod in zip(disks, export_pvs, PODS, strict=True):
        disk.mkdir()
        cluster.kubectl("apply", "-f", "-", input=json.dumps(local_pv(pv_name, disk, node, namespace,
                                                                      f"export-volume-{pod}")))
    klass = f"helm-pool-{uuid.uuid4().hex[:8]}"
    values = tmp_path / "values.json"
    # Graceless: the restarted member serves its volumes' recorded client without waiting out a grace period.
    values.write_text(json.dumps({"replicas": MEMBERS, "pool": POOL, "gracePeriod": 0,
                                  "persistence": {"storageClass": "-"}, "storageClass": {"name": klass}}))
    kept_pvs: list[str] = []
    try:
        started = time.monotonic()
        out = helm("install", RELEASE, str(CHART), "-n", namespace, "-f", str(values), "--wait", "--timeout",
                   "240s", check=False)
        assert out.returncode == 0, out.stderr + "\n" + "\n".join(describe_pod(core, namespace, p, node)
                                                                  for p in PODS)
        figure(f"pool of {MEMBERS}: helm install --wait to every pod Ready (s)", time.monotonic() - started)
        ips = {pod: core.read_namespaced_service(pod, namespace).spec.cluster_ip for pod in PODS}
        identity = {(d / "nfs-provisioner.identity").read_text().strip(): pod for d, pod in zip(disks, PODS,
                                                                                                  strict=True)}
        disk_of = dict(zip(PODS, disks, strict=True))
        # Each member publishes its own Service's ClusterIP (create + patch of its Lease), and sees the others (list).
        leases = wait.until(lambda: (ls := pool_leases(coordination, namespace)) and len(ls) == MEMBERS and ls,
                            timeout=60, what=lambda: f"the pool's Leases: {list(pool_leases(coordination, namespace))}")
        for ident, pod in identity.items():
            lease = leases[lease_name(POOL, ident)]
            assert lease.metadata.annotations[ANN_ADDRESS] == ips[pod], (pod, lease.metadata.annotations, ips)
            # Owned by the member's Service: the garbage collector removes it at helm uninstall.
            (owner,) = lease.metadata.owner_references
            assert (owner.kind, owner.name, owner.uid) == ("Service", pod, core.read_namespaced_service(
                pod, namespace).metadata.uid)
        version = leases[lease_name(POOL, next(iter(identity)))].metadata.resource_version
        wait.until(lambda: pool_leases(coordination, namespace)[lease_name(POOL, next(iter(identity)))]
                   .metadata.resource_version != version, timeout=30, what="a Lease renewed (patched)")

        names = [f"c{i}" for i in range(CLAIMS)]
        made = time.monotonic()
        for n in names:
            cluster.kubectl("apply", "-f", "-", input=json.dumps(claim(n, namespace, klass)))
        pvs = bound_all(core, namespace, names)
        figure(f"{CLAIMS} claims of the pool's class Bound after create (s)", time.monotonic() - made)
        kept_pvs += [pv.metadata.name for pv in pvs.values()]
        member = {n: identity[pv.metadata.annotations[ANN_MEMBER]] for n, pv in pvs.items()}
        spread = {pod: sum(1 for m in member.values() if m == pod) for pod in PODS}
        figure(f"{CLAIMS} claims per member", json.dumps(spread))
        assert all(spread.values()), spread  # equal free space (one filesystem under all): ties spread
        data = {}
        for n, pv in pvs.items():
            pod = member[n]
            assert pv.spec.nfs.server == ips[pod], (n, pv.spec.nfs.server, ips)
            # Exactly one member has the volume's directory.
            assert [d for d in disks if (d / pv.metadata.name).is_dir()] == [disk_of[pod]], n
            data[n] = nfs_roundtrip(node, ips[pod], pv.spec.nfs.path, name="before")
            assert (disk_of[pod] / pv.metadata.name / "before").read_bytes() == data[n]

        # The last member's pod deleted: it stops gracefully (its Lease deleted) and comes back on its claim behind the
        # same Service address, with a new pod IP; every volume of it is read again there.
        down = PODS[-1]
        (down_identity,) = [i for i, p in identity.items() if p == down]
        theirs = [n for n, pod in member.items() if pod == down]
        before = core.read_namespaced_pod(down, namespace)
        deleted = time.monotonic()
        core.delete_namespaced_pod(down, namespace)
        wait.until(lambda: lease_name(POOL, down_identity) not in pool_leases(coordination, namespace), timeout=60,
                   interval=0.1, what=f"the Lease of {down} deleted at its graceful stop")
        figure("pod deleted to its Lease gone (s)", time.monotonic() - deleted)
        back = wait.until(lambda: (p := pod_ready(core, namespace, down)) and p.metadata.uid != before.metadata.uid
                          and p, timeout=180, what=lambda: describe_pod(core, namespace, down, node))
        figure("pod deleted to the member Ready again (s)", time.monotonic() - deleted)
        figure("the member's pod IP before / after", f"{before.status.pod_ip} / {back.status.pod_ip}")
        assert core.read_namespaced_service(down, namespace).spec.cluster_ip == ips[down]
        read_again(node, ips[down], [(pvs[n].spec.nfs.path, data[n]) for n in theirs])
        figure(f"pod deleted to its {len(theirs)} volumes read again at the same address (s)",
               time.monotonic() - deleted)
        wait.until(lambda: lease_name(POOL, down_identity) in pool_leases(coordination, namespace), timeout=60,
                   interval=0.1, what=f"the Lease of {down} created again")
        figure("pod deleted to its Lease back (s)", time.monotonic() - deleted)

        # The last member kept down (the StatefulSet scaled down by one; a deleted pod comes back within seconds,
        # faster than a member's view of the others is refreshed): once member 0 counts it down, new claims all go
        # to the others. Scaled back up, it serves its volumes again at the same address.
        stopped = time.monotonic()
        cluster.kubectl("scale", "statefulset", FULLNAME, "-n", namespace, f"--replicas={MEMBERS - 1}")
        wait.until(lambda: lease_name(POOL, down_identity) not in pool_leases(coordination, namespace), timeout=90,
                   interval=0.1, what=f"the Lease of {down} deleted at its graceful stop")
        first = core.read_namespaced_pod(PODS[0], namespace).status.pod_ip
        wait.until(lambda: member_up(node, first, down_identity) in (None, "0.0"), timeout=60, interval=0.2,
                   what=lambda: f"{PODS[0]} counting {down} down: {member_up(node, first, down_identity)}")
        figure("scaled down to the other member counting it down (s)", time.monotonic() - stopped)
        during = [f"during{i}" for i in range(DURING)]
        made = time.monotonic()
        for n in during:
            cluster.kubectl("apply", "-f", "-", input=json.dumps(claim(n, namespace, klass)))
        routed = bound_all(core, namespace, during)
        figure(f"{DURING} claims made while a member is down: Bound after create (s)", time.monotonic() - made)
        kept_pvs += [pv.metadata.name for pv in routed.values()]
        for n, pv in routed.items():
            pod = identity[pv.metadata.annotations[ANN_MEMBER]]
            assert pod != down, (n, pv.metadata.annotations)
            assert pv.spec.nfs.server == ips[pod] and (disk_of[pod] / pv.metadata.name).is_dir()
            assert not (disk_of[down] / pv.metadata.name).exists()
        scaled = time.monotonic()
        cluster.kubectl("scale", "statefulset", FULLNAME, "-n", namespace, f"--replicas={MEMBERS}")
        wait.until(lambda: pod_ready(core, namespace, down), timeout=180,
                   what=lambda: describe_pod(core, namespace, down, node))
        assert core.read_namespaced_service(down, namespace).spec.cluster_ip == ips[down]
        read_again(node, ips[down], [(pvs[n].spec.nfs.path, data[n]) for n in theirs])
        figure(f"scaled up to its {len(theirs)} volumes read again at the same address (s)",
               time.monotonic() - scaled)
        for pod in PODS:  # the chart's RBAC was enough: no request of either member was refused
            log = pod_log(node, namespace, pod, tail=100000)
            assert "forbidden" not in log.lower(), log[-3000:]

        # helm uninstall removes every object of the release, and the members' Leases go with their Services
        # (helm deletes the Role with the StatefulSet: a stopping member may no longer delete its Lease itself).
        assert {k for k, _, _ in manifest_objects(helm, namespace, RELEASE)} == {
            "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding", "StorageClass", "Service",
            "StatefulSet"}
        uninstalled = time.monotonic()
        uninstall_removes_everything(helm, cluster, core, RELEASE, namespace)
        wait.until(lambda: not pool_leases(coordination, namespace), timeout=60,
                   what=lambda: f"the members' Leases gone: {list(pool_leases(coordination, namespace))}")
        figure("helm uninstall to the members' Leases gone (s)", time.monotonic() - uninstalled)
    finally:
        helm("uninstall", RELEASE, "-n", namespace, "--wait", check=False)
        cluster.kubectl("delete", "pvc", "--all", "-n", namespace, "--wait=false", check=False)
        for name in kept_pvs:  # provisioned volumes whose provisioner is gone: only the finalizer holds them
            cluster.kubectl("patch", "pv", name, "--type=merge", "-p", '{"metadata":{"finalizers":null}}', check=False)
            cluster.kubectl("delete", "pv", name, "--wait=false", check=False)
        for name in export_pvs:
            cluster.kubectl("delete", "pv", name, "--wait=false", check=False)
        cluster.kubectl("delete", "storageclass", klass, "--ignore-not-found", check=False)
