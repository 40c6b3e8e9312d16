"""The Helm chart (deploy/helm/nfs-provisioner) without a node: `helm lint` and `helm template` in every mode,
each rendered object accepted by the real API server (server-side dry-run), the schema refusing wrong values
with a clear message, and the chart saying what deploy/kube-config says (RBAC rules, Service ports, pod
security) and what docs/helm.md and docs/appliance.md say (every value, the appliance's defaults)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support import kubecluster
from tests.support.helm_env import CHART, Helm
from tests.support.paths import REPO

pytestmark = pytest.mark.helm

DEPLOY = REPO / "deploy" / "kube-config"
HOST_ROOT = {"persistence": {"enabled": False}, "hostPath": {"path": "/srv/nfs-provisioner"}}
MODES: dict[str, dict[str, Any]] = {
    "statefulset": {},
    "daemonset": {"kind": "DaemonSet", **HOST_ROOT, "nodeSelector": {"nfs-provisioner/server": "true"}},
    "hostpath": HOST_ROOT,
    "emptydir": {"persistence": {"enabled": False}, "emptyDir": {"sizeLimit": "1Gi"}},
    "quotas": {"enableXfsQuota": True, "storageClass": {"parameters": {"gid": 2000, "rootSquash": True}}},
    "two-replicas": {"replicas": 2, "leaderElect": True},
    "pool": {"replicas": 3, "pool": "store"},
    "nfsv4-only": {"nfsv3": False, "exportSubnet": "nodes,10.1.0.0/16", "maxExports": 100},
    "servicemonitor": {"metrics": {"serviceMonitor": {"enabled": True}}},
    "filesystem-volumes": {"isolation": "filesystem", "fsType": "xfs"},
}


@pytest.fixture(scope="module")
def helm(tmp_path_factory: pytest.TempPathFactory) -> Helm:
    return Helm(tmp_path_factory.mktemp("helm"))


def render(helm: Helm, tmp_path: Path, values: dict[str, Any], **kw: Any) -> list[dict[str, Any]]:
    return helm.template(values=values, tmp=tmp_path, **kw)


def by_kind(objs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objs if o["kind"] == kind]


def container(objs: list[dict[str, Any]]) -> dict[str, Any]:
    (workload,) = [o for o in objs if o["kind"] in ("StatefulSet", "DaemonSet")]
    (c,) = workload["spec"]["template"]["spec"]["containers"]
    return dict(c)


def args_of(objs: list[dict[str, Any]]) -> dict[str, str]:
    return dict(a[2:].split("=", 1) for a in container(objs)["args"])


def test_lint_passes_with_default_values_and_every_mode(helm: Helm, tmp_path: Path) -> None:
    assert "0 chart(s) failed" in helm("lint", "--strict", str(CHART)).stdout
    for mode, values in MODES.items():
        f = tmp_path / f"{mode}.json"
        f.write_text(json.dumps(values))
        r = helm("lint", "--strict", str(CHART), "-f", str(f), check=False)
        assert r.returncode == 0 and "0 chart(s) failed" in r.stdout, (mode, r.stdout, r.stderr)


def test_default_is_one_statefulset_on_its_own_claim_behind_the_service(helm: Helm, tmp_path: Path) -> None:
    objs = render(helm, tmp_path, {})
    assert sorted(o["kind"] for o in objs) == sorted([
        "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding", "StorageClass", "Service",
        "StatefulSet"])
    (sts,) = by_kind(objs, "StatefulSet")
    assert sts["spec"]["replicas"] == 1
    (vct,) = sts["spec"]["volumeClaimTemplates"]
    assert vct["metadata"]["name"] == "export-volume" and vct["spec"]["resources"]["requests"]["storage"] == "10Gi"
    assert "storageClassName" not in vct["spec"]  # the cluster's default class
    assert "volumes" not in sts["spec"]["template"]["spec"]
    env = {e["name"]: e for e in container(objs)["env"]}
    assert env["SERVICE_NAME"]["value"] == "nfs-nfs-provisioner" and "NODE_NAME" not in env
    # The provisioner name is unique per release and namespace, and a qualified name.
    (klass,) = by_kind(objs, "StorageClass")
    assert klass["provisioner"] == "nfs.nfs-provisioner.nfs-provisioner.local/nfs"
    assert args_of(objs)["provisioner"] == klass["provisioner"]
    other = render(helm, tmp_path, {}, release="other", namespace="elsewhere")
    assert by_kind(other, "StorageClass")[0]["provisioner"] == "other.elsewhere.nfs-provisioner.local/nfs"
    assert klass["parameters"] == {"onDelete": "delete", "gid": "none", "rootSquash": "false"}
    assert klass["mountOptions"] == ["vers=4.1"] and klass["reclaimPolicy"] == "Delete"
    assert klass["metadata"]["annotations"]["storageclass.kubernetes.io/is-default-class"] == "false"


def test_persistence_class_values(helm: Helm, tmp_path: Path) -> None:
    def vct(storage_class: str | None) -> dict[str, Any]:
        objs = render(helm, tmp_path, {"persistence": {"storageClass": storage_class, "size": "1Gi"}})
        return dict(by_kind(objs, "StatefulSet")[0]["spec"]["volumeClaimTemplates"][0]["spec"])

    assert vct("-")["storageClassName"] == ""
    assert vct("fast")["storageClassName"] == "fast"


def test_each_mode_renders_what_it_says(helm: Helm, tmp_path: Path) -> None:
    ds = render(helm, tmp_path, MODES["daemonset"])
    assert not by_kind(ds, "Service") and not by_kind(ds, "StatefulSet")
    (daemon,) = by_kind(ds, "DaemonSet")
    pod = daemon["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"nfs-provisioner/server": "true"}
    assert pod["volumes"] == [{"name": "export-volume", "hostPath": {"path": "/srv/nfs-provisioner",
                                                                     "type": "DirectoryOrCreate"}}]
    ports = container(ds)["ports"]
    assert all(p["hostPort"] == p["containerPort"] for p in ports if p["name"] != "metrics")
    assert "NODE_NAME" in {e["name"] for e in container(ds)["env"]}

    hp = render(helm, tmp_path, MODES["hostpath"])
    (sts,) = by_kind(hp, "StatefulSet")
    assert "volumeClaimTemplates" not in sts["spec"]
    assert sts["spec"]["template"]["spec"]["volumes"][0]["hostPath"]["path"] == "/srv/nfs-provisioner"
    ed = render(helm, tmp_path, MODES["emptydir"])
    assert by_kind(ed, "StatefulSet")[0]["spec"]["template"]["spec"]["volumes"] == [
        {"name": "export-volume", "emptyDir": {"sizeLimit": "1Gi"}}]

    q = render(helm, tmp_path, MODES["quotas"])
    assert args_of(q)["enable-xfs-quota"] == "true"
    assert by_kind(q, "StorageClass")[0]["parameters"] == {"onDelete": "delete", "gid": "2000", "rootSquash": "true"}

    two = render(helm, tmp_path, MODES["two-replicas"])
    assert by_kind(two, "StatefulSet")[0]["spec"]["replicas"] == 2
    a = args_of(two)
    assert a["leader-elect"] == "true" and a["leader-elect-lease-duration"] == "15s"
    # No Service: it would spread NFS over pods with different export roots; each PV names its pod.
    assert not by_kind(two, "Service") and "SERVICE_NAME" not in {e["name"] for e in container(two)["env"]}

    pool = render(helm, tmp_path, MODES["pool"])
    assert by_kind(pool, "StatefulSet")[0]["spec"]["replicas"] == 3
    a = args_of(pool)
    assert a["pool"] == "store" and a["leader-elect"] == "false"
    assert a["leader-elect-lease-duration"] == "15s" and a["leader-elect-retry-period"] == "2s"  # heartbeat, timeout
    assert "pool" not in args_of(two)
    # A Service per pod, named and selecting as the pod; each pod's SERVICE_NAME is its own (the kubelet
    # expands $(POD_NAME)), so each member's PVs name its Service's ClusterIP.
    svcs = by_kind(pool, "Service")
    assert [s["metadata"]["name"] for s in svcs] == [f"nfs-nfs-provisioner-{i}" for i in range(3)]
    for s in svcs:
        assert s["spec"]["selector"]["statefulset.kubernetes.io/pod-name"] == s["metadata"]["name"]
        assert s["spec"]["publishNotReadyAddresses"] is True and "clusterIP" not in s["spec"]
    env = container(pool)["env"]
    names = [e["name"] for e in env]
    assert names.index("POD_NAME") < names.index("SERVICE_NAME")
    assert {e["name"]: e for e in env}["SERVICE_NAME"]["value"] == "$(POD_NAME)"
    # One member is a pool all the same: its Service is the per-pod one, so scaling up keeps its address.
    one = render(helm, tmp_path, {"pool": "store", "service": {"clusterIP": "10.0.0.9"}})
    assert [s["metadata"]["name"] for s in by_kind(one, "Service")] == ["nfs-nfs-provisioner-0"]

    v4 = render(helm, tmp_path, MODES["nfsv4-only"])
    assert args_of(v4)["nfsv3"] == "false" and args_of(v4)["export-subnet"] == "nodes,10.1.0.0/16"
    assert {p["port"] for p in by_kind(v4, "Service")[0]["spec"]["ports"]} == {2049, 875}

    fs = render(helm, tmp_path, MODES["filesystem-volumes"])
    assert by_kind(fs, "StorageClass")[0]["parameters"] == {
        "onDelete": "delete", "gid": "none", "rootSquash": "false", "isolation": "filesystem", "fsType": "xfs"}
    # Loop devices and mount(2): privileged (which implies privilege escalation); everything else as set.
    assert container(fs)["securityContext"] == {"privileged": True, "allowPrivilegeEscalation": True,
                                                "capabilities": {"add": ["DAC_READ_SEARCH"]}}
    assert by_kind(fs, "StatefulSet")[0]["spec"]["template"]["spec"]["securityContext"] == {
        "seccompProfile": {"type": "RuntimeDefault"}}
    # With the user's own class (storageClass.create=false) the pod is privileged all the same.
    own = render(helm, tmp_path, {**MODES["filesystem-volumes"], "storageClass": {"create": False}})
    assert not by_kind(own, "StorageClass") and container(own)["securityContext"]["privileged"] is True

    sm = render(helm, tmp_path, MODES["servicemonitor"])
    (monitor,) = by_kind(sm, "ServiceMonitor")
    (metrics_svc,) = [s for s in by_kind(sm, "Service") if s["metadata"]["name"].endswith("-metrics")]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= metrics_svc["metadata"]["labels"].items()
    assert metrics_svc["spec"]["ports"][0]["port"] == 9090


def test_extra_args_env_and_scheduling_values_reach_the_pod(helm: Helm, tmp_path: Path) -> None:
    objs = render(helm, tmp_path, {
        "extraArgs": ["--ganesha-templates=/templates"], "extraEnv": [{"name": "X", "value": "1"}],
        "tolerations": [{"operator": "Exists"}], "affinity": {"nodeAffinity": {}}, "priorityClassName": "high",
        "image": {"repository": "registry.example/nfs-provisioner", "tag": "9.9"}, "logLevel": "DEBUG"})
    c = container(objs)
    assert c["args"][-1] == "--ganesha-templates=/templates" and {"name": "X", "value": "1"} in c["env"]
    assert c["image"] == "registry.example/nfs-provisioner:9.9" and args_of(objs)["log-level"] == "DEBUG"
    pod = by_kind(objs, "StatefulSet")[0]["spec"]["template"]["spec"]
    assert pod["tolerations"] == [{"operator": "Exists"}] and pod["priorityClassName"] == "high"


@pytest.mark.parametrize(("set_arg", "message"), [
    ("gracePeriod=500", "at '/gracePeriod': maximum: got 500, want 180"),
    ("gracePeriod=-1", "at '/gracePeriod': minimum: got -1, want 0"),
    ("kind=Deployment", "at '/kind': value must be one of 'StatefulSet', 'DaemonSet'"),
    ("maxExports=0", "at '/maxExports': minimum: got 0, want 1"),
    ("storageClass.parameters.onDelete=shred",
     "at '/storageClass/parameters/onDelete': value must be one of 'delete', 'retain', 'archive'"),
    ("storageClass.parameters.gid=0", "at '/storageClass/parameters/gid': minimum: got 0, want 1"),
    ("provisionerName=nfs", "at '/provisionerName': 'nfs' does not match pattern"),
    ("gracePerod=5", "additional properties 'gracePerod' not allowed"),
    ("logLevel=LOUD", "at '/logLevel': value must be one of"),
    ("isolation=volume", "at '/isolation': value must be one of 'directory', 'filesystem'"),
    ("fsType=btrfs", "at '/fsType': value must be one of 'ext4', 'xfs'"),
    ("pool=Store", "at '/pool': 'Store' does not match pattern"),
])
def test_a_wrong_value_is_refused_with_a_clear_message(helm: Helm, set_arg: str, message: str) -> None:
    r = helm("template", "nfs", str(CHART), "--set", set_arg, check=False)
    assert r.returncode != 0 and not r.stdout
    assert "values don't meet the specifications of the schema" in r.stderr and message in r.stderr, r.stderr
    if set_arg == "gracePeriod=500":  # the example docs/helm.md quotes
        assert f"--set {set_arg}` fails with\n  `{message}`" in (REPO / "docs" / "helm.md").read_text()


@pytest.mark.parametrize(("set_args", "message"), [
    (["replicas=2"], "replicas > 1 needs leaderElect: true"),
    (["kind=DaemonSet"], "kind DaemonSet needs persistence.enabled: false"),
    (["pool=store", "leaderElect=true"], "pool and leaderElect exclude each other"),
])
def test_a_wrong_combination_fails_with_one_line(helm: Helm, set_args: list[str], message: str) -> None:
    r = helm("template", "nfs", str(CHART), *[a for s in set_args for a in ("--set", s)], check=False)
    assert r.returncode != 0 and message in r.stderr, r.stderr


def notes(helm: Helm, *set_args: str) -> str:
    """NOTES.txt as `helm install` prints it (a client-side dry run; helm still asks the server its version)."""
    out = helm("install", "nfs", str(CHART), "-n", "store", "--dry-run=client",
               *[a for s in set_args for a in ("--set", s)]).stdout
    return out[out.index("NOTES:"):]


@pytest.mark.kube
def test_notes_tell_how_to_claim_and_what_the_namespace_needs(tmp_path: Path, cluster: kubecluster.Cluster) -> None:
    helm = Helm(tmp_path, kubeconfig=cluster.kubeconfig)
    text = notes(helm)
    assert "storageClassName: nfs-nfs-provisioner" in text and "kind: PersistentVolumeClaim" in text
    assert "kubectl label namespace store pod-security.kubernetes.io/enforce=privileged" in text
    assert "export-volume-nfs-nfs-provisioner-0" in text  # kept by helm uninstall
    assert "storage: 1Mi" in text and "privileged (isolation: filesystem" not in text
    text = notes(helm, "isolation=filesystem")
    assert "storage: 64Mi" in text and "The pod is privileged (isolation: filesystem" in text  # ext4's minimum: 4Mi
    assert "storage: 300Mi" in notes(helm, "isolation=filesystem", "fsType=xfs")
    text = notes(helm, "storageClass.create=false", "provisionerName=example.com/nfs")
    assert "No StorageClass was created" in text and "example.com/nfs" in text and "storageClassName" not in text


def shipped(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((DEPLOY / name).read_text()) if d]


def test_rbac_rules_are_those_of_rbac_yaml(helm: Helm, tmp_path: Path) -> None:
    objs = render(helm, tmp_path, {})
    for kind in ("ClusterRole", "Role"):
        (chart,) = by_kind(objs, kind)
        (raw,) = [d for d in shipped("rbac.yaml") if d["kind"] == kind]
        assert chart["rules"] == raw["rules"], kind
    sa = by_kind(objs, "ServiceAccount")[0]["metadata"]["name"]
    for kind in ("ClusterRoleBinding", "RoleBinding"):
        (binding,) = by_kind(objs, kind)
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": sa, "namespace": "nfs-provisioner"}]
    assert by_kind(objs, "ClusterRole")[0]["metadata"]["name"] == "nfs-provisioner-nfs-nfs-provisioner-runner"


def test_service_and_pod_are_those_of_statefulset_yaml(helm: Helm, tmp_path: Path) -> None:
    objs = render(helm, tmp_path, {})
    raw = {d["kind"]: d for d in shipped("statefulset.yaml")}
    assert by_kind(objs, "Service")[0]["spec"]["ports"] == raw["Service"]["spec"]["ports"]
    # A restarted pod gets NFS as soon as Ganesha listens, not once ready (tests/node/test_blackout.py)
    assert by_kind(objs, "Service")[0]["spec"]["publishNotReadyAddresses"] is True
    assert raw["Service"]["spec"]["publishNotReadyAddresses"] is True
    raw_pod = raw["StatefulSet"]["spec"]["template"]["spec"]
    pod = by_kind(objs, "StatefulSet")[0]["spec"]["template"]["spec"]
    c, raw_c = pod["containers"][0], raw_pod["containers"][0]
    for key in ("ports", "securityContext", "readinessProbe", "livenessProbe", "resources", "volumeMounts"):
        assert c[key] == raw_c[key], key
    assert pod["securityContext"] == raw_pod["securityContext"] == {"seccompProfile": {"type": "RuntimeDefault"}}
    assert c["securityContext"]["capabilities"] == {"add": ["DAC_READ_SEARCH"]}
    assert pod["terminationGracePeriodSeconds"] == raw_pod["terminationGracePeriodSeconds"]


# Chart values that are appliance flags, and the flag (docs/appliance.md's table has its default).
FLAG_VALUES = {
    "gracePeriod": "grace-period", "enableXfsQuota": "enable-xfs-quota", "exportSubnet": "export-subnet",
    "maxExports": "max-exports", "nfsv3": "nfsv3", "deviceBasedFsids": "device-based-fsids",
    "threadiness": "threadiness", "kubeApiQps": "kube-api-qps", "kubeApiBurst": "kube-api-burst",
    "leaderElect": "leader-elect", "leaderElectLeaseDuration": "leader-elect-lease-duration",
    "leaderElectRenewDeadline": "leader-elect-renew-deadline", "leaderElectRetryPeriod": "leader-elect-retry-period",
    "logLevel": "log-level", "logJson": "log-json",
}


def values_yaml() -> dict[str, Any]:
    return dict(yaml.safe_load((CHART / "values.yaml").read_text()))


def scalar(v: Any) -> str:
    return json.dumps(v) if not isinstance(v, str) else v


def test_flag_values_default_to_the_appliance_s_defaults(helm: Helm, tmp_path: Path) -> None:
    reference = (REPO / "docs" / "appliance.md").read_text()
    values = values_yaml()
    # The lease timings are passed only with leaderElect.
    rendered = {**args_of(render(helm, tmp_path, {"leaderElect": True})), **args_of(render(helm, tmp_path, {}))}
    for key, flag in FLAG_VALUES.items():
        m = re.search(rf"^\| `--{flag}` \| `[A-Z0-9_]+` \| `([^`]*)`", reference, re.M)
        assert m, flag
        assert scalar(values[key]) == m.group(1), (key, values[key], m.group(1))
        assert rendered[flag] == scalar(values[key]), flag
    m = re.search(r"^\| `--metrics-address` \| `[A-Z0-9_]+` \| `:(\d+)`", reference, re.M)
    assert m and values["metrics"]["port"] == int(m.group(1)) and rendered["metrics-address"] == f":{m.group(1)}"


def flatten(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Leaf values by dotted key; a mapping is a section unless it is empty or a Kubernetes object value."""
    objects = {"podSecurityContext", "securityContext", "resources", "persistence.selector"}
    out: dict[str, Any] = {}
    for k, v in values.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v and key not in objects:
            out.update(flatten(v, f"{key}."))
        else:
            out[key] = v
    return out


