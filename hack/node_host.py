"""What a node of hack/cluster_node.py shares with the host and the other nodes on it, and
how it is taken apart: the registry of nodes in /run/nfsp-nodes (the first node up records
the host's sysctls and paths, the last one down restores them), each node's cgroup root,
and the teardown helpers (processes by PID, mounts under a directory, cgroup directories).

`node` arguments are cluster_node.Node objects (netns_name, state.root, record, ctd).
Standard library only.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

# Host-wide sysctls the kubelet sets (setupKernelTunables): recorded by the first node up,
# restored by the last one down.
SYSCTLS = ("vm/overcommit_memory", "vm/panic_on_oom", "kernel/panic", "kernel/panic_on_oops",
           "kernel/keys/root_maxkeys", "kernel/keys/root_maxbytes")
# Host paths the kubelet, containerd (its shim sockets) and libcni (its result cache) write
# whatever they are configured with: removed by the last node down if absent before the first.
HOST_PATHS = ("/var/lib/kubelet", "/var/log/containers", "/var/log/pods", "/run/containerd", "/var/lib/cni")
# Host-global conntrack settings kube-proxy would write without conntrack maxPerCore/min 0:
# recorded so that the tests can show they stay as they were.
CONNTRACK = ("/sys/module/nf_conntrack/parameters/hashsize", "/proc/sys/net/netfilter/nf_conntrack_max",
             "/proc/sys/net/netfilter/nf_conntrack_tcp_timeout_established",
             "/proc/sys/net/netfilter/nf_conntrack_tcp_timeout_close_wait")


def netns_name_of(state_root: Path) -> str:
    """The node's network namespace (and cgroup root) name: one per cluster state dir."""
    return "nfsp-" + hashlib.sha256(str(state_root).encode()).hexdigest()[:8]


# --------------------------------------------------------------------------- host state

def read_sysctls() -> dict[str, str]:
    return {k: Path("/proc/sys", k).read_text().strip() for k in SYSCTLS if Path("/proc/sys", k).exists()}


# Nodes of several clusters may run at once (each its own namespace, cgroup root and state dir),
# but the sysctls and HOST_PATHS are the host's: the first node up records them (host.json), the
# last one down restores them. /run is a tmpfs: a reboot forgets both, as it forgets the nodes.
REGISTRY = Path("/run/nfsp-nodes")
LEGACY_MARKER = Path("/run/nfsp-node")  # the one-node-per-host marker of the first version


