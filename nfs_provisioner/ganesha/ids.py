"""Export_Id allocation: always the lowest free id of a range, in O(log n), no I/O.

Every id below ``_next`` is either in use or waiting in the ``_freed`` heap, so
the lowest free id is the smallest valid heap entry, else ``_next`` walked past
used and reserved ids. Exhaustion raises at once; nothing ever loops over the
whole range more than once.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable

from nfs_provisioner.ganesha import errors


class IdAllocator:
    def __init__(self, *, low: int, high: int, reserved: Iterable[int] = ()) -> None:
        if low > high:
            raise errors.InvalidRequest(f"empty id range {low}..{high}")
        self.low, self.high = low, high
        self._reserved = frozenset(reserved)
        self._used: set[int] = set()
        self._freed: list[int] = []
        self._next = low

    def reset(self, used: Iterable[int]) -> None:
        """Forget everything; ``used`` ids are taken (load from files, reconcile)."""
        self._used = set(used)
        self._freed = []
        self._next = self.low

    def __contains__(self, export_id: int) -> bool:
        return export_id in self._used

    def allocate(self) -> int:
        while self._freed:
            candidate = heapq.heappop(self._freed)
            if candidate not in self._used and candidate not in self._reserved:
                self._used.add(candidate)
                return candidate
        while self._next <= self.high and (self._next in self._used or self._next in self._reserved):
            self._next += 1
        if self._next > self.high:
            raise errors.ExportIdsExhausted(
                f"no free Export_Id in {self.low}..{self.high}: {len(self._used)} in use (NFS-Ganesha's Export_Id "
                "is 16-bit: at most 65534 exports per server); deleting a volume frees its id"
            )
        self._used.add(self._next)
        self._next += 1
        return self._next - 1

    def take(self, export_id: int) -> None:
        """Mark an id used that was not allocated here (an export loaded or seen elsewhere)."""
        self._used.add(export_id)

    def release(self, export_id: int) -> None:
        if export_id in self._used:
            self._used.discard(export_id)
            if self.low <= export_id < self._next:
                heapq.heappush(self._freed, export_id)
