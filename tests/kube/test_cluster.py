"""The local control plane is real: etcd + kube-apiserver + kube-controller-manager
doing what a cluster does (readiness, PV binding, provisioner annotation, RBAC)."""

from __future__ import annotations

import os
import socket
import ssl
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import psutil
import pytest
from kubernetes import client

from tests.support import kubecluster, wait

pytestmark = pytest.mark.kube


def _get(url: str, *, ca: Path, token: str | None = None, cert: tuple[Path, Path] | None = None) -> tuple[int, bytes]:
    ctx = ssl.create_default_context(cafile=str(ca))
    if cert:
        ctx.load_cert_chain(str(cert[0]), str(cert[1]))
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(req, context=ctx, timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def test_readyz_answers_ok(cluster: kubecluster.Cluster) -> None:
    pki = cluster.state_dir / "pki"
    status, body = _get(f"{cluster.api_url}/readyz", ca=cluster.ca_file, cert=(pki / "admin.crt", pki / "admin.key"))
    assert (status, body) == (200, b"ok")


def test_kubectl_sees_the_cluster(cluster: kubecluster.Cluster) -> None:
    out = cluster.kubectl("get", "ns", "-o", "name").stdout.split()
    assert {"namespace/default", "namespace/kube-system"} <= set(out)
    version = cluster.kubectl("version", "-o", "json").stdout
    assert '"gitVersion": "v1.' in version


def test_controller_manager_binds_and_releases(
    core: client.CoreV1Api, storage: client.StorageV1Api, namespace: str, unique: str
) -> None:
    cls = f"manual-{unique}"
    storage.create_storage_class(client.V1StorageClass(
        metadata=client.V1ObjectMeta(name=cls), provisioner="kubernetes.io/no-provisioner",
        volume_binding_mode="Immediate"))
    pv_name = f"pv-{unique}"
    core.create_persistent_volume(client.V1PersistentVolume(
        metadata=client.V1ObjectMeta(name=pv_name),
        spec=client.V1PersistentVolumeSpec(
            capacity={"storage": "1Gi"}, access_modes=["ReadWriteOnce"], storage_class_name=cls,
            persistent_volume_reclaim_policy="Retain", host_path=client.V1HostPathVolumeSource(path="/tmp/x"))))
    core.create_namespaced_persistent_volume_claim(namespace, client.V1PersistentVolumeClaim(
        metadata=client.V1ObjectMeta(name="claim"),
        spec=client.V1PersistentVolumeClaimSpec(
            access_modes=["ReadWriteOnce"], storage_class_name=cls,
            resources=client.V1VolumeResourceRequirements(requests={"storage": "500Mi"}))))

    wait.until(lambda: core.read_namespaced_persistent_volume_claim("claim", namespace).status.phase == "Bound",
               timeout=60, what="PVC Bound by kube-controller-manager")
    pvc = core.read_namespaced_persistent_volume_claim("claim", namespace)
    assert pvc.spec.volume_name == pv_name
    assert core.read_persistent_volume(pv_name).status.phase == "Bound"

    core.delete_namespaced_persistent_volume_claim("claim", namespace)
    wait.until(lambda: core.read_persistent_volume(pv_name).status.phase == "Released",
               timeout=60, what="PV Released after its claim was deleted")
    core.delete_persistent_volume(pv_name)
    storage.delete_storage_class(cls)


def test_external_provisioner_annotation(
    core: client.CoreV1Api, storage: client.StorageV1Api, namespace: str, unique: str
) -> None:
    cls = f"external-{unique}"
    provisioner = f"example.com/test-{unique}"
    storage.create_storage_class(client.V1StorageClass(
        metadata=client.V1ObjectMeta(name=cls), provisioner=provisioner, volume_binding_mode="Immediate"))
    core.create_namespaced_persistent_volume_claim(namespace, client.V1PersistentVolumeClaim(
        metadata=client.V1ObjectMeta(name="claim"),
        spec=client.V1PersistentVolumeClaimSpec(
            access_modes=["ReadWriteMany"], storage_class_name=cls,
            resources=client.V1VolumeResourceRequirements(requests={"storage": "1Mi"}))))

    def annotations() -> dict[str, str] | None:
        ann = core.read_namespaced_persistent_volume_claim("claim", namespace).metadata.annotations or {}
        return ann if "volume.kubernetes.io/storage-provisioner" in ann else None

    ann = wait.until(annotations, timeout=60, what="storage-provisioner annotation on the claim")
    assert ann["volume.kubernetes.io/storage-provisioner"] == provisioner
    assert ann["volume.beta.kubernetes.io/storage-provisioner"] == provisioner
    pvc = core.read_namespaced_persistent_volume_claim("claim", namespace)
    assert pvc.status.phase == "Pending"
    storage.delete_storage_class(cls)


def test_rbac_is_enforced_for_service_accounts(
    cluster: kubecluster.Cluster, core: client.CoreV1Api, namespace: str
) -> None:
    core.create_namespaced_service_account(namespace, client.V1ServiceAccount(
        metadata=client.V1ObjectMeta(name="nobody")))
    token = cluster.kubectl("create", "token", "nobody", "-n", namespace).stdout.strip()
    # The token authenticates (so a 403 below is authorization, not a bad token) ...
    who = cluster.kubectl("auth", "whoami", "--token", token, "-o", "jsonpath={.status.userInfo.username}",
                          "--kubeconfig", "/dev/null", "--server", cluster.api_url,
                          "--certificate-authority", str(cluster.ca_file)).stdout
    assert who == f"system:serviceaccount:{namespace}:nobody"
    # ... and with no roles bound it may not list PersistentVolumes.
    status, body = _get(f"{cluster.api_url}/api/v1/persistentvolumes", ca=cluster.ca_file, token=token)
    assert status == 403, body
    assert b"cannot list resource \\\"persistentvolumes\\\"" in body
    # A garbage token is rejected as unauthenticated.
    status, _ = _get(f"{cluster.api_url}/api/v1/persistentvolumes", ca=cluster.ca_file, token="not-a-token")
    assert status == 401


# ---------------------------------------------------------------- hack/cluster itself


def test_up_is_idempotent_and_env_points_at_kubeconfig(cluster: kubecluster.Cluster) -> None:
    before = cluster.pids()
    r = cluster.hack("up")
    assert "already up" in r.stderr
    assert cluster.pids() == before
    env = cluster.hack("env").stdout.strip()
    assert env == f"export KUBECONFIG={cluster.kubeconfig}"
    assert cluster.hack("status").returncode == 0


def test_down_stops_everything_it_started(tmp_path: Path) -> None:
    c = kubecluster.Cluster(tmp_path / "second")
    try:
        c.up()
        pids = c.pids()
        assert set(pids) == {"etcd", "kube-apiserver", "kube-controller-manager"}
        assert all(psutil.pid_exists(p) for p in pids.values())
        assert c.kubectl("get", "--raw", "/readyz").stdout == "ok"
    finally:
        c.down()
    for p in pids.values():
        assert not psutil.pid_exists(p) or psutil.Process(p).status() == psutil.STATUS_ZOMBIE
    assert list((c.state_dir / "pids").glob("*.pid")) == []
    assert c.hack("status", check=False).returncode == 1


def test_port_in_use_is_a_clear_error(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        c = kubecluster.Cluster(tmp_path / "busy")
        r = c.hack("up", env={"NFSP_APISERVER_PORT": str(port)}, check=False)
    assert r.returncode == 1
    assert f"port 127.0.0.1:{port} for kube-apiserver is in use" in r.stderr
    assert list((c.state_dir / "pids").glob("*.pid")) == []  # etcd, started first, was stopped again


def test_missing_go_is_a_clear_error(tmp_path: Path) -> None:
    env = {"NFSP_CACHE_DIR": str(tmp_path / "empty-cache"), "NFSP_GO": str(tmp_path / "no-go")}
    r = subprocess.run([str(kubecluster.HACK_CLUSTER), "build"], capture_output=True, text=True,
                       env={**os.environ, **env}, timeout=60)
    assert r.returncode == 1
    assert "Go is not installed" in r.stderr
