"""Which Ganesha runs: the version check (older than 6.2 is refused with one line), an
unpacked tree started through its own loader, and a rendered config 6.5 does not complain about."""

from __future__ import annotations

from pathlib import Path

import pytest

from nfs_provisioner.ganesha import binary, errors


@pytest.mark.unit
@pytest.mark.parametrize(("text", "version"), [
    ("NFS-Ganesha Release = V6.5\n", (6, 5, 0)),
    ("NFS-Ganesha Release = V4.3\n", (4, 3, 0)),
    ("noise\nNFS-Ganesha Release = V9.14.2 extra", (9, 14, 2)),
])
def test_version_is_read_from_the_release_line(text: str, version: tuple[int, int, int]) -> None:
    assert binary.parse_version(text) == version


@pytest.mark.unit
def test_older_than_6_2_is_refused_with_one_line() -> None:
    binary.check_version((6, 5, 0))
    binary.check_version((6, 2, 0))
    with pytest.raises(errors.GaneshaServerError) as e:
        binary.check_version((6, 1, 0))
    assert "NFS-Ganesha 6.1 is too old" in str(e.value) and "#1188" in str(e.value)
    assert "\n" not in str(e.value)
    with pytest.raises(errors.GaneshaServerError, match="cannot tell the NFS-Ganesha version"):
        binary.parse_version("ganesha.nfsd: unknown option -- v")


@pytest.mark.unit
def test_an_incomplete_tree_is_refused_naming_what_is_missing(tmp_path: Path) -> None:
    assert binary.locate(None) == binary.Ganesha(command=("ganesha.nfsd",), plugins_dir=None)
    (tmp_path / binary.TREE_LIB).mkdir(parents=True)
    (tmp_path / binary.TREE_LIB / binary.LOADER).write_bytes(b"")
    with pytest.raises(errors.GaneshaServerError, match=r"ganesha.nfsd \(.*usr/bin/ganesha.nfsd\) is missing"):
        binary.locate(tmp_path)
