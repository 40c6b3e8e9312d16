"""Per-volume usage of filesystem volumes, computed at scrape time (a prometheus_client collector).

Metrics (label ``volume`` = the PV name), named like the quota gauges (``nfs_provisioner.quota.metrics``):

- ``nfs_provisioner_volume_filesystem_size_bytes``  what the volume's filesystem offers (``df``'s size)
- ``nfs_provisioner_volume_filesystem_used_bytes``  bytes in use
- ``nfs_provisioner_volume_filesystem_free_bytes``  bytes a writer can still use

One ``statvfs`` per mounted volume and scrape (exact, and cheap: the kernel keeps the counters); a volume that
is not mounted (being grown offline, deleted) has no samples.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from nfs_provisioner.volumes.filesystems import FilesystemVolumes

log = logging.getLogger(__name__)

SIZE = "nfs_provisioner_volume_filesystem_size_bytes"
USED = "nfs_provisioner_volume_filesystem_used_bytes"
FREE = "nfs_provisioner_volume_filesystem_free_bytes"


def _families() -> tuple[GaugeMetricFamily, GaugeMetricFamily, GaugeMetricFamily]:
    return (GaugeMetricFamily(SIZE, "Size of the filesystem volume's filesystem in bytes.", labels=["volume"]),
            GaugeMetricFamily(USED, "Bytes used in the filesystem volume.", labels=["volume"]),
            GaugeMetricFamily(FREE, "Bytes still free for writers in the filesystem volume.", labels=["volume"]))


class FilesystemUsageCollector(Collector):
    def __init__(self, filesystems: FilesystemVolumes, *, registry: CollectorRegistry | None = None) -> None:
        self.filesystems = filesystems
        if registry is not None:
            registry.register(self)

    def describe(self) -> Iterator[Metric]:
        yield from _families()

    def collect(self) -> Iterator[Metric]:
        size, used, free = _families()
        top = self.filesystems.mounts
        try:
            tree = os.stat(top).st_dev
            names = sorted(os.listdir(top))
        except FileNotFoundError:
            names = []
        for name in names:
            try:
                path = top / name
                if os.lstat(path).st_dev == tree:
                    continue  # not mounted now
                st = os.statvfs(path)
            except OSError as e:  # removed meanwhile
                log.debug("volume %s: no usage: %s", name, e)
                continue
            size.add_metric([name], st.f_blocks * st.f_frsize)
            used.add_metric([name], (st.f_blocks - st.f_bfree) * st.f_frsize)
            free.add_metric([name], st.f_bavail * st.f_frsize)
        yield from (size, used, free)
