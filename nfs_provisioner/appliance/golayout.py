"""What the Go nfs-provisioner left on an export root, read as hostile input, and whether a PV of it agrees.

The Go provisioner (kubernetes-sigs/nfs-ganesha-server-and-external-provisioner, ``pkg/volume``) keeps, under
its export root ``/export``: ``nfs-provisioner.identity`` (a UUID, the file this appliance reads too:
``volumes.identity``), ``vfs.conf`` (Ganesha's config: its default base, then one ``EXPORT`` block appended per
volume, ``Export_Id = N; Path = Pseudo = /export/<pv name>; Squash = no_root_squash | root_id_squash;
Filesystem_id = N.N``), one directory per volume, and with ``-enable-xfs-quota`` the ``projects`` file
(``<id>:<directory>:<bytes>`` lines, the format ``quota.projects`` reads). Each PV carries the same block in
``EXPORT_block``, its id in ``Export_Id``, ``Project_Id``/``Project_block`` (``0``/empty without quotas) and
``Provisioner_Id`` (the identity).

Everything here is pure (no I/O but the bounded read of ``vfs.conf``): :func:`parse_config` tokenizes a
Ganesha config (bounded size, nesting and block count), :func:`go_blocks` keeps its EXPORT blocks by id, and
:func:`check` says why a PV cannot be adopted (None: its block, its annotations, the ``vfs.conf`` block and
the expected path agree). Directory, id and quota checks that need the disk or the exporter are the caller's
(``appliance.adoption``).
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from nfs_provisioner.errors import Permanent
from nfs_provisioner.kube.objects import (
    ANN_EXPORT_BLOCK,
    ANN_EXPORT_ID,
    ANN_PROJECT_BLOCK,
    ANN_PROJECT_ID,
    Object,
)
from nfs_provisioner.quota.projects import ProjectEntry
from nfs_provisioner.volumes import ondelete

VFS_CONF = "vfs.conf"
"""The Go provisioner's Ganesha config under its export root (``-ganesha-config``'s default)."""
KEPT_SUFFIX = ".go-nfs-provisioner"
"""``vfs.conf`` is kept as ``vfs.conf.go-nfs-provisioner`` once adopted (``.1``, ``.2``... if that exists)."""
MAX_CONFIG_BYTES = 32 * 1024 * 1024
"""65535 blocks of ~300 bytes: a bigger ``vfs.conf`` is not the Go provisioner's and is not read."""
MAX_BLOCK_CHARS = 4096
"""An ``EXPORT_block`` annotation is ~300 characters; a longer one is refused unparsed."""
MAX_DEPTH = 4
MAX_BLOCKS = 70000
MAX_TOKEN = 4096

ANN_ON_DELETE = ondelete.ANNOTATION
"""Set on every PV this appliance makes, never by the Go provisioner: a PV with it is not the Go one's."""
SQUASHES = {"no_root_squash": False, "root_id_squash": True}
"""The Go provisioner's two squash values (its ``CreateExportBlock``) -> root squash."""
PSEUDO_ROOT_FSID = 152
"""Ganesha's pseudo root uses Filesystem_Id 152.152: an export with that id is never served here."""


class ConfigError(Permanent, ValueError):
    """A config text that is not a Ganesha config this module reads; the message is one line."""


@dataclass
class Block:
    """One ``NAME { ... }`` block: its ``key = value;`` pairs (keys lower-cased, as Ganesha ignores case) and
    sub-blocks."""

    name: str
    values: dict[str, str] = field(default_factory=dict)
    blocks: list[Block] = field(default_factory=list)


_TOKEN = re.compile(r'\s+|#[^\n]*|"[^"\n]*"|[{}=;,]|[^\s{}=;,#"]+')


def _tokens(text: str) -> Iterator[str]:
    pos = 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:
            raise ConfigError(f"unexpected character {text[pos]!r} at offset {pos}")
        pos = m.end()
        tok = m.group()
        if tok[0].isspace() or tok[0] == "#":
            continue
        if len(tok) > MAX_TOKEN:
            raise ConfigError(f"a token of {len(tok)} characters at offset {m.start()}")
        yield tok