def table_default(v: Any) -> str:
    return '""' if v == "" else scalar(v) if not isinstance(v, dict | list) else json.dumps(v, separators=(",", ":"))


def test_docs_helm_md_lists_every_value_with_its_default() -> None:
    doc = (REPO / "docs" / "helm.md").read_text()
    rows = dict(re.findall(r"^\| `([A-Za-z0-9.]+)` \| `([^`]*)` \|", doc, re.M))
    expected = {k: table_default(v) for k, v in flatten(values_yaml()).items()}
    assert rows == expected


def test_schema_knows_every_value() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())

    def known(key: str) -> bool:
        node = schema
        for part in key.split("."):
            props = node.get("properties", {})
            if part not in props:
                return node.get("type") == "object" and "additionalProperties" not in node
            node = props[part]
        return True

    assert [k for k in flatten(values_yaml()) if not known(k)] == []


@pytest.fixture(scope="module")
def servicemonitor_crd(cluster: kubecluster.Cluster) -> Iterator[None]:
    """The ServiceMonitor kind for the dry-run: a CRD of prometheus-operator's group and names with an open
    schema (the real CRD's schema is not checked here; its kind, group and version are)."""
    crd = {"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
           "metadata": {"name": "servicemonitors.monitoring.coreos.com"},
           "spec": {"group": "monitoring.coreos.com", "scope": "Namespaced",
                    "names": {"kind": "ServiceMonitor", "plural": "servicemonitors", "singular": "servicemonitor",
                              "listKind": "ServiceMonitorList"},
                    "versions": [{"name": "v1", "served": True, "storage": True, "schema": {"openAPIV3Schema": {
                        "type": "object", "x-kubernetes-preserve-unknown-fields": True}}}]}}
    cluster.kubectl("apply", "-f", "-", input=json.dumps(crd))
    cluster.kubectl("wait", "--for=condition=Established", "crd/servicemonitors.monitoring.coreos.com")
    yield
    cluster.kubectl("delete", "crd", "servicemonitors.monitoring.coreos.com", "--wait=false", check=False)


