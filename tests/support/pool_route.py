"""What tests/{kube,unit}/test_pool_route.py share (one module per lane: the tests of one module
needed different things): the three members, their clock and the checks both run."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from nfs_provisioner.controller import outcomes, placement
from nfs_provisioner.controller.pool import ANN_MEMBER, Demand, Pool, Status
from nfs_provisioner.kube import client as kube

HEARTBEAT = 1.0


class Clock:
    """The members' clock (their Leases' up/down and the wait are local time): advanced by the test."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@contextlib.contextmanager
def pool_of_three(kapi: kube.Client, namespace: str) -> Iterator[tuple[list[Pool], Clock]]:
    clock = Clock()
    name, provisioner = f"r{uuid.uuid4().hex[:8]}", f"example.com/route-{uuid.uuid4().hex[:8]}"

    def member(i: int) -> Pool:
        return Pool(kapi, pool=name, provisioner=provisioner, identity=f"member-{i}", namespace=namespace,
                    status=lambda: Status(free_bytes=1 << 40, address=f"10.0.0.{i}"),
                    demand=lambda claim, cls: Demand(requested=1 << 20), heartbeat=HEARTBEAT, member_timeout=6.0,
                    clock=clock)
    pools = [member(i) for i in range(3)]
    for _ in range(2):  # publish, then each sees the three
        for p in pools:
            p._tick()
    assert all(len([m for m in p.members() if m.up]) == 3 for p in pools)
    try:
        yield pools, clock
    finally:
        for p in pools:
            p.stop()


def claim(kapi: kube.Client, namespace: str, name: str) -> dict[str, Any]:
    obj = kapi.create(kube.claims_path(namespace), {
        "apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": name},
        "spec": {"accessModes": ["ReadWriteMany"], "storageClassName": "unused",
                 "resources": {"requests": {"storage": "1Mi"}}}})
    obj.setdefault("kind", "PersistentVolumeClaim")
    return obj


def chosen_and_others(pools: list[Pool], obj: dict[str, Any]) -> tuple[Pool, list[Pool]]:
    uid = obj["metadata"]["uid"]
    name = placement.place(uid, pools[0].members(), requested=1 << 20).member
    chosen = next(p for p in pools if p.identity == name)
    return chosen, [p for p in pools if p is not chosen]


Check = Callable[[list[Pool], Clock, kube.Client, str], None]


CLS: dict[str, Any] = {"metadata": {"name": "unused"}}


def the_member_placed_assigns_itself_and_the_others_write_nothing(pools: list[Pool], clock: Clock,
                                                                   api: kube.Client, namespace: str) -> None:
    for i in range(6):  # each member is the chosen one for some of them
        obj = claim(api, namespace, f"c{i}")
        chosen, others = chosen_and_others(pools, obj)
        version, pv = obj["metadata"]["resourceVersion"], f"pvc-{obj['metadata']['uid']}"
        for p in others:  # the handover event reaches every member; the others route it first here
            r = p.route(obj, CLS, pv)
            assert not r.mine and r.outcome.next is outcomes.Next.RETRY_AFTER and r.outcome.delay == HEARTBEAT, r
            assert chosen.identity in r.outcome.reason
        assert api.get(kube.claims_path(namespace, f"c{i}"))["metadata"]["resourceVersion"] == version  # no write
        r = chosen.route(obj, CLS, pv)
        assert r.mine and r.claim["metadata"]["annotations"][ANN_MEMBER] == chosen.identity
        clock.now += 2 * HEARTBEAT
        for p in others:  # the assigned claim's event, later: wait for the member named, write nothing
            again = p.route(r.claim, CLS, pv)
            assert not again.mine and "assigned to member" in again.outcome.reason
        assert api.get(kube.claims_path(namespace, f"c{i}"))["metadata"]["resourceVersion"] == \
            r.claim["metadata"]["resourceVersion"]
    written = [p.assignments.labels(p.pool, q.identity, "assigned")._value.get() for p in pools for q in pools]
    assert sum(written) == 6  # one write per claim, each by the member it names
    assert all(p.assignments.labels(p.pool, q.identity, "assigned")._value.get() == 0
               for p in pools for q in pools if q is not p)


def after_a_heartbeat_without_the_chosen_member_s_write_another_member_writes_it(
        pools: list[Pool], clock: Clock, api: kube.Client, namespace: str) -> None:
    obj = claim(api, namespace, "slow")
    chosen, others = chosen_and_others(pools, obj)
    pv = f"pvc-{obj['metadata']['uid']}"
    first = others[0].route(obj, CLS, pv)
    assert not first.mine and first.outcome.delay == HEARTBEAT
    clock.now += HEARTBEAT / 2
    assert others[0].route(obj, CLS, pv).outcome.delay == pytest.approx(HEARTBEAT / 2)
    clock.now += HEARTBEAT / 2  # the chosen member never routed it: the other writes the same assignment
    late = others[0].route(obj, CLS, pv)
    assert not late.mine and late.claim["metadata"]["annotations"][ANN_MEMBER] == chosen.identity
    current = api.get(kube.claims_path(namespace, "slow"))
    assert current["metadata"]["annotations"][ANN_MEMBER] == chosen.identity
    current.setdefault("kind", "PersistentVolumeClaim")
    assert chosen.route(current, CLS, pv).mine  # and the chosen member provisions it when it gets there


CHECKS = [the_member_placed_assigns_itself_and_the_others_write_nothing,
          after_a_heartbeat_without_the_chosen_member_s_write_another_member_writes_it]
