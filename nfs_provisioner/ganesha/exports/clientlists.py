"""One client list for every export, changed in one batch: :func:`set_clients`.

The appliance keeps every export's CLIENT list equal to who may mount (``appliance.nodes``). When that changes,
:func:`set_clients` rewrites all changed export files together and has Ganesha re-read each one live
(UpdateExport). Before Ganesha starts, it rewrites the files only. A list Ganesha cannot take is refused before
anything changes (``config.check_clients``). An export whose UpdateExport failed is remembered and updated again
by the next call, even with the same list.
"""

from __future__ import annotations

import dataclasses
import logging

from nfs_provisioner import fileio
from nfs_provisioner.ganesha import config, errors
from nfs_provisioner.ganesha.dbus import GaneshaDBus
from nfs_provisioner.ganesha.exports.files import ExportFiles
from nfs_provisioner.ganesha.exports.model import ClientsResult
from nfs_provisioner.ganesha.exports.registry import Registry

log = logging.getLogger(__name__)


def set_clients(registry: Registry, files: ExportFiles, dbus: GaneshaDBus, clients: tuple[str, ...], *,
                live: bool = True) -> ClientsResult:
    """Make ``clients`` the default list and the list of every export, in one batch.

    The changed export files are written together (durable, see ``fileio.atomic_write_many``). Then, with
    ``live``, Ganesha re-reads each one with UpdateExport. ``live=False`` (before Ganesha starts) only rewrites the
    files, so Ganesha never serves an old list. An empty tuple means nobody may mount. Adds in progress finish
    first; adds that start later use the new list. Calls are serialised (``registry.clients_lock``)."""
    new = config.check_clients(clients, allow_empty=True)
    with registry.clients_lock:
        with registry.lock:
            registry.default_clients = new
            pending = list(registry.pending.values())
        for event in pending:  # they read the old default: let them finish, then they are updated too
            event.wait()
        with registry.lock:
            registry.not_live &= set(registry.by_name)
            changed = [dataclasses.replace(e, clients=new) for e in registry.by_name.values()
                       if (e.clients != new or e.name in registry.not_live) and e.name not in registry.pending
                       and e.name not in registry.held]
            fileio.atomic_write_many([(e.config_file, files.text(e)) for e in changed], durable=files.durable)
            for e in changed:
                registry.remember(e)
        failed: list[str] = []
        first_error = ""
        if live:
            for e in changed:
                try:
                    dbus.update_export(config_file=e.config_file, export_id=e.export_id)
                except errors.ExportNotFound:
                    log.info("export %s (id %d) is not live; its file has the new clients", e.name, e.export_id)
                except errors.GaneshaError as err:
                    if registry.get(e.name) is None:
                        continue  # removed meanwhile
                    log.debug("export %s (id %d): Ganesha refused the new client list: %s", e.name,
                              e.export_id, err)
                    first_error = first_error or f"export {e.name} (id {e.export_id}): {err}"
                    failed.append(e.name)
        if failed:  # one line, however many exports (Ganesha's own message follows its first line)
            log.error("Ganesha refused the new client list for %d of %d exports; they serve the previous one "
                      "until the next update: %s", len(failed), len(changed), " | ".join(first_error.splitlines()))
        with registry.lock:
            registry.not_live = (registry.not_live - {e.name for e in changed}) | set(failed)
        log.info("client list of %d exports set to %s%s", len(changed), ",".join(new) or "nobody",
                 "" if live else " (files only, before Ganesha serves them)")
        return ClientsResult(changed=tuple(e.name for e in changed), failed=tuple(failed))
