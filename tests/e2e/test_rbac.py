"""deploy/kube-config/rbac.yaml is sufficient and minimal.

The appliance runs as a pod would (in-cluster credentials: a token of the
ServiceAccount bound by rbac.yaml, KUBERNETES_SERVICE_HOST/PORT), with leader
election, the Service-based server address and a WaitForFirstConsumer class, so
every rule is exercised: provision -> bind -> delete completes with no 403.
Then each rule is removed in turn and some step is refused."""

from __future__ import annotations

import copy
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from nfs_provisioner.controller import resizing
from nfs_provisioner.kube import client as kube
from nfs_provisioner.kube.credentials import Credentials
from tests.support import kubecluster, wait
from tests.support.appliance_env import Appliance, InCluster
from tests.support.paths import REPO

pytestmark = [pytest.mark.e2e, pytest.mark.kube, pytest.mark.ganesha]

DEPLOY = REPO / "deploy" / "kube-config"
POD_IP = "192.0.2.10"  # TEST-NET-1: only compared against the EndpointSlice, never contacted
NODE_IP = "192.0.2.77"  # TEST-NET-1: only written into the export's client list, never contacted
RBAC = [d for d in yaml.safe_load_all((DEPLOY / "rbac.yaml").read_text()) if d]
RULES = [(d["kind"], i) for d in RBAC if d["kind"] in ("ClusterRole", "Role") for i in range(len(d["rules"]))]


def rbac_for(namespace: str, suffix: str, drop: tuple[str, int] | None = None,
             verbs: dict[str, list[str]] | None = None) -> list[dict[str, Any]]:
    """rbac.yaml moved into ``namespace`` with cluster-scoped names suffixed, optionally minus one rule,
    optionally with other ``verbs`` for the rules of some resources."""
    out = []
    for doc in copy.deepcopy(RBAC):
        kind = doc["kind"]
        if kind in ("ClusterRole", "ClusterRoleBinding"):
            doc["metadata"]["name"] += f"-{suffix}"
        else:
            doc["metadata"]["namespace"] = namespace
        if kind == "ClusterRoleBinding":
            doc["roleRef"]["name"] += f"-{suffix}"
        for subject in doc.get("subjects", []):
            subject["namespace"] = namespace
        if drop and kind == drop[0]:
            del doc["rules"][drop[1]]
        for rule in doc.get("rules", []):
            for resource, allowed in (verbs or {}).items():
                if resource in rule["resources"]:
                    rule["verbs"] = allowed
        out.append(doc)
    return out


def permissions(docs: list[dict[str, Any]]) -> set[tuple[str, str, str, str]]:
    """(API group, resource, verb, namespace or "" for a ClusterRole's) of every rule in ``docs``."""
    return {(group, resource, verb, doc["metadata"].get("namespace", "") if doc["kind"] == "Role" else "")
            for doc in docs if doc["kind"] in ("ClusterRole", "Role") for rule in doc["rules"]
            for group in rule["apiGroups"] for resource in rule["resources"] for verb in rule["verbs"]}


