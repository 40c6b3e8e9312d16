"""Volume assets on a real directory tree: parameters, identity, directories.

Hostile names and planted symlinks must never make anything outside the
volume's own directory change; the tests snapshot the whole tree around them."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

from nfs_provisioner.volumes import directories, identity, params
from nfs_provisioner.volumes.directories import DirectoryError, InvalidVolumeName, VolumeDirectories
from tests.support.treesnap import snapshot

pytestmark = pytest.mark.unit


def test_parameters_defaults_and_values() -> None:
    assert params.parse(None) == params.ClassParameters()
    p = params.parse({"gid": "1234", "rootSquash": "true", "onDelete": "Archive"}, class_mount_options=["vers=4.1"])
    assert p == params.ClassParameters(gid=1234, root_squash=True, on_delete="archive", mount_options=("vers=4.1",))
    assert params.parse({"gid": "none", "mountOptions": "vers=4.1, hard"}).mount_options == ("vers=4.1", "hard")


@pytest.mark.parametrize(
    ("parameters", "message"),
    [
        ({"size": "1"}, "invalid parameter 'size'"),
        ({"gid": "0"}, "invalid value '0' for parameter gid"),
        ({"gid": "-5"}, "invalid value '-5' for parameter gid"),
        ({"gid": "99999999999"}, "for parameter gid"),
        ({"gid": "abc"}, "for parameter gid"),
        # Unicode digits: '²'.isdigit() is True but int() refuses it; '١٢٣' (Arabic-Indic) int() reads as 123.
        ({"gid": "²"}, "invalid value '²' for parameter gid"),
        ({"gid": "١٢٣"}, "invalid value '١٢٣' for parameter gid"),
        ({"gid": "1" * 5000}, "for parameter gid"),  # int() refuses more than 4300 digits with its own error
        ({"gid": "+5"}, "invalid value '\\+5' for parameter gid"),
        ({"rootSquash": "maybe"}, "for parameter rootSquash"),
        ({"onDelete": "shred"}, "for parameter onDelete"),
        ({"mountOptions": "vers=4.1,a b"}, "invalid mount option 'a b'"),
    ],
)
def test_bad_parameters_are_named(parameters: dict[str, str], message: str) -> None:
    with pytest.raises(params.InvalidParameter, match=message):
        params.parse(parameters)


def test_mount_options_in_two_places_is_an_error() -> None:
    with pytest.raises(params.InvalidParameter, match="both on the class and as a parameter"):
        params.parse({"mountOptions": "hard"}, class_mount_options=["vers=4.1"])


def test_identity_is_created_once_and_kept(tmp_path: Path) -> None:
    first = identity.load_or_create(tmp_path)
    assert str(uuid.UUID(first)) == first
    assert identity.load_or_create(tmp_path) == first
    assert (tmp_path / identity.FILENAME).read_text().strip() == first
    assert sorted(p.name for p in tmp_path.iterdir()) == [identity.FILENAME]


def test_corrupt_identity_is_an_error_not_a_new_identity(tmp_path: Path) -> None:
    (tmp_path / identity.FILENAME).write_text("garbage\n")
    with pytest.raises(identity.IdentityError, match="not a UUID"):
        identity.load_or_create(tmp_path)
    assert (tmp_path / identity.FILENAME).read_text() == "garbage\n"


@pytest.mark.parametrize("name", ["", "..", ".", "../x", "a/b", "/etc", ".ganesha", "-a", "A", "a..b", "a" * 254,
                                  "nfs-provisioner.identity", "projects", "pvc-1\n", "pvc 1"])
def test_hostile_names_never_become_paths(tmp_path: Path, name: str) -> None:
    dirs = VolumeDirectories(tmp_path)
    with pytest.raises(InvalidVolumeName):
        dirs.path_for(name)


def test_delete_removes_only_the_volume_tree(tmp_path: Path) -> None:
    root = tmp_path / "export"
    root.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious").write_text("keep")
    dirs = VolumeDirectories(root)
    vol = dirs.create("pvc-1", gid=None)
    (vol / "sub").mkdir()
    (vol / "sub" / "f").write_text("data")
    (vol / "escape").symlink_to(outside)  # a symlink planted by a client inside its own volume
    keep = dirs.create("pvc-2", gid=None)
    (keep / "g").write_text("other volume")
    before = snapshot(tmp_path)

    assert dirs.delete("pvc-1") is True
    assert dirs.delete("pvc-1") is False  # idempotent
    after = snapshot(tmp_path)
    removed = set(before) - set(after)
    assert all(k.startswith("export/pvc-1") for k in removed)
    assert {k: v for k, v in before.items() if not k.startswith("export/pvc-1")} == after
    assert (outside / "precious").read_text() == "keep"


def _nest(top: Path, *, depth: int, name: str, outside: Path | None = None) -> None:
    """``depth`` nested directories under ``top`` (made with openat, so the path may exceed PATH_MAX), a file
    and, if given, a symlink to ``outside`` at every level (what a client can make over NFS)."""
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for i in range(depth):
            os.mkdir(name, dir_fd=fd)
            with open(os.open(f"f{i}", os.O_WRONLY | os.O_CREAT, dir_fd=fd), "w") as f:
                f.write("x")
            if outside is not None:
                os.symlink(outside, "link", dir_fd=fd)
            child = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = child
    finally:
        os.close(fd)


@pytest.mark.parametrize(("depth", "name"), [(1500, "d"), (40, "n" * 200)], ids=["deeper-than-recursion",
                                                                                "longer-than-PATH_MAX"])
def test_delete_and_archive_any_depth(tmp_path: Path, depth: int, name: str) -> None:
    """1500 nested directories (beyond Python's recursion limit and the 1024 descriptors of a default
    RLIMIT_NOFILE) or a path of 8000 bytes (beyond PATH_MAX): deleted, and archived then deleted, with every
    symlink inside removed, never followed."""
    root = tmp_path / "export"
    root.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious").write_text("keep")
    dirs = VolumeDirectories(root)
    for vol in ("pvc-1", "pvc-2"):
        _nest(dirs.create(vol, gid=None), depth=depth, name=name, outside=outside)
    before = snapshot(outside)

    assert dirs.delete("pvc-1") is True
    assert not (root / "pvc-1").exists()
    target = dirs.archive("pvc-2")
    assert target is not None and (target / name).is_dir()
    directories.remove_tree(target)
    assert sorted(p.name for p in root.iterdir()) == [directories.ARCHIVE_DIR]
    assert not any((root / directories.ARCHIVE_DIR).iterdir())
    assert snapshot(outside) == before


def test_delete_many_entries_and_empty_keeps_the_directory(tmp_path: Path) -> None:
    dirs = VolumeDirectories(tmp_path)
    vol = dirs.create("pvc-1", gid=None)
    for i in range(40):
        (vol / f"d{i}").mkdir()
        for j in range(100):
            (vol / f"d{i}" / f"f{j}").write_text("")
    assert dirs.empty("pvc-1") is True
    assert vol.is_dir() and not any(vol.iterdir())
    assert dirs.delete("pvc-1") is True and not vol.exists()
    assert dirs.empty("pvc-1") is False


def test_delete_refuses_a_symlink_in_place_of_the_volume(tmp_path: Path) -> None:
    root = tmp_path / "export"
    root.mkdir()
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "f").write_text("x")
    (root / "pvc-9").symlink_to(victim)
    with pytest.raises(DirectoryError, match="is a symlink; refusing"):
        VolumeDirectories(root).delete("pvc-9")
    assert (victim / "f").read_text() == "x"


def test_archive_moves_aside_within_the_export_root(tmp_path: Path) -> None:
    dirs = VolumeDirectories(tmp_path)
    vol = dirs.create("pvc-1", gid=None)
    (vol / "f").write_text("data")
    target = dirs.archive("pvc-1", now=0)
    assert target == tmp_path / directories.ARCHIVE_DIR / "pvc-1-19700101T000000Z"
    assert (target / "f").read_text() == "data"
    assert not vol.exists()
    dirs.create("pvc-1", gid=None)
    assert dirs.archive("pvc-1", now=0) == tmp_path / directories.ARCHIVE_DIR / "pvc-1-19700101T000000Z.1"
    assert dirs.archive("pvc-1") is None


def test_space_check(tmp_path: Path) -> None:
    dirs = VolumeDirectories(tmp_path)
    dirs.check_space(1)
    with pytest.raises(directories.InsufficientSpace, match=r"only \d+ bytes are free"):
        dirs.check_space(dirs.free_bytes() + 10**15)


@pytest.mark.parametrize(("text", "expected"), [
    ("1Mi", 2**20), ("500M", 5 * 10**8), ("1.5Gi", 3 * 2**29), ("2e3", 2000), ("100m", 1), ("1", 1),
    ("1E", 10**18), ("2Ei", 2 * 2**60),
])
def test_quantities(text: str, expected: int) -> None:
    from nfs_provisioner.volumes.quantity import to_bytes

    assert to_bytes(text) == expected


@pytest.mark.parametrize("text", ["", "abc", "1Qi", "-1Mi", "1e400", "9Ei", "1..2", "1 Mi"])
def test_bad_quantities(text: str) -> None:
    from nfs_provisioner.volumes.quantity import InvalidQuantity, to_bytes

    with pytest.raises(InvalidQuantity):
        to_bytes(text)
