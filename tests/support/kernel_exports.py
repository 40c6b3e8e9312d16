"""What tests/{e2e,unit}/test_kernel_exports.py share (one module per lane: the tests of one module
needed different things)."""

from __future__ import annotations

from pathlib import Path

OPERATOR_DIR = Path("/usr/share")  # exportfs stats every exported path; any existing directory will do


OPERATOR_LINE = f"{OPERATOR_DIR} 10.9.0.0/16(ro,sync,no_subtree_check,fsid=1)"
