"""The parts' settings, derived from the appliance's in one place.

The operator writes one tree, :class:`nfs_provisioner.settings.Settings` (flags and environment variables,
every field documented there). The parts have their own, documented where they are defined: the API client's
:class:`~nfs_provisioner.kube.client.ClientSettings`, the controller's
:class:`~nfs_provisioner.controller.settings.ControllerSettings` and Ganesha's
:class:`~nfs_provisioner.ganesha.settings.ServerSettings`. This module is the only place the appliance fills
them in; each function's docstring lists every field it sets and where the value comes from. A field not
listed keeps its part's default. ``tests/unit/test_settings_derived.py`` checks the lists against the code.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

from nfs_provisioner import settings as settings_mod
from nfs_provisioner.controller import settings as ctl_settings
from nfs_provisioner.ganesha.settings import Ports, ServerSettings
from nfs_provisioner.kube import client as kube

IN_FLIGHT_DIR = ".provisioning"
"""Under the export root: one record per provision in flight (see ``nfs_provisioner.controller.inflight``)."""


def client_settings(s: settings_mod.Settings) -> kube.ClientSettings:
    """The API client's settings (the appliance's own client and the controller's are the same).

    - ``qps`` <- ``kube_api_qps`` (``--kube-api-qps``)
    - ``burst`` <- ``kube_api_burst`` (``--kube-api-burst``)
    """
    return kube.ClientSettings(qps=s.kube_api_qps, burst=s.kube_api_burst)


def controller_settings(s: settings_mod.Settings, *, identity: str) -> ctl_settings.ControllerSettings:
    """The controller's settings.

    - ``provisioner_name`` <- ``provisioner`` (``--provisioner``)
    - ``instance_name`` <- ``identity``, the export root's identity: appliances sharing a class each have their
      own root and name their own legacy finalizer
    - ``in_flight_journal`` <- ``export_root`` / :data:`IN_FLIGHT_DIR`: provisions in flight are journaled
      beside the volumes (no claim writes)
    - ``threadiness`` <- ``threadiness`` (``--threadiness``)
    - ``client`` <- :func:`client_settings`
    - ``leader_election`` <- ``leader_election`` (``--leader-elect*``): ``enabled``, ``namespace``,
      ``lease_duration``, ``renew_deadline``, ``retry_period``
    - ``serving`` <- no address: the appliance serves /metrics and health itself, Ganesha's included
      (``metrics_address``)
    """
    le = s.leader_election
    return ctl_settings.ControllerSettings(
        provisioner_name=s.provisioner,
        instance_name=identity,
        in_flight_journal=s.export_root / IN_FLIGHT_DIR,
        threadiness=s.threadiness,
        client=client_settings(s),
        leader_election=ctl_settings.LeaderElectionSettings(
            enabled=le.enabled, namespace=le.namespace, lease_duration=le.lease_duration,
            renew_deadline=le.renew_deadline, retry_period=le.retry_period),
        serving=ctl_settings.ServingSettings(address=None),
    )


def ganesha_settings(s: settings_mod.Settings, *, run_dir: Path, clients: tuple[str, ...],
                     environ: Mapping[str, str]) -> ServerSettings:
    """Ganesha's settings.

    - ``export_root`` <- ``export_root`` (``--export-root``)
    - ``run_dir`` <- ``run_dir``, the appliance's short-lived runtime directory (``appliance.state``)
    - ``ports`` <- the default ports, NFS's (``Ports.nfs``) from ``nfs_port`` (``--nfs-port``)
    - ``bind_addr`` <- ``nfs_bind_address`` (``--nfs-bind-address``)
    - ``nfsv3`` <- ``nfsv3`` (``--nfsv3``); ``nlm`` <- ``nfsv3_locking`` (``--nfsv3-locking``)
    - ``grace_period`` <- ``grace_period`` (``--grace-period``)
    - ``device_based_fsids`` <- ``device_based_fsids`` (``--device-based-fsids``)
    - ``template_dir`` <- ``ganesha_templates`` (``--ganesha-templates``, ``NFS_PROVISIONER_GANESHA_TEMPLATES``)
    - ``ganesha_root`` <- ``NFS_PROVISIONER_GANESHA_ROOT`` in ``environ`` (``ServerSettings.defaults_from``)
    - ``clients`` <- ``clients``, who may mount now (``appliance.app.who_may_mount``, from ``export_subnet``)
    - ``dbus_address`` <- with ``run_server`` off (Ganesha run elsewhere), ``DBUS_SYSTEM_BUS_ADDRESS`` in
      ``environ``; else none (the manager starts its own bus)
    """
    return ServerSettings(
        export_root=s.export_root, run_dir=run_dir, ports=replace(Ports(), nfs=s.nfs_port),
        bind_addr=s.nfs_bind_address, nfsv3=s.nfsv3, nlm=s.nfsv3_locking,
        grace_period=s.grace_period,
        device_based_fsids=s.device_based_fsids, template_dir=s.ganesha_templates, clients=clients,
        dbus_address=None if s.run_server else environ.get("DBUS_SYSTEM_BUS_ADDRESS"),
    ).defaults_from(environ)
