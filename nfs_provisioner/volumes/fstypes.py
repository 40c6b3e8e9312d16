"""Filesystem types of filesystem volumes (``nfs_provisioner.volumes.filesystems``): what each needs (its
smallest size, its tools), how an image of it is made (``mkfs`` arguments), how big an ext4 filesystem is (its
superblock), whether a mounted one can grow here, and whether this host can make filesystem volumes at all
(:func:`probe`: a loop device attached and a small image mounted). The errors of filesystem volumes live here too.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from nfs_provisioner.errors import NFSProvisionerError
from nfs_provisioner.volumes import loops

CAP_SYS_RESOURCE = 24
MiB = 2**20
MIN_BYTES = {"ext4": 4 * MiB, "xfs": 300 * MiB}
"""The smallest claim per filesystem: mke2fs 1.47 makes no journal below 3 MiB (a margin is kept for other
versions); mkfs.xfs (xfsprogs >= 5.19) refuses filesystems under 300 MiB ("Filesystem must be larger than
300MB"; measured with xfsprogs 6.1: 300 MiB is accepted, 300 MiB - 4 KiB refused)."""
SMALL_JOURNAL_BELOW = 128 * MiB
"""ext4 volumes below this get a 1 MiB journal (mke2fs would give 4 MiB, 6% of a 64 MiB volume)."""
BLOCK = 4096
"""Images are a whole number of these (claims in decimal units, e.g. 100M, are rounded up)."""
TOOLS = {"ext4": ("mkfs.ext4", "resize2fs"), "xfs": ("mkfs.xfs", "xfs_growfs")}


class Runner(Protocol):
    """Runs a command and raises :class:`FilesystemError` with its output when its exit code is not in ``ok``."""

    def __call__(self, argv: Sequence[str], *, ok: tuple[int, ...] = (0,)) -> None: ...


class FilesystemError(NFSProvisionerError, RuntimeError):
    """A filesystem volume could not be made, mounted, grown or removed; the message says why."""


class TooSmall(FilesystemError):
    """The claim is smaller than the filesystem type's minimum (named in the message)."""


class OfflineOnly(FilesystemError):
    """The filesystem cannot grow while mounted here (ext4 without CAP_SYS_RESOURCE); :meth:`grow_offline`."""


def run(argv: Sequence[str], *, ok: tuple[int, ...] = (0,)) -> None:
    try:
        done = subprocess.run(list(argv), capture_output=True, text=True, timeout=600, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise FilesystemError(f"{argv[0]}: {e}") from e
    if done.returncode not in ok:
        out = " ".join((done.stderr or done.stdout).split())[:500]
        raise FilesystemError(f"{' '.join(argv)} failed (exit {done.returncode}): {out}")


def image_bytes(size: int) -> int:
    """The image size for a claim of ``size`` bytes: rounded up to :data:`BLOCK`."""
    return -(-size // BLOCK) * BLOCK


def check_size(fs_type: str, size: int) -> None:
    """Raise :class:`TooSmall` when ``size`` is below what ``fs_type`` can be made in."""
    least = MIN_BYTES[fs_type]
    if size < least:
        raise TooSmall(f"a {fs_type} volume needs at least {least // MiB}Mi; the claim requests {size} bytes "
                       f"(ask for {least // MiB}Mi or more{', or use fsType: ext4' if fs_type == 'xfs' else ''})")


def mkfs_argv(fs_type: str, image: Path, size: int) -> list[str]:
    """``mkfs`` for a fresh sparse image: no discard (nothing to discard), and for ext4 no zeroing of the
    journal (the image reads as zeroes already), no blocks reserved for root, a small journal when small."""
    if fs_type == "ext4":
        journal = ["-J", "size=1"] if size < SMALL_JOURNAL_BELOW else []
        return ["mkfs.ext4", "-q", "-F", "-E", "nodiscard,lazy_journal_init=1", "-m", "0", *journal, str(image)]
    if fs_type == "xfs":
        return ["mkfs.xfs", "-q", "-f", "-K", str(image)]
    raise FilesystemError(f"unknown filesystem type {fs_type!r}")


def ext4_bytes(image: Path) -> int:
    """The size of the ext4 filesystem in ``image`` from its superblock (offset 1024: s_blocks_count_lo at 4,
    s_log_block_size at 24, s_feature_incompat at 96 with 64bit = 0x80, s_blocks_count_hi at 336)."""
    with open(image, "rb") as f:
        sb = os.pread(f.fileno(), 1024, 1024)
    if len(sb) < 340 or int.from_bytes(sb[56:58], "little") != 0xEF53:
        raise FilesystemError(f"{image} holds no ext4 superblock")
    blocks = int.from_bytes(sb[4:8], "little")
    if int.from_bytes(sb[96:100], "little") & 0x80:
        blocks |= int.from_bytes(sb[336:340], "little") << 32
    return blocks * (1024 << int.from_bytes(sb[24:28], "little"))


def grows_online(fs_type: str, *, status: Path = Path("/proc/self/status")) -> bool:
    """Whether a mounted ``fs_type`` can grow here: XFS always; ext4's online resize needs CAP_SYS_RESOURCE
    (the kernel's ext4_resize_begin), which containers and this project's hosts lack by default."""
    if fs_type != "ext4":
        return True
    for line in status.read_text().splitlines():
        if line.startswith("CapEff:"):
            return bool(int(line.split()[1], 16) >> CAP_SYS_RESOURCE & 1)
    return False


def probe(images: Path, run: Runner) -> dict[str, str | None]:
    """Whether filesystem volumes can be made here, per filesystem type: None = yes, else what is missing
    (one line). Attaches and mounts a 4 MiB ext4 image in a temporary directory of ``images`` (which exists)
    and removes it again."""
    problem = _probe_mount(images, run)
    found: dict[str, str | None] = {}
    for fs_type, tools in TOOLS.items():
        missing = [t for t in tools if shutil.which(t) is None]
        found[fs_type] = problem or (f"{', '.join(missing)} not found in PATH (install "
                                     f"{'e2fsprogs' if fs_type == 'ext4' else 'xfsprogs'})" if missing else None)
    return found


def _probe_mount(images: Path, run: Runner) -> str | None:
    if not loops.LOOP_CONTROL.exists():
        return (f"{loops.LOOP_CONTROL} is missing: filesystem volumes need loop devices (in Kubernetes a "
                "privileged pod: deploy/kube-config/statefulset-isolated.yaml or Helm isolation=filesystem)")
    if shutil.which("mkfs.ext4") is None:
        return "mkfs.ext4 not found in PATH (install e2fsprogs)"
    where = Path(tempfile.mkdtemp(prefix=".probe-", dir=images))
    image, mnt = where / "probe.img", where / "mnt"
    mnt.mkdir()
    try:
        with open(image, "wb") as f:
            f.truncate(MIN_BYTES["ext4"])
        run(mkfs_argv("ext4", image, MIN_BYTES["ext4"]))
        try:
            device, fd = loops.attach(image)
        except OSError as e:
            return f"cannot attach a loop device ({e}): filesystem volumes need CAP_SYS_ADMIN and /dev/loop*"
        try:
            loops.mount(device, mnt, "ext4")
        except OSError as e:
            return f"cannot mount a filesystem ({e}): filesystem volumes need CAP_SYS_ADMIN"
        finally:
            os.close(fd)
        loops.unmount(mnt)
        loops.wait_detached(image)
        return None
    except (OSError, FilesystemError) as e:
        return f"probe failed: {e}"
    finally:
        with contextlib.suppress(OSError):
            if os.path.ismount(mnt):
                loops.unmount(mnt)
        shutil.rmtree(where, ignore_errors=True)
