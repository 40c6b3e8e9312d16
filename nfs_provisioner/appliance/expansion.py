"""Expanding a volume of the NFS appliance (:meth:`NFSProvisioner.expand
<nfs_provisioner.appliance.provisioner.NFSProvisioner.expand>`): a directory volume's quota project is raised; a
filesystem volume grows, online where its filesystem can, else unexported for the moment of an offline resize.
"""

from __future__ import annotations

import logging

from nfs_provisioner.appliance.parts import VolumeParts
from nfs_provisioner.controller.interface import Object
from nfs_provisioner.kube.objects import ANN_EXPORT_ID
from nfs_provisioner.volumes import filesystems as fs_mod

log = logging.getLogger(__name__)


def expand(parts: VolumeParts, volume: Object, name: str, new_bytes: int) -> None:
    """Raise the quota of volume ``name`` (checked to be this appliance's) to ``new_bytes``, or grow its
    filesystem (without quotas there is nothing to enforce)."""
    path = parts.directories.path_for(name)
    record = parts.records.read(name)
    if record is not None and record.filesystem is not None:
        _grow_filesystem(parts, volume, name, record.filesystem, new_bytes, record.root_squash)
        return
    if parts.quotas is None:
        log.info("volume %s: no quotas enabled; recording the new size %d only", name, new_bytes)
        return
    project_id = parts.quotas.project_of(path)
    if project_id is None:
        raise RuntimeError(f"volume {name} has no quota project to raise")
    parts.quotas.set_limit(project_id, new_bytes)
    log.info("volume %s: quota project %d raised to %d bytes", name, project_id, new_bytes)


def _grow_filesystem(parts: VolumeParts, volume: Object, name: str, fs_type: str, new_bytes: int,
                     root_squash: bool) -> None:
    """Grow a filesystem volume: online where the filesystem can (XFS; ext4 with CAP_SYS_RESOURCE), else
    unexported for the few milliseconds of an offline resize, then exported again with the same id on the
    same loop device (clients' handles stay valid; their calls wait or are retried meanwhile)."""
    filesystems = parts.filesystems
    if filesystems is None:
        raise RuntimeError(f"volume {name} is a filesystem volume, but this appliance has no filesystem volumes")
    try:
        try:
            filesystems.grow(name, size=new_bytes, fs_type=fs_type)
            return
        except fs_mod.OfflineOnly as e:
            filesystems.check_growth(name, new_bytes)
            if not filesystems.needs_growth(name, new_bytes, fs_type):
                log.info("volume %s: already %d bytes", name, new_bytes)
                return
            log.info("%s: growing it offline (unexported meanwhile)", e)
        wanted = _int_or_none(((volume.get("metadata") or {}).get("annotations") or {}).get(ANN_EXPORT_ID))
        parts.exporter.unexport(name)
        try:
            filesystems.unmount(name)
            filesystems.grow_offline(name, size=new_bytes, fs_type=fs_type)
        finally:
            # Whatever happened: mounted and exported again (a failed resize leaves the old size).
            path = filesystems.mount(name, fs_type=fs_type)
            parts.exporter.export(name=name, path=path, root_squash=root_squash, export_id=wanted)
    except fs_mod.FilesystemError as e:
        raise RuntimeError(str(e)) from e


def _int_or_none(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None
