"""Who may mount: the cluster's Node addresses, kept current from a watch of Node objects.

Kubelets mount volumes from their node, so by default (``--export-subnet`` unset or ``nodes``) every export's
client list is exactly:

- each Node's ``status.addresses`` of type InternalIP and ExternalIP (IPv4 and IPv6);
- the first two addresses of each of its ``spec.podCIDRs`` (``.0`` and ``.1``; ``::`` and ``::1``): a
  kubelet that mounts through the Service ClusterIP is masqueraded by kube-proxy (node-originated traffic to
  a ClusterIP is marked for masquerade), and the new source is the address of the interface towards the
  server pod -- the bridge's gateway (``cni0``, the bridge plugin's ``.1``, never given to a pod) for a
  server on the same node, or a VXLAN device's ``.0`` (flannel) for one on another node. Pods never get
  these two, so no pod is let in with them;
- the fixed entries of ``--export-subnet`` (e.g. loopback, out of cluster).

``node-ips`` instead of ``nodes`` leaves out the pod-CIDR addresses: with an IPAM that ignores
``spec.podCIDRs`` (Calico, Cilium's cluster-pool) a pod could hold one of them.

IPv4 addresses are collapsed into CIDRs (adjacent nodes share one entry). Bursts of Node events are debounced:
the list is recomputed once the events have been quiet for ``debounce`` seconds (at most ``max_delay``
after the first), and handed to ``apply`` only when it differs from the last one applied.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from nfs_provisioner.controller import watching
from nfs_provisioner.kube import client as kube
from nfs_provisioner.kube import errors as kube_errors

log = logging.getLogger(__name__)

Object = dict[str, Any]
ADDRESS_TYPES = ("InternalIP", "ExternalIP")
Apply = Callable[[tuple[str, ...]], None]


class NodesError(RuntimeError):
    """The Nodes could not be listed at start (the message is one line for the user)."""


def node_addresses(node: Object, *, pod_gateways: bool = True) -> set[str]:
    """The addresses a kubelet's mounts can come from (see the module docstring), as host networks."""
    out: set[str] = set()
    for a in (node.get("status") or {}).get("addresses") or []:
        if a.get("type") in ADDRESS_TYPES:
            try:
                out.add(str(ipaddress.ip_network(str(a.get("address", "")).strip())))
            except ValueError:
                log.debug("node %s: address %r is not an IP", (node.get("metadata") or {}).get("name"), a)
    spec = node.get("spec") or {}
    cidrs = spec.get("podCIDRs") or ([spec["podCIDR"]] if spec.get("podCIDR") else [])
    for cidr in cidrs if pod_gateways else ():
        try:
            net = ipaddress.ip_network(str(cidr), strict=False)
        except ValueError:
            continue
        if net.num_addresses >= 4:
            out |= {str(ipaddress.ip_network(net[0])), str(ipaddress.ip_network(net[1]))}
    return out


def client_list(nodes: Iterable[Object], fixed: Iterable[str] = (), *, pod_gateways: bool = True) -> tuple[str, ...]:
    """``fixed`` plus every node's addresses, collapsed into as few CIDRs as possible, sorted."""
    fixed = tuple(fixed)
    if "*" in fixed:
        return ("*",)
    nets = [ipaddress.ip_network(n) for n in fixed]
    for node in nodes:
        nets += [ipaddress.ip_network(a) for a in node_addresses(node, pod_gateways=pod_gateways)]
    v4 = ipaddress.collapse_addresses(n for n in nets if isinstance(n, ipaddress.IPv4Network))
    # IPv6 is not collapsed: Ganesha 4.3 cannot parse IPv6 networks longer than /64 (see ganesha.config).
    v6 = sorted({n for n in nets if isinstance(n, ipaddress.IPv6Network)})
    return tuple(str(n) for n in [*v4, *v6])


