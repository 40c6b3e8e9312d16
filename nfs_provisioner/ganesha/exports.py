"""Exports: one EXPORT file per volume, an index of ``%include`` lines, live AddExport/RemoveExport.

Layout under ``config_dir``::

    exports.conf            the index, included by ganesha.conf: one %include per shard (generated)
    exports.idx/NNN.conf    shard NNN = Export_Id % 256: one %include per export (generated)
    exports.d/<name>.conf   one export: a JSON header comment + the rendered EXPORT block

Add = reserve name/path/id -> write file -> AddExport -> rewrite its index shard; any
failure undoes the done steps. A crash before the shard is rewritten leaves a file the
index lacks: ``load()`` rebuilds the index from ``exports.d``. Remove = RemoveExport -> rewrite the shard ->
delete file, idempotent. The header line makes ids recoverable after a restart
whatever the (operator) template looks like; ``reconcile()`` cross-checks the
files against what Ganesha reports.

Export files are read at most ``MAX_FILE_BYTES`` each (a bigger one is refused with one line and left in
place). An export whose directory is missing or is no longer a real directory (a symlink in its place), or,
with the appliance's volume records (``records_dir``), one without a record, is *held*: its file and id are
kept, but it is left out of the index and never added live (one line each), so Ganesha never serves what it
points at. Held exports and those Ganesha refused are *unserved* (:meth:`ExportManager.unserved`, with why);
:meth:`ExportManager.serve_again` serves one once its cause is gone. Every method is safe to call from any
thread (one lock, held for microseconds around the bookkeeping; file writes,
D-Bus calls and shard rewrites run outside it, so adds and removes overlap).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import re
import stat
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from nfs_provisioner import fileio
from nfs_provisioner.ganesha import clientlists, config, errors, ids
from nfs_provisioner.ganesha.dbus import GaneshaDBus
from nfs_provisioner.ganesha.settings import RESERVED_EXPORT_IDS, AccessType, Squash
from nfs_provisioner.volumes.filesystems import MOUNTS_DIR

log = logging.getLogger(__name__)

HEADER = "# nfs-provisioner-export: "
INDEX_NAME = "exports.conf"
EXPORTS_DIR = "exports.d"
SHARDS_DIR = "exports.idx"
#: The index includes this many shard files; an export lives in shard ``id % INDEX_SHARDS``, so
#: an add or remove rewrites one small shard (a few lines) instead of an index of every export.
INDEX_SHARDS = 256
#: An export file is a header and a block listing the clients (thousands of Node addresses take ~200 KB): a
#: bigger file is not one of ours and is never read whole (a sparse file of gigabytes costs nothing on disk).
MAX_FILE_BYTES = 1024 * 1024


@dataclasses.dataclass(frozen=True)
class ExportRequest:
    """What the appliance asks for: export ``path`` (a directory inside the export root) as ``name``."""

    name: str
    path: Path
    squash: Squash = Squash.NO_ROOT_SQUASH
    access_type: AccessType = AccessType.RW
    clients: tuple[str, ...] | None = None
    """Client list (``*`` or CIDRs); None = the manager's default (``--export-subnet``)."""
    export_id: int | None = None
    """The id to use if it is free (rebuilding a lost export keeps clients' handles valid); else the lowest free."""


@dataclasses.dataclass(frozen=True)
class Export:
    """A live export, as stored in its file."""

    name: str
    export_id: int
    path: Path
    squash: Squash
    access_type: AccessType
    clients: tuple[str, ...]
    config_file: Path

    @property
    def fsid(self) -> str:
        return f"{self.export_id}.{self.export_id}"

    def same_definition(self, other: Export) -> bool:
        return (self.path, self.squash, self.access_type, self.clients) == (
            other.path,
            other.squash,
            other.access_type,
            other.clients,
        )

    def header(self) -> str:
        data = {
            "name": self.name,
            "export_id": self.export_id,
            "path": str(self.path),
            "squash": self.squash.value,
            "access_type": self.access_type.value,
            "clients": list(self.clients),
        }
        return HEADER + json.dumps(data, sort_keys=True) + "\n"


