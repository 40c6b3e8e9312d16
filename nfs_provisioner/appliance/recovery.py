"""Start-up check of the appliance's state against what is authoritative, before the controller runs.

Authoritative are: the PVs this identity owns (``Provisioner_Id`` + ``provisioned-by``), their directories,
and the appliance's per-volume records (``nfs_provisioner.volumes.records``). From them, once per start:

1. **Adopt** volumes made before records existed: a PV of this identity without a record is adopted only
   when its export exists, serves ``<export root>/<pv name>`` (= ``spec.nfs.path``), its directory is a real
   directory and it has a ``claimRef`` uid; one log line per adopted volume. Anything else stays
   unrecorded (and so cannot be deleted by a PV). The record's deletion policy is the PV's
   ``nfs-provisioner.io/on-delete`` when that names one, else none (deleting then keeps the data).
1b. **Record the deletion policy** of records an older version wrote without one, from the PV's annotation
   when the record matches the PV and the annotation names a policy (from then on, the annotation can no
   longer change it); else one warning line: deleting that volume will keep its data
   (``nfs_provisioner.volumes.ondelete``).
2. **Rebuild** lost exports (e.g. ``.ganesha`` removed): a PV of this identity whose record matches it
   (name, claim uid, path) and whose directory exists gets its export again, with the PV's ``Export_Id``
   when that id is free, so clients' handles stay valid. PVs that cannot be rebuilt are *problems*:
   ``/readyz`` fails naming them.
3. **Warn** about PVs of this provisioner name, on this server address, whose path lies under another
   export root (a changed ``--export-root``): they are no longer served from here.
4. **Watch** what is not served: an export whose file exists but that NFS-Ganesha does not serve (its directory
   missing or replaced by a symlink, no record of it, Ganesha refused it: ``Exporter.unserved``) is offered
   to the exporter again every ``SERVING_INTERVAL`` seconds in a thread (:class:`ServingWatch`). While a
   *Bound* PV of this identity is not served, ``/readyz`` fails naming it and why (one WARNING line when it
   starts, one INFO line when it ends: served again, or its PV is no longer Bound).

Before all that, and before NFS-Ganesha loads its exports, :func:`remount` mounts every filesystem volume
(``isolation: filesystem``) of this identity that is not mounted (a container restart gets a fresh mount
namespace), from the records alone and in parallel; one that cannot be mounted is a problem, and its export is
withdrawn as soon as Ganesha runs (:func:`withdraw`): an export must never serve the bare mount point, a
directory of the export root's filesystem.
"""

from __future__ import annotations

import logging
import os
import stat
import threading
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

from nfs_provisioner import threads
from nfs_provisioner.appliance import provisioner as prov
from nfs_provisioner.kube import client as kube
from nfs_provisioner.kube.objects import (
    ANN_BETA_PROVISIONED_BY,
    ANN_EXPORT_ID,
    ANN_IDENTITY,
    ANN_PROVISIONED_BY,
    Object,
)
from nfs_provisioner.volumes import loops, ondelete, params
from nfs_provisioner.volumes.directories import VolumeDirectories
from nfs_provisioner.volumes.filesystems import MOUNTS_DIR, FilesystemError, FilesystemVolumes
from nfs_provisioner.volumes.records import RecordError, VolumeRecords, new_record

log = logging.getLogger(__name__)

PAGE = 500
"""PVs per list request at start-up."""
SERVING_INTERVAL = 5.0
"""Seconds between two looks at the exports that are not served (each costs an ``lstat`` while the cause
remains, an AddExport once it is gone)."""
SHOWN = 3
"""Volumes named in a failing /readyz answer (the rest are counted)."""
WHY_CHARS = 300
"""Characters of each reason in a /readyz answer."""

