"""In-memory fakes of what the controller talks to, shipped for tests (ours and a library user's).

:class:`FakeApi` is a :class:`nfs_provisioner.kube.client.Client` keeping claims, volumes, classes, events, nodes
and leases in memory, answering as the API server does: get, paged list (``metadata.name``/``namespace`` field
selectors), create, replace, merge and strategic-merge patch (finalizers merged, ``$deleteFromPrimitiveList``),
delete, ``/status``; one resourceVersion counter; 409 ``AlreadyExists``, 409 ``Conflict`` for a stale
``metadata.resourceVersion``, 404, 422 for a new finalizer on an object being deleted; a delete of an object with
finalizers only marks it (``deletionTimestamp``), the write that empties them removes it; watches deliver
``ADDED``/``MODIFIED``/``DELETED`` in version order and end after ``timeoutSeconds``. :meth:`FakeApi.fail` makes
requests fail, :meth:`FakeApi.expire_watches` and :meth:`FakeApi.compact` inject 410 Gone in its two shapes. It is
not kube-controller-manager (:meth:`FakeApi.bind`/:meth:`FakeApi.release` play the PV binder when a test says
so), nor admission (no ``pvc-protection`` finalizers), nor a JSON-patch server; tests/kube/test_fake_api.py holds it
to the real API server's contract. :class:`MemoryProvisioner` is a :class:`Provisioner` over a dict.
"""

from __future__ import annotations

import bisect
import copy
import datetime
import itertools
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

from nfs_provisioner.controller.interface import Notice, Object, Provisioner, ProvisionOptions
from nfs_provisioner.kube import client as kube
from nfs_provisioner.kube import errors


@dataclass(frozen=True)
class Resource:
    plural: str
    kind: str
    api_version: str
    namespaced: bool
    status: bool
    """Has a ``status`` subresource: writes to the object keep its status, writes to ``/status`` only change it."""


RESOURCES = {r.plural: r for r in (
    Resource("persistentvolumeclaims", "PersistentVolumeClaim", "v1", True, True),
    Resource("persistentvolumes", "PersistentVolume", "v1", False, True),
    Resource("storageclasses", "StorageClass", "storage.k8s.io/v1", False, False),
    Resource("events", "Event", "v1", True, False),
    Resource("nodes", "Node", "v1", False, True),
    Resource("leases", "Lease", "coordination.k8s.io/v1", True, False),
)}

MERGED_LISTS = {("metadata", "finalizers")}
"""Primitive lists a strategic merge patch merges (``patchStrategy: merge``) instead of replacing."""


@dataclass(frozen=True)
class Target:
    """What a request path names."""

    resource: Resource
    namespace: str | None
    name: str | None
    subresource: str | None = None


def parse_path(path: str) -> Target:
    """The resource, namespace, name and subresource of an API path (404 for anything else)."""
    parts = [unquote(p) for p in path.split("?", 1)[0].strip("/").split("/")]
    if parts[:2] == ["api", "v1"]:
        version, rest = "v1", parts[2:]
    elif parts[0] == "apis" and len(parts) >= 3:
        version, rest = f"{parts[1]}/{parts[2]}", parts[3:]
    else:
        raise _not_found(path)
    namespace = None
    if len(rest) >= 3 and rest[0] == "namespaces":
        namespace, rest = rest[1], rest[2:]
    resource = RESOURCES.get(rest[0]) if rest else None
    if resource is None or resource.api_version != version or len(rest) > 3:
        raise _not_found(path)
    if namespace is not None and not resource.namespaced:
        raise _not_found(path)
    name = rest[1] if len(rest) > 1 else None
    sub = rest[2] if len(rest) > 2 else None
    if (resource.namespaced and namespace is None and name) or (sub and (sub != "status" or not resource.status)):
        raise _not_found(path)
    return Target(resource, namespace, name, sub)


def _not_found(what: str) -> errors.NotFound:
    return errors.NotFound(404, "NotFound", f"{what} not found", {"reason": "NotFound", "code": 404})


