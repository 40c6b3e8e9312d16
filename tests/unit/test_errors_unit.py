"""One root for the package's errors (``nfs_provisioner.errors``), retryable versus permanent as types, and the
appliance's ``delete`` refusing with a typed error: fast, no servers."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from pathlib import Path

import pytest

import nfs_provisioner
from nfs_provisioner import errors
from nfs_provisioner.appliance import app
from nfs_provisioner.appliance import provisioner as prov
from nfs_provisioner.appliance.testing import MemoryExporter
from nfs_provisioner.controller import DeleteError, DeleteRefused
from nfs_provisioner.ganesha import errors as ganesha_errors
from nfs_provisioner.kube import errors as kube_errors
from nfs_provisioner.volumes.directories import VolumeDirectories
from nfs_provisioner.volumes.records import RECORDS_DIR, VolumeRecords

pytestmark = pytest.mark.unit

OUTSIDE = {
    "nfs_provisioner.appliance.lifecycle.Terminated": "a stop signal, not an error (exit 0)",
    "nfs_provisioner.controller.queueing.ShutDown": "the queue's end, not an error",
    "nfs_provisioner.controller.interface.IgnoredError": "'not mine', not an error",
    "nfs_provisioner.controller.interface.ProvisioningError": "a library user's provisioner raises it",
    "nfs_provisioner.controller.interface.InProgress": "long work still running, not a failure",
    "nfs_provisioner.controller.resizing.ShrinkRefused": "caught inside its module",
    "nfs_provisioner.kube.credentials.Unsupported": "caught inside its module",
    "nfs_provisioner.volumes.space.NoRoom": "caught inside its module (DirectoryError's InsufficientSpace)",
    "nfs_provisioner.volumes.loops.LoopError": "an OSError by design",
    "nfs_provisioner.volumes.walking.TreeChanged": "an OSError by design",
    "nfs_provisioner.ganesha.portmap.PortmapError": "an OSError by design",
}
"""Exceptions of the package deliberately outside the tree (the errors module's docstring says the same)."""


def package_exceptions() -> dict[str, type[BaseException]]:
    """Every exception class defined in a module of the package, by qualified name."""
    found: dict[str, type[BaseException]] = {}
    root = Path(nfs_provisioner.__file__).parent
    for info in pkgutil.walk_packages([str(root)], prefix="nfs_provisioner."):
        if info.name.endswith("__main__"):
            continue
        module = importlib.import_module(info.name)
        for name, obj in vars(module).items():
            if inspect.isclass(obj) and issubclass(obj, BaseException) and obj.__module__ == info.name:
                found[f"{info.name}.{name}"] = obj
    return found


def test_every_error_of_the_package_has_the_one_root() -> None:
    found = package_exceptions()
    assert len(found) > 60
    loose = sorted(name for name, cls in found.items()
                   if not issubclass(cls, errors.NFSProvisionerError) and name not in OUTSIDE)
    assert loose == [], "derive from nfs_provisioner.errors.NFSProvisionerError (or list it in OUTSIDE, with why)"
    assert sorted(n for n in OUTSIDE if n not in found) == []  # the list names only what exists


def test_a_start_up_failure_is_recognised_by_the_root() -> None:
    """The eight kinds the appliance recognised by a tuple before, and the ones that were tracebacks."""
    from nfs_provisioner.appliance import address, nodes, state
    from nfs_provisioner.quota.errors import QuotaError
    from nfs_provisioner.volumes.directories import DirectoryError
    from nfs_provisioner.volumes.records import RecordError
    for cls in (app.StartupError, ganesha_errors.GaneshaError, kube_errors.KubeError, address.AddressError,
                QuotaError, state.StateError, RecordError, nodes.NodesError, DirectoryError):
        assert issubclass(cls, app.STARTUP_ERRORS), cls
    assert issubclass(app.StartupError, RuntimeError)  # what it was before, still


def test_retryable_and_permanent_are_types() -> None:
    retryable = {status: kube_errors.from_status(status, {}) for status in (404, 409, 410, 403, 422, 429, 500, 503)}
    assert {s for s, e in retryable.items() if isinstance(e, errors.Retryable)} == {429, 500, 503}
    assert all(e.retryable == isinstance(e, errors.Retryable) for e in retryable.values())
    assert isinstance(kube_errors.TransportError("reset"), errors.Retryable)
    assert issubclass(ganesha_errors.DBusRetryable, errors.Retryable)
    assert not issubclass(ganesha_errors.ExportNotFound, errors.Retryable)
    assert issubclass(DeleteRefused, errors.Permanent) and not issubclass(DeleteError, errors.Permanent)
    assert not issubclass(errors.Retryable, errors.Permanent) and not issubclass(errors.Permanent, errors.Retryable)


def test_delete_refuses_a_volume_it_cannot_prove_its_own_with_a_typed_error(tmp_path: Path) -> None:
    root = tmp_path / "export"
    root.mkdir()
    p = prov.NFSProvisioner(config=prov.ApplianceConfig(identity="me", server=lambda: "192.0.2.10"),
                            directories=VolumeDirectories(root), records=VolumeRecords(root / RECORDS_DIR),
                            exporter=MemoryExporter())
    (root / "pvc-1").mkdir()
    pv = {"metadata": {"name": "pvc-1", "annotations": {}}, "spec": {"claimRef": {"uid": "u"}}}
    with pytest.raises(DeleteRefused, match="identity annotation Provisioner_Id not found; refusing to delete"):
        p.delete(pv)
    pv["metadata"]["annotations"][prov.ANN_IDENTITY] = "me"
    with pytest.raises(DeleteRefused, match="no record of creating volume pvc-1"):
        p.delete(pv)
    assert (root / "pvc-1").is_dir()  # nothing touched
