"""Shared fixtures: one real local control plane per test run (hack/cluster),
one namespace per test; and the markers of the folders (docs/development.md, "The tests")."""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client, config

from nfs_provisioner.kube import client as kube
from tests.support import ganesha_env, kubecluster, kubenode, uml
from tests.support.appliance_env import Appliance
from tests.support.ganesha_env import Harness
from tests.support.image import image

__all__ = ["image"]  # the session fixture: the image in the node's containerd (tests/support/image.py)


def pytest_configure(config: pytest.Config) -> None:
    """Every Ganesha the tests start (servers, appliances, UML boots) is the one the image ships."""
    ganesha_env.select_ganesha()


LANES = {
    "unit": "unit", "root": "root", "ganesha": "ganesha", "kube": "kube", "e2e": "e2e", "helm": "helm",
    "container": "container", "node": "node", "uml": "uml",
}
"""tests/<folder>/ -> the marker every test in it carries (it may carry more: what else it needs)."""
TESTS = Path(__file__).resolve().parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Markers follow the folders: a test in tests/kube/ is marked ``kube`` whether it says so or not."""
    for item in items:
        try:
            folder = item.path.relative_to(TESTS).parts[0]
        except ValueError:
            continue
        lane = LANES.get(folder)
        if lane and not item.get_closest_marker(lane):
            item.add_marker(lane)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """A test marked ``uml`` needs a UML kernel that boots here: checked with one
    boot per run; if it does not boot, the test fails with that one line."""
    if item.get_closest_marker("uml"):
        problem = uml.boot_problem()
        if problem:
            pytest.fail(problem, pytrace=False)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if uml.BOOT_SECONDS is not None and uml.boot_problem() is None:  # the check ran and passed
        terminalreporter.write_line(f"UML boot check: {uml.kernel()} ({uml.kernel_release(uml.kernel())}) "
                                    f"booted, ran a command and powered off in {uml.BOOT_SECONDS:.2f}s")


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[kubecluster.Cluster]:
    """A real etcd + kube-apiserver + kube-controller-manager on loopback.

    Set NFSP_TEST_CLUSTER_DIR to reuse a cluster you keep up yourself (it is
    then neither started nor stopped here)."""
    reuse = os.environ.get("NFSP_TEST_CLUSTER_DIR")
    if reuse:
        yield kubecluster.Cluster(Path(reuse))
        return
    c = kubecluster.Cluster(tmp_path_factory.mktemp("cluster"))
    try:
        c.up()
        yield c
    finally:
        c.down()


@pytest.fixture(scope="session")
def kube_node(cluster: kubecluster.Cluster) -> Iterator[kubenode.Node]:
    """A kubelet node (containerd 2.x, kube-proxy, kube-scheduler) on the session's control plane, in a
    network namespace of its own (hack/cluster up --node), taken down at session end. A node already
    running on a reused cluster (NFSP_TEST_CLUSTER_DIR) is used and left running."""
    if cluster.node_running():
        yield kubenode.Node.load(cluster)
        return
    try:
        cluster.up_node()
        yield kubenode.Node.load(cluster)
    finally:
        cluster.down_node()


@pytest.fixture(scope="session")
def api_client(cluster: kubecluster.Cluster) -> client.ApiClient:
    return config.new_client_from_config(config_file=str(cluster.kubeconfig))


@pytest.fixture(scope="session")
def core(api_client: client.ApiClient) -> client.CoreV1Api:
    return client.CoreV1Api(api_client)


@pytest.fixture(scope="session")
def storage(api_client: client.ApiClient) -> client.StorageV1Api:
    return client.StorageV1Api(api_client)


@pytest.fixture
def namespace(request: pytest.FixtureRequest, core: client.CoreV1Api) -> Iterator[str]:
    """A fresh namespace named after the test, deleted afterwards."""
    base = re.sub(r"[^a-z0-9-]+", "-", request.node.name.lower()).strip("-")[:40].strip("-")
    name = f"{base}-{uuid.uuid4().hex[:6]}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    yield name
    core.delete_namespace(name)


@pytest.fixture
def unique() -> str:
    """A short random suffix for cluster-scoped names (classes, volumes)."""
    return uuid.uuid4().hex[:8]


@pytest.fixture(scope="session")
def kapi(cluster: kubecluster.Cluster) -> Iterator[kube.Client]:
    """The project's own API client (plain dicts), for tests of the controller library."""
    api = kube.Client.load(str(cluster.kubeconfig))
    yield api
    api.close()


@pytest.fixture
def h(tmp_path: Path) -> Iterator[Harness]:
    """Real Ganesha servers on private buses and free loopback ports, stopped by PID afterwards."""
    harness = Harness(tmp_path)
    try:
        yield harness
    finally:
        harness.close()


@pytest.fixture
def appliance(cluster: kubecluster.Cluster, tmp_path: Path, unique: str) -> Iterator[Appliance]:
    """The real appliance process (not started yet) against the test run's control plane."""
    a = Appliance(kubeconfig=cluster.kubeconfig, export_root=tmp_path / "export",
                  provisioner=f"example.com/nfs-{unique}", log_dir=tmp_path)
    try:
        yield a
    finally:
        a.close()

