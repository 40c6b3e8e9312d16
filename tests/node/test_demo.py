"""`make demo`'s script does what the README says, on its own state directories."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import psutil
import pytest

from tests.support.paths import REPO

pytestmark = [pytest.mark.e2e, pytest.mark.kube, pytest.mark.ganesha]


@pytest.mark.node
@pytest.mark.container
def test_demo_in_cluster_runs_the_quick_start_in_a_pod_and_tears_down() -> None:
    # A short state directory: containerd's socket lives in it (108-byte unix socket paths).
    tmp_path = Path(tempfile.mkdtemp(prefix="nfsp-demo-", dir="/tmp"))
    try:
        run_in_cluster_demo(tmp_path)
    finally:
        mounted = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()
                   if line.split()[4].startswith(f"{tmp_path}/")]
        assert not mounted, f"left mounted after the demo's teardown: {mounted}"
        shutil.rmtree(tmp_path, ignore_errors=True)  # nothing mounted below it: only the demo's own files


def run_in_cluster_demo(tmp_path: Path) -> None:
    env = {**os.environ, "NFSP_CLUSTER_DIR": str(tmp_path / "cluster")}
    r = subprocess.run([str(REPO / "hack" / "demo"), "--in-cluster", "--down"], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=1200)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    out = r.stdout
    for expected in ("pod/nfs-provisioner created", "pod/nfs-provisioner condition met",
                     "persistentvolumeclaim/nfs   Bound", "(the pod's address)", "mountd", "Export list for",
                     "copied ", "read back: hello from the in-cluster demo", "deleted", "Done in"):
        assert expected in out, out
    assert "stopped kubelet" in r.stderr, r.stderr[-3000:]
    leftovers = [p.info for p in psutil.process_iter(["pid", "cmdline"])
                 if any(str(tmp_path) in arg for arg in (p.info["cmdline"] or []))]
    assert leftovers == []
