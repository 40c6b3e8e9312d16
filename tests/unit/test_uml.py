"""The User-Mode Linux kernel itself: the one hack/install-deps provides boots
here and loads its modules inside; one that cannot boot is reported in one line
that names it and says why, for every UML test, instead of a traceback each."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.support import uml
from tests.support.paths import REPO

# What bookworm's and trixie's UML kernels print on a host with AMX (issue 11).
AMX_PANIC_CONSOLE = """\
Linux version 6.1.176 (debian-kernel@lists.debian.org) #1 Wed Jan 1 00:00:00 UTC 2025
VFS: Mounted root (hostfs filesystem) readonly on device 0:15.
devtmpfs: mounted
This architecture does not have kernel memory protection.
Run {init} as init process
userspace - ptrace set fp regs failed, errno = 14
Kernel panic - not syncing: Attempted to kill init! exitcode=0x0000000b
CPU: 0 PID: 1 Comm: init.sh Not tainted 6.1.176 #1
Stack:
 6049c3d8 00000000 00000000 60a2c0e0
Call Trace:
 [<6003b41d>] ? show_stack+0x13d/0x150
 [<6068d0b8>] ? dump_stack_lvl+0x57/0x6b

"""


def fake_kernel(path: Path, console: str, *, release: str = "6.1.176") -> Path:
    """A stand-in 'kernel' that prints a console and exits the way a panicked UML does."""
    text = path.with_suffix(".console")
    text.write_text(console)
    path.write_text(textwrap.dedent(f"""\
        #!/bin/sh
        [ "$1" = --version ] && {{ echo {release}; exit 0; }}
        for a in "$@"; do case "$a" in init=*) init=${{a#init=}};; esac; done
        sed "s|{{init}}|$init|" {text}
        exit 1
        """))
    path.chmod(0o755)
    return path


@pytest.mark.unit
def test_panic_is_reported_in_one_line(tmp_path: Path) -> None:
    linux = fake_kernel(tmp_path / "linux.uml", AMX_PANIC_CONSOLE)
    problem, _ = uml.diagnose_boot(linux, workdir=tmp_path / "work")
    assert problem is not None and "\n" not in problem
    assert problem.startswith(f"UML kernel {linux} (6.1.176) does not boot here")
    assert problem.endswith("userspace - ptrace set fp regs failed, errno = 14; "
                            "Kernel panic - not syncing: Attempted to kill init! exitcode=0x0000000b")


@pytest.mark.unit
def test_a_kernel_that_cannot_start_is_reported_in_one_line(tmp_path: Path) -> None:
    linux = tmp_path / "linux.uml"
    linux.write_text("#!/nonexistent/ld.so\n")  # like a kernel whose patched interpreter is gone
    linux.chmod(0o755)
    problem, _ = uml.diagnose_boot(linux, workdir=tmp_path / "work")
    assert problem is not None and "\n" not in problem
    assert problem.startswith(f"UML kernel {linux} (does not start:") and "cannot be started" in problem


@pytest.mark.unit
def test_uml_tests_fail_with_one_line_each_when_the_kernel_panics(tmp_path: Path) -> None:
    """End to end through this suite's own conftest: with a kernel that panics,
    each UML test fails with the same single line and no traceback, and the
    kernel is booted only once for all of them."""
    linux = fake_kernel(tmp_path / "linux.uml", AMX_PANIC_CONSOLE)
    counter = tmp_path / "boots"
    wrapper = tmp_path / "counting-linux.uml"
    wrapper.write_text(f'#!/bin/sh\n[ "$1" = --version ] || echo boot >> {counter}\nexec {linux} "$@"\n')
    wrapper.chmod(0o755)
    env = {**os.environ, "NFSP_UML_KERNEL": str(wrapper)}
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-rN",
         "tests/uml/test_uml.py::test_kernel_boots_and_loads_its_modules",
         "tests/uml/test_uml.py::test_a_missing_module_is_a_setup_failure"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    text = out.stdout + out.stderr
    assert out.returncode == 1, text
    assert "2 errors" in text, text
    assert "Traceback" not in text and "def test_" not in text, text
    line = "userspace - ptrace set fp regs failed, errno = 14; Kernel panic"
    assert text.count(line) == 2, text
    assert counter.read_text().count("boot") == 1, "the kernel was booted more than once"
