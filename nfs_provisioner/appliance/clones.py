"""Volume clones: a claim whose data source is another claim of ours gets a copy of its directory.

:func:`check` applies the Kubernetes rules for clones and this appliance's own (same namespace, source
Bound to a volume this instance made and recorded, same StorageClass, request >= source capacity, not being
deleted, room for a full copy unless blocks are shared) *before* anything is created, so a refusal leaves
nothing behind. :class:`Clones` runs each copy in a background thread and answers every poll with
:class:`~nfs_provisioner.controller.interface.InProgress` until it is done. Crash safety comes from two
markers in ``<export root>/.clones`` (0700, the appliance's own): ``<pv>.copying`` is written before the
first byte is copied, ``<pv>.done`` only after the whole copy is flushed (syncfs). The provisioner exports a
clone only when ``done`` exists; a restart that finds ``copying`` without a running copy empties the
volume directory (its own, recorded) and copies again from the start.
"""

from __future__ import annotations

import errno
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from nfs_provisioner import fileio, threads
from nfs_provisioner.controller import decisions
from nfs_provisioner.controller.interface import DataSource, InProgress, Object, ProvisioningError
from nfs_provisioner.kube import client as kube
from nfs_provisioner.kube import errors
from nfs_provisioner.kube.objects import ANN_IDENTITY
from nfs_provisioner.volumes import copying, quantity, space
from nfs_provisioner.volumes.directories import InsufficientSpace, VolumeDirectories
from nfs_provisioner.volumes.records import RecordError, VolumeRecords

log = logging.getLogger(__name__)

CLONES_DIR = ".clones"
ANN_CLONED_FROM = "nfs-provisioner.io/cloned-from"


class Paths(Protocol):
    """Where a volume of a given PV name lives (``VolumeDirectories``, or ``FilesystemVolumes`` for clones of
    filesystem volumes)."""

    def path_for(self, name: str) -> Path: ...


@dataclass(frozen=True)
class RecordedPaths:
    """Where a recorded volume lives, as its record says: a filesystem volume's mount (``filesystems``), else
    its directory. A clone's source may be of the other kind than the clone (a class recreated with another
    ``isolation``): its tree is then copied from there."""

    records: VolumeRecords
    directories: Paths
    filesystems: Paths | None

    def path_for(self, name: str) -> Path:
        record = self.records.read(name)
        if record is not None and record.filesystem is not None and self.filesystems is not None:
            return self.filesystems.path_for(name)
        return self.directories.path_for(name)


class Sources(Protocol):
    """Reads the source claim and its volume (fresh, not from a cache)."""

    def claim(self, namespace: str, name: str) -> Object | None: ...

    def volume(self, name: str) -> Object | None: ...


@dataclass(frozen=True)
class KubeSources:
    api: kube.Client

    def claim(self, namespace: str, name: str) -> Object | None:
        return kube.read_claim(self.api, namespace, name)

    def volume(self, name: str) -> Object | None:
        try:
            return self.api.get(kube.volumes_path(name))
        except errors.NotFound:
            return None


@dataclass(frozen=True)
class Source:
    """A validated clone source."""

    claim_key: str
    pv_name: str
    path: Path
    usage: copying.Usage
    filesystem: str | None = None
    """The source's filesystem type when it is a filesystem volume (``isolation: filesystem``), else None."""

    def describe(self) -> str:
        return f"claim {self.claim_key} (volume {self.pv_name})"


def refuse(why: str) -> ProvisioningError:
    return ProvisioningError(f"cannot clone: {why}; no volume is provisioned")


