"""Parsing ``xfs_quota -x -c 'report -p -b -n -N'`` (pure, no I/O).

Each data line is ``#<id> <used> <soft> <hard> <warn>/<grace> [<grace time>]``
with block counts in KiB; a header (without ``-N``) and blank lines are skipped.
Only projects the kernel has a quota record for appear: a project with no
usage, no inodes and no limits is absent.
"""

from __future__ import annotations

from dataclasses import dataclass

from nfs_provisioner.quota import errors

KIB = 1024


@dataclass(frozen=True)
class ReportEntry:
    """One project as the kernel sees it (bytes; 0 means "no limit")."""

    project_id: int
    used_bytes: int
    soft_limit_bytes: int
    hard_limit_bytes: int


def parse_report(text: str) -> dict[int, ReportEntry]:
    entries: dict[int, ReportEntry] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line.startswith("#"):
            continue  # blank, header ("Project quota on ...", "Project ID", "----")
        fields = line.split()
        try:
            if len(fields) < 4:
                raise ValueError("fewer than 4 fields")
            project_id = int(fields[0][1:])
            used, soft, hard = (int(f) for f in fields[1:4])
        except ValueError as e:
            raise errors.QuotaStateError(f"xfs_quota report line {number} is not understood ({e}): {raw!r}") from e
        entries[project_id] = ReportEntry(
            project_id=project_id, used_bytes=used * KIB, soft_limit_bytes=soft * KIB, hard_limit_bytes=hard * KIB
        )
    return entries
