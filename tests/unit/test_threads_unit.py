"""Background threads started one way (``nfs_provisioner.threads.spawn``), the appliance's ordered stop
(``appliance.lifecycle.Stack``), the controller's resync crash guard and why its resync may share the provisioning
memories without a lock: fast, no servers."""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap
import threading
import time

import pytest
from prometheus_client import CollectorRegistry

from nfs_provisioner import threads
from nfs_provisioner.appliance import lifecycle
from nfs_provisioner.controller import ControllerSettings, ProvisionController, metrics, outcomes
from nfs_provisioner.controller.testing import FakeApi, MemoryProvisioner
from nfs_provisioner.kube.client import ClientSettings
from tests.support import wait
from tests.support.builders import make_claim, make_class
from tests.support.fakes import NAME, NS, pv_name, reasons, running

pytestmark = pytest.mark.unit


def test_a_crashing_thread_is_logged_by_its_name_counted_and_ends_alone(caplog: pytest.LogCaptureFixture,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    hooked: list[str] = []
    monkeypatch.setattr(threading, "excepthook", lambda args: hooked.append(str(args.exc_value)))
    before = threads.crashes().get("unit-crash", 0)
    survivor = threading.Event()

    def boom() -> None:
        raise RuntimeError("boom in a background thread")

    with caplog.at_level(logging.ERROR, logger="nfs_provisioner.threads"):
        t = threads.spawn(boom, name="unit-crash-7")
        t.join(5)
        threads.spawn(survivor.set, name="unit-survivor").join(5)
    assert t.name == "unit-crash-7" and t.daemon and not t.is_alive()
    lines = [r for r in caplog.records if r.name == "nfs_provisioner.threads"]
    assert [r.getMessage() for r in lines] == ["thread unit-crash-7 crashed (the process goes on without it)"]
    assert lines[0].exc_info is not None and lines[0].exc_info[0] is RuntimeError
    assert hooked == []  # handled by spawn, not left to threading.excepthook
    assert threads.crashes()["unit-crash"] == before + 1  # by kind: the trailing -N dropped
    assert survivor.is_set()
    registry = CollectorRegistry()
    metrics.Metrics(registry)
    assert registry.get_sample_value("nfs_provisioner_thread_crashes_total", {"thread": "unit-crash"}) == before + 1


def test_a_crashing_thread_does_not_end_the_process() -> None:
    """In a child interpreter: the main thread goes on, exits 0, and the crash is one log line with the name."""
    code = textwrap.dedent("""
        import logging, time
        from nfs_provisioner import threads
        logging.basicConfig(level=logging.INFO, format="%(levelname)s [%(threadName)s] %(message)s")
        def boom():
            raise ValueError("bad value")
        threads.spawn(boom, name="doomed").join(5)
        time.sleep(0.05)
        print("main thread still here", flush=True)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout == "main thread still here\n"
    assert "ERROR [doomed] thread doomed crashed (the process goes on without it)" in out.stderr
    assert "ValueError: bad value" in out.stderr
    assert "Exception in thread" not in out.stderr  # not Python's default report


def test_join_waits_in_order_under_one_deadline_and_names_those_still_running() -> None:
    release = threading.Event()
    quick = threads.spawn(lambda: None, name="quick")
    slow = [threads.spawn(release.wait, 10, name=f"slow-{i}") for i in range(3)]
    began = time.monotonic()
    stuck = threads.join([quick, None, *slow], 0.3)
    took = time.monotonic() - began
    assert stuck == ["slow-0", "slow-1", "slow-2"]
    assert 0.25 < took < 0.9, took  # one deadline for all, not 0.3 s each
    release.set()
    assert threads.join(slow, 5) == []


def test_the_stack_stops_last_started_first_and_every_stop_runs(caplog: pytest.LogCaptureFixture) -> None:
    stops = lifecycle.Stack()
    ran: list[str] = []

    def failing() -> None:
        ran.append("Ganesha")
        raise OSError("cannot stop")

    stops.push("lock", lambda: ran.append("lock"))
    stops.push("Ganesha", failing)
    stops.push("watches", lambda: ran.append("watches"))
    assert len(stops) == 3
    with caplog.at_level(logging.ERROR, logger="nfs_provisioner.appliance.lifecycle"):
        stops.close()
    assert ran == ["watches", "Ganesha", "lock"]
    assert [r.getMessage() for r in caplog.records] == ["stopping the Ganesha failed"]
    stops.close()  # each stop runs once
    assert ran == ["watches", "Ganesha", "lock"] and len(stops) == 0


def test_a_failing_resync_is_logged_and_the_resyncs_go_on(caplog: pytest.LogCaptureFixture) -> None:
    api, p = FakeApi(), MemoryProvisioner()
    calls: list[float] = []
    c = ProvisionController(p, ControllerSettings(provisioner_name=NAME, resync_period=0.05, shutdown_grace=1.0,
                                                  client=ClientSettings(qps=0)), api=api, registry=CollectorRegistry())
    c.start()
    try:
        def forget_saved(older_than: float) -> None:
            calls.append(older_than)
            if len(calls) == 1:
                raise RuntimeError("a bug in one resync")

        c.provisioning.forget_saved = forget_saved  # type: ignore[method-assign]
        with caplog.at_level(logging.ERROR, logger="nfs_provisioner.controller.controller"):
            wait.until(lambda: len(calls) >= 3, timeout=5, what="resyncs after the failing one")
    finally:
        c.stop(wait=True)
    failed = [r for r in caplog.records if r.getMessage().startswith("resync failed")]
    assert len(failed) == 1 and failed[0].threadName == "resync"
    assert failed[0].exc_info is not None and "a bug in one resync" in str(failed[0].exc_info[1])


def test_memories_forgotten_by_the_resync_cost_no_second_volume() -> None:
    """``Provisioning`` shares its memories with the resync thread without a lock: the resync only drops them,
    and a claim whose memory of its saved PV is gone is looked at again and left alone (its PV is in the cache
    long before the resync may drop that memory: 300 s at the earliest)."""
    api, p = FakeApi(), MemoryProvisioner()
    make_class("c", NAME, api=api)
    with running(api, p) as c:
        claim = make_claim(NS, "data", "c", provisioner=NAME, api=api)
        uid, name = claim["metadata"]["uid"], pv_name(claim)
        wait.until(lambda: c.volumes.get(name), timeout=5, what="the PV in the controller's cache")
        wait.until(lambda: reasons(api, "data") == ["Provisioning", "ProvisioningSucceeded"], timeout=5,
                   what="the two events")
        assert uid in c.provisioning._saved
        c.provisioning.forget_saved(0.0)  # what the resync does to a memory older than it keeps them
        assert uid not in c.provisioning._saved
        assert c.provisioning.sync(uid).next is outcomes.Next.DONE
        time.sleep(0.3)
    assert p.provisioned == [name]
    assert reasons(api, "data") == ["Provisioning", "ProvisioningSucceeded"]
