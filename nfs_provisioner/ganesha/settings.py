"""Settings of the Ganesha manager: plain dataclasses, no I/O.

Every field has a default and says what it is for. The appliance maps its
flags (``--grace-period``, ``--device-based-fsids``, ``--export-subnet``, ...)
and environment variables onto these (:meth:`ServerSettings.defaults_from` for the two variables
below: the caller hands over its environment, nothing here reads it); tests build them on temp directories.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Mapping
from pathlib import Path

from nfs_provisioner.volumes.records import RECORDS_DIR

#: Environment variable naming a directory whose templates override the shipped ones.
TEMPLATES_ENV = "NFS_PROVISIONER_GANESHA_TEMPLATES"
#: Environment variable naming an unpacked NFS-Ganesha tree to run instead of the installed one.
GANESHA_ROOT_ENV = "NFS_PROVISIONER_GANESHA_ROOT"
#: Export_Id 152 is skipped: the pseudo root uses Filesystem_Id 152.152.
RESERVED_EXPORT_IDS = frozenset({152})


class Squash(enum.Enum):
    """Ganesha ``Squash`` values the manager writes (the two the provisioner uses, plus the others)."""

    NO_ROOT_SQUASH = "no_root_squash"
    ROOT_ID_SQUASH = "root_id_squash"
    ROOT_SQUASH = "root_squash"
    ALL_SQUASH = "all_squash"


class AccessType(enum.Enum):
    RW = "RW"
    RO = "RO"
    NONE = "None"


@dataclasses.dataclass(frozen=True)
class Ports:
    """Ports Ganesha and its helpers listen on (the Go appliance's fixed set)."""

    nfs: int = 2049
    """NFS_Port (NFSv3 and NFSv4)."""
    mountd: int = 20048
    """MNT_Port (NFSv3 only)."""
    nlm: int = 32803
    """NLM_Port, the lock manager (NFSv3 only)."""
    rquota: int = 875
    """Rquota_Port (NFSv3 only)."""
    statd: int = 662
    """rpc.statd's port (NFSv3 with NLM only)."""
    statd_outgoing: int = 2020
    """rpc.statd's source port for its notifications (NFSv3 only). Its socket to lockd still takes a random
    reserved port of 127.0.0.1; the server starts statd again when that lands on one of Ganesha's."""


@dataclasses.dataclass(frozen=True)
class ServerSettings:
    """How to run one Ganesha instance."""

    export_root: Path
    """Directory holding every volume; exported paths must lie inside it."""
    run_dir: Path
    """Runtime directory for the bus socket, pid files (not persistent)."""
    config_dir: Path | None = None
    """Where ganesha.conf, the export index and one file per export live.
    Default ``<export_root>/.ganesha`` so exports survive a restart of the pod."""
    recovery_dir: Path | None = None
    """NFSv4 RecoveryRoot; default ``<config_dir>/recovery`` (under the export root
    so client state survives restarts)."""
    log_file: Path | None = None
    """Ganesha's log; default ``<config_dir>/ganesha.log``. Written by the manager from Ganesha's stderr, rotated
    to ``<name>.old`` at ``log_max_bytes``."""
    log_max_bytes: int = 1 << 20
    """Size at which Ganesha's log, and each helper's in the run directory, is rotated to ``<name>.old`` (one
    kept): each takes at most about twice this, whatever a client makes them log."""
    records_dir: Path | None = None
    """The appliance's volume records (``nfs_provisioner.volumes.records``); default ``<export_root>/.volumes``.
    While that directory exists, an export file is served only if it exports ``<export_root>/<name>`` (or
    ``<export_root>/.filesystems/<name>``, a filesystem volume's mount) and
    ``<name>.json`` is there: an export file nobody recorded (planted, or left from a volume gone) is kept but
    never given to Ganesha. Without the directory (Ganesha managed on its own) every export file is served."""
    template_dir: Path | None = None
    """Directory of operator templates overriding the shipped ones (any subset).
    Default: the ``NFS_PROVISIONER_GANESHA_TEMPLATES`` environment variable, if set
    (:meth:`defaults_from`)."""
    ganesha_root: Path | None = None
    """An unpacked NFS-Ganesha (``dpkg -x`` of nfs-ganesha, nfs-ganesha-vfs and their libraries,
    e.g. Debian trixie's 6.5 on a bookworm host) to run through its own loader, with
    ``Plugins_Dir`` at its FSALs. Default: the ``NFS_PROVISIONER_GANESHA_ROOT`` environment
    variable, if set (:meth:`defaults_from`); else the installed ``ganesha.nfsd`` on PATH (the image)."""
    ports: Ports = Ports()
    bind_addr: str | None = None
    """Address Ganesha binds; None = all (the appliance). Tests use 127.0.0.1."""
    nfsv3: bool = False
    """Serve NFSv3 too (needs rpcbind, started by the manager; and rpc.statd with ``nlm``)."""
    nlm: bool = True
    """With ``nfsv3``: serve NLM, NFSv3's lock protocol (rpc.statd is started for it). Ganesha never ends a
    grace period early while NLM is on (its clients cannot say they are done reclaiming); without it, v3
    clients must mount with ``nolock`` (their locks are then local to each client) and a grace period ends
    as soon as every recorded NFSv4.1+ client has sent RECLAIM_COMPLETE. Ignored without ``nfsv3``."""
    grace_period: int = 90
    """NFSv4 grace period in seconds, 0..180; 0 means Graceless (no grace at all)."""
    lease_lifetime: int = 6
    """NFSv4 lease in seconds (capped at a non-zero grace period that is smaller). It also paces Ganesha's
    reaper, the only thread that ends a grace period early: it runs every ``min(10, lease // 2)`` seconds
    (nfs_reaper_thread.c; 9.14 alike), so 6 s lets grace end within 3 s of the last client's
    RECLAIM_COMPLETE (with Ganesha's own 60: up to 10 s; with 8, 3.8-4.4 s from serving to another
    client's open through the kernel client, too close to the 5 s aimed at). Clients renew every 2/3 of it
    when idle, and notice a restart as soon; a client silent for longer than the lease stays "courteous" (its state kept
    until another client conflicts, up to Expired_Client_Threshold = 16 such clients)."""
    device_based_fsids: bool = True
    """``fsid_device`` in NFS_CORE_PARAM."""
    dbus_name_prefix: str = ""
    """``Dbus_Name_Prefix``: the bus name becomes ``<prefix>.org.ganesha.nfsd``."""
    dbus_address: str | None = None
    """An existing bus to use instead of starting a private dbus-daemon."""
    export_subnet: str = "*"
    """Default client list of new exports (``--export-subnet``): ``*`` or comma-separated addresses/CIDRs."""
    clients: tuple[str, ...] | None = None
    """If set, the client list of *every* export (overrides ``export_subnet``; empty = nobody): export files
    written with another list are rewritten before Ganesha starts, so it never serves them. The appliance
    sets it and changes it later with ``ExportManager.set_clients``."""
    nofile_limit: int = 16384
    """RLIMIT_NOFILE for ganesha.nfsd (bounded by the hard limit); never 1M."""
    log_level: str = "NIV_EVENT"
    netns: Path | None = None
    """Run every process in this network namespace (``nsenter --net=...``)."""
    mountns: Path | None = None
    """...and in this mount namespace (``nsenter --mount=...``), e.g. one with a private /run so
    that rpcbind's and statd's lock files and sockets do not meet another instance's."""
    restart_backoff: float = 0.5
    """First delay before restarting a Ganesha that exited; doubles up to ``restart_backoff_max``."""
    restart_backoff_max: float = 30.0
    ready_timeout: float = 20.0
    """Seconds to wait for Ganesha to answer on the bus after a start, plus ``ready_timeout_per_export`` per
    export in its configuration."""
    ready_timeout_per_export: float = 0.01
    """Ganesha reads every export at start, walking its list of those it has for each (quadratic): measured
    7 s with 10,000 exports, over 20 s on a loaded 2-core VM. 10,000 exports: 120 s at most."""
    stop_timeout: float = 10.0
    """Seconds to wait for each stage of a stop (admin shutdown, SIGTERM) before escalating."""
    durable_writes: bool = True
    """fsync config files before the rename that publishes them."""

    def __post_init__(self) -> None:
        if not (0 <= self.grace_period <= 180):
            raise ValueError(f"grace_period must be within 0..180, got {self.grace_period}")
        if not (0 <= self.lease_lifetime <= 120):
            raise ValueError(f"lease_lifetime must be within 0..120, got {self.lease_lifetime}")

    @property
    def config_path(self) -> Path:
        return self.config_dir or self.export_root / ".ganesha"

    @property
    def recovery_path(self) -> Path:
        return self.recovery_dir or self.config_path / "recovery"

    @property
    def records_path(self) -> Path:
        return self.records_dir or self.export_root / RECORDS_DIR

    @property
    def log_path(self) -> Path:
        return self.log_file or self.config_path / "ganesha.log"

    def defaults_from(self, environ: Mapping[str, str]) -> ServerSettings:
        """These settings with ``template_dir`` and ``ganesha_root``, where unset, taken from
        ``NFS_PROVISIONER_GANESHA_TEMPLATES`` and ``NFS_PROVISIONER_GANESHA_ROOT`` in ``environ`` (an empty
        value counts as unset): a field given wins over its variable. Pure: the caller (the appliance,
        ``python -m nfs_provisioner.ganesha``, the tests' harness) passes its environment."""
        found = {field: Path(environ[env]) for field, env in (("template_dir", TEMPLATES_ENV),
                                                              ("ganesha_root", GANESHA_ROOT_ENV))
                 if getattr(self, field) is None and environ.get(env)}
        return dataclasses.replace(self, **found) if found else self  # type: ignore[arg-type]

    @property
    def bus_name(self) -> str:
        base = "org.ganesha.nfsd"
        return f"{self.dbus_name_prefix}.{base}" if self.dbus_name_prefix else base
