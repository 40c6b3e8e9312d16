"""Run the appliance with wall-clock timers around the steps of a provision and a delete (bench only).

    NFSP_STEP_TIMES=/path/times.json python -m bench.step_timer <appliance flags>

is ``python -m nfs_provisioner <flags>`` with each method below wrapped: every call adds its duration
to a per-step total (summed over all threads, so totals exceed the elapsed time when workers run in
parallel) and counts one call. The totals are written to ``$NFSP_STEP_TIMES`` twice a second; the
benchmark diffs two snapshots around a burst. The names of the process's threads are written next to
it, so the benchmark can split the process's CPU time by thread role (informers, workers, events).
Nothing in the product changes; the timers cost about a microsecond per call.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

STEPS: list[tuple[str, str, str, str]] = [
    # (module, class ("" = module function), attribute, label)
    ("nfs_provisioner.controller.deleting", "Deleting", "sync", "delete: worker sync (whole)"),
    ("nfs_provisioner.controller.deleting", "Deleting", "_patch", "delete: PV finalizer PATCH"),
    ("nfs_provisioner.appliance.provisioner", "NFSProvisioner", "delete", "delete: asset (Provisioner.delete)"),
    ("nfs_provisioner.ganesha.exports", "ExportManager", "remove", "delete: ExportManager.remove (with lock wait)"),
    ("nfs_provisioner.ganesha.dbus", "GaneshaDBus", "remove_export", "delete: RemoveExport (D-Bus)"),
    ("nfs_provisioner.ganesha.exports.index", "ShardedIndex", "write_shard", "exports: index shard rewrite (locked)"),
    ("nfs_provisioner.ganesha.exports.index", "ShardedIndex", "sync", "exports: index shard rewrite"),
    ("nfs_provisioner.volumes.directories", "VolumeDirectories", "delete", "delete: directory removal"),
    ("nfs_provisioner.volumes.records", "VolumeRecords", "remove", "delete: volume record unlink"),
    ("nfs_provisioner.volumes.records", "VolumeRecords", "read", "volume record read"),
    ("nfs_provisioner.controller.provisioning", "Provisioning", "sync", "provision: worker sync (whole)"),
    ("nfs_provisioner.appliance.provisioner", "NFSProvisioner", "provision",
     "provision: asset (Provisioner.provision)"),
    ("nfs_provisioner.ganesha.exports", "ExportManager", "add", "provision: ExportManager.add"),
    ("nfs_provisioner.ganesha.dbus", "GaneshaDBus", "add_export", "provision: AddExport (D-Bus)"),
    ("nfs_provisioner.volumes.records", "VolumeRecords", "write", "provision: volume record write"),
    ("nfs_provisioner.volumes.directories", "VolumeDirectories", "create", "provision: directory create"),
    ("os", "", "fsync", "os.fsync"),
]
API_LABEL = "api {method}"

_lock = threading.Lock()
_totals: dict[str, list[float]] = {}


def _record(label: str, seconds: float) -> None:
    with _lock:
        entry = _totals.setdefault(label, [0.0, 0.0])
        entry[0] += seconds
        entry[1] += 1


def _timed(fn: Callable[..., Any], label: str | Callable[[tuple[Any, ...]], str]) -> Callable[..., Any]:
    def timed(*args: Any, **kwargs: Any) -> Any:
        t = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            _record(label if isinstance(label, str) else label(args), time.perf_counter() - t)

    timed.__wrapped__ = fn  # type: ignore[attr-defined]
    return timed


def install() -> None:
    for module, cls, attr, label in STEPS:
        owner: Any = importlib.import_module(module)
        if cls:
            owner = getattr(owner, cls)
        setattr(owner, attr, _timed(getattr(owner, attr), label))
    from nfs_provisioner.kube import client

    client.Client.request = _timed(client.Client.request,  # type: ignore[method-assign]
                                   lambda args: API_LABEL.format(method=args[1]))


def snapshot() -> dict[str, dict[str, float]]:
    with _lock:
        return {k: {"seconds": v[0], "calls": v[1]} for k, v in _totals.items()}


def read(path: Path) -> dict[str, dict[str, float]]:
    """The last snapshot written to ``path`` (empty if none yet)."""
    try:
        data: dict[str, dict[str, float]] = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data


def diff(after: dict[str, dict[str, float]], before: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    out = {}
    for k, v in after.items():
        b = before.get(k, {"seconds": 0.0, "calls": 0.0})
        calls = v["calls"] - b["calls"]
        if calls:
            out[k] = {"seconds": v["seconds"] - b["seconds"], "calls": calls}
    return out


def threads_file(path: Path) -> Path:
    """Where the writer keeps {native thread id: Python thread name} (for per-thread CPU times)."""
    return path.with_name(path.name + ".threads")


def _writer(path: Path) -> None:
    while True:
        for target, data in ((path, snapshot()),
                             (threads_file(path), {str(t.native_id): t.name for t in threading.enumerate()})):
            tmp = target.with_name(target.name + ".tmp")
            tmp.write_text(json.dumps(data))
            os.replace(tmp, target)
        time.sleep(0.5)


def main() -> int:
    out = Path(os.environ["NFSP_STEP_TIMES"])
    install()
    threading.Thread(target=_writer, args=(out,), name="step-timer", daemon=True).start()
    from nfs_provisioner import cli

    return cli.main()


if __name__ == "__main__":
    sys.exit(main())
