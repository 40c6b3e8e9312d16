"""The Go nfs-provisioner's real output (tests/fixtures/go-nfs-provisioner, see its README) and the Ganesha it
ran with: its export root extracted, its ``vfs.conf`` served unchanged by the host's Debian 12 Ganesha 4.3 at
the fixture's own path ``/export`` (a private mount namespace with the extracted root bind-mounted there, and a
private network namespace with only lo: the Go config listens on every address, 2049 and the fixed NFSv3 ports),
and the file handles a client takes from it.

Every process started here is stopped by PID in ``close()``."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from tests.support import nfsraw
from tests.support.ganesha_env import Netns
from tests.support.paths import FIXTURES

FIXTURE = FIXTURES / "go-nfs-provisioner"
GO_EXPORT_ROOT = Path("/export")
"""Where the Go provisioner's pod had its export root: every path in its vfs.conf and PVs starts with it."""
GO_MNT_PORT = 20048
"""``MNT_Port`` of the Go provisioner's vfs.conf (NFS itself on Ganesha's default 2049)."""
CLIENT_UID, CLIENT_GID = 1000, 1234
"""Who wrote the fixture's files: every one of them is readable by this user (the squashed volume's root-owned
``hello.txt`` is mode 0660 owner 1000; the ``gid`` volume's top directory is ``d---rws--x`` group 1234)."""
FILES = ("hello.txt", "app/logs/app.log")
DIRS = ("", "app", "app/logs")
SYMLINK = "app/current"
# What each directory's handle is checked with: a LOOKUP from it and a READ of that file.
FILE_BELOW = {"": "hello.txt", "app": "logs/app.log", "app/logs": "app.log"}


@contextlib.contextmanager
def export_mountpoint() -> Iterator[Path]:
    """:data:`GO_EXPORT_ROOT` as a directory to bind-mount on inside private mount namespaces. A new machine has
    no /export: it is made here (empty, 0755) and removed again at the end if it was made here and is still
    empty, so the host keeps no trace. The suite runs serially; two suites at once on one machine could remove
    it under the other's mounts."""
    made = False
    try:
        GO_EXPORT_ROOT.mkdir(mode=0o755)
        made = True
    except FileExistsError:
        if not GO_EXPORT_ROOT.is_dir():
            raise
    try:
        yield GO_EXPORT_ROOT
    finally:
        if made:
            with contextlib.suppress(OSError):
                os.rmdir(GO_EXPORT_ROOT)


@dataclasses.dataclass(frozen=True)
class GoExport:
    """One EXPORT block the Go provisioner appended to its vfs.conf."""

    export_id: int
    path: Path
    squash: str

    @property
    def name(self) -> str:
        return self.path.name


def go_exports(vfs_conf: str) -> list[GoExport]:
    """The VFS EXPORT blocks of a Go vfs.conf (its default base's pseudo-root block, Export_Id 0, is not one)."""
    out = []
    for block in re.findall(r"EXPORT\s*\{(.*?FSAL\s*\{.*?\}\s*)\}", vfs_conf, re.S):
        if not re.search(r"Name\s*=\s*VFS\s*;", block):
            continue
        fields = dict(re.findall(r"^\s*(\w+)\s*=\s*([^;]*);", block, re.M))
        out.append(GoExport(int(fields["Export_Id"]), Path(fields["Path"]), fields["Squash"]))
    return out


def extract(dest: Path) -> Path:
    """The fixture's export root, extracted with its owners and modes into ``dest`` (created)."""
    dest.mkdir(parents=True)
    subprocess.run(["tar", "-xpf", str(FIXTURE / "export-root.tar"), "--numeric-owner", "-C", str(dest)],
                   check=True)
    return dest


@dataclasses.dataclass(frozen=True)
class Taken:
    """A handle a client took, and what reading through it gave (the file's bytes, a directory's file below
    it, a symlink's target)."""

    path: str
    """``<volume>/<path in it>``."""
    fh: bytes
    data: bytes