def _status(cls: type[errors.ApiError], code: int, reason: str, message: str) -> errors.ApiError:
    return cls(code, reason, message, {"kind": "Status", "reason": reason, "message": message, "code": code})


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def merge_patch(target: Any, patch: Any, *, strategic: bool = False, at: tuple[str, ...] = ()) -> Any:
    """``target`` with ``patch`` applied (RFC 7386; ``strategic``: also the directives the controller sends)."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if strategic and key.startswith("$deleteFromPrimitiveList/"):
            name = key.split("/", 1)[1]
            kept = [x for x in out.get(name) or [] if x not in value]
            if kept:
                out[name] = kept
            else:
                out.pop(name, None)
        elif strategic and key.startswith("$"):
            continue  # $setElementOrder, $retainKeys, $patch: not sent by this project
        elif value is None:
            out.pop(key, None)
        elif strategic and isinstance(value, list) and (*at, key) in MERGED_LISTS:
            current = list(out.get(key) or [])
            out[key] = current + [x for x in value if x not in current]
        else:
            out[key] = merge_patch(out.get(key), value, strategic=strategic, at=(*at, key))
    return out


@dataclass
class _Rule:
    error: Exception
    method: str | None
    resource: str | None
    name: str | None
    subresource: str | None
    times: int
    after: bool

    def matches(self, method: str, target: Target) -> bool:
        return ((self.method is None or self.method == method) and self.times > 0
                and (self.resource is None or self.resource == target.resource.plural)
                and (self.name is None or self.name == target.name)
                and (self.subresource is None or self.subresource == target.subresource))


@dataclass(frozen=True)
class _Change:
    version: int
    type: str
    resource: str
    namespace: str | None
    obj: Object


class FakeApi(kube.Client):
    """The API server in memory (see the module). Thread-safe; every answer is a copy."""

    def __init__(self) -> None:  # no super().__init__: no credentials, no connection pool
        self.settings = kube.ClientSettings()
        self.host = "memory://fake-api"
        self._cond = threading.Condition()
        self._objects: dict[tuple[str, str, str], Object] = {}
        self._changes: list[_Change] = []
        self._version = 1000
        self._compacted = 0
        self._rules: list[_Rule] = []
        self._watches: set[FakeWatch] = set()
        self.requests: list[tuple[str, str]] = []
        """Every request as (method, path), watches as ``("WATCH", path)``, in order."""

    # ------------------------------------------------------------------ what tests use

    def fail(self, error: Exception, *, method: str | None = None, resource: str | None = None,
             name: str | None = None, subresource: str | None = None, times: int = 1,
             after: bool = False) -> None:
        """Make the next ``times`` requests matching ``method`` (GET, POST, PUT, PATCH, DELETE, WATCH),
        ``resource`` (plural), ``name`` and ``subresource`` (``status``) raise ``error``; ``after``: once the
        request has been applied (its answer lost)."""
        with self._cond:
            self._rules.append(_Rule(error, method, resource, name, subresource, times, after))

    def expire_watches(self) -> None:
        """Every open watch ends with an ``ERROR`` event of code 410 (its version expired), as after a compaction
        under a running watch."""
        self.compact()
        with self._cond:
            for w in self._watches:
                w.expired = True
            self._cond.notify_all()

    def compact(self) -> None:
        """Every version up to now is compacted: a watch from one of them gets HTTP 410 Gone (a list gives a newer
        one: the counter moves on, as etcd's revision does with writes to other resources)."""
        with self._cond:
            self._compacted = self._version
            self._version += 1

    def objects(self, resource: str, namespace: str | None = None) -> list[Object]:
        """Copies of the stored objects of a resource (plural)."""
        with self._cond:
            return [copy.deepcopy(o) for (r, ns, _), o in sorted(self._objects.items())
                    if r == resource and (namespace is None or ns == namespace)]

    def events_about(self, name: str) -> list[tuple[str, str, str]]:
        """(type, reason, message) of the Events posted about objects named ``name``, in order."""
        return [(e.get("type", ""), e.get("reason", ""), e.get("message", "")) for e in self.objects("events")
                if (e.get("involvedObject") or {}).get("name") == name]

    def bind(self, namespace: str, claim: str, volume: str) -> None:
        """What the PV binder does once a PV for the claim exists: both Bound to each other, the claim's status
        showing the PV's capacity and access modes."""
        c = self.patch(kube.claims_path(namespace, claim), {"spec": {"volumeName": volume}})
        pv = self.get(kube.volumes_path(volume))
        self.patch(kube.claims_path(namespace, claim) + "/status", {"status": {
            "phase": "Bound", "capacity": (pv.get("spec") or {}).get("capacity"),
            "accessModes": (pv.get("spec") or {}).get("accessModes")}}, patch_type=kube.MERGE_PATCH)
        self.patch(kube.volumes_path(volume), {"spec": {"claimRef": {
            "kind": "PersistentVolumeClaim", "apiVersion": "v1", "namespace": namespace, "name": claim,
            "uid": c["metadata"]["uid"]}}}, patch_type=kube.MERGE_PATCH)
        self.patch(kube.volumes_path(volume) + "/status", {"status": {"phase": "Bound"}})

    def release(self, volume: str) -> None:
        """What the PV binder does when the claim of a bound PV is gone: the PV is Released."""
        self.patch(kube.volumes_path(volume) + "/status", {"status": {"phase": "Released"}})

    # ------------------------------------------------------------------ kube.Client

    def request(self, method: str, path: str, *, query: Mapping[str, Any] | None = None,
                body: Any = None, content_type: str = "application/json",
                timeout: float | None = None, answer: bool = True) -> Any:
        target = parse_path(path)
        with self._cond:
            self.requests.append((method, path))
            rule = self._rule(method, target)
            if rule is not None and not rule.after:
                raise rule.error
            if method == "GET":
                result: Any = self._get(target, dict(query or {}))
            elif method == "POST":
                result = self._create(target, body)
            elif method in ("PUT", "PATCH"):
                result = self._update(target, method, body, content_type)
            elif method == "DELETE":
                result = self._delete(target, body)
            else:
                raise _status(errors.ApiError, 405, "MethodNotAllowed", f"{method} {path}")
            if rule is not None:
                raise rule.error
            return copy.deepcopy(result) if answer else None

    def watch(self, path: str, *, resource_version: str, timeout_seconds: int = 300,
              bookmarks: bool = True, extra: Mapping[str, Any] | None = None) -> FakeWatch:
        target = parse_path(path)
        with self._cond:
            self.requests.append(("WATCH", path))
            start = int(resource_version) if resource_version else self._version
            stream = FakeWatch(self, target, start, timeout_seconds)
        return stream

    def close(self) -> None:
        self.close_streams()

    def close_streams(self) -> None:
        with self._cond:
            streams = list(self._watches)
        for w in streams:
            w.close()

    # ------------------------------------------------------------------ verbs (under the lock)

    def _rule(self, method: str, target: Target) -> _Rule | None:
        for rule in self._rules:
            if rule.matches(method, target):
                rule.times -= 1
                return rule
        return None

    def _key(self, target: Target, name: str | None = None) -> tuple[str, str, str]:
        return target.resource.plural, target.namespace or "", name or target.name or ""

    def _stored(self, target: Target) -> Object:
        obj = self._objects.get(self._key(target))
        if obj is None:
            raise _not_found(f'{target.resource.plural} "{target.name}"')
        return obj

    def _get(self, target: Target, query: dict[str, Any]) -> Object:
        if target.name is not None:
            return self._stored(target)
        if query.get("resourceVersion") and int(query["resourceVersion"]) < self._compacted:
            raise _status(errors.Gone, 410, "Expired", "too old resource version")
        selectors = dict(s.split("=", 1) for s in str(query.get("fieldSelector") or "").split(",") if s)
        items = [o for (r, ns, name), o in sorted(self._objects.items())
                 if r == target.resource.plural and (target.namespace is None or ns == target.namespace)
                 and selectors.get("metadata.name", name) == name and selectors.get("metadata.namespace", ns) == ns]
        offset = int(query.get("continue") or 0)
        limit = int(query.get("limit") or 0) or len(items)
        page = items[offset:offset + limit]
        more = offset + limit < len(items)
        return {"kind": f"{target.resource.kind}List", "apiVersion": target.resource.api_version, "items": page,
                "metadata": {"resourceVersion": str(self._version), **({"continue": str(offset + limit)}
                                                                       if more else {})}}

    def _create(self, target: Target, body: Object) -> Object:
        if target.name is not None:
            raise _status(errors.ApiError, 405, "MethodNotAllowed", "POST to an object")
        obj = copy.deepcopy(body)
        m = obj.setdefault("metadata", {})
        if not m.get("name") and m.get("generateName"):
            m["name"] = f"{m['generateName']}{uuid.uuid4().hex[:5]}"
        if not m.get("name"):
            raise _status(errors.Invalid, 422, "Invalid", "metadata.name: Required value")
        if target.resource.namespaced:
            if m.get("namespace") not in (None, "", target.namespace):
                raise _status(errors.ApiError, 400, "BadRequest", "the namespace of the object does not match")
            m["namespace"] = target.namespace
        key = self._key(target, m["name"])
        if key in self._objects:
            raise _status(errors.AlreadyExists, 409, "AlreadyExists",
                          f'{target.resource.plural} "{m["name"]}" already exists')
        for k in ("deletionTimestamp", "resourceVersion"):
            m.pop(k, None)
        m.update(uid=str(uuid.uuid4()), creationTimestamp=_now(), generation=1)
        obj["kind"], obj["apiVersion"] = target.resource.kind, target.resource.api_version
        if target.resource.kind in ("PersistentVolumeClaim", "PersistentVolume"):
            obj["status"] = {"phase": "Pending"}
        return self._commit(key, obj, "ADDED", target)

    def _update(self, target: Target, method: str, body: Any, content_type: str) -> Object:
        old = self._stored(target)
        if method == "PUT":
            new = copy.deepcopy(body)
            given = (new.get("metadata") or {}).get("resourceVersion")
            if (new.get("metadata") or {}).get("name") != target.name:
                raise _status(errors.ApiError, 400, "BadRequest", "the name of the object does not match the URL")
        elif content_type in (kube.MERGE_PATCH, kube.STRATEGIC_MERGE_PATCH):
            given = ((body or {}).get("metadata") or {}).get("resourceVersion")
            new = merge_patch(copy.deepcopy(old), body, strategic=content_type == kube.STRATEGIC_MERGE_PATCH)
        else:
            raise _status(errors.ApiError, 415, "UnsupportedMediaType", f"{content_type} is not supported here")
        if given and given != old["metadata"]["resourceVersion"]:
            raise _status(errors.Conflict, 409, "Conflict", f'Operation cannot be fulfilled on '
                          f'{target.resource.plural} "{target.name}": the object has been modified; please apply '
                          "your changes to the latest version and try again")
        if target.subresource == "status":
            new = {**copy.deepcopy(old), "status": new.get("status")}
        elif target.resource.status:
            new["status"] = copy.deepcopy(old.get("status"))
        m, was = new.setdefault("metadata", {}), old["metadata"]
        for k in ("uid", "creationTimestamp", "deletionTimestamp", "namespace", "name", "generation"):
            if k in was:
                m[k] = was[k]
            else:
                m.pop(k, None)
        added = set(m.get("finalizers") or []) - set(was.get("finalizers") or [])
        if was.get("deletionTimestamp") and added:
            raise _status(errors.Invalid, 422, "Invalid", "metadata.finalizers: Forbidden: no new finalizers can be "
                          f"added if the object is being deleted, found new finalizers {sorted(added)}")
        new["kind"], new["apiVersion"] = target.resource.kind, target.resource.api_version
        if m.get("deletionTimestamp") and not m.get("finalizers"):
            return self._remove(self._key(target), new, target)  # the write that empties them deletes it
        return self._commit(self._key(target), new, "MODIFIED", target)

    def _delete(self, target: Target, body: Object | None) -> Object:
        old = self._stored(target)
        pre = (body or {}).get("preconditions") or {}
        for k in ("uid", "resourceVersion"):
            if pre.get(k) and pre[k] != old["metadata"].get(k):
                raise _status(errors.Conflict, 409, "Conflict", f"precondition failed: {k}")
        if not old["metadata"].get("finalizers"):
            return self._remove(self._key(target), copy.deepcopy(old), target)
        if old["metadata"].get("deletionTimestamp"):
            return old
        marked = copy.deepcopy(old)
        marked["metadata"]["deletionTimestamp"] = _now()
        marked["metadata"]["deletionGracePeriodSeconds"] = 0
        return self._commit(self._key(target), marked, "MODIFIED", target)

    def _commit(self, key: tuple[str, str, str], obj: Object, kind: str, target: Target) -> Object:
        self._version += 1
        obj["metadata"]["resourceVersion"] = str(self._version)
        self._objects[key] = obj
        self._record(kind, obj, target)
        return obj

    def _remove(self, key: tuple[str, str, str], obj: Object, target: Target) -> Object:
        self._version += 1
        obj["metadata"]["resourceVersion"] = str(self._version)
        self._objects.pop(key, None)
        self._record("DELETED", obj, target)
        return obj

    def _record(self, kind: str, obj: Object, target: Target) -> None:
        self._changes.append(_Change(self._version, kind, target.resource.plural, target.namespace,
                                     copy.deepcopy(obj)))
        self._cond.notify_all()


class FakeWatch(kube.WatchStream):
    """One watch on a :class:`FakeApi`: iterate for events; ``close()`` from any thread ends it."""

    def __init__(self, api: FakeApi, target: Target, after: int, timeout_seconds: int) -> None:
        self._api = api
        self._target = target
        self._after = after
        self._deadline = time.monotonic() + timeout_seconds
        self._closed = False
        self.expired = False

    def close(self) -> None:
        with self._api._cond:
            self._closed = True
            self._api._cond.notify_all()

    def __iter__(self) -> Iterator[Object]:
        api, target = self._api, self._target
        with api._cond:
            rule = api._rule("WATCH", target)
            if rule is not None:
                raise rule.error
            if self._after <= api._compacted:
                raise _status(errors.Gone, 410, "Expired", f"too old resource version: {self._after} "
                                                          f"({api._compacted})")
            api._watches.add(self)
        try:
            while True:
                with api._cond:
                    if self.expired:  # at once: what changed since is not delivered any more
                        break
                    batch = self._pending()
                    if not batch:
                        left = self._deadline - time.monotonic()
                        if self._closed or left <= 0:
                            return
                        api._cond.wait(left)
                        continue
                yield from batch
            yield {"type": "ERROR", "object": {"kind": "Status", "code": 410, "reason": "Expired",
                                               "message": "too old resource version"}}
        finally:
            with api._cond:
                api._watches.discard(self)

    def _pending(self) -> list[Object]:
        """The events after the last one delivered that this watch sees (call with the lock held)."""
        changes = self._api._changes
        start = bisect.bisect_right(changes, self._after, key=lambda c: c.version)
        out = []
        for c in itertools.islice(changes, start, None):
            self._after = c.version
            if c.resource == self._target.resource.plural and self._target.namespace in (None, c.namespace):
                out.append({"type": c.type, "object": copy.deepcopy(c.obj)})
        return out


@dataclass
class MemoryProvisioner(Provisioner):
    """Assets are entries of :attr:`assets` (PV name -> PV); ``provision``/``delete`` raise what is queued in
    :attr:`provision_errors`/:attr:`delete_errors` (one per call, in order) and call the optional hooks first."""

    server: str = "nfs.example.invalid"
    assets: dict[str, Object] = field(default_factory=dict)
    provisioned: list[str] = field(default_factory=list)
    """PV names, one per ``provision`` call."""
    deleted: list[str] = field(default_factory=list)
    """PV names, one per ``delete`` call."""
    provision_errors: list[Exception] = field(default_factory=list)
    delete_errors: list[Exception] = field(default_factory=list)
    on_provision: Callable[[ProvisionOptions], None] | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def provision(self, options: ProvisionOptions) -> Object:
        with self.lock:
            self.provisioned.append(options.pv_name)
            error = self.provision_errors.pop(0) if self.provision_errors else None
        if self.on_provision is not None:
            self.on_provision(options)
        if error is not None:
            raise error
        pv: Object = {"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": options.pv_name},
                      "spec": {"capacity": {"storage": options.requested_storage or "1Mi"},
                               "accessModes": options.access_modes,
                               "persistentVolumeReclaimPolicy": options.reclaim_policy,
                               "nfs": {"server": self.server, "path": f"/export/{options.pv_name}"}}}
        with self.lock:
            self.assets[options.pv_name] = pv
        return copy.deepcopy(pv)

    def delete(self, volume: Object) -> Notice | None:
        name = str(volume["metadata"]["name"])
        with self.lock:
            self.deleted.append(name)
            error = self.delete_errors.pop(0) if self.delete_errors else None
        if error is not None:
            raise error
        with self.lock:
            self.assets.pop(name, None)
        return None
