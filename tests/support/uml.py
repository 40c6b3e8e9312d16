"""Run a command inside User-Mode Linux, for kernel features the host lacks
(XFS project quotas; see ../shared/ENVIRONMENT.md).

``linux.uml`` boots as an ordinary process with the host's ``/`` as its root
(hostfs, mounted read-only), so the host's binaries and this repo's ``.venv``
work inside while only the work directory is writable. Disk images are
attached as ubd devices and mounted under ``/run`` (a tmpfs inside UML). The init script runs one command,
writes its exit code and output into the work directory on hostfs, and powers
off; the host reads them back. A run that does not finish in time is killed by
its process group id.

    disk = uml.Disk(image=uml.make_xfs_image(tmp / "xfs.img"), mount_point="/run/xfs")
    result = uml.run([sys.executable, "-c", "..."], workdir=tmp, disks=[disk])
    result.check()      # AssertionError with the inner output unless exit code 0

The kernel is the one ``hack/install-deps`` unpacks (``$NFSP_CACHE_DIR/uml/current``:
sid's, because older UML kernels panic on hosts with a large XSAVE area such as
AMX), or ``$NFSP_UML_KERNEL``, or ``linux.uml`` on PATH. Its modules load inside
with ``run(..., modules=["nfsv4"])`` (modprobe resolves their dependencies).
Tests marked ``uml`` first ask ``boot_problem()`` (one boot per test run): a
kernel that cannot boot here fails each of them with one line saying why.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import shlex
import shutil
import signal
import string
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from tests.support.paths import REPO

CACHE = Path(os.environ.get("NFSP_CACHE_DIR", Path.home() / ".cache" / "nfs-provisioner"))
CACHED_KERNEL = CACHE / "uml" / "current" / "linux.uml"  # hack/install-deps (fetch_uml)
KERNEL_CANDIDATES = ("linux.uml", "/usr/bin/linux.uml")  # Debian: user-mode-linux
SETUP_FAILED = 125  # exit code the init script reports when it could not set up


class UmlUnavailable(RuntimeError):
    """No UML kernel or mkfs.xfs on this machine."""


@dataclass(frozen=True)
class Disk:
    """An image attached as the next ubd device and mounted inside UML."""

    image: Path
    mount_point: str
    """Absolute path inside UML; should be under /run (a tmpfs there)."""
    options: str = "prjquota"
    fstype: str = "xfs"


@dataclass(frozen=True)
class Result:
    returncode: int | None
    """The command's exit code; None if it never finished (timeout, crash)."""
    output: str
    """The command's stdout and stderr."""
    console: str
    """The UML kernel console."""
    seconds: float
    """Wall time of the whole boot-run-poweroff."""

    def check(self) -> Result:
        if self.returncode != 0:
            raise AssertionError(
                f"command inside UML exited with {self.returncode} after {self.seconds:.1f}s\n"
                f"--- output ---\n{self.output}\n--- console (tail) ---\n{self.console[-3000:]}"
            )
        return self


def kernel() -> Path:
    explicit = os.environ.get("NFSP_UML_KERNEL")
    if explicit:
        if not Path(explicit).is_file():
            raise UmlUnavailable(f"NFSP_UML_KERNEL={explicit} does not exist")
        return Path(explicit)
    if CACHED_KERNEL.is_file():
        return CACHED_KERNEL.resolve()
    for candidate in KERNEL_CANDIDATES:
        found = shutil.which(candidate)
        if found:
            return Path(found)
    raise UmlUnavailable(f"no UML kernel: {CACHED_KERNEL} is missing; run hack/install-deps")


def modules_root(kernel_path: Path) -> Path:
    """The ``modprobe -d`` root of the kernel's modules (``lib/modules/<release>`` under it)."""
    root = kernel_path.parent / "modroot"
    if not (root / "lib" / "modules").is_dir():
        raise UmlUnavailable(f"no modules beside {kernel_path} ({root}); run hack/install-deps")
    return root


def kernel_config(kernel_path: Path) -> dict[str, str] | None:
    """The kernel's build configuration as its package ships it (``config.gz`` beside the unpacked
    kernel, or Debian's installed one): option -> value, ``"n"`` for ``# CONFIG_X is not set``;
    None when there is none."""
    for candidate in (kernel_path.parent / "root" / "usr" / "share" / "doc" / "user-mode-linux" / "config.gz",
                      Path("/usr/share/doc/user-mode-linux/config.gz")):
        if candidate.is_file():
            import gzip

            config: dict[str, str] = {}
            for line in gzip.decompress(candidate.read_bytes()).decode().splitlines():
                if line.startswith("CONFIG_") and "=" in line:
                    name, value = line.split("=", 1)
                    config[name] = value
                elif line.startswith("# CONFIG_") and line.endswith(" is not set"):
                    config[line[2:-len(" is not set")]] = "n"
            return config
    return None


