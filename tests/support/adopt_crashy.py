#!/usr/bin/env python3
"""The appliance (``python -m nfs_provisioner``'s entry point) with one hook for the adoption crash test, run as a
real process and killed with SIGKILL.

Environment:
  ADOPT_HANG_AFTER   n: the adoption's (n+1)-th export hangs before it is made (its volume record is written),
                     after ``ADOPT_MARKER`` is created; the test kills the process there
  ADOPT_MARKER       the file created when the hang begins
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from nfs_provisioner import cli
from nfs_provisioner.appliance import adoption


class HangingExporter:
    """The appliance's exporter, except that export number ``after + 1`` never returns."""

    def __init__(self, inner: Any, after: int, marker: Path) -> None:
        self.inner, self.after, self.marker, self.calls = inner, after, marker, 0

    def export(self, **kw: Any) -> tuple[int, str]:
        self.calls += 1
        if self.calls > self.after:
            self.marker.write_text(str(kw.get("name")))
            time.sleep(3600)
        result: tuple[int, str] = self.inner.export(**kw)
        return result

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


_adopt = adoption.adopt


def adopt(**kw: Any) -> adoption.Report:
    kw["exporter"] = HangingExporter(kw["exporter"], int(os.environ["ADOPT_HANG_AFTER"]),
                                     Path(os.environ["ADOPT_MARKER"]))
    return _adopt(**kw)


adoption.adopt = adopt  # type: ignore[assignment]

if __name__ == "__main__":
    sys.exit(cli.main())
