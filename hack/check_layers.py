#!/usr/bin/env python3
"""The layer contracts the package docstrings state, checked on every import (run by ``make lint``).

Reads every ``import`` of ``nfs_provisioner/**.py`` with :mod:`ast` (also imports inside functions, under
``if TYPE_CHECKING:``, and ``importlib.import_module("...")``/``__import__("...")`` with a literal name) and
checks it against :data:`LAYERS`, :data:`CONTROLLER_LAYERS` and :data:`ONLY`, and that no modules of one unit
(e.g. ``nfs_provisioner.ganesha`` and its subpackages) import each other in a cycle (:func:`cycles`). Prints one
line per violation and exits 1, or prints nothing and exits 0. ``python hack/check_layers.py [ROOT]`` checks
``ROOT/nfs_provisioner`` (default: this repository).

import-linter would do the same with its contracts; this keeps ``make lint`` free of another tool.
"""

from __future__ import annotations

import ast
import itertools
import sys
from collections.abc import Collection, Iterator
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
    ("decisions", "failures"),  # failures: what a failed attempt means, the refusals' texts (plain data)
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


def imports(root: Path, package: str = PACKAGE) -> Iterator[Import]:
    """Every import of every module under ``root/<package>``; ``root`` is the directory holding it."""
    for path in sorted((root / package).rglob("*.py")):
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


def cycles(root: Path, package: str = PACKAGE, *, reported: Collection[Import] = ()) -> list[str]:
    """One line per import cycle among the modules of one unit of ``package`` (``package.<unit>`` and everything
    under it; the modules directly in ``package``, such as all of ``bench``, are one unit too). Every import
    counts, also one inside a function or under ``if TYPE_CHECKING:``. A package's ``__init__`` is the node of the
    package's own name; importing a submodule is not counted as importing its parent package. ``reported``:
    imports already reported as violations, left out here (one line per bad import)."""
    edges: dict[str, dict[str, Import]] = {}
    for imp in imports(root, package):
        src, dst = imp.module.split("."), imp.target.split(".")
        if (dst[0] != package or imp.module == imp.target or _unit(root, src) != _unit(root, dst)
                or imp in reported):
            continue
        edges.setdefault(imp.module, {}).setdefault(imp.target, imp)
    out = []
    for component in _strongly_connected(edges):
        if len(component) < 2:
            continue
        loop = _loop(edges, sorted(component))
        steps = (edges[a][b] for a, b in itertools.pairwise(loop))
        where = ", ".join(f"{imp.path.relative_to(root)}:{imp.line}" for imp in steps)
        out.append(f"import cycle among {', '.join(sorted(component))}: {' -> '.join(loop)} ({where}): modules of "
                   "one package import one another only one way")
    return out


def _unit(root: Path, parts: list[str]) -> list[str]:
    """The unit a module belongs to: its top-level subpackage (``nfs_provisioner.ganesha`` for
    ``nfs_provisioner.ganesha.exports.index``), or the package itself for a module directly in it."""
    return parts[:2] if len(parts) > 1 and (root / parts[0] / parts[1]).is_dir() else parts[:1]


def _strongly_connected(edges: dict[str, dict[str, Import]]) -> list[set[str]]:
    """Tarjan's strongly connected components of the import graph (iterative: no recursion limit)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[set[str]] = []
    for start in sorted(edges):
        if start in index:
            continue
        work = [(start, iter(sorted(edges.get(start, {}))))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges.get(child, {})))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == node:
                        break
                found.append(component)
    return found


def _loop(edges: dict[str, dict[str, Import]], component: list[str]) -> list[str]:
    """One closed path through ``component`` from its first module back to it (breadth-first: a shortest one)."""
    first, members = component[0], set(component)
    paths = {first: [first]}
    queue = [first]
    while queue:
        node = queue.pop(0)
        for nxt in sorted(edges.get(node, {})):
            if nxt == first:
                return paths[node] + [first]
            if nxt in members and nxt not in paths:
                paths[nxt] = paths[node] + [nxt]
                queue.append(nxt)
    raise AssertionError(f"no loop through {first}")


def check(root: Path) -> list[str]:
    """One line per violation: ``path:line: importer imports target: why``, then one per import cycle."""
    out, bad = [], []
    for imp in imports(root):
        why = violation(imp)
        if why:
            out.append(f"{imp.path.relative_to(root)}:{imp.line}: {imp.module} imports {imp.target}: {why}")
            bad.append(imp)
    return out + cycles(root, reported=bad)


def main(argv: list[str]) -> int:
    root = Path(argv[1]) if len(argv) > 1 else Path(__file__).resolve().parent.parent
    problems = check(root)
    for line in problems:
        print(line)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
