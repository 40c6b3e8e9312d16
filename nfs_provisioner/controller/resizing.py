"""Volume expansion for provisioners that can grow their asset.

No Go provisioner library does this for non-CSI volumes; kube-controller-manager
only says ``ExternalExpanding`` and waits for someone else. A bound claim of ours
that asks for more than its ``status.capacity``, in a class with
``allowVolumeExpansion: true``, is resized the way external-resizer finishes a
controller-only resize (NFS has no node step):

1. claim status: ``allocatedResources.storage`` = the new size,
   ``allocatedResourceStatuses.storage`` = ``ControllerResizeInProgress``,
   condition ``Resizing``; event ``Resizing``;
2. ``Expander.expand(volume, new_bytes)`` grows the asset;
3. PV ``spec.capacity.storage`` = the new size;
4. claim ``status.capacity.storage`` = the new size, resize conditions and
   ``allocatedResourceStatuses`` cleared; event ``VolumeResizeSuccessful``.

A failure emits ``VolumeResizeFailed``, marks ``ControllerResizeFailed`` and is
retried with backoff. Asking for less than the volume already has (possible after
a failed expansion) is refused with ``VolumeResizeFailed`` and not retried.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Collection
from typing import Any, Protocol

from nfs_provisioner import threads
from nfs_provisioner.controller import decisions, events
from nfs_provisioner.controller.queueing import RateLimiter, ShutDown, WorkQueue
from nfs_provisioner.controller.settings import RetrySettings
from nfs_provisioner.controller.watching import Informer, OnChange
from nfs_provisioner.kube import client as kube
from nfs_provisioner.kube import errors
from nfs_provisioner.kube.objects import Object
from nfs_provisioner.volumes import quantity

log = logging.getLogger(__name__)

RESIZING = "Resizing"
RESIZE_SUCCESSFUL = "VolumeResizeSuccessful"
RESIZE_FAILED = "VolumeResizeFailed"
IN_PROGRESS = "ControllerResizeInProgress"
FAILED = "ControllerResizeFailed"
RESIZE_CONDITIONS = ("Resizing", "FileSystemResizePending", "ControllerResizeError", "NodeResizeError")


class Expander(Protocol):
    def expand(self, volume: Object, new_bytes: int) -> None:
        """Grow the asset behind ``volume`` to ``new_bytes`` (idempotent). Raise to fail with a message."""


class ShrinkRefused(Exception):
    """The claim asks for less than the volume has."""


def chain(*handlers: OnChange) -> OnChange:
    """One informer callback calling several."""
    def call(old: Object | None, new: Object | None) -> None:
        for h in handlers:
            h(old, new)
    return call


def _storage(obj: Object, *path: str) -> str | None:
    cur: Any = obj
    for p in path:
        cur = (cur or {}).get(p)
    return None if cur is None else str(cur)


class Resizer:
    def __init__(self, *, api: kube.Client, expander: Expander, names: Collection[str], claims: Informer,
                 volumes: Informer, classes: Informer, recorder: events.EventRecorder, retry: RetrySettings,
                 leading: Callable[[], bool] = lambda: True,
                 owns: Callable[[Object], bool | None] = lambda volume: None) -> None:
        self.api, self.expander, self.names = api, expander, tuple(names)
        self.owns = owns
        """``Provisioner.owns``: a volume another instance made (``False``) is that instance's to resize."""
        self.claims, self.volumes, self.classes = claims, volumes, classes
        self.recorder = recorder
        self.leading = leading
        self.queue = WorkQueue("resize", RateLimiter(retry))
        self._thread: threading.Thread | None = None
        self._refused: dict[str, str] = {}
        """uid -> the requested size last refused as impossible (reported once per size)."""

    # ------------------------------------------------------------------ triggering

    def wanted(self, claim: Object) -> bool:
        """Bound claim asking for more (or less) than its status capacity says it has."""
        if (claim.get("status") or {}).get("phase") != "Bound" or decisions.is_deleting(claim):
            return False
        requested = _storage(claim, "spec", "resources", "requests", "storage")
        current = _storage(claim, "status", "capacity", "storage")
        if requested is None or current is None:
            return False
        try:
            have = quantity.to_bytes(current)
        except quantity.InvalidQuantity:
            return False
        try:
            return quantity.to_bytes(requested) != have
        except quantity.InvalidQuantity:
            return True  # a size no volume can have: sync() says so on the claim

    def on_claim(self, old: Object | None, new: Object | None) -> None:
        if new is not None and self.wanted(new):
            self.queue.add(str(new["metadata"]["uid"]))

    def start(self) -> None:
        self._thread = threads.spawn(self._work, name="resize-worker")
        # Claims that asked for more while nobody was watching.
        threads.spawn(self._enqueue_all, name="resize-initial-sync")

    def stop(self) -> None:
        self.queue.shut_down()
        if self._thread is not None and self._thread.is_alive():
            self._thread.join(10)

    def _enqueue_all(self) -> None:
        self.claims.synced.wait()
        for claim in self.claims.items():
            self.on_claim(None, claim)

    def _work(self) -> None:
        for informer in (self.claims, self.volumes, self.classes):
            informer.synced.wait()
        while True:
            try:
                key = self.queue.get(timeout=0.5)
            except ShutDown:
                return
            if key is None:
                continue
            try:
                if not self.leading():
                    self.queue.add_after(key, 2.0)
                elif self.sync(key):
                    self.queue.forget(key)
                else:
                    self.queue.add_rate_limited(key)
            except Exception:
                log.exception("resize %s failed unexpectedly", key)
                self.queue.add_rate_limited(key)
            finally:
                self.queue.done(key)

    # ------------------------------------------------------------------ one claim

    def sync(self, uid: str) -> bool:
        """Resize one claim if it needs it; True when nothing is left to retry."""
        claim = self.claims.get(uid)
        if claim is None or not self.wanted(claim):
            return True
        volume = self.volumes.get(str((claim.get("spec") or {}).get("volumeName") or ""))
        if volume is None or not decisions.is_ours(volume, self.names) or self.owns(volume) is False:
            return True
        cls = self.classes.get(decisions.claim_class(claim))
        if cls is None or not cls.get("allowVolumeExpansion"):
            return True
        key = decisions.claim_key(claim)
        requested = str(claim["spec"]["resources"]["requests"]["storage"])
        try:
            new_bytes = quantity.to_bytes(requested)
        except quantity.InvalidQuantity as e:
            if self._refused.get(uid) != requested:
                self._refused[uid] = requested
                msg = f"cannot resize volume {volume['metadata']['name']} to {requested}: {e}"
                self.recorder.event(claim, events.WARNING, RESIZE_FAILED, msg)
                log.warning("claim %s: %s", key, msg)
            return True  # nothing to retry until the claim asks for another size
        self._refused.pop(uid, None)
        pv_size = _storage(volume, "spec", "capacity", "storage") or "0"
        if new_bytes < quantity.to_bytes(pv_size):
            self.recorder.event(claim, events.WARNING, RESIZE_FAILED,
                                f"cannot shrink volume {volume['metadata']['name']} from {pv_size} to {requested}: "
                                "shrinking is not supported")
            log.warning("claim %s: refusing to shrink %s to %s", key, pv_size, requested)
            return True
        try:
            self._status(claim, requested, IN_PROGRESS, resizing=True)
            self.recorder.event(claim, events.NORMAL, RESIZING,
                                f"External resizer is resizing volume {volume['metadata']['name']}")
            self.expander.expand(volume, new_bytes)
            self.api.patch(kube.volumes_path(volume["metadata"]["name"]),
                           {"spec": {"capacity": {"storage": requested}}}, patch_type=kube.MERGE_PATCH)
            self._finish(claim, requested)
        except errors.NotFound:
            return True
        except errors.Conflict as e:
            # Someone else wrote the claim or PV meanwhile (the controller-manager does): not a failure of the
            # resize; retried from the fresh objects without an event.
            log.info("claim %s: resize to %s met a conflict, retrying: %s", key, requested, e)
            return False
        except Exception as e:  # noqa: BLE001 - reported on the claim, retried with backoff
            log.warning("claim %s: resize to %s failed: %s", key, requested, e)
            self.recorder.event(claim, events.WARNING, RESIZE_FAILED, f"resize volume to {requested} failed: {e}")
            try:
                self._status(claim, requested, FAILED, resizing=False)
            except errors.KubeError as e2:
                log.warning("claim %s: cannot record the failed resize: %s", key, e2)
            return False
        self.recorder.event(claim, events.NORMAL, RESIZE_SUCCESSFUL, "Resize volume succeeded")
        log.info("claim %s: volume %s resized to %s", key, volume["metadata"]["name"], requested)
        return True

    def _conditions(self, claim: Object) -> list[Object]:
        conditions = (claim.get("status") or {}).get("conditions") or []
        return [c for c in conditions if c.get("type") not in RESIZE_CONDITIONS]

    def _status(self, claim: Object, requested: str, state: str, *, resizing: bool) -> None:
        def status(c: Object) -> Object:
            conditions = self._conditions(c)
            if resizing:
                now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
                conditions.append({"type": "Resizing", "status": "True", "lastTransitionTime": now})
            return {"allocatedResources": {"storage": requested}, "allocatedResourceStatuses": {"storage": state},
                    "conditions": conditions}
        patch_claim_status(self.api, claim, status)

    def _finish(self, claim: Object, requested: str) -> None:
        patch_claim_status(self.api, claim, lambda c: {"capacity": {"storage": requested},
                                                       "conditions": self._conditions(c),
                                                       "allocatedResourceStatuses": None})


