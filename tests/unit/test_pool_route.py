"""Who writes a claim's assignment in a pool (``controller.pool.Pool.route``): three members (``Pool`` objects of the
controller library) route the same claim as their informers would hand it to them, against the real API server
(kube) and against ``controller.testing.FakeApi`` (unit, the same checks; the fake also counts the requests).

The member placement chooses assigns the claim to itself and provisions at once; the others write nothing for a
heartbeat (before, every member wrote the same assignment at once: two of three writes were refused with 409, and
the member chosen usually lost the race and waited for the winner's write to reach it; ``make bench``'s pool
section measured 0.4 s from the binder's handover to the assignment at N = 20). After a heartbeat without the
chosen member's write (slow, or down and not yet counted down), any other member writes it, as before.
"""

from __future__ import annotations

import pytest

from nfs_provisioner.controller.testing import FakeApi
from tests.support.pool_route import CHECKS, Check, pool_of_three


@pytest.mark.unit
@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__)
def test_on_the_fake_api(check: Check) -> None:
    """The same checks as on the real API server (tests/kube/test_pool_route.py); the fake also counts the claim
    writes."""
    api = FakeApi()
    with pool_of_three(api, "ns") as (pools, clock):
        check(pools, clock, api, "ns")
    claim_patches = [path for method, path in api.requests if method == "PATCH" and "/persistentvolumeclaims/" in path]
    assert len(claim_patches) == (6 if check is CHECKS[0] else 1)  # no write refused, none repeated
