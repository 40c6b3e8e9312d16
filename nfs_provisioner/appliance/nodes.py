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
after the first), and handed to ``apply`` only when it differs from the last one applied. A list ``apply``
could not make live (it raised) is not applied: it is retried with backoff and :meth:`NodeClients.health`
says so (readiness) until it is.

A Node's addresses are whatever its kubelet (or anyone allowed to patch Node status) wrote: the API server
does not check them. Only plain IPv4/IPv6 host addresses are used (:func:`host_address`); a network
(``127.0.0.0/8`` would let every local process in), an IPv6 zone id (``fe80::1%eth0``: no Ganesha config
can hold it), the unspecified address (Ganesha reads ``0.0.0.0`` as every client) or anything else is
left out, with one warning line and one Warning Event on the Node (``InvalidNodeAddress``) each time a
Node's set of such addresses changes; the Node's other addresses and every other Node still count.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
import threading
import time
from collections.abc import Callable, Iterable

from nfs_provisioner import threads
from nfs_provisioner.controller import events, watching
from nfs_provisioner.errors import NFSProvisionerError
from nfs_provisioner.ganesha import errors as ganesha_errors
from nfs_provisioner.kube import client as kube
from nfs_provisioner.kube import errors as kube_errors
from nfs_provisioner.kube.objects import Object

log = logging.getLogger(__name__)
ADDRESS_TYPES = ("InternalIP", "ExternalIP")
Apply = Callable[[tuple[str, ...]], None]


class NodesError(NFSProvisionerError, RuntimeError):
    """The Nodes could not be listed at start (the message is one line for the user)."""


INVALID_NODE_ADDRESS = "InvalidNodeAddress"
"""Reason of the Warning Event on a Node one of whose addresses is left out of the client list."""
SHOWN = 80
"""Characters of a rejected address shown in a log line or an Event (Node status strings are unbounded)."""


@dataclasses.dataclass(frozen=True)
class Skipped:
    """An InternalIP/ExternalIP of a Node that is not a host address, left out of the client list."""

    type: str
    address: str
    why: str

    def __str__(self) -> str:
        shown = self.address if len(self.address) <= SHOWN else self.address[:SHOWN] + "..."
        return f"{self.type} {shown!r} ({self.why})"


def host_address(value: object) -> str:
    """``value`` as a one-host client entry (``10.0.0.4/32``, ``fd00::4/128``) if it is a plain IPv4 or IPv6
    host address; else ValueError saying what it is instead (the message is short, for a log line)."""
    text = value.strip() if isinstance(value, str) else ""
    if not text:
        raise ValueError("not an IP address")
    if "/" in text:
        raise ValueError("a network (CIDR), not a host address")
    if "%" in text:
        raise ValueError("an IPv6 zone id, meaningless to NFS")
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        raise ValueError("not an IP address") from None
    if ip.is_unspecified:
        raise ValueError("the unspecified address, no client's (Ganesha reads 0.0.0.0 as every client)")
    if ip.is_multicast or ip == ipaddress.IPv4Address("255.255.255.255"):
        raise ValueError("a multicast or broadcast address, never a client's")
    return str(ipaddress.ip_network(ip))


def _addresses(node: Object) -> Iterable[tuple[str, object]]:
    """(type, address) of the Node's InternalIP and ExternalIP entries, whatever their shape."""
    entries = (node.get("status") or {}).get("addresses")
    for a in entries if isinstance(entries, list) else ():
        if isinstance(a, dict) and a.get("type") in ADDRESS_TYPES:
            yield str(a["type"]), a.get("address")


def skipped_addresses(node: Object) -> tuple[Skipped, ...]:
    """The Node's InternalIP/ExternalIP entries that :func:`node_addresses` leaves out, and why."""
    out: list[Skipped] = []
    for kind, value in _addresses(node):
        try:
            host_address(value)
        except ValueError as e:
            out.append(Skipped(type=kind, address=str(value), why=str(e)))
    return tuple(dict.fromkeys(out))


