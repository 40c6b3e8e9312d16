"""A real, small filesystem for tests that need one full or read-only: ext4 in an image file on a loop device
(``mount -o loop`` releases the device on unmount). NFS-Ganesha 9.14's VFS backend can export it; it refuses a
tmpfs (resolve_posix_filesystem: ENOENT)."""

from __future__ import annotations

import errno
import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def mounted(at: Path, *, image: Path, size: int = 8 * 2**20) -> Iterator[Path]:
    """Mount a fresh ext4 of ``size`` bytes (no blocks reserved for root) at ``at``; unmounted afterwards."""
    at.mkdir(exist_ok=True)
    with open(image, "wb") as f:
        f.truncate(size)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-m", "0", str(image)], check=True)
    subprocess.run(["mount", "-o", "loop,errors=remount-ro", str(image), str(at)], check=True)
    try:
        yield at
    finally:
        subprocess.run(["umount", str(at)], check=True)
        image.unlink()


def remount(at: Path, option: str) -> None:
    """``mount -o remount,<option>`` (``ro`` works only while no file on it is open for writing)."""
    subprocess.run(["mount", "-o", f"remount,{option}", str(at)], check=True)


def turn_read_only(at: Path) -> None:
    """Make the mounted ext4 at ``at`` read-only the way a failing disk does (an ext4 error with
    ``errors=remount-ro``; ``mount -o remount,ro`` is refused while files are open for writing): through its
    own ``/sys/fs/ext4/<loop device>/trigger_fs_error``, so no other filesystem is touched."""
    source = subprocess.run(["findmnt", "-n", "-o", "SOURCE", "--target", str(at)], check=True,
                            capture_output=True, text=True).stdout.strip()
    assert source.startswith("/dev/loop"), source
    Path(f"/sys/fs/ext4/{Path(source).name}/trigger_fs_error").write_text("nfsp test: turn read-only\n")
    try:
        (at / "probe").mkdir()
    except OSError as e:
        assert e.errno == errno.EROFS, e
    else:
        raise AssertionError(f"{at} is still writable")


def fill(directory: Path) -> int:
    """Write into ``directory`` until its filesystem has no block left (ENOSPC on create, write or fsync,
    down to single blocks); the bytes written."""
    written = 0
    for n, chunk in enumerate((2**20, 4096, 4096, 512)):
        try:
            with open(directory / f"fill-{n}", "wb") as f:
                while True:
                    written += f.write(b"\0" * chunk)
                    f.flush()
                    os.fsync(f.fileno())
        except OSError as e:
            assert e.errno == errno.ENOSPC
    return written
