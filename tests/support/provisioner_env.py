"""The appliance's provisioner on a real Ganesha, in the test's process (no controller, no control plane): what
tests/ganesha/test_appliance_provisioner.py and the modules built like it share."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from nfs_provisioner.appliance import provisioner as prov
from nfs_provisioner.appliance.exporters import GaneshaExporter
from nfs_provisioner.controller.interface import ProvisionOptions
from nfs_provisioner.ganesha.server import GaneshaServer
from nfs_provisioner.volumes.directories import VolumeDirectories
from nfs_provisioner.volumes.filesystems import FilesystemVolumes
from nfs_provisioner.volumes.records import RECORDS_DIR, VolumeRecords
from tests.support import smallfs
from tests.support.ganesha_env import Harness

IDENTITY = "6f1c1c1e-0000-4000-8000-000000000001"


class InProcessAppliance:
    """The appliance's provisioner in this process on ``h``'s real Ganesha (not the appliance process, which is
    tests/support/appliance_env.py's ``Appliance``); ``filesystems``: filesystem volumes too, on real loop
    devices; ``exporter``: the Exporter class wrapping Ganesha's export manager (a failing one in some tests)."""

    def __init__(self, h: Harness, *, max_exports: int = -1, identity: str = IDENTITY,
                 exporter: type[GaneshaExporter] = GaneshaExporter, filesystems: bool = False) -> None:
        self.h = h
        self.server: GaneshaServer = h.server()
        self.root = h.export_root
        self.exporter = exporter(self.server.exports)
        self.fs = FilesystemVolumes(self.root) if filesystems else None
        self.p = prov.NFSProvisioner(
            config=prov.ApplianceConfig(identity=identity, server=lambda: "127.0.0.1", max_exports=max_exports),
            directories=VolumeDirectories(self.root),
            records=VolumeRecords(self.root / RECORDS_DIR),
            exporter=self.exporter, filesystems=self.fs,
        )


@pytest.fixture
def small_root(tmp_path: Path) -> Iterator[Path]:
    """A real 8 MiB ext4 at the export root the ``h`` fixture uses; requested before ``h``, so it is unmounted
    after every server is stopped."""
    with smallfs.mounted(tmp_path / "export", image=tmp_path / "root.img") as root:
        yield root


def options(name: str = "pvc-1", *, params: dict[str, str] | None = None, size: str = "1Mi",
            claim_spec: dict[str, Any] | None = None, mount_options: list[str] | None = None,
            reclaim: str = "Delete") -> ProvisionOptions:
    sc: dict[str, Any] = {"metadata": {"name": "example-nfs"}, "provisioner": "example.com/nfs",
                          "reclaimPolicy": reclaim, "parameters": params or {}}
    if mount_options:
        sc["mountOptions"] = mount_options
    spec: dict[str, Any] = {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": size}}}
    spec.update(claim_spec or {})
    claim = {"metadata": {"name": "claim", "namespace": "ns", "uid": name[4:]}, "spec": spec}
    return ProvisionOptions(storage_class=sc, pv_name=name, claim=claim)


def claimed(pv: dict[str, Any]) -> dict[str, Any]:
    """The PV as the controller saves it: bound to the claim it was made for (uid = name after ``pvc-``)."""
    pv = copy.deepcopy(pv)
    pv["spec"]["claimRef"] = {"namespace": "ns", "name": "claim", "uid": pv["metadata"]["name"][4:]}
    return pv
