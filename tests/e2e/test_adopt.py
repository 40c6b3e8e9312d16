"""Adoption of the Go nfs-provisioner's export root and volumes (issue 25), end to end, on the real fixture.

The fixture's export root (``$NFSP_GO_FIXTURE/export-root.tar``, made by the Go provisioner) is extracted as it
is into a temp directory, which the appliance sees at ``/export``, the path its PVs and EXPORT blocks name: a bind
mount in a private mount namespace (``unshare --mount --propagation private``; nothing changes on the host, the
mount ends with the appliance, Ganesha included). Its classes, claims and PVs are recreated in the shared control
plane as the fixture's README says (claims with ``spec.volumeName`` first, then the PVs with the new claim uids).
On the shared cluster the namespace, the class names and the provisioner name get a unique suffix (the
provisioner name is a parameter like any: the appliance runs with the name the PVs' ``provisioned-by`` says;
``example.com/nfs`` itself is the demo's); the PV names cannot (they are the volume directories' names), so a
run waits until no other run holds them. Every NFS request is a raw NFSv4 COMPOUND (tests/support/nfsraw.py) on
loopback.
"""

from __future__ import annotations

import copy
import os
import re
import shlex
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.rest import ApiException

from tests.support import go_fixture, go_objects, kubecluster, nfsraw, wait
from tests.support.appliance_env import Appliance
from tests.support.paths import FIXTURES, REPO

pytestmark = [pytest.mark.e2e, pytest.mark.kube, pytest.mark.ganesha]

FIXTURE = Path(os.environ.get("NFSP_GO_FIXTURE", FIXTURES / "go-nfs-provisioner"))
IDENTITY = "edc408b1-fe92-41bd-a6ca-0a96628c453b"
EXPORT = go_fixture.GO_EXPORT_ROOT
OURS = (".nfs-provisioner.lock", ".ganesha", ".volumes", ".provisioning", ".archive", ".clones", ".images",
        ".mounts")
NF4LNK = 5


@pytest.fixture(scope="module", autouse=True)
def export_mountpoint() -> Iterator[Path]:
    """/export exists while this module runs (a new machine has none; see go_fixture.export_mountpoint)."""
    with go_fixture.export_mountpoint() as path:
        yield path


def _items(name: str) -> list[dict[str, Any]]:
    return list(yaml.safe_load((FIXTURE / name).read_text())["items"])


FIXTURE_PVS = {pv["spec"]["claimRef"]["name"]: pv for pv in _items("pvs.yaml")}
"""claim name (data, keep, squashed, shared) -> its PV as the Go provisioner made it."""


def extract(root: Path) -> None:
    root.mkdir(parents=True)
    subprocess.run(["tar", "-xpf", str(FIXTURE / "export-root.tar"), "--numeric-owner", "-C", str(root)], check=True)


def listing(root: Path) -> list[str]:
    """``find -printf '%M %U:%G %s %p%l'`` of the Go layout (the appliance's own dot entries left out)."""
    out = subprocess.run(["find", ".", "-printf", r"%M %U:%G %s %p%l\n"], cwd=root, check=True, capture_output=True,
                         text=True).stdout.splitlines()
    return sorted(line for line in out if not any(f" ./{o}" in line for o in OURS))


def in_export(root: Path, *, script: Path | None = None) -> Callable[[list[str]], list[str]]:
    """Run the appliance with ``root`` bind-mounted at /export in a mount namespace of its own (``script``: run
    instead of ``-m nfs_provisioner``)."""
    def wrap(argv: list[str]) -> list[str]:
        if script is not None:
            argv = [argv[0], str(script), *argv[3:]]
        line = f"mount --bind {shlex.quote(str(root))} {EXPORT} && exec {shlex.join(argv)}"
        return ["unshare", "--mount", "--propagation", "private", "sh", "-c", line]
    return wrap


