"""docs/migration.md's steps on the local kubelet node: the Go nfs-provisioner's StatefulSet (its own
deploy/kubernetes/statefulset.yaml, pinned) switched to our image on the Go export root, and a client's handles
from the Go server still reading.

1. The fixture's export root is extracted on the node's disk (the manifest's hostPath); the Go server, Debian
   12's Ganesha 4.3 with the fixture's ``vfs.conf`` unchanged (tests/support/go_fixture.py), serves it and a client
   takes handles of every file, directory and symlink (NFSv4) and of the volumes' roots and files (NFSv3).
2. The fixture's classes, claims and PVs are recreated (tests/support/go_objects.py; the PVs name the Service's
   ClusterIP, as the Go provisioner in a cluster wrote them), and the Go manifest is applied as its users run
   it, stopped (``replicas: 0``: the Go server is scaled to 0), plus our RBAC rules.
3. The switch: the StatefulSet's image becomes ours and it is scaled to 1 (``kubectl set image``, ``kubectl
   scale``); nothing else of the Go manifest changes (its args, env, ``/export`` hostPath, Service).
4. Then, from inside the node's network namespace through the Service's ClusterIP: the old handles read the same
   bytes, every fixture file reads as it is on disk, the fixture's claims stay Bound, and a new claim of a Go class
   is Bound by the appliance.
"""

from __future__ import annotations

import contextlib
import copy
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from tests.support import go_fixture, kubecluster, wait
from tests.support.container_env import Podman
from tests.support.go_objects import Legacy
from tests.support.incluster import docs, kubectl_apply, namespace_gone, only_pod, pod_log
from tests.support.kubenode import Node
from tests.support.paths import FIXTURES

pytestmark = [pytest.mark.node, pytest.mark.kube, pytest.mark.container, pytest.mark.ganesha, pytest.mark.e2e]

GO_MANIFEST = FIXTURES / "go-nfs-server-provisioner-chart" / \
    "deploy-kubernetes-statefulset.yaml"
FIGURES: dict[str, float] = {}


def figure(name: str, value: float) -> None:
    FIGURES[name] = round(value, 2)
    print(f"[migration] {name}: {FIGURES[name]}")


def go_manifest(namespace: str, provisioner: str, root: Path) -> list[dict[str, Any]]:
    """The Go provisioner's statefulset.yaml as its users apply it (in ``namespace``, its ``-provisioner`` name
    ``provisioner``, its hostPath export root ``root``), with the server stopped: replicas 0, and without
    SYS_RESOURCE (see below)."""
    objs = [d for d in yaml.safe_load_all(GO_MANIFEST.read_text()) if d]
    for o in objs:
        o["metadata"]["namespace"] = namespace
        if o["kind"] == "StatefulSet":
            o["spec"]["replicas"] = 0
            pod = o["spec"]["template"]["spec"]
            [c] = pod["containers"]
            assert c["args"] == ["-provisioner=example.com/nfs"], "the manifest pinned is not the one documented"
            c["args"] = [f"-provisioner={provisioner}"]
            # The one change: this machine's root lacks CAP_SYS_RESOURCE (../shared/ENVIRONMENT.md), so runc cannot
            # give it to any container ("unable to apply caps"); the appliance needs only DAC_READ_SEARCH.
            caps = c["securityContext"]["capabilities"]["add"]
            assert caps == ["DAC_READ_SEARCH", "SYS_RESOURCE"]
            caps.remove("SYS_RESOURCE")
            [vol] = pod["volumes"]
            assert vol["hostPath"] == {"path": "/srv"}
            vol["hostPath"]["path"] = str(root)
    return objs


def our_rbac(namespace: str, suffix: str) -> list[dict[str, Any]]:
    """deploy/kube-config/rbac.yaml for the Go manifest's ServiceAccount (nfs-provisioner) in ``namespace``; the
    cluster-scoped names get ``suffix`` (the shared cluster's other tests use the shipped ones)."""
    objs = copy.deepcopy([d for d in docs("rbac.yaml") if d["kind"] != "ServiceAccount" and d["kind"] != "Namespace"])
    for o in objs:
        if o["kind"].startswith("Cluster"):
            o["metadata"]["name"] += f"-{suffix}"
        else:
            o["metadata"]["namespace"] = namespace
        if "roleRef" in o and o["roleRef"]["kind"] == "ClusterRole":
            o["roleRef"]["name"] += f"-{suffix}"
        for s in o.get("subjects", []):
            s["namespace"] = namespace
    return objs


@pytest.fixture(scope="module")
def own_image(kube_node: Node) -> Iterator[str]:
    """The image built from this tree under a name of this run's own, imported into the node's containerd: the
    shared name (nfs-provisioner:0.1.0) may be re-imported by another run between the import and the pod's start."""
    podman = Podman()
    tag = podman.build(f"localhost/nfs-provisioner:migration-{uuid.uuid4().hex[:8]}")
    try:
        kube_node.import_image(podman.global_args, tag)
        yield tag
    finally:
        subprocess.run([str(kube_node.ctr), "--address", str(kube_node.containerd_socket), "-n", "k8s.io", "images",
                        "rm", tag], capture_output=True, check=False)
        podman("rmi", tag, check=False)