class Setup:
    def __init__(self, cluster: kubecluster.Cluster, core: client.CoreV1Api, storage: client.StorageV1Api,
                 namespace: str, unique: str, tmp_path: Path) -> None:
        self.cluster, self.core, self.storage, self.ns, self.unique = cluster, core, storage, namespace, unique
        self.tmp_path = tmp_path
        self.cls = f"rbac-{unique}"
        self.node = f"node-{unique}"
        self.provisioner = f"example.com/rbac-{unique}"
        cluster.kubectl("create", "serviceaccount", "nfs-provisioner", "-n", namespace)
        # The Service the pod is behind (no selector: its EndpointSlice is written here, as the
        # endpoint controllers would for a running pod).
        (svc,) = [d for d in yaml.safe_load_all((DEPLOY / "deployment.yaml").read_text()) if d["kind"] == "Service"]
        svc["metadata"]["namespace"] = namespace
        del svc["spec"]["selector"]
        eps = {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
               "metadata": {"name": "nfs-provisioner-1", "namespace": namespace,
                            "labels": {"kubernetes.io/service-name": "nfs-provisioner"}},
               "endpoints": [{"addresses": [POD_IP]}],
               "ports": [{"name": "nfs", "port": 2049, "protocol": "TCP"}]}
        cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump_all([svc, eps]))
        core.create_node(client.V1Node(metadata=client.V1ObjectMeta(name=self.node)))
        storage.create_storage_class(client.V1StorageClass(
            metadata=client.V1ObjectMeta(name=self.cls), provisioner=self.provisioner,
            volume_binding_mode="WaitForFirstConsumer", allow_volume_expansion=True))

    def apply_rbac(self, drop: tuple[str, int] | None = None, verbs: dict[str, list[str]] | None = None) -> None:
        self.delete_rbac()
        docs = rbac_for(self.ns, self.unique, drop, verbs)
        self.cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(docs))
        self.wait_effective(docs)

    def wait_effective(self, docs: list[dict[str, Any]]) -> None:
        """Until the API server's authorizer answers as ``docs`` say for every permission of the full rbac.yaml.

        It learns of new and deleted roles and bindings through its own informers, a moment later: a request
        sent at once can be refused by a rule just applied or allowed by one just removed."""
        granted = permissions(docs)
        auth = client.AuthorizationV1Api(self.core.api_client)
        user = f"system:serviceaccount:{self.ns}:nfs-provisioner"
        groups = ["system:serviceaccounts", f"system:serviceaccounts:{self.ns}", "system:authenticated"]

        def wrong() -> list[tuple[str, str, str, str]]:
            out = []
            for p in sorted(permissions(rbac_for(self.ns, self.unique))):
                group, resource, verb, namespace = p
                name, _, sub = resource.partition("/")
                review = auth.create_subject_access_review(client.V1SubjectAccessReview(
                    spec=client.V1SubjectAccessReviewSpec(user=user, groups=groups, resource_attributes=(
                        client.V1ResourceAttributes(group=group, resource=name, subresource=sub or None, verb=verb,
                                                    namespace=namespace or None)))))
                if review.status.allowed != (p in granted):
                    out.append(p)
            return out

        wait.until(lambda: not wrong(), timeout=30, what=lambda: f"the authorizer to follow the roles: {wrong()}")

    def delete_rbac(self) -> None:
        self.cluster.kubectl("delete", "--ignore-not-found", "-f", "-",
                             input=yaml.safe_dump_all(rbac_for(self.ns, self.unique)), check=False)

    def appliance(self, run: int, extra: list[str] | None = None) -> Appliance:
        token = self.cluster.kubectl("create", "token", "nfs-provisioner", "-n", self.ns).stdout.strip()
        work = self.tmp_path / f"run{run}"
        work.mkdir()
        in_cluster = InCluster(api_url=self.cluster.api_url, token=token, ca_file=self.cluster.ca_file,
                               workdir=work, env={"SERVICE_NAME": "nfs-provisioner", "POD_NAMESPACE": self.ns,
                                                  "POD_IP": POD_IP})
        return Appliance(kubeconfig=None, export_root=self.tmp_path / "export", provisioner=self.provisioner,
                         log_dir=work, in_cluster=in_cluster,
                         extra=extra or ["--leader-elect", "--leader-elect-retry-period=500ms"])

    def claim(self, name: str, *, clone_of: str | None = None) -> None:
        source = None if clone_of is None else client.V1TypedLocalObjectReference(
            kind="PersistentVolumeClaim", name=clone_of)
        self.core.create_namespaced_persistent_volume_claim(self.ns, client.V1PersistentVolumeClaim(
            metadata=client.V1ObjectMeta(name=name, annotations={"volume.kubernetes.io/selected-node": self.node}),
            spec=client.V1PersistentVolumeClaimSpec(
                access_modes=["ReadWriteMany"], storage_class_name=self.cls, data_source=source,
                resources=client.V1VolumeResourceRequirements(requests={"storage": "1Mi"}))))

    def phase(self, name: str) -> str:
        return str(self.core.read_namespaced_persistent_volume_claim(name, self.ns).status.phase)

    def expand(self, name: str) -> None:
        self.core.patch_namespaced_persistent_volume_claim(
            name, self.ns, {"spec": {"resources": {"requests": {"storage": "2Mi"}}}})

    def expanded(self, name: str) -> bool:
        status = self.core.read_namespaced_persistent_volume_claim(name, self.ns).status
        return (status.capacity or {}).get("storage") == "2Mi"

    def close(self) -> None:
        self.delete_rbac()
        self.storage.delete_storage_class(self.cls)
        self.core.delete_node(self.node)


@pytest.fixture
def setup(cluster: kubecluster.Cluster, core: client.CoreV1Api, storage: client.StorageV1Api, namespace: str,
          unique: str, tmp_path: Path) -> Iterator[Setup]:
    s = Setup(cluster, core, storage, namespace, unique, tmp_path)
    try:
        yield s
    finally:
        s.close()


FORBIDDEN = re.compile(r"forbidden", re.IGNORECASE)  # "-> 403 Forbidden: ..."; a bare 403 also matches timestamps


