"""What a provisioner implements, and what the controller hands it.

Objects are plain ``dict`` values exactly as the API server serialises them
(``claim["spec"]["resources"]["requests"]["storage"]``), so nothing is
converted on the hot path; :class:`ProvisionOptions` adds typed accessors for
the fields every provisioner needs.
"""

from __future__ import annotations

import abc
import enum
from dataclasses import dataclass, field
from typing import Any

from nfs_provisioner.errors import NFSProvisionerError, Permanent
from nfs_provisioner.kube.objects import Object as Object

"""A Kubernetes object as a ``dict`` (``apiVersion``, ``kind``, ``metadata``, ``spec``, ...)."""


class ProvisioningState(enum.Enum):
    """Where an operation stands after :meth:`Provisioner.provision` raised :class:`ProvisioningError`.

    The names and meanings are those of the Go library's ``ProvisioningState``."""

    FINISHED = "Finished"
    """Nothing is in progress and nothing was left behind: the error is final for this attempt
    (the controller retries with backoff until the failure threshold)."""
    IN_BACKGROUND = "InBackground"
    """The operation is still running (or may have left a partial asset): the controller must call
    ``provision`` again, even if the claim is deleted meanwhile, so it can finish or clean up."""
    NO_CHANGE = "NoChange"
    """The attempt changed nothing; whatever state the previous attempt left still holds."""
    RESCHEDULE = "Reschedule"
    """Give up on the selected node: the controller removes ``volume.kubernetes.io/selected-node``
    so the scheduler picks again (only meaningful for WaitForFirstConsumer claims)."""


class IgnoredError(Exception):
    """"Not mine": raised by ``provision`` or ``delete`` when another instance owns the claim/volume.

    The controller emits no event and does not retry (several instances may share one class)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Notice:
    """What a user must learn about an operation that succeeded, returned by :meth:`Provisioner.delete`: the
    controller posts it as a ``Warning`` event on the volume (e.g. data kept although its annotation said
    otherwise)."""

    reason: str
    """The event's reason, CamelCase (``OnDeletePolicy``)."""
    message: str
    """The event's message: what happened and why, in one sentence."""


CORE_GROUP = ""
"""The API group of core kinds (``PersistentVolumeClaim``), as ``apiGroup`` leaves it unset."""
SNAPSHOT_GROUP = "snapshot.storage.k8s.io"
PVC_KIND = "PersistentVolumeClaim"
SNAPSHOT_KIND = "VolumeSnapshot"


@dataclass(frozen=True)
class DataSource:
    """A claim's ``spec.dataSource`` or ``spec.dataSourceRef`` in typed form."""

    kind: str
    name: str
    api_group: str = CORE_GROUP
    """``""`` for core kinds (``PersistentVolumeClaim``)."""
    namespace: str | None = None
    """Only ``dataSourceRef`` may name one (cross-namespace sources); ``None``: the claim's namespace."""

    @classmethod
    def parse(cls, value: object) -> DataSource | None:
        if not isinstance(value, dict) or not value.get("kind"):
            return None
        ns = value.get("namespace")
        return cls(kind=str(value["kind"]), name=str(value.get("name") or ""),
                   api_group=str(value.get("apiGroup") or CORE_GROUP), namespace=None if not ns else str(ns))

    @property
    def is_claim(self) -> bool:
        """A clone source: a PersistentVolumeClaim (core group)."""
        return self.kind == PVC_KIND and self.api_group == CORE_GROUP

    @property
    def is_snapshot(self) -> bool:
        return self.kind == SNAPSHOT_KIND and self.api_group == SNAPSHOT_GROUP

    def describe(self) -> str:
        group = f"{self.api_group}/" if self.api_group else ""
        where = f"{self.namespace}/" if self.namespace else ""
        return f"{group}{self.kind} {where}{self.name}"


class ProvisioningError(Exception):
    """A failed provision with an explicit :class:`ProvisioningState`.

    Any other exception raised by ``provision`` counts as ``ProvisioningState.FINISHED``.
    The message becomes the ``ProvisioningFailed`` event: write it for the user."""

    def __init__(self, message: str, state: ProvisioningState = ProvisioningState.FINISHED) -> None:
        super().__init__(message)
        self.state = state


class DeleteError(NFSProvisionerError, RuntimeError):
    """``delete`` could not finish; the controller retries it with backoff. The message becomes the
    ``VolumeFailedDelete`` event: write it for the user. (Any other exception is handled the same way.)"""


class DeleteRefused(DeleteError, Permanent):
    """``delete`` refuses to touch the volume (e.g. not provably made by this provisioner for this PV); nothing was
    touched, and a retry refuses again until the PV or the volume changes."""


class InProgress(ProvisioningError):
    """The provision runs in the background and is not finished (e.g. a long copy): not a failure.

    The controller calls ``provision`` again after ``retry_after`` seconds (no backoff, no failure count),
    also after the claim is deleted (as for ``IN_BACKGROUND``), and posts ``message`` as a ``Normal``
    ``Provisioning`` event only when ``report`` is true (the provisioner decides how often progress is
    worth telling the user)."""

    def __init__(self, message: str, *, retry_after: float = 2.0, report: bool = False) -> None:
        super().__init__(message, ProvisioningState.IN_BACKGROUND)
        self.retry_after = retry_after
        self.report = report


