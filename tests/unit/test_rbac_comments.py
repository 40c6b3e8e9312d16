"""The comments of deploy/kube-config/rbac.yaml (and the same documents in pod.yaml) stay true: every verb of
every rule is explained, the test they name exists, the journal they describe is the one the appliance uses,
and pod.yaml carries the same text."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from nfs_provisioner.appliance import app
from nfs_provisioner.settings import Settings
from tests.support.paths import REPO

pytestmark = pytest.mark.unit

DEPLOY = REPO / "deploy" / "kube-config"


def rbac_text(path: Path) -> str:
    """From the ClusterRole's leading comment to the end of the RBAC documents."""
    text = path.read_text()
    start = text.index("# What the appliance does with the API")
    end = text.index("apiGroup: rbac.authorization.k8s.io\n", text.index("kind: RoleBinding", start))
    return text[start:end]


def test_pod_yaml_carries_the_same_rbac_comments() -> None:
    assert rbac_text(DEPLOY / "pod.yaml") == rbac_text(DEPLOY / "rbac.yaml")


def test_every_verb_of_every_rule_is_explained() -> None:
    text = rbac_text(DEPLOY / "rbac.yaml")
    docs = [d for d in yaml.safe_load_all(text) if d]
    rules = [r for d in docs if d["kind"] in ("ClusterRole", "Role") for r in d["rules"]]
    comments, block, previous_was_comment = [], "", False
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("#"):
            block = (block + " " if previous_was_comment else "") + stripped.lstrip("# ")
            previous_was_comment = True
            continue
        previous_was_comment = False
        if stripped.startswith("- apiGroups:"):
            comments.append(block)  # the nearest comment above the rule
    assert len(comments) == len(rules)
    for rule, comment in zip(rules, comments, strict=True):
        for verb in rule["verbs"]:
            assert re.search(rf"\b{verb}\b", comment), f"{rule['resources']}: {verb!r} not explained in {comment!r}"


def test_the_named_test_exists_and_removes_each_rule() -> None:
    text = rbac_text(DEPLOY / "rbac.yaml")
    named = re.findall(r"(tests/[\w/]+\.py)::(\w+)", text)
    assert named == [("tests/e2e/test_rbac.py", "test_rbac_is_sufficient_and_every_rule_is_needed")]
    source = (REPO / named[0][0]).read_text()
    body = source.split(f"def {named[0][1]}(", 1)[1]
    assert "for run, drop in enumerate(RULES" in body and "assert len(refused) == len(RULES)" in body
    assert 'verbs={"nodes": ["get"]}' in body, "the one verb-level case the comment names"


def test_the_journal_the_comment_describes_is_the_one_in_use() -> None:
    text = rbac_text(DEPLOY / "rbac.yaml")
    controller = app.controller_settings(Settings(), identity="6f1c1c1e-0000-4000-8000-000000000001")
    assert controller.in_flight_journal == Settings().export_root / app.IN_FLIGHT_DIR
    assert f"journaled under the\n# export root ({app.IN_FLIGHT_DIR}/), not on the claims" in text
    assert "annotation + finalizer" not in text
