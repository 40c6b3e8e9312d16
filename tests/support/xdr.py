"""XDR (RFC 4506) and ONC RPC record marking (RFC 5531 section 11), by hand: the one codec of the suite's raw
NFS clients (tests/support/nfsraw.py, tests/support/nfs42_client.py).

The package's portmapper query (nfs_provisioner/ganesha/portmap.py) packs its one fixed call with ``struct``
itself: the package never imports the tests."""

from __future__ import annotations

import struct
from collections.abc import Callable

LAST_FRAGMENT = 0x80000000


class Packer:
    """Big-endian 4-byte units, chained: ``Packer().u32(1).opaque(b"x").bytes()``."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def u32(self, v: int) -> Packer:
        self.parts.append(struct.pack(">I", v))
        return self

    def u64(self, v: int) -> Packer:
        self.parts.append(struct.pack(">Q", v))
        return self

    def fixed(self, data: bytes) -> Packer:
        """Fixed-length opaque data: the bytes, zero-padded to a multiple of 4."""
        self.parts.append(data + b"\0" * (-len(data) % 4))
        return self

    def opaque(self, data: bytes) -> Packer:
        """Variable-length opaque data: its length, then the bytes padded."""
        return self.u32(len(data)).fixed(data)

    def string(self, s: str) -> Packer:
        return self.opaque(s.encode())

    def bytes(self) -> bytes:
        return b"".join(self.parts)


class Unpacker:
    """Reads what :class:`Packer` writes, from ``pos`` on."""

    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def u32(self) -> int:
        (v,) = struct.unpack_from(">I", self.data, self.pos)
        self.pos += 4
        return int(v)

    def u64(self) -> int:
        (v,) = struct.unpack_from(">Q", self.data, self.pos)
        self.pos += 8
        return int(v)

    def fixed(self, n: int) -> bytes:
        out = self.data[self.pos:self.pos + n]
        self.pos += n + (-n % 4)
        return out

    def opaque(self) -> bytes:
        return self.fixed(self.u32())

    def skip(self, n: int) -> None:
        self.pos += n


def record(message: bytes) -> bytes:
    """One RPC message over TCP: a single fragment, marked last."""
    return struct.pack(">I", LAST_FRAGMENT | len(message)) + message


def read_record(recv: Callable[[int], bytes]) -> bytes:
    """One RPC message from a stream: its fragments joined; ``recv(n)`` returns exactly n bytes or raises."""
    out = b""
    while True:
        (mark,) = struct.unpack(">I", recv(4))
        out += recv(mark & ~LAST_FRAGMENT & 0xFFFFFFFF)
        if mark & LAST_FRAGMENT:
            return out
