"""The command line: flags, environment variables, defaults, and one-line errors."""

from __future__ import annotations

import json
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
        # Only ASCII digits: int() reads '١٢' (Arabic-Indic) as 12 and refuses '²' with its own message.
        (["--grace-period=١٢"], OUT, "--grace-period: invalid value '١٢': not an integer"),
        (["--nfs-port=²"], OUT, "--nfs-port: invalid value '²': not an integer"),
        (["--threadiness=1_6"], OUT, "--threadiness: invalid value '1_6': not an integer"),
        (["--max-exports=" + "9" * 5000], OUT, "--max-exports: invalid value"),
        (["--kube-api-burst=\u0661\u0660"], OUT, "--kube-api-burst: invalid value"),
        (["--kube-api-qps=nan"], OUT, "--kube-api-qps: invalid value 'nan': not a finite number"),
        (["--kube-api-qps=inf"], OUT, "--kube-api-qps: invalid value 'inf': not a finite number"),
        (["--kube-api-qps=-Infinity"], OUT, "--kube-api-qps: invalid value"),
        (["--kube-api-qps=1e999"], OUT, "--kube-api-qps: invalid value '1e999': not a finite number"),
        (["--kube-api-qps=\u0661\u0660"], OUT, "--kube-api-qps: invalid value"),
        (["--kube-api-qps=0"], OUT, "--kube-api-qps must be a finite number > 0"),
        (["--leader-elect-lease-duration=nans"], OUT, "--leader-elect-lease-duration: invalid value"),
        (["--metrics-address=:²"], OUT, "is not host:port"),
        (["--metrics-address=:٩٠٩٠"], OUT, "is not host:port"),
        (["-v=x"], OUT, "-v: invalid value 'x'"),
        (["-v"], OUT, "-v: glog flag needs a value"),
        (["-logtostderr=maybe"], OUT, "-logtostderr: invalid value 'maybe'"),
        (["--provisioner=Example.com/nfs", "--leader-elect"], OUT, "the Lease would be named 'Example.com-nfs'"),
        (["--provisioner=example.com/nfs\n"], OUT, "is not a qualified name"),
        (["--provisioner=a/b/c"], OUT, "is not a qualified name"),
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


@pytest.mark.parametrize("value", ["nan", "inf"])
def test_a_qps_that_is_not_finite_exits_2_with_one_line(value: str) -> None:
    r = subprocess.run([sys.executable, "-m", "nfs_provisioner", "--kubeconfig=/x", f"--kube-api-qps={value}"],
                       capture_output=True, text=True)
    assert (r.returncode, r.stderr) == (
        2, f"nfs-provisioner: error: --kube-api-qps: invalid value '{value}': not a finite number\n")
    with pytest.raises(SettingsError, match="finite"):
        validate(Settings(kubeconfig=Path("/x"), kube_api_qps=float(value)), in_cluster=False)


def test_numbers_in_ascii_are_read() -> None:
    s = cli.parse(["--grace-period= 12 ", "--max-exports=-1", "--kube-api-qps=2.5e2", "--kube-api-burst=+7",
                   "--leader-elect-retry-period=.5s"], {})
    assert (s.grace_period, s.max_exports, s.kube_api_qps, s.kube_api_burst) == (12, -1, 250.0, 7)
    assert s.leader_election.retry_period == 0.5


@pytest.mark.parametrize("name", ["nfs", "Example.com/nfs", "example.com/NFS_x.1", "a" * 63, "a-b.c/" + "X" * 63,
                                  "x/y", "1.2.3/4"])
def test_provisioner_names_the_go_provisioner_accepts(name: str) -> None:
    """Go: validation.IsQualifiedName(strings.ToLower(provisioner)); the prefix is optional."""
    s = cli.parse([f"-provisioner={name}", "--kubeconfig=/x"], {})
    validate(s, in_cluster=False)
    assert s.provisioner == name


@pytest.mark.parametrize("name", ["", "/nfs", "example.com/", "a/b/c", "-nfs", "nfs-", "n fs", "a" * 64,
                                  "exa_mple.com/nfs", "-example.com/nfs", "example..com/nfs", "é", "nfs\n",
                                  "a" * 254 + "/nfs", "example.com/nfs/"])
def test_provisioner_names_the_go_provisioner_refuses(name: str) -> None:
    with pytest.raises(SettingsError, match="is not a qualified name"):
        validate(Settings(provisioner=name, kubeconfig=Path("/x")), in_cluster=False)


GO_FLAGS = {  # the Go nfs-provisioner's flags (cmd/nfs-provisioner/main.go), one value each
    "provisioner": "vendor.io/nfs", "master": "https://127.0.0.1:6443", "kubeconfig": "/k", "run-server": "false",
    "use-ganesha": "false", "grace-period": "0", "enable-xfs-quota": "true", "server-hostname": "nfs.example",
    "export-subnet": "10.0.0.0/8", "max-exports": "5", "device-based-fsids": "false", "leader-elect": "true",
}


