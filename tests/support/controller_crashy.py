#!/usr/bin/env python3
"""The hostPath example with hooks for crash tests, run as a real process and killed with SIGKILL.

Environment:
  CRASHY_MARKERS   directory; ``provisioned-<pv>`` / ``deleted-<pv>`` files appear after each step
  CRASHY_HANG_PROVISION  if this file exists, ``provision`` hangs after creating the directory
  CRASHY_HANG_DELETE     if this file exists, ``delete`` hangs after removing the directory
  CRASHY_HANG_DELETE_BEFORE  if set, ``delete`` marks ``deleting-<pv>`` and hangs before removing it instead
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples" / "hostpath"))

import hostpath_provisioner

from nfs_provisioner.controller import Object, ProvisionOptions


def _mark(what: str) -> None:
    d = os.environ.get("CRASHY_MARKERS")
    if d:
        Path(d, what).write_text(str(os.getpid()))


def _hang(var: str) -> None:
    f = os.environ.get(var)
    if f and Path(f).exists():
        time.sleep(3600)


class Crashy(hostpath_provisioner.HostPathProvisioner):
    def provision(self, options: ProvisionOptions) -> Object:
        pv = super().provision(options)
        _mark(f"provisioned-{options.pv_name}")
        _hang("CRASHY_HANG_PROVISION")
        return pv

    def delete(self, volume: Object) -> None:
        if os.environ.get("CRASHY_HANG_DELETE_BEFORE"):
            _mark(f"deleting-{volume['metadata']['name']}")
            _hang("CRASHY_HANG_DELETE")
        super().delete(volume)
        _mark(f"deleted-{volume['metadata']['name']}")
        _hang("CRASHY_HANG_DELETE")


if __name__ == "__main__":
    sys.exit(hostpath_provisioner.main(factory=Crashy))
