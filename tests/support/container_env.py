"""podman for the image test: a private store, the locally made base image,
and the flags that work on these machines (see ../shared/ENVIRONMENT.md).

Nothing is skipped: if podman cannot build or run here, the test fails and
says why."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from tests.support.paths import REPO

CACHE = Path(os.environ.get("NFSP_CACHE_DIR", Path.home() / ".cache" / "nfs-provisioner"))
IMAGE = "localhost/nfs-provisioner:test"
RUN_FLAGS = ["--runtime", "runc"]
LIMITS = ["--ulimit", "nofile=20000:20000", "--ulimit", "nproc=32768:32768"]


class Podman:
    def __init__(self, store: Path | None = None) -> None:
        self.store = store or CACHE / "podman"
        self.global_args = ["--root", str(self.store / "root"), "--runroot", str(self.store / "run")]

    def __call__(self, *args: str, check: bool = True, timeout: float = 900) -> subprocess.CompletedProcess[str]:
        podman = shutil.which("podman")
        if podman is None:
            raise AssertionError("podman is not installed (hack/install-deps installs it)")
        r = subprocess.run([podman, *self.global_args, *args], capture_output=True, text=True, timeout=timeout)
        if check and r.returncode != 0:
            raise AssertionError(f"podman {' '.join(args[:3])} failed ({r.returncode}):\n{r.stderr[-4000:]}")
        return r

    def build(self, tag: str = IMAGE) -> str:
        """Import the base image under the Dockerfile's FROM name, build the real Dockerfile as ``tag``; returns it."""
        base = subprocess.run([str(REPO / "hack" / "base-image"), "import", *self.global_args],
                              capture_output=True, text=True, timeout=900)
        if base.returncode != 0:
            raise AssertionError(f"hack/base-image import failed:\n{base.stderr[-4000:]}")
        build_args: list[str] = []
        # A TLS-intercepting proxy's CA, when the host has one, is handed to pip in the build.
        bundle = Path("/etc/ssl/certs/ca-certificates.crt")
        if bundle.exists():
            build_args += ["--volume", f"{bundle}:/host-ca.crt:ro", "--build-arg", "PIP_CERT=/host-ca.crt"]
        self("build", "--isolation=chroot", "--pull=never", "--network=host", *build_args, "-t", tag,
             str(REPO))
        self("image", "prune", "-f", check=False)
        return tag

    def image_size(self, image: str) -> int:
        return int(self("image", "inspect", "--format", "{{.Size}}", image).stdout.strip())
