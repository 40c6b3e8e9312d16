"""Deleting a volume of the NFS appliance (:meth:`NFSProvisioner.delete
<nfs_provisioner.appliance.provisioner.NFSProvisioner.delete>`): works from the PV *name* only and from the
appliance's own records (the volume record must match the PV's name, claim uid, identity and path); the data is
deleted, kept or archived as the policy recorded when the volume was made says
(``nfs_provisioner.volumes.ondelete``); a full export root can always be freed.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Callable

from nfs_provisioner.appliance.parts import VolumeParts
from nfs_provisioner.controller.interface import DeleteError, DeleteRefused, IgnoredError, Notice, Object
from nfs_provisioner.kube.objects import ANN_IDENTITY
from nfs_provisioner.volumes import filesystems as fs_mod
from nfs_provisioner.volumes import ondelete, params

log = logging.getLogger(__name__)

ANN_ON_DELETE = ondelete.ANNOTATION
ON_DELETE_POLICY = "OnDeletePolicy"
"""The reason of the Warning event on a deleted PV whose data was not handled as its annotation says."""


def _freeing_space(parts: VolumeParts, name: str, on_delete: params.OnDelete, step: Callable[[], object]) -> None:
    """Run a bookkeeping step of a deletion (they rewrite files on the export root); if it fails with ENOSPC
    and the volume is to be deleted anyway, remove its data first (the directory stays, still exported,
    until the step succeeds) and run the step again: a full export root can always be freed."""
    try:
        step()
    except Exception as e:
        if on_delete != "delete" or not _no_space(e):
            raise
        log.warning("volume %s: no space left on the export root (%s); removing the volume's data first", name,
                    e)
        parts.directories.empty(name)
        step()


def delete(parts: VolumeParts, volume: Object) -> Notice | None:
    """Remove only what this appliance made for *this* PV: its record must match the PV (name, claim uid,
    identity, path); anything else raises (a ``VolumeFailedDelete`` event) and touches nothing. The data is
    deleted, kept or archived as :func:`ondelete.decide` says; when that is not what the PV's annotation says
    (missing, unknown, overruled), a Notice (a Warning event on the PV) says what was done and why."""
    meta = volume.get("metadata") or {}
    name = str(meta.get("name", ""))
    ann = meta.get("annotations") or {}
    owner = ann.get(ANN_IDENTITY)
    if not owner:
        raise DeleteRefused(f"volume {name}: identity annotation {ANN_IDENTITY} not found; refusing to delete")
    if owner != parts.config.identity:
        raise IgnoredError(f"identity annotation on PV {owner} does not match ours {parts.config.identity}")
    path = parts.directories.path_for(name)  # raises for names that are not ours to touch
    claim_uid = str(((volume.get("spec") or {}).get("claimRef") or {}).get("uid") or "")
    record = parts.records.read(name)
    if record is not None and record.filesystem is not None and parts.filesystems is not None:
        path = parts.filesystems.path_for(name)
    if record is None:
        if _retired(parts, name, claim_uid=claim_uid, identity=owner):
            return None  # a crash after the data was kept, before the PV was deleted
        if not parts.directories.exists(name) and not parts.exporter.has(name):
            log.info("volume %s: no record, no directory, no export: nothing to delete", name)
            return None  # e.g. a crash after the record was removed, before the PV was
        raise DeleteRefused(f"this appliance has no record of creating volume {name} (claim uid "
                            f"{claim_uid or '(none)'}); refusing to delete {path}")
    why = record.mismatch(pv_name=name, claim_uid=claim_uid, identity=owner, path=str(path))
    if why is not None:
        raise DeleteRefused(f"PV {name} does not match the volume this appliance made at {path} ({why}); "
                            "refusing to delete it")
    recorded = str(((volume.get("spec") or {}).get("nfs") or {}).get("path", ""))
    if recorded and recorded != str(path):
        log.warning("volume %s: spec.nfs.path %r is not %s; deleting by name only", name, recorded, path)
    if parts.clones is not None:
        parts.clones.forget(name)
    decision = ondelete.decide(recorded=record.on_delete, annotation=ann.get(ANN_ON_DELETE))
    on_delete = decision.action
    if record.filesystem is not None:
        return _delete_filesystem(parts, name, decision)
    _freeing_space(parts, name, on_delete, lambda: parts.exporter.unexport(name))
    quotas = parts.quotas
    if quotas is not None:
        _freeing_space(parts, name, on_delete, lambda: quotas.remove_directory(path))
    if on_delete == "retain":
        done = f"kept {path} (no longer a volume: its export and record are removed)"
    elif on_delete == "archive":
        target = parts.directories.archive(name)
        done = f"moved to {target}" if target is not None else f"{path} was already moved aside"
    else:
        parts.directories.delete(name)
        done = f"deleted {path}"
    _let_go(parts, name, on_delete)  # last: until the directory is gone (or kept aside), it proves it is a volume
    if decision.warning is None:
        log.info("volume %s: onDelete=%s, %s", name, on_delete, done)
        return None
    log.warning("volume %s: %s; %s", name, decision.warning, done)
    return Notice(ON_DELETE_POLICY, f"{decision.warning}; {done}")


def _let_go(parts: VolumeParts, name: str, on_delete: str) -> None:
    """The last step of a deletion: the record goes, or, when the data was kept (``retain``), moves aside
    (:meth:`VolumeRecords.retire`) so that a retry of this deletion knows the data is no longer a volume."""
    if on_delete == "retain":
        parts.records.retire(name)
    else:
        parts.records.remove(name)


def _retired(parts: VolumeParts, name: str, *, claim_uid: str, identity: str) -> bool:
    """Whether this PV's volume was already deleted here with its data kept (its retired record matches)."""
    retired = parts.records.read_retired(name)
    if retired is None or retired.mismatch(pv_name=name, claim_uid=claim_uid, identity=identity,
                                           path=retired.path) is not None:
        return False
    log.info("volume %s: already deleted with its data kept at %s (retain); nothing more to do", name, retired.path)
    return True


