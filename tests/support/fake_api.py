"""What tests/{kube,unit}/test_fake_api.py share (one module per lane: the tests of one module
needed different things)."""

from __future__ import annotations

import threading
import uuid
from typing import Any

import pytest

from nfs_provisioner.kube import client as kube
from nfs_provisioner.kube import errors
from tests.support import wait

Object = dict[str, Any]


FINALIZER = "example.com/hold"


def lease(namespace: str, name: str) -> Object:
    return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": name},
            "spec": {"holderIdentity": "a", "leaseDurationSeconds": 15}}


def contract(api: kube.Client, namespace: str) -> list[str]:
    """resourceVersion, 409s, 404s, finalizers and watch events of one object; returns the watched event types."""
    name = f"l-{uuid.uuid4().hex[:6]}"
    path = kube.leases_path(namespace, name)
    created = api.create(kube.leases_path(namespace), lease(namespace, name))
    rv0 = created["metadata"]["resourceVersion"]
    seen: list[Object] = []
    stream = api.watch(kube.leases_path(namespace), resource_version=rv0, timeout_seconds=30)
    reader = threading.Thread(target=lambda: [seen.append(e) for e in stream if e["object"]["metadata"].get(
        "name") == name], daemon=True)
    reader.start()
    try:
        with pytest.raises(errors.AlreadyExists):
            api.create(kube.leases_path(namespace), lease(namespace, name))
        with pytest.raises(errors.NotFound):
            api.get(kube.leases_path(namespace, name + "-missing"))
        with pytest.raises(errors.NotFound):
            api.patch(kube.leases_path(namespace, name + "-missing"), {"spec": {"holderIdentity": "b"}})

        fresh = api.get(path)
        fresh["spec"]["holderIdentity"] = "b"
        updated = api.replace(path, fresh)
        assert int(updated["metadata"]["resourceVersion"]) > int(rv0)
        stale = dict(created, spec={"holderIdentity": "c"})
        with pytest.raises(errors.Conflict) as info:
            api.replace(path, stale)  # written from an old version: refused, nothing changed
        assert not isinstance(info.value, errors.AlreadyExists)
        with pytest.raises(errors.Conflict):
            api.patch(path, {"metadata": {"resourceVersion": rv0}, "spec": {"holderIdentity": "c"}},
                      patch_type=kube.MERGE_PATCH)
        assert api.get(path)["spec"]["holderIdentity"] == "b"

        held = api.patch(path, {"metadata": {"finalizers": [FINALIZER]}})
        assert held["metadata"]["finalizers"] == [FINALIZER]
        marked = api.delete(path)
        assert marked is not None and marked["metadata"].get("deletionTimestamp")
        assert api.get(path)["metadata"]["deletionTimestamp"]  # still there while the finalizer is
        with pytest.raises(errors.Invalid):
            api.patch(path, {"metadata": {"finalizers": ["example.com/another"]}})
        api.patch(path, {"metadata": {"$deleteFromPrimitiveList/finalizers": [FINALIZER]}})
        wait.until(lambda: _gone(api, path), timeout=10, what="the object gone with its last finalizer")
        wait.until(lambda: seen and seen[-1]["type"] == "DELETED", timeout=10, what="the DELETED event")
    finally:
        stream.close()
        reader.join(5)
    versions = [int(e["object"]["metadata"]["resourceVersion"]) for e in seen]
    assert versions == sorted(versions) and all(v > int(rv0) for v in versions), versions
    return [e["type"] for e in seen]


def _gone(api: kube.Client, path: str) -> bool:
    try:
        api.get(path)
    except errors.NotFound:
        return True
    return False


EXPECTED = ["MODIFIED", "MODIFIED", "MODIFIED", "DELETED"]
"""After the create (the watch starts at its version): replace, finalizer added, delete marks it, the finalizer's
removal deletes it (one DELETED, no MODIFIED for the emptied list)."""
