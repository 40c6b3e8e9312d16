"""Volume clones (``dataSource: PersistentVolumeClaim``) end to end: real control plane, the real appliance
process with its own Ganesha, contents read back over NFS (libnfs) byte for byte; every refusal; SIGKILL
in the middle of a copy."""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from nfs_provisioner.kube import client as kube
from tests.support import kubecluster, smallfs, wait
from tests.support.appliance_env import Appliance
from tests.support.builders import make_claim, make_class
from tests.support.clones import bound, claim, events, failures, fill_source, fill_tree, leftovers

pytestmark = [pytest.mark.e2e, pytest.mark.kube, pytest.mark.ganesha]


def test_clone_is_a_byte_for_byte_copy_served_over_nfs(appliance: Appliance, kapi: kube.Client, namespace: str,
                                                       unique: str) -> None:
    cls = f"clone-{unique}"
    make_class(cls, appliance.provisioner, api=kapi)
    appliance.start()
    try:
        make_claim(namespace, "live", cls, api=kapi)
        src_pv = bound(kapi, namespace, "live")["spec"]["volumeName"]
        src = appliance.export_root / src_pv
        files = fill_source(src)
        sparse = (src / "sparse.img").read_bytes()
        nfs = appliance.client()
        assert nfs.put(b"written over NFS", src / "over-nfs.txt").returncode == 0

        t0 = time.monotonic()
        make_claim(namespace, "copy", cls, size="2Mi", source="live", api=kapi)
        c = bound(kapi, namespace, "copy", what=lambda: f"clone Bound\n{appliance.log()}")
        took = time.monotonic() - t0
        pv = kapi.get(kube.volumes_path(c["spec"]["volumeName"]))
        dst = Path(pv["spec"]["nfs"]["path"])
        assert dst == appliance.export_root / pv["metadata"]["name"] != src
        assert pv["metadata"]["annotations"]["nfs-provisioner.io/cloned-from"] == "live"
        assert pv["spec"]["capacity"] == {"storage": "2Mi"}

        # Over NFS, byte for byte, from the clone's own export.
        for rel, data in {**files, "hard.bin": files["sub/data.bin"], "link": files["sub/data.bin"],
                          "over-nfs.txt": b"written over NFS"}.items():
            got = nfs.cat(dst / rel)
            assert got.returncode == 0, (rel, got.stderr)
            assert got.stdout == data, rel
        got = nfs.cat(dst / "sparse.img")
        assert got.returncode == 0 and hashlib.sha256(got.stdout).digest() == hashlib.sha256(sparse).digest()
        # On disk: the hard link is a link, the sparse file still sparse, the symlink a link, metadata kept.
        assert os.stat(dst / "hard.bin").st_ino == os.stat(dst / "sub" / "data.bin").st_ino
        assert os.stat(dst / "hard.bin").st_nlink == 2
        assert os.stat(dst / "sparse.img").st_blocks * 512 < (1 << 20)
        assert os.readlink(dst / "link") == "sub/data.bin"
        st = os.stat(dst / "hello.txt")
        assert (st.st_uid, st.st_gid, st.st_mode & 0o7777) == (1000, 2000, 0o640)
        assert os.getxattr(dst / "hello.txt", "user.origin") == b"source"
        assert os.stat(dst / "hello.txt").st_mtime_ns == os.stat(src / "hello.txt").st_mtime_ns

        # The two volumes are independent: a write to the clone leaves the source alone.
        assert nfs.put(b"only in the clone", dst / "new.txt").returncode == 0
        (dst / "sub" / "deeper" / "notes.md").write_bytes(b"changed in the clone")
        assert nfs.cat(src / "sub" / "deeper" / "notes.md").stdout == files["sub/deeper/notes.md"]
        assert nfs.cat(src / "new.txt").returncode != 0 and nfs.cat(dst / "new.txt").stdout == b"only in the clone"
        evs = events(kapi, namespace, "copy")
        assert ("Normal", "ProvisioningSucceeded", f"Successfully provisioned volume {pv['metadata']['name']}") in evs
        assert any(r == "Provisioning" and m.startswith("Cloning claim") for _, r, m in evs), evs
        assert not failures(kapi, namespace, "copy"), evs
        print(f"clone of a {sum(map(len, files.values())) + len(sparse)} byte tree Bound in {took:.2f} s")

        # Deleting the clone removes only the clone.
        kapi.delete(kube.claims_path(namespace, "copy"))
        wait.until(lambda: not leftovers(appliance.export_root, pv["metadata"]["name"]), timeout=60,
                   what=lambda: f"clone removed: {leftovers(appliance.export_root, pv['metadata']['name'])}")
        assert (src / "hello.txt").read_bytes() == files["hello.txt"]
    finally:
        appliance.stop()
        kapi.delete(kube.classes_path(cls))


