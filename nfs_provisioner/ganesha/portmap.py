"""Ask rpcbind what is registered (portmap v2 DUMP over UDP, from an unprivileged port).

The start-up waits used to poll ``rpcinfo -p``. Run as root, rpcinfo connects over TCP from a reserved port
(libtirpc's bindresvport: 600-1023, the next free one) and closes first, so every poll left a reserved port in
TIME_WAIT for 60 s. A few starts swept through that range: one of them landing on 875 kept Ganesha from binding
RQUOTA ("Cannot bind RQUOTA tcp6 socket, error 98") until it expired, and polls could run short of reserved ports
altogether. A UDP query from an ordinary ephemeral port leaves nothing behind.
"""

from __future__ import annotations

import secrets
import socket
import struct

PMAP_PROG, PMAP_VERS, PMAPPROC_DUMP = 100000, 2, 4
CALL, REPLY, MSG_ACCEPTED, SUCCESS = 0, 1, 0, 0
PROTOCOLS = {6: "tcp", 17: "udp"}


class PortmapError(OSError):
    """rpcbind did not answer, or answered something that is not a portmap DUMP reply."""


def dump_request(xid: int) -> bytes:
    # xid, CALL, RPC version 2, program, version, procedure, AUTH_NONE credential and verifier.
    return struct.pack(">10I", xid, CALL, 2, PMAP_PROG, PMAP_VERS, PMAPPROC_DUMP, 0, 0, 0, 0)


def parse_dump_reply(data: bytes, xid: int) -> set[tuple[int, int, str, int]]:
    """(program, version, protocol, port) of each registration in a DUMP reply."""
    try:
        rxid, mtype, stat, _flavor, vlen = struct.unpack_from(">5I", data, 0)
        if rxid != xid or mtype != REPLY or stat != MSG_ACCEPTED:
            raise PortmapError(f"not an accepted reply to call {xid:#x}")
        off = 20 + (vlen + 3) // 4 * 4
        (accept,) = struct.unpack_from(">I", data, off)
        if accept != SUCCESS:
            raise PortmapError(f"portmap DUMP refused (accept_stat {accept})")
        off += 4
        found = set()
        while struct.unpack_from(">I", data, off)[0] == 1:
            prog, vers, prot, port = struct.unpack_from(">4I", data, off + 4)
            found.add((prog, vers, PROTOCOLS.get(prot, str(prot)), port))
            off += 20
        return found
    except struct.error as e:
        raise PortmapError(f"truncated portmap reply ({len(data)} bytes)") from e


def dump(host: str = "127.0.0.1", *, port: int = 111, timeout: float = 2.0) -> set[tuple[int, int, str, int]]:
    """rpcbind's registrations; PortmapError if it does not answer within ``timeout``."""
    xid = secrets.randbits(32)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        try:
            s.connect((host, port))
            s.send(dump_request(xid))
            data = s.recv(65535)
            while data[:4] != struct.pack(">I", xid):  # a late answer to someone else's call: not ours
                data = s.recv(65535)
        except OSError as e:
            raise PortmapError(f"rpcbind on {host}:{port} did not answer: {e}") from e
    return parse_dump_reply(data, xid)
