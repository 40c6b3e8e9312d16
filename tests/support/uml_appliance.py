"""Inside User-Mode Linux: the control plane and the whole appliance in one boot.

The flows that need a kernel the host lacks (XFS project quotas, the kernel NFS
client) run as ``python -m tests.uml_<flow>`` inside UML (tests/support/uml.py) and use
:class:`Flow` to start hack/cluster and the appliance there, to act as a user
(kubectl, waiting, each step's outcome recorded) and to stop everything; the
host-side test reads the recorded results.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import traceback
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from tests.support.paths import REPO

MiB = 1024 * 1024


class Flow:
    """The control plane and the appliance inside one UML boot, plus what a user does with them.

    ``flags`` are the appliance's own (export root, kubeconfig, provisioner, server address and
    metrics address are given here); each step's outcome is recorded for the host-side test."""

    def __init__(self, *, xfs: Path, work: Path, flags: Sequence[str] = ()) -> None:
        self.xfs, self.work = xfs, work
        self.flags = list(flags)
        # On UML's tmpfs: etcd's bbolt needs mmap and locks that hostfs does not give.
        self.state = Path(os.environ.get("TMPDIR", "/run/tmp")) / "cluster"
        self.kubeconfig = self.state / "kubeconfig"
        self.export = xfs / "export"
        self.log = work / "appliance.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.results: dict[str, Any] = {}

    def sh(self, *argv: str, check: bool = True, timeout: float = 120,
           env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        r = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout,
                           env={**os.environ, "KUBECONFIG": str(self.kubeconfig), **(env or {})})
        if check and r.returncode != 0:
            raise AssertionError(f"{' '.join(argv)} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
        return r

    def kubectl(self, *args: str, stdin: str | None = None) -> str:
        r = subprocess.run(["kubectl", *args], input=stdin, capture_output=True, text=True, timeout=60,
                           env={**os.environ, "KUBECONFIG": str(self.kubeconfig)})
        if r.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed:\n{r.stderr}")
        return r.stdout

    def until(self, fn: Callable[[], bool], what: str, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if fn():
                    return
            except AssertionError:
                pass
            time.sleep(0.3)
        raise AssertionError(f"timed out waiting for {what}; appliance log tail:\n{self.tail()}")

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:] if self.log.exists() else "(no log)"

    def step(self, name: str, fn: Callable[[], Any]) -> Any:
        started = time.monotonic()
        try:
            value = fn()
        except BaseException:
            self.results[name] = {"ok": False, "seconds": round(time.monotonic() - started, 1),
                                  "detail": traceback.format_exc()}
            raise
        self.results[name] = {"ok": True, "seconds": round(time.monotonic() - started, 1), "detail": value}
        return value

    # ------------------------------------------------------------------ steps

    def start(self) -> str:
        # Inside UML the control plane starts several times slower than on the host (hack/cluster's waits x4).
        self.sh(str(REPO / "hack" / "cluster"), "up", "--state-dir", str(self.state), timeout=600,
                env={"NFSP_CLUSTER_TIMEOUT_SCALE": "4"})
        self.start_appliance()
        return "control plane and appliance up"

    def start_appliance(self, *, extra: Sequence[str] = (), wait: bool = True) -> None:
        self.export.mkdir(parents=True, exist_ok=True)
        self.starts += 1
        with self.log.open("ab") as out:
            out.write(f"\n===== start {self.starts} =====\n".encode())
            out.flush()
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "nfs_provisioner", f"--kubeconfig={self.kubeconfig}",
                 "--provisioner=example.com/nfs", f"--export-root={self.export}", "--server-hostname=127.0.0.1",
                 "--metrics-address=127.0.0.1:9090", "--log-level=DEBUG", *self.flags, *extra],
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        if wait:
            self.wait_ready()

    def wait_ready(self) -> None:
        def ready() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise SystemExit(f"appliance exited {self.proc.returncode}:\n{self.tail()}")
            try:
                with urllib.request.urlopen("http://127.0.0.1:9090/readyz", timeout=2) as r:
                    return bool(r.status == 200)
            except OSError:
                return False
        self.until(ready, "the appliance to be ready", timeout=120)

    def stop_appliance(self, sig: int = signal.SIGTERM) -> None:
        """Stop the appliance with ``sig``; SIGKILL also kills what it started (as a pod's death would)."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        if sig == signal.SIGKILL:  # a pod's death: the appliance and everything it started
            import psutil

            tree = [proc.pid, *(c.pid for c in psutil.Process(proc.pid).children(recursive=True))]
            for pid in tree:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        else:
            proc.send_signal(sig)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    def stop(self) -> None:
        self.stop_appliance()
        self.sh(str(REPO / "hack" / "cluster"), "down", "--state-dir", str(self.state), check=False)
        for log in (self.state / "logs").glob("*.log"):
            (self.work / f"cluster-{log.name}").write_bytes(log.read_bytes()[-200_000:])

    def metrics(self) -> str:
        with urllib.request.urlopen("http://127.0.0.1:9090/metrics", timeout=5) as r:
            return str(r.read().decode())

    def write_results(self, path: Path) -> int:
        path.write_text(json.dumps(self.results, indent=2, default=str))
        return 0 if self.results and all(r["ok"] for r in self.results.values()) else 1