def test_every_go_flag_works_with_one_dash() -> None:
    """``-name=value`` and, for flags with a value, ``-name value``, as Go's flag package reads them."""
    eq = cli.parse([f"-{k}={v}" for k, v in GO_FLAGS.items()], {})
    sep = cli.parse([a for k, v in GO_FLAGS.items()
                     for a in ([f"-{k}={v}"] if v in ("true", "false") else [f"-{k}", v])], {})
    dashes = cli.parse([f"--{k}={v}" for k, v in GO_FLAGS.items()], {})
    assert eq == sep == dashes
    assert (eq.provisioner, eq.master, eq.kubeconfig, eq.run_server, eq.use_ganesha) == (
        "vendor.io/nfs", "https://127.0.0.1:6443", Path("/k"), False, False)
    assert (eq.grace_period, eq.enable_xfs_quota, eq.server_hostname, eq.export_subnet, eq.max_exports) == (
        0, True, "nfs.example", "10.0.0.0/8", 5)
    assert (eq.device_based_fsids, eq.leader_election.enabled) == (False, True)


def test_glog_flags_are_accepted_with_one_warning_each() -> None:
    argv = ["-v=4", "-logtostderr", "--alsologtostderr=true", "-stderrthreshold=INFO", "--log_dir", "/var/log/x",
            "-vmodule=foo=2", "-log_backtrace_at=a.go:1", "--kubeconfig=/k"]
    s, warnings = cli.parse_args(argv, {})
    assert s.log_level == "DEBUG" and s.kubeconfig == Path("/k")
    assert warnings == [
        "-v=4 is a glog flag of the Go provisioner: log level DEBUG (use --log-level)",
        "-logtostderr is a glog flag of the Go provisioner: ignored, the log always goes to stderr",
        "-alsologtostderr=true is a glog flag of the Go provisioner: ignored, the log always goes to stderr",
        "-stderrthreshold=INFO is a glog flag of the Go provisioner: ignored, the log always goes to stderr",
        "-log_dir=/var/log/x is a glog flag of the Go provisioner: ignored, the log always goes to stderr",
        "-vmodule=foo=2 is a glog flag of the Go provisioner: ignored, the log always goes to stderr",
        "-log_backtrace_at=a.go:1 is a glog flag of the Go provisioner: ignored, the log always goes to stderr",
    ]
    assert cli.parse(["-v=3"], {}).log_level == "INFO"
    assert cli.parse(["-v", "9"], {"NFS_PROVISIONER_LOG_LEVEL": "ERROR"}).log_level == "DEBUG", "a flag beats env"
    assert cli.parse(["-v=4", "--log-level=ERROR"], {}).log_level == "ERROR", "--log-level beats -v"


def test_with_log_json_a_configuration_error_is_one_json_line() -> None:
    r = subprocess.run([sys.executable, "-m", "nfs_provisioner", "--log-json", "--kubeconfig=/x",
                        "--grace-period=500"], capture_output=True, text=True)
    assert r.returncode == 2
    [line] = r.stderr.splitlines()
    entry = json.loads(line)
    assert (entry["level"], entry["msg"]) == ("error", "--grace-period 500 is out of range 0-180 seconds")


def test_a_grace_period_without_our_server_is_a_warning() -> None:
    """Go refuses a custom grace period with --run-server=false; this appliance warns (the setting is harmless)."""
    from nfs_provisioner.settings import warnings

    assert warnings(cli.parse(["--run-server=false", "--grace-period=0"], {})) == [
        "--grace-period 0 has no effect with --run-server=false: the grace period is the NFS server's, and this "
        "process does not run that server"]
    assert warnings(cli.parse(["--run-server=false"], {})) == []
    assert warnings(cli.parse(["--grace-period=0"], {})) == []


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


def test_with_log_json_what_python_prints_itself_is_json_too() -> None:
    """Uncaught exceptions (main thread and others) and warnings would be printed raw to stderr."""
    code = ("import threading, warnings\n"
            "from nfs_provisioner import logs\n"
            "logs.configure(json_lines=True)\n"
            "t = threading.Thread(target=lambda: 1 / 0, name='worker'); t.start(); t.join()\n"
            "warnings.warn('deprecated thing')\n"
            "raise RuntimeError('boom')\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 1
    entries = [json.loads(line) for line in r.stderr.splitlines()]
    assert (entries[0]["level"], entries[0]["msg"]) == ("critical", "uncaught exception in thread worker")
    assert "ZeroDivisionError" in entries[0]["exc"]
    assert any("deprecated thing" in e["msg"] for e in entries)
    assert entries[-1]["msg"] == "uncaught exception" and "RuntimeError: boom" in entries[-1]["exc"]