def check(*, claim: Object, source: DataSource, requested_bytes: int, sources: Sources, identity: str,
          records: VolumeRecords, directories: Paths) -> Source:
    """Validate a clone request; raises :class:`ProvisioningError` (FINISHED) saying why it is refused.

    Room for the copy is not checked here: :func:`reserve` does it and holds the space until the copy ends."""
    ns = str(decisions.meta(claim).get("namespace") or "")
    key = f"{ns}/{source.name}"
    if source.namespace and source.namespace != ns:
        raise refuse(f"the source claim {source.namespace}/{source.name} is in another namespace than "
                     f"{decisions.claim_key(claim)} (Kubernetes clones only within a namespace)")
    src = sources.claim(ns, source.name)
    if src is None:
        raise refuse(f"the source claim {key} does not exist")
    if decisions.is_deleting(src):
        raise refuse(f"the source claim {key} is being deleted")
    pv_name = str((src.get("spec") or {}).get("volumeName") or "")
    phase = str((src.get("status") or {}).get("phase") or "Pending")
    if phase != "Bound" or not pv_name:
        raise refuse(f"the source claim {key} is {phase}, not Bound")
    if decisions.claim_class(src) != decisions.claim_class(claim):
        raise refuse(f"the source claim {key} is of StorageClass {decisions.claim_class(src)!r}, not "
                     f"{decisions.claim_class(claim)!r} (Kubernetes clones only within a StorageClass)")
    pv = sources.volume(pv_name)
    if pv is None:
        raise refuse(f"the source claim {key} is bound to volume {pv_name}, which does not exist")
    if decisions.is_deleting(pv):
        raise refuse(f"the source volume {pv_name} is being deleted")
    owner = decisions.annotations_of(pv).get(ANN_IDENTITY)
    if owner != identity:
        raise refuse(f"the source volume {pv_name} was not made by this appliance instance ({identity}) but by "
                     f"{owner or 'another provisioner'}")
    try:
        path = directories.path_for(pv_name)
        record = records.read(pv_name)
    except (RecordError, ValueError) as e:
        raise refuse(f"the source volume {pv_name} has no usable record: {e}") from e
    src_uid = str(decisions.meta(src).get("uid") or "")
    why = ("this appliance has no record of making it" if record is None else
           record.mismatch(pv_name=pv_name, claim_uid=src_uid, identity=identity, path=str(path)))
    if why is not None:
        raise refuse(f"the source volume {pv_name} is not this appliance's volume of claim {key}: {why}")
    capacity = str(((pv.get("spec") or {}).get("capacity") or {}).get("storage") or "0")
    try:
        cap_bytes = quantity.to_bytes(capacity)
    except quantity.InvalidQuantity as e:
        raise refuse(f"the source volume {pv_name} has an unreadable capacity: {e}") from e
    if requested_bytes < cap_bytes:
        raise refuse(f"the claim requests {requested_bytes} bytes, less than the source's capacity {capacity} "
                     f"({cap_bytes} bytes)")
    try:
        usage = copying.measure(path)
    except OSError as e:
        raise refuse(f"cannot read the source volume {pv_name}: {e.strerror or e} ({e.filename})") from e
    assert record is not None
    return Source(claim_key=key, pv_name=pv_name, path=path, usage=usage, filesystem=record.filesystem)


def reserve(*, name: str, source: Source, directories: VolumeDirectories,
            shares_blocks: bool) -> space.Reservation | None:
    """Hold back the space a full copy of ``source`` into volume ``name`` needs from every free-space check
    until the copy ends (None when blocks are shared: a copy then needs next to nothing); raises
    :class:`ProvisioningError` (FINISHED) when it is not free beyond what copies in progress will use."""
    if shares_blocks:
        return None
    try:
        return directories.reserve(name, source.usage.allocated_bytes, what=f"a full copy of {source.pv_name}")
    except InsufficientSpace as e:
        raise refuse(f"{e}; its filesystem cannot share blocks") from e


@dataclass
class _Job:
    source: Source
    reservation: space.Reservation | None = None
    keep: frozenset[str] = frozenset()
    thread: threading.Thread | None = None
    cancel: threading.Event = field(default_factory=threading.Event)
    started: float = field(default_factory=time.monotonic)
    done_bytes: int = 0
    stats: copying.Stats | None = None
    error: str | None = None
    finished: bool = False
    reported_at: float = 0.0
    reported_tenth: int = -1


