"""Helpers for the controller tests: a recording hostPath provisioner, an in-process
controller with fast retries, plain-dict object builders and event look-ups."""

from __future__ import annotations

import contextlib
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from nfs_provisioner.controller import (
    ClientSettings,
    ControllerSettings,
    Object,
    ProvisionController,
    ProvisionOptions,
    RetrySettings,
    decisions,
)
from nfs_provisioner.kube import client as kube
from nfs_provisioner.kube import errors
from tests.support import wait
from tests.support.paths import REPO

sys.path.insert(0, str(REPO / "examples" / "hostpath"))

import hostpath_provisioner

HOSTPATH_SCRIPT = REPO / "examples" / "hostpath" / "hostpath_provisioner.py"
CRASHY_SCRIPT = REPO / "tests" / "support" / "controller_crashy.py"

FAST_RETRY = RetrySettings(base_delay=0.2, max_delay=1.0, fixed_delay=0.2, overall_qps=0, save_retry_delay=0.3)


class Recording(hostpath_provisioner.HostPathProvisioner):
    """The guide's hostPath provisioner, recording calls, with optional injected behaviour."""

    def __init__(self, pv_dir: Path, identity: str = "node-a") -> None:
        super().__init__(pv_dir, identity)
        self.provisions: list[ProvisionOptions] = []
        self.deletes: list[Object] = []
        self.on_provision: Callable[[ProvisionOptions], None] | None = None
        """Called before the directory is created; raise to fail the attempt."""
        self.after_provision: Callable[[ProvisionOptions], None] | None = None
        """Called after the directory is created; raise to fail the attempt (asset left behind)."""
        self.on_delete: Callable[[Object], None] | None = None
        self.block: bool = False
        self.lock = threading.Lock()

    def provision(self, options: ProvisionOptions) -> Object:
        with self.lock:
            self.provisions.append(options)
        if self.on_provision:
            self.on_provision(options)
        pv = super().provision(options)
        if self.after_provision:
            self.after_provision(options)
        return pv

    def delete(self, volume: Object) -> None:
        with self.lock:
            self.deletes.append(volume)
        if self.on_delete:
            self.on_delete(volume)
        super().delete(volume)

    def supports_block(self) -> bool:
        return self.block

    def provisions_for(self, pv_name: str) -> int:
        return sum(1 for o in self.provisions if o.pv_name == pv_name)


def settings(name: str, **kw: Any) -> ControllerSettings:
    base = ControllerSettings(provisioner_name=name, resync_period=30.0, retry=FAST_RETRY, shutdown_grace=5.0,
                              client=ClientSettings(qps=0, burst=1))
    return replace(base, **kw)


@contextlib.contextmanager
def controller(api: kube.Client, provisioner: Any, s: ControllerSettings,
               registry: CollectorRegistry | None = None, **kw: Any) -> Iterator[ProvisionController]:
    c = ProvisionController(provisioner, s, api=api, registry=registry or CollectorRegistry(), **kw)
    c.start()
    try:
        for inf in c.informers:
            assert inf.synced.wait(30), f"{inf.name} did not sync"
        yield c
    finally:
        c.stop(wait=True)


# ---------------------------------------------------------------------- objects


def get_claim(api: kube.Client, namespace: str, name: str) -> Object | None:
    try:
        return api.get(kube.claims_path(namespace, name))
    except errors.NotFound:
        return None


def get_volume(api: kube.Client, name: str) -> Object | None:
    try:
        return api.get(kube.volumes_path(name))
    except errors.NotFound:
        return None


def pv_name(claim: Object) -> str:
    return f"pvc-{claim['metadata']['uid']}"


def events_about(api: kube.Client, namespace: str, name: str) -> list[Object]:
    items: list[Object] = api.get(kube.events_path(namespace),
                                  fieldSelector=f"involvedObject.name={name}")["items"]
    return items


