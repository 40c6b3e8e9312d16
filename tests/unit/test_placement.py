"""Placement of claims on pool members (``controller.placement``) and the ``--pool`` settings: pure logic."""

from __future__ import annotations

import collections
import uuid
from dataclasses import replace

import pytest

from nfs_provisioner import settings as settings_mod
from nfs_provisioner.controller.placement import Member, place

pytestmark = pytest.mark.unit

GiB = 1 << 30


def members(*free: int, caps: frozenset[str] = frozenset()) -> list[Member]:
    return [Member(name=f"m{i}", free_bytes=f, capabilities=caps, address=f"10.0.0.{i}") for i, f in enumerate(free)]


def test_ties_spread_evenly_and_every_member_computes_the_same_answer() -> None:
    pool = members(100 * GiB, 100 * GiB, 95 * GiB)
    uids = [str(uuid.UUID(int=i)) for i in range(3000)]
    chosen = [place(uid, pool, requested=GiB).member for uid in uids]
    counts = collections.Counter(chosen)
    assert set(counts) == {"m0", "m1", "m2"}
    assert all(900 <= n <= 1100 for n in counts.values()), counts
    # the same answer whatever order the members were listed in (every member decides alike)
    assert chosen == [place(uid, list(reversed(pool)), requested=GiB).member for uid in uids]


def test_a_much_fuller_member_gets_nothing_while_others_have_room() -> None:
    pool = members(100 * GiB, 100 * GiB, 10 * GiB)
    chosen = {place(str(uuid.UUID(int=i)), pool, requested=GiB).member for i in range(500)}
    assert chosen == {"m0", "m1"}


def test_a_claim_stays_on_its_member_when_another_member_goes() -> None:
    pool = members(100 * GiB, 100 * GiB, 100 * GiB)
    uids = [str(uuid.UUID(int=i)) for i in range(300)]
    before = {uid: place(uid, pool, requested=GiB).member for uid in uids}
    down = [replace(m, up=m.name != "m2") for m in pool]
    after = {uid: place(uid, down, requested=GiB).member for uid in uids}
    assert all(after[u] == before[u] for u in uids if before[u] != "m2")
    assert "m2" not in after.values()


def test_no_room_says_why_for_each_member() -> None:
    p = place("u", members(GiB, 2 * GiB), requested=3 * GiB)
    assert p.member is None
    assert "no member of the pool has room for 3221225472 bytes" in p.reason
    assert "m0 (10.0.0.0) has 1073741824 bytes free" in p.reason and "m1 (10.0.0.1)" in p.reason


def test_capabilities_are_needed() -> None:
    pool = [*members(100 * GiB), Member("fs", 10 * GiB, frozenset({"filesystem:ext4"}))]
    assert place("u", pool, requested=GiB, needs=frozenset({"filesystem:ext4"})).member == "fs"
    p = place("u", pool, requested=GiB, needs=frozenset({"filesystem:xfs"}))
    assert p.member is None and "lacks filesystem:xfs" in p.reason


def test_pinned_by_identity_or_address_and_a_pinned_member_down_or_unknown() -> None:
    pool = members(100 * GiB, 100 * GiB)
    assert {place(str(i), pool, requested=GiB, pinned="m1").member for i in range(50)} == {"m1"}
    assert place("u", pool, requested=GiB, pinned="10.0.0.0").member == "m0"
    down = [replace(pool[0], up=False), pool[1]]
    p = place("u", down, requested=GiB, pinned="m0")
    assert p.member is None and p.reason == "member 'm0' named by the class is down"
    p = place("u", pool, requested=GiB, pinned="nobody")
    assert p.member is None and "is not a member of the pool" in p.reason
    same_address = [replace(m, address="10.0.0.9") for m in pool]
    p = place("u", same_address, requested=GiB, pinned="10.0.0.9")
    assert p.member is None and "matches 2 members" in p.reason


def test_no_member_up() -> None:
    assert place("u", [replace(m, up=False) for m in members(GiB)], requested=1).reason == \
        "no member of the pool is up"


@pytest.mark.parametrize(("pool", "leader", "error"), [
    ("Big", False, "--pool 'Big': want lowercase"),
    ("a" * 41, False, "at most 40 characters"),
    ("ok", True, "--pool and --leader-elect exclude each other"),
])
def test_pool_settings_refused_with_one_line(pool: str, leader: bool, error: str) -> None:
    s = settings_mod.Settings(pool=pool, leader_election=settings_mod.LeaderElection(enabled=leader))
    with pytest.raises(settings_mod.SettingsError, match=error.replace("(", r"\(").replace(")", r"\)")):
        settings_mod.check_pool(s)


def test_pool_settings_accepted() -> None:
    settings_mod.check_pool(settings_mod.Settings(pool="pool-1"))
