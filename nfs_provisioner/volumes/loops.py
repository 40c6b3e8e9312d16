"""Loop devices and mounts through the kernel's own interfaces (``ioctl``, ``mount(2)``), no helper binaries.

- :func:`attach`: ``LOOP_CTL_GET_FREE`` on ``/dev/loop-control``, then ``LOOP_CONFIGURE`` (Linux >= 5.8) with
  ``LO_FLAGS_AUTOCLEAR``: the device detaches itself when its last user goes. The caller keeps the returned
  descriptor open until the filesystem is mounted (the mount is then the user), so a process killed between
  the two leaves no attached device behind.
- :func:`backing_devices`: which loop devices an image is attached to (``/sys/block/loop*/loop/backing_file``).
- :func:`mount` / :func:`unmount`: ``mount(2)`` / ``umount2(2)``.

Device nodes missing in ``/dev`` (a container's ``/dev`` does not follow devices made after it started) are
created from ``/sys/class/block/loopN/dev``.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os
import stat
import struct
import time
from pathlib import Path

LOOP_CONTROL = Path("/dev/loop-control")
SYS_BLOCK = Path("/sys/block")
LOOP_CTL_ADD = 0x4C80
LOOP_CTL_REMOVE = 0x4C81
LOOP_CTL_GET_FREE = 0x4C82
LOOP_CONFIGURE = 0x4C0A
LOOP_SET_CAPACITY = 0x4C07
LOOP_CLR_FD = 0x4C01
LO_FLAGS_AUTOCLEAR = 4
MS_NOSUID, MS_NODEV, MS_NOEXEC = 2, 4, 8
MOUNT_FLAGS = MS_NOSUID | MS_NODEV | MS_NOEXEC
"""The appliance serves the files, it never runs them: no set-id bits, devices or programs from a volume."""
_INFO64 = struct.Struct("=QQQQQIIII64s64s32s2Q")  # struct loop_info64, 232 bytes
_CONFIG = struct.Struct(f"=II{_INFO64.size}s8Q")  # struct loop_config, 304 bytes
ATTEMPTS = 16
"""Free devices tried when another process takes the one the kernel offered first (EBUSY)."""

_libc = ctypes.CDLL(None, use_errno=True)


class LoopError(OSError):
    """A loop device or mount operation failed; ``errno`` and the message say which."""


def _device_node(number: int) -> Path:
    """``/dev/loop<number>``, created (a block device node) when the kernel has the device but /dev lacks it."""
    node = Path(f"/dev/loop{number}")
    if not node.exists():
        major, minor = (int(x) for x in (SYS_BLOCK / f"loop{number}" / "dev").read_text().split(":"))
        with contextlib.suppress(FileExistsError):
            os.mknod(node, 0o660 | stat.S_IFBLK, os.makedev(major, minor))
    return node


def attach(image: Path, *, read_only: bool = False, prefer: int | None = None) -> tuple[Path, int]:
    """Attach ``image`` to a free loop device (autoclear); returns the device and an open descriptor of it.

    ``prefer``: the device number to take when it is free (the one the image had before: NFS-Ganesha derives a
    filesystem's id, and so its file handles, from the device number). Close the descriptor once the device is
    mounted (or to detach it again)."""
    flags = os.O_RDONLY if read_only else os.O_RDWR
    backing = os.open(image, flags | os.O_CLOEXEC)
    try:
        info = _INFO64.pack(0, 0, 0, 0, 0, 0, 0, 0, LO_FLAGS_AUTOCLEAR | (1 if read_only else 0),
                            os.fsencode(image)[:63], b"", b"", 0, 0)
        config = _CONFIG.pack(backing, 0, info, *([0] * 8))
        control = os.open(LOOP_CONTROL, os.O_RDWR | os.O_CLOEXEC)
        try:
            for attempt in range(ATTEMPTS):
                number = -1
                if attempt == 0 and prefer is not None:
                    try:
                        fcntl.ioctl(control, LOOP_CTL_ADD, prefer)
                        number = prefer
                    except FileExistsError:  # it exists, maybe free
                        number = prefer
                    except OSError:  # e.g. beyond the kernel's max_loop: any free one
                        pass
                if number < 0:
                    number = fcntl.ioctl(control, LOOP_CTL_GET_FREE)
                node = _device_node(number)
                fd = os.open(node, flags | os.O_CLOEXEC)
                try:
                    fcntl.ioctl(fd, LOOP_CONFIGURE, config)
                except OSError as e:
                    os.close(fd)
                    if e.errno == errno.EBUSY:  # taken (the preferred one, or by someone else since GET_FREE)
                        continue
                    raise LoopError(e.errno, f"LOOP_CONFIGURE {node} with {image}: {e.strerror}") from e
                return node, fd
        finally:
            os.close(control)
    finally:
        os.close(backing)
    raise LoopError(errno.EBUSY, f"no free loop device for {image} after {ATTEMPTS} attempts")


def device_number(device: Path) -> int:
    """N of ``/dev/loopN``."""
    return int(device.name.removeprefix("loop"))


def backing_file(device: str) -> str | None:
    """The image a loop device (``loopN`` or ``/dev/loopN``) is attached to; None when it is not attached."""
    name = Path(device).name
    try:
        text = (SYS_BLOCK / name / "loop" / "backing_file").read_text().rstrip("\n")
    except (FileNotFoundError, NotADirectoryError):
        return None
    return text.removesuffix(" (deleted)")


def backing_devices(image: Path) -> list[Path]:
    """Every loop device attached to ``image`` (by path; normally none or one)."""
    found = []
    for entry in SYS_BLOCK.glob("loop[0-9]*"):
        if backing_file(entry.name) == str(image):
            found.append(Path("/dev") / entry.name)
    return sorted(found)


def device_of(dev: int) -> Path | None:
    """The loop device whose number (``st_dev`` of a file on it) is ``dev``; None when it is no loop device."""
    try:
        name = os.readlink(f"/sys/dev/block/{os.major(dev)}:{os.minor(dev)}").rsplit("/", 1)[-1]
    except OSError:
        return None
    return Path("/dev") / name if name.startswith("loop") else None


def attachments() -> dict[str, list[Path]]:
    """Every attached loop device by its image (one pass over ``/sys/block``)."""
    found: dict[str, list[Path]] = {}
    for entry in SYS_BLOCK.glob("loop[0-9]*"):
        backing = backing_file(entry.name)
        if backing is not None:
            found.setdefault(backing, []).append(Path("/dev") / entry.name)
    return found


def wait_device_detached(device: Path, image: Path, *, timeout: float = 10.0) -> bool:
    """Wait until ``device`` is no longer attached to ``image`` (autoclear after ``umount`` is asynchronous);
    whether it is detached."""
    deadline = time.monotonic() + timeout
    while backing_file(device.name) == str(image):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.002)
    return True


def wait_detached(image: Path, *, timeout: float = 10.0) -> list[Path]:
    """Wait until no loop device is attached to ``image`` (an autoclear device detaches asynchronously after
    ``umount``); the devices still attached after ``timeout`` seconds (empty: all gone)."""
    deadline = time.monotonic() + timeout
    while True:
        left = backing_devices(image)
        if not left or time.monotonic() >= deadline:
            return left
        time.sleep(0.01)


def detach(device: Path) -> None:
    """``LOOP_CLR_FD``: detach ``device`` now (used only for devices attached to one of the appliance's own images
    that stay attached after their unmount). Already detached is fine."""
    fd = os.open(device, os.O_RDONLY | os.O_CLOEXEC)
    try:
        fcntl.ioctl(fd, LOOP_CLR_FD)
    except OSError as e:
        if e.errno != errno.ENXIO:
            raise LoopError(e.errno, f"LOOP_CLR_FD {device}: {e.strerror}") from e
    finally:
        os.close(fd)


def remove(number: int, *, timeout: float = 1.0) -> bool:
    """``LOOP_CTL_REMOVE``: remove the (detached) loop device ``number`` from the kernel, retrying while it is
    briefly busy (just detached, or opened by a device prober); False when it is still in use or gone."""
    deadline = time.monotonic() + timeout
    control = os.open(LOOP_CONTROL, os.O_RDWR | os.O_CLOEXEC)
    try:
        while True:
            try:
                fcntl.ioctl(control, LOOP_CTL_REMOVE, number)
                return True
            except OSError as e:
                if e.errno != errno.EBUSY or time.monotonic() >= deadline:
                    return False
            time.sleep(0.01)
    finally:
        os.close(control)


def set_capacity(device: Path) -> None:
    """``LOOP_SET_CAPACITY``: the device takes its image's new size (after the image grew)."""
    fd = os.open(device, os.O_RDONLY | os.O_CLOEXEC)
    try:
        fcntl.ioctl(fd, LOOP_SET_CAPACITY)
    except OSError as e:
        raise LoopError(e.errno, f"LOOP_SET_CAPACITY {device}: {e.strerror}") from e
    finally:
        os.close(fd)


def mount(device: Path, target: Path, fs_type: str, *, flags: int = MOUNT_FLAGS, data: str = "") -> None:
    if _libc.mount(os.fsencode(device), os.fsencode(target), fs_type.encode(), ctypes.c_ulong(flags),
                   data.encode() or None) != 0:
        err = ctypes.get_errno()
        raise LoopError(err, f"mount -t {fs_type} {device} {target}: {os.strerror(err)}")


def unmount(target: Path) -> None:
    if _libc.umount2(os.fsencode(target), 0) != 0:
        err = ctypes.get_errno()
        raise LoopError(err, f"umount {target}: {os.strerror(err)}")
