"""The local node's pause image: hack/pause/main.go built static (CGO_ENABLED=0, hack/cluster's
Go settings) into an image from scratch, written as a docker archive (what `ctr images import`
and `podman load` read) and cached by source hash under $NFSP_CACHE_DIR/pause/<hash>/.
Standard library only.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
import tempfile
import time
from pathlib import Path
from types import ModuleType

PAUSE_SRC = Path(__file__).resolve().parent / "pause" / "main.go"


def pause_image(cl: ModuleType) -> tuple[str, Path]:
    """(ref, docker-archive tar) of the pause image, built once per source version."""
    src = PAUSE_SRC.read_bytes()
    tag = hashlib.sha256(src).hexdigest()[:12]
    ref = f"localhost/nfsp-pause:{tag}"
    d = cl.CACHE / "pause" / tag
    tar = d / "image.tar"
    if tar.exists():
        return ref, tar
    d.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="pausebuild-") as tmp:
        work = Path(tmp)
        (work / "go.mod").write_text("module pause\n\ngo 1.25\n")
        (work / "main.go").write_bytes(src)
        cgo = os.environ.get("CGO_ENABLED")
        os.environ["CGO_ENABLED"] = "0"  # static: the image has nothing but this file
        try:
            cl._run_go(["build", "-trimpath", "-ldflags", "-s -w", "-o", str(work / "pause"), "."], work,
                       d / "build.log")
        finally:
            if cgo is None:
                del os.environ["CGO_ENABLED"]
            else:
                os.environ["CGO_ENABLED"] = cgo
        binary = (work / "pause").read_bytes()
    layer = io.BytesIO()
    with tarfile.open(fileobj=layer, mode="w", format=tarfile.USTAR_FORMAT) as t:
        info = tarfile.TarInfo("pause")
        info.size, info.mode, info.mtime = len(binary), 0o755, 0
        t.addfile(info, io.BytesIO(binary))
    layer_bytes = layer.getvalue()
    layer_id = hashlib.sha256(layer_bytes).hexdigest()
    config = json.dumps({
        "architecture": "amd64", "os": "linux", "created": "1970-01-01T00:00:00Z",
        "config": {"Entrypoint": ["/pause"], "User": "65535:65535"},
        "rootfs": {"type": "layers", "diff_ids": [f"sha256:{layer_id}"]},
        "history": [{"created": "1970-01-01T00:00:00Z", "created_by": "hack/node_image.py"}],
    }, sort_keys=True).encode()
    config_id = hashlib.sha256(config).hexdigest()
    manifest = json.dumps([{"Config": f"{config_id}.json", "RepoTags": [ref],
                            "Layers": [f"{layer_id}/layer.tar"]}]).encode()
    tmp_tar = tar.with_suffix(".tmp")
    with tarfile.open(tmp_tar, "w", format=tarfile.USTAR_FORMAT) as t:
        for name, data in ((f"{layer_id}/layer.tar", layer_bytes), (f"{config_id}.json", config),
                           ("manifest.json", manifest)):
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            t.addfile(info, io.BytesIO(data))
    tmp_tar.rename(tar)
    cl.log(f"built the pause image {ref} in {time.monotonic() - started:.1f}s")
    return ref, tar
