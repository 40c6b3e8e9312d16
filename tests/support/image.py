"""The image of the node lane: built from the Dockerfile by podman and imported into the kubelet node's containerd
once per session (tests/conftest.py makes the fixture visible to every module)."""

from __future__ import annotations

import time

import pytest

from tests.support.container_env import Podman
from tests.support.incluster import figure
from tests.support.kubenode import Node

IMAGE = "docker.io/library/nfs-provisioner:0.1.0"  # what `image: nfs-provisioner:0.1.0` names


@pytest.fixture(scope="session")
def image(kube_node: Node) -> str:
    """The image built from the Dockerfile (podman), imported into the node's containerd under the name the
    manifests use; once per session (tests/conftest.py makes it visible to every module)."""
    podman = Podman()
    tag = podman.build()
    figure("image size (MB)", podman.image_size(tag) / 1e6)
    podman("tag", tag, IMAGE)
    started = time.monotonic()
    kube_node.import_image(podman.global_args, IMAGE)
    figure("image import into containerd (s)", time.monotonic() - started)
    return IMAGE
