"""Volumes and their events as the state tests read them (tests/e2e/test_state.py, tests/*/test_hostile_state.py):
a claim bound to its PV, the events about an object, a PV gone, a PV removed by hand."""

from __future__ import annotations

from kubernetes import client

from tests.support import wait


def bound_volume(core: client.CoreV1Api, namespace: str, cls: str, name: str) -> client.V1PersistentVolume:
    core.create_namespaced_persistent_volume_claim(namespace, {
        "apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": name},
        "spec": {"storageClassName": cls, "accessModes": ["ReadWriteMany"],
                 "resources": {"requests": {"storage": "1Mi"}}}})
    wait.until(lambda: core.read_namespaced_persistent_volume_claim(name, namespace).status.phase == "Bound",
               timeout=60, what=f"claim {name} Bound")
    return core.read_persistent_volume(core.read_namespaced_persistent_volume_claim(name, namespace)
                                       .spec.volume_name)


def pv_gone(core: client.CoreV1Api, name: str) -> bool:
    return not core.list_persistent_volume(field_selector=f"metadata.name={name}").items


def remove_pv(core: client.CoreV1Api, name: str) -> None:
    """The PV ``name`` gone for good: deleted, then its finalizers dropped (in that order, so a finalizer added
    meanwhile, e.g. by the appliance, cannot leave it Terminating), each step tolerating that it is gone already."""
    for step in (lambda: core.delete_persistent_volume(name),
                 lambda: core.patch_persistent_volume(name, {"metadata": {"finalizers": None}})):
        try:
            step()
        except client.ApiException as e:
            if e.status != 404:
                raise
    wait.until(lambda: pv_gone(core, name), timeout=30, what=f"PV {name} gone")


def events_for(core: client.CoreV1Api, obj: str) -> list[client.CoreV1Event]:
    return core.list_event_for_all_namespaces(field_selector=f"involvedObject.name={obj}").items
