"""Where the API server is and who we are: in-cluster service account, or a kubeconfig.

The two cases a provisioner meets in practice are read here directly: the pod's service account
(``KUBERNETES_SERVICE_HOST``/``PORT``, the token file re-read as it rotates, the CA bundle) and a
kubeconfig whose user is a client certificate or a bearer token (files or inline data). Anything else
a kubeconfig can say (exec plugins, auth providers, basic auth, impersonation, proxies, several files
in ``$KUBECONFIG``) goes to the ``kubernetes`` library's loader, imported only then: importing it
loads every generated API model (~30 MB of the process's memory), which nothing else here uses.

Inline certificate data (``*-data``, a client key included) is never written to a disk: it lives in an
anonymous in-memory file for the process's life (``/proc/self/fd/<n>``, a path TLS can load). What the
library loader writes to files is read back into memory and removed at once.
"""

from __future__ import annotations

import atexit
import base64
import binascii
import contextlib
import json
import os
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nfs_provisioner import tempdirs
from nfs_provisioner.kube import errors

SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")

#: kubeconfig fields read here; a cluster or user with any other field goes to the library's loader.
CLUSTER_FIELDS = frozenset({"server", "certificate-authority", "certificate-authority-data",
                            "insecure-skip-tls-verify", "extensions"})
USER_FIELDS = frozenset({"client-certificate", "client-certificate-data", "client-key", "client-key-data",
                         "token", "tokenFile", "extensions"})


@dataclass(frozen=True)
class Credentials:
    host: str
    ca_file: str | None
    cert_file: str | None
    key_file: str | None
    verify: bool
    token: Callable[[], str | None] | None
    """Returns the Authorization header's value ("Bearer ...") or None; called again now and then."""


class Unsupported(Exception):
    """The kubeconfig says something only the library's loader understands."""


def load(kubeconfig: str | None = None, *, context: str | None = None,
         environ: Mapping[str, str] = os.environ) -> Credentials:
    """``kubeconfig`` if given; else in-cluster when running in a pod; else ``$KUBECONFIG``/``~/.kube/config``."""
    in_cluster = kubeconfig is None and bool(environ.get("KUBERNETES_SERVICE_HOST"))
    where = ("the in-cluster service account" if in_cluster
             else f"kubeconfig {kubeconfig or environ.get('KUBECONFIG') or '~/.kube/config'}")
    try:
        if in_cluster:
            return _in_cluster(environ)
        try:
            return _from_kubeconfig(_kubeconfig_path(kubeconfig, environ), context)
        except Unsupported:
            return _library_loader(kubeconfig, context)
    except errors.KubeError:
        raise
    except Exception as e:  # YAML, OS, base64 and the library loader's several unrelated types
        problem = " ".join(str(e).split()) or type(e).__name__  # YAML errors span several lines
        raise errors.KubeError(f"cannot load Kubernetes credentials from {where}: {problem}") from e


def _in_cluster(environ: Mapping[str, str]) -> Credentials:
    host, port = environ["KUBERNETES_SERVICE_HOST"], environ.get("KUBERNETES_SERVICE_PORT", "")
    if not port:
        raise ValueError("KUBERNETES_SERVICE_PORT is not set")
    token_file, ca_file = SERVICE_ACCOUNT_DIR / "token", SERVICE_ACCOUNT_DIR / "ca.crt"
    for f in (token_file, ca_file):
        if not f.is_file() or not f.read_bytes().strip():
            raise ValueError(f"{f} is missing or empty")
    bracketed = f"[{host}]" if ":" in host and not host.startswith("[") else host
    return Credentials(host=f"https://{bracketed}:{port}", ca_file=str(ca_file), cert_file=None, key_file=None,
                       verify=True, token=_file_token(token_file))


def _file_token(path: Path) -> Callable[[], str | None]:
    """The token file's content, re-read on each call (kubelet rotates projected tokens); the last good
    value is kept if a read fails mid-rotation."""
    last: list[str] = []

    def token() -> str | None:
        try:
            value = path.read_text(encoding="utf-8").strip()
        except OSError:
            value = ""
        if value:
            last[:] = [value]
        return f"Bearer {last[0]}" if last else None
    token()
    return token


def _kubeconfig_path(kubeconfig: str | None, environ: Mapping[str, str]) -> Path:
    if kubeconfig:
        return Path(kubeconfig).expanduser()
    env = [p for p in environ.get("KUBECONFIG", "").split(os.pathsep) if p]
    if len(env) > 1:
        raise Unsupported("several kubeconfig files are merged by the library's loader")
    return Path(env[0] if env else "~/.kube/config").expanduser()


def _parse(text: str) -> Any:
    if text.lstrip().startswith("{"):
        return json.loads(text)
    import yaml  # a dependency of the kubernetes package; small next to it

    return yaml.safe_load(text)


def _named(items: Any, name: str, kind: str) -> dict[str, Any]:
    for item in items or []:
        if isinstance(item, dict) and item.get("name") == name:
            value = item.get(kind)
            if not isinstance(value, dict):
                raise ValueError(f"{kind} {name!r} has no {kind} section")
            return value
    raise ValueError(f"{kind} {name!r} not found")


