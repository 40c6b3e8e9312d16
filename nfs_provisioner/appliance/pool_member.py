"""The appliance as a pool member (``--pool``): what it publishes and what a claim needs of a member.

The mechanism (membership Leases, placement, the conditional assignment on the claim) is the controller's
(``nfs_provisioner.controller.pool``); this module says what an appliance offers: the free space of its export
root, the filesystem types it can make volumes of (``filesystem:ext4``, ``filesystem:xfs``), ``quota`` when
it enforces sizes with XFS project quotas, and its NFS server address. A claim needs its requested size, the
filesystem type of an ``isolation: filesystem`` class, and for a clone the member that serves the source volume
(a copy is made on its source's member, never across members).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from urllib.parse import quote

from prometheus_client import CollectorRegistry

from nfs_provisioner import settings as settings_mod
from nfs_provisioner.appliance import clones
from nfs_provisioner.appliance import provisioner as prov
from nfs_provisioner.controller import decisions, leadership
from nfs_provisioner.controller.interface import DataSource
from nfs_provisioner.controller.pool import Demand, Pool, Status
from nfs_provisioner.kube import client as kube
from nfs_provisioner.kube import objects
from nfs_provisioner.kube.errors import KubeError
from nfs_provisioner.kube.objects import Object
from nfs_provisioner.volumes import params, quantity

log = logging.getLogger(__name__)


def status(provisioner: prov.NFSProvisioner, *, server: Callable[[], str], quota: bool) -> Status:
    caps = {f"filesystem:{fs}" for fs, problem in provisioner.probe_filesystems().items() if problem is None}
    if quota:
        caps.add("quota")
    return Status(free_bytes=provisioner.directories.free_bytes(), capabilities=frozenset(caps), address=server())


def demand(claim: Object, storage_class: Object, *, sources: clones.Sources) -> Demand:
    """What ``claim`` needs of a member. A claim the appliance will refuse anyway (bad size, bad parameters)
    still gets a member: that member's provision says why, as without a pool."""
    requested = str((((claim.get("spec") or {}).get("resources") or {}).get("requests") or {}).get("storage") or "0")
    try:
        size = quantity.to_bytes(requested)
    except quantity.InvalidQuantity:
        size = 0
    needs: frozenset[str] = frozenset()
    try:
        p = params.parse(storage_class.get("parameters"), class_mount_options=storage_class.get("mountOptions"))
        if p.fs_type is not None:
            needs = frozenset({f"filesystem:{p.fs_type}"})
    except params.InvalidParameter:
        pass
    spec = claim.get("spec") or {}
    source = DataSource.parse(spec.get("dataSourceRef")) or DataSource.parse(spec.get("dataSource"))
    if source is None or not source.is_claim:
        return Demand(requested=size, needs=needs)
    ns = str(decisions.meta(claim).get("namespace") or "")
    src = sources.claim(source.namespace or ns, source.name)
    pv_name = str(((src or {}).get("spec") or {}).get("volumeName") or "")
    pv = sources.volume(pv_name) if pv_name else None
    owner = decisions.annotations_of(pv).get(objects.ANN_IDENTITY) if pv is not None else None
    if owner is None:  # not bound (yet), or not ours: the member it lands on refuses it with the reason
        return Demand(requested=size, needs=needs)
    return Demand(requested=size, needs=needs, home=owner,
                  home_why=f"the clone source {source.namespace or ns}/{source.name} (volume {pv_name})")


def lease_owner(api: kube.Client, *, environ: Mapping[str, str], namespace: str) -> Object | None:
    """An ownerReference to this member's Service (``SERVICE_NAME``, the chart's Service per pod) when it is in
    the Lease's ``namespace`` (an owner elsewhere would make the garbage collector delete the Lease at once);
    None otherwise, or when the Service cannot be read (the Lease then has no owner, as before)."""
    service, pod_namespace = environ.get("SERVICE_NAME"), environ.get("POD_NAMESPACE")
    if not service or environ.get("NODE_NAME") or pod_namespace != namespace:
        return None
    try:
        svc = api.get(f"/api/v1/namespaces/{quote(namespace, safe='')}/services/{quote(service, safe='')}")
    except KubeError as e:
        log.warning("pool: cannot read Service %s/%s to own this member's Lease: %s", namespace, service, e)
        return None
    uid = (svc.get("metadata") or {}).get("uid")
    return {"apiVersion": "v1", "kind": "Service", "name": service, "uid": uid} if uid else None


def build(s: settings_mod.Settings, *, api: kube.Client, identity: str, provisioner: prov.NFSProvisioner,
          server: Callable[[], str], registry: CollectorRegistry,
          environ: Mapping[str, str] | None = None) -> Pool | None:
    """The pool membership the settings ask for (None: no ``--pool``). In a cluster (``environ``: the
    downward-API environment) the member's Lease is owned by its Service, see :func:`lease_owner`."""
    if not s.pool:
        return None
    le = s.leader_election
    namespace = le.namespace or leadership.default_namespace()
    owner = None if s.out_of_cluster or environ is None else lease_owner(api, environ=environ, namespace=namespace)
    sources = clones.KubeSources(api)
    pool = Pool(api, pool=s.pool, provisioner=s.provisioner, identity=identity, namespace=namespace,
                status=lambda: status(provisioner, server=server, quota=s.enable_xfs_quota),
                demand=lambda claim, cls: demand(claim, cls, sources=sources),
                heartbeat=le.retry_period, member_timeout=le.lease_duration, owner=owner, registry=registry)
    log.info("pool %s: member %s (server %s), heartbeat every %.0fs, a member is down after %.0fs without one",
             s.pool, identity, server(), le.retry_period, le.lease_duration)
    return pool

