"""Volume assets on a real directory tree: parameters, identity, directories.

Hostile names and planted symlinks must never make anything outside the
volume's own directory change; the tests snapshot the whole tree around them."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from nfs_provisioner.volumes.directories import VolumeDirectories

pytestmark = pytest.mark.unit


@pytest.mark.root  # chown to the class's gid
def test_create_sets_mode_and_group(tmp_path: Path) -> None:
    dirs = VolumeDirectories(tmp_path)
    p = dirs.create("pvc-1", gid=None)
    assert p == tmp_path / "pvc-1"
    assert stat.S_IMODE(p.stat().st_mode) == 0o2777
    gid = os.getgid() + 4242
    q = dirs.create("pvc-2", gid=gid)
    assert stat.S_IMODE(q.stat().st_mode) == 0o2071
    assert q.stat().st_gid == gid
    assert dirs.create("pvc-1", gid=None) == p  # re-create after a crash adopts it
