"""Command line of ``nfs-provisioner`` (also ``python -m nfs_provisioner``).

Every flag is also an environment variable: ``--grace-period`` is
``NFS_PROVISIONER_GRACE_PERIOD``. A flag wins over its variable, the variable
over the default. Go-style single-dash flags (``-grace-period=0``) from the
original project's manifests are accepted too. Boolean flags take an optional
value: ``--run-server``, ``--run-server=false``. Numbers are ASCII only
(``int()`` would also read ``١٢٣``) and finite.

The original's glog flags (``-v=4``, ``-logtostderr``, ``-alsologtostderr``,
``-stderrthreshold=INFO``, ``-log_dir=/x``, ``-vmodule``, ``-log_backtrace_at``;
one or two dashes), which its manifests and Helm ``extraArgs`` pass, are
accepted with one warning each: ``-v`` sets the log level (4 or more: DEBUG,
else INFO) unless ``--log-level`` is given; the others change nothing, the log
always goes to stderr.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import nfs_provisioner
from nfs_provisioner import settings as settings_mod

ENV_PREFIX = "NFS_PROVISIONER_"


def parse_bool(value: str) -> bool:
    v = value.strip().lower()
    if v in ("1", "true", "yes", "on", "t", "y"):
        return True
    if v in ("0", "false", "no", "off", "f", "n"):
        return False
    raise ValueError(f"{value!r} is not a boolean (true/false)")


_INT = re.compile(r"[+-]?[0-9]{1,18}")
_FLOAT = re.compile(r"[+-]?([0-9]{1,18}(\.[0-9]{0,18})?|\.[0-9]{1,18})([eE][+-]?[0-9]{1,3})?")


def parse_int(value: str) -> int:
    """An integer in ASCII digits (``int()`` also takes ``١٢٣``, ``1_000`` and 4000-digit strings)."""
    v = value.strip()
    if not _INT.fullmatch(v):
        raise ValueError("not an integer")
    return int(v)


def parse_float(value: str) -> float:
    """A finite number in ASCII digits (``float()`` also takes ``nan``, ``inf`` and ``١٢٣``)."""
    v = value.strip()
    if not _FLOAT.fullmatch(v) or not math.isfinite(f := float(v)):
        raise ValueError("not a finite number")
    return f


def parse_duration(value: str) -> float:
    """Seconds from '15s', '500ms', '2m', '1h' or a plain number of seconds."""
    v = value.strip().lower()
    for suffix, scale in (("ms", 0.001), ("s", 1.0), ("m", 60.0), ("h", 3600.0)):
        if v.endswith(suffix):
            return parse_float(v[: -len(suffix)]) * scale
    return parse_float(v)


def _optional_str(value: str) -> str | None:
    return value or None


def _optional_path(value: str) -> Path | None:
    return Path(value) if value else None


@dataclass(frozen=True)
class Flag:
    name: str
    """Flag name without dashes; the env var is ENV_PREFIX + NAME_WITH_UNDERSCORES."""
    field: str
    """Settings field, or 'leader_election.<field>'."""
    parse: Callable[[str], Any]
    help: str

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.name.upper().replace("-", "_")


FLAGS: tuple[Flag, ...] = (
    Flag("provisioner", "provisioner", str, "provisioner name StorageClasses refer to (default example.com/nfs)"),
    Flag("kubeconfig", "kubeconfig", _optional_path, "kubeconfig for running out of cluster"),
    Flag("master", "master", _optional_str, "API server URL (overrides the kubeconfig's)"),
    Flag("run-server", "run_server", parse_bool, "start and supervise NFS-Ganesha (default true)"),
    Flag("use-ganesha", "use_ganesha", parse_bool, "export through Ganesha; false = kernel exportfs (default true)"),
    Flag("grace-period", "grace_period", parse_int, "NFSv4 grace period in seconds, 0-180 (default 90)"),
    Flag("enable-xfs-quota", "enable_xfs_quota", parse_bool, "XFS project quota per volume (default false)"),
    Flag("server-hostname", "server_hostname", _optional_str, "server address in PVs, out of cluster only"),
    Flag("export-subnet", "export_subnet", str,
         "clients allowed: nodes, node-ips (no pod-CIDR gateways), '*' or comma-separated IPs/CIDRs, which "
         "may include nodes/node-ips (default nodes; out of cluster nodes + loopback)"),
    Flag("max-exports", "max_exports", parse_int, "maximum number of volumes exported, -1 = no limit (default -1)"),
    Flag("device-based-fsids", "device_based_fsids", parse_bool, "fsids from the device (default true)"),
    Flag("export-root", "export_root", Path, "directory holding the volumes (default /export)"),
    Flag("nfs-bind-address", "nfs_bind_address", _optional_str, "address Ganesha listens on (default all)"),
    Flag("nfs-port", "nfs_port", parse_int, "NFS port (default 2049)"),
    Flag("nfsv3", "nfsv3", parse_bool, "serve NFSv3 too, with rpcbind and rpc.statd (default true)"),
    Flag("nfsv3-locking", "nfsv3_locking", parse_bool,
         "with --nfsv3: NLM locks (rpc.statd); false = v3 clients mount with nolock and a restart's grace ends "
         "as soon as NFSv4 clients have reclaimed (default true)"),
    Flag("metrics-address", "metrics_address", str, "host:port for /metrics and health, '' = off (default :9090)"),
    Flag("kube-api-qps", "kube_api_qps", parse_float, "client QPS to the API server (default 1000)"),
    Flag("kube-api-burst", "kube_api_burst", parse_int, "client burst to the API server (default 2000)"),
    Flag("threadiness", "threadiness", parse_int, "claim/volume workers (default 16)"),
    Flag("ganesha-templates", "ganesha_templates", _optional_path, "directory overriding the Ganesha templates"),
    Flag("leader-elect", "leader_election.enabled", parse_bool, "run only while holding the Lease (default false)"),
    Flag("leader-elect-lease-duration", "leader_election.lease_duration", parse_duration, "default 15s"),
    Flag("leader-elect-renew-deadline", "leader_election.renew_deadline", parse_duration, "default 10s"),
    Flag("leader-elect-retry-period", "leader_election.retry_period", parse_duration, "default 2s"),
    Flag("leader-elect-namespace", "leader_election.namespace", _optional_str,
         "namespace of the Lease (default POD_NAMESPACE, the service account's, else default)"),
    Flag("pool", "pool", _optional_str,
         "pool name: instances with the same provisioner and pool share its classes, each claim made by one"),
    Flag("log-level", "log_level", lambda v: v.upper(), "DEBUG, INFO, WARNING, ERROR (default INFO)"),
    Flag("log-json", "log_json", parse_bool, "JSON log lines (default false)"),
)


GLOG_FLAGS: dict[str, bool] = {
    "v": True, "vmodule": True, "stderrthreshold": True, "log_dir": True, "log_backtrace_at": True,
    "logtostderr": False, "alsologtostderr": False,
}
"""glog's flags (name -> takes a value; the others are booleans), accepted for the original's manifests."""
_GLOG_ARG = re.compile(r"--?(" + "|".join(GLOG_FLAGS) + r")(=(.*))?", re.DOTALL)
log = logging.getLogger(__name__)


def split_glog(argv: Sequence[str]) -> tuple[list[str], str | None, list[str]]:
    """``argv`` without glog flags, the log level ``-v`` asks for (or None), one warning per glog flag.

    As Go's flag package: a flag that takes a value has it after ``=`` or as the next argument, a boolean only
    after ``=``; ``--`` ends the flags. Raises SettingsError for a value glog itself would refuse."""
    rest: list[str] = []
    level: str | None = None
    warnings: list[str] = []
    args = list(argv)
    i = 0
    while i < len(args):
        arg = args[i]
        i += 1
        if arg == "--":
            rest.extend(args[i - 1:])
            break
        m = _GLOG_ARG.fullmatch(arg)
        if not m:
            rest.append(arg)
            continue
        name, value = m.group(1), m.group(3)
        if GLOG_FLAGS[name] and value is None:
            if i == len(args):
                raise settings_mod.SettingsError(f"-{name}: glog flag needs a value")
            value = args[i]
            i += 1
        shown = f"-{name}" if value is None else f"-{name}={value}"
        if name == "v":
            if not re.fullmatch(r"[0-9]{1,9}", value or ""):
                raise settings_mod.SettingsError(f"-v: invalid value {value!r}: glog verbosity is a number")
            level = "DEBUG" if int(value or 0) >= 4 else "INFO"
            warnings.append(f"{shown} is a glog flag of the Go provisioner: log level {level} (use --log-level)")
            continue
        if not GLOG_FLAGS[name] and value is not None:
            try:
                parse_bool(value)
            except ValueError as e:
                raise settings_mod.SettingsError(f"-{name}: invalid value {value!r}: {e}") from e
        warnings.append(f"{shown} is a glog flag of the Go provisioner: ignored, the log always goes to stderr")
    return rest, level, warnings


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nfs-provisioner",
        allow_abbrev=False,
        description="All-in-one NFS provisioner appliance for Kubernetes. Every flag is also an environment "
        f"variable {ENV_PREFIX}<FLAG> (e.g. {ENV_PREFIX}GRACE_PERIOD).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {nfs_provisioner.__version__}")
    for f in FLAGS:
        is_bool = f.parse is parse_bool
        parser.add_argument(
            f"--{f.name}", f"-{f.name}", dest=f.name, metavar="BOOL" if is_bool else f.name.split("-")[-1].upper(),
            nargs="?" if is_bool else None, const="true" if is_bool else None, default=None,
            help=f"{f.help} [env {f.env}]",
        )
    return parser


def parse(argv: Sequence[str] | None, environ: Mapping[str, str]) -> settings_mod.Settings:
    """Flags, then environment, then defaults; raises SettingsError for unparsable values."""
    return parse_args(argv, environ)[0]


def parse_args(argv: Sequence[str] | None, environ: Mapping[str, str]) -> tuple[settings_mod.Settings, list[str]]:
    """The settings and the warnings to log once logging is set up (glog flags); raises SettingsError."""
    rest, glog_level, warnings = split_glog(sys.argv[1:] if argv is None else argv)
    args = vars(build_parser().parse_args(rest))
    if args["log-level"] is None and glog_level is not None:
        args["log-level"] = glog_level
    top: dict[str, Any] = {}
    le: dict[str, Any] = {}
    for f in FLAGS:
        raw, source = args[f.name], f"--{f.name}"
        if raw is None and f.env in environ:
            raw, source = environ[f.env], f.env
        if raw is None:
            continue
        try:
            value = f.parse(raw)
        except ValueError as e:
            raise settings_mod.SettingsError(f"{source}: invalid value {raw!r}: {e}") from e
        if f.field.startswith("leader_election."):
            le[f.field.split(".", 1)[1]] = value
        else:
            top[f.field] = value
    s = settings_mod.Settings(**top)
    return (replace(s, leader_election=replace(s.leader_election, **le)) if le else s), warnings


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    from nfs_provisioner import logs

    env = os.environ if environ is None else environ
    s: settings_mod.Settings | None = None
    try:
        s, warnings = parse_args(argv, env)
        settings_mod.validate(s, in_cluster=not s.out_of_cluster and bool(env.get("KUBERNETES_SERVICE_HOST")))
    except settings_mod.SettingsError as e:
        print(logs.error_line(str(e), json_lines=s is not None and s.log_json), file=sys.stderr)
        return 2
    from nfs_provisioner.appliance import lifecycle

    signals = lifecycle.Signals()  # before the heavy imports: a SIGTERM from now on ends in a clean exit 0
    signals.install()
    from nfs_provisioner.appliance import app, limits

    logs.configure(level=s.log_level, json_lines=s.log_json)
    for warning in warnings + settings_mod.warnings(s):
        log.warning("%s", warning)
    s, resolved = settings_mod.resolve_export_root(s)
    if resolved:
        log.warning("%s", resolved)
    limits.raise_open_files()
    try:
        return app.run(s, env, signals)
    except app.STARTUP_ERRORS as e:
        print(logs.error_line(str(e), json_lines=s.log_json), file=sys.stderr)
        return 1
    except OSError as e:
        # The export root (or another path) cannot be read or written: a read-only or full filesystem, a
        # missing permission. str(e) names the errno text and the file.
        print(f"nfs-provisioner: error: {e}", file=sys.stderr)
        return 1
    finally:
        signals.finish()  # everything is stopped: a late signal must not kill the exiting interpreter
