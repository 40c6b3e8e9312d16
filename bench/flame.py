"""Flame graphs of the appliance during a bench section (py-spy, a development dependency).

:func:`recording` follows the section's appliance: every appliance process the section starts (the backlog
and delete sections start several) is sampled by its own ``py-spy record --pid`` (``--idle``: threads waiting
in a syscall are sampled too, so the graph shows where the wall-clock time of the workers goes, not only
their CPU; ``--nonblocking``: the process is never paused). At the end the collapsed stacks of every process
are summed into ``<out>.txt`` (one ``frame;frame;... count`` line per stack, for grep) and drawn as
``<out>.svg``. py-spy needs ptrace permission over the appliance (root, as the bench runs).

    .venv/bin/python -m bench.flame bench/flame-backlog.txt --under Provisioning.sync [--depth 3] [--top 15]

prints where the samples under a frame go (the call paths below it, by share), as docs/benchmark.md cites them.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import html
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil

RATE = 97
"""Samples per second and thread (not a multiple of the workers' timers)."""


def py_spy() -> str:
    """The py-spy executable beside this Python (the virtualenv's), else on PATH; SystemExit if none."""
    here = Path(sys.executable).parent / "py-spy"
    found = str(here) if here.exists() else shutil.which("py-spy")
    if not found:
        raise SystemExit("bench: py-spy is missing (a development dependency: hack/install-deps installs it); "
                         "or run with --no-flames")
    return found


class _Follower:
    """Starts one py-spy per appliance process seen, until stopped."""

    def __init__(self, current_pid: Callable[[], int | None], out: Path, *, idle: bool = True) -> None:
        self.current_pid, self.out, self.idle = current_pid, out, idle
        self.exe = py_spy()
        self.recorders: list[subprocess.Popen[bytes]] = []
        self.cpu_s = 0.0
        """CPU seconds the recorders used (those still running at the end: the others are not counted)."""
        self._seen: set[int] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="flame-follower", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            pid = self.current_pid()
            if pid is not None and pid not in self._seen and _alive(pid):
                self._seen.add(pid)
                self._attach(pid)
            self._stop.wait(0.05)

    def _attach(self, pid: int) -> None:
        """py-spy on ``pid``; retried while the interpreter is too young to be found (the first ~0.3 s)."""
        raw = self.out.with_name(f"{self.out.name}.{pid}.raw")
        deadline = time.monotonic() + 5
        while not self._stop.is_set() and _alive(pid) and time.monotonic() < deadline:
            proc = subprocess.Popen([self.exe, "record", "--pid", str(pid), *(["--idle"] if self.idle else ["--gil"]),
                                     "--nonblocking", "--rate", str(RATE), "--format", "raw", "--output", str(raw)],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(0.5)
            if proc.returncode is None:  # sampling
                self.recorders.append(proc)
                return
            time.sleep(0.05)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop following; every recorder writes its file (SIGINT, as Ctrl-C)."""
        self._stop.set()
        self._thread.join()
        for proc in self.recorders:
            with contextlib.suppress(psutil.Error):
                t = psutil.Process(proc.pid).cpu_times()
                self.cpu_s += t.user + t.system
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
        for proc in self.recorders:
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


PARKED: tuple[tuple[str, str], ...] = (
    ("WorkQueue.get", ""), ("EventRecorder._send_loop;Queue.get", ""), ("step_timer._writer", ""),
    ("ProvisionController._resync_loop;Event.wait", ""), ("NodeClients._run;Event.wait", ""),
    ("ServingWatch._loop;Event.wait", ""), ("BackgroundHealth._loop;Event.wait", ""),
    ("ProvisionController.run;Event.wait", ""), ("ChildLog._read", ""), ("Signals._read_signals", ""),
    ("GaneshaServer._supervise_loop", ""), ("BaseEventLoop.run_forever", ""), ("Informer._watch", "SSLSocket.read"))
"""(frames, leaf) of threads parked until there is work (``a;b``: a calling b; leaf "": any): a worker waiting
for the next item of its queue, an informer for the next watch event, the event sender for the next event, the
periodic loops between rounds, the log readers, the bench's step timer. The SVG leaves their stacks out (they
are most of the samples of an ``--idle`` profile and say nothing about a figure); ``<out>.txt`` keeps every
stack."""


def parked(stack: str) -> bool:
    frames = stack.split(";")
    names = [f"step_timer.{f.split(' (')[0]}" if "bench/step_timer.py" in f else f.split(" (")[0] for f in frames]
    joined = ";".join(names)
    return any(frames in joined and (not leaf or names[-1] == leaf) for frames, leaf in PARKED)


def merge(files: list[Path]) -> dict[str, int]:
    """Collapsed stacks of several py-spy raw files, summed."""
    stacks: dict[str, int] = {}
    for f in files:
        for line in f.read_text(errors="replace").splitlines():
            stack, _, count = line.rpartition(" ")
            if stack and count.isdigit():
                stacks[stack] = stacks.get(stack, 0) + int(count)
    return stacks


def _tree(stacks: dict[str, int]) -> dict[str, Any]:
    root: dict[str, Any] = {"n": 0, "kids": {}}
    for stack, count in stacks.items():
        node = root
        node["n"] += count
        for frame in stack.split(";"):
            node = node["kids"].setdefault(frame, {"n": 0, "kids": {}})
            node["n"] += count
    return root


def svg(stacks: dict[str, int], title: str, width: int = 1800, row: int = 16) -> str:
    """A flame graph (root at the bottom) of collapsed ``stacks``: each frame's width is its share of samples;
    hovering shows its name and count (the SVG ``<title>``). Frames under 0.05 % are left out."""
    root = _tree(stacks)
    total = max(1, root["n"])
    boxes: list[tuple[float, float, int, str, int]] = []

    def walk(node: dict[str, Any], name: str, x: float, depth: int) -> None:
        w = node["n"] / total * width
        if w < width * 0.0005:
            return
        boxes.append((x, w, depth, name, node["n"]))
        kx = x
        for kid_name, kid in sorted(node["kids"].items()):
            walk(kid, kid_name, kx, depth + 1)
            kx += kid["n"] / total * width

    walk(root, f"all ({title})", 0.0, 0)
    height = (max(b[2] for b in boxes) + 2) * row
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           'font-family="monospace" font-size="11">']
    for x, w, depth, name, n in boxes:
        y = height - (depth + 1) * row
        label = f'<text x="{x + 2:.1f}" y="{y + row - 4}">{html.escape(name[: int(w / 7)])}</text>' if w > 30 else ""
        out.append(f'<g><title>{html.escape(name)} ({n} samples, {n * 100 / total:.2f} %)</title>'
                   f'<rect x="{x:.1f}" y="{y}" width="{w:.1f}" height="{row - 1}" '
                   f'fill="hsl({sum(map(ord, name.split(" (")[0])) % 60 + 10},80%,60%)"/>{label}</g>')
    return "\n".join(out) + "\n</svg>\n"


@contextlib.contextmanager
def recording(current_pid: Callable[[], int | None], out: Path, *, enabled: bool = True,
              idle: bool = True) -> Iterator[None]:
    """Sample every appliance process ``current_pid()`` names while the block runs; write ``out``.txt/.svg.
    ``idle=False``: only the thread holding the GIL is sampled (where the interpreter's CPU time goes, not the
    wall time; a thread in a system call has released the GIL, so kernel time is not in such a graph)."""
    if not enabled:
        yield
        return
    follower = _Follower(current_pid, out, idle=idle)
    follower.start()
    try:
        yield
    finally:
        follower.stop()
        files = sorted(out.parent.glob(f"{out.name}.*.raw"))
        stacks = merge(files)
        for f in files:
            f.unlink()
        out.with_suffix(".txt").write_text("".join(f"{s} {n}\n" for s, n in sorted(stacks.items())))
        busy = {k: v for k, v in stacks.items() if not parked(k)}
        out.with_suffix(".svg").write_text(svg(busy, f"{out.name}, threads parked for work left out"))
        print(f"flame graph: {out.with_suffix('.svg')} ({sum(stacks.values())} samples of {len(files)} "
              f"appliance process(es); py-spy used {follower.cpu_s:.1f} s of CPU at the end)", file=sys.stderr)


def below(stacks: dict[str, int], frame: str, depth: int) -> collections.Counter[str]:
    """Samples of the stacks through ``frame`` (a function name as py-spy prints it, e.g. ``Provisioning.sync``),
    by the ``depth`` frames from it down (function@line each)."""
    out: collections.Counter[str] = collections.Counter()
    for stack, count in stacks.items():
        frames = stack.split(";")
        names = [f.split(" (")[0] for f in frames]
        if frame not in names:
            continue
        i = names.index(frame)
        out[" > ".join(f"{names[k]}@{frames[k].rsplit(':', 1)[-1].rstrip(')')}"
                       for k in range(i, min(len(frames), i + depth)))] += count
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description="where the samples under a frame go")
    parser.add_argument("stacks", type=Path, help="a flame-<section>.txt")
    parser.add_argument("--under", required=True, help="a function as py-spy names it, e.g. Provisioning.sync")
    parser.add_argument("--depth", type=int, default=3)
    parser.add_argument("--top", type=int, default=15)
    args = parser.parse_args()
    counts = below(merge([args.stacks]), args.under, args.depth)
    total = sum(counts.values())
    print(f"{total} samples through {args.under}")
    for path, n in counts.most_common(args.top):
        print(f"{n * 100 / max(1, total):5.1f} %  {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