def test_rbac_is_sufficient_and_every_rule_is_needed(setup: Setup) -> None:
    # Sufficient: the whole flow, zero 403s.
    setup.apply_rbac()
    a = setup.appliance(0)
    try:
        a.start()
        setup.claim("full")
        wait.until(lambda: setup.phase("full") == "Bound", timeout=60, what=lambda: f"claim Bound\n{a.log()}")
        pv_name = setup.core.read_namespaced_persistent_volume_claim("full", setup.ns).spec.volume_name
        pv = setup.core.read_persistent_volume(pv_name)
        assert pv.spec.nfs.server == setup.core.read_namespaced_service("nfs-provisioner", setup.ns).spec.cluster_ip
        assert setup.cluster.kubectl("get", "lease", "-n", setup.ns, "-o", "name").stdout.strip()
        # In a cluster the client list follows the Nodes (list + watch): an address appears in the export.
        assert "who may mount: the cluster's nodes (default: the nodes)" in a.log_file.read_text()
        setup.core.patch_node_status(setup.node, {"status": {"addresses": [
            {"type": "InternalIP", "address": NODE_IP}]}})
        conf = a.export_root / ".ganesha" / "exports.d" / f"{pv_name}.conf"
        wait.until(lambda: f"{NODE_IP}/32" in conf.read_text().splitlines()[0], timeout=30,
                   what=lambda: f"the node's address in the export\n{a.log()}")
        # A clone reads its source claim (a list by name) and volume (get): no rule of its own.
        (a.export_root / pv_name / "data").write_bytes(b"cloned")
        setup.claim("full-copy", clone_of="full")
        wait.until(lambda: setup.phase("full-copy") == "Bound", timeout=60, what=lambda: f"clone Bound\n{a.log()}")
        copy_pv = setup.core.read_namespaced_persistent_volume_claim("full-copy", setup.ns).spec.volume_name
        assert (a.export_root / copy_pv / "data").read_bytes() == b"cloned"
        setup.core.delete_namespaced_persistent_volume_claim("full-copy", setup.ns)
        setup.expand("full")
        wait.until(lambda: setup.expanded("full"), timeout=60, what=lambda: f"claim expanded\n{a.log()}")
        setup.core.delete_namespaced_persistent_volume_claim("full", setup.ns)
        wait.until(lambda: not setup.core.list_persistent_volume(field_selector=f"metadata.name={pv_name}").items,
                   timeout=60, what="PV deleted")
        assert a.stop() == 0
        assert not FORBIDDEN.search(a.log_file.read_text()), a.log()
    finally:
        a.close()

    # Minimal: without any one rule, some step is refused.
    refused = {}
    for run, drop in enumerate(RULES, start=1):
        setup.apply_rbac(drop)
        a = setup.appliance(run)
        claim = f"without-{run}"
        try:
            a.start(wait_ready=False)
            setup.claim(claim)
            deadline = time.monotonic() + 45
            log, asked = "", False
            while time.monotonic() < deadline:
                log = a.log_file.read_text(errors="replace")
                if FORBIDDEN.search(log):
                    break
                if not asked and setup.phase(claim) == "Bound":
                    setup.expand(claim)  # the last step of the flow
                    asked = True
                time.sleep(0.2)
            rule = rbac_for(setup.ns, setup.unique)[[d["kind"] for d in RBAC].index(drop[0])]["rules"][drop[1]]
            match = FORBIDDEN.search(log)
            assert match, f"removing {drop[0]} rule {rule} changed nothing visible:\n{log[-3000:]}"
            completed = setup.phase(claim) == "Bound" and setup.expanded(claim)
            assert not completed or "events" in rule["resources"], (rule, log[-3000:])
            refused[f"{drop[0]}:{','.join(rule['resources'])}"] = log[max(0, match.start() - 200):match.end() + 200]
        finally:
            a.close()
            setup.core.delete_namespaced_persistent_volume_claim(claim, setup.ns)
        # Stopped while it was failing (often mid start-up or mid clean-up): nothing left running.
        assert a.leftovers() == [], f"processes left behind after {drop}:\n{a.log()}"
    assert len(refused) == len(RULES)

    # get alone on nodes is not enough: the client list needs list + watch; exit 1 with one line, at once.
    setup.apply_rbac(verbs={"nodes": ["get"]})
    a = setup.appliance(len(RULES) + 1)
    try:
        a.start(wait_ready=False)
        assert a.proc is not None and a.proc.wait(30) == 1, a.log()
        (line,) = [x for x in a.log_file.read_text().splitlines() if x.startswith("nfs-provisioner: error:")]
        assert "cannot list Nodes" in line and "get/list/watch on nodes" in line and FORBIDDEN.search(line), line
        assert a.leftovers() == [], "nothing was started before the client list was known"
    finally:
        a.close()


