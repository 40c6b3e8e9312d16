"""Clones on real XFS inside User-Mode Linux: with ``reflink=1`` a 64 MiB clone shares its blocks (df grows
well under 1 MiB) and writes to it leave the source alone; with ``reflink=0`` the same copy is a full one;
with project quotas on source and clone (as the appliance makes them) blocks are still shared."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.support import uml

pytestmark = [pytest.mark.uml, pytest.mark.quota]


def xfs_image(path: Path, *, size_mb: int, reflink: bool) -> Path:
    with path.open("wb") as f:
        f.truncate(size_mb << 20)
    env = {**os.environ, "TEST_DIR": "1", "TEST_DEV": "1", "QA_CHECK_FS": "1"}
    subprocess.run(["mkfs.xfs", "-q", "-m", f"reflink={int(reflink)}", str(path)], env=env, check=True,
                   capture_output=True)
    return path


def run_inside(work: Path, size_mb: int) -> dict[str, Any]:
    disk_mb = max(512, size_mb * 3)
    disks = [uml.Disk(image=xfs_image(work / "reflink.img", size_mb=disk_mb, reflink=True), mount_point="/run/rl",
                      options="defaults"),
             uml.Disk(image=xfs_image(work / "plain.img", size_mb=disk_mb, reflink=False), mount_point="/run/pl",
                      options="defaults"),
             uml.Disk(image=xfs_image(work / "quota.img", size_mb=disk_mb, reflink=True), mount_point="/run/pq")]
    results = work / "results.json"
    r = uml.run([sys.executable, "-m", "tests.support.uml_clone_checks", "--reflink", "/run/rl", "--plain", "/run/pl",
                 "--results", str(results), "--size-mb", str(size_mb), "--quota", "/run/pq"],
                workdir=work, disks=disks, timeout=600)
    print(f"UML run took {r.seconds:.1f}s\n{r.output}")
    if not results.exists():
        r.check()
    out: dict[str, Any] = json.loads(results.read_text())
    return out


def test_reflink_clone_shares_blocks_and_a_plain_xfs_gets_a_full_copy(tmp_path: Path) -> None:
    results = run_inside(tmp_path, 64)
    for name in ("reflink", "plain", "quota"):
        assert results[name]["ok"], f"{name} inside UML:\n{results[name].get('detail')}"
    assert results["reflink"]["grown_bytes"] < 1 << 20
    assert results["plain"]["grown_bytes"] >= 64 << 20
    # Across project quotas (the appliance's layout) blocks are still shared, and the clone's project is
    # charged for all of them: a clone's quota must hold the source's usage (request >= source capacity).
    q = results["quota"]
    assert q["reflinked"] == q["files"] == 4 and q["grown_bytes"] < 1 << 20 and q["clone_project_bytes"] >= 64 << 20
    print(f"64 MiB clone: reflink {results['reflink']['seconds']} s (+{results['reflink']['grown_bytes']} bytes), "
          f"full copy {results['plain']['seconds']} s (+{results['plain']['grown_bytes']} bytes), across project "
          f"quotas {results['quota']}")
