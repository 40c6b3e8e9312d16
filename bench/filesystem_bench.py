"""Section "filesystems" of the provisioning benchmark: filesystem volumes (``isolation: filesystem``, ext4).

The appliance runs in a mount namespace of its own (``unshare --mount``), as in a container: its volumes' mounts
are invisible to the host and go with it when it stops, so a restart starts from images only (every volume is
attached to a loop device and mounted again), and nothing stays mounted after the section.

- Bursts of N claims of 64Mi (the ``--sizes``): created+exported PVC/s (claim created -> PV exists; the image is
  made, formatted, attached, mounted and exported before the PV is saved), latency p50/p99, deletion PV/s.
- ``--present`` volumes at once: RSS of the appliance (own process, and with Ganesha and its bus); a cold restart
  (the appliance stopped, its namespace gone, every loop device detached; then process start -> /readyz 200,
  every export served, queues empty); deletion of them all.
- Clone of a ``--fs-clone-mb`` volume holding a quarter of it in data (``FilesystemVolumes.create`` with
  ``clone_of``, what the appliance runs in its provision call: freeze, copy, thaw, mount): by reflink on an XFS
  export root (an XFS image with ``reflink=1`` on a loop device of the host) and by sparse copy on the host's
  filesystem (ext4 here: no shared blocks).

Targets (issue 23): >= 20 PVC/s created+exported, cold restart with 1000 volumes < 30 s, clone of 1 GiB by reflink
< 1 s.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.harness import Bench, cold_restart, fmt, own_rss_mb, provision_run, put, stop, tree_rss, wait_for
from nfs_provisioner.kube import client as kube
from nfs_provisioner.kube import errors as kube_errors
from nfs_provisioner.volumes import copying, loops
from nfs_provisioner.volumes.filesystems import FilesystemVolumes
from tests.support import filesystem_env
from tests.support.appliance_env import Appliance

FS_CLASS = "bench-fs"
SIZE = "64Mi"
MiB = 1 << 20
TARGET_PER_S, TARGET_RESTART_S, TARGET_REFLINK_S = 20.0, 30.0, 1.0
REMOUNTED = re.compile(r"filesystem volumes: (\d+) mounted again, (\d+) failed \(([0-9.]+)s\)")
"""The appliance's start-up line (nfs_provisioner.appliance.recovery.remount)."""


def private_mounts(argv: list[str]) -> list[str]:
    """The appliance in a mount namespace of its own (mounts private), as in a container."""
    return ["unshare", "--mount", "--propagation", "private", *argv]


def ensure_class(b: Bench) -> None:
    with contextlib.suppress(kube_errors.AlreadyExists):  # an earlier section or run made it
        b.api.create(kube.classes_path(), {
            "apiVersion": "storage.k8s.io/v1", "kind": "StorageClass", "metadata": {"name": FS_CLASS},
            "provisioner": b.provisioner, "allowVolumeExpansion": True,
            "parameters": {"isolation": "filesystem", "fsType": "ext4"}})


def wait_detached(root: Path, timeout: float = 60) -> None:
    """Until no loop device is attached to an image under ``root`` (autoclear after the namespace went)."""
    wait_for(lambda: not filesystem_env.devices_under(root), timeout, f"loop devices of {root} detached")


def filesystems_section(b: Bench) -> dict[str, Any]:
    ensure_class(b)
    root = b.work / "export"
    b.replace_appliance(b.new_appliance(export_root=root, extra=[], wrapper=private_mounts))
    appliance = b.appliance
    out: dict[str, Any] = {"size": SIZE}
    try:
        for n in b.sizes:
            runs = []
            for r in range(b.repeats):
                run, _ = provision_run(b.api, b.pool, n=n, cls=FS_CLASS, provisioner=b.provisioner, size=SIZE)
                runs.append(run)
                print(f"filesystem volumes N={n} run {r + 1}: {run['created_per_s']:.1f} PVC/s created+exported, "
                      f"p50 {run['p50_s'] * 1000:.0f} ms, p99 {run['p99_s'] * 1000:.0f} ms, "
                      f"delete {run['deleted_per_s']:.1f} PV/s", file=sys.stderr)
            row: dict[str, Any] = {}
            for k in ("created_per_s", "bound_per_s", "annotated_per_s", "p50_s", "p99_s", "own_p50_s", "own_p99_s",
                      "deleted_per_s"):
                put(row, k, [x[k] for x in runs])
            out[str(n)] = row
        out.update(present_figures(b, appliance, root))
    finally:
        stop(b.appliance)
        b.appliance.close()
        wait_detached(root)
        filesystem_env.clean(root)
    out.update(clone_figures(b.work, b.fs_clone_mb))
    b.appliance = b.new_appliance()
    b.appliance.start()
    return {"filesystems": out}


