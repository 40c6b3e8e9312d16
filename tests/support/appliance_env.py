"""Run the real appliance (``python -m nfs_provisioner``) as a child process
against the local control plane, serving NFSv4 on a free loopback port.

Every process started here is stopped by PID in ``close()``."""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.ganesha_env import Client, free_port


@dataclass
class InCluster:
    """Run the appliance as a pod would see it: KUBERNETES_SERVICE_HOST/PORT and the service-account
    token + CA under /var/run/secrets/kubernetes.io/serviceaccount. Those fixed paths are provided in
    a private mount namespace (a tmpfs over /run), so nothing on the host is touched."""

    api_url: str
    token: str
    ca_file: Path
    workdir: Path
    env: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        host, port = self.api_url.removeprefix("https://").rsplit(":", 1)
        self.env = {"KUBERNETES_SERVICE_HOST": host, "KUBERNETES_SERVICE_PORT": port, **self.env}
        (self.workdir / "token").write_text(self.token)
        (self.workdir / "ca.crt").write_bytes(self.ca_file.read_bytes())

    def wrap(self, argv: list[str]) -> list[str]:
        sa = "/run/secrets/kubernetes.io/serviceaccount"
        script = (f"mount -t tmpfs tmpfs /run && mkdir -p {sa} && cp {self.workdir}/token {self.workdir}/ca.crt {sa}/"
                  f" && exec {shlex.join(argv)}")
        return ["unshare", "--mount", "--propagation", "private", "sh", "-c", script]


class Appliance:
    def __init__(self, *, kubeconfig: Path | None, export_root: Path, provisioner: str, log_dir: Path,
                 extra: list[str] | None = None, in_cluster: InCluster | None = None,
                 wrapper: Callable[[list[str]], list[str]] | None = None, env: dict[str, str] | None = None) -> None:
        """``kubeconfig=None`` with ``in_cluster``: run with in-cluster credentials (see InCluster)."""
        self.kubeconfig, self.export_root, self.provisioner = kubeconfig, export_root, provisioner
        self.in_cluster = in_cluster
        self.wrapper = wrapper
        """Turns the appliance's argv into the command actually run (e.g. inside a mount namespace)."""
        self.env = env or {}
        self.log_dir = log_dir
        self.nfs_port = free_port()
        self.metrics_port = free_port()
        self.extra = extra or []
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def argv(self) -> list[str]:
        where = ([f"--kubeconfig={self.kubeconfig}", "--server-hostname=127.0.0.1"] if self.in_cluster is None
                 else [])
        argv = [sys.executable, "-m", "nfs_provisioner", *where,
                f"--provisioner={self.provisioner}", f"--export-root={self.export_root}",
                "--nfs-bind-address=127.0.0.1", f"--nfs-port={self.nfs_port}", "--nfsv3=false",
                "--grace-period=0", f"--metrics-address=127.0.0.1:{self.metrics_port}", "--log-level=DEBUG",
                *self.extra]
        argv = argv if self.in_cluster is None else self.in_cluster.wrap(argv)
        return argv if self.wrapper is None else self.wrapper(argv)

    @property
    def log_file(self) -> Path:
        return self.log_dir / f"appliance-{self.starts}.log"

    def start(self, *, wait_ready: bool = True) -> None:
        self.starts += 1
        env = {**os.environ, **(self.in_cluster.env if self.in_cluster else {}), **self.env}
        with self.log_file.open("wb") as out:
            self.proc = subprocess.Popen(self.argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                         env=env)
        if wait_ready:
            self.wait_ready()

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}{path}", timeout=5) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"appliance exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if self.get("/readyz")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"appliance not ready within {timeout}s:\n{self.log()}")

    def log(self) -> str:
        """The log's last 6000 characters, for failure messages; search :meth:`text`."""
        return self.log_file.read_text(errors="replace")[-6000:]

    def text(self) -> str:
        """The whole log of the current run (a line searched for in :meth:`log` can scroll out of it)."""
        return self.log_file.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        os.kill(self.proc.pid, sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            raise AssertionError(f"appliance ignored signal {sig} for {timeout}s:\n{self.log()}") from None

    def kill(self) -> None:
        """SIGKILL the appliance and everything it started, as a pod's death would."""
        import psutil

        assert self.proc is not None
        children = [p.pid for p in psutil.Process(self.proc.pid).children(recursive=True)]
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def leftovers(self) -> list[int]:
        """PIDs the appliance logged as started (Ganesha, its bus, helpers) that still run."""
        import psutil

        pids = []
        for i in range(1, self.starts + 1):
            log = self.log_dir / f"appliance-{i}.log"
            text = log.read_text(errors="replace") if log.exists() else ""
            pids += [int(p) for p in re.findall(r"started \S+ .*\(pid (\d+)\)", text)]
        return [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]

    def client(self) -> Client:
        return Client(port=self.nfs_port)

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.stop()
        if self.proc is not None:
            # Ganesha and its bus run in the appliance's session; never leave one behind.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)


def ganesha_pid(a: Appliance) -> int:
    """The PID of the Ganesha the appliance started last, from its log."""
    # "started [<loader> --library-path <libs> ]<...>ganesha.nfsd -F ... (pid N)"
    pids = re.findall(r"started \S*?(?: --library-path \S+ \S+)?ganesha\.nfsd -F .* \(pid (\d+)\)",
                      a.log_file.read_text(errors="replace"))
    assert pids, a.log()
    return int(pids[-1])
