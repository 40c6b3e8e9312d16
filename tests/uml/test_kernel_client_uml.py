"""The real Linux NFS client (the UML kernel's) against the Ganesha the image ships:
vers=4.2, 4.1 and 3 mounts read a sparse file and a 64 MiB file correctly and write
through (tests/support/uml_kernel_client.py runs inside UML). Debian's UML kernel is built
without CONFIG_NFS_V4_2_READ_PLUS, so its 4.2 reads are READ, not READ_PLUS: the
test checks that from the client's own statistics rather than assuming it."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from tests.support import uml

pytestmark = [pytest.mark.uml, pytest.mark.ganesha, pytest.mark.kclient]

EXPORT_MOUNT = "/run/export"


def test_kernel_client_reads_and_writes_through_ganesha(tmp_path: Path) -> None:
    disk = uml.Disk(image=uml.make_xfs_image(tmp_path / "export.img", size_mb=400), mount_point=EXPORT_MOUNT,
                    options="noquota")
    result = uml.run([sys.executable, "-m", "tests.support.uml_kernel_client", "--export-root", EXPORT_MOUNT],
                     workdir=tmp_path, disks=[disk], modules=["nfsv4", "nfsv3", "configs"], mem_mb=1024, timeout=600)
    result.check()
    seen = json.loads(result.output.strip().splitlines()[-1])
    print(f"inside UML ({result.seconds:.1f}s): {seen}")
    assert tuple(int(x) for x in seen["ganesha"].split(".")[:2]) >= (9, 14), seen  # the image's (trixie-backports)
    if seen["read_plus_built"]:
        assert seen["read_plus_calls"] > 0, seen
    else:
        assert seen["read_plus_calls"] == 0 and seen["read_calls"] > 0, seen
    # nfs-ganesha #1385 (GET_DIR_DELEGATION answered with OP_ILLEGAL, 6.5) showed as failed listings on
    # 6.19+ clients; the UML kernel is one. 9.14 answers NFS4ERR_NOTSUPP: no listing may fail.
    assert seen["listings"] == 5 and not seen["listings_failed"], seen
