"""A reusable provision controller for out-of-tree dynamic provisioners.

Implement :class:`Provisioner` (``provision`` builds a PV ``dict`` for a claim
and creates its storage asset, ``delete`` removes the asset) and run it with
:class:`ProvisionController`. The controller watches claims, volumes and
classes, decides what to provision and delete exactly as the Go
sig-storage-lib-external-provisioner does, creates and deletes the PV objects,
emits the standard events and metrics, and optionally elects a leader.
Beyond the Go library it never leaks an asset across crashes: each provision
is recorded before it starts, by a finalizer on the claim or in a local
journal (see ``inflight``), and the PV finalizer records each delete (see
``deleting``).

Layering (imports only go downwards)::

    controller      ProvisionController: lifecycle, workers, wiring
    provisioning, deleting, leadership        one operation each
    inflight, watching, queueing, events, metrics  mechanisms
    decisions, failures                       the rules (on the data below: a claim's data source, a failure)
    interface, settings, outcomes             pure data
    ..kube                                    the only package that talks to Kubernetes
"""

from nfs_provisioner.controller.controller import ProvisionController
from nfs_provisioner.controller.interface import (
    DataSource,
    DeleteError,
    DeleteRefused,
    IgnoredError,
    InProgress,
    Notice,
    Object,
    Provisioner,
    ProvisioningError,
    ProvisioningState,
    ProvisionOptions,
)
from nfs_provisioner.controller.settings import (
    ControllerSettings,
    LeaderElectionSettings,
    RetrySettings,
    ServingSettings,
)
from nfs_provisioner.kube.client import Client, ClientSettings

__all__ = [
    "Client",
    "ClientSettings",
    "ControllerSettings",
    "DataSource",
    "DeleteError",
    "DeleteRefused",
    "IgnoredError",
    "InProgress",
    "LeaderElectionSettings",
    "Notice",
    "Object",
    "ProvisionController",
    "ProvisionOptions",
    "Provisioner",
    "ProvisioningError",
    "ProvisioningState",
    "RetrySettings",
    "ServingSettings",
]
