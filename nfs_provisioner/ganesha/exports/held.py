"""Which exports may be given to Ganesha, and why the others are *held*.

An export whose directory is missing, or is no longer a real directory (a symlink in its place), is held. So is
one without a volume record, when the appliance's records directory (``records_dir``) exists. A held export's
file and id are kept, but the export is left out of the index and never added live, so Ganesha never serves what
it points at.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from nfs_provisioner.ganesha.exports.model import Export
from nfs_provisioner.volumes.filesystems import MOUNTS_DIR


def recorded_names(records_dir: Path | None, *, only: str | None = None) -> frozenset[str] | None:
    """Names with a volume record (``<name>.json`` in ``records_dir``). With ``only``, that one name is looked up
    alone instead of listing them all. None: there is no records directory, so every export is admitted."""
    if records_dir is None or not os.path.isdir(records_dir):
        return None
    if only is not None:
        return frozenset({only}) if os.path.lexists(records_dir / f"{only}.json") else frozenset()
    try:
        entries = os.listdir(records_dir)
    except (FileNotFoundError, NotADirectoryError):
        return None
    return frozenset(e[:-5] for e in entries if e.endswith(".json") and not e.startswith("."))


def why_held(export: Export, *, export_root: Path, records_dir: Path | None,
             recorded: frozenset[str] | None) -> str | None:
    """Why ``export`` must not be given to Ganesha (None: it may be). Its directory is not a real directory, or
    (``recorded``: the names with a volume record) no record of it exists."""
    if recorded is not None:
        own = (export_root / export.name, export_root / MOUNTS_DIR / export.name)
        if export.path not in own:
            return f"the appliance exports only {own[0]} or {own[1]} under this name"
        if export.name not in recorded:
            return (f"no volume record {records_dir}/{export.name}.json (not made by this appliance, or "
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
