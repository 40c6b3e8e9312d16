"""The export manager: adds, updates and removes exports, and loads and reconciles them with Ganesha.

An add reserves the name, path and id, writes the file, calls AddExport and rewrites the export's index shard.
Each step pushes its undo, and a failure undoes the steps done, in reverse order (:class:`undo.Undo`). A crash
before the shard is rewritten leaves a file that the index lacks; ``load()`` rebuilds the index from
``exports.d``. A remove calls RemoveExport, rewrites the shard and deletes the file. It is idempotent. The header
line makes ids recoverable after a restart, whatever the (operator) template looks like. ``reconcile()``
cross-checks the files against what Ganesha reports.

Held exports (``held``) and those Ganesha refused are *unserved* (:meth:`ExportManager.unserved`, with the
reason). :meth:`ExportManager.serve_again` serves one once its cause is gone. Every method is safe to call from any
thread. The locks and their order are described in ``registry``.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from nfs_provisioner.ganesha import config, errors
from nfs_provisioner.ganesha.dbus import GaneshaDBus
from nfs_provisioner.ganesha.exports import clientlists, held
from nfs_provisioner.ganesha.exports.files import EXPORTS_DIR, ExportFiles, read_export_file
from nfs_provisioner.ganesha.exports.index import INDEX_SHARDS, ShardedIndex
from nfs_provisioner.ganesha.exports.model import ClientsResult, Export, ExportRequest, ReconcileResult
from nfs_provisioner.ganesha.exports.registry import Registry
from nfs_provisioner.ganesha.exports.undo import ErrorMap, Undo, map_errors
from nfs_provisioner.ganesha.settings import AccessType, Squash

log = logging.getLogger(__name__)

ADD_ERRORS: ErrorMap = {errors.ExportConflict: None, errors.TemplateError: None, errors.InvalidRequest: None,
                        errors.ExportIdTaken: None, errors.GaneshaError: errors.ExportAddError,
                        OSError: errors.ExportAddError}
"""How a failed add's error reaches its caller: the typed errors as they are, other errors as ``ExportAddError``."""
UPDATE_ERRORS: ErrorMap = {errors.GaneshaError: errors.ExportAddError}
"""How Ganesha's refusal of an update reaches its caller (the old file is back by then)."""


