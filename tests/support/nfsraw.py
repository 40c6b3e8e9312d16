"""A raw NFS client for the suite: ONC RPC over TCP, AUTH_SYS, XDR by hand.

Enough of NFSv4.0 (one COMPOUND per call: PUTROOTFH, PUTFH, LOOKUP, LOOKUPP,
GETFH, GETATTR, READ with the anonymous stateid, READLINK, CREATE of a directory) and
of NFSv3 + MOUNT (MNT, LOOKUP, READ, WRITE, CREATE, MKDIR, READDIRPLUS, FSSTAT) to send what a
hostile userspace client sends: file handles it made up itself. Nothing here
interprets a handle; the tests rewrite its bytes.

Usage::

    with Nfs4(host="127.0.0.1", port=2049) as c:
        r = c.compound([c.putrootfh(), c.lookup("vol"), c.getfh()])
        fh = r.ops[-1].fh
"""

from __future__ import annotations

import dataclasses
import os
import socket
import threading
from pathlib import Path
from typing import Any, TypeVar

from tests.support.xdr import Packer, Unpacker, read_record, record

NFS_PROGRAM, MOUNT_PROGRAM = 100003, 100005
AUTH_SYS = 1
CLONE_NEWNET = 0x40000000

# NFSv4 operation numbers (RFC 7530) and the attribute bits we ask for.
OP_CREATE, OP_GETATTR, OP_GETFH, OP_LOOKUP, OP_LOOKUPP = 6, 9, 10, 15, 16
OP_PUTFH, OP_PUTROOTFH, OP_READ, OP_READLINK = 22, 24, 25, 27
FATTR4_TYPE, FATTR4_FILEID = 1, 20
FATTR4_MODE, FATTR4_OWNER, FATTR4_OWNER_GROUP = 33, 36, 37
"""In the bitmap's second word (bit n - 32); owners are numbers as strings (Only_Numeric_Owners)."""
NF4REG, NF4DIR = 1, 2
NFS4_OK = 0
NFS4ERR_NAMES = {
    1: "NFS4ERR_PERM", 2: "NFS4ERR_NOENT", 5: "NFS4ERR_IO", 13: "NFS4ERR_ACCESS", 17: "NFS4ERR_EXIST",
    18: "NFS4ERR_XDEV", 20: "NFS4ERR_NOTDIR", 22: "NFS4ERR_INVAL", 70: "NFS4ERR_STALE", 10001: "NFS4ERR_BADHANDLE",
    10006: "NFS4ERR_SERVERFAULT", 10013: "NFS4ERR_GRACE", 10020: "NFS4ERR_NOFILEHANDLE",
    10021: "NFS4ERR_MINOR_VERS_MISMATCH", 10043: "NFS4ERR_OPENMODE",
    10044: "NFS4ERR_BADOWNER", 10033: "NFS4ERR_BAD_STATEID", 10041: "NFS4ERR_WRONGSEC",
    10014: "NFS4ERR_FHEXPIRED",
}

# NFSv3 procedures (RFC 1813) and MOUNT v3.
V3_LOOKUP, V3_READ, V3_WRITE, V3_CREATE, V3_MKDIR, V3_READDIRPLUS, V3_FSSTAT = 3, 6, 7, 8, 9, 17, 18
MNT_MNT = 1
NFS3_OK, NFS3ERR_NOSPC, NFS3ERR_DQUOT, NFS3ERR_STALE = 0, 28, 69, 70
FILE_SYNC = 2


_Client = TypeVar("_Client", bound="RpcClient")


class RpcError(RuntimeError):
    """The RPC itself failed (denied, not accepted, garbled): not an NFS status."""


def nfs4_status_name(status: int) -> str:
    return NFS4ERR_NAMES.get(status, "NFS4_OK" if status == 0 else f"NFS4ERR_{status}")


# --- RPC over TCP with record marking ------------------------------------------------------------------------------


def connect(*, host: str, port: int, netns: Path | None = None, timeout: float = 10.0,
            source: str | None = None) -> socket.socket:
    """A TCP connection; inside network namespace ``netns`` if given (made from a short-lived thread
    that setns()s itself: the socket stays in that namespace, the test process does not move).
    ``source``: the local address to connect from (e.g. another loopback address, 127.0.0.0/8 being local)."""
    if netns is None:
        return socket.create_connection((host, port), timeout=timeout,
                                        source_address=None if source is None else (source, 0))
    result: list[Any] = []

    def in_netns() -> None:
        import ctypes

        try:
            libc = ctypes.CDLL(None, use_errno=True)
            fd = os.open(netns, os.O_RDONLY)
            try:
                if libc.setns(fd, CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), f"setns({netns})")
            finally:
                os.close(fd)
            result.append(socket.create_connection((host, port), timeout=timeout))
        except BaseException as e:  # noqa: BLE001 - handed to the caller's thread below
            result.append(e)

    t = threading.Thread(target=in_netns, name="nfsraw-netns")
    t.start()
    t.join()
    if isinstance(result[0], BaseException):
        raise result[0]
    return result[0]  # type: ignore[no-any-return]


