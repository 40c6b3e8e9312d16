"""The NFS server address written into every PV.

In order, as the original appliance did:

1. ``NODE_NAME`` (a DaemonSet serving on host ports: clients mount the node);
2. the ClusterIP of the Service ``SERVICE_NAME`` in ``POD_NAMESPACE`` -- only
   after checking that the Service exposes the NFS port and that one of its
   EndpointSlices points at this pod (``POD_IP``), so PVs never name a
   Service that does not lead here;
3. ``POD_IP``.

Out of cluster: ``--server-hostname``, else the first non-loopback IPv4
address of this host (127.0.0.1 when there is none).
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol
from urllib.parse import quote

import psutil

from nfs_provisioner.errors import NFSProvisionerError

log = logging.getLogger(__name__)


ENDPOINT_WAIT = 30.0
"""Seconds to wait for this pod's address in the Service's EndpointSlices. The EndpointSlice controller adds a
pod a moment after the pod has its address, and a pod recreated by its StatefulSet or Deployment can start
within that moment: a start in that window must wait for it, not exit (tests/node/test_filesystem_incluster.py
saw such a first container exit 1, 0.1 s after its start)."""
ENDPOINT_POLL = 0.5


class AddressError(NFSProvisionerError, RuntimeError):
    """No usable server address; the message says which setting to fix."""


class Api(Protocol):
    def get(self, path: str, **query: Any) -> dict[str, Any]: ...


def host_address() -> str:
    for _name, addrs in sorted(psutil.net_if_addrs().items()):
        for a in addrs:
            if a.family == socket.AF_INET and not ipaddress.ip_address(a.address).is_loopback:
                return str(a.address)
    return "127.0.0.1"


def service_address(api: Api, *, namespace: str, service: str, pod_ip: str, nfs_port: int,
                    pause: Callable[[float], None] | None = None, patience: float = ENDPOINT_WAIT) -> str:
    """The Service's cluster IP, once one of its EndpointSlices lists ``pod_ip``. ``pause(seconds)`` waits between
    looks for up to ``patience`` seconds (it raises to end the wait, e.g. on a stop signal); without it, one look."""
    base = f"/api/v1/namespaces/{quote(namespace, safe='')}/services/{quote(service, safe='')}"
    try:
        svc = api.get(base)
    except Exception as e:
        raise AddressError(f"cannot read Service {namespace}/{service} (SERVICE_NAME): {e}") from e
    spec = svc.get("spec") or {}
    cluster_ip = spec.get("clusterIP")
    if not cluster_ip or cluster_ip == "None":
        raise AddressError(f"Service {namespace}/{service} has no cluster IP (headless?); clients need a stable "
                           "address, use a non-headless Service")
    # PVs carry no port: clients connect to 2049 on the Service, which must forward to our NFS port.
    nfs = [p for p in spec.get("ports") or [] if p.get("port") == 2049 and p.get("protocol", "TCP") == "TCP"]
    if not nfs:
        raise AddressError(f"Service {namespace}/{service} does not expose the NFS port 2049/TCP")
    target = nfs[0].get("targetPort", 2049)
    if target not in (nfs_port, "nfs"):
        log.warning("Service %s/%s forwards 2049/TCP to %s, but NFS listens on %d here", namespace, service, target,
                    nfs_port)
    deadline, waiting = time.monotonic() + patience, False
    while not _lists(api, namespace=namespace, service=service, pod_ip=pod_ip):
        if pause is None or time.monotonic() >= deadline:
            waited = f" after {patience:.0f}s" if pause is not None else ""
            raise AddressError(f"Service {namespace}/{service} has no endpoint for this pod ({pod_ip}){waited}; check "
                               "its selector matches the pod's labels")
        if not waiting:
            waiting = True
            log.info("Service %s/%s lists no endpoint for this pod (%s) yet; waiting up to %.0fs for it", namespace,
                     service, pod_ip, patience)
        pause(ENDPOINT_POLL)
    return str(cluster_ip)


def _lists(api: Api, *, namespace: str, service: str, pod_ip: str) -> bool:
    """Whether an EndpointSlice of ``service`` lists ``pod_ip`` (ready or not: the Services publish pods before
    they are Ready)."""
    slices = api.get(f"/apis/discovery.k8s.io/v1/namespaces/{quote(namespace, safe='')}/endpointslices",
                     labelSelector=f"kubernetes.io/service-name={service}")
    return any(pod_ip in (ep.get("addresses") or []) for sl in slices.get("items") or []
               for ep in sl.get("endpoints") or [])


def resolve(*, environ: Mapping[str, str], api: Api | None, out_of_cluster: bool, server_hostname: str | None,
            nfs_port: int = 2049, pause: Callable[[float], None] | None = None) -> str:
    if out_of_cluster:
        return server_hostname or host_address()
    node = environ.get("NODE_NAME")
    if node:
        return node
    service, namespace, pod_ip = environ.get("SERVICE_NAME"), environ.get("POD_NAMESPACE"), environ.get("POD_IP")
    if service:
        if not namespace or not pod_ip or api is None:
            raise AddressError("SERVICE_NAME is set but POD_NAMESPACE or POD_IP is not (set both from the downward "
                               "API)")
        return service_address(api, namespace=namespace, service=service, pod_ip=pod_ip, nfs_port=nfs_port,
                               pause=pause)
    if pod_ip:
        return pod_ip
    raise AddressError("no server address: set NODE_NAME (DaemonSet), SERVICE_NAME + POD_NAMESPACE + POD_IP, or "
                       "POD_IP from the downward API")
