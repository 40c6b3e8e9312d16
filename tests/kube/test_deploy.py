"""deploy/kube-config against the real API server: every manifest is accepted
(server-side dry-run, admission included), kustomize renders, and the Pod
Security level the namespace asks for is the one the pod needs."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import yaml

from tests.support import kubecluster
from tests.support.paths import REPO

pytestmark = pytest.mark.kube

DEPLOY = REPO / "deploy" / "kube-config"
NAMESPACE = "nfs-provisioner"
WORKLOADS = ["pod.yaml", "deployment.yaml", "statefulset.yaml", "daemonset.yaml"]
ISOLATED = "statefulset-isolated.yaml"  # filesystem volumes: statefulset.yaml, privileged, and its class


@pytest.fixture(scope="module")
def appliance_namespace(cluster: kubecluster.Cluster) -> Iterator[str]:
    cluster.kubectl("apply", "-f", str(DEPLOY / "namespace.yaml"))
    # Pod admission looks the ServiceAccount up even on a dry run: create it for real.
    cluster.kubectl("create", "serviceaccount", "nfs-provisioner", "-n", NAMESPACE)
    yield NAMESPACE
    cluster.kubectl("delete", "namespace", NAMESPACE, "--wait=false", check=False)


def dry_run(cluster: kubecluster.Cluster, *args: str, input: str | None = None) -> str:
    r = cluster.kubectl("apply", "--dry-run=server", "-o", "name", *args, input=input, check=False)
    assert r.returncode == 0, r.stderr
    return r.stdout


@pytest.mark.parametrize("manifest", ["namespace.yaml", "rbac.yaml", "class.yaml", *WORKLOADS, ISOLATED])
def test_manifest_passes_server_side_dry_run(cluster: kubecluster.Cluster, appliance_namespace: str,
                                             manifest: str) -> None:
    out = dry_run(cluster, "-f", str(DEPLOY / manifest))
    kinds = [d["kind"] for d in yaml.safe_load_all((DEPLOY / manifest).read_text()) if d]
    assert len(out.split()) == len(kinds)


@pytest.mark.parametrize("manifest", ["claim.yaml", "claim-isolated.yaml", "write-pod.yaml", "read-pod.yaml"])
def test_example_workload_passes_dry_run(cluster: kubecluster.Cluster, namespace: str, manifest: str) -> None:
    dry_run(cluster, "-n", namespace, "-f", str(DEPLOY / manifest))


def test_kustomization_renders_and_is_accepted(cluster: kubecluster.Cluster, appliance_namespace: str) -> None:
    rendered = cluster.kubectl("kustomize", str(DEPLOY)).stdout
    kinds = sorted(d["kind"] for d in yaml.safe_load_all(rendered) if d)
    assert kinds == sorted(["Namespace", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding",
                            "ServiceAccount", "Service", "Deployment", "StorageClass"])
    dry_run(cluster, "-k", str(DEPLOY))


@pytest.mark.parametrize("manifest", [*WORKLOADS, ISOLATED])
def test_workloads_need_privileged_pod_security_and_say_why(cluster: kubecluster.Cluster, namespace: str,
                                                            manifest: str) -> None:
    # The same workload in a namespace enforcing "baseline" is refused for its added capability.
    cluster.kubectl("label", "namespace", namespace, "pod-security.kubernetes.io/enforce=baseline")
    cluster.kubectl("create", "serviceaccount", "nfs-provisioner", "-n", namespace)
    text = (DEPLOY / manifest).read_text().replace(f"namespace: {NAMESPACE}", f"namespace: {namespace}")
    r = cluster.kubectl("apply", "--dry-run=server", "-f", "-", input=text, check=False)
    if manifest == "pod.yaml":
        assert r.returncode != 0
        assert "DAC_READ_SEARCH" in r.stderr
    elif manifest == ISOLATED:
        assert 'privileged (container "nfs-provisioner" must not set securityContext.privileged=true)' in r.stderr, \
            r.stderr
    else:
        # Controllers are admitted (with a warning); their pods would be refused.
        assert "DAC_READ_SEARCH" in r.stderr, r.stderr
    ns = yaml.safe_load((DEPLOY / "namespace.yaml").read_text())
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "privileged"


def test_pods_are_not_privileged_and_add_one_capability() -> None:
    for manifest in WORKLOADS:
        for doc in yaml.safe_load_all((DEPLOY / manifest).read_text()):
            if not doc or doc["kind"] not in ("Pod", "Deployment", "StatefulSet", "DaemonSet"):
                continue
            spec = doc["spec"] if doc["kind"] == "Pod" else doc["spec"]["template"]["spec"]
            (c,) = spec["containers"]
            sc = c["securityContext"]
            assert sc["privileged"] is False and sc["allowPrivilegeEscalation"] is False
            assert sc["capabilities"] == {"add": ["DAC_READ_SEARCH"]}
            assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
            assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
            assert spec.get("hostNetwork") is not True
            env = {e["name"] for e in c["env"]}
            assert {"POD_IP", "POD_NAMESPACE"} <= env
            if manifest == "daemonset.yaml":
                assert "NODE_NAME" in env and all("hostPort" in p for p in c["ports"] if p["name"] != "metrics")
            if manifest in ("deployment.yaml", "statefulset.yaml"):
                assert "SERVICE_NAME" in env


def test_service_exposes_the_six_nfs_ports_on_tcp_and_udp() -> None:
    for manifest in ("deployment.yaml", "statefulset.yaml"):
        (svc,) = [d for d in yaml.safe_load_all((DEPLOY / manifest).read_text()) if d and d["kind"] == "Service"]
        assert svc["spec"].get("clusterIP") != "None"
        got = {(p["port"], p["protocol"]) for p in svc["spec"]["ports"]}
        assert got == {(p, proto) for p in (2049, 20048, 32803, 875, 111, 662) for proto in ("TCP", "UDP")}
    (dep,) = [d for d in yaml.safe_load_all((DEPLOY / "deployment.yaml").read_text()) if d["kind"] == "Deployment"]
    assert dep["spec"]["strategy"]["type"] == "Recreate" and dep["spec"]["replicas"] == 1


def test_pod_yaml_is_self_contained_and_its_namespace_and_rbac_are_the_shared_ones() -> None:
    """`kubectl create -f pod.yaml` alone is the quick start: it carries the Namespace and the RBAC,
    document for document the same as namespace.yaml and rbac.yaml."""
    docs = [d for d in yaml.safe_load_all((DEPLOY / "pod.yaml").read_text()) if d]
    assert [d["kind"] for d in docs] == ["Namespace", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding",
                                         "ServiceAccount", "Pod"]
    shared = [d for f in ("namespace.yaml", "rbac.yaml") for d in yaml.safe_load_all((DEPLOY / f).read_text()) if d]
    assert docs[:5] == shared


def test_the_isolated_statefulset_is_statefulset_yaml_privileged_with_a_filesystem_class() -> None:
    """statefulset-isolated.yaml differs from statefulset.yaml only where filesystem volumes need it: the container
    is privileged (loop devices and mount(2)), and it brings the class example-nfs-isolated; no directory class
    of the same provisioner (a directory volume's export would reach the images)."""
    base = {d["kind"]: d for d in yaml.safe_load_all((DEPLOY / "statefulset.yaml").read_text()) if d}
    docs = [d for d in yaml.safe_load_all((DEPLOY / ISOLATED).read_text()) if d]
    assert [d["kind"] for d in docs] == ["ServiceAccount", "Service", "StatefulSet", "StorageClass"]
    got = {d["kind"]: d for d in docs}
    assert got["ServiceAccount"] == base["ServiceAccount"] and got["Service"] == base["Service"]
    (c,) = got["StatefulSet"]["spec"]["template"]["spec"]["containers"]
    assert c.pop("securityContext") == {"privileged": True, "allowPrivilegeEscalation": True}
    base["StatefulSet"]["spec"]["template"]["spec"]["containers"][0].pop("securityContext")
    assert got["StatefulSet"] == base["StatefulSet"]
    # The volumes' mounts stay in the container's mount namespace (they go, and their loop devices detach, with it).
    assert all("mountPropagation" not in m for m in c["volumeMounts"])
    klass = got["StorageClass"]
    assert klass["parameters"] == {"isolation": "filesystem", "fsType": "ext4"}
    assert klass["provisioner"] == base["StatefulSet"]["spec"]["template"]["spec"]["containers"][0]["args"][0] \
        .removeprefix("--provisioner=")
    claim = yaml.safe_load((DEPLOY / "claim-isolated.yaml").read_text())
    assert claim["spec"]["storageClassName"] == klass["metadata"]["name"]
