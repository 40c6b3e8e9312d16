"""What the clone tests share (tests/e2e/test_clones.py, tests/e2e/test_hostile_clones.py): a claim as the API
server has it, its PV once bound, its events and what a failed clone leaves."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from nfs_provisioner.kube import client as kube
from tests.support import wait

Object = dict[str, Any]


def claim(api: kube.Client, namespace: str, name: str) -> Object:
    got: Object = api.get(kube.claims_path(namespace, name))
    return got


def bound(api: kube.Client, namespace: str, name: str, timeout: float = 60, what: Any = None) -> Object:
    return wait.until(lambda: (c := claim(api, namespace, name))["status"].get("phase") == "Bound" and c,
                      timeout=timeout, what=what or f"claim {name} Bound")


def events(api: kube.Client, namespace: str, name: str) -> list[tuple[str, str, str]]:
    items = api.get(kube.events_path(namespace), fieldSelector=f"involvedObject.name={name}")["items"]
    return [(e["type"], e["reason"], e["message"]) for e in sorted(items, key=lambda e: e["metadata"]["name"])]


def failures(api: kube.Client, namespace: str, name: str) -> list[str]:
    return [m for t, r, m in events(api, namespace, name) if r == "ProvisioningFailed"]


def leftovers(root: Path, pv: str) -> list[str]:
    """What the appliance keeps of a volume ``pv``: directory, record, export file, clone markers."""
    found = [str(p.relative_to(root)) for p in root.rglob(f"*{pv}*")]
    return sorted(found)