@pytest.mark.kube
@pytest.mark.parametrize("mode", MODES)
def test_every_rendered_object_passes_server_side_dry_run(helm: Helm, tmp_path: Path, cluster: kubecluster.Cluster,
                                                          namespace: str, servicemonitor_crd: None,
                                                          mode: str) -> None:
    objs = render(helm, tmp_path, MODES[mode], release="dry", namespace=namespace)
    r = cluster.kubectl("apply", "--dry-run=server", "-n", namespace, "-o", "name", "-f", "-",
                        input=yaml.safe_dump_all(objs), check=False)
    assert r.returncode == 0, r.stderr
    assert len(r.stdout.split()) == len(objs), r.stdout


@pytest.mark.kube
def test_release_namespace_needs_privileged_pod_security(helm: Helm, tmp_path: Path, cluster: kubecluster.Cluster,
                                                         namespace: str) -> None:
    # What docs/helm.md and NOTES.txt say: under "baseline" the pods are refused for their capability (the
    # StatefulSet is admitted with a warning naming it); under "privileged" nothing is said.
    objs = render(helm, tmp_path, {}, release="psa", namespace=namespace)
    text = yaml.safe_dump_all(objs)
    cluster.kubectl("label", "namespace", namespace, "pod-security.kubernetes.io/enforce=baseline")
    r = cluster.kubectl("apply", "--dry-run=server", "-n", namespace, "-f", "-", input=text, check=False)
    assert r.returncode == 0 and "DAC_READ_SEARCH" in r.stderr, r.stderr
    fs = yaml.safe_dump_all(render(helm, tmp_path, MODES["filesystem-volumes"], release="psa-fs", namespace=namespace))
    r = cluster.kubectl("apply", "--dry-run=server", "-n", namespace, "-f", "-", input=fs, check=False)
    assert r.returncode == 0 and 'privileged (container "nfs-provisioner" must not set' in r.stderr, r.stderr
    cluster.kubectl("label", "namespace", namespace, "pod-security.kubernetes.io/enforce=privileged", "--overwrite")
    r = cluster.kubectl("apply", "--dry-run=server", "-n", namespace, "-f", "-", input=text, check=False)
    assert r.returncode == 0 and "DAC_READ_SEARCH" not in r.stderr, r.stderr