class RpcClient:
    """One TCP connection, calls one at a time, AUTH_SYS credentials of ``uid``/``gid``."""

    def __init__(self, *, host: str, port: int, program: int, version: int, uid: int = 0, gid: int = 0,
                 netns: Path | None = None, source: str | None = None) -> None:
        self.program, self.version, self.uid, self.gid = program, version, uid, gid
        self.sock = connect(host=host, port=port, netns=netns, source=source)
        self.xid = int.from_bytes(os.urandom(4), "big")

    def close(self) -> None:
        self.sock.close()

    def __enter__(self: _Client) -> _Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _cred(self) -> bytes:
        body = Packer().u32(0).string("nfsraw").u32(self.uid).u32(self.gid).u32(0).bytes()
        return Packer().u32(AUTH_SYS).opaque(body).bytes()

    def call(self, proc: int, args: bytes) -> Unpacker:
        self.xid = (self.xid + 1) & 0xFFFFFFFF
        head = Packer().u32(self.xid).u32(0).u32(2).u32(self.program).u32(self.version).u32(proc).bytes()
        msg = head + self._cred() + Packer().u32(0).u32(0).bytes() + args
        self.sock.sendall(record(msg))
        reply = read_record(self._recv)
        u = Unpacker(reply)
        if u.u32() != self.xid or u.u32() != 1:
            raise RpcError("reply does not match the call")
        if u.u32() != 0:
            raise RpcError("RPC call denied (reply_stat MSG_DENIED)")
        u.u32()
        u.opaque()  # verifier
        accept = u.u32()
        if accept != 0:
            raise RpcError(f"RPC call not accepted (accept_stat {accept})")
        return u

    def _recv(self, n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise RpcError("connection closed by the server")
            buf += chunk
        return buf


# --- NFSv4.0 -------------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Op4:
    """One operation of a COMPOUND: what was asked, and after the call its status and result."""

    op: int
    args: bytes = b""
    status: int | None = None
    fh: bytes = b""
    """GETFH: the file handle."""
    attrs: dict[str, int] = dataclasses.field(default_factory=dict)
    """GETATTR: {'type': NF4DIR, 'fileid': ...}; :meth:`Nfs4.stat`: {'type', 'mode', 'uid', 'gid'}."""
    data: bytes = b""
    """READ: the data read; READLINK: the link's target."""


@dataclasses.dataclass
class Compound4:
    status: int
    ops: list[Op4]
    """The operations the server answered (it stops at the first failure)."""

    @property
    def status_name(self) -> str:
        return nfs4_status_name(self.status)

    def last(self, op: int) -> Op4:
        return [o for o in self.ops if o.op == op][-1]


class Nfs4(RpcClient):
    """NFSv4.0 COMPOUNDs (no state needed: READ uses the anonymous stateid)."""

    def __init__(self, *, host: str, port: int = 2049, uid: int = 0, gid: int = 0, netns: Path | None = None,
                 source: str | None = None) -> None:
        super().__init__(host=host, port=port, program=NFS_PROGRAM, version=4, uid=uid, gid=gid, netns=netns,
                         source=source)

    @staticmethod
    def putrootfh() -> Op4:
        return Op4(OP_PUTROOTFH)

    @staticmethod
    def putfh(fh: bytes) -> Op4:
        return Op4(OP_PUTFH, Packer().opaque(fh).bytes())

    @staticmethod
    def lookup(name: str) -> Op4:
        return Op4(OP_LOOKUP, Packer().string(name).bytes())

    @staticmethod
    def lookupp() -> Op4:
        return Op4(OP_LOOKUPP)

    @staticmethod
    def getfh() -> Op4:
        return Op4(OP_GETFH)

    @staticmethod
    def getattr() -> Op4:
        return Op4(OP_GETATTR, Packer().u32(1).u32((1 << FATTR4_TYPE) | (1 << FATTR4_FILEID)).bytes())

    @staticmethod
    def stat() -> Op4:
        """GETATTR of type, mode (permission bits with setuid/setgid/sticky) and the numeric owner and group."""
        high = (1 << (FATTR4_MODE - 32)) | (1 << (FATTR4_OWNER - 32)) | (1 << (FATTR4_OWNER_GROUP - 32))
        return Op4(OP_GETATTR, Packer().u32(2).u32(1 << FATTR4_TYPE).u32(high).bytes())

    @staticmethod
    def readlink() -> Op4:
        return Op4(OP_READLINK)

    @staticmethod
    def read(offset: int = 0, count: int = 65536) -> Op4:
        anonymous = Packer().u32(0).fixed(b"\0" * 12)
        return Op4(OP_READ, anonymous.u64(offset).u32(count).bytes())

    @staticmethod
    def mkdir(name: str) -> Op4:
        # createtype4 NF4DIR, objname, createattrs = empty fattr4 (no bitmap words, no values).
        return Op4(OP_CREATE, Packer().u32(NF4DIR).string(name).u32(0).opaque(b"").bytes())

    def compound(self, ops: list[Op4]) -> Compound4:
        args = Packer().string("nfsraw").u32(0).u32(len(ops))
        for o in ops:
            args.u32(o.op).fixed(o.args)
        u = self.call(1, args.bytes())
        status = u.u32()
        u.opaque()  # tag
        answered = []
        for o in ops[:u.u32()]:
            if u.u32() != o.op:
                raise RpcError("COMPOUND reply is out of order")
            o.status = u.u32()
            answered.append(o)
            if o.status != NFS4_OK:
                break
            self._result(o, u)
        return Compound4(status=status, ops=answered)

    @staticmethod
    def _result(o: Op4, u: Unpacker) -> None:
        if o.op == OP_GETFH:
            o.fh = u.opaque()
        elif o.op == OP_GETATTR:
            words = [u.u32() for _ in range(u.u32())]
            values = Unpacker(u.opaque())
            mask = words[0] if words else 0
            if mask & (1 << FATTR4_TYPE):
                o.attrs["type"] = values.u32()
            if mask & (1 << FATTR4_FILEID):
                o.attrs["fileid"] = values.u64()
            high = words[1] if len(words) > 1 else 0
            if high & (1 << (FATTR4_MODE - 32)):
                o.attrs["mode"] = values.u32()
            if high & (1 << (FATTR4_OWNER - 32)):
                o.attrs["uid"] = int(values.opaque())
            if high & (1 << (FATTR4_OWNER_GROUP - 32)):
                o.attrs["gid"] = int(values.opaque())
        elif o.op == OP_READ:
            u.u32()  # eof
            o.data = u.opaque()
        elif o.op == OP_READLINK:
            o.data = u.opaque()
        elif o.op == OP_CREATE:
            u.skip(4 + 8 + 8)  # change_info4
            for _ in range(u.u32()):
                u.u32()

    def path_fh(self, *names: str) -> bytes:
        """PUTROOTFH, LOOKUP each name, GETFH: the handle of a path in the pseudo filesystem."""
        r = self.compound([self.putrootfh(), *(self.lookup(n) for n in names), self.getfh()])
        if r.status != NFS4_OK:
            raise RpcError(f"cannot look up /{'/'.join(names)}: {r.status_name}")
        return r.last(OP_GETFH).fh


# --- NFSv3 and MOUNT -----------------------------------------------------------------------------------------------

FATTR3_SIZE = 84


@dataclasses.dataclass
class Reply3:
    status: int
    fh: bytes = b""
    data: bytes = b""
    names: dict[str, bytes] = dataclasses.field(default_factory=dict)
    """READDIRPLUS: name -> handle (empty when the server sent none)."""
    count: int = 0
    """WRITE: the bytes the server wrote."""
    space: dict[str, int] = dataclasses.field(default_factory=dict)
    """FSSTAT: tbytes, fbytes, abytes (what statvfs, and so ``df``, shows of the export's filesystem)."""


def _post_op_attr(u: Unpacker) -> None:
    if u.u32():
        u.skip(FATTR3_SIZE)


def _wcc_data(u: Unpacker) -> None:
    if u.u32():
        u.skip(8 + 8 + 8)  # pre_op_attr: size, mtime, ctime
    _post_op_attr(u)


class Mount3(RpcClient):
    def __init__(self, *, host: str, port: int, uid: int = 0, gid: int = 0, netns: Path | None = None) -> None:
        super().__init__(host=host, port=port, program=MOUNT_PROGRAM, version=3, uid=uid, gid=gid, netns=netns)

    def mnt(self, path: str) -> Reply3:
        u = self.call(MNT_MNT, Packer().string(path).bytes())
        status = u.u32()
        return Reply3(status=status, fh=u.opaque() if status == 0 else b"")


class Nfs3(RpcClient):
    def __init__(self, *, host: str, port: int = 2049, uid: int = 0, gid: int = 0, netns: Path | None = None) -> None:
        super().__init__(host=host, port=port, program=NFS_PROGRAM, version=3, uid=uid, gid=gid, netns=netns)

    def lookup(self, dir_fh: bytes, name: str) -> Reply3:
        u = self.call(V3_LOOKUP, Packer().opaque(dir_fh).string(name).bytes())
        status = u.u32()
        if status != NFS3_OK:
            return Reply3(status=status)
        return Reply3(status=status, fh=u.opaque())

    def read(self, fh: bytes, *, offset: int = 0, count: int = 65536) -> Reply3:
        u = self.call(V3_READ, Packer().opaque(fh).u64(offset).u32(count).bytes())
        status = u.u32()
        _post_op_attr(u)
        if status != NFS3_OK:
            return Reply3(status=status)
        u.u32()  # count
        u.u32()  # eof
        return Reply3(status=status, data=u.opaque())

    def write(self, fh: bytes, data: bytes, *, offset: int = 0) -> Reply3:
        """One FILE_SYNC WRITE (the data is on the server's disk when it answers NFS3_OK)."""
        u = self.call(V3_WRITE, Packer().opaque(fh).u64(offset).u32(len(data)).u32(FILE_SYNC).opaque(data).bytes())
        status = u.u32()
        _wcc_data(u)
        if status != NFS3_OK:
            return Reply3(status=status)
        return Reply3(status=status, count=u.u32())

    def create(self, dir_fh: bytes, name: str, *, mode: int = 0o644) -> Reply3:
        """CREATE UNCHECKED (an existing file is kept); the new file's handle."""
        sattr = Packer().u32(1).u32(mode).u32(0).u32(0).u32(0).u32(0).u32(0).bytes()
        u = self.call(V3_CREATE, Packer().opaque(dir_fh).string(name).u32(0).fixed(sattr).bytes())
        status = u.u32()
        if status != NFS3_OK:
            return Reply3(status=status)
        fh = u.opaque() if u.u32() else b""
        return Reply3(status=status, fh=fh)

    def fsstat(self, fh: bytes) -> Reply3:
        """FSSTAT: the size, free and available bytes of the filesystem ``fh`` is on."""
        u = self.call(V3_FSSTAT, Packer().opaque(fh).bytes())
        status = u.u32()
        _post_op_attr(u)
        if status != NFS3_OK:
            return Reply3(status=status)
        return Reply3(status=status, space={"tbytes": u.u64(), "fbytes": u.u64(), "abytes": u.u64()})

    def mkdir(self, dir_fh: bytes, name: str, *, mode: int = 0o755) -> Reply3:
        # sattr3: set mode; uid, gid, size unset; atime, mtime DONT_CHANGE.
        sattr = Packer().u32(1).u32(mode).u32(0).u32(0).u32(0).u32(0).u32(0).bytes()
        u = self.call(V3_MKDIR, Packer().opaque(dir_fh).string(name).fixed(sattr).bytes())
        status = u.u32()
        if status != NFS3_OK:
            return Reply3(status=status)
        fh = u.opaque() if u.u32() else b""
        return Reply3(status=status, fh=fh)

    def readdirplus(self, dir_fh: bytes) -> Reply3:
        """One READDIRPLUS from cookie 0 (enough for the small directories of the tests)."""
        u = self.call(V3_READDIRPLUS, Packer().opaque(dir_fh).u64(0).fixed(b"\0" * 8).u32(8192).u32(32768).bytes())
        status = u.u32()
        _post_op_attr(u)
        if status != NFS3_OK:
            return Reply3(status=status)
        u.skip(8)  # cookieverf
        names: dict[str, bytes] = {}
        while u.u32():
            u.u64()  # fileid
            name = u.opaque().decode(errors="replace")
            u.u64()  # cookie
            _post_op_attr(u)
            names[name] = u.opaque() if u.u32() else b""
        return Reply3(status=status, names=names)


# --- handles ---------------------------------------------------------------------------------------------------------


def handle_export_id(fh: bytes) -> int:
    """Ganesha's wire handle (file_handle_v4, used for v3 too): version, flags, export id (big endian), ..."""
    return int.from_bytes(fh[2:4], "big")


def with_export_id(fh: bytes, export_id: int) -> bytes:
    """The forgery: the same handle naming another export."""
    return fh[:2] + export_id.to_bytes(2, "big") + fh[4:]
