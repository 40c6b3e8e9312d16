"""Children of ``processes.Launcher`` die with the thread or process that started them, through ``nsenter``
too (PR_SET_PDEATHSIG set before exec survives nsenter's exec in place and the program's)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import psutil
import pytest

from nfs_provisioner.ganesha import processes
from tests.support import wait
from tests.support.ganesha_env import Harness

pytestmark = pytest.mark.ganesha  # root, network and mount namespaces

SPAWN = """
import sys, time
from pathlib import Path
from nfs_provisioner.ganesha import processes
netns, mountns = (Path(a) if a != "-" else None for a in sys.argv[1:3])
proc = processes.Launcher(netns=netns, mountns=mountns).spawn(["sleep", "600"])
print(proc.pid, flush=True)
time.sleep(600)
"""


def _alive(pid: int) -> bool:
    return psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE


@pytest.mark.parametrize("through_nsenter", [False, True], ids=["direct", "nsenter"])
def test_children_die_with_a_killed_parent(h: Harness, through_nsenter: bool) -> None:
    ns = h.make_netns() if through_nsenter else None
    argv = [sys.executable, "-c", SPAWN, str(ns.path) if ns else "-", str(ns.mountns) if ns else "-"]
    parent = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": os.getcwd()})
    child = 0
    try:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        p = psutil.Process(child)
        wait.until(lambda: p.cmdline() == ["sleep", "600"], timeout=5, what="sleep exec'd")
        if ns is not None:
            assert os.stat(f"/proc/{child}/ns/net").st_ino == os.stat(ns.path).st_ino  # nsenter exec'd in place
        parent.send_signal(signal.SIGKILL)
        parent.wait(5)
        wait.until(lambda: not _alive(child), timeout=5, what="the child gone with its parent")
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        if child and _alive(child):
            os.kill(child, signal.SIGKILL)


def test_children_die_with_the_thread_that_started_them(tmp_path: Path) -> None:
    """PDEATHSIG follows the starting thread: GaneshaServer starts children from the main thread and from its
    supervisor, both alive as long as the server runs."""
    pids: list[int] = []
    t = threading.Thread(target=lambda: pids.append(processes.Launcher().spawn(["sleep", "600"]).pid))
    t.start()
    t.join()
    try:
        wait.until(lambda: not _alive(pids[0]), timeout=5, what="the child gone with its thread")
    finally:
        if _alive(pids[0]):
            os.kill(pids[0], signal.SIGKILL)
