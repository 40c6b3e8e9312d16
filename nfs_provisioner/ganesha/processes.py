"""Start and stop child processes (dbus-daemon, rpcbind, rpc.statd, ganesha.nfsd) by PID.

``Launcher`` prefixes commands with ``nsenter --net=<netns> --mount=<mountns>``
when namespaces are configured (``nsenter`` execs in place, so the PID is the
program's). ``stop()`` escalates SIGTERM -> SIGKILL with bounded waits and
only ever signals the PID it was given.

Children die with the thread that started them: ``PR_SET_PDEATHSIG`` (SIGKILL)
is set between fork and exec and survives the exec of nsenter and of the
program (the kernel clears it only for set-uid/set-gid or file-capability
binaries). So a SIGKILLed appliance leaves no Ganesha or bus holding its ports.
As a second line, every child is recorded in a PID file (:class:`PidFile`) and
the next start stops those still running that are provably the same processes
(same PID, start time and command line), never any other.

A child's stdout and stderr go through a pipe to :class:`ChildLog`, a thread of this process that writes
them to a size-capped file (rotated to ``<name>.old``) and keeps the last lines and watched marks in
memory: what clients make a child log never fills a filesystem.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import fcntl
import json
import logging
import os
import resource
import signal
import subprocess
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TypeVar

import psutil

from nfs_provisioner import fileio, threads
from nfs_provisioner.ganesha import errors

log = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1
CLONE_NEWNET = 0x40000000
T = TypeVar("T")
_libc = ctypes.CDLL(None, use_errno=True)
_prctl = _libc.prctl


class PidFile:
    """``<path>``: JSON list of the children started (pid, start time, command line), rewritten on every start
    of one (best effort: a full or read-only disk costs only this second line of defence)."""

    MAX_BYTES = 1024 * 1024
    """A handful of entries; a bigger file is not read (see :meth:`_read`)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._refused = False
        """A file is there that is never read nor replaced (too big, not a regular file): said once."""

    def _read(self) -> list[dict[str, object]] | None:
        """The recorded entries; None: the file is refused (too big, or not a regular file), and is left as it is:
        the PID file is then not used (said once; the children still die with this process, PDEATHSIG)."""
        try:
            raw = fileio.read_limited(self.path, self.MAX_BYTES, follow_symlinks=False)
        except FileNotFoundError:
            self._refused = False
            return []
        except fileio.Refused as e:
            if not self._refused:
                log.warning("%s; the PID file is not used until it is removed", e)
            self._refused = True
            return None
        except OSError as e:
            log.warning("ignoring the unreadable PID file %s: %s", self.path, e)
            return []
        self._refused = False
        try:
            entries = json.loads(raw)
        except ValueError as e:
            log.warning("ignoring the unreadable PID file %s: %s", self.path, e)
            return []
        return [e for e in entries if isinstance(e, dict)] if isinstance(entries, list) else []

    def add(self, pid: int, cmdline: Sequence[str]) -> None:
        try:
            started = psutil.Process(pid).create_time()
        except psutil.Error:
            return  # already gone
        with self._lock:
            recorded = self._read()
            if recorded is None:
                return
            entries = [e for e in recorded if _same_process(e)]
            entries.append({"pid": pid, "create_time": started, "cmdline": list(cmdline)})
            try:
                fileio.atomic_write(self.path, json.dumps(entries), durable=False, mode=0o600)
            except OSError as e:
                log.warning("cannot record pid %d in %s: %s", pid, self.path, e)

    def stop_leftovers(self, *, timeout: float) -> list[int]:
        """Stop the recorded processes that still run (left by a run that died without stopping them);
        returns their PIDs. A PID now used by another process (other start time or command line) is left
        alone."""
        stopped: list[int] = []
        with self._lock:
            recorded = self._read()
            if recorded is None:
                return stopped
            for e in recorded:
                if not _same_process(e):
                    continue
                pid = int(str(e["pid"]))
                log.warning("stopping %s (pid %d), left running by a previous run", " ".join(map(str, e["cmdline"]))
                            if isinstance(e["cmdline"], list) else "?", pid)
                with contextlib.suppress(psutil.Error):
                    p = psutil.Process(pid)
                    p.terminate()
                    try:
                        p.wait(timeout)
                    except psutil.TimeoutExpired:
                        p.kill()
                        p.wait(timeout)
                stopped.append(pid)
            self.path.unlink(missing_ok=True)
        return stopped

    def clear(self) -> None:
        with self._lock, contextlib.suppress(OSError):
            if not self._refused:
                self.path.unlink(missing_ok=True)


