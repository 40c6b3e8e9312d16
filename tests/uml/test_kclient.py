"""The appliance's volumes as pods see them: the Linux kernel NFS client, inside
User-Mode Linux (the host has none). Control plane, appliance and the kernel
client share one UML boot (tests/support/uml_kclient.py); each step is its own test."""

from __future__ import annotations

import json
import sys
from typing import Any

import pytest

from tests.support import uml, uml_kclient

# One UML boot runs every step (control plane, appliance restarts, failover with the 90 s grace period with NLM,
# twice): 10-12 min with 9.14 on 2 cores before the failover cases, ~5 more with them, ~1.5 more for the two steps
# of filesystem volumes (UML makes its syscalls dear), so the first test may wait that long.
pytestmark = [pytest.mark.kclient, pytest.mark.uml, pytest.mark.e2e, pytest.mark.timeout(2100)]

XFS_MOUNT = "/run/xfs"


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    work = tmp_path_factory.mktemp("uml-kclient")
    disk = uml.Disk(image=uml.make_xfs_image(work / "export.img", size_mb=1024), mount_point=XFS_MOUNT)
    out = work / "results.json"
    result = uml.run([sys.executable, "-m", "tests.support.uml_kclient", "--xfs", XFS_MOUNT, "--work", str(work),
                      "--results", str(out)], workdir=work, disks=[disk], mem_mb=2048, timeout=2000,
                     modules=["nfsv4", "nfsv3", "nfsd", "loop"], env={"NFSP_CACHE_DIR": str(uml.CACHE)})
    print(f"UML run took {result.seconds:.1f}s, exit code {result.returncode}\n{result.output[-5000:]}")
    if not out.exists():
        result.check()
        raise AssertionError(f"no results although the run exited 0:\n{result.output[-5000:]}")
    data: dict[str, Any] = json.loads(out.read_text())
    data["_output"] = result.output[-5000:]
    return data


@pytest.mark.parametrize("step", uml_kclient.STEPS)
def test_step(step: str, results: dict[str, Any]) -> None:
    assert step in results, f"step {step} did not run:\n{results['_output']}"
    r = results[step]
    if not r["ok"]:
        pytest.fail(f"{step} failed inside UML after {r['seconds']}s:\n{r['detail']}", pytrace=False)
    if step == "grace_and_lock_reclaim":  # one line per failover case, as docs/appliance.md quotes them
        print("\n".join(r["detail"]["lines"]))
    print(json.dumps(r["detail"], indent=2))


def test_read_plus_through_this_client(results: dict[str, Any]) -> None:
    """NFSv4.2 READ_PLUS: with a client built with it, the vers=4.2 read-back goes over the wire as READ_PLUS;
    the suite's UML kernel may be built without it, and then READ_PLUS cannot be proven here."""
    assert results["classic_flow_as_the_kubelet_mounts_it"]["ok"], "the classic step failed"
    ops = results["classic_flow_as_the_kubelet_mounts_it"]["detail"]["vers=4.2"]["read_ops_on_the_wire"]
    config = uml.kernel_config(uml.kernel())
    if config is None:
        pytest.skip("the UML kernel's build configuration is not at hand: cannot tell whether it has READ_PLUS")
    if config.get("CONFIG_NFS_V4_2_READ_PLUS", "n") == "n":
        # Consistent with a client without it: the read-back used READ.
        assert ops.get("READ", 0) > 0 and ops.get("READ_PLUS", 0) == 0, ops
        pytest.skip(f"READ_PLUS not provable with this client: its kernel has '# CONFIG_NFS_V4_2_READ_PLUS is "
                    f"not set' (the 4.2 read-back went as READ: {ops})")
    assert ops.get("READ_PLUS", 0) > 0, f"a client built with READ_PLUS read a 4.2 mount without it: {ops}"
