"""What tests/{helm,unit}/test_migration_chart.py share (one module per lane: the tests of one module
needed different things)."""

from __future__ import annotations

import re
from typing import Any

from tests.support.paths import FIXTURES, REPO

GO_CHART = FIXTURES / "go-nfs-server-provisioner-chart"


DOC = REPO / "docs" / "migration.md"


def table() -> dict[str, tuple[str, str]]:
    rows = re.findall(r"^\| `([A-Za-z0-9.]+)` \| (`[A-Za-z0-9.]+`|not carried) \| (.*) \|$", DOC.read_text(), re.M)
    names = [r[0] for r in rows]
    assert len(names) == len(set(names)), "a Go value is in the table twice"
    return {r[0]: (r[1].strip("`"), r[2]) for r in rows}


def pop(values: dict[str, Any], key: str) -> Any:
    *parents, leaf = key.split(".")
    node = values
    for part in parents:
        node = node.get(part, {})
    return node.pop(leaf, None)
