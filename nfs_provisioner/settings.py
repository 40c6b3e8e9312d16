"""The appliance's settings: one frozen dataclass tree, every field documented.

Settings are plain data. ``nfs_provisioner.cli`` fills them from flags and
environment variables and calls :func:`validate`, which turns an invalid
combination into a :class:`SettingsError` with a one-line reason.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
import urllib.parse
from dataclasses import dataclass, field, replace
from pathlib import Path

from nfs_provisioner.errors import Permanent
from nfs_provisioner.ganesha import config as ganesha_config

# k8s.io/apimachinery/pkg/util/validation: IsQualifiedName's name part and IsDNS1123Subdomain (Go's ``^...$``
# match the whole string: fullmatch, never ``$``, which also matches before a trailing newline).
_QUALIFIED_NAME = re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]")
_DNS1123_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")


class SettingsError(Permanent, ValueError):
    """An invalid flag value or combination; the message is one line for the user."""


@dataclass(frozen=True)
class LeaderElection:
    """Leader election on a coordination.k8s.io/v1 Lease (opt-in)."""

    enabled: bool = False
    """Run only while holding the Lease named after the provisioner ('/' -> '-')."""
    lease_duration: float = 15.0
    """Seconds a non-leader waits after the last renewal before taking over."""
    renew_deadline: float = 10.0
    """Seconds the leader keeps trying to renew before it gives up leading."""
    retry_period: float = 2.0
    """Seconds between attempts to acquire or renew."""
    namespace: str | None = None
    """Namespace of the Lease; default POD_NAMESPACE, the service-account namespace, else 'default'."""


@dataclass(frozen=True)
class Settings:
    """Everything the appliance is told on its command line or in its environment."""

    provisioner: str = "example.com/nfs"
    """The provisioner name StorageClasses refer to: lowercased, a Kubernetes qualified name (``nfs``,
    ``vendor.io/nfs``), as the Go provisioner checks it."""
    kubeconfig: Path | None = None
    """Kubeconfig for running out of cluster; in-cluster config when neither it nor master is set."""
    master: str | None = None
    """API server URL; overrides the kubeconfig's server."""
    run_server: bool = True
    """Start and supervise NFS-Ganesha in this process (false: an NFS server is already running)."""
    use_ganesha: bool = True
    """Export through Ganesha (true) or through the kernel server's exportfs and /etc/exports (false)."""
    grace_period: int = 90
    """NFSv4 grace period in seconds (0-180) after a server restart, for clients to reclaim state."""
    enable_xfs_quota: bool = False
    """Give every volume an XFS project quota of its requested size (export root on XFS with prjquota)."""
    server_hostname: str | None = None
    """Address put into PVs when running out of cluster (default: this host's address)."""
    export_subnet: str | None = None
    """Clients allowed to mount: ``nodes`` (the cluster's Node addresses, kept current from a watch), ``*``, or
    a comma-separated list of addresses/CIDRs, which may include ``nodes``. None (not given): ``nodes`` in a
    cluster, ``nodes`` plus loopback out of cluster (see :func:`client_policy`)."""
    max_exports: int = -1
    """Maximum number of volumes exported at once (the pseudo root does not count); -1 = no limit."""
    device_based_fsids: bool = True
    """Derive NFS file-system ids from the device (Ganesha fsid_device); false: per-export ids only."""
    export_root: Path = Path("/export")
    """Directory holding one sub-directory per volume, Ganesha's config and the identity file."""
    nfs_bind_address: str | None = None
    """Address Ganesha listens on (default: all); tests and the demo use 127.0.0.1."""
    nfs_port: int = 2049
    """NFS port Ganesha listens on."""
    nfsv3: bool = True
    """Serve NFSv3 as well as v4 (starts rpcbind on port 111 and rpc.statd on 662; needs its own network
    namespace, i.e. a pod). Turn off to serve NFSv4 only, e.g. out of cluster on a shared host."""
    nfsv3_locking: bool = True
    """With NFSv3: serve its lock protocol NLM (and rpc.statd). NLM keeps every restart's grace period at its
    full length (Ganesha cannot tell when NLM clients are done); false serves NFSv3 without locks (clients
    mount with ``nolock``; their locks are only local to each client) and lets grace end once every NFSv4.1+
    client has reclaimed. No effect without ``nfsv3``."""
    metrics_address: str = ":9090"
    """host:port of the HTTP endpoint serving /metrics, /healthz and /readyz; empty disables it."""
    kube_api_qps: float = 1000.0
    """Client-side sustained request rate to the API server (the Go default of 5 is the bottleneck there)."""
    kube_api_burst: int = 2000
    """Client-side burst of requests to the API server."""
    threadiness: int = 16
    """Number of claim and volume workers."""
    ganesha_templates: Path | None = None
    """Directory of operator templates overriding the shipped Ganesha templates."""
    leader_election: LeaderElection = field(default_factory=LeaderElection)
    pool: str | None = None
    """Name of the pool this appliance is a member of: instances with the same provisioner and pool share the
    class, each claim provisioned by exactly one (docs/scaling.md). None: no pool."""
    log_level: str = "INFO"
    """DEBUG, INFO, WARNING or ERROR."""
    log_json: bool = False
    """One JSON object per log line."""

    @property
    def out_of_cluster(self) -> bool:
        return self.kubeconfig is not None or self.master is not None


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def is_qualified_name(value: str) -> bool:
    """Kubernetes ``validation.IsQualifiedName``: ``[prefix/]name``, the prefix a DNS-1123 subdomain of at most
    253 characters, the name at most 63 characters of ``[-A-Za-z0-9_.]`` starting and ending alphanumeric."""
    parts = value.split("/")
    if len(parts) > 2:
        return False
    name = parts[-1]
    if len(parts) == 2 and not is_dns1123_subdomain(parts[0]):
        return False
    return len(name.encode()) <= 63 and bool(_QUALIFIED_NAME.fullmatch(name))


