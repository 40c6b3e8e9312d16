"""``make lint`` enforces the layer contracts of the package docstrings (hack/check_layers.py): the tree as it
is passes, and each kind of violating import, written into a copy of the tree, is reported."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from tests.support.paths import REPO

pytestmark = pytest.mark.unit

CHECKER = REPO / "hack" / "check_layers.py"


def load_checker() -> ModuleType:
    spec = importlib.util.spec_from_file_location("check_layers", CHECKER)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["check_layers"] = module  # dataclasses look the module up while the class is made
    spec.loader.exec_module(module)
    return module


def test_the_tree_keeps_its_contracts() -> None:
    r = subprocess.run([sys.executable, str(CHECKER)], capture_output=True, text=True)
    assert (r.returncode, r.stdout, r.stderr) == (0, "", "")


def test_make_lint_runs_the_checker() -> None:
    makefile = (REPO / "Makefile").read_text()
    lint = makefile.split("\nlint:", 1)[1].split("\n\n", 1)[0]
    assert "hack/check_layers.py" in lint


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    shutil.copytree(REPO / "nfs_provisioner", tmp_path / "nfs_provisioner",
                    ignore=shutil.ignore_patterns("__pycache__"))
    return tmp_path


@pytest.mark.parametrize(
    ("module", "source", "message"),
    [
        # "volumes ... never [touches] the Kubernetes API or Ganesha"
        ("volumes/bad.py", "from nfs_provisioner.kube import client\n",
         "nfs_provisioner.volumes and nfs_provisioner.kube are independent"),
        ("volumes/bad.py", "from ..ganesha import dbus\n", "nfs_provisioner.volumes is below nfs_provisioner.ganesha"),
        ("volumes/bad.py", "def f():\n    import nfs_provisioner.controller.events\n",
         "nfs_provisioner.volumes is below nfs_provisioner.controller"),
        # kube: "The only package that talks to Kubernetes."
        ("controller/bad.py", "import kubernetes.client\n", "kubernetes.client: only nfs_provisioner.kube may import"),
        ("appliance/bad.py", "from urllib3 import PoolManager\n", "urllib3: only nfs_provisioner.kube may import"),
        # ganesha: "dbus is the only module that speaks D-Bus"
        ("ganesha/bad.py", "from jeepney import DBusAddress\n",
         "jeepney: only nfs_provisioner.ganesha.dbus may import"),
        ("ganesha/bad.py", "import importlib\nimportlib.import_module('jeepney.io.blocking')\n",
         "jeepney.io.blocking: only nfs_provisioner.ganesha.dbus may import"),
        # appliance > controller/ganesha > quota/volumes/kube
        ("ganesha/bad.py", "from nfs_provisioner.controller import decisions\n",
         "nfs_provisioner.ganesha and nfs_provisioner.controller are independent"),
        ("controller/bad.py", "from nfs_provisioner.appliance import state\n",
         "nfs_provisioner.controller is below nfs_provisioner.appliance"),
        ("quota/bad.py", "from nfs_provisioner import settings\n",
         "nfs_provisioner.quota is below nfs_provisioner.settings"),
        ("kube/bad.py", "x = __import__('nfs_provisioner.quota.errors')\n",
         "nfs_provisioner.kube and nfs_provisioner.quota are independent"),
        ("newpkg/__init__.py", "", None),  # a unit in no layer: reported once something imports it
        # controller's own order: "imports only go downwards"
        ("controller/decisions.py", "from nfs_provisioner.controller import watching\n",
         "nfs_provisioner.controller.decisions is below nfs_provisioner.controller.watching"),
        ("controller/events.py", "from . import metrics\n",
         "nfs_provisioner.controller.events and nfs_provisioner.controller.metrics are independent"),
        ("controller/watching.py", "from nfs_provisioner.controller import ProvisionController\n",
         "nfs_provisioner.controller (the package __init__) from inside it"),
        ("__init__.py", "from nfs_provisioner import kube\n", "nfs_provisioner/__init__.py is imported by every layer"),
    ],
)
def test_a_violating_import_is_reported(tree: Path, module: str, source: str, message: str | None) -> None:
    checker = load_checker()
    path = tree / "nfs_provisioner" / module
    path.parent.mkdir(exist_ok=True)
    with path.open("a") as f:
        f.write("\n" + source)
    if message is None:  # the new package alone breaks nothing; importing it from a layer does
        assert checker.check(tree) == []
        (tree / "nfs_provisioner" / "appliance" / "bad.py").write_text("from nfs_provisioner import newpkg\n")
        message = "nfs_provisioner.newpkg is in no layer of the contract"
    problems = checker.check(tree)
    assert len(problems) == 1 and message in problems[0], problems
    assert problems[0].startswith(f"nfs_provisioner/{module}:") or "newpkg" in problems[0]
    r = subprocess.run([sys.executable, str(CHECKER), str(tree)], capture_output=True, text=True)
    assert (r.returncode, r.stdout) == (1, problems[0] + "\n")


@pytest.mark.parametrize(
    ("module", "source", "members"),
    [
        # an import only for type checking is an import (the cycle clientlists <-> exports had one)
        ("ganesha/exports/registry.py",
         "from typing import TYPE_CHECKING\n"
         "if TYPE_CHECKING:\n    from nfs_provisioner.ganesha.exports import manager\n",
         ("exports.manager", "exports.registry")),
        # inside a function
        ("ganesha/server/helpers.py", "def f():\n    from nfs_provisioner.ganesha.server import running\n",
         ("server.helpers", "server.running")),
        # between a module of a unit and a module of its subpackage
        ("ganesha/dbus.py", "from nfs_provisioner.ganesha.exports import manager\n",
         ("dbus", "exports.manager")),
    ],
)
def test_an_import_cycle_inside_a_package_is_reported(tree: Path, module: str, source: str,
                                                      members: tuple[str, ...]) -> None:
    checker = load_checker()
    with (tree / "nfs_provisioner" / module).open("a") as f:
        f.write("\n" + source)
    problems = checker.check(tree)
    assert len(problems) == 1 and problems[0].startswith("import cycle among "), problems
    listed = problems[0].split(":", 1)[0]
    assert all(f"nfs_provisioner.ganesha.{m}" in listed for m in members), problems
    assert f"nfs_provisioner/{module}:" in problems[0], "the added import is named with its line"
    r = subprocess.run([sys.executable, str(CHECKER), str(tree)], capture_output=True, text=True)
    assert (r.returncode, r.stdout) == (1, problems[0] + "\n")


def test_bench_cycles_are_found_the_same_way() -> None:
    """bench/ is not under the lint's contract (bench/provision_bench.py imports the benches that import it), but
    the same check reads it."""
    problems = load_checker().cycles(REPO, "bench")
    assert all(p.startswith("import cycle among ") for p in problems)