def read_through(c: nfsraw.Nfs4, fh: bytes, rel: str) -> nfsraw.Compound4:
    """PUTFH and what reads through that handle: READ a file, READLINK a symlink, LOOKUP + READ from a directory."""
    if rel in DIRS:
        return c.compound([c.putfh(fh), *(c.lookup(n) for n in FILE_BELOW[rel].split("/")), c.read()])
    if rel == SYMLINK:
        return c.compound([c.putfh(fh), c.readlink()])
    return c.compound([c.putfh(fh), c.read()])


def data_of(r: nfsraw.Compound4) -> bytes:
    if r.status != nfsraw.NFS4_OK:
        raise AssertionError(f"{r.status_name} after {[nfsraw.nfs4_status_name(o.status or 0) for o in r.ops]}")
    return r.ops[-1].data


def take_v4(exports: list[GoExport], *, port: int, netns: Path | None = None, host: str = "127.0.0.1") -> list[Taken]:
    """Every fixture file, directory and symlink of every export: its handle (LOOKUP from the pseudo root along
    the export's path) and what reads through it."""
    taken = []
    with nfsraw.Nfs4(host=host, port=port, uid=CLIENT_UID, gid=CLIENT_GID, netns=netns) as c:
        for e in exports:
            for rel in (*DIRS, *FILES, SYMLINK):
                names = [*e.path.parts[1:], *(p for p in rel.split("/") if p)]
                fh = c.path_fh(*names)
                taken.append(Taken(f"{e.name}/{rel}", fh, data_of(read_through(c, fh, rel))))
    return taken


def reread_v4(taken: list[Taken], *, port: int, netns: Path | None = None, host: str = "127.0.0.1") -> dict[str, str]:
    """Read through each taken handle again: path -> "same", or what went wrong."""
    out = {}
    with nfsraw.Nfs4(host=host, port=port, uid=CLIENT_UID, gid=CLIENT_GID, netns=netns) as c:
        for t in taken:
            r = read_through(c, t.fh, t.path.split("/", 1)[1])
            out[t.path] = ("same" if r.status == nfsraw.NFS4_OK and r.ops[-1].data == t.data
                           else r.status_name if r.status != nfsraw.NFS4_OK else f"other bytes {r.ops[-1].data!r}")
    return out


def take_v3(exports: list[GoExport], *, port: int, mnt_port: int, netns: Path) -> list[Taken]:
    """NFSv3: each export's root handle (MNT) and its files' (LOOKUP), with what READ gives."""
    taken = []
    for e in exports:
        with nfsraw.Mount3(host="127.0.0.1", port=mnt_port, uid=CLIENT_UID, gid=CLIENT_GID, netns=netns) as m:
            root = m.mnt(str(e.path))
        assert root.status == nfsraw.NFS3_OK, f"MNT {e.path}: {root.status}"
        with nfsraw.Nfs3(host="127.0.0.1", port=port, uid=CLIENT_UID, gid=CLIENT_GID, netns=netns) as c:
            fh = c.lookup(root.fh, "hello.txt").fh
            taken.append(Taken(f"{e.name}/", root.fh, b""))
            taken.append(Taken(f"{e.name}/hello.txt", fh, c.read(fh).data))
    return taken


def reread_v3(taken: list[Taken], *, port: int, netns: Path, host: str = "127.0.0.1") -> dict[str, str]:
    """A v3 root handle is checked by a LOOKUP of hello.txt through it, a file's by READ."""
    out = {}
    with nfsraw.Nfs3(host=host, port=port, uid=CLIENT_UID, gid=CLIENT_GID, netns=netns) as c:
        files = {t.path: t for t in taken if not t.path.endswith("/")}
        for t in taken:
            if t.path.endswith("/"):
                r = c.lookup(t.fh, "hello.txt")
                ok = r.status == nfsraw.NFS3_OK and r.fh == files[t.path + "hello.txt"].fh
            else:
                r = c.read(t.fh)
                ok = r.status == nfsraw.NFS3_OK and r.data == t.data
            out[t.path] = "same" if ok else f"status {r.status}"
    return out


