"""Clone times: 1 GiB of data copied by the appliance's clone copy on real XFS inside User-Mode Linux,
with reflink (``reflink=1``), without (``reflink=0``: a full copy), and with reflink across XFS project
quotas (the appliance's layout). Printed as a table and written to bench/clone_results.json; not a
pass/fail test (tests/uml/test_clone_uml.py checks the same copy at 64 MiB).

    python -m bench.clone_bench [--size-mb 1024]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.uml import test_clone_uml  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=1024)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "clone_results.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="nfsp-clone-bench-") as work:
        results = test_clone_uml.run_inside(Path(work), args.size_mb)
    args.out.write_text(json.dumps(results, indent=2))
    print(f"\nclone of {args.size_mb} MiB (4 files + a 256 MiB sparse file), XFS inside UML")
    print("| filesystem | ok | copy + syncfs | df growth |")
    print("|---|---|---|---|")
    for name, label in (("reflink", "XFS reflink=1"), ("plain", "XFS reflink=0 (full copy)"),
                        ("quota", "XFS reflink=1, source and clone in own project quotas")):
        r = results.get(name, {})
        print(f"| {label} | {r.get('ok')} | {r.get('seconds', '-')} s | {r.get('grown_bytes', '-')} bytes |")
    return 0 if all(r.get("ok") for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