@dataclass
class Legacy:
    """The fixture's objects recreated in the control plane for one export root."""

    core: client.CoreV1Api
    storage: client.StorageV1Api
    suffix: str
    namespace: str
    provisioner: str
    pvs: dict[str, dict[str, Any]] = field(default_factory=dict)
    """claim name -> the PV as created (name, uid, resourceVersion once Bound)."""
    extra_pvs: list[str] = field(default_factory=list)

    def cls(self, name: str) -> str:
        return f"{name}-{self.suffix}"

    def create_classes(self) -> None:
        for c in _items("classes.yaml"):
            body = go_objects.class_body(c, self.cls(c["metadata"]["name"]), self.provisioner)
            body["allowVolumeExpansion"] = True  # for the expansion test; the Go classes had none
            self.storage.create_storage_class(body)
        self.core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=self.namespace)))

    def create_volumes(self, change: Callable[[str, dict[str, Any]], None] = lambda claim, pv: None) -> None:
        """Claims bound to their PVs by name, then the PVs (``change`` may break one before it is created)."""
        wait.until(lambda: not any(_exists(self.core, pv["metadata"]["name"]) for pv in FIXTURE_PVS.values()),
                   timeout=600, what="the fixture's PV names free (another run holds them)")
        for claim, old in FIXTURE_PVS.items():
            cls = self.cls(old["spec"]["storageClassName"])
            c = self.core.create_namespaced_persistent_volume_claim(self.namespace,
                                                                    go_objects.claim_body(claim, old, cls))
            pv = go_objects.pv_body(claim, old, claim_uid=c.metadata.uid, namespace=self.namespace, cls=cls,
                                    provisioner=self.provisioner)
            change(claim, pv)
            _create_pv(self.core, pv)
        wait.until(lambda: all(self.core.read_namespaced_persistent_volume_claim(c, self.namespace).status.phase
                               == "Bound" for c in FIXTURE_PVS), timeout=180, what="the fixture's claims Bound")
        for claim, old in FIXTURE_PVS.items():
            self.pvs[claim] = self.core.read_persistent_volume(old["metadata"]["name"]).to_dict()

    def pv(self, claim: str) -> Any:
        return self.core.read_persistent_volume(FIXTURE_PVS[claim]["metadata"]["name"])

    def events(self, pv: dict[str, Any], reason: str) -> list[Any]:
        """Events with ``reason`` about this very PV (by uid: older runs' PVs had the same names)."""
        name, uid = pv["metadata"]["name"], pv["metadata"]["uid"]
        items = self.core.list_namespaced_event("default", field_selector=f"involvedObject.name={name}").items
        return [e for e in items if e.reason == reason and e.involved_object.uid == uid]

    def delete(self) -> None:
        with _gone():
            self.core.delete_namespace(self.namespace)
        for name in [pv["metadata"]["name"] for pv in FIXTURE_PVS.values()] + self.extra_pvs:
            with _gone():
                self.core.delete_persistent_volume(name)
            with _gone():
                self.core.patch_persistent_volume(name, {"metadata": {"finalizers": None}})
        for c in _items("classes.yaml"):
            with _gone():
                self.storage.delete_storage_class(self.cls(c["metadata"]["name"]))
        wait.until(lambda: not any(_exists(self.core, pv["metadata"]["name"]) for pv in FIXTURE_PVS.values()),
                   timeout=60, what="the fixture's PVs deleted")


