"""The clone copy (``nfs_provisioner.volumes.copying``) on real XFS inside User-Mode Linux; run by
tests/uml/test_clone_uml.py (one boot).

    python -m tests.support.uml_clone_checks --reflink MNT --plain MNT --results FILE.json [--size-mb N]

``--reflink`` is an XFS made with ``reflink=1`` (mkfs.xfs's default), ``--plain`` one with ``reflink=0``.
Each copies a source tree of ``--size-mb`` MiB of random data (plus a sparse file, a hard link and a
symlink) and records what ``df`` says before and after, the copy time, and whether the copy matches.
Writes ``{"reflink": {...}, "plain": {...}}`` and exits 0 when both checks pass.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
import traceback
from collections.abc import Sequence
from pathlib import Path

from nfs_provisioner.volumes import copying

MiB = 1 << 20


def used(path: Path) -> int:
    st = os.statvfs(path)
    return (st.f_blocks - st.f_bfree) * st.f_frsize


def tree_digest(root: Path) -> dict[str, str]:
    out = {}
    for dirpath, _dirs, files in os.walk(root):
        for n in files:
            p = Path(dirpath) / n
            if p.is_symlink():
                out[str(p.relative_to(root))] = "link:" + os.readlink(p)
            else:
                h = hashlib.sha256()
                with open(p, "rb") as f:
                    while chunk := f.read(MiB):
                        h.update(chunk)
                out[str(p.relative_to(root))] = h.hexdigest()
    return out


def make_source(src: Path, size_mb: int) -> None:
    src.mkdir()
    (src / "sub").mkdir()
    files = 4
    for i in range(files):
        with open(src / ("sub" if i % 2 else ".") / f"data{i}.bin", "wb") as f:
            for _ in range(size_mb // files):
                f.write(os.urandom(MiB))
    with open(src / "sparse.img", "wb") as f:
        f.write(b"x" * 4096)
        f.truncate(256 * MiB)
    os.link(src / "data0.bin", src / "sub" / "hard.bin")
    os.symlink("sub/data1.bin", src / "link")
    copying.syncfs(src)


def check(mnt: Path, size_mb: int, *, expect_shared: bool) -> dict[str, object]:
    src, dst = mnt / "src", mnt / "dst"
    make_source(src, size_mb)
    dst.mkdir()
    before_src = tree_digest(src)
    shares = copying.shares_blocks(mnt)
    assert shares is expect_shared, f"shares_blocks({mnt}) is {shares}"
    before = used(mnt)
    stats, seconds, grown = timed_copy(src, dst, mnt)
    assert tree_digest(dst) == before_src, "the copy differs from the source"
    assert os.stat(dst / "data0.bin").st_ino == os.stat(dst / "sub" / "hard.bin").st_ino
    assert os.stat(dst / "sparse.img").st_blocks * 512 <= 64 * 1024, "the hole was filled"
    if expect_shared:
        assert stats.reflinked_files == stats.files, f"not every file was reflinked: {stats}"
        assert grown < MiB, f"a reflinked clone of {size_mb} MiB used {grown} bytes more"
    else:
        assert stats.reflinked_files == 0
        assert grown >= size_mb * MiB, f"a full copy of {size_mb} MiB used only {grown} bytes more"
    # Writes to the clone leave the source unchanged (copy on write).
    with open(dst / "data0.bin", "r+b") as f:
        f.seek(MiB)
        f.write(b"\xff" * MiB)
    (dst / "sub" / "data1.bin").write_bytes(b"rewritten")
    copying.syncfs(dst)
    assert tree_digest(src) == before_src, "a write to the clone changed the source"
    return {"seconds": round(seconds, 3), "used_before": before, "grown_bytes": grown, "files": stats.files,
            "reflinked": stats.reflinked_files, "size_mb": size_mb}


def timed_copy(src: Path, dst: Path, mnt: Path) -> tuple[copying.Stats, float, int]:
    """copy_tree + syncfs: its stats, the seconds it took and the bytes the filesystem grew by."""
    before = used(mnt)
    t0 = time.monotonic()
    stats = copying.copy_tree(src, dst)
    copying.syncfs(dst)
    return stats, time.monotonic() - t0, used(mnt) - before


def quota_used(mnt: Path, project: int) -> int:
    """Bytes charged to ``project`` (xfs_quota report, in KiB blocks)."""
    out = subprocess.run(["xfs_quota", "-x", "-c", "report -p -b -N -n", str(mnt)], check=True, capture_output=True,
                         text=True).stdout
    for line in out.splitlines():
        fields = line.split()
        if fields and fields[0] == f"#{project}":
            return int(fields[1]) * 1024
    return 0


def check_quota(mnt: Path, size_mb: int) -> dict[str, object]:
    """Source and clone in different project quotas (as the appliance makes them): the clone's files are
    charged to the clone's project, and whether the blocks are still shared across projects is recorded."""
    src, dst = mnt / "src", mnt / "dst"
    src.mkdir()
    dst.mkdir()
    for directory, project in ((src, 10), (dst, 11)):
        subprocess.run(["xfs_quota", "-x", "-c", f"project -s -p {directory} {project}", str(mnt)], check=True,
                       capture_output=True)
    subprocess.run(["xfs_quota", "-x", "-c", f"limit -p bhard={2 * size_mb}m 11", str(mnt)], check=True)
    src.rmdir()
    make_source_in(src, size_mb)
    before_src = tree_digest(src)
    stats, seconds, grown = timed_copy(src, dst, mnt)
    assert tree_digest(dst) == before_src, "the copy differs from the source"
    charged = quota_used(mnt, 11)
    assert charged >= size_mb * MiB, f"the clone's project is charged {charged} bytes for {size_mb} MiB"
    return {"seconds": round(seconds, 3), "grown_bytes": grown, "clone_project_bytes": charged,
            "reflinked": stats.reflinked_files, "files": stats.files, "size_mb": size_mb}


def make_source_in(src: Path, size_mb: int) -> None:
    src.mkdir()
    subprocess.run(["xfs_quota", "-x", "-c", f"project -s -p {src} 10", str(src.parent)], check=True,
                   capture_output=True)
    for i in range(4):
        with open(src / f"data{i}.bin", "wb") as f:
            for _ in range(size_mb // 4):
                f.write(os.urandom(MiB))
    copying.syncfs(src)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reflink", type=Path, required=True)
    parser.add_argument("--plain", type=Path, required=True)
    parser.add_argument("--results", type=Path, required=True)
    parser.add_argument("--size-mb", type=int, default=64)
    parser.add_argument("--quota", type=Path, help="an XFS with reflink=1 mounted with prjquota")
    args = parser.parse_args(argv)
    results: dict[str, dict[str, object]] = {}
    for name, mnt, shared in (("reflink", args.reflink, True), ("plain", args.plain, False)):
        try:
            results[name] = {"ok": True, **check(mnt, args.size_mb, expect_shared=shared)}
        except BaseException:  # noqa: BLE001 - both checks report
            results[name] = {"ok": False, "detail": traceback.format_exc()}
        print(name, json.dumps(results[name]), flush=True)
    if args.quota is not None:
        try:
            results["quota"] = {"ok": True, **check_quota(args.quota, args.size_mb)}
        except BaseException:  # noqa: BLE001 - reported like the others
            results["quota"] = {"ok": False, "detail": traceback.format_exc()}
        print("quota", json.dumps(results["quota"]), flush=True)
    args.results.write_text(json.dumps(results, indent=2))
    return 0 if all(r["ok"] for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
