"""Benchmark of the Ganesha manager against a real ganesha.nfsd (printed, not a timed test).

Measures export add and remove latency (p50/p99) with 0, 500 and 1000 live
exports, and a cold start of the manager + Ganesha with 1000 exports in its
configuration, and Ganesha's resident memory idle and with 1000 exports.
Targets (issue 4): add p99 < 5 ms, flat in export count; cold start < 2 s.

    .venv/bin/python bench/ganesha_bench.py [--samples 200] [--no-durable] [--ganesha-root DIR | --installed]

It runs the Ganesha the tests run: NFS_PROVISIONER_GANESHA_ROOT, else the tree
hack/install-deps unpacked (Debian trixie's 6.5 on a bookworm host), else the
installed ganesha.nfsd.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import psutil

from nfs_provisioner.ganesha.exports import ExportRequest
from nfs_provisioner.ganesha.server import GaneshaServer
from nfs_provisioner.ganesha.settings import GANESHA_ROOT_ENV, Ports, ServerSettings

CACHE = Path(os.environ.get("NFSP_CACHE_DIR", Path.home() / ".cache" / "nfs-provisioner"))
UNPACKED = CACHE / "ganesha" / "current" / "root"

LEVELS = (0, 500, 1000)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def rss_mb(srv: GaneshaServer) -> float:
    pid = srv.ganesha_pid
    assert pid is not None, "Ganesha is not running"
    return float(psutil.Process(pid).memory_info().rss) / 1e6


def ms(v: float) -> str:
    return f"{v * 1000:7.2f} ms"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=200, help="add+remove pairs measured at each level")
    ap.add_argument("--no-durable", action="store_true", help="skip fsync of config files")
    default_root = os.environ.get(GANESHA_ROOT_ENV) or (str(UNPACKED) if UNPACKED.is_dir() else None)
    ap.add_argument("--ganesha-root", type=Path, default=default_root, help="an unpacked Ganesha to run")
    args = ap.parse_args()

    base = Path(tempfile.mkdtemp(prefix="nfsp-bench-"))
    root = base / "export"
    root.mkdir()
    port = free_port()
    prefix = f"bench{uuid.uuid4().hex[:8]}"

    def settings(run: str) -> ServerSettings:
        return ServerSettings(
            export_root=root,
            run_dir=base / run,
            ports=Ports(nfs=port),
            bind_addr="127.0.0.1",
            dbus_name_prefix=prefix,
            grace_period=0,
            durable_writes=not args.no_durable,
            ganesha_root=args.ganesha_root,
        )

    print(f"Ganesha manager benchmark: {args.samples} add+remove pairs per level, durable={not args.no_durable}")
    srv = GaneshaServer(settings("run0"))
    dbus_add: list[float] = []
    srv.dbus.observer = lambda method, seconds, error: dbus_add.append(seconds) if method == "AddExport" else None
    srv.start()
    servers = [srv]
    try:
        version = ".".join(map(str, srv.ganesha_version or ()))
        print(f"Ganesha {version} ({args.ganesha_root or 'installed'}); RSS idle (no exports): {rss_mb(srv):.1f} MB")
        live = 0
        print(
            f"{'live exports':>12} | {'add p50':>10} {'add p99':>10} {'add max':>10} |"
            f" {'remove p50':>10} {'remove p99':>10} | {'AddExport D-Bus p50':>19} {'p99':>10}"
        )
        for level in LEVELS:
            while live < level:
                srv.exports.add(ExportRequest(name=f"fill-{live:05d}", path=_dir(root, f"fill-{live:05d}")))
                live += 1
            adds: list[float] = []
            removes: list[float] = []
            dbus_add.clear()
            for i in range(args.samples):
                path = _dir(root, f"probe-{level}-{i}")
                t = time.perf_counter()
                srv.exports.add(ExportRequest(name=path.name, path=path))
                adds.append(time.perf_counter() - t)
                t = time.perf_counter()
                srv.exports.remove(path.name)
                removes.append(time.perf_counter() - t)
            print(
                f"{level:>12} | {ms(pct(adds, 50)):>10} {ms(pct(adds, 99)):>10} {ms(max(adds)):>10} |"
                f" {ms(pct(removes, 50)):>10} {ms(pct(removes, 99)):>10} |"
                f" {ms(pct(dbus_add, 50)):>19} {ms(pct(dbus_add, 99)):>10}"
            )
        assert len(srv.exports) == LEVELS[-1]
        print(f"Ganesha RSS with {LEVELS[-1]} live exports (after {len(LEVELS) * args.samples} add+remove pairs):"
              f" {rss_mb(srv):.1f} MB")
        srv.stop()

        cold: list[float] = []
        cold_rss: list[float] = []
        for run in range(3):
            t = time.perf_counter()
            srv = GaneshaServer(settings(f"cold{run}"))
            servers.append(srv)
            srv.start()
            cold.append(time.perf_counter() - t)
            n = len(srv.dbus.show_exports()) - 1
            assert n == LEVELS[-1], n
            cold_rss.append(rss_mb(srv))
            srv.stop()
        print(
            f"cold start with {LEVELS[-1]} exports (bus + config + ganesha.nfsd ready + reconcile):"
            f" median {statistics.median(cold):.3f} s, runs {', '.join(f'{c:.3f}' for c in cold)} s;"
            f" Ganesha RSS after it {statistics.median(cold_rss):.1f} MB"
        )
    finally:
        for s in servers:
            s.stop()
        shutil.rmtree(base, ignore_errors=True)
    return 0


def _dir(root: Path, name: str) -> Path:
    d = root / name
    d.mkdir(exist_ok=True)
    return d


if __name__ == "__main__":
    sys.exit(main())
