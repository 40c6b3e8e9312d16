from __future__ import annotations

import subprocess
import sys

import pytest

import nfs_provisioner

pytestmark = pytest.mark.unit


def test_version_from_python_module() -> None:
    r = subprocess.run([sys.executable, "-m", "nfs_provisioner", "--version"], capture_output=True, text=True)
    assert r.returncode == 0
    assert r.stdout.strip() == f"nfs-provisioner {nfs_provisioner.__version__}"
