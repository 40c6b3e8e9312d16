"""Inside User-Mode Linux: the appliance's volumes mounted by the Linux kernel NFS client.

Run by tests/uml/test_kclient.py as ``python -m tests.support.uml_kclient`` inside UML with
the kernel's own nfs, nfsv3 and nfsv4 modules loaded: the control plane, the
appliance (XFS with prjquota as its export root) and the kernel client all run
in one boot, and every volume is mounted the way the kubelet's nfs volume plugin
mounts it: ``mount -t nfs -o <pv.spec.mountOptions> <server>:<path> <dir>``.
Each step records what it measured (errno names, seconds) for the host-side test.
"""

from __future__ import annotations

import argparse
import errno
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import traceback
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests.support import uml_appliance, uml_filesystem_kclient
from tests.support.uml_appliance import REPO, MiB

# The defaults a user runs with (no quotas), NFSv3 on, no grace period; the quota step restarts with quotas on.
FLAGS = ("--nfsv3=true", "--grace-period=0")
STEPS = ("start", "classic_flow_as_the_kubelet_mounts_it", "gid_and_root_squash_as_pods_see_them",
         "volume_boundary_through_the_mount", "mounts_of_dotdot_paths_stay_out_of_the_export_root",
         "restarts_keep_handles_valid",
         "restarts_keep_handles_valid_without_device_fsids",
         "delete_and_archive_while_mounted", "filesystem_volume_df_enospc_and_expansion_through_the_mount",
         "filesystem_volume_forged_handles_from_the_kernel_mount", "grace_and_lock_reclaim",
         "quota_writes_and_df_through_the_mount",
         "kernel_server_mode")
NFS_KERNEL_SERVER = Path(os.environ.get("NFSP_CACHE_DIR", Path.home() / ".cache" / "nfs-provisioner")) / \
    "nfs-kernel-server" / "root" / "usr" / "sbin"
"""exportfs, rpc.nfsd and rpc.mountd, unpacked by hack/install-deps."""
GRACE = 90
"""Seconds of grace in the grace step: the default of --grace-period."""
FAILOVER_CASES = {
    "nfsv4-only": ("--nfsv3=false",),
    "nfsv3-without-nlm": ("--nfsv3=true", "--nfsv3-locking=false"),
    "nfsv3-with-nlm": ("--nfsv3=true", "--nfsv3-locking=true"),
}
"""The ways of serving NFSv3 whose failover the grace step measures (each after SIGKILL and SIGTERM)."""
FAST_CASES = ("nfsv4-only", "nfsv3-without-nlm")
"""Without NLM: grace ends once every recorded client has reclaimed."""
FAST_OPEN = 5.0
"""Seconds from Ganesha serving again to another client's first new open, at most, without NLM."""
USER, OTHER, GROUP = 1000, 1001, 4321
OWN_NAMES = (".ganesha", ".volumes", ".provisioning", ".nfs-provisioner.lock", ".archive")
"""What the export root holds besides volumes: never visible to a client."""
# Holds an fcntl write lock on argv[1] and, per line on stdin, appends a line and reports how long it took.
LOCK_HOLDER = """
import fcntl, os, sys, time
f = open(sys.argv[1], "a+")
fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
print("locked", flush=True)
for line in sys.stdin:
    t = time.monotonic()
    try:
        if line.strip() == "reopen":  # after a lost lock: a new open and lock
            f = open(sys.argv[1], "a+")
            fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        f.write(line)
        f.flush()
        os.fsync(f.fileno())
        print("ok", round(time.monotonic() - t, 2), flush=True)
    except OSError as e:
        print("error", e.errno, round(time.monotonic() - t, 2), flush=True)
"""
# A process whose cwd is inside the mount: per line on stdin, create a file there and list it.
CWD_WORKER = """
import os, sys
for line in sys.stdin:
    try:
        open("cwd-" + line.strip(), "w").write("x")
        print("ok", len(os.listdir(".")), flush=True)
    except OSError as e:
        print("error", e.errno, flush=True)
"""

# What a client process whose cwd is the mount root sees (run in a mount namespace of its own where the
# server's export filesystem is hidden, so whatever it reads of another volume came over NFS).
CLIENT_VIEW = """
import errno, json, os, sys
other_dir, other_abs = sys.argv[1], sys.argv[2]
def attempt(fn):
    try:
        return ["ok", fn()]
    except OSError as e:
        return ["error", errno.errorcode.get(e.errno or 0, str(e.errno))]
def read(path):
    with open(path, "rb") as f:
        return f.read().decode(errors="replace")
files = {}
for top, dirs, names in os.walk("."):
    for n in names:
        files[os.path.join(top, n)] = attempt(lambda p=os.path.join(top, n): read(p)[:200])
print(json.dumps({
    "cwd": os.getcwd(),
    "dotdot_realpath": os.path.realpath(".."),
    "dotdot_on_the_mounts_device": os.stat("..").st_dev != os.stat(".").st_dev,
    "ls_dotdot": sorted(os.listdir("..")),
    "ls_dotdot_dotdot": sorted(os.listdir("../..")),
    "ls_dotdot_dotdot_dotdot": sorted(os.listdir("../../..")),
    "read_dotdot_other": attempt(lambda: read(f"../{other_dir}/b-secret")),
    "read_via_symlink_to_dotdot_other": attempt(lambda: read("to-other/b-secret")),
    "read_via_symlink_to_other_server_path": attempt(lambda: read("to-other-abs/b-secret")),
    "ls_via_symlink_to_slash": attempt(lambda: sorted(os.listdir("to-slash"))),
    "ls_via_symlink_up": attempt(lambda: sorted(os.listdir("to-up"))),
    "client_slash": sorted(os.listdir("/")),
    "client_export_dir": attempt(lambda: sorted(os.listdir(os.path.dirname(other_abs)))),
    "files": files,
}))
"""


