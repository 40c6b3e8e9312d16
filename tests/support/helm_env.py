"""helm for the chart tests: the binary hack/helm builds and caches ($NFSP_CACHE_DIR/helm/<version>/helm).

Nothing is skipped: without it the test fails with one line naming how to get it."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.paths import REPO

HACK_HELM = REPO / "hack" / "helm"
CHART = REPO / "deploy" / "helm" / "nfs-provisioner"


def helm_binary() -> Path:
    """The cached helm; a missing one fails the calling test with one line."""
    r = subprocess.run([str(HACK_HELM), "path"], capture_output=True, text=True, timeout=60)
    if r.returncode != 0:
        pytest.fail(r.stderr.strip() or "hack/helm path failed", pytrace=False)
    return Path(r.stdout.strip())


class Helm:
    """helm with its own state (config, cache, data) under a test directory and an optional kubeconfig."""

    def __init__(self, home: Path, *, kubeconfig: Path | None = None) -> None:
        self.binary = helm_binary()
        self.env = {"HOME": str(home), "PATH": "/usr/bin:/bin", "HELM_CONFIG_HOME": str(home / "config"),
                    "HELM_CACHE_HOME": str(home / "cache"), "HELM_DATA_HOME": str(home / "data")}
        if kubeconfig is not None:
            self.env["KUBECONFIG"] = str(kubeconfig)

    def __call__(self, *args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        r = subprocess.run([str(self.binary), *args], capture_output=True, text=True, env=self.env, timeout=timeout)
        if check and r.returncode != 0:
            raise AssertionError(f"helm {' '.join(args)} failed ({r.returncode}):\n{r.stderr[-4000:]}")
        return r

    def template(self, *set_args: str, release: str = "nfs", namespace: str = "nfs-provisioner",
                 values: dict[str, Any] | None = None, tmp: Path | None = None) -> list[dict[str, Any]]:
        """`helm template` of the chart: the rendered objects."""
        args = ["template", release, str(CHART), "--namespace", namespace]
        for s in set_args:
            args += ["--set", s]
        if values is not None:
            assert tmp is not None
            f = tmp / f"values-{len(list(tmp.glob('values-*')))}.json"
            f.write_text(json.dumps(values))
            args += ["-f", str(f)]
        return [d for d in yaml.safe_load_all(self(*args).stdout) if d]