class _gone:
    """Ignore 404 (already deleted)."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, typ: object, e: object, tb: object) -> bool:
        return isinstance(e, ApiException) and e.status == 404


def _create_pv(core: client.CoreV1Api, body: dict[str, Any], *, timeout: float = 600) -> None:
    """Create the PV, waiting while another run holds its name (the fixture's names are fixed)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            core.create_persistent_volume(body)
            return
        except ApiException as e:
            if e.status != 409 or time.monotonic() > deadline:
                raise
        time.sleep(1)


def _exists(core: client.CoreV1Api, name: str) -> bool:
    return bool(core.list_persistent_volume(field_selector=f"metadata.name={name}").items)


def _legacy(core: client.CoreV1Api, storage: client.StorageV1Api) -> Legacy:
    u = uuid.uuid4().hex[:6]
    return Legacy(core=core, storage=storage, suffix=u, namespace=f"legacy-{u}", provisioner=f"example.com/nfs-{u}")


def _appliance(cluster: kubecluster.Cluster, root: Path, legacy: Legacy, log_dir: Path) -> Appliance:
    return Appliance(kubeconfig=cluster.kubeconfig, export_root=EXPORT, provisioner=legacy.provisioner,
                     log_dir=log_dir, extra=["--export-subnet=127.0.0.1/32"], wrapper=in_export(root))


def _warnings(a: Appliance) -> list[str]:
    return [line for line in a.text().splitlines() if "not adopted from the Go nfs-provisioner" in line]


def _exports(root: Path) -> dict[str, int]:
    """Export name -> Export_Id of the appliance's export files."""
    found = {}
    for f in (root / ".ganesha" / "exports.d").glob("*.conf"):
        m = re.search(r'"export_id": (\d+)', f.read_text())
        assert m, f
        found[f.stem] = int(m.group(1))
    return found


# --- refused: the fixture broken one thing per volume ----------------------------------------------------------


def test_refused_volumes_get_one_warning_and_one_event_and_nothing_changes(
        cluster: kubecluster.Cluster, core: client.CoreV1Api, storage: client.StorageV1Api, tmp_path: Path) -> None:
    root = tmp_path / "root"
    extract(root)
    legacy = _legacy(core, storage)
    a = _appliance(cluster, root, legacy, tmp_path)
    aside = tmp_path / "aside"
    outside = f"pvc-{uuid.uuid4()}"
    try:
        legacy.create_classes()
        # Id taken: a volume of this appliance, made before the Go PVs are known, takes the lowest free id, 1.
        a.start()
        core.create_namespaced_persistent_volume_claim(legacy.namespace, {
            "apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "ours"},
            "spec": {"accessModes": ["ReadWriteMany"], "storageClassName": legacy.cls("example-nfs"),
                     "resources": {"requests": {"storage": "1Mi"}}}})
        ours = wait.until(lambda: core.read_namespaced_persistent_volume_claim("ours", legacy.namespace).spec
                          .volume_name, timeout=180, what="our own claim provisioned")
        assert core.read_persistent_volume(ours).metadata.annotations["Export_Id"] == "1"
        assert a.stop() == 0
        keep_dir = FIXTURE_PVS["keep"]["metadata"]["name"]
        os.rename(root / keep_dir, aside)  # directory missing

        def breaks(claim: str, pv: dict[str, Any]) -> None:
            ann = pv["metadata"]["annotations"]
            if claim == "squashed":
                ann["Provisioner_Id"] = str(uuid.uuid4())  # another identity
            elif claim == "shared":  # the PV's block disagrees with vfs.conf's
                ann["EXPORT_block"] = ann["EXPORT_block"].replace("no_root_squash", "root_id_squash")

        legacy.create_volumes(breaks)
        # Path outside the export root: a fifth PV of this identity, its block and path under /srv.
        shared = copy.deepcopy(legacy.pvs["shared"])
        block = FIXTURE_PVS["shared"]["metadata"]["annotations"]["EXPORT_block"].replace(
            f"/export/{FIXTURE_PVS['shared']['metadata']['name']}", f"/srv/{outside}").replace(
            "Export_Id = 4;", "Export_Id = 5;").replace("4.4", "5.5")
        core.create_persistent_volume({
            "apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": outside, "annotations": {
                **FIXTURE_PVS["shared"]["metadata"]["annotations"], "EXPORT_block": block, "Export_Id": "5",
                "pv.kubernetes.io/provisioned-by": legacy.provisioner}},
            "spec": {"capacity": {"storage": "1Mi"}, "accessModes": ["ReadWriteMany"],
                     "persistentVolumeReclaimPolicy": "Delete",
                     "storageClassName": shared["spec"]["storage_class_name"],
                     "nfs": {"server": "127.0.0.1", "path": f"/srv/{outside}"}}})
        legacy.extra_pvs.append(outside)
        wait.until(lambda: core.read_persistent_volume(outside).status.phase == "Available", timeout=30,
                   what="the fifth PV Available")
        pvs = {**{c: core.read_persistent_volume(pv["metadata"]["name"]).to_dict() for c, pv in FIXTURE_PVS.items()},
               "outside": core.read_persistent_volume(outside).to_dict()}
        files, moved = listing(root), listing(aside)
        conf = (root / "vfs.conf").read_bytes()

        a.start(wait_ready=False)
        status, body = wait.until(lambda: r if "refused" in (r := a.get("/readyz"))[1] else None, timeout=60,
                                  what=lambda: f"/readyz with the adoption's counts:\n{a.log()}")
        assert status == 503 and "Go nfs-provisioner volumes: 0 adopted (0 at this start), 5 refused" in body, body
        why = {"data": "Export_Id 1 is taken: this appliance serves it as " + ours,
               "keep": f"its directory /export/{keep_dir} is missing",
               "squashed": "is not this export root's identity",
               "shared": "its EXPORT_block and the block with Export_Id 4 in vfs.conf disagree",
               "outside": f"its spec.nfs.path '/srv/{outside}' is not /export/{outside}"}
        # Expanding a refused volume is refused too (its PV keeps its size and everything else).
        core.patch_namespaced_persistent_volume_claim("shared", legacy.namespace,
                                                      {"spec": {"resources": {"requests": {"storage": "6Mi"}}}})
        wait.until(lambda: [e for e in core.list_namespaced_event(
            legacy.namespace, field_selector="involvedObject.name=shared").items if e.reason == "VolumeResizeFailed"
            and "was not adopted" in e.message], timeout=180, what=lambda: f"the refused expansion\n{a.log()}")
        warnings = _warnings(a)
        assert len(warnings) == 5, "\n".join(warnings)
        wait.until(lambda: all(legacy.events(pv, "AdoptionRefused") for pv in pvs.values()), timeout=30,
                   what="an AdoptionRefused event on each PV")
        time.sleep(1)  # a second event would have been posted by now
        for claim, reason in why.items():
            name = pvs[claim]["metadata"]["name"]
            mine = [w for w in warnings if f"volume {name}:" in w]
            assert len(mine) == 1 and reason in mine[0] and "WARNING" in mine[0], (claim, mine)
            events = legacy.events(pvs[claim], "AdoptionRefused")
            assert len(events) == 1 and events[0].type == "Warning" and reason in events[0].message, events
            now = core.read_persistent_volume(name).to_dict()
            assert now["metadata"]["resource_version"] == pvs[claim]["metadata"]["resource_version"], claim
        metrics = a.get("/metrics")[1]
        assert 'nfs_provisioner_go_volumes{result="refused"} 5.0' in metrics
        assert 'nfs_provisioner_go_volumes{result="adopted"} 0.0' in metrics
        assert listing(root) == files and listing(aside) == moved
        assert (root / "vfs.conf").read_bytes() == conf  # kept in place: nothing adopted
        assert _exports(root) == {ours: 1}
        assert sorted(os.listdir(root / ".volumes")) == [f"{ours}.json"]
        assert "Export_Ids 2,3,4,5 of volumes not adopted are kept free for them" in a.text()
        # A new volume takes none of the refused volumes' ids (1 is ours; 2-5 are kept for them).
        core.create_namespaced_persistent_volume_claim(legacy.namespace, {
            "apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "fresh"},
            "spec": {"accessModes": ["ReadWriteMany"], "storageClassName": legacy.cls("example-nfs"),
                     "resources": {"requests": {"storage": "1Mi"}}}})
        fresh = wait.until(lambda: core.read_namespaced_persistent_volume_claim("fresh", legacy.namespace).spec
                           .volume_name, timeout=180, what="a new claim provisioned")
        assert core.read_persistent_volume(fresh).metadata.annotations["Export_Id"] == "6"
        nfs = nfsraw.Nfs4(host="127.0.0.1", port=a.nfs_port, uid=1000, gid=1234)
        with nfs:
            for claim in FIXTURE_PVS:
                r = nfs.compound([nfs.putrootfh(), nfs.lookup("export"),
                                  nfs.lookup(FIXTURE_PVS[claim]["metadata"]["name"]), nfs.getfh()])
                assert r.status != nfsraw.NFS4_OK, f"{claim} is served"
    finally:
        a.close()
        legacy.delete()


