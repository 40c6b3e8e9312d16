"""The Go chart's values on ours (docs/migration.md "Helm values").

The Go chart is pinned byte for byte in tests/fixtures/go-nfs-server-provisioner-chart (its SOURCE names the
commit). Its values are every key of its values.yaml, the keys it documents commented out (``# existingClaim:``)
and every ``.Values.x`` its templates read; docs/migration.md must map each one onto a value of ours (that our
chart's schema knows) or say it is not carried. Rendered with helm: the Go names our chart accepts do what the
Go chart did with them, and a value not carried is refused with one line naming it."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
import yaml

from tests.support.helm_env import CHART
from tests.support.migration_chart import GO_CHART, table

K8S_OBJECTS = {"securityContext"}
"""Values that are a Kubernetes object as a whole (its keys are the object's, not the chart's)."""


def leaves(values: dict[str, Any], prefix: str = "") -> set[str]:
    out: set[str] = set()
    for k, v in values.items():
        key = f"{prefix}{k}"
        out |= leaves(v, f"{key}.") if isinstance(v, dict) and v and key not in K8S_OBJECTS else {key}
    return out


def commented_keys(text: str, real: set[str]) -> set[str]:
    """``# key:`` lines (one ``#``: two are prose), placed under the real keys above them by indentation; those
    under a value that is itself a leaf (``resources: {}``'s ``# limits:``) are examples of its content."""
    stack: list[tuple[int, str]] = []
    out: set[str] = set()
    for line in text.splitlines():
        m = re.match(r"^(\s*)(#\s?)?([A-Za-z][A-Za-z0-9]*):", line)
        if not m or line.lstrip().startswith("##"):
            continue
        indent = len(m.group(1))
        while stack and stack[-1][0] >= indent:
            stack.pop()
        path = ".".join([k for _, k in stack] + [m.group(3)])
        if m.group(2) is None:
            stack.append((indent, m.group(3)))
        elif not stack or ".".join(k for _, k in stack) not in real:
            out.add(path)
    return out


def go_values() -> set[str]:
    text = (GO_CHART / "values.yaml").read_text()
    real = leaves(yaml.safe_load(text))
    read = {m for t in (GO_CHART / "templates").iterdir()
            for m in re.findall(r"\.Values\.([A-Za-z0-9.]+[A-Za-z0-9])", t.read_text())}
    found = real | commented_keys(text, real) | read
    return {k for k in found if not any(other.startswith(k + ".") for other in found)}


def schema_knows(key: str) -> bool:
    node: dict[str, Any] = json.loads((CHART / "values.schema.json").read_text())
    for part in key.split("."):
        props = node.get("properties", {})
        if part not in props:
            return False
        node = props[part]
    return True


@pytest.mark.unit
def test_go_values_are_those_of_the_pinned_chart() -> None:
    found = go_values()
    # What the pinned chart's values.yaml and templates hold (a spot check of each source of keys).
    assert {"replicaCount", "image.digest", "persistence.existingClaim", "storageClass.provisionerName",
            "service.nfsNodePort", "podSecurityContext", "extraArgs", "resources"} <= found
    assert not {k for k in found if k.startswith(("resources.", "extraArgs."))}
    assert "7027d6505a510673579c03db589bcb02cc8eda0b" in (GO_CHART / "SOURCE").read_text()


@pytest.mark.unit
def test_every_go_value_is_mapped_or_listed_as_not_carried() -> None:
    rows = table()
    assert sorted(go_values() - rows.keys()) == [], "Go values missing from docs/migration.md"
    assert sorted(rows.keys() - go_values()) == [], "rows for values the Go chart does not have"
    for go, (ours, note) in rows.items():
        if ours == "not carried":
            assert note.strip(), f"{go}: say why it is not carried"
        else:
            assert schema_knows(ours), f"{go} -> {ours}: not a value of our chart"
