"""The appliance's one owner of signals (appliance.lifecycle), without any server: a real signal to a child
interpreter, and the event semantics start-up relies on."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time

import pytest

from nfs_provisioner.appliance import lifecycle

pytestmark = pytest.mark.unit


def test_stop_request_calls_callbacks_and_later_registrations_at_once() -> None:
    s = lifecycle.Signals()
    calls: list[str] = []
    s.on_stop(lambda: calls.append("early"))
    s.check()  # nothing requested yet
    s.request_stop()
    assert calls == ["early"]
    s.on_stop(lambda: calls.append("late"))  # registered after the stop: called at once
    assert calls == ["early", "late"]
    with pytest.raises(lifecycle.Terminated):
        s.check()


def test_sleep_ends_at_once_on_a_stop_from_another_thread() -> None:
    s = lifecycle.Signals()
    threading.Timer(0.1, s.request_stop).start()
    started = time.monotonic()
    with pytest.raises(lifecycle.Terminated):
        s.sleep(30)
    assert time.monotonic() - started < 5


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGINT"])
def test_a_real_signal_never_raises_in_the_interrupted_code(sig: str) -> None:
    """The handler only records: a ``finally`` running when the signal lands completes, and the first signal is
    the one named."""
    code = textwrap.dedent(f"""
        import os, signal, sys
        from nfs_provisioner.appliance import lifecycle
        s = lifecycle.Signals()
        s.install()
        done = []
        try:
            os.kill(os.getpid(), signal.{sig})
            os.kill(os.getpid(), signal.SIGTERM)
        finally:
            done.append(1)
        assert done == [1] and s.stopping.wait(10)
        try:
            s.check()
        except lifecycle.Terminated as e:
            print(e)
            sys.exit(0)
        sys.exit(3)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"{sig} during start-up"


def test_log_level_signals_switch_to_debug_and_back_to_the_started_level() -> None:
    """What SIGUSR1 and SIGUSR2 do (the real signals: tests/e2e/test_no_restart.py, tests/e2e/test_stalls.py)."""
    import logging

    root = logging.getLogger()
    was = root.level
    try:
        root.setLevel(logging.WARNING)
        s = lifecycle.Signals()
        s.change_log_level(debug=False)  # SIGUSR2 first: the level it started with, unchanged
        assert root.level == logging.WARNING
        s.change_log_level(debug=True)
        assert root.level == logging.DEBUG
        s.change_log_level(debug=True)
        s.change_log_level(debug=False)
        assert root.level == logging.WARNING
    finally:
        root.setLevel(was)