class GoGanesha:
    """The host's Ganesha 4.3 serving the fixture's vfs.conf unchanged (NFSv3 + v4, Ganesha's default port
    2049, MNT on 20048) at ``/export`` inside a private network + mount namespace: the export root ``root`` is
    bind-mounted on /export there, a tmpfs covers /var/lib/nfs (its default RecoveryRoot) and /run (rpcbind's
    files), so nothing on the host changes."""

    BINARY = "/usr/bin/ganesha.nfsd"  # Debian 12's nfs-ganesha 4.3, as the Go provisioner's images run it

    def __init__(self, root: Path, work: Path) -> None:
        self.root, self.work = root, work
        self._mountpoint = contextlib.ExitStack()
        self._mountpoint.enter_context(export_mountpoint())
        self.ns = Netns()
        self.procs: list[subprocess.Popen[bytes]] = []
        self.log = work / "ganesha-4.3.log"
        try:
            self._enter(["mount", "--bind", str(root), str(GO_EXPORT_ROOT)], check=True)
            self._enter(["mount", "-t", "tmpfs", "-o", "mode=0755", "nfsp-go-recovery", "/var/lib/nfs"], check=True)
        except BaseException:
            self.ns.close()
            self._mountpoint.close()
            raise

    def _argv(self, argv: list[str]) -> list[str]:
        return ["nsenter", f"--net={self.ns.path}", f"--mount={self.ns.mountns}", *argv]

    def _enter(self, argv: list[str], *, check: bool) -> None:
        subprocess.run(self._argv(argv), check=check, capture_output=True)

    def start(self) -> None:
        self.procs.append(subprocess.Popen(self._argv(["rpcbind", "-f", "-w"])))
        deadline = time.monotonic() + 10
        while not Path(f"/proc/{self.procs[0].pid}").exists() or not self._rpcbind_up():
            assert time.monotonic() < deadline, "rpcbind did not start"
            time.sleep(0.05)
        self.procs.append(subprocess.Popen(self._argv(
            [self.BINARY, "-F", "-L", str(self.log), "-f", str(GO_EXPORT_ROOT / "vfs.conf"),
             "-p", str(self.work / "ganesha-4.3.pid"), "-N", "NIV_EVENT"])))
        deadline = time.monotonic() + 30
        while True:
            try:
                with nfsraw.Nfs4(host="127.0.0.1", port=2049, netns=self.ns.path) as c:
                    c.path_fh(*GO_EXPORT_ROOT.parts[1:])
                return
            except (OSError, nfsraw.RpcError):
                assert self.procs[-1].poll() is None, f"Ganesha 4.3 exited:\n{self.log.read_text()[-3000:]}"
                assert time.monotonic() < deadline, f"Ganesha 4.3 not serving:\n{self.log.read_text()[-3000:]}"
                time.sleep(0.1)

    def _rpcbind_up(self) -> bool:
        return subprocess.run(self._argv(["rpcinfo", "-p", "127.0.0.1"]), capture_output=True).returncode == 0

    def stop(self) -> None:
        """SIGTERM (Ganesha shuts down cleanly on it), then rpcbind; by PID."""
        for p in reversed(self.procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(20)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        self.procs.clear()

    def close(self) -> None:
        try:
            self.stop()
            self.ns.close()
        finally:
            self._mountpoint.close()


def version_of_host_ganesha() -> str:
    done = subprocess.run([GoGanesha.BINARY, "-v"], capture_output=True, text=True, check=False)
    m = re.search(r"Release = V?(\S+)", done.stdout + done.stderr)
    return m.group(1) if m else "?"
