"""Export_Id allocation: lowest free id, 152 skipped, exhaustion immediate, O(log n) per call."""

from __future__ import annotations

import random
import time

import pytest

from nfs_provisioner.ganesha import errors
from nfs_provisioner.ganesha.ids import IdAllocator

pytestmark = pytest.mark.unit


def test_lowest_free_skipping_reserved() -> None:
    a = IdAllocator(low=150, high=154, reserved={152})
    assert [a.allocate() for _ in range(4)] == [150, 151, 153, 154]
    with pytest.raises(errors.ExportIdsExhausted):
        a.allocate()
    a.release(151)
    a.release(153)
    assert a.allocate() == 151
    assert a.allocate() == 153
    with pytest.raises(errors.ExportIdsExhausted):
        a.allocate()


def test_reset_take_and_release_match_a_brute_force_model() -> None:
    rng = random.Random(4)
    a = IdAllocator(low=1, high=400, reserved={152})
    a.reset([5, 7, 300])
    used = {5, 7, 300}
    for _ in range(5000):
        op = rng.random()
        if op < 0.55:
            free = [i for i in range(1, 401) if i not in used and i != 152]
            if not free:
                with pytest.raises(errors.ExportIdsExhausted):
                    a.allocate()
                continue
            got = a.allocate()
            assert got == min(free)
            used.add(got)
        elif op < 0.9 and used:
            victim = rng.choice(sorted(used))
            a.release(victim)
            used.discard(victim)
        else:
            extra = rng.randint(1, 400)
            if extra != 152:
                a.take(extra)
                used.add(extra)
        assert all(i in a for i in used)


def test_allocation_cost_is_flat_in_the_number_of_ids() -> None:
    a = IdAllocator(low=1, high=65535, reserved={152})
    for _ in range(60000):
        a.allocate()
    start = time.perf_counter()
    for i in range(1000):
        a.release(30000 + i)
        a.allocate()
    assert time.perf_counter() - start < 0.5
    assert a.allocate() == 60002  # 60000 allocated + the skipped 152 -> next is 60002