def present_figures(b: Bench, appliance: Appliance, root: Path) -> dict[str, Any]:
    """``b.present`` volumes at once: memory, cold restarts, then all deleted."""
    n = b.present
    assert appliance.proc is not None
    t = time.monotonic()
    run, ns = provision_run(b.api, b.pool, n=n, cls=FS_CLASS, provisioner=b.provisioner, size=SIZE, keep=True)
    out: dict[str, Any] = {"present": n, "present_created_per_s": run["created_per_s"],
                           "present_provision_s": time.monotonic() - t,
                           "rss_mb": own_rss_mb(appliance.proc.pid), "rss_tree_mb": tree_rss(appliance.proc.pid) / MiB,
                           "images_allocated_mb": allocated(root / ".images") / MiB}
    print(f"{n} filesystem volumes: appliance RSS {out['rss_mb']:.0f} MB ({out['rss_tree_mb']:.0f} MB with Ganesha "
          f"and its bus), images allocate {out['images_allocated_mb']:.0f} MiB", file=sys.stderr)
    restarts, spurious, remounts = [], [], []
    for _ in range(b.repeats):
        stop(appliance)
        wait_detached(root)  # the container's mounts are gone: images only
        took, calls = cold_restart(appliance, n, timeout=300, stopped=True)
        restarts.append(took)
        spurious.append(calls)
        found = REMOUNTED.search(appliance.text())
        assert found and int(found[1]) == n and found[2] == "0", f"not every volume was mounted again: {found}"
        remounts.append(float(found[3]))
        print(f"cold restart with {n} filesystem volumes: {took:.2f} s until all served (all {found[1]} mounted "
              f"again in {found[3]} s), spurious provisions {calls:.0f}", file=sys.stderr)
    put(out, "cold_restart_s", restarts)
    put(out, "remount_s", remounts)
    out["restart_spurious_provisions"] = spurious
    t = time.monotonic()
    list(b.pool.map(lambda i: b.api.delete(kube.claims_path(ns, f"c{i}")), range(n)))
    wait_for(lambda: not [p for p in b.api.get(kube.volumes_path())["items"]
                          if p["spec"].get("storageClassName") == FS_CLASS], 900, "filesystem volumes deleted")
    out["present_deleted_per_s"] = n / (time.monotonic() - t)
    b.api.delete(f"/api/v1/namespaces/{ns}")
    return out


def allocated(top: Path) -> int:
    return sum(p.stat().st_blocks * 512 for p in top.glob("*.img"))


# ---------------------------------------------------------------------- clones


