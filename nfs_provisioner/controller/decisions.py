"""Pure decisions on plain objects: which claims to provision, which volumes to delete.

No I/O here: every function takes ``dict`` objects and returns data, so the
rules of REFERENCE.md are unit-testable one by one.
"""

from __future__ import annotations

import copy
import enum
from collections.abc import Collection

from nfs_provisioner.controller.interface import DataSource
from nfs_provisioner.kube.objects import (
    ANN_BETA_STORAGE_CLASS,
    ANN_BETA_STORAGE_PROVISIONER,
    ANN_MIGRATED_TO,
    ANN_PROVISIONED_BY,
    ANN_STORAGE_PROVISIONER,
    Object,
)
from nfs_provisioner.kube.objects import (
    ANN_SELECTED_NODE as ANN_SELECTED_NODE,  # named through this module by its users
)

PV_FINALIZER = "external-provisioner.volume.kubernetes.io/finalizer"
"""The Go library's PV finalizer: the asset still exists while the PV carries it."""
CLAIM_FINALIZER_PREFIX = "provisioning.nfs-provisioner.io/"
"""Claims carry ``<prefix><instance>`` while a provision for them is in flight (see ``claim_finalizer``)."""


def claim_finalizer(instance: str) -> str:
    """The durable in-flight record of a provision: a finalizer on the claim, one name per instance."""
    return CLAIM_FINALIZER_PREFIX + instance


def only_finalizer_changed(old: Object, new: Object, finalizer: str) -> bool:
    """``new`` is ``old`` with ``finalizer`` added or removed and nothing else (its resourceVersion and
    managedFields aside): the echo of our own in-flight patch, which must not requeue the claim (an attempt
    that failed would otherwise run again at once, bypassing its backoff)."""
    ignored = ("resourceVersion", "managedFields", "finalizers")

    def rest(obj: Object) -> tuple[Object, list[str]]:
        m = meta(obj)
        body = {k: v for k, v in obj.items() if k != "metadata"}
        body["metadata"] = {k: v for k, v in m.items() if k not in ignored}
        return body, [f for f in m.get("finalizers") or [] if f != finalizer]

    return rest(old) == rest(new)


def meta(obj: Object) -> Object:
    m: Object = obj.get("metadata") or {}
    return m


def annotations_of(obj: Object) -> dict[str, str]:
    a: dict[str, str] = meta(obj).get("annotations") or {}
    return a


def finalizers(obj: Object) -> list[str]:
    f: list[str] = meta(obj).get("finalizers") or []
    return f


def is_deleting(obj: Object) -> bool:
    return meta(obj).get("deletionTimestamp") is not None


def claim_key(claim: Object) -> str:
    return f"{meta(claim).get('namespace')}/{meta(claim).get('name')}"


def claim_class(claim: Object) -> str:
    """The claim's class: the beta annotation wins over ``spec.storageClassName`` (as in Kubernetes)."""
    ann = annotations_of(claim)
    if ANN_BETA_STORAGE_CLASS in ann:
        return str(ann[ANN_BETA_STORAGE_CLASS])
    return str((claim.get("spec") or {}).get("storageClassName") or "")


def claim_provisioner(claim: Object) -> str | None:
    """Who kube-controller-manager asked to provision: the GA annotation, else the beta one."""
    ann = annotations_of(claim)
    value = ann.get(ANN_STORAGE_PROVISIONER)
    if value is None:
        value = ann.get(ANN_BETA_STORAGE_PROVISIONER)
    return None if value is None else str(value)


def is_block(claim: Object) -> bool:
    return (claim.get("spec") or {}).get("volumeMode") == "Block"


def claim_source(claim: Object) -> DataSource | None:
    """What the claim's volume must be populated from: ``spec.dataSourceRef``, else ``spec.dataSource``."""
    spec = claim.get("spec") or {}
    return DataSource.parse(spec.get("dataSourceRef")) or DataSource.parse(spec.get("dataSource"))


