"""What tests/{e2e,ganesha,kube,unit}/test_hostile_addresses.py share (one module per lane: the tests of one module
needed different things)."""

from __future__ import annotations

import ipaddress
from pathlib import Path

from tests.support import nfsraw

STRANGER = "127.77.0.9"
"""A local process that is no Node: it must never read a volume."""


def read_from(source: str, port: int, path: Path) -> bytes | str:
    """Read ``path`` over NFSv4 from the local address ``source``: its bytes, or the NFS status Ganesha answered
    (PUTROOTFH, LOOKUP down the pseudo filesystem, READ with the anonymous stateid: one COMPOUND)."""
    with nfsraw.Nfs4(host="127.0.0.1", port=port, source=source) as c:
        r = c.compound([c.putrootfh(), *(c.lookup(n) for n in path.parts[1:]), c.read()])
        return r.last(nfsraw.OP_READ).data if r.status == nfsraw.NFS4_OK else r.status_name


def covers(clients: list[str] | tuple[str, ...], address: str) -> bool:
    """Whether a client list lets ``address`` in (the shared cluster's other Nodes may merge entries)."""
    return any(c == "*" or ipaddress.ip_address(address) in ipaddress.ip_network(c) for c in clients)
