"""Guards for the appliance's own state under the export root, taken before anything there is touched.

- :class:`RootLock`: an exclusive ``flock`` on ``<export root>/.nfs-provisioner.lock``, held for the
  process's life. A second appliance on the same root fails at once and is told who holds it (the pid,
  host and pod the holder wrote into the file). The kernel drops the lock when the holder dies, so a
  crashed appliance never blocks its successor.
- :func:`refuse_symlinks`: the appliance's own files and directories (``.ganesha``, ``.provisioning``,
  ``.volumes``, ``.archive``, the identity, ...) must be what they look like: a symlink anywhere in them
  (outside ``.archive``'s contents, which are user data) makes start-up fail with one line naming it, so
  nothing is ever read from or written to where such a link points.
- :func:`make_run_dir`: the run directory outside the export root (``$TMPDIR/nfsp-*``), and the removal of
  those left by appliances that died.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import stat
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

from nfs_provisioner import tempdirs
from nfs_provisioner.errors import NFSProvisionerError

LOCK_FILE = ".nfs-provisioner.lock"


class StateError(NFSProvisionerError, RuntimeError):
    """The export root's own state is unusable; the message is one line for the user."""


class RootLock:
    def __init__(self, fd: int, path: Path) -> None:
        self._fd: int | None = fd
        self.path = path

    @classmethod
    def acquire(cls, root: Path, *, environ: Mapping[str, str]) -> RootLock:
        path = root / LOCK_FILE
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise StateError(f"{path} is a symlink; refusing to follow it") from e
            raise StateError(f"cannot open the lock file {path}: {e.strerror}") from e
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise StateError(f"{path} is not a regular file; refusing to use it as the lock file")
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 512, 0).decode(errors="replace").strip() or "unknown holder"
                raise StateError(f"export root {root} is in use by another appliance ({holder}); "
                                 f"lock file {path}") from None
            pod = environ.get("POD_NAME") or environ.get("HOSTNAME") or "-"
            note = (f"pid {os.getpid()} on host {socket.gethostname()}, pod {pod}, since "
                    f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}\n").encode()
            os.ftruncate(fd, 0)
            os.pwrite(fd, note, 0)
        except BaseException:
            os.close(fd)
            raise
        return cls(fd, path)

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the only descriptor drops the flock
            self._fd = None


def refuse_symlinks(root: Path, *, names: Iterable[str], walk: Iterable[str]) -> None:
    """Raise StateError naming the first symlink among ``root/<names>`` or anywhere inside ``root/<walk>``."""
    for name in names:
        path = root / name
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            continue
        if stat.S_ISLNK(st.st_mode):
            raise StateError(f"{path} is a symlink (to {os.readlink(path)}); refusing to follow it: replace it "
                             "with the directory or file it stands for")
    for name in walk:
        top = root / name
        if not os.path.isdir(top) or os.path.islink(top):
            continue
        for where, dirs, files in os.walk(top, followlinks=False):
            for entry in (*dirs, *files):
                path = Path(where) / entry
                if os.path.islink(path):
                    raise StateError(f"{path} is a symlink (to {os.readlink(path)}); refusing to follow it")


RUN_DIR_PREFIX = "nfsp-"
"""``$TMPDIR/nfsp-XXXXXXXX``: the run directory of one appliance (short: the bus socket path is limited to 108
bytes). The library loader's ``nfsp-kubeconfig-*`` directories share the prefix and the clean-up."""


def make_run_dir() -> Path:
    """Remove the run directories of appliances that died without removing theirs (SIGKILL, OOM kill), then
    make this one's, owned by this process (see :mod:`nfs_provisioner.tempdirs`): a live appliance's
    directory is never removed, several may run on one host."""
    tempdirs.remove_dead(RUN_DIR_PREFIX)
    return tempdirs.create(RUN_DIR_PREFIX)
