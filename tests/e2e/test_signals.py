"""SIGTERM and SIGINT at any moment end the real appliance cleanly: exit 0, well inside a pod's default
terminationGracePeriodSeconds (30 s), Ganesha and its bus stopped, the export root's lock released, the run
directory removed, no traceback. (make test once failed on a SIGTERM 0.6 s after /readyz said ready: the
appliance exited 143 because the window between start-up and the controller's own handler raised SystemExit.)

The signal is sent at points found in the appliance's log during start-up, at fixed delays after it is ready,
during the shutdown (a second signal), and while it waits for an API server that does not answer."""

from __future__ import annotations

import fcntl
import os
import signal
import time
from pathlib import Path

import pytest

from nfs_provisioner.appliance.state import LOCK_FILE
from tests.support.appliance_env import Appliance
from tests.support.ganesha_env import free_port

pytestmark = [pytest.mark.e2e, pytest.mark.kube, pytest.mark.ganesha]

GRACE = 20.0
"""Seconds a stopped appliance may take (a pod's default terminationGracePeriodSeconds is 30)."""

START_MARKS = [
    "identity ",  # the export root is locked, Ganesha not started
    "who may mount",  # the API answered
    "started dbus-daemon",  # Ganesha's bus is up, ganesha.nfsd not yet
    "NFS-Ganesha 9",  # the binary was checked
    "Ganesha ready",
    "NFS server address",
    "serving /metrics",  # the last start-up step before the workers
]


def _wait_for(appliance: Appliance, mark: str, timeout: float = 60) -> None:
    assert appliance.proc is not None
    deadline = time.monotonic() + timeout
    while mark not in appliance.text():
        assert appliance.proc.poll() is None, f"exited before {mark!r}:\n{appliance.log()}"
        assert time.monotonic() < deadline, f"{mark!r} not logged within {timeout}s:\n{appliance.log()}"
        time.sleep(0.002)


def _lock_free(root: Path) -> bool:
    fd = os.open(root / LOCK_FILE, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(fd)


def _run_dirs(appliance: Appliance) -> list[str]:
    """The run directories (/tmp/nfsp-*) the appliance's Ganesha used: named in its log."""
    import re

    return sorted(set(re.findall(r"(/tmp/nfsp-[A-Za-z0-9_]+)/", appliance.text())))


def _assert_clean_stop(appliance: Appliance, sig: int, *, then: int | None = None, gap: float = 0.0) -> None:
    assert appliance.proc is not None
    sent = time.monotonic()
    appliance.proc.send_signal(sig)
    if then is not None:
        time.sleep(gap)
        if appliance.proc.poll() is None:
            appliance.proc.send_signal(then)
    code = appliance.proc.wait(GRACE + 10)
    took = time.monotonic() - sent
    print(f"{signal.Signals(sig).name}: exit {code} after {took:.2f}s")
    assert code == 0, f"exit {code} after {signal.Signals(sig).name}:\n{appliance.log()}"
    assert took < GRACE, f"took {took:.1f}s to stop:\n{appliance.log()}"
    assert appliance.leftovers() == [], appliance.log()
    assert "Traceback" not in appliance.text(), appliance.log()
    if (appliance.export_root / LOCK_FILE).exists():
        assert _lock_free(appliance.export_root)
    for d in _run_dirs(appliance):
        assert not Path(d).exists(), f"run directory {d} left behind"


@pytest.mark.parametrize("mark", START_MARKS)
def test_sigterm_during_start_up_exits_0_and_stops_everything(appliance: Appliance, mark: str) -> None:
    appliance.start(wait_ready=False)
    _wait_for(appliance, mark)
    _assert_clean_stop(appliance, signal.SIGTERM)


@pytest.mark.parametrize("mark", ["started dbus-daemon", "Ganesha ready"])
def test_sigint_during_start_up_exits_0_and_stops_everything(appliance: Appliance, mark: str) -> None:
    appliance.start(wait_ready=False)
    _wait_for(appliance, mark)
    _assert_clean_stop(appliance, signal.SIGINT)


@pytest.mark.parametrize("delay", [0.0, 0.05, 0.2, 0.6])
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_right_after_ready_exits_0(appliance: Appliance, delay: float, sig: int) -> None:
    """The window of the CI failure: ready, then the signal before or while the controller's workers start."""
    appliance.start(wait_ready=True)
    time.sleep(delay)
    _assert_clean_stop(appliance, sig)


@pytest.mark.parametrize("gap", [0.0, 0.05, 0.3])
def test_second_signal_during_shutdown_exits_0(appliance: Appliance, gap: float) -> None:
    appliance.start(wait_ready=True)
    _assert_clean_stop(appliance, signal.SIGTERM, then=signal.SIGTERM, gap=gap)


def test_second_signal_during_start_up_exits_0(appliance: Appliance) -> None:
    appliance.start(wait_ready=False)
    _wait_for(appliance, "started dbus-daemon")
    _assert_clean_stop(appliance, signal.SIGTERM, then=signal.SIGINT, gap=0.01)


def test_sigterm_while_waiting_for_the_api_server(appliance: Appliance) -> None:
    """No API server answers: the retry wait ends at once on SIGTERM (it slept 3 s per attempt, uninterruptible)."""
    appliance.extra.append(f"--master=https://127.0.0.1:{free_port()}")
    appliance.start(wait_ready=False)
    _wait_for(appliance, "cannot reach the API server")
    sent = time.monotonic()
    _assert_clean_stop(appliance, signal.SIGTERM)
    assert time.monotonic() - sent < 2.0, appliance.log()


@pytest.mark.parametrize("when", ["started dbus-daemon", "ready"])
def test_a_burst_of_signals_exits_0(appliance: Appliance, when: str) -> None:
    """Fifty SIGTERMs and SIGINTs 1 ms apart: no handler may block on a lock the interrupted code holds (setting
    an Event from a Python handler hung the appliance on a second SIGTERM during shutdown)."""
    appliance.start(wait_ready=when == "ready")
    if when != "ready":
        _wait_for(appliance, when)
    assert appliance.proc is not None
    for i in range(49):
        if appliance.proc.poll() is not None:
            break
        appliance.proc.send_signal(signal.SIGINT if i % 2 else signal.SIGTERM)
        time.sleep(0.001)
    _assert_clean_stop(appliance, signal.SIGTERM)
