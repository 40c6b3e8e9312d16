"""Command line entry point of the ``nfs-provisioner`` console script.

Only ``--version`` and ``--help`` exist so far; the appliance's flags arrive
with the appliance itself (see README "Status").
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import nfs_provisioner


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nfs-provisioner",
        description="All-in-one NFS provisioner appliance for Kubernetes.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {nfs_provisioner.__version__}")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    parser.parse_args(argv)
    parser.error("the appliance is not implemented yet; only --version and --help are available")
