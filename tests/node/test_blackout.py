"""In cluster, on the local kubelet node (issue 24): how long a client in the node's network namespace cannot
open a new file while the chart's StatefulSet pod is replaced, by a `helm upgrade` that rolls it and by the pod
deleted. The chart's defaults: grace period 90 s, NFSv3 on without NLM, the PV's server is the Service's
ClusterIP (which routes to the pod once it is Ready).

The client is a userspace NFSv4.1 client (tests/support/nfs42_client.py) with one fixed client owner, as a node's
kernel client has: before the restart it is recorded (in <export root>/.ganesha/recovery), after it it
connects again with the same owner and sends RECLAIM_COMPLETE (it held no locks), which is what ends the grace
period early; every 0.25 s it OPENs a new file (create) in the volume, which the server refuses with
NFS4ERR_GRACE until then. The blackout is the longest time between two successful opens around the event. The
libnfs tools (NFSv4.0) are not used here: a v4.0 client never sends RECLAIM_COMPLETE, and a recorded one keeps
the whole grace period."""

from __future__ import annotations

import datetime
import itertools
import json
import threading
import time
import uuid
from pathlib import Path

import pytest
from kubernetes import client

from tests.support import kubecluster, nfs42_client, wait
from tests.support.helm_env import CHART, Helm
from tests.support.helm_node import bound, claim, local_pv
from tests.support.incluster import describe_pod, figure, pod_ready
from tests.support.kubenode import Node

pytestmark = [pytest.mark.node, pytest.mark.kube, pytest.mark.container, pytest.mark.ganesha, pytest.mark.helm]

RELEASE = "nfsb"
FULLNAME = f"{RELEASE}-nfs-provisioner"
POD = f"{FULLNAME}-0"
OWNER = b"\x07" * 8 + b"nfsp-blackout-node-client"
PERIOD = 0.25
BOUND_S = 30.0
"""Each blackout must be well under the 90 s grace period."""


class Prober:
    """Opens a new file every ``PERIOD`` s from inside the node's network namespace; keeps when each open
    succeeded, and how the failures failed."""

    def __init__(self, node: Node, server: str, path: str) -> None:
        self.node, self.server, self.path = node, server, path
        self.ok: list[float] = []
        self.failures: dict[str, int] = {}
        self.outcomes: list[tuple[float, str]] = []
        """(time, "ok" or how it failed) of every attempt."""
        self._client: nfs42_client.Client | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="prober", daemon=True)
        self._n = 0

    def start(self) -> None:
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(PERIOD):
            self._n += 1
            try:
                if self._client is None:
                    self._client = nfs42_client.Client(host=self.server, port=2049, owner=OWNER, timeout=2.0,
                                                       netns=self.node.netns)
                self._client.create(self.path, f"probe-{self._n}")
                self.ok.append(time.monotonic())
                self.outcomes.append((time.monotonic(), "ok"))
            except nfs42_client.NfsError as e:
                why = "NFS4ERR_GRACE" if e.status == nfs42_client.NFS4ERR_GRACE else f"status {e.status}"
                self.failures[why] = self.failures.get(why, 0) + 1
                self.outcomes.append((time.monotonic(), why))
            except (OSError, AssertionError) as e:  # no connection, or a reply that is not one
                self.failures[type(e).__name__] = self.failures.get(type(e).__name__, 0) + 1
                self.outcomes.append((time.monotonic(), type(e).__name__))
                if self._client is not None:
                    self._client.close()
                self._client = None

    def seen(self, since: float) -> str:
        """When each kind of outcome was first seen after ``since`` (seconds), in order."""
        firsts: dict[str, float] = {}
        for t, kind in self.outcomes:
            if t > since:
                firsts.setdefault(kind, t - since)
        return ", ".join(f"{kind} {t:.2f}" for kind, t in sorted(firsts.items(), key=lambda kv: kv[1]))

    def since(self, t: float) -> int:
        return sum(1 for x in self.ok if x > t)

    def blackout(self, since: float) -> float:
        """The longest gap between two successful opens from the last one before ``since`` on."""
        times = [x for x in self.ok if x <= since][-1:] + [x for x in self.ok if x > since]
        return max(b - a for a, b in itertools.pairwise(times))

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)
        if self._client is not None:
            self._client.close()


class Logs:
    """Keeps a copy of every container log of the StatefulSet's pods (the kubelet removes a deleted pod's logs)."""

    def __init__(self, node: Node, namespace: str) -> None:
        self.node, self.namespace = node, namespace
        self.text: dict[str, str] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="pod-logs", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(0.2):
            for f in (self.node.state_dir / "node" / "pod-logs").glob(f"{self.namespace}_{POD}_*/*/*.log"):
                try:
                    uid = f.parent.parent.name.rsplit("_", 1)[1]
                    self.text[uid] = f.read_text(errors="replace")
                except OSError:
                    pass

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)


def log_times(logs: Logs, uid: str) -> list[tuple[float, str]]:
    """(wall-clock time, message) of every line of the pod's container log (the CRI log's own timestamps)."""
    out = []
    for line in logs.text.get(uid, "").splitlines():
        ts, _, rest = line.partition(" ")
        stamp = datetime.datetime.fromisoformat(ts[:26].rstrip("Z") + "+00:00") if "T" in ts else None
        if stamp is not None:
            out.append((stamp.timestamp(), rest.split(" ", 2)[-1]))
    return out


