"""The User-Mode Linux kernel itself: the one hack/install-deps provides boots
here and loads its modules inside; one that cannot boot is reported in one line
that names it and says why, for every UML test, instead of a traceback each."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support import uml


@pytest.mark.uml
@pytest.mark.quota
def test_kernel_boots_and_loads_its_modules(tmp_path: Path) -> None:
    """The NFS client, nfsd and overlay modules of the kernel's own package load
    inside UML (modprobe resolves their dependencies) and register their filesystems."""
    result = uml.run(["sh", "-c", "uname -r; cat /proc/filesystems; lsmod"], workdir=tmp_path,
                     modules=["nfsv4", "nfsv3", "nfsd", "overlay"], timeout=60).check()
    release = uml.kernel_release(uml.kernel())
    assert result.output.splitlines()[0] == release
    filesystems = {line.split()[-1] for line in result.output.splitlines() if line.startswith("nodev")}
    assert {"nfs", "nfs4", "nfsd", "overlay"} <= filesystems, result.output
    assert "sunrpc" in result.output  # a dependency nobody named
    print(f"UML {release}: boot, modprobe, command and poweroff in {result.seconds:.2f}s")


@pytest.mark.uml
@pytest.mark.quota
def test_a_missing_module_is_a_setup_failure(tmp_path: Path) -> None:
    result = uml.run(["true"], workdir=tmp_path, modules=["no_such_module"], timeout=60)
    assert result.returncode == uml.SETUP_FAILED
    assert "uml init: modprobe no_such_module" in result.output
