"""Leader election on a ``coordination.k8s.io/v1`` Lease (client-go's algorithm).

A candidate takes the Lease when it is free or when its holder has not renewed
it for ``lease_duration`` seconds of *local* observation (no clock-skew
trust). The leader renews every ``retry_period``; if it cannot renew for
``renew_deadline`` it stops leading (``on_stopped``) and becomes a candidate
again instead of exiting, so a slow API server cannot cause a crash loop.
On shutdown the leader releases the Lease so a standby takes over at once.
"""

from __future__ import annotations

import datetime
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from nfs_provisioner.controller.settings import LeaderElectionSettings
from nfs_provisioner.kube import client as kube
from nfs_provisioner.kube import errors

log = logging.getLogger(__name__)

SA_NAMESPACE_FILE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"


def default_namespace(env: dict[str, str] | None = None, sa_file: str = SA_NAMESPACE_FILE) -> str:
    """POD_NAMESPACE, else the service-account namespace file, else ``default``."""
    env = dict(os.environ) if env is None else env
    if env.get("POD_NAMESPACE"):
        return env["POD_NAMESPACE"]
    try:
        with open(sa_file) as f:
            ns = f.read().strip()
            if ns:
                return ns
    except OSError:
        pass
    return "default"


def default_identity() -> str:
    return f"{socket.gethostname()}_{uuid.uuid4()}"


def _micro_now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaderElector:
    def __init__(self, api: kube.Client, settings: LeaderElectionSettings, *, name: str, namespace: str,
                 identity: str, on_started: Callable[[], None], on_stopped: Callable[[], None],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.api = api
        self.settings = settings
        self.name = name
        self.namespace = namespace
        self.identity = identity
        self.on_started = on_started
        self.on_stopped = on_stopped
        self._clock = clock
        self._observed: tuple[Any, ...] | None = None
        self._observed_at = 0.0
        self._stop = threading.Event()
        self.leading = threading.Event()
        self.transitions = 0

    def stop(self) -> None:
        self._stop.set()

    # ------------------------------------------------------------------ loop

    def run(self) -> None:
        """Campaign, lead, step down, campaign again ... until :meth:`stop`."""
        s = self.settings
        while not self._stop.is_set():
            if not self._try_acquire_or_renew():
                self._stop.wait(kube.jitter(s.retry_period, 0.1))
                continue
            log.info("became leader of lease %s/%s as %s", self.namespace, self.name, self.identity)
            self.leading.set()
            self.transitions += 1
            try:
                self.on_started()
            except Exception:
                log.exception("starting work after becoming leader failed")
            last_renew = self._clock()
            while not self._stop.wait(s.retry_period):
                if self._try_acquire_or_renew():
                    last_renew = self._clock()
                elif self._clock() - last_renew > s.renew_deadline:
                    log.warning("could not renew lease %s/%s for %.0fs: stepping down",
                                self.namespace, self.name, s.renew_deadline)
                    break
            self.leading.clear()
            try:
                self.on_stopped()
            except Exception:
                log.exception("stopping work after losing leadership failed")
            if self._stop.is_set():
                self._release()

    # ------------------------------------------------------------------ one round

    def _try_acquire_or_renew(self) -> bool:
        s = self.settings
        path = kube.leases_path(self.namespace, self.name)
        now = _micro_now()
        try:
            lease = self.api.request("GET", path, timeout=self._timeout())
        except errors.NotFound:
            body: dict[str, Any] = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                    "metadata": {"name": self.name, "namespace": self.namespace},
                    "spec": {"holderIdentity": self.identity, "leaseDurationSeconds": int(s.lease_duration),
                             "acquireTime": now, "renewTime": now, "leaseTransitions": 0}}
            try:
                self.api.request("POST", kube.leases_path(self.namespace), body=body, timeout=self._timeout())
            except errors.KubeError as e:
                log.debug("creating lease failed: %s", e)
                return False
            self._observe(dict(body["spec"]))
            return True
        except errors.KubeError as e:
            log.info("reading lease %s/%s failed: %s", self.namespace, self.name, e)
            return False
        spec = lease.setdefault("spec", {})
        self._observe(spec)
        holder = spec.get("holderIdentity") or ""
        duration = float(spec.get("leaseDurationSeconds") or s.lease_duration)
        if holder and holder != self.identity and self._observed_at + duration > self._clock():
            return False
        if holder != self.identity:
            spec["acquireTime"] = now
            spec["leaseTransitions"] = int(spec.get("leaseTransitions") or 0) + (1 if holder else 0)
        spec["holderIdentity"] = self.identity
        spec["leaseDurationSeconds"] = int(s.lease_duration)
        spec["renewTime"] = now
        try:
            updated = self.api.request("PUT", path, body=lease, timeout=self._timeout())
        except errors.KubeError as e:
            log.debug("updating lease failed: %s", e)
            return False
        self._observe(updated.get("spec") or {})
        return True

    def _timeout(self) -> float:
        """Each lease request must fail fast enough for the leader to notice before its renew deadline."""
        return max(1.0, self.settings.renew_deadline / 2)

    def _observe(self, spec: dict[str, Any]) -> None:
        record = (spec.get("holderIdentity"), spec.get("renewTime"), spec.get("acquireTime"))
        if record != self._observed:
            self._observed = record
            self._observed_at = self._clock()

    def _release(self) -> None:
        path = kube.leases_path(self.namespace, self.name)
        try:
            lease = self.api.get(path)
            spec = lease.setdefault("spec", {})
            if spec.get("holderIdentity") != self.identity:
                return
            spec["holderIdentity"] = ""
            spec["leaseDurationSeconds"] = 1
            spec["renewTime"] = _micro_now()
            self.api.replace(path, lease)
            log.info("released lease %s/%s", self.namespace, self.name)
        except errors.KubeError as e:
            log.warning("releasing lease %s/%s failed: %s", self.namespace, self.name, e)
