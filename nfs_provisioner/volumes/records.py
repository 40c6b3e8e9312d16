"""The appliance's own record of each volume: ``<export root>/.volumes/<pv name>.json``.

A record says which claim (uid, namespace/name) a volume directory was made
for, by which identity, at which path, when, how it is exported, and what
deleting it does with the data (the class's ``onDelete``, decided then; see
``nfs_provisioner.volumes.ondelete`` for how it is used). It is
written (fsynced) *before* the directory is created and removed only *after*
the directory is gone (deleted or archived) or has stopped being a volume
(retained: the record then moves to ``.retired/``), so at every crash point
between those steps a directory that is a volume has a record. Deleting requires the PV to match the record (name,
``spec.claimRef.uid``, identity): annotations and names on a PV are only what
someone wrote, the record is what this appliance did.

Records are read without following symlinks (``O_NOFOLLOW``) and only up to
``MAX_BYTES`` (a bigger file is refused, left in place), and written through
a temp file and a rename in the same directory.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import logging
import os
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nfs_provisioner import fileio
from nfs_provisioner.errors import NFSProvisionerError
from nfs_provisioner.volumes.directories import validate_name
from nfs_provisioner.volumes.params import OnDelete

log = logging.getLogger(__name__)

RECORDS_DIR = ".volumes"
"""Under the export root: one record per volume."""
RETIRED_DIR = ".retired"
"""Under the records directory: the records of volumes deleted with their data kept (``retain``), moved there by
one rename as the last step of the deletion, so a retried deletion (a crash before the PV was deleted) still finds
what this appliance did. One small file per retained volume, beside its kept data; deleting both is the operator's."""
SUFFIX = ".json"
MAX_BYTES = 64 * 1024
"""A record is a few hundred bytes; a bigger file is not one and is not read (``fileio.read_limited``)."""


class RecordError(NFSProvisionerError, RuntimeError):
    """A record could not be read or written; the message says which and why."""


@dataclass(frozen=True)
class VolumeRecord:
    pv_name: str
    claim_uid: str
    claim_namespace: str
    claim_name: str
    identity: str
    path: str
    root_squash: bool
    created: float
    """Unix time the record was written."""
    adopted: bool = False
    """True when written at start for a volume made before records existed (see ``appliance.recovery``)."""
    on_delete: str | None = None
    """The deletion policy decided when the volume was made (``delete``, ``retain`` or ``archive``: the class's
    ``onDelete``); None in records written before it was recorded. Read only through ``volumes.ondelete``."""
    filesystem: str | None = None
    """``ext4`` or ``xfs`` for a volume with a filesystem of its own (``isolation: filesystem``: an image
    under ``.images/``, mounted at ``path``; ``nfs_provisioner.volumes.filesystems``); None for a directory
    volume (and in records written before this field existed)."""

    def mismatch(self, *, pv_name: str, claim_uid: str, identity: str, path: str) -> str | None:
        """Why a PV with these fields is not the volume recorded here (None: it is)."""
        if pv_name != self.pv_name:
            return f"the record is for PV {self.pv_name!r}"
        if identity != self.identity:
            return f"the record names identity {self.identity}, the PV {identity or '(none)'}"
        if claim_uid != self.claim_uid:
            return (f"the volume was made for claim {self.claim_namespace}/{self.claim_name} (uid {self.claim_uid}), "
                    f"the PV's claimRef has uid {claim_uid or '(none)'}")
        if path != self.path:
            return f"the record's path is {self.path}, not {path}"
        return None