def is_dns1123_subdomain(value: str) -> bool:
    """Kubernetes ``validation.IsDNS1123Subdomain`` (e.g. an object name)."""
    return len(value.encode()) <= 253 and bool(_DNS1123_SUBDOMAIN.fullmatch(value))


NODES = "nodes"
"""The ``--export-subnet`` entry standing for every Node's addresses and pod-CIDR gateways (``appliance.nodes``)."""
NODE_IPS = "node-ips"
"""The same without the pod-CIDR gateways (overlays whose IPAM ignores ``spec.podCIDRs``, e.g. Calico)."""
LOOPBACK = ("127.0.0.0/8", "::1/128")
"""Added to the node addresses by default out of cluster, where the clients are local (``make demo``)."""


@dataclass(frozen=True)
class ClientPolicy:
    """Who may mount: the Nodes' addresses (from a watch) and/or a fixed list."""

    nodes: bool
    """Follow the Nodes' InternalIP/ExternalIP addresses, as they change."""
    fixed: tuple[str, ...]
    """``('*',)`` or normalised CIDRs, always allowed."""
    pod_gateways: bool = True
    """With ``nodes``: also the first two addresses of each Node's pod CIDRs (``.0``, ``.1``)."""

    def describe(self) -> str:
        nodes = "the cluster's nodes" if self.pod_gateways else "the cluster's node addresses (no pod-CIDR gateways)"
        parts = ([nodes] if self.nodes else []) + list(self.fixed)
        return ", ".join(parts)