@contextlib.contextmanager
def registry() -> Iterator[None]:
    import fcntl

    REGISTRY.mkdir(exist_ok=True)
    with (REGISTRY / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def other_nodes(node: Any) -> list[str]:
    """State dirs of the other nodes still up (their namespace exists); stale entries are dropped."""
    legacy = legacy_node(node)
    out = [legacy] if legacy else []
    for e in REGISTRY.glob("nfsp-*"):
        if e.name == node.netns_name:
            continue
        if Path("/run/netns", e.name).exists():
            out.append(e.read_text().strip())
        else:
            e.unlink(missing_ok=True)
    return out


def register(node: Any) -> None:
    """Under the registry lock: record the host's state if no other node is up, then join."""
    host = REGISTRY / "host.json"
    legacy = legacy_node(node)
    if not host.exists() and (legacy or not other_nodes(node)):
        rec = {"sysctls": read_sysctls(), "absent": [p for p in HOST_PATHS if not os.path.lexists(p)],
               "conntrack": {p: Path(p).read_text().strip() for p in CONNTRACK if Path(p).exists()}}
        if legacy:  # it recorded the host before its kubelet ran: take its values
            old = json.loads(Path(legacy, "node", "record.json").read_text())
            rec["sysctls"], rec["absent"] = old["sysctls"], old["absent"]
        host.write_text(json.dumps(rec, indent=2))
    # (a host.json with no node up is a node's that never came down: it holds the values from before)
    (REGISTRY / node.netns_name).write_text(f"{node.state.root}\n")
    node.record.write_text(host.read_text())  # this node's copy, for the tests
    if not LEGACY_MARKER.exists():
        LEGACY_MARKER.write_text(f"{node.state.root}\n")


def unregister(node: Any, log: Callable[[str], None], *, quiet: bool) -> None:
    """Under the registry lock: leave; the last node restores the sysctls and removes the host paths
    that were absent before the first."""
    (REGISTRY / node.netns_name).unlink(missing_ok=True)
    with contextlib.suppress(FileNotFoundError):
        if LEGACY_MARKER.read_text().strip() == str(node.state.root):
            LEGACY_MARKER.unlink()
    others = other_nodes(node)
    host = REGISTRY / "host.json"
    if others:
        log(f"host sysctls and paths left to the last node down ({len(others)} more up: {', '.join(others)})")
        if others == [legacy_node(node)]:
            host.unlink(missing_ok=True)  # that one restores the host from its own record
        return
    try:
        rec = json.loads(host.read_text())
    except FileNotFoundError:
        return
    for k, v in rec.get("sysctls", {}).items():
        p = Path("/proc/sys", k)
        if p.read_text().strip() != v:
            p.write_text(v + "\n")
            if not quiet:
                log(f"restored {k.replace('/', '.')} = {v}")
    for path in rec.get("absent", []):
        if os.path.lexists(path):
            shutil.rmtree(path, ignore_errors=True)
            if not quiet:
                log(f"removed {path}")
    host.unlink()


def legacy_node(node: Any) -> str | None:
    """A node of the first version of this file (one per host, kubepods at the cgroup root, its own
    record of the host) that is up: counted as another node; its record is the host's."""
    with contextlib.suppress(FileNotFoundError):
        root = LEGACY_MARKER.read_text().strip()
        name = netns_name_of(Path(root))
        if root != str(node.state.root) and Path(root, "node", "record.json").exists() and \
                not (REGISTRY / name).exists() and Path("/run/netns", name).exists():
            return root
    return None


# --------------------------------------------------------------------------- cgroups

def cgroup_dirs(node: Any) -> list[Path]:
    """The node's cgroup root (kubelet cgroupRoot) in every mounted hierarchy."""
    return [h / node.netns_name for h in sorted(Path("/sys/fs/cgroup").iterdir())
            if (h / "cgroup.procs").exists()]


def make_cgroups(node: Any) -> None:
    for d in cgroup_dirs(node):
        d.mkdir(exist_ok=True)
        if d.parent.name == "cpuset":  # a v1 cpuset child takes no task before it has cpus and mems
            for f in ("cpuset.cpus", "cpuset.mems"):
                if not (d / f).read_text().strip():
                    (d / f).write_text((d.parent / f).read_text())


def pids_in_cgroups(node: Any) -> set[int]:
    pids: set[int] = set()
    for top in cgroup_dirs(node):
        for procs in top.rglob("cgroup.procs"):
            with contextlib.suppress(OSError, ValueError):
                pids.update(int(x) for x in procs.read_text().split())
    return pids


def shim_pids(node: Any, shim: Path) -> set[int]:
    """containerd-shim-runc-v2 processes of this node (they outlive containerd): our shim binary,
    working directory in this node's task state."""
    shim = shim.resolve()
    tasks = str((node.ctd / "state").resolve()) + "/"
    out = set()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            if Path(os.readlink(proc / "exe")) == shim and os.readlink(proc / "cwd").startswith(tasks):
                out.add(int(proc.name))
    return out


def kill_all(pids: set[int], timeout: float = 10.0) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for p in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, sig)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and any(Path(f"/proc/{p}").exists() and alive(p) for p in pids):
            time.sleep(0.05)


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def unmount_under(paths: list[Path]) -> None:
    prefixes = [str(p.resolve()) for p in paths if p.exists()]
    mounts = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        mp = line.split()[4].replace("\\040", " ")
        if any(mp == pre or mp.startswith(pre + "/") for pre in prefixes):
            mounts.append(mp)
    for mp in sorted(set(mounts), key=len, reverse=True):
        if subprocess.run(["umount", mp], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", mp], capture_output=True)


def rm_cgroups(node: Any) -> None:
    for top in cgroup_dirs(node):
        if not top.exists():
            continue
        dirs = sorted((d for d in top.rglob("*") if d.is_dir()), key=lambda d: len(d.parts), reverse=True)
        for d in [*dirs, top]:
            with contextlib.suppress(OSError):
                d.rmdir()
