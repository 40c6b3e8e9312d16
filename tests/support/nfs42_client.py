"""A minimal NFSv4.2 client over TCP, enough to READ_PLUS a file (RFC 7862 section 15.10).

Neither libnfs 4.0 (NFSv4.0 only) nor the UML kernel (built without
CONFIG_NFS_V4_2_READ_PLUS) sends READ_PLUS, the operation Ganesha < 6.2 answers
wrongly for Linux >= 6.6 clients (nfs-ganesha #1188). This speaks the protocol
itself: ONC RPC with AUTH_SYS, EXCHANGE_ID, CREATE_SESSION, then SEQUENCE +
RECLAIM_COMPLETE, and SEQUENCE + PUTROOTFH + LOOKUP... + READ_PLUS with the
anonymous stateid. Only what the test needs; any status other than NFS4_OK raises.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path

from tests.support import nfsraw
from tests.support.xdr import Packer, Unpacker, read_record, record

NFS_PROGRAM, NFS_V4, COMPOUND = 100003, 4, 1
OP_LOOKUP, OP_OPEN, OP_PUTROOTFH = 15, 18, 24
OPEN4_SHARE_ACCESS_WRITE, OPEN4_SHARE_ACCESS_WANT_NO_DELEG, OPEN4_CREATE, UNCHECKED4, CLAIM_NULL = 2, 0x400, 1, 0, 0
NFS4ERR_GRACE = 10013
OP_EXCHANGE_ID, OP_CREATE_SESSION, OP_SEQUENCE, OP_RECLAIM_COMPLETE, OP_READ_PLUS = 42, 43, 53, 58, 68
CONTENT_DATA, CONTENT_HOLE = 0, 1


class NfsError(RuntimeError):
    def __init__(self, op: int, status: int) -> None:
        super().__init__(f"NFSv4 op {op} failed with status {status}")
        self.op, self.status = op, status


def _channel_attrs(p: Packer) -> None:
    p.u32(0).u32(1 << 20).u32(1 << 20).u32(4096).u32(16).u32(8).u32(0)  # ..., rdma_ird<1> empty


@dataclass
class ReadPlus:
    eof: bool
    data: list[tuple[int, bytes]]
    holes: list[tuple[int, int]]


class Client:
    def __init__(self, *, host: str, port: int, timeout: float = 10.0, owner: bytes | None = None,
                 netns: Path | None = None) -> None:
        """``owner``: the client owner (verifier + id) to present; the same one after a server restart is the
        same client, whose record lets it reclaim (default: a new client each time). ``netns``: connect from
        inside that network namespace (the test process stays where it is)."""
        self.owner = owner or os.urandom(8) + b"nfsp-read-plus-" + os.urandom(4).hex().encode()
        self.sock: socket.socket = nfsraw.connect(host=host, port=port, netns=netns, timeout=timeout)
        self.xid = int.from_bytes(os.urandom(4), "big")
        self.session = b""
        self.clientid = 0
        self.slot_seq = 0
        self._exchange_and_create_session()

    def close(self) -> None:
        self.sock.close()

    # --- RPC ---------------------------------------------------------------------------------------------------

    def _rpc(self, body: bytes) -> Unpacker:
        self.xid = (self.xid + 1) & 0xFFFFFFFF
        cred = Packer().u32(0).opaque(b"nfsp-test").u32(0).u32(0).u32(0).bytes()  # AUTH_SYS root
        call = (Packer().u32(self.xid).u32(0).u32(2).u32(NFS_PROGRAM).u32(NFS_V4).u32(COMPOUND)
                .u32(1).opaque(cred).u32(0).opaque(b"").bytes() + body)
        self.sock.sendall(record(call))
        u = Unpacker(read_record(self._recv))
        xid, mtype, stat = u.u32(), u.u32(), u.u32()
        assert xid == self.xid and mtype == 1 and stat == 0, (xid, mtype, stat)
        u.u32()
        u.opaque()  # verifier
        accept = u.u32()
        assert accept == 0, f"RPC not accepted: {accept}"
        return u

    def _recv(self, n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise ConnectionError("server closed the connection")
            buf += chunk
        return buf

    def _compound(self, ops: list[tuple[int, bytes]]) -> Unpacker:
        p = Packer().opaque(b"").u32(2).u32(len(ops))
        for op, args in ops:
            p.u32(op).fixed(args)
        u = self._rpc(p.bytes())
        u.u32()  # overall status: the first failing op says which
        u.opaque()
        u.u32()
        return u

    @staticmethod
    def _status(u: Unpacker, op: int) -> None:
        got, status = u.u32(), u.u32()
        assert got == op, f"reply for op {got}, expected {op}"
        if status != 0:
            raise NfsError(op, status)

    # --- session -----------------------------------------------------------------------------------------------

    def _exchange_and_create_session(self) -> None:
        owner = Packer().fixed(self.owner[:8]).opaque(self.owner[8:])
        args = owner.u32(0).u32(0).u32(0).bytes()  # flags, SP4_NONE, no impl id
        u = self._compound([(OP_EXCHANGE_ID, args)])
        self._status(u, OP_EXCHANGE_ID)
        clientid, seq = u.u64(), u.u32()
        self.clientid = clientid
        cs = Packer().u64(clientid).u32(seq).u32(0)
        _channel_attrs(cs)
        _channel_attrs(cs)
        cs.u32(0x40000000).u32(1).u32(0)  # cb program, one callback sec parm: AUTH_NONE
        u = self._compound([(OP_CREATE_SESSION, cs.bytes())])
        self._status(u, OP_CREATE_SESSION)
        self.session = u.fixed(16)
        u = self._compound([self._sequence(), (OP_RECLAIM_COMPLETE, Packer().u32(0).bytes())])
        self._sequence_reply(u)
        self._status(u, OP_RECLAIM_COMPLETE)

    def _sequence(self) -> tuple[int, bytes]:
        self.slot_seq += 1
        return OP_SEQUENCE, Packer().fixed(self.session).u32(self.slot_seq).u32(0).u32(0).u32(0).bytes()

    def _sequence_reply(self, u: Unpacker) -> None:
        self._status(u, OP_SEQUENCE)
        u.fixed(16)
        for _ in range(5):
            u.u32()

    def renew(self) -> None:
        """A SEQUENCE alone: renews the lease, and fails once the server has forgotten the session."""
        u = self._compound([self._sequence()])
        self._sequence_reply(u)

    def create(self, path: str, name: str) -> None:
        """OPEN ``name`` in directory ``path`` for writing, creating it (UNCHECKED4, CLAIM_NULL): a new open, which
        a server in its grace period refuses (``NfsError`` with ``NFS4ERR_GRACE``). The open is left to the
        lease (no CLOSE)."""
        ops = [self._sequence(), (OP_PUTROOTFH, b"")]
        names = [c for c in path.split("/") if c]
        ops += [(OP_LOOKUP, Packer().opaque(n.encode()).bytes()) for n in names]
        args = (Packer().u32(0).u32(OPEN4_SHARE_ACCESS_WRITE | OPEN4_SHARE_ACCESS_WANT_NO_DELEG).u32(0)
                .u64(self.clientid).opaque(b"nfsp-open-owner")
                .u32(OPEN4_CREATE).u32(UNCHECKED4).u32(0).opaque(b"")  # no attributes: empty bitmap and values
                .u32(CLAIM_NULL).opaque(name.encode()))
        ops.append((OP_OPEN, args.bytes()))
        u = self._compound(ops)
        self._sequence_reply(u)
        self._status(u, OP_PUTROOTFH)
        for _ in names:
            self._status(u, OP_LOOKUP)
        self._status(u, OP_OPEN)

    # --- READ_PLUS ---------------------------------------------------------------------------------------------

    def read_plus(self, path: str, *, offset: int, count: int) -> ReadPlus:
        ops = [self._sequence(), (OP_PUTROOTFH, b"")]
        names = [c for c in path.split("/") if c]
        ops += [(OP_LOOKUP, Packer().opaque(n.encode()).bytes()) for n in names]
        anonymous = Packer().u32(0).fixed(b"\0" * 12)
        ops.append((OP_READ_PLUS, anonymous.u64(offset).u32(count).bytes()))
        u = self._compound(ops)
        self._sequence_reply(u)
        self._status(u, OP_PUTROOTFH)
        for _ in names:
            self._status(u, OP_LOOKUP)
        self._status(u, OP_READ_PLUS)
        result = ReadPlus(eof=bool(u.u32()), data=[], holes=[])
        for _ in range(u.u32()):
            kind = u.u32()
            if kind == CONTENT_DATA:
                at = u.u64()
                result.data.append((at, u.opaque()))
            elif kind == CONTENT_HOLE:
                at = u.u64()
                result.holes.append((at, u.u64()))
            else:
                raise AssertionError(f"unknown READ_PLUS content type {kind}")
        return result

    def read_file(self, path: str, *, size: int, chunk: int = 256 << 10) -> bytes:
        """The whole file through READ_PLUS, holes filled with zeros."""
        out = bytearray(size)
        offset = 0
        while offset < size:
            r = self.read_plus(path, offset=offset, count=min(chunk, size - offset))
            end = offset
            for at, data in r.data:
                out[at:at + len(data)] = data
                end = max(end, at + len(data))
            for at, length in r.holes:
                end = max(end, min(at + length, size))
            if r.eof or end <= offset:
                break
            offset = end
        return bytes(out[:size])
