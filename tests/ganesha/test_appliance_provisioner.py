"""The appliance's Provisioner against a real Ganesha and the libnfs client:
provision -> data over NFS -> delete, rollbacks, and tampered PVs.

The controller is not involved here (see tests/e2e/test_appliance_e2e.py for the
whole flow through the API server)."""

from __future__ import annotations

import copy
import os
import stat
from pathlib import Path
from typing import Any

import pytest

from nfs_provisioner.appliance import provisioner as prov
from nfs_provisioner.controller.interface import IgnoredError, ProvisioningError, ProvisioningState, ProvisionOptions
from nfs_provisioner.volumes.directories import InvalidVolumeName, VolumeDirectories
from nfs_provisioner.volumes.records import RECORDS_DIR
from tests.support import nfsraw, smallfs
from tests.support.ganesha_env import Harness
from tests.support.provisioner_env import IDENTITY, InProcessAppliance, claimed, options, small_root
from tests.support.treesnap import snapshot

__all__ = ["small_root"]  # the fixtures (tests/support/provisioner_env.py)

pytestmark = pytest.mark.ganesha


def test_provision_serves_data_over_nfs_and_delete_cleans_up(h: Harness) -> None:
    a = InProcessAppliance(h)
    pv = a.p.provision(options(mount_options=["vers=4.1"], reclaim="Retain"))
    path = a.root / "pvc-1"
    assert pv["metadata"]["name"] == "pvc-1"
    ann = pv["metadata"]["annotations"]
    assert ann[prov.ANN_IDENTITY] == IDENTITY
    assert ann[prov.ANN_EXPORT_ID] == "1"
    assert "Export_Id = 1;" in ann[prov.ANN_EXPORT_BLOCK]
    assert ann[prov.ANN_CREATED_BY] == "nfs-dynamic-provisioner"
    assert pv["spec"] == {"capacity": {"storage": "1Mi"}, "accessModes": ["ReadWriteMany"],
                          "persistentVolumeReclaimPolicy": "Retain", "mountOptions": ["vers=4.1"],
                          "nfs": {"server": "127.0.0.1", "path": str(path)}}
    assert stat.S_IMODE(path.stat().st_mode) == 0o2777

    nfs = h.client()
    payload = os.urandom(3000)
    put = nfs.put(payload, path / "SUCCESS")
    assert put.returncode == 0, put.stderr
    assert (path / "SUCCESS").read_bytes() == payload
    assert nfs.cat(path / "SUCCESS").stdout == payload

    # A repeated call (retry after a crash) returns the same volume, creates nothing new.
    assert a.p.provision(options(mount_options=["vers=4.1"], reclaim="Retain")) == pv

    a.p.delete(claimed(pv))
    assert not path.exists()
    assert nfs.cat(path / "SUCCESS").returncode != 0
    assert a.server.exports.list_exports() == []
    a.p.delete(claimed(pv))  # idempotent


def test_gid_parameter_sets_group_mode_and_annotation(h: Harness) -> None:
    a = InProcessAppliance(h)
    pv = a.p.provision(options(params={"gid": "2345", "rootSquash": "true"}))
    path = a.root / "pvc-1"
    assert path.stat().st_gid == 2345
    assert stat.S_IMODE(path.stat().st_mode) == 0o2071
    assert pv["metadata"]["annotations"][prov.ANN_GID] == "2345"
    assert "Squash = root_id_squash;" in pv["metadata"]["annotations"][prov.ANN_EXPORT_BLOCK]


@pytest.mark.parametrize(("on_delete", "kept"), [("retain", "pvc-1"), ("archive", ".archive")])
def test_on_delete_retain_and_archive_keep_the_data(h: Harness, on_delete: str, kept: str) -> None:
    a = InProcessAppliance(h)
    pv = a.p.provision(options(params={"onDelete": on_delete}))
    (a.root / "pvc-1" / "f").write_text("data")
    a.p.delete(claimed(pv))
    assert a.server.exports.list_exports() == []
    found = list(a.root.glob(f"{kept}/**/f")) if kept == ".archive" else [a.root / "pvc-1" / "f"]
    assert len(found) == 1 and found[0].read_text() == "data"


@pytest.mark.parametrize("on_delete", ["retain", "archive", "delete"])
def test_deletion_retried_after_its_last_step_finds_it_done(h: Harness, on_delete: str) -> None:
    """A crash after the deletion's last step (the record removed, or retired for ``retain``) and before the PV
    is deleted makes the controller call delete again: that must succeed and change nothing (it used to raise
    "no record" forever for a retained volume, whose directory stays: VolumeFailedDelete on every retry)."""
    a = InProcessAppliance(h)
    pv = claimed(a.p.provision(options(params={"onDelete": on_delete})))
    (a.root / "pvc-1" / "f").write_text("data")
    a.p.delete(pv)
    before = sorted(str(p.relative_to(a.root)) for p in a.root.rglob("*") if ".ganesha" not in p.parts)
    assert a.p.delete(pv) is None  # the retry after the crash
    assert sorted(str(p.relative_to(a.root)) for p in a.root.rglob("*") if ".ganesha" not in p.parts) == before
    if on_delete == "retain":
        assert (a.root / "pvc-1" / "f").read_text() == "data"
        other = copy.deepcopy(pv)  # another claim's PV of the same name is not the one retired here
        other["spec"]["claimRef"]["uid"] = "someone-else"
        with pytest.raises(RuntimeError, match="no record"):
            a.p.delete(other)
        assert (a.root / "pvc-1" / "f").read_text() == "data"


