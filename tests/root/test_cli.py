"""The command line: flags, environment variables, defaults, and one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit


@pytest.mark.root  # the appliance's start checks open_by_handle_at: CAP_DAC_READ_SEARCH
def test_glog_flags_do_not_stop_the_appliance(tmp_path: Path) -> None:
    """Before: exit 2 (unrecognized arguments). Now one warning line each, then the usual start-up (which stops
    here with exit 1 at the missing kubeconfig)."""
    r = subprocess.run([sys.executable, "-m", "nfs_provisioner", "-v=4", "-logtostderr", "-alsologtostderr",
                        "-stderrthreshold=INFO", "-log_dir=/tmp", "--log-json", f"--kubeconfig={tmp_path / 'none'}",
                        f"--export-root={tmp_path}", "--metrics-address="], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1, r.stderr
    logged = [json.loads(line) for line in r.stderr.splitlines()]  # --log-json: every line, the error's too
    glog = [e for e in logged if "glog flag" in e["msg"]]
    assert len(glog) == 5 and {e["level"] for e in glog} == {"warning"}
    assert logged[-1]["level"] == "error" and logged[-1]["msg"].startswith("cannot load Kubernetes credentials")