@dataclass
class Report:
    adopted: list[str] = field(default_factory=list)
    policies: list[str] = field(default_factory=list)
    """Volumes whose record got its deletion policy from the PV (records of older versions)."""
    rebuilt: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    """One line per volume this appliance should serve but cannot (each makes /readyz fail)."""
    elsewhere: list[str] = field(default_factory=list)
    watch: ServingWatch | None = None
    """Keeps /readyz current about Bound volumes that are not served (None: only the start's ``problems``)."""

    def health(self) -> tuple[bool, str]:
        """For /readyz: no I/O (the watch's last verdict)."""
        problems = self.problems if self.watch is None else self.watch.rebuild_problems()
        unserved = {} if self.watch is None else self.watch.unserved()
        if not problems and not unserved:
            return True, "ok"
        parts = []
        if problems:
            parts.append(f"{len(problems)} volume(s) of this appliance are not exported and could not be "
                         f"rebuilt, e.g. {_short(problems[0])}")
        if unserved:
            shown = "; ".join(f"{name}: {_short(why)}" for name, why in sorted(unserved.items())[:SHOWN])
            more = f" (and {len(unserved) - SHOWN} more)" if len(unserved) > SHOWN else ""
            parts.append(f"{len(unserved)} Bound volume(s) of this appliance are not served: {shown}{more}")
        return False, "; ".join(parts)

    def stop(self) -> None:
        """Stop the watch's thread (at shutdown; it is a daemon thread otherwise)."""
        if self.watch is not None:
            self.watch.stop()


class ServingWatch:
    """Offers every unserved export to the exporter again, every ``interval`` seconds, and keeps which Bound
    volumes of this appliance are not served (the verdict /readyz reads, no I/O there)."""

    def __init__(self, *, exporter: prov.Exporter, bound_mine: Callable[[Collection[str]], set[str]],
                 problems: list[str], interval: float = SERVING_INTERVAL) -> None:
        self.exporter = exporter
        self.bound_mine = bound_mine
        """Which of the given PV names are Bound PVs of this identity (lists PVs only when asked)."""
        self.interval = interval
        self._problems = {p.split(":", 1)[0]: p for p in problems}
        """The start's problems (volumes not rebuilt), by volume name; dropped once their PV is not Bound."""
        self._unserved: dict[str, str] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Look once (so the first /readyz answer is real), then keep looking in a thread."""
        self.check()
        self._thread = threads.spawn(self._loop, name="serving-watch")

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(2.0)  # a daemon thread: a look in progress (a D-Bus call) need not be waited for

    def unserved(self) -> dict[str, str]:
        with self._lock:
            return dict(self._unserved)

    def rebuild_problems(self) -> list[str]:
        with self._lock:
            return list(self._problems.values())

    def add_problem(self, line: str) -> None:
        """A problem found after the start's check (``NAME: why``): kept until its PV is not Bound."""
        with self._lock:
            self._problems[line.split(":", 1)[0]] = line

    def check(self) -> None:
        """Serve what can be served again; find the Bound volumes of this appliance that are still not served."""
        for name in list(self.exporter.unserved()):
            if self._stop.is_set():
                return
            try:
                self.exporter.serve_again(name)
            except Exception as e:  # noqa: BLE001 - one export must not stop the others' retries
                log.error("export %s: serving it again failed: %s", name, e)
        unserved = self.exporter.unserved()
        with self._lock:
            problems = dict(self._problems)
        bound = self.bound_mine(set(unserved) | set(problems)) if unserved or problems else set()
        now = {name: why for name, why in unserved.items() if name in bound}
        with self._lock:
            before = self._unserved
            self._unserved = now
            for name in [n for n in self._problems if n not in bound]:
                log.info("volume %s: no longer a Bound volume of this appliance; its start-up problem is dropped",
                         name)
                del self._problems[name]
        for name, why in sorted(now.items()):
            if before.get(name) != why:
                log.warning("volume %s is Bound but not served by NFS-Ganesha: %s; /readyz fails until it is "
                            "served or its PV is deleted", name, why)
        for name in sorted(set(before) - set(now)):
            if name in unserved:
                how = "no longer a Bound volume of this appliance"
            else:
                how = "served again" if self.exporter.has(name) else "its export is removed (the volume is deleted)"
            log.info("volume %s: %s", name, how)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.check()
            except Exception:  # the watch keeps going; its verdict stays the last one
                log.exception("checking which volumes are not served failed")