def reasons(api: kube.Client, namespace: str, name: str, source: str | None = None) -> list[str]:
    return [e["reason"] for e in sorted(events_about(api, namespace, name), key=lambda e: e["metadata"]["name"])
            if source is None or (e.get("source") or {}).get("component") == source]


def wait_bound(api: kube.Client, namespace: str, name: str, timeout: float = 30) -> Object:
    return wait.until(lambda: (c := get_claim(api, namespace, name)) and c.get("status", {}).get("phase") == "Bound"
                      and c, timeout=timeout, what=f"claim {namespace}/{name} Bound")


def wait_gone(fn: Callable[[], Object | None], what: str, timeout: float = 30) -> None:
    wait.until(lambda: fn() is None, timeout=timeout, what=what)


def delete_claim(api: kube.Client, namespace: str, name: str) -> None:
    with contextlib.suppress(errors.NotFound):
        api.delete(kube.claims_path(namespace, name))


class PausableProxy:
    """A TCP proxy to the API server that can stop relaying (a hung/slow API server, for one client only)."""

    def __init__(self, upstream: str) -> None:
        host, _, port = upstream.rpartition("//")[2].rpartition(":")
        self.upstream = (host, int(port))
        self.paused = threading.Event()
        self._closed = threading.Event()
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.port = self._sock.getsockname()[1]
        self._conns: list[Any] = []
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                down, _ = self._sock.accept()
            except OSError:
                return
            up = socket.create_connection(self.upstream)
            self._conns += [down, up]
            for a, b in ((down, up), (up, down)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src: Any, dst: Any) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                while self.paused.is_set() and not self._closed.is_set():
                    time.sleep(0.05)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.close()

    def close(self) -> None:
        self._closed.set()
        self._sock.close()
        for c in self._conns:
            with contextlib.suppress(OSError):
                c.close()


def purge(api: kube.Client, provisioner: str) -> None:
    """Leave the shared cluster clean after a test: drop our finalizers from claims and volumes of
    ``provisioner`` and delete its volumes (a stopped controller no longer does it)."""
    from concurrent.futures import ThreadPoolExecutor

    def claim_cleanup(c: Object) -> None:
        fins = [f for f in decisions.finalizers(c) if f.startswith(decisions.CLAIM_FINALIZER_PREFIX)]
        if fins and decisions.claim_provisioner(c) == provisioner:
            with contextlib.suppress(errors.NotFound):
                api.patch(kube.claims_path(c["metadata"]["namespace"], c["metadata"]["name"]),
                          {"metadata": {"$deleteFromPrimitiveList/finalizers": fins}})

    def volume_cleanup(v: Object) -> None:
        if decisions.annotations_of(v).get(decisions.ANN_PROVISIONED_BY) != provisioner:
            return
        with contextlib.suppress(errors.NotFound):
            if decisions.PV_FINALIZER in decisions.finalizers(v):
                api.patch(kube.volumes_path(v["metadata"]["name"]),
                          {"metadata": {"$deleteFromPrimitiveList/finalizers": [decisions.PV_FINALIZER]}})
            api.delete(kube.volumes_path(v["metadata"]["name"]))

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(claim_cleanup, api.get(kube.claims_path())["items"]))
        list(pool.map(volume_cleanup, api.get(kube.volumes_path())["items"]))
    for cls in api.get(kube.classes_path())["items"]:
        if cls.get("provisioner") == provisioner:
            with contextlib.suppress(errors.NotFound):
                api.delete(kube.classes_path(cls["metadata"]["name"]))


def provisioner_fixture(prefix: str) -> Any:
    """A ``name`` fixture for a test module: this test's provisioner name, ``example.com/<prefix>-<unique>``;
    what it leaves behind in the shared cluster is purged afterwards. Use: ``name = provisioner_fixture("t")``."""

    @pytest.fixture
    def name(kapi: kube.Client, unique: str) -> Iterator[str]:
        provisioner = f"example.com/{prefix}-{unique}"
        yield provisioner
        purge(kapi, provisioner)

    return name
