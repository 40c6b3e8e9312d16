"""Settings of the provision controller: one frozen dataclass tree, every field documented.

Defaults follow the Go library (sig-storage-lib-external-provisioner) except
where its defaults are a known problem (client QPS/burst, the PV finalizer).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from nfs_provisioner.kube.client import ClientSettings


@dataclass(frozen=True)
class RetrySettings:
    """How failed provisions/deletes are retried."""

    exponential_backoff: bool = True
    """Per-item exponential backoff (``base_delay`` doubling up to ``max_delay``); when off every retry
    waits ``fixed_delay``."""
    base_delay: float = 15.0
    """Seconds before the first retry of an item (Go: 15 s)."""
    max_delay: float = 1000.0
    """Cap of the per-item backoff in seconds (Go: 1000 s)."""
    fixed_delay: float = 15.0
    """Seconds between retries when ``exponential_backoff`` is off (Go: 15 s)."""
    overall_qps: float = 10.0
    """Overall retry rate limit (token bucket shared by all items, Go: 10/s) ..."""
    overall_burst: int = 100
    """... and its burst (Go: 100)."""
    failed_provision_threshold: int = 15
    """Failed ``provision`` calls after which a claim is given up until it changes (0 = retry forever)."""
    failed_delete_threshold: int = 15
    """Failed ``delete`` calls after which a volume is given up until it changes (0 = retry forever)."""
    save_retry_delay: float = 5.0
    """Seconds between attempts to create the PV object of an asset that exists. This never gives up:
    deleting an asset only because its PV could not be saved is the Go library's leak/loss defect."""


@dataclass(frozen=True)
class LeaderElectionSettings:
    """Opt-in leader election on a ``coordination.k8s.io/v1`` Lease."""

    enabled: bool = False
    """Run only while holding the Lease (several replicas: one works, the others wait)."""
    namespace: str | None = None
    """Namespace of the Lease; ``None`` = POD_NAMESPACE, else the service-account namespace file, else default."""
    name: str | None = None
    """Lease name; ``None`` = the provisioner name with ``/`` replaced by ``-``."""
    identity: str | None = None
    """Holder identity; ``None`` = ``<hostname>_<random>``."""
    lease_duration: float = 15.0
    """Seconds a non-leader waits after the last renewal before taking over (Go: 15 s)."""
    renew_deadline: float = 10.0
    """Seconds the leader keeps trying to renew before it steps down (Go: 10 s)."""
    retry_period: float = 2.0
    """Seconds between acquire/renew attempts (Go: 2 s)."""


@dataclass(frozen=True)
class ServingSettings:
    """The HTTP endpoint for Prometheus and health probes."""

    address: str | None = None
    """``host:port`` to serve ``/metrics``, ``/healthz`` and ``/readyz`` on; ``None`` = do not serve."""
    watch_stale_after: float = 600.0
    """Seconds without a successful list/watch after which ``/healthz`` fails."""


@dataclass(frozen=True)
class ControllerSettings:
    """Everything :class:`ProvisionController` can be told."""

    provisioner_name: str
    """The name StorageClasses use in ``provisioner:`` (``<vendor>/<name>``)."""
    additional_provisioner_names: tuple[str, ...] = ()
    """Other names this controller also answers to (renamed provisioners)."""
    instance_name: str = "default"
    """Names this instance's in-flight finalizer on claims (``provisioning.nfs-provisioner.io/<instance_name>``).
    Instances that share a class and answer each other's claims with ``IgnoredError`` need distinct, stable names
    (e.g. the node name); a single instance or a leader-elected group keeps the default."""
    in_flight_journal: Path | None = None
    """Keep the in-flight record of each provision as a file in this directory instead of a finalizer on the
    claim: two API writes fewer per provision. Use it only for a directory that lives exactly as long as the
    assets do and that one instance (or one leader-elected group) uses (the appliance keeps it in its export
    root); ``None`` = the claim finalizer, which needs nothing but the API server."""
    threadiness: int = 16
    """Worker threads per queue (claims and volumes each get this many). Go's default is 4; Python workers
    mostly wait on the API server, and 16 reach the API server's limit on a 2-core machine (4 reach ~40 %)."""
    resync_period: float = 900.0
    """Seconds between re-examinations of every cached claim and volume (Go: 15 min)."""
    watch_timeout: int = 300
    """Seconds a single watch request lasts before it is renewed from the last resourceVersion."""
    add_finalizer: bool = True
    """Put ``external-provisioner.volume.kubernetes.io/finalizer`` on provisioned Delete-policy PVs so the
    asset cannot outlive its PV object. Go's default is off; ours is on because delete crash-safety relies on
    it (when off, the finalizer is still added just before a delete starts and removed when it is done)."""
    shutdown_grace: float = 30.0
    """Seconds ``stop()`` waits for running operations before abandoning them (their in-flight records
    make a later run finish them)."""
    retry: RetrySettings = field(default_factory=RetrySettings)
    client: ClientSettings = field(default_factory=ClientSettings)
    leader_election: LeaderElectionSettings = field(default_factory=LeaderElectionSettings)
    serving: ServingSettings = field(default_factory=ServingSettings)

    def __post_init__(self) -> None:
        if "/" not in self.provisioner_name or self.provisioner_name.startswith("/"):
            raise ValueError(f"provisioner name {self.provisioner_name!r} must be <vendor>/<name>")
        if self.threadiness < 1:
            raise ValueError("threadiness must be >= 1")
