"""The exports the manager knows, their Export_Ids, and the locks that guard them: the package's only locks.

Lock order. A thread that holds one of these locks takes only locks that come after it in this list, never one
before it:

1. :attr:`Registry.clients_lock`: one client-list batch (``clientlists.set_clients``) at a time. While holding it, a
   batch waits for pending adds and removes to finish (their events) and then takes ``lock``.
2. :attr:`Registry.shard_locks` ``[i]``: index shard ``i``'s file is rewritten under it (``index.ShardedIndex.sync``).
   The sync takes ``lock`` only to read which files the shard holds. It writes the file after ``lock`` is released.
3. :attr:`Registry.lock`: reentrant. It guards every field below. Adds, removes and updates hold it only for the
   bookkeeping (microseconds). Their file writes, D-Bus calls and shard rewrites run outside it, so adds and
   removes overlap. ``load`` holds it throughout, before Ganesha starts. ``reconcile`` and ``serve_again`` hold it
   across their D-Bus calls. No thread ever holds it while it waits for a shard lock, for ``clients_lock`` or for
   a pending event.

An add or remove is *half done* while its file, its D-Bus call and its index shard are being changed outside the
lock. During that time its name is in :attr:`Registry.pending`, with an Event that is set when it is done. Its
name, path and id stay taken meanwhile. :meth:`Registry.settled` waits for it to finish.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path

from nfs_provisioner.ganesha import ids
from nfs_provisioner.ganesha.exports.model import Export
from nfs_provisioner.ganesha.settings import RESERVED_EXPORT_IDS


class Registry:
    """The bookkeeping of the export manager. Fields are read and written with :attr:`lock` held (see the
    module); methods say when they take it themselves."""

    def __init__(self, *, id_range: tuple[int, int], default_clients: tuple[str, ...], shards: int) -> None:
        self.lock = threading.RLock()
        self.clients_lock = threading.Lock()
        self.shard_locks = [threading.Lock() for _ in range(shards)]
        self.id_range = id_range
        self.default_clients = default_clients
        """Clients of every export added without its own list (``set_clients`` changes it)."""
        self.by_name: dict[str, Export] = {}
        self.by_id: dict[int, Export] = {}
        self.by_path: dict[Path, Export] = {}
        self.by_shard: list[dict[int, Export]] = [{} for _ in range(shards)]
        """Index shard ``i``'s exports (``export_id % shards == i``) by id, for a shard's rewrite."""
        self.ids = ids.IdAllocator(low=id_range[0], high=id_range[1], reserved=RESERVED_EXPORT_IDS)
        self.foreign: set[int] = set()
        """Ids that Ganesha serves for exports that are not ours. They are kept reserved and never reused."""
        self.pending: dict[str, threading.Event] = {}
        """Names whose add or remove is half done (see the module)."""
        self.unindexed: set[str] = set()
        """Reserved or withdrawn exports that the index must leave out: an add before AddExport has succeeded, a
        remove after RemoveExport has."""
        self.held: dict[str, str] = {}
        """Exports that are kept (file and id) but left out of the index and never added live, with the reason."""
        self.refused: dict[str, str] = {}
        """Exports in the index that Ganesha does not serve (it refused to add them again), with the reason."""
        self.not_live: set[str] = set()
        """Exports whose file has the current client list but whose UpdateExport failed, so Ganesha serves an
        older list."""

    def get(self, name: str) -> Export | None:
        with self.lock:
            return self.by_name.get(name)

    def remember(self, export: Export) -> None:
        self.by_name[export.name] = export
        self.by_id[export.export_id] = export
        self.by_path[export.path] = export
        self.by_shard[export.export_id % len(self.by_shard)][export.export_id] = export
        self.ids.take(export.export_id)

    def forget(self, export: Export) -> None:
        self.by_name.pop(export.name, None)
        self.by_id.pop(export.export_id, None)
        self.by_path.pop(export.path, None)
        self.by_shard[export.export_id % len(self.by_shard)].pop(export.export_id, None)  # as by_id
        self.ids.release(export.export_id)

    def clear(self) -> None:
        """Forget every export (ids stay taken only for foreign exports); held and refused are cleared too."""
        self.by_name.clear()
        self.by_id.clear()
        self.by_path.clear()
        for shard in self.by_shard:
            shard.clear()
        self.held.clear()
        self.refused.clear()
        self.ids.reset(self.foreign)

    def id_is_free(self, export_id: int) -> bool:
        """Whether ``export_id`` is in range and neither in use, reserved by Ganesha, nor foreign."""
        lo, hi = self.id_range
        return (lo <= export_id <= hi and export_id not in self.ids and export_id not in RESERVED_EXPORT_IDS
                and export_id not in self.foreign)

    def take_id(self, wanted: int | None) -> int:
        """``wanted`` if it is free, else the lowest free id; taken from now on."""
        if wanted is not None and self.id_is_free(wanted):
            self.ids.take(wanted)
            return wanted
        return self.ids.allocate()

    def set_foreign(self, foreign: set[int]) -> None:
        """The ids Ganesha serves that are not ours, as a reconcile found them: newly seen ones are reserved, ones
        no longer served are released."""
        for gone in self.foreign - foreign:
            self.ids.release(gone)
        for new in foreign - self.foreign:
            self.ids.take(new)
        self.foreign = foreign

    def reserve(self, export: Export) -> None:
        """Take ``export``'s name, path and id for a half-done add: pending, and left out of the index."""
        self.remember(export)
        self.begin(export.name)
        self.unindexed.add(export.name)

    def release(self, export: Export, *, foreign: bool = False) -> None:
        """Undo :meth:`reserve` (takes the lock). ``foreign``: Ganesha serves the id for another path, so the id
        stays reserved from now on."""
        with self.lock:
            self.forget(export)
            self.unindexed.discard(export.name)
            self.finish(export.name)
            if foreign:
                self.foreign.add(export.export_id)
                self.ids.take(export.export_id)

    def begin(self, name: str) -> None:
        """``name``'s add or remove is half done from now on (:meth:`settled` waits for :meth:`finish`)."""
        self.pending[name] = threading.Event()

    def finish(self, name: str) -> None:
        """``name`` is no longer half done: wake those waiting for it."""
        event = self.pending.pop(name, None)
        if event is not None:
            event.set()

    def indexed(self, export: Export) -> bool:
        """Whether the index includes ``export``'s file."""
        return export.name not in self.unindexed and export.name not in self.held

    def unserved(self) -> dict[str, str]:
        with self.lock:
            return {**self.refused, **self.held}

    def reserve_ids(self, export_ids: Iterable[int]) -> list[int]:
        """Take every free id of ``export_ids``; the ones taken."""
        done = []
        with self.lock:
            for i in export_ids:
                if self.id_is_free(i):
                    self.ids.take(i)
                    done.append(i)
        return done

    @contextlib.contextmanager
    def settled(self, name: str, path: Path | None = None) -> Iterator[None]:
        """Hold the lock once no add or remove of ``name`` (nor of the export of ``path``) is half done (another
        thread's add or remove of it finishes first)."""
        while True:
            with self.lock:
                pending = self.pending.get(name)
                if pending is None and path is not None:
                    other = self.by_path.get(path)
                    pending = self.pending.get(other.name) if other is not None else None
                if pending is None:
                    yield
                    return
            pending.wait()