@dataclass(frozen=True)
class Recovery:
    api: kube.Client
    names: frozenset[str]
    """Provisioner names (``--provisioner``)."""
    identity: str
    directories: VolumeDirectories
    records: VolumeRecords
    exporter: prov.Exporter
    server: Callable[[], str]
    volumes: Callable[[], Iterable[Object]] | None = None
    """Every PV (e.g. the controller's informer cache, read only); None: listed from the API server here."""
    filesystems: FilesystemVolumes | None = None
    """Filesystem volumes: mounted before their export is rebuilt."""
    refused: Mapping[str, str] = field(default_factory=dict)
    """Volumes of the Go nfs-provisioner not adopted (``appliance.adoption``, which logged why): a Bound one is a
    problem, nothing else is said or done about it here."""

    def run(self) -> Report:
        report = Report()
        began = time.monotonic()
        mine = 0
        for pv in self.volumes() if self.volumes is not None else self._volumes():
            self._warn_elsewhere(pv, report)
            if not self._mine(pv):
                continue
            mine += 1
            name = str(pv["metadata"]["name"])
            if name in self.refused:
                if _phase(pv) == "Bound":
                    report.problems.append(f"{name}: not adopted from the Go nfs-provisioner: {self.refused[name]}")
                continue
            try:
                self._adopt(pv, name, report)
                self._record_policy(pv, name, report)
                self._rebuild(pv, name, report)
            except Exception as e:  # noqa: BLE001 - one volume (a record, a directory, an export) never stops the start
                log.error("volume %s: cannot check its state: %s", name, e)
                if _phase(pv) == "Bound":  # a claim uses it; a stray (e.g. hand-made, Released) PV must not
                    report.problems.append(f"{name}: {e}")
        if report.elsewhere:
            log.warning("%d PV(s) of provisioner %s on server %s lie under another export root than %s (e.g. %s): "
                        "this appliance does not serve or delete them; start it with their --export-root to serve "
                        "them again", len(report.elsewhere), ",".join(sorted(self.names)), self.server(),
                        self.directories.export_root, report.elsewhere[0])
        report.watch = ServingWatch(exporter=self.exporter, bound_mine=self._bound_mine, problems=report.problems)
        report.watch.start()
        log.info("state check: %d PVs of this identity, %d adopted, %d deletion policies recorded, %d exports rebuilt, "
                 "%d not servable, %d Bound but not served (%.2fs)", mine, len(report.adopted), len(report.policies),
                 len(report.rebuilt), len(report.problems), len(report.watch.unserved()), time.monotonic() - began)
        return report

    def _mine(self, pv: Object) -> bool:
        return self._provisioned_here(pv) and _ann(pv).get(ANN_IDENTITY) == self.identity

    def _bound_mine(self, names: Collection[str]) -> set[str]:
        """Which of ``names`` are Bound PVs of this identity (one pass over the PVs)."""
        wanted = set(names)
        return {str(pv["metadata"]["name"]) for pv in (self.volumes() if self.volumes is not None else self._volumes())
                if str((pv.get("metadata") or {}).get("name")) in wanted and _phase(pv) == "Bound" and self._mine(pv)}

    def _provisioned_here(self, pv: Object) -> bool:
        ann = _ann(pv)
        return (ann.get(ANN_PROVISIONED_BY) or ann.get(ANN_BETA_PROVISIONED_BY)) in self.names

    def _adopt(self, pv: Object, name: str, report: Report) -> None:
        if self.records.read(name) is not None:
            return
        path = self.directories.path_for(name)
        claim_ref = (pv.get("spec") or {}).get("claimRef") or {}
        served = self.exporter.path_of(name)
        why = None
        if not claim_ref.get("uid"):
            why = "it has no claimRef uid"
        elif _nfs_path(pv) != str(path):
            why = f"its spec.nfs.path {_nfs_path(pv)!r} is not {path}"
        elif served != path:
            why = "no export of it exists" if served is None else f"its export serves {served}, not {path}"
        elif not _real_dir(path):
            why = f"{path} is not a directory"
        if why is not None:
            log.warning("volume %s: no record of this appliance and not adopted (%s); it will not be deleted "
                        "through its PV", name, why)
            return
        claim = {"metadata": {"uid": claim_ref.get("uid"), "namespace": claim_ref.get("namespace", ""),
                              "name": claim_ref.get("name", "")}}
        squash = self.exporter.root_squash(name)
        annotated = _ann(pv).get(prov.ANN_ON_DELETE)
        self.records.write(new_record(pv_name=name, claim=claim, identity=self.identity, path=path,
                                      root_squash=bool(squash), on_delete=params.on_delete_policy(annotated),
                                      adopted=True))
        report.adopted.append(name)
        log.info("volume %s: adopted (made before volume records): claim %s/%s uid %s, path %s, from its export "
                 "and PV", name, claim_ref.get("namespace", ""), claim_ref.get("name", ""), claim_ref.get("uid"),
                 path)  # no policy named: _record_policy says what a delete will do
        if name in self.exporter.unserved():  # held at load for want of a record, which it has now
            why = self.exporter.serve_again(name)
            if why is not None:
                log.warning("volume %s: adopted but not served: %s", name, why)

    def _record_policy(self, pv: Object, name: str, report: Report) -> None:
        """Give a record of an older version (no deletion policy) the one its PV names, if the record is this
        PV's: the policy then stays whatever later happens to the annotation."""
        record = self.records.read(name)
        if record is None or record.on_delete is not None:
            return
        claim_uid = str(((pv.get("spec") or {}).get("claimRef") or {}).get("uid") or "")
        if record.mismatch(pv_name=name, claim_uid=claim_uid, identity=self.identity,
                           path=str(self.directories.path_for(name))) is not None:
            return  # not this PV's volume: nothing on it may decide anything (deleting it is refused)
        annotated = _ann(pv).get(prov.ANN_ON_DELETE)
        policy = params.on_delete_policy(annotated)
        if policy is None:
            decision = ondelete.decide(recorded=None, annotation=annotated)
            log.warning("volume %s, once deleted: %s", name, decision.warning)
            return
        try:
            self.records.write(replace(record, on_delete=policy))
        except RecordError as e:  # the annotation still decides at delete (ondelete), as for an older version
            log.warning("volume %s: cannot record its deletion policy %s: %s", name, policy, e)
            return
        report.policies.append(name)
        log.info("volume %s: deletion policy %s recorded from its PV (its record was written by an older version)",
                 name, policy)

    def _rebuild(self, pv: Object, name: str, report: Report) -> None:
        if self.exporter.has(name):
            return
        path = self.directories.path_for(name)
        record = self.records.read(name)
        if record is not None and record.filesystem is not None and self.filesystems is not None:
            path = self.filesystems.path_for(name)
        claim_uid = str(((pv.get("spec") or {}).get("claimRef") or {}).get("uid") or "")
        if record is None:
            why: str | None = "it has no export and no record of this appliance"
        else:
            why = record.mismatch(pv_name=name, claim_uid=claim_uid, identity=self.identity, path=str(path))
        if why is None and record is not None and record.filesystem is None and not _real_dir(path):
            why = f"its directory {path} is missing"
        if why is not None:
            phase = _phase(pv)
            log.error("volume %s (%s): not exported and not rebuilt: %s", name, phase or "no phase", why)
            if phase == "Bound":  # a claim uses it: fail readiness (a stray Released PV must not do that)
                report.problems.append(f"{name}: {why}")
            return
        assert record is not None
        if record.filesystem is not None:
            if self.filesystems is None:
                raise FilesystemError(f"{path} is a filesystem volume and this appliance has no filesystem volumes")
            self.filesystems.mount(name, fs_type=record.filesystem)  # never export the bare mount point
        wanted = _int(_ann(pv).get(ANN_EXPORT_ID))
        export_id, _ = self.exporter.export(name=name, path=path, root_squash=record.root_squash, export_id=wanted)
        report.rebuilt.append(name)
        log.warning("volume %s: its export was missing; rebuilt from its record and PV (id %d%s)", name, export_id,
                    "" if wanted in (None, export_id) else f", not {wanted}: that id is taken; clients must remount")

    def _volumes(self) -> Iterator[Object]:
        """Every PV, a page at a time (10,000 PVs at once would hold ~100 MB of objects at start-up)."""
        cont: str | None = None
        while True:
            page = self.api.get(kube.volumes_path(), limit=PAGE, **({"continue": cont} if cont else {}))
            yield from page.get("items") or []
            cont = (page.get("metadata") or {}).get("continue")
            if not cont:
                return

    def _warn_elsewhere(self, pv: Object, report: Report) -> None:
        root = self.directories.export_root
        path = _nfs_path(pv)
        if (self._provisioned_here(pv) and path and ((pv.get("spec") or {}).get("nfs") or {}).get("server")
                == self.server() and Path(path).parent not in (root, root / MOUNTS_DIR)):
            report.elsewhere.append(f"{pv['metadata']['name']} at {path}")