def parse_config(text: str) -> list[Block]:
    """The top-level blocks of a Ganesha config (``key = value;`` outside blocks, e.g. ``%include``-free
    settings, are refused: the Go provisioner writes none)."""
    tokens = list(_tokens(text))
    top = Block("")
    stack = [top]
    count = 0
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        if tok == "}":
            if len(stack) == 1:
                raise ConfigError("'}' without a block")
            stack.pop()
            i += 1
            continue
        if tok in "{=;,":
            raise ConfigError(f"unexpected {tok[:40]!r}")
        nxt = tokens[i + 1] if i + 1 < len(tokens) else ""
        if nxt == "{":
            if len(stack) > MAX_DEPTH:
                raise ConfigError(f"blocks nested deeper than {MAX_DEPTH}")
            count += 1
            if count > MAX_BLOCKS:
                raise ConfigError(f"more than {MAX_BLOCKS} blocks")
            block = Block(tok)
            stack[-1].blocks.append(block)
            stack.append(block)
            i += 2
            continue
        if nxt != "=" or len(stack) == 1:
            raise ConfigError(f"expected 'NAME {{' or 'key = value;' at {tok[:40]!r}")
        j = i + 2
        parts: list[str] = []
        while j < len(tokens) and tokens[j] != ";":
            if tokens[j] in "{}=":
                raise ConfigError(f"value of {tok[:40]!r} is not terminated by ';'")
            parts.append(tokens[j])
            j += 1
        if j == len(tokens) or not parts:
            raise ConfigError(f"value of {tok[:40]!r} is missing or not terminated by ';'")
        key = tok.lower()
        if key in stack[-1].values:
            raise ConfigError(f"{tok[:40]} is set twice in block {stack[-1].name[:40]}")
        stack[-1].values[key] = "".join(parts)
        i = j + 1
    if len(stack) != 1:
        raise ConfigError(f"block {stack[-1].name[:40]} is not closed")
    return top.blocks


@dataclass(frozen=True)
class GoExport:
    """An EXPORT block as the Go provisioner writes it (see the module docstring)."""

    export_id: int
    path: str
    pseudo: str
    squash: str
    access_type: str
    fsal: str
    filesystem_id: str

    @property
    def root_squash(self) -> bool:
        return SQUASHES[self.squash]


def to_export(block: Block) -> GoExport:
    """The block as a :class:`GoExport`; ConfigError for anything the Go provisioner does not write."""
    v = block.values
    missing = [k for k in ("export_id", "path", "pseudo", "squash", "access_type") if k not in v]
    if block.name.upper() != "EXPORT" or missing:
        raise ConfigError(f"not an EXPORT block of the Go provisioner (missing {', '.join(missing) or 'EXPORT'})")
    raw_id = v["export_id"]
    if not raw_id.isdigit() or not 1 <= int(raw_id) <= 65535:
        raise ConfigError(f"Export_Id {raw_id[:20]!r} is not in 1..65535")
    fsals = [b for b in block.blocks if b.name.upper() == "FSAL"]
    fsal = fsals[0].values.get("name", "") if len(fsals) == 1 else ""
    squash = v["squash"].lower()
    if squash not in SQUASHES:
        raise ConfigError(f"Squash {v['squash'][:30]!r} is not one the Go provisioner writes "
                          f"({' or '.join(SQUASHES)})")
    return GoExport(export_id=int(raw_id), path=_unquote(v["path"]), pseudo=_unquote(v["pseudo"]), squash=squash,
                    access_type=v["access_type"].upper(), fsal=fsal.upper(),
                    filesystem_id=v.get("filesystem_id", ""))


def _unquote(value: str) -> str:
    return value[1:-1] if len(value) >= 2 and value[0] == value[-1] == '"' else value


