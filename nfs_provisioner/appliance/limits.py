"""The process's own resource limits, raised once at start.

A container runtime commonly starts a process with a soft open-files limit of 1024 and a much higher hard
limit (20000 on the project's machines, 1048576 under many runtimes). The appliance holds a descriptor per
watch, per API connection, per metrics client, per file it copies, and its children get their own limits
(``ganesha.processes``): it raises its soft limit to the hard one, as Ganesha does for itself.
"""

from __future__ import annotations

import logging
import resource
from pathlib import Path

log = logging.getLogger(__name__)

NR_OPEN = Path("/proc/sys/fs/nr_open")
"""The kernel's ceiling for RLIMIT_NOFILE, the target when the hard limit is unlimited."""


def raise_open_files(*, nr_open: Path = NR_OPEN) -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE to the hard limit; one INFO line saying old -> new (or why not).

    Returns (old, new) soft limits. Never lowers it, never fails: a limit it cannot raise is logged."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard
    if hard == resource.RLIM_INFINITY:
        try:
            target = int(nr_open.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            target = 1 << 20
    if soft != resource.RLIM_INFINITY and soft >= target:
        log.info("open files limit: %d (the hard limit)", soft)
        return soft, soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (OSError, ValueError) as e:
        log.warning("open files limit: cannot raise %d to the hard limit %d: %s", soft, target, e)
        return soft, soft
    log.info("open files limit raised: %d -> %d (the hard limit)", soft, target)
    return soft, target
