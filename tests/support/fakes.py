"""The fast lane's harness: a :class:`ProvisionController` on the in-memory API (``controller.testing``), with
retries in milliseconds, and the look-ups its tests share."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry

from nfs_provisioner.controller import (
    ClientSettings,
    ControllerSettings,
    ProvisionController,
    Provisioner,
    RetrySettings,
)
from nfs_provisioner.controller.testing import FakeApi
from nfs_provisioner.kube import client as kube
from nfs_provisioner.kube import errors

NAME = "example.com/fake"
"""The provisioner name of the controllers started here."""
NS = "ns"
FAST = RetrySettings(base_delay=0.05, max_delay=0.2, fixed_delay=0.05, overall_qps=0, save_retry_delay=0.05)


@contextlib.contextmanager
def running(api: FakeApi, provisioner: Provisioner, **kw: Any) -> Iterator[ProvisionController]:
    """A started controller (two workers per queue, caches synced), stopped afterwards; ``kw``: settings."""
    s = ControllerSettings(provisioner_name=NAME, threadiness=2, resync_period=30.0, retry=kw.pop("retry", FAST),
                           shutdown_grace=2.0, client=ClientSettings(qps=0), **kw)
    c = ProvisionController(provisioner, s, api=api, registry=CollectorRegistry())
    c.start()
    try:
        for informer in c.informers:
            assert informer.synced.wait(5), f"{informer.name} did not sync"
        yield c
    finally:
        c.stop(wait=True)


def volume(api: kube.Client, name: str) -> dict[str, Any] | None:
    try:
        return api.get(kube.volumes_path(name))
    except errors.NotFound:
        return None


def claim_of(api: kube.Client, name: str, namespace: str = NS) -> dict[str, Any] | None:
    return kube.read_claim(api, namespace, name)


def reasons(api: FakeApi, name: str) -> list[str]:
    return [reason for _, reason, _ in api.events_about(name)]


def pv_name(claim: dict[str, Any]) -> str:
    return f"pvc-{claim['metadata']['uid']}"