def _from_kubeconfig(path: Path, context: str | None) -> Credentials:
    doc = _parse(path.read_text(encoding="utf-8"))
    if not isinstance(doc, dict):
        raise ValueError("not a kubeconfig (no mapping at the top)")
    name = context or doc.get("current-context")
    if not name:
        raise ValueError("no context given and no current-context set")
    ctx = _named(doc.get("contexts"), name, "context")
    if set(ctx) - {"cluster", "user", "namespace", "extensions"}:
        raise Unsupported("context fields beyond cluster/user/namespace")
    cluster = _named(doc.get("clusters"), str(ctx.get("cluster")), "cluster")
    user = _named(doc.get("users"), str(ctx.get("user")), "user") if ctx.get("user") else {}
    if set(cluster) - CLUSTER_FIELDS or set(user) - USER_FIELDS:
        raise Unsupported("fields read only by the library's loader")
    server = cluster.get("server")
    if not isinstance(server, str) or not server:
        raise ValueError(f"cluster {ctx.get('cluster')!r} has no server")
    base = path.parent

    def file_or_data(section: dict[str, Any], key: str) -> str | None:
        if section.get(f"{key}-data"):
            try:
                data = base64.b64decode(str(section[f"{key}-data"]), validate=True)
            except binascii.Error as e:
                raise ValueError(f"{key}-data is not base64: {e}") from e
            return _data_file(key, data)
        if not section.get(key):
            return None
        p = Path(str(section[key])).expanduser()
        p = p if p.is_absolute() else base / p
        if not p.is_file():
            raise ValueError(f"{key} {p} does not exist")
        return str(p)

    token: Callable[[], str | None] | None = None
    if user.get("token"):
        bearer = f"Bearer {user['token']}"
        token = lambda: bearer  # noqa: E731 - a constant
    elif user.get("tokenFile"):
        tf = Path(str(user["tokenFile"])).expanduser()
        token = _file_token(tf if tf.is_absolute() else base / tf)
    verify = not bool(cluster.get("insecure-skip-tls-verify"))
    ca_file = file_or_data(cluster, "certificate-authority") if verify else None
    return Credentials(host=server.rstrip("/"), ca_file=ca_file,
                       cert_file=file_or_data(user, "client-certificate"), key_file=file_or_data(user, "client-key"),
                       verify=verify, token=token)


_memory_files: list[int] = []
"""Descriptors of the in-memory files made by :func:`_data_file`, open for the process's life."""
_data_lock = threading.Lock()


def _data_file(key: str, data: bytes) -> str:
    """Inline certificate data as a path urllib3 can load (it takes paths and loads them again for every new
    connection): an anonymous in-memory file (``memfd``), named ``/proc/self/fd/<n>``. Nothing reaches a
    disk, nothing outlives the process (a SIGKILL included), and children do not inherit it."""
    fd = os.memfd_create(f"nfsp-{key}", os.MFD_CLOEXEC)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    except BaseException:
        os.close(fd)
        raise
    with _data_lock:
        _memory_files.append(fd)
    return f"/proc/self/fd/{fd}"


LIBRARY_TEMP_PREFIX = "nfsp-kubeconfig-"
"""The library loader writes inline certificate data to files: into a directory of this prefix made by
:mod:`nfs_provisioner.tempdirs` (removed at the next start if this process dies without removing it)."""


def _into_memory(key: str, path: str | None, where: Path) -> str | None:
    """``path``, or if the library wrote it under ``where``, its content in memory (the file is removed)."""
    if not path or not Path(path).resolve().is_relative_to(where.resolve()):
        return path
    p = Path(path)
    memory = _data_file(key, p.read_bytes())
    p.unlink()
    return memory


def _scrub(where: Path) -> None:
    """Remove the library's files under ``where`` and forget them in its cache (which would hand out the
    removed paths again for the same content)."""
    from kubernetes.config import kube_config

    cache = getattr(kube_config, "_temp_files", None)
    if isinstance(cache, dict):
        for k, v in list(cache.items()):
            if isinstance(v, str) and Path(v).resolve().is_relative_to(where.resolve()):
                del cache[k]
    if where.is_dir():
        for f in where.iterdir():
            if f.name != tempdirs.OWNER:
                with contextlib.suppress(OSError):
                    f.unlink()


def _library_loader(kubeconfig: str | None, context: str | None) -> Credentials:
    from kubernetes import client as kclient
    from kubernetes import config as kconfig

    cfg = kclient.Configuration()
    where = tempdirs.create(LIBRARY_TEMP_PREFIX)
    atexit.register(tempdirs.release, where)
    try:
        kconfig.load_kube_config(  # type: ignore[no-untyped-call]
            config_file=kubeconfig, context=context, client_configuration=cfg, temp_file_path=str(where))
        # Each file the library wrote (inline CA, certificate, key) is read back into memory and removed.
        ca_file, cert_file, key_file = (_into_memory(key, getattr(cfg, attr), where) for key, attr in (
            ("certificate-authority", "ssl_ca_cert"), ("client-certificate", "cert_file"),
            ("client-key", "key_file")))
    finally:
        _scrub(where)

    def token() -> str | None:
        if cfg.refresh_api_key_hook is not None:
            cfg.refresh_api_key_hook(cfg)
            _scrub(where)  # an exec plugin's new certificate: unused here (the pool keeps the first), not kept
        for key in ("BearerToken", "authorization"):
            value = cfg.get_api_key_with_prefix(key)
            if value:
                return str(value)
        return None

    return Credentials(host=cfg.host, ca_file=ca_file, cert_file=cert_file, key_file=key_file,
                       verify=bool(cfg.verify_ssl), token=token)
