"""Hostile clone sources and what a failing copy must never do (issue 28: D2, D3, D10, D17).

- D2: a source tree deeper than Python's recursion limit is measured, copied and removed without recursion,
  and any unexpected error of a copy thread is a reported failure of the claim, never a clone Pending forever.
- D3: measuring, copying and removing a tree hold a bounded number of descriptors whatever its shape (checked
  at a lowered ``RLIMIT_NOFILE``, in a child process).
- D10: copies in progress reserve the space they will use; concurrent clones that do not fit are refused before
  copying, the others complete, nothing runs out of space mid-copy.
- D17: errors from descriptor-relative operations name the path (a volume record that is a directory).

The unit tests work on real trees in the test's temp directory; the e2e tests run the real appliance (its own
Ganesha) against the local control plane, as the users' claims would.
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from nfs_provisioner.kube import client as kube
from tests.support import kubecluster, smallfs, wait
from tests.support.appliance_env import Appliance
from tests.support.builders import make_claim, make_class
from tests.support.clones import bound, claim, events, failures, leftovers
from tests.support.hostile_clones import deep_tmp, nest, read_nested, wide

__all__ = ["deep_tmp"]  # the shared fixtures (tests/support/hostile_clones.py)


def appliance_on(cluster: kubecluster.Cluster, root: Path, tmp_path: Path, unique: str, tag: str,
                 **kw: Any) -> Appliance:
    return Appliance(kubeconfig=cluster.kubeconfig, export_root=root, provisioner=f"example.com/{tag}-{unique}",
                     log_dir=tmp_path, **kw)


@pytest.mark.e2e
@pytest.mark.kube
@pytest.mark.ganesha
def test_d2_clone_of_a_deep_volume_is_bound_and_served(cluster: kubecluster.Cluster, kapi: kube.Client,
                                                        namespace: str, unique: str, deep_tmp: Path) -> None:
    """A tenant nests 600 directories in its volume, then clones it: the clone is Bound with every level (before
    the fix: Pending forever, "0 % ... after N s" every second)."""
    tmp_path = deep_tmp
    root = tmp_path / "export"
    root.mkdir()
    a = appliance_on(cluster, root, tmp_path, unique, "deep")
    cls = f"deep-{unique}"
    make_class(cls, a.provisioner, api=kapi)
    a.start()
    try:
        make_claim(namespace, "live", cls, api=kapi)
        src = root / bound(kapi, namespace, "live")["spec"]["volumeName"]
        nest(src, depth=600)
        make_claim(namespace, "copy", cls, source="live", api=kapi)
        c = bound(kapi, namespace, "copy", timeout=60, what=lambda: f"clone Bound\n{a.log()}")
        dst = root / c["spec"]["volumeName"]
        assert read_nested(dst, depth=600) == read_nested(src, depth=600)
        nfs = a.client()
        assert nfs.cat(dst / "d" / "d" / "f2").stdout == b"level 2\n"
        assert not failures(kapi, namespace, "copy"), events(kapi, namespace, "copy")
    finally:
        a.close()
        kapi.delete(kube.classes_path(cls))


def under_nofile(limit: int) -> Callable[[list[str]], list[str]]:
    """Run the appliance with soft and hard RLIMIT_NOFILE ``limit`` (a pod's common default is 1024)."""
    return lambda argv: ["prlimit", f"--nofile={limit}:{limit}", "--", *argv]


@pytest.mark.e2e
@pytest.mark.kube
@pytest.mark.ganesha
def test_d3_clone_of_many_sibling_directories_at_1024_descriptors(cluster: kubecluster.Cluster,
                                                                  kapi: kube.Client, namespace: str, unique: str,
                                                                  tmp_path: Path) -> None:
    """1500 sibling directories in the source, the appliance at a descriptor limit of 1024: the clone is Bound
    (before the fix: refused on every retry with "Too many open files")."""
    root = tmp_path / "export"
    root.mkdir()
    a = appliance_on(cluster, root, tmp_path, unique, "wide", wrapper=under_nofile(1024))
    cls = f"wide-{unique}"
    make_class(cls, a.provisioner, api=kapi)
    a.start()
    try:
        make_claim(namespace, "live", cls, api=kapi)
        src = root / bound(kapi, namespace, "live")["spec"]["volumeName"]
        wide(src, dirs=1500)
        make_claim(namespace, "copy", cls, source="live", api=kapi)
        c = bound(kapi, namespace, "copy", timeout=90, what=lambda: f"clone Bound\n{a.log()}")
        dst = root / c["spec"]["volumeName"]
        assert sorted(os.listdir(dst)) == sorted(os.listdir(src))
        assert (dst / "s01499" / "f").read_bytes() == b"1499\n"
        assert not failures(kapi, namespace, "copy"), events(kapi, namespace, "copy")
    finally:
        a.close()
        kapi.delete(kube.classes_path(cls))


@pytest.fixture
def root_96m(tmp_path: Path) -> Iterator[Path]:
    """A 96 MiB ext4 on a loop device (no shared blocks), unmounted afterwards."""
    with smallfs.mounted(tmp_path / "small", image=tmp_path / "small.img", size=96 << 20) as mnt:
        yield mnt / "export"


@pytest.mark.e2e
@pytest.mark.kube
@pytest.mark.ganesha
def test_d10_concurrent_clones_that_do_not_fit_are_refused_before_copying(
        cluster: kubecluster.Cluster, kapi: kube.Client, namespace: str, unique: str, tmp_path: Path,
        root_96m: Path) -> None:
    """Six clones of a 20 MiB volume at once on a 96 MiB export root: those that fit are Bound, the others
    refused with an event naming the reserved space, before a byte is copied; no copy runs out of space and the
    export root is never full (before the fix all six passed the check and failed mid-copy with ENOSPC, filling
    the disk under the other tenants)."""
    a = appliance_on(cluster, root_96m, tmp_path, unique, "room")
    cls = f"room-{unique}"
    make_class(cls, a.provisioner, api=kapi)
    a.start()
    try:
        make_claim(namespace, "live", cls, api=kapi)
        src = root_96m / bound(kapi, namespace, "live")["spec"]["volumeName"]
        for i in range(20):  # 20 MiB in 20 files: copies take a while and overlap
            (src / f"part{i:02}").write_bytes(os.urandom(1 << 20))
        os.sync()
        names = [f"copy{i}" for i in range(6)]
        start = threading.Barrier(len(names))
        made: dict[str, dict[str, Any]] = {}

        def create(n: str) -> None:
            start.wait()
            made[n] = make_claim(namespace, n, cls, source="live", api=kapi)

        threads = [threading.Thread(target=create, args=(n,)) for n in names]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

        def settled() -> dict[str, str] | None:
            state = {}
            for n in names:
                if claim(kapi, namespace, n)["status"].get("phase") == "Bound":
                    state[n] = "Bound"
                elif failures(kapi, namespace, n):
                    state[n] = "refused"
                else:
                    return None
            return state

        state = wait.until(settled, timeout=120, what=lambda: f"every clone Bound or refused\n{a.log()}")
        time.sleep(3)  # any copy still going would fail now
        bound_ = [n for n in names if claim(kapi, namespace, n)["status"].get("phase") == "Bound"]
        refused = [n for n in names if n not in bound_]
        st = os.statvfs(root_96m)
        print(f"bound {bound_}, refused {refused}, {st.f_bavail * st.f_frsize} bytes free")
        assert bound_ and refused, state
        for n in refused:
            for msg in failures(kapi, namespace, n):
                assert msg.startswith("cannot clone: a full copy of ") and "reserved for copies in progress" in msg \
                    and msg.endswith("no volume is provisioned"), msg
            assert leftovers(root_96m, f"pvc-{made[n]['metadata']['uid']}") == [], n
        for n in bound_:
            assert not failures(kapi, namespace, n), events(kapi, namespace, n)
            dst = root_96m / claim(kapi, namespace, n)["spec"]["volumeName"]
            assert (dst / "part19").read_bytes() == (src / "part19").read_bytes()
        text = a.text()
        assert "No space left on device" not in text, a.log()
        assert not re.search(r"copy from .* failed", text), a.log()
        assert st.f_bavail > 0  # the copies never filled the filesystem under the other tenants
    finally:
        a.close()
        kapi.delete(kube.classes_path(cls))


@pytest.mark.e2e
@pytest.mark.kube
@pytest.mark.ganesha
def test_d17_failed_delete_of_a_record_that_is_a_directory_names_it(
        cluster: kubecluster.Cluster, kapi: kube.Client, namespace: str, unique: str, tmp_path: Path) -> None:
    """The volume record replaced by a directory: the VolumeFailedDelete event names the record's path (before
    the fix: "[Errno 21] Is a directory: 10", a descriptor number) and nothing is deleted; the record put back,
    the volume is deleted."""
    root = tmp_path / "export"
    root.mkdir()
    a = appliance_on(cluster, root, tmp_path, unique, "record")
    cls = f"record-{unique}"
    make_class(cls, a.provisioner, api=kapi)
    a.start()
    try:
        make_claim(namespace, "vol", cls, api=kapi)
        pv = bound(kapi, namespace, "vol")["spec"]["volumeName"]
        (root / pv / "data").write_text("keep me")
        record = root / ".volumes" / f"{pv}.json"
        saved = record.read_text()
        record.unlink()
        record.mkdir()
        kapi.delete(kube.claims_path(namespace, "vol"))

        def failed() -> list[str]:
            items = kapi.get(kube.events_path("default"), fieldSelector=f"involvedObject.name={pv}")["items"]
            return [e["message"] for e in items if e["reason"] == "VolumeFailedDelete"]

        msgs = wait.until(failed, timeout=60, what=lambda: f"VolumeFailedDelete for {pv}\n{a.log()}")
        assert str(record) in msgs[0] and not re.search(r"Errno 21\] Is a directory: \d+", msgs[0]), msgs
        assert (root / pv / "data").read_text() == "keep me"
        record.rmdir()
        record.write_text(saved)
        wait.until(lambda: not (root / pv).exists(), timeout=60, what=lambda: f"{pv} deleted\n{a.log()}")
    finally:
        a.close()
        kapi.delete(kube.classes_path(cls))
