"""Inside User-Mode Linux: the whole appliance with XFS project quotas.

Run by tests/test_quota_e2e.py as ``python -m tests.uml_appliance_quota``
inside UML (the only place with a quota-capable kernel). It starts its own
control plane (hack/cluster), the appliance with --enable-xfs-quota on a
prjquota XFS, then does what a user does: a 2Mi claim, NFSv3 writes through
Ganesha stopped at 2 MiB, expansion to 4Mi, more writes, delete. Each step's
outcome goes to a JSON file the host-side test reads.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
import traceback
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
MiB = 1024 * 1024


class Flow:
    def __init__(self, *, xfs: Path, work: Path) -> None:
        self.xfs, self.work = xfs, work
        # On UML's tmpfs: etcd's bbolt needs mmap and locks that hostfs does not give.
        self.state = Path(os.environ.get("TMPDIR", "/run/tmp")) / "cluster"
        self.kubeconfig = self.state / "kubeconfig"
        self.export = xfs / "export"
        self.log = work / "appliance.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.results: dict[str, Any] = {}

    def sh(self, *argv: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        r = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout,
                           env={**os.environ, "KUBECONFIG": str(self.kubeconfig)})
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
        self.sh(str(REPO / "hack" / "cluster"), "up", "--state-dir", str(self.state), timeout=300)
        self.export.mkdir(parents=True, exist_ok=True)
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "nfs_provisioner", f"--kubeconfig={self.kubeconfig}",
                 "--provisioner=example.com/nfs", f"--export-root={self.export}", "--enable-xfs-quota",
                 "--nfsv3=true", "--grace-period=0", "--server-hostname=127.0.0.1",
                 "--metrics-address=127.0.0.1:9090", "--log-level=DEBUG"],
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)

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
        return "control plane and appliance up"

    def claim(self) -> dict[str, str]:
        self.kubectl("apply", "-f", "-", stdin="""
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata: {name: quota-nfs}
provisioner: example.com/nfs
allowVolumeExpansion: true
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: nfs, namespace: default}
spec:
  storageClassName: quota-nfs
  accessModes: [ReadWriteMany]
  resources: {requests: {storage: 2Mi}}
""")
        self.until(lambda: self.kubectl("get", "pvc", "nfs", "-o", "jsonpath={.status.phase}") == "Bound",
                   "claim Bound")
        pv = self.kubectl("get", "pvc", "nfs", "-o", "jsonpath={.spec.volumeName}")
        ann = json.loads(self.kubectl("get", "pv", pv, "-o", "jsonpath={.metadata.annotations}"))
        path = self.kubectl("get", "pv", pv, "-o", "jsonpath={.spec.nfs.path}")
        assert ann.get("Project_Id"), ann
        return {"pv": pv, "path": path, "project": ann["Project_Id"]}

    def nfs_put(self, size: int, path: str, name: str) -> subprocess.CompletedProcess[str]:
        src = self.work / f"src-{size}"
        if not src.exists():
            src.write_bytes(os.urandom(size))
        return self.sh("nfs-cp", str(src), f"nfs://127.0.0.1{path}/{name}", check=False)

    def usage(self, directory: str) -> int:
        return sum(f.stat().st_blocks * 512 for f in Path(directory).iterdir() if f.is_file())

    def report(self, project: str) -> str:
        return self.sh("xfs_quota", "-x", "-D", "/dev/null", "-c", "report -p -b -n", str(self.xfs)).stdout

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
        self.sh(str(REPO / "hack" / "cluster"), "down", "--state-dir", str(self.state), check=False)
        for log in (self.state / "logs").glob("*.log"):
            (self.work / f"cluster-{log.name}").write_bytes(log.read_bytes()[-200_000:])


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--xfs", type=Path, required=True)
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--results", type=Path, required=True)
    args = parser.parse_args()
    flow = Flow(xfs=args.xfs, work=args.work)
    try:
        flow.step("start", flow.start)
        vol = flow.step("claim_2Mi_bound_with_a_project", flow.claim)

        def within_limit() -> dict[str, Any]:
            first = flow.nfs_put(MiB + MiB // 2, vol["path"], "a")
            assert first.returncode == 0, first.stderr
            second = flow.nfs_put(MiB + MiB // 2, vol["path"], "b")
            used = flow.usage(vol["path"])
            assert second.returncode != 0, f"a 3 MiB total was written into a 2Mi volume ({used} bytes used)"
            assert used <= 2 * MiB, used
            return {"used": used, "second_write_error": second.stderr.strip()[-200:]}
        flow.step("writes_stop_at_2MiB", within_limit)

        def expand() -> dict[str, Any]:
            flow.kubectl("patch", "pvc", "nfs", "-p", '{"spec":{"resources":{"requests":{"storage":"4Mi"}}}}')
            flow.until(lambda: flow.kubectl("get", "pvc", "nfs", "-o", "jsonpath={.status.capacity.storage}")
                       == "4Mi", "claim capacity 4Mi")
            third = flow.nfs_put(MiB + MiB // 2, vol["path"], "c")
            assert third.returncode == 0, third.stderr
            used = flow.usage(vol["path"])
            assert used > 2 * MiB, used
            fourth = flow.nfs_put(MiB + MiB // 2, vol["path"], "d")
            used = flow.usage(vol["path"])
            assert fourth.returncode != 0 and used <= 4 * MiB, (fourth.returncode, used)
            pv_cap = flow.kubectl("get", "pv", vol["pv"], "-o", "jsonpath={.spec.capacity.storage}")
            assert pv_cap == "4Mi", pv_cap
            with urllib.request.urlopen("http://127.0.0.1:9090/metrics", timeout=5) as r:
                metrics = r.read().decode()
            limit = [ln for ln in metrics.splitlines()
                     if ln.startswith("nfs_provisioner_volume_quota_limit_bytes{") and vol["pv"] in ln]
            used_m = [ln for ln in metrics.splitlines()
                      if ln.startswith("nfs_provisioner_volume_quota_used_bytes{") and vol["pv"] in ln]
            assert limit and float(limit[0].rsplit(" ", 1)[1]) == 4 * MiB, limit
            assert used_m and 2 * MiB < float(used_m[0].rsplit(" ", 1)[1]) <= 4 * MiB, used_m
            return {"used": used, "metrics": limit + used_m}
        flow.step("expansion_to_4Mi_allows_4MiB", expand)

        def delete() -> str:
            flow.kubectl("delete", "pvc", "nfs")
            flow.until(lambda: flow.sh("kubectl", "get", "pv", vol["pv"], check=False).returncode != 0,
                       "PV deleted")
            assert not Path(vol["path"]).exists()
            projects = (flow.export / "projects").read_text() if (flow.export / "projects").exists() else ""
            assert f"{vol['project']}:" not in projects, projects
            report = flow.report(vol["project"])
            assert f"#{vol['project']} " not in report, report
            return "directory, projects line and kernel limit gone"
        flow.step("delete_removes_the_project", delete)
    except BaseException:  # noqa: BLE001 - recorded in the results; stop and report below
        traceback.print_exc()
    finally:
        flow.stop()
        args.results.write_text(json.dumps(flow.results, indent=2, default=str))
    return 0 if flow.results and all(r["ok"] for r in flow.results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
