"""`make demo`'s script does what the README says, on its own state directories."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import psutil
import pytest

from tests.support.paths import REPO

pytestmark = [pytest.mark.e2e, pytest.mark.kube, pytest.mark.ganesha]


def test_demo_runs_the_whole_flow_and_tears_down(tmp_path: Path) -> None:
    env = {**os.environ, "NFSP_CLUSTER_DIR": str(tmp_path / "cluster"), "NFSP_DEMO_DIR": str(tmp_path / "demo")}
    r = subprocess.run([str(REPO / "hack" / "demo"), "--down"], cwd=REPO, env=env, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    out = r.stdout
    for expected in ("persistentvolumeclaim/nfs   Bound", "copied ", "hello from make demo",
                     "ProvisioningSucceeded", ": gone", "no longer served", "Tearing down"):
        assert expected in out, out
    # Nothing it started is left: no appliance, Ganesha, bus or control-plane process under its directories.
    leftovers = [p.info for p in psutil.process_iter(["pid", "cmdline"])
                 if any(str(tmp_path) in arg for arg in (p.info["cmdline"] or []))]
    assert leftovers == []