def test_every_refusal_says_why_and_leaves_nothing_behind(appliance: Appliance, kapi: kube.Client,
                                                          namespace: str, unique: str) -> None:
    cls, other = f"clone-{unique}", f"other-{unique}"
    make_class(cls, appliance.provisioner, api=kapi)
    make_class(other, appliance.provisioner, api=kapi)
    appliance.start()
    hand_pv, other_pv = f"hand-{unique}", f"twin-{unique}"
    try:
        make_claim(namespace, "live", cls, size="2Mi", api=kapi)
        make_claim(namespace, "elsewhere", other, api=kapi)
        make_claim(namespace, "pending", cls, selector={"matchLabels": {"never": "matches"}}, api=kapi)
        # A volume this appliance did not make, bound to a claim of the class. Both hand-made PVs are pre-bound
        # (claimRef) as well as named by their claims: an Available PV of the class would otherwise match the
        # controller-manager's search for claim "dying" (1Mi, same class) first, and "foreign" would never bind
        # (CI: claim foreign not Bound in 60 s).
        kapi.create(kube.volumes_path(), {
            "apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": hand_pv},
            "spec": {"capacity": {"storage": "1Mi"}, "accessModes": ["ReadWriteMany"], "storageClassName": cls,
                     "claimRef": {"namespace": namespace, "name": "foreign"},
                     "persistentVolumeReclaimPolicy": "Retain", "nfs": {"server": "127.0.0.1", "path": "/x"}}})
        make_claim(namespace, "foreign", cls, volumeName=hand_pv, api=kapi)
        # One that names another instance of the same provisioner (a PV of another identity).
        kapi.create(kube.volumes_path(), {
            "apiVersion": "v1", "kind": "PersistentVolume",
            "metadata": {"name": other_pv, "annotations": {
                "Provisioner_Id": "00000000-0000-4000-8000-000000000000",
                "pv.kubernetes.io/provisioned-by": appliance.provisioner}},
            "spec": {"capacity": {"storage": "1Mi"}, "accessModes": ["ReadWriteMany"], "storageClassName": cls,
                     "claimRef": {"namespace": namespace, "name": "twin"},
                     "persistentVolumeReclaimPolicy": "Retain", "nfs": {"server": "127.0.0.1", "path": "/y"}}})
        make_claim(namespace, "twin", cls, volumeName=other_pv, api=kapi)
        make_claim(namespace, "dying", cls, api=kapi)
        for n in ("live", "elsewhere", "foreign", "twin", "dying"):
            bound(kapi, namespace, n)
        kapi.patch(kube.claims_path(namespace, "dying"), {"metadata": {"finalizers": ["test.example.com/hold"]}})
        kapi.delete(kube.claims_path(namespace, "dying"))

        cases = {
            "c-missing": ("nope", cls, "1Mi", f"the source claim {namespace}/nope does not exist"),
            "c-pending": ("pending", cls, "1Mi", f"the source claim {namespace}/pending is Pending, not Bound"),
            "c-foreign": ("foreign", cls, "1Mi", f"the source volume {hand_pv} was not made by this appliance"),
            "c-twin": ("twin", cls, "1Mi", "but by 00000000-0000-4000-8000-000000000000"),
            "c-class": ("elsewhere", cls, "1Mi", f"the source claim {namespace}/elsewhere is of StorageClass "
                        f"'{other}', not '{cls}'"),
            "c-small": ("live", cls, "1Mi", "the claim requests 1048576 bytes, less than the source's capacity 2Mi"),
            "c-dying": ("dying", cls, "1Mi", f"the source claim {namespace}/dying is being deleted"),
        }
        made = {n: make_claim(namespace, n, c, size=size, source=src, api=kapi)
                for n, (src, c, size, _) in cases.items()}
        for n, (_, _, _, why) in cases.items():
            wait.until(lambda n=n: failures(kapi, namespace, n), timeout=30,
                       what=lambda n=n: f"refusal of {n}\n{appliance.log()}")
            msg = failures(kapi, namespace, n)[0]
            assert msg.startswith("cannot clone: ") and why in msg and msg.endswith("no volume is provisioned"), msg
        for n, c in made.items():
            assert claim(kapi, namespace, n)["status"]["phase"] == "Pending"
            assert leftovers(appliance.export_root, f"pvc-{c['metadata']['uid']}") == [], n
        assert not list((appliance.export_root / ".clones").glob("*")) if (
            appliance.export_root / ".clones").exists() else True
    finally:
        appliance.stop()
        kapi.patch(kube.claims_path(namespace, "dying"), {"metadata": {"finalizers": None}})
        for n in ("foreign", "twin"):
            kapi.delete(kube.claims_path(namespace, n))
        kapi.delete(kube.volumes_path(hand_pv))
        kapi.delete(kube.volumes_path(other_pv))
        kapi.delete(kube.classes_path(cls))
        kapi.delete(kube.classes_path(other))


