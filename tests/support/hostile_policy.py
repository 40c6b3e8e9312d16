"""What tests/{e2e,ganesha,unit}/test_hostile_policy.py share (one module per lane: the tests of one module
needed different things)."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from nfs_provisioner.appliance import provisioner as prov
from nfs_provisioner.appliance.exporters import GaneshaExporter
from nfs_provisioner.controller.interface import ProvisionOptions
from nfs_provisioner.volumes.directories import ARCHIVE_DIR, VolumeDirectories
from nfs_provisioner.volumes.records import RECORDS_DIR, VolumeRecords
from tests.support.ganesha_env import Harness

ANN = "nfs-provisioner.io/on-delete"


IDENTITY = "6f1c1c1e-0000-4000-8000-0000000000d1"


class Volumes:
    """The appliance's provisioner on a real Ganesha (as tests/ganesha/test_appliance_provisioner.py builds it)."""

    def __init__(self, h: Harness) -> None:
        self.root = h.export_root
        self.server = h.server()
        self.p = prov.NFSProvisioner(
            config=prov.ApplianceConfig(identity=IDENTITY, server=lambda: "127.0.0.1"),
            directories=VolumeDirectories(self.root),
            records=VolumeRecords(self.root / RECORDS_DIR),
            exporter=GaneshaExporter(self.server.exports),
        )

    def make(self, name: str, on_delete: str) -> dict[str, Any]:
        """A Bound volume of a class with ``onDelete: on_delete``, holding one file; returns its PV."""
        sc = {"metadata": {"name": "c"}, "provisioner": "example.com/nfs", "reclaimPolicy": "Delete",
              "parameters": {"onDelete": on_delete}}
        claim = {"metadata": {"name": "claim", "namespace": "ns", "uid": f"uid-{name}"},
                 "spec": {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": "1Mi"}}}}
        pv = copy.deepcopy(self.p.provision(ProvisionOptions(storage_class=sc, pv_name=name, claim=claim)))
        pv["spec"]["claimRef"] = {"namespace": "ns", "name": "claim", "uid": f"uid-{name}"}
        (self.root / name / "precious").write_text(f"data of {name}")
        return pv

    def set_record(self, name: str, **fields: object) -> None:
        """Rewrite fields of a record by hand (``on_delete=...``); a field set to ``...`` is dropped."""
        path = self.root / RECORDS_DIR / f"{name}.json"
        data = json.loads(path.read_text())
        for key, value in fields.items():
            if value is ...:
                data.pop(key, None)
            else:
                data[key] = value
        path.write_text(json.dumps(data))

    def where(self, name: str) -> str:
        """Where the volume's data is now: "kept" (its directory), "archived", or "deleted"."""
        archived = list((self.root / ARCHIVE_DIR).glob(f"{name}-*/precious"))
        kept = (self.root / name / "precious").exists()
        assert len(archived) + kept <= 1, (archived, kept)
        for found in [*archived, *([self.root / name / "precious"] if kept else [])]:
            assert found.read_text() == f"data of {name}"
        return "archived" if archived else "kept" if kept else "deleted"


@pytest.fixture
def volumes(h: Harness) -> Iterator[Volumes]:
    yield Volumes(h)


def where(root: Path, pv: str, text: str) -> str:
    """Where a volume's file is now: "kept" (its directory), "archived" (under .archive/) or "deleted"."""
    archived = [p for p in (root / ARCHIVE_DIR).glob(f"{pv}-*/precious") if p.read_text() == text]
    kept = (root / pv / "precious").exists() and (root / pv / "precious").read_text() == text
    return "archived" if archived else "kept" if kept else "deleted"