def kernel_release(kernel_path: Path) -> str:
    """``linux.uml --version`` (the kernel release, e.g. 7.2.7), or why it cannot tell."""
    try:
        out = subprocess.run([str(kernel_path), "--version"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"does not start: {e}"
    return out.stdout.strip() or f"--version exited {out.returncode}: {out.stderr.strip()[:200]}"


def make_xfs_image(path: Path, *, size_mb: int = 64) -> Path:
    """A sparse image file with a fresh XFS (small sizes need mkfs.xfs's test override)."""
    if not shutil.which("mkfs.xfs"):
        raise UmlUnavailable("mkfs.xfs not found; run hack/install-deps (Debian package xfsprogs)")
    with path.open("wb") as f:
        f.truncate(size_mb * 1024 * 1024)
    env = {**os.environ, "TEST_DIR": "1", "TEST_DEV": "1", "QA_CHECK_FS": "1"}
    subprocess.run(["mkfs.xfs", "-q", str(path)], env=env, check=True, capture_output=True)
    return path


def _under_tmp(paths: Sequence[Path]) -> list[Path]:
    """The paths under /tmp that must stay visible, without those already inside another of them."""
    inside = sorted({p.resolve() for p in paths if p.resolve().is_relative_to("/tmp") and p.resolve() != Path("/tmp")},
                    key=lambda p: len(p.parts))
    kept: list[Path] = []
    for path in inside:
        if not any(path.is_relative_to(k) for k in kept):
            kept.append(path)
    return kept


def _init_script(
    command: Sequence[str], *, workdir: Path, disks: Sequence[Disk], env: Mapping[str, str], cwd: Path,
    modules: Sequence[str], modroot: Path | None,
) -> str:
    q = shlex.quote
    out, rc = workdir / "output.txt", workdir / "returncode"
    lines = [
        "#!/bin/sh",
        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin; export PATH",
        # The host's / is read-only in here; only the work directory is writable.
        f"mount -t hostfs -o {q(str(workdir))} hostfs {q(str(workdir))} || poweroff -f -d",
        "mount -t tmpfs -o mode=0755 tmpfs /run || poweroff -f -d",
        # /tmp is a fresh tmpfs, as in a pod (Ganesha's OFD-lock probe writes there; without it Ganesha
        # takes no lock on the server's file). What the run needs from the host's /tmp (the work directory,
        # the repository, the interpreter's prefix) is bound back at its place.
        "mkdir -p /run/host-tmp && mount --rbind /tmp /run/host-tmp || poweroff -f -d",
        "mount -t tmpfs -o mode=1777 tmpfs /tmp || poweroff -f -d",
        *(f"mkdir -p {q(str(path))} && mount --rbind {q(str(Path('/run/host-tmp') / path.relative_to('/tmp')))}"
          f" {q(str(path))} || poweroff -f -d" for path in _under_tmp((workdir, cwd, Path(sys.prefix)))),
        f"fail() {{ echo \"uml init: $*\" >> {q(str(out))}; echo {SETUP_FAILED} > {q(str(rc))}; poweroff -f -d; }}",
        f": > {q(str(out))}",
        "mount -t proc proc /proc || fail mount proc",
        "mount -t sysfs sysfs /sys || fail mount sysfs",
        "mkdir -p /run/tmp",
        "ip link set lo up || fail lo up",
    ]
    if modules:
        names = " ".join(q(m) for m in modules)
        lines.append(f"modprobe -d {q(str(modroot))} -a {names} >> {q(str(out))} 2>&1 || fail modprobe {names}")
    for index, disk in enumerate(disks):
        device = f"/dev/ubd{string.ascii_lowercase[index]}"
        mp = q(disk.mount_point)
        lines += [
            f"mkdir -p {mp} || fail mkdir {mp}",
            f"mount -t {q(disk.fstype)} -o {q(disk.options)} {device} {mp} >> {q(str(out))} 2>&1"
            f" || fail mount {device} on {mp}",
        ]
    inner_env = {
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME": "/run/tmp",
        "TMPDIR": "/run/tmp",
        "LANG": "C.UTF-8",
        "PYTHONDONTWRITEBYTECODE": "1",
        # The Ganesha the tests run (tests/support/ganesha_env.py): the host's / is UML's root, so an
        # unpacked tree in the host's cache is there too.
        **{k: v for k, v in os.environ.items() if k == "NFS_PROVISIONER_GANESHA_ROOT"},
        **env,
    }
    assignments = " ".join(q(f"{k}={v}") for k, v in inner_env.items())
    lines += [
        f"cd {q(str(cwd))} || fail cd {q(str(cwd))}",
        f"env -i {assignments} {' '.join(q(c) for c in command)} >> {q(str(out))} 2>&1",
        f"echo $? > {q(str(rc))}",
        "sync",
        "poweroff -f -d",  # -d: no wtmp record
    ]
    return "\n".join(lines) + "\n"


def run(
    command: Sequence[str],
    *,
    workdir: Path,
    disks: Sequence[Disk] = (),
    env: Mapping[str, str] | None = None,
    cwd: Path = REPO,
    mem_mb: int = 256,
    timeout: float = 180.0,
    modules: Sequence[str] = (),
    linux: Path | None = None,
) -> Result:
    """Boot UML, load ``modules`` (names, with their dependencies), run ``command``
    (argv) in ``cwd`` with a minimal environment plus ``env``, power off, and
    return what happened. ``workdir`` (on the host) receives the init script,
    the output and UML's memory file. ``linux`` overrides ``kernel()``."""
    if len(disks) > 16:
        raise ValueError("UML has 16 ubd devices")
    workdir.mkdir(parents=True, exist_ok=True)
    workdir = workdir.resolve()
    for name in ("output.txt", "returncode"):
        (workdir / name).unlink(missing_ok=True)
    linux = linux or kernel()
    modroot = modules_root(linux) if modules else None
    init = workdir / "init.sh"
    init.write_text(_init_script(command, workdir=workdir, disks=disks, env=env or {}, cwd=cwd,
                                 modules=modules, modroot=modroot))
    init.chmod(0o755)
    argv = [str(linux), f"mem={mem_mb}M"]
    argv += [f"ubd{i}={d.image.resolve()}" for i, d in enumerate(disks)]
    argv += ["root=/dev/root", "rootfstype=hostfs", "rootflags=/", "ro", f"init={init}"]
    argv += [f"uml_dir={workdir}", "umid=uml", "con0=null,fd:1", "con=null"]  # pid/mconsole files in workdir
    console_path = workdir / "console.log"
    started = time.monotonic()
    with console_path.open("wb") as console:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=console,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: killed by pgid, nothing else
            env={**os.environ, "TMPDIR": str(workdir)},  # UML's memory file lives here
        )
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_group(proc.pid)
            proc.wait()
        finally:
            _kill_group(proc.pid)  # UML's helper processes, if any outlived it
    seconds = time.monotonic() - started
    rc_path = workdir / "returncode"
    rc_text = rc_path.read_text().strip() if rc_path.exists() else ""
    output_path = workdir / "output.txt"
    return Result(
        returncode=int(rc_text) if rc_text.isdigit() else None,
        output=output_path.read_text(errors="replace") if output_path.exists() else "",
        console=console_path.read_text(errors="replace"),
        seconds=seconds,
    )


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)


