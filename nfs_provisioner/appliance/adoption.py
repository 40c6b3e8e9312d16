"""Adoption at start of the volumes the Go nfs-provisioner made on this export root (docs/adoption.md).

Runs once per start, after NFS-Ganesha loaded this appliance's own exports and the PVs are listed, before the
state check (``appliance.recovery``). A PV is the Go provisioner's when it is provisioned by one of our names
(``--provisioner``), carries ``EXPORT_block`` and not this appliance's ``nfs-provisioner.io/on-delete``
(``golayout.is_go_volume``). Its ``Provisioner_Id`` must be the identity on disk (the same
``nfs-provisioner.identity`` file both read); one of another identity whose path lies in this export root is
refused, one elsewhere is someone else's and ignored.

A PV is adopted when its annotations, the matching block of ``vfs.conf`` and its directory agree
(``golayout.check``, then: a ``claimRef`` uid, a real directory at ``<export root>/<pv name>``, its Export_Id
not served here under another name nor claimed by another PV, its quota project the ``projects`` file's when
quotas are on). Adopting writes the volume record (``adopted``, deletion policy ``delete``: what the Go
provisioner's delete did) and then the export with the same Export_Id, Filesystem_Id and squash; a crash
between the two leaves a record without an export, which the next start finishes here (and
``recovery`` would rebuild otherwise): every volume is adopted once. Anything else is refused: one WARNING line
and one ``AdoptionRefused`` Warning event on the PV, nothing written; ``recovery`` then counts a Bound one as
not served (``/readyz``).

Nothing of the Go layout is rewritten: once a volume is adopted (now or at an earlier start) ``vfs.conf`` is
renamed to ``vfs.conf.go-nfs-provisioner`` (never over an existing file: ``.1``, ``.2``, ...), where later starts
read it, so an operator can rename it back and start the Go provisioner again.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Gauge

from nfs_provisioner import fileio
from nfs_provisioner.appliance import golayout
from nfs_provisioner.appliance import provisioner as prov
from nfs_provisioner.kube import objects
from nfs_provisioner.kube.objects import Object
from nfs_provisioner.quota.errors import QuotaError
from nfs_provisioner.quota.manager import ProjectQuotas
from nfs_provisioner.quota.projects import ProjectEntry
from nfs_provisioner.volumes.directories import DirectoryError, validate_name
from nfs_provisioner.volumes.params import OnDelete
from nfs_provisioner.volumes.records import RecordError, VolumeRecords, new_record

log = logging.getLogger(__name__)

REASON = "AdoptionRefused"
"""The reason of the Warning event on a PV that is not adopted."""
PROVISIONED_BY = (objects.ANN_PROVISIONED_BY, objects.ANN_BETA_PROVISIONED_BY)
ON_DELETE: OnDelete = "delete"
"""The deletion policy recorded for an adopted volume: what the Go provisioner's Delete did (``os.RemoveAll``
of the directory). Kubernetes asks for it only for a PV whose reclaim policy is Delete."""

class Events(Protocol):
    def event(self, obj: Object, event_type: str, reason: str, message: str) -> None: ...


@dataclass
class Report:
    adopted: list[str] = field(default_factory=list)
    """Adopted at this start."""
    earlier: list[str] = field(default_factory=list)
    """Adopted at an earlier start (their record and export exist)."""
    refused: dict[str, str] = field(default_factory=dict)
    """PV name -> why it is not adopted."""
    seconds: float = 0.0
    kept: Path | None = None
    """Where ``vfs.conf`` is kept (None: not renamed at this start)."""

    def summary(self) -> str:
        return (f"Go nfs-provisioner volumes: {len(self.adopted) + len(self.earlier)} adopted "
                f"({len(self.adopted)} at this start), {len(self.refused)} refused")

    def annotate(self, ready: tuple[bool, str]) -> tuple[bool, str]:
        """``/readyz``'s answer with the adoption's counts appended (when there was anything to adopt)."""
        if not (self.adopted or self.earlier or self.refused):
            return ready
        return ready[0], f"{ready[1]}; {self.summary()}"


@dataclass(frozen=True)
class Adoption:
    root: Path
    identity: str
    names: frozenset[str]
    records: VolumeRecords
    exporter: prov.Exporter
    events: Events
    quotas: ProjectQuotas | None = None
    registry: CollectorRegistry | None = None

    def run(self, volumes: Iterable[Object]) -> Report:
        report = Report()
        began = time.monotonic()
        pvs = [pv for pv in volumes if self._provisioned_here(pv) and golayout.is_go_volume(pv)]
        if pvs:
            config, config_error = self._config()
            ids = _ids_in_use(self.exporter)
            quota = self._projects()
            wanted: dict[int, list[str]] = {}
            todo: list[tuple[Object, golayout.Candidate]] = []
            for pv in sorted(pvs, key=_name):
                verdict = self._check(pv, config, config_error, ids, quota, report)
                if isinstance(verdict, str):
                    self._refuse(pv, verdict, report)
                elif verdict is not None:
                    todo.append((pv, verdict))
                    wanted.setdefault(verdict.export.export_id, []).append(_name(pv))
            for pv, cand in todo:
                claims = wanted[cand.export.export_id]
                if len(claims) > 1:
                    self._refuse(pv, f"Export_Id {cand.export.export_id} is claimed by PVs {', '.join(claims[:4])}",
                                 report)
                    continue
                self._adopt(pv, cand, report)
            if report.adopted or report.earlier:
                report.kept = self._keep_config()
            self._reserve(pvs, report)
        report.seconds = time.monotonic() - began
        if pvs:
            log.info("%s (%.2fs)%s", report.summary(), report.seconds,
                     f"; {golayout.VFS_CONF} kept as {report.kept}" if report.kept else "")
        self._metrics(report)
        return report

    # --- deciding ----------------------------------------------------------------------------------------------

    def _provisioned_here(self, pv: Object) -> bool:
        ann = golayout.annotations_of(pv)
        return any(ann.get(a) in self.names for a in PROVISIONED_BY)

    def _check(self, pv: Object, config: golayout.GoConfig | None, config_error: str | None,
               ids: Mapping[int, str] | None, quota: list[ProjectEntry] | str | None,
               report: Report) -> golayout.Candidate | str | None:
        """A candidate to adopt (its record may exist already: a start cut short before its export); None:
        nothing to do (adopted earlier, or not ours to judge); a string: why it is refused."""
        name = _name(pv)
        ann = golayout.annotations_of(pv)
        owner = ann.get(objects.ANN_IDENTITY, "")
        if owner != self.identity:
            if golayout.inside(golayout.nfs_path(pv), self.root):
                return (f"its {objects.ANN_IDENTITY} {owner[:60]!r} is not this export root's identity "
                        f"{self.identity} (nfs-provisioner.identity)")
            return None  # another instance's volume elsewhere
        try:
            validate_name(name)
        except DirectoryError as e:
            return str(e)
        if ids is None:
            return "the Go provisioner's volumes are adopted only with NFS-Ganesha (--use-ganesha=true)"
        try:
            record = self.records.read(name)
        except RecordError as e:
            return f"its volume record is unusable: {e}"
        if record is not None and not record.adopted:
            return None  # this appliance's own volume: the state check's
        if self.exporter.has(name):
            if record is not None:
                report.earlier.append(name)
            return None  # without a record: made by this appliance before it kept records (the state check's)
        verdict = golayout.check(pv, root=self.root, config=config, config_error=config_error)
        if isinstance(verdict, str):
            return verdict
        path = self.root / name
        claim_uid = str(((pv.get("spec") or {}).get("claimRef") or {}).get("uid") or "")
        if not claim_uid:
            return "it has no spec.claimRef.uid"
        if record is not None and (why := record.mismatch(pv_name=name, claim_uid=claim_uid, identity=self.identity,
                                                          path=str(path))) is not None:
            return f"its volume record disagrees: {why}"
        if (problem := _directory_problem(path)) is not None:
            return problem
        holder = ids.get(verdict.export.export_id)
        if holder is not None and holder != name:
            return f"Export_Id {verdict.export.export_id} is taken: this appliance serves it as {holder}"
        if isinstance(quota, str):
            return quota
        if quota is not None and (problem := golayout.quota_problem(verdict.project_id, quota, path)) is not None:
            return problem
        return verdict

    def _projects(self) -> list[ProjectEntry] | str | None:
        """The ``projects`` file's lines (read once per start), why it cannot be read, or None: quotas are off."""
        if self.quotas is None:
            return None
        try:
            return self.quotas.recorded()
        except QuotaError as e:
            return f"the projects file cannot be read: {e}"

    def _config(self) -> tuple[golayout.GoConfig | None, str | None]:
        """The Go provisioner's ``vfs.conf`` (or the copy kept at an earlier start), parsed."""
        path = self.root / golayout.VFS_CONF
        if not os.path.lexists(path):
            kept = [self.root / n for n in golayout.kept_names() if os.path.lexists(self.root / n)]
            if not kept:
                return None, f"neither {path} nor a kept copy ({golayout.VFS_CONF}{golayout.KEPT_SUFFIX}) exists"
            path = kept[-1]  # the newest copy
        try:
            text = fileio.read_text_limited(path, golayout.MAX_CONFIG_BYTES, follow_symlinks=False)
            return golayout.go_blocks(text), None
        except (fileio.Refused, UnicodeDecodeError, golayout.ConfigError) as e:
            return None, f"{path}: {e}"
        except OSError as e:
            return None, f"{path}: {e.strerror}"

    # --- acting ------------------------------------------------------------------------------------------------

    def _refuse(self, pv: Object, why: str, report: Report) -> None:
        name = _name(pv)
        report.refused[name] = why
        log.warning("volume %s: not adopted from the Go nfs-provisioner: %s; its PV, export block and directory are "
                    "left as they are", name, why)
        meta = pv.get("metadata") or {}
        self.events.event({"apiVersion": "v1", "kind": "PersistentVolume", "metadata": meta}, "Warning", REASON,
                          f"not adopted from the Go nfs-provisioner: {why}; nothing was changed")

    def _adopt(self, pv: Object, cand: golayout.Candidate, report: Report) -> None:
        name = _name(pv)
        path = self.root / name
        root_squash, export_id = cand.export.root_squash, cand.export.export_id
        wrote = False
        try:
            if self.records.read(name) is None:  # else written by a start cut short before the export
                claim_ref = (pv.get("spec") or {}).get("claimRef") or {}
                claim = {"metadata": {k: claim_ref.get(k, "") for k in ("uid", "namespace", "name")}}
                self.records.write(new_record(pv_name=name, claim=claim, identity=self.identity, path=path,
                                              root_squash=root_squash, on_delete=ON_DELETE, adopted=True))
                wrote = True
            got, _ = self.exporter.export(name=name, path=path, root_squash=root_squash, export_id=export_id)
            if got != export_id:
                self.exporter.unexport(name)
                raise RuntimeError(f"Export_Id {export_id} is taken (NFS-Ganesha serves it for another export)")
        except Exception as e:  # noqa: BLE001 - one volume never stops the start; it is refused, undone
            if wrote:
                with contextlib.suppress(OSError):
                    self.records.remove(name)
            self._refuse(pv, f"adopting it failed: {e}", report)
            return
        report.adopted.append(name)
        policy = str((pv.get("spec") or {}).get("persistentVolumeReclaimPolicy") or "")
        log.info("volume %s: adopted from the Go nfs-provisioner: Export_Id %d, %s, path %s, claim %s, reclaim policy "
                 "%s (%s)", name, export_id, "root_id_squash" if root_squash else "no_root_squash", path, _claim(pv),
                 policy or "none", f"deleting its claim deletes {path}" if policy == "Delete" else
                 "its directory stays when its claim is deleted")

    def _reserve(self, pvs: list[Object], report: Report) -> None:
        """Keep the Export_Ids of the refused volumes free: adopted at a later start (once fixed), they get theirs,
        and their clients' handles stay valid."""
        wanted = []
        for pv in pvs:
            raw = golayout.annotations_of(pv).get(objects.ANN_EXPORT_ID, "")
            if _name(pv) in report.refused and raw.isdigit() and len(raw) <= 5:
                wanted.append(int(raw))
        reserve: Callable[[list[int]], list[int]] | None = getattr(self.exporter, "reserve_ids", None)
        if wanted and reserve is not None and (done := reserve(sorted(set(wanted)))):
            log.info("Export_Ids %s of volumes not adopted are kept free for them (new volumes take others)",
                     ",".join(map(str, done)))

    def _keep_config(self) -> Path | None:
        """Rename ``vfs.conf`` to the first free kept name (link + unlink: never over an existing file)."""
        src = self.root / golayout.VFS_CONF
        try:
            if not stat.S_ISREG(os.lstat(src).st_mode):
                return None
        except FileNotFoundError:
            return None
        for n in golayout.kept_names():
            dst = self.root / n
            try:
                os.link(src, dst, follow_symlinks=False)
            except FileExistsError:
                continue
            except OSError as e:
                log.warning("cannot keep %s as %s: %s; it stays where it is", src, dst, e.strerror)
                return None
            os.unlink(src)
            fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            return dst
        log.warning("cannot keep %s: every kept name is taken; it stays where it is", src)
        return None

    def _metrics(self, report: Report) -> None:
        if self.registry is None:
            return
        gauge = Gauge("go_volumes", "Volumes of the Go nfs-provisioner found at start, by result (adopted: now or at "
                      "an earlier start; refused: at this start)", ["result"], namespace="nfs_provisioner",
                      registry=self.registry)
        gauge.labels("adopted").set(len(report.adopted) + len(report.earlier))
        gauge.labels("refused").set(len(report.refused))
        Gauge("go_adoption_seconds", "Seconds the adoption of the Go nfs-provisioner's volumes took at start",
              namespace="nfs_provisioner", registry=self.registry).set(report.seconds)


def adopt(*, volumes: Callable[[], Iterable[Object]], **kwargs: Any) -> Report:
    """Adopt what can be adopted (see the module docstring); the report says what was and what was not."""
    return Adoption(**kwargs).run(volumes())


def _ids_in_use(exporter: prov.Exporter) -> dict[int, str] | None:
    """Export_Id -> export name of every export of this appliance (None: an exporter without ids, the kernel's)."""
    ids: Callable[[], dict[int, str]] | None = getattr(exporter, "export_ids", None)
    return None if ids is None else ids()


def _directory_problem(path: Path) -> str | None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return f"its directory {path} is missing"
    except OSError as e:
        return f"its directory {path} cannot be looked at: {e.strerror}"
    if stat.S_ISLNK(st.st_mode):
        return f"{path} is a symlink, not a directory; never followed"
    if not stat.S_ISDIR(st.st_mode):
        return f"{path} is not a directory"
    return None


def _name(pv: Object) -> str:
    return str((pv.get("metadata") or {}).get("name") or "")


def _claim(pv: Object) -> str:
    ref = (pv.get("spec") or {}).get("claimRef") or {}
    return f"{ref.get('namespace', '')}/{ref.get('name', '')} uid {ref.get('uid', '')}"
