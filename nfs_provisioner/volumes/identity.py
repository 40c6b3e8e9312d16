"""The instance identity: a UUID kept in ``<export root>/nfs-provisioner.identity``.

Written once, on first start, and stored on every PV this instance creates, so
that several instances sharing one class each delete only their own volumes.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

from nfs_provisioner.errors import NFSProvisionerError

FILENAME = "nfs-provisioner.identity"


class IdentityError(NFSProvisionerError, RuntimeError):
    pass


MAX_BYTES = 4096
"""An identity file is one UUID line; anything longer is not one (and is not read whole)."""


def load(export_root: Path) -> str | None:
    """The identity kept under ``export_root``; None if there is none yet. IdentityError (one line, naming the
    file) if the file exists but does not hold exactly one UUID."""
    path = export_root / FILENAME
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_BYTES + 1)
    except FileNotFoundError:
        return None
    hint = "fix or remove it (removing it orphans the volumes created under the old identity)"
    try:
        value = raw.decode("ascii").strip()
    except UnicodeDecodeError:
        raise IdentityError(f"{path} holds binary data ({raw[:16]!r}...), not a UUID; {hint}") from None
    if not value:
        raise IdentityError(f"{path} is empty, not a UUID; {hint}")
    try:
        return str(uuid.UUID(value))
    except ValueError as e:
        raise IdentityError(f"{path} holds {value[:40]!r}, not a UUID; {hint}") from e


def load_or_create(export_root: Path) -> str:
    path = export_root / FILENAME
    existing = load(export_root)
    if existing is not None:
        return existing
    new = str(uuid.uuid4())
    tmp = path.with_name(f".{FILENAME}.tmp")
    with open(tmp, "w") as f:
        f.write(new + "\n")
        f.flush()
        os.fsync(f.fileno())
    try:
        os.link(tmp, path)  # fails if a concurrent start wrote one first
    except FileExistsError:
        return load_or_create(export_root)
    finally:
        tmp.unlink(missing_ok=True)
    return new
