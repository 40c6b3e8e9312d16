"""Which ``ganesha.nfsd`` runs, how it is started, and whether it is new enough.

Ganesha is found one of two ways:

- **installed** (the image: Debian trixie's ``nfs-ganesha`` 6.5): ``ganesha.nfsd`` on PATH,
  its FSALs where the package put them;
- **an unpacked tree** (``ServerSettings.ganesha_root`` or ``NFS_PROVISIONER_GANESHA_ROOT``):
  the ``dpkg -x`` of ``nfs-ganesha``, ``nfs-ganesha-vfs`` and their libraries, as
  ``hack/install-deps`` makes on a bookworm host. It runs through the tree's own dynamic
  loader with the tree's libraries first (``ld-linux-x86-64.so.2 --library-path ...``), and
  the main config's ``Plugins_Dir`` points at the tree's FSAL directory.

``check_version`` refuses Ganesha older than ``MIN_VERSION`` with one line: older
releases answer NFSv4.2 READ_PLUS wrongly to Linux >= 6.6 clients (nfs-ganesha #1188),
and the templates use 6.x options (``allow_set_io_flusher_fail``).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Sequence
from pathlib import Path

from nfs_provisioner.ganesha import errors

#: The oldest Ganesha the manager runs (READ_PLUS fixed in 6.2; see the module docstring).
MIN_VERSION = (6, 2)
#: Where, inside an unpacked tree, Debian puts the loader and libraries, Ganesha's own library, the FSALs.
TREE_LIB = Path("usr/lib/x86_64-linux-gnu")
TREE_GANESHA_LIB = Path("usr/lib/ganesha")
TREE_PLUGINS = TREE_LIB / "ganesha"
TREE_BINARY = Path("usr/bin/ganesha.nfsd")
LOADER = "ld-linux-x86-64.so.2"

_RELEASE = re.compile(r"NFS-Ganesha Release = V(\d+)\.(\d+)(?:\.(\d+))?")

#: run(argv) -> (exit code, output): how ``version`` runs ``ganesha.nfsd -v`` (the Launcher's ``run``).
Runner = Callable[[Sequence[str]], tuple[int, str]]


@dataclasses.dataclass(frozen=True)
class Ganesha:
    """How to start one Ganesha: the command in front of its options, and its FSAL directory."""

    command: tuple[str, ...] = ("ganesha.nfsd",)
    """``ganesha.nfsd``, or ``<loader> --library-path <libs> <tree>/usr/bin/ganesha.nfsd``."""
    plugins_dir: Path | None = None
    """``Plugins_Dir`` for the main config; None = the binary's built-in directory."""


def locate(root: Path | None) -> Ganesha:
    """The installed Ganesha (``root`` None), or the one unpacked under ``root``; a tree that lacks
    the loader, the binary or the VFS FSAL is refused with one line naming what is missing."""
    if root is None:
        return Ganesha()
    lib = root / TREE_LIB
    wanted = {
        "the dynamic loader": lib / LOADER,
        "ganesha.nfsd": root / TREE_BINARY,
        "the VFS FSAL": root / TREE_PLUGINS / "libfsalvfs.so",
    }
    for what, path in wanted.items():
        if not path.is_file():
            raise errors.GaneshaServerError(f"{root} is not an unpacked NFS-Ganesha: {what} ({path}) is missing")
    library_path = f"{lib}:{root / TREE_GANESHA_LIB}"
    return Ganesha(
        command=(str(lib / LOADER), "--library-path", library_path, str(root / TREE_BINARY)),
        plugins_dir=root / TREE_PLUGINS,
    )


def parse_version(text: str) -> tuple[int, int, int]:
    """``NFS-Ganesha Release = V6.5`` -> (6, 5, 0)."""
    m = _RELEASE.search(text)
    if m is None:
        raise errors.GaneshaServerError(f"cannot tell the NFS-Ganesha version from {text.strip()[:200]!r}")
    return int(m.group(1)), int(m.group(2)), int(m.group(3) or 0)


def version(ganesha: Ganesha, *, run: Runner) -> tuple[int, int, int]:
    """Ask the binary (``ganesha.nfsd -v``)."""
    argv = [*ganesha.command, "-v"]
    try:
        code, out = run(argv)
    except OSError as e:
        raise errors.GaneshaServerError(f"cannot run {ganesha.command[-1]}: {e}") from e
    if code != 0:
        raise errors.GaneshaServerError(f"{' '.join(argv)} exited with code {code}: {out.strip()[:200]}")
    return parse_version(out)


def check_version(found: tuple[int, int, int]) -> None:
    if found[:2] < MIN_VERSION:
        have = ".".join(map(str, found[:2]))
        need = ".".join(map(str, MIN_VERSION))
        raise errors.GaneshaServerError(
            f"NFS-Ganesha {have} is too old: nfs-provisioner needs {need} or newer (older releases break "
            f"NFSv4.2 READ_PLUS for Linux >= 6.6 clients, nfs-ganesha #1188); use the image, Debian trixie's "
            f"nfs-ganesha, or an unpacked one named by NFS_PROVISIONER_GANESHA_ROOT"
        )
