"""Export files: ``exports.d/<name>.conf`` holds one export, as a JSON header line followed by its EXPORT block.

The header (:meth:`model.Export.header`) is the manager's own record of the export. The block below it is never
trusted: at load, the block is rendered again from the header (:meth:`ExportFiles.rerender`). A file is read at
most ``MAX_FILE_BYTES`` at a time. A bigger one is refused, with one line, and left in place.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
from pathlib import Path
from typing import Any

from nfs_provisioner import fileio
from nfs_provisioner.ganesha import config, errors
from nfs_provisioner.ganesha.exports.model import HEADER, Export
from nfs_provisioner.ganesha.settings import AccessType, Squash

log = logging.getLogger(__name__)

EXPORTS_DIR = "exports.d"
#: An export file is a header and a block listing the clients (thousands of Node addresses take ~200 KB): a
#: bigger file is not one of ours and is never read whole (a sparse file of gigabytes costs nothing on disk).
MAX_FILE_BYTES = 1024 * 1024


class ExportFiles:
    """Renders, writes, reads and checks the files of ``directory`` (``config_dir/exports.d``)."""

    def __init__(self, *, directory: Path, export_root: Path, config_dir: Path, templates: config.Templates,
                 nfsv3: bool, durable: bool) -> None:
        self.directory = directory
        self.export_root = export_root
        self.config_dir = config_dir
        self.templates = templates
        self.nfsv3 = nfsv3
        self.durable = durable

    def path(self, name: str) -> Path:
        return self.directory / f"{name}.conf"

    def block(self, export: Export) -> config.ExportBlock:
        return config.ExportBlock(
            export_id=export.export_id,
            path=export.path,
            squash=export.squash,
            access_type=export.access_type,
            clients=export.clients,
            nfsv3=self.nfsv3,
        )

    def text(self, export: Export) -> str:
        """The file's whole text: the header, then the block rendered from the templates."""
        return export.header() + self.templates.render_export(self.block(export))

    def write(self, export: Export) -> None:
        config.atomic_write(export.config_file, self.text(export), durable=self.durable)

    def rerender(self, export: Export, old: str) -> None:
        """Serve only what the header (the manager's own record) says. A block that differs from the header's
        rendering (edited by hand or by an attacker, e.g. ``Path = "/etc"``) is replaced, with one log line.
        ``old``: the file's text as read."""
        text = self.text(export)
        if old == text:
            return
        try:
            found = config.parse_block(old).get("path", "(none)")
        except errors.TemplateError as e:
            found = f"(unparsable: {e})"
        config.atomic_write(export.config_file, text, durable=self.durable)
        if _differ_in_clients_only(old, text):  # entries left out at load (its own line said which)
            log.info("export file %s rewritten with its client list normalised", export.config_file)
            return
        log.warning("export file %s differed from its own header (block Path %s, header path %s); rewritten from "
                    "the header", export.config_file, found, export.path)

    def read(self, f: Path) -> tuple[Export, str]:
        """The export its header describes, and the file's whole text (read once, at most ``MAX_FILE_BYTES``)."""
        text = read_export_file(f)
        first = text.split("\n", 1)[0]
        if not first.startswith(HEADER):
            raise errors.InvalidRequest("missing nfs-provisioner header line")
        data: dict[str, Any] = json.loads(first[len(HEADER) :])
        name = config.check_name(str(data["name"]))
        if f.name != f"{name}.conf":
            raise errors.InvalidRequest(f"file name does not match export name {name!r}")
        where = str(data["path"])
        if not _inside(where, str(self.export_root)) or _inside(where, str(self.config_dir), or_equal=True):
            raise errors.InvalidRequest(f"path {where!r} is not inside the export root")
        path = Path(where)
        export_id = config.check_export_id(int(data["export_id"]))
        export = Export(
            name=name,
            export_id=export_id,
            path=path,
            squash=Squash(data["squash"]),
            access_type=AccessType(data["access_type"]),
            clients=_loaded_clients(f, data["clients"]),
            config_file=f,
        )
        return export, text  # the block below the header is not trusted: load() renders it again from the header


def read_export_file(path: Path) -> str:
    """An export (or index) file's text; ``fileio.Refused`` (a ValueError naming the file and its size) for one
    larger than ``MAX_FILE_BYTES`` or not a regular file; symlinks are not followed."""
    return fileio.read_text_limited(path, MAX_FILE_BYTES, follow_symlinks=False)


def temp_files(directory: Path) -> list[Path]:
    """Left-over temp files of interrupted atomic writes (for tests and cleanup)."""
    with contextlib.suppress(FileNotFoundError):
        return sorted(p for p in directory.iterdir() if p.name.endswith(".tmp"))
    return []


def _loaded_clients(f: Path, given: object) -> tuple[str, ...]:
    """A header's client list, less the entries Ganesha cannot take (an earlier version wrote e.g. a Node's
    ``fe80::1%eth0``, which made Ganesha refuse the file): the export is kept, its list only narrowed, and the
    appliance sets the current list before Ganesha reads the file."""
    entries = given if isinstance(given, list) else []
    bad = [c for c in entries if config.client_problem(c) is not None]
    if bad:
        log.warning("export file %s: client entries left out (Ganesha cannot take them): %s", f,
                    ", ".join(repr(str(c)[:80]) for c in bad[:5]))
    return config.check_clients([c for c in entries if c not in bad], allow_empty=True)


def _differ_in_clients_only(old: str, new: str) -> bool:
    """Whether two export files are the same but for their client lists (the header's and ``Clients =`` lines)."""

    def without_clients(text: str) -> tuple[str, list[str]] | None:
        head, _, body = text.partition("\n")
        try:
            data = json.loads(head[len(HEADER):]) if head.startswith(HEADER) else None
        except ValueError:
            return None
        if not isinstance(data, dict):
            return None
        data.pop("clients", None)
        return json.dumps(data, sort_keys=True), [line for line in body.splitlines() if not _CLIENTS_LINE.match(line)]

    stripped = without_clients(old)
    return stripped is not None and stripped == without_clients(new)


_CLIENTS_LINE = re.compile(r"\s*Clients\s*=", re.IGNORECASE)


def _inside(path: str, directory: str, *, or_equal: bool = False) -> bool:
    """Whether the absolute, normalised ``path`` lies strictly inside ``directory`` (or is it, ``or_equal``);
    lexical, as ``PurePath.is_relative_to`` (string operations: load() checks every export file's path)."""
    if not path.startswith("/") or os.path.normpath(path) != path:
        return False
    return (or_equal and path == directory) or path.startswith(directory.rstrip("/") + "/")