@pytest.mark.parametrize(
    ("opts", "message"),
    [
        (options(params={"size": "1"}), "invalid parameter 'size'"),
        (options(params={"gid": "0"}), "invalid value '0' for parameter gid"),
        (options(params={"gid": "²"}), "^StorageClass example-nfs: invalid value '²' for parameter gid"),
        (options(params={"gid": "١٢٣"}), "^StorageClass example-nfs: invalid value '١٢٣' for parameter gid"),
        (options(params={"onDelete": "shred"}), "parameter onDelete"),
        (options(claim_spec={"selector": {"matchLabels": {"a": "b"}}}), "claim Selector is not supported"),
        (options(size="1Ei"), "bytes are free on the export root"),
        (options(size="lots"), "'lots' is not a Kubernetes quantity"),
        (options(name="../../etc"), "is not a DNS-1123 subdomain"),
        (options(name="nfs-provisioner.identity"), "is reserved"),
    ],
)
def test_rejections_leave_nothing_behind(h: Harness, opts: ProvisionOptions, message: str) -> None:
    a = InProcessAppliance(h)
    before = snapshot(a.root)
    with pytest.raises(ProvisioningError, match=message):
        a.p.provision(opts)
    assert snapshot(a.root) == before
    assert a.server.exports.list_exports() == []


def test_max_exports_counts_volumes_only(h: Harness) -> None:
    a = InProcessAppliance(h, max_exports=2)
    a.p.provision(options("pvc-1"))
    pv2 = a.p.provision(options("pvc-2"))
    with pytest.raises(ProvisioningError, match=r"maximum number of exports \(2\) is reached"):
        a.p.provision(options("pvc-3"))
    assert not (a.root / "pvc-3").exists()
    a.p.provision(options("pvc-2"))  # a retry of an exported volume is not a new export
    a.p.delete(claimed(pv2))
    a.p.provision(options("pvc-3"))


def test_failed_export_rolls_back_the_directory(h: Harness) -> None:
    a = InProcessAppliance(h)
    a.p.provision(options("pvc-1"))
    a.server.stop()  # D-Bus AddExport now fails
    before = snapshot(a.root)
    with pytest.raises(ProvisioningError, match="creating volume pvc-2 failed"):
        a.p.provision(options("pvc-2"))
    assert snapshot(a.root) == before


def test_tampered_volumes_never_touch_anything_else(h: Harness) -> None:
    a = InProcessAppliance(h)
    victim = a.p.provision(options("pvc-victim"))
    (a.root / "pvc-victim" / "precious").write_text("keep")
    mine = claimed(a.p.provision(options("pvc-mine")))
    victim_id = victim["metadata"]["annotations"][prov.ANN_EXPORT_ID]

    def tampered(**changes: Any) -> dict[str, Any]:
        pv = copy.deepcopy(mine)
        for key, value in changes.items():
            if key == "name":
                pv["metadata"]["name"] = value
            elif key == "path":
                pv["spec"]["nfs"]["path"] = value
            elif value is None:
                pv["metadata"]["annotations"].pop(key)
            else:
                pv["metadata"]["annotations"][key] = value
        return pv

    before = snapshot(a.root)
    with pytest.raises(IgnoredError, match="does not match ours"):
        a.p.delete(tampered(Provisioner_Id="someone-else"))
    with pytest.raises(RuntimeError, match="identity annotation Provisioner_Id not found"):
        a.p.delete(tampered(Provisioner_Id=None))
    for hostile in ("../pvc-victim", "pvc-mine/../pvc-victim", ".", "", ".archive"):
        with pytest.raises(InvalidVolumeName):
            a.p.delete(tampered(name=hostile))
    assert snapshot(a.root) == before
    assert len(a.server.exports.list_exports()) == 2

    # Forged export id and path pointing at the victim: only our own volume goes.
    a.p.delete(tampered(Export_Id=victim_id, path=str(a.root / "pvc-victim"), **{prov.ANN_ON_DELETE: "delete"}))
    assert not (a.root / "pvc-mine").exists()
    assert (a.root / "pvc-victim" / "precious").read_text() == "keep"
    assert [e.name for e in a.server.exports.list_exports()] == ["pvc-victim"]
    assert h.client().cat(a.root / "pvc-victim" / "precious").stdout == b"keep"


def test_unknown_on_delete_annotation_keeps_the_data(h: Harness) -> None:
    a = InProcessAppliance(h)
    pv = a.p.provision(options())
    (a.root / "pvc-1" / "f").write_text("data")
    pv["metadata"]["annotations"][prov.ANN_ON_DELETE] = "rm -rf /"
    a.p.delete(claimed(pv))
    assert (a.root / "pvc-1" / "f").read_text() == "data"
    assert a.server.exports.list_exports() == []


