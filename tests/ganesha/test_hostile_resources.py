"""Issue 28, resources an outsider can exhaust: the metrics/health endpoint's connections (D6), the logs a
client that is not even on the client list makes Ganesha write (D7), and what a SIGKILLed appliance leaves
in the temporary directory (D18). Each against the real thing: the endpoint's server, a real Ganesha flooded
with garbage RPC records, the real appliance killed with SIGKILL."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nfs_provisioner.ganesha import errors as ganesha_errors
from nfs_provisioner.ganesha.exports import ExportRequest
from nfs_provisioner.ganesha.server import READY_MARK
from nfs_provisioner.ganesha.settings import Ports
from tests.support.ganesha_env import Harness
from tests.support.hostile_resources import garbage, on_disk
from tests.support.paths import REPO


@pytest.mark.ganesha
def test_d7_garbage_rpc_from_an_unlisted_address_leaves_ganesha_log_bounded(h: Harness) -> None:
    log = h.export_root / ".ganesha" / "ganesha.log"
    srv = h.server(clients=("127.0.0.1",))  # 127.0.0.9 is not a client
    srv.exports.add(ExportRequest(name="v1", path=h.volume("v1", content={"f": b"still served"})))
    assert READY_MARK in log.read_text(errors="replace")  # the ready line reached the file too
    started = time.monotonic()
    garbage("127.0.0.1", h.port, source="127.0.0.9", seconds=20)
    took = time.monotonic() - started
    size = on_disk(log)
    cap = 1 << 20  # ServerSettings.log_max_bytes' default
    chunk = 256 * 1024  # the relay writes what one read of the pipe gives, then rotates
    print(f"Ganesha's log on the export root after {took:.1f}s of garbage: {size} bytes")
    # Before: ganesha.log grew by 27 MB in 20 s (the issue), by 41-70 MB here.
    assert size <= 2 * (cap + chunk), f"{size} bytes of Ganesha's log on the export root after {took:.0f}s"
    assert srv.settings.log_max_bytes == cap
    glog = srv.ganesha_log
    assert glog is not None
    print(f"Ganesha wrote {glog.received} bytes of log in {took:.1f}s; on disk: {size} bytes")
    assert glog.received > 4 * cap, "the flood made Ganesha log too little to test the cap"
    assert "rm_call.cb_rpcvers" in log.read_text(errors="replace")  # the log is still written
    assert len((log.parent / "ganesha.log.old").read_bytes()) <= cap + chunk
    assert srv.ready()
    assert h.client().cat(h.export_root / "v1" / "f").stdout == b"still served"


@pytest.mark.ganesha
def test_d7_garbage_at_statd_leaves_its_log_bounded(h: Harness) -> None:
    """rpc.statd runs with -d (its messages to its log, not syslog) and has no client list: a connection to 662
    that sends garbage costs a line ("Waiting for client connections"): 23.7 MB in 20 s here before the cap. Its
    log in the run directory goes through the same capped relay as Ganesha's."""
    ns = h.make_netns(addresses=("10.77.0.1/24",))
    srv = h.server(netns=ns.path, mountns=ns.mountns, nfsv3=True, bind_addr=None, ports=Ports(),
                   export_subnet="10.77.0.0/24")
    log = srv.run_dir / "statd.log"
    started = time.monotonic()
    subprocess.run(["nsenter", f"--net={ns.path}", sys.executable, "-c",
                    "from tests.support.hostile_resources import garbage; "
                    "garbage('127.0.0.1', 662, source='127.0.0.1', seconds=20)"],
                   cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, check=True, timeout=120)
    size = on_disk(log)
    print(f"statd's log after {time.monotonic() - started:.1f}s of garbage: {size} bytes")
    cap, chunk = 1 << 20, 256 * 1024
    assert size <= 2 * (cap + chunk), f"{size} bytes of statd's log"
    assert "Waiting for client connections" in log.read_text(errors="replace")
    assert srv.helper_pids().get("rpc.statd")


@pytest.mark.ganesha
def test_d7_ganesha_start_up_errors_still_reach_the_error_message(h: Harness, tmp_path: Path) -> None:
    """What Ganesha says when it cannot start is in the error (its log is no longer read back from a file)."""
    templates = tmp_path / "templates"
    templates.mkdir()
    shipped = (REPO / "nfs_provisioner" / "ganesha_templates" / "ganesha.conf.j2").read_text()
    assert "allow_set_io_flusher_fail = true;" in shipped
    (templates / "ganesha.conf.j2").write_text(shipped.replace("allow_set_io_flusher_fail = true;",
                                                               "allow_set_io_flusher_fail = false;"))
    with pytest.raises(ganesha_errors.GaneshaServerError) as e:
        h.server(template_dir=templates)  # no CAP_SYS_RESOURCE here: Ganesha exits at once
    assert "ganesha.nfsd exited with code 2 while starting; log tail:" in str(e.value)
    assert "Failed to PR_SET_IO_FLUSHER with EPERM" in str(e.value)