def parse_subnets(value: str) -> list[str]:
    """'*', or comma-separated IPs/CIDRs and ``nodes``, normalised; raises SettingsError."""
    items = [v.strip() for v in value.split(",") if v.strip()]
    if not items:
        raise SettingsError("--export-subnet is empty; use 'nodes', '*' or addresses/CIDRs")
    if items == ["*"]:
        return items
    out = []
    for item in items:
        if item.lower() in (NODES, NODE_IPS):
            out.append(item.lower())
            continue
        if "%" not in item:
            try:
                ipaddress.ip_network(item, strict=False)
            except ValueError as e:
                raise SettingsError(f"--export-subnet: {item!r} is not 'nodes', 'node-ips', '*', an address or a "
                                    "CIDR") from e
        # What Ganesha cannot take (a zone id, 0.0.0.0, long IPv6 networks) is refused here, at parse time: in an
        # export file it would fail every claim and the next start.
        problem = ganesha_config.client_problem(item)
        if problem is not None:
            raise SettingsError(f"--export-subnet: {item!r}: {problem}")
        out.append(str(ipaddress.ip_network(item, strict=False)))
    return list(dict.fromkeys(out))


def client_policy(s: Settings) -> ClientPolicy:
    """The effective client policy: the flag's, or the default (nodes; out of cluster also loopback)."""
    if s.export_subnet is None:
        return ClientPolicy(nodes=True, fixed=LOOPBACK if s.out_of_cluster else ())
    items = parse_subnets(s.export_subnet)
    return ClientPolicy(nodes=NODES in items or NODE_IPS in items, pod_gateways=NODES in items or NODE_IPS not in items,
                        fixed=tuple(i for i in items if i not in (NODES, NODE_IPS)))


