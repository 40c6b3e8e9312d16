"""Inside User-Mode Linux: the whole appliance with XFS project quotas.

Run by tests/uml/test_quota_e2e.py as ``python -m tests.support.uml_appliance_quota``
inside UML (the only place with a quota-capable kernel). It starts its own
control plane (hack/cluster), the appliance with --enable-xfs-quota on a
prjquota XFS, then does what a user does: a 2Mi claim, NFSv3 writes through
Ganesha stopped at 2 MiB, expansion to 4Mi, more writes, a clone (its own
project and limit, blocks shared), delete. Each step's
outcome goes to a JSON file the host-side test reads.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import traceback
import urllib.request
from pathlib import Path
from typing import Any

from tests.support import uml_appliance
from tests.support.uml_appliance import MiB

QUOTA_FLAGS = ("--enable-xfs-quota", "--nfsv3=true", "--grace-period=0")


class Flow(uml_appliance.Flow):
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


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--xfs", type=Path, required=True)
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--results", type=Path, required=True)
    args = parser.parse_args()
    flow = Flow(xfs=args.xfs, work=args.work, flags=QUOTA_FLAGS)
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

        def clone() -> dict[str, Any]:
            files = {f.name: f.read_bytes() for f in Path(vol["path"]).iterdir() if f.is_file()}
            st = os.statvfs(flow.xfs)
            used_before = (st.f_blocks - st.f_bfree) * st.f_frsize
            flow.kubectl("apply", "-f", "-", stdin="""
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: nfs-copy, namespace: default}
spec:
  storageClassName: quota-nfs
  accessModes: [ReadWriteMany]
  resources: {requests: {storage: 4Mi}}
  dataSource: {kind: PersistentVolumeClaim, name: nfs}
""")
            flow.until(lambda: flow.kubectl("get", "pvc", "nfs-copy", "-o", "jsonpath={.status.phase}") == "Bound",
                       "clone Bound")
            pv = flow.kubectl("get", "pvc", "nfs-copy", "-o", "jsonpath={.spec.volumeName}")
            ann = json.loads(flow.kubectl("get", "pv", pv, "-o", "jsonpath={.metadata.annotations}"))
            path = flow.kubectl("get", "pv", pv, "-o", "jsonpath={.spec.nfs.path}")
            assert ann.get("Project_Id") and ann["Project_Id"] != vol["project"], (ann, vol)
            copied = {f.name: f.read_bytes() for f in Path(path).iterdir() if f.is_file()}
            assert copied == files, (sorted(copied), sorted(files))
            st = os.statvfs(flow.xfs)
            grown = (st.f_blocks - st.f_bfree) * st.f_frsize - used_before
            assert grown < MiB, f"the clone of {sum(map(len, files.values()))} bytes used {grown} bytes more"
            report = flow.report(ann["Project_Id"])
            line = [ln for ln in report.splitlines() if ln.startswith(f"#{ann['Project_Id']} ")]
            assert line and int(line[0].split()[1]) * 1024 >= sum(map(len, files.values())) // 2, report
            # Its own 4Mi limit: the source's ~3 MiB are charged to it, 1.5 MiB more do not fit.
            more = flow.nfs_put(MiB + MiB // 2, path, "more")
            assert more.returncode != 0, "1.5 MiB more fitted into a 4Mi clone holding 3 MiB"
            flow.kubectl("delete", "pvc", "nfs-copy")
            flow.until(lambda: flow.sh("kubectl", "get", "pv", pv, check=False).returncode != 0, "clone PV deleted")
            assert not Path(path).exists()
            assert {f.name: f.read_bytes() for f in Path(vol["path"]).iterdir() if f.is_file()} == files
            return {"grown_bytes": grown, "clone_project": line[0]}
        flow.step("clone_has_its_own_project_and_shares_blocks", clone)

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
    return flow.write_results(args.results)


if __name__ == "__main__":
    sys.exit(main())
