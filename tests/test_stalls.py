"""Failures that used to stall or hide, with the real appliance, control plane and Ganesha (issue 14): each must
reach the user as an event on the claim and a log line."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client

from tests import smallfs, wait
from tests.appliance_env import Appliance

pytestmark = [pytest.mark.e2e, pytest.mark.kube, pytest.mark.ganesha]


@pytest.fixture
def small_root(tmp_path: Path) -> Iterator[Path]:
    """A real 8 MiB ext4 at the export root the ``appliance`` fixture uses (requested before it, so it is
    unmounted after the appliance stopped)."""
    with smallfs.mounted(tmp_path / "export", image=tmp_path / "root.img") as root:
        yield root


def _claim(core: client.CoreV1Api, namespace: str, cls: str, name: str) -> None:
    core.create_namespaced_persistent_volume_claim(namespace, {
        "apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": name},
        "spec": {"storageClassName": cls, "accessModes": ["ReadWriteMany"],
                 "resources": {"requests": {"storage": "1Mi"}}}})


@pytest.mark.parametrize(("spoil", "message"), [("full", "No space left on device"),
                                                ("read-only", "Read-only file system")])
def test_claims_on_a_full_or_read_only_root_say_why(small_root: Path, appliance: Appliance, core: client.CoreV1Api,
                                                     storage: client.StorageV1Api, namespace: str, unique: str,
                                                     spoil: str, message: str) -> None:
    cls = f"stall-{unique}"
    storage.create_storage_class({"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
                                  "metadata": {"name": cls}, "provisioner": appliance.provisioner})
    appliance.start()
    if spoil == "full":
        smallfs.fill(small_root)
    else:
        smallfs.turn_read_only(small_root)
    try:
        _claim(core, namespace, cls, "waiting")

        def failed_event() -> str | None:
            for e in core.list_namespaced_event(namespace, field_selector="involvedObject.name=waiting").items:
                if e.reason == "ProvisioningFailed" and e.type == "Warning" and message in e.message:
                    return str(e.message)
            return None

        text = wait.until(failed_event, timeout=30, what=f"ProvisioningFailed event with {message!r}")
        assert len(text.splitlines()) == 1 and str(small_root) in text, text
        lines = [line for line in appliance.log().splitlines() if message in line and "waiting" in line]
        assert lines and "WARNING" in lines[0], appliance.log()
        assert core.read_namespaced_persistent_volume_claim("waiting", namespace).status.phase == "Pending"
    finally:
        storage.delete_storage_class(cls)