CONFLICT_ATTEMPTS = 5


def patch_claim_status(api: kube.Client, claim: Object, status: Callable[[Object], Object]) -> Object:
    """Merge-patch the claim's status, built by ``status(claim)`` and guarded by its resourceVersion; on a
    conflict (the claim changed meanwhile: the controller-manager writes it too) again from the claim as it is
    now, read with the verbs rbac.yaml grants (list, not get). Updates ``claim`` in place."""
    m = claim["metadata"]
    path = kube.claims_path(m["namespace"], m["name"])
    for attempt in range(1, CONFLICT_ATTEMPTS + 1):
        try:
            updated: Object = api.patch(path + "/status", {"metadata": {"resourceVersion": m.get("resourceVersion")},
                                                           "status": status(claim)}, patch_type=kube.MERGE_PATCH)
            break
        except errors.Conflict:
            if attempt == CONFLICT_ATTEMPTS:
                raise
            fresh = kube.read_claim(api, m["namespace"], m["name"])
            if fresh is None:
                raise errors.NotFound(404, "NotFound", f"claim {m['namespace']}/{m['name']} is gone") from None
            m["resourceVersion"] = fresh["metadata"]["resourceVersion"]
            claim["status"] = fresh.get("status") or {}
    m["resourceVersion"] = updated["metadata"]["resourceVersion"]
    claim["status"] = updated.get("status") or {}
    return updated
