"""Per-volume quota gauges computed at scrape time (a prometheus_client collector).

Metrics (label ``volume`` = the directory relative to the export root, i.e. the
PV name; ``project_id`` = the XFS project):

- ``nfs_provisioner_volume_quota_used_bytes``  bytes the volume uses
- ``nfs_provisioner_volume_quota_limit_bytes`` hard limit the kernel enforces (0 = none)
- ``nfs_provisioner_volume_quota_up``          1 if the last scrape could read usage, else 0
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from nfs_provisioner.quota import errors, manager

log = logging.getLogger(__name__)

USED = "nfs_provisioner_volume_quota_used_bytes"
LIMIT = "nfs_provisioner_volume_quota_limit_bytes"
UP = "nfs_provisioner_volume_quota_up"
LABELS = ["volume", "project_id"]


def _families() -> tuple[GaugeMetricFamily, GaugeMetricFamily, GaugeMetricFamily]:
    return (
        GaugeMetricFamily(USED, "Bytes used by the volume's XFS project.", labels=LABELS),
        GaugeMetricFamily(LIMIT, "Hard block limit of the volume's XFS project in bytes (0 = none).", labels=LABELS),
        GaugeMetricFamily(UP, "1 if the last scrape could read XFS project quota usage, else 0."),
    )


class ProjectQuotaCollector(Collector):
    """Reads ``quotas.usage()`` on every scrape. Pass ``registry`` to register
    it there, or register it yourself."""

    def __init__(self, quotas: manager.ProjectQuotas, *, registry: CollectorRegistry | None = None) -> None:
        self.quotas = quotas
        if registry is not None:
            registry.register(self)

    def describe(self) -> Iterator[Metric]:
        yield from _families()

    def collect(self) -> Iterator[Metric]:
        used, limit, up = _families()
        try:
            usages = self.quotas.usage()
        except errors.QuotaError as e:
            log.error("cannot read XFS project quota usage: %s", e)
            up.add_metric([], 0)
            yield up
            return
        inside = str(self.quotas.export_root).rstrip("/") + "/"
        for u in usages:  # string operations: one per volume and scrape (10,000 volumes: 20,000 samples)
            directory = str(u.directory)
            volume = directory[len(inside):] if directory.startswith(inside) else directory
            labels = [volume, str(u.project_id)]
            used.add_metric(labels, u.used_bytes)
            limit.add_metric(labels, u.limit_bytes)
        up.add_metric([], 1)
        yield used
        yield limit
        yield up
