"""Test helpers for the Ganesha manager: which Ganesha the tests run, servers on
private buses and free ports, the libnfs client binaries, and throw-away network
namespaces.

The tests run the Ganesha the image ships (Debian trixie's 6.5): on a bookworm
host that is the tree ``hack/install-deps`` unpacks under
``$NFSP_CACHE_DIR/ganesha/current/root``, named to every server, appliance and
UML boot the tests start by ``NFS_PROVISIONER_GANESHA_ROOT`` (``select_ganesha``,
called once per run from conftest). ``host_ganesha()`` is the host's installed one
(bookworm's 4.3), which the start-up check must refuse.

Everything a helper starts is remembered and stopped by PID in ``close()``,
which the tests' fixtures call even when a test fails.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from nfs_provisioner.ganesha import binary
from nfs_provisioner.ganesha.metrics import GaneshaMetrics
from nfs_provisioner.ganesha.server import GaneshaServer
from nfs_provisioner.ganesha.settings import GANESHA_ROOT_ENV, Ports, ServerSettings

NFS_TIMEOUT = 30.0  # seconds for one libnfs client command
CACHE = Path(os.environ.get("NFSP_CACHE_DIR", Path.home() / ".cache" / "nfs-provisioner"))
UNPACKED_GANESHA = CACHE / "ganesha" / "current" / "root"


def select_ganesha() -> Path | None:
    """Make every Ganesha the tests start the unpacked one (unless NFS_PROVISIONER_GANESHA_ROOT
    already names one); None when there is none (a host with a new enough Ganesha installed)."""
    if not os.environ.get(GANESHA_ROOT_ENV) and (UNPACKED_GANESHA / binary.TREE_BINARY).is_file():
        os.environ[GANESHA_ROOT_ENV] = str(UNPACKED_GANESHA)
    root = os.environ.get(GANESHA_ROOT_ENV)
    return Path(root) if root else None


def ganesha() -> binary.Ganesha:
    """The Ganesha the tests run (for tests that start ganesha.nfsd by hand)."""
    return binary.locate(select_ganesha())


def host_ganesha_version() -> tuple[int, int, int] | None:
    """The version of the host's installed ganesha.nfsd, or None if there is none."""
    if shutil.which("ganesha.nfsd") is None:
        return None

    def run(argv: Sequence[str]) -> tuple[int, str]:
        done = subprocess.run(list(argv), capture_output=True, text=True, timeout=10, check=False)
        return done.returncode, done.stdout + done.stderr

    return binary.version(binary.Ganesha(), run=run)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Client:
    """The libnfs-utils binaries (nfs-ls, nfs-cat, nfs-cp), optionally inside a network namespace."""

    def __init__(
        self, *, host: str = "127.0.0.1", port: int | None = None, version: int = 4, netns: Path | None = None
    ) -> None:
        self.host, self.port, self.version, self.netns = host, port, version, netns

    def url(self, path: Path | str) -> str:
        query = []
        if self.version == 4:
            query.append("version=4")
        if self.port is not None:
            query.append(f"nfsport={self.port}")
        return f"nfs://{self.host}{path}" + ("?" + "&".join(query) if query else "")

    def _run(self, argv: list[str]) -> subprocess.CompletedProcess[bytes]:
        if self.netns is not None:
            argv = ["nsenter", f"--net={self.netns}", *argv]
        return subprocess.run(argv, capture_output=True, timeout=NFS_TIMEOUT, check=False)

    def ls(self, path: Path | str) -> subprocess.CompletedProcess[bytes]:
        return self._run(["nfs-ls", self.url(path)])

    def cat(self, path: Path | str) -> subprocess.CompletedProcess[bytes]:
        return self._run(["nfs-cat", self.url(path)])

    def put(self, data: bytes, path: Path | str) -> subprocess.CompletedProcess[bytes]:
        """Copy ``data`` to ``path`` with nfs-cp (NFSv4 with libnfs 4.0: at most 3944 bytes)."""
        with tempfile.NamedTemporaryFile(prefix="nfsp-put-") as f:
            f.write(data)
            f.flush()
            return self._run(["nfs-cp", f.name, self.url(path)])


