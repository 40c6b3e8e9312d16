"""Provisioning one claim: decide, record the attempt durably, call the provisioner, save the PV.

The attempt is recorded (:mod:`nfs_provisioner.controller.inflight`: a
finalizer on the claim, or a local journal) *before* ``Provisioner.provision``
is called and the record is dropped only once the PV object exists or the
asset is known not to exist. A restarted controller therefore finds every
started provision and either finishes it (claim still wanted: provision again,
which is idempotent on the deterministic PV name, then save) or rolls it back
(claim deleted or no longer ours: provision again to learn the PV, then
``Provisioner.delete`` it). A PV that cannot be saved is retried forever; the
asset is never deleted because of a failed write.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from nfs_provisioner.controller import decisions, events, failures, inflight, outcomes
from nfs_provisioner.controller import pool as pool_mod
from nfs_provisioner.controller.interface import (
    DataSource,
    IgnoredError,
    InProgress,
    Provisioner,
    ProvisioningError,
    ProvisioningState,
    ProvisionOptions,
)
from nfs_provisioner.controller.metrics import Metrics
from nfs_provisioner.controller.outcomes import Outcome
from nfs_provisioner.controller.pool import Pool
from nfs_provisioner.controller.settings import ControllerSettings
from nfs_provisioner.controller.watching import Informer
from nfs_provisioner.kube import client as kube
from nfs_provisioner.kube import errors
from nfs_provisioner.kube.objects import Object

log = logging.getLogger(__name__)


@dataclass
class Attempt:
    """What this process knows about a claim's provision beyond its in-flight record."""

    state: ProvisioningState | None = None
    """State of the last failed attempt (``None``: unknown, e.g. after a restart)."""
    volume: Object | None = None
    """The completed PV of a successful ``provision`` not saved yet."""
    started: float = 0.0
    in_progress: bool = False
    """The last attempt raised :class:`InProgress` (its progress is reported by the provisioner, not again
    as a new ``Provisioning`` event per poll)."""