def parse_host_port(value: str, *, flag: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not re.fullmatch(r"[0-9]{1,5}", port) or not 0 < int(port) < 65536:
        raise SettingsError(f"{flag}: {value!r} is not host:port (host may be empty for all addresses)")
    return host.strip("[]"), int(port)


def validate(s: Settings, *, in_cluster: bool) -> None:
    """Raise SettingsError for the first invalid value or combination.

    ``in_cluster``: no kubeconfig/master given and the in-cluster environment
    (KUBERNETES_SERVICE_HOST) is present."""
    if s.master is not None and (problem := master_problem(s.master)):
        raise SettingsError(problem)
    # As the Go provisioner: validation.IsQualifiedName(strings.ToLower(provisioner)).
    if not is_qualified_name(s.provisioner.lower()):
        raise SettingsError(f"--provisioner {s.provisioner!r} is not a qualified name like example.com/nfs or nfs")
    if not 0 <= s.grace_period <= 180:
        raise SettingsError(f"--grace-period {s.grace_period} is out of range 0-180 seconds")
    if s.run_server and not s.use_ganesha:
        raise SettingsError("--run-server needs --use-ganesha: only Ganesha can be run by this process")
    if s.server_hostname and in_cluster:
        raise SettingsError("--server-hostname is for running out of cluster; in a cluster the server address "
                            "comes from NODE_NAME, the Service or POD_IP")
    if not s.out_of_cluster and not in_cluster:
        raise SettingsError("not in a cluster (KUBERNETES_SERVICE_HOST unset) and neither --kubeconfig nor "
                            "--master given")
    if s.max_exports == 0 or s.max_exports < -1:
        raise SettingsError(f"--max-exports {s.max_exports} must be -1 (no limit) or a positive number")
    if not s.export_root.is_absolute():
        raise SettingsError(f"--export-root {s.export_root} must be an absolute path")
    if not 0 < s.nfs_port < 65536:
        raise SettingsError(f"--nfs-port {s.nfs_port} is not a port number")
    if s.nfs_bind_address:
        try:
            ipaddress.ip_address(s.nfs_bind_address)
        except ValueError as e:
            raise SettingsError(f"--nfs-bind-address {s.nfs_bind_address!r} is not an IP address") from e
    if s.export_subnet is not None:
        parse_subnets(s.export_subnet)
    if s.metrics_address:
        parse_host_port(s.metrics_address, flag="--metrics-address")
    if not (math.isfinite(s.kube_api_qps) and s.kube_api_qps > 0) or s.kube_api_burst < 1:
        raise SettingsError("--kube-api-qps must be a finite number > 0 and --kube-api-burst >= 1")
    if s.threadiness < 1:
        raise SettingsError(f"--threadiness {s.threadiness} must be at least 1")
    if s.log_level not in LOG_LEVELS:
        raise SettingsError(f"--log-level {s.log_level!r} is not one of {', '.join(LOG_LEVELS)}")
    le = s.leader_election
    if le.enabled:
        lease = s.provisioner.replace("/", "-")
        if not is_dns1123_subdomain(lease):
            raise SettingsError(f"--leader-elect: the Lease would be named {lease!r} (--provisioner with '/' as "
                                "'-'), not a valid object name; use a lowercase provisioner name")
        if not le.lease_duration > le.renew_deadline > 0:
            raise SettingsError("--leader-elect-lease-duration must be greater than --leader-elect-renew-deadline")
        if not 0 < le.retry_period < le.renew_deadline:
            raise SettingsError("--leader-elect-retry-period must be positive and less than the renew deadline")
    if s.pool is not None:
        check_pool(s)
    if s.ganesha_templates is not None and not s.ganesha_templates.is_dir():
        raise SettingsError(f"--ganesha-templates {s.ganesha_templates} is not a directory")


POOL_NAME_MAX = 40
"""Longest pool name: it is a label value and part of each member's Lease name (with the 36-character identity)."""
_DNS1123_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")


def check_pool(s: Settings) -> None:
    pool = s.pool or ""
    if not (_DNS1123_LABEL.fullmatch(pool) and len(pool) <= POOL_NAME_MAX):
        raise SettingsError(f"--pool {pool!r}: want lowercase letters, digits and '-', at most {POOL_NAME_MAX} "
                            "characters, starting and ending with a letter or digit")
    le = s.leader_election
    if le.enabled:
        raise SettingsError("--pool and --leader-elect exclude each other: a pool member works on its own claims and "
                            "volumes (the Lease mode keeps one active instance of a single appliance)")
    if not le.lease_duration > le.retry_period > 0:
        raise SettingsError("--pool: --leader-elect-lease-duration (after which a silent member is down) must be "
                            "greater than --leader-elect-retry-period (its heartbeat)")


def resolve_export_root(s: Settings) -> tuple[Settings, str | None]:
    """The settings with the export root resolved once, when a symlink is on its path and Ganesha serves it, and
    the line that says so (None: nothing to resolve).

    NFS-Ganesha cannot serve through a symlink: the export root's file handle would be the link's, and
    ``open_by_handle_at`` fails with ELOOP ("Too many levels of symbolic links"). The resolved path is what
    everything uses from then on: volume directories, export paths (Ganesha's ``Path`` and ``Pseudo``) and the
    ``spec.nfs.path`` of new PVs. PVs that name a path through the symlink were never served by Ganesha (it
    refused such a root), and start-up warns about them as lying under another export root. The kernel NFS
    server (``--use-ganesha=false``) serves through symlinks, and its PVs name the path as given: kept."""
    if not s.use_ganesha:
        return s, None
    given = Path(os.path.normpath(s.export_root))
    real = Path(os.path.realpath(given))
    if real == given:
        return s, None
    return replace(s, export_root=real), (
        f"--export-root {s.export_root} goes through a symlink; using {real}, where it leads now (NFS-Ganesha "
        f"cannot serve through a symlink): volumes, exports and new PVs name paths under {real}")


def warnings(s: Settings) -> list[str]:
    """Valid but meaningless settings, one line each, logged at start-up."""
    out = []
    if not s.run_server and s.grace_period != Settings.grace_period:
        # The Go provisioner refuses this; a warning keeps a manifest that sets both working.
        out.append(f"--grace-period {s.grace_period} has no effect with --run-server=false: the grace period is "
                   "the NFS server's, and this process does not run that server")
    return out


def master_problem(url: str) -> str | None:
    """Why ``--master`` is not an API server URL (``http(s)://host[:port][/path]``); None if it is."""
    want = "want an API server URL like https://10.0.0.1:6443"
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError as e:
        return f"--master {url!r} is not a URL ({e}); {want}"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return f"--master {url!r} is not an http(s) URL with a host; {want}"
    if port == 0:
        return f"--master {url!r} has port 0; {want}"
    return None
