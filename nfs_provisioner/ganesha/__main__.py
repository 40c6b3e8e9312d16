"""``python -m nfs_provisioner.ganesha``: run the Ganesha manager alone until SIGTERM/SIGINT.

For operators and tests; the appliance embeds ``GaneshaServer`` the same way
(``serve_until_signalled``). Prints one JSON line ``{"ready": true, "pids": {...}}``
once Ganesha serves, and exits 0 after a graceful stop.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

from nfs_provisioner.ganesha import errors
from nfs_provisioner.ganesha.metrics import GaneshaMetrics
from nfs_provisioner.ganesha.server import GaneshaServer
from nfs_provisioner.ganesha.settings import Ports, ServerSettings

log = logging.getLogger("nfs_provisioner.ganesha")


def serve_until_signalled(
    server: GaneshaServer,
    *,
    signals: Sequence[signal.Signals] = (signal.SIGTERM, signal.SIGINT),
    on_ready: Callable[[], None] | None = None,
    health_interval: float = 5.0,
) -> None:
    """Start ``server``, keep its health gauge fresh, stop it gracefully on one of ``signals``."""
    stop = threading.Event()
    previous = {s: signal.signal(s, lambda signum, frame: stop.set()) for s in signals}
    try:
        server.start()
        if on_ready is not None:
            on_ready()
        while not stop.wait(health_interval):
            server.ready()
        log.info("signal received: stopping Ganesha")
    finally:
        server.stop()
        for s, handler in previous.items():
            signal.signal(s, handler)


def _env(name: str, default: str) -> str:
    return os.environ.get(f"NFS_PROVISIONER_{name}", default)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m nfs_provisioner.ganesha", description=__doc__)
    p.add_argument("--export-root", type=Path, default=Path(_env("EXPORT_ROOT", "/export")))
    p.add_argument("--run-dir", type=Path, default=Path(_env("RUN_DIR", "/run/nfs-provisioner")))
    p.add_argument("--nfs-port", type=int, default=int(_env("NFS_PORT", "2049")))
    p.add_argument("--bind-addr", default=_env("BIND_ADDR", "") or None)
    p.add_argument("--grace-period", type=int, default=int(_env("GRACE_PERIOD", "90")))
    p.add_argument("--export-subnet", default=_env("EXPORT_SUBNET", "*"))
    p.add_argument("--dbus-name-prefix", default=_env("DBUS_NAME_PREFIX", ""))
    p.add_argument(
        "--dbus-address",
        default=_env("DBUS_ADDRESS", "") or None,
        help="use this bus (e.g. unix:path=...) instead of starting a private dbus-daemon",
    )
    p.add_argument("--nfsv3", action="store_true", default=_env("NFSV3", "") == "true")
    p.add_argument(
        "--device-based-fsids",
        action=argparse.BooleanOptionalAction,
        default=_env("DEVICE_BASED_FSIDS", "true") == "true",
    )
    p.add_argument("--ganesha-templates", type=Path, default=None, help="template override directory")
    p.add_argument("--metrics-port", type=int, default=0, help="serve Prometheus metrics on this port (0 = off)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = ServerSettings(
        export_root=args.export_root,
        run_dir=args.run_dir,
        ports=Ports(nfs=args.nfs_port),
        bind_addr=args.bind_addr,
        grace_period=args.grace_period,
        export_subnet=args.export_subnet,
        dbus_name_prefix=args.dbus_name_prefix,
        dbus_address=args.dbus_address,
        nfsv3=args.nfsv3,
        device_based_fsids=args.device_based_fsids,
        template_dir=args.ganesha_templates,
    ).defaults_from(os.environ)
    metrics = GaneshaMetrics()
    if args.metrics_port:
        from prometheus_client import start_http_server

        start_http_server(args.metrics_port, addr="127.0.0.1")
    server = GaneshaServer(settings, metrics=metrics)

    def ready() -> None:
        pids = {"ganesha.nfsd": server.ganesha_pid, **server.helper_pids()}
        print(json.dumps({"ready": True, "pids": pids}), flush=True)

    try:
        serve_until_signalled(server, on_ready=ready)
    except errors.GaneshaError as e:
        log.error("%s", e)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
