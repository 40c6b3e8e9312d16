"""What the lanes of test_filesystem_volumes.py share (split by what each test needs)."""

from __future__ import annotations

MiB = 2**20
