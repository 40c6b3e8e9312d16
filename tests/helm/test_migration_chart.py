"""The Go chart's values on ours (docs/migration.md "Helm values").

The Go chart is pinned byte for byte in tests/fixtures/go-nfs-server-provisioner-chart (its SOURCE names the
commit). Its values are every key of its values.yaml, the keys it documents commented out (``# existingClaim:``)
and every ``.Values.x`` its templates read; docs/migration.md must map each one onto a value of ours (that our
chart's schema knows) or say it is not carried. Rendered with helm: the Go names our chart accepts do what the
Go chart did with them, and a value not carried is refused with one line naming it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.helm_env import CHART, Helm
from tests.support.migration_chart import GO_CHART, pop, table


def render(helm: Helm, tmp: Path, values: dict[str, Any], check: bool = True) -> Any:
    f = tmp / f"values-{len(list(tmp.glob('values-*')))}.yaml"
    f.write_text(yaml.safe_dump(values))
    r = helm("template", "nfs", str(CHART), "--namespace", "nfs", "-f", str(f), check=check)
    return r if not check else [d for d in yaml.safe_load_all(r.stdout) if d]


def kind(objs: list[dict[str, Any]], k: str) -> dict[str, Any]:
    [o] = [o for o in objs if o["kind"] == k]
    return o


@pytest.mark.helm
def test_the_go_names_our_chart_accepts_do_what_they_did(tmp_path: Path) -> None:
    helm = Helm(tmp_path / "helm")
    objs = render(helm, tmp_path, {
        "replicaCount": 1,
        "image": {"repository": "reg/nfsp", "digest": "sha256:" + "ab" * 32},
        "extraArgs": {"device-based-fsids": False, "grace-period": 0},
        "storageClass": {"provisionerName": "cluster.local/nfs-nfs-server-provisioner", "name": "nfs"},
        "persistence": {"enabled": True, "existingClaim": "data-nfs-nfs-server-provisioner-0",
                        "accessMode": "ReadWriteOnce"},
        "service": {"clusterIP": "10.96.0.50", "externalIPs": ["192.0.2.7"]},
    })
    sts = kind(objs, "StatefulSet")
    pod = sts["spec"]["template"]["spec"]
    [c] = [c for c in pod["containers"] if c["name"] == "nfs-provisioner"]
    assert c["image"] == "reg/nfsp@sha256:" + "ab" * 32
    assert {"-device-based-fsids=false", "-grace-period=0"} <= set(c["args"])
    assert "--provisioner=cluster.local/nfs-nfs-server-provisioner" in c["args"]
    assert kind(objs, "StorageClass")["provisioner"] == "cluster.local/nfs-nfs-server-provisioner"
    assert "volumeClaimTemplates" not in sts["spec"]
    assert {"name": "export-volume", "persistentVolumeClaim": {"claimName": "data-nfs-nfs-server-provisioner-0"}} \
        in pod["volumes"]
    svc = kind(objs, "Service")["spec"]
    assert svc["clusterIP"] == "10.96.0.50" and svc["externalIPs"] == ["192.0.2.7"]

    vct = kind(render(helm, tmp_path, {"replicaCount": 2, "leaderElect": True,
                                       "persistence": {"accessMode": "ReadWriteOncePod"}}), "StatefulSet")["spec"]
    assert vct["replicas"] == 2 and vct["volumeClaimTemplates"][0]["spec"]["accessModes"] == ["ReadWriteOncePod"]
    r = render(helm, tmp_path, {"replicaCount": 2, "leaderElect": True,
                                "persistence": {"existingClaim": "data-x-0"}}, check=False)
    assert r.returncode != 0 and "persistence.existingClaim is one claim" in r.stderr


def put(values: dict[str, Any], key: str, value: Any) -> None:
    *parents, leaf = key.split(".")
    node = values
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = value


@pytest.mark.helm
def test_the_go_values_file_renders_once_moved_to_our_names(tmp_path: Path) -> None:
    """The Go chart's own values.yaml: refused as it is (naming the values not carried), rendered once those are
    taken out and the renamed ones moved to our names, keeping what the Go values say."""
    helm = Helm(tmp_path / "helm")
    go = yaml.safe_load((GO_CHART / "values.yaml").read_text())
    r = render(helm, tmp_path, go, check=False)
    assert r.returncode != 0 and "priorityClass" in r.stderr and "nfsPort" in r.stderr, r.stderr
    ignored = {"rbac.serviceAccountName"} if go["rbac"]["create"] else set()  # the Go chart reads it only then
    for go_key, (ours, _) in table().items():
        if ours != go_key:
            value = pop(go, go_key)
            if ours != "not carried" and value is not None and go_key not in ignored:
                put(go, ours, value)
    go = {k: v for k, v in go.items() if v != {}}  # sections left empty (priorityClass)
    objs = render(helm, tmp_path, go)
    sc = kind(objs, "StorageClass")
    assert sc["metadata"]["name"] == "nfs" and sc["mountOptions"] == ["vers=3", "retrans=2", "timeo=30"]
    assert sc["reclaimPolicy"] == "Delete" and sc["allowVolumeExpansion"] is True
    sts = kind(objs, "StatefulSet")
    assert sts["spec"]["replicas"] == 1 and "volumeClaimTemplates" not in sts["spec"], "persistence.enabled: false"
    image = sts["spec"]["template"]["spec"]["containers"][0]["image"]
    assert image == "registry.k8s.io/sig-storage/nfs-provisioner:v4.0.8"
    assert kind(objs, "ServiceAccount")["metadata"]["name"] == "nfs-nfs-provisioner"
