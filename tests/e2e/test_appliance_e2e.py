"""The classic nfs-provisioner flow, end to end: real control plane (the PV
binder binds), real appliance process with its own Ganesha, real NFS client."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from tests.support import kubecluster, wait
from tests.support.appliance_env import Appliance
from tests.support.builders import NFS41, make_claim, make_class

pytestmark = [pytest.mark.e2e, pytest.mark.kube, pytest.mark.ganesha]


def test_classic_flow(appliance: Appliance, core: client.CoreV1Api, storage: client.StorageV1Api,
                      namespace: str, unique: str) -> None:
    cls = f"example-nfs-{unique}"
    make_class(cls, appliance.provisioner, mount_options=NFS41, api=storage)
    appliance.start()
    make_claim(namespace, "nfs", cls, api=core)

    wait.until(lambda: core.read_namespaced_persistent_volume_claim("nfs", namespace).status.phase == "Bound",
               timeout=60, what="claim Bound")
    pvc = core.read_namespaced_persistent_volume_claim("nfs", namespace)
    pv = core.read_persistent_volume(pvc.spec.volume_name)
    path = appliance.export_root / pv.metadata.name
    assert pv.metadata.name == f"pvc-{pvc.metadata.uid}"
    assert pv.spec.nfs.server == "127.0.0.1"
    assert pv.spec.nfs.path == str(path)
    assert pv.spec.capacity == {"storage": "1Mi"}
    assert pv.spec.access_modes == ["ReadWriteMany"]
    assert pv.spec.persistent_volume_reclaim_policy == "Delete"
    assert pv.spec.mount_options == ["vers=4.1"]
    assert pv.spec.storage_class_name == cls
    assert pv.metadata.annotations["pv.kubernetes.io/provisioned-by"] == appliance.provisioner
    identity = (appliance.export_root / "nfs-provisioner.identity").read_text().strip()
    assert pv.metadata.annotations["Provisioner_Id"] == identity
    events = core.list_namespaced_event(namespace, field_selector="involvedObject.name=nfs").items
    assert "ProvisioningSucceeded" in {e.reason for e in events}

    nfs = appliance.client()
    payload = os.urandom(3900)
    put = nfs.put(payload, path / "SUCCESS")
    assert put.returncode == 0, put.stderr
    assert nfs.cat(path / "SUCCESS").stdout == payload

    # Restart the appliance: the export comes back from its file, same path, data readable.
    assert appliance.stop() == 0
    appliance.start()
    assert nfs.cat(path / "SUCCESS").stdout == payload

    core.delete_namespaced_persistent_volume_claim("nfs", namespace)
    wait.until(lambda: not core.list_persistent_volume(
        field_selector=f"metadata.name={pv.metadata.name}").items, timeout=60, what="PV deleted")
    assert not path.exists()
    assert nfs.cat(path / "SUCCESS").returncode != 0
    assert appliance.stop() == 0
    storage.delete_storage_class(cls)


def test_expansion_is_finished_the_way_kubernetes_expects(appliance: Appliance, core: client.CoreV1Api,
                                                          storage: client.StorageV1Api, namespace: str,
                                                          unique: str) -> None:
    cls = f"expand-{unique}"
    make_class(cls, appliance.provisioner, expansion=True, mount_options=NFS41, api=storage)
    appliance.start()
    make_claim(namespace, "nfs", cls, api=core)
    wait.until(lambda: core.read_namespaced_persistent_volume_claim("nfs", namespace).status.phase == "Bound",
               timeout=60, what="claim Bound")
    pv_name = core.read_namespaced_persistent_volume_claim("nfs", namespace).spec.volume_name

    core.patch_namespaced_persistent_volume_claim("nfs", namespace,
                                                  {"spec": {"resources": {"requests": {"storage": "2Mi"}}}})
    wait.until(lambda: (core.read_namespaced_persistent_volume_claim("nfs", namespace).status.capacity or {})
               .get("storage") == "2Mi", timeout=60, what=lambda: f"claim capacity 2Mi\n{appliance.log()}")
    pvc = core.read_namespaced_persistent_volume_claim("nfs", namespace)
    assert core.read_persistent_volume(pv_name).spec.capacity == {"storage": "2Mi"}
    assert not [c for c in pvc.status.conditions or [] if c.type in ("Resizing", "FileSystemResizePending")]
    assert not pvc.status.allocated_resource_statuses
    reasons = [e.reason for e in core.list_namespaced_event(namespace, field_selector="involvedObject.name=nfs").items]
    assert "Resizing" in reasons and "VolumeResizeSuccessful" in reasons

    # The PV says 5Mi (edited by hand); a claim asking for 3Mi would shrink it: refused with an event.
    core.patch_persistent_volume(pv_name, {"spec": {"capacity": {"storage": "5Mi"}}})
    core.patch_namespaced_persistent_volume_claim("nfs", namespace,
                                                  {"spec": {"resources": {"requests": {"storage": "3Mi"}}}})

    def shrink_refused() -> bool:
        evs = core.list_namespaced_event(namespace, field_selector="involvedObject.name=nfs").items
        return any(e.reason == "VolumeResizeFailed" and "shrinking is not supported" in e.message for e in evs)

    wait.until(shrink_refused, timeout=30, what="VolumeResizeFailed event for a shrink")
    assert core.read_persistent_volume(pv_name).spec.capacity == {"storage": "5Mi"}
    assert core.read_namespaced_persistent_volume_claim("nfs", namespace).status.capacity == {"storage": "2Mi"}
    storage.delete_storage_class(cls)


def test_quota_on_a_filesystem_without_project_quotas_is_a_clear_error(appliance: Appliance) -> None:
    appliance.extra.append("--enable-xfs-quota")
    appliance.start(wait_ready=False)
    assert appliance.proc is not None
    assert appliance.proc.wait(30) == 1
    last = appliance.text().strip().splitlines()[-1]
    assert last.startswith("nfs-provisioner: error: ") and "XFS" in last, last


def test_two_appliances_on_one_class_each_delete_only_their_own(
        cluster: kubecluster.Cluster, core: client.CoreV1Api, storage: client.StorageV1Api, namespace: str,
        unique: str, tmp_path: Path) -> None:
    provisioner = f"example.com/pool-{unique}"
    pool = [Appliance(kubeconfig=cluster.kubeconfig, export_root=tmp_path / f"export-{i}", provisioner=provisioner,
                      log_dir=tmp_path) for i in range(2)]
    cls = f"pool-{unique}"
    make_class(cls, provisioner, mount_options=NFS41, api=storage)
    try:
        for a in pool:
            a.start()
        names = [f"c{i}" for i in range(12)]
        for n in names:
            make_claim(namespace, n, cls, api=core)
        wait.until(lambda: all(core.read_namespaced_persistent_volume_claim(n, namespace).status.phase == "Bound"
                               for n in names), timeout=90, what="12 claims Bound")
        identities = [(a.export_root / "nfs-provisioner.identity").read_text().strip() for a in pool]
        assert identities[0] != identities[1]
        pvs = [core.read_persistent_volume(core.read_namespaced_persistent_volume_claim(n, namespace).spec.volume_name)
               for n in names]

        def volume_dirs(a: Appliance) -> set[str]:
            return {p.name for p in a.export_root.iterdir() if p.name.startswith("pvc-")}

        # Each volume lives on exactly the appliance named on its PV; nothing surplus anywhere.
        def settled() -> bool:
            return all(volume_dirs(a) == {pv.metadata.name for pv in pvs
                                          if pv.metadata.annotations["Provisioner_Id"] == identities[i]}
                       for i, a in enumerate(pool))
        wait.until(settled, timeout=30, what="no surplus volume on either appliance")
        for pv in pvs:
            owner = identities.index(pv.metadata.annotations["Provisioner_Id"])
            assert pv.spec.nfs.path == str(pool[owner].export_root / pv.metadata.name)

        for n in names:
            core.delete_namespaced_persistent_volume_claim(n, namespace)
        wait.until(lambda: not [p for p in core.list_persistent_volume().items if p.spec.storage_class_name == cls],
                   timeout=90, what="all PVs deleted")
        assert volume_dirs(pool[0]) == set() and volume_dirs(pool[1]) == set()
    finally:
        for a in pool:
            a.close()
        storage.delete_storage_class(cls)


@pytest.mark.parametrize("when", ["Ganesha ready", "serving /metrics"])
def test_sigterm_while_starting_leaves_no_process_behind(appliance: Appliance, when: str) -> None:
    import signal
    import time


    appliance.start(wait_ready=False)
    assert appliance.proc is not None
    deadline = time.monotonic() + 30
    while when not in appliance.log_file.read_text(errors="replace"):
        assert time.monotonic() < deadline and appliance.proc.poll() is None, appliance.log()
        time.sleep(0.005)
    appliance.proc.send_signal(signal.SIGTERM)
    assert appliance.proc.wait(60) == 0, appliance.log()
    assert "started dbus-daemon" in appliance.text()
    assert appliance.leftovers() == [], appliance.log()


REJECTIONS = [
    ({"parameters": {"size": "1"}}, {}, "invalid parameter 'size'"),
    ({"parameters": {"gid": "root"}}, {}, "invalid value 'root' for parameter gid"),
    ({"parameters": {"onDelete": "shred"}}, {}, "parameter onDelete"),
    ({}, {"selector": {"matchLabels": {"a": "b"}}}, "claim Selector is not supported"),
    ({}, {"resources": {"requests": {"storage": "900Ei"}}}, "bytes are free on the export root"),
]


@pytest.mark.parametrize(("class_extra", "claim_spec", "message"), REJECTIONS)
def test_rejections_reach_the_user_as_events_and_leave_nothing(
        appliance: Appliance, core: client.CoreV1Api, storage: client.StorageV1Api, namespace: str, unique: str,
        class_extra: dict[str, Any], claim_spec: dict[str, Any], message: str) -> None:
    cls = f"reject-{unique}"
    storage.create_storage_class({"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
                                  "metadata": {"name": cls}, "provisioner": appliance.provisioner, **class_extra})
    appliance.start()
    before = sorted(p.name for p in appliance.export_root.iterdir())
    spec = {"storageClassName": cls, "accessModes": ["ReadWriteMany"],
            "resources": {"requests": {"storage": "1Mi"}}, **claim_spec}
    core.create_namespaced_persistent_volume_claim(namespace, {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                                                               "metadata": {"name": "bad"}, "spec": spec})

    def failed_event() -> str | None:
        for e in core.list_namespaced_event(namespace, field_selector="involvedObject.name=bad").items:
            if e.reason == "ProvisioningFailed" and e.type == "Warning" and message in e.message:
                return str(e.message)
        return None

    text = wait.until(failed_event, timeout=30, what=f"ProvisioningFailed event with {message!r}")
    assert len(text.splitlines()) == 1
    assert core.read_namespaced_persistent_volume_claim("bad", namespace).status.phase == "Pending"
    assert sorted(p.name for p in appliance.export_root.iterdir()) == before
    assert not [p for p in core.list_persistent_volume().items if p.spec.storage_class_name == cls]
    storage.delete_storage_class(cls)


def test_master_overrides_the_kubeconfig_server(cluster: kubecluster.Cluster, tmp_path: Path, unique: str) -> None:
    import yaml

    cfg = yaml.safe_load(cluster.kubeconfig.read_text())
    cfg["clusters"][0]["cluster"]["server"] = "https://127.0.0.1:1"  # nothing listens there
    wrong = tmp_path / "wrong-server.kubeconfig"
    wrong.write_text(yaml.safe_dump(cfg))
    a = Appliance(kubeconfig=wrong, export_root=tmp_path / "export", provisioner=f"example.com/m-{unique}",
                  log_dir=tmp_path, extra=[f"--master={cluster.api_url}"])
    try:
        a.start()  # ready means its caches were filled from the API server --master names
        assert a.get("/readyz")[0] == 200
    finally:
        a.close()