class VolumeRecords:
    """The records directory; every method is safe from any thread (one file per volume, atomic renames)."""

    def __init__(self, directory: Path, *, durable: bool = True) -> None:
        self.directory = directory
        self.durable = durable

    def _file(self, pv_name: str) -> Path:
        return self.directory / f"{validate_name(pv_name)}{SUFFIX}"

    def ensure_dir(self) -> None:
        with contextlib.suppress(FileExistsError):
            os.mkdir(self.directory, 0o700)
        if not stat.S_ISDIR(os.lstat(self.directory).st_mode):
            raise RecordError(f"{self.directory} is not a directory; refusing to keep volume records in it")

    def write(self, record: VolumeRecord) -> None:
        self.ensure_dir()
        text = json.dumps(dataclasses.asdict(record), sort_keys=True) + "\n"
        try:
            fileio.atomic_write(self._file(record.pv_name), text, durable=self.durable, mode=0o600)
        except OSError as e:
            raise RecordError(f"cannot write the record of volume {record.pv_name}: {e}") from e

    def read(self, pv_name: str) -> VolumeRecord | None:
        """The record of ``pv_name``; None if there is none. Raises RecordError for a damaged one."""
        path = self._file(pv_name)
        try:
            raw = fileio.read_limited(path, MAX_BYTES, follow_symlinks=False)
        except FileNotFoundError:
            return None
        except fileio.Refused as e:
            raise RecordError(str(e)) from e
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise RecordError(f"{path} is a symlink; refusing to read it") from e
            raise RecordError(f"cannot read {path}: {e.strerror}") from e
        try:
            data: dict[str, Any] = json.loads(raw.decode("utf-8"))
            record = VolumeRecord(**data)
        except (ValueError, TypeError) as e:
            raise RecordError(f"{path} is not a volume record: {e}") from e
        if record.pv_name != pv_name:
            raise RecordError(f"{path} holds the record of {record.pv_name!r}")
        return record

    def remove(self, pv_name: str) -> bool:
        try:
            os.unlink(self._file(pv_name))
        except FileNotFoundError:
            return False
        return True

    def retire(self, pv_name: str) -> bool:
        """Move the record of a volume whose data is kept (``retain``) to :data:`RETIRED_DIR`, atomically (one
        rename, made durable); False if there was no record. Until then the record proves a volume, after it
        :meth:`read_retired` proves this appliance let go of it."""
        retired = self.directory / RETIRED_DIR
        with contextlib.suppress(FileExistsError):
            os.mkdir(retired, 0o700)
        if not stat.S_ISDIR(os.lstat(retired).st_mode):
            raise RecordError(f"{retired} is not a directory; refusing to keep retired records in it")
        try:
            os.rename(self._file(pv_name), retired / self._file(pv_name).name)
        except FileNotFoundError:
            return False
        except OSError as e:
            raise RecordError(f"cannot retire the record of volume {pv_name}: {e}") from e
        if self.durable:
            fileio.fsync_dir(retired)
            fileio.fsync_dir(self.directory)
        return True

    def read_retired(self, pv_name: str) -> VolumeRecord | None:
        """The retired record of ``pv_name`` (its data was kept by a deletion); None if there is none."""
        return VolumeRecords(self.directory / RETIRED_DIR, durable=self.durable).read(pv_name)

    def names(self) -> list[str]:
        try:
            entries = os.listdir(self.directory)
        except FileNotFoundError:
            return []
        return sorted(e[: -len(SUFFIX)] for e in entries if e.endswith(SUFFIX) and not e.startswith("."))


def new_record(*, pv_name: str, claim: dict[str, Any], identity: str, path: Path, root_squash: bool,
               on_delete: OnDelete | None, adopted: bool = False, now: float | None = None,
               filesystem: str | None = None) -> VolumeRecord:
    """The record of a volume about to be made (or adopted); ``on_delete`` None only where no policy is known
    (an adopted volume whose PV does not name one)."""
    meta = claim.get("metadata") or {}
    return VolumeRecord(pv_name=pv_name, claim_uid=str(meta.get("uid", "")),
                        claim_namespace=str(meta.get("namespace", "")), claim_name=str(meta.get("name", "")),
                        identity=identity, path=str(path), root_squash=root_squash,
                        created=time.time() if now is None else now, adopted=adopted, on_delete=on_delete,
                        filesystem=filesystem)
