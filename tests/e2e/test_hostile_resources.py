"""Issue 28, resources an outsider can exhaust: the metrics/health endpoint's connections (D6), the logs a
client that is not even on the client list makes Ganesha write (D7), and what a SIGKILLed appliance leaves
in the temporary directory (D18). Each against the real thing: the endpoint's server, a real Ganesha flooded
with garbage RPC records, the real appliance killed with SIGKILL."""

from __future__ import annotations

import base64
import json
import os
import socket
import time
from pathlib import Path

import pytest
from kubernetes import client

from tests.support import kubecluster, wait
from tests.support.appliance_env import Appliance
from tests.support.builders import NFS41, make_class
from tests.support.hostile_resources import files_containing, get, idle_connections, private_tmp

__all__ = ["private_tmp"]  # the shared fixtures (tests/support/hostile_resources.py)


@pytest.mark.fault
@pytest.mark.e2e
@pytest.mark.kube
@pytest.mark.ganesha
def test_d18_a_sigkilled_appliance_leaves_no_key_and_its_run_dir_goes_at_the_next_start(
        cluster: kubecluster.Cluster, tmp_path: Path, unique: str, private_tmp: Path) -> None:
    kubeconfig = json.loads(cluster.kubeconfig.read_text())
    key = base64.b64decode(kubeconfig["users"][0]["user"]["client-key-data"])
    secret = key.splitlines()[1]
    env = {"TMPDIR": str(private_tmp)}
    first, other = (Appliance(kubeconfig=cluster.kubeconfig, export_root=tmp_path / f"export-{i}",
                              provisioner=f"example.com/d18-{i}-{unique}", log_dir=tmp_path / f"log-{i}", env=env)
                    for i in range(2))
    try:
        for a in (first, other):
            a.log_dir.mkdir()
            a.start()
        def run_dirs_now() -> set[Path]:
            return {p for p in private_tmp.iterdir() if p.name.startswith("nfsp-") and "kubeconfig" not in p.name}

        run_dirs = run_dirs_now()
        assert len(run_dirs) == 2, run_dirs
        assert not files_containing(private_tmp, secret)  # before: nfsp-kubeconfig-*/client-key-*
        first.kill()
        assert not files_containing(private_tmp, secret)
        first.start()  # the next start removes the dead one's run directory, never the other live one's
        now = run_dirs_now()
        assert len(now) == 2 and len(now & run_dirs) == 1, (run_dirs, now)
        assert "no longer running" in first.text()
        assert other.get("/readyz")[0] == 200
    finally:
        for a in (first, other):
            a.close()


@pytest.mark.fault
@pytest.mark.e2e
@pytest.mark.kube
@pytest.mark.ganesha
def test_d6_the_appliance_at_1024_open_files_survives_1100_idle_connections(
        cluster: kubecluster.Cluster, tmp_path: Path, unique: str, core: client.CoreV1Api,
        storage: client.StorageV1Api, namespace: str) -> None:
    a = Appliance(kubeconfig=cluster.kubeconfig, export_root=tmp_path / "export",
                  provisioner=f"example.com/d6-{unique}", log_dir=tmp_path,
                  extra=["--export-subnet=127.0.0.1"],  # not the shared cluster's Nodes, whatever tests made them
                  wrapper=lambda argv: ["prlimit", "--nofile=1024:1024", *argv])
    cls = f"d6-{unique}"
    make_class(cls, a.provisioner, mount_options=NFS41, api=storage)
    socks: list[socket.socket] = []
    try:
        a.start()
        socks = idle_connections(a.metrics_port, 1100)
        time.sleep(2)
        status, _, took = get(a.metrics_port, "/healthz")
        assert status == 200 and took < 1.0, (status, took)
        core.create_namespaced_persistent_volume_claim(namespace, {
            "apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "after"},
            "spec": {"storageClassName": cls, "accessModes": ["ReadWriteMany"],
                     "resources": {"requests": {"storage": "1Mi"}}}})
        wait.until(lambda: core.read_namespaced_persistent_volume_claim("after", namespace).status.phase == "Bound",
                   timeout=60, what=lambda: f"the claim Bound while 1100 connections idle\n{a.log()}")
        assert a.proc is not None
        held = len(os.listdir(f"/proc/{a.proc.pid}/fd"))
        print(f"{len(socks)} idle connections: /healthz in {took * 1000:.0f} ms, the appliance holds {held} fds")
        assert held < 400
        assert "Too many open files" not in a.text()
        status, _, took = get(a.metrics_port, "/healthz")
        assert status == 200 and took < 1.0, (status, took)
    finally:
        for s in socks:
            s.close()
        a.close()
        storage.delete_storage_class(cls)


@pytest.mark.e2e
@pytest.mark.kube
@pytest.mark.ganesha
def test_d6_the_appliance_raises_its_soft_open_files_limit(cluster: kubecluster.Cluster, tmp_path: Path,
                                                           unique: str) -> None:
    a = Appliance(kubeconfig=cluster.kubeconfig, export_root=tmp_path / "export",
                  provisioner=f"example.com/d6r-{unique}", log_dir=tmp_path,
                  wrapper=lambda argv: ["prlimit", "--nofile=1024:8192", *argv])
    try:
        a.start()
        assert a.proc is not None
        limits = Path(f"/proc/{a.proc.pid}/limits").read_text()
        line = next(x for x in limits.splitlines() if x.startswith("Max open files"))
        assert line.split()[3:5] == ["8192", "8192"], line
        assert "open files limit raised: 1024 -> 8192 (the hard limit)" in a.text()
        # A SIGTERM right after /readyz turns 200, before the controller's handler is installed, can be lost
        # (app.py's start-up handler raising inside a weakref callback; the lead is reworking it): not tested here.
        time.sleep(2)
    finally:
        a.close()