def timeline(logs: Logs, old: client.V1Pod, new: client.V1Pod, event: float) -> str:
    """Seconds from the event (wall clock) to each step of the replacement, from the two pods' logs."""
    def first(lines: list[tuple[float, str]], text: str, last: bool = False) -> str:
        hits = [t for t, m in lines if text in m]
        return f"{(hits[-1] if last else hits[0]) - event:.2f}" if hits else "?"

    before, after = log_times(logs, old.metadata.uid), log_times(logs, new.metadata.uid)
    return (f"SIGTERM received {first(before, 'received SIGTERM')}, old exited {first(before, 'stopped', True)}, "
            f"new started {f'{after[0][0] - event:.2f}' if after else '?'}, Ganesha serving "
            f"{first(after, 'Ganesha ready in')}, listed {first(after, 'volumes: listed')}, state check "
            f"{first(after, 'state check:')}")


def replaced(core: client.CoreV1Api, namespace: str, node: Node, before: client.V1Pod) -> client.V1Pod:
    return wait.until(lambda: (p := pod_ready(core, namespace, POD)) and p.metadata.uid != before.metadata.uid
                      and p, timeout=180, what=lambda: describe_pod(core, namespace, POD, node))


def measure(what: str, prober: Prober, logs: Logs, event: float, wall: float, core: client.CoreV1Api,
            namespace: str, node: Node, before: client.V1Pod) -> tuple[client.V1Pod, float]:
    pod = replaced(core, namespace, node, before)
    ready = time.monotonic()
    wait.until(lambda: prober.since(ready) >= 4, timeout=120,
               what=lambda: f"new opens after {what}: failures {prober.failures}\n"
                            f"{describe_pod(core, namespace, POD, node)}")
    took = prober.blackout(event)
    figure(f"{what}: no new open from the node for (s)", took)
    time.sleep(1.0)  # the new pod's log lines so far are copied
    figure(f"{what}: timeline (s)", timeline(logs, before, pod, wall))
    figure(f"{what}: the client first saw (s)", prober.seen(event))
    return pod, took


def test_blackout_of_a_helm_upgrade_and_of_the_statefulset_pod_deleted(
        cluster: kubecluster.Cluster, core: client.CoreV1Api, kube_node: Node, image: str, namespace: str,
        tmp_path: Path) -> None:
    node = kube_node
    helm = Helm(tmp_path / "helm-home", kubeconfig=cluster.kubeconfig)
    cluster.kubectl("label", "namespace", namespace, "pod-security.kubernetes.io/enforce=privileged")
    disk = tmp_path / "disk"
    disk.mkdir()
    export_pv, klass = f"export-{uuid.uuid4().hex[:8]}", f"helm-bo-{uuid.uuid4().hex[:8]}"
    cluster.kubectl("apply", "-f", "-", input=json.dumps(local_pv(export_pv, disk, node, namespace,
                                                                  f"export-volume-{POD}")))
    values = tmp_path / "values.json"
    values.write_text(json.dumps({"persistence": {"storageClass": "-"}, "storageClass": {"name": klass}}))
    kept_pvs: list[str] = []
    prober: Prober | None = None
    logs = Logs(node, namespace)
    try:
        out = helm("install", RELEASE, str(CHART), "-n", namespace, "-f", str(values), "--wait", "--timeout",
                   "180s", check=False)
        assert out.returncode == 0, out.stderr + "\n" + describe_pod(core, namespace, POD, node)
        first = pod_ready(core, namespace, POD)
        assert first is not None and "--grace-period=90" in first.spec.containers[0].args
        cluster.kubectl("apply", "-f", "-", input=json.dumps(claim("nfs", namespace, klass)))
        pv = bound(core, namespace, "nfs")
        kept_pvs.append(pv.metadata.name)
        prober = Prober(node, pv.spec.nfs.server, pv.spec.nfs.path)
        prober.start()
        wait.until(lambda: len(prober.ok) >= 4, timeout=60,
                   what=lambda: f"opens through {pv.spec.nfs.server}: failures {prober.failures}")
        assert (disk / pv.metadata.name / "probe-1").exists() or list((disk / pv.metadata.name).glob("probe-*"))
        assert list((disk / ".ganesha" / "recovery").rglob("*")), "the node's client is not recorded"

        event, wall = time.monotonic(), time.time()
        helm("upgrade", RELEASE, str(CHART), "-n", namespace, "--reuse-values", "--set", "logLevel=DEBUG")
        second, upgrade = measure("helm upgrade (the pod rolled)", prober, logs, event, wall, core, namespace, node,
                                  first)
        assert "--log-level=DEBUG" in second.spec.containers[0].args

        event, wall = time.monotonic(), time.time()
        core.delete_namespaced_pod(POD, namespace)
        _, deleted = measure("StatefulSet pod deleted", prober, logs, event, wall, core, namespace, node, second)
        figure("blackout probe failures (kind: count)", json.dumps(prober.failures, sort_keys=True))
        assert upgrade < BOUND_S and deleted < BOUND_S, (upgrade, deleted, prober.failures)
    finally:
        if prober is not None:
            prober.close()
        logs.close()
        helm("uninstall", RELEASE, "-n", namespace, "--wait", check=False)
        cluster.kubectl("delete", "pvc", "--all", "-n", namespace, "--wait=false", check=False)
        for name in kept_pvs:  # provisioned volumes whose provisioner is gone: only the finalizer holds them
            cluster.kubectl("patch", "pv", name, "--type=merge", "-p", '{"metadata":{"finalizers":null}}', check=False)
            cluster.kubectl("delete", "pv", name, "--wait=false", check=False)
        cluster.kubectl("delete", "pv", export_pv, "--wait=false", check=False)
        cluster.kubectl("delete", "storageclass", klass, "--ignore-not-found", check=False)
