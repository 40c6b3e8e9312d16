"""Grace that ends when reclaim is done (issue 24): NFSv3 with or without NLM, and the lease that paces it.

Ganesha (9.14 as 6.2: ``nfs_try_lift_grace`` in SAL/nfs4_recovery.c) ends a grace period early only when NLM is
off, and then once every client recorded in the recovery backend has sent RECLAIM_COMPLETE; its reaper thread
checks that every ``min(10, Lease_Lifetime / 2)`` seconds. With NLM on it waits for the whole period. The
kernel client's view of it is measured in tests/support/uml_kclient.py (step ``grace_and_lock_reclaim``)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.support import kubecluster
from tests.support.helm_env import CHART, Helm


def workload_args(cluster: kubecluster.Cluster, namespace: str, name: str) -> list[str]:
    sts = json.loads(cluster.kubectl("get", "statefulset", name, "-n", namespace, "-o", "json").stdout)
    (c,) = [c for c in sts["spec"]["template"]["spec"]["containers"] if c["name"] == "nfs-provisioner"]
    return list(c["args"])


@pytest.mark.helm
@pytest.mark.kube
def test_helm_upgrade_keeps_nlm_and_a_new_install_serves_nfsv3_without_it(
        tmp_path: Path, cluster: kubecluster.Cluster, namespace: str) -> None:
    """``nfsv3Locking`` unset: a new install runs --nfsv3-locking=false; an upgrade keeps what the release's
    workload runs with, and a release made by a chart before the value (no such argument) keeps NLM. Installed
    without waiting (no node needed: only the StatefulSet's arguments are read)."""
    helm = Helm(tmp_path, kubeconfig=cluster.kubeconfig)
    old = tmp_path / "old-chart"
    shutil.copytree(CHART, old)
    pod = old / "templates" / "_pod.tpl"
    pod.write_text("".join(line for line in pod.read_text().splitlines(keepends=True)
                           if "--nfsv3-locking" not in line))  # the chart as it was before the value
    releases = {"before": old, "fresh": CHART}
    try:
        for release, chart in releases.items():
            helm("install", release, str(chart), "-n", namespace)
        assert not [a for a in workload_args(cluster, namespace, "before-nfs-provisioner") if "locking" in a]
        assert "--nfsv3-locking=false" in workload_args(cluster, namespace, "fresh-nfs-provisioner")
        for release in releases:
            helm("upgrade", release, str(CHART), "-n", namespace, "--set", "gracePeriod=60")
        before = workload_args(cluster, namespace, "before-nfs-provisioner")
        assert "--nfsv3-locking=true" in before and "--grace-period=60" in before, "the upgrade dropped NLM"
        assert "--nfsv3-locking=false" in workload_args(cluster, namespace, "fresh-nfs-provisioner")
        helm("upgrade", "before", str(CHART), "-n", namespace, "--reuse-values", "--set", "nfsv3Locking=false")
        assert "--nfsv3-locking=false" in workload_args(cluster, namespace, "before-nfs-provisioner")
    finally:
        for release in releases:
            helm("uninstall", release, "-n", namespace, check=False)
