"""Run the real appliance (``python -m nfs_provisioner``) as a child process
against the local control plane, serving NFSv4 on a free loopback port.

Every process started here is stopped by PID in ``close()``."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from tests.ganesha_env import Client, free_port


class Appliance:
    def __init__(self, *, kubeconfig: Path, export_root: Path, provisioner: str, log_dir: Path,
                 extra: list[str] | None = None) -> None:
        self.kubeconfig, self.export_root, self.provisioner = kubeconfig, export_root, provisioner
        self.log_dir = log_dir
        self.nfs_port = free_port()
        self.metrics_port = free_port()
        self.extra = extra or []
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def argv(self) -> list[str]:
        return [sys.executable, "-m", "nfs_provisioner", f"--kubeconfig={self.kubeconfig}",
                f"--provisioner={self.provisioner}", f"--export-root={self.export_root}",
                "--nfs-bind-address=127.0.0.1", f"--nfs-port={self.nfs_port}", "--nfsv3=false",
                "--grace-period=0", "--server-hostname=127.0.0.1",
                f"--metrics-address=127.0.0.1:{self.metrics_port}", "--log-level=DEBUG", *self.extra]

    @property
    def log_file(self) -> Path:
        return self.log_dir / f"appliance-{self.starts}.log"

    def start(self, *, wait_ready: bool = True) -> None:
        self.starts += 1
        with self.log_file.open("wb") as out:
            self.proc = subprocess.Popen(self.argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
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
        return self.log_file.read_text(errors="replace")[-6000:]

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

    def client(self) -> Client:
        return Client(port=self.nfs_port)

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.stop()
        if self.proc is not None:
            # Ganesha and its bus run in the appliance's session; never leave one behind.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
