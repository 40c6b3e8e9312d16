"""The ``scale`` section of bench/provision_bench.py: up to 10,000 live volumes (``--scale-max``).

Claims are created in bursts of 1000 (each burst its own namespace) and kept,
so the appliance serves 1000, 2000, ... exports. The export add time is the
appliance's own (export file + AddExport over D-Bus + index shard, from its
log line ``export ... added: ... in X ms``, the span of the histogram
``nfs_provisioner_ganesha_export_add_duration_seconds``). At each reported
level (1000, 5000, 10000, and ``--scale-max``) the last 100 claims of the
burst are created one at a time, each once the previous one's PV exists: their
adds (``add_p50_ms``/``add_p99_ms``) are the add itself with that many exports
live; the adds of the 900 claims created at once (``burst_add_*``) also wait
for each other (16 workers, one Ganesha D-Bus thread). At the top: the
appliance's RSS (own process) and Ganesha's, the ``/metrics`` scrape time and
size, a cold restart (process start -> /readyz 200, every export served, queues
empty, no provision call) and the start-up list of every PV and claim (the
informers' own log lines). If another section runs after it, every claim is
then deleted (the appliance deletes the volumes) and the namespaces with them;
as the last section (``make bench``) it leaves them to the control plane's
teardown (10,000 deletions take minutes: kube-controller-manager marks them
Released one at a time).
"""

from __future__ import annotations

import re
import statistics
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from bench import failover_bench
from bench.harness import Bench, claim_body, cold_restart, metric, own_rss_mb, pct, provision_run
from nfs_provisioner.kube import client as kube
from nfs_provisioner.kube.errors import NotFound

BURST = 1000
PROBES = 100
"""Claims created one at a time at each reported level (the add's own time, no queueing behind others)."""
LEVELS = (1000, 5000, 10000)
ADDED = re.compile(r"export (\S+) added: id \d+ .* in ([0-9.]+) ms$", re.MULTILINE)
LISTED = re.compile(r"\b(claims|volumes): listed (\d+) objects in ([0-9.]+)s", re.MULTILINE)
SCRAPES = 5
FAILOVER_AT = 1000
"""Live volumes at which the appliance is killed and started again (and at the top): bench/failover_bench.py."""


def levels(scale_max: int) -> list[int]:
    """The live counts reported: 1k/5k/10k up to ``scale_max``, and ``scale_max`` itself."""
    return sorted({lv for lv in LEVELS if lv <= scale_max} | {scale_max})


def read_from(path: Path, offset: int) -> str:
    with path.open("rb") as f:
        f.seek(offset)
        return f.read().decode("utf-8", "replace")


def ganesha_rss_mb(metrics_text: str) -> float:
    """Ganesha's RSS as the appliance reports it (it knows which child is ganesha.nfsd)."""
    rss = metric(metrics_text, "nfs_provisioner_ganesha_resident_memory_bytes")
    if not rss:
        raise SystemExit("bench: the appliance reports no Ganesha RSS")
    return rss / 2**20


def volumes_left(api: kube.Client, cls: str) -> int:
    return sum(1 for p in api.get(kube.volumes_path())["items"] if p["spec"].get("storageClassName") == cls)


def scrape(port: int) -> tuple[float, int, int]:
    """One /metrics scrape: (seconds, bytes, sample lines)."""
    t = time.monotonic()
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as r:
        body = r.read()
    took = time.monotonic() - t
    samples = sum(1 for line in body.splitlines() if line and not line.startswith(b"#"))
    return took, len(body), samples


def probe(api: kube.Client, ns: str, count: int, cls: str) -> None:
    """``count`` claims (p0, p1, ...) in ``ns``, each created once the previous one's PV exists."""
    for i in range(count):
        uid = api.create(kube.claims_path(ns), claim_body(f"p{i}", cls))["metadata"]["uid"]
        deadline = time.monotonic() + 60
        while True:
            try:
                api.get(kube.volumes_path(f"pvc-{uid}"))
                break
            except NotFound:
                if time.monotonic() > deadline:
                    raise SystemExit(f"bench: no PV for probe claim {ns}/p{i} after 60 s") from None
                time.sleep(0.005)


def add_times(log_file: Path, offset: int, expected: int) -> list[float]:
    adds = [float(ms) for _, ms in ADDED.findall(read_from(log_file, offset))]
    if len(adds) != expected:
        raise SystemExit(f"bench: {len(adds)} export add lines in the appliance log, {expected} expected")
    return adds