@dataclass(frozen=True)
class GoConfig:
    """The EXPORT blocks of a ``vfs.conf`` by Export_Id (the pseudo root, id 0, left out); ``bad``: blocks that
    are not the Go provisioner's, with why (their volumes are refused)."""

    exports: Mapping[int, GoExport]
    duplicates: frozenset[int] = frozenset()
    """Ids that appear in more than one EXPORT block (neither is adopted)."""
    bad: tuple[str, ...] = ()


def go_blocks(text: str) -> GoConfig:
    """The Go provisioner's EXPORT blocks in ``vfs.conf`` ``text``; ConfigError if it is no Ganesha config."""
    exports: dict[int, GoExport] = {}
    dups: set[int] = set()
    bad: list[str] = []
    for block in parse_config(text):
        if block.name.upper() != "EXPORT" or block.values.get("export_id") == "0":
            continue
        try:
            e = to_export(block)
        except ConfigError as err:
            bad.append(str(err))
            continue
        if e.export_id in exports:
            dups.add(e.export_id)
        exports[e.export_id] = e
    for d in dups:
        exports.pop(d, None)
    return GoConfig(exports=exports, duplicates=frozenset(dups), bad=tuple(bad))


def annotations_of(pv: Object) -> dict[str, str]:
    ann = (pv.get("metadata") or {}).get("annotations") or {}
    return {str(k): str(v) for k, v in ann.items()} if isinstance(ann, dict) else {}


GO_BLOCK_START = "\nEXPORT\n{"
"""How every ``EXPORT_block`` of the Go provisioner begins (its ``CreateExportBlock``); this appliance's blocks
(``EXPORT {`` from its template) never do."""


def is_go_volume(pv: Object) -> bool:
    """A PV the Go provisioner made: its export block annotation as it writes them, and none of this appliance's
    policy annotation (which every PV it makes carries; PVs of its oldest versions lack it, not their block's
    form)."""
    ann = annotations_of(pv)
    return ann.get(ANN_EXPORT_BLOCK, "").startswith(GO_BLOCK_START) and ANN_ON_DELETE not in ann


def nfs_path(pv: Object) -> str:
    nfs = (pv.get("spec") or {}).get("nfs") or {}
    return str(nfs.get("path") or "") if isinstance(nfs, dict) else ""


def inside(path: str, root: Path) -> bool:
    """Whether ``path`` names an entry directly under ``root`` (normalized, absolute, no ``..``)."""
    if not path.startswith("/") or posixpath.normpath(path) != path or "\x00" in path:
        return False
    return Path(path).parent == root


@dataclass(frozen=True)
class Candidate:
    """What a PV of this identity says, once :func:`check` found it consistent."""

    export: GoExport
    project_id: int
    """0: no quota project (the Go provisioner without ``-enable-xfs-quota``)."""