REMOUNT_THREADS = 8
"""Filesystem volumes mounted at once at start (each is a few ioctls and a mount(2): the kernel's work)."""


def remount(*, records: VolumeRecords, filesystems: FilesystemVolumes, identity: str) -> dict[str, str]:
    """Mount every filesystem volume of ``identity`` (from the records) that is not mounted; returns the volumes
    that could not be, with why (each is logged)."""
    began = time.monotonic()
    names = records.names()
    attached = loops.attachments()

    kinds: set[str] = set()

    def one(name: str) -> tuple[str, str | None, bool]:
        try:
            record = records.read(name)
            if record is not None and record.identity == identity:
                kinds.add("directory" if record.filesystem is None else "filesystem")
            if record is None or record.filesystem is None or record.identity != identity:
                return name, None, False
            was = filesystems.mounted(name) is not None
            filesystems.mount(name, fs_type=record.filesystem, attached=attached)
            if was:
                filesystems.thaw(name)  # a clone's copy interrupted by a crash left it frozen
            return name, None, not was
        except (RecordError, FilesystemError, OSError) as e:
            return name, str(e), False

    failed: dict[str, str] = {}
    mounted = 0
    with ThreadPoolExecutor(max_workers=REMOUNT_THREADS, thread_name_prefix="remount") as pool:
        for name, problem, done in pool.map(one, names):
            mounted += done
            if problem is not None:
                log.warning("volume %s: its filesystem is not mounted: %s; any export of it is withdrawn (a provision "
                            "cut short by a crash makes it again; a Bound volume fails readiness)", name, problem)
                failed[name] = problem
    if mounted or failed:
        log.info("filesystem volumes: %d mounted again, %d failed (%.2fs)", mounted, len(failed),
                 time.monotonic() - began)
    if kinds == {"directory", "filesystem"}:
        log.warning("this export root holds directory volumes beside filesystem volumes: a client of a directory "
                    "volume that forges NFS file handles can read the filesystem volumes' images; keep tenants that "
                    "must not see each other on an appliance with filesystem volumes only "
                    "(docs/filesystem-volumes.md, Limits)")
    return failed


