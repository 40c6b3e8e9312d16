"""--run-server=false: the appliance drives a Ganesha that runs elsewhere (here
the standalone manager, as a sidecar would) over that server's D-Bus, sharing
the export root."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from kubernetes import client

from tests.support import kubecluster, wait
from tests.support.appliance_env import Appliance
from tests.support.builders import NFS41, make_claim, make_class
from tests.support.ganesha_env import Client, free_port
from tests.support.health_checks import check_health_follows_a_stopped_ganesha

pytestmark = [pytest.mark.e2e, pytest.mark.kube, pytest.mark.ganesha]


def test_appliance_with_an_external_ganesha(cluster: kubecluster.Cluster, core: client.CoreV1Api,
                                            storage: client.StorageV1Api, namespace: str, unique: str,
                                            tmp_path: Path) -> None:
    export = tmp_path / "export"
    export.mkdir()
    run_dir = Path(tempfile.mkdtemp(prefix="nfsp-ext-"))  # short: the bus socket path
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "nfs_provisioner.ganesha", f"--export-root={export}", f"--run-dir={run_dir}",
         f"--nfs-port={port}", "--bind-addr=127.0.0.1", "--grace-period=0"],
        stdout=subprocess.PIPE, stderr=(tmp_path / "ganesha-runner.log").open("wb"), text=True,
        start_new_session=True)
    a = Appliance(kubeconfig=cluster.kubeconfig, export_root=export, provisioner=f"example.com/ext-{unique}",
                  log_dir=tmp_path, extra=["--run-server=false"],
                  env={"DBUS_SYSTEM_BUS_ADDRESS": f"unix:path={run_dir / 'dbus.sock'}"})
    cls = f"ext-{unique}"
    try:
        assert server.stdout is not None
        ready = json.loads(server.stdout.readline())
        assert ready["ready"] is True, ready
        make_class(cls, a.provisioner, mount_options=NFS41, api=storage)
        a.start()
        make_claim(namespace, "nfs", cls, api=core)
        wait.until(lambda: core.read_namespaced_persistent_volume_claim("nfs", namespace).status.phase == "Bound",
                   timeout=60, what=lambda: f"claim Bound\n{a.log()}")
        pv = core.read_persistent_volume(core.read_namespaced_persistent_volume_claim("nfs", namespace)
                                         .spec.volume_name)
        nfs = Client(port=port)
        data = os.urandom(1000)
        assert nfs.put(data, f"{pv.spec.nfs.path}/f").returncode == 0
        assert nfs.cat(f"{pv.spec.nfs.path}/f").stdout == data
        check_health_follows_a_stopped_ganesha(a, int(ready["pids"]["ganesha.nfsd"]))  # the external one
        core.delete_namespaced_persistent_volume_claim("nfs", namespace)
        wait.until(lambda: not core.list_persistent_volume(field_selector=f"metadata.name={pv.metadata.name}").items,
                   timeout=60, what="PV deleted")
        assert nfs.ls(pv.spec.nfs.path).returncode != 0
        assert a.stop() == 0
        assert server.poll() is None, "the external server must keep running when the appliance stops"
    finally:
        a.close()
        if server.poll() is None:
            os.kill(server.pid, signal.SIGTERM)
            server.wait(60)
        storage.delete_storage_class(cls)
