"""``controller.testing.FakeApi`` answers as the API server does: one contract, run against the fake (unit)
and against the real control plane (kube), so the fake cannot drift from what it stands for."""

from __future__ import annotations

import pytest

from nfs_provisioner.kube import client as kube
from tests.support.fake_api import EXPECTED, contract


@pytest.mark.kube
def test_the_real_api_server_keeps_the_same_contract(kapi: kube.Client, namespace: str) -> None:
    assert contract(kapi, namespace) == EXPECTED