def test_a_status_conflict_is_retried_with_the_verbs_rbac_grants(setup: Setup) -> None:
    """The resizer's status patch meets a 409 when the controller-manager wrote the claim meanwhile; it reads the
    claim again with a list by name (rbac.yaml grants claims list, not get: CI once logged a 403 there)."""
    setup.apply_rbac()
    setup.claim("stale")
    token = setup.cluster.kubectl("create", "token", "nfs-provisioner", "-n", setup.ns).stdout.strip()
    api = kube.Client(Credentials(host=setup.cluster.api_url, ca_file=str(setup.cluster.ca_file), cert_file=None,
                                  key_file=None, verify=True, token=lambda: f"Bearer {token}"))
    try:
        claim = kube.read_claim(api, setup.ns, "stale")
        assert claim is not None
        stale_rv = claim["metadata"]["resourceVersion"]
        setup.core.patch_namespaced_persistent_volume_claim("stale", setup.ns, {"metadata": {"labels": {"x": "y"}}})
        attempts: list[str] = []

        def status(c: dict[str, Any]) -> dict[str, Any]:
            attempts.append(c["metadata"]["resourceVersion"])
            return {"allocatedResources": {"storage": "2Mi"}}

        updated = resizing.patch_claim_status(api, claim, status)
        assert len(attempts) == 2 and attempts[0] == stale_rv != attempts[1], attempts
        assert updated["status"]["allocatedResources"] == {"storage": "2Mi"}
        assert claim["metadata"]["resourceVersion"] == updated["metadata"]["resourceVersion"]
    finally:
        api.close()
        setup.core.delete_namespaced_persistent_volume_claim("stale", setup.ns)


def test_a_pool_member_needs_each_lease_verb(setup: Setup) -> None:
    """A pool member (--pool) with rbac.yaml's Lease rule: its Lease created, renewed (patch), the members listed,
    the Lease owned by its Service and deleted at its graceful stop, no 403. Without list, patch or delete on
    Leases, that step is refused (the chart's Role has the same rule: tests/helm/test_helm.py; the pool of pods on the
    kubelet node, tests/node/test_pool_incluster.py, runs with it)."""
    pool = ["--pool=p", "--leader-elect-retry-period=500ms"]
    lease_verbs = ["get", "list", "create", "update", "patch", "delete"]
    setup.apply_rbac()
    a = setup.appliance(0, pool)
    coordination = client.CoordinationV1Api(setup.core.api_client)
    try:
        a.start()
        # the member joins the pool in the controller's start, which may come after /readyz (NFS is served first)
        (lease,) = wait.until(lambda: coordination.list_namespaced_lease(
            setup.ns, label_selector="nfs-provisioner.io/pool=p").items, timeout=30,
            what=lambda: f"this member's Lease\n{a.log()}")
        version = lease.metadata.resource_version
        (owner,) = lease.metadata.owner_references
        assert (owner.kind, owner.name) == ("Service", "nfs-provisioner")
        wait.until(lambda: coordination.read_namespaced_lease(lease.metadata.name, setup.ns).metadata
                   .resource_version != version, timeout=30, what=lambda: f"the Lease renewed\n{a.log()}")
        assert a.stop() == 0
        assert not coordination.list_namespaced_lease(setup.ns, label_selector="nfs-provisioner.io/pool=p").items
        assert not FORBIDDEN.search(a.log_file.read_text()), a.log()
    finally:
        a.close()
    expected = {"list": "cannot list the members", "patch": "cannot renew this member's Lease",
                "delete": "could not delete this member's Lease"}
    for run, (verb, message) in enumerate(expected.items(), start=1):
        setup.apply_rbac(verbs={"leases": [v for v in lease_verbs if v != verb]})
        refused_without(setup, setup.appliance(run, pool), verb, message)


def refused_without(setup: Setup, a: Appliance, verb: str, message: str) -> None:
    """The pool member ``a``, run without ``verb`` on Leases, logs ``message`` with a 403."""
    coordination = client.CoordinationV1Api(setup.core.api_client)
    selector = "nfs-provisioner.io/pool=p"
    try:
        a.start(wait_ready=False)
        if verb == "delete":
            wait.until(lambda: coordination.list_namespaced_lease(setup.ns, label_selector=selector).items,
                       timeout=60, what=lambda: a.log())
            a.stop()
        lines = wait.until(lambda: [x for x in a.log_file.read_text(errors="replace").splitlines() if message in x]
                           or None, timeout=60, what=lambda: f"without {verb} on Leases: {message!r}\n{a.log()}")
        assert FORBIDDEN.search(lines[0]), lines[0]
    finally:
        a.close()
        coordination.delete_collection_namespaced_lease(setup.ns, label_selector=selector)
