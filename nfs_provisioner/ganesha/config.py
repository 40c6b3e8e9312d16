"""Render and validate Ganesha configuration from jinja2 templates; write files atomically.

Templates ship in the package (``nfs_provisioner/ganesha_templates``, the
top-level ``ganesha/`` directory of the source tree). An operator directory may
override any of them by file name. Rendering uses ``StrictUndefined`` (an
unfilled placeholder is an error), every string value goes through the ``q``
filter (quoted, refusing characters that could break out of the string), and
the rendered EXPORT block is parsed back and checked against the request
before anything is written.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.resources
import ipaddress
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jinja2

from nfs_provisioner.fileio import atomic_write as atomic_write  # files are written through it
from nfs_provisioner.ganesha import errors
from nfs_provisioner.ganesha.settings import AccessType, ServerSettings, Squash

MAIN_TEMPLATE = "ganesha.conf.j2"
EXPORT_TEMPLATE = "export.conf.j2"
BUS_TEMPLATE = "dbus-bus.conf.j2"

EXPORT_ID_MIN = 1
EXPORT_ID_MAX = 65535

# Characters that never appear in a value we write into a config file.
_UNSAFE = re.compile(r'["\\\x00-\x1f\x7f{};#%$]')
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,252}$")
_PREFIX = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")


# --- validation ------------------------------------------------------------------------------------------------


def check_name(name: str) -> str:
    """A volume/export name: letters, digits, ``.-_``; never starting with a dot."""
    if not isinstance(name, str) or not _NAME.match(name) or name.endswith(".tmp"):
        raise errors.InvalidRequest(f"invalid export name {name!r}: use letters, digits, '.', '-', '_'")
    return name


def check_safe(value: str, *, what: str) -> str:
    if _UNSAFE.search(value):
        raise errors.InvalidRequest(f"{what} {value!r} contains a character not allowed in Ganesha config")
    return value


def check_path_inside(path: Path | str, *, root: Path, exclude: Sequence[Path] = ()) -> Path:
    """An absolute, normalised path strictly inside ``root`` (symlinks resolved), not inside ``exclude``."""
    p = Path(path)
    if not p.is_absolute():
        raise errors.InvalidRequest(f"export path {str(p)!r} is not absolute")
    if os.path.normpath(p) != str(p) or ".." in p.parts:
        raise errors.InvalidRequest(f"export path {str(p)!r} is not normalised")
    check_safe(str(p), what="export path")
    real_root = Path(os.path.realpath(root))
    real = Path(os.path.realpath(p))
    if real == real_root or not real.is_relative_to(real_root):
        raise errors.InvalidRequest(f"export path {str(p)!r} is not inside the export root {str(root)!r}")
    for ex in exclude:
        real_ex = Path(os.path.realpath(ex))
        if real == real_ex or real.is_relative_to(real_ex) or real_ex.is_relative_to(real):
            raise errors.InvalidRequest(f"export path {str(p)!r} overlaps the manager's directory {str(ex)!r}")
    if real != p:
        raise errors.InvalidRequest(f"export path {str(p)!r} goes through a symlink (resolves to {str(real)!r})")
    if not p.is_dir():
        raise errors.InvalidRequest(f"export path {str(p)!r} is not an existing directory")
    return p


def check_clients(clients: Iterable[str], *, allow_empty: bool = False) -> tuple[str, ...]:
    """Client list entries: ``*`` or an IPv4/IPv6 address or network (CIDR) Ganesha can take (see
    :func:`client_problem`), normalised; raises InvalidRequest for the first that is not.

    ``allow_empty``: an empty list is valid and means nobody (the export gets no CLIENT block)."""
    given = tuple(clients)
    if all(isinstance(c, str) for c in given):  # every export has the same list: checked once (load at start)
        return _checked_clients(given, allow_empty)
    return _check_clients(given, allow_empty)


@functools.lru_cache(maxsize=64)
def _checked_clients(clients: tuple[str, ...], allow_empty: bool) -> tuple[str, ...]:
    return _check_clients(clients, allow_empty)


def _check_clients(clients: tuple[str, ...], allow_empty: bool) -> tuple[str, ...]:
    out: list[str] = []
    for c in clients:
        problem = client_problem(c)
        if problem is not None:
            raise errors.InvalidRequest(f"invalid client {str(c)[:80]!r}: {problem}")
        out.append(c if c == "*" else str(ipaddress.ip_network(c, strict=False)))
    if not out and not allow_empty:
        raise errors.InvalidRequest("an export needs at least one client entry ('*' for everyone)")
    return tuple(out)


def client_problem(entry: object) -> str | None:
    """Why ``entry`` cannot be a client list entry, or None. Refused (each measured with Ganesha 9.14):

    - an IPv6 zone id (``fe80::1%eth0``): Ganesha's config scanner stops at ``%`` and refuses the whole file
      (AddExport, UpdateExport and the next start alike);
    - ``0.0.0.0`` as one address: Ganesha reads it as ``*``, every client (``0.0.0.0/0`` says so openly);
    - an IPv6 network longer than /64 but not a host: Ganesha 4.3 drops the whole list (see
      :func:`ganesha_client`)."""
    if entry == "*":
        return None
    if not isinstance(entry, str):
        return "expected '*' or an address/CIDR"
    if "%" in entry:
        return "an IPv6 zone id (%...) cannot be in a client list; give the address without it"
    try:
        net = ipaddress.ip_network(entry, strict=False)
    except ValueError:
        return "expected '*' or an address/CIDR"
    if net.version == 4 and net.num_addresses == 1 and net.network_address.is_unspecified:
        return "Ganesha reads the address 0.0.0.0 as every client; write '*' (or 0.0.0.0/0) if that is meant"
    if net.version == 6 and 64 < net.prefixlen < 128:
        return "Ganesha cannot parse IPv6 networks longer than /64; list the addresses or use a /64"
    return None


def ganesha_client(entry: str) -> str:
    """One client list entry as Ganesha 4.3's config parser takes it (measured): a host without a prefix.

    It silently drops the *whole* list ("No clients specified", nobody gets in, UpdateExport still says
    ok) for an IPv6 entry with a prefix longer than /64 -- ``::1/128``, ``fd00::4/128``, ``fd00::/127`` --
    while ``::1``, ``fd00::4`` and ``fd00::/64`` work. So hosts are written bare and such networks refused."""
    if entry == "*":
        return entry
    net = ipaddress.ip_network(entry, strict=False)
    if net.num_addresses == 1:
        return str(net.network_address)
    if net.version == 6 and net.prefixlen > 64:
        raise errors.InvalidRequest(f"client {entry!r}: Ganesha cannot parse IPv6 networks longer than /64; "
                                    "list the addresses or use a /64")
    return str(net)


@functools.lru_cache(maxsize=16)
def _ganesha_clients(clients: tuple[str, ...]) -> tuple[str, ...]:
    """The list as written (cached: a client list change renders every export with the same list)."""
    return tuple(ganesha_client(c) for c in check_clients(clients, allow_empty=True))


def check_export_id(export_id: int) -> int:
    if not isinstance(export_id, int) or not (EXPORT_ID_MIN <= export_id <= EXPORT_ID_MAX) or export_id == 152:
        raise errors.InvalidRequest(f"Export_Id {export_id!r} is out of range 1..65535 or reserved (152)")
    return export_id


# --- the export block ------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ExportBlock:
    """Everything one EXPORT block is rendered from (already validated by ``exports``)."""

    export_id: int
    path: Path
    squash: Squash
    access_type: AccessType
    clients: tuple[str, ...]
    nfsv3: bool

    @property
    def pseudo(self) -> Path:
        """NFSv4 clients mount the same path as NFSv3 clients."""
        return self.path

    @property
    def fsid(self) -> str:
        """Stable Filesystem_Id ``<id>.<id>``: survives restarts, never 152.152 (the pseudo root)."""
        return f"{self.export_id}.{self.export_id}"


_CLIENTS = re.compile(r"\bClients\s*=", re.IGNORECASE)
_EXPORT = re.compile(r"^\s*EXPORT\s*\{", re.IGNORECASE)
_KV = re.compile(r"^\s*([A-Za-z_]+)\s*=\s*(.*?)\s*;\s*(?:#.*)?$")


def parse_block(text: str) -> dict[str, str]:
    """The top-level ``key = value;`` pairs of one EXPORT block (sub-blocks skipped), for checking."""
    depth = 0
    found: dict[str, str] = {}
    exports = 0
    for raw in text.splitlines():
        line = raw.split("#", 1)[0]  # values never contain '#' (check_safe)
        if depth == 0 and _EXPORT.match(line):
            exports += 1
        opens, closes = line.count("{"), line.count("}")
        if depth == 1 and opens == 0:
            m = _KV.match(line)
            if m:
                found[m.group(1).lower()] = m.group(2)
        depth += opens - closes
        if depth < 0:
            raise errors.TemplateError("unbalanced '}' in rendered export block")
    if depth != 0:
        raise errors.TemplateError("unbalanced '{' in rendered export block")
    if exports != 1:
        raise errors.TemplateError(f"rendered export file must hold exactly one EXPORT block, found {exports}")
    return found


def _verify_block(text: str, block: ExportBlock) -> None:
    kv = parse_block(text)
    want = {
        "export_id": str(block.export_id),
        "path": f'"{block.path}"',
        "pseudo": f'"{block.pseudo}"',
        "filesystem_id": block.fsid,
    }
    for key, value in want.items():
        if kv.get(key) != value:
            raise errors.TemplateError(
                f"rendered export block has {key} = {kv.get(key)!r}, expected {value!r} (check the template)"
            )
    if not block.clients and any(_CLIENTS.search(line.split("#", 1)[0]) for line in text.splitlines()):
        raise errors.TemplateError("the export template writes a CLIENT block for an empty client list (nobody "
                                   "may mount); wrap the block in {% if clients %} ... {% endif %}")


# --- templates -------------------------------------------------------------------------------------------------


def _quote(value: object) -> str:
    s = str(value)
    check_safe(s, what="value")
    return f'"{s}"'


class Templates:
    """Loads templates from the operator directory first, then from the package."""

    def __init__(self, *, override_dir: Path | None = None) -> None:
        if override_dir is not None and not override_dir.is_dir():
            raise errors.TemplateError(f"template override directory {str(override_dir)!r} does not exist")
        self.override_dir = override_dir
        packaged = importlib.resources.files("nfs_provisioner") / "ganesha_templates"

        def load_packaged(name: str) -> str | None:
            f = packaged / name
            return f.read_text(encoding="utf-8") if f.is_file() else None

        loaders: list[jinja2.BaseLoader] = []
        if override_dir is not None:
            loaders.append(jinja2.FileSystemLoader(str(override_dir)))
        loaders.append(jinja2.FunctionLoader(load_packaged))
        self.env = jinja2.Environment(
            loader=jinja2.ChoiceLoader(loaders),
            undefined=jinja2.StrictUndefined,
            autoescape=False,
            keep_trailing_newline=True,
        )
        self.env.filters["q"] = _quote

    def render(self, name: str, context: Mapping[str, Any]) -> str:
        try:
            return self.env.get_template(name).render(**context)
        except jinja2.TemplateNotFound as e:
            raise errors.TemplateError(f"template {name!r} not found") from e
        except jinja2.UndefinedError as e:
            raise errors.TemplateError(f"template {name!r} has an unfilled placeholder: {e}") from e
        except jinja2.TemplateError as e:
            raise errors.TemplateError(f"template {name!r} failed to render: {e}") from e

    def render_export(self, block: ExportBlock) -> str:
        check_export_id(block.export_id)
        check_safe(str(block.path), what="export path")
        context = {
            "export_id": block.export_id,
            "path": str(block.path),
            "pseudo": str(block.pseudo),
            "fsid": block.fsid,
            "protocols": "3, 4" if block.nfsv3 else "4",
            "transports": "UDP, TCP" if block.nfsv3 else "TCP",
            "squash": block.squash.value,
            "access_type": block.access_type.value,
            "clients": _ganesha_clients(block.clients),
        }
        text = self.render(EXPORT_TEMPLATE, context)
        _verify_block(text, block)
        return text

    def render_main(self, settings: ServerSettings, *, export_index: Path, plugins_dir: Path | None = None) -> str:
        """The main config; ``plugins_dir`` is the FSAL directory of an unpacked Ganesha (``binary``)."""
        if settings.dbus_name_prefix and not _PREFIX.match(settings.dbus_name_prefix):
            raise errors.InvalidRequest(f"invalid D-Bus name prefix {settings.dbus_name_prefix!r}")
        if settings.bind_addr is not None:
            try:
                ipaddress.ip_address(settings.bind_addr)
            except ValueError as e:
                raise errors.InvalidRequest(f"invalid bind address {settings.bind_addr!r}") from e
        for port in dataclasses.astuple(settings.ports):
            if not (0 < port < 65536):
                raise errors.InvalidRequest(f"port {port} out of range")
        return self.render(
            MAIN_TEMPLATE,
            {
                "ports": settings.ports,
                "bind_addr": settings.bind_addr,
                "nfsv3": settings.nfsv3,
                "nlm": settings.nfsv3 and settings.nlm,
                "device_based_fsids": settings.device_based_fsids,
                "dbus_name_prefix": settings.dbus_name_prefix,
                "grace_period": settings.grace_period,
                # A grace shorter than the lease could not let clients reclaim: cap the lease
                # (Graceless has no grace to fit into).
                "lease_lifetime": settings.lease_lifetime
                if settings.grace_period == 0
                else min(settings.lease_lifetime, settings.grace_period),
                "recovery_root": str(settings.recovery_path),
                "export_index": str(export_index),
                "plugins_dir": str(plugins_dir) if plugins_dir is not None else None,
            },
        )

    def render_bus(self, *, socket_path: Path) -> str:
        s = str(socket_path)
        if re.search(r"[<>&\"'\s]", s) or not socket_path.is_absolute():
            raise errors.InvalidRequest(f"invalid bus socket path {s!r}")
        return self.render(BUS_TEMPLATE, {"socket_path": s})


def render_index(files: Iterable[Path]) -> str:
    lines = ["# Generated by nfs-provisioner: one %include per export. Do not edit.\n"]
    lines += [f"%include {_quote(f)}\n" for f in sorted(files)]
    return "".join(lines)
