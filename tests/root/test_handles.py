"""The start-up check that Ganesha's VFS backend can work on the export root: file handles are made
(name_to_handle_at) and opened (open_by_handle_at, CAP_DAC_READ_SEARCH). Real syscalls, each failure
one line naming its cause; the seccomp case is in tests/container/test_container.py (a real runtime profile)."""

from __future__ import annotations

from pathlib import Path

import pytest

from nfs_provisioner.volumes import containment

pytestmark = pytest.mark.unit


@pytest.mark.root  # open_by_handle_at: CAP_DAC_READ_SEARCH
def test_a_directory_with_handles_passes(tmp_path: Path) -> None:
    assert containment.handle_problem(tmp_path) is None
