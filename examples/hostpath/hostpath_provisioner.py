#!/usr/bin/env python3
"""The hostPath dynamic provisioner of "Writing an Out-of-tree Dynamic Provisioner", in Python.

Every PV is backed by a new directory ``<pv-dir>/<pv name>``; every instance has an
identity (the node name, from NODE_NAME) stored on its PVs, and ``delete``
answers ``IgnoredError`` for PVs of another identity. Single-node testing and
demonstration only: it creates and deletes directories on this host.

    NODE_NAME=$(hostname) python3 examples/hostpath/hostpath_provisioner.py --kubeconfig ~/.kube/config
    kubectl create -f examples/hostpath/class.yaml -f examples/hostpath/claim.yaml
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shutil
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

try:
    import nfs_provisioner  # noqa: F401
except ImportError:  # run from a source checkout without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from nfs_provisioner.controller import (
    ClientSettings,
    ControllerSettings,
    IgnoredError,
    LeaderElectionSettings,
    Object,
    ProvisionController,
    Provisioner,
    ProvisionOptions,
    RetrySettings,
    ServingSettings,
)

IDENTITY_ANNOTATION = "hostPathProvisionerIdentity"
log = logging.getLogger("hostpath-provisioner")


class HostPathProvisioner(Provisioner):
    def __init__(self, pv_dir: str | Path, identity: str) -> None:
        self.pv_dir = Path(pv_dir)
        self.identity = identity

    def _path(self, pv_name: str) -> Path:
        # PV names are DNS subdomains, but never let a name steer us outside pv_dir.
        if not pv_name or "/" in pv_name or pv_name in (".", ".."):
            raise ValueError(f"refusing unsafe volume name {pv_name!r}")
        return self.pv_dir / pv_name

    def provision(self, options: ProvisionOptions) -> Object:
        path = self._path(options.pv_name)
        path.mkdir(mode=0o777, parents=True, exist_ok=True)
        path.chmod(0o777)
        return {
            "metadata": {"name": options.pv_name, "annotations": {IDENTITY_ANNOTATION: self.identity}},
            "spec": {
                "persistentVolumeReclaimPolicy": options.reclaim_policy,
                "accessModes": options.access_modes,
                "capacity": {"storage": options.requested_storage},
                "hostPath": {"path": str(path)},
            },
        }

    def delete(self, volume: Object) -> None:
        annotations = volume.get("metadata", {}).get("annotations") or {}
        identity = annotations.get(IDENTITY_ANNOTATION)
        if identity is None:
            raise RuntimeError("identity annotation not found on PV")
        if identity != self.identity:
            raise IgnoredError("identity annotation on PV does not match ours")
        # Already gone is fine: a retry, or a restart after a crash.
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(self._path(volume["metadata"]["name"]))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--kubeconfig", help="kubeconfig to use out of cluster (default: in-cluster credentials)")
    p.add_argument("--provisioner-name", default="example.com/hostpath")
    p.add_argument("--pv-dir", default="/tmp/hostpath-provisioner")
    p.add_argument("--threadiness", type=int, default=ControllerSettings.threadiness)
    p.add_argument("--qps", type=float, default=ClientSettings.qps)
    p.add_argument("--burst", type=int, default=ClientSettings.burst)
    p.add_argument("--resync-period", type=float, default=15.0, help="seconds (the guide uses 15 s)")
    p.add_argument("--exponential-backoff", action=argparse.BooleanOptionalAction, default=False,
                   help="exponential backoff on errors (the guide: off)")
    p.add_argument("--retry-delay", type=float, default=15.0, help="seconds: fixed delay, or backoff base")
    p.add_argument("--failed-retry-threshold", type=int, default=5, help="the guide uses 5; 0 = forever")
    p.add_argument("--leader-elect", action="store_true")
    p.add_argument("--lease-duration", type=float, default=15.0)
    p.add_argument("--renew-deadline", type=float, default=10.0)
    p.add_argument("--retry-period", type=float, default=2.0)
    p.add_argument("--identity", default=None, help="leader-election identity (default hostname_uuid)")
    p.add_argument("--shutdown-grace", type=float, default=ControllerSettings.shutdown_grace,
                   help="seconds SIGTERM waits for running operations before handing them back")
    p.add_argument("--metrics-address", default=None, help="host:port for /metrics and /healthz")
    p.add_argument("--in-flight-journal", type=Path, default=None,
                   help="directory for in-flight records instead of a finalizer on each claim (keep it on the "
                        "same disk as --pv-dir)")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def main(argv: Sequence[str] | None = None,
         factory: Callable[[str, str], Provisioner] = HostPathProvisioner) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    node = os.environ.get("NODE_NAME")
    if not node:
        log.error("env variable NODE_NAME must be set so that this provisioner can identify itself")
        return 2
    settings = ControllerSettings(
        provisioner_name=args.provisioner_name,
        threadiness=args.threadiness,
        resync_period=args.resync_period,
        # Standalone instances on several nodes answer each other with IgnoredError: one in-flight record
        # per node. A leader-elected group acts as one instance and shares the default record.
        instance_name=ControllerSettings.instance_name if args.leader_elect else node,
        shutdown_grace=args.shutdown_grace,
        in_flight_journal=args.in_flight_journal,
        client=ClientSettings(qps=args.qps, burst=args.burst),
        retry=RetrySettings(exponential_backoff=args.exponential_backoff, base_delay=args.retry_delay,
                            fixed_delay=args.retry_delay, failed_provision_threshold=args.failed_retry_threshold,
                            failed_delete_threshold=args.failed_retry_threshold,
                            save_retry_delay=min(5.0, args.retry_delay)),
        leader_election=LeaderElectionSettings(enabled=args.leader_elect, identity=args.identity,
                                               lease_duration=args.lease_duration,
                                               renew_deadline=args.renew_deadline, retry_period=args.retry_period),
        serving=ServingSettings(address=args.metrics_address),
    )
    controller = ProvisionController(factory(args.pv_dir, node), settings, kubeconfig=args.kubeconfig)
    controller.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
