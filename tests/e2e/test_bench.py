"""`make bench` at toy sizes: every section runs against the real control plane, appliance and
Ganesha, and writes every figure issue 18 names under its stable key. Its speed is not judged here
(that is what `make bench` prints); only that each figure exists and is a finite, positive number."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.support.paths import REPO

pytestmark = [pytest.mark.bench, pytest.mark.kube, pytest.mark.ganesha, pytest.mark.e2e]

N, PRESENT, SCALE = 20, 30, 150
CLONE_MB = 64
"""The filesystem volume the filesystems section clones (1024 in make bench)."""


def required_keys() -> list[str]:
    keys = ["rss_idle_mb", f"scale.{SCALE}.restart_s", f"scale.{SCALE}.rss_mb"]
    for n in (N,):
        keys += [f"sizes.{n}.created_per_s", f"sizes.{n}.fraction_of_pipeline", f"backlog.{n}.drain_per_s",
                 f"backlog.{n}.fraction_of_null", f"backlog.{n}.cpu_appliance_system_ms_per_pv",
                 f"backlog.{n}.null_cpu_ms_per_pv", f"backlog.{n}.null_files_drain_per_s",
                 f"backlog.{n}.null_files_fraction_of_null", f"delete.{n}.per_s", f"delete.{n}.fraction_of_null",
                 f"delete.{n}.null_files_per_s"]
    keys += [f"scale.{SCALE}.add_p99_ms", f"scale.{SCALE}.failover_first_io_s", f"scale.{SCALE}.failover_listed_s",
             f"scale.{SCALE}.failover_ready_s"]
    keys += [f"filesystems.{N}.created_per_s", f"filesystems.{N}.p50_s", f"filesystems.{N}.p99_s",
             "filesystems.cold_restart_s", "filesystems.remount_s", "filesystems.rss_mb",
             "filesystems.clone_reflink_s", "filesystems.clone_sparse_s"]
    keys += [f"pool.{N}.created_per_s", f"pool.{N}.one_created_per_s", f"pool.{N}.ratio", f"pool.{N}.routing_p50_s",
             f"pool.{N}.assign_p50_s", f"pool.{N}.cpu_ms_per_claim", "pool.stranded", "pool.reassigned_first_s",
             "pool.route_around_s"]
    return keys


def lookup(results: dict[str, Any], dotted: str) -> Any:
    value: Any = results
    for part in dotted.split("."):
        assert isinstance(value, dict) and part in value, f"results.json has no {dotted} (stops at {part})"
        value = value[part]
    return value


def test_every_section_writes_its_figures_under_the_stable_keys(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    argv = [sys.executable, "-m", "bench.provision_bench", f"--sizes={N}", "--repeats=1", f"--present={PRESENT}",
            f"--scale-max={SCALE}", f"--fs-clone-mb={CLONE_MB}", f"--out={out}"]
    run = subprocess.run(argv, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True,
                         text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-5000:]
    results = json.loads(out.read_text())
    for key in required_keys():
        value = lookup(results, key)
        assert isinstance(value, int | float) and math.isfinite(value) and value > 0, (key, value)
    # the pool: each claim of a burst saved by exactly one member; those first assigned to the killed member went
    # to another only once it could be counted down (its last renewal was up to a heartbeat, and a slow tick,
    # before the kill)
    pool = results["pool"]
    assert [sum(counts) for counts in lookup(results, f"pool.{N}.distribution_runs")] == [N]
    assert pool["reassigned_first_s"] >= pool["lease_duration_s"] - 2 * pool["heartbeat_s"], pool
    # a flame graph of the appliance per section (bench/flame.py: py-spy, a development dependency)
    for section in ("sizes", "delete", "backlog", "filesystems", "scale"):
        stacks = (tmp_path / f"flame-{section}.txt").read_text()
        assert "nfs_provisioner" in stacks, (section, stacks[:500])
        assert (tmp_path / f"flame-{section}.svg").read_text().startswith("<svg"), section
    # the printed table has every section
    for title in ("created+exported", "delete", "backlog", "scale", "failover", "filesystem volumes", "pool of 3"):
        assert title in run.stdout, run.stdout