def test_rollback_failure_asks_to_be_called_again(h: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    # Not a mock of Ganesha: the real server is stopped; only the directory removal is made to fail.
    a = InProcessAppliance(h)
    a.server.stop()

    def refuse(name: str) -> bool:
        raise OSError("device busy")

    monkeypatch.setattr(a.p.directories.__class__, "delete", lambda self, name: refuse(name))
    with pytest.raises(ProvisioningError) as err:
        a.p.provision(options("pvc-1"))
    assert err.value.state is ProvisioningState.IN_BACKGROUND
    assert "rollback failed too (remove directory: device busy)" in str(err.value)


def test_delete_removes_only_what_this_appliance_made_for_that_pv(h: Harness) -> None:
    a = InProcessAppliance(h)
    victim = claimed(a.p.provision(options("pvc-victim")))
    (a.root / "pvc-victim" / "precious").write_text("keep")
    (a.root / "victimdir").mkdir()
    (a.root / "victimdir" / "precious").write_text("keep")
    kept = claimed(a.p.provision(options("pvc-kept", params={"onDelete": "retain"})))
    (a.root / "pvc-kept" / "precious").write_text("keep")
    a.p.delete(kept)  # retained: the directory stays, and is no longer a volume
    before = snapshot(a.root)

    def forged(name: str, uid: str) -> dict[str, Any]:
        pv = copy.deepcopy(victim)
        pv["metadata"]["name"] = name
        pv["spec"]["claimRef"]["uid"] = uid
        return pv

    with pytest.raises(RuntimeError, match=r"no record of creating volume victimdir .*refusing to delete"):
        a.p.delete(forged("victimdir", "no-such-claim"))
    with pytest.raises(RuntimeError, match=r"no record of creating volume pvc-kept"):
        a.p.delete(forged("pvc-kept", "another-claim"))
    assert a.p.delete(forged("pvc-kept", "kept")) is None  # its own PV again (a retry): done already, kept
    with pytest.raises(RuntimeError, match=r"made for claim ns/claim \(uid victim\).*uid other"):
        a.p.delete(forged("pvc-victim", "other"))
    assert snapshot(a.root) == before
    assert [e.name for e in a.server.exports.list_exports()] == ["pvc-victim"]

    a.p.delete(forged("pvc-gone", "gone"))  # nothing there, nothing recorded: nothing to do, nothing touched
    assert snapshot(a.root) == before
    a.p.delete(victim)
    assert not (a.root / "pvc-victim").exists()
    assert not (a.root / RECORDS_DIR / "pvc-victim.json").exists()


def test_delete_frees_a_full_export_root(small_root: Path, h: Harness) -> None:
    """A client fills the export root through its volume: deleting the claim must free the space (the export
    index rewrite needs space itself) and leave the root usable for new volumes."""
    a = InProcessAppliance(h)
    pv = claimed(a.p.provision(options("pvc-full")))
    keep = claimed(a.p.provision(options("pvc-keep")))
    assert smallfs.fill(a.root / "pvc-full") > 4 * 2**20
    with pytest.raises(OSError, match="No space left"):
        (a.root / "probe").write_bytes(b"x" * 4096)
    index_before = a.server.exports.index_entries()

    a.p.delete(pv)
    assert not (a.root / "pvc-full").exists()
    assert not (a.root / RECORDS_DIR / "pvc-full.json").exists()
    assert [e.name for e in a.server.exports.list_exports()] == ["pvc-keep"]
    assert a.server.exports.index_entries() == [p for p in index_before if "pvc-full" not in p.name]
    assert VolumeDirectories(a.root).free_bytes() > 4 * 2**20
    a.p.provision(options("pvc-next"))
    put = h.client().put(b"after", a.root / "pvc-next" / "f")
    assert put.returncode == 0, put.stderr
    assert (a.root / "pvc-next" / "f").read_bytes() == b"after"
    a.p.delete(keep)


def test_delete_a_volume_nested_1100_deep_over_nfs(h: Harness) -> None:
    """What a client does in half a second: 1100 nested directories (CREATE over NFSv4, 50 per COMPOUND).
    Deleting the volume used to fail with 'maximum recursion depth exceeded' forever."""
    a = InProcessAppliance(h)
    pv = claimed(a.p.provision(options("pvc-deep")))
    with nfsraw.Nfs4(host="127.0.0.1", port=h.port) as c:
        fh = c.path_fh(*(a.root / "pvc-deep").parts[1:])
        for _ in range(22):
            r = c.compound([c.putfh(fh), *(c.mkdir("d") for _ in range(50)), c.getfh()])
            assert r.status == nfsraw.NFS4_OK, r.status_name
            fh = r.last(nfsraw.OP_GETFH).fh
    depth, d = 0, a.root / "pvc-deep"
    while (d / "d").is_dir():
        depth, d = depth + 1, d / "d"
    assert depth == 1100
    a.p.delete(pv)
    assert not (a.root / "pvc-deep").exists()
    assert a.server.exports.list_exports() == []
