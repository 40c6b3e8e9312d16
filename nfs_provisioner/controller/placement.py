"""Which member of a pool serves a claim: a pure function of what the members published.

Every member computes the same answer from the same view (no randomness, no local state), so members that race to
assign a claim mostly write the same name, and only one write wins anyway (see ``pool``). The rule:

1. only members that are up;
2. a class that pins a member (``poolMember``: its identity or its server address) or a claim that must live
   where another volume lives (a clone: the source's member) narrows the candidates to that member;
3. only members with every capability the class needs and room for the requested size;
4. the members whose free space is within :data:`TIE_RATIO` of the largest: a full member is avoided, and
   members with about the same room count as tied;
5. among the tied, rendezvous hashing of (claim uid, member): ties spread evenly, and a claim keeps its member
   when an unrelated member comes or goes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field

TIE_RATIO = 0.9
"""Members with at least this fraction of the largest free space are tied (measured free space moves a little
with every volume written; a strict maximum would send a whole burst to one member)."""


@dataclass(frozen=True)
class Member:
    """A pool member as published in its Lease."""

    name: str
    """Its identity (the UUID kept in its export root, also on every PV it made)."""
    free_bytes: int
    capabilities: frozenset[str] = field(default_factory=frozenset)
    """What it can make beyond a directory, e.g. ``filesystem:ext4``, ``quota``."""
    address: str = ""
    """The NFS server address it puts into PVs."""
    up: bool = True


@dataclass(frozen=True)
class Placement:
    member: str | None
    """The chosen member's name; None: no member can take the claim (``reason`` says why)."""
    reason: str = ""


def _score(uid: str, member: str) -> bytes:
    return hashlib.sha256(f"{uid}/{member}".encode()).digest()


def _why_not(m: Member, requested: int, needs: frozenset[str]) -> str | None:
    missing = sorted(needs - m.capabilities)
    if missing:
        return f"{m.name} ({m.address or 'no address'}) lacks {', '.join(missing)}"
    if m.free_bytes < requested:
        return f"{m.name} ({m.address or 'no address'}) has {m.free_bytes} bytes free"
    return None


def place(uid: str, members: Iterable[Member], *, requested: int, needs: frozenset[str] = frozenset(),
          pinned: str | None = None, pinned_by: str = "the class") -> Placement:
    """The member for claim ``uid`` asking ``requested`` bytes (see the module docstring)."""
    known = sorted(members, key=lambda m: m.name)
    up = [m for m in known if m.up]
    if not up:
        return Placement(None, "no member of the pool is up")
    candidates = up
    if pinned:
        candidates = [m for m in up if pinned in (m.name, m.address)]
        if not candidates:
            down = [m for m in known if pinned in (m.name, m.address)]
            state = "is down" if down else "is not a member of the pool"
            return Placement(None, f"member {pinned!r} named by {pinned_by} {state}")
        if len(candidates) > 1:
            return Placement(None, f"{pinned!r} named by {pinned_by} matches {len(candidates)} members "
                                   f"({', '.join(m.name for m in candidates)}); name one by its identity")
    refusals = [(m, _why_not(m, requested, needs)) for m in candidates]
    eligible = [m for m, why in refusals if why is None]
    if not eligible:
        reasons = "; ".join(why for _, why in refusals if why is not None)
        need = f" with {', '.join(sorted(needs))}" if needs else ""
        return Placement(None, f"no member of the pool has room for {requested} bytes{need}: {reasons}")
    top = max(m.free_bytes for m in eligible)
    tied = [m for m in eligible if m.free_bytes >= top * TIE_RATIO]
    return Placement(max(tied, key=lambda m: _score(uid, m.name)).name)
