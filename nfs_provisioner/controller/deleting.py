"""Deleting one volume: guard, mark in flight, delete the asset, delete the PV, drop the finalizer.

Only Released volumes with reclaim policy Delete that we provisioned are
touched (Retain and Recycle never). The durable in-flight record is the Go
library's PV finalizer ``external-provisioner.volume.kubernetes.io/finalizer``:
it is on the PV before ``Provisioner.delete`` runs (put there at creation when
``add_finalizer`` is on, else by PATCH just before), and removed only after the
asset and the PV object are gone. A crash anywhere in between leaves a PV that
still carries it, so the next run deletes again (``delete`` is idempotent).
"""

from __future__ import annotations

import logging
import time

from nfs_provisioner.controller import decisions, events, outcomes
from nfs_provisioner.controller.interface import IgnoredError, Provisioner
from nfs_provisioner.controller.metrics import Metrics
from nfs_provisioner.controller.outcomes import Outcome
from nfs_provisioner.controller.settings import ControllerSettings
from nfs_provisioner.controller.watching import Informer
from nfs_provisioner.kube import client as kube
from nfs_provisioner.kube import errors
from nfs_provisioner.kube.objects import Object

log = logging.getLogger(__name__)

ADD = {"metadata": {"finalizers": [decisions.PV_FINALIZER]}}
REMOVE = {"metadata": {"$deleteFromPrimitiveList/finalizers": [decisions.PV_FINALIZER]}}


class Deleting:
    def __init__(self, *, api: kube.Client, provisioner: Provisioner, settings: ControllerSettings,
                 volumes: Informer, recorder: events.EventRecorder, metrics: Metrics) -> None:
        self.api = api
        self.provisioner = provisioner
        self.settings = settings
        self.volumes = volumes
        self.recorder = recorder
        self.metrics = metrics
        self.names = frozenset({settings.provisioner_name, *settings.additional_provisioner_names})
        self._deleted: dict[str, float] = {}
        """Volumes this process finished deleting (stale cache events about them are ignored)."""

    def interesting(self, volume: Object) -> bool:
        """Whether a PV event needs a sync (runs in the watch thread): not for a PV this process finished deleting
        (its sync would end at once; the events of its DELETE and finalizer removal no longer wake a worker)."""
        return decisions.is_ours(volume, self.names) and decisions.meta(volume).get("name") not in self._deleted

    def sync(self, name: str) -> Outcome:
        volume = self.volumes.get(name)
        if volume is None or not decisions.is_ours(volume, self.names) or name in self._deleted:
            return outcomes.DONE
        if not self.provisioner.should_delete(volume):
            return outcomes.DONE  # the guard leaves the PV alone: no finalizer added or removed either
        change = decisions.finalizer_change(volume, self.names, add_finalizer=self.settings.add_finalizer)
        if change is not None:
            try:
                volume = self._patch(name, ADD if change else REMOVE)
            except errors.NotFound:
                return outcomes.DONE
            except errors.KubeError as e:
                return outcomes.retry(f"failed to {'add' if change else 'remove'} the finalizer of {name}: {e}")
        if not decisions.should_delete(volume, self.names):
            return outcomes.DONE
        if decisions.PV_FINALIZER not in decisions.finalizers(volume):
            try:  # the in-flight record of this delete
                volume = self._patch(name, ADD)
            except errors.NotFound:
                return outcomes.DONE
            except errors.KubeError as e:
                return outcomes.retry(f"cannot record the delete of {name}: {e}")
        cls = str((volume.get("spec") or {}).get("storageClassName") or "")
        started = time.monotonic()
        try:
            notice = self.provisioner.delete(volume)
        except IgnoredError as e:
            log.debug("volume %s ignored by the provisioner: %s", name, e.reason)
            return outcomes.DONE
        except Exception as e:  # noqa: BLE001 - reported as an event, retried with backoff
            msg = str(e) or type(e).__name__
            self.metrics.delete_failed_total.labels(cls).inc()
            self.recorder.event(volume, events.WARNING, events.VOLUME_FAILED_DELETE, msg)
            log.warning("volume %s: delete failed: %s", name, msg)
            return outcomes.retry(msg)
        if notice is not None:
            self.recorder.event(volume, events.WARNING, notice.reason, notice.message)
        try:
            self.api.delete(kube.volumes_path(name), answer=False)
        except errors.NotFound:
            pass
        except errors.KubeError as e:
            self.metrics.delete_failed_total.labels(cls).inc()
            return outcomes.retry(f"asset of {name} deleted but the PV object could not be: {e}")
        try:
            self.api.patch(kube.volumes_path(name), REMOVE, answer=False)
        except errors.NotFound:
            pass
        except errors.Invalid:
            pass  # already gone from the finalizer list
        except errors.KubeError as e:
            return outcomes.retry(f"volume {name} deleted but its finalizer could not be removed: {e}")
        self._deleted[name] = time.monotonic()
        self.metrics.delete_total.labels(cls).inc()
        self.metrics.delete_duration.labels(cls).observe(time.monotonic() - started)
        log.info("volume %s deleted", name)
        return outcomes.DONE

    def forget_deleted(self, older_than: float) -> None:
        cutoff = time.monotonic() - older_than
        for name, at in list(self._deleted.items()):
            if at < cutoff:
                self._deleted.pop(name, None)

    def _patch(self, name: str, patch: Object) -> Object:
        updated = self.api.patch(kube.volumes_path(name), patch)
        updated.setdefault("kind", "PersistentVolume")
        updated.setdefault("apiVersion", "v1")
        return updated
