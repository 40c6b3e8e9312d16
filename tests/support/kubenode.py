"""Test-side handle on the local cluster's kubelet node (hack/cluster up --node).

The node's address and its pods' addresses exist only inside the node's network
namespace: every request to them goes through ``Node.ns`` (nsenter --net). Sent
from the host's namespace it would leave the machine by the default route."""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support import kubecluster


@dataclass(frozen=True)
class Node:
    name: str
    netns: Path  # /run/netns/<name>
    ip: str  # the node's InternalIP (inside netns only)
    pod_cidr: str
    kubeconfig: Path  # the cluster's admin kubeconfig
    containerd_socket: Path
    ctr: Path
    state_dir: Path  # the cluster's state dir (pids/, node/record.json)

    @classmethod
    def load(cls, cluster: kubecluster.Cluster) -> Node:
        info = json.loads((cluster.state_dir / "node" / "node.json").read_text())
        return cls(name=info["name"], netns=Path(info["netns"]), ip=info["ip"], pod_cidr=info["pod_cidr"],
                   kubeconfig=Path(info["kubeconfig"]), containerd_socket=Path(info["containerd_socket"]),
                   ctr=Path(info["ctr"]), state_dir=cluster.state_dir)

    @property
    def pause_image(self) -> str:
        """The locally built pause image (also an HTTP server with -http ADDR, a client with -get URL)."""
        return str(json.loads((self.state_dir / "node" / "node.json").read_text())["pause_image"])

    def ns(self, argv: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
        """Run argv inside the node's network namespace (and only its network namespace)."""
        kw.setdefault("capture_output", True)
        kw.setdefault("timeout", 60)
        return subprocess.run(["nsenter", f"--net={self.netns}", "--", *argv], text=True, **kw)

    def http_get(self, url: str, *, timeout: float = 5) -> str:
        """GET url from inside the namespace; the body (raises on a non-2xx answer or no answer)."""
        # Everything is local to the namespace: a connection not made within 1 s will not be (a
        # ClusterIP before kube-proxy has its rules would wait 3 s for ARP on the node's veth).
        r = self.ns(["curl", "-fsS", "--connect-timeout", "1", "-m", str(timeout), url])
        if r.returncode != 0:
            raise AssertionError(f"curl {url} inside {self.netns} failed ({r.returncode}): {r.stderr.strip()}")
        return r.stdout

    def import_image(self, podman_global_args: list[str], ref: str) -> None:
        """podman <global args> save <ref> | ctr -n k8s.io images import - (then pods may use ref)."""
        podman = shutil.which("podman")
        if podman is None:
            raise AssertionError("podman is not installed (hack/install-deps installs it)")
        save = subprocess.Popen([podman, *podman_global_args, "save", ref], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)
        assert save.stdout is not None
        imp = subprocess.run([str(self.ctr), "--address", str(self.containerd_socket), "-n", "k8s.io", "images",
                              "import", "-"], stdin=save.stdout, capture_output=True, text=True, timeout=600)
        save.stdout.close()
        err = save.stderr.read().decode() if save.stderr else ""
        if save.wait(timeout=600) != 0:
            raise AssertionError(f"podman save {ref} failed: {err}")
        if imp.returncode != 0:
            raise AssertionError(f"ctr images import of {ref} failed: {imp.stderr}")