class NodeClients:
    """Watches Nodes and keeps ``apply``'s client list equal to :func:`client_list` of them."""

    def __init__(self, api: kube.Client, *, fixed: tuple[str, ...] = (), pod_gateways: bool = True,
                 debounce: float = 1.0, max_delay: float = 5.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.fixed = fixed
        self.pod_gateways = pod_gateways
        self.debounce = debounce
        self.max_delay = max_delay
        self._clock = clock
        self.informer = watching.Informer(api, name="nodes", path="/api/v1/nodes", kind="Node", api_version="v1",
                                          key=lambda o: str(o["metadata"]["name"]), on_change=self._changed)
        self.applied: tuple[str, ...] | None = None
        """The list last handed to ``apply`` (or returned by :meth:`start` for the start-up)."""
        self.applies = 0
        self._apply: Apply | None = None
        self._dirty = threading.Event()
        self._first_change: float | None = None
        self._last_change = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, *, timeout: float = 30.0) -> tuple[str, ...]:
        """Start the watch and return the current list once the Nodes are listed; raises NodesError."""
        self.informer.start()
        deadline = self._clock() + timeout
        while not self.informer.synced.wait(0.1):
            error = self.informer.last_error
            if isinstance(error, kube_errors.Forbidden) or self._clock() > deadline:
                self.informer.stop()
                raise NodesError(f"cannot list Nodes (the client list follows them: RBAC needs get/list/watch on "
                                 f"nodes, or give --export-subnet): {error or f'no answer within {timeout:.0f}s'}")
        self.applied = self.current()
        self._report(self.applied, previous=None)
        return self.applied

    def follow(self, apply: Apply) -> None:
        """From now on hand every changed list to ``apply`` (in a thread of its own)."""
        self._apply = apply
        self._thread = threading.Thread(target=self._run, name="node-clients", daemon=True)
        self._thread.start()
        self._dirty.set()  # catch changes between start() and now

    def stop(self) -> None:
        self._stop.set()
        self._dirty.set()
        self.informer.stop()
        self.informer.join(5)  # its last log lines come before whatever the caller says next
        if self._thread is not None:
            self._thread.join(10)

    def current(self) -> tuple[str, ...]:
        return client_list(self.informer.items(), self.fixed, pod_gateways=self.pod_gateways)

    def _changed(self, old: Object | None, new: Object | None) -> None:
        if old is not None and new is not None and node_addresses(old) == node_addresses(new):
            return  # status heartbeats and conditions: nothing that matters here
        now = self._clock()
        if self._first_change is None:
            self._first_change = now
        self._last_change = now
        self._dirty.set()

    def _run(self) -> None:
        backoff = 0.5
        while not self._stop.is_set():
            self._dirty.wait()
            if self._stop.is_set():
                return
            first = self._first_change
            quiet = self._clock() - self._last_change
            if first is not None and quiet < self.debounce and self._clock() - first < self.max_delay:
                self._stop.wait(min(self.debounce - quiet, self.max_delay - (self._clock() - first)))
                continue
            self._dirty.clear()
            self._first_change = None
            clients = self.current()
            if clients == self.applied:
                continue
            assert self._apply is not None
            try:
                self._apply(clients)
            except Exception:  # keep following; retry the same change
                log.exception("applying the new client list failed; retrying in %.1fs", backoff)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 30.0)
                self._dirty.set()
                continue
            backoff = 0.5
            previous, self.applied = self.applied, clients
            self.applies += 1
            self._report(clients, previous=previous)

    def _report(self, clients: tuple[str, ...], *, previous: tuple[str, ...] | None) -> None:
        nodes = len(self.informer.cache)
        if not clients:
            log.warning("%d Nodes and none has an InternalIP/ExternalIP address: nobody can mount volumes until "
                        "one has (or give --export-subnet)", nodes)
            return
        if previous is None:
            log.info("NFS clients: %s (%d Nodes)", ",".join(clients), nodes)
            return
        added = sorted(set(clients) - set(previous))
        removed = sorted(set(previous) - set(clients))
        log.info("NFS clients changed (%d Nodes): now %s; added %s; removed %s", nodes, ",".join(clients),
                 ",".join(added) or "-", ",".join(removed) or "-")
