"""What tests/{e2e,ganesha,unit}/test_node_clients.py share (one module per lane: the tests of one module
needed different things)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from tests.support.appliance_env import Appliance

CONTENT = b"for the nodes only\n"


class Nodes:
    """Node objects this test creates (deleted afterwards)."""

    def __init__(self, core: client.CoreV1Api, unique: str) -> None:
        self.core, self.unique, self.names = core, unique, []

    def add(self, suffix: str, *addresses: str) -> str:
        name = f"{suffix}-{self.unique}"
        self.core.create_node(client.V1Node(metadata=client.V1ObjectMeta(name=name)))
        self.names.append(name)
        self.set(name, *addresses)
        return name

    def set(self, name: str, *addresses: str) -> None:
        self.core.patch_node_status(name, {"status": {"addresses": [
            {"type": "InternalIP", "address": a} for a in addresses]}})

    def remove(self, name: str) -> None:
        self.core.delete_node(name)
        self.names.remove(name)

    def close(self) -> None:
        for name in list(self.names):
            self.remove(name)


@pytest.fixture
def cluster_nodes(core: client.CoreV1Api, unique: str) -> Iterator[Nodes]:
    n = Nodes(core, unique)
    try:
        yield n
    finally:
        n.close()


def export_clients(a: Appliance, vol: Path) -> list[str]:
    """The client list in the volume's export file (what Ganesha reads at start and on UpdateExport)."""
    conf = a.export_root / ".ganesha" / "exports.d" / f"{vol.name}.conf"
    header: dict[str, Any] = json.loads(conf.read_text().splitlines()[0].split(": ", 1)[1])
    return list(header["clients"])


def readable(a: Appliance, vol: Path) -> bool:
    r = a.client().cat(vol / "f")
    assert r.returncode != 0 or r.stdout == CONTENT
    return r.returncode == 0
