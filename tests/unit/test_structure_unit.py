"""The package's one-place rules, read from its source with :mod:`ast`: every background thread is started by
``nfs_provisioner.threads.spawn``, the ``Object`` type and the shared annotation keys live in
``nfs_provisioner.kube.objects`` only."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

PACKAGE = Path(__file__).resolve().parents[2] / "nfs_provisioner"

PENDING: dict[str, set[str]] = {"threads": set(), "Object": set()}
"""Modules being rewritten on other branches at the time of writing: converted after the merge (then remove)."""


def _modules(root: Path) -> Iterator[tuple[str, ast.Module]]:
    for path in sorted(root.rglob("*.py")):
        yield path.relative_to(root).as_posix(), ast.parse(path.read_text(), str(path))


def thread_sites(root: Path) -> list[str]:
    """``threading.Thread(...)`` calls outside ``threads.py``, as ``module:line``."""
    return [f"{name}:{node.lineno}" for name, tree in _modules(root) if name != "threads.py"
            for node in ast.walk(tree)
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "Thread"
            and isinstance(node.func.value, ast.Name) and node.func.value.id == "threading"]


def object_definitions(root: Path) -> list[str]:
    """Modules that assign a module-level ``Object``."""
    return [name for name, tree in _modules(root) for node in tree.body
            if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "Object" for t in node.targets)]


def annotation_keys(root: Path) -> dict[str, list[str]]:
    """Every string literal assigned to a module-level ``ANN_*`` name -> where (``module:NAME``)."""
    keys: dict[str, list[str]] = {}
    for name, tree in _modules(root):
        for node in tree.body:
            if (isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant)
                    and isinstance(node.value.value, str)):
                for target in node.targets:
                    if isinstance(target, ast.Name) and target.id.startswith("ANN_"):
                        keys.setdefault(node.value.value, []).append(f"{name}:{target.id}")
    return keys


def test_every_background_thread_is_started_by_spawn() -> None:
    sites = [s for s in thread_sites(PACKAGE) if s.split(":")[0] not in PENDING["threads"]]
    assert sites == [], "start it with nfs_provisioner.threads.spawn (named, crash logged and counted)"


def test_the_object_type_is_defined_in_kube_objects_only() -> None:
    defined = [m for m in object_definitions(PACKAGE) if m not in PENDING["Object"]]
    assert defined == ["kube/objects.py"]


def test_each_annotation_key_is_defined_once() -> None:
    twice = {key: where for key, where in annotation_keys(PACKAGE).items() if len(where) > 1}
    assert twice == {}
    keys = annotation_keys(PACKAGE)
    assert keys["Provisioner_Id"] == ["kube/objects.py:ANN_IDENTITY"]
    assert keys["pv.kubernetes.io/provisioned-by"] == ["kube/objects.py:ANN_PROVISIONED_BY"]