class ExportManager:
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
        self.dbus = dbus
        self.templates = templates
        self.nfsv3 = nfsv3
        self.id_range = (lo, hi)
        self.durable = durable
        self.on_count = on_count
        self.on_add = on_add
        """Called with the seconds each successful add took (reservation to index shard)."""
        self.records_dir = records_dir
        """The appliance's volume records: while this directory exists, an export without a record is held."""
        self._registry = Registry(id_range=self.id_range, shards=INDEX_SHARDS,
                                  default_clients=config.check_clients(default_clients, allow_empty=True))
        self._files = ExportFiles(directory=self.exports_dir, export_root=export_root, config_dir=config_dir,
                                  templates=templates, nfsv3=nfsv3, durable=durable)
        self._index = ShardedIndex(config_dir=config_dir, registry=self._registry)
        self.index_file = self._index.index_file
        self.shards_dir = self._index.shards_dir

    @property
    def default_clients(self) -> tuple[str, ...]:
        """Clients of every export added without its own list; :meth:`set_clients` changes it (and them)."""
        return self._registry.default_clients

    # --- queries -----------------------------------------------------------------------------------------------

    def get(self, name: str) -> Export | None:
        return self._registry.get(name)

    def list_exports(self) -> list[Export]:
        with self._registry.lock:
            return sorted(self._registry.by_name.values(), key=lambda e: e.export_id)

    def __len__(self) -> int:
        with self._registry.lock:
            return len(self._registry.by_name)

    def index_entries(self) -> list[Path]:
        """The export files the index on disk includes (through its shards), as Ganesha will read them."""
        return self._index.entries()

    def unserved(self) -> dict[str, str]:
        """Exports that exist (file, id) but Ganesha does not serve, with why (no I/O: cheap to ask often)."""
        return self._registry.unserved()

    # --- load / reconcile --------------------------------------------------------------------------------------

    def load(self) -> list[Export]:
        """Read every export file (no D-Bus), rebuild the index. Call before Ganesha starts."""
        began = time.monotonic()
        reg = self._registry
        with reg.lock:
            self.exports_dir.mkdir(parents=True, exist_ok=True)
            reg.clear()
            recorded = held.recorded_names(self.records_dir)
            for f in sorted(self.exports_dir.glob("*.conf")):
                try:
                    export, text = self._files.read(f)
                except (errors.GaneshaError, OSError, ValueError, KeyError) as e:
                    log.error("export file %s is unreadable, left out of the index: %s", f, e)
                    continue
                clash = reg.by_id.get(export.export_id) or reg.by_path.get(export.path)
                if clash is not None:
                    log.error("export file %s clashes with %s (same id or path), left out", f, clash.config_file)
                    continue
                why = self._why_held(export, recorded)
                if why is not None:  # kept as it is (id reserved), never given to Ganesha
                    reg.remember(export)
                    reg.held[export.name] = why
                    log.warning("export %s (id %d, path %s) is not served: %s; its file %s is kept", export.name,
                                export.export_id, export.path, why, f)
                    continue
                try:
                    self._files.rerender(export, text)
                except (errors.GaneshaError, OSError) as e:
                    log.error("export file %s could not be re-rendered from its header, left out: %s", f, e)
                    continue
                reg.remember(export)
            self._index.write_all()
            self._count_changed()
            log.info("loaded %d exports from %s in %.2fs%s", len(reg.by_name), self.exports_dir,
                     time.monotonic() - began, f" ({len(reg.held)} not served, see above)" if reg.held else "")
            return self.list_exports()

    def reconcile(self) -> ReconcileResult:
        """Cross-check our files against Ganesha's ShowExports; re-add what it lacks (held exports stay out, and
        one whose directory is gone meanwhile is held)."""
        reg = self._registry
        unindexed: list[int] = []
        recorded: frozenset[str] | None = None
        with reg.lock:
            live = {e.export_id: e.path for e in self.dbus.show_exports()}
            readded: list[int] = []
            failed: list[int] = []
            for export in self.list_exports():
                if export.name in reg.pending:
                    continue  # its own add makes it live (or undoes it)
                if export.name in reg.held:
                    failed.append(export.export_id)  # never live while held (said when it was held)
                    continue
                live_path = live.get(export.export_id)
                if live_path is None:
                    if recorded is None:
                        recorded = held.recorded_names(self.records_dir)
                    why = self._why_held(export, recorded)
                    if why is not None:
                        reg.held[export.name] = why
                        reg.refused.pop(export.name, None)
                        unindexed.append(export.export_id)
                        log.error("export %s (id %d) is not served: %s; left out of the index, its file %s is kept",
                                  export.name, export.export_id, why, export.config_file)
                        failed.append(export.export_id)
                        continue
                    try:
                        self._add_live(export)
                        readded.append(export.export_id)
                        reg.refused.pop(export.name, None)
                    except errors.GaneshaError as e:
                        log.error("export %s (id %d) could not be added again: %s", export.name, export.export_id, e)
                        reg.refused[export.name] = f"NFS-Ganesha refused it: {e}"
                        failed.append(export.export_id)
                elif live_path != str(export.path):
                    log.error("Ganesha serves id %d as %s but our file %s says %s", export.export_id, live_path,
                              export.config_file, export.path)
                    reg.refused[export.name] = f"NFS-Ganesha serves its id {export.export_id} as {live_path}"
                    failed.append(export.export_id)
                else:
                    reg.refused.pop(export.name, None)
            reg.set_foreign({i for i in live if i != 0 and i not in reg.by_id})
            if reg.foreign:
                log.warning("Ganesha serves exports we did not write (ids reserved): %s", sorted(reg.foreign))
            result = ReconcileResult(readded=tuple(readded), failed=tuple(failed), foreign=tuple(sorted(reg.foreign)))
        for export_id in unindexed:
            self._index.sync(export_id)
        return result

    def serve_again(self, name: str) -> str | None:
        """Serve an unserved export whose cause is gone (its directory back, its record written): AddExport and
        its index line (a held file is first rewritten from its header, with the current client list). None: it
        is served now (or no longer exists); else why it still is not."""
        reg = self._registry
        with reg.settled(name):
            export = reg.by_name.get(name)
            if export is None or (name not in reg.held and name not in reg.refused):
                return None
            why = self._why_held(export, held.recorded_names(self.records_dir, only=name))
            if why is not None:
                reg.held[name] = why
                reg.refused.pop(name, None)
                return why
            if name in reg.held:  # its file was left as found: what Ganesha reads is rendered from the header
                if export.clients != reg.default_clients:
                    export = dataclasses.replace(export, clients=reg.default_clients)
                    reg.remember(export)
                try:
                    self._files.rerender(export, read_export_file(export.config_file))
                except (errors.GaneshaError, OSError, ValueError) as e:
                    why = f"its file {export.config_file} cannot be rewritten from its header: {e}"
                    reg.held[name] = why
                    return why
            was_held = reg.held.pop(name, None) is not None  # in the index from now on, live or not
            try:
                self._add_live(export)
            except errors.GaneshaError as e:
                why = f"NFS-Ganesha refused it: {e}"
            if why is None:
                reg.refused.pop(name, None)
            else:
                reg.refused[name] = why
        if was_held:
            self._index.sync(export.export_id)
        if why is None:
            log.info("export %s (id %d, path %s) is served again", name, export.export_id, export.path)
        return why

    def reserve(self, export_ids: Iterable[int]) -> list[int]:
        """Keep ``export_ids`` from new exports for this process's life (the ids of volumes that are not served
        yet but will want theirs: a refused volume of the Go nfs-provisioner). Returns the ids reserved (one in
        use, out of range or reserved by Ganesha is left as it is)."""
        return self._registry.reserve_ids(export_ids)

    def set_clients(self, clients: tuple[str, ...], *, live: bool = True) -> ClientsResult:
        """Make ``clients`` the default list and the list of every export, in one batch (see ``clientlists``)."""
        return clientlists.set_clients(self._registry, self._files, self.dbus, clients, live=live)

    # --- add / update / remove ---------------------------------------------------------------------------------

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
        reg = self._registry
        with reg.settled(name, path):
            candidate = Export(name=name, export_id=0, path=path, squash=squash, access_type=access,
                               clients=self._clients_for(request),  # read under the lock: set_clients() waits
                               config_file=self._files.path(name))
            existing = reg.by_name.get(name)
            if existing is not None:
                if existing.same_definition(candidate):
                    return existing
                raise errors.ExportConflict(
                    f"export {name!r} exists with a different definition (id {existing.export_id})"
                )
            other = reg.by_path.get(path)
            if other is not None:
                raise errors.ExportConflict(f"path {str(path)!r} is already exported as {other.name!r}")
            export = dataclasses.replace(candidate, export_id=reg.take_id(request.export_id))
            reg.reserve(export)  # name, path and id are taken; the shard leaves it out for now
        with (map_errors(ADD_ERRORS, f"adding export {name!r} (id {export.export_id}) failed"),
              Undo(f"export {name}", "add") as undo):
            undo.push("releasing its name, path and id",
                      lambda: reg.release(export, foreign=isinstance(undo.error, errors.ExportIdTaken)))
            text = self._files.text(export)
            if export.config_file.exists():
                raise errors.ExportConflict(f"{export.config_file} exists but is not a loaded export")
            config.atomic_write(export.config_file, text, durable=self.durable)
            undo.push("removing its file", lambda: export.config_file.unlink(missing_ok=True))
            self._add_live(export)
            undo.push("withdrawing it", lambda: self.dbus.remove_export(export.export_id))
            undo.push("leaving it out of its index shard", lambda: self._unindex(export))
            with reg.lock:
                reg.unindexed.discard(name)
            self._index.sync(export.export_id)
            with reg.lock:
                reg.finish(name)
        took = time.perf_counter() - started
        self._count_changed()
        if self.on_add is not None:
            self.on_add(took)
        log.info("export %s added: id %d path %s clients %s in %.2f ms", name, export.export_id, path,
                 ",".join(export.clients), took * 1000)
        return export

    def update(self, request: ExportRequest) -> Export:
        """Change squash, access type or clients of a live export (same name, same path) via UpdateExport.

        The old file is restored if Ganesha refuses the new block."""
        name = config.check_name(request.name)
        if request.clients is not None:
            config.check_clients(request.clients)
        path = config.check_path_inside(request.path, root=self.export_root, exclude=[self.config_dir])
        reg = self._registry
        with reg.settled(name):
            clients = self._clients_for(request)
            old = reg.by_name.get(name)
            if old is None:
                raise errors.InvalidRequest(f"export {name!r} does not exist")
            if old.path != path:
                raise errors.ExportConflict(f"export {name!r} serves {str(old.path)!r}; a path cannot be updated")
            squash, access = _options(request)
            new = dataclasses.replace(old, squash=squash, access_type=access, clients=clients)
            if new == old:
                return old
            old_text = read_export_file(old.config_file)
            self._files.write(new)
            with (map_errors(UPDATE_ERRORS, f"updating export {name!r} failed, old block kept"),
                  Undo(f"export {name}", "update") as undo):
                undo.push("restoring its file",
                          lambda: config.atomic_write(old.config_file, old_text, durable=self.durable))
                self.dbus.update_export(config_file=new.config_file, export_id=new.export_id)
            reg.remember(new)
            log.info("export %s updated: squash %s clients %s", name, new.squash.value, ",".join(new.clients))
            return new

    def remove(self, name: str) -> bool:
        """Withdraw export ``name``; True if it existed. Idempotent: a missing export is logged and skipped.

        If Ganesha cannot be reached the export is kept (file and index line) and the
        ``DBusError`` raised, so a retry finishes the job; Ganesha not knowing the id is fine.

        Like :meth:`add`, the lock is held only for the bookkeeping: RemoveExport, the shard rewrite and
        the file's removal run outside it, so concurrent removes overlap. Until they are done the name,
        path and id stay taken (an add of the same name or path waits for the outcome)."""
        config.check_name(name)
        reg = self._registry
        with reg.settled(name):
            export = reg.by_name.get(name)
            if export is None:
                log.info("export %s: nothing to remove", name)
                return False
            reg.begin(name)
        with Undo(f"export {name}", "remove") as undo:
            undo.push("ending its removal", lambda: self._finish(name))
            try:
                self.dbus.remove_export(export.export_id)
            except errors.ExportNotFound:
                log.info("export %s (id %d) was not live in Ganesha; removing its files", name, export.export_id)
            undo.push("putting it back in its index shard", lambda: self._reindex(export))
            with reg.lock:
                reg.unindexed.add(name)
            self._index.sync(export.export_id)
            export.config_file.unlink(missing_ok=True)  # still reserved: no add of this name writes it meanwhile
        with reg.lock:
            reg.forget(export)
            reg.unindexed.discard(name)
            reg.held.pop(name, None)
            reg.refused.pop(name, None)
            reg.finish(name)
        self._count_changed()
        log.info("export %s removed: id %d path %s", name, export.export_id, export.path)
        return True

    # --- internals ---------------------------------------------------------------------------------------------

    def _clients_for(self, request: ExportRequest) -> tuple[str, ...]:
        if request.clients is None:
            return self._registry.default_clients
        return config.check_clients(request.clients)

    def _why_held(self, export: Export, recorded: frozenset[str] | None) -> str | None:
        return held.why_held(export, export_root=self.export_root, records_dir=self.records_dir, recorded=recorded)

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

    def _unindex(self, export: Export) -> None:
        """Leave ``export`` out of its index shard (the undo of an add's index step)."""
        with self._registry.lock:
            self._registry.unindexed.add(export.name)
        self._index.sync(export.export_id)

    def _reindex(self, export: Export) -> None:
        """Put ``export`` back in its index shard (the undo of a remove's index step)."""
        with self._registry.lock:
            self._registry.unindexed.discard(export.name)
        self._index.sync(export.export_id)

    def _finish(self, name: str) -> None:
        with self._registry.lock:
            self._registry.finish(name)

    def _count_changed(self) -> None:
        if self.on_count is not None:
            self.on_count(len(self._registry.by_name))


def _options(request: ExportRequest) -> tuple[Squash, AccessType]:
    try:
        return Squash(request.squash), AccessType(request.access_type)
    except ValueError as e:
        raise errors.InvalidRequest(f"export {request.name!r}: {e}") from e
