"""Space promised on the export root's filesystem and not written yet: an in-process ledger.

A copy (a clone) needs about the blocks of its source. A free-space check that only reads ``statvfs`` lets
every concurrent copy pass it, and then all of them run out of space mid-copy (and so do the other tenants).
A :class:`Reservation` holds back what its copy has still to write (reserved minus written so far) from every
free-space check of this process (``VolumeDirectories.free_bytes``, through :meth:`Ledger.held`) until the
copy ends, fails or is abandoned (:meth:`Ledger.release`, idempotent). :meth:`Ledger.reserve` reads the free
space and records the reservation under one lock, so two concurrent reservations never take the same bytes.

Only this process's promises are known here; a restart starts with none (copies cut short by it start again,
reserving again).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field


class NoRoom(Exception):
    """A reservation that does not fit: ``needed`` bytes, ``free`` on the filesystem of which ``held`` are
    promised already."""

    def __init__(self, *, needed: int, free: int, held: int) -> None:
        super().__init__(f"{needed} bytes needed, {free} free, {held} of them reserved")
        self.needed, self.free, self.held = needed, free, held

    @property
    def available(self) -> int:
        return max(0, self.free - self.held)


@dataclass
class Reservation:
    """Bytes promised to one piece of work (a copy) under a key (its volume's name)."""

    key: str
    nbytes: int
    ledger: Ledger | None = field(default=None, repr=False, compare=False)
    used: int = 0
    """Bytes the work has written so far (they show in ``statvfs`` now, so they are no longer held back)."""
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def use(self, n: int) -> None:
        """The work wrote ``n`` more bytes."""
        with self._lock:
            self.used += n

    def release(self) -> bool:
        """The work ended, failed or was abandoned (:meth:`Ledger.release` of this very reservation)."""
        return self.ledger is not None and self.ledger.release(self.key, only=self)

    @property
    def outstanding(self) -> int:
        """What is still held back: reserved, not written yet."""
        with self._lock:
            return max(0, self.nbytes - self.used)


class Ledger:
    """The reservations on one filesystem, whose free bytes ``free`` reads (``statvfs``)."""

    def __init__(self, free: Callable[[], int]) -> None:
        self._free = free
        self._lock = threading.Lock()
        self._held: dict[str, Reservation] = {}

    def held(self) -> int:
        """Bytes promised and not written yet, over every reservation."""
        with self._lock:
            return self._outstanding()

    def _outstanding(self) -> int:
        return sum(r.outstanding for r in self._held.values())

    def free(self) -> tuple[int, int]:
        """(free bytes on the filesystem, bytes of them held back by reservations), read together."""
        with self._lock:
            return self._free(), self._outstanding()

    def reserve(self, key: str, nbytes: int) -> Reservation:
        """Promise ``nbytes`` to ``key`` (replacing an earlier promise to the same key); :class:`NoRoom` when
        they are not free beyond what is promised to others."""
        with self._lock:
            self._held.pop(key, None)
            free, held = self._free(), self._outstanding()
            if nbytes > free - held:
                raise NoRoom(needed=nbytes, free=free, held=held)
            reservation = Reservation(key=key, nbytes=nbytes, ledger=self)
            self._held[key] = reservation
            return reservation

    def release(self, key: str, *, only: Reservation | None = None) -> bool:
        """The work of ``key`` ended (done, failed or abandoned): hold nothing back for it any more; False if
        nothing was reserved. ``only``: release that reservation, not a newer one made for the same key."""
        with self._lock:
            current = self._held.get(key)
            if current is None or (only is not None and current is not only):
                return False
            del self._held[key]
            return True

    def keys(self) -> list[str]:
        with self._lock:
            return sorted(self._held)
