"""Grace that ends when reclaim is done (issue 24): NFSv3 with or without NLM, and the lease that paces it.

Ganesha (9.14 as 6.2: ``nfs_try_lift_grace`` in SAL/nfs4_recovery.c) ends a grace period early only when NLM is
off, and then once every client recorded in the recovery backend has sent RECLAIM_COMPLETE; its reaper thread
checks that every ``min(10, Lease_Lifetime / 2)`` seconds. With NLM on it waits for the whole period. The
kernel client's view of it is measured in tests/support/uml_kclient.py (step ``grace_and_lock_reclaim``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from nfs_provisioner import cli
from nfs_provisioner import settings as settings_mod
from nfs_provisioner.ganesha import config
from nfs_provisioner.ganesha.settings import ServerSettings


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
