"""The Go nfs-provisioner fixture's classes, claims and PVs recreated in the control plane, as its README says:
each claim with ``spec.volumeName`` set to its PV's name, then the PV with ``claimRef.uid`` the new claim's.

On the shared cluster the namespace, the class names and the provisioner name get a unique suffix (the
provisioner name is a deployment parameter like any: the appliance runs with the one the PVs' ``provisioned-by``
says); the PV names cannot (they are the volume directories' names), so a run waits until no other run holds
them (and for no other run's ``legacy-*`` namespace), and removes those it made, by uid, at the end."""

from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass, field
from typing import Any

import yaml
from kubernetes import client

from tests.support import go_fixture, wait


def items(name: str) -> list[dict[str, Any]]:
    return list(yaml.safe_load((go_fixture.FIXTURE / name).read_text())["items"])


FIXTURE_PVS = {pv["spec"]["claimRef"]["name"]: pv for pv in items("pvs.yaml")}
"""claim name (data, keep, squashed, shared) -> its PV as the Go provisioner made it."""


def _exists(core: client.CoreV1Api, pv: str) -> bool:
    return bool(core.list_persistent_volume(field_selector=f"metadata.name={pv}").items)


def class_body(c: dict[str, Any], name: str, provisioner: str) -> dict[str, Any]:
    """The fixture's class ``c`` as ``name``, for ``provisioner``."""
    return {"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass", "metadata": {"name": name},
            "provisioner": provisioner, "parameters": c.get("parameters"), "reclaimPolicy": c["reclaimPolicy"],
            "mountOptions": c.get("mountOptions"), "volumeBindingMode": c["volumeBindingMode"]}


def claim_body(claim: str, old: dict[str, Any], cls: str) -> dict[str, Any]:
    """The claim ``claim`` of the fixture's PV ``old``, bound to it by name (``spec.volumeName``)."""
    return {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": claim},
            "spec": {"accessModes": old["spec"]["accessModes"], "storageClassName": cls,
                     "volumeName": old["metadata"]["name"],
                     "resources": {"requests": {"storage": old["spec"]["capacity"]["storage"]}}}}


def pv_body(claim: str, old: dict[str, Any], *, claim_uid: str, namespace: str, cls: str,
            provisioner: str) -> dict[str, Any]:
    """The fixture's PV ``old`` as it is recreated: its name and annotations (``provisioned-by`` the appliance's
    provisioner), its ``claimRef`` naming the new claim by uid, no status."""
    pv = copy.deepcopy(old)
    pv["metadata"] = {"name": old["metadata"]["name"], "annotations": {
        **old["metadata"]["annotations"], "pv.kubernetes.io/provisioned-by": provisioner}}
    pv["spec"]["claimRef"] = {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "name": claim,
                              "namespace": namespace, "uid": claim_uid}
    pv["spec"]["storageClassName"] = cls
    pv.pop("status", None)
    return pv


@dataclass
class Legacy:
    core: client.CoreV1Api
    storage: client.StorageV1Api
    suffix: str
    server: str
    """The PVs' ``nfs.server``: what the Go provisioner in a cluster wrote, its Service's ClusterIP."""
    namespace: str = ""
    provisioner: str = ""
    made: dict[str, str] = field(default_factory=dict)
    """PV name -> uid of the PVs this run created (deleted by uid: another run may own the name by then)."""

    def __post_init__(self) -> None:
        self.namespace = self.namespace or f"legacy-{self.suffix}"
        self.provisioner = self.provisioner or f"example.com/nfs-{self.suffix}"

    def cls(self, name: str) -> str:
        return f"{name}-{self.suffix}"

    def create(self) -> None:
        """Classes, then the claims bound by name, then the PVs; returns once every claim is Bound."""
        wait.until(self._free, timeout=900, interval=1, what="the fixture's PV names free (another run holds them)")
        for c in items("classes.yaml"):
            self.storage.create_storage_class(class_body(c, self.cls(c["metadata"]["name"]), self.provisioner))
        with contextlib.suppress(client.ApiException):
            self.core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=self.namespace)))
        for claim, old in FIXTURE_PVS.items():
            cls = self.cls(old["spec"]["storageClassName"])
            c = self.core.create_namespaced_persistent_volume_claim(self.namespace, claim_body(claim, old, cls))
            pv = pv_body(claim, old, claim_uid=c.metadata.uid, namespace=self.namespace, cls=cls,
                         provisioner=self.provisioner)
            pv["spec"]["nfs"]["server"] = self.server
            self.made[old["metadata"]["name"]] = self.core.create_persistent_volume(pv).metadata.uid
        wait.until(lambda: all(self.core.read_namespaced_persistent_volume_claim(c, self.namespace).status.phase
                               == "Bound" for c in FIXTURE_PVS), timeout=180, what=self.describe)

    def _free(self) -> bool:
        """No PV of the fixture's names, and no other run's namespace ``legacy-*`` (tests/e2e/test_adopt.py's runs
        use the same names: one run at a time on a shared cluster)."""
        others = [n.metadata.name for n in self.core.list_namespace().items
                  if n.metadata.name.startswith("legacy-") and n.metadata.name != self.namespace]
        return not others and not any(_exists(self.core, pv["metadata"]["name"]) for pv in FIXTURE_PVS.values())

    def describe(self) -> str:
        """The claims' and PVs' phases (for a failure message)."""
        claims = {c.metadata.name: c.status.phase
                  for c in self.core.list_namespaced_persistent_volume_claim(self.namespace).items}
        pvs = {n: [(p.metadata.uid == uid, p.status.phase) for p in
                   self.core.list_persistent_volume(field_selector=f"metadata.name={n}").items]
               for n, uid in self.made.items()}
        return f"the fixture's claims Bound: claims {claims}, PVs (ours?, phase) {pvs}"

    def delete(self) -> None:
        """The namespace, the PVs (finalizers dropped: no provisioner may be left to release them) and classes."""
        with contextlib.suppress(client.ApiException):
            self.core.delete_namespace(self.namespace)
        for name, uid in self.made.items():
            with contextlib.suppress(client.ApiException):
                self.core.delete_persistent_volume(name, body=client.V1DeleteOptions(
                    preconditions=client.V1Preconditions(uid=uid)))
            with contextlib.suppress(client.ApiException):  # a patch naming a uid applies to that object only
                self.core.patch_persistent_volume(name, {"metadata": {"uid": uid, "finalizers": None}})
        for c in items("classes.yaml"):
            with contextlib.suppress(client.ApiException):
                self.storage.delete_storage_class(self.cls(c["metadata"]["name"]))
        wait.until(lambda: not any(uid in self._uids(n) for n, uid in self.made.items()), timeout=60,
                   what="the fixture's PVs gone")

    def _uids(self, name: str) -> set[str]:
        return {p.metadata.uid for p in self.core.list_persistent_volume(field_selector=f"metadata.name={name}").items}