def node_addresses(node: Object, *, pod_gateways: bool = True) -> set[str]:
    """The addresses a kubelet's mounts can come from (see the module docstring), as host networks; what is not
    a plain host address is left out (:func:`skipped_addresses`)."""
    out: set[str] = set()
    for _, value in _addresses(node):
        try:
            out.add(host_address(value))
        except ValueError:
            continue
    spec = node.get("spec") or {}
    cidrs = spec.get("podCIDRs") or ([spec["podCIDR"]] if spec.get("podCIDR") else [])
    for cidr in cidrs if pod_gateways and isinstance(cidrs, list) else ():
        try:
            net = ipaddress.ip_network(str(cidr), strict=False)
        except ValueError:
            continue
        if net.num_addresses >= 4:
            for ip in (net[0], net[1]):
                try:
                    out.add(host_address(str(ip)))
                except ValueError:
                    continue
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
                 debounce: float = 1.0, max_delay: float = 5.0, clock: Callable[[], float] = time.monotonic,
                 recorder: events.EventRecorder | None = None, component: str = "nfs-provisioner") -> None:
        """``recorder``: where the Events about Nodes go (default: one of its own for ``component``, started and
        stopped with this watch)."""
        self.fixed = fixed
        self.pod_gateways = pod_gateways
        self.debounce = debounce
        self.max_delay = max_delay
        self._clock = clock
        self._own_recorder = recorder is None
        self.recorder = recorder or events.EventRecorder(api, component=component, senders=1)
        self.informer = watching.Informer(api, name="nodes", path="/api/v1/nodes", kind="Node", api_version="v1",
                                          key=lambda o: str(o["metadata"]["name"]), on_change=self._changed)
        self.applied: tuple[str, ...] | None = None
        """The list last made live by ``apply`` (or returned by :meth:`start` for the start-up)."""
        self.applies = 0
        self._apply: Apply | None = None
        self._failing: str | None = None
        """Why the current list is not live (``apply`` raised), until an ``apply`` succeeds."""
        self._skipped: dict[str, tuple[Skipped, ...]] = {}
        """Node name -> its addresses left out, as last reported (reported again only when they change)."""
        self._dirty = threading.Event()
        self._first_change: float | None = None
        self._last_change = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, *, timeout: float = 30.0) -> tuple[str, ...]:
        """Start the watch and return the current list once the Nodes are listed; raises NodesError."""
        if self._own_recorder:
            self.recorder.start()
        self.informer.start()
        deadline = self._clock() + timeout
        while not self.informer.synced.wait(0.1):
            error = self.informer.last_error
            if isinstance(error, kube_errors.Forbidden) or self._clock() > deadline:
                self.informer.stop()
                if self._own_recorder:
                    self.recorder.stop()
                raise NodesError(f"cannot list Nodes (the client list follows them: RBAC needs get/list/watch on "
                                 f"nodes, or give --export-subnet): {error or f'no answer within {timeout:.0f}s'}")
        self.applied = self.current()
        self._report(self.applied, previous=None)
        return self.applied

    def follow(self, apply: Apply) -> None:
        """From now on hand every changed list to ``apply`` (in a thread of its own). ``apply`` raises when the
        list is not live (e.g. Ganesha refused it for some exports): it is then handed again, with backoff."""
        self._apply = apply
        self._thread = threads.spawn(self._run, name="node-clients")
        self._dirty.set()  # catch changes between start() and now

    def stop_following(self) -> None:
        """Hand no more lists to ``apply`` (before what it applies to stops); ``stop()`` does it too."""
        self._stop.set()
        self._dirty.set()
        if self._thread is not None:
            self._thread.join(10)

    def stop(self) -> None:
        self.stop_following()
        self.informer.stop()
        self.informer.join(5)  # its last log lines come before whatever the caller says next
        if self._own_recorder:
            self.recorder.stop()

    def current(self) -> tuple[str, ...]:
        return client_list(self.informer.items(), self.fixed, pod_gateways=self.pod_gateways)

    def health(self) -> tuple[bool, str]:
        """For readiness: (False, why) while the current client list could not be made live."""
        failing = self._failing
        return (True, "ok") if failing is None else (False, failing)

    def _changed(self, old: Object | None, new: Object | None) -> None:
        self._check_addresses(old, new)
        if old is not None and new is not None and node_addresses(old) == node_addresses(new):
            return  # status heartbeats and conditions: nothing that matters here
        now = self._clock()
        if self._first_change is None:
            self._first_change = now
        self._last_change = now
        self._dirty.set()

    def _check_addresses(self, old: Object | None, new: Object | None) -> None:
        """One warning line and one Event on the Node when its set of skipped addresses changes to a non-empty one."""
        node = new if new is not None else old
        name = str(((node or {}).get("metadata") or {}).get("name"))
        if new is None:
            self._skipped.pop(name, None)
            return
        skipped = skipped_addresses(new)
        if skipped == self._skipped.get(name, ()):
            return
        if not skipped:
            self._skipped.pop(name, None)
            log.info("node %s: every InternalIP/ExternalIP is a host address again", name)
            return
        self._skipped[name] = skipped
        what = "; ".join(str(s) for s in skipped)
        log.warning("node %s: left out of the NFS client list (only host addresses may mount): %s", name, what)
        self.recorder.event(new, events.WARNING, INVALID_NODE_ADDRESS,
                            f"Not allowed to mount NFS volumes from: {what}. Only plain IPv4/IPv6 host addresses "
                            "are used; the Node's other addresses still are.")

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
            if clients == self.applied and self._failing is None:
                continue
            assert self._apply is not None
            try:
                self._apply(clients)
            except Exception as e:  # keep following; retry the same change
                self._failing = (f"the NFS client list is not live: {str(e).splitlines()[0] if str(e) else e!r}; "
                                 f"retrying")
                log.error("applying the new client list %s failed; retrying in %.1fs: %s", ",".join(clients) or "-",
                          backoff, e, exc_info=not isinstance(e, ganesha_errors.GaneshaError))
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 30.0)
                self._dirty.set()
                continue
            backoff = 0.5
            self._failing = None
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
        if clients == previous:
            log.info("NFS clients (%d Nodes): %s, now live everywhere", nodes, ",".join(clients))
            return
        added = sorted(set(clients) - set(previous))
        removed = sorted(set(previous) - set(clients))
        log.info("NFS clients changed (%d Nodes): now %s; added %s; removed %s", nodes, ",".join(clients),
                 ",".join(added) or "-", ",".join(removed) or "-")


def health(watcher: NodeClients | None) -> tuple[bool, str]:
    """Readiness of the client list: ok with a fixed list (no watch), else :meth:`NodeClients.health`."""
    return (True, "ok") if watcher is None else watcher.health()