def check(pv: Object, *, root: Path, config: GoConfig | None, config_error: str | None) -> Candidate | str:
    """The PV's adoption as far as its text goes: a :class:`Candidate`, or why it is refused (one line)."""
    name = str((pv.get("metadata") or {}).get("name") or "")
    ann = annotations_of(pv)
    expected = str(root / name)
    path = nfs_path(pv)
    if not inside(path, root) or path != expected:
        return f"its spec.nfs.path {path[:200]!r} is not {expected} (outside the export root, or not its own name)"
    raw = ann.get(ANN_EXPORT_BLOCK, "")
    if len(raw) > MAX_BLOCK_CHARS:
        return f"its {ANN_EXPORT_BLOCK} annotation has {len(raw)} characters (at most {MAX_BLOCK_CHARS})"
    try:
        blocks = parse_config(raw)
        if len(blocks) != 1:
            raise ConfigError(f"{len(blocks)} blocks, not one EXPORT block")
        block = to_export(blocks[0])
    except ConfigError as e:
        return f"its {ANN_EXPORT_BLOCK} annotation is malformed: {e}"
    if ann.get(ANN_EXPORT_ID, "") != str(block.export_id):
        return (f"its {ANN_EXPORT_ID} annotation {ann.get(ANN_EXPORT_ID, '')[:20]!r} disagrees with its "
                f"{ANN_EXPORT_BLOCK} (Export_Id {block.export_id})")
    if block.export_id == PSEUDO_ROOT_FSID:
        return f"Export_Id {PSEUDO_ROOT_FSID} is reserved here (the pseudo root's Filesystem_Id 152.152)"
    if block.path != expected or block.pseudo != expected:
        return (f"its {ANN_EXPORT_BLOCK} serves Path {block.path[:200]!r} / Pseudo {block.pseudo[:200]!r}, "
                f"not {expected}")
    if block.filesystem_id != f"{block.export_id}.{block.export_id}":
        return (f"its {ANN_EXPORT_BLOCK} has Filesystem_id {block.filesystem_id[:20]!r}, not "
                f"{block.export_id}.{block.export_id} (what this appliance serves: clients' handles would change)")
    if block.access_type != "RW" or block.fsal != "VFS":
        return f"its {ANN_EXPORT_BLOCK} has Access_Type {block.access_type[:20]}, FSAL {block.fsal[:20]} (not RW, VFS)"
    if config is None:
        return f"the Go provisioner's {VFS_CONF} cannot be read: {config_error}"
    if block.export_id in config.duplicates:
        return f"Export_Id {block.export_id} appears in more than one EXPORT block of {VFS_CONF}"
    conf = config.exports.get(block.export_id)
    if conf is None:
        return f"{VFS_CONF} has no EXPORT block with Export_Id {block.export_id} (deleted by the Go provisioner?)"
    if conf != block:
        return f"its {ANN_EXPORT_BLOCK} and the block with Export_Id {block.export_id} in {VFS_CONF} disagree"
    project = _project_id(ann, expected)
    if isinstance(project, str):
        return project
    return Candidate(export=block, project_id=project)


def _project_id(ann: Mapping[str, str], path: str) -> int | str:
    """The PV's XFS project id (0: none), or why its quota annotations disagree."""
    raw = ann.get(ANN_PROJECT_ID, "0").strip() or "0"
    if not raw.isdigit() or int(raw) >= 2**32 - 1:
        return f"its {ANN_PROJECT_ID} annotation {raw[:20]!r} is not a project id"
    project = int(raw)
    block = ann.get(ANN_PROJECT_BLOCK, "").strip()
    if project == 0:
        return 0 if not block else f"its {ANN_PROJECT_BLOCK} is set but {ANN_PROJECT_ID} is 0"
    parts = block.rsplit(":", 1)[0].split(":", 1) if block.count(":") >= 2 else []
    if len(parts) != 2 or parts[0] != raw or parts[1] != path:
        return f"its {ANN_PROJECT_BLOCK} {block[:200]!r} is not {raw}:{path}:<bytes>"
    return project


def quota_problem(project_id: int, entries: Iterable[ProjectEntry], path: Path) -> str | None:
    """With quotas on: why the PV's ``Project_Id`` disagrees with the ``projects`` file (None: it agrees; 0 with
    no line for the directory agrees too: the volume was made with quotas off and has no limit)."""
    recorded = next((e for e in entries if e.directory == path), None)
    if project_id == 0:
        return None if recorded is None else (f"its {ANN_PROJECT_ID} is 0 but the projects file gives {path} "
                                              f"project {recorded.project_id}")
    if recorded is None:
        return f"its {ANN_PROJECT_ID} is {project_id} but the projects file has no line for {path}"
    if recorded.project_id != project_id:
        return f"its {ANN_PROJECT_ID} is {project_id} but the projects file gives {path} project {recorded.project_id}"
    return None


def kept_names(limit: int = 100) -> Iterator[str]:
    """Where ``vfs.conf`` is kept once adopted, in order of preference (the first free one is used)."""
    yield VFS_CONF + KEPT_SUFFIX
    for n in range(1, limit):
        yield f"{VFS_CONF}{KEPT_SUFFIX}.{n}"
