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

from nfs_provisioner.kube import client as kube
from tests.support.pool_route import CHECKS, Check, pool_of_three


@pytest.mark.kube
@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__)
def test_on_the_real_api_server(check: Check, kapi: kube.Client, namespace: str) -> None:
    with pool_of_three(kapi, namespace) as (pools, clock):
        check(pools, clock, kapi, namespace)
