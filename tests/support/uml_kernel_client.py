"""Run inside User-Mode Linux (tests/uml/test_kernel_client_uml.py): the real Linux NFS
client of the UML kernel (7.x) against the Ganesha the image ships, started by the
manager itself, on an XFS disk.

For vers=4.2, 4.1 and 3: mount, read a sparse file and a 64 MiB file back with the
same digest, write through the mount; for 4.2 the client's own statistics say
whether it used READ_PLUS (Ganesha < 6.2 answers it wrongly, nfs-ganesha #1188) or
READ (Debian's UML 7.2 is built without CONFIG_NFS_V4_2_READ_PLUS). Then fresh 4.2
mounts list a directory again and again, counting the listings that fail
(nfs-ganesha #1385: 6.5 answers a 6.19+ client's GET_DIR_DELEGATION with
OP_ILLEGAL). Prints one JSON line with what it saw.
"""

from __future__ import annotations

import argparse
import errno
import gzip
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from nfs_provisioner.ganesha.exports import ExportRequest
from nfs_provisioner.ganesha.server import GaneshaServer
from nfs_provisioner.ganesha.settings import ServerSettings, Squash

MiB = 1 << 20
BIG = 64 * MiB
MOUNTS = {"4.2": ["-t", "nfs4", "-o", "vers=4.2"], "4.1": ["-t", "nfs4", "-o", "vers=4.1"],
          "3": ["-t", "nfs", "-o", "vers=3,nolock"]}


def digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(MiB):
            h.update(chunk)
    return h.hexdigest()


def mount(version: str, source: str, target: Path) -> None:
    target.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", *MOUNTS[version], source, str(target)], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, f"mount vers={version} {source}: {done.stderr.strip()}"


def umount(target: Path) -> None:
    subprocess.run(["umount", str(target)], capture_output=True, timeout=60, check=True)


def ops(target: Path) -> dict[str, int]:
    """Per-operation call counts of the mount at ``target`` (/proc/self/mountstats)."""
    text = Path("/proc/self/mountstats").read_text()
    section = text.split(f"mounted on {target} with fstype", 1)[1].split("\ndevice ", 1)[0]
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^\s+([A-Z_]+): (\d+) ", section, re.M)}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--export-root", type=Path, required=True)
    ap.add_argument("--listings", type=int, default=5)
    args = ap.parse_args()
    root: Path = args.export_root
    vol = root / "pvc-kernel"
    vol.mkdir(mode=0o777)
    sparse = vol / "sparse.bin"
    with sparse.open("wb") as f:  # data at the start, in the middle and at the end; holes between
        for offset in (0, 20 * MiB, BIG - 4096):
            f.seek(offset)
            f.write(os.urandom(4096))
        f.truncate(BIG)
    (vol / "big.bin").write_bytes(os.urandom(BIG))
    listing = vol / "dir"
    listing.mkdir()
    for i in range(50):
        (listing / f"f{i:02d}").write_bytes(b"x" * i)
    want = {name: digest(vol / name) for name in ("sparse.bin", "big.bin")}
    config = gzip.decompress(Path("/proc/config.gz").read_bytes()).decode()  # module "configs"
    seen_config = "CONFIG_NFS_V4_2_READ_PLUS=y" in config.splitlines()

    run_dir = Path(tempfile.mkdtemp(prefix="g", dir="/run/tmp"))
    srv = GaneshaServer(ServerSettings(export_root=root, run_dir=run_dir, nfsv3=True, grace_period=0)
                        .defaults_from(os.environ))
    seen: dict[str, object] = {"kernel": os.uname().release, "read_plus_built": seen_config}
    try:
        srv.start()
        seen["ganesha"] = ".".join(map(str, srv.ganesha_version or ()))
        srv.exports.add(ExportRequest(name=vol.name, path=vol, squash=Squash.NO_ROOT_SQUASH))
        source = f"127.0.0.1:{vol}"
        for version in MOUNTS:
            mnt = Path(f"/run/mnt-{version}")
            mount(version, source, mnt)
            try:
                line = next(m for m in Path("/proc/mounts").read_text().splitlines() if f" {mnt} " in m)
                assert f"vers={version}" in line, line
                for name, sha in want.items():
                    assert digest(mnt / name) == sha, f"vers={version}: {name} read back differs"
                (mnt / f"written-{version}").write_bytes(b"through the kernel client " + version.encode())
                if version == "4.2":  # READ_PLUS only if the kernel was built with CONFIG_NFS_V4_2_READ_PLUS
                    counts = ops(mnt)
                    seen["read_calls"] = counts.get("READ", 0)
                    seen["read_plus_calls"] = counts.get("READ_PLUS", 0)
            finally:
                umount(mnt)
            assert (vol / f"written-{version}").read_bytes() == b"through the kernel client " + version.encode()
        failed: dict[str, int] = {}
        mnt = Path("/run/mnt-list")
        started = time.monotonic()
        for _ in range(args.listings):
            mount("4.2", source, mnt)
            try:
                names = sorted(os.listdir(mnt / "dir"))
                assert len(names) == 50 and all((mnt / "dir" / n).stat().st_size == int(n[1:]) for n in names)
            except OSError as e:
                key = errno.errorcode.get(e.errno or 0, str(e.errno))
                failed[key] = failed.get(key, 0) + 1
            finally:
                umount(mnt)
        seen["listings"] = args.listings
        seen["listings_failed"] = failed
        seen["listing_seconds"] = round(time.monotonic() - started, 1)
    finally:
        srv.stop()
    print(json.dumps(seen), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
