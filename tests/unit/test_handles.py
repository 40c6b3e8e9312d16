"""The start-up check that Ganesha's VFS backend can work on the export root: file handles are made
(name_to_handle_at) and opened (open_by_handle_at, CAP_DAC_READ_SEARCH). Real syscalls, each failure
one line naming its cause; the seccomp case is in tests/container/test_container.py (a real runtime profile)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from nfs_provisioner.volumes import containment
from tests.support.paths import REPO

pytestmark = pytest.mark.unit


def test_a_filesystem_without_handles_is_named() -> None:
    line = containment.handle_problem(Path("/proc"))
    assert line is not None and "\n" not in line
    assert "name_to_handle_at(2) on export root /proc failed (EOPNOTSUPP)" in line and "(proc)" in line


def test_without_dac_read_search_the_capability_is_named(tmp_path: Path) -> None:
    code = ("import sys; from pathlib import Path; from nfs_provisioner.volumes import containment; "
            "print(containment.handle_problem(Path(sys.argv[1])))")
    r = subprocess.run(["setpriv", "--bounding-set=-dac_read_search", "--inh-caps=-dac_read_search",
                        sys.executable, "-c", code, str(tmp_path)],
                       capture_output=True, text=True, cwd=REPO, timeout=60, check=True)
    assert r.stdout.strip() == (
        f"open_by_handle_at(2) on export root {tmp_path} failed (EPERM): the process lacks CAP_DAC_READ_SEARCH, "
        "which NFS-Ganesha needs to open files by handle; add it (securityContext.capabilities.add: "
        "[DAC_READ_SEARCH], podman/docker --cap-add DAC_READ_SEARCH)")
