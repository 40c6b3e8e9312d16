"""Clean-up for tests of filesystem volumes: every mount under a test's directory is unmounted and every loop
device attached to an image under it is detached (only those: loop devices of other tests and of the host are
never touched)."""

from __future__ import annotations

import contextlib
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from nfs_provisioner.volumes import loops


def mounts_under(top: Path) -> list[Path]:
    """Mount points at or below ``top`` (deepest first)."""
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = Path(line.split()[4].replace("\\040", " "))
        if point.is_relative_to(top):
            found.append(point)
    return sorted(found, key=lambda p: len(p.parts), reverse=True)


def devices_under(top: Path) -> list[Path]:
    """Loop devices whose image lies below ``top``."""
    found = []
    for entry in loops.SYS_BLOCK.glob("loop[0-9]*"):
        backing = loops.backing_file(entry.name)
        if backing and Path(backing).is_relative_to(top):
            found.append(Path("/dev") / entry.name)
    return found


def clean(top: Path) -> None:
    """Unmount everything below ``top`` (``top`` itself stays mounted), detach its images' loop devices and remove
    the devices the appliance made for them."""
    for point in [p for p in mounts_under(top) if p != top]:
        subprocess.run(["umount", "-l", str(point)], check=False, capture_output=True)
    deadline = time.monotonic() + 5
    while devices_under(top) and time.monotonic() < deadline:
        time.sleep(0.05)
    for device in devices_under(top):
        with contextlib.suppress(OSError):
            loops.detach(device)
    # Devices the appliance made for its images (LOOP_CTL_ADD of the numbers in .images/<pv>.loop), now unbound.
    for remembered in top.rglob("*.loop"):
        with contextlib.suppress(OSError, ValueError):
            number = int(remembered.read_text())
            if loops.backing_file(f"loop{number}") is None:
                loops.remove(number)


@contextlib.contextmanager
def cleaned(top: Path) -> Iterator[Path]:
    try:
        yield top
    finally:
        clean(top)
