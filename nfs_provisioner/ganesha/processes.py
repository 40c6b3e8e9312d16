"""Start and stop child processes (dbus-daemon, rpcbind, rpc.statd, ganesha.nfsd) by PID.

``Launcher`` prefixes commands with ``nsenter --net=<netns> --mount=<mountns>``
when namespaces are configured (``nsenter`` execs in place, so the PID is the
program's). ``stop()`` escalates SIGTERM -> SIGKILL with bounded waits and
only ever signals the PID it was given.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import resource
import signal
import subprocess
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import psutil

from nfs_provisioner.ganesha import errors

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Launcher:
    netns: Path | None = None
    mountns: Path | None = None

    def argv(self, argv: Sequence[str]) -> list[str]:
        enter = [f"--net={self.netns}"] if self.netns else []
        enter += [f"--mount={self.mountns}"] if self.mountns else []
        return ["nsenter", *enter, *argv] if enter else list(argv)

    def spawn(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        log_file: Path | None = None,
        nofile: int | None = None,
    ) -> subprocess.Popen[bytes]:
        full = self.argv(argv)
        merged = {**os.environ, **(env or {})}
        out = open(log_file, "ab") if log_file is not None else subprocess.DEVNULL  # noqa: SIM115 - closed below
        preexec: Callable[[], None] | None = None
        if nofile is not None:
            limit = nofile

            def preexec() -> None:
                # Soft and hard: Ganesha raises its soft limit to the hard one by itself.
                _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
                cap = limit if hard == resource.RLIM_INFINITY else min(limit, hard)
                resource.setrlimit(resource.RLIMIT_NOFILE, (cap, cap))

        try:
            proc = subprocess.Popen(
                full,
                env=merged,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=preexec,
            )
        except OSError as e:
            raise errors.ServerError(f"cannot start {full[0]}: {e}") from e
        finally:
            if log_file is not None and not isinstance(out, int):
                out.close()
        log.info("started %s (pid %d)", " ".join(full), proc.pid)
        return proc

    def run(self, argv: Sequence[str], *, timeout: float = 10.0) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.argv(argv), capture_output=True, text=True, timeout=timeout, check=False)


def stop(proc: subprocess.Popen[bytes] | None, *, what: str, timeout: float) -> int | None:
    """Stop ``proc`` (by its PID only): SIGTERM, wait ``timeout``, SIGKILL, wait. Returns the exit code."""
    if proc is None:
        return None
    if proc.poll() is None:
        _signal(proc, signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            log.warning("%s (pid %d) ignored SIGTERM for %.1fs; sending SIGKILL", what, proc.pid, timeout)
            _signal(proc, signal.SIGKILL)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired as e:
                raise errors.ServerError(f"{what} (pid {proc.pid}) survived SIGKILL for {timeout}s") from e
    log.info("%s (pid %d) stopped with exit code %s", what, proc.pid, proc.returncode)
    return proc.returncode


def _signal(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(sig)


def describe(pid: int) -> str:
    """A one-line view of a live process (state, threads, fds, RSS) for logs."""
    try:
        p = psutil.Process(pid)
        with p.oneshot():
            rss = p.memory_info().rss
            return f"pid {pid} {p.status()} threads={p.num_threads()} fds={p.num_fds()} rss={rss // 1024}KiB"
    except psutil.Error as e:
        return f"pid {pid}: {e}"


def tail(path: Path, *, lines: int = 20, max_bytes: int = 16384) -> str:
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - max_bytes))
            data = f.read().decode("utf-8", "replace")
    except OSError as e:
        return f"(cannot read {path}: {e})"
    return "\n".join(data.splitlines()[-lines:])


def bound_ports(pid: int) -> set[int]:
    """Local TCP/UDP ports (IPv4 and IPv6) of the sockets process ``pid`` holds, read from
    ``/proc/<pid>/net`` (its own network namespace) and its descriptors. Empty if it is gone."""
    inodes: set[str] = set()
    try:
        for fd in os.scandir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                target = os.readlink(fd.path)
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
    except OSError:
        return set()
    ports: set[int] = set()
    for table in ("tcp", "tcp6", "udp", "udp6"):
        try:
            rows = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            if len(fields) > 9 and fields[9] in inodes:
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports
