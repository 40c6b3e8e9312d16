"""Serve first, list later (issue 24), part of the ``scale`` section: with ``live`` volumes, SIGKILL the appliance
(and everything it started, as a pod's death would), start it again and measure from the kill:

- ``failover_first_io_s``: the first NFS READ of a file in an existing volume that succeeds (a fresh connection
  every 20 ms: PUTROOTFH, LOOKUP..., READ with the anonymous stateid);
- ``failover_listed_s``: the controller has listed every claim and PV (its informers' ``listed`` log lines);
- ``failover_ready_s``: /readyz answers 200 (listed, the state check done, every export served).

The bench's appliance runs with ``--grace-period=0``: this is the appliance's and Ganesha's own start, not the
grace period (which ends once clients have reclaimed: docs/appliance.md, Availability)."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

from tests.support import nfsraw
from tests.support.appliance_env import Appliance

PROBE = b"read after a kill\n"
POLL = 0.02
LISTED = ("claims: listed", "volumes: listed")


def read(appliance: Appliance, path: Path) -> bytes | None:
    """The file over NFS; None while it is not served."""
    try:
        with nfsraw.Nfs4(host="127.0.0.1", port=appliance.nfs_port) as c:
            c.sock.settimeout(2.0)
            r = c.compound([c.putrootfh(), *(c.lookup(n) for n in path.relative_to("/").parts), c.read()])
    except (OSError, nfsraw.RpcError):
        return None
    return r.last(nfsraw.OP_READ).data if r.status == nfsraw.NFS4_OK else None


def probe_file(appliance: Appliance) -> Path:
    """A file in one existing volume (written on the server side)."""
    vol = next(p for p in sorted(appliance.export_root.iterdir()) if p.name.startswith("pvc-"))
    path = vol / "failover-probe"
    path.write_bytes(PROBE)
    return path


def kill_and_serve(appliance: Appliance, live: int, timeout: float = 600) -> dict[str, float]:
    path = probe_file(appliance)
    if read(appliance, path) != PROBE:
        raise SystemExit(f"bench: failover: {path} is not served before the kill")
    appliance.kill()
    killed = time.monotonic()
    appliance.start(wait_ready=False)
    first_io = listed = ready = None
    while ready is None:
        now = time.monotonic() - killed
        if now > timeout:
            raise SystemExit(f"bench: failover with {live} volumes: not ready {timeout:.0f} s after the kill")
        assert appliance.proc is not None
        if appliance.proc.poll() is not None:
            raise SystemExit(f"bench: failover: the appliance exited with {appliance.proc.returncode}:\n"
                             f"{appliance.log()}")
        if first_io is None and read(appliance, path) == PROBE:
            first_io = time.monotonic() - killed
        if listed is None and all(line in appliance.text() for line in LISTED):
            listed = time.monotonic() - killed
        if listed is not None:
            try:
                if appliance.get("/readyz")[0] == 200:
                    ready = time.monotonic() - killed
            except OSError:
                pass
        time.sleep(POLL)
    if first_io is None:
        raise SystemExit(f"bench: failover: {path} not read over NFS once ready")
    assert listed is not None
    print(f"scale: {live} live: SIGKILL -> first NFS read of an existing volume {first_io:.2f} s, -> claims and "
          f"PVs listed {listed:.2f} s, -> ready {ready:.2f} s", file=sys.stderr)
    return {"failover_first_io_s": first_io, "failover_listed_s": listed, "failover_ready_s": ready}


def show(live: int, row: dict[str, Any]) -> None:
    if "failover_first_io_s" in row:
        print(f"  {live:6d} live  SIGKILL -> first NFS read {row['failover_first_io_s']:5.2f} s, -> listed "
              f"{row['failover_listed_s']:5.2f} s, -> ready {row['failover_ready_s']:5.2f} s")
