"""The durable record of provisions that started and have not finished.

A provision is recorded *before* ``Provisioner.provision`` is called and the
record is dropped only once the PV object exists or the asset is known not to
exist, so a controller killed in between finds the work again. Two kinds:

``ClaimFinalizer`` (the default) keeps the record on the claim itself as the
finalizer ``provisioning.nfs-provisioner.io/<instance>``: it needs nothing but
the API server, and the claim cannot disappear while it is recorded. It costs
two PATCHes of the claim per provision.

``LocalJournal`` keeps it as one small file per claim in a directory that
lives as long as the assets do (the appliance keeps it in its export root). It
costs no API write, so a provision needs only the PV create; a claim deleted
mid-provision disappears at once, and its last known state, kept in the file,
is what the roll-back works from. Claims that still carry a finalizer from a
run with ``ClaimFinalizer`` are honoured and released.
"""

from __future__ import annotations

import abc
import contextlib
import json
import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path

from nfs_provisioner.controller import decisions
from nfs_provisioner.fileio import atomic_write, fill_spare, naming, private_dir, read_limited
from nfs_provisioner.kube import errors
from nfs_provisioner.kube.objects import Object

log = logging.getLogger(__name__)
PatchClaim = Callable[[Object, Object], Object]
"""Sends a PATCH for a claim and returns the updated claim."""


class InFlight(abc.ABC):
    """Where provisions in flight are recorded."""

    @abc.abstractmethod
    def holds(self, claim: Object) -> bool:
        """Whether a provision of ``claim`` is recorded (cheap: called for every claim event)."""

    @abc.abstractmethod
    def begin(self, claim: Object) -> Object:
        """Record the provision of ``claim`` durably; returns the claim (updated when it was written to).
        Raises :class:`nfs_provisioner.kube.errors.KubeError` or ``OSError`` when it cannot."""

    @abc.abstractmethod
    def end(self, claim: Object) -> None:
        """Drop the record (a no-op when there is none)."""

    def pending(self) -> list[str]:
        """UIDs of every recorded claim, to look at again when work starts (the finalizer kind finds them
        among the cached claims instead)."""
        return []

    def last_known(self, uid: str) -> Object | None:
        """The claim as recorded, for a record whose claim no longer exists (``None``: no such record)."""
        return None


class ClaimFinalizer(InFlight):
    def __init__(self, finalizer: str, patch: PatchClaim) -> None:
        self.finalizer = finalizer
        self._patch = patch

    def holds(self, claim: Object) -> bool:
        return self.finalizer in decisions.finalizers(claim)

    def begin(self, claim: Object) -> Object:
        if self.holds(claim):
            return claim
        return self._patch(claim, {"metadata": {"finalizers": [self.finalizer]}})

    def end(self, claim: Object) -> None:
        if self.holds(claim):
            with contextlib.suppress(errors.NotFound):
                self._patch(claim, {"metadata": {"$deleteFromPrimitiveList/finalizers": [self.finalizer]}})


