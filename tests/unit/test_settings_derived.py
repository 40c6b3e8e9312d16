"""``appliance.derived``: the parts' settings come from the appliance's in one place, each function's docstring
lists every field it sets (checked here against what it really changes), and every flag lands where it did."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from nfs_provisioner import cli
from nfs_provisioner.appliance import derived
from nfs_provisioner.controller.settings import ControllerSettings
from nfs_provisioner.ganesha.settings import GANESHA_ROOT_ENV, TEMPLATES_ENV, ServerSettings
from nfs_provisioner.kube.client import ClientSettings
from nfs_provisioner.settings import LeaderElection, Settings

pytestmark = pytest.mark.unit

RUN = Path("/run/nfsp-test")
CLIENTS = ("10.0.0.1",)


def unusual(tmp_path: Path) -> Settings:
    """Every field the parts take, off its default."""
    return Settings(
        provisioner="vendor.io/odd", export_root=tmp_path / "root", threadiness=3, kube_api_qps=7.0,
        kube_api_burst=11, nfs_port=12049, nfs_bind_address="127.0.0.9", nfsv3=False, nfsv3_locking=False,
        grace_period=17, device_based_fsids=False, ganesha_templates=tmp_path / "tpl", run_server=False,
        leader_election=LeaderElection(enabled=True, namespace="elect", lease_duration=31.0, renew_deadline=21.0,
                                       retry_period=3.0))


ENVIRON = {GANESHA_ROOT_ENV: "/opt/ganesha", "DBUS_SYSTEM_BUS_ADDRESS": "unix:path=/x/bus"}

DERIVED: list[tuple[Callable[..., Any], Callable[[Path], Any], Callable[[Path], Any]]] = [
    (derived.client_settings, lambda p: derived.client_settings(unusual(p)), lambda p: ClientSettings()),
    (derived.controller_settings, lambda p: derived.controller_settings(unusual(p), identity="id-1"),
     lambda p: ControllerSettings(provisioner_name="example.com/nfs")),
    (derived.ganesha_settings,
     lambda p: derived.ganesha_settings(unusual(p), run_dir=RUN, clients=CLIENTS, environ=ENVIRON),
     lambda p: ServerSettings(export_root=Path("/export"), run_dir=Path("/run"))),
]


def listed(function: Callable[..., Any]) -> set[str]:
    return set(re.findall(r"``(\w+)`` <-", function.__doc__ or ""))


@pytest.mark.parametrize(("function", "make", "baseline"), DERIVED, ids=lambda v: getattr(v, "__name__", ""))
def test_every_field_set_is_documented(function: Callable[..., Any], make: Callable[[Path], Any],
                                       baseline: Callable[[Path], Any], tmp_path: Path) -> None:
    made, base = make(tmp_path), baseline(tmp_path)
    fields = {f.name for f in dataclasses.fields(made)}
    changed = {f for f in fields if getattr(made, f) != getattr(base, f)}
    assert changed, "the unusual settings change something"
    assert listed(function) <= fields, f"documented fields {listed(function) - fields} do not exist"
    assert changed <= listed(function), f"{function.__name__} sets {changed - listed(function)} undocumented"


def test_values_land_where_they_did(tmp_path: Path) -> None:
    s = unusual(tmp_path)
    c = derived.controller_settings(s, identity="id-1")
    assert (c.provisioner_name, c.instance_name, c.threadiness) == ("vendor.io/odd", "id-1", 3)
    assert c.in_flight_journal == tmp_path / "root" / ".provisioning" and c.serving.address is None
    assert (c.client.qps, c.client.burst) == (7.0, 11) and c.client == derived.client_settings(s)
    le = c.leader_election
    assert (le.enabled, le.namespace, le.lease_duration, le.renew_deadline, le.retry_period) == (
        True, "elect", 31.0, 21.0, 3.0)
    g = derived.ganesha_settings(s, run_dir=RUN, clients=CLIENTS, environ=ENVIRON)
    assert (g.export_root, g.run_dir, g.ports.nfs, g.ports.mountd, g.bind_addr) == (
        tmp_path / "root", RUN, 12049, 20048, "127.0.0.9")
    assert (g.nfsv3, g.nlm, g.grace_period, g.device_based_fsids, g.clients) == (False, False, 17, False, CLIENTS)
    assert (g.template_dir, g.ganesha_root, g.dbus_address) == (
        tmp_path / "tpl", Path("/opt/ganesha"), "unix:path=/x/bus")
    served = derived.ganesha_settings(dataclasses.replace(s, run_server=True), run_dir=RUN, clients=CLIENTS,
                                      environ=ENVIRON)
    assert served.dbus_address is None  # the manager starts its own bus


def test_templates_flag_then_environment_through_the_appliance(tmp_path: Path) -> None:
    """As before the settings stopped reading the environment: --ganesha-templates, else the variable."""
    env = {TEMPLATES_ENV: str(tmp_path / "env")}
    for argv, want in (([], tmp_path / "env"), (["--ganesha-templates", str(tmp_path / "flag")], tmp_path / "flag")):
        g = derived.ganesha_settings(cli.parse(argv, env), run_dir=RUN, clients=CLIENTS, environ=env)
        assert g.template_dir == want
    g = derived.ganesha_settings(cli.parse([], {}), run_dir=RUN, clients=CLIENTS, environ={})
    assert (g.template_dir, g.ganesha_root) == (None, None)