class Copy(Protocol):
    """How a tree is copied (:func:`~nfs_provisioner.volumes.copying.copy_tree`)."""

    def __call__(self, source: Path, target: Path, *, on_bytes: Callable[[int], None] | None = None,
                 on_written: Callable[[int], None] | None = None,
                 cancel: threading.Event | None = None, keep: frozenset[str] = frozenset()) -> copying.Stats: ...


class Clones:
    """Background copies, one per clone volume, with their markers."""

    def __init__(self, directory: Path, *, report_every: float = 10.0, poll: float = 1.0,
                 copy: Copy = copying.copy_tree) -> None:
        self.directory = directory
        self.copy = copy
        """Copies one tree into another (the real one; tests pass others)."""
        self.report_every = report_every
        """Seconds between progress events (also one every 10 % of the bytes)."""
        self.poll = poll
        """Seconds between the controller's looks at a running copy."""
        self._jobs: dict[str, _Job] = {}
        self._lock = threading.Lock()
        self._shares: bool | None = None

    def ensure_dir(self) -> None:
        fileio.private_dir(self.directory)

    def shares_blocks(self, export_root: Path) -> bool:
        if self._shares is None:
            self._shares = copying.shares_blocks(export_root)
            log.info("clones: the export root %s blocks between files", "shares" if self._shares else "cannot share")
        return self._shares

    def _marker(self, name: str, kind: str) -> Path:
        return self.directory / f"{name}.{kind}"

    def done(self, name: str) -> bool:
        return os.path.lexists(self._marker(name, "done"))

    def running(self, name: str) -> bool:
        with self._lock:
            return name in self._jobs

    def fill(self, *, name: str, target: Path, source: Source | None,
             reservation: space.Reservation | None = None, keep: frozenset[str] = frozenset()) -> None:
        """Return once ``target`` holds the finished copy; until then raise :class:`InProgress` (or
        :class:`ProvisioningError` when the copy failed, whatever made it fail: the caller rolls the volume
        back).

        ``source`` is needed only to start a copy (None: a copy must be running or done); ``reservation``: the
        space held for it, released when the copy ends (done, failed, stopped); ``keep``: the target
        filesystem's own directories at its top (``copying.copy_tree``)."""
        if self.done(name):
            return
        with self._lock:
            job = self._jobs.get(name)
        if job is None:
            if source is None:
                raise ProvisioningError(f"volume {name}: its copy is neither running nor done")
            self._start(name, target, source, reservation, keep)
            raise InProgress(f"Cloning {source.describe()} into volume {name}: {source.usage.apparent_bytes} bytes "
                             f"in {source.usage.entries} entries to copy", retry_after=self.poll, report=True)
        if job.error is not None:
            with self._lock:
                self._jobs.pop(name, None)
            raise ProvisioningError(f"cloning {job.source.describe()} into volume {name} failed: {job.error}")
        if job.finished:
            syncfs_error = None
            try:
                copying.syncfs(target)
                fileio.atomic_write(self._marker(name, "done"), f"{job.source.pv_name}\n", mode=0o600)
                self._marker(name, "copying").unlink(missing_ok=True)
            except OSError as e:
                syncfs_error = e
            with self._lock:
                self._jobs.pop(name, None)
            if syncfs_error is not None:
                raise ProvisioningError(f"volume {name}: cannot record its finished copy: {syncfs_error}")
            stats = job.stats or copying.Stats()
            log.info("volume %s: cloned from %s in %.2f s (%d files, %d reflinked, %d hard links, %d symlinks, "
                     "%d bytes)", name, job.source.describe(), time.monotonic() - job.started, stats.files,
                     stats.reflinked_files, stats.hard_links, stats.symlinks, stats.bytes)
            return
        raise self._progress(name, job)

    def _progress(self, name: str, job: _Job) -> InProgress:
        total = max(job.source.usage.apparent_bytes, 1)
        pct = min(100, job.done_bytes * 100 // total)
        now = time.monotonic()
        report = now - job.reported_at >= self.report_every or pct // 10 > job.reported_tenth
        if report:
            job.reported_at, job.reported_tenth = now, pct // 10
        return InProgress(f"Cloning {job.source.describe()} into volume {name}: {pct} % ({job.done_bytes} of "
                          f"{job.source.usage.apparent_bytes} bytes) after {now - job.started:.0f} s",
                          retry_after=self.poll, report=report)

    def _start(self, name: str, target: Path, source: Source, reservation: space.Reservation | None,
               keep: frozenset[str]) -> None:
        self.ensure_dir()
        if os.path.lexists(self._marker(name, "copying")) or set(os.listdir(target)) - keep:
            removed = copying.empty_dir(target, keep=keep)
            log.warning("volume %s: a copy was cut short (a restart); removed %d entries of the half copy, copying "
                        "again from the start", name, removed)
        fileio.atomic_write(self._marker(name, "copying"), f"{source.pv_name}\n", mode=0o600)
        job = _Job(source=source, reservation=reservation, keep=keep, reported_at=time.monotonic(),
                   reported_tenth=0)
        with self._lock:
            self._jobs[name] = job
        log.info("volume %s: cloning %s (%d bytes, %d entries)", name, source.describe(),
                 source.usage.apparent_bytes, source.usage.entries)
        try:
            job.thread = threads.spawn(self._run, name, target, job, name=f"clone-{name}", kind="clone")
        except BaseException:
            with self._lock:
                self._jobs.pop(name, None)
            raise

    def _run(self, name: str, target: Path, job: _Job) -> None:
        """The copy thread. Whatever ends it (done, an error of the copy, a bug, RecursionError, MemoryError,
        even SystemExit) is published on the job for the next poll to report, after the reservation is
        released: a clone never stays "in progress" for a copy that stopped."""
        source = job.source

        def count(n: int) -> None:
            job.done_bytes += n

        reservation = job.reservation
        error: str | None = None
        stats: copying.Stats | None = None
        try:
            stats = self.copy(source.path, target, on_bytes=count,
                              on_written=reservation.use if reservation is not None else None, cancel=job.cancel,
                              keep=job.keep)
        except copying.Cancelled as e:
            error = str(e)
            log.info("volume %s: copy from %s stopped: %s", name, source.describe(), e)
        except (OSError, copying.CopyError) as e:
            error = str(e)
            if _no_space(e):
                error += ("; the new volume has no room for the source's data (ask for a larger claim), or the "
                          "export root is full")
            log.error("volume %s: copy from %s failed: %s", name, source.describe(), e)
        except BaseException as e:  # a bug, RecursionError, MemoryError, SystemExit: the claim fails, never stalls
            error = f"unexpected {type(e).__name__}: {str(e)[:300] or '(no message)'}"
            log.error("volume %s: copy from %s failed: %s", name, source.describe(), error)
            log.debug("volume %s: the copy's traceback", name, exc_info=True)
        finally:
            if reservation is not None:
                reservation.release()
            if stats is None and error is None:
                error = "the copy ended without a result"
            job.stats = stats
            if error is not None:
                job.error = error
            else:
                job.finished = True

    def forget(self, name: str) -> None:
        """The volume is rolled back or deleted: stop its copy and drop its markers."""
        with self._lock:
            job = self._jobs.pop(name, None)
        if job is not None and job.thread is not None:
            job.cancel.set()
            job.thread.join()
        if job is not None and job.reservation is not None:
            job.reservation.release()  # the thread did already, unless it never ran
        for kind in ("copying", "done"):
            self._marker(name, kind).unlink(missing_ok=True)


def _no_space(e: BaseException | None) -> bool:
    """Whether ENOSPC (or EDQUOT) made ``e`` (itself or what it was raised from)."""
    while e is not None:
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        e = e.__cause__
    return False