@dataclasses.dataclass(frozen=True)
class ReconcileResult:
    readded: tuple[int, ...]
    """Ids of our exports Ganesha did not have, added again."""
    failed: tuple[int, ...]
    """Ids of our exports not served: Ganesha refused to add them again, or they are held (see the log)."""
    foreign: tuple[int, ...]
    """Ids live in Ganesha that are not ours (kept reserved, never reused)."""


class ExportManager(clientlists.ClientLists):
    """Adds and removes exports; owns ``config_dir/exports.conf`` and ``config_dir/exports.d``."""

    def __init__(
        self,
        *,
        export_root: Path,
        config_dir: Path,
        dbus: GaneshaDBus,
        templates: config.Templates,
        nfsv3: bool = False,
        default_clients: tuple[str, ...] = ("*",),
        id_range: tuple[int, int] = (config.EXPORT_ID_MIN, config.EXPORT_ID_MAX),
        durable: bool = True,
        on_count: Callable[[int], None] | None = None,
        on_add: Callable[[float], None] | None = None,
        records_dir: Path | None = None,
    ) -> None:
        lo, hi = id_range
        if not (config.EXPORT_ID_MIN <= lo <= hi <= config.EXPORT_ID_MAX):
            raise errors.InvalidRequest(f"export id range {id_range} is not within 1..65535")
        self.export_root = export_root
        self.config_dir = config_dir
        self.exports_dir = config_dir / EXPORTS_DIR
        self.index_file = config_dir / INDEX_NAME
        self.shards_dir = config_dir / SHARDS_DIR
        self.dbus = dbus
        self.templates = templates
        self.nfsv3 = nfsv3
        self.default_clients = config.check_clients(default_clients, allow_empty=True)
        """Clients of every export added without its own list; :meth:`set_clients` changes it (and them)."""
        self._clients_lock = threading.Lock()
        self.id_range = (lo, hi)
        self.durable = durable
        self.on_count = on_count
        self.on_add = on_add
        """Called with the seconds each successful add took (reservation to index shard)."""
        self._lock = threading.RLock()
        self._by_name: dict[str, Export] = {}
        self._by_id: dict[int, Export] = {}
        self._by_path: dict[Path, Export] = {}
        self._foreign: set[int] = set()
        self._not_live: set[str] = set()
        """Exports whose live client list is older than their file's (see ``clientlists``)."""
        self._pending: dict[str, threading.Event] = {}
        """Names whose add or remove is half done (file, D-Bus call and index shard outside the lock)."""
        self._unindexed: set[str] = set()
        """Reserved or withdrawn exports the index must leave out (an add before AddExport succeeded, a remove
        after RemoveExport did)."""
        self._shard_locks = [threading.Lock() for _ in range(INDEX_SHARDS)]
        """One per index shard: its file is rewritten under it, outside ``_lock`` (taken before ``_lock``)."""
        self._ids = ids.IdAllocator(low=lo, high=hi, reserved=RESERVED_EXPORT_IDS)
        self.records_dir = records_dir
        """The appliance's volume records: while this directory exists, an export without a record is held."""
        self._held: dict[str, str] = {}
        """Exports kept (file, id) but left out of the index and never added live, with why (see the module)."""
        self._refused: dict[str, str] = {}
        """Exports in the index that Ganesha does not serve (it refused to add them again), with why."""

    # --- queries -----------------------------------------------------------------------------------------------

    def get(self, name: str) -> Export | None:
        with self._lock:
            return self._by_name.get(name)

    def list_exports(self) -> list[Export]:
        with self._lock:
            return sorted(self._by_name.values(), key=lambda e: e.export_id)

    def __len__(self) -> int:
        with self._lock:
            return len(self._by_name)

    # --- load / reconcile --------------------------------------------------------------------------------------

    def load(self) -> list[Export]:
        """Read every export file (no D-Bus), rebuild the index. Call before Ganesha starts."""
        began = time.monotonic()
        with self._lock:
            self.exports_dir.mkdir(parents=True, exist_ok=True)
            self._by_name.clear()
            self._by_id.clear()
            self._by_path.clear()
            self._held.clear()
            self._refused.clear()
            self._ids.reset(self._foreign)
            recorded = self._recorded_names()
            for f in sorted(self.exports_dir.glob("*.conf")):
                try:
                    export, text = self._read_file(f)
                except (errors.GaneshaError, OSError, ValueError, KeyError) as e:
                    log.error("export file %s is unreadable, left out of the index: %s", f, e)
                    continue
                clash = self._by_id.get(export.export_id) or self._by_path.get(export.path)
                if clash is not None:
                    log.error("export file %s clashes with %s (same id or path), left out", f, clash.config_file)
                    continue
                why = self._why_held(export, recorded)
                if why is not None:  # kept as it is (id reserved), never given to Ganesha
                    self._remember(export)
                    self._held[export.name] = why
                    log.warning("export %s (id %d, path %s) is not served: %s; its file %s is kept", export.name,
                                export.export_id, export.path, why, f)
                    continue
                try:
                    self._rerender(export, text)
                except (errors.GaneshaError, OSError) as e:
                    log.error("export file %s could not be re-rendered from its header, left out: %s", f, e)
                    continue
                self._remember(export)
            self._write_index()
            self._count_changed()
            log.info("loaded %d exports from %s in %.2fs%s", len(self._by_name), self.exports_dir,
                     time.monotonic() - began, f" ({len(self._held)} not served, see above)" if self._held else "")
            return self.list_exports()

    def reconcile(self) -> ReconcileResult:
        """Cross-check our files against Ganesha's ShowExports; re-add what it lacks (held exports stay out, and
        one whose directory is gone meanwhile is held)."""
        unindexed: list[int] = []
        recorded: frozenset[str] | None = None
        with self._lock:
            live = {e.export_id: e.path for e in self.dbus.show_exports()}
            readded: list[int] = []
            failed: list[int] = []
            for export in self.list_exports():
                if export.name in self._pending:
                    continue  # its own add makes it live (or undoes it)
                if export.name in self._held:
                    failed.append(export.export_id)  # never live while held (said when it was held)
                    continue
                live_path = live.get(export.export_id)
                if live_path is None:
                    if recorded is None:
                        recorded = self._recorded_names()
                    why = self._why_held(export, recorded)
                    if why is not None:
                        self._held[export.name] = why
                        self._refused.pop(export.name, None)
                        unindexed.append(export.export_id)
                        log.error("export %s (id %d) is not served: %s; left out of the index, its file %s is kept",
                                  export.name, export.export_id, why, export.config_file)
                        failed.append(export.export_id)
                        continue
                    try:
                        self._add_live(export)
                        readded.append(export.export_id)
                        self._refused.pop(export.name, None)
                    except errors.GaneshaError as e:
                        log.error("export %s (id %d) could not be added again: %s", export.name, export.export_id, e)
                        self._refused[export.name] = f"NFS-Ganesha refused it: {e}"
                        failed.append(export.export_id)
                elif live_path != str(export.path):
                    log.error(
                        "Ganesha serves id %d as %s but our file %s says %s",
                        export.export_id,
                        live_path,
                        export.config_file,
                        export.path,
                    )
                    self._refused[export.name] = f"NFS-Ganesha serves its id {export.export_id} as {live_path}"
                    failed.append(export.export_id)
                else:
                    self._refused.pop(export.name, None)
            foreign = {i for i in live if i != 0 and i not in self._by_id}
            for gone in self._foreign - foreign:
                self._ids.release(gone)
            for new in foreign - self._foreign:
                self._ids.take(new)
            self._foreign = foreign
            if self._foreign:
                log.warning("Ganesha serves exports we did not write (ids reserved): %s", sorted(self._foreign))
            result = ReconcileResult(readded=tuple(readded), failed=tuple(failed),
                                     foreign=tuple(sorted(self._foreign)))
        for export_id in unindexed:
            self._sync_shard(export_id)
        return result

    # --- exports not served ------------------------------------------------------------------------------------

    def unserved(self) -> dict[str, str]:
        """Exports that exist (file, id) but Ganesha does not serve, with why (no I/O: cheap to ask often)."""
        with self._lock:
            return {**self._refused, **self._held}

    def serve_again(self, name: str) -> str | None:
        """Serve an unserved export whose cause is gone (its directory back, its record written): AddExport and
        its index line (a held file is first rewritten from its header, with the current client list). None: it
        is served now (or no longer exists); else why it still is not."""
        with self._settled(name):
            export = self._by_name.get(name)
            if export is None or (name not in self._held and name not in self._refused):
                return None
            why = self._why_held(export, self._recorded_names(only=name))
            if why is not None:
                self._held[name] = why
                self._refused.pop(name, None)
                return why
            if name in self._held:  # its file was left as found: what Ganesha reads is rendered from the header
                if export.clients != self.default_clients:
                    export = dataclasses.replace(export, clients=self.default_clients)
                    self._remember(export)
                try:
                    self._rerender(export, read_export_file(export.config_file))
                except (errors.GaneshaError, OSError, ValueError) as e:
                    why = f"its file {export.config_file} cannot be rewritten from its header: {e}"
                    self._held[name] = why
                    return why
            was_held = self._held.pop(name, None) is not None  # in the index from now on, live or not
            try:
                self._add_live(export)
            except errors.GaneshaError as e:
                why = f"NFS-Ganesha refused it: {e}"
            if why is None:
                self._refused.pop(name, None)
            else:
                self._refused[name] = why
        if was_held:
            self._sync_shard(export.export_id)
        if why is None:
            log.info("export %s (id %d, path %s) is served again", name, export.export_id, export.path)
        return why

    def _recorded_names(self, *, only: str | None = None) -> frozenset[str] | None:
        """Names with a volume record (``<name>.json`` in ``records_dir``; ``only``: that one name, looked up
        alone instead of listing them all); None: no records directory (every export is admitted)."""
        if self.records_dir is None or not os.path.isdir(self.records_dir):
            return None
        if only is not None:
            return frozenset({only}) if os.path.lexists(self.records_dir / f"{only}.json") else frozenset()
        try:
            entries = os.listdir(self.records_dir)
        except (FileNotFoundError, NotADirectoryError):
            return None
        return frozenset(e[:-5] for e in entries if e.endswith(".json") and not e.startswith("."))

    def _why_held(self, export: Export, recorded: frozenset[str] | None) -> str | None:
        """Why ``export`` must not be given to Ganesha (None: it may be): its directory is not a real directory,
        or (``recorded``: names with a volume record) no record of it exists."""
        if recorded is not None:
            own = (self.export_root / export.name, self.export_root / MOUNTS_DIR / export.name)
            if export.path not in own:
                return f"the appliance exports only {own[0]} or {own[1]} under this name"
            if export.name not in recorded:
                return (f"no volume record {self.records_dir}/{export.name}.json (not made by this appliance, or "
                        "left from a volume since removed)")
        try:
            st = os.lstat(export.path)
        except FileNotFoundError:
            return f"its directory {export.path} is missing"
        except OSError as e:
            return f"its directory {export.path} cannot be looked at: {e.strerror}"
        if stat.S_ISLNK(st.st_mode):
            try:
                target = os.readlink(export.path)
            except OSError:
                target = "?"
            return f"{export.path} is a symlink (to {target}), not a directory; never followed"
        if not stat.S_ISDIR(st.st_mode):
            return f"{export.path} is not a directory"
        return None

    def reserve(self, export_ids: Iterable[int]) -> list[int]:
        """Keep ``export_ids`` from new exports for this process's life (the ids of volumes that are not served
        yet but will want theirs: a refused volume of the Go nfs-provisioner). Returns the ids reserved (one in
        use, out of range or reserved by Ganesha is left as it is)."""
        done = []
        with self._lock:
            for i in export_ids:
                if (self.id_range[0] <= i <= self.id_range[1] and i not in self._ids and i not in RESERVED_EXPORT_IDS
                        and i not in self._foreign):
                    self._ids.take(i)
                    done.append(i)
        return done

    # --- add / remove ------------------------------------------------------------------------------------------

    def add(self, request: ExportRequest) -> Export:
        """Export ``request.path``; idempotent for an identical request. Raises a typed error, leaving nothing.

        The lock is held only to check and reserve the name, path and id: rendering, the (fsynced) file
        write, AddExport and the index shard rewrite (under that shard's own lock) run outside it, so
        concurrent adds overlap."""
        name = config.check_name(request.name)
        squash, access = _options(request)
        if request.clients is not None:
            config.check_clients(request.clients)
        path = config.check_path_inside(request.path, root=self.export_root, exclude=[self.config_dir])
        if name in self.unserved():  # its file exists (e.g. left by a crash): serve it, or say why not
            why = self.serve_again(name)
            if why is not None:
                raise errors.ExportAddError(f"export {name!r} exists but is not served: {why}")
        started = time.perf_counter()
        with self._settled(name, path):
            clients = self._clients_for(request)  # read under the lock: set_clients() sees this add as pending
            existing = self._by_name.get(name)
            candidate = Export(
                name=name,
                export_id=existing.export_id if existing else 0,
                path=path,
                squash=squash,
                access_type=access,
                clients=clients,
                config_file=self.exports_dir / f"{name}.conf",
            )
            if existing is not None:
                if existing.same_definition(candidate):
                    return existing
                raise errors.ExportConflict(
                    f"export {name!r} exists with a different definition (id {existing.export_id})"
                )
            other = self._by_path.get(path)
            if other is not None:
                raise errors.ExportConflict(f"path {str(path)!r} is already exported as {other.name!r}")
            wanted = request.export_id
            if (wanted is not None and self.id_range[0] <= wanted <= self.id_range[1] and wanted not in self._ids
                    and wanted not in RESERVED_EXPORT_IDS and wanted not in self._foreign):
                self._ids.take(wanted)
            else:
                wanted = self._ids.allocate()
            export = dataclasses.replace(candidate, export_id=wanted)
            self._remember(export)  # reserved: name, path and id are taken, the shard leaves it out for now
            self._pending[name] = threading.Event()
            self._unindexed.add(name)
        written = live = indexed = False
        try:
            text = export.header() + self.templates.render_export(self._block(export))
            if export.config_file.exists():
                raise errors.ExportConflict(f"{export.config_file} exists but is not a loaded export")
            config.atomic_write(export.config_file, text, durable=self.durable)
            written = True
            self._add_live(export)
            live = True
            with self._lock:
                self._unindexed.discard(name)
            indexed = True
            self._sync_shard(export.export_id)
            with self._lock:
                self._pending.pop(name).set()
        except BaseException as e:
            if live:
                try:
                    self.dbus.remove_export(export.export_id)
                except errors.GaneshaError as undo_error:
                    log.error("export %s: withdrawing it after a failed add failed: %s", name, undo_error)
            with self._lock:
                self._unindexed.add(name)  # leave it out of the shard rewritten below
            if indexed:  # the shard may have been rewritten with it: rewrite it without
                with contextlib.suppress(OSError):
                    self._sync_shard(export.export_id)
            if written:
                with contextlib.suppress(OSError):
                    export.config_file.unlink(missing_ok=True)
            with self._lock:
                self._forget(export)
                self._unindexed.discard(name)
                event = self._pending.pop(name, None)
                if event is not None:
                    event.set()
                if isinstance(e, errors.ExportIdTaken):
                    self._foreign.add(export.export_id)
                    self._ids.take(export.export_id)
            if isinstance(e, errors.ExportConflict | errors.TemplateError | errors.InvalidRequest):
                raise
            if isinstance(e, errors.ExportIdTaken):
                raise
            if isinstance(e, errors.GaneshaError | OSError):
                raise errors.ExportAddError(f"adding export {name!r} (id {export.export_id}) failed: {e}") from e
            raise
        took = time.perf_counter() - started
        self._count_changed()
        if self.on_add is not None:
            self.on_add(took)
        log.info("export %s added: id %d path %s clients %s in %.2f ms", name, export.export_id, path,
                 ",".join(clients), took * 1000)
        return export

    @contextlib.contextmanager
    def _settled(self, name: str, path: Path | None = None) -> Iterator[None]:
        """Hold the lock once no add or remove of ``name`` (nor of the export of ``path``) is half done
        (another thread's add or remove of it finishes first)."""
        while True:
            with self._lock:
                pending = self._pending.get(name)
                if pending is None and path is not None:
                    other = self._by_path.get(path)
                    pending = self._pending.get(other.name) if other is not None else None
                if pending is None:
                    yield
                    return
            pending.wait()

    def update(self, request: ExportRequest) -> Export:
        """Change squash, access type or clients of a live export (same name, same path) via UpdateExport.

        The old file is restored if Ganesha refuses the new block."""
        name = config.check_name(request.name)
        if request.clients is not None:
            config.check_clients(request.clients)
        path = config.check_path_inside(request.path, root=self.export_root, exclude=[self.config_dir])
        with self._settled(name):
            clients = self._clients_for(request)
            old = self._by_name.get(name)
            if old is None:
                raise errors.InvalidRequest(f"export {name!r} does not exist")
            if old.path != path:
                raise errors.ExportConflict(f"export {name!r} serves {str(old.path)!r}; a path cannot be updated")
            squash, access = _options(request)
            new = dataclasses.replace(old, squash=squash, access_type=access, clients=clients)
            if new == old:
                return old
            old_text = read_export_file(old.config_file)
            config.atomic_write(
                new.config_file, new.header() + self.templates.render_export(self._block(new)), durable=self.durable
            )
            try:
                self.dbus.update_export(config_file=new.config_file, export_id=new.export_id)
            except BaseException as e:
                config.atomic_write(old.config_file, old_text, durable=self.durable)
                if isinstance(e, errors.GaneshaError):
                    raise errors.ExportAddError(f"updating export {name!r} failed, old block kept: {e}") from e
                raise
            self._remember(new)
            log.info("export %s updated: squash %s clients %s", name, new.squash.value, ",".join(new.clients))
            return new

    def _clients_for(self, request: ExportRequest) -> tuple[str, ...]:
        if request.clients is None:
            return self.default_clients
        return config.check_clients(request.clients)

    def remove(self, name: str) -> bool:
        """Withdraw export ``name``; True if it existed. Idempotent: a missing export is logged and skipped.

        If Ganesha cannot be reached the export is kept (file and index line) and the
        ``DBusError`` raised, so a retry finishes the job; Ganesha not knowing the id is fine.

        Like :meth:`add`, the lock is held only for the bookkeeping: RemoveExport, the shard rewrite and
        the file's removal run outside it, so concurrent removes overlap. Until they are done the name,
        path and id stay taken (an add of the same name or path waits for the outcome)."""
        config.check_name(name)
        with self._settled(name):
            export = self._by_name.get(name)
            if export is None:
                log.info("export %s: nothing to remove", name)
                return False
            self._pending[name] = done = threading.Event()
        try:
            try:
                self.dbus.remove_export(export.export_id)
            except errors.ExportNotFound:
                log.info("export %s (id %d) was not live in Ganesha; removing its files", name, export.export_id)
            with self._lock:
                self._unindexed.add(name)
            self._sync_shard(export.export_id)
            export.config_file.unlink(missing_ok=True)  # still reserved: no add of this name writes it meanwhile
        except BaseException:
            with self._lock:  # kept, in its shard again (a failed rewrite may have left it out)
                self._unindexed.discard(name)
            with contextlib.suppress(OSError):
                self._sync_shard(export.export_id)
            with self._lock:
                self._pending.pop(name, None)
                done.set()
            raise
        with self._lock:
            self._forget(export)
            self._unindexed.discard(name)
            self._held.pop(name, None)
            self._refused.pop(name, None)
            self._pending.pop(name, None)
            done.set()
        self._count_changed()
        log.info("export %s removed: id %d path %s", name, export.export_id, export.path)
        return True

    # --- internals ---------------------------------------------------------------------------------------------

    def _block(self, export: Export) -> config.ExportBlock:
        return config.ExportBlock(
            export_id=export.export_id,
            path=export.path,
            squash=export.squash,
            access_type=export.access_type,
            clients=export.clients,
            nfsv3=self.nfsv3,
        )

    def _add_live(self, export: Export) -> None:
        try:
            self.dbus.add_export(config_file=export.config_file, export_id=export.export_id)
        except errors.ExportAlreadyActive:
            shown = self.dbus.display_export(export.export_id)
            if shown.path != str(export.path):
                raise errors.ExportIdTaken(
                    f"Export_Id {export.export_id} is already live for {shown.path!r}, not {str(export.path)!r}"
                ) from None
            log.info("export %s (id %d) was already live (same path): ok", export.name, export.export_id)

    def _remember(self, export: Export) -> None:
        self._by_name[export.name] = export
        self._by_id[export.export_id] = export
        self._by_path[export.path] = export
        self._ids.take(export.export_id)

    def _forget(self, export: Export) -> None:
        self._by_name.pop(export.name, None)
        self._by_id.pop(export.export_id, None)
        self._by_path.pop(export.path, None)
        self._ids.release(export.export_id)

    def _shard_file(self, shard: int) -> Path:
        return self.shards_dir / f"{shard:03d}.conf"

    def _write_shard(self, export_id: int, *, only_if_changed: bool = False) -> None:
        shard = export_id % INDEX_SHARDS
        ids = range(shard or INDEX_SHARDS, config.EXPORT_ID_MAX + 1, INDEX_SHARDS)
        files = [e.config_file for e in (self._by_id.get(i) for i in ids)
                 if e is not None and e.name not in self._unindexed and e.name not in self._held]
        self._write_if(self._shard_file(shard), config.render_index(files), only_if_changed=only_if_changed)

    def _sync_shard(self, export_id: int) -> None:
        """Rewrite the shard of ``export_id`` from the state at the time of writing, without holding ``_lock``
        during the write (concurrent adds and removes of other shards go on). The caller must not hold
        ``_lock``. Every change is followed by a sync that reads the state after it, under the shard's
        lock, so the file ends up with the latest state whatever the order of the writers."""
        shard = export_id % INDEX_SHARDS
        ids = range(shard or INDEX_SHARDS, config.EXPORT_ID_MAX + 1, INDEX_SHARDS)
        with self._shard_locks[shard]:
            with self._lock:
                files = [e.config_file for e in (self._by_id.get(i) for i in ids)
                         if e is not None and e.name not in self._unindexed and e.name not in self._held]
            self._write_if(self._shard_file(shard), config.render_index(files), only_if_changed=False)

    def _write_if(self, path: Path, text: str, *, only_if_changed: bool) -> None:
        if only_if_changed:
            with contextlib.suppress(OSError, ValueError):  # a file too big to be this text: rewritten
                if fileio.read_limited(path, len(text.encode())) == text.encode():
                    return
        # The index is derived data: load() rebuilds it from exports.d after a crash, so it
        # needs atomic renames but no fsync (the export files themselves are fsynced).
        config.atomic_write(path, text, durable=False)

    def _write_index(self) -> None:
        """Every shard, then the top index that includes them all (on load; unchanged files are kept)."""
        self.shards_dir.mkdir(parents=True, exist_ok=True)
        for shard in range(INDEX_SHARDS):
            self._write_shard(shard, only_if_changed=True)
        shards = [self._shard_file(shard) for shard in range(INDEX_SHARDS)]
        self._write_if(self.index_file, config.render_index(shards), only_if_changed=True)

    def index_entries(self) -> list[Path]:
        """The export files the index on disk includes (through its shards), as Ganesha will read them."""
        out: list[Path] = []
        for shard in _includes(self.index_file):
            out += _includes(shard)
        return sorted(out)

    def _count_changed(self) -> None:
        if self.on_count is not None:
            self.on_count(len(self._by_name))

    def _rerender(self, export: Export, old: str) -> None:
        """Serve only what the header (the manager's own record) says: a block that differs from the header's
        rendering (edited by hand or by an attacker, e.g. ``Path = "/etc"``) is replaced, with one log line.
        ``old``: the file's text as read."""
        text = export.header() + self.templates.render_export(self._block(export))
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

    def _read_file(self, f: Path) -> tuple[Export, str]:
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


def _options(request: ExportRequest) -> tuple[Squash, AccessType]:
    try:
        return Squash(request.squash), AccessType(request.access_type)
    except ValueError as e:
        raise errors.InvalidRequest(f"export {request.name!r}: {e}") from e


def read_export_file(path: Path) -> str:
    """An export (or index) file's text; ``fileio.Refused`` (a ValueError naming the file and its size) for one
    larger than ``MAX_FILE_BYTES`` or not a regular file; symlinks are not followed."""
    return fileio.read_text_limited(path, MAX_FILE_BYTES, follow_symlinks=False)


def _includes(index: Path) -> list[Path]:
    prefix = "%include "
    lines = read_export_file(index).splitlines()
    return [Path(line[len(prefix) :].strip().strip('"')) for line in lines if line.startswith(prefix)]


def temp_files(directory: Path) -> list[Path]:
    """Left-over temp files of interrupted atomic writes (for tests and cleanup)."""
    with contextlib.suppress(FileNotFoundError):
        return sorted(p for p in directory.iterdir() if p.name.endswith(".tmp"))
    return []
