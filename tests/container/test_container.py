"""The real Dockerfile, built with podman and run: provisions the example claim
against the local control plane and serves the volume over NFS from the
container's own Ganesha."""

from __future__ import annotations

import json
import os
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client

from nfs_provisioner.volumes import containment
from tests.support import kubecluster, wait
from tests.support.container_env import LIMITS, RUN_FLAGS, Podman
from tests.support.ganesha_env import Client, free_port

pytestmark = [pytest.mark.container, pytest.mark.kube, pytest.mark.ganesha]


@pytest.fixture(scope="module")
def image() -> tuple[Podman, str]:
    podman = Podman()
    return podman, podman.build()


def test_image_contents(image: tuple[Podman, str]) -> None:
    podman, tag = image
    out = podman("run", "--rm", *RUN_FLAGS, *LIMITS, "--network=host", tag, "--version").stdout
    assert out.strip() == "nfs-provisioner 0.1.0"
    check = ("for b in ganesha.nfsd dbus-daemon rpcbind rpc.statd xfs_quota; do command -v $b >/dev/null || "
             "echo missing $b; done; for b in gcc cc make pip pip3; do command -v $b >/dev/null && echo tool $b; "
             "done; python3 -c 'import importlib.resources as r; "
             "print(sorted(p.name for p in (r.files(\"nfs_provisioner\") / \"ganesha_templates\").iterdir()))'")
    r = podman("run", "--rm", *RUN_FLAGS, *LIMITS, "--network=host", "--entrypoint", "sh", tag, "-c", check)
    assert "missing" not in r.stdout and "tool" not in r.stdout, r.stdout
    assert "ganesha.conf.j2" in r.stdout and "export.conf.j2" in r.stdout
    # What a real pod needs besides podman's defaults: /etc/services (rpcbind) and /etc/mtab (AddExport).
    r = podman("run", "--rm", *RUN_FLAGS, *LIMITS, "--network=host", "--entrypoint", "sh", tag, "-c",
               "ganesha.nfsd -v; python3 --version; readlink /etc/mtab; grep -c '^sunrpc' /etc/services")
    assert r.stdout.splitlines()[0].startswith("NFS-Ganesha Release = V9."), r.stdout  # trixie-backports
    assert r.stdout.splitlines()[1].startswith("Python 3.13"), r.stdout
    assert r.stdout.splitlines()[2:] == ["/proc/self/mounts", "2"], r.stdout
    config = podman("image", "inspect", "--format", "{{json .Config.Entrypoint}} {{json .Config.ExposedPorts}}",
                    tag).stdout
    assert '["nfs-provisioner"]' in config
    for port in ("2049/tcp", "2049/udp", "20048/tcp", "32803/udp", "875/tcp", "111/udp", "662/tcp"):
        assert port in config


@pytest.fixture
def container(image: tuple[Podman, str], cluster: kubecluster.Cluster, tmp_path: Path) -> Iterator[dict[str, object]]:
    podman, tag = image
    name = f"nfsp-test-{uuid.uuid4().hex[:8]}"
    export = tmp_path / "export"
    export.mkdir()
    nfs_port, metrics_port = free_port(), free_port()
    provisioner = f"example.com/nfs-{name[-8:]}"
    podman("run", "-d", "--name", name, *RUN_FLAGS, *LIMITS, "--network=host", "--cap-add", "DAC_READ_SEARCH",
           "-v", f"{export}:/export", "-v", f"{cluster.kubeconfig}:/kubeconfig:ro", tag,
           "--kubeconfig=/kubeconfig", f"--provisioner={provisioner}", "--nfs-bind-address=127.0.0.1",
           f"--nfs-port={nfs_port}", "--nfsv3=false", "--grace-period=0", "--server-hostname=127.0.0.1",
           f"--metrics-address=127.0.0.1:{metrics_port}")
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/readyz", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            state = podman("inspect", "--format", "{{.State.Status}}", name).stdout.strip()
            if state != "running" or time.monotonic() > deadline:
                raise AssertionError(f"container {state}, not ready:\n{podman('logs', name, check=False).stderr}")
            time.sleep(0.2)
        yield {"name": name, "export": export, "nfs_port": nfs_port, "provisioner": provisioner, "podman": podman}
    finally:
        podman("stop", "-t", "20", name, check=False)
        podman("rm", "-f", name, check=False)


