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
from collections.abc import Mapping
from typing import Any, Protocol
from urllib.parse import quote

import psutil

from nfs_provisioner.errors import NFSProvisionerError

log = logging.getLogger(__name__)


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


def service_address(api: Api, *, namespace: str, service: str, pod_ip: str, nfs_port: int) -> str:
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
    slices = api.get(f"/apis/discovery.k8s.io/v1/namespaces/{quote(namespace, safe='')}/endpointslices",
                     labelSelector=f"kubernetes.io/service-name={service}")
    for sl in slices.get("items") or []:
        for ep in sl.get("endpoints") or []:
            if pod_ip in (ep.get("addresses") or []):
                return str(cluster_ip)
    raise AddressError(f"Service {namespace}/{service} has no endpoint for this pod ({pod_ip}); check its selector "
                       "matches the pod's labels")


def resolve(*, environ: Mapping[str, str], api: Api | None, out_of_cluster: bool, server_hostname: str | None,
            nfs_port: int = 2049) -> str:
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
        return service_address(api, namespace=namespace, service=service, pod_ip=pod_ip, nfs_port=nfs_port)
    if pod_ip:
        return pod_ip
    raise AddressError("no server address: set NODE_NAME (DaemonSet), SERVICE_NAME + POD_NAMESPACE + POD_IP, or "
                       "POD_IP from the downward API")
