"""One builder per object the tests make: a StorageClass and a PersistentVolumeClaim as plain dicts.

Each returns the body; given ``api`` (a :class:`nfs_provisioner.kube.client.Client`: the real control plane's
or :class:`nfs_provisioner.controller.testing.FakeApi`), it creates the object and returns what the API server
answered. ``provisioner=`` on a claim sets the annotation kube-controller-manager's PV binder would set
(``volume.kubernetes.io/storage-provisioner``): the real control plane sets it itself, the fake does not.
"""

from __future__ import annotations

from typing import Any

from nfs_provisioner.controller import decisions
from nfs_provisioner.kube import client as kube

Object = dict[str, Any]


def make_class(name: str, provisioner: str, *, binding: str = "Immediate", reclaim: str = "Delete",
               parameters: dict[str, str] | None = None, mount_options: list[str] | None = None,
               expansion: bool | None = None, api: kube.Client | None = None) -> Object:
    body: Object = {"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass", "metadata": {"name": name},
                    "provisioner": provisioner, "volumeBindingMode": binding, "reclaimPolicy": reclaim}
    if parameters:
        body["parameters"] = dict(parameters)
    if mount_options:
        body["mountOptions"] = list(mount_options)
    if expansion is not None:
        body["allowVolumeExpansion"] = expansion
    return api.create(kube.classes_path(), body) if api is not None else body


def make_claim(namespace: str, name: str, cls: str, *, size: str = "1Mi",
               modes: tuple[str, ...] = ("ReadWriteMany",), block: bool = False,
               annotations: dict[str, str] | None = None, provisioner: str | None = None,
               selected_node: str | None = None, data_source: Object | None = None,
               api: kube.Client | None = None) -> Object:
    spec: Object = {"accessModes": list(modes), "storageClassName": cls, "resources": {"requests": {"storage": size}}}
    if block:
        spec["volumeMode"] = "Block"
    if data_source is not None:
        spec["dataSource"] = dict(data_source)
    ann = dict(annotations or {})
    if provisioner is not None:
        ann[decisions.ANN_STORAGE_PROVISIONER] = provisioner
    if selected_node is not None:
        ann[decisions.ANN_SELECTED_NODE] = selected_node
    body: Object = {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                    "metadata": {"name": name, "namespace": namespace, "annotations": ann}, "spec": spec}
    return api.create(kube.claims_path(namespace), body) if api is not None else body
