"""The start-up check: is the export root on XFS with enforced project quotas?

Reads ``/proc/self/mountinfo`` (path injectable), finds the mount containing
the export root (the longest mount point that is a prefix of its resolved path;
the last such line wins when mounts are stacked) and checks its filesystem type
and *super* options, where XFS shows ``prjquota`` (or ``pquota``) when project
quotas are enforced and ``pqnoenforce`` when they are only accounted.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from nfs_provisioner.quota import commands, errors

MOUNTINFO = Path("/proc/self/mountinfo")
PROJECT_QUOTA_OPTIONS = frozenset({"prjquota", "pquota"})

_OCTAL = re.compile(r"\\([0-7]{3})")


@dataclass(frozen=True)
class MountEntry:
    """One line of mountinfo (see proc(5))."""

    mount_id: int
    parent_id: int
    device: str
    root: str
    mount_point: Path
    mount_options: tuple[str, ...]
    fstype: str
    source: str
    super_options: tuple[str, ...]


@dataclass(frozen=True)
class QuotaFilesystem:
    """The result of a passed start-up check."""

    export_root: Path
    mount: MountEntry
    block_size: int
    xfs_quota_version: str

    @property
    def mount_point(self) -> Path:
        return self.mount.mount_point


def _unescape(field: str) -> str:
    return _OCTAL.sub(lambda m: chr(int(m.group(1), 8)), field)


def parse_mountinfo(text: str) -> list[MountEntry]:
    """Parse mountinfo text; malformed lines raise ``QuotaStateError``."""
    entries = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split(" ")
        try:
            sep = fields.index("-", 6)
            fstype, source, super_opts = fields[sep + 1 : sep + 4]
            entries.append(
                MountEntry(
                    mount_id=int(fields[0]),
                    parent_id=int(fields[1]),
                    device=fields[2],
                    root=_unescape(fields[3]),
                    mount_point=Path(_unescape(fields[4])),
                    mount_options=tuple(fields[5].split(",")),
                    fstype=fstype,
                    source=_unescape(source),
                    super_options=tuple(super_opts.split(",")),
                )
            )
        except (ValueError, IndexError) as e:
            raise errors.QuotaStateError(f"mountinfo line {number} is not understood: {line!r}") from e
    return entries


def find_mount(entries: Sequence[MountEntry], path: Path) -> MountEntry:
    """The mount that contains ``path`` (an absolute, already resolved path)."""
    best: MountEntry | None = None
    for entry in entries:
        contains = path == entry.mount_point or entry.mount_point in path.parents
        if contains and (best is None or len(entry.mount_point.parts) >= len(best.mount_point.parts)):
            best = entry
    if best is None:
        raise errors.QuotaStateError(f"no mount in mountinfo contains {path}")
    return best


def check_mount(mount: MountEntry, *, export_root: Path) -> None:
    """Raise a ``QuotaUnavailableError`` subclass unless ``mount`` enforces XFS project quotas."""
    where = f"export root {export_root} is on {mount.mount_point} ({mount.source}, type {mount.fstype})"
    if mount.fstype != "xfs":
        raise errors.NotXfsError(
            f"XFS quotas need an XFS filesystem, but the {where}; put the export root on XFS "
            "mounted with -o prjquota, or run without --enable-xfs-quota"
        )
    options = set(mount.super_options)
    if options & PROJECT_QUOTA_OPTIONS:
        return
    hint = (
        "project quotas are only accounted (pqnoenforce), not enforced"
        if "pqnoenforce" in options
        else "project quotas are off"
    )
    raise errors.ProjectQuotaOffError(
        f"the {where} but {hint} (mount options: {','.join(mount.super_options)}); "
        f"mount it with -o prjquota (e.g. 'mount -o prjquota {mount.source} {mount.mount_point}' or the "
        "same option in /etc/fstab; XFS cannot turn quotas on by remount), or run without --enable-xfs-quota"
    )


def check_export_root(
    export_root: Path,
    *,
    runner: commands.Runner,
    mountinfo: Path = MOUNTINFO,
) -> QuotaFilesystem:
    """The start-up check: XFS with enforced project quotas, and ``xfs_quota`` runs."""
    if not export_root.is_dir():
        raise errors.QuotaUnavailableError(f"export root {export_root} is not a directory")
    root = export_root.resolve(strict=True)
    try:
        text = mountinfo.read_text()
    except OSError as e:
        raise errors.QuotaUnavailableError(f"cannot read {mountinfo} to check the export root: {e}") from e
    mount = find_mount(parse_mountinfo(text), root)
    check_mount(mount, export_root=root)
    version = commands.XfsQuota(mount_point=mount.mount_point, runner=runner).version()
    return QuotaFilesystem(
        export_root=root, mount=mount, block_size=os.statvfs(root).f_bsize, xfs_quota_version=version
    )