def err_name(e: OSError) -> str:
    return errno.errorcode.get(e.errno or 0, str(e.errno))


class Flow(uml_appliance.Flow):
    mounts = Path("/run/mnt")
    daemons: list[subprocess.Popen[bytes]]

    def volume(self, claim: str, namespace: str = "default") -> dict[str, Any]:
        def bound() -> bool:
            return self.kubectl("get", "pvc", claim, "-n", namespace, "-o", "jsonpath={.status.phase}") == "Bound"
        self.until(bound, f"claim {claim} Bound")
        pv_name = self.kubectl("get", "pvc", claim, "-n", namespace, "-o", "jsonpath={.spec.volumeName}")
        pv: dict[str, Any] = json.loads(self.kubectl("get", "pv", pv_name, "-o", "json"))
        return pv

    @contextmanager
    def mounted(self, pv: dict[str, Any], options: list[str] | None = None) -> Iterator[Path]:
        """Mount as the kubelet does (PV's mountOptions unless ``options``), unmount afterwards."""
        nfs = pv["spec"]["nfs"]
        opts = pv["spec"].get("mountOptions", []) if options is None else options
        target = self.mounts / f"{pv['metadata']['name']}-{len(list(self.mounts.glob('*')))}"
        target.mkdir(parents=True)
        argv = ["mount", "-t", "nfs", *(["-o", ",".join(opts)] if opts else []), f"{nfs['server']}:{nfs['path']}",
                str(target)]
        self.sh(*argv, timeout=60)
        try:
            yield target
        finally:
            r = self.sh("umount", str(target), check=False, timeout=60)
            if r.returncode != 0:
                self.sh("umount", "-l", str(target), check=False)

    def as_user(self, uid: int, groups: list[int], *argv: str) -> subprocess.CompletedProcess[str]:
        g = ",".join(map(str, groups)) if groups else "-"
        prefix = ["setpriv", f"--reuid={uid}", f"--regid={groups[0] if groups else uid}"]
        prefix += [f"--groups={g}"] if groups else ["--clear-groups"]
        return self.sh(*prefix, *argv, check=False)

    def class_and_claim(self, name: str, *, params: dict[str, str] | None = None, size: str = "1Mi",
                        expand: bool = False, reclaim: str = "Delete") -> dict[str, Any]:
        doc = {"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass", "metadata": {"name": name},
               "provisioner": "example.com/nfs", "mountOptions": ["vers=4.1"], "reclaimPolicy": reclaim,
               "allowVolumeExpansion": expand, "parameters": params or {}}
        claim = {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                 "metadata": {"name": name, "namespace": "default"},
                 "spec": {"storageClassName": name, "accessModes": ["ReadWriteMany"],
                          "resources": {"requests": {"storage": size}}}}
        self.kubectl("apply", "-f", "-", stdin=json.dumps({"apiVersion": "v1", "kind": "List", "items": [doc, claim]}))
        return self.volume(name)

    # ------------------------------------------------------------------ steps

    def classic(self) -> dict[str, Any]:
        kube_config = REPO / "deploy" / "kube-config"
        self.kubectl("apply", "-f", str(kube_config / "class.yaml"), "-f", str(kube_config / "claim.yaml"),
                     "-n", "default")
        pv = self.volume("nfs")
        server_dir = Path(pv["spec"]["nfs"]["path"])
        seen: dict[str, Any] = {"mountOptions": pv["spec"].get("mountOptions")}
        for label, options in (("pv", None), ("vers=3", ["vers=3"]), ("vers=4.2", ["vers=4.2"])):
            started = time.monotonic()
            with self.mounted(pv, options) as mnt:
                mount_s = time.monotonic() - started
                data = os.urandom(MiB + 12345)
                name = f"big-{label}"
                with open(mnt / name, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
                Path("/proc/sys/vm/drop_caches").write_text("3\n")  # the read-back goes over the wire
                assert (mnt / name).read_bytes() == data, "read back through the mount differs"
                reads = self.op_counts(mnt, ("READ", "READ_PLUS"))
                assert reads.get("READ", 0) + reads.get("READ_PLUS", 0) > 0, f"no READ on the wire: {reads}"
                assert (server_dir / name).read_bytes() == data, "the server's file differs from what was written"
                made = self.as_user(USER, [], "sh", "-c", f"echo u > {mnt}/by-user-{label}")
                assert made.returncode == 0, made.stderr
                ls = self.sh("ls", "-ln", str(mnt)).stdout
                owners = {line.split()[-1]: (line.split()[2], line.split()[3]) for line in ls.splitlines()[1:]}
                assert owners[name] == ("0", "0"), ls
                assert owners[f"by-user-{label}"][0] == str(USER), ls
                self.sh("sync")
                proc_mounts = [m for m in Path("/proc/mounts").read_text().splitlines() if str(mnt) in m]
                seen[label] = {"mount_seconds": round(mount_s, 2), "mount": proc_mounts[0].split()[2:4],
                               "md5": hashlib.md5(data).hexdigest(), "read_ops_on_the_wire": reads}
        return seen

    def gid_and_squash(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        pv = self.class_and_claim("gid-nfs", params={"gid": str(GROUP)})
        with self.mounted(pv) as mnt:
            member = self.as_user(USER, [USER, GROUP], "touch", f"{mnt}/member")
            stranger = self.as_user(OTHER, [OTHER], "touch", f"{mnt}/stranger")
            assert member.returncode == 0, f"a member of gid {GROUP} could not create a file: {member.stderr}"
            assert stranger.returncode != 0, "a process without the class's gid created a file"
            out["gid"] = {"member": "created", "stranger": stranger.stderr.strip()}
        squashed = self.class_and_claim("squash-nfs", params={"rootSquash": "true"})
        plain = self.volume("nfs")
        for label, pv, squash in (("rootSquash", squashed, True), ("no rootSquash", plain, False)):
            with self.mounted(pv) as mnt:
                Path(mnt / "root-made").write_text("r")
                owner = os.stat(mnt / "root-made").st_uid
                secret = mnt / f"secret-{USER}"
                made = self.as_user(USER, [], "sh", "-c", f"umask 077; echo s > {secret}")
                assert made.returncode == 0, made.stderr
                try:
                    secret.read_text()
                    root_reads = "read"
                except OSError as e:
                    root_reads = err_name(e)
                if squash:
                    assert owner != 0, f"root's file belongs to uid 0 on a rootSquash volume ({label})"
                    assert root_reads != "read", "root read another user's 0600 file on a rootSquash volume"
                else:
                    assert owner == 0, owner
                    assert root_reads == "read", root_reads
                out[label] = {"root_file_uid": owner, "root_reads_0600_of_other": root_reads}
        return out

    def boundary(self) -> dict[str, Any]:
        """The forged-handle issue's checks where the kernel mount adds something (v4.1 and v3): from the
        mount root, ``..``, ``../..`` and ``ls ..`` are the client's own directories, never the server's
        export root; symlinks the client makes (to ``/``, to ``../<other volume>``, to the other volume's
        server path) are stored as text and resolve on the client; nothing of a second volume is visible
        through the first's mount."""
        a = self.volume("nfs")
        b = self.class_and_claim("boundary-b")
        a_dir, b_dir = Path(a["spec"]["nfs"]["path"]), Path(b["spec"]["nfs"]["path"])
        secret = f"volume B's own data {os.urandom(8).hex()}"
        (b_dir / "b-secret").write_text(secret)  # on the server, in B only
        own = {*OWN_NAMES, "b-secret"}
        out: dict[str, Any] = {}
        for label in ("vers=4.1", "vers=3"):
            with self.mounted(a, [label]) as mnt:
                for name, target in (("to-slash", "/"), ("to-other", f"../{b_dir.name}"),
                                     ("to-other-abs", str(b_dir)), ("to-up", "../../..")):
                    (mnt / name).unlink(missing_ok=True)
                    os.symlink(target, mnt / name)
                    stored = os.readlink(a_dir / name)
                    assert stored == target, f"the server stores {name} as {stored!r}, not {target!r}"
                view = self.sh("unshare", "-m", "sh", "-c",
                               f"mount -t tmpfs tmpfs {self.xfs} && cd {mnt} && "
                               f"exec {sys.executable} -c \"$0\" \"$@\"", CLIENT_VIEW, b_dir.name, str(b_dir))
                seen: dict[str, Any] = json.loads(view.stdout)
                assert secret not in view.stdout, f"volume B's data seen through A's {label} mount: {seen}"
                assert seen["cwd"] == str(mnt), seen
                assert seen["dotdot_realpath"] == str(self.mounts) and seen["dotdot_on_the_mounts_device"], seen
                for key in ("ls_dotdot", "ls_dotdot_dotdot", "ls_dotdot_dotdot_dotdot"):
                    assert not own & set(seen[key]) and b_dir.name not in seen[key], (key, seen[key])
                assert seen["ls_dotdot"] == sorted(os.listdir(self.mounts)), seen["ls_dotdot"]
                for key in ("read_dotdot_other", "read_via_symlink_to_dotdot_other",
                            "read_via_symlink_to_other_server_path"):
                    assert seen[key] == ["error", "ENOENT"], (key, seen[key])
                assert seen["ls_via_symlink_to_slash"] == ["ok", seen["client_slash"]], seen
                assert seen["ls_via_symlink_up"] == ["ok", seen["client_slash"]], seen
                assert not any("b-secret" in f for f in seen["files"]), seen["files"]
                out[label] = {k: v for k, v in seen.items() if k not in ("files", "client_slash")}
                out[label]["files_seen"] = len(seen["files"])
        return out

    def dotdot_mounts(self) -> dict[str, Any]:
        """A mount of ``<volume>/..`` and ``<volume>/../..`` (v3: the MNT request carries the path as a
        string; v4.1: the client walks the server's pseudo root) is refused or shows nothing that is not
        exported: none of the appliance's own files and, in v3, no other volume."""
        a_dir = Path(self.volume("nfs")["spec"]["nfs"]["path"])
        b_dir = Path(self.volume("boundary-b")["spec"]["nfs"]["path"])
        own = set(OWN_NAMES)
        return {label: {rel: self.try_mount(f"{a_dir}/{rel}", [label],
                                            (own | {b_dir.name}) if label == "vers=3" else own)
                        for rel in ("..", "../..")} for label in ("vers=4.1", "vers=3")}

    def try_mount(self, path: str, options: list[str], forbidden: set[str]) -> str:
        """Mount ``path`` of the server: refused (the error) or what its root lists, which must hold none
        of ``forbidden``."""
        target = self.mounts / f"probe-{len(list(self.mounts.glob('*')))}"
        target.mkdir()
        r = self.sh("mount", "-t", "nfs", "-o", ",".join(options), f"127.0.0.1:{path}", str(target), check=False,
                    timeout=60)
        if r.returncode != 0:
            target.rmdir()
            return f"refused: {r.stderr.strip()[-200:]}"
        try:
            names = sorted(os.listdir(target))
        finally:
            self.sh("umount", str(target), check=False, timeout=60)
        assert not forbidden & set(names), f"the mount of {path} ({options}) shows {names}"
        return f"mounted, lists {len(names)} entries, none of the appliance's own or another volume's files"

    def quota(self) -> dict[str, Any]:
        """With --enable-xfs-quota: ``df`` on the kernel mount shows the claim's size, writes stop there, and
        after an expansion ``df`` shows the new size and the room is writable. (Ganesha 4.3 answered statfs
        for the export's whole filesystem; 9.14 answers it for the export's directory, so its project.)"""
        self.stop_appliance()
        self.start_appliance(extra=["--enable-xfs-quota"])
        pv = self.class_and_claim("quota-kc", size="2Mi", expand=True)
        out: dict[str, Any] = {}
        with self.mounted(pv) as mnt:
            df, fs = os.statvfs(mnt), os.statvfs(self.xfs)
            out["df_on_mount_bytes"] = df.f_blocks * df.f_frsize
            out["df_of_export_filesystem_bytes"] = fs.f_blocks * fs.f_frsize
            server_dir = os.statvfs(pv["spec"]["nfs"]["path"])
            out["df_in_volume_on_server_bytes"] = server_dir.f_blocks * server_dir.f_frsize
            assert out["df_in_volume_on_server_bytes"] == 2 * MiB, out
            assert out["df_on_mount_bytes"] == 2 * MiB, f"df on the mount is not the claim's 2Mi: {out}"
            out["write_error"], out["written"] = self.fill(mnt / "fill-1")
            assert out["write_error"] in ("ENOSPC", "EDQUOT") and out["written"] <= 2 * MiB, out
            self.kubectl("patch", "pvc", "quota-kc", "-p", '{"spec":{"resources":{"requests":{"storage":"4Mi"}}}}')
            self.until(lambda: self.kubectl("get", "pvc", "quota-kc", "-o", "jsonpath={.status.capacity.storage}")
                       == "4Mi", "claim capacity 4Mi")

            def df_grown() -> bool:
                st = os.statvfs(mnt)
                out["df_on_mount_after_expansion_bytes"] = st.f_blocks * st.f_frsize
                return bool(out["df_on_mount_after_expansion_bytes"] == 4 * MiB)
            self.until(df_grown, "df on the mount showing the new 4Mi", timeout=60)
            more_error, more = self.fill(mnt / "fill-2")
            out["after_expansion"] = {"written": more, "error": more_error}
            assert more >= MiB and out["written"] + more <= 4 * MiB, out
        return out

    @staticmethod
    def fill(path: Path) -> tuple[str, int]:
        """Write and fsync 64 KiB chunks until an error (the quota): the error's name and the bytes that
        were durably written (the kernel client reports a full quota at fsync, not at write)."""
        written = 0
        chunk = os.urandom(64 * 1024)
        try:
            with open(path, "wb") as f:
                for _ in range(1024):
                    f.write(chunk)
                    f.flush()
                    os.fsync(f.fileno())
                    written += len(chunk)
        except OSError as e:
            return err_name(e), written
        return "none", written

    def restarts(self, *, extra: list[str]) -> dict[str, Any]:
        """A file open for writing and a process whose cwd is in the mount survive appliance restarts."""
        if extra:  # a configuration of its own: restart with it, then make a fresh volume under it
            self.stop_appliance()
            self.start_appliance(extra=extra)
        name = f"restart{len(extra)}"
        pv = self.class_and_claim(name)
        out: dict[str, Any] = {}
        with self.mounted(pv) as mnt:
            writer = open(mnt / "kept-open", "w+b")  # noqa: SIM115 - held across the restarts
            worker = subprocess.Popen([sys.executable, "-c", CWD_WORKER], cwd=mnt, stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, text=True)
            try:
                for how in (signal.SIGTERM, signal.SIGKILL):
                    label = signal.Signals(how).name
                    writer.write(f"before {label}\n".encode())
                    writer.flush()
                    os.fsync(writer.fileno())
                    self.stop_appliance(how)
                    down = time.monotonic()
                    self.start_appliance(extra=extra)
                    writer.write(f"after {label}\n".encode())
                    try:
                        writer.flush()
                        os.fsync(writer.fileno())
                        writer.seek(0)
                        content = writer.read().decode()
                        fd_result = "ok" if f"after {label}" in content else f"lost data: {content!r}"
                    except OSError as e:
                        fd_result = err_name(e)
                    outage = round(time.monotonic() - down, 2)
                    assert worker.stdin is not None and worker.stdout is not None
                    worker.stdin.write(f"{label}\n")
                    worker.stdin.flush()
                    cwd_result = worker.stdout.readline().strip()
                    out[label] = {"open_fd": fd_result, "cwd": cwd_result, "seconds_down_to_first_io": outage}
                assert all(v["open_fd"] == "ok" and v["cwd"].startswith("ok") for v in out.values()), out
            finally:
                writer.close()
                if worker.stdin is not None:
                    worker.stdin.close()
                worker.wait(30)
        return out

    def delete_while_mounted(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        victim = self.class_and_claim("gone-nfs")
        other = self.volume("nfs")
        archived = self.class_and_claim("archive-nfs", params={"onDelete": "archive"})
        with self.mounted(victim) as mnt, self.mounted(other) as other_mnt, self.mounted(archived) as arch_mnt:
            (mnt / "mine").write_text("victim data")
            (other_mnt / "theirs").write_text("other data")
            (arch_mnt / "kept").write_text("archived data")
            for claim, path, file in (("gone-nfs", mnt, "mine"), ("archive-nfs", arch_mnt, "kept")):
                pv_name = self.kubectl("get", "pvc", claim, "-o", "jsonpath={.spec.volumeName}")
                self.kubectl("delete", "pvc", claim, "--wait=false")
                self.until(lambda n=pv_name: self.sh("kubectl", "get", "pv", n, check=False).returncode != 0,
                           f"PV {pv_name} deleted")
                results = {}
                for op, fn in (("listdir", lambda p=path: os.listdir(p)),
                               ("read", lambda p=path, f=file: (p / f).read_text()),
                               ("create", lambda p=path: (p / "new").write_text("x"))):
                    try:
                        value = fn()
                        results[op] = f"succeeded: {value!r}"[:120]
                    except OSError as e:
                        results[op] = err_name(e)
                out[claim] = results
                assert "other data" not in json.dumps(results) and "theirs" not in json.dumps(results), results
                assert not any(r.startswith("succeeded") for r in results.values()), results
            archive = self.export / ".archive"
            kept = [p for p in archive.glob("*/kept")] if archive.exists() else []
            assert kept and kept[0].read_text() == "archived data", "archived data is not on the server"
            assert (other_mnt / "theirs").read_text() == "other data", "the other volume was disturbed"
            out["archive_on_server"] = str(kept[0].parent.name)
        return out


    def grace(self) -> dict[str, Any]:
        """Failover as clients see it, for each way of serving NFSv3 (``FAILOVER_CASES``) and each way the
        appliance ends (SIGKILL of it and everything it started, as a pod's death; SIGTERM), at the default
        grace period: a kernel client holding an fcntl lock across the restart reclaims it and writes on;
        another client (libnfs, a different NFSv4 client id) gets NFS4ERR_GRACE until grace ends. Without NLM
        Ganesha ends grace as soon as every recorded client has sent RECLAIM_COMPLETE (its reaper checks every
        ``min(10, Lease_Lifetime / 2)`` s): the other client opens within ``FAST_OPEN`` s of Ganesha serving
        again and the log shows the lift by reclaim (``reclaim complete(N) clid count(N)``), not by the
        timeout; with NLM it waits for the whole period. Then the graceless case (--grace-period=0): others go
        on at once, but the lock is lost (EIO; the kernel client marks the state lost rather than risk a
        conflicting write) and a new open and lock go on."""
        out: dict[str, Any] = {}
        kube_config = REPO / "deploy" / "kube-config"  # the example claim (made by the classic step, if it ran)
        self.kubectl("apply", "-f", str(kube_config / "class.yaml"), "-f", str(kube_config / "claim.yaml"),
                     "-n", "default")
        pv = self.volume("nfs")
        lines = []
        for case, flags in FAILOVER_CASES.items():
            for sig in (signal.SIGKILL, signal.SIGTERM):
                r = out[f"{case} {sig.name}"] = self.failover(pv, case, list(flags), sig, GRACE)
                lines.append(r["line"])
                print(r["line"], flush=True)
        r = out["graceless SIGTERM"] = self.failover(pv, "graceless", ["--nfsv3=true"], signal.SIGTERM, 0)
        lines.append(r["line"])
        out["lines"] = lines
        self.stop_appliance()
        self.start_appliance()  # the appliance runs on as FLAGS has it
        return out

    def failover(self, pv: dict[str, Any], case: str, flags: list[str], sig: signal.Signals,
                 grace: int) -> dict[str, Any]:
        """One restart with ``flags`` (a previous run with the same flags and no grace period, so that only
        this case's holder is recorded), ended by ``sig``, then started with ``--grace-period=grace``."""
        server_file = Path(pv["spec"]["nfs"]["path"]) / "locked"
        url = f"nfs://127.0.0.1{pv['spec']['nfs']['path']}/locked?version=4"
        # Only this case's holder recorded: every libnfs probe of an earlier case is a client of its own,
        # recorded when its id was confirmed (even when its OPEN got NFS4ERR_GRACE), that never reclaims; a
        # graceless start keeps such records. On a node the clients are its kernel's, which come back.
        self.stop_appliance()
        for top in ("v4recov", "v4old"):
            for record in (self.export / ".ganesha" / "recovery" / top).glob("*"):
                shutil.rmtree(record) if record.is_dir() else record.unlink()
        self.start_appliance(extra=[*flags, "--grace-period=0"])
        with self.mounted(pv) as mnt:
            holder = subprocess.Popen([sys.executable, "-c", LOCK_HOLDER, str(mnt / "locked")],
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            assert holder.stdin is not None and holder.stdout is not None

            def ask(line: str) -> list[str]:
                assert holder.stdin is not None and holder.stdout is not None
                holder.stdin.write(line + "\n")
                holder.stdin.flush()
                return holder.stdout.readline().split()
            try:
                assert holder.stdout.readline().strip() == "locked"
                assert ask("before")[:1] == ["ok"], "the holder could not write before the restart"
                assert self.server_locks(server_file), "the lock is not held on the server"
                glog = self.export / ".ganesha" / "ganesha.log"
                offset = glog.stat().st_size
                killed = time.monotonic()
                self.stop_appliance(sig)
                self.start_appliance(extra=[*flags, f"--grace-period={grace}"], wait=False)

                def since() -> str:
                    with glog.open("rb") as f:
                        f.seek(offset)
                        return f.read().decode(errors="replace")
                self.until(lambda: "NFS SERVER INITIALIZED" in since(), "Ganesha to serve again", timeout=180)
                serving_at = time.monotonic()
                # The other client opens as soon as Ganesha serves, then again every half second until it can;
                # the holder writes once the appliance is ready (its kernel client reclaims on its own as soon
                # as it reconnects: its lease renewal, every 2/3 of the lease, retries through the restart).
                other = self.sh("nfs-cat", url, check=False, timeout=60)
                first_other = "ok" if other.returncode == 0 else other.stderr.strip()[-160:]
                opened_at = time.monotonic() if other.returncode == 0 else None
                log_at_open = since() if opened_at else ""
                refused = 0 if opened_at else 1
                holder_at: float | None = None
                first_holder: list[str] = []
                answer: list[str] = []
                deadline = serving_at + grace + 60
                while time.monotonic() < deadline and (opened_at is None or holder_at is None):
                    if holder_at is None and not first_holder and self.ready():
                        answer = first_holder = ask("after restart")
                        if answer[:1] != ["ok"]:  # the lock is lost: a new open and lock go on
                            answer = ask("reopen")
                        holder_at = time.monotonic() if answer[:1] == ["ok"] else None
                    if opened_at is None:
                        time.sleep(0.5)
                        other = self.sh("nfs-cat", url, check=False, timeout=60)
                        if other.returncode == 0:
                            opened_at, log_at_open = time.monotonic(), since()
                        else:
                            refused += 1
                    elif holder_at is None:
                        time.sleep(0.3)
                log = since()
                checks = re.findall(r"reclaim complete\((\d+)\) clid count\((\d+)\)", log_at_open)
                r = {
                    "flags": flags, "signal": sig.name, "grace_period": grace,
                    "seconds_kill_to_serving": round(serving_at - killed, 2),
                    "seconds_serving_to_other_client_first_open":
                        round(opened_at - serving_at, 2) if opened_at else None,
                    "seconds_kill_to_holder_first_successful_write":
                        round(holder_at - killed, 2) if holder_at else None,
                    "holder_first_write_after_restart": first_holder,
                    "holder_after_reopen": answer if first_holder[:1] != ["ok"] else None,
                    "other_client_first_open": first_other,
                    "other_client_opens_refused": refused,
                    "lock_on_server_after": bool(self.server_locks(server_file)),
                    "grace_started": "Now IN GRACE" in log,
                    "grace_lifted_before_first_other_open": "Now NOT IN GRACE" in log_at_open,
                    "reaper_checks_before_first_other_open": checks[-3:],
                }
                r["line"] = (f"failover {case} {sig.name}: kill->serving {r['seconds_kill_to_serving']} s, "
                             f"serving->first new open {r['seconds_serving_to_other_client_first_open']} s, "
                             f"holder write {r['seconds_kill_to_holder_first_successful_write']} s")
                assert holder_at is not None and opened_at is not None, r
                if grace:  # reclaimed: the holder keeps its lock and goes on
                    assert first_holder[:1] == ["ok"], r
                    assert r["lock_on_server_after"], f"the lock was not reclaimed: {r}"
                    assert r["grace_started"], log[-2000:]
                    assert "NFS4ERR_GRACE" in first_other or r["grace_lifted_before_first_other_open"], (
                        f"another client opened during the grace period:\n{log[-2000:]}")
                    if case in FAST_CASES:  # lifted by reclaim (every recorded client done), not by the timeout
                        assert checks and checks[-1][0] == checks[-1][1] != "0", (r, log[-3000:])
                        assert opened_at - serving_at <= FAST_OPEN, (r, log[-3000:])
                    else:  # NLM: Ganesha waits for the whole period
                        assert opened_at - serving_at >= grace - 10, (r, log[-3000:])
                else:  # graceless: others go on at once, the lock is lost and its holder gets EIO
                    assert first_holder[:2] == ["error", str(errno.EIO)], r
                    assert first_other == "ok", r
                    assert not r["grace_started"], log[-2000:]
                return r
            finally:
                holder.stdin.close()
                holder.wait(30)

    def ready(self) -> bool:
        """The appliance's /readyz says ready (once, no wait)."""
        try:
            with urllib.request.urlopen("http://127.0.0.1:9090/readyz", timeout=2) as resp:
                return bool(resp.status == 200)
        except OSError:
            return False

    def kernel_server(self) -> dict[str, Any]:
        """--use-ganesha=false --run-server=false: the kernel's nfsd (the kernel's own module) serves a new
        volume from the appliance's /etc/exports line, and a kernel client mounts it with the PV's own
        options (vers=4.1), vers=4.2 and vers=3.

        NFSv4 needs an exportable ``/``: mountd puts every parent of an export into the NFSv4 pseudo root
        (``/`` with fsid=0, the others by their filesystem's uuid), and nfsd refuses UML's ``/``, which is
        hostfs (mountd: "Cannot export /, possibly unsupported filesystem or fsid= required"); a real host's
        ``/`` (ext4, XFS, btrfs) has no such problem. So here, as in a container whose ``/`` cannot be
        exported, nfs-utils' own ``[exports] rootdir`` (nfs.conf) names a tmpfs holding the export
        filesystem at its usual path: clients and the appliance's exports keep the same paths. The step
        shows the vers=4.1 mount failing without it first.
        Runs last: it gives this boot a writable /etc and /var/lib/nfs."""
        self.stop_appliance()
        run = Path("/run/kernel-server")
        for target in (Path("/etc"), Path("/var/lib/nfs")):
            copy = run / target.name
            shutil.copytree(target, copy, symlinks=True, ignore_dangling_symlinks=True, dirs_exist_ok=True)
            self.sh("mount", "--bind", str(copy), str(target))
        v4root = Path("/run/v4root")
        v4root.mkdir()
        self.sh("mount", "-t", "tmpfs", "-o", "mode=0755", "tmpfs", str(v4root))
        inside = v4root / self.xfs.relative_to("/")
        inside.mkdir(parents=True)
        self.sh("mount", "--bind", str(self.xfs), str(inside))
        Path("/etc/nfs.conf").write_text("")  # first as nfs-utils comes: no rootdir
        shutil.rmtree("/etc/nfs.conf.d", ignore_errors=True)
        Path("/etc/exports").write_text("")
        self.sh("mount", "-t", "nfsd", "nfsd", "/proc/fs/nfsd")
        # No nfsdcld here (client tracking), so nfsd starts a grace period: its shortest, 10 s.
        for knob in ("nfsv4gracetime", "nfsv4leasetime"):
            Path(f"/proc/fs/nfsd/{knob}").write_text("10\n")
        self.daemons = [subprocess.Popen(["rpcbind", "-f", "-w"])]
        time.sleep(0.5)
        self.sh(str(NFS_KERNEL_SERVER / "exportfs"), "-ra")
        mountd_log = (self.work / "rpc.mountd.log").open("wb")
        mountd = [str(NFS_KERNEL_SERVER / "rpc.mountd"), "-F", "--no-udp", "-d", "general"]
        self.daemons.append(subprocess.Popen(mountd, stdout=mountd_log, stderr=subprocess.STDOUT))
        self.sh(str(NFS_KERNEL_SERVER / "rpc.nfsd"), "4")
        os.environ["PATH"] = f"{NFS_KERNEL_SERVER}:{os.environ['PATH']}"  # the appliance's exportfs
        try:
            self.start_appliance(extra=["--use-ganesha=false", "--run-server=false"])
            pv = self.class_and_claim("kernel-nfs")
            line = [ln for ln in Path("/etc/exports").read_text().splitlines() if pv["metadata"]["name"] in ln]
            assert line, Path("/etc/exports").read_text()
            out: dict[str, Any] = {"exports_line": line[0],
                                   "nfsd_versions": Path("/proc/fs/nfsd/versions").read_text().strip()}
            # Without rootdir: NFSv4 fails (UML's / is hostfs), and mountd says why.
            probe = self.mounts / "kernel-v4-without-rootdir"
            probe.mkdir()
            r = self.sh("mount", "-t", "nfs", "-o", "vers=4.1", f"127.0.0.1:{pv['spec']['nfs']['path']}", str(probe),
                        check=False, timeout=120)
            if r.returncode == 0:
                self.sh("umount", str(probe), check=False)
            assert r.returncode != 0, "NFSv4 through nfsd worked with UML's hostfs / in the pseudo root"
            mountd_log.flush()
            said = [ln for ln in (self.work / "rpc.mountd.log").read_text(errors="replace").splitlines()
                    if "Cannot export" in ln]
            out["vers=4.1 without rootdir"] = {"mount": r.stderr.strip()[-200:], "mountd": said[:2]}
            # Then with nfs-utils' rootdir: mountd and exportfs read nfs.conf at start.
            self.daemons[1].terminate()
            self.daemons[1].wait(10)
            Path("/etc/nfs.conf").write_text(f"[exports]\nrootdir={v4root}\n")
            self.sh(str(NFS_KERNEL_SERVER / "exportfs"), "-ra")
            self.daemons[1] = subprocess.Popen(mountd, stdout=mountd_log, stderr=subprocess.STDOUT)
            out["nfs.conf"] = Path("/etc/nfs.conf").read_text()
            for label, options in (("pv", None), ("vers=4.2", ["vers=4.2"]), ("vers=3", ["vers=3"])):
                started = time.monotonic()
                with self.mounted(pv, options) as mnt:
                    data = os.urandom(MiB)
                    (mnt / f"through-nfsd-{label}").write_bytes(data)
                    self.sh("sync")
                    written_s = round(time.monotonic() - started, 2)
                    assert (Path(pv["spec"]["nfs"]["path"]) / f"through-nfsd-{label}").read_bytes() == data
                    Path("/proc/sys/vm/drop_caches").write_text("3\n")
                    assert (mnt / f"through-nfsd-{label}").read_bytes() == data
                    mount = [m for m in Path("/proc/mounts").read_text().splitlines() if str(mnt) in m]
                    out[label] = {"mount": mount[0].split()[2:4], "seconds_mount_to_written": written_s}
            assert out["pv"]["mount"][0] == "nfs4" and "vers=4.1" in out["pv"]["mount"][1], out
            return out
        finally:
            self.stop_appliance()
            self.sh(str(NFS_KERNEL_SERVER / "rpc.nfsd"), "0", check=False)
            for d in self.daemons:
                d.terminate()
                d.wait(10)
            mountd_log.close()

    @staticmethod
    def op_counts(mnt: Path, ops: tuple[str, ...]) -> dict[str, int]:
        """Per-operation RPC counts of the mount on ``mnt`` from /proc/self/mountstats (the kernel's own)."""
        counts: dict[str, int] = {}
        current = False
        for line in Path("/proc/self/mountstats").read_text().splitlines():
            if line.startswith("device "):
                current = f" mounted on {mnt} " in line
            elif current and line.strip().split(":")[0] in ops:
                name, rest = line.strip().split(":", 1)
                counts[name] = int(rest.split()[0])
        return counts

    @staticmethod
    def server_locks(path: Path) -> list[str]:
        """The POSIX/OFD locks the (shared) kernel holds on ``path``'s inode: Ganesha's, for its clients."""
        st = os.stat(path)
        tag = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
        return [line for line in Path("/proc/locks").read_text().splitlines() if tag in line]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--xfs", type=Path, required=True)
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--results", type=Path, required=True)
    parser.add_argument("--steps", default=",".join(STEPS),
                        help="comma-separated steps to run (by hand: start plus the ones under work)")
    args = parser.parse_args()
    flow = Flow(xfs=args.xfs, work=args.work, flags=FLAGS)
    flow.mounts.mkdir(parents=True, exist_ok=True)
    # Client and server share this boot's one network namespace (on a node they do not: the appliance has
    # the pod's). The kernel client binds a reserved source port (665-1023) and keeps it across reconnects;
    # one on 875 keeps Ganesha from binding rquota when it restarts. Keep the client's ports above it.
    Path("/proc/sys/sunrpc/min_resvport").write_text("876\n")
    steps: dict[str, Callable[[], Any]] = {
        "start": flow.start,
        "classic_flow_as_the_kubelet_mounts_it": flow.classic,
        "gid_and_root_squash_as_pods_see_them": flow.gid_and_squash,
        "volume_boundary_through_the_mount": flow.boundary,
        "mounts_of_dotdot_paths_stay_out_of_the_export_root": flow.dotdot_mounts,
        "restarts_keep_handles_valid": lambda: flow.restarts(extra=[]),
        "restarts_keep_handles_valid_without_device_fsids": lambda: flow.restarts(
            extra=["--device-based-fsids=false"]),
        "delete_and_archive_while_mounted": flow.delete_while_mounted,
        "filesystem_volume_df_enospc_and_expansion_through_the_mount": lambda: uml_filesystem_kclient.sized_and_grown(
            flow),
        "filesystem_volume_forged_handles_from_the_kernel_mount": lambda: uml_filesystem_kclient.forged_handles(flow),
        "grace_and_lock_reclaim": flow.grace,
        "quota_writes_and_df_through_the_mount": flow.quota,
        "kernel_server_mode": flow.kernel_server,
    }
    assert tuple(steps) == STEPS
    chosen = args.steps.split(",")
    assert set(chosen) <= set(STEPS) and chosen[0] == "start", f"unknown steps or no start first: {chosen}"
    try:
        for name, fn in ((n, f) for n, f in steps.items() if n in chosen):
            try:
                flow.step(name, fn)
            except BaseException:  # noqa: BLE001 - recorded; later steps still run unless the start failed
                traceback.print_exc()
                if name == "start":
                    break
    finally:
        flow.stop()
    return flow.write_results(args.results)


if __name__ == "__main__":
    sys.exit(main())