def _same_process(entry: dict[str, object]) -> bool:
    """Whether the process ``entry`` records still runs: same PID, same start time, same command line."""
    try:
        p = psutil.Process(int(str(entry.get("pid"))))
        with p.oneshot():
            return bool(abs(p.create_time() - float(str(entry.get("create_time")))) < 0.05
                        and p.cmdline() == entry.get("cmdline") and p.status() != psutil.STATUS_ZOMBIE)
    except (psutil.Error, ValueError):
        return False


LOG_MAX_BYTES = 1 << 20
"""Default size of a child's log file before it is rotated to ``<name>.old`` (so at most about twice this)."""
TAIL_BYTES = 16384
"""What :meth:`ChildLog.tail` keeps in memory."""
PIPE_BYTES = 1 << 20
"""Pipe buffer asked for (``F_SETPIPE_SZ``; the kernel's default maximum): a child writes on while its reader
waits for the interpreter."""
F_SETPIPE_SZ = 1031


class ChildLog:
    """A child's stdout and stderr, read through a pipe by a thread of this process into a size-capped file.

    The file is rotated to ``<name>.old`` (replacing the previous one) before a write would take it past
    ``max_bytes`` (never after, so the file exists and ends with the child's last output), so
    the child's log never takes more than about twice that, whatever it writes: a client that makes Ganesha
    log a line per garbage RPC record fills nothing. A write that fails (a full filesystem) drops that part
    of the log (one WARNING line per failing stretch), never blocks the child. The last ``TAIL_BYTES`` stay
    in memory for error messages, and ``marks`` (e.g. Ganesha's "ready" line) are watched for in everything
    the child writes, so a rotation or a failed write never hides them."""

    def __init__(self, path: Path, *, what: str, max_bytes: int = LOG_MAX_BYTES, marks: Sequence[str] = ()) -> None:
        self.path = path
        self.what = what
        self.max_bytes = max_bytes
        self._marks = {m.encode(): False for m in marks}
        self._overlap = max((len(m) for m in self._marks), default=1) - 1
        self._tail = b""
        self._fd: int | None = None
        self._ino: tuple[int, int] | None = None
        self._dropped = 0
        self.received = 0
        """Bytes the child has written so far (kept or not)."""
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def open(self) -> int:
        """The pipe's write end for the child (the caller closes it once the child has it); starts reading."""
        r, w = os.pipe()
        with contextlib.suppress(OSError):
            fcntl.fcntl(w, F_SETPIPE_SZ, PIPE_BYTES)
        self._thread = threads.spawn(self._read, r, name=f"log-{self.what}", kind="log-reader")
        return w

    def seen(self, mark: str) -> bool:
        """Whether the child has written ``mark`` (one of ``marks``) since it started."""
        with self._lock:
            return self._marks.get(mark.encode(), False)

    def tail(self, lines: int = 20) -> str:
        """The child's last ``lines`` lines (from memory: whatever became of the file)."""
        with self._lock:
            data = self._tail
        text = data.decode("utf-8", "replace")
        return "\n".join(text.splitlines()[-lines:]) if text else "(nothing logged)"

    def join(self, timeout: float) -> None:
        """Wait until everything the child wrote is read (its pipe is closed once it and its children exit)."""
        if self._thread is not None:
            self._thread.join(timeout)

    def _read(self, r: int) -> None:
        try:
            while chunk := os.read(r, 262144):
                self._write(chunk)  # first: what is seen below is in the file too (if it could be written)
                with self._lock:
                    window = self._tail[-self._overlap:] + chunk if self._overlap else chunk
                    for mark, seen in self._marks.items():
                        if not seen and mark in window:
                            self._marks[mark] = True
                    self._tail = (self._tail + chunk)[-TAIL_BYTES:]
                    self.received += len(chunk)
        except OSError as e:
            log.error("reading the output of %s failed: %s", self.what, e)
        finally:
            os.close(r)
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None

    def _write(self, chunk: bytes) -> None:
        try:
            fd = self._current()
            size = os.fstat(fd).st_size
            if size and size + len(chunk) > self.max_bytes:  # rotate before, so the file always holds the latest
                self._rotate()
                fd = self._current()
            os.write(fd, chunk)
        except OSError as e:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
            if not self._dropped:
                log.warning("cannot write the log of %s to %s (%s): its output is dropped until it can", self.what,
                            self.path, e.strerror or e)
            self._dropped += len(chunk)
            return
        if self._dropped:
            log.info("the log of %s is written to %s again; %d bytes of it were dropped", self.what, self.path,
                     self._dropped)
            self._dropped = 0

    def _current(self) -> int:
        """The descriptor of ``path`` as it is now (reopened when someone else rotated or removed it)."""
        try:
            st = os.stat(self.path, follow_symlinks=False)
            now: tuple[int, int] | None = (st.st_dev, st.st_ino)
        except FileNotFoundError:
            now = None
        if self._fd is not None and now == self._ino:
            return self._fd
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        st = os.fstat(fd)
        self._fd, self._ino = fd, (st.st_dev, st.st_ino)
        if st.st_size > self.max_bytes:  # an unbounded log of an older version: keep only its end
            self._shrink_legacy(fd, st.st_size)
        return fd

    def _rotate(self) -> None:
        old = self.path.with_name(self.path.name + ".old")
        os.replace(self.path, old)
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def _shrink_legacy(self, fd: int, size: int) -> None:
        rfd = os.open(f"/proc/self/fd/{fd}", os.O_RDONLY | os.O_CLOEXEC)  # the same file, for reading
        try:
            end = os.pread(rfd, self.max_bytes, size - self.max_bytes)
        finally:
            os.close(rfd)
        old = self.path.with_name(self.path.name + ".old")
        tmp = self.path.with_name(self.path.name + ".old.tmp")
        wfd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            os.write(wfd, end)
        finally:
            os.close(wfd)
        os.replace(tmp, old)
        os.ftruncate(fd, 0)
        log.info("%s was %d bytes (no cap before): its last %d bytes are kept in %s", self.path, size,
                 self.max_bytes, old)


