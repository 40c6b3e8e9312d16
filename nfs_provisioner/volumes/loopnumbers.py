"""The loop device number of each filesystem volume's image (``nfs_provisioner.volumes.filesystems``): asked for
again at every mount, so a remount keeps the device number and NFS-Ganesha, which derives file handles from it,
keeps clients' handles valid. Kept as a hint in ``<images>/<name>.loop``.
"""

from __future__ import annotations

import contextlib
import os
import zlib
from pathlib import Path

from nfs_provisioner import fileio
from nfs_provisioner.volumes import loops

DEVICE = ".loop"
"""``.images/<name>.loop``: the loop device number the image was last attached to, taken again when free (so a
remount keeps the device number, and NFS-Ganesha, which derives file handles from it, keeps clients' handles)."""
PREFERRED_BASE, PREFERRED_SPAN = 4096, 2**19
"""Loop device numbers asked for first: 4096 to 4096 + 2**19 (the kernel allows minors up to 2**20)."""


def last_device(images: Path, name: str) -> int:
    """The loop device number to ask for: the one the image had last, else one derived from the name, far
    above the numbers ``LOOP_CTL_GET_FREE`` hands out (the lowest free ones), so that after a restart it is
    still free (measured: with first-free numbers, another program took the number meanwhile and the
    clients' handles went stale)."""
    try:
        return int((images / f"{name}{DEVICE}").read_text())
    except (FileNotFoundError, ValueError):
        return PREFERRED_BASE + zlib.crc32(name.encode()) % PREFERRED_SPAN


def forget_device(images: Path, name: str) -> None:
    """After the volume is unmounted for good: remove its loop device from the kernel when it is one of the
    numbers this module asks for (a device made for it), and the remembered number."""
    number = last_device(images, name)
    if PREFERRED_BASE <= number < PREFERRED_BASE + PREFERRED_SPAN and not loops.backing_file(f"loop{number}"):
        loops.remove(number)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(images / f"{name}{DEVICE}")


def remember_device(images: Path, name: str, device: Path) -> None:
    if not (images / f"{name}{DEVICE}").exists() or last_device(images, name) != loops.device_number(device):
        fileio.atomic_write(images / f"{name}{DEVICE}", f"{loops.device_number(device)}\n", mode=0o600,
                           durable=False)  # a hint