def _delete_filesystem(parts: VolumeParts, name: str, decision: ondelete.Decision) -> Notice | None:
    """Unexport, then unmount and delete, retain or archive the image as ``decision`` says (the one rule of
    :mod:`~nfs_provisioner.volumes.ondelete`); the record goes last."""
    on_delete = decision.action
    filesystems = parts.filesystems
    if filesystems is None:
        raise DeleteRefused(f"volume {name} is a filesystem volume, but this appliance has no filesystem volumes; "
                            "keeping it")
    try:
        parts.exporter.unexport(name)
    except Exception as e:
        # The export index rewrite needs space on the export root. Ganesha has let go of the volume already
        # (RemoveExport comes first), so a volume to be deleted can be unmounted and its image removed first.
        if on_delete != "delete" or not _no_space(e):
            raise
        log.warning("volume %s: no space left on the export root (%s); removing the volume's image first",
                    name, e)
        try:
            filesystems.delete(name)
        except fs_mod.FilesystemError as again:
            raise DeleteError(f"{e}; freeing the export root by removing the image failed: {again}") from e
        parts.exporter.unexport(name)
    try:
        if on_delete == "delete":
            filesystems.delete(name)
            done = "deleted its image"
        elif on_delete == "archive":
            done = f"image moved to {filesystems.archive(name)} (unmounted)"
        else:
            done = f"image kept as {filesystems.retain(name)} (unmounted; no longer a volume)"
    except fs_mod.FilesystemError as e:
        raise DeleteError(str(e)) from e
    _let_go(parts, name, on_delete)
    if decision.warning is None:
        log.info("volume %s: onDelete=%s, %s", name, on_delete, done)
        return None
    log.warning("volume %s: %s; %s", name, decision.warning, done)
    return Notice(ON_DELETE_POLICY, f"{decision.warning}; {done}")


def _no_space(e: BaseException | None) -> bool:
    """Whether ENOSPC (or EDQUOT) is what made ``e`` (itself or the errors it was raised from)."""
    seen = 0
    while e is not None and seen < 20:
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        e = e.__cause__ or e.__context__
        seen += 1
    return False