@dataclass(frozen=True)
class ProvisionOptions:
    """Everything ``provision`` needs to build one PersistentVolume."""

    storage_class: Object
    """The claim's StorageClass (``parameters``, ``reclaimPolicy``, ``mountOptions``, ...)."""
    pv_name: str
    """The name the PV must get: ``pvc-<claim uid>`` unless the controller's ``volume_name`` hook says otherwise.
    It is deterministic, so a repeated call for the same claim must reuse the same asset."""
    claim: Object
    """The PersistentVolumeClaim. It may carry a ``deletionTimestamp`` when the controller calls
    ``provision`` again only to finish or roll back an operation started before the claim was deleted."""
    selected_node: Object | None = None
    """The Node named by ``volume.kubernetes.io/selected-node`` (WaitForFirstConsumer), else ``None``."""
    rolling_back: bool = False
    """True when the controller calls ``provision`` only to finish or undo an attempt whose claim is deleted
    or no longer wants a volume (the PV is then deleted at once): long work may be cancelled instead; raise
    a ``FINISHED`` :class:`ProvisioningError` once nothing is left behind."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Free for controller hooks; the controller itself leaves it empty."""

    @property
    def parameters(self) -> dict[str, str]:
        """The StorageClass ``parameters`` (empty when none)."""
        return dict(self.storage_class.get("parameters") or {})

    @property
    def reclaim_policy(self) -> str:
        """The class's ``reclaimPolicy`` (``Delete`` when unset, as Kubernetes defaults it)."""
        return str(self.storage_class.get("reclaimPolicy") or "Delete")

    @property
    def mount_options(self) -> list[str]:
        return list(self.storage_class.get("mountOptions") or [])

    @property
    def access_modes(self) -> list[str]:
        return list(self.claim.get("spec", {}).get("accessModes") or [])

    @property
    def requested_storage(self) -> str | None:
        """``spec.resources.requests.storage`` of the claim as a quantity string (e.g. ``"1Mi"``)."""
        req = ((self.claim.get("spec") or {}).get("resources") or {}).get("requests") or {}
        value = req.get("storage")
        return None if value is None else str(value)

    @property
    def volume_mode(self) -> str:
        return str((self.claim.get("spec") or {}).get("volumeMode") or "Filesystem")

    @property
    def data_source(self) -> DataSource | None:
        """``spec.dataSource`` (``None``: none)."""
        return DataSource.parse((self.claim.get("spec") or {}).get("dataSource"))

    @property
    def data_source_ref(self) -> DataSource | None:
        """``spec.dataSourceRef`` (``None``: none); may name a namespace."""
        return DataSource.parse((self.claim.get("spec") or {}).get("dataSourceRef"))

    @property
    def source(self) -> DataSource | None:
        """What the volume must be populated from: ``dataSourceRef`` when set, else ``dataSource``
        (the API server keeps the two equal when both are set without a namespace)."""
        return self.data_source_ref or self.data_source

    @property
    def selected_node_name(self) -> str | None:
        return None if self.selected_node is None else str(self.selected_node["metadata"]["name"])


class Provisioner(abc.ABC):
    """Implement this to get a dynamic provisioner; hand it to :class:`ProvisionController`.

    Both methods run in worker threads, several at a time, and may be called
    again for the same claim/volume (after a crash, a retry, or a background
    operation): they must be idempotent. They may block on I/O.
    """

    @abc.abstractmethod
    def provision(self, options: ProvisionOptions) -> Object:
        """Create the storage asset for ``options.claim`` and return the PV describing it.

        Return a PV ``dict`` (``metadata.name`` must be ``options.pv_name``; set ``spec.capacity``,
        ``spec.accessModes``, ``spec.persistentVolumeReclaimPolicy``, the volume source and any
        annotations ``delete`` will need). Do not create the PV object: the controller sets
        ``spec.claimRef``, ``spec.storageClassName``, ``pv.kubernetes.io/provisioned-by`` (and its
        finalizer when enabled), then creates it and keeps retrying until it is saved.
        Raise :class:`IgnoredError` for "not mine", :class:`ProvisioningError` to choose a state,
        any other exception for a final failure of this attempt."""

    @abc.abstractmethod
    def delete(self, volume: Object) -> Notice | None:
        """Remove the storage asset behind ``volume`` (the PV object is deleted by the controller).

        Must succeed when the asset is already gone. Raise :class:`IgnoredError` when it belongs to
        another instance. Return a :class:`Notice` to have a ``Warning`` event posted on the volume
        (None: nothing to report beyond the deletion)."""

    # ---- optional hooks (the Go library's Qualifier, DeletionGuard, BlockProvisioner)

    def should_provision(self, claim: Object) -> bool:
        """Cheap pre-filter run before anything else; ``False`` skips the claim silently."""
        return True

    def should_delete(self, volume: Object) -> bool:
        """Deletion guard; ``False`` leaves the volume alone: a Released one (and its asset) is not deleted, and the
        controller adds or removes no finalizer on it. Asked at every sync of the PV: keep it cheap."""
        return True

    def owns(self, volume: Object) -> bool | None:
        """Whether ``volume`` was made by this instance (``None``: cannot tell, the default).

        Instances that share a class (a pool) may both provision one claim; the one whose PV save
        finds the PV already there asks this. ``False`` makes the controller delete this instance's
        now unused asset (the PV it built, not the saved one); ``True``/``None`` count the saved PV
        as its own (e.g. saved before a crash)."""
        return None

    def supports_data_source(self, kind: str, api_group: str) -> bool:
        """Whether claims populated from a data source of this kind (``dataSource``/``dataSourceRef``) can be
        served, e.g. ``("PersistentVolumeClaim", "")`` for clones. Default: none. Unsupported claims are never
        handed to ``provision`` (which would make an empty volume): a PersistentVolumeClaim or VolumeSnapshot
        source gets one ``ProvisioningFailed`` event, any other kind (a volume populator's resource) one
        ``Normal`` event saying the populator provisions it; neither is retried until the claim changes."""
        return False

    def supports_block(self) -> bool:
        """Whether ``volumeMode: Block`` claims can be served; when ``False`` they get one
        ``ProvisioningFailed`` event and no retry."""
        return False
