"""Real XFS project quotas inside User-Mode Linux (the host kernel has none).

One UML boot per module runs every check of tests/support/uml_quota_checks.py against a
fresh prjquota XFS image (and a second XFS without quotas); each check is
reported here as its own test, failing with the check's traceback and log."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.support import uml, uml_quota_checks

pytestmark = [pytest.mark.quota, pytest.mark.uml]

XFS_MOUNT = "/run/xfs"
PLAIN_MOUNT = "/run/plain"


@pytest.fixture(scope="module")
def inner_results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    work = tmp_path_factory.mktemp("uml-quota")
    disks = [
        uml.Disk(image=uml.make_xfs_image(work / "quota.img", size_mb=128), mount_point=XFS_MOUNT),
        uml.Disk(image=uml.make_xfs_image(work / "plain.img"), mount_point=PLAIN_MOUNT, options="noquota"),
    ]
    results_file = work / "results.json"
    result = uml.run(
        [sys.executable, "-m", "tests.support.uml_quota_checks", "--xfs", XFS_MOUNT, "--plain", PLAIN_MOUNT,
         "--results", str(results_file)],
        workdir=work,
        disks=disks,
        timeout=300,
    )
    print(f"UML run took {result.seconds:.1f}s, exit code {result.returncode}\n{result.output}")
    if not results_file.exists():
        result.check()  # fails with the inner output and console
        raise AssertionError(f"no results file although the command exited 0:\n{result.output}")
    results: dict[str, Any] = json.loads(results_file.read_text())
    return results


@pytest.mark.parametrize("name", list(uml_quota_checks.CHECKS))
def test_inside_uml(name: str, inner_results: dict[str, Any]) -> None:
    assert name in inner_results, f"check {name} did not run"
    r = inner_results[name]
    if not r["ok"]:
        pytest.fail(f"{name} failed inside UML after {r['seconds']}s:\n{r['detail']}", pytrace=False)


def test_uml_harness_reports_inner_failures(tmp_path: Path) -> None:
    """The harness itself: an inner failure is seen on the host with its output,
    the host outside the work directory is read-only inside, a disk that cannot
    be mounted is reported as a setup failure, and a run that does not finish
    is killed and reported as such."""
    outside = tmp_path / "outside-the-workdir"  # under /tmp: UML's own tmpfs there, never the host's
    in_repo = uml.REPO / f".uml-write-probe-{tmp_path.name}"
    script = f"echo from-inside; touch {outside}; touch {in_repo} || echo read-only-repo; exit 3"
    failed = uml.run(["sh", "-c", script], workdir=tmp_path / "fail", timeout=60)
    assert failed.returncode == 3 and "from-inside" in failed.output
    assert "read-only-repo" in failed.output, f"the host's / was writable inside UML: {failed.output}"
    assert not outside.exists() and not in_repo.exists(), "a write inside UML reached the host outside the workdir"
    with pytest.raises(AssertionError, match=r"(?s)exited with 3.*from-inside"):
        failed.check()
    blank = tmp_path / "blank.img"
    blank.write_bytes(bytes(1024 * 1024))  # no filesystem: the init script cannot mount it
    setup = uml.run(["true"], workdir=tmp_path / "setup", disks=[uml.Disk(image=blank, mount_point="/run/x")])
    assert setup.returncode == uml.SETUP_FAILED and "uml init: mount /dev/ubda on /run/x" in setup.output
    hung = uml.run(["sleep", "600"], workdir=tmp_path / "hang", timeout=5)
    assert hung.returncode is None and hung.seconds < 30
    with pytest.raises(AssertionError, match="exited with None"):
        hung.check()