class Provisioning:
    """The provisioning state machine of claims (``sync(uid)``, run by the claim workers). No lock: ``_attempts``,
    ``_versions``, ``_settled``, ``_saved`` are per-uid memories used by the one worker the queue gives that uid;
    the resync thread only drops whole entries (each loss costs one more look: tests/unit/test_threads_unit.py::
    test_memories_forgotten_by_the_resync_cost_no_second_volume); the class watch only sets ``_known_classes``."""

    def __init__(self, *, api: kube.Client, provisioner: Provisioner, settings: ControllerSettings,
                 claims: Informer, volumes: Informer, classes: Informer, recorder: events.EventRecorder,
                 metrics: Metrics, volume_name: Callable[[Object], str], pool: Pool | None = None) -> None:
        self.api = api
        self.pool = pool
        """A pool member provisions only the claims assigned to it (see ``controller.pool``)."""
        self.provisioner = provisioner
        self.settings = settings
        self.claims = claims
        self.volumes = volumes
        self.classes = classes
        self.recorder = recorder
        self.metrics = metrics
        self.volume_name = volume_name
        self.names = frozenset({settings.provisioner_name, *settings.additional_provisioner_names})
        finalizer = inflight.ClaimFinalizer(decisions.claim_finalizer(settings.instance_name), self._patch_claim)
        self.inflight: inflight.InFlight = (
            finalizer if settings.in_flight_journal is None
            else inflight.LocalJournal(settings.in_flight_journal, legacy=finalizer))
        self._attempts: dict[str, Attempt] = {}
        self._saved: dict[str, float] = {}
        self._known_classes: dict[str, Object] = {}
        self._versions: dict[str, set[str]] = {}
        """uid -> resourceVersions of a claim this controller acted on or produced with its own PATCHes."""
        self._settled: dict[str, set[str]] = {}
        """uid -> those versions, for claims ignored or given up: events about our own writes (which may
        arrive late) must not trigger another attempt; a change by anyone else does, as in the Go library."""

    # ------------------------------------------------------------------ filters

    def interesting(self, claim: Object) -> bool:
        """Whether a claim event needs a sync (cheap; runs in the watch thread). Not for a claim whose PV this
        process saved and whose in-flight record is gone: its sync would end at once (the binder's changes after
        the save, two per claim, no longer wake a worker)."""
        if self.inflight.holds(claim):
            return True
        return decisions.requested_by_us(claim, self.names) and decisions.meta(claim).get("uid") not in self._saved

    def remember_class(self, cls: Object) -> None:
        self._known_classes[decisions.meta(cls).get("name", "")] = cls

    # ------------------------------------------------------------------ sync

    def sync(self, uid: str) -> Outcome:
        claim = self.claims.get(uid)
        if claim is None:
            gone = self.inflight.last_known(uid)
            if gone is not None:  # deleted while its provision was in flight (journal records only)
                # As for any rollback: if the PV exists, its reclaim policy decides, never the record.
                return self._roll_back(gone, self.volume_name(gone))
            self._attempts.pop(uid, None)
            self._saved.pop(uid, None)
            self._settled.pop(uid, None)
            self._versions.pop(uid, None)
            return outcomes.DONE
        if decisions.meta(claim).get("resourceVersion") in self._settled.get(uid, ()):
            return outcomes.DONE
        ours = self.inflight.holds(claim)
        pv_name = self.volume_name(claim)
        if decisions.is_deleting(claim):
            return self._roll_back(claim, pv_name) if ours else outcomes.DONE
        attempt = self._attempts.get(uid)
        if attempt is not None and attempt.volume is not None:
            return self._save(claim, attempt.volume, attempt.started)
        existing = self.volumes.get(pv_name)
        if uid in self._saved or existing is not None:
            if ours and existing is not None and self.provisioner.owns(existing) is False:
                # We were provisioning when another instance saved the PV (e.g. we lost the lease and
                # crashed): whatever we made is surplus.
                return self._undo(claim, pv_name)
            return self._release(claim) if ours else outcomes.DONE

        cls_name = decisions.claim_class(claim)
        storage_class = self.classes.get(cls_name)
        verdict = decisions.should_provision(claim, storage_class, self.names)
        if verdict is decisions.Verdict.PROVISION and not self.provisioner.should_provision(claim):
            verdict = decisions.Verdict.SKIP
        if verdict is not decisions.Verdict.PROVISION:
            if ours:
                return self._roll_back(claim, pv_name)
            if verdict is decisions.Verdict.NO_CLASS:
                self._failed(claim)
                return outcomes.retry(f"StorageClass {cls_name!r} not found")
            if verdict is decisions.Verdict.CLASS_NOT_OURS:
                log.info("claim %s: class %s names provisioner %r, not us: skipped", decisions.claim_key(claim),
                         cls_name, (storage_class or {}).get("provisioner"))
            return outcomes.DONE
        assert storage_class is not None

        if decisions.is_block(claim) and not self.provisioner.supports_block():
            self._failed(claim)
            self.recorder.event(claim, events.WARNING, events.PROVISIONING_FAILED,
                                f"{self.settings.provisioner_name} does not support block volume provisioning")
            return outcomes.DONE

        dropped_by = decisions.dropped_source(claim)
        if dropped_by is not None and not ours:
            return self._dropped_source(claim, dropped_by)
        source = decisions.claim_source(claim)
        if source is not None and not ours and not self.provisioner.supports_data_source(source.kind, source.api_group):
            return self._unsupported_source(claim, source)

        if self.pool is not None:
            route = self.pool.route(claim, storage_class, pv_name)
            if not route.mine:
                if ours and not route.held:  # begun here, then the claim went to another member
                    return self._lost(claim, pv_name)
                if route.refusal is not None:
                    self._failed(claim)
                    if route.report:
                        self.recorder.event(claim, events.WARNING, events.PROVISIONING_FAILED, route.refusal)
                        log.warning("claim %s: %s", decisions.claim_key(claim), route.refusal)
                return route.outcome
            claim = route.claim

        node: Object | None = None
        node_name = decisions.selected_node(claim)
        if node_name:
            try:
                node = self.api.get(kube.nodes_path(node_name))
            except errors.NotFound:
                self._failed(claim)
                msg = f"selected node {node_name!r} does not exist"
                self.recorder.event(claim, events.WARNING, events.PROVISIONING_FAILED, msg)
                return self._reschedule(claim, msg)
            except errors.KubeError as e:
                self._failed(claim)
                msg = f"failed to get target node: {e}"
                self.recorder.event(claim, events.WARNING, events.PROVISIONING_FAILED, msg)
                return outcomes.retry(msg)

        self._versions.setdefault(uid, set()).add(decisions.meta(claim).get("resourceVersion", ""))
        begun_before = ours
        if not ours:
            try:
                claim = self.inflight.begin(claim)
            except errors.NotFound:
                return outcomes.DONE
            except errors.KubeError as e:
                # E.g. 422 when the claim started terminating meanwhile: the next event says so.
                return outcomes.retry_after(1.0, f"cannot record the provision of {decisions.claim_key(claim)}: {e}")
            except OSError as e:
                # The local journal cannot be written (its directory's filesystem is full or read-only): nothing
                # was started, so say why on the claim and in the log, and retry with backoff.
                self._failed(claim)
                msg = f"cannot record the provision in {self.settings.in_flight_journal}: {e.strerror or e}"
                self.recorder.event(claim, events.WARNING, events.PROVISIONING_FAILED, msg)
                log.warning("claim %s: %s", decisions.claim_key(claim), msg)
                return outcomes.retry(msg)
        if self.pool is not None and (refused := self._confirm(claim, pv_name, begun_before)) is not None:
            return refused

        self.remember_class(storage_class)
        options = ProvisionOptions(storage_class=storage_class, pv_name=pv_name, claim=claim, selected_node=node)
        if attempt is None or not attempt.in_progress:
            key = decisions.claim_key(claim)
            self.recorder.event(claim, events.NORMAL, events.PROVISIONING,
                                f"External provisioner is provisioning volume for claim \"{key}\"")
        started = time.monotonic()
        try:
            volume = self.provisioner.provision(options)
        except IgnoredError as e:
            log.debug("claim %s ignored by the provisioner: %s", decisions.claim_key(claim), e.reason)
            return self._release(claim, settle=True)
        except Exception as e:  # noqa: BLE001 - every provisioner failure is reported, then retried
            return self._provision_failed(claim, e, recorded_before=ours)
        try:
            pv = decisions.complete_volume(volume, claim=claim, pv_name=pv_name,
                                           provisioner=str(storage_class.get("provisioner")),
                                           add_finalizer=self.settings.add_finalizer)
        except (ValueError, TypeError, AttributeError, KeyError) as e:
            return self._provision_failed(claim, ProvisioningError(f"provisioner returned an unusable volume: {e}",
                                                                   ProvisioningState.IN_BACKGROUND))
        if self.pool is not None:  # `kubectl get pv` can show which member serves it
            pv["metadata"].setdefault("annotations", {}).update(
                {pool_mod.ANN_MEMBER: self.pool.identity, pool_mod.ANN_POOL: self.pool.pool})
        self._attempts[uid] = Attempt(volume=pv, started=started)
        log.info("claim %s: volume %s provisioned, saving the PV", decisions.claim_key(claim), pv_name)
        return self._save(claim, pv, started)

    # ------------------------------------------------------------------ steps

    def _unsupported_source(self, claim: Object, source: DataSource) -> Outcome:
        """A data source the provisioner does not declare: never provision an empty volume for it.

        Clone and snapshot sources are refused with one ``ProvisioningFailed`` event; any other kind belongs to
        a volume populator (KEP 1495), which provisions a claim of its own (PVC') without a data source and
        rebinds the volume: as the CSI external-provisioner does, one ``Normal`` event and nothing else. Either
        way the claim is settled: looked at again only when someone else changes it."""
        key = decisions.claim_key(claim)
        msg = failures.unsupported_source(source, self.settings.provisioner_name)
        if not failures.refuses(source):
            self.recorder.event(claim, events.NORMAL, events.PROVISIONING, msg)
            log.info("claim %s: %s", key, msg)
            return self._release(claim, settle=True)
        self._failed(claim)
        self.recorder.event(claim, events.WARNING, events.PROVISIONING_FAILED, msg)
        log.warning("claim %s: %s", key, msg)
        return self._release(claim, settle=True)

    def _dropped_source(self, claim: Object, manager: str) -> Outcome:
        """The claim asked for a data source in another namespace and the API server dropped it (see
        ``decisions.dropped_source``): never an empty volume that looks like a copy. One ``ProvisioningFailed``
        event, settled (``spec.dataSourceRef`` cannot change: the claim must be made again)."""
        msg = failures.dropped_source(manager)
        self._failed(claim)
        self.recorder.event(claim, events.WARNING, events.PROVISIONING_FAILED, msg)
        log.warning("claim %s: %s", decisions.claim_key(claim), msg)
        return self._release(claim, settle=True)

    def _provision_failed(self, claim: Object, e: Exception, *, recorded_before: bool = False) -> Outcome:
        uid = decisions.meta(claim)["uid"]
        if isinstance(e, InProgress):
            self._attempts[uid] = Attempt(state=ProvisioningState.IN_BACKGROUND, in_progress=True)
            if e.report:
                self.recorder.event(claim, events.NORMAL, events.PROVISIONING, str(e))
            log.info("claim %s: provision in progress: %s", decisions.claim_key(claim), e)
            return outcomes.retry_after(e.retry_after, str(e))
        previous = self._attempts.get(uid)
        state = failures.state_after(e, previous=None if previous is None else previous.state,
                                     known=previous is not None, recorded_before=recorded_before)
        msg = str(e) or type(e).__name__
        self._failed(claim)
        self.recorder.event(claim, events.WARNING, events.PROVISIONING_FAILED, msg)
        log.warning("claim %s: provision failed (%s): %s", decisions.claim_key(claim), state.value, msg)
        if state is ProvisioningState.RESCHEDULE:
            if decisions.selected_node(claim):
                self._attempts[uid] = Attempt(state=ProvisioningState.FINISHED)
                return self._reschedule(claim, msg)
            state = ProvisioningState.FINISHED
        self._attempts[uid] = Attempt(state=state)
        if state is ProvisioningState.FINISHED:
            # Nothing is left behind, so nothing needs recording until the next attempt (a claim that keeps
            # failing neither carries a finalizer nor leaves a journal record meanwhile).
            self._release(claim)
            return outcomes.retry(msg)
        return outcomes.retry_forever(msg)

    def _save(self, claim: Object, pv: Object, started: float) -> Outcome:
        uid = decisions.meta(claim)["uid"]
        name = pv["metadata"]["name"]
        try:
            self.api.create(kube.volumes_path(), pv, answer=False)
        except errors.AlreadyExists:
            try:
                existing = self.volumes.get(name) or self.api.get(kube.volumes_path(name))
            except errors.KubeError as e:
                return outcomes.retry_after(self.settings.retry.save_retry_delay, f"cannot read PV {name}: {e}")
            if self.provisioner.owns(existing) is False:
                return self._surplus(claim, pv)
            log.debug("PV %s already exists", name)
        except errors.KubeError as e:
            msg = (f"Volume {name} was provisioned but its PersistentVolume could not be saved; the volume is kept "
                   f"and saving is retried: {e}")
            self.recorder.event(claim, events.WARNING, events.PROVISIONING_FAILED, msg)
            log.warning("claim %s: %s", decisions.claim_key(claim), msg)
            return outcomes.retry_after(self.settings.retry.save_retry_delay, msg)
        self._attempts.pop(uid, None)
        self._saved[uid] = time.monotonic()
        cls, source = self._labels(claim)
        self.metrics.provision_total.labels(cls, source).inc()
        self.metrics.provision_duration.labels(cls, source).observe(time.monotonic() - started)
        self.recorder.event(claim, events.NORMAL, events.PROVISIONING_SUCCEEDED,
                            f"Successfully provisioned volume {name}")
        return self._release(claim)

    def _surplus(self, claim: Object, pv: Object) -> Outcome:
        """Another instance saved this claim's PV first (instances sharing a class): our asset is
        surplus. Delete it, then drop our in-flight record; until then the record keeps it findable."""
        key, name = decisions.claim_key(claim), pv["metadata"]["name"]
        log.info("claim %s: PV %s was saved by another instance; removing this instance's unused volume", key, name)
        try:
            self.provisioner.delete(pv)
        except Exception as e:  # noqa: BLE001 - any failure: keep the record and retry
            msg = f"cannot remove the unused volume {name} made by this instance: {e}"
            self.recorder.event(claim, events.WARNING, events.PROVISIONING_CLEANUP_FAILED, msg)
            return outcomes.retry(msg)
        self._attempts.pop(decisions.meta(claim)["uid"], None)
        return self._release(claim, settle=True)

    def _release(self, claim: Object, *, settle: bool = False) -> Outcome:
        """Drop the in-flight record: the provision is over (PV saved, ignored, or rolled back).

        ``settle``: do not look at this claim again until someone else changes it."""
        uid = decisions.meta(claim)["uid"]
        try:
            self.inflight.end(claim)
        except (errors.KubeError, OSError) as e:
            return outcomes.retry_after(self.settings.retry.save_retry_delay,
                                        f"cannot drop the in-flight record of {decisions.claim_key(claim)}: {e}")
        versions = self._versions.pop(uid, set())
        if settle:
            self._settled[uid] = versions | {decisions.meta(claim).get("resourceVersion", "")}
        return outcomes.DONE

    def _reschedule(self, claim: Object, why: str) -> Outcome:
        """Remove ``selected-node`` (and our in-flight record) so the scheduler picks another node."""
        try:
            claim = self._patch_claim(claim, {"metadata": {"annotations": {decisions.ANN_SELECTED_NODE: None}}})
        except errors.NotFound:
            return outcomes.DONE
        except errors.KubeError as e:
            return outcomes.retry(f"rescheduling failed: {e}; {why}")
        log.info("claim %s rescheduled: %s", decisions.claim_key(claim), why)
        return self._release(claim)

    def _roll_back(self, claim: Object, pv_name: str) -> Outcome:
        """The claim's provision is recorded but it is deleted or no longer wants a volume: finish or undo.

        The only way into ``_undo`` for a claim whose PV might exist: a record never deletes an asset whose
        PV exists (the PV's reclaim policy decides); an API error while checking retries, deleting nothing."""
        uid = decisions.meta(claim)["uid"]
        if uid in self._saved or self._volume_exists(pv_name):
            return self._release(claim)  # the PV exists: its normal lifecycle takes it from here
        return self._undo(claim, pv_name)

    def _undo(self, claim: Object, pv_name: str) -> Outcome:
        """Remove this instance's asset for the claim (learned by provisioning again), then release the claim."""
        uid = decisions.meta(claim)["uid"]
        key = decisions.claim_key(claim)
        attempt = self._attempts.get(uid)
        if attempt is not None and attempt.volume is not None:
            pv = attempt.volume
        elif attempt is not None and attempt.state is ProvisioningState.FINISHED:
            self._attempts.pop(uid, None)
            return self._release(claim)  # the last attempt left nothing behind
        else:
            cls_name = decisions.claim_class(claim)
            storage_class = (self.classes.get(cls_name) or self._known_classes.get(cls_name)
                             or {"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
                                 "metadata": {"name": cls_name}, "provisioner": self.settings.provisioner_name})
            options = ProvisionOptions(storage_class=storage_class, pv_name=pv_name, claim=claim, rolling_back=True)
            log.info("claim %s: provision in flight but claim deleted/unwanted: finishing it to roll it back", key)
            try:
                volume = self.provisioner.provision(options)
            except IgnoredError:
                return self._release(claim)
            except InProgress as e:
                return outcomes.retry_after(e.retry_after, f"rolling back {pv_name} once it is finished: {e}")
            except ProvisioningError as e:
                if e.state in (ProvisioningState.IN_BACKGROUND, ProvisioningState.NO_CHANGE):
                    return outcomes.retry_forever(f"rolling back {pv_name}: {e}")
                return self._release(claim)
            except Exception:
                log.info("claim %s: finishing failed finally; nothing to roll back", key, exc_info=True)
                return self._release(claim)
            try:
                pv = decisions.complete_volume(volume, claim=claim, pv_name=pv_name,
                                               provisioner=str(storage_class.get("provisioner")), add_finalizer=False)
            except (ValueError, TypeError, AttributeError, KeyError) as e:
                return outcomes.retry_forever(f"rolling back {pv_name}: provisioner returned an unusable volume: {e}")
        try:
            self.provisioner.delete(pv)
        except IgnoredError:
            pass
        except Exception as e:  # noqa: BLE001 - reported, retried until it works (else the asset leaks)
            msg = f"Failed to remove volume {pv_name} provisioned for a claim that is gone: {e}"
            self.recorder.event(claim, events.WARNING, events.PROVISIONING_CLEANUP_FAILED, msg)
            return outcomes.retry_forever(msg)
        log.info("claim %s: rolled back volume %s", key, pv_name)
        self._attempts.pop(uid, None)
        return self._release(claim)

    def give_up(self, uid: str) -> None:
        """Failure threshold reached: release the claim if nothing of it is in flight."""
        attempt = self._attempts.get(uid)
        claim = self.claims.get(uid)
        if claim is None or attempt is None or attempt.state is not ProvisioningState.FINISHED:
            return
        self._attempts.pop(uid, None)
        self._release(claim, settle=True)

    # ------------------------------------------------------------------ helpers

    def _confirm(self, claim: Object, pv_name: str, begun_before: bool) -> Outcome | None:
        """Pool: None when the claim, read after the in-flight record is written, still names this member;
        else what to do instead (nothing made yet: drop the record; begun in an earlier attempt: roll back)."""
        assert self.pool is not None
        try:
            if self.pool.confirm(claim):
                return None
        except errors.KubeError as e:
            return outcomes.retry_after(1.0, f"cannot read claim {decisions.claim_key(claim)} back: {e}")
        log.info("claim %s: assigned to another pool member meanwhile; not provisioning it here",
                 decisions.claim_key(claim))
        return self._lost(claim, pv_name) if begun_before else self._release(claim)

    def _lost(self, claim: Object, pv_name: str) -> Outcome:
        """Pool: this member began the claim's provision, and the claim went to another member (this one was
        counted down): remove what was made here, unless the claim's PV is this member's own."""
        try:
            existing = self.volumes.get(pv_name) or self.api.get(kube.volumes_path(pv_name))
        except errors.NotFound:
            existing = None
        except errors.KubeError as e:
            return outcomes.retry_after(1.0, f"cannot read PV {pv_name}: {e}")
        if existing is not None and self.provisioner.owns(existing) is not False:
            return self._release(claim)  # saved by this member before it lost the claim: the PV is the volume
        log.info("claim %s: now another pool member's; removing what this member had begun", decisions.claim_key(claim))
        return self._undo(claim, pv_name)

    def _volume_exists(self, name: str) -> bool:
        if self.volumes.get(name) is not None:
            return True
        try:
            self.api.get(kube.volumes_path(name))
        except errors.NotFound:
            return False
        return True

    def _patch_claim(self, claim: Object, patch: Object) -> Object:
        m = decisions.meta(claim)
        updated = self.api.patch(kube.claims_path(m["namespace"], m["name"]), patch)
        self._versions.setdefault(m["uid"], set()).add(decisions.meta(updated).get("resourceVersion", ""))
        updated.setdefault("kind", "PersistentVolumeClaim")
        updated.setdefault("apiVersion", "v1")
        return updated

    def _failed(self, claim: Object) -> None:
        cls, source = self._labels(claim)
        self.metrics.provision_failed_total.labels(cls, source).inc()

    def _labels(self, claim: Object) -> tuple[str, str]:
        """The claim's metric labels, bounded to the classes and data-source kinds served here."""
        cls_name = decisions.claim_class(claim)
        source = DataSource.parse((claim.get("spec") or {}).get("dataSource"))
        supported = source is not None and self.provisioner.supports_data_source(source.kind, source.api_group)
        return decisions.provision_labels(claim, storage_class=self.classes.get(cls_name) if cls_name else None,
                                          names=self.names, supported_source=supported)

    def forget_saved(self, older_than: float) -> None:
        """Drop memories of saved PVs older than ``older_than`` seconds (bounded memory)."""
        cutoff = time.monotonic() - older_than
        for uid, at in list(self._saved.items()):
            if at < cutoff:
                self._saved.pop(uid, None)
        for memory in (self._settled, self._versions):
            for uid in list(memory):
                if self.claims.get(uid) is None:
                    memory.pop(uid, None)