@pytest.fixture
def small_export_root(tmp_path: Path) -> Iterator[Path]:
    """A 48 MiB ext4 on a loop device (no shared blocks), unmounted afterwards."""
    with smallfs.mounted(tmp_path / "small", image=tmp_path / "small.img", size=48 << 20) as mnt:
        yield mnt / "export"


def test_no_room_for_a_full_copy_is_refused(cluster: kubecluster.Cluster, kapi: kube.Client, namespace: str,
                                            unique: str, tmp_path: Path, small_export_root: Path) -> None:
    a = Appliance(kubeconfig=cluster.kubeconfig, export_root=small_export_root,
                  provisioner=f"example.com/full-{unique}", log_dir=tmp_path)
    cls = f"full-{unique}"
    make_class(cls, a.provisioner, api=kapi)
    a.start()
    try:
        make_claim(namespace, "live", cls, api=kapi)
        src = a.export_root / bound(kapi, namespace, "live")["spec"]["volumeName"]
        (src / "big.bin").write_bytes(os.urandom(30 << 20))  # more than half of the filesystem
        c = make_claim(namespace, "copy", cls, source="live", api=kapi)
        wait.until(lambda: failures(kapi, namespace, "copy"), timeout=30, what=lambda: f"refusal\n{a.log()}")
        msg = failures(kapi, namespace, "copy")[0]
        assert "a full copy of" in msg and "only" in msg and "cannot share blocks" in msg, msg
        assert leftovers(a.export_root, f"pvc-{c['metadata']['uid']}") == []
    finally:
        a.stop()
        a.close()
        kapi.delete(kube.classes_path(cls))


