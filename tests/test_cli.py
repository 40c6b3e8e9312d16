"""The command line: flags, environment variables, defaults, and one-line errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import nfs_provisioner
from nfs_provisioner import cli
from nfs_provisioner.settings import Settings, SettingsError, validate

pytestmark = pytest.mark.unit

OUT = {"kubeconfig": "/tmp/kc"}


def test_version_from_python_module() -> None:
    r = subprocess.run([sys.executable, "-m", "nfs_provisioner", "--version"], capture_output=True, text=True)
    assert r.returncode == 0
    assert r.stdout.strip() == f"nfs-provisioner {nfs_provisioner.__version__}"


def test_defaults_match_the_original_appliance() -> None:
    s = cli.parse([], {})
    assert s == Settings()
    assert (s.provisioner, s.run_server, s.use_ganesha, s.grace_period) == ("example.com/nfs", True, True, 90)
    assert (s.enable_xfs_quota, s.export_subnet, s.max_exports, s.device_based_fsids) == (False, None, -1, True)
    assert s.leader_election.enabled is False
    assert s.export_root == Path("/export")


def test_flags_env_and_precedence() -> None:
    env = {"NFS_PROVISIONER_GRACE_PERIOD": "30", "NFS_PROVISIONER_PROVISIONER": "env.io/nfs",
           "NFS_PROVISIONER_LEADER_ELECT": "yes", "NFS_PROVISIONER_LEADER_ELECT_RETRY_PERIOD": "500ms"}
    s = cli.parse(["--provisioner=flag.io/nfs", "--enable-xfs-quota", "--run-server=false",
                   "--leader-elect-lease-duration", "1m", "--export-root", "/srv/x"], env)
    assert s.provisioner == "flag.io/nfs"  # flag beats env
    assert s.grace_period == 30  # env beats default
    assert s.enable_xfs_quota is True and s.run_server is False
    assert s.leader_election.enabled is True
    assert s.leader_election.lease_duration == 60.0
    assert s.leader_election.retry_period == 0.5
    assert s.export_root == Path("/srv/x")


def test_go_style_single_dash_flags_are_accepted() -> None:
    s = cli.parse(["-provisioner=example.com/nfs", "-grace-period=0", "-device-based-fsids=false"], {})
    assert s.grace_period == 0 and s.device_based_fsids is False


@pytest.mark.parametrize(
    ("argv", "env", "message"),
    [
        (["--grace-period=181"], OUT, "--grace-period 181 is out of range 0-180"),
        (["--grace-period=-1"], OUT, "out of range"),
        (["--grace-period=soon"], OUT, "--grace-period: invalid value 'soon'"),
        (["--provisioner=nfs"], OUT, "is not a qualified name"),
        (["--provisioner=Example.com/nfs"], OUT, "is not a qualified name"),
        (["--provisioner=example.com/nfs\n"], OUT, "is not a qualified name"),
        (["--use-ganesha=false"], OUT, "--run-server needs --use-ganesha"),
        (["--server-hostname=nfs.example"], {"KUBERNETES_SERVICE_HOST": "10.0.0.1"},
         "--server-hostname is for running out of cluster"),
        ([], {}, "neither --kubeconfig nor --master"),
        (["--max-exports=0"], OUT, "--max-exports 0 must be -1"),
        (["--export-root=relative"], OUT, "must be an absolute path"),
        (["--export-subnet=10.0.0.0/33"], OUT, "is not 'nodes', 'node-ips', '*', an address or a CIDR"),
        (["--nfs-port=70000"], OUT, "is not a port number"),
        (["--nfs-bind-address=localhost"], OUT, "is not an IP address"),
        (["--metrics-address=9090"], OUT, "is not host:port"),
        (["--run-server=maybe"], OUT, "'maybe' is not a boolean"),
        (["--log-level=chatty"], OUT, "is not one of DEBUG"),
        (["--leader-elect", "--leader-elect-renew-deadline=20s"], OUT, "lease-duration must be greater"),
        (["--ganesha-templates=/nonexistent/t"], OUT, "is not a directory"),
    ],
)
def test_invalid_input_is_one_clear_line(argv: list[str], env: dict[str, str], message: str) -> None:
    env = {f"NFS_PROVISIONER_{k.upper()}": v for k, v in env.items() if k != "KUBERNETES_SERVICE_HOST"} | (
        {"KUBERNETES_SERVICE_HOST": env["KUBERNETES_SERVICE_HOST"]} if "KUBERNETES_SERVICE_HOST" in env else {})
    with pytest.raises(SettingsError, match=message.replace("*", r"\*").replace("(", r"\(")) as err:
        s = cli.parse(argv, env)
        validate(s, in_cluster=not s.out_of_cluster and "KUBERNETES_SERVICE_HOST" in env)
    assert "\n" not in str(err.value)


def test_invalid_combination_exits_nonzero_with_the_reason() -> None:
    r = subprocess.run([sys.executable, "-m", "nfs_provisioner", "--kubeconfig=/x", "--grace-period=500"],
                       capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stderr.strip() == "nfs-provisioner: error: --grace-period 500 is out of range 0-180 seconds"


def test_subnets_are_normalised() -> None:
    from nfs_provisioner.settings import parse_subnets

    assert parse_subnets("*") == ["*"]
    assert parse_subnets("10.1.2.3/8, 192.168.0.7") == ["10.0.0.0/8", "192.168.0.7/32"]


def test_who_may_mount_defaults_to_the_nodes_and_out_of_cluster_adds_loopback() -> None:
    from nfs_provisioner.settings import ClientPolicy, client_policy

    assert client_policy(cli.parse([], {})) == ClientPolicy(nodes=True, fixed=())
    assert client_policy(cli.parse(["--kubeconfig=/k"], {})) == ClientPolicy(nodes=True,
                                                                             fixed=("127.0.0.0/8", "::1/128"))
    assert client_policy(cli.parse(["--kubeconfig=/k", "--export-subnet=nodes"], {})) == ClientPolicy(
        nodes=True, fixed=())
    assert client_policy(cli.parse(["--export-subnet=Nodes, 10.1.2.3/8"], {})) == ClientPolicy(
        nodes=True, fixed=("10.0.0.0/8",))
    assert client_policy(cli.parse(["--export-subnet=node-ips"], {})) == ClientPolicy(
        nodes=True, fixed=(), pod_gateways=False)
    assert client_policy(cli.parse(["--kubeconfig=/k"], {"NFS_PROVISIONER_EXPORT_SUBNET": "*"})) == ClientPolicy(
        nodes=False, fixed=("*",))
    with pytest.raises(SettingsError, match="IPv6 networks longer than /64"):
        validate(cli.parse(["--kubeconfig=/k", "--export-subnet=fd00::/120"], {}), in_cluster=False)