def test_container_provisions_and_serves_over_nfs(container: dict[str, object], core: client.CoreV1Api,
                                                 storage: client.StorageV1Api, namespace: str, unique: str) -> None:
    export = container["export"]
    assert isinstance(export, Path)
    cls = f"example-nfs-{unique}"
    storage.create_storage_class(client.V1StorageClass(metadata=client.V1ObjectMeta(name=cls),
                                                       provisioner=str(container["provisioner"]),
                                                       mount_options=["vers=4.1"]))
    core.create_namespaced_persistent_volume_claim(namespace, client.V1PersistentVolumeClaim(
        metadata=client.V1ObjectMeta(name="nfs"),
        spec=client.V1PersistentVolumeClaimSpec(access_modes=["ReadWriteMany"], storage_class_name=cls,
                                                resources=client.V1VolumeResourceRequirements(
                                                    requests={"storage": "1Mi"}))))
    wait.until(lambda: core.read_namespaced_persistent_volume_claim("nfs", namespace).status.phase == "Bound",
               timeout=60, what="claim Bound by the container's provisioner")
    pv = core.read_persistent_volume(core.read_namespaced_persistent_volume_claim("nfs", namespace).spec.volume_name)
    assert pv.spec.nfs.path == f"/export/{pv.metadata.name}"
    assert (export / pv.metadata.name).is_dir()

    nfs = Client(port=int(str(container["nfs_port"])))
    payload = os.urandom(3000)
    put = nfs.put(payload, pv.spec.nfs.path + "/SUCCESS")
    assert put.returncode == 0, put.stderr
    assert (export / pv.metadata.name / "SUCCESS").read_bytes() == payload
    assert nfs.cat(pv.spec.nfs.path + "/SUCCESS").stdout == payload

    core.delete_namespaced_persistent_volume_claim("nfs", namespace)
    wait.until(lambda: not (export / pv.metadata.name).exists(), timeout=60, what="volume directory removed")
    storage.delete_storage_class(cls)


def test_a_seccomp_profile_that_forbids_file_handles_stops_the_start_with_one_line(
        image: tuple[Podman, str], cluster: kubecluster.Cluster, tmp_path: Path) -> None:
    """containerd 1.6's RuntimeDefault answers name_to_handle_at with EPERM, and then every export failed later
    with a Ganesha log line only. A profile doing the same: the appliance exits 1 at once, saying so."""
    podman, tag = image
    profile = tmp_path / "seccomp.json"
    profile.write_text(json.dumps({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
        {"names": ["name_to_handle_at"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}]}))
    (tmp_path / "export").mkdir()
    r = podman("run", "--rm", *RUN_FLAGS, *LIMITS, "--network=host", "--cap-add", "DAC_READ_SEARCH",
               "--security-opt", f"seccomp={profile}", "-v", f"{tmp_path / 'export'}:/export",
               "-v", f"{cluster.kubeconfig}:/kubeconfig:ro", tag, "--kubeconfig=/kubeconfig",
               "--provisioner=example.com/nfs-seccomp", f"--nfs-port={free_port()}", "--nfsv3=false",
               "--server-hostname=127.0.0.1", "--metrics-address=", check=False, timeout=120)
    assert r.returncode == 1, r.stderr
    errors = [line for line in r.stderr.splitlines() if "error" in line.lower()]
    assert errors == ["nfs-provisioner: error: name_to_handle_at(2) on export root /export failed (EPERM): "
                      f"{containment.RUNTIME_HINT}"], r.stderr
    assert "Traceback" not in r.stderr and not list((tmp_path / "export").glob("pvc-*"))
