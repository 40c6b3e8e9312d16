"""Group commit or not: the appliance's durable writes with and without a committer thread (issue 27).

A claim's durability is three files written through a temp file, an fsync and a rename (the in-flight journal
entry, the volume record, the export file), one after the other, by 16 workers at once. This measures that
pattern on a directory of the export root's filesystem, alternating two ways of reaching the fsyncs:

- ``thread``: each worker calls fsync itself (what ``nfs_provisioner.fileio.atomic_write`` does); the
  filesystem's journal already commits concurrent fsyncs together (ext4's jbd2, XFS's log force);
- ``committer``: each worker hands its descriptor to one committer thread and waits; the committer takes
  every descriptor handed in meanwhile and fsyncs them in parallel (one round per batch), then wakes them.

``--background`` adds a writer that appends and fdatasyncs in a loop on the same filesystem (another tenant
of the disk, as a database's log). Prints claims/s and the per-claim latency of each way, per round.

    .venv/bin/python -m bench.fsync_bench [--dir DIR] [--claims 600] [--rounds 4] [--background]
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

WORKERS = 16
FILES_PER_CLAIM = 3


class Committer:
    """One thread fsyncing every descriptor handed in since its last round, in parallel."""

    def __init__(self, threads: int = 8) -> None:
        self._cond = threading.Condition()
        self._pending: list[tuple[int, threading.Event]] = []
        self._pool = cf.ThreadPoolExecutor(threads)
        self.rounds = 0
        threading.Thread(target=self._run, daemon=True).start()

    def fsync(self, fd: int) -> None:
        done = threading.Event()
        with self._cond:
            self._pending.append((fd, done))
            self._cond.notify()
        done.wait()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._pending:
                    self._cond.wait()
                batch, self._pending = self._pending, []
            self.rounds += 1
            list(self._pool.map(os.fsync, [fd for fd, _ in batch]))
            for _, done in batch:
                done.set()


def atomic_write(path: Path, data: bytes, fsync: Callable[[int], None]) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.write(fd, data)
        fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def run(directory: Path, claims: int, fsync: Callable[[int], None]) -> tuple[float, float]:
    """claims/s and the median seconds per claim."""
    latencies: list[float] = []

    def claim(i: int) -> None:
        t = time.perf_counter()
        for k in range(FILES_PER_CLAIM):
            atomic_write(directory / f"{k}-{i}", b"x" * 400, fsync)
        latencies.append(time.perf_counter() - t)

    t0 = time.perf_counter()
    with cf.ThreadPoolExecutor(WORKERS) as pool:
        list(pool.map(claim, range(claims)))
    return claims / (time.perf_counter() - t0), statistics.median(latencies)


def background(path: Path, stop: threading.Event) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        while not stop.is_set():
            os.write(fd, b"y" * 4096)
            os.fdatasync(fd)
    finally:
        os.close(fd)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dir", type=Path, default=None, help="a directory on the filesystem to measure")
    parser.add_argument("--claims", type=int, default=600)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--background", action="store_true", help="another writer fdatasyncs meanwhile")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        stop = threading.Event()
        if args.background:
            threading.Thread(target=background, args=(Path(tmp) / "log", stop), daemon=True).start()
        committer = Committer()
        results: dict[str, list[float]] = {"thread": [], "committer": []}
        for r in range(args.rounds):  # alternating, so a noisy neighbour hits both alike
            for way, fsync in (("thread", os.fsync), ("committer", committer.fsync)):
                d = Path(tmp) / f"{way}-{r}"
                d.mkdir()
                rate, p50 = run(d, args.claims, fsync)
                results[way].append(rate)
                print(f"round {r + 1} {way:9s} {rate:6.0f} claims/s, p50 {p50 * 1000:5.1f} ms per claim",
                      file=sys.stderr)
        stop.set()
        for way, rates in results.items():
            print(f"{way:9s} median {statistics.median(rates):6.0f} claims/s  runs "
                  + ", ".join(f"{x:.0f}" for x in rates))
        print(f"committer rounds: {committer.rounds} for {args.rounds * args.claims * FILES_PER_CLAIM} fsyncs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