def dropped_source(claim: Object) -> str | None:
    """The manager (client) that set a ``spec.dataSourceRef`` naming another namespace which the API server
    dropped; None: nothing was dropped.

    With the ``CrossNamespaceVolumeDataSource`` feature gate off (alpha since Kubernetes 1.26, off by default)
    the API server removes a ``dataSourceRef`` that names a namespace, stores the claim without any data source
    and answers without a warning (measured with kube-apiserver 1.35 and ``kubectl create``, ``apply`` and
    ``apply --server-side``). Only the claim's ``managedFields`` still show it: ``f:dataSourceRef`` with
    ``f:namespace`` for the manager that set it."""
    ref = (claim.get("spec") or {}).get("dataSourceRef")
    if isinstance(ref, dict) and "namespace" in ref:
        return None  # kept (the gate is on, or an empty namespace: the claim's own): there to be judged
    for entry in meta(claim).get("managedFields") or []:
        spec = ((entry.get("fieldsV1") or {}).get("f:spec") or {}) if isinstance(entry, dict) else {}
        fields = spec.get("f:dataSourceRef") if isinstance(spec, dict) else None
        if isinstance(fields, dict) and "f:namespace" in fields:
            return str(entry.get("manager") or "an unnamed client")
    return None


def selected_node(claim: Object) -> str | None:
    return annotations_of(claim).get(ANN_SELECTED_NODE) or None


def default_volume_name(claim: Object) -> str:
    """``pvc-<claim uid>``: deterministic, so a repeated provision is recognised."""
    return f"pvc-{meta(claim)['uid']}"


def requested_by_us(claim: Object, names: Collection[str]) -> bool:
    """Cheap event filter: unbound and annotated for one of ``names``."""
    return not (claim.get("spec") or {}).get("volumeName") and claim_provisioner(claim) in names


class Verdict(enum.Enum):
    PROVISION = "provision"
    SKIP = "skip"
    """Not for us (or not yet): nothing to do, no event."""
    WAIT_FOR_NODE = "wait-for-node"
    """WaitForFirstConsumer class and no selected node yet."""
    NO_CLASS = "no-class"
    """The claim is ours but its class is missing: retry (the class may be created later)."""
    CLASS_NOT_OURS = "class-not-ours"
    """The annotation names us but the class names another provisioner: stop."""


def should_provision(claim: Object, storage_class: Object | None, names: Collection[str]) -> Verdict:
    """The Go library's ``shouldProvision`` + class checks of ``provisionClaimOperation``."""
    if (claim.get("spec") or {}).get("volumeName"):
        return Verdict.SKIP
    if claim_provisioner(claim) not in names:
        return Verdict.SKIP
    if storage_class is None:
        return Verdict.NO_CLASS
    if storage_class.get("provisioner") not in names:
        return Verdict.CLASS_NOT_OURS
    if storage_class.get("volumeBindingMode") == "WaitForFirstConsumer" and not selected_node(claim):
        return Verdict.WAIT_FOR_NODE
    return Verdict.PROVISION


def is_ours(volume: Object, names: Collection[str]) -> bool:
    """Provisioned by one of ``names`` (or migrated to one)."""
    ann = annotations_of(volume)
    return ann.get(ANN_PROVISIONED_BY) in names or ann.get(ANN_MIGRATED_TO) in names


def reclaim_policy(volume: Object) -> str:
    return str((volume.get("spec") or {}).get("persistentVolumeReclaimPolicy") or "")


def phase(volume: Object) -> str:
    return str((volume.get("status") or {}).get("phase") or "")


def should_delete(volume: Object, names: Collection[str]) -> bool:
    """Released, reclaim policy Delete, provisioned by us, and not already finished.

    A PV being deleted without our finalizer has had its asset removed already.
    (The provisioner's deletion guard is asked separately.)"""
    if not is_ours(volume, names):
        return False
    if is_deleting(volume) and PV_FINALIZER not in finalizers(volume):
        return False
    return phase(volume) == "Released" and reclaim_policy(volume) == "Delete"


