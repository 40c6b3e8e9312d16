"""Grace that ends when reclaim is done (issue 24): NFSv3 with or without NLM, and the lease that paces it.

Ganesha (9.14 as 6.2: ``nfs_try_lift_grace`` in SAL/nfs4_recovery.c) ends a grace period early only when NLM is
off, and then once every client recorded in the recovery backend has sent RECLAIM_COMPLETE; its reaper thread
checks that every ``min(10, Lease_Lifetime / 2)`` seconds. With NLM on it waits for the whole period. The
kernel client's view of it is measured in tests/uml_kclient.py (step ``grace_and_lock_reclaim``)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nfs_provisioner import cli
from nfs_provisioner import settings as settings_mod
from nfs_provisioner.ganesha import config
from nfs_provisioner.ganesha.exports import ExportRequest
from nfs_provisioner.ganesha.server import GaneshaServer
from nfs_provisioner.ganesha.settings import Ports, ServerSettings
from tests import kubecluster, nfs42_client
from tests.ganesha_env import Client, Harness
from tests.helm_env import CHART, Helm

ALLOWED = "10.79.0.1"
GRACE = 30
OWNER = b"\x01" * 8 + b"nfsp-grace-test-client"


def main_config(tmp_path: Path, **kw: object) -> str:
    s = ServerSettings(export_root=tmp_path / "export", run_dir=tmp_path / "run", **kw)  # type: ignore[arg-type]
    return config.Templates().render_main(s, export_index=Path("/x/exports.conf"))


@pytest.mark.unit
def test_nfsv3_without_nlm_turns_nlm_off_and_keeps_v3(tmp_path: Path) -> None:
    without = main_config(tmp_path, nfsv3=True, nlm=False, grace_period=90)
    assert "Protocols = 3, 4;" in without and "MNT_Port = 20048;" in without
    assert "Enable_NLM = false;" in without and "NLM_Port" not in without
    with_nlm = main_config(tmp_path, nfsv3=True, grace_period=90)
    assert "NLM_Port = 32803;" in with_nlm and "Enable_NLM" not in with_nlm, "NLM stays on by default"
    v4 = main_config(tmp_path, nfsv3=False, nlm=True, grace_period=90)
    assert "Protocols = 4;" in v4 and "Enable_NLM = false;" in v4, "NFSv4 only never serves NLM"


@pytest.mark.unit
def test_lease_paces_the_reaper_that_ends_grace(tmp_path: Path) -> None:
    """Lease_Lifetime < 20 makes Ganesha's reaper (the only thread that ends grace early) run every lease/2 s
    instead of every 10 s: 6 s lets grace end within 3 s of the last RECLAIM_COMPLETE."""
    assert "Lease_Lifetime = 6;" in main_config(tmp_path, grace_period=90)
    assert "Lease_Lifetime = 5;" in main_config(tmp_path, grace_period=5), "still capped by a shorter grace"


@pytest.mark.unit
def test_nfsv3_locking_flag_and_env() -> None:
    base = ["--kubeconfig=/k"]
    assert cli.parse(base, {}).nfsv3_locking is True, "a user upgrading keeps NLM"
    assert cli.parse([*base, "--nfsv3-locking=false"], {}).nfsv3_locking is False
    env = {"NFS_PROVISIONER_NFSV3_LOCKING": "false"}
    assert cli.parse(base, env).nfsv3_locking is False
    # Helm passes it with --nfsv3=false too: no warning for that.
    assert not settings_mod.warnings(settings_mod.Settings(nfsv3=False, nfsv3_locking=False))


def reclaim(h: Harness, srv: GaneshaServer, netns: Path | None) -> None:
    """The recorded client comes back: EXCHANGE_ID with its owner, CREATE_SESSION, RECLAIM_COMPLETE."""
    if netns is None:
        nfs42_client.Client(host="127.0.0.1", port=h.port, owner=OWNER).close()
        return
    code = ("import sys; from tests import nfs42_client; "
            f"nfs42_client.Client(host={ALLOWED!r}, port=2049, owner={OWNER!r}).close()")
    subprocess.run(["nsenter", f"--net={netns}", sys.executable, "-c", code], check=True, timeout=60,
                   cwd=Path(__file__).resolve().parent.parent)


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


def workload_args(cluster: kubecluster.Cluster, namespace: str, name: str) -> list[str]:
    sts = json.loads(cluster.kubectl("get", "statefulset", name, "-n", namespace, "-o", "json").stdout)
    (c,) = [c for c in sts["spec"]["template"]["spec"]["containers"] if c["name"] == "nfs-provisioner"]
    return list(c["args"])


@pytest.mark.helm
@pytest.mark.kube
def test_helm_upgrade_keeps_nlm_and_a_new_install_serves_nfsv3_without_it(
        tmp_path: Path, cluster: kubecluster.Cluster, namespace: str) -> None:
    """``nfsv3Locking`` unset: a new install runs --nfsv3-locking=false; an upgrade keeps what the release's
    workload runs with, and a release made by a chart before the value (no such argument) keeps NLM. Installed
    without waiting (no node needed: only the StatefulSet's arguments are read)."""
    helm = Helm(tmp_path, kubeconfig=cluster.kubeconfig)
    old = tmp_path / "old-chart"
    shutil.copytree(CHART, old)
    pod = old / "templates" / "_pod.tpl"
    pod.write_text("".join(line for line in pod.read_text().splitlines(keepends=True)
                           if "--nfsv3-locking" not in line))  # the chart as it was before the value
    releases = {"before": old, "fresh": CHART}
    try:
        for release, chart in releases.items():
            helm("install", release, str(chart), "-n", namespace)
        assert not [a for a in workload_args(cluster, namespace, "before-nfs-provisioner") if "locking" in a]
        assert "--nfsv3-locking=false" in workload_args(cluster, namespace, "fresh-nfs-provisioner")
        for release in releases:
            helm("upgrade", release, str(CHART), "-n", namespace, "--set", "gracePeriod=60")
        before = workload_args(cluster, namespace, "before-nfs-provisioner")
        assert "--nfsv3-locking=true" in before and "--grace-period=60" in before, "the upgrade dropped NLM"
        assert "--nfsv3-locking=false" in workload_args(cluster, namespace, "fresh-nfs-provisioner")
        helm("upgrade", "before", str(CHART), "-n", namespace, "--reuse-values", "--set", "nfsv3Locking=false")
        assert "--nfsv3-locking=false" in workload_args(cluster, namespace, "before-nfs-provisioner")
    finally:
        for release in releases:
            helm("uninstall", release, "-n", namespace, check=False)
