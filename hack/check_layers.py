#!/usr/bin/env python3
"""The layer contracts the package docstrings state, checked on every import (run by ``make lint``).

Reads every ``import`` of ``nfs_provisioner/**.py`` with :mod:`ast` (also imports inside functions and
``importlib.import_module("...")``/``__import__("...")`` with a literal name) and checks it against
:data:`LAYERS`, :data:`CONTROLLER_LAYERS` and :data:`ONLY`. Prints one line per violation and exits 1,
or prints nothing and exits 0. ``python hack/check_layers.py [ROOT]`` checks ``ROOT/nfs_provisioner``
(default: this repository).

import-linter would do the same with its contracts; this keeps ``make lint`` free of another tool.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

PACKAGE = "nfs_provisioner"

LAYERS: tuple[tuple[str, ...], ...] = (
    ("__main__",),
    ("cli",),
    ("appliance",),  # "this package joins controller, ganesha, quota and volumes"
    ("settings",),  # the appliance's settings (cli fills them, appliance reads them)
    ("controller", "ganesha"),  # independent of each other
    ("quota", "volumes", "kube"),  # independent; "volumes ... never [touch] the Kubernetes API or Ganesha",
    # quota: "Nothing here knows about Kubernetes or Ganesha"
    ("logs", "fileio", "tempdirs", "threads"),
    ("errors",),  # the one root of the package's errors: below everything that raises
)
"""The top-level layer order (nfs_provisioner/*): a module imports only from its own unit or from lower layers;
units in one layer do not import each other."""

CONTROLLER_LAYERS: tuple[tuple[str, ...], ...] = (
    ("controller", "testing"),  # testing: the in-memory fakes (FakeApi, MemoryProvisioner), for tests
    ("provisioning", "deleting", "leadership", "resizing"),
    ("inflight", "watching", "queueing", "events", "metrics", "pool"),
    ("decisions",),
    ("interface", "settings", "outcomes", "placement"),
)
"""``nfs_provisioner.controller``'s own order (its docstring: "imports only go downwards"); units of one layer
may not import each other either. The package ``__init__`` is the public face and may import any of them."""

ONLY: dict[str, tuple[str, ...]] = {
    # kube: "The only package that talks to Kubernetes."
    "kubernetes": ("nfs_provisioner.kube",),
    "urllib3": ("nfs_provisioner.kube",),
    # ganesha: "dbus is the only module that speaks D-Bus".
    "jeepney": ("nfs_provisioner.ganesha.dbus",),
    "dbus": ("nfs_provisioner.ganesha.dbus",),
    "dbus_next": ("nfs_provisioner.ganesha.dbus",),
    "pydbus": ("nfs_provisioner.ganesha.dbus",),
}
"""Third-party distributions only these modules (or packages) may import."""


@dataclass(frozen=True)
class Import:
    module: str
    """The importing module, e.g. ``nfs_provisioner.volumes.records``."""
    target: str
    """The imported module, resolved (``from nfs_provisioner import fileio`` -> ``nfs_provisioner.fileio``)."""
    path: Path
    line: int


def module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_module(root: Path, name: str) -> bool:
    p = root.joinpath(*name.split("."))
    return p.with_suffix(".py").is_file() or (p / "__init__.py").is_file()


def imports(root: Path) -> Iterator[Import]:
    """Every import of every module under ``root/nfs_provisioner``; ``root`` is the directory holding it."""
    for path in sorted((root / PACKAGE).rglob("*.py")):
        module = module_name(root, path)
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    yield Import(module, alias.name, path, node.lineno)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = module.split(".") if is_package else module.split(".")[:-1]
                    base = base[: len(base) - node.level + 1]
                    source = ".".join(base + ([node.module] if node.module else []))
                else:
                    source = node.module or ""
                for alias in node.names:
                    sub = f"{source}.{alias.name}"
                    yield Import(module, sub if _is_module(root, sub) else source, path, node.lineno)
            elif (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
                  and isinstance(node.args[0].value, str)
                  and ((isinstance(node.func, ast.Name) and node.func.id == "__import__")
                       or (isinstance(node.func, ast.Attribute) and node.func.attr == "import_module"))):
                yield Import(module, node.args[0].value, path, node.lineno)


def _layer_of(unit: str, layers: tuple[tuple[str, ...], ...]) -> int | None:
    for i, layer in enumerate(layers):
        if unit in layer:
            return i
    return None


def _order(importer: str, imported: str, layers: tuple[tuple[str, ...], ...], where: str) -> str | None:
    """Why ``importer`` may not import ``imported`` (units of ``layers``), or None."""
    if importer == imported:
        return None
    a, b = _layer_of(importer, layers), _layer_of(imported, layers)
    if a is None:
        return f"{where}.{importer} is in no layer of the contract (add it to hack/check_layers.py)"
    if b is None:
        return f"{where}.{imported} is in no layer of the contract (add it to hack/check_layers.py)"
    if a == b:
        return f"{where}.{importer} and {where}.{imported} are independent (one layer) and may not import each other"
    if a > b:
        return f"{where}.{importer} is below {where}.{imported}: imports only go downwards"
    return None


def violation(imp: Import) -> str | None:
    """Why this import breaks a contract, or None."""
    top = imp.target.split(".")[0]
    if top in ONLY:
        allowed = ONLY[top]
        if not any(imp.module == a or imp.module.startswith(a + ".") for a in allowed):
            return f"{imp.target}: only {', '.join(allowed)} may import it"
        return None
    if top != PACKAGE:
        return None
    src, dst = imp.module.split("."), imp.target.split(".")
    if len(src) == 1:
        return f"{PACKAGE}/__init__.py is imported by every layer: it imports nothing of the package"
    if len(dst) == 1:
        return None  # the package root: its version

    why = _order(src[1], dst[1], LAYERS, PACKAGE)
    if why or src[1] != dst[1] or src[1] != "controller":
        return why
    # Inside the controller package: its own order; the package __init__ is its public face.
    if len(src) == 2:
        return None
    if len(dst) == 2:
        return f"{PACKAGE}.controller (the package __init__) from inside it: import the module"
    return _order(src[2], dst[2], CONTROLLER_LAYERS, f"{PACKAGE}.controller")


def check(root: Path) -> list[str]:
    """One line per violation: ``path:line: importer imports target: why``."""
    out = []
    for imp in imports(root):
        why = violation(imp)
        if why:
            out.append(f"{imp.path.relative_to(root)}:{imp.line}: {imp.module} imports {imp.target}: {why}")
    return out


def main(argv: list[str]) -> int:
    root = Path(argv[1]) if len(argv) > 1 else Path(__file__).resolve().parent.parent
    problems = check(root)
    for line in problems:
        print(line)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