class LocalJournal(InFlight):
    """``<directory>/<claim uid>.json`` per provision in flight, holding the claim as it was then.

    Written to a temporary name, synced and renamed, so a record is either whole or absent (like the
    Ganesha export files; the directory entry is not synced separately). A dropped record's file is renamed to a
    spare name (``.spare-<n>``, up to ``SPARES``) and the next record is written into it: a new file costs more
    kernel CPU than the rest of a record's life (an inode: 0.27 ms on the bench machine's ext4)."""

    SUFFIX = ".json"
    SPARE_PREFIX = ".spare-"
    SPARES = 64
    """Spare files kept for the next records (about the provisions in flight at once)."""
    MAX_BYTES = 1024 * 1024
    """A record is the claim's spec and metadata (annotations are at most 256 KiB): a bigger file is not one
    and is never read whole (a sparse file of gigabytes costs nothing on disk); it is reported and left."""

    def __init__(self, directory: Path, legacy: ClaimFinalizer) -> None:
        self.directory = directory
        self.legacy = legacy
        private_dir(directory)  # under the export root, which NFS clients reach (docs/security.md)
        self._lock = threading.Lock()
        self._uids = {name[:-len(self.SUFFIX)] for name in self.record_names(directory)}
        for stale in directory.glob(".*.tmp"):  # an atomic_write cut short by a crash
            stale.unlink(missing_ok=True)
        self._spares = sorted(p.name for p in directory.iterdir() if p.name.startswith(self.SPARE_PREFIX))
        self._next_spare = 1 + max((int(n[len(self.SPARE_PREFIX):]) for n in self._spares
                                    if n[len(self.SPARE_PREFIX):].isdigit()), default=0)

    @classmethod
    def record_names(cls, directory: Path) -> list[str]:
        """The file names of the records in ``directory`` (``<claim uid>.json``; spares and temp files are not)."""
        return sorted(p.name for p in directory.iterdir() if p.name.endswith(cls.SUFFIX) and not p.name.startswith("."))

    def _path(self, uid: str) -> Path:
        if not uid or "/" in uid or uid.startswith("."):
            raise ValueError(f"claim uid {uid!r} cannot name a journal record")
        return self.directory / f"{uid}{self.SUFFIX}"

    def holds(self, claim: Object) -> bool:
        return decisions.meta(claim).get("uid") in self._uids or self.legacy.holds(claim)

    def begin(self, claim: Object) -> Object:
        uid = str(decisions.meta(claim).get("uid", ""))
        if uid in self._uids:
            return claim
        path = self._path(uid)
        m = decisions.meta(claim)
        record = {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "spec": claim.get("spec") or {},
                  "metadata": {k: m[k] for k in ("name", "namespace", "uid", "annotations", "labels") if k in m}}
        text = json.dumps(record, separators=(",", ":"))
        with self._lock:
            spare = self.directory / self._spares.pop() if self._spares else None
        if spare is not None and fill_spare(spare, text, mode=0o600, durable=True, naming_path=path):
            with naming(path):
                os.rename(spare, path)
        else:  # none left, or one that is not a plain file of its own (left as it is)
            atomic_write(path, text, mode=0o600)
        with self._lock:
            self._uids.add(uid)
        return claim

    def end(self, claim: Object) -> None:
        uid = str(decisions.meta(claim).get("uid", ""))
        self.legacy.end(claim)
        if uid in self._uids:
            path = self._path(uid)
            with self._lock:
                spare = f"{self.SPARE_PREFIX}{self._next_spare}" if len(self._spares) < self.SPARES else None
                self._next_spare += 1
            kept = False
            if spare is None:
                path.unlink(missing_ok=True)
            else:
                with contextlib.suppress(FileNotFoundError):
                    os.rename(path, self.directory / spare)
                    kept = True
            with self._lock:
                if kept and spare is not None:
                    self._spares.append(spare)
                self._uids.discard(uid)

    def pending(self) -> list[str]:
        with self._lock:
            return sorted(self._uids)

    def last_known(self, uid: str) -> Object | None:
        if uid not in self._uids:
            return None
        path = self._path(uid)
        try:
            record = json.loads(read_limited(path, self.MAX_BYTES, follow_symlinks=False))
            why = _unusable(record, uid)
        except (OSError, ValueError) as e:  # fileio.Refused (too big, not a regular file) is a ValueError
            why = str(e)
        if why is None:
            return record  # type: ignore[no-any-return]
        # Said once, then left alone (the file is kept for whoever looks into it).
        log.error("in-flight record %s is unusable (%s); the provision it records cannot be rolled back "
                  "automatically: check for a volume of that claim, then remove the file", path, why)
        with self._lock:
            self._uids.discard(uid)
        return None


def _unusable(record: object, uid: str) -> str | None:
    """Why a journal record cannot be worked from (None: it can): a claim object named and with this uid."""
    if not isinstance(record, dict):
        return f"not a JSON object but {type(record).__name__}"
    meta = record.get("metadata")
    if not isinstance(meta, dict):
        return "no metadata"
    if meta.get("uid") != uid:
        return f"metadata.uid is {meta.get('uid')!r}, not the file's {uid!r}"
    for key in ("name", "namespace"):
        if not isinstance(meta.get(key), str) or not meta[key]:
            return f"no metadata.{key}"
    return None
