"""Start-up check of the appliance's state against what is authoritative, before the controller runs.

Authoritative are: the PVs this identity owns (``Provisioner_Id`` + ``provisioned-by``), their directories,
and the appliance's per-volume records (``nfs_provisioner.volumes.records``). From them, once per start:

1. **Adopt** volumes made before records existed: a PV of this identity without a record is adopted only
   when its export exists, serves ``<export root>/<pv name>`` (= ``spec.nfs.path``), its directory is a real
   directory and it has a ``claimRef`` uid; one log line per adopted volume. Anything else stays
   unrecorded (and so cannot be deleted by a PV).
2. **Rebuild** lost exports (e.g. ``.ganesha`` removed): a PV of this identity whose record matches it
   (name, claim uid, path) and whose directory exists gets its export again, with the PV's ``Export_Id``
   when that id is free, so clients' handles stay valid. PVs that cannot be rebuilt are *problems*:
   ``/readyz`` fails naming them.
3. **Warn** about PVs of this provisioner name, on this server address, whose path lies under another
   export root (a changed ``--export-root``): they are no longer served from here.

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
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nfs_provisioner.appliance import provisioner as prov
from nfs_provisioner.kube import client as kube
from nfs_provisioner.volumes import loops
from nfs_provisioner.volumes.directories import DirectoryError, VolumeDirectories
from nfs_provisioner.volumes.filesystems import MOUNTS_DIR, FilesystemError, FilesystemVolumes
from nfs_provisioner.volumes.records import RecordError, VolumeRecords, new_record

log = logging.getLogger(__name__)

PAGE = 500
"""PVs per list request at start-up."""
ANN_PROVISIONED_BY = "pv.kubernetes.io/provisioned-by"
ANN_BETA_PROVISIONED_BY = "volume.beta.kubernetes.io/provisioned-by"
Object = dict[str, Any]


@dataclass
class Report:
    adopted: list[str] = field(default_factory=list)
    rebuilt: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    """One line per volume this appliance should serve but cannot (each makes /readyz fail)."""
    elsewhere: list[str] = field(default_factory=list)

    def health(self) -> tuple[bool, str]:
        if not self.problems:
            return True, "ok"
        return False, (f"{len(self.problems)} volume(s) of this appliance are not exported and could not be "
                       f"rebuilt, e.g. {self.problems[0]}")


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

    def run(self) -> Report:
        report = Report()
        began = time.monotonic()
        mine = 0
        for pv in self.volumes() if self.volumes is not None else self._volumes():
            self._warn_elsewhere(pv, report)
            if not (self._provisioned_here(pv) and _ann(pv).get(prov.ANN_IDENTITY) == self.identity):
                continue
            mine += 1
            name = str(pv["metadata"]["name"])
            try:
                self._adopt(pv, name, report)
                self._rebuild(pv, name, report)
            except (RecordError, DirectoryError, FilesystemError, OSError) as e:
                log.error("volume %s: cannot check its state: %s", name, e)
                if _phase(pv) == "Bound":  # a claim uses it; a stray (e.g. hand-made, Released) PV must not
                    report.problems.append(f"{name}: {e}")
        if report.elsewhere:
            log.warning("%d PV(s) of provisioner %s on server %s lie under another export root than %s (e.g. %s): "
                        "this appliance does not serve or delete them; start it with their --export-root to serve "
                        "them again", len(report.elsewhere), ",".join(sorted(self.names)), self.server(),
                        self.directories.export_root, report.elsewhere[0])
        log.info("state check: %d PVs of this identity, %d adopted, %d exports rebuilt, %d not servable (%.2fs)",
                 mine, len(report.adopted), len(report.rebuilt), len(report.problems), time.monotonic() - began)
        return report

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
        self.records.write(new_record(pv_name=name, claim=claim, identity=self.identity, path=path,
                                      root_squash=bool(squash), adopted=True))
        report.adopted.append(name)
        log.info("volume %s: adopted (made before volume records): claim %s/%s uid %s, path %s, from its export "
                 "and PV", name, claim_ref.get("namespace", ""), claim_ref.get("name", ""), claim_ref.get("uid"),
                 path)

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
        wanted = _int(_ann(pv).get(prov.ANN_EXPORT_ID))
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


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None