# --- adopted: the fixture as it is -----------------------------------------------------------------------------


@dataclass
class Adopted:
    root: Path
    legacy: Legacy
    appliance: Appliance
    killed_at: str
    started: float
    """Seconds from the second start to /readyz 200."""


@pytest.fixture(scope="module")
def adopted(cluster: kubecluster.Cluster, core: client.CoreV1Api, storage: client.StorageV1Api,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[Adopted]:
    """The fixture's root adopted: a first start killed (SIGKILL) in the middle of the adoption, the second start
    finishing it."""
    tmp = tmp_path_factory.mktemp("adopt")
    root = tmp / "root"
    extract(root)
    assert listing(root) == sorted((FIXTURE / "export-root.listing").read_text().splitlines())
    legacy = _legacy(core, storage)
    a = _appliance(cluster, root, legacy, tmp)
    try:
        legacy.create_classes()
        legacy.create_volumes()
        marker = tmp / "hanging"
        a.wrapper = in_export(root, script=REPO / "tests" / "support" / "adopt_crashy.py")
        a.env = {"ADOPT_HANG_AFTER": "2", "ADOPT_MARKER": str(marker)}
        a.start(wait_ready=False)
        killed_at = wait.until(lambda: marker.read_text() if marker.exists() else None, timeout=60,
                               what=lambda: f"the adoption's third export\n{a.log()}")
        a.kill()
        assert len(os.listdir(root / ".volumes")) == 3 and len(_exports(root)) == 2
        assert (root / "vfs.conf").exists()
        a.wrapper, a.env = in_export(root), {}
        began = time.monotonic()
        a.start()
        yield Adopted(root=root, legacy=legacy, appliance=a, killed_at=killed_at, started=time.monotonic() - began)
    finally:
        a.close()
        legacy.delete()


def test_every_volume_is_adopted_once_after_a_kill_mid_adoption(adopted: Adopted) -> None:
    a, root = adopted.appliance, adopted.root
    names = sorted(pv["metadata"]["name"] for pv in FIXTURE_PVS.values())
    assert adopted.killed_at == names[2]  # its record written, its export not
    status, body = a.get("/readyz")
    assert status == 200 and "Go nfs-provisioner volumes: 4 adopted (2 at this start), 0 refused" in body, body
    assert _exports(root) == {pv["metadata"]["name"]: int(pv["metadata"]["annotations"]["Export_Id"])
                              for pv in FIXTURE_PVS.values()}
    assert sorted(os.listdir(root / ".volumes")) == [f"{n}.json" for n in names]
    lines = [line for line in a.text().splitlines() if "adopted from the Go nfs-provisioner" in line]
    assert [re.search(r"volume (\S+):", line).group(1) for line in lines] == names[2:], lines  # type: ignore[union-attr]
    assert not _warnings(a)
    assert 'nfs_provisioner_go_volumes{result="adopted"} 4.0' in a.get("/metrics")[1]
    assert not (root / "vfs.conf").exists()
    assert (root / "vfs.conf.go-nfs-provisioner").read_bytes() == (FIXTURE / "vfs.conf").read_bytes()
    m = re.search(r"Go nfs-provisioner volumes: .* \((\d+\.\d+)s\)", a.text())
    assert m, a.log()
    print(f"\nadoption of 2 volumes (2 earlier): {m.group(1)} s; start to ready: {adopted.started:.2f} s")


def _mode(text: str) -> tuple[int, int]:
    """``drwxrwsrwx`` -> (NFSv4 type, permission bits with setuid/setgid/sticky)."""
    kind = {"d": nfsraw.NF4DIR, "-": nfsraw.NF4REG, "l": NF4LNK}[text[0]]
    bits = 0
    for i, ch in enumerate(text[1:10]):
        shift = 8 - i
        if ch in "rwxst":
            bits |= 1 << shift
        if ch in "sS":
            bits |= 0o4000 if i == 2 else 0o2000
        if ch in "tT":
            bits |= 0o1000
    return kind, bits


def _lookup(nfs: nfsraw.Nfs4, rel: str) -> list[nfsraw.Op4]:
    return [nfs.putrootfh(), *(nfs.lookup(p) for p in ("export", *rel.split("/")))]


def test_every_file_is_served_with_the_owner_and_mode_of_the_listing(adopted: Adopted) -> None:
    a, root = adopted.appliance, adopted.root
    lines = [line for line in (FIXTURE / "export-root.listing").read_text().splitlines() if " ./pvc-" in line]
    checked = 0
    with nfsraw.Nfs4(host="127.0.0.1", port=a.nfs_port, uid=1000, gid=1234) as nfs:
        for line in lines:
            mode, owner, _size, rest = line.split(" ", 3)
            rel = rest[2:]
            target = None
            if mode[0] == "l":
                rel, target = rel[:rel.rindex("current") + 7], rel[rel.rindex("current") + 7:]
            uid, gid = (int(x) for x in owner.split(":"))
            r = nfs.compound([*_lookup(nfs, rel), nfs.getfh(), nfs.stat()])
            assert r.status == nfsraw.NFS4_OK, (rel, r.status_name)
            attrs = r.last(nfsraw.OP_GETATTR).attrs
            assert (attrs["type"], attrs["mode"]) == _mode(mode), (rel, oct(attrs["mode"]))
            assert (attrs["uid"], attrs["gid"]) == (uid, gid), rel
            volume = rel.split("/")[0]
            pv = next(pv for pv in FIXTURE_PVS.values() if pv["metadata"]["name"] == volume)
            export_id = int(pv["metadata"]["annotations"]["Export_Id"])
            assert nfsraw.handle_export_id(r.last(nfsraw.OP_GETFH).fh) == export_id, rel
            if mode[0] == "-":
                data = nfs.compound([*_lookup(nfs, rel), nfs.read()])
                assert data.status == nfsraw.NFS4_OK, (rel, data.status_name)
                assert data.last(nfsraw.OP_READ).data == (root / rel).read_bytes(), rel
            if target is not None:
                link = nfs.compound([*_lookup(nfs, rel), nfs.readlink()])
                assert link.last(nfsraw.OP_READLINK).data.decode() == target
            checked += 1
    assert checked == len(lines) == 24
    # Squash as each block says: root reads a 1000:0 rw-rw---- file on no_root_squash, not on root_id_squash.
    with nfsraw.Nfs4(host="127.0.0.1", port=a.nfs_port) as nfs:
        for claim, ok in (("data", True), ("squashed", False)):
            r = nfs.compound([*_lookup(nfs, f"{FIXTURE_PVS[claim]['metadata']['name']}/hello.txt"), nfs.read()])
            assert (r.status == nfsraw.NFS4_OK) is ok, (claim, r.status_name)


def test_a_clone_of_an_adopted_volume_takes_a_new_id(adopted: Adopted) -> None:
    legacy, a = adopted.legacy, adopted.appliance
    source = FIXTURE_PVS["squashed"]
    legacy.core.create_namespaced_persistent_volume_claim(legacy.namespace, {
        "apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "copy"},
        "spec": {"accessModes": ["ReadWriteMany"], "storageClassName": legacy.cls("example-nfs-squash"),
                 "dataSource": {"kind": "PersistentVolumeClaim", "name": "squashed"},
                 "resources": {"requests": {"storage": "1Mi"}}}})
    wait.until(lambda: legacy.core.read_namespaced_persistent_volume_claim("copy", legacy.namespace).status.phase
               == "Bound", timeout=180, what=lambda: f"the clone Bound\n{a.log()}")
    name = legacy.core.read_namespaced_persistent_volume_claim("copy", legacy.namespace).spec.volume_name
    pv = legacy.core.read_persistent_volume(name)
    assert int(pv.metadata.annotations["Export_Id"]) == 5  # 1..4 are the adopted volumes'
    with nfsraw.Nfs4(host="127.0.0.1", port=a.nfs_port, uid=1000, gid=1234) as nfs:
        for rel in ("hello.txt", "app/logs/app.log"):
            r = nfs.compound([*_lookup(nfs, f"{name}/{rel}"), nfs.read()])
            assert r.last(nfsraw.OP_READ).data == (adopted.root / source["metadata"]["name"] / rel).read_bytes()


def test_an_adopted_volume_expands(adopted: Adopted) -> None:
    legacy = adopted.legacy
    legacy.core.patch_namespaced_persistent_volume_claim("shared", legacy.namespace,
                                                        {"spec": {"resources": {"requests": {"storage": "10Mi"}}}})
    wait.until(lambda: (legacy.core.read_namespaced_persistent_volume_claim("shared", legacy.namespace).status
                        .capacity or {}).get("storage") == "10Mi", timeout=180,
               what=lambda: f"the claim's capacity 10Mi\n{adopted.appliance.log()}")
    assert legacy.pv("shared").spec.capacity["storage"] == "10Mi"


def test_adopted_volumes_are_deleted_or_kept_as_their_reclaim_policy_says(adopted: Adopted) -> None:
    legacy, root, a = adopted.legacy, adopted.root, adopted.appliance
    data, keep = FIXTURE_PVS["data"]["metadata"]["name"], FIXTURE_PVS["keep"]["metadata"]["name"]
    legacy.core.delete_namespaced_persistent_volume_claim("data", legacy.namespace)
    legacy.core.delete_namespaced_persistent_volume_claim("keep", legacy.namespace)
    wait.until(lambda: not _exists(legacy.core, data), timeout=180, what=lambda: f"the Delete PV gone\n{a.log()}")
    assert not (root / data).exists() and data not in _exports(root)
    assert not (root / ".volumes" / f"{data}.json").exists()
    wait.until(lambda: legacy.pv("keep").status.phase == "Released", timeout=180, what="the Retain PV Released")
    assert (root / keep / "hello.txt").exists() and keep in _exports(root)
    with nfsraw.Nfs4(host="127.0.0.1", port=a.nfs_port, uid=1000, gid=1234) as nfs:
        assert nfs.compound([*_lookup(nfs, f"{data}/hello.txt"), nfs.read()]).status != nfsraw.NFS4_OK
        assert nfs.compound([*_lookup(nfs, f"{keep}/hello.txt"), nfs.read()]).status == nfsraw.NFS4_OK


def test_after_a_restart_everything_is_still_served_and_nothing_adopted_again(adopted: Adopted) -> None:
    a, root = adopted.appliance, adopted.root
    assert a.stop() == 0
    a.start()
    body = a.get("/readyz")[1]
    left = [c for c in FIXTURE_PVS if _exists(adopted.legacy.core, FIXTURE_PVS[c]["metadata"]["name"])]
    assert f"Go nfs-provisioner volumes: {len(left)} adopted (0 at this start), 0 refused" in body, body
    assert "adopted from the Go nfs-provisioner" not in a.text() and not _warnings(a)
    with nfsraw.Nfs4(host="127.0.0.1", port=a.nfs_port, uid=1000, gid=1234) as nfs:
        for claim in left:
            rel = f"{FIXTURE_PVS[claim]['metadata']['name']}/app/logs/app.log"
            r = nfs.compound([*_lookup(nfs, rel), nfs.read()])
            assert r.last(nfsraw.OP_READ).data == (root / rel).read_bytes(), claim
    assert not (root / "vfs.conf").exists() and not (root / "vfs.conf.go-nfs-provisioner.1").exists()