class Netns:
    """A network namespace with lo up, carrying ``addresses`` besides 127.0.0.1, and a mount
    namespace whose /run is a private tmpfs (rpcbind keeps /run/rpcbind.lock and
    /run/rpcbind.sock there: two test runs must not meet each other's)."""

    def __init__(self, *, addresses: tuple[str, ...] = ()) -> None:
        self.name = f"nfsp-{uuid.uuid4().hex[:10]}"
        self.path = Path("/run/netns") / self.name
        self.mount_dir = Path(tempfile.mkdtemp(prefix="nfsp-mnt-"))
        self.mountns = self.mount_dir / "mnt"
        self._bound = False
        subprocess.run(["ip", "netns", "add", self.name], check=True)
        try:
            # A persistent mount namespace is a bind mount of its nsfs file, which must live
            # on a private mount.
            subprocess.run(["mount", "--bind", str(self.mount_dir), str(self.mount_dir)], check=True)
            self._bound = True
            subprocess.run(["mount", "--make-private", str(self.mount_dir)], check=True)
            self.mountns.touch()
            subprocess.run(
                ["unshare", f"--mount={self.mountns}", "--propagation", "private",
                 "mount", "-t", "tmpfs", "-o", "mode=0755", "nfsp-run", "/run"],
                check=True,
            )
            self.exec(["ip", "link", "set", "lo", "up"])
            # No loadable modules here (no dummy/veth): extra addresses go on lo. A
            # client connecting to one of them has it as its source address too.
            for a in addresses:
                self.exec(["ip", "addr", "add", a, "dev", "lo"])
        except BaseException:
            self.close()
            raise

    def exec(self, argv: list[str]) -> None:
        subprocess.run(["ip", "netns", "exec", self.name, *argv], check=True, capture_output=True)

    def close(self) -> None:
        subprocess.run(["ip", "netns", "del", self.name], check=False, capture_output=True)
        subprocess.run(["umount", str(self.mountns)], check=False, capture_output=True)
        if self._bound:
            subprocess.run(["umount", str(self.mount_dir)], check=False, capture_output=True)
        shutil.rmtree(self.mount_dir, ignore_errors=True)


class Harness:
    """Builds servers on a test's temp directory; ``close()`` stops them all (by PID)."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.export_root = tmp_path / "export"
        self.export_root.mkdir(exist_ok=True)
        # Unix socket paths are limited to 108 bytes: keep the run dir short.
        self.run_root = Path(tempfile.mkdtemp(prefix="nfsp-g-"))
        self.servers: list[GaneshaServer] = []
        self.netns: list[Netns] = []
        self.registry = CollectorRegistry()
        self.metrics = GaneshaMetrics(registry=self.registry)
        self.port = free_port()
        self.prefix = f"t{uuid.uuid4().hex[:12]}"

    def settings(self, **overrides: Any) -> ServerSettings:
        kwargs: dict[str, Any] = {
            "export_root": self.export_root,
            "run_dir": self.run_root / f"run{len(self.servers)}",
            "ports": Ports(nfs=self.port),
            "bind_addr": "127.0.0.1",
            "dbus_name_prefix": self.prefix,
            "grace_period": 0,
            "restart_backoff": 0.1,
        }
        kwargs.update(overrides)
        return ServerSettings(**kwargs).defaults_from(os.environ)

    def server(self, *, start: bool = True, id_range: tuple[int, int] | None = None, **overrides: Any) -> GaneshaServer:
        extra: dict[str, Any] = {"id_range": id_range} if id_range else {}
        srv = GaneshaServer(self.settings(**overrides), metrics=self.metrics, **extra)
        self.servers.append(srv)
        if start:
            srv.start()
        return srv

    def new_metrics(self) -> GaneshaMetrics:
        self.registry = CollectorRegistry()
        self.metrics = GaneshaMetrics(registry=self.registry)
        return self.metrics

    def volume(self, name: str, *, content: dict[str, bytes] | None = None) -> Path:
        d = self.export_root / name
        d.mkdir(mode=0o777, exist_ok=True)
        for fname, data in (content or {}).items():
            (d / fname).write_bytes(data)
        return d

    def make_netns(self, *, addresses: tuple[str, ...] = ()) -> Netns:
        ns = Netns(addresses=addresses)
        self.netns.append(ns)
        return ns

    def client(self, **kw: Any) -> Client:
        kw.setdefault("port", self.port)
        return Client(**kw)

    def close(self) -> None:
        """Stop every server (by PID), then remove namespaces and temp dirs; the first error is
        raised only after everything was attempted."""
        failures: list[BaseException] = []
        for srv in reversed(self.servers):
            try:
                srv.stop()
            except Exception as e:  # noqa: BLE001 - keep stopping the others, re-raised below
                failures.append(e)
        for ns in self.netns:
            ns.close()
        shutil.rmtree(self.run_root, ignore_errors=True)
        if failures:
            raise failures[0]


# What Ganesha 6.5 logs at WARN or above for any configuration, ours included: the defaults
# it deprecates itself, the RADOS URL library Debian does not ship, PR_SET_IO_FLUSHER refused
# (allowed on purpose), and no rpcbind to register with when serving NFSv4 only.
UNAVOIDABLE_COMPLAINTS = (
    "Missing RADOS URLs backend library",
    "domainname in NFSv4 config section will soon be deprecated",
    "Use idmapped_user_time_validity under DIRECTORY_SERVICES",
    "Use idmapped_group_time_validity under DIRECTORY_SERVICES",
    "Failed to set PR_SET_IO_FLUSHER due to EPERM, ignoring",
    "Cannot register NFS V4 on TCP",
)
_SEVERE = (":WARN :", ":MAJ :", ":CRIT :", ":FATAL :")


def config_complaints(log_text: str) -> list[str]:
    """Ganesha's log lines at WARN or above, less ``UNAVOIDABLE_COMPLAINTS``."""
    return [line for line in log_text.splitlines()
            if any(s in line for s in _SEVERE) and not any(u in line for u in UNAVOIDABLE_COMPLAINTS)]
