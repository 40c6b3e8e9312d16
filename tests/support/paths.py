"""Where the suite's files are: the repository, and the fixtures (data copied from elsewhere, see their READMEs)."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
"""The repository's root (the suite runs from anywhere: every path is built from here)."""
FIXTURES = REPO / "tests" / "fixtures"
"""Data the suite reads: the Go provisioner's output and its chart, byte for byte."""
