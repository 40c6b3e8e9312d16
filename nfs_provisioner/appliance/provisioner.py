"""The NFS appliance's :class:`Provisioner`: a directory (or, with ``isolation: filesystem``, a filesystem of
its own: ``nfs_provisioner.volumes.filesystems``), an export and an optional XFS project quota per volume.

Provision validates everything first (class parameters, selector, size, free
space, the export limit), then creates record -> directory -> quota -> export with
an undo stack, so any failure leaves nothing behind. A retry owns what an earlier
attempt for the same claim left (a crash between the directory and the PV leaves
the record, the directory, maybe the export): when it fails finally, it removes
those too, as a fresh attempt's undo stack would (``_discard_leftovers``). Delete works from the PV *name*
only (validated; the directory is ``<export root>/<pv name>``) and from the
appliance's own records (the volume record must match the PV's name, claim uid,
identity and path; export by name, quota project by directory); the PV's
annotations are never trusted to say *what* to delete, only to say whose it is.
Whether the data is deleted, kept or archived is the policy recorded when the
volume was made (``nfs_provisioner.volumes.ondelete``: a missing or unreadable
policy never means delete). The deletion and expansion paths live in ``appliance.removal`` and
``appliance.expansion``; the interfaces and config in ``appliance.parts``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from nfs_provisioner.appliance import clones as clones_mod
from nfs_provisioner.appliance import expansion, golayout, removal
from nfs_provisioner.appliance.parts import ApplianceConfig, Exporter, Quotas, VolumeParts
from nfs_provisioner.controller.interface import (
    PVC_KIND,
    IgnoredError,
    InProgress,
    Notice,
    Object,
    Provisioner,
    ProvisioningError,
    ProvisioningState,
    ProvisionOptions,
)
from nfs_provisioner.kube.errors import KubeError
from nfs_provisioner.kube.objects import (
    ANN_EXPORT_BLOCK,
    ANN_EXPORT_ID,
    ANN_IDENTITY,
    ANN_PROJECT_BLOCK,
    ANN_PROJECT_ID,
)
from nfs_provisioner.volumes import filesystems as fs_mod
from nfs_provisioner.volumes import params, quantity, space
from nfs_provisioner.volumes.directories import DirectoryError, VolumeDirectories
from nfs_provisioner.volumes.records import RecordError, VolumeRecords, new_record

log = logging.getLogger(__name__)

# PV annotations (the ones shared with other modules: ``kube.objects``).
ANN_CREATED_BY = "kubernetes.io/createdby"
CREATED_BY = "nfs-dynamic-provisioner"
ANN_GID = "pv.beta.kubernetes.io/gid"
ANN_ON_DELETE = removal.ANN_ON_DELETE
ON_DELETE_POLICY = removal.ON_DELETE_POLICY
ANN_ISOLATION = "nfs-provisioner.io/isolation"
ANN_FS_TYPE = "nfs-provisioner.io/fs-type"

__all__ = ["ApplianceConfig", "Exporter", "NFSProvisioner", "Quotas"]  # the interfaces live in appliance.parts


class NFSProvisioner(Provisioner):
    def __init__(
        self,
        *,
        config: ApplianceConfig,
        directories: VolumeDirectories,
        records: VolumeRecords,
        exporter: Exporter,
        quotas: Quotas | None = None,
        sources: clones_mod.Sources | None = None,
        clones: clones_mod.Clones | None = None,
        filesystems: fs_mod.FilesystemVolumes | None = None,
    ) -> None:
        self.config = config
        self.directories = directories
        self.records = records
        self.exporter = exporter
        self.quotas = quotas
        self.sources = sources
        """Reads clone sources (claims and PVs); with ``clones``, claims of a PVC data source are cloned."""
        self.clones = clones
        self.filesystems = filesystems
        """Filesystem volumes (``isolation: filesystem``); None: this appliance makes directory volumes only."""
        self._probed: dict[str, str | None] | None = None
        self._probe_lock = threading.Lock()
        # Serialises the "limit not reached yet" check with the export that uses the slot.
        self._slots = threading.Lock()

    # ------------------------------------------------------------------ provision

    def provision(self, options: ProvisionOptions) -> Object:
        """Called only while no PV of the claim exists (the controller's contract): what an earlier attempt for
        this claim left is this attempt's, and a final failure removes it (``_discard_leftovers``)."""
        try:
            return self._provision(options)
        except (InProgress, IgnoredError):
            raise
        except Exception as e:
            if not isinstance(e, ProvisioningError) or e.state is ProvisioningState.FINISHED:  # as the controller
                self._discard_leftovers(options, reason=str(e) or type(e).__name__)
            raise

    def _provision(self, options: ProvisionOptions) -> Object:
        claim_spec = options.claim.get("spec") or {}
        if claim_spec.get("selector"):
            raise ProvisioningError("claim Selector is not supported: remove spec.selector from the claim")
        try:
            p = params.parse(options.parameters, class_mount_options=options.mount_options)
        except params.InvalidParameter as e:
            raise ProvisioningError(f"StorageClass {options.storage_class['metadata']['name']}: {e}") from e
        requested = options.requested_storage
        if requested is None:
            raise ProvisioningError("claim has no spec.resources.requests.storage")
        try:
            size = quantity.to_bytes(requested)
        except quantity.InvalidQuantity as e:
            raise ProvisioningError(f"requested storage {e}") from e
        name = options.pv_name
        if p.isolation == "filesystem":
            self._check_filesystem(options, p, size)
        copy_started = self.clones is not None and (self.clones.running(name) or self.clones.done(name))
        try:
            path = self.directories.path_for(name)
            if p.fs_type is not None and self.filesystems is not None:
                path = self.filesystems.path_for(name)
            if options.rolling_back and options.source is not None and self.clones is not None \
                    and not self.clones.done(name):  # the claim is gone: never copy for nobody
                log.info("volume %s: clone cancelled, its claim is deleted; removing any half copy", name)
                raise ProvisioningError(f"volume {name}: clone cancelled, its claim is deleted; any half copy is "
                                        "removed")
            if not copy_started:  # a running copy uses the space it needs
                self.directories.check_space(size)
        except DirectoryError as e:
            raise ProvisioningError(str(e)) from e
        # Refused (FINISHED): nothing of this clone may stay (provision() discards what an earlier attempt left).
        image_of, clone_source, reservation = self._clone_source(options, p, name, size)
        clones = self.clones if options.source is not None and image_of is None else None
        """Set for a clone whose tree is copied: its record and directory (or filesystem) are this claim's
        (checked below), so a failed copy rolls back all of them, on whichever poll it fails."""

        undo: list[tuple[str, Callable[[], object]]] = []
        if reservation is not None:  # held by the copy once it runs; until then, released by any failure
            undo.append(("release the space reserved for the copy", reservation.release))
        try:
            # Only a limit needs provisions in series (check, then use the slot); without one they run in parallel.
            with self._slots if self.config.max_exports >= 0 else contextlib.nullcontext():
                limit = self.config.max_exports
                if 0 <= limit <= self.exporter.count() and not self.exporter.has(name):
                    raise ProvisioningError(f"the maximum number of exports ({self.config.max_exports}) is reached")
                claim_uid = str((options.claim.get("metadata") or {}).get("uid", ""))
                recorded = self.records.read(name)
                if recorded is not None and recorded.claim_uid != claim_uid:
                    raise ProvisioningError(f"{path} is the volume of claim {recorded.claim_namespace}/"
                                            f"{recorded.claim_name} (uid {recorded.claim_uid}); not reusing it")
                on_delete = p.on_delete
                if recorded is not None and recorded.filesystem != p.fs_type:
                    raise ProvisioningError(f"{path} was begun as a {recorded.filesystem or 'directory'} volume; "
                                            f"the class now asks for {p.fs_type or 'a directory'}; not reusing it")
                if recorded is None:
                    # Written before the directory exists and removed after it is gone: a directory that is
                    # a volume always has its record (the proof that delete may remove it), and the record
                    # keeps the class's onDelete (what delete does with the data, whatever the PV says later).
                    self.records.write(new_record(pv_name=name, claim=options.claim, identity=self.config.identity,
                                                  path=path, root_squash=p.root_squash, on_delete=on_delete,
                                                  filesystem=p.fs_type))
                elif (kept := params.on_delete_policy(recorded.on_delete)) is not None:
                    on_delete = kept  # an earlier attempt's decision stands (and the PV shows it)
                else:  # an attempt of an older version (no policy recorded), finished by this one
                    self.records.write(replace(recorded, on_delete=on_delete))
                if recorded is None or clones is not None:
                    undo.append(("remove volume record", lambda: self.records.remove(name)))
                filesystems = self.filesystems
                if p.fs_type is not None and filesystems is not None:
                    fs_type = p.fs_type
                    existed = filesystems.image_for(name).exists()
                    if not existed or clones is not None:
                        undo.append(("remove the volume's filesystem", lambda: filesystems.delete(name)))
                    try:
                        filesystems.create(name, size=size, fs_type=fs_type, gid=p.gid, clone_of=image_of)
                    finally:
                        if reservation is not None and image_of is not None:  # the image copy is made in this call
                            reservation.release()
                    if filesystems.mounted(name) is None:  # never export the mount point's own directory
                        raise ProvisioningError(f"volume {name}: its filesystem is not mounted at {path}")
                    if clone_source is not None and not existed:
                        _check_room(path, clone_source, fs_type)
                else:
                    existed = path.exists()
                    self.directories.create(name, gid=p.gid)
                    if not existed or clones is not None:
                        undo.append(("remove directory", lambda: self.directories.delete(name)))
                project_id = None
                quotas = self.quotas if p.fs_type is None else None  # a filesystem volume is its own limit
                if quotas is not None:
                    project_id = quotas.add(path, size)
                    undo.append(("remove quota project", lambda: quotas.remove_directory(path)))
                if clones is not None:
                    undo.append(("stop the copy", lambda: clones.forget(name)))
                    # Never exported before the whole copy is done (InProgress until then).
                    clones.fill(name=name, target=path, source=clone_source, reservation=reservation,
                                keep=fs_mod.OWN_DIRS if p.fs_type is not None else frozenset())
                export_id, block = self.exporter.export(name=name, path=path, root_squash=p.root_squash)
                undo.append(("remove export", lambda: self.exporter.unexport(name)))
        except InProgress:
            raise  # the copy goes on in the background: keep everything
        except BaseException as e:
            self._rollback(name, undo)
            if isinstance(e, ProvisioningError):
                raise
            raise ProvisioningError(f"creating volume {name} failed: {e}") from e

        annotations = {
            ANN_IDENTITY: self.config.identity,
            ANN_EXPORT_ID: str(export_id),
            ANN_EXPORT_BLOCK: block,
            ANN_CREATED_BY: CREATED_BY,
            ANN_ON_DELETE: on_delete,
        }
        if p.fs_type is not None:
            annotations[ANN_ISOLATION] = "filesystem"
            annotations[ANN_FS_TYPE] = p.fs_type
        if project_id is not None:
            annotations[ANN_PROJECT_ID] = str(project_id)
            annotations[ANN_PROJECT_BLOCK] = f"{project_id}:{path}:{size}"
        if p.gid is not None:
            annotations[ANN_GID] = str(p.gid)
        if options.source is not None and options.source.is_claim:
            annotations[clones_mod.ANN_CLONED_FROM] = options.source.name
        spec: Object = {
            "capacity": {"storage": requested},
            "accessModes": options.access_modes,
            "persistentVolumeReclaimPolicy": options.reclaim_policy,
            "nfs": {"server": self.config.server(), "path": str(path)},
        }
        if p.mount_options:
            spec["mountOptions"] = list(p.mount_options)
        return {
            "apiVersion": "v1",
            "kind": "PersistentVolume",
            "metadata": {"name": name, "annotations": annotations},
            "spec": spec,
        }

    def probe_filesystems(self) -> dict[str, str | None]:
        """Per filesystem type, what stops this appliance from making filesystem volumes (None: nothing);
        probed once (attach and mount a small image), then remembered."""
        with self._probe_lock:
            if self._probed is None:
                if self.filesystems is None:
                    self._probed = dict.fromkeys(params.FS_TYPES, "this appliance is not set up for filesystem "
                                                                  "volumes")
                else:
                    self._probed = self.filesystems.probe()
                    for fs_type, problem in self._probed.items():
                        if problem is None:
                            log.info("filesystem volumes (%s): supported", fs_type)
                        else:
                            log.info("filesystem volumes (%s): not possible here: %s", fs_type, problem)
            return dict(self._probed)

    def _check_filesystem(self, options: ProvisionOptions, p: params.ClassParameters, size: int) -> None:
        """Refuse a ``filesystem`` claim this appliance cannot make (one event, nothing made, never a directory
        volume instead)."""
        assert p.fs_type is not None
        klass = options.storage_class["metadata"]["name"]
        problem = self.probe_filesystems().get(p.fs_type)
        if problem is not None:
            raise ProvisioningError(f"StorageClass {klass} asks for isolation: filesystem ({p.fs_type}), which this "
                                    f"appliance cannot provide: {problem}; no volume is provisioned")
        try:
            fs_mod.check_size(p.fs_type, size)
        except fs_mod.TooSmall as e:
            raise ProvisioningError(f"StorageClass {klass}: {e}") from e

    def supports_data_source(self, kind: str, api_group: str) -> bool:
        """Clones (a PersistentVolumeClaim source) when a source reader and the copier are given."""
        return kind == PVC_KIND and api_group == "" and self.sources is not None and self.clones is not None

    def _discard_leftovers(self, options: ProvisionOptions, *, reason: str) -> None:
        """This attempt failed finally: remove what an earlier attempt for the same claim left (its record says
        so: a crash between the directory and the PV, a clone's half copy, a clone refused after a restart), as
        that attempt's own undo stack would have. A record that cannot be read is kept, and so is the in-flight
        record (``IN_BACKGROUND``): what it may prove is never deleted on a guess, nor forgotten."""
        name = options.pv_name
        try:
            path = self.directories.path_for(name)
            record = self.records.read(name)
        except (RecordError, DirectoryError) as e:
            raise ProvisioningError(f"{reason}; what an earlier attempt may have left for volume {name} cannot be "
                                    f"checked ({e}): kept", ProvisioningState.IN_BACKGROUND) from e
        claim_uid = str((options.claim.get("metadata") or {}).get("uid", ""))
        filesystems = self.filesystems
        if record is not None and record.filesystem is not None and filesystems is not None:
            path = filesystems.path_for(name)
        if record is None or record.mismatch(pv_name=name, claim_uid=claim_uid, identity=self.config.identity,
                                             path=str(path)) is not None:
            return
        steps: list[tuple[str, Callable[[], object]]] = [("remove volume record", lambda: self.records.remove(name))]
        if record.filesystem is not None and filesystems is not None:
            steps.append(("remove the volume's filesystem", lambda: filesystems.delete(name)))
        else:
            steps.append(("remove directory", lambda: self.directories.delete(name)))
        quotas = self.quotas
        if quotas is not None and record.filesystem is None:
            steps.append(("remove quota project", lambda: quotas.remove_directory(path)))
        clones = self.clones
        if clones is not None:
            steps.append(("stop the copy", lambda: clones.forget(name)))
        steps.append(("remove export", lambda: self.exporter.unexport(name)))
        log.info("volume %s: this attempt failed finally (%s); removing what an earlier attempt for claim %s/%s "
                 "left (export, quota project, directory %s, record)", name, reason, record.claim_namespace,
                 record.claim_name, path)
        self._rollback(name, steps)

    def _clone_source(self, options: ProvisionOptions, p: params.ClassParameters, name: str,
                      size: int) -> tuple[str | None, clones_mod.Source | None, space.Reservation | None]:
        """How a clone is made (all None: not a clone, or its tree copy is running or done), under the rules of
        ``clones.check``: from a filesystem volume of the claim's own filesystem type, its image is copied within
        the provisioning call (``FilesystemVolumes.copy_image``; its name comes first); from any other volume
        (a directory volume, or a filesystem volume into a directory or another filesystem type), its tree is
        copied by ``clones`` in the background (the validated source comes second). Last, the export root's
        space reserved for the copy (None where blocks are shared). Raises ProvisioningError (FINISHED) when the
        clone is refused."""
        source = options.source
        if source is None:
            return None, None, None
        if not source.is_claim or self.sources is None or self.clones is None:
            raise ProvisioningError(f"data source {source.describe()} is not supported; no volume is provisioned")
        if self.clones.running(name) or self.clones.done(name):
            return None, None, None
        paths = clones_mod.RecordedPaths(self.records, self.directories, self.filesystems)
        try:
            checked = clones_mod.check(claim=options.claim, source=source, requested_bytes=size,
                                       sources=self.sources, identity=self.config.identity, records=self.records,
                                       directories=paths)
        except KubeError as e:
            # Not a refusal: whatever an earlier attempt made (a half copy after a restart) stays recorded.
            raise ProvisioningError(f"cannot read the clone source {source.describe()}: {e}",
                                    ProvisioningState.NO_CHANGE) from e
        if checked.filesystem is not None:
            try:
                if self.filesystems is None or self.filesystems.mounted(checked.pv_name) is None:
                    raise clones_mod.refuse(f"the source volume {checked.pv_name} is a filesystem volume that is not "
                                            "mounted")
            except fs_mod.FilesystemError as e:
                raise clones_mod.refuse(f"the source volume {checked.pv_name}: {e}") from e
        image = p.fs_type is not None and checked.filesystem == p.fs_type
        if p.fs_type is not None and not image and checked.usage.allocated_bytes > fs_mod.image_bytes(size):
            raise clones_mod.refuse(f"the source volume {checked.pv_name} holds {checked.usage.allocated_bytes} "
                                    f"bytes, more than a {p.fs_type} filesystem of the claim's {size} bytes can hold "
                                    "(ask for a larger claim)")
        # A tree copy into or out of a filesystem volume crosses filesystems: its blocks are never shared.
        shares = (image or (p.fs_type is None and checked.filesystem is None)) \
            and self.clones.shares_blocks(self.directories.export_root)
        reservation = clones_mod.reserve(name=name, source=checked, directories=self.directories,
                                         shares_blocks=shares)
        return (checked.pv_name, None, reservation) if image else (None, checked, reservation)

    @staticmethod
    def _rollback(name: str, undo: list[tuple[str, Callable[[], object]]]) -> None:
        """Undo in reverse; if a step fails, the next call must finish the cleanup (IN_BACKGROUND)."""
        failed = []
        for what, step in reversed(undo):
            try:
                step()
            except Exception as e:  # noqa: BLE001 - keep undoing the other steps
                log.error("volume %s: rollback step %r failed: %s", name, what, e)
                failed.append(f"{what}: {e}")
        if failed:
            raise ProvisioningError(f"creating volume {name} failed and its rollback failed too ({'; '.join(failed)})",
                                    ProvisioningState.IN_BACKGROUND)

    def should_delete(self, volume: Object) -> bool:
        """False for another pool member's volume (instances sharing a class leave each other's volumes alone: no
        finalizer write, no event), and for a PV of the Go nfs-provisioner that this appliance has not adopted (no
        volume record: refused at start, or another identity's; ``appliance.adoption``): the controller leaves it
        exactly as it is."""
        if self.owns(volume) is False:
            return False
        if not golayout.is_go_volume(volume):
            return True
        try:
            return self.records.read(str((volume.get("metadata") or {}).get("name", ""))) is not None
        except (RecordError, DirectoryError):
            return True  # delete() refuses it with an event, saying why

    def owns(self, volume: Object) -> bool | None:
        owner = ((volume.get("metadata") or {}).get("annotations") or {}).get(ANN_IDENTITY)
        return None if owner is None else owner == self.config.identity

    # ------------------------------------------------------------------ expand

    def expand(self, volume: Object, new_bytes: int) -> None:
        """Raise the volume's quota to ``new_bytes``, or grow its filesystem (``appliance.expansion``)."""
        name = str((volume.get("metadata") or {}).get("name", ""))
        owner = ((volume.get("metadata") or {}).get("annotations") or {}).get(ANN_IDENTITY)
        if owner != self.config.identity:
            raise RuntimeError(f"volume {name} belongs to provisioner instance {owner}, not {self.config.identity}")
        if not self.should_delete(volume):
            raise RuntimeError(f"volume {name} is the Go nfs-provisioner's and was not adopted (see its "
                               "AdoptionRefused event); it is left as it is")
        expansion.expand(self._parts(), volume, name, new_bytes)

    # ------------------------------------------------------------------ delete

    def delete(self, volume: Object) -> Notice | None:
        """Remove only what this appliance made for *this* PV (``appliance.removal``): its record must match the
        PV (name, claim uid, identity, path); anything else raises (a ``VolumeFailedDelete`` event) and touches
        nothing. The data is deleted, kept or archived as :func:`ondelete.decide` says; when that is not what the
        PV's annotation says, a Notice (a Warning event on the PV) says what was done and why."""
        return removal.delete(self._parts(), volume)

    def _parts(self) -> VolumeParts:
        return VolumeParts(config=self.config, directories=self.directories, records=self.records,
                           exporter=self.exporter, quotas=self.quotas, clones=self.clones, filesystems=self.filesystems)



def _check_room(path: Path, source: clones_mod.Source, fs_type: str) -> None:
    """Refuse a tree copy into the new filesystem at ``path`` when the source's data or entries are known not to
    fit (a copy that fails later for want of space fails the clone all the same)."""
    st = os.statvfs(path)
    free = st.f_bavail * st.f_frsize
    usage = source.usage
    if usage.allocated_bytes > free or usage.entries > st.f_favail:
        raise clones_mod.refuse(f"the source volume {source.pv_name} holds {usage.allocated_bytes} bytes in "
                                f"{usage.entries} entries; the claim's new {fs_type} filesystem has room for {free} "
                                f"bytes and {st.f_favail} entries (ask for a larger claim)")