def withdraw(failed: dict[str, str], *, exporter: prov.Exporter, filesystems: FilesystemVolumes,
             report: Report, volumes: Iterable[Object]) -> None:
    """Withdraw the export of each filesystem volume that :func:`remount` could not mount and that is not mounted
    now (its export would serve the bare mount point); each whose PV is Bound (a claim uses it) is a readiness
    problem, not one being deleted or released."""
    bound = {str(pv["metadata"]["name"]) for pv in volumes
             if pv["metadata"].get("name") in failed and _phase(pv) == "Bound"
             and not pv["metadata"].get("deletionTimestamp")}
    for name, problem in sorted(failed.items()):
        try:
            if filesystems.mounted(name) is not None:
                continue
        except FilesystemError as e:
            problem = f"{problem}; {e}"
        try:
            exporter.unexport(name)
        except Exception as e:  # noqa: BLE001 - reported below with the volume
            problem = f"{problem}; withdrawing its export failed too: {e}"
        if name in bound:
            log.error("volume %s: Bound, and its filesystem cannot be mounted: %s", name, problem)
            report.problems.append(f"{name}: {problem}")
            if report.watch is not None:
                report.watch.add_problem(f"{name}: {problem}")


def _ann(pv: Object) -> dict[str, str]:
    return dict((pv.get("metadata") or {}).get("annotations") or {})


def _phase(pv: Object) -> str:
    return str((pv.get("status") or {}).get("phase") or "")


def _nfs_path(pv: Object) -> str:
    return str(((pv.get("spec") or {}).get("nfs") or {}).get("path") or "")


def _real_dir(path: Path) -> bool:
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except FileNotFoundError:
        return False


def _short(text: str) -> str:
    return text if len(text) <= WHY_CHARS else text[: WHY_CHARS - 3] + "..."


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None
