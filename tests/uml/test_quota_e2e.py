"""XFS project quotas end to end, inside User-Mode Linux (the only quota-capable
kernel here): control plane + appliance + Ganesha + libnfs all run in one UML
boot; each step of tests/support/uml_appliance_quota.py is reported as its own test."""

from __future__ import annotations

import json
import sys
from typing import Any

import pytest

from tests.support import uml

pytestmark = [pytest.mark.quota, pytest.mark.e2e, pytest.mark.uml]

STEPS = ("start", "claim_2Mi_bound_with_a_project", "writes_stop_at_2MiB", "expansion_to_4Mi_allows_4MiB",
         "clone_has_its_own_project_and_shares_blocks", "delete_removes_the_project")
XFS_MOUNT = "/run/xfs"


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    work = tmp_path_factory.mktemp("uml-appliance")
    disk = uml.Disk(image=uml.make_xfs_image(work / "export.img", size_mb=300), mount_point=XFS_MOUNT)
    out = work / "results.json"
    result = uml.run([sys.executable, "-m", "tests.support.uml_appliance_quota", "--xfs", XFS_MOUNT,
                      "--work", str(work), "--results", str(out)], workdir=work, disks=[disk], mem_mb=2048, timeout=600,
                     env={"NFSP_CACHE_DIR": str(uml.CACHE)})  # the control-plane binaries, built on the host
    print(f"UML run took {result.seconds:.1f}s, exit code {result.returncode}\n{result.output[-5000:]}")
    if not out.exists():
        result.check()
        raise AssertionError(f"no results although the run exited 0:\n{result.output[-5000:]}")
    data: dict[str, Any] = json.loads(out.read_text())
    data["_output"] = result.output[-5000:]
    return data


@pytest.mark.parametrize("step", STEPS)
def test_step(step: str, results: dict[str, Any]) -> None:
    assert step in results, f"step {step} did not run:\n{results['_output']}"
    r = results[step]
    if not r["ok"]:
        pytest.fail(f"{step} failed inside UML after {r['seconds']}s:\n{r['detail']}", pytrace=False)