def test_sigkill_mid_copy_copies_again_and_never_exports_a_half_copy(appliance: Appliance, kapi: kube.Client,
                                                                     namespace: str, unique: str) -> None:
    cls = f"kill-{unique}"
    make_class(cls, appliance.provisioner, api=kapi)
    appliance.start()
    try:
        make_claim(namespace, "live", cls, api=kapi)
        src_pv = bound(kapi, namespace, "live")["spec"]["volumeName"]
        src = appliance.export_root / src_pv
        # 45 000 small files: several seconds of copying on this host
        fill_tree(src, dirs=150, files=300, content=lambda d, i: b"%d/%d\n" % (d, i) * 20)
        (src / "last.txt").write_bytes(b"the last file")
        c = make_claim(namespace, "copy", cls, source="live", api=kapi)
        pv = f"pvc-{c['metadata']['uid']}"
        dst = appliance.export_root / pv
        marker = appliance.export_root / ".clones" / f"{pv}.copying"
        wait.until(lambda: marker.exists() and dst.is_dir() and len(os.listdir(dst)) >= 5, timeout=60,
                   what=lambda: f"copy under way\n{appliance.log()}")
        appliance.kill()
        partial = len(os.listdir(dst))
        assert partial < 151, "the copy finished before the kill: make the source bigger"
        assert not (appliance.export_root / ".clones" / f"{pv}.done").exists()
        assert not list((appliance.export_root / ".ganesha").rglob(f"*{pv}*"))  # never exported
        nfs = appliance.client()
        appliance.start()
        c = bound(kapi, namespace, "copy", timeout=120,
                  what=lambda: f"clone Bound after the restart\n{appliance.log()}")
        assert "copying again from the start" in appliance.log_file.read_text()
        assert sorted(os.listdir(dst)) == sorted(os.listdir(src))
        for d in (0, 74, 149):
            for i in (0, 299):
                rel = f"d{d:03}/f{i:03}"
                assert nfs.cat(dst / rel).stdout == (src / rel).read_bytes(), rel
        assert nfs.cat(dst / "last.txt").stdout == b"the last file"
        assert sum(len(os.listdir(dst / e)) for e in os.listdir(dst) if (dst / e).is_dir()) == 150 * 300
        progress = [m for t, r, m in events(kapi, namespace, "copy") if r == "Provisioning" and "Cloning" in m]
        assert progress, events(kapi, namespace, "copy")
    finally:
        appliance.stop()
        kapi.delete(kube.classes_path(cls))


def test_claim_deleted_mid_copy_stops_the_copy_and_leaves_nothing(appliance: Appliance, kapi: kube.Client,
                                                                  namespace: str, unique: str) -> None:
    cls = f"cancel-{unique}"
    make_class(cls, appliance.provisioner, api=kapi)
    appliance.start()
    try:
        make_claim(namespace, "live", cls, api=kapi)
        src = appliance.export_root / bound(kapi, namespace, "live")["spec"]["volumeName"]
        fill_tree(src, dirs=100, files=300, content=lambda d, i: b"x" * 100)
        c = make_claim(namespace, "copy", cls, source="live", api=kapi)
        pv = f"pvc-{c['metadata']['uid']}"
        dst = appliance.export_root / pv
        wait.until(lambda: dst.is_dir() and len(os.listdir(dst)) >= 3, timeout=60,
                   what=lambda: f"copy under way\n{appliance.log()}")
        kapi.delete(kube.claims_path(namespace, "copy"))
        wait.until(lambda: not leftovers(appliance.export_root, pv), timeout=30,
                   what=lambda: f"half copy removed: {leftovers(appliance.export_root, pv)}\n{appliance.log()}")
        assert "clone cancelled, its claim is deleted" in appliance.log_file.read_text()
        assert "the copy was cancelled" in appliance.log_file.read_text()  # stopped, not finished
        assert "cloned from" not in appliance.log_file.read_text()
        assert kapi.get(kube.volumes_path(), fieldSelector=f"metadata.name={pv}")["items"] == []
        assert len(os.listdir(src)) == 100  # the source untouched
    finally:
        appliance.stop()
        kapi.delete(kube.classes_path(cls))