@pytest.fixture
def switched(cluster: kubecluster.Cluster, core: client.CoreV1Api, kube_node: Node) -> Iterator[dict[str, str]]:
    suffix = uuid.uuid4().hex[:8]
    names = {"suffix": suffix, "namespace": f"go-nfs-{suffix}"}
    yield names
    cluster.kubectl("delete", "namespace", names["namespace"], "--wait=false", check=False)
    wait.until(lambda: namespace_gone(core, names["namespace"]), timeout=180, what="the appliance's namespace gone")
    for kind in ("clusterrole", "clusterrolebinding"):
        cluster.kubectl("delete", kind, "-l", f"nfsp-migration={suffix}", check=False)


def test_the_go_statefulset_switched_to_our_image_keeps_volumes_and_handles(
        cluster: kubecluster.Cluster, core: client.CoreV1Api, storage: client.StorageV1Api, kube_node: Node,
        own_image: str, switched: dict[str, str], tmp_path: Path) -> None:
    node, ns, suffix = kube_node, switched["namespace"], switched["suffix"]
    root = go_fixture.extract(tmp_path / "root")
    exports = go_fixture.go_exports((root / "vfs.conf").read_text())
    on_disk = {f"{e.name}/{rel}": (root / e.name / rel).read_bytes() for e in exports for rel in go_fixture.FILES}

    # 1. The Go server serves the export root; a client takes its handles.
    go = go_fixture.GoGanesha(root, tmp_path)
    try:
        go.start()
        v4 = go_fixture.take_v4(exports, port=2049, netns=go.ns.path)
        v3 = go_fixture.take_v3(exports, port=2049, mnt_port=go_fixture.GO_MNT_PORT, netns=go.ns.path)
    finally:
        go.close()

    # 2. The Go deployment as its manifest has it, scaled to 0; the fixture's objects naming its Service.
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=ns)))
    provisioner = f"example.com/nfs-{suffix}"
    rbac = our_rbac(ns, suffix)
    for o in rbac:
        o["metadata"].setdefault("labels", {})["nfsp-migration"] = suffix
    kubectl_apply(cluster, go_manifest(ns, provisioner, root) + rbac)
    cluster_ip = core.read_namespaced_service("nfs-provisioner", ns).spec.cluster_ip
    legacy = Legacy(core, storage, suffix, server=cluster_ip, provisioner=provisioner)
    try:
        legacy.create()

        # 3. The switch: our image, then the StatefulSet scaled back to 1.
        started = time.monotonic()
        cluster.kubectl("-n", ns, "set", "image", "statefulset/nfs-provisioner", f"nfs-provisioner={own_image}")
        cluster.kubectl("-n", ns, "scale", "statefulset/nfs-provisioner", "--replicas=1")
        pod = only_pod(core, ns, node, timeout=180)  # running: the Go manifest has no readiness probe
        adopted = "Go nfs-provisioner volumes: 4 adopted (4 at this start), 0 refused"
        wait.until(lambda: adopted in pod_log(node, ns, pod.metadata.name, tail=400), timeout=60,
                   what=lambda: f"the adoption's line in the pod's log\n{pod_log(node, ns, pod.metadata.name)}")
        figure("scale to 1 with our image -> adoption logged (s)", time.monotonic() - started)

        # 4. From the node's network namespace, through the Go Service's ClusterIP.
        def old_handles_read() -> dict[str, str] | None:
            try:
                got = go_fixture.reread_v4(v4, host=cluster_ip, port=2049, netns=node.netns)
            except OSError:
                return None
            return got if set(got.values()) == {"same"} else None

        wait.until(old_handles_read, timeout=150, interval=0.5, what=lambda: f"the Go server's handles read through "
                   f"{cluster_ip}: {go_fixture.reread_v4(v4, host=cluster_ip, port=2049, netns=node.netns)}")
        figure("scale to 1 -> every old NFSv4 handle reads through the ClusterIP (s)", time.monotonic() - started)
        assert go_fixture.reread_v3(v3, host=cluster_ip, port=2049, netns=node.netns) == {t.path: "same" for t in v3}
        now = go_fixture.take_v4(exports, host=cluster_ip, port=2049, netns=node.netns)
        assert [t.fh for t in now] == [t.fh for t in v4], "the appliance hands out the Go server's very handles"
        assert {t.path: t.data for t in now if t.path in on_disk} == on_disk

        for claim in ("data", "keep", "squashed", "shared"):
            assert core.read_namespaced_persistent_volume_claim(claim, legacy.namespace).status.phase == "Bound"
        core.create_namespaced_persistent_volume_claim(legacy.namespace, {
            "apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "new"},
            "spec": {"accessModes": ["ReadWriteMany"], "storageClassName": legacy.cls("example-nfs"),
                     "resources": {"requests": {"storage": "1Mi"}}}})
        pv_name = wait.until(lambda: (c := core.read_namespaced_persistent_volume_claim("new", legacy.namespace))
                             .status.phase == "Bound" and c.spec.volume_name, timeout=60,
                             what=lambda: f"a new claim Bound\n{pod_log(node, ns, pod.metadata.name)}")
        pv = core.read_persistent_volume(pv_name)
        assert pv.spec.nfs.server == cluster_ip and (root / pv_name).is_dir()
        assert (root / "vfs.conf.go-nfs-provisioner").read_text() == (go_fixture.FIXTURE / "vfs.conf").read_text()
    finally:
        cluster.kubectl("-n", ns, "scale", "statefulset/nfs-provisioner", "--replicas=0", check=False)
        with contextlib.suppress(AssertionError):
            wait.until(lambda: not core.list_namespaced_pod(ns).items, timeout=60, what="the appliance pod gone")
        legacy.delete()
