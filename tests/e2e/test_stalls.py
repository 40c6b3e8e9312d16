"""Failures that used to stall or hide, with the real appliance, control plane and Ganesha (issue 14): each must
reach the user (an event on the claim, a log line) or clean up after itself."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from kubernetes import client

from nfs_provisioner.ganesha import processes
from nfs_provisioner.ganesha.server import PID_FILE
from tests.support import smallfs, wait
from tests.support.appliance_env import Appliance
from tests.support.health_checks import check_health_follows_a_stopped_ganesha

pytestmark = [pytest.mark.e2e, pytest.mark.kube, pytest.mark.ganesha]


@pytest.fixture
def small_root(tmp_path: Path) -> Iterator[Path]:
    """A real 8 MiB ext4 at the export root the ``appliance`` fixture uses (requested before it, so it is
    unmounted after the appliance stopped)."""
    with smallfs.mounted(tmp_path / "export", image=tmp_path / "root.img") as root:
        yield root


def _claim(core: client.CoreV1Api, namespace: str, cls: str, name: str) -> None:
    core.create_namespaced_persistent_volume_claim(namespace, {
        "apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": name},
        "spec": {"storageClassName": cls, "accessModes": ["ReadWriteMany"],
                 "resources": {"requests": {"storage": "1Mi"}}}})


@pytest.mark.parametrize(("spoil", "message"), [("full", "No space left on device"),
                                                ("read-only", "Read-only file system")])
def test_claims_on_a_full_or_read_only_root_say_why(small_root: Path, appliance: Appliance, core: client.CoreV1Api,
                                                     storage: client.StorageV1Api, namespace: str, unique: str,
                                                     spoil: str, message: str) -> None:
    cls = f"stall-{unique}"
    storage.create_storage_class({"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
                                  "metadata": {"name": cls}, "provisioner": appliance.provisioner})
    appliance.start()
    if spoil == "full":
        smallfs.fill(small_root)
    else:
        smallfs.turn_read_only(small_root)
    try:
        _claim(core, namespace, cls, "waiting")

        def failed_event() -> str | None:
            for e in core.list_namespaced_event(namespace, field_selector="involvedObject.name=waiting").items:
                if e.reason == "ProvisioningFailed" and e.type == "Warning" and message in e.message:
                    return str(e.message)
            return None

        text = wait.until(failed_event, timeout=30, what=f"ProvisioningFailed event with {message!r}")
        assert len(text.splitlines()) == 1 and str(small_root) in text, text
        lines = [line for line in appliance.text().splitlines() if message in line and "waiting" in line]
        assert lines and "WARNING" in lines[0], appliance.log()
        assert core.read_namespaced_persistent_volume_claim("waiting", namespace).status.phase == "Pending"
    finally:
        storage.delete_storage_class(cls)


def _gone(pids: list[int]) -> bool:
    return not [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]


def test_helpers_die_with_the_appliance_and_other_signals_are_harmless(appliance: Appliance) -> None:
    """SIGHUP/SIGUSR1/SIGUSR2 used to kill the appliance and leave Ganesha and its bus running (PPID 1), so the
    next start failed with "Address already in use"; SIGKILL did the same."""
    appliance.start()
    assert appliance.proc is not None
    helpers = appliance.leftovers()
    assert len(helpers) >= 2, appliance.log()  # dbus-daemon and ganesha.nfsd at least
    for sig, said in ((signal.SIGHUP, "ignored"), (signal.SIGUSR1, "log level DEBUG"), (signal.SIGUSR2, "log level")):
        os.kill(appliance.proc.pid, sig)
        wait.until(lambda sig=sig, said=said: f"received {sig.name}: {said}" in appliance.text(), timeout=5,
                   what=f"{sig.name} logged")
    assert appliance.proc.poll() is None and appliance.get("/healthz")[0] == 200
    assert appliance.leftovers() == helpers

    os.kill(appliance.proc.pid, signal.SIGKILL)  # only the appliance: its children must follow by themselves
    appliance.proc.wait(10)
    wait.until(lambda: _gone(helpers), timeout=5, what=f"helpers {helpers} gone after the appliance's SIGKILL")
    appliance.start()  # the same ports again
    assert appliance.get("/readyz")[0] == 200


def test_a_start_stops_what_the_previous_run_left_and_nothing_else(appliance: Appliance) -> None:
    """A process recorded in the PID file by a run that died (here: one holding the NFS port, as a leftover
    Ganesha would) is stopped by the next start; a recorded PID that is now another program is not touched."""
    appliance.start()
    appliance.stop()
    squatter = subprocess.Popen([sys.executable, "-c", "import socket, time\n"
                                 "s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
                                 f"s.bind(('127.0.0.1', {appliance.nfs_port})); s.listen(); time.sleep(600)"])
    other = subprocess.Popen(["sleep", "600"])
    try:
        wait.until(lambda: appliance.nfs_port in processes.bound_ports(squatter.pid), timeout=10,
                   what="the NFS port held")
        pid_file = processes.PidFile(appliance.export_root / ".ganesha" / PID_FILE)
        pid_file.add(squatter.pid, psutil.Process(squatter.pid).cmdline())
        pid_file.add(other.pid, ["sleep", "601"])  # the PID was reused by a program that is not ours
        appliance.start()
        assert squatter.wait(10) is not None
        assert other.poll() is None
        text = appliance.log_file.read_text(errors="replace")  # all of it: log() is the tail
        assert f"(pid {squatter.pid}), left running by a previous run" in text, text
        assert f"pid {other.pid})" not in text
    finally:
        for p in (squatter, other):
            if p.poll() is None:
                p.kill()
                p.wait()


def test_healthz_answers_at_once_when_ganesha_is_stopped(appliance: Appliance) -> None:
    appliance.start()
    pids = [p for p in appliance.leftovers() if any(a.endswith("/ganesha.nfsd") for a in psutil.Process(p).cmdline())]
    assert len(pids) == 1, appliance.log()
    check_health_follows_a_stopped_ganesha(appliance, pids[0])


def _events(core: client.CoreV1Api, namespace: str, name: str) -> list[tuple[str, str, str]]:
    return [(e.type, e.reason, e.message)
            for e in core.list_namespaced_event(namespace, field_selector=f"involvedObject.name={name}").items]


def test_expansion_reports_no_conflict_and_refuses_an_impossible_size(appliance: Appliance, core: client.CoreV1Api,
                                                                      storage: client.StorageV1Api, namespace: str,
                                                                      unique: str) -> None:
    """A successful 1Mi -> 2Mi expansion used to emit 'Warning VolumeResizeFailed ... 409 Conflict' as well (a
    conflict is retried, not reported); a claim resized to 1e30 was ignored without a word."""
    cls = f"grow-{unique}"
    storage.create_storage_class({"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
                                  "metadata": {"name": cls}, "provisioner": appliance.provisioner,
                                  "allowVolumeExpansion": True})
    appliance.start()
    try:
        for n in range(3):  # the conflict is a race with the controller-manager: give it several chances
            name = f"grow{n}"
            _claim(core, namespace, cls, name)
            wait.until(lambda name=name: core.read_namespaced_persistent_volume_claim(name, namespace).status.phase
                       == "Bound", timeout=60, what="claim Bound")
            core.patch_namespaced_persistent_volume_claim(name, namespace,
                                                          {"spec": {"resources": {"requests": {"storage": "2Mi"}}}})
            wait.until(lambda name=name: (core.read_namespaced_persistent_volume_claim(name, namespace).status
                                          .capacity or {}).get("storage") == "2Mi", timeout=60, what="capacity 2Mi")
            wait.until(lambda name=name: "VolumeResizeSuccessful" in {r for _, r, _ in _events(core, namespace, name)},
                       timeout=10, what="VolumeResizeSuccessful")
        time.sleep(1)
        for n in range(3):
            failed = [e for e in _events(core, namespace, f"grow{n}") if e[1] == "VolumeResizeFailed"]
            assert failed == [], failed

        core.patch_namespaced_persistent_volume_claim("grow0", namespace,
                                                      {"spec": {"resources": {"requests": {"storage": "1e30"}}}})

        def refused() -> str | None:
            return next((m for t, r, m in _events(core, namespace, "grow0")
                         if t == "Warning" and r == "VolumeResizeFailed" and "1e30" in m), None)
        message = wait.until(refused, timeout=30, what="VolumeResizeFailed for 1e30")
        assert "larger than any volume can be" in message, message
        assert any("1e30" in line and "WARNING" in line for line in appliance.log().splitlines()), appliance.log()
        pvc = core.read_namespaced_persistent_volume_claim("grow0", namespace)
        assert pvc.status.capacity == {"storage": "2Mi"}
        time.sleep(2)
        assert len([e for e in _events(core, namespace, "grow0") if e[1] == "VolumeResizeFailed"]) == 1  # once
    finally:
        storage.delete_storage_class(cls)