@dataclasses.dataclass(frozen=True)
class Launcher:
    netns: Path | None = None
    mountns: Path | None = None
    pid_file: PidFile | None = None
    """Where children are recorded (None: nowhere)."""

    def argv(self, argv: Sequence[str]) -> list[str]:
        enter = [f"--net={self.netns}"] if self.netns else []
        enter += [f"--mount={self.mountns}"] if self.mountns else []
        return ["nsenter", *enter, *argv] if enter else list(argv)

    def spawn(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        output: ChildLog | None = None,
        nofile: int | None = None,
    ) -> subprocess.Popen[bytes]:
        """Start ``argv``; its stdout and stderr go to ``output`` (nowhere if None)."""
        full = self.argv(argv)
        merged = {**os.environ, **(env or {})}
        out = output.open() if output is not None else subprocess.DEVNULL
        parent = os.getpid()

        def preexec() -> None:
            # Die with the thread that starts us; if it is already gone, do not run at all.
            _prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
            if os.getppid() != parent:
                os._exit(1)
            if nofile is not None:
                # Soft and hard: Ganesha raises its soft limit to the hard one by itself.
                _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
                cap = nofile if hard == resource.RLIM_INFINITY else min(nofile, hard)
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
            raise errors.GaneshaServerError(f"cannot start {full[0]}: {e}") from e
        finally:
            if out != subprocess.DEVNULL:
                os.close(out)  # the child has its copy; the reader sees the end once the child's is closed
        log.info("started %s (pid %d)", " ".join(full), proc.pid)
        if self.pid_file is not None:
            self.pid_file.add(proc.pid, list(argv))  # nsenter execs in place: the program's command line
        return proc

    def run(self, argv: Sequence[str], *, timeout: float = 10.0) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.argv(argv), capture_output=True, text=True, timeout=timeout, check=False)

    def call(self, fn: Callable[[], T]) -> T:
        """``fn()`` with the sockets it opens in ``netns``. A network namespace belongs to a thread, so a
        short-lived thread enters it and the caller's stays where it is (the mount namespace is not entered:
        a thread that shares its process's filesystem view cannot)."""
        netns = self.netns
        if netns is None:
            return fn()
        result: list[T] = []
        failure: list[BaseException] = []

        def enter_and_call() -> None:
            try:
                fd = os.open(netns, os.O_RDONLY | os.O_CLOEXEC)
                try:
                    if _libc.setns(fd, CLONE_NEWNET) != 0:  # os.setns is Python 3.12's
                        err = ctypes.get_errno()
                        raise OSError(err, f"setns({netns}): {os.strerror(err)}")
                finally:
                    os.close(fd)
                result.append(fn())
            except BaseException as e:  # noqa: BLE001 - raised again in the caller's thread below
                failure.append(e)

        threads.spawn(enter_and_call, name="netns-call").join()
        if failure:
            raise failure[0]
        return result[0]


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
                raise errors.GaneshaServerError(f"{what} (pid {proc.pid}) survived SIGKILL for {timeout}s") from e
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
