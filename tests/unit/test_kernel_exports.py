"""--use-ganesha=false: volumes exported through /etc/exports and the real
exportfs (from Debian's nfs-kernel-server, unpacked by hack/install-deps).

This kernel has no NFS server, so what can be proven here is everything up to
the kernel: the appliance writes /etc/exports, and exportfs accepts it and
writes its export table (/var/lib/nfs/etab). Both paths are private to the test:
the appliance runs in its own mount namespace over a copy of /etc."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from nfs_provisioner.appliance.kernel_exports import MARK, KernelExporter, KernelExportError
from tests.support.kernel_exports import OPERATOR_LINE


@pytest.mark.unit
def test_a_refused_exports_file_is_put_back(tmp_path: Path) -> None:
    exports = tmp_path / "exports"
    exports.write_text(OPERATOR_LINE + "\n")
    (tmp_path / "v").mkdir()
    refusing = KernelExporter(exports_file=exports, exportfs=shutil.which("false") or "/bin/false")
    with pytest.raises(KernelExportError, match="exportfs -r refused"):
        refusing.export(name="pvc-1", path=tmp_path / "v", root_squash=False)
    assert exports.read_text() == OPERATOR_LINE + "\n"
    accepting = KernelExporter(exports_file=exports, exportfs=shutil.which("true") or "/bin/true",
                               clients=("10.0.0.0/8", "192.168.1.0/24"))
    assert accepting.export(name="pvc-1", path=tmp_path / "v", root_squash=False)[0] == 2
    assert accepting.export(name="pvc-1", path=tmp_path / "v", root_squash=False)[0] == 2  # idempotent
    assert accepting.count() == 1 and accepting.has("pvc-1")
    assert "10.0.0.0/8(rw,sync,no_subtree_check,no_root_squash,fsid=2) 192.168.1.0/24(" in exports.read_text()
    with pytest.raises(KernelExportError, match="cannot be written"):
        accepting.export(name="pvc-2", path=tmp_path / "a b", root_squash=False)
    assert accepting.unexport("pvc-1") is True and accepting.unexport("pvc-1") is False
    assert exports.read_text() == OPERATOR_LINE + "\n"


@pytest.mark.unit
def test_kernel_lines_follow_the_client_list_and_nobody_means_no_export(tmp_path: Path) -> None:
    exports = tmp_path / "exports"
    exports.write_text(OPERATOR_LINE + "\n")
    (tmp_path / "v").mkdir()
    (tmp_path / "w").mkdir()
    k = KernelExporter(exports_file=exports, exportfs=shutil.which("true") or "/bin/true", clients=("10.0.0.1/32",))
    k.export(name="pvc-1", path=tmp_path / "v", root_squash=True)
    k.set_clients(())  # no node has an address: nobody, and never a line without clients (= everyone)
    line = exports.read_text().splitlines()[1]
    assert line.startswith("#nobody ") and "fsid=2" in line and line.endswith(f"{MARK}pvc-1"), line
    assert k.has("pvc-1") and k.export(name="pvc-1", path=tmp_path / "v", root_squash=True)[0] == 2
    assert k.export(name="pvc-2", path=tmp_path / "w", root_squash=False)[0] == 3, "fsid 2 is still taken"
    k.set_clients(("10.0.0.2/32", "10.1.0.0/16"))
    lines = exports.read_text().splitlines()
    assert lines == [OPERATOR_LINE,
                     f"{tmp_path / 'v'} 10.0.0.2/32(rw,sync,no_subtree_check,root_squash,fsid=2) "
                     f"10.1.0.0/16(rw,sync,no_subtree_check,root_squash,fsid=2)  {MARK}pvc-1",
                     f"{tmp_path / 'w'} 10.0.0.2/32(rw,sync,no_subtree_check,no_root_squash,fsid=3) "
                     f"10.1.0.0/16(rw,sync,no_subtree_check,no_root_squash,fsid=3)  {MARK}pvc-2"]