def finalizer_change(volume: Object, names: Collection[str], *, add_finalizer: bool) -> bool | None:
    """``True``: add the PV finalizer, ``False``: remove it, ``None``: leave it (Go's handleProtectionFinalizer).

    Retain/Recycle volumes never keep it; a Delete volume in delete (Released) keeps it until done."""
    if not is_ours(volume, names):
        return None
    present = PV_FINALIZER in finalizers(volume)
    policy = reclaim_policy(volume)
    if policy in ("Retain", "Recycle"):
        return False if present else None
    if add_finalizer and not present and policy == "Delete" and not is_deleting(volume) and phase(volume) == "Bound":
        return True
    return None


def claim_ref(claim: Object) -> Object:
    m = meta(claim)
    return {"kind": "PersistentVolumeClaim", "apiVersion": "v1", "namespace": m.get("namespace"),
            "name": m.get("name"), "uid": m.get("uid"), "resourceVersion": m.get("resourceVersion")}


def complete_volume(volume: Object, *, claim: Object, pv_name: str, provisioner: str,
                    add_finalizer: bool) -> Object:
    """What the controller adds to the PV a provisioner returned, before creating it."""
    pv = copy.deepcopy(volume)
    pv["apiVersion"] = "v1"
    pv["kind"] = "PersistentVolume"
    m = pv.setdefault("metadata", {})
    if not m.get("name"):
        m["name"] = pv_name
    if m["name"] != pv_name:
        raise ValueError(f"provisioner returned a PV named {m['name']!r}, expected {pv_name!r}")
    m.setdefault("annotations", {})[ANN_PROVISIONED_BY] = provisioner
    spec = pv.setdefault("spec", {})
    spec["claimRef"] = claim_ref(claim)
    spec["storageClassName"] = claim_class(claim)
    spec.setdefault("persistentVolumeReclaimPolicy", "Delete")
    if add_finalizer and spec["persistentVolumeReclaimPolicy"] == "Delete":
        fins = m.setdefault("finalizers", [])
        if PV_FINALIZER not in fins:
            fins.append(PV_FINALIZER)
    pv.pop("status", None)
    return pv


OTHER_LABEL = "(other)"
"""The metric label value standing for every class or data-source kind this provisioner does not serve (no class
or data source can be named so): label values a tenant makes up must not each become a time series."""


def provision_labels(claim: Object, *, storage_class: Object | None, names: Collection[str],
                     supported_source: bool = False) -> tuple[str, str]:
    """Metric labels ``(class, source)`` of a claim, as the Go library computes them (its class,
    ``spec.dataSource.kind``) but bounded: the class only if ``storage_class`` (the claim's, from the informer)
    exists and names one of ``names``; the kind only if empty, a clone or snapshot source, or one the provisioner
    supports (``supported_source``); else :data:`OTHER_LABEL`. A claim may name any class and any kind (and ask
    for us by annotation), so without this 200 made-up names make 200 series of ``provision_failed_total``."""
    spec = claim.get("spec") or {}
    cls = claim_class(claim)
    if storage_class is None or storage_class.get("provisioner") not in names or \
            (storage_class.get("metadata") or {}).get("name") != cls:
        cls = OTHER_LABEL
    data_source = spec.get("dataSource")
    source = DataSource.parse(data_source)
    if source is None:
        kind = "" if not data_source else OTHER_LABEL
    elif source.is_claim or source.is_snapshot or supported_source:
        kind = source.kind
    else:
        kind = OTHER_LABEL
    return cls, kind


def lease_name(provisioner: str) -> str:
    """The Lease name for leader election: the provisioner name with ``/`` replaced by ``-``."""
    return provisioner.replace("/", "-")

