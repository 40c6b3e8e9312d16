"""One check two modules run (tests/e2e/test_stalls.py, tests/e2e/test_external_ganesha.py): /healthz and /readyz
follow a stopped Ganesha."""

from __future__ import annotations

import os
import signal
import time

from tests.support import wait
from tests.support.appliance_env import Appliance


def timed_get(a: Appliance, path: str) -> tuple[int, str, float]:
    start = time.monotonic()
    code, body = a.get(path)
    return code, body, time.monotonic() - start


def check_health_follows_a_stopped_ganesha(a: Appliance, ganesha_pid: int) -> None:
    """SIGSTOP Ganesha: /healthz and /readyz answer 503 with the reason, each in well under a second; SIGCONT:
    200 again."""
    assert a.get("/healthz")[0] == 200
    os.kill(ganesha_pid, signal.SIGSTOP)
    try:
        answers = []
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            answers.append(timed_get(a, "/healthz"))
            if answers[-1][0] == 503:
                break
            time.sleep(0.1)
        assert max(t for _, _, t in answers) < 0.5, answers
        code, body, _ = answers[-1]
        assert code == 503 and "NFS-Ganesha" in body, answers
        code, body, took = timed_get(a, "/readyz")
        assert code == 503 and "NFS-Ganesha" in body and took < 0.5, (code, body, took)
    finally:
        os.kill(ganesha_pid, signal.SIGCONT)
    wait.until(lambda: a.get("/healthz")[0] == 200, timeout=10, what="healthy again after SIGCONT")
