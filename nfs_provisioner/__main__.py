"""``python -m nfs_provisioner`` runs the same entry point as the console script."""

import sys

from nfs_provisioner import cli

sys.exit(cli.main())