def clone_figures(work: Path, size_mb: int) -> dict[str, Any]:
    out: dict[str, Any] = {"clone_size_mb": size_mb, "clone_data_mb": size_mb // 4}
    plain = work / "clone-plain"
    plain.mkdir()
    with filesystem_env.cleaned(plain):
        took, shared = clone_once(plain, size_mb)
    out["clone_sparse_s"], out["clone_sparse_root_shares_blocks"] = took, shared
    with xfs_root(work / "clone-xfs") as xfs, filesystem_env.cleaned(xfs):
        took, shared = clone_once(xfs, size_mb)
    assert shared, "the XFS export root (reflink=1) does not share blocks"
    out["clone_reflink_s"] = took
    print(f"clone of a {size_mb} MiB ext4 volume holding {size_mb // 4} MiB: reflink {out['clone_reflink_s']:.3f} s, "
          f"sparse copy {out['clone_sparse_s']:.3f} s", file=sys.stderr)
    return out


def clone_once(root: Path, size_mb: int) -> tuple[float, bool]:
    """Seconds for ``FilesystemVolumes.create(clone_of=...)`` of a ``size_mb`` volume holding a quarter of it in
    random data (the copy is checked), and whether ``root``'s filesystem shares blocks (reflink)."""
    vols = FilesystemVolumes(root / "export")
    vols.export_root.mkdir()
    src = vols.create("src", size=size_mb * MiB, fs_type="ext4", gid=None)
    digest = hashlib.sha256()
    with open(src / "data", "wb") as f:
        for _ in range(size_mb // 4):
            chunk = os.urandom(MiB)
            digest.update(chunk)
            f.write(chunk)
    os.sync()
    t = time.monotonic()
    clone = vols.create("clone", size=size_mb * MiB, fs_type="ext4", gid=None, clone_of="src")
    took = time.monotonic() - t
    copied = hashlib.sha256()
    with open(clone / "data", "rb") as f:
        while chunk := f.read(MiB):
            copied.update(chunk)
    assert copied.digest() == digest.digest(), "the clone's data differs from its source's"
    shared = copying.shares_blocks(vols.export_root)
    vols.delete("clone")
    vols.delete("src")
    return took, shared


@contextlib.contextmanager
def xfs_root(mnt: Path, size_mb: int = 4096) -> Any:
    """An XFS (``reflink=1``) on a sparse image attached to a loop device and mounted at ``mnt``; unmounted and
    that device detached afterwards."""
    image = mnt.parent / f"{mnt.name}.img"
    with open(image, "wb") as f:
        f.truncate(size_mb * MiB)
    subprocess.run(["mkfs.xfs", "-q", "-m", "reflink=1", str(image)], check=True, capture_output=True)
    mnt.mkdir()
    device, fd = loops.attach(image)
    try:
        try:
            loops.mount(device, mnt, "xfs", flags=0)
        finally:
            os.close(fd)
        try:
            yield mnt
        finally:
            loops.unmount(mnt)
    finally:
        if not loops.wait_device_detached(device, image):
            loops.detach(device)
        image.unlink()


# ---------------------------------------------------------------------- table


def mark(ok: bool) -> str:
    return "met" if ok else "NOT met"


def show_filesystems(r: dict[str, Any]) -> None:
    f = r["filesystems"]
    print(f"filesystem volumes (ext4, {f['size']} each; appliance in a mount namespace of its own)")
    for key, row in f.items():
        if not key.isdigit():
            continue
        print(f"  N={key} created+exported {fmt(row, 'created_per_s', unit=' PVC/s')}  target >= {TARGET_PER_S:.0f}:"
              f" {mark(row['created_per_s'] >= TARGET_PER_S)}")
        print(f"  N={key} binder handover {fmt(row, 'annotated_per_s', unit=' PVC/s')}  (kube-controller-manager "
              "hands claims to the provisioner)")
        print(f"  N={key} latency p50     {fmt(row, 'p50_s', 1000, ' ms')}  (claim created -> PV created; from "
              f"handover {row['own_p50_s'] * 1000:.0f} ms)")
        own_p99 = row["own_p99_s"] * 1000
        print(f"  N={key} latency p99     {fmt(row, 'p99_s', 1000, ' ms')}  (from handover {own_p99:.0f} ms)")
        print(f"  N={key} deletion        {fmt(row, 'deleted_per_s', unit=' PV/s')}")
    print(f"  {f['present']} volumes: RSS {f['rss_mb']:.0f} MB own process, {f['rss_tree_mb']:.0f} MB with Ganesha and "
          f"its bus; images allocate {f['images_allocated_mb']:.0f} MiB")
    print(f"  cold restart with {f['present']} volumes {fmt(f, 'cold_restart_s', unit=' s')}  (all mounted again and "
          f"served) target < {TARGET_RESTART_S:.0f} s: {mark(f['cold_restart_s'] < TARGET_RESTART_S)}")
    print(f"    of which mounting all again {fmt(f, 'remount_s', unit=' s')}  (attach + mount, in parallel)")
    print(f"  clone of {f['clone_size_mb']} MiB ({f['clone_data_mb']} MiB data): reflink {f['clone_reflink_s']:.3f} s"
          f" target < {TARGET_REFLINK_S:.0f} s: {mark(f['clone_reflink_s'] < TARGET_REFLINK_S)}; sparse copy "
          f"{f['clone_sparse_s']:.3f} s")
