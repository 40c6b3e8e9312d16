"""Grace that ends when reclaim is done (issue 24): NFSv3 with or without NLM, and the lease that paces it.

Ganesha (9.14 as 6.2: ``nfs_try_lift_grace`` in SAL/nfs4_recovery.c) ends a grace period early only when NLM is
off, and then once every client recorded in the recovery backend has sent RECLAIM_COMPLETE; its reaper thread
checks that every ``min(10, Lease_Lifetime / 2)`` seconds. With NLM on it waits for the whole period. The
kernel client's view of it is measured in tests/support/uml_kclient.py (step ``grace_and_lock_reclaim``)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from nfs_provisioner.ganesha.exports import ExportRequest
from nfs_provisioner.ganesha.server import GaneshaServer
from nfs_provisioner.ganesha.settings import Ports
from tests.support import nfs42_client
from tests.support.ganesha_env import Client, Harness
from tests.support.paths import REPO

ALLOWED = "10.79.0.1"


GRACE = 30


OWNER = b"\x01" * 8 + b"nfsp-grace-test-client"


def reclaim(h: Harness, srv: GaneshaServer, netns: Path | None) -> None:
    """The recorded client comes back: EXCHANGE_ID with its owner, CREATE_SESSION, RECLAIM_COMPLETE."""
    if netns is None:
        nfs42_client.Client(host="127.0.0.1", port=h.port, owner=OWNER).close()
        return
    code = ("import sys; from tests.support import nfs42_client; "
            f"nfs42_client.Client(host={ALLOWED!r}, port=2049, owner={OWNER!r}).close()")
    subprocess.run(["nsenter", f"--net={netns}", sys.executable, "-c", code], check=True, timeout=60,
                   cwd=REPO)


def restart_and_reclaim(h: Harness, kw: dict[str, object], netns: Path | None) -> tuple[GaneshaServer, float | None]:
    """Record the client, restart, reclaim; seconds from RECLAIM_COMPLETE until Ganesha is out of grace (None:
    still in grace after three reaper periods)."""
    srv = h.server(**kw)
    assert srv.dbus.get_grace() is False, "nothing recorded: no grace period"
    reclaim(h, srv, netns)  # a new client: recorded when its id is confirmed
    srv.stop()
    srv = h.server(**kw)
    assert srv.dbus.get_grace() is True, "a recorded client gets its grace period"
    reclaim(h, srv, netns)
    done = time.monotonic()
    while time.monotonic() - done < 12.5:
        if not srv.dbus.get_grace():
            return srv, time.monotonic() - done
        time.sleep(0.2)
    return srv, None


@pytest.mark.ganesha
def test_d24_nfsv4_only_grace_ends_once_the_recorded_client_reclaimed(h: Harness) -> None:
    """NFSv4 only: the restart's 30 s grace period ends within one reaper period (3 s with the 6 s lease; with
    Ganesha's 60 s lease it was up to 10 s) of the only recorded client's RECLAIM_COMPLETE."""
    srv, lifted = restart_and_reclaim(h, {"grace_period": GRACE}, None)
    assert lifted is not None and lifted <= 3.5, f"grace not lifted within 3.5 s of reclaim: {lifted}"
    log = srv.settings.log_path.read_text(errors="replace")
    assert "reclaim complete(1) clid count(1)" in log and "NOT IN GRACE" in log


@pytest.mark.ganesha
def test_d24_nfsv3_without_nlm_grace_ends_once_reclaimed_and_with_nlm_it_does_not(h: Harness) -> None:
    """NFSv3 served without NLM (no rpc.statd, nlockmgr not registered): grace ends like NFSv4 only. With NLM
    (the previous and still default way) the same reclaim leaves Ganesha in grace: it waits the whole period."""
    ns = h.make_netns(addresses=(f"{ALLOWED}/24",))
    kw: dict[str, object] = {"netns": ns.path, "mountns": ns.mountns, "nfsv3": True, "nlm": False,
                             "bind_addr": None, "ports": Ports(), "grace_period": GRACE}
    srv, lifted = restart_and_reclaim(h, kw, ns.path)
    assert set(srv.helper_pids()) == {"dbus-daemon", "rpcbind"}, "no rpc.statd without NLM"
    rpcinfo = subprocess.run(["nsenter", f"--net={ns.path}", "rpcinfo", "-p", "127.0.0.1"],
                             capture_output=True, text=True, check=True).stdout
    programs = {line.split()[4] for line in rpcinfo.splitlines()[1:] if len(line.split()) >= 5}
    assert {"portmapper", "nfs", "mountd", "rquotad"} <= programs and not {"nlockmgr", "status"} & programs
    assert lifted is not None and lifted <= 3.5, f"grace not lifted within 3.5 s of reclaim: {lifted}"
    vol = h.volume("v3", content={"f": b"served over NFSv3 without NLM\n"})
    srv.exports.add(ExportRequest(name="v3", path=vol, clients=("*",)))
    v3 = Client(host=ALLOWED, version=3, netns=ns.path)
    assert v3.cat(vol / "f").stdout == b"served over NFSv3 without NLM\n"
    assert v3.put(b"written", vol / "g").returncode == 0 and (vol / "g").read_bytes() == b"written"
    srv.stop()
    # A statd host from an earlier run with NLM is nothing to reclaim without it: that start has no grace.
    for sub in ("v4recov", "v4old"):
        for record in (srv.settings.recovery_path / sub).iterdir():
            subprocess.run(["rm", "-rf", str(record)], check=True)
    (srv.config_dir / "statd" / "sm").mkdir(parents=True, exist_ok=True)
    (srv.config_dir / "statd" / "sm" / ALLOWED).write_text("0100007f 000186b5 00000004 00000010 0 0 0 0 host\n")
    srv = h.server(**kw)
    assert srv.reclaimable_state() == (0, 0) and srv.dbus.get_grace() is False
    srv.stop()
    (srv.config_dir / "statd" / "sm" / ALLOWED).unlink()

    srv, lifted = restart_and_reclaim(h, {**kw, "nlm": True}, ns.path)
    assert set(srv.helper_pids()) == {"dbus-daemon", "rpcbind", "rpc.statd"}
    assert lifted is None, f"with NLM Ganesha ended grace {lifted} s after reclaim"
    assert srv.dbus.get_grace() is True
