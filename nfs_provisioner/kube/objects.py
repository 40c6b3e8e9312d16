"""Kubernetes objects as the package handles them, and the annotation keys it reads or writes on them.

Everything above ``kube`` works on objects as plain data, exactly as the API server serialises them
(:data:`Object`); the keys of the annotations shared by several modules are defined here once. Modules import
them from here (``controller.decisions`` and ``appliance.provisioner`` also re-export the ones their users
already name through them). Pure data: no I/O, no import of the Kubernetes library.
"""

from __future__ import annotations

from typing import Any

Object = dict[str, Any]
"""A Kubernetes object (claim, PV, StorageClass, Node, Lease, Event) as JSON data."""

# Kubernetes' own, as kube-controller-manager and the external-provisioner library read and write them.
ANN_STORAGE_PROVISIONER = "volume.kubernetes.io/storage-provisioner"
ANN_BETA_STORAGE_PROVISIONER = "volume.beta.kubernetes.io/storage-provisioner"
ANN_SELECTED_NODE = "volume.kubernetes.io/selected-node"
ANN_BETA_STORAGE_CLASS = "volume.beta.kubernetes.io/storage-class"
ANN_PROVISIONED_BY = "pv.kubernetes.io/provisioned-by"
"""On a PV: the provisioner that made it."""
ANN_BETA_PROVISIONED_BY = "volume.beta.kubernetes.io/provisioned-by"
"""The older spelling of :data:`ANN_PROVISIONED_BY` (PVs of old provisioners, the Go nfs-provisioner's)."""
ANN_MIGRATED_TO = "pv.kubernetes.io/migrated-to"

# The appliance's PV annotations, compatible with the Go nfs-provisioner's where it had them.
ANN_IDENTITY = "Provisioner_Id"
"""The identity of the export root (appliance) whose volume this is."""
ANN_EXPORT_ID = "Export_Id"
ANN_EXPORT_BLOCK = "EXPORT_block"
ANN_PROJECT_ID = "Project_Id"
ANN_PROJECT_BLOCK = "Project_block"