# The console lines that say nothing about why a boot failed: register and stack
# dumps, blank lines, the halt itself.
_NOISE = re.compile(
    r"^\s*$|^\s*(\[<|\?|Call Trace|Stack:|CPU: |Hardware name|Modules linked|RIP|RSP|R[A-Z0-9]{1,3}[: ]|"
    r"[0-9a-f]{8,}|---\[ end|Powering off|reboot: |System halted)"
)


def console_reason(console: str) -> str:
    """The console's last meaningful line; for a panic, the line before it and the panic."""
    lines = [line.strip() for line in console.splitlines() if not _NOISE.match(line)]
    for i, line in enumerate(lines):
        if line.startswith("Kernel panic"):
            before = lines[i - 1] if i > 0 and not lines[i - 1].startswith("Run ") else ""
            return f"{before}; {line}" if before else line
    return lines[-1] if lines else "no console output"


def diagnose_boot(kernel_path: Path, *, workdir: Path, timeout: float = 60.0) -> tuple[str | None, float]:
    """Boot ``kernel_path`` once with a trivial command: (None, seconds) if it ran,
    else (one line naming the kernel and the console's reason, seconds)."""
    name = f"UML kernel {kernel_path} ({kernel_release(kernel_path)})"
    try:
        result = run(["true"], workdir=workdir, timeout=timeout, linux=kernel_path)
    except OSError as e:
        return f"{name} cannot be started: {e}", 0.0
    if result.returncode == 0:
        return None, result.seconds
    setup = [line for line in result.output.splitlines() if line.startswith("uml init:")]
    if setup:
        return f"{name} booted but its init failed: {setup[-1]}", result.seconds
    what = "does not boot here" if result.returncode is None else f"ran `true` but reported exit {result.returncode}"
    return f"{name} {what} ({result.seconds:.1f}s): {console_reason(result.console)}", result.seconds


@functools.cache
def boot_problem() -> str | None:
    """Once per process: None if this run's kernel boots here, else one line saying why not."""
    global BOOT_SECONDS
    try:
        linux = kernel()
    except UmlUnavailable as e:
        return str(e)
    with tempfile.TemporaryDirectory(prefix="uml-boot-check-") as d:
        problem, BOOT_SECONDS = diagnose_boot(linux, workdir=Path(d))
    return problem


BOOT_SECONDS: float | None = None
"""How long boot_problem()'s boot-run-poweroff took, once it has run."""
