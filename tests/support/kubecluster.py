"""Test-side handle on a hack/cluster control plane: start, stop, kubectl."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from tests.support.paths import REPO

HACK_CLUSTER = REPO / "hack" / "cluster"


class Cluster:
    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir

    @property
    def kubeconfig(self) -> Path:
        return self.state_dir / "kubeconfig"

    @property
    def api_url(self) -> str:
        ports = json.loads((self.state_dir / "ports.json").read_text())
        return f"https://127.0.0.1:{ports['apiserver']}"

    @property
    def ca_file(self) -> Path:
        return self.state_dir / "pki" / "ca.crt"

    def hack(
        self, *args: str, env: dict[str, str] | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        r = subprocess.run([str(HACK_CLUSTER), *args, "--state-dir", str(self.state_dir)],
                           capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=3600)
        if check and r.returncode != 0:
            raise RuntimeError(f"hack/cluster {' '.join(args)} failed ({r.returncode}):\n{r.stderr}")
        return r

    def up(self) -> None:
        self.hack("up")

    def down(self) -> None:
        self.hack("down", check=False)

    def up_node(self) -> None:
        """kube-scheduler and a kubelet node (containerd, kube-proxy) in a network namespace of its own;
        tests/kubenode.Node.load(cluster) is then its handle."""
        self.hack("up", "--node")

    def down_node(self) -> subprocess.CompletedProcess[str]:
        return self.hack("down", "--node")

    def node_running(self) -> bool:
        r = self.hack("status", check=False)
        return (self.state_dir / "node" / "node.json").exists() and r.returncode == 0

    def pids(self) -> dict[str, int]:
        out = {}
        for f in (self.state_dir / "pids").glob("*.pid"):
            out[f.stem] = int(f.read_text())
        return out

    def kubectl(self, *args: str, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
        r = subprocess.run(["kubectl", f"--kubeconfig={self.kubeconfig}", *args], input=input,
                           capture_output=True, text=True, timeout=120)
        if check and r.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(args)} failed ({r.returncode}):\n{r.stderr}")
        return r
