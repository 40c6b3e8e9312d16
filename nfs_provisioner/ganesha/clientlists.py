"""One client list for every export, changed in one batch (a mixin of ``exports.ExportManager``).

The appliance keeps every export's CLIENT list equal to who may mount (``appliance.nodes``): when that
changes, :meth:`ClientLists.set_clients` rewrites all changed export files together and has Ganesha
re-read each one live (UpdateExport); before Ganesha starts it rewrites the files only. A list Ganesha cannot
take is refused before anything changes (``config.check_clients``); an export whose UpdateExport failed is
remembered and updated again by the next call, even with the same list.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from typing import TYPE_CHECKING

from nfs_provisioner import fileio
from nfs_provisioner.ganesha import config, errors
from nfs_provisioner.ganesha.dbus import GaneshaDBus

if TYPE_CHECKING:
    from nfs_provisioner.ganesha.exports import Export

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class ClientsResult:
    changed: tuple[str, ...]
    """Exports whose client list was rewritten (files, and live with ``live=True``)."""
    failed: tuple[str, ...]
    """Exports Ganesha refused to update live (see the log); their files have the new list."""


class ClientLists:
    """Needs the manager's state below; ``ExportManager`` provides it."""

    default_clients: tuple[str, ...]
    templates: config.Templates
    dbus: GaneshaDBus
    durable: bool
    _lock: threading.RLock
    _clients_lock: threading.Lock
    _pending: dict[str, threading.Event]
    _by_name: dict[str, Export]
    _held: dict[str, str]
    _not_live: set[str]
    """Exports whose file has the current list but whose UpdateExport failed (Ganesha serves an older one)."""

    def _block(self, export: Export) -> config.ExportBlock:
        raise NotImplementedError

    def _remember(self, export: Export) -> None:
        raise NotImplementedError

    def get(self, name: str) -> Export | None:
        raise NotImplementedError

    def set_clients(self, clients: tuple[str, ...], *, live: bool = True) -> ClientsResult:
        """Make ``clients`` the default list and the list of every export, in one batch.

        The changed export files are written together (durable, see ``fileio.atomic_write_many``), then,
        with ``live``, Ganesha re-reads each with UpdateExport. ``live=False`` (before Ganesha starts) only
        rewrites the files, so Ganesha never serves an old list. An empty tuple means nobody may mount.
        Adds in progress finish first; adds that start later use the new list. Calls are serialised."""
        new = config.check_clients(clients, allow_empty=True)
        with self._clients_lock:
            with self._lock:
                self.default_clients = new
                pending = list(self._pending.values())
            for event in pending:  # they read the old default: let them finish, then they are updated too
                event.wait()
            with self._lock:
                self._not_live &= set(self._by_name)
                changed = [dataclasses.replace(e, clients=new) for e in self._by_name.values()
                           if (e.clients != new or e.name in self._not_live) and e.name not in self._pending
                           and e.name not in self._held]
                texts = [(e.config_file, e.header() + self.templates.render_export(self._block(e)))
                         for e in changed]
                fileio.atomic_write_many(texts, durable=self.durable)
                for e in changed:
                    self._remember(e)
            failed: list[str] = []
            first_error = ""
            if live:
                for e in changed:
                    try:
                        self.dbus.update_export(config_file=e.config_file, export_id=e.export_id)
                    except errors.ExportNotFound:
                        log.info("export %s (id %d) is not live; its file has the new clients", e.name, e.export_id)
                    except errors.GaneshaError as err:
                        if self.get(e.name) is None:
                            continue  # removed meanwhile
                        log.debug("export %s (id %d): Ganesha refused the new client list: %s", e.name,
                                  e.export_id, err)
                        first_error = first_error or f"export {e.name} (id {e.export_id}): {err}"
                        failed.append(e.name)
            if failed:  # one line, however many exports (Ganesha's own message follows its first line)
                log.error("Ganesha refused the new client list for %d of %d exports; they serve the previous one "
                          "until the next update: %s", len(failed), len(changed), " | ".join(first_error.splitlines()))
            with self._lock:
                self._not_live = (self._not_live - {e.name for e in changed}) | set(failed)
            log.info("client list of %d exports set to %s%s", len(changed), ",".join(new) or "nobody",
                     "" if live else " (files only, before Ganesha serves them)")
            return ClientsResult(changed=tuple(e.name for e in changed), failed=tuple(failed))
