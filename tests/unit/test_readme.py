"""README.md stays true: the two commands first and every manifest; docs/appliance.md (the
reference it links) has every flag with its variable and every StorageClass parameter."""

from __future__ import annotations

import pytest

from nfs_provisioner import cli
from nfs_provisioner.volumes import params
from tests.support.paths import REPO

pytestmark = pytest.mark.unit

README = (REPO / "README.md").read_text()
REFERENCE = (REPO / "docs" / "appliance.md").read_text()


def test_the_two_commands_come_first() -> None:
    first_screen = README[:1500]
    assert "make demo" in first_screen and "make test" in first_screen


@pytest.mark.parametrize("flag", cli.FLAGS, ids=lambda f: f.name)
def test_every_flag_is_documented_with_its_variable(flag: cli.Flag) -> None:
    assert f"| `--{flag.name}` | `{flag.env}` |" in REFERENCE


@pytest.mark.parametrize("manifest", sorted(p.name for p in (REPO / "deploy" / "kube-config").glob("*.yaml")
                                            if p.name != "kustomization.yaml"))
def test_every_manifest_is_documented(manifest: str) -> None:
    assert f"`{manifest}`" in README


@pytest.mark.parametrize("parameter", params.KNOWN)
def test_every_class_parameter_is_documented(parameter: str) -> None:
    assert f"| `{parameter}` |" in REFERENCE


def test_every_document_linked_from_the_readme_exists() -> None:
    import re

    links = re.findall(r"\]\((docs/[^)#]+)", README)
    assert links, "README links no reference document"
    for link in links:
        assert (REPO / link).is_file(), link
