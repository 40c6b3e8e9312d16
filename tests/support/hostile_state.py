"""What tests/{e2e,ganesha,unit}/test_hostile_state.py share (one module per lane: the tests of one module
needed different things)."""

from __future__ import annotations

import resource
from pathlib import Path
from typing import Any

GiB = 1 << 30


def sparse(path: Path, size: int) -> Path:
    """A sparse file of ``size`` bytes (costs nothing on disk): what a forging client can plant."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.truncate(size)
    return path


def max_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def pv(name: str, *, root: Path, identity: str, phase: str = "Bound") -> dict[str, Any]:
    """A PV of this appliance as the API server holds it (plain data, as the informer's cache gives it)."""
    return {"metadata": {"name": name, "annotations": {"pv.kubernetes.io/provisioned-by": "example.com/nfs",
                                                       "Provisioner_Id": identity}},
            "spec": {"nfs": {"server": "127.0.0.1", "path": str(root / name)},
                     "claimRef": {"namespace": "ns", "name": "claim", "uid": name[4:]}},
            "status": {"phase": phase}}
