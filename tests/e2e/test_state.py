"""The appliance's own state, attacked or lost, through the real appliance process, the real control
plane and real NFS-Ganesha: hand-made PVs that name directories which are not their volumes, tampered
export files, symlinked state directories, two appliances on one root, a removed ``.ganesha`` and a
changed ``--export-root``. Each case shows what a user sees: events, one log or error line, data
readable over NFS (libnfs), files untouched."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from kubernetes import client

from tests.support import kubecluster, treesnap, wait
from tests.support.appliance_env import Appliance
from tests.support.builders import make_class
from tests.support.state import bound_volume, events_for, pv_gone, remove_pv

pytestmark = [pytest.mark.e2e, pytest.mark.kube, pytest.mark.ganesha]

VOLATILE = ("ganesha.log", "recovery")


def exited_with_one_line(a: Appliance) -> str:
    assert a.proc is not None
    assert a.proc.wait(30) == 1, a.log()
    last = a.text().strip().splitlines()[-1]
    assert last.startswith("nfs-provisioner: error: "), a.log()
    return last


# ---------------------------------------------------------------- section 3: hand-made PVs


def test_hand_made_pvs_never_delete_directories_that_are_not_their_volumes(
        appliance: Appliance, core: client.CoreV1Api, storage: client.StorageV1Api, namespace: str,
        unique: str) -> None:
    cls, kept_cls = f"state-{unique}", f"state-retain-{unique}"
    make_class(cls, appliance.provisioner, api=storage)
    make_class(kept_cls, appliance.provisioner, parameters={"onDelete": "retain"}, api=storage)
    appliance.start()
    root = appliance.export_root
    normal = bound_volume(core, namespace, cls, "normal")
    retained = bound_volume(core, namespace, kept_cls, "retained")
    (root / retained.metadata.name / "precious").write_text("retained data")
    core.delete_namespaced_persistent_volume_claim("retained", namespace)
    wait.until(lambda: pv_gone(core, retained.metadata.name), timeout=60, what="retained volume's PV deleted")
    assert (root / retained.metadata.name / "precious").read_text() == "retained data"
    (root / "victimdir").mkdir()
    (root / "victimdir" / "precious").write_text("never a volume")
    assert appliance.stop() == 0  # later, another run (this one ignores its own just-deleted PV names for 5 min)
    appliance.start()
    before = treesnap.snapshot(root, contents=True, ignore=VOLATILE)

    # What anyone who can read PVs sees: the annotations of a real volume, copied onto hand-made PVs.
    ann = {k: v for k, v in normal.metadata.annotations.items()
           if k in ("Provisioner_Id", "pv.kubernetes.io/provisioned-by", "nfs-provisioner.io/on-delete")}
    forged = ["victimdir", retained.metadata.name]
    for name in forged:
        remove_pv(core, name)
        core.create_persistent_volume({
            "apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": name, "annotations": ann},
            "spec": {"capacity": {"storage": "1Mi"}, "accessModes": ["ReadWriteMany"],
                     "persistentVolumeReclaimPolicy": "Delete", "storageClassName": cls,
                     "nfs": {"server": "127.0.0.1", "path": str(root / name)},
                     "claimRef": {"namespace": namespace, "name": "no-such-claim",
                                  "uid": "7d0c9a1e-0000-4000-8000-00000000dead"}}})
    try:
        for name in forged:
            wait.until(lambda n=name: any(e.reason == "VolumeFailedDelete" and "no record of creating volume" in
                                          e.message and "refusing to delete" in e.message
                                          for e in events_for(core, n)),
                       timeout=60, what=lambda n=name: f"VolumeFailedDelete for {n}\n{appliance.log()}")
            assert core.read_persistent_volume(name).status.phase == "Released"
        assert treesnap.snapshot(root, contents=True, ignore=VOLATILE) == before
        assert (root / "victimdir" / "precious").read_text() == "never a volume"
        assert (root / retained.metadata.name / "precious").read_text() == "retained data"
        # Stray Released PVs are logged at the next start, not adopted, and do not hold readiness hostage.
        assert appliance.stop() == 0
        appliance.start()
        assert "volume victimdir: no record of this appliance and not adopted (no export of it exists)" \
            in appliance.text()

        # A real volume is still deleted, directory and all.
        core.delete_namespaced_persistent_volume_claim("normal", namespace)
        wait.until(lambda: pv_gone(core, normal.metadata.name), timeout=60, what="normal PV deleted")
        assert not (root / normal.metadata.name).exists()
        assert (root / "victimdir" / "precious").read_text() == "never a volume"
    finally:
        for name in forged:
            remove_pv(core, name)
        storage.delete_storage_class(cls)
        storage.delete_storage_class(kept_cls)


def test_volumes_made_before_records_are_adopted_and_still_deleted(
        appliance: Appliance, core: client.CoreV1Api, storage: client.StorageV1Api, namespace: str,
        unique: str) -> None:
    cls = f"state-{unique}"
    make_class(cls, appliance.provisioner, api=storage)
    appliance.start()
    pv = bound_volume(core, namespace, cls, "old")
    record = appliance.export_root / ".volumes" / f"{pv.metadata.name}.json"
    assert json.loads(record.read_text())["claim_uid"] == pv.spec.claim_ref.uid
    assert appliance.stop() == 0
    record.unlink()  # what an export root of an older version looks like

    appliance.start()
    assert f"volume {pv.metadata.name}: adopted (made before volume records)" in appliance.text()
    adopted = json.loads(record.read_text())
    assert adopted["claim_uid"] == pv.spec.claim_ref.uid and adopted["adopted"] is True
    core.delete_namespaced_persistent_volume_claim("old", namespace)
    wait.until(lambda: pv_gone(core, pv.metadata.name), timeout=60, what="adopted volume deleted")
    assert not (appliance.export_root / pv.metadata.name).exists()
    storage.delete_storage_class(cls)


# ---------------------------------------------------------------- section 4: the appliance's own state


def test_a_tampered_export_file_is_served_as_its_header_says(
        appliance: Appliance, core: client.CoreV1Api, storage: client.StorageV1Api, namespace: str,
        unique: str) -> None:
    cls = f"state-{unique}"
    make_class(cls, appliance.provisioner, api=storage)
    appliance.start()
    pv = bound_volume(core, namespace, cls, "nfs")
    path = Path(pv.spec.nfs.path)
    nfs = appliance.client()
    assert nfs.put(b"mine", path / "SUCCESS").returncode == 0
    assert appliance.stop() == 0
    conf = appliance.export_root / ".ganesha" / "exports.d" / f"{pv.metadata.name}.conf"
    text = conf.read_text()
    assert f'Path = "{path}";' in text
    conf.write_text(text.replace(f'Path = "{path}";', 'Path = "/etc";'))

    appliance.start()
    assert nfs.cat(path / "passwd").returncode != 0  # /etc is not served under the volume's name
    assert nfs.cat(path / "SUCCESS").stdout == b"mine"
    assert f"export file {conf} differed from its own header (block Path \"/etc\"" in appliance.text()
    assert f'Path = "{path}";' in conf.read_text()
    core.delete_namespaced_persistent_volume_claim("nfs", namespace)
    storage.delete_storage_class(cls)


@pytest.mark.parametrize("own", [".ganesha", ".provisioning", ".volumes", ".archive"])
def test_a_symlinked_state_directory_stops_the_start_and_its_target_is_untouched(
        appliance: Appliance, tmp_path: Path, own: str) -> None:
    target = tmp_path / "elsewhere"
    (target / "exports.d").mkdir(parents=True)
    (target / "keep.json").write_text('{"keep": true}')
    (target / "exports.d" / "keep.conf").write_text("# precious\n")
    (target / "ganesha.conf").write_text("# someone else's config\n")
    before = treesnap.snapshot(target, contents=True)
    appliance.export_root.mkdir()
    (appliance.export_root / own).symlink_to(target)

    appliance.start(wait_ready=False)
    assert appliance.proc is not None
    wait.until(lambda: appliance.proc.poll() is not None or appliance.get("/readyz")[0] == 200, timeout=60,
               what="the appliance to exit or be ready")
    assert treesnap.snapshot(target, contents=True) == before
    last = exited_with_one_line(appliance)
    assert f"{appliance.export_root / own} is a symlink" in last and "refusing to follow it" in last


def test_a_second_appliance_on_the_same_root_exits_naming_the_first(
        cluster: kubecluster.Cluster, appliance: Appliance, tmp_path: Path) -> None:
    appliance.start()
    second = Appliance(kubeconfig=cluster.kubeconfig, export_root=appliance.export_root,
                       provisioner=appliance.provisioner, log_dir=tmp_path / "second")
    second.log_dir.mkdir()
    try:
        second.start(wait_ready=False)
        last = exited_with_one_line(second)
        assert appliance.proc is not None
        assert f"export root {appliance.export_root} is in use by another appliance (pid {appliance.proc.pid} " \
               f"on host {os.uname().nodename}" in last, last
        assert appliance.get("/readyz")[0] == 200
    finally:
        second.close()
    # The lock goes with its holder: after the first stops, the second starts.
    assert appliance.stop() == 0
    try:
        second.start()
    finally:
        second.close()


def test_a_lost_ganesha_directory_is_rebuilt_with_the_same_export_ids(
        appliance: Appliance, core: client.CoreV1Api, storage: client.StorageV1Api, namespace: str,
        unique: str) -> None:
    cls = f"state-{unique}"
    make_class(cls, appliance.provisioner, api=storage)
    appliance.start()
    pvs = [bound_volume(core, namespace, cls, n) for n in ("a", "b")]
    nfs = appliance.client()
    for pv in pvs:
        assert nfs.put(pv.metadata.name.encode(), Path(pv.spec.nfs.path) / "data").returncode == 0
    assert appliance.stop() == 0
    shutil.rmtree(appliance.export_root / ".ganesha")

    appliance.start()
    log = appliance.text()
    for pv in pvs:
        assert f"volume {pv.metadata.name}: its export was missing; rebuilt from its record and PV " \
               f"(id {pv.metadata.annotations['Export_Id']})" in log, log
        assert nfs.cat(Path(pv.spec.nfs.path) / "data").stdout == pv.metadata.name.encode()
        conf = appliance.export_root / ".ganesha" / "exports.d" / f"{pv.metadata.name}.conf"
        assert f"Export_Id = {pv.metadata.annotations['Export_Id']};" in conf.read_text()

    # What cannot be rebuilt (no record of this appliance) fails readiness, with the reason.
    assert appliance.stop() == 0
    shutil.rmtree(appliance.export_root / ".ganesha")
    (appliance.export_root / ".volumes" / f"{pvs[0].metadata.name}.json").unlink()
    appliance.start(wait_ready=False)

    def unready() -> str | None:
        status, body = appliance.get("/readyz")
        return body if status == 503 and "could not be rebuilt" in body else None
    body = wait.until(unready, timeout=60, what=lambda: f"/readyz failing\n{appliance.log()}")
    assert f"{pvs[0].metadata.name}: it has no export and no record of this appliance" in body
    assert nfs.cat(Path(pvs[1].spec.nfs.path) / "data").stdout == pvs[1].metadata.name.encode()
    assert appliance.stop() == 0
    for pv in pvs:
        remove_pv(core, pv.metadata.name)
    storage.delete_storage_class(cls)


def test_a_changed_export_root_is_reported_at_start(
        cluster: kubecluster.Cluster, appliance: Appliance, core: client.CoreV1Api, storage: client.StorageV1Api,
        namespace: str, unique: str, tmp_path: Path) -> None:
    cls = f"state-{unique}"
    make_class(cls, appliance.provisioner, api=storage)
    appliance.start()
    pv = bound_volume(core, namespace, cls, "nfs")
    assert appliance.stop() == 0
    moved = Appliance(kubeconfig=cluster.kubeconfig, export_root=tmp_path / "new-root",
                      provisioner=appliance.provisioner, log_dir=tmp_path / "moved")
    moved.log_dir.mkdir()
    try:
        moved.start()
        line = next((x for x in moved.text().splitlines() if "lie under another export root" in x), "")
        assert f"1 PV(s) of provisioner {appliance.provisioner}" in line, moved.log()
        assert f"e.g. {pv.metadata.name} at {pv.spec.nfs.path}" in line
    finally:
        moved.close()
    appliance.start()
    core.delete_namespaced_persistent_volume_claim("nfs", namespace)
    wait.until(lambda: pv_gone(core, pv.metadata.name), timeout=60, what="PV deleted")
    storage.delete_storage_class(cls)