def scale_section(b: Bench) -> dict[str, Any]:
    appliance, api, pool = b.appliance, b.api, b.pool
    top = b.scale_max
    report = levels(top)
    out: dict[str, Any] = {}
    bursts: list[dict[str, float]] = []
    namespaces: list[tuple[str, list[str]]] = []
    live = 0
    try:
        while live < top:
            target = min(live + BURST, top)
            probes = PROBES if target in report and target - live > PROBES else 0
            n = target - live - probes
            assert appliance.proc is not None
            log_file = appliance.log_file
            offset = log_file.stat().st_size
            run, ns = provision_run(api, pool, n=n, cls=b.cls, provisioner=b.provisioner, keep=True)
            namespaces.append((ns, [f"c{i}" for i in range(n)]))
            burst = add_times(log_file, offset, n)
            row = {"live": live + n, "burst_add_p50_ms": pct(burst, 50), "burst_add_p99_ms": pct(burst, 99),
                   "burst_add_max_ms": max(burst), "created_per_s": run["created_per_s"]}
            if probes:
                offset = log_file.stat().st_size
                probe(api, ns, probes, b.cls)
                namespaces[-1][1].extend(f"p{i}" for i in range(probes))
                own = add_times(log_file, offset, probes)
                row.update(live=target, add_p50_ms=pct(own, 50), add_p99_ms=pct(own, 99), add_max_ms=max(own))
            live = target
            bursts.append(row)
            print(f"scale: {live} live: burst of {n}: {run['created_per_s']:.0f} PVC/s, add p50 "
                  f"{row['burst_add_p50_ms']:.1f} ms p99 {row['burst_add_p99_ms']:.1f} ms"
                  + (f"; {probes} one at a time: add p50 {row['add_p50_ms']:.2f} ms p99 {row['add_p99_ms']:.2f} ms "
                     f"max {row['add_max_ms']:.2f} ms" if probes else ""), file=sys.stderr)
            if live in report:
                out[str(live)] = {k: v for k, v in row.items() if k != "live"}
            if live in (FAILOVER_AT, top):
                out.setdefault(str(live), {}).update(failover_bench.kill_and_serve(appliance, live))
        at_top = out[str(top)]
        assert appliance.proc is not None
        at_top["rss_mb"] = own_rss_mb(appliance.proc.pid)
        at_top["ganesha_rss_mb"] = ganesha_rss_mb(appliance.get("/metrics")[1])
        scrapes = [scrape(appliance.metrics_port) for _ in range(SCRAPES)]
        at_top["metrics_scrape_s"] = statistics.median(s[0] for s in scrapes)
        at_top["metrics_bytes"] = scrapes[-1][1]
        at_top["metrics_samples"] = scrapes[-1][2]
        print(f"scale: {top} live: appliance RSS {at_top['rss_mb']:.0f} MB, Ganesha {at_top['ganesha_rss_mb']:.0f} "
              f"MB; /metrics {at_top['metrics_scrape_s'] * 1000:.0f} ms, {at_top['metrics_bytes']} bytes, "
              f"{at_top['metrics_samples']} samples", file=sys.stderr)

        took, spurious = cold_restart(appliance, top, timeout=300)
        text = appliance.log_file.read_text(errors="replace")
        listed = {name: (int(count), float(s)) for name, count, s in LISTED.findall(text)}
        if set(listed) != {"claims", "volumes"}:
            raise SystemExit(f"bench: informer list lines missing from the restart log: {sorted(listed)}")
        at_top["restart_s"] = took
        at_top["restart_spurious_provisions"] = spurious
        at_top["list_watch_s"] = max(s for _, s in listed.values())
        at_top["listed"] = {name: count for name, (count, _) in listed.items()}
        assert appliance.proc is not None
        at_top["rss_after_restart_mb"] = own_rss_mb(appliance.proc.pid)
        print(f"scale: cold restart with {top} volumes {took:.2f}s (list/watch {at_top['list_watch_s']:.2f}s: "
              f"{at_top['listed']}), spurious provisions {spurious:.0f}, RSS after {at_top['rss_after_restart_mb']:.0f}"
              " MB", file=sys.stderr)
    finally:
        if b.later_sections:  # else the control plane and the export root go as they are (10,000 deletes: minutes)
            t = time.monotonic()
            names = [kube.claims_path(ns, claim) for ns, claims in namespaces for claim in claims]
            list(pool.map(api.delete, names))
            deadline = time.monotonic() + 1800
            while volumes_left(api, b.cls):  # a list of every PV: not in a tight loop
                if time.monotonic() > deadline:
                    raise SystemExit("bench: scale cleanup: PVs left after 1800 s")
                time.sleep(2.0)
            for ns, _ in namespaces:
                api.delete(f"/api/v1/namespaces/{ns}")
            print(f"scale: {live} volumes deleted in {time.monotonic() - t:.0f}s", file=sys.stderr)
    return {"scale": {**out, "bursts": bursts, "burst": BURST, "max": top}}


def show_scale(r: dict[str, Any]) -> None:
    s = r.get("scale")
    if not s:
        return
    print("scale (export add = file + AddExport + index shard, the appliance's own time; one at a time, and in "
          "bursts of concurrent claims)")
    for live in levels(int(s["max"])):
        row = s[str(live)]
        alone = (f"add p50 {row['add_p50_ms']:6.2f} ms  p99 {row['add_p99_ms']:6.2f} ms" if "add_p50_ms" in row
                 else "(no one-at-a-time adds)")
        print(f"  {live:6d} live  {alone}   in bursts p50 {row['burst_add_p50_ms']:6.1f} ms  "
              f"p99 {row['burst_add_p99_ms']:6.1f} ms")
    print("failover (SIGKILL, then the appliance started again; grace period 0: its own start)")
    for live in levels(int(s["max"])):
        failover_bench.show(live, s[str(live)])
    top = s[str(s["max"])]
    print(f"  {s['max']} volumes: cold restart {top['restart_s']:.2f} s (list/watch {top['list_watch_s']:.2f} s, "
          f"spurious provisions {top['restart_spurious_provisions']:.0f}); RSS appliance {top['rss_mb']:.0f} MB, "
          f"Ganesha {top['ganesha_rss_mb']:.0f} MB; /metrics {top['metrics_scrape_s'] * 1000:.0f} ms, "
          f"{top['metrics_bytes'] / 1024:.0f} KiB ({top['metrics_samples']} samples)")
