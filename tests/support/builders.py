"""One builder per object the tests make: a StorageClass and a PersistentVolumeClaim as plain dicts.

Each returns the body; given ``api`` it creates the object and returns what the API server answered: ``api`` is
a :class:`nfs_provisioner.kube.client.Client` (the real control plane's or
:class:`nfs_provisioner.controller.testing.FakeApi`: the answer is a dict), or the Kubernetes library's
``StorageV1Api`` for a class / ``CoreV1Api`` for a claim (the fixtures ``storage`` and ``core``: the answer is
the library's model). ``provisioner=`` on a claim sets the annotation kube-controller-manager's PV binder would
set (``volume.kubernetes.io/storage-provisioner``): the real control plane sets it itself, the fake does not.
"""

from __future__ import annotations

from typing import Any

from nfs_provisioner.controller import decisions
from nfs_provisioner.kube import client as kube

Object = dict[str, Any]

NFS41 = ["vers=4.1"]
"""The mount options of the README's example class (deploy/kube-config/class.yaml)."""


def make_class(name: str, provisioner: str, *, binding: str = "Immediate", reclaim: str = "Delete",
               parameters: dict[str, str] | None = None, mount_options: list[str] | None = None,
               expansion: bool | None = None, api: Any = None) -> Any:
    body: Object = {"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass", "metadata": {"name": name},
                    "provisioner": provisioner, "volumeBindingMode": binding, "reclaimPolicy": reclaim}
    if parameters:
        body["parameters"] = dict(parameters)
    if mount_options:
        body["mountOptions"] = list(mount_options)
    if expansion is not None:
        body["allowVolumeExpansion"] = expansion
    if api is None:
        return body
    if isinstance(api, kube.Client):
        return api.create(kube.classes_path(), body)
    return api.create_storage_class(body)  # the Kubernetes library's StorageV1Api


def make_claim(namespace: str, name: str, cls: str, *, size: str = "1Mi",
               modes: tuple[str, ...] = ("ReadWriteMany",), block: bool = False,
               annotations: dict[str, str] | None = None, provisioner: str | None = None,
               selected_node: str | None = None, data_source: Object | None = None, source: str | None = None,
               api: Any = None, **spec: Any) -> Any:
    """``source``: the name of a claim to clone (a ``dataSource`` of kind PersistentVolumeClaim);
    ``spec``: further fields of the claim's spec as the API spells them (``selector``, ``volumeName``)."""
    body_spec: Object = {"accessModes": list(modes), "storageClassName": cls,
                         "resources": {"requests": {"storage": size}}, **spec}
    if block:
        body_spec["volumeMode"] = "Block"
    if source is not None:
        data_source = {"kind": "PersistentVolumeClaim", "name": source}
    if data_source is not None:
        body_spec["dataSource"] = dict(data_source)
    ann = dict(annotations or {})
    if provisioner is not None:
        ann[decisions.ANN_STORAGE_PROVISIONER] = provisioner
    if selected_node is not None:
        ann[decisions.ANN_SELECTED_NODE] = selected_node
    body: Object = {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                    "metadata": {"name": name, "namespace": namespace, "annotations": ann}, "spec": body_spec}
    if api is None:
        return body
    if isinstance(api, kube.Client):
        return api.create(kube.claims_path(namespace), body)
    return api.create_namespaced_persistent_volume_claim(namespace, body)  # the library's CoreV1Api
