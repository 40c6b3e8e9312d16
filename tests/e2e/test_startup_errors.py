"""Start-up failures of the real appliance end with one line and exit 1, never a traceback; a broken journal
record is reported once and left alone (issue 14, "Start-up tracebacks")."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support import smallfs, wait
from tests.support.appliance_env import Appliance

pytestmark = [pytest.mark.e2e, pytest.mark.kube, pytest.mark.ganesha]

IDENTITY = "nfs-provisioner.identity"


def fails_with_one_line(a: Appliance, expected: str) -> str:
    a.start(wait_ready=False)
    assert a.proc is not None
    assert a.proc.wait(60) == 1, a.log()
    text = a.text()
    assert "Traceback" not in text, text
    last = text.strip().splitlines()[-1]
    assert last.startswith("nfs-provisioner: error: ") and expected in last, text
    return last


@pytest.mark.parametrize(("content", "expected"), [
    (b"", "is empty, not a UUID"),
    (b"\n\n", "is empty, not a UUID"),
    (b"\x89PNG\r\n\x1a\n\x00\x00", "holds binary data"),
    (b"0" * 2**20, "not a UUID"),
], ids=["empty", "blank", "binary", "one-MiB"])
def test_a_bad_identity_file_is_one_line(appliance: Appliance, content: bytes, expected: str) -> None:
    appliance.export_root.mkdir()
    (appliance.export_root / IDENTITY).write_bytes(content)
    last = fails_with_one_line(appliance, expected)
    assert str(appliance.export_root / IDENTITY) in last
    assert (appliance.export_root / IDENTITY).read_bytes() == content  # never replaced


def _read_only(root: Path) -> None:
    (root / IDENTITY).write_text(f"{uuid.uuid4()}\n")
    smallfs.remount(root, "ro")


def _tiny(root: Path) -> None:
    pass


@pytest.mark.parametrize(("size", "prepare", "expected"), [
    (8 * 2**20, _read_only, "Read-only file system"),
    (2**20, _tiny, "No space left on device"),
], ids=["read-only-with-identity", "one-MiB-root"])
def test_an_unwritable_root_is_one_line(tmp_path: Path, appliance: Appliance, size: int,
                                        prepare: Callable[[Path], None], expected: str) -> None:
    with smallfs.mounted(appliance.export_root, image=tmp_path / "root.img", size=size) as root:
        prepare(root)
        try:
            fails_with_one_line(appliance, expected)
        finally:
            appliance.close()


def test_a_journal_record_without_a_uid_is_reported_once_and_left(appliance: Appliance) -> None:
    journal = appliance.export_root / ".provisioning"
    journal.mkdir(parents=True)
    record = journal / f"{uuid.uuid4()}.json"
    record.write_text(json.dumps({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                                  "metadata": {"name": "c", "namespace": "ns"}}))
    appliance.start()
    wait.until(lambda: "is unusable" in appliance.text(), timeout=10, what="the record reported")
    time.sleep(3)  # retries (with backoff) would have come by now
    text = appliance.text()
    assert "Traceback" not in text, text
    lines = [line for line in text.splitlines() if str(record) in line]
    assert len(lines) == 1 and "metadata.uid is None" in lines[0], lines
    assert record.exists()


@pytest.mark.parametrize("master", ["not a url", "https://127.0.0.1:99999", "ftp://h/"])
def test_a_malformed_master_is_a_configuration_error(appliance: Appliance, master: str) -> None:
    appliance.extra = [f"--master={master}"]
    appliance.start(wait_ready=False)
    assert appliance.proc is not None
    assert appliance.proc.wait(30) == 2, appliance.log()
    lines = appliance.text().strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("nfs-provisioner: error: --master ") and repr(master) in lines[0]


def test_an_unreachable_api_server_is_said_every_few_seconds_and_not_ready(appliance: Appliance) -> None:
    appliance.extra = ["--master=https://127.0.0.1:1"]  # nothing listens there
    appliance.start(wait_ready=False)
    assert appliance.proc is not None

    def said() -> list[str]:
        return [line for line in appliance.text().splitlines()
                if "WARNING" in line and "cannot reach the API server https://127.0.0.1:1" in line]
    wait.until(lambda: len(said()) >= 3, timeout=15, what="three warnings")
    assert appliance.proc.poll() is None, appliance.log()
    code, body = appliance.get("/readyz")
    assert code == 503 and "cannot reach the API server https://127.0.0.1:1" in body, body
    assert appliance.get("/healthz")[0] == 200  # alive: a pod is not restarted for a server it cannot reach
    assert "Traceback" not in appliance.text()
    assert appliance.stop() in (0, 143)


def test_a_garbage_kubeconfig_names_the_file_and_the_problem(appliance: Appliance, tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.kubeconfig"
    garbage.write_text("apiVersion: v1\nclusters: [\n  - {name: x\nnot yaml: : :\n")
    appliance.kubeconfig = garbage
    last = fails_with_one_line(appliance, f"cannot load Kubernetes credentials from kubeconfig {garbage}: ")
    assert len(last) < 600, last
