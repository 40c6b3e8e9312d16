"""Credentials read without the kubernetes library give what its loader gives; everything else still
goes to that loader; and the plain cases never import it (it costs ~30 MB of the appliance's memory)."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from nfs_provisioner.kube import credentials, errors
from tests.support.paths import REPO

pytestmark = pytest.mark.unit


def library(kubeconfig: Path, context: str | None = None) -> credentials.Credentials:
    return credentials._library_loader(str(kubeconfig), context)


def seen(c: credentials.Credentials) -> dict[str, Any]:
    """What a request is made with: the server, TLS verification, the bytes of each file, the header."""
    def content(path: str | None) -> bytes | None:
        return Path(path).read_bytes() if path else None
    return {"host": c.host, "verify": c.verify, "ca": content(c.ca_file), "cert": content(c.cert_file),
            "key": content(c.key_file), "token": c.token() if c.token else None}


def kubeconfig(tmp_path: Path, cluster: dict[str, Any], user: dict[str, Any], *, as_json: bool = False,
               extra_context: bool = False) -> Path:
    contexts = [{"name": "main", "context": {"cluster": "c", "user": "u", "namespace": "ns1"}}]
    clusters = [{"name": "c", "cluster": cluster}]
    users = [{"name": "u", "user": user}]
    if extra_context:  # another context is current: --context chooses
        contexts.append({"name": "other", "context": {"cluster": "c2", "user": "u2"}})
        clusters.append({"name": "c2", "cluster": {"server": "https://192.0.2.9:1"}})
        users.append({"name": "u2", "user": {"token": "wrong"}})
    doc = {"apiVersion": "v1", "kind": "Config", "current-context": "other" if extra_context else "main",
           "contexts": contexts, "clusters": clusters, "users": users}
    path = tmp_path / "kc" / "config"
    path.parent.mkdir(exist_ok=True)
    if as_json:
        path.write_text(json.dumps(doc))
    else:
        import yaml
        path.write_text(yaml.safe_dump(doc))
    return path


@pytest.fixture
def pem(tmp_path: Path) -> dict[str, Path]:
    files = {}
    for name in ("ca", "cert", "key"):
        files[name] = tmp_path / f"{name}.pem"
        files[name].write_text(f"-----BEGIN {name.upper()}-----\n{name}{os.urandom(8).hex()}\n-----END-----\n")
    return files


def b64(p: Path) -> str:
    return base64.b64encode(p.read_bytes()).decode()


CASES = ["files", "relative-files", "data", "token", "token-file", "insecure", "json", "context", "plain-http"]


@pytest.mark.parametrize("case", CASES)
def test_plain_kubeconfigs_read_as_the_library_reads_them(tmp_path: Path, pem: dict[str, Path], case: str) -> None:
    cluster: dict[str, Any] = {"server": "https://127.0.0.1:6443", "certificate-authority": str(pem["ca"])}
    user: dict[str, Any] = {"client-certificate": str(pem["cert"]), "client-key": str(pem["key"])}
    if case == "relative-files":
        cluster["certificate-authority"] = "../ca.pem"
        user = {"client-certificate": "../cert.pem", "client-key": "../key.pem"}
    elif case == "data":
        cluster = {"server": "https://127.0.0.1:6443", "certificate-authority-data": b64(pem["ca"])}
        user = {"client-certificate-data": b64(pem["cert"]), "client-key-data": b64(pem["key"])}
    elif case == "token":
        user = {"token": "abc.def"}
    elif case == "token-file":
        (tmp_path / "tok").write_text("from-a-file")  # the library keeps a newline in the header; ours strips it
        user = {"tokenFile": str(tmp_path / "tok")}
    elif case == "insecure":
        cluster = {"server": "https://[::1]:6443/", "insecure-skip-tls-verify": True}
        user = {"token": "t"}
    elif case == "plain-http":
        cluster, user = {"server": "http://127.0.0.1:8080"}, {}
    path = kubeconfig(tmp_path, cluster, user, as_json=case == "json", extra_context=case == "context")
    context = "main" if case == "context" else None
    ours = seen(credentials._from_kubeconfig(path, context))
    theirs = seen(library(path, context))
    if case == "insecure":  # the library still names no CA; it keeps the trailing slash, urllib3 does not care
        theirs["host"] = theirs["host"].rstrip("/")
    assert ours == theirs


def test_a_token_file_is_read_again_as_it_rotates(tmp_path: Path) -> None:
    tok = tmp_path / "tok"
    tok.write_text("one")
    c = credentials._from_kubeconfig(kubeconfig(tmp_path, {"server": "https://h:1"}, {"tokenFile": str(tok)}), None)
    assert c.token is not None and c.token() == "Bearer one"
    tok.write_text("two\n")
    assert c.token() == "Bearer two"
    tok.write_text("")  # mid-rotation: the last good token is kept
    assert c.token() == "Bearer two"


def test_the_service_account_is_read_as_the_library_reads_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from kubernetes.config import incluster_config

    (tmp_path / "token").write_text("sa-token")
    (tmp_path / "ca.crt").write_text("ca")
    monkeypatch.setattr(credentials, "SERVICE_ACCOUNT_DIR", tmp_path)
    for host in ("10.0.0.1", "fd00::1"):
        env = {"KUBERNETES_SERVICE_HOST": host, "KUBERNETES_SERVICE_PORT": "443"}
        ours = credentials.load(None, environ=env)
        loader = incluster_config.InClusterConfigLoader(  # type: ignore[no-untyped-call]
            token_filename=str(tmp_path / "token"), cert_filename=str(tmp_path / "ca.crt"), environ=env)
        from kubernetes import client as kclient
        cfg = kclient.Configuration()
        loader.load_and_set(cfg)  # type: ignore[no-untyped-call]
        assert ours.token is not None
        scheme, token = ours.token().split(" ", 1)  # type: ignore[union-attr]
        their_scheme, their_token = cfg.get_api_key_with_prefix("BearerToken").split(" ", 1)
        assert (ours.host, ours.ca_file, scheme.lower(), token) == (  # the scheme is case-insensitive
            cfg.host, cfg.ssl_ca_cert, their_scheme.lower(), their_token)
    (tmp_path / "token").write_text("")
    with pytest.raises(errors.KubeError, match=r"^cannot load Kubernetes credentials from the in-cluster service "
                                               r"account: .*token is missing or empty$"):
        credentials.load(None, environ={"KUBERNETES_SERVICE_HOST": "10.0.0.1", "KUBERNETES_SERVICE_PORT": "443"})


def test_an_exec_plugin_goes_to_the_library_loader(tmp_path: Path) -> None:
    plugin = tmp_path / "plugin"
    plugin.write_text("#!/bin/sh\necho '{\"apiVersion\": \"client.authentication.k8s.io/v1\", "
                      "\"kind\": \"ExecCredential\", \"status\": {\"token\": \"from-exec\"}}'\n")
    plugin.chmod(0o755)
    path = kubeconfig(tmp_path, {"server": "https://127.0.0.1:6443", "insecure-skip-tls-verify": True},
                      {"exec": {"apiVersion": "client.authentication.k8s.io/v1", "command": str(plugin),
                                "interactiveMode": "Never"}})
    with pytest.raises(credentials.Unsupported):
        credentials._from_kubeconfig(path, None)
    c = credentials.load(str(path))
    assert c.token is not None and c.token() == "Bearer from-exec"


@pytest.mark.parametrize(("cluster", "user", "context", "problem"), [
    ({"server": "https://h:1"}, {}, "nope", "context 'nope' not found"),
    ({}, {}, None, "cluster 'c' has no server"),
    ({"server": "https://h:1", "certificate-authority": "/nonexistent/ca"}, {}, None,
     "certificate-authority /nonexistent/ca does not exist"),
    ({"server": "https://h:1"}, {"client-key-data": "not base64!"}, None, "client-key-data is not base64"),
])
def test_bad_kubeconfigs_are_one_line_naming_the_file(tmp_path: Path, cluster: dict[str, Any],
                                                      user: dict[str, Any], context: str | None,
                                                      problem: str) -> None:
    path = kubeconfig(tmp_path, cluster, user)
    with pytest.raises(errors.KubeError) as e:
        credentials.load(str(path), context=context)
    assert str(e.value).startswith(f"cannot load Kubernetes credentials from kubeconfig {path}: {problem}")
    assert "\n" not in str(e.value)


def test_plain_credentials_never_import_the_kubernetes_library(tmp_path: Path, pem: dict[str, Path]) -> None:
    path = kubeconfig(tmp_path, {"server": "https://127.0.0.1:6443", "certificate-authority-data": b64(pem["ca"])},
                      {"client-certificate": str(pem["cert"]), "client-key": str(pem["key"])})
    (tmp_path / "token").write_text("t")
    (tmp_path / "ca.crt").write_text("ca")
    script = f"""
import sys
from pathlib import Path
from nfs_provisioner.kube import client, credentials
client.Client.load({str(path)!r})
credentials.SERVICE_ACCOUNT_DIR = Path({str(tmp_path)!r})
credentials.load(None, environ={{"KUBERNETES_SERVICE_HOST": "10.0.0.1", "KUBERNETES_SERVICE_PORT": "443"}})
print(sorted(m for m in sys.modules if m.split(".")[0] == "kubernetes"))
"""
    out = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    assert out.stdout.strip() == "[]", out.stdout
