"""What the clone tests share (tests/e2e/test_clones.py, tests/e2e/test_hostile_clones.py): a claim as the API
server has it, its PV once bound, its events and what a failed clone leaves; the source trees they fill."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nfs_provisioner.kube import client as kube
from tests.support import wait

Object = dict[str, Any]


def claim(api: kube.Client, namespace: str, name: str) -> Object:
    got: Object = api.get(kube.claims_path(namespace, name))
    return got


def bound(api: kube.Client, namespace: str, name: str, timeout: float = 60, what: Any = None) -> Object:
    return wait.until(lambda: (c := claim(api, namespace, name))["status"].get("phase") == "Bound" and c,
                      timeout=timeout, what=what or f"claim {name} Bound")


def events(api: kube.Client, namespace: str, name: str) -> list[tuple[str, str, str]]:
    items = api.get(kube.events_path(namespace), fieldSelector=f"involvedObject.name={name}")["items"]
    return [(e["type"], e["reason"], e["message"]) for e in sorted(items, key=lambda e: e["metadata"]["name"])]


def failures(api: kube.Client, namespace: str, name: str) -> list[str]:
    return [m for t, r, m in events(api, namespace, name) if r == "ProvisioningFailed"]


def leftovers(root: Path, pv: str) -> list[str]:
    """What the appliance keeps of a volume ``pv``: directory, record, export file, clone markers."""
    found = [str(p.relative_to(root)) for p in root.rglob(f"*{pv}*")]
    return sorted(found)


def fill_source(path: Path) -> dict[str, bytes]:
    """Files a user would have: text, binary, a sparse file, a hard link, a symlink, in subdirectories."""
    (path / "sub" / "deeper").mkdir(parents=True)
    files = {"hello.txt": b"hello clone\n", "sub/data.bin": os.urandom(3000),
             "sub/deeper/notes.md": b"# notes\n" * 300}
    for rel, data in files.items():
        (path / rel).write_bytes(data)
    with open(path / "sparse.img", "wb") as f:  # 16 MiB apparent, two data extents
        f.write(b"start")
        f.seek(12 << 20)
        f.write(b"end of data")
        f.truncate(16 << 20)
    os.link(path / "sub" / "data.bin", path / "hard.bin")
    os.symlink("sub/data.bin", path / "link")
    os.chown(path / "hello.txt", 1000, 2000)
    os.chmod(path / "hello.txt", 0o640)
    os.setxattr(path / "hello.txt", "user.origin", b"source")
    return files


def fill_tree(src: Path, *, dirs: int, files: int, content: Callable[[int, int], bytes]) -> None:
    """``dirs`` directories d000.. of ``files`` files f000.. each: a source that takes a while to copy."""
    for d in range(dirs):
        (src / f"d{d:03}").mkdir()
        for i in range(files):
            (src / f"d{d:03}" / f"f{i:03}").write_bytes(content(d, i))
