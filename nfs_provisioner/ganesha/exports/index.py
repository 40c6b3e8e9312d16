"""The sharded index of ``%include`` lines that Ganesha reads at start (and at SIGHUP).

::

    exports.conf            the index, included by ganesha.conf: one %include per shard
    exports.idx/NNN.conf    shard NNN = Export_Id % 256: one %include per export file

An add or a remove rewrites one small shard (a few lines), not an index of every export. The index is derived
data: ``load()`` rebuilds it from ``exports.d`` after a crash. So its files are replaced atomically but not fsynced
(the export files themselves are), each through a spare file beside it (``fileio.swap_write``).
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from nfs_provisioner import fileio
from nfs_provisioner.ganesha import config
from nfs_provisioner.ganesha.exports.files import read_export_file
from nfs_provisioner.ganesha.exports.registry import Registry

INDEX_NAME = "exports.conf"
SHARDS_DIR = "exports.idx"
#: The index includes this many shard files; an export lives in shard ``id % INDEX_SHARDS``, so
#: an add or remove rewrites one small shard (a few lines) instead of an index of every export.
INDEX_SHARDS = 256


class ShardedIndex:
    """``config_dir/exports.conf`` and its shards, written from what ``registry`` holds."""

    def __init__(self, *, config_dir: Path, registry: Registry) -> None:
        self.index_file = config_dir / INDEX_NAME
        self.shards_dir = config_dir / SHARDS_DIR
        self.registry = registry

    def shard_file(self, shard: int) -> Path:
        return self.shards_dir / f"{shard:03d}.conf"

    def _files(self, shard: int) -> list[Path]:
        """The export files shard ``shard`` includes, from the registry (its lock held by the caller)."""
        return [e.config_file for e in self.registry.by_shard[shard].values() if self.registry.indexed(e)]

    def write_shard(self, export_id: int, *, only_if_changed: bool = False) -> None:
        """Rewrite the shard of ``export_id``; the caller holds the registry's lock (``load``)."""
        shard = export_id % INDEX_SHARDS
        _write_if(self.shard_file(shard), config.render_index(self._files(shard)), only_if_changed=only_if_changed)

    def sync(self, export_id: int) -> None:
        """Rewrite the shard of ``export_id`` from the state at the time of writing, without holding the registry's
        lock during the write (concurrent adds and removes of other shards go on). The caller must not hold that
        lock. Every change is followed by a sync that reads the state after it, under the shard's lock, so the
        file ends up with the latest state whatever the order of the writers."""
        shard = export_id % INDEX_SHARDS
        with self.registry.shard_locks[shard]:
            with self.registry.lock:
                files = self._files(shard)
            _write_if(self.shard_file(shard), config.render_index(files), only_if_changed=False)

    def write_all(self) -> None:
        """Every shard, then the top index that includes them all (on load, the registry's lock held; unchanged
        files are kept)."""
        self.shards_dir.mkdir(parents=True, exist_ok=True)
        for shard in range(INDEX_SHARDS):
            self.write_shard(shard, only_if_changed=True)
        shards = [self.shard_file(shard) for shard in range(INDEX_SHARDS)]
        _write_if(self.index_file, config.render_index(shards), only_if_changed=True)

    def entries(self) -> list[Path]:
        """The export files the index on disk includes (through its shards), as Ganesha will read them."""
        out: list[Path] = []
        for shard in _includes(self.index_file):
            out += _includes(shard)
        return sorted(out)


def _write_if(path: Path, text: str, *, only_if_changed: bool) -> None:
    if only_if_changed:
        with contextlib.suppress(OSError, ValueError):  # a file too big to be this text: rewritten
            if fileio.read_limited(path, len(text.encode())) == text.encode():
                return
    fileio.swap_write(path, text)  # rewritten at every add and remove: no new inode each time


def _includes(index: Path) -> list[Path]:
    prefix = "%include "
    lines = read_export_file(index).splitlines()
    return [Path(line[len(prefix) :].strip().strip('"')) for line in lines if line.startswith(prefix)]
